//! `GET /routing/v1/providers/{cid}` (delegated routing, IPIP-337): when a backend
//! has the CID, the one provider is the proxy itself.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use cid::Cid;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use super::GatewayState;
use super::serve::{InFlight, cors, failure, plain, preflight};
use crate::bitswap::WantKind;
use crate::preload::front::PeerAddr;
use crate::routing::Fetched;

/// The shared port's addresses at `host`: HTTP for the gateway, WebSocket for
/// bitswap, both under `/tls` when the port has a certificate (browsers and kubo's
/// HTTP retrieval want those). Hosts that are neither an IP nor a plain DNS name
/// give none.
pub(super) fn addrs_for(host: &str, port: u16, tls: bool) -> Vec<Multiaddr> {
    let base = if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Multiaddr::empty().with(ip.into())
    } else if !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        Multiaddr::empty().with(Protocol::Dns(host.to_owned().into()))
    } else {
        return Vec::new();
    };
    let mut tcp = base.with(Protocol::Tcp(port));
    if tls {
        tcp = tcp.with(Protocol::Tls);
    }
    vec![
        tcp.clone().with(Protocol::Http),
        tcp.with(Protocol::Ws("/".into())),
    ]
}

/// `Host: name[:port]` split.
fn host_port(host: &str, default: u16) -> (String, u16) {
    if let Some(rest) = host.strip_prefix('[')
        && let Some((ip, port)) = rest.split_once(']')
    {
        let port = port.strip_prefix(':').and_then(|p| p.parse().ok());
        return (ip.to_owned(), port.unwrap_or(default));
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().unwrap_or(default)),
        _ => (host.to_owned(), default),
    }
}

pub(super) async fn providers(
    State(s): State<GatewayState>,
    peer: Option<Extension<PeerAddr>>,
    method: Method,
    Path(cid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let _guard = InFlight::new(&s.metrics);
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let format = if ndjson { "ndjson" } else { "json" };
    let r = providers_inner(&s, peer, &method, &cid, &headers, ndjson).await;
    s.metrics
        .answered("providers", format, r.status().as_u16(), started);
    r
}

async fn providers_inner(
    s: &GatewayState,
    peer: Option<Extension<PeerAddr>>,
    method: &Method,
    cid: &str,
    headers: &HeaderMap,
    ndjson: bool,
) -> Response {
    if method == Method::OPTIONS {
        return preflight();
    }
    if method != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET");
    }
    let Ok(cid) = cid.parse::<Cid>() else {
        return plain(StatusCode::BAD_REQUEST, "not a valid CID");
    };
    let client = super::serve::client_of(s, peer, headers);
    let deadline = Instant::now() + s.cfg.timeout;
    let Some(_slot) = s.slots.take(client, deadline).await else {
        return plain(StatusCode::TOO_MANY_REQUESTS, "too many requests");
    };
    match s.fetcher.fetch(cid, WantKind::Have, deadline).await {
        Fetched::Have | Fetched::Block(_) => {}
        Fetched::DontHave => {
            let mut r = plain(StatusCode::NOT_FOUND, "no provider");
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=15"),
            );
            return r;
        }
        other => return failure(&other),
    }
    let addrs: Vec<Multiaddr> = if s.addrs.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (host, port) = host_port(host, s.port);
        addrs_for(&host, port, s.tls)
    } else {
        s.addrs.as_ref().clone()
    };
    let record = serde_json::json!({
        "Schema": "peer",
        "ID": s.peer_id.to_string(),
        "Addrs": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "Protocols": ["transport-bitswap", "transport-ipfs-gateway-http"],
    });
    let (body, ctype) = if ndjson {
        (format!("{record}\n"), "application/x-ndjson")
    } else {
        (
            serde_json::json!({ "Providers": [record] }).to_string(),
            "application/json",
        )
    };
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // What the backends hold changes: a short life.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    cors(h);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_hosts() {
        let a = addrs_for("127.0.0.1", 8080, false);
        assert_eq!(a[0].to_string(), "/ip4/127.0.0.1/tcp/8080/http");
        assert_eq!(a[1].to_string(), "/ip4/127.0.0.1/tcp/8080/ws");
        assert_eq!(
            addrs_for("::1", 1, false)[0].to_string(),
            "/ip6/::1/tcp/1/http"
        );
        assert_eq!(
            addrs_for("gw.example", 443, true)[0].to_string(),
            "/dns/gw.example/tcp/443/tls/http"
        );
        assert_eq!(
            addrs_for("gw.example", 443, true)[1].to_string(),
            "/dns/gw.example/tcp/443/tls/ws"
        );
        assert!(addrs_for("evil/p2p-circuit", 1, false).is_empty());
        assert_eq!(host_port("[::1]:9", 1), ("::1".into(), 9));
        assert_eq!(host_port("h:9", 1), ("h".into(), 9));
        assert_eq!(host_port("h", 1), ("h".into(), 1));
    }
}
