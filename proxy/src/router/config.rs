//! The router's bounds and timing, and the counters it keeps.

use std::time::Duration;

use super::Policy;

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Policy,
    /// Wants one client may hold; more are refused (DONT_HAVE where asked).
    pub max_wants_per_client: usize,
    /// Wants outstanding at one backend. kubo queues at most 1024 wants per peer and
    /// sees the proxy as one peer, so more would be silently dropped there.
    pub max_inflight_per_backend: usize,
    /// Wants waiting for a backend with room, across all backends.
    pub max_queued_wants: usize,
    /// How long a backend may take to answer before the want moves on. A backend that
    /// answered anything within this time is busy, not hung: its wants get up to
    /// [`BUSY_GRACE`] times this before they move.
    pub want_timeout: Duration,
    /// Wants all the clients of one address key may hold together (see `shares`).
    pub max_wants_per_address: usize,
    /// What an address key is (an IPv4 address, an IPv6 /64 by default).
    pub address_key: crate::net::ip_limit::AddressKey,
    /// Load shedding: a want that would wait longer than this in every backend's
    /// queue (at its measured rate) is refused at once (see `shedding`). Zero: off.
    pub shed_after: Duration,
    /// New wants a second the clients of one address key may send; more wait (see
    /// `routing::rate`). Zero: no limit.
    pub wants_per_second_per_address: u32,
    /// Fair queueing among clients, by bytes (see `fair`); off: oldest want first.
    pub fair_scheduling: bool,
    /// Block bytes a second the clients of one address key are delivered; over it
    /// their new wants wait (see `routing::rate`). Zero: no limit.
    pub bytes_per_second_per_address: u64,
}

/// How many want timeouts a want may wait at a backend that keeps answering others.
/// A deep queue at a slow but working backend is not a reason to give up on it (and
/// with one backend, giving up means DONT_HAVE to the client). At each of those
/// timeouts the want is sent again: a backend that dropped it (a CANCEL overtaking a
/// later WANT across two streams, say) is reminded, one that holds it merges the copy.
pub const BUSY_GRACE: u32 = 6;

impl Default for Config {
    fn default() -> Self {
        Self {
            policy: Policy::Rendezvous,
            max_wants_per_client: 16 * 1024,
            max_inflight_per_backend: 1000,
            max_queued_wants: 256 * 1024,
            want_timeout: Duration::from_secs(10),
            max_wants_per_address: 64 * 1024,
            address_key: crate::net::ip_limit::AddressKey::default(),
            shed_after: Duration::ZERO,
            wants_per_second_per_address: 0,
            fair_scheduling: true,
            bytes_per_second_per_address: 0,
        }
    }
}

/// Counters the engine exports as metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub blocks_delivered: u64,
    pub haves_delivered: u64,
    pub dont_haves_delivered: u64,
    pub unsolicited_blocks: u64,
    pub refused_wants: u64,
    pub failovers: u64,
    pub timeouts: u64,
    /// Wants sent again to a busy backend that had not answered them in time.
    pub refreshes: u64,
    /// Wants a backend's stream failed to carry, moved on to the next backend.
    pub undelivered_wants: u64,
    /// Wants refused because the clients of their address key hold too many.
    pub refused_address_wants: u64,
    /// Wants refused because every backend's queue was too deep (load shedding).
    pub shed_wants: u64,
}
