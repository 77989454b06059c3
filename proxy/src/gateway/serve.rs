//! `GET`/`HEAD /ipfs/{cid}`: a raw block, or a CAR streamed depth-first.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use cid::Cid;
use tokio::sync::mpsc;

use super::car::{self, Follow};
use super::fetch::Pending;
use super::limits::Slot;
use super::request::{CarParams, Format, Refusal, negotiate};
use super::{CAR_WINDOW, GatewayMetrics, GatewayState};
use crate::bitswap::{Block, WantKind};
use crate::preload::client_ip::client_ip;
use crate::preload::front::PeerAddr;
use crate::routing::Fetched;

/// The multihash code of identity CIDs: the data is the digest, nothing to fetch.
const IDENTITY: u64 = 0x00;
const IMMUTABLE: &str = "public, max-age=29030400, immutable";
/// Seconds a client refused for load waits before trying again.
const RETRY_AFTER: &str = "5";

/// Counts one request in flight until dropped (a CAR's lasts until its body ends).
pub(super) struct InFlight(GatewayMetrics);

impl InFlight {
    pub(super) fn new(m: &GatewayMetrics) -> Self {
        m.in_flight.inc();
        Self(m.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

pub(super) fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Range, User-Agent, X-Requested-With"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Content-Length, Content-Type, Etag, X-Ipfs-Path, X-Ipfs-Roots, X-Content-Type-Options",
        ),
    );
}

pub(super) fn plain(status: StatusCode, msg: &str) -> Response {
    let mut r = Response::new(Body::from(format!("{msg}\n")));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    }
    cors(h);
    r
}

pub(super) fn preflight() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    cors(r.headers_mut());
    r
}

/// The status for a fetch that brought nothing.
pub(super) fn failure(f: &Fetched) -> Response {
    match f {
        Fetched::DontHave => plain(StatusCode::NOT_FOUND, "no backend has this block"),
        Fetched::Timeout => plain(
            StatusCode::GATEWAY_TIMEOUT,
            "the backends did not answer in time",
        ),
        Fetched::NoBackend => plain(StatusCode::SERVICE_UNAVAILABLE, "no backend is connected"),
        Fetched::Overloaded => plain(StatusCode::TOO_MANY_REQUESTS, "too many requests"),
        Fetched::Shed => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the backends are too busy to serve this in time",
        ),
        Fetched::Block(_) | Fetched::Have => plain(StatusCode::INTERNAL_SERVER_ERROR, "unexpected"),
    }
}

/// The client behind a request (trusted proxies' `X-Forwarded-For` resolved).
pub(super) fn client_of(
    s: &GatewayState,
    peer: Option<Extension<PeerAddr>>,
    h: &HeaderMap,
) -> IpAddr {
    let peer = peer.map_or(IpAddr::from([127, 0, 0, 1]), |Extension(PeerAddr(a))| {
        a.ip()
    });
    client_ip(
        peer,
        h.get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok()),
        &s.trusted,
    )
}

pub(super) async fn ipfs(
    State(s): State<GatewayState>,
    peer: Option<Extension<PeerAddr>>,
    method: Method,
    Path(rest): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let guard = InFlight::new(&s.metrics);
    let (format, r) = ipfs_inner(&s, peer, &method, &rest, &uri, &headers, guard).await;
    s.metrics
        .answered("ipfs", format, r.status().as_u16(), started);
    r
}

