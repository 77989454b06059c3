//! Helia 7 clients: bitswap (`tests/harness/helia/fetch.mjs`: dial one peer, fetch one CID)
//! and HTTP only (`http-fetch.mjs`: trustless gateway, delegated routing).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::process::{ClientRun, run_client};
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

/// Outcome of one Helia run over bitswap: the fetched file (`Cat`) or root block
/// (`Blocks`), and the connection it came over.
pub type FetchResult = ClientRun<Connection>;

/// Helia's own fields in its `RESULT` line: the connection used.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Connection {
    /// Dial time (connection + security + muxer upgrade), ms; `None` if the dial failed.
    pub dial_ms: Option<u64>,
    /// Remote peer ID and address of the connection used.
    pub peer: Option<String>,
    pub remote_addr: Option<String>,
    /// Negotiated stream muxer / encryption protocol, e.g. `/yamux/1.0.0`, `/noise`.
    pub muxer: Option<String>,
    pub encryption: Option<String>,
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
    helia_run(maddr, cid, opts)
        .await?
        .succeeded(format_args!("helia fetch of {cid} from {maddr}"))
}

/// Run the Helia client once. `Ok` with `ok: false` when the fetch failed (for tests that
/// expect failure); `Err` only when the client itself could not run properly.
pub async fn helia_run(maddr: &str, cid: &str, opts: &HeliaOptions) -> Result<FetchResult> {
    let mode = match opts.mode {
        FetchMode::Cat => "cat",
        FetchMode::Blocks => "blocks",
    };
    let args = ["--mode", mode, "--muxers", &opts.muxers.join(",")];
    let ca = opts.extra_ca.as_deref();
    run_helia("helia", "fetch.mjs", maddr, cid, &args, ca, opts.timeout).await
}

/// Runs `helia/<script> <from> <cid> --out FILE --timeout SECONDS <args>` to its
/// `RESULT` line; `extra_ca` is trusted besides Node's own roots.
async fn run_helia<T: DeserializeOwned>(
    name: &str,
    script: &str,
    from: &str,
    cid: &str,
    args: &[&str],
    extra_ca: Option<&Path>,
    timeout: Duration,
) -> Result<ClientRun<T>> {
    let dir = scratch_dir(name)?;
    let out = dir.path().join("out.bin");
    let mut cmd = node_command("helia");
    cmd.arg(script)
        .arg(from)
        .arg(cid)
        .arg("--out")
        .arg(&out)
        .arg("--timeout")
        .arg(format!("{:.3}", timeout.as_secs_f64()))
        .args(args);
    if let Some(ca) = extra_ca {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    run_client(name, cmd, dir.path(), &out, timeout).await
}

/// How the HTTP-only client ([`helia_http_fetch`]) finds its gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRouting {
    /// The URL is the one trustless gateway every block is asked of.
    Gateway,
    /// The URL is the only `/routing/v1` router; the gateways are the providers it names.
    Delegated,
}

/// Outcome of one run of `tests/harness/helia/http-fetch.mjs`: the file bytes (UnixFS
/// cat), and the requests the client made.
pub type HttpFetchResult = ClientRun<HttpTraffic>;

/// `http-fetch.mjs`'s own fields in its `RESULT` line.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct HttpTraffic {
    /// HTTP requests the client made: `/ipfs/...` and `/routing/v1/...`.
    #[serde(default)]
    pub requests: RequestCounts,
    /// Every origin (`scheme://host:port`) the client sent a request to.
    #[serde(default)]
    pub origins: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RequestCounts {
    pub ipfs: u64,
    pub routing: u64,
}

/// How to run the HTTP-only client ([`helia_http_run`]).
#[derive(Clone, Debug)]
pub struct HttpOptions<'a> {
    pub routing: HttpRouting,
    /// A PEM CA bundle Node trusts besides its own, for https.
    pub extra_ca: Option<&'a Path>,
    /// The fetch budget inside the client (Node start-up not included).
    pub timeout: Duration,
    /// HTTP connections per origin (over TLS, HTTP/2 multiplexes every request on
    /// them); 0: Node's own fetch, unbounded.
    pub connections: usize,
}

impl Default for HttpOptions<'_> {
    fn default() -> Self {
        Self {
            routing: HttpRouting::Gateway,
            extra_ca: None,
            timeout: Duration::from_secs(60),
            connections: 6,
        }
    }
}

/// Helia 7 over HTTP only (a light Helia with the trustless-gateway block broker, no
/// libp2p): UnixFS cat of `cid` from `url` (`http://` or `https://`), found and run as
/// `opts` says. `Ok` with `ok: false` when the fetch failed; `Err` when the client
/// could not run properly.
pub async fn helia_http_run(
    url: &str,
    cid: &str,
    opts: &HttpOptions<'_>,
) -> Result<HttpFetchResult> {
    let routing = match opts.routing {
        HttpRouting::Gateway => "gateway",
        HttpRouting::Delegated => "delegated",
    };
    let connections = opts.connections.to_string();
    let args = ["--routing", routing, "--connections", &connections];
    let (ca, timeout) = (opts.extra_ca, opts.timeout);
    run_helia("helia-http", "http-fetch.mjs", url, cid, &args, ca, timeout).await
}

/// [`helia_http_run`], an error (with the client's log) unless the fetch succeeded.
pub async fn helia_http_fetch(
    url: &str,
    cid: &str,
    opts: &HttpOptions<'_>,
) -> Result<HttpFetchResult> {
    helia_http_run(url, cid, opts)
        .await?
        .succeeded(format_args!(
            "helia HTTP fetch of {cid} from {url} ({:?})",
            opts.routing
        ))
}
