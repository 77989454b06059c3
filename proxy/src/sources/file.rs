//! `--backends-file`: the backend set from a file, one kubo RPC multiaddr a line
//! (`#` starts a comment), re-read when it changes. Changes are detected by polling the
//! file's identity (inode, size, mtime), which also catches an atomic rename over it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;

use crate::backend::BackendSpec;
use crate::engine::Handle;

/// The largest backends file we read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
}

/// Parses the file's text. A bad line fails the whole file, so a half-written edit
/// never replaces a good set with a partial one.
pub fn parse(text: &str) -> Result<Vec<BackendSpec>, ParseError> {
    let mut specs = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |why: String| ParseError::Line { line: i + 1, why };
        let addr: Multiaddr = line.parse().map_err(|e| err(format!("{line}: {e}")))?;
        specs.push(BackendSpec::from_multiaddr(&addr).map_err(|e| err(e.to_string()))?);
    }
    specs.sort();
    specs.dedup();
    Ok(specs)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

/// Reads and parses the file (bounded in size).
pub fn load(path: &Path) -> anyhow::Result<Vec<BackendSpec>> {
    let len = std::fs::metadata(path)?.len();
    anyhow::ensure!(
        len <= MAX_FILE_BYTES,
        "{} is {len} bytes, over {MAX_FILE_BYTES}",
        path.display()
    );
    let text = std::fs::read_to_string(path)?;
    Ok(parse(&text)?)
}

/// Applies the file at start, then whenever it changes; keeps the last good set when
/// the file is missing or malformed.
pub async fn watch(path: PathBuf, engine: Handle, every: Duration) {
    let mut seen: Option<Stamp> = None;
    let mut applied: Option<Vec<BackendSpec>> = None;
    loop {
        match stamp(&path) {
            Ok(s) if seen.as_ref() != Some(&s) => {
                seen = Some(s);
                match load(&path) {
                    Ok(specs) if applied.as_ref() != Some(&specs) => {
                        tracing::info!(path = %path.display(), backends = specs.len(), "backends file applied");
                        if engine.set_backends(specs.clone()).await.is_err() {
                            return;
                        }
                        applied = Some(specs);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(path = %path.display(), error = %e,
                        "backends file not applied; keeping the last good set"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                if seen.take().is_some() {
                    tracing::warn!(path = %path.display(), error = %e,
                        "backends file unreadable; keeping the last good set");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_blank_lines_and_duplicates() {
        let specs = parse(
            "# kubo fleet\n/ip4/10.0.0.1/tcp/5001\n\n  /dns4/kubo-1/tcp/5001  # second\n/ip4/10.0.0.1/tcp/5001\n",
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn one_bad_line_rejects_the_file() {
        let err = parse("/ip4/10.0.0.1/tcp/5001\n/ip4/10.0.0.2/udp/5001\n").unwrap_err();
        assert!(matches!(err, ParseError::Line { line: 2, .. }), "{err}");
        assert!(parse("garbage\n").is_err());
    }

    #[test]
    fn an_atomic_rename_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backends");
        std::fs::write(&path, "/ip4/10.0.0.1/tcp/5001\n").unwrap();
        let before = stamp(&path).unwrap();
        let tmp = dir.path().join("backends.tmp");
        std::fs::write(&tmp, "/ip4/10.0.0.1/tcp/5001\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(stamp(&path).unwrap(), before, "same content, new inode");
        let big = vec![b'#'; MAX_FILE_BYTES as usize + 1];
        std::fs::write(&path, big).unwrap();
        assert!(load(&path).is_err());
    }
}
