//! The real `kitsune-proxy` binary, run as a child process on loopback ports.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::kubo::KuboNode;
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::util::{repo_root, scratch_dir};

/// How to start a [`Proxy`].
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// Backend kubo RPC multiaddrs (`-d`).
    pub backends: Vec<String>,
    /// The identity key file; a fresh one is generated in the scratch dir when `None`.
    pub key: Option<PathBuf>,
    /// Also listen on WebSocket.
    pub ws: bool,
    /// Also listen on QUIC-v1.
    pub quic: bool,
    /// More flags.
    pub args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// Use the release build (benchmarks) instead of the debug one.
    pub release: bool,
}

/// A running proxy. Killed on drop.
#[derive(Debug)]
pub struct Proxy {
    pub peer_id: String,
    /// `/ip4/127.0.0.1/tcp/P/p2p/ID`
    pub tcp_addr: String,
    pub ws_addr: Option<String>,
    pub quic_addr: Option<String>,
    /// `http://127.0.0.1:M`
    pub metrics_url: String,
    pub startup: Duration,
    pub proc: ChildProcess,
    _dir: tempfile::TempDir,
}

/// The path of a workspace binary, built if it is missing.
pub fn binary(name: &str, release: bool) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target
        .join(if release { "release" } else { "debug" })
        .join(name);
    if !path.exists() {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "--bin", name]).current_dir(repo_root());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build")?;
        if !status.success() || !path.exists() {
            bail!("could not build {name} ({})", path.display());
        }
    }
    Ok(path)
}

impl Proxy {
    /// Starts the proxy and waits until it prints its peer ID and listen addresses.
    pub async fn start(opts: ProxyOptions) -> Result<Self> {
        let dir = scratch_dir("proxy")?;
        let key = opts.key.clone().unwrap_or_else(|| dir.path().join("key"));
        let (tcp, metrics) = (free_port(), free_port());
        let mut cmd = Command::new(binary("kitsune-proxy", opts.release)?);
        cmd.arg("-k")
            .arg(&key)
            .args(["-l", &format!("/ip4/127.0.0.1/tcp/{tcp}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .env(
                "RUST_LOG",
                std::env::var("KITSUNE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        if !opts.backends.is_empty() {
            cmd.args(["-d", &opts.backends.join(",")]);
        }
        let ws = opts.ws.then(free_port);
        if let Some(p) = ws {
            cmd.args(["-w", &format!("/ip4/127.0.0.1/tcp/{p}")]);
        }
        let quic = opts.quic.then(free_port);
        if let Some(p) = quic {
            cmd.args(["-l", &format!("/ip4/127.0.0.1/udp/{p}/quic-v1")]);
        }
        cmd.args(&opts.args).envs(opts.env.iter().cloned());
        let started = Instant::now();
        let mut proc = ChildProcess::spawn("kitsune-proxy", cmd, dir.path())?;
        loop {
            let out = proc.stdout();
            let peer_id = out
                .lines()
                .find_map(|l| l.strip_prefix("Peer ID: "))
                .map(str::to_owned);
            let addrs: Vec<&str> = out
                .lines()
                .filter_map(|l| l.strip_prefix("Listening on "))
                .collect();
            let find = |needle: String| {
                addrs
                    .iter()
                    .find(|a| a.contains(&needle))
                    .map(|a| a.to_string())
            };
            // Each requested listener by its port: other lines (preload mode's port)
            // may come first.
            let tcp_addr = find(format!("/tcp/{tcp}/p2p/"));
            let ws_addr = ws.and_then(|p| find(format!("/tcp/{p}/ws/p2p/")));
            let quic_addr = quic.and_then(|p| find(format!("/udp/{p}/quic-v1/p2p/")));
            if let (Some(peer_id), Some(tcp_addr)) = (peer_id, tcp_addr)
                && ws_addr.is_some() == ws.is_some()
                && quic_addr.is_some() == quic.is_some()
            {
                return Ok(Self {
                    tcp_addr,
                    ws_addr,
                    quic_addr,
                    peer_id,
                    metrics_url: format!("http://127.0.0.1:{metrics}"),
                    startup: started.elapsed(),
                    proc,
                    _dir: dir,
                });
            }
            if let Some(status) = proc.try_wait() {
                bail!(
                    "kitsune-proxy exited ({status}) before listening\n{}",
                    proc.log_tail(30)
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("kitsune-proxy did not start in 30 s\n{}", proc.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.metrics_url))
            .await?
            .text()
            .await?)
    }

    /// The value of one metric line (exact name with labels), if present.
    pub async fn metric(&self, name: &str) -> Result<Option<f64>> {
        let text = self.metrics().await?;
        Ok(text.lines().find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        }))
    }

    /// Waits until the proxy has sent clients `n` blocks: a transfer is under way.
    pub async fn wait_blocks_sent(&self, n: f64, timeout: Duration) -> Result<()> {
        crate::wait_for(
            "blocks flowing",
            timeout,
            Duration::from_millis(5),
            || async {
                Ok(self
                    .metric("kitsune_bitswap_blocks_forwarded_total{direction=\"Upstream\"}")
                    .await?
                    .unwrap_or(0.0)
                    >= n)
            },
        )
        .await
    }

    /// Waits until `/readyz` answers 200 (a backend is connected).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/readyz", self.metrics_url);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("proxy not ready in {timeout:?}\n{}", self.proc.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A proxy with the flags `args` in front of `backends`, once it is connected to every
    /// one; panics if it does not start or connect within `timeout`.
    pub async fn in_front_of(backends: &[&KuboNode], args: &[&str], timeout: Duration) -> Self {
        let proxy = Self::start(ProxyOptions {
            backends: backends.iter().map(|k| k.api_multiaddr.clone()).collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        })
        .await
        .expect("proxy starts");
        proxy.wait_backends(backends.len(), timeout).await.unwrap();
        proxy
    }

    /// Waits until `/metrics` shows `n` connected backends.
    pub async fn wait_backends(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .metric("kitsune_bitswap_downstream_peers")
                .await
                .ok()
                .flatten()
                == Some(n as f64)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "proxy did not reach {n} backends in {timeout:?}\n{}",
                    self.proc.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the proxy binary to completion with `args` (for start-up error tests).
pub async fn run_proxy_to_exit(
    args: &[&str],
    dir: &Path,
    timeout: Duration,
) -> Result<std::process::Output> {
    let mut cmd = Command::new(binary("kitsune-proxy", false)?);
    cmd.args(args).current_dir(dir).kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .context("kitsune-proxy did not exit")??;
    Ok(out)
}
