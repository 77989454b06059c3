//! The proxy's admin routes (Prometheus metrics, health probes), served by
//! [`kitsune_common::admin`]; readiness is [`Health`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use kitsune_common::admin;
use prometheus_client::registry::Registry;

/// What `/readyz` reports: listening, the backend set known (with the watch channel:
/// the first snapshot applied; never cleared, so an absent operator does not make the
/// proxy unready), and at least one backend connected.
#[derive(Debug)]
pub struct Health {
    pub listening: AtomicBool,
    pub backend_connected: AtomicBool,
    pub synced: Arc<AtomicBool>,
    /// Set on SIGTERM: the load balancer should send new clients elsewhere.
    pub draining: AtomicBool,
}

impl Health {
    pub fn new(synced: Arc<AtomicBool>) -> Self {
        Self {
            listening: AtomicBool::new(false),
            backend_connected: AtomicBool::new(false),
            synced,
            draining: AtomicBool::new(false),
        }
    }

    pub fn ready(&self) -> bool {
        self.check().is_ok()
    }

    /// Ready, or the first reason not to be.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Err("draining")
        } else if !self.listening.load(Ordering::Relaxed) {
            Err("not listening yet")
        } else if !self.synced.load(Ordering::Relaxed) {
            Err("no backend set from the operator yet")
        } else if !self.backend_connected.load(Ordering::Relaxed) {
            Err("no backend connected")
        } else {
            Ok(())
        }
    }
}

/// `/metrics` over `registry`, `/healthz`, and `/readyz` from `health`.
pub fn router(registry: Arc<Registry>, health: Arc<Health>) -> Router {
    admin::router(registry, Arc::new(move || health.check()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_listening_a_backend_set_and_a_connected_backend() {
        let synced = Arc::new(AtomicBool::new(false));
        let h = Health::new(synced.clone());
        assert_eq!(h.check(), Err("not listening yet"));
        h.listening.store(true, Ordering::Relaxed);
        assert_eq!(h.check(), Err("no backend set from the operator yet"));
        synced.store(true, Ordering::Relaxed);
        assert_eq!(h.check(), Err("no backend connected"));
        h.backend_connected.store(true, Ordering::Relaxed);
        assert!(h.ready());
        h.draining.store(true, Ordering::Relaxed);
        assert_eq!(h.check(), Err("draining"));
    }
}
