//! A backend as configured: where its kubo RPC API listens.

use std::fmt;
use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Ip(IpAddr),
    Dns4(String),
    Dns6(String),
}

/// A kubo node's RPC endpoint (`/ip4/10.0.0.5/tcp/5001`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSpec {
    pub host: Host,
    pub rpc_port: u16,
    /// The swarm port, when already known (the operator says it); else from `/api/v0/id`.
    pub swarm_port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("backend address {addr}: {why} (expected /ip4, /ip6, /dns4 or /dns6, then /tcp/PORT)")]
pub struct SpecError {
    addr: String,
    why: &'static str,
}

impl BackendSpec {
    pub fn from_multiaddr(addr: &Multiaddr) -> Result<Self, SpecError> {
        let err = |why| SpecError {
            addr: addr.to_string(),
            why,
        };
        let mut parts = addr.iter();
        let host = match parts.next() {
            Some(Protocol::Ip4(ip)) => Host::Ip(ip.into()),
            Some(Protocol::Ip6(ip)) => Host::Ip(ip.into()),
            Some(Protocol::Dns4(name)) => Host::Dns4(name.to_string()),
            Some(Protocol::Dns6(name)) | Some(Protocol::Dns(name)) => Host::Dns6(name.to_string()),
            _ => return Err(err("no host")),
        };
        let rpc_port = match parts.next() {
            Some(Protocol::Tcp(port)) if port != 0 => port,
            _ => return Err(err("no TCP port")),
        };
        match parts.next() {
            None | Some(Protocol::Http) => {}
            Some(_) => return Err(err("unexpected protocols after the port")),
        }
        Ok(Self {
            host,
            rpc_port,
            swarm_port: None,
        })
    }

    /// The RPC base URL, e.g. `http://[::1]:5001`.
    pub fn rpc_url(&self) -> String {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => format!("http://[{ip}]:{}", self.rpc_port),
            Host::Ip(ip) => format!("http://{ip}:{}", self.rpc_port),
            Host::Dns4(n) | Host::Dns6(n) => format!("http://{n}:{}", self.rpc_port),
        }
    }

    /// The multiaddr host component, to build swarm addresses on the RPC host.
    pub fn host_protocol(&self) -> Protocol<'static> {
        match &self.host {
            Host::Ip(IpAddr::V4(ip)) => Protocol::Ip4(*ip),
            Host::Ip(IpAddr::V6(ip)) => Protocol::Ip6(*ip),
            Host::Dns4(n) => Protocol::Dns4(n.clone().into()),
            Host::Dns6(n) => Protocol::Dns6(n.clone().into()),
        }
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.rpc_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<BackendSpec, SpecError> {
        BackendSpec::from_multiaddr(&s.parse().unwrap())
    }

    #[test]
    fn parses_every_host_form() {
        assert_eq!(
            spec("/ip4/10.0.1.42/tcp/5001").unwrap().rpc_url(),
            "http://10.0.1.42:5001"
        );
        assert_eq!(
            spec("/ip6/::1/tcp/5002").unwrap().rpc_url(),
            "http://[::1]:5002"
        );
        assert_eq!(
            spec("/dns4/kubo-0.kubo/tcp/5001").unwrap().rpc_url(),
            "http://kubo-0.kubo:5001"
        );
        assert_eq!(
            spec("/dns6/kubo/tcp/5001/http").unwrap().rpc_url(),
            "http://kubo:5001"
        );
    }

    #[test]
    fn refuses_what_is_not_an_rpc_address() {
        assert!(spec("/ip4/1.2.3.4/udp/5001").is_err());
        assert!(spec("/ip4/1.2.3.4").is_err());
        assert!(spec("/ip4/1.2.3.4/tcp/0").is_err());
        assert!(spec("/ip4/1.2.3.4/tcp/4001/ws").is_err());
        assert!(spec("/tcp/4001").is_err());
    }
}
