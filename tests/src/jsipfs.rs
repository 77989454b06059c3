//! js-ipfs 0.66.1: the in-process ipfs-core client (`tests/harness/jsipfs/client.mjs`) and the
//! daemon (`tests/harness/jsipfs/daemon.sh`). js-ipfs speaks noise + mplex only (no yamux).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;
use tokio::process::Command;

use crate::ports::free_port;
use crate::preload::JsIpfsJob;
use crate::process::{ChildProcess, ResultLine, read_reported};
use crate::rpc::RpcClient;
use crate::util::{harness_dir, scratch_dir};

/// Options for [`jsipfs_client`] / [`jsipfs_run`]. Steps run in order: connect, add, cat.
#[derive(Clone, Debug)]
pub struct JsIpfsOptions {
    /// Peers to dial (and use as Bootstrap), e.g. `/ip4/127.0.0.1/tcp/P/p2p/ID`.
    pub connect: Vec<String>,
    /// Preload node, e.g. `/ip4/127.0.0.1/tcp/PORT/http`; preload is off when `None`.
    pub preload: Option<String>,
    /// Add `random_bytes(len, seed)`: `(len, seed)`.
    pub add_bytes: Option<(usize, u64)>,
    /// Fetch this CID (UnixFS cat) over bitswap.
    pub cat: Option<String>,
    /// Budget for connect + cat inside the client (Node start-up not included).
    pub timeout: Duration,
    /// Stay up this long before stopping (lets preload requests finish).
    pub linger: Duration,
}

impl Default for JsIpfsOptions {
    fn default() -> Self {
        Self {
            connect: Vec::new(),
            preload: None,
            add_bytes: None,
            cat: None,
            timeout: Duration::from_secs(60),
            linger: Duration::from_secs(1),
        }
    }
}

/// Outcome of one ipfs-core client run (its `RESULT` line plus the fetched bytes).
#[derive(Clone, Debug, Default)]
pub struct JsIpfsResult {
    pub ok: bool,
    pub error: Option<String>,
    /// The client's own peer ID (Ed25519, `12D3KooW...`).
    pub peer_id: Option<String>,
    /// Root CID of the added bytes (`add_bytes`).
    pub added: Option<String>,
    /// The fetched file (`cat`), if any.
    pub bytes: Option<Vec<u8>>,
    /// cat time, ms.
    pub ms: Option<u64>,
    /// Time to connect to all `connect` peers, ms.
    pub connect_ms: Option<u64>,
    pub wall: Duration,
    pub log: String,
}

/// The ipfs-core client's own fields in its `RESULT` line.
#[derive(Deserialize)]
struct Steps {
    peer_id: Option<String>,
    added: Option<String>,
    connect_ms: Option<u64>,
}

/// Run the ipfs-core client; error (with its log) unless every step succeeded.
pub async fn jsipfs_client(opts: &JsIpfsOptions) -> Result<JsIpfsResult> {
    let r = jsipfs_run(opts).await?;
    if !r.ok {
        bail!(
            "ipfs-core client failed: {}\n{}",
            r.error.as_deref().unwrap_or("?"),
            r.log
        );
    }
    Ok(r)
}

/// Run the ipfs-core client once. `Ok` with `ok: false` when a step failed; `Err` only when
/// the client could not run properly.
pub async fn jsipfs_run(opts: &JsIpfsOptions) -> Result<JsIpfsResult> {
    let dir = scratch_dir("jsipfs-client")?;
    let out = dir.path().join("out.bin");
    let cmd = JsIpfsJob {
        connect: opts.connect.clone(),
        preload: opts.preload.clone(),
        add_bytes: opts.add_bytes,
        cat: opts.cat.clone(),
        timeout: opts.timeout,
        linger: opts.linger,
        ..Default::default()
    }
    .command(dir.path(), &out);
    let t0 = Instant::now();
    let mut proc = ChildProcess::spawn("jsipfs-client", cmd, dir.path())?;
    let r: ResultLine<Steps> = proc
        .result_line(opts.timeout + opts.linger + Duration::from_secs(90), 30)
        .await?;
    let wall = t0.elapsed();
    let log = proc.log_tail(30);
    let bytes = match (r.ok, &opts.cat) {
        (true, Some(_)) => Some(read_reported(&out, r.bytes, &log)?),
        _ => None,
    };
    Ok(JsIpfsResult {
        ok: r.ok,
        error: r.error,
        peer_id: r.own.peer_id,
        added: r.own.added,
        bytes,
        ms: r.ms,
        connect_ms: r.own.connect_ms,
        wall,
        log,
    })
}

/// A js-ipfs 0.66.1 daemon on 127.0.0.1 (Ed25519 `12D3KooW...` peer ID; TCP + WS; noise;
/// **mplex only**; bitswap 1.0-1.2; full js-ipfs RPC incl. `cat`). Killed on drop.
/// Start-up takes ~4-6 s.
#[derive(Debug)]
pub struct JsIpfsDaemon {
    pub peer_id: String,
    /// `/ip4/127.0.0.1/tcp/P/p2p/ID`
    pub tcp_addr: String,
    /// `/ip4/127.0.0.1/tcp/W/ws/p2p/ID`
    pub ws_addr: String,
    /// `/ip4/127.0.0.1/tcp/A`
    pub api_multiaddr: String,
    /// `http://127.0.0.1:A`
    pub api_url: String,
    rpc: RpcClient,
    proc: ChildProcess,
    dir: tempfile::TempDir,
}

impl JsIpfsDaemon {
    /// Init a fresh repo and start the daemon; waits until `/api/v0/id` lists its addresses.
    pub async fn start() -> Result<Self> {
        let dir = scratch_dir("jsipfs-daemon")?;
        let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
        let mut cmd = Command::new("bash");
        cmd.arg(harness_dir().join("jsipfs/daemon.sh"))
            .arg(dir.path().join("repo"))
            .args(ports.iter().map(u16::to_string))
            .env("KITSUNE_HARNESS_DIR", harness_dir());
        let mut proc = ChildProcess::spawn("jsipfs-daemon", cmd, dir.path())?;
        let api_url = format!("http://127.0.0.1:{}", ports[2]);
        let rpc = RpcClient::new(&api_url);
        let tcp_port = ports[0];
        let ws_port = ports[1];
        let t0 = Instant::now();
        let id: Value = loop {
            if let Some(s) = proc.try_wait() {
                let logs = proc.log_tail(40);
                bail!("js-ipfs daemon exited with {s} before its API served\n{logs}");
            }
            if let Ok(v) = rpc.id().await
                && v["Addresses"].as_array().map_or(0, Vec::len) >= 2
            {
                break v;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let logs = proc.log_tail(40);
                proc.kill();
                bail!("js-ipfs daemon not ready after 60 s\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let peer_id = id["ID"].as_str().context("id without ID")?.to_string();
        Ok(Self {
            tcp_addr: format!("/ip4/127.0.0.1/tcp/{tcp_port}/p2p/{peer_id}"),
            ws_addr: format!("/ip4/127.0.0.1/tcp/{ws_port}/ws/p2p/{peer_id}"),
            api_multiaddr: format!("/ip4/127.0.0.1/tcp/{}", ports[2]),
            api_url,
            peer_id,
            rpc,
            proc,
            dir,
        })
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `add` via RPC: the root CID (CIDv0, same CIDs as kubo for the same bytes).
    pub async fn add_bytes(&self, data: &[u8]) -> Result<String> {
        self.rpc.add_bytes(data).await
    }

    /// SIGKILL the daemon now.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}
