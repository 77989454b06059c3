//! The engine's metrics: traffic as it passes, the routing core's counter growth event
//! by event, and gauges sampled on the tick.

use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;

use crate::backend::Backends;
use crate::bitswap::Message;
use crate::metrics::{
    BackendLabels, Direction, DirectionLabels, Metrics, OutcomeLabels, ReasonLabels, StateLabels,
};
use crate::routing::{Core, Counts, Effects};

const UP: DirectionLabels = DirectionLabels {
    direction: Direction::Upstream,
};
const DOWN: DirectionLabels = DirectionLabels {
    direction: Direction::Downstream,
};

/// The labelled series the core counts into exist from the start, at zero, so that
/// dashboards and alerts see them before the first event.
pub fn zeroes(m: &Metrics) {
    for reason in [
        "too_many_wants",
        "preload_undecodable_block",
        "undelivered_want",
        "too_many_wants_per_address",
        "shed",
    ] {
        let _ = m.rejected.get_or_create(&ReasonLabels { reason });
    }
    for reason in ["have", "dont_have"] {
        let _ = m.presences_sent.get_or_create(&ReasonLabels { reason });
    }
    for outcome in ["forwarded", "refused", "no_uploader"] {
        let _ = m.reverse_wants.get_or_create(&OutcomeLabels { outcome });
    }
}

/// Adds what one event of the core counted, and observes what it measured. Most
/// events count nothing: label lookups happen only for counters that grew.
pub fn effects(m: &Metrics, fx: &Effects) {
    let c = &fx.counts;
    if c != &Counts::default() {
        let add = |counter: &Counter, n: u64| {
            if n > 0 {
                counter.inc_by(n);
            }
        };
        let reason = |reason: &'static str, n: u64| {
            if n > 0 {
                m.rejected.get_or_create(&ReasonLabels { reason }).inc_by(n);
            }
        };
        let presence = |reason: &'static str, n: u64| {
            if n > 0 {
                m.presences_sent
                    .get_or_create(&ReasonLabels { reason })
                    .inc_by(n);
            }
        };
        let reverse = |outcome: &'static str, n: u64| {
            if n > 0 {
                m.reverse_wants
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc_by(n);
            }
        };
        add(&m.failovers, c.failovers);
        add(&m.want_timeouts, c.timeouts);
        add(&m.want_refreshes, c.refreshes);
        reason("too_many_wants", c.refused_wants);
        presence("have", c.haves_delivered);
        presence("dont_have", c.dont_haves_delivered);
        reverse("forwarded", c.reverse_forwarded);
        reverse("refused", c.reverse_refused);
        reverse("no_uploader", c.reverse_no_uploader);
        reason("preload_undecodable_block", c.undecodable_blocks);
        reason("undelivered_want", c.undelivered_wants);
        reason("too_many_wants_per_address", c.refused_address_wants);
        reason("shed", c.shed_wants);
        add(&m.wants_delayed, c.delayed_wants);
        add(&m.wants_delayed_bytes, c.delayed_bytes_wants);
        add(&m.wants_paced, c.paced_wants);
        add(&m.cache_hits, c.cache_hits);
        add(&m.cache_misses, c.cache_misses);
        add(&m.cache_evictions, c.cache_evictions);
    }
    for rtt in &fx.outbox.rtts {
        m.downstream_block_rtt_ms
            .observe(rtt.as_secs_f64() * 1000.0);
    }
    for size in &fx.preload_dag_sizes {
        m.preload_dag_blocks.observe(*size as f64);
    }
}

/// A connected backend's block counter, labelled once: the label is its peer ID in
/// base58, too dear to encode for every message.
pub fn backend_blocks(m: &Metrics, backend: PeerId) -> Counter {
    m.backend_blocks
        .get_or_create(&BackendLabels {
            backend: backend.to_string(),
        })
        .clone()
}

/// A backend's message as it arrives: its blocks (on the backend's counter), and bytes
/// coming up.
pub fn from_backend(m: &Metrics, backend_blocks: &Counter, msg: &Message) {
    if msg.blocks.is_empty() {
        return;
    }
    backend_blocks.inc_by(msg.blocks.len() as u64);
    let bytes = block_bytes(msg);
    if bytes > 0 {
        m.bytes_forwarded.get_or_create(&UP).inc_by(bytes);
    }
}

/// Blocks going down to a backend (preload's reverse path).
pub fn to_backend(m: &Metrics, msg: &Message) {
    let bytes = block_bytes(msg);
    if bytes > 0 {
        m.blocks_forwarded
            .get_or_create(&DOWN)
            .inc_by(msg.blocks.len() as u64);
        m.bytes_forwarded.get_or_create(&DOWN).inc_by(bytes);
    }
}

/// Blocks a client's writer accepted.
pub fn to_client(m: &Metrics, blocks: usize) {
    m.blocks_forwarded.get_or_create(&UP).inc_by(blocks as u64);
}

/// A backend left: its per-backend series goes with it.
pub fn backend_gone(m: &Metrics, backend: PeerId) {
    m.backend_blocks.remove(&BackendLabels {
        backend: backend.to_string(),
    });
}

/// The gauges, sampled.
pub fn gauges(m: &Metrics, core: &Core, backends: &Backends) {
    let router = core.router();
    m.wants_in_flight.set(router.wants_in_flight() as i64);
    m.wants_queued.set(router.queued_wants() as i64);
    m.wants_waiting.set(core.wants_waiting() as i64);
    for (state, n) in backends.state_counts() {
        m.backends.get_or_create(&StateLabels { state }).set(n);
    }
    if let Some(r) = core.reverse() {
        let sessions = r.sessions();
        m.preload_sessions.set(sessions.len() as i64);
        m.preload_blocks_tracked.set(sessions.total_blocks() as i64);
    }
    if let Some(c) = core.cache() {
        m.cache_bytes.set(c.bytes() as i64);
        m.cache_blocks.set(c.entries() as i64);
    }
}

fn block_bytes(msg: &Message) -> u64 {
    msg.blocks.iter().map(|b| b.data.len() as u64).sum()
}
