//! The identity key format Kitsune accepts, shared by the proxy (which loads it) and
//! the operator (which validates it, derives the peer ID for status, and generates it).
//!
//! Accepted encodings, all of the same libp2p `PrivateKey` protobuf:
//! - raw bytes, as `ipfs key export` (format `libp2p-protobuf-cleartext`) writes them;
//! - standard base64 text, as in kubo's config field `Identity.PrivKey`;
//! - a whole kubo `config` JSON file, from which `Identity.PrivKey` is taken.
//!
//! Key material never appears in an error message: errors describe shape only. The
//! copies of the key this module makes while decoding (the base64 text, the protobuf
//! bytes) are zeroed when dropped; libp2p zeroes its own.

use std::error::Error as _;
use std::fmt;
use std::io::Read;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libp2p_identity::{DecodingError, Keypair, PeerId};
use zeroize::Zeroizing;

/// The largest key file we read. The largest key libp2p loads, RSA-4096, is under
/// 2.5 KiB as a protobuf; a kubo config is a few KiB. Anything bigger is not a key.
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
    #[error(
        "an RSA key of fewer than 2048 bits: libp2p refuses RSA keys under 2048 bits \
         (kubo too); use an RSA key of 2048 to 4096 bits or an Ed25519 key"
    )]
    RsaTooSmall,
    #[error(
        "an RSA key of more than 4096 bits: libp2p (ring) loads RSA keys of 2048 to \
         4096 bits only; use one of those or an Ed25519 key"
    )]
    RsaTooLarge,
}

/// Key material in memory: zeroed when dropped, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes(Zeroizing<Vec<u8>>);

impl KeyBytes {
    /// Reads all of `r` if it holds at most `max` bytes; `None` if it holds more. At most
    /// `max + 1` bytes are read (an endless input costs nothing), into one buffer
    /// allocated up front, so no reallocation leaves a partial copy of the key behind.
    pub fn read_at_most(mut r: impl Read, max: usize) -> std::io::Result<Option<Self>> {
        let mut buf = Zeroizing::new(vec![0u8; max + 1]);
        let mut len = 0;
        while len < buf.len() {
            match r.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if len > max {
            return Ok(None);
        }
        buf.truncate(len);
        Ok(Some(Self(buf)))
    }
}

impl From<Vec<u8>> for KeyBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyBytes({} bytes)", self.0.len())
    }
}

/// Decodes a private key in any accepted encoding.
pub fn decode(bytes: &[u8]) -> Result<Keypair, KeyError> {
    if bytes.is_empty() {
        return Err(KeyError::Empty);
    }
    if bytes.len() > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge(bytes.len()));
    }
    let binary_error = match Keypair::from_protobuf_encoding(bytes) {
        Ok(key) => return Ok(key),
        Err(e) => e,
    };
    if let Some(refused) = rsa_size_refusal(&binary_error) {
        return Err(refused);
    }
    // Not raw protobuf: it must be text (base64 or JSON).
    let text = std::str::from_utf8(bytes)
        .map_err(|_| KeyError::Malformed("binary data that is not a PrivateKey protobuf"))?
        .trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    let from_config;
    let b64: &str = if text.starts_with('{') {
        from_config = priv_key_of_config(text)?;
        &from_config
    } else {
        text
    };
    // Base64 may be wrapped over lines. Sized up front: no reallocation copies the key.
    let mut compact = Zeroizing::new(String::with_capacity(b64.len()));
    compact.extend(b64.split_whitespace());
    let mut raw = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(compact.len())]);
    let len = STANDARD
        .decode_slice(compact.as_bytes(), &mut raw[..])
        .map_err(|_| KeyError::Malformed("text that is not base64"))?;
    raw.truncate(len);
    Keypair::from_protobuf_encoding(&raw).map_err(|e| {
        rsa_size_refusal(&e).unwrap_or(KeyError::Malformed(
            "base64 of something that is not a PrivateKey protobuf",
        ))
    })
}

