//! Who a request or a connection comes from: the peer address, or, behind a trusted
//! proxy, the right-most `X-Forwarded-For` hop that is not itself trusted. Pure.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};

/// An address block, e.g. `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
/// An IPv4-mapped IPv6 block is its IPv4 block, as addresses are (see [`normalize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8, fd00::/8)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_owned());
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => IpNet::from(s.parse::<IpAddr>().map_err(|_| bad())?),
        };
        let net = match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => {
                    IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|_| bad())?)
                }
                _ => net,
            },
            v4 => v4,
        };
        Ok(Self(net.trunc()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&normalize(ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, what a dual-stack socket reports) is IPv4.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// What identifies one uploader across its HTTP request and its libp2p connection: an
/// IPv4 address, or an IPv6 /64. A host's IPv6 privacy addresses (RFC 8981) rotate
/// within its /64, so a long-lived WebSocket and a later HTTP request may leave from
/// different addresses of one /64; a /64 is one site, as one IPv4 NAT address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpKey {
    V4(std::net::Ipv4Addr),
    V6Net(u64),
}

impl IpKey {
    pub fn of(ip: IpAddr) -> Self {
        match normalize(ip) {
            IpAddr::V4(v4) => IpKey::V4(v4),
            IpAddr::V6(v6) => IpKey::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

/// One `X-Forwarded-For` hop: `1.2.3.4`, `1.2.3.4:5`, `::1`, `[::1]` or `[::1]:5`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(normalize(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(normalize(sa.ip()));
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<Ipv6Addr>()
        .ok()
        .map(|v6| normalize(v6.into()))
}

/// The client behind `peer`. `forwarded_for` holds every `X-Forwarded-For` header value
/// in order. The chain is walked from the right while hops are trusted proxies; the
/// first untrusted hop is the client. An unparsable hop stops the walk at the last
/// trusted one, so a client can never choose its own address.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let peer = normalize(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|h| h.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let ten: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ten.contains(ip("10.1.2.3")));
        assert!(ten.contains(ip("::ffff:10.9.9.9")), "v4-mapped is v4");
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(!ten.contains(ip("::a00:1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("::2")));
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8", "a v4-mapped block is v4");
        for bad in ["10.0.0.0/33", "::/129", "nope", "1.2.3.4/x", "", "1.2.3.4/"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_trusted() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(ip("203.0.113.9"), ["1.1.1.1"], &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), ["1.1.1.1"], &[]), ip("10.0.0.2"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        // The left part is whatever the client wrote; only trusted hops are believed.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                ["6.6.6.6, 198.51.100.7", "10.0.0.9"],
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("fd00::2"), ["[2001:db8::5]:4431"], &trusted),
            ip("2001:db8::5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["2001:db8::6"], &trusted),
            ip("2001:db8::6")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["198.51.100.7:1234"], &trusted),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at the last trusted hop; no header means the peer.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["1.2.3.4, garbage"], &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), std::iter::empty(), &trusted),
            ip("10.0.0.2")
        );
        // Every hop trusted: the left-most one.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["10.1.1.1, 10.2.2.2"], &trusted),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn ip_keys_join_v4_mapped_and_v6_slash_64() {
        assert_eq!(IpKey::of(ip("::ffff:1.2.3.4")), IpKey::of(ip("1.2.3.4")));
        assert_eq!(
            IpKey::of(ip("2001:db8:1:2::a")),
            IpKey::of(ip("2001:db8:1:2:ffff::1"))
        );
        assert_ne!(
            IpKey::of(ip("2001:db8:1:2::a")),
            IpKey::of(ip("2001:db8:1:3::a"))
        );
        assert_ne!(IpKey::of(ip("1.2.3.4")), IpKey::of(ip("1.2.3.5")));
    }
}
