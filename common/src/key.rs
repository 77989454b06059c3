//! The identity key format Kitsune accepts, shared by the proxy (which loads it) and
//! the operator (which validates it, derives the peer ID for status, and generates it).
//!
//! Accepted encodings, all of the same libp2p `PrivateKey` protobuf:
//! - raw bytes, as `ipfs key export` (format `libp2p-protobuf-cleartext`) writes them;
//! - standard base64 text, as in kubo's config field `Identity.PrivKey`;
//! - a whole kubo `config` JSON file, from which `Identity.PrivKey` is taken.
//!
//! Key material never appears in an error message: errors describe shape only.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libp2p_identity::{Keypair, PeerId};

/// The largest key file we read. An RSA-8192 protobuf is under 5 KiB; a kubo
/// config is a few KiB. Anything bigger is not a key.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the key is empty")]
    Empty,
    #[error("the key is {0} bytes, more than the {MAX_KEY_FILE_BYTES} a key can be")]
    TooLarge(usize),
    #[error(
        "not a libp2p private key: expected the bytes `ipfs key export` writes, \
         base64 text as in kubo's Identity.PrivKey, or a kubo config JSON ({0})"
    )]
    Malformed(&'static str),
    #[error("the kubo config JSON has no Identity.PrivKey string")]
    NoPrivKeyInConfig,
}

/// Decodes a private key in any accepted encoding.
pub fn decode(bytes: &[u8]) -> Result<Keypair, KeyError> {
    if bytes.is_empty() {
        return Err(KeyError::Empty);
    }
    if bytes.len() > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge(bytes.len()));
    }
    if let Ok(key) = Keypair::from_protobuf_encoding(bytes) {
        return Ok(key);
    }
    // Not raw protobuf: it must be text (base64 or JSON).
    let text = std::str::from_utf8(bytes)
        .map_err(|_| KeyError::Malformed("binary data that is not a PrivateKey protobuf"))?
        .trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    let b64 = if text.starts_with('{') {
        let config: serde_json::Value =
            serde_json::from_str(text).map_err(|_| KeyError::Malformed("invalid JSON"))?;
        config
            .get("Identity")
            .and_then(|i| i.get("PrivKey"))
            .and_then(|k| k.as_str())
            .ok_or(KeyError::NoPrivKeyInConfig)?
            .to_owned()
    } else {
        text.to_owned()
    };
    let compact: String = b64.split_whitespace().collect();
    let raw = STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| KeyError::Malformed("text that is not base64"))?;
    Keypair::from_protobuf_encoding(&raw)
        .map_err(|_| KeyError::Malformed("base64 of something that is not a PrivateKey protobuf"))
}

/// The peer ID a key gives, exactly as kubo derives it (RSA keys give `Qm…`).
pub fn peer_id(bytes: &[u8]) -> Result<PeerId, KeyError> {
    decode(bytes).map(|k| k.public().to_peer_id())
}

/// A fresh Ed25519 identity: the key, and its protobuf encoding to store.
pub fn generate_ed25519() -> (Keypair, Vec<u8>) {
    let key = Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .expect("ed25519 keys always encode to protobuf");
    (key, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RSA-2048 key written by `ipfs key export` (kubo 0.22), with the peer ID
    /// kubo reports for it. Generated for this test; it guards nothing.
    const KUBO_RSA_B64: &str = include_str!("../testdata/kubo-rsa.b64");
    const KUBO_RSA_PEER_ID: &str = include_str!("../testdata/kubo-rsa.peerid");

    #[test]
    fn ed25519_round_trips_through_every_encoding() {
        let (key, raw) = generate_ed25519();
        let id = key.public().to_peer_id();
        assert!(id.to_string().starts_with("12D3KooW"));
        assert_eq!(peer_id(&raw).unwrap(), id);

        let b64 = STANDARD.encode(&raw);
        assert_eq!(peer_id(b64.as_bytes()).unwrap(), id);
        assert_eq!(peer_id(format!("  {b64}\n").as_bytes()).unwrap(), id);

        let config = format!(r#"{{"Identity":{{"PeerID":"x","PrivKey":"{b64}"}}}}"#);
        assert_eq!(peer_id(config.as_bytes()).unwrap(), id);
    }

    #[test]
    fn kubo_exported_rsa_key_gives_kubos_peer_id() {
        let raw = STANDARD.decode(KUBO_RSA_B64.trim()).unwrap();
        let expected = KUBO_RSA_PEER_ID.trim();
        assert!(expected.starts_with("Qm"));
        assert_eq!(peer_id(&raw).unwrap().to_string(), expected);
        assert_eq!(
            peer_id(KUBO_RSA_B64.as_bytes()).unwrap().to_string(),
            expected
        );
    }

    #[test]
    fn secp256k1_and_ecdsa_keys_load() {
        for key in [Keypair::generate_secp256k1(), Keypair::generate_ecdsa()] {
            let raw = key.to_protobuf_encoding().unwrap();
            assert_eq!(peer_id(&raw).unwrap(), key.public().to_peer_id());
        }
    }

    #[test]
    fn bad_input_is_a_clear_error_without_key_material() {
        assert_eq!(decode(b"").unwrap_err(), KeyError::Empty);
        assert_eq!(decode(b" \n").unwrap_err(), KeyError::Empty);
        assert!(matches!(
            decode(&[0x08, 0x01, 0x12, 0x03, 1, 2, 3]),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            decode(&[0xff, 0xfe, 0x00]),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"not base64 !!"),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(decode(b"aGVsbG8="), Err(KeyError::Malformed(_))));
        assert_eq!(
            decode(br#"{"Identity":{}}"#).unwrap_err(),
            KeyError::NoPrivKeyInConfig
        );
        assert!(matches!(decode(b"{oops"), Err(KeyError::Malformed(_))));
        let huge = vec![b'A'; MAX_KEY_FILE_BYTES + 1];
        assert_eq!(
            decode(&huge).unwrap_err(),
            KeyError::TooLarge(MAX_KEY_FILE_BYTES + 1)
        );

        // A near-miss of a real key must not echo any of it back.
        let (_, raw) = generate_ed25519();
        let b64 = STANDARD.encode(&raw);
        let broken = format!("{}!", &b64[..b64.len() - 1]);
        let msg = decode(broken.as_bytes()).unwrap_err().to_string();
        assert!(!msg.contains(&b64[..16]), "error leaks key material: {msg}");
    }
}