/// `Identity.PrivKey` of a kubo config, moved out of the parsed JSON so that the one
/// copy of it is zeroed when dropped.
fn priv_key_of_config(text: &str) -> Result<Zeroizing<String>, KeyError> {
    let mut config: serde_json::Value =
        serde_json::from_str(text).map_err(|_| KeyError::Malformed("invalid JSON"))?;
    match config
        .get_mut("Identity")
        .and_then(|i| i.get_mut("PrivKey"))
        .map(serde_json::Value::take)
    {
        Some(serde_json::Value::String(key)) => Ok(Zeroizing::new(key)),
        _ => Err(KeyError::NoPrivKeyInConfig),
    }
}

/// The clear reason when libp2p refused a well-formed RSA key for its size (ring, which
/// decodes RSA keys for libp2p, takes moduli of 2048 to 4096 bits).
fn rsa_size_refusal(e: &DecodingError) -> Option<KeyError> {
    if !e.to_string().contains("RSA") {
        return None;
    }
    match e.source()?.to_string().as_str() {
        "TooSmall" => Some(KeyError::RsaTooSmall),
        "TooLarge" => Some(KeyError::RsaTooLarge),
        _ => None,
    }
}

/// The peer ID a key gives, exactly as kubo derives it (RSA keys give `Qm…`).
pub fn peer_id(bytes: &[u8]) -> Result<PeerId, KeyError> {
    decode(bytes).map(|k| k.public().to_peer_id())
}

/// A fresh Ed25519 identity: the key, and its protobuf encoding to store (the caller
/// that keeps it only briefly wraps it in [`KeyBytes`] to have it zeroed).
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
    fn rsa_keys_outside_2048_to_4096_bits_are_refused_saying_so() {
        // Generated with openssl for this test (PKCS#1 in a PrivateKey protobuf, as kubo
        // stores RSA keys); they guard nothing.
        for (b64, expected) in [
            (
                include_str!("../testdata/rsa-1024.b64"),
                KeyError::RsaTooSmall,
            ),
            (
                include_str!("../testdata/rsa-8192.b64"),
                KeyError::RsaTooLarge,
            ),
        ] {
            let raw = STANDARD.decode(b64.trim()).unwrap();
            assert_eq!(decode(&raw).unwrap_err(), expected);
            assert_eq!(decode(b64.as_bytes()).unwrap_err(), expected);
            let config = format!(r#"{{"Identity":{{"PrivKey":"{}"}}}}"#, b64.trim());
            assert_eq!(decode(config.as_bytes()).unwrap_err(), expected);
        }
        assert!(
            KeyError::RsaTooSmall
                .to_string()
                .contains("under 2048 bits")
        );
    }

    #[test]
    fn key_bytes_are_read_to_a_bound_and_never_shown() {
        // An endless input (as /dev/zero) stops one byte past the bound.
        assert_eq!(
            KeyBytes::read_at_most(std::io::repeat(0), MAX_KEY_FILE_BYTES).unwrap(),
            None
        );
        let exact = [7u8; 100];
        let read = KeyBytes::read_at_most(&exact[..], 100).unwrap().unwrap();
        assert_eq!(&read[..], &exact[..]);
        assert_eq!(KeyBytes::read_at_most(&exact[..], 99).unwrap(), None);
        // A reader that hands the bytes out in pieces still fills the one buffer.
        let one_by_one = std::io::Read::chain(&[1u8][..], &[2u8, 3][..]);
        let read = KeyBytes::read_at_most(one_by_one, 10).unwrap().unwrap();
        assert_eq!(&read[..], &[1, 2, 3]);
        assert_eq!(read.0.capacity(), 11, "allocated once, at the bound");

        let (_, raw) = generate_ed25519();
        let shown = format!("{:?}", KeyBytes::from(raw.clone()));
        assert_eq!(shown, format!("KeyBytes({} bytes)", raw.len()));
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
