//! Per-address shares of the wants the proxy holds: a per-key quota under the global
//! caps. Each client (a peer) may hold `max_wants_per_client` wants; all the clients of
//! one address key (an IPv4 address, an IPv6 /64: [`AddressKey`]) together may hold
//! `max_wants_per_address`, a fraction of `max_queued_wants`, so one address with many
//! peer IDs cannot fill the queue and leave a newcomer only DONT_HAVE.

use std::net::IpAddr;

use ipnet::IpNet;
use libp2p::PeerId;

use crate::keyed::Map;
use crate::net::ip_limit::AddressKey;

#[derive(Debug, Default)]
pub(super) struct AddressShares {
    keying: AddressKey,
    max: usize,
    /// The key each client counts under: the address of its first connection.
    of_client: Map<PeerId, IpNet>,
    /// Wants held by the clients of each key.
    held: Map<IpNet, usize>,
    /// Wants held by all clients, whatever their address.
    total: usize,
}

impl AddressShares {
    pub(super) fn new(keying: AddressKey, max: usize) -> Self {
        Self {
            keying,
            max,
            ..Self::default()
        }
    }

    /// `client` connected from `ip`. A client keeps the key it had while it is known,
    /// so its count is always taken back from the key it was added to.
    pub(super) fn connected(&mut self, client: PeerId, ip: IpAddr) {
        let key = self.keying.of(ip);
        self.of_client.entry(client).or_insert(key);
    }

    /// Whether `client` may hold one more want.
    pub(super) fn has_room(&self, client: &PeerId) -> bool {
        self.of_client
            .get(client)
            .is_none_or(|k| self.held.get(k).copied().unwrap_or(0) < self.max)
    }

    /// How many more wants the clients of `client`'s key may hold.
    pub(super) fn room(&self, client: &PeerId) -> usize {
        self.of_client.get(client).map_or(usize::MAX, |k| {
            self.max
                .saturating_sub(self.held.get(k).copied().unwrap_or(0))
        })
    }

    pub(super) fn added(&mut self, client: &PeerId) {
        self.add(client, 1);
    }

    pub(super) fn add(&mut self, client: &PeerId, n: usize) {
        self.total += n;
        if let Some(k) = self.of_client.get(client) {
            *self.held.entry(*k).or_default() += n;
        }
    }

    pub(super) fn removed(&mut self, client: &PeerId, n: usize) {
        self.total = self.total.saturating_sub(n);
        if let Some(k) = self.of_client.get(client)
            && let Some(h) = self.held.get_mut(k)
        {
            *h = h.saturating_sub(n);
            if *h == 0 {
                self.held.remove(k);
            }
        }
    }

    /// The client is gone (its wants already removed).
    pub(super) fn forget(&mut self, client: &PeerId) {
        self.of_client.remove(client);
    }

    /// Wants held by all clients together.
    pub(super) fn total(&self) -> usize {
        self.total
    }

    /// Wants held under `ip`'s key (for tests and introspection).
    pub(super) fn held_by(&self, ip: IpAddr) -> usize {
        self.held.get(&self.keying.of(ip)).copied().unwrap_or(0)
    }
}