#[allow(clippy::too_many_arguments)]
async fn ipfs_inner(
    s: &GatewayState,
    peer: Option<Extension<PeerAddr>>,
    method: &Method,
    rest: &str,
    uri: &Uri,
    headers: &HeaderMap,
    guard: InFlight,
) -> (&'static str, Response) {
    if method == Method::OPTIONS {
        return ("none", preflight());
    }
    if method != Method::GET && method != Method::HEAD {
        return ("none", plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD"));
    }
    let head = method == Method::HEAD;
    let (cid_text, path) = rest.split_once('/').unwrap_or((rest, ""));
    let cid: Cid = match cid_text.parse() {
        Ok(c) if Cid::to_bytes(&c).len() <= crate::bitswap::MAX_CID_BYTES => c,
        _ => return ("none", plain(StatusCode::BAD_REQUEST, "not a valid CID")),
    };
    let pairs: Vec<(String, String)> = match Query::try_from_uri(uri) {
        Ok(Query(p)) => p,
        Err(_) => return ("none", plain(StatusCode::BAD_REQUEST, "bad query")),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = match negotiate(&pairs, accept) {
        Ok(f) => f,
        Err(Refusal::BadRequest(m)) => return ("none", plain(StatusCode::BAD_REQUEST, &m)),
        Err(Refusal::NotAcceptable(m)) => return ("none", plain(StatusCode::NOT_ACCEPTABLE, &m)),
    };
    let name = match format {
        Format::Raw => "raw",
        Format::Car(_) => "car",
    };
    if !path.is_empty() {
        let r = match format {
            Format::Raw => plain(StatusCode::BAD_REQUEST, "a raw block has no path"),
            Format::Car(_) => plain(
                StatusCode::NOT_IMPLEMENTED,
                "paths under a CID are not resolved here",
            ),
        };
        return (name, r);
    }
    let code = cid.hash().code();
    if code != IDENTITY && multihash_codetable::Code::try_from(code).is_err() {
        return (
            name,
            plain(StatusCode::NOT_IMPLEMENTED, "unsupported hash function"),
        );
    }
    let etag = match format {
        Format::Raw => format!("\"{cid}.raw\""),
        Format::Car(p) => format!(
            "\"{cid}.car.{}.dfs.{}\"",
            p.scope.name(),
            if p.dups { "y" } else { "n" }
        ),
    };
    // Content-addressed: a matching ETag is always still valid.
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        success_headers(r.headers_mut(), &cid, &format, &etag, &pairs);
        return (name, r);
    }
    let client = client_of(s, peer, headers);
    // The wait for a slot is part of the request's budget.
    let deadline = Instant::now() + s.cfg.timeout;
    let Some(slot) = s.slots.take(client, deadline).await else {
        return (
            name,
            plain(StatusCode::TOO_MANY_REQUESTS, "too many requests"),
        );
    };
    let identity = code == IDENTITY;
    let root = if identity {
        Block {
            cid,
            data: Bytes::copy_from_slice(cid.hash().digest()),
        }
    } else if head {
        match s.fetcher.fetch(cid, WantKind::Have, deadline).await {
            Fetched::Have | Fetched::Block(_) => {
                let mut r = Response::new(Body::empty());
                success_headers(r.headers_mut(), &cid, &format, &etag, &pairs);
                return (name, r);
            }
            other => return (name, failure(&other)),
        }
    } else {
        match s.fetcher.fetch(cid, WantKind::Block, deadline).await {
            Fetched::Block(b) => b,
            other => return (name, failure(&other)),
        }
    };
    let body = match (format, head) {
        (_, true) => Body::empty(),
        (Format::Raw, false) => {
            s.pace.wait(client, root.data.len()).await;
            s.metrics.served("raw", root.data.len());
            Body::from(root.data.clone())
        }
        (Format::Car(p), false) => car_body(s, root.clone(), p, client, deadline, slot, guard),
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    success_headers(h, &cid, &format, &etag, &pairs);
    if format == Format::Raw && !head {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(root.data.len()));
    }
    (name, r)
}

fn success_headers(
    h: &mut HeaderMap,
    cid: &Cid,
    format: &Format,
    etag: &str,
    pairs: &[(String, String)],
) {
    let (ctype, ext, fmt) = match format {
        Format::Raw => ("application/vnd.ipld.raw".to_string(), "bin", "raw"),
        Format::Car(p) => (p.content_type(), "car", "car"),
    };
    let value = |s: &str| HeaderValue::from_str(s).expect("ASCII");
    h.insert(header::CONTENT_TYPE, value(&ctype));
    h.insert(header::ETAG, value(etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        value(&format!("attachment; filename=\"{cid}.{ext}\"")),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert("x-ipfs-path", value(&format!("/ipfs/{cid}")));
    h.insert("x-ipfs-roots", value(&cid.to_string()));
    if !pairs.iter().any(|(k, _)| k == "format") {
        h.insert(
            header::CONTENT_LOCATION,
            value(&format!("/ipfs/{cid}?format={fmt}")),
        );
    }
    cors(h);
}

/// Why a CAR stopped before its end.
#[derive(Debug)]
enum Abort {
    Fetch(Fetched),
    Undecodable,
    TooBig,
    ClientGone,
}

impl Abort {
    fn reason(&self) -> &'static str {
        match self {
            Abort::Fetch(Fetched::DontHave) => "missing_block",
            Abort::Fetch(Fetched::Timeout) => "timeout",
            Abort::Fetch(_) => "backend",
            Abort::Undecodable => "undecodable",
            Abort::TooBig => "too_big",
            Abort::ClientGone => "client_gone",
        }
    }
}

/// The CAR body: a task walks the DAG into a small channel. A failure mid-way
/// ends the body with an error, so the client sees a broken transfer (HTTP/1.1
/// without the last chunk, an HTTP/2 reset), never a CAR that looks complete.
fn car_body(
    s: &GatewayState,
    root: Block,
    p: CarParams,
    client: IpAddr,
    deadline: Instant,
    slot: Slot,
    guard: InFlight,
) -> Body {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let s = s.clone();
    tokio::spawn(async move {
        let _held = (slot, guard);
        if let Err(why) = walk(&s, root, p, client, deadline, &tx).await {
            tracing::debug!(?why, "gateway: CAR aborted");
            s.metrics
                .car_aborted
                .get_or_create(&super::metrics::ReasonLabels {
                    reason: why.reason(),
                })
                .inc();
            let _ = tx.send(Err(std::io::Error::other(why.reason()))).await;
        }
    });
    Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

async fn walk(
    s: &GatewayState,
    root: Block,
    p: CarParams,
    client: IpAddr,
    deadline: Instant,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), Abort> {
    let send = |b: Bytes| async move {
        s.metrics.served("car", b.len());
        tx.send(Ok(b)).await.map_err(|_| Abort::ClientGone)
    };
    send(car::header(&root.cid)).await?;
    let follow =
        car::follow_root(p.scope, &root.cid, &root.data).map_err(|_| Abort::Undecodable)?;
    let mut stack: Vec<(Cid, Follow)> = Vec::new();
    let mut seen: HashSet<Cid> = HashSet::new();
    let mut pending: HashMap<Cid, Pending> = HashMap::new();
    let (mut blocks, mut bytes) = (0usize, 0u64);
    let mut next = Some((root, follow));
    while let Some((block, follow)) = next.take() {
        // Identity blocks are never sent (their data is in the CID); their links are.
        if block.cid.hash().code() != IDENTITY {
            blocks += 1;
            bytes += block.data.len() as u64;
            if blocks > s.cfg.max_car_blocks || bytes > s.cfg.max_car_bytes {
                return Err(Abort::TooBig);
            }
            s.pace.wait(client, block.data.len()).await;
            send(car::section_head(&block.cid, block.data.len())).await?;
            send(block.data.clone()).await?;
        }
        seen.insert(block.cid);
        let children =
            car::children(follow, &block.cid, &block.data).map_err(|_| Abort::Undecodable)?;
        stack.extend(children.into_iter().rev());
        // The walk's to-do list cannot usefully outgrow the CAR's block bound.
        if stack.len() > s.cfg.max_car_blocks {
            return Err(Abort::TooBig);
        }
        // The next block in depth-first order, with the ones after it asked ahead.
        while let Some((cid, follow)) = stack.pop() {
            if !p.dups && seen.contains(&cid) {
                continue;
            }
            for (ahead, _) in stack.iter().rev().take(CAR_WINDOW) {
                if pending.len() < CAR_WINDOW
                    && !pending.contains_key(ahead)
                    && (p.dups || !seen.contains(ahead))
                    && ahead.hash().code() != IDENTITY
                {
                    let f = s.fetcher.start(*ahead, WantKind::Block, deadline).await;
                    pending.insert(*ahead, f);
                }
            }
            let block = if cid.hash().code() == IDENTITY {
                Block {
                    cid,
                    data: Bytes::copy_from_slice(cid.hash().digest()),
                }
            } else {
                let f = match pending.remove(&cid) {
                    Some(f) => f,
                    None => s.fetcher.start(cid, WantKind::Block, deadline).await,
                };
                match f.await {
                    Fetched::Block(b) => b,
                    other => return Err(Abort::Fetch(other)),
                }
            };
            next = Some((block, follow));
            break;
        }
    }
    Ok(())
}
