//! The identity key parser (`kitsune_common::key`), which reads a file an operator
//! mounts: raw `PrivateKey` protobuf, base64 text, or a kubo config JSON.
//!
//! Checked besides "no panic": a key that loads re-encodes to the same identity (its
//! public key always; its private key too unless RSA, which libp2p reads but does not
//! write); `peer_id` agrees with `decode`; an input over the size limit is refused as
//! such; an error's message is short, so it cannot be carrying the input (key material
//! must not reach the logs).

#![no_main]

use kitsune_common::key::{self, KeyError, MAX_KEY_FILE_BYTES};
use libfuzzer_sys::fuzz_target;
use libp2p_identity::{KeyType, PublicKey};

fuzz_target!(|data: &[u8]| {
    match key::decode(data) {
        Ok(kp) => {
            assert!(!data.is_empty() && data.len() <= MAX_KEY_FILE_BYTES);
            let id = kp.public().to_peer_id();
            // The public key always round-trips; the private key too, except RSA,
            // which libp2p can read but not write.
            let public = PublicKey::try_decode_protobuf(&kp.public().encode_protobuf())
                .expect("a loaded key's public key round-trips");
            assert_eq!(public.to_peer_id(), id);
            if kp.key_type() != KeyType::RSA {
                let raw = kp.to_protobuf_encoding().expect("a non-RSA key encodes");
                let again = key::decode(&raw).expect("its own encoding loads");
                assert_eq!(
                    again.public().to_peer_id(),
                    id,
                    "decode -> encode -> decode"
                );
            }
            assert_eq!(key::peer_id(data).expect("same input"), id);
        }
        Err(e) => {
            if data.len() > MAX_KEY_FILE_BYTES {
                assert_eq!(e, KeyError::TooLarge(data.len()));
            }
            let msg = e.to_string();
            assert!(msg.len() < 300, "error message of {} bytes", msg.len());
        }
    }
});
