//! Registering a set of Prometheus metrics where they are made: each metric is named
//! and described once, beside the field that holds it, rather than made in one list
//! and registered again in another.

use prometheus_client::registry::{Metric, Registry, Unit};

/// Registers metrics under one name prefix as they are created.
pub struct Registrar<'a>(&'a mut Registry);

impl<'a> Registrar<'a> {
    /// Registers into `registry` under `prefix` (`prefix_name`).
    pub fn new(registry: &'a mut Registry, prefix: &str) -> Self {
        Self(registry.sub_registry_with_prefix(prefix))
    }

    /// A new metric of its default make (a counter, gauge or family), registered.
    pub fn add<M: Metric + Clone + Default>(&mut self, name: &str, help: &str) -> M {
        self.register(name, help, M::default())
    }

    /// `metric`, made by the caller (a histogram with its buckets), registered.
    pub fn register<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }

    /// [`Registrar::register`] with a unit, which Prometheus appends to the name.
    pub fn register_with_unit<M: Metric + Clone>(
        &mut self,
        name: &str,
        help: &str,
        unit: Unit,
        metric: M,
    ) -> M {
        self.0.register_with_unit(name, help, unit, metric.clone());
        metric
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;

    use super::*;

    /// What the registrar returns is what it registered: counting on the returned
    /// metric shows under the prefixed name, the unit appended.
    #[test]
    fn returned_metrics_are_the_registered_ones() {
        let mut registry = Registry::default();
        let mut r = Registrar::new(&mut registry, "pre");
        let hits: Counter = r.add("hits", "Hits");
        let took = r.register_with_unit("took", "Time", Unit::Seconds, Histogram::new([1.0]));
        hits.inc_by(3);
        took.observe(0.5);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# HELP pre_hits Hits."), "{text}");
        assert!(text.lines().any(|l| l == "pre_hits_total 3"), "{text}");
        assert!(
            text.lines().any(|l| l == "pre_took_seconds_count 1"),
            "{text}"
        );
    }
}
