//! Caps inbound connections (pending and established) per remote address key (an
//! IPv4 address, an IPv6 /64; both prefix lengths configurable: [`AddressKey`]), which
//! libp2p's connection-limits behaviour does not do. Outbound (backend) connections
//! are never counted, so backends cannot be crowded out. A connection relayed by
//! something in front of the host counts against the client behind it ([`RealClient`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Who is really behind a connection's remote address, when something in front of the
/// host relays connections for others (preload mode splices its port's WebSockets in
/// from loopback). Preload implements it; this module knows no more of it.
pub trait RealClient: Send + 'static {
    /// The client's IP behind `remote`, or `None` when `remote` is the client itself.
    fn ip_behind(&self, remote: &Multiaddr) -> Option<IpAddr>;
}

/// How far an address is widened into the key its limits count under: one IPv6 host
/// is given a whole /64 (and its privacy addresses rotate within it), so counting
/// single IPv6 addresses would bound it only by the global limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressKey {
    pub v4_prefix: u8,
    pub v6_prefix: u8,
}

impl Default for AddressKey {
    fn default() -> Self {
        Self {
            v4_prefix: 32,
            v6_prefix: 64,
        }
    }
}

impl AddressKey {
    /// The block `ip` counts under (an IPv4-mapped IPv6 address is IPv4).
    pub fn of(&self, ip: IpAddr) -> IpNet {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => IpNet::V4(
                Ipv4Net::new(v4, self.v4_prefix.min(32))
                    .expect("at most 32")
                    .trunc(),
            ),
            IpAddr::V6(v6) => IpNet::V6(
                Ipv6Net::new(v6, self.v6_prefix.min(128))
                    .expect("at most 128")
                    .trunc(),
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{key} already has {limit} connections")]
pub struct TooManyFromIp {
    key: IpNet,
    limit: u32,
}

pub struct Behaviour {
    limit: u32,
    keying: AddressKey,
    real_client: Option<Box<dyn RealClient>>,
    per_ip: HashMap<IpNet, u32>,
    by_conn: HashMap<ConnectionId, IpNet>,
}

impl Behaviour {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            keying: AddressKey::default(),
            real_client: None,
            per_ip: HashMap::new(),
            by_conn: HashMap::new(),
        }
    }

    /// Counts connections under `keying`'s blocks instead of the defaults.
    pub fn with_keying(mut self, keying: AddressKey) -> Self {
        self.keying = keying;
        self
    }

    /// Relayed connections count against the client `real_client` finds behind them.
    pub fn with_real_client(mut self, real_client: Option<Box<dyn RealClient>>) -> Self {
        self.real_client = real_client;
        self
    }

    fn release(&mut self, id: ConnectionId) {
        if let Some(ip) = self.by_conn.remove(&id)
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let relayed = self.real_client.as_ref().and_then(|r| r.ip_behind(remote));
        let Some(ip) = relayed.or_else(|| ip_of(remote)) else {
            return Ok(());
        };
        let key = self.keying.of(ip);
        let n = self.per_ip.entry(key).or_default();
        if *n >= self.limit {
            return Err(ConnectionDenied::new(TooManyFromIp {
                key,
                limit: self.limit,
            }));
        }
        *n += 1;
        self.by_conn.insert(id, key);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(c) => self.release(c.connection_id),
            FromSwarm::ListenFailure(f) => self.release(f.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_ip_and_releases() {
        let mut b = Behaviour::new(2);
        let local: Multiaddr = "/ip4/0.0.0.0/tcp/1".parse().unwrap();
        let a: Multiaddr = "/ip4/1.2.3.4/tcp/5".parse().unwrap();
        let other: Multiaddr = "/ip6/::1/tcp/5".parse().unwrap();
        let ids: Vec<ConnectionId> = (0..4)
            .map(|_| ConnectionId::new_unchecked(rand::random()))
            .collect();
        assert!(
            b.handle_pending_inbound_connection(ids[0], &local, &a)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(ids[1], &local, &a)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(ids[2], &local, &a)
                .is_err()
        );
        assert!(
            b.handle_pending_inbound_connection(ids[3], &local, &other)
                .is_ok()
        );
        b.release(ids[0]);
        assert!(
            b.handle_pending_inbound_connection(ids[2], &local, &a)
                .is_ok()
        );
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let mut b = Behaviour::new(2);
        let local: Multiaddr = "/ip6/::/tcp/1".parse().unwrap();
        let id = || ConnectionId::new_unchecked(rand::random());
        let from = |a: &str| format!("/ip6/{a}/tcp/5").parse::<Multiaddr>().unwrap();
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &from("2001:db8:1:2::1"))
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &from("2001:db8:1:2:ffff::9"))
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &from("2001:db8:1:2:abcd::1"))
                .is_err(),
            "a third address of the same /64"
        );
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &from("2001:db8:1:3::1"))
                .is_ok(),
            "the next /64 is another key"
        );
    }

    #[test]
    fn address_keys_follow_the_configured_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let d = AddressKey::default();
        assert_eq!(d.of(ip("192.0.2.7")), net("192.0.2.7/32"));
        assert_eq!(
            d.of(ip("::ffff:192.0.2.7")),
            net("192.0.2.7/32"),
            "v4-mapped is v4"
        );
        assert_eq!(d.of(ip("2001:db8:1:2:3:4:5:6")), net("2001:db8:1:2::/64"));
        let wide = AddressKey {
            v4_prefix: 24,
            v6_prefix: 48,
        };
        assert_eq!(wide.of(ip("192.0.2.7")), net("192.0.2.0/24"));
        assert_eq!(wide.of(ip("2001:db8:1:2::1")), net("2001:db8:1::/48"));
        assert_eq!(
            wide.of(ip("2001:db8:1:ffff::1")),
            wide.of(ip("2001:db8:1:2::1"))
        );
    }

    /// Answers for one relay address, as preload's splices do for its loopback side.
    struct Relay {
        seen: Multiaddr,
        client: IpAddr,
    }

    impl RealClient for Relay {
        fn ip_behind(&self, remote: &Multiaddr) -> Option<IpAddr> {
            (*remote == self.seen).then_some(self.client)
        }
    }

    #[test]
    fn a_relayed_connection_counts_against_the_client_behind_it() {
        let client: IpAddr = "2001:db8::1".parse().unwrap();
        let seen: Multiaddr = "/ip4/127.0.0.1/tcp/40000/ws".parse().unwrap();
        let mut b = Behaviour::new(1).with_real_client(Some(Box::new(Relay {
            seen: seen.clone(),
            client,
        })));
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/1/ws".parse().unwrap();
        let direct: Multiaddr = "/ip6/2001:db8::1/tcp/5".parse().unwrap();
        let other_local: Multiaddr = "/ip4/127.0.0.1/tcp/40001/ws".parse().unwrap();
        let id = || ConnectionId::new_unchecked(rand::random());
        let relayed = id();
        assert!(
            b.handle_pending_inbound_connection(relayed, &local, &seen)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &direct)
                .is_err(),
            "the relayed connection took the client's one place"
        );
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &other_local)
                .is_ok(),
            "not counted against the relay's own address"
        );
        b.release(relayed);
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &direct)
                .is_ok()
        );
    }
}
