//! Loading the proxy's identity key from a file, creating it on first start.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use kitsune_common::key;
use libp2p::identity::Keypair;

/// Reads the key at `path`; if there is no file, writes a fresh Ed25519 key there
/// (mode 0600, never overwriting) and uses it. Errors never contain key material.
pub fn load_or_create(path: &Path) -> anyhow::Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => key::decode(&bytes).with_context(|| format!("key file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (keypair, bytes) = key::generate_ed25519();
            write_new(path, &bytes)
                .with_context(|| format!("creating key file {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new Ed25519 identity");
            Ok(keypair)
        }
        Err(e) => Err(e).with_context(|| format!("reading key file {}", path.display())),
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reloads_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let a = load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    }

    #[test]
    fn a_bad_key_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"definitely not a key").unwrap();
        let err = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(err.contains("key file"), "{err}");
        assert!(err.contains("not a libp2p private key"), "{err}");
        let unreadable = dir.path().join("dir-not-file");
        std::fs::create_dir(&unreadable).unwrap();
        assert!(load_or_create(&unreadable).is_err());
    }
}
