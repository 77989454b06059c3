//! What one event of the routing core decided: the messages to send and how much each
//! counter grew. The engine sends the one and adds the other to the metrics, so the
//! metrics follow the core event by event instead of copying its totals on a timer.

use crate::preload::reverse::Stats as ReverseStats;
use crate::router::{Outbox, Stats as RouterStats};
use crate::routing::fetches::{FetchId, Fetched};

#[derive(Debug, Default)]
pub struct Effects {
    /// Messages per peer, in decision order.
    pub outbox: Outbox,
    /// Counter growth caused by this event.
    pub counts: Counts,
    /// The DAG sizes of preload sessions that ended (for their histogram).
    pub preload_dag_sizes: Vec<usize>,
    /// HTTP fetches answered by this event.
    pub fetched: Vec<(FetchId, Fetched)>,
}

/// The core's counters; as a delta, how much each grew.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub failovers: u64,
    pub timeouts: u64,
    pub refreshes: u64,
    /// Wants a backend's stream failed to carry (moved on).
    pub undelivered_wants: u64,
    /// Wants refused because their client holds too many.
    pub refused_wants: u64,
    pub haves_delivered: u64,
    pub dont_haves_delivered: u64,
    /// Preload: backend wants passed on to an uploader, and refused.
    pub reverse_forwarded: u64,
    pub reverse_refused: u64,
    /// Preload: blocks of a preloaded DAG whose codec the proxy cannot read.
    pub undecodable_blocks: u64,
    /// The block cache: wants answered from it, wants it did not hold, and blocks
    /// evicted to keep its byte bound.
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_evictions: u64,
    /// Wants refused because their address key's clients hold too many.
    pub refused_address_wants: u64,
    /// Preload: backend wants whose uploader is not connected.
    pub reverse_no_uploader: u64,
    /// Wants shed: every backend's queue was too deep.
    pub shed_wants: u64,
    /// New wants held back for their address's wants-per-second budget.
    pub delayed_wants: u64,
    /// New wants held back because their address's bytes-per-second budget was in
    /// debt.
    pub delayed_bytes_wants: u64,
    /// New wants held back until their client's writer queue had room for their
    /// blocks.
    pub paced_wants: u64,
}

impl Counts {
    pub(super) fn from_router(s: &RouterStats) -> Self {
        Self {
            failovers: s.failovers,
            timeouts: s.timeouts,
            refreshes: s.refreshes,
            undelivered_wants: s.undelivered_wants,
            refused_wants: s.refused_wants,
            haves_delivered: s.haves_delivered,
            dont_haves_delivered: s.dont_haves_delivered,
            refused_address_wants: s.refused_address_wants,
            shed_wants: s.shed_wants,
            ..Self::default()
        }
    }

    pub(super) fn add_reverse(&mut self, s: &ReverseStats) {
        self.reverse_forwarded = s.wants_forwarded;
        self.reverse_refused = s.wants_refused;
        self.undecodable_blocks = s.undecodable_blocks;
        self.reverse_no_uploader = s.wants_no_uploader;
    }

    pub(super) fn add_cache(&mut self, s: &crate::cache::Stats) {
        self.cache_hits = s.hits;
        self.cache_misses = s.misses;
        self.cache_evictions = s.evictions;
    }

    /// The growth from `earlier` to these totals (totals only grow).
    pub(super) fn since(&self, earlier: &Self) -> Self {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Self {
            failovers: d(self.failovers, earlier.failovers),
            timeouts: d(self.timeouts, earlier.timeouts),
            refreshes: d(self.refreshes, earlier.refreshes),
            undelivered_wants: d(self.undelivered_wants, earlier.undelivered_wants),
            refused_wants: d(self.refused_wants, earlier.refused_wants),
            haves_delivered: d(self.haves_delivered, earlier.haves_delivered),
            dont_haves_delivered: d(self.dont_haves_delivered, earlier.dont_haves_delivered),
            reverse_forwarded: d(self.reverse_forwarded, earlier.reverse_forwarded),
            reverse_refused: d(self.reverse_refused, earlier.reverse_refused),
            undecodable_blocks: d(self.undecodable_blocks, earlier.undecodable_blocks),
            cache_hits: d(self.cache_hits, earlier.cache_hits),
            cache_misses: d(self.cache_misses, earlier.cache_misses),
            cache_evictions: d(self.cache_evictions, earlier.cache_evictions),
            refused_address_wants: d(self.refused_address_wants, earlier.refused_address_wants),
            reverse_no_uploader: d(self.reverse_no_uploader, earlier.reverse_no_uploader),
            shed_wants: d(self.shed_wants, earlier.shed_wants),
            delayed_wants: d(self.delayed_wants, earlier.delayed_wants),
            delayed_bytes_wants: d(self.delayed_bytes_wants, earlier.delayed_bytes_wants),
            paced_wants: d(self.paced_wants, earlier.paced_wants),
        }
    }
}
