//! The gateway's metrics. Labels are fixed words and status codes (never a CID or
//! a client), so the series stay few.

use std::time::Instant;

use kitsune_common::metrics::Registrar;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `ipfs` or `providers`.
    pub route: &'static str,
    /// `raw`, `car`, `json`, `ndjson`, or `none` (refused before it was known).
    pub format: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabels {
    pub format: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

type Histograms = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_served: Family<FormatLabels, Counter>,
    /// Seconds to the response head (a CAR's body streams on after it).
    pub latency: Histograms,
    /// Requests being served, CAR bodies still streaming included.
    pub in_flight: Gauge,
    /// CAR responses cut short (a backend failed, a bound was reached, time ran out).
    pub car_aborted: Family<ReasonLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Registrar::new(registry, "kitsune_gateway");
        Self {
            requests: r.add(
                "requests",
                "Gateway HTTP requests by route, format and status",
            ),
            bytes_served: r.add("bytes_served", "Body bytes the gateway sent, by format"),
            latency: r.register(
                "response_seconds",
                "Seconds from a gateway request to its response head, by route",
                Family::new_with_constructor(|| {
                    Histogram::new([
                        0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ])
                }),
            ),
            in_flight: r.add(
                "requests_in_flight",
                "Gateway requests being served (streaming CAR bodies included)",
            ),
            car_aborted: r.add("car_aborted", "CAR responses aborted mid-stream, by reason"),
        }
    }

    /// Counts a request answered with `status` and observes its time to the response
    /// head, from `started`.
    pub fn answered(
        &self,
        route: &'static str,
        format: &'static str,
        status: u16,
        started: Instant,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                format,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn served(&self, format: &'static str, bytes: usize) {
        self.bytes_served
            .get_or_create(&FormatLabels { format })
            .inc_by(bytes as u64);
    }
}
