//! Learning a backend's peer ID and a dialable swarm address from `POST /api/v0/id`.

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::Deserialize;

use super::spec::BackendSpec;

/// The largest `/api/v0/id` answer we read (kubo's is a few KiB).
const MAX_ID_RESPONSE: usize = 1024 * 1024;
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
struct IdResponse {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Addresses", default)]
    addresses: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub peer: PeerId,
    /// Dialable addresses on the RPC host, best first, each ending in `/p2p/<peer>`.
    pub addrs: Vec<Multiaddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}/api/v0/id: {1}")]
    Http(String, String),
    #[error("{0}/api/v0/id answered {1}")]
    Status(String, u16),
    #[error("{0}/api/v0/id: bad answer: {1}")]
    Body(String, String),
    #[error("{0}: no TCP or QUIC-v1 swarm address in /api/v0/id")]
    NoAddress(String),
}

pub async fn resolve(
    client: &reqwest::Client,
    spec: &BackendSpec,
) -> Result<Resolved, ResolveError> {
    let base = spec.rpc_url();
    let resp = client
        .post(format!("{base}/api/v0/id"))
        .timeout(RESOLVE_TIMEOUT)
        .send()
        .await
        .map_err(|e| ResolveError::Http(base.clone(), e.to_string()))?;
    if !resp.status().is_success() {
        return Err(ResolveError::Status(base, resp.status().as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n as usize > MAX_ID_RESPONSE)
    {
        return Err(ResolveError::Body(base, "too large".into()));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| ResolveError::Http(base.clone(), e.to_string()))?;
    if body.len() > MAX_ID_RESPONSE {
        return Err(ResolveError::Body(base, "too large".into()));
    }
    parse_id_response(spec, &body).map_err(|e| match e {
        ResolveError::Body(_, why) => ResolveError::Body(base, why),
        other => other,
    })
}

/// The pure part: pick addresses from an `/api/v0/id` body.
pub fn parse_id_response(spec: &BackendSpec, body: &[u8]) -> Result<Resolved, ResolveError> {
    let base = spec.rpc_url();
    let id: IdResponse = serde_json::from_slice(body)
        .map_err(|e| ResolveError::Body(base.clone(), e.to_string()))?;
    let peer: PeerId = id
        .id
        .parse()
        .map_err(|_| ResolveError::Body(base.clone(), "ID is not a peer ID".into()))?;
    let mut on_host = Vec::new();
    let mut ports = Vec::new();
    for a in id.addresses.unwrap_or_default() {
        let Ok(addr) = a.parse::<Multiaddr>() else {
            continue;
        };
        let Some((host, transport)) = split_dialable(&addr) else {
            continue;
        };
        if host == spec.host_protocol() {
            on_host.push((transport.clone(), rebuild(host, &transport, peer)));
        }
        ports.push(transport);
    }
    // Prefer an address kubo itself reports on the RPC host; else its ports on the RPC host
    // (kubo often reports 127.0.0.1 and the pod IP; the RPC host is what we can reach).
    let mut picked: Vec<(Transport, Multiaddr)> = on_host;
    if let Some(port) = spec.swarm_port {
        picked.push((
            Transport::Tcp(port),
            rebuild(spec.host_protocol(), &Transport::Tcp(port), peer),
        ));
    }
    for t in ports {
        picked.push((t.clone(), rebuild(spec.host_protocol(), &t, peer)));
    }
    picked.sort_by_key(|(t, _)| matches!(t, Transport::Quic(_)));
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for (_, a) in picked {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(ResolveError::NoAddress(base));
    }
    Ok(Resolved { peer, addrs })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    Tcp(u16),
    Quic(u16),
}

/// `/<host>/tcp/N[/p2p/..]` or `/<host>/udp/N/quic-v1[/p2p/..]`; nothing else (no ws,
/// webtransport, webrtc, relays, or the draft-29 `/quic` that kubo no longer serves).
fn split_dialable(addr: &Multiaddr) -> Option<(Protocol<'static>, Transport)> {
    let parts: Vec<Protocol> = addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    let host = match parts.first()? {
        p @ (Protocol::Ip4(_) | Protocol::Ip6(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => {
            p.clone().acquire()
        }
        _ => return None,
    };
    match &parts[1..] {
        [Protocol::Tcp(port)] => Some((host, Transport::Tcp(*port))),
        [Protocol::Udp(port), Protocol::QuicV1] => Some((host, Transport::Quic(*port))),
        _ => None,
    }
}

fn rebuild(host: Protocol<'static>, t: &Transport, peer: PeerId) -> Multiaddr {
    let mut a = Multiaddr::empty().with(host);
    match t {
        Transport::Tcp(port) => a.push(Protocol::Tcp(*port)),
        Transport::Quic(port) => {
            a.push(Protocol::Udp(*port));
            a.push(Protocol::QuicV1);
        }
    }
    a.with(Protocol::P2p(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBO_ID: &str = "QmUjmJJyRAW8Qp9iQaQ2oZ5vhwzpwFK8Xxs7GRtYwWFrF8";

    fn spec(s: &str) -> BackendSpec {
        BackendSpec::from_multiaddr(&s.parse().unwrap()).unwrap()
    }

    fn body(addrs: &[&str]) -> Vec<u8> {
        serde_json::json!({"ID": KUBO_ID, "Addresses": addrs, "AgentVersion": "kubo/0.22.0/"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn prefers_tcp_on_the_rpc_host() {
        let r = parse_id_response(
            &spec("/ip4/10.0.0.5/tcp/5001"),
            &body(&[
                "/ip4/10.0.0.5/udp/4001/quic-v1/p2p/QmUjmJJyRAW8Qp9iQaQ2oZ5vhwzpwFK8Xxs7GRtYwWFrF8",
                "/ip4/10.0.0.5/tcp/4001/p2p/QmUjmJJyRAW8Qp9iQaQ2oZ5vhwzpwFK8Xxs7GRtYwWFrF8",
                "/ip4/10.0.0.5/tcp/4002/ws/p2p/QmUjmJJyRAW8Qp9iQaQ2oZ5vhwzpwFK8Xxs7GRtYwWFrF8",
                "/ip4/127.0.0.1/tcp/4001/p2p/QmUjmJJyRAW8Qp9iQaQ2oZ5vhwzpwFK8Xxs7GRtYwWFrF8",
            ]),
        )
        .unwrap();
        assert_eq!(r.peer.to_string(), KUBO_ID);
        assert_eq!(
            r.addrs[0].to_string(),
            format!("/ip4/10.0.0.5/tcp/4001/p2p/{KUBO_ID}")
        );
        assert_eq!(
            r.addrs[1].to_string(),
            format!("/ip4/10.0.0.5/udp/4001/quic-v1/p2p/{KUBO_ID}")
        );
        assert!(r.addrs.iter().all(|a| !a.to_string().contains("/ws")));
    }

    #[test]
    fn uses_the_rpc_host_when_kubo_reports_other_ips() {
        let r = parse_id_response(
            &spec("/dns4/kubo-0.kubo/tcp/5001"),
            &body(&["/ip4/127.0.0.1/tcp/4001", "/ip4/10.1.2.3/udp/4001/quic"]),
        )
        .unwrap();
        assert_eq!(
            r.addrs,
            vec![
                format!("/dns4/kubo-0.kubo/tcp/4001/p2p/{KUBO_ID}")
                    .parse::<Multiaddr>()
                    .unwrap()
            ]
        );
    }

    #[test]
    fn bad_answers_are_errors() {
        let s = spec("/ip4/10.0.0.5/tcp/5001");
        assert!(matches!(
            parse_id_response(&s, b"<html>"),
            Err(ResolveError::Body(..))
        ));
        assert!(matches!(
            parse_id_response(&s, br#"{"ID":"nope","Addresses":[]}"#),
            Err(ResolveError::Body(..))
        ));
        assert!(matches!(
            parse_id_response(&s, &body(&["/ip4/10.0.0.5/tcp/4002/ws"])),
            Err(ResolveError::NoAddress(_))
        ));
        assert!(matches!(
            parse_id_response(
                &s,
                format!(r#"{{"ID":"{KUBO_ID}","Addresses":null}}"#).as_bytes()
            ),
            Err(ResolveError::NoAddress(_))
        ));
    }
}
