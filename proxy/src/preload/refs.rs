//! `/api/v0/refs`, as js-ipfs calls it on its preload nodes: parse and check kubo's
//! parameters, open a preload session in the engine (which picks the backend and
//! allows the reverse wants), forward the call to that backend and stream its ndjson
//! back. Failures are non-2xx so js-ipfs moves on to its next preload node.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cid::Cid;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::client_ip::{Cidr, client_ip};
use super::sessions::SessionId;
use crate::front::PeerAddr;
use crate::metrics::Metrics;

/// At most this many `arg`s in one call.
pub const MAX_ARGS: usize = 64;

/// What the refs endpoint asks of the engine.
#[derive(Debug)]
pub enum PreloadCmd {
    Open {
        roots: Vec<Cid>,
        client: IpAddr,
        max_depth: Option<u32>,
        reply: oneshot::Sender<Result<Opened, OpenFail>>,
    },
    Close(SessionId),
}

#[derive(Debug, Clone)]
pub struct Opened {
    pub id: SessionId,
    /// The chosen backend's RPC base URL.
    pub rpc_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFail {
    NoBackend,
    TooMany,
    /// The caller's address key holds its share of the preloads.
    TooManyForAddress,
}

#[derive(Clone)]
pub struct RefsState {
    pub engine: mpsc::UnboundedSender<PreloadCmd>,
    pub http: reqwest::Client,
    /// Refs calls in flight; past it, 429.
    pub permits: Arc<Semaphore>,
    /// Refs calls in flight per address key (`--ipv4-prefix-len`, `--ipv6-prefix-len`);
    /// past it, 429.
    pub per_address: Arc<crate::quota::KeyedQuota<ipnet::IpNet>>,
    pub address_key: crate::net::ip_limit::AddressKey,
    pub trusted: Arc<Vec<Cidr>>,
    /// The whole budget of one call at the backend, body included.
    pub timeout: Duration,
    pub metrics: Metrics,
}

/// The preload routes: `/api/v0/refs`. The shared port answers 404 for other paths.
pub fn router(state: RefsState) -> axum::Router {
    axum::Router::new()
        .route("/api/v0/refs", axum::routing::any(refs))
        .with_state(state)
}

/// The parameters of one call, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefsQuery {
    pub roots: Vec<Cid>,
    /// The `arg`s as given (paths under a root are kept for the backend).
    pub args: Vec<String>,
    pub recursive: bool,
    pub unique: bool,
    pub max_depth: i64,
}

impl RefsQuery {
    /// Kubo's semantics: `r`/`recursive`, `u`/`unique`, `max-depth` (-1: unlimited);
    /// without `recursive` and `max-depth`, only the direct links.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let flag = |names: &[&str]| -> Result<bool, String> {
            let mut v = false;
            for (k, val) in pairs.iter().filter(|(k, _)| names.contains(&k.as_str())) {
                v = match val.to_ascii_lowercase().as_str() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("invalid boolean value {val:?} for option {k:?}")),
                };
            }
            Ok(v)
        };
        let recursive = flag(&["r", "recursive"])?;
        let unique = flag(&["u", "unique"])?;
        let max_depth = match pairs.iter().rev().find(|(k, _)| k == "max-depth") {
            Some((_, v)) => v
                .parse::<i64>()
                .map_err(|_| format!("invalid integer value {v:?} for option \"max-depth\""))?,
            None => -1,
        };
        let args: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "arg")
            .map(|(_, v)| v.clone())
            .collect();
        if args.is_empty() {
            return Err("argument \"ipfs-path\" is required".into());
        }
        if args.len() > MAX_ARGS {
            return Err(format!("at most {MAX_ARGS} arguments"));
        }
        let roots = args
            .iter()
            .map(|a| root_of(a).ok_or_else(|| format!("invalid path {a:?}: not a CID")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            roots,
            args,
            recursive,
            unique,
            max_depth,
        })
    }

    /// How deep the backend will go (None: the whole DAG).
    pub fn depth_limit(&self) -> Option<u32> {
        match (self.recursive, self.max_depth) {
            (_, d) if d >= 0 => Some(d.min(i64::from(u32::MAX)) as u32),
            (true, _) => None,
            (false, _) => Some(1),
        }
    }

    /// The query for the backend: kubo's long names.
    pub fn backend_query(&self) -> Vec<(&'static str, String)> {
        let mut q: Vec<(&'static str, String)> =
            self.args.iter().map(|a| ("arg", a.clone())).collect();
        q.push(("recursive", self.recursive.to_string()));
        q.push(("unique", self.unique.to_string()));
        q.push(("max-depth", self.max_depth.to_string()));
        q
    }
}

