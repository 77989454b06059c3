//! Loading the proxy's identity key from a file, creating it on first start.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use kitsune_common::key::{self, KeyBytes, MAX_KEY_FILE_BYTES};
use libp2p::identity::Keypair;

/// Reads the key at `path`; if there is no file, writes a fresh Ed25519 key there
/// (mode 0600, never overwriting) and uses it. Errors never contain key material, and
/// the key's bytes are zeroed once decoded.
pub fn load_or_create(path: &Path) -> anyhow::Result<Keypair> {
    // Looked at before it is opened: opening a FIFO for reading would wait for a writer
    // forever, and a device such as /dev/zero never ends.
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => anyhow::bail!(
            "key file {}: not a regular file but {}; give the path of the key file itself",
            path.display(),
            kind_of(&meta.file_type())
        ),
        Ok(_) => {
            let bytes =
                read(path).with_context(|| format!("reading key file {}", path.display()))?;
            key::decode(&bytes).with_context(|| format!("key file {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (keypair, bytes) = key::generate_ed25519();
            let bytes = KeyBytes::from(bytes);
            write_new(path, &bytes)
                .with_context(|| format!("creating key file {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new Ed25519 identity");
            Ok(keypair)
        }
        Err(e) => Err(e).with_context(|| format!("reading key file {}", path.display())),
    }
}

/// At most [`MAX_KEY_FILE_BYTES`] of a regular file.
fn read(path: &Path) -> anyhow::Result<KeyBytes> {
    let file = std::fs::File::open(path)?;
    // The path may have been replaced since it was looked at.
    anyhow::ensure!(file.metadata()?.is_file(), "not a regular file");
    KeyBytes::read_at_most(file, MAX_KEY_FILE_BYTES)?
        .with_context(|| format!("over {MAX_KEY_FILE_BYTES} bytes, more than a key can be"))
}

/// What a path that is not a regular file is, for the error.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "something else"
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

    #[test]
    fn an_endless_device_is_refused_without_reading_it() {
        // `-k /dev/zero` used to read until memory ran out.
        let err = format!("{:#}", load_or_create(Path::new("/dev/zero")).unwrap_err());
        assert!(
            err.contains("/dev/zero: not a regular file but a device"),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        // Opening a FIFO for reading blocks until someone writes: start-up used to hang.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("key");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = format!("{:#}", load_or_create(&fifo).unwrap_err());
        assert!(err.contains("not a regular file but a FIFO"), "{err}");
        assert!(err.contains(&fifo.display().to_string()), "{err}");
    }

    #[test]
    fn a_huge_file_is_refused_after_reading_just_past_the_bound() {
        // Sparse: 64 GiB that occupy no disk, which reading whole would need in memory.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        let err = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(
            err.contains(&format!("over {MAX_KEY_FILE_BYTES} bytes")),
            "{err}"
        );
        // At the bound exactly it is read, and judged as a key.
        std::fs::write(&path, vec![b'A'; MAX_KEY_FILE_BYTES]).unwrap();
        let err = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(err.contains("not a libp2p private key"), "{err}");
    }
}
