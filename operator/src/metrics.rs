//! The operator's Prometheus metrics (prometheus-client): reconciles, failures by
//! reason, reconcile duration, leadership and ready backends per KitsuneProxy.

use std::time::Instant;

use kitsune_common::metrics::Registrar;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabels {
    pub namespace: String,
    pub name: String,
}

pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Failed reconciles, by [`crate::Error::reason`].
    pub failures: Family<ReasonLabels, Counter>,
    /// Reconcile wall time.
    pub duration: Histogram,
    /// 1 while this replica holds the write lease.
    pub leader: Gauge,
    /// Live backends per KitsuneProxy, as the index sees them.
    pub ready_backends: Family<ProxyLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `kitsune_operator` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let mut r = Registrar::new(registry, "kitsune_operator");
        Self {
            reconciles: r.add("reconciles", "KitsuneProxy reconciles started"),
            failures: r.add(
                "reconcile_failures",
                "Failed KitsuneProxy reconciles, by reason",
            ),
            duration: r.register_with_unit(
                "reconcile_duration",
                "How long one reconcile took",
                Unit::Seconds,
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0]),
            ),
            leader: r.add("leader", "1 while this replica holds the write lease"),
            ready_backends: r.add("ready_backends", "Live kubo backends per KitsuneProxy"),
        }
    }

    /// Counts a reconcile and times it until the returned guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.duration,
        }
    }

    pub fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&mut Registry::default())
    }
}

/// Observes the reconcile duration when dropped, so every return path is timed.
pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// Renders a registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_prefix_and_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        {
            let _t = m.reconcile_started();
        }
        m.failed("SecretNotFound");
        m.failed("SecretNotFound");
        m.leader.set(1);
        let text = encode(&registry);
        assert!(
            text.contains("kitsune_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kitsune_operator_reconcile_failures_total{reason="SecretNotFound"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains("kitsune_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("kitsune_operator_leader 1"), "{text}");
    }
}