/// The CID an `arg` starts at: `<cid>`, `<cid>/path`, `/ipfs/<cid>[/path]`.
fn root_of(arg: &str) -> Option<Cid> {
    let s = arg.strip_prefix("/ipfs/").unwrap_or(arg);
    let first = s.split('/').next()?;
    let cid: Cid = first.parse().ok()?;
    (cid.to_bytes().len() <= crate::bitswap::MAX_CID_BYTES).then_some(cid)
}

fn kubo_error(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::json!({ "Message": msg, "Code": 0, "Type": "error" });
    let mut r = (status, axum::Json(body)).into_response();
    cors(r.headers_mut());
    r
}

fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

async fn refs(
    State(s): State<RefsState>,
    peer: Option<Extension<PeerAddr>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method == Method::OPTIONS {
        return preflight(&headers);
    }
    if method != Method::GET && method != Method::POST {
        return kubo_error(StatusCode::METHOD_NOT_ALLOWED, "405 - Method Not Allowed");
    }
    let outcome = |o: &'static str| s.metrics.refs_outcome(o);
    let pairs: Vec<(String, String)> = match Query::try_from_uri(&uri) {
        Ok(Query(p)) => p,
        Err(e) => {
            outcome("bad_request");
            return kubo_error(StatusCode::BAD_REQUEST, &e.body_text());
        }
    };
    let q = match RefsQuery::parse(&pairs) {
        Ok(q) => q,
        Err(msg) => {
            outcome("bad_request");
            return kubo_error(StatusCode::BAD_REQUEST, &msg);
        }
    };
    let Some(Extension(PeerAddr(peer))) = peer else {
        outcome("error");
        return kubo_error(StatusCode::INTERNAL_SERVER_ERROR, "no peer address");
    };
    let client = client_ip(
        peer.ip(),
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok()),
        &s.trusted,
    );
    let Some(address_permit) = s.per_address.try_acquire(s.address_key.of(client)) else {
        outcome("too_many_per_address");
        return too_many();
    };
    let Ok(permit) = s.permits.clone().try_acquire_owned() else {
        outcome("too_many_requests");
        return too_many();
    };
    let (reply, rx) = oneshot::channel();
    let open = PreloadCmd::Open {
        roots: q.roots.clone(),
        client,
        max_depth: q.depth_limit(),
        reply,
    };
    if s.engine.send(open).is_err() {
        outcome("error");
        return kubo_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let opened = match rx.await {
        Ok(Ok(o)) => o,
        Ok(Err(OpenFail::TooMany)) => {
            outcome("too_many_requests");
            return too_many();
        }
        Ok(Err(OpenFail::TooManyForAddress)) => {
            outcome("too_many_per_address");
            return too_many();
        }
        Ok(Err(OpenFail::NoBackend)) => {
            outcome("no_backend");
            return kubo_error(StatusCode::SERVICE_UNAVAILABLE, "no backend is connected");
        }
        Err(_) => {
            outcome("error");
            return kubo_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
    };
    let guard = Guard {
        engine: s.engine.clone(),
        id: opened.id,
        metrics: s.metrics.clone(),
        outcome: "client_gone",
        _permit: permit,
        _address_permit: address_permit,
    };
    tracing::debug!(%client, roots = q.roots.len(), backend = %opened.rpc_url, "preload");
    let deadline = Instant::now() + s.timeout;
    let Ok(mut url) = reqwest::Url::parse(&format!("{}/api/v0/refs", opened.rpc_url)) else {
        return guard.fail(
            "error",
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad backend URL",
        );
    };
    url.query_pairs_mut().extend_pairs(q.backend_query());
    let call = s.http.post(url).send();
    let resp = match tokio::time::timeout_at(deadline, call).await {
        Err(_) => {
            return guard.fail(
                "backend_timeout",
                StatusCode::GATEWAY_TIMEOUT,
                "the backend did not answer in time",
            );
        }
        Ok(Err(e)) => {
            tracing::warn!(backend = %opened.rpc_url, error = %e, "preload: backend refs failed");
            return guard.fail(
                "backend_error",
                StatusCode::BAD_GATEWAY,
                "the backend is unreachable",
            );
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if !status.is_success() {
        // Its error, bounded, with its status when it is an error status.
        let code = if status.is_client_error() || status.is_server_error() {
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
        } else {
            StatusCode::BAD_GATEWAY
        };
        let text = match tokio::time::timeout_at(deadline, resp.bytes()).await {
            Ok(Ok(b)) => {
                let b = &b[..b.len().min(4096)];
                serde_json::from_slice::<serde_json::Value>(b)
                    .ok()
                    .and_then(|v| v.get("Message")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(b).into_owned())
            }
            _ => format!("backend answered {status}"),
        };
        return guard.fail("backend_error", code, &text);
    }
    let body = futures::stream::unfold(
        (resp.bytes_stream(), Some(guard)),
        move |(mut stream, mut guard)| async move {
            let g = guard.as_mut()?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), (stream, guard))),
                Ok(None) => {
                    g.outcome = "ok";
                    None
                }
                Ok(Some(Err(e))) => {
                    g.outcome = "backend_error";
                    Some((Err(std::io::Error::other(e)), (stream, None)))
                }
                Err(_) => {
                    g.outcome = "backend_timeout";
                    Some((
                        Err(std::io::Error::other("backend timeout")),
                        (stream, None),
                    ))
                }
            }
        },
    );
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-chunked-output", HeaderValue::from_static("1"));
    cors(h);
    r
}

