//! Prometheus metrics (prometheus-client, the library libp2p-metrics uses).
//! The original's names are kept where the meaning is the same; no label ever holds a
//! client peer ID or a CID, so cardinality stays bounded.

use kitsune_common::metrics::Registrar;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

// The label value type of `StateLabels`, named here too for the families' users.
pub use crate::backend::BackendState;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    /// From backends to clients.
    Upstream,
    /// From clients to backends (preload's reverse path).
    Downstream,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

/// The label value is the state's name, as `kitsune_backends{state="Backoff"}`.
impl EncodeLabelValue for BackendState {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            BackendState::Resolving => "Resolving",
            BackendState::Connecting => "Connecting",
            BackendState::Connected => "Connected",
            BackendState::Backoff => "Backoff",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: BackendState,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// A backend by its peer ID: bounded by the pool, and each series is removed when its
/// backend's connection goes, so churn does not grow the registry.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub upstream_peers: Gauge,
    pub downstream_peers: Gauge,
    pub messages_recv: Counter,
    pub messages_sent: Counter,
    pub downstream_block_rtt_ms: Histogram,
    pub wants_in_flight: Gauge,
    pub wants_queued: Gauge,
    /// Bytes of `--max-client-frame-bytes` in use.
    pub client_frame_bytes: Gauge,
    pub blocks_forwarded: Family<DirectionLabels, Counter>,
    pub bytes_forwarded: Family<DirectionLabels, Counter>,
    pub presences_sent: Family<ReasonLabels, Counter>,
    pub backends: Family<StateLabels, Gauge>,
    pub rejected: Family<ReasonLabels, Counter>,
    pub failovers: Counter,
    /// Of those, wants a backend left unanswered past the want timeout.
    pub want_timeouts: Counter,
    /// Wants sent again to a busy backend that had not answered them in time.
    pub want_refreshes: Counter,
    /// Blocks received from each connected backend: how the load spreads.
    pub backend_blocks: Family<BackendLabels, Counter>,
    /// Preload: `/api/v0/refs` calls by outcome.
    pub refs_requests: Family<OutcomeLabels, Counter>,
    /// Preload: backend wants passed to an uploader, or refused (DONT_HAVE).
    pub reverse_wants: Family<OutcomeLabels, Counter>,
    /// Preload: the DAG size (CIDs) each preload reached.
    pub preload_dag_blocks: Histogram,
    pub preload_sessions: Gauge,
    pub preload_blocks_tracked: Gauge,
    /// The block cache (`--block-cache-bytes`).
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_evictions: Counter,
    pub cache_bytes: Gauge,
    pub cache_blocks: Gauge,
    /// New wants held back by `--wants-per-second-per-address`.
    pub wants_delayed: Counter,
    /// New wants held back by `--bytes-per-second-per-address`.
    pub wants_delayed_bytes: Counter,
    /// New wants held back until their client's writer queue had room.
    pub wants_paced: Counter,
    /// Wants held back now.
    pub wants_waiting: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Registrar::new(registry, "kitsune");
        Self {
            upstream_peers: r.add(
                "bitswap_upstream_peers",
                "Connected client peers (per peer, not per connection)",
            ),
            downstream_peers: r.add("bitswap_downstream_peers", "Connected backend peers"),
            messages_recv: r.add(
                "bitswap_messages_recv",
                "Bitswap messages received (per message, not per stream)",
            ),
            messages_sent: r.add("bitswap_messages_sent", "Bitswap messages sent"),
            downstream_block_rtt_ms: r.register(
                "bitswap_downstream_block_rtt_ms",
                "Milliseconds from sending a want to a backend to receiving the block",
                Histogram::new([
                    1.0, 5.0, 25.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
                ]),
            ),
            wants_in_flight: r.add(
                "bitswap_wants_in_flight",
                "Distinct CIDs wanted by clients and not yet answered",
            ),
            wants_queued: r.add(
                "bitswap_wants_queued",
                "Wants waiting for room at a backend",
            ),
            client_frame_bytes: r.add(
                "bitswap_client_frame_bytes",
                "Bytes of large client frames being received or decoded, of \
                 --max-client-frame-bytes",
            ),
            blocks_forwarded: r.add("bitswap_blocks_forwarded", "Blocks forwarded, by direction"),
            bytes_forwarded: r.add(
                "bitswap_bytes_forwarded",
                "Block bytes forwarded, by direction",
            ),
            presences_sent: r.add(
                "bitswap_presences_sent",
                "HAVE and DONT_HAVE sent to clients",
            ),
            backends: r.add("backends", "Configured backends by state"),
            rejected: r.add("rejected", "Things refused from remote peers, by reason"),
            failovers: r.add(
                "bitswap_failovers",
                "Wants moved to another backend (DONT_HAVE, timeout, lost backend)",
            ),
            want_timeouts: r.add(
                "bitswap_want_timeouts",
                "Wants moved on because their backend did not answer in time",
            ),
            want_refreshes: r.add(
                "bitswap_want_refreshes",
                "Wants sent again to a busy backend that had not answered them in time",
            ),
            backend_blocks: r.add(
                "backend_blocks_received",
                "Blocks received from each connected backend, by its peer ID",
            ),
            refs_requests: r.add(
                "preload_refs_requests",
                "Preload /api/v0/refs calls by outcome (ok, bad_request, too_many_requests, \
                 too_many_per_address, no_backend, backend_error, backend_timeout, client_gone, \
                 error)",
            ),
            reverse_wants: r.add(
                "preload_reverse_wants",
                "Backend wants during preload: forwarded to the uploader, or refused with \
                 DONT_HAVE",
            ),
            preload_dag_blocks: r.register(
                "preload_dag_blocks",
                "CIDs in each finished preload's DAG",
                Histogram::new([
                    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
                ]),
            ),
            preload_sessions: r.add("preload_sessions", "Preloads open (in flight or lingering)"),
            preload_blocks_tracked: r
                .add("preload_blocks_tracked", "CIDs held by all open preloads"),
            cache_hits: r.add(
                "block_cache_hits",
                "Client wants answered from the block cache, without asking a backend",
            ),
            cache_misses: r.add(
                "block_cache_misses",
                "Client wants the block cache did not hold",
            ),
            cache_evictions: r.add(
                "block_cache_evictions",
                "Blocks evicted from the block cache to keep its byte bound",
            ),
            cache_bytes: r.add(
                "block_cache_bytes",
                "Bytes the block cache holds (block data plus per-entry overhead)",
            ),
            cache_blocks: r.add("block_cache_blocks", "Blocks the block cache holds"),
            wants_delayed: r.add(
                "bitswap_wants_delayed",
                "New client wants held back for their address's wants-per-second budget",
            ),
            wants_delayed_bytes: r.add(
                "bitswap_wants_delayed_bytes",
                "New client wants held back while their address's bytes-per-second budget \
                 was in debt",
            ),
            wants_paced: r.add(
                "bitswap_wants_paced",
                "New client wants held back until the client's writer queue had room for \
                 their blocks (per-client flow control)",
            ),
            wants_waiting: r.add(
                "bitswap_wants_waiting",
                "Client wants held back now, waiting for their address's budget or their \
                 writer's room",
            ),
        }
    }

    pub fn refs_outcome(&self, outcome: &'static str) {
        self.refs_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dashboards and the e2e tests read `kitsune_backends{state="Backoff"}`: the label
    /// values are the state names, whichever module the type lives in.
    #[test]
    fn backend_states_are_labelled_by_name() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let states = [
            BackendState::Resolving,
            BackendState::Connecting,
            BackendState::Connected,
            BackendState::Backoff,
        ];
        for (n, state) in states.into_iter().enumerate() {
            m.backends
                .get_or_create(&StateLabels { state })
                .set(n as i64 + 1);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (n, name) in ["Resolving", "Connecting", "Connected", "Backoff"]
            .iter()
            .enumerate()
        {
            let line = format!("kitsune_backends{{state=\"{name}\"}} {}", n + 1);
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
