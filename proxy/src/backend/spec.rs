//! A backend as configured: where its kubo RPC API listens.

use std::fmt;
use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Ip(IpAddr),
    /// `/dns/NAME`: resolved to both address families.
    Dns(String),
    /// `/dns4/NAME`: IPv4 addresses only.
    Dns4(String),
    /// `/dns6/NAME`: IPv6 addresses only.
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
#[error(
    "backend address {addr}: {why} (expected /ip4, /ip6, /dns, /dns4 or /dns6, then /tcp/PORT)"
)]
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
        let name = |n: &str| dns_name(n).ok_or_else(|| err("the name is not a DNS host name"));
        let mut parts = addr.iter();
        let host = match parts.next() {
            Some(Protocol::Ip4(ip)) => Host::Ip(ip.into()),
            Some(Protocol::Ip6(ip)) => Host::Ip(ip.into()),
            Some(Protocol::Dns(n)) => Host::Dns(name(&n)?),
            Some(Protocol::Dns4(n)) => Host::Dns4(name(&n)?),
            Some(Protocol::Dns6(n)) => Host::Dns6(name(&n)?),
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
    ///
    /// For a DNS name the HTTP client resolves both families whatever the multiaddr
    /// said (`/dns4` or `/dns6` only restricts the swarm dial); the name is checked at
    /// parse time, so it cannot carry URL syntax (`user@`, `/path`) into the URL.
    pub fn rpc_url(&self) -> String {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => format!("http://[{ip}]:{}", self.rpc_port),
            Host::Ip(ip) => format!("http://{ip}:{}", self.rpc_port),
            Host::Dns(n) | Host::Dns4(n) | Host::Dns6(n) => {
                format!("http://{n}:{}", self.rpc_port)
            }
        }
    }

    /// The multiaddr host component, to build swarm addresses on the RPC host.
    pub fn host_protocol(&self) -> Protocol<'static> {
        match &self.host {
            Host::Ip(IpAddr::V4(ip)) => Protocol::Ip4(*ip),
            Host::Ip(IpAddr::V6(ip)) => Protocol::Ip6(*ip),
            Host::Dns(n) => Protocol::Dns(n.clone().into()),
            Host::Dns4(n) => Protocol::Dns4(n.clone().into()),
            Host::Dns6(n) => Protocol::Dns6(n.clone().into()),
        }
    }
}

/// `name` if it is a DNS host name (letters, digits, `-`, `_` in dot-separated labels,
/// an optional final dot), as the RPC URL and the swarm dial must both understand it.
fn dns_name(name: &str) -> Option<String> {
    let labels = name.strip_suffix('.').unwrap_or(name);
    let ok = !labels.is_empty()
        && labels.len() <= 253
        && labels.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        });
    ok.then(|| name.to_owned())
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
    fn dns_keeps_both_families_and_dns4_dns6_keep_one() {
        // `/dns` used to become `/dns6`: a kubo on 127.0.0.1 behind `localhost` was never dialled.
        let any = spec("/dns/localhost/tcp/5001").unwrap();
        assert_eq!(any.host, Host::Dns("localhost".into()));
        assert_eq!(any.host_protocol(), Protocol::Dns("localhost".into()));
        assert_eq!(any.rpc_url(), "http://localhost:5001");
        assert_eq!(
            spec("/dns4/localhost/tcp/5001").unwrap().host_protocol(),
            Protocol::Dns4("localhost".into())
        );
        assert_eq!(
            spec("/dns6/localhost/tcp/5001").unwrap().host_protocol(),
            Protocol::Dns6("localhost".into())
        );
        assert_eq!(
            spec("/dns/kubo-0.kubo.ipfs.svc./tcp/5001")
                .unwrap()
                .rpc_url(),
            "http://kubo-0.kubo.ipfs.svc.:5001"
        );
    }

    #[test]
    fn a_dns_name_cannot_carry_url_syntax_into_the_rpc_url() {
        // `http://evil@kubo:5001` would send the RPC to `kubo` while the swarm dials `evil@kubo`.
        for bad in [
            "evil@kubo",
            "kubo/x",
            "kubo:1",
            "kubo?x",
            "a..b",
            ".",
            "ku bo",
        ] {
            let addr = Multiaddr::empty()
                .with(Protocol::Dns4(bad.into()))
                .with(Protocol::Tcp(5001));
            let err = BackendSpec::from_multiaddr(&addr).unwrap_err();
            assert!(
                err.to_string().contains("not a DNS host name"),
                "{bad}: {err}"
            );
        }
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