fn too_many() -> Response {
    let mut r = kubo_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many preload requests; retry later",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn preflight(headers: &HeaderMap) -> Response {
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    cors(h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let allow = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static("content-type"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// Held for the life of one call (through its streamed body): the concurrency slot,
/// the session (closed on drop) and the outcome to count.
struct Guard {
    engine: mpsc::UnboundedSender<PreloadCmd>,
    id: SessionId,
    metrics: Metrics,
    outcome: &'static str,
    _permit: OwnedSemaphorePermit,
    _address_permit: crate::quota::Permit<ipnet::IpNet>,
}

impl Guard {
    fn fail(mut self, outcome: &'static str, status: StatusCode, msg: &str) -> Response {
        self.outcome = outcome;
        kubo_error(status, msg)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.metrics.refs_outcome(self.outcome);
        let _ = self.engine.send(PreloadCmd::Close(self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        let uri: Uri = format!("/api/v0/refs?{q}").parse().unwrap();
        Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .unwrap()
            .0
    }

    const V0: &str = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn";
    const V1: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

    #[test]
    fn js_ipfs_style_calls_parse() {
        let q = RefsQuery::parse(&pairs(&format!("r=true&arg={V0}"))).unwrap();
        assert_eq!(q.roots, vec![V0.parse::<Cid>().unwrap()]);
        assert!(q.recursive && !q.unique);
        assert_eq!(q.depth_limit(), None);
        assert_eq!(
            q.backend_query(),
            vec![
                ("arg", V0.to_string()),
                ("recursive", "true".into()),
                ("unique", "false".into()),
                ("max-depth", "-1".into())
            ]
        );
        let q = RefsQuery::parse(&pairs(&format!(
            "arg=/ipfs/{V0}/a/b&arg={V1}&unique&max-depth=3&recursive=1"
        )))
        .unwrap();
        assert_eq!(q.roots.len(), 2);
        assert_eq!(q.args[0], format!("/ipfs/{V0}/a/b"));
        assert!(q.unique);
        assert_eq!(q.depth_limit(), Some(3));
        let q = RefsQuery::parse(&pairs(&format!("arg={V1}"))).unwrap();
        assert_eq!(q.depth_limit(), Some(1), "not recursive: direct links");
    }

    #[test]
    fn bad_calls_are_refused() {
        for bad in [
            String::new(),
            "arg=notacid".into(),
            format!("arg={V0}&r=maybe"),
            format!("arg={V0}&max-depth=x"),
            format!("arg={V0}&arg=/ipfs/"),
            (0..=MAX_ARGS)
                .map(|_| format!("arg={V0}"))
                .collect::<Vec<_>>()
                .join("&"),
        ] {
            assert!(RefsQuery::parse(&pairs(&bad)).is_err(), "{bad}");
        }
    }
}
