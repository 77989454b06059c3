//! Preload-mode helpers: ipfs-core clients that run in the background (so a test can read
//! their root CID while they keep serving it), a Service emulator for several proxy
//! replicas, and the proxy's RSS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use crate::process::ChildProcess;
use crate::util::{node_command, scratch_dir};

/// What one background ipfs-core client does (steps in order: connect, add, fetch).
#[derive(Clone, Debug, Default)]
pub struct JsIpfsJob {
    /// Peers to dial, also the Bootstrap list (`/ws` addresses work).
    pub connect: Vec<String>,
    /// Preload node, e.g. `/ip4/127.0.0.1/tcp/PORT/http`.
    pub preload: Option<String>,
    /// Add `random_bytes(len, seed)` as a UnixFS file.
    pub add_bytes: Option<(usize, u64)>,
    /// Put `n` raw leaves of `size` bytes (leaf i = `random_bytes(size, seed + i)`) and a
    /// dag-cbor root linking them: `(n, size, seed)`.
    pub add_dag_cbor: Option<(usize, usize, u64)>,
    /// UnixFS cat of this CID.
    pub cat: Option<String>,
    /// dag.get of an `add_dag_cbor` root, then block.get of each leaf.
    pub get_dag: Option<String>,
    pub timeout: Duration,
    /// Stay up this long after the steps (an uploader keeps serving its blocks).
    pub linger: Duration,
}

/// A running ipfs-core client. Killed on drop.
pub struct JsIpfsProc {
    proc: ChildProcess,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

/// The end of a [`JsIpfsProc`].
#[derive(Debug)]
pub struct JsIpfsDone {
    pub ok: bool,
    pub error: Option<String>,
    pub bytes: Option<Vec<u8>>,
    pub log: String,
}

impl JsIpfsJob {
    /// The `client.mjs` command line for this job; `dir` holds its temporary files, `out`
    /// gets the fetched bytes.
    pub(crate) fn command(&self, dir: &Path, out: &Path) -> Command {
        let mut cmd = node_command("jsipfs");
        cmd.arg("client.mjs")
            .arg("--timeout")
            .arg(format!("{:.3}", self.timeout.as_secs_f64()))
            .arg("--linger")
            .arg(format!("{:.3}", self.linger.as_secs_f64()))
            // ipfs-core puts nothing outside its repo, but keep any tmp use in our scratch dir
            .env("TMPDIR", dir);
        for c in &self.connect {
            cmd.arg("--connect").arg(c);
        }
        if let Some(p) = &self.preload {
            cmd.arg("--preload").arg(p);
        }
        if let Some((len, seed)) = self.add_bytes {
            cmd.args(["--add-bytes", &len.to_string(), "--seed", &seed.to_string()]);
        }
        if let Some((n, size, seed)) = self.add_dag_cbor {
            cmd.args([
                "--add-dag-cbor",
                &n.to_string(),
                "--leaf-size",
                &size.to_string(),
                "--seed",
                &seed.to_string(),
            ]);
        }
        if let Some(c) = &self.cat {
            cmd.arg("--cat").arg(c).arg("--out").arg(out);
        }
        if let Some(c) = &self.get_dag {
            cmd.arg("--get-dag").arg(c).arg("--out").arg(out);
        }
        cmd
    }
}

impl JsIpfsProc {
    pub fn spawn(job: &JsIpfsJob) -> Result<Self> {
        let dir = scratch_dir("jsipfs-bg")?;
        let out = dir.path().join("out.bin");
        let cmd = job.command(dir.path(), &out);
        let proc = ChildProcess::spawn("jsipfs-client", cmd, dir.path())?;
        Ok(Self {
            proc,
            out,
            _dir: dir,
        })
    }

    /// The root CID it added, once it has printed it.
    pub async fn added(&mut self, timeout: Duration) -> Result<String> {
        let t0 = Instant::now();
        loop {
            if let Some(cid) = self.proc.stdout().lines().find_map(|l| {
                l.strip_prefix("ADDED ")
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_owned)
            }) {
                return Ok(cid);
            }
            if let Some(s) = self.proc.try_wait() {
                bail!(
                    "ipfs-core client exited ({s}) before adding\n{}",
                    self.log()
                );
            }
            if t0.elapsed() > timeout {
                bail!(
                    "ipfs-core client added nothing in {timeout:?}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for it to finish (its steps, then its linger).
    pub async fn finish(mut self, timeout: Duration) -> Result<JsIpfsDone> {
        let v: serde_json::Value = self.proc.result_line(timeout, 40).await?;
        let ok = v["ok"].as_bool() == Some(true);
        Ok(JsIpfsDone {
            ok,
            error: v["error"].as_str().map(str::to_owned),
            bytes: if ok {
                std::fs::read(&self.out).ok()
            } else {
                None
            },
            log: self.log(),
        })
    }

    pub fn log(&self) -> String {
        self.proc.log_tail(40)
    }
}

/// A Kubernetes Service in miniature: a TCP port in front of several replicas, with
/// `sessionAffinity: ClientIP` (every connection from one client IP goes to the same
/// replica) or without (round-robin per connection). Runs until dropped.
pub struct Service {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Service {
    pub async fn start(replicas: Vec<SocketAddr>, client_ip_affinity: bool) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let mut turn = 0usize;
            let mut pinned: std::collections::HashMap<std::net::IpAddr, SocketAddr> =
                Default::default();
            while let Ok((mut client, peer)) = listener.accept().await {
                let target = if client_ip_affinity {
                    // kube-proxy pins a client IP to the endpoint its first connection got.
                    *pinned.entry(peer.ip()).or_insert_with(|| {
                        turn += 1;
                        replicas[(turn - 1) % replicas.len()]
                    })
                } else {
                    turn += 1;
                    replicas[(turn - 1) % replicas.len()]
                };
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Ok(Self { port, task })
    }
}

/// A process's resident set size in bytes (Linux).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}
