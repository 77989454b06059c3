//! Helia 7 clients: bitswap (`tests/harness/helia/fetch.mjs`: dial one peer, fetch one CID)
//! and HTTP only (`http-fetch.mjs`: trustless gateway, delegated routing).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Deserialize;

use crate::process::run_client;
use crate::util::{node_command, scratch_dir};

/// What to fetch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FetchMode {
    /// UnixFS `cat` of a file CID: the file bytes.
    #[default]
    Cat,
    /// Only the root block (`helia.blockstore.get`): its raw bytes.
    Blocks,
}

/// Options for [`helia_fetch_with`] / [`helia_run`].
#[derive(Clone, Debug)]
pub struct HeliaOptions {
    pub mode: FetchMode,
    /// Dial + fetch budget inside the client (Node start-up not included).
    pub timeout: Duration,
    /// Stream muxers to offer, in preference order (`"yamux"`, `"mplex"`).
    pub muxers: Vec<String>,
    /// A PEM CA bundle Node trusts besides its own (`NODE_EXTRA_CA_CERTS`), for `wss`.
    pub extra_ca: Option<std::path::PathBuf>,
}

impl Default for HeliaOptions {
    fn default() -> Self {
        Self {
            mode: FetchMode::Cat,
            timeout: Duration::from_secs(60),
            muxers: vec!["yamux".into(), "mplex".into()],
            extra_ca: None,
        }
    }
}

/// Outcome of one Helia run (the script's `RESULT` line, plus the fetched bytes).
#[derive(Clone, Debug, Default)]
pub struct FetchResult {
    pub ok: bool,
    /// Error reported by the client when `ok` is false.
    pub error: Option<String>,
    /// The fetched file (`Cat`) or root block (`Blocks`); empty on failure.
    pub bytes: Vec<u8>,
    /// Fetch time in the client, ms (after the dial).
    pub ms: u64,
    /// Dial time (connection + security + muxer upgrade), ms; `None` if the dial failed.
    pub dial_ms: Option<u64>,
    /// Remote peer ID and address of the connection used.
    pub peer: Option<String>,
    pub remote_addr: Option<String>,
    /// Negotiated stream muxer / encryption protocol, e.g. `/yamux/1.0.0`, `/noise`.
    pub muxer: Option<String>,
    pub encryption: Option<String>,
    /// Wall time of the whole client process (Node start-up included).
    pub wall: Duration,
    /// Tail of the client's stdout/stderr.
    pub log: String,
}

/// Helia's own fields in its `RESULT` line.
#[derive(Deserialize)]
struct Connection {
    dial_ms: Option<u64>,
    peer: Option<String>,
    remote_addr: Option<String>,
    muxer: Option<String>,
    encryption: Option<String>,
}

/// Fetch `cid` from the peer at `maddr` (`/ip4/127.0.0.1/tcp/P[/ws]/p2p/ID`) with Helia, UnixFS
/// cat. Error (with the client's log) unless the fetch succeeded.
pub async fn helia_fetch(maddr: &str, cid: &str, timeout: Duration) -> Result<FetchResult> {
    helia_fetch_with(
        maddr,
        cid,
        &HeliaOptions {
            timeout,
            ..Default::default()
        },
    )
    .await
}

/// [`helia_fetch`] with options. Error unless the fetch succeeded.
pub async fn helia_fetch_with(maddr: &str, cid: &str, opts: &HeliaOptions) -> Result<FetchResult> {
    let r = helia_run(maddr, cid, opts).await?;
    if !r.ok {
        bail!(
            "helia fetch of {cid} from {maddr} failed: {}\n{}",
            r.error.as_deref().unwrap_or("?"),
            r.log
        );
    }
    Ok(r)
}

/// Run the Helia client once. `Ok` with `ok: false` when the fetch failed (for tests that
/// expect failure); `Err` only when the client itself could not run properly.
pub async fn helia_run(maddr: &str, cid: &str, opts: &HeliaOptions) -> Result<FetchResult> {
    let dir = scratch_dir("helia")?;
    let out = dir.path().join("out.bin");
    let mut cmd = node_command("helia");
    cmd.arg("fetch.mjs")
        .arg(maddr)
        .arg(cid)
        .arg("--out")
        .arg(&out)
        .arg("--mode")
        .arg(match opts.mode {
            FetchMode::Cat => "cat",
            FetchMode::Blocks => "blocks",
        })
        .arg("--timeout")
        .arg(format!("{:.3}", opts.timeout.as_secs_f64()))
        .arg("--muxers")
        .arg(opts.muxers.join(","));
    if let Some(ca) = &opts.extra_ca {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let t0 = Instant::now();
    let (r, bytes, log) =
        run_client::<Connection>("helia", cmd, dir.path(), &out, opts.timeout).await?;
    let wall = t0.elapsed();
    Ok(FetchResult {
        ok: r.ok,
        error: r.error,
        bytes,
        ms: r.ms.unwrap_or(0),
        dial_ms: r.own.dial_ms,
        peer: r.own.peer,
        remote_addr: r.own.remote_addr,
        muxer: r.own.muxer,
        encryption: r.own.encryption,
        wall,
        log,
    })
}

/// How the HTTP-only client ([`helia_http_fetch`]) finds its gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRouting {
    /// The URL is the one trustless gateway every block is asked of.
    Gateway,
    /// The URL is the only `/routing/v1` router; the gateways are the providers it names.
    Delegated,
}

/// Outcome of one run of `tests/harness/helia/http-fetch.mjs`.
#[derive(Clone, Debug, Default)]
pub struct HttpFetchResult {
    pub ok: bool,
    pub error: Option<String>,
    /// The file bytes (UnixFS cat); empty on failure.
    pub bytes: Vec<u8>,
    /// Fetch time in the client, ms.
    pub ms: u64,
    /// HTTP requests the client made: `/ipfs/...` and `/routing/v1/...`.
    pub ipfs_requests: u64,
    pub routing_requests: u64,
    /// Every origin (`scheme://host:port`) the client sent a request to.
    pub origins: Vec<String>,
    pub log: String,
}

#[derive(Deserialize, Default)]
struct HttpRequests {
    ipfs: u64,
    routing: u64,
}

#[derive(Deserialize)]
struct HttpOwn {
    #[serde(default)]
    requests: HttpRequests,
    #[serde(default)]
    origins: Vec<String>,
}

/// Helia 7 over HTTP only (a light Helia with the trustless-gateway block broker, no
/// libp2p): UnixFS cat of `cid` from `url` (`http://` or `https://`), found as `routing`
/// says. `extra_ca`: a PEM CA bundle Node trusts besides its own, for https. `Ok` with
/// `ok: false` when the fetch failed; `Err` when the client could not run properly.
pub async fn helia_http_run(
    url: &str,
    cid: &str,
    routing: HttpRouting,
    extra_ca: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<HttpFetchResult> {
    helia_http_run_pooled(url, cid, routing, extra_ca, timeout, 6).await
}

/// [`helia_http_run`] with `connections` HTTP connections per origin (over TLS, HTTP/2
/// multiplexes every request on them); 0: Node's own fetch, unbounded.
pub async fn helia_http_run_pooled(
    url: &str,
    cid: &str,
    routing: HttpRouting,
    extra_ca: Option<&std::path::Path>,
    timeout: Duration,
    connections: usize,
) -> Result<HttpFetchResult> {
    let dir = scratch_dir("helia-http")?;
    let out = dir.path().join("out.bin");
    let mut cmd = node_command("helia");
    cmd.arg("http-fetch.mjs")
        .arg(url)
        .arg(cid)
        .arg("--out")
        .arg(&out)
        .arg("--routing")
        .arg(match routing {
            HttpRouting::Gateway => "gateway",
            HttpRouting::Delegated => "delegated",
        })
        .arg("--timeout")
        .arg(format!("{:.3}", timeout.as_secs_f64()))
        .arg("--connections")
        .arg(connections.to_string());
    if let Some(ca) = extra_ca {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let (r, bytes, log) =
        run_client::<HttpOwn>("helia-http", cmd, dir.path(), &out, timeout).await?;
    Ok(HttpFetchResult {
        ok: r.ok,
        error: r.error,
        bytes,
        ms: r.ms.unwrap_or(0),
        ipfs_requests: r.own.requests.ipfs,
        routing_requests: r.own.requests.routing,
        origins: r.own.origins,
        log,
    })
}

/// [`helia_http_run`], an error (with the client's log) unless the fetch succeeded.
pub async fn helia_http_fetch(
    url: &str,
    cid: &str,
    routing: HttpRouting,
    extra_ca: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<HttpFetchResult> {
    let r = helia_http_run(url, cid, routing, extra_ca, timeout).await?;
    if !r.ok {
        bail!(
            "helia HTTP fetch of {cid} from {url} ({routing:?}) failed: {}\n{}",
            r.error.as_deref().unwrap_or("?"),
            r.log
        );
    }
    Ok(r)
}
