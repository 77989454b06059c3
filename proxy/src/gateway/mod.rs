//! The trustless HTTP gateway (`/ipfs/{cid}`, raw blocks and CARs) and delegated
//! routing (`/routing/v1/providers/{cid}`) on the shared HTTP port.
//!
//! Blocks come from the backends over bitswap through the routing core, as one more
//! client of the router ([`crate::routing::Fetches`]): the same CID affinity,
//! failover and deduplication as bitswap clients. Pure parts: [`request`] (what a
//! request asks for), [`car`] (CAR framing, what a walk follows), [`limits`].

pub mod car;
pub mod fetch;
pub mod limits;
pub mod metrics;
pub mod pace;
mod providers;
pub mod request;
mod serve;

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

pub use fetch::{FetchCmd, Fetcher};
pub use metrics::GatewayMetrics;

use crate::preload::Cidr;

/// Blocks of a CAR asked ahead of the one being sent, so a CAR streams at the
/// backends' pace rather than one round trip per block.
pub const CAR_WINDOW: usize = 32;

/// The gateway's bounds (see `--gateway-*`).
#[derive(Debug, Clone)]
pub struct Config {
    pub max_concurrent: usize,
    pub max_per_client: usize,
    pub timeout: Duration,
    pub max_car_blocks: usize,
    pub max_car_bytes: u64,
    /// What one client is, for `max_per_client`.
    pub address_key: crate::net::ip_limit::AddressKey,
}

/// Everything a gateway request needs.
#[derive(Clone)]
pub struct GatewayState {
    pub fetcher: Fetcher,
    pub slots: Arc<limits::Slots>,
    /// `--bytes-per-second-per-address` for responses.
    pub pace: Arc<pace::Pace>,
    pub cfg: Arc<Config>,
    pub trusted: Arc<Vec<Cidr>>,
    pub metrics: GatewayMetrics,
    pub peer_id: PeerId,
    /// The addresses a provider record names; empty: derived from the request's
    /// `Host` (the port binds a wildcard address).
    pub addrs: Arc<Vec<Multiaddr>>,
    /// The shared port, for addresses derived from a `Host` without one.
    pub port: u16,
    /// The port has a certificate: derived addresses are `/tls/http` and `/tls/ws`.
    pub tls: bool,
}

/// The gateway before the port is bound: its fetch commands go to the engine.
pub struct Gateway {
    pub cfg: Arc<Config>,
    pub fetcher: Fetcher,
    pub commands: Option<mpsc::Receiver<FetchCmd>>,
    pub metrics: GatewayMetrics,
    pub pace: Arc<pace::Pace>,
}

impl Gateway {
    pub fn new(cfg: Config, registry: &mut prometheus_client::registry::Registry) -> Self {
        let (fetcher, commands) = Fetcher::channel(1024);
        Self {
            pace: pace::Pace::new(0, cfg.address_key),
            cfg: Arc::new(cfg),
            fetcher,
            commands: Some(commands),
            metrics: GatewayMetrics::register(registry),
        }
    }

    /// Paces responses to `bytes_per_second` per address key (0: no limit).
    pub fn with_byte_rate(mut self, bytes_per_second: u64) -> Self {
        self.pace = pace::Pace::new(bytes_per_second, self.cfg.address_key);
        self
    }

    /// The engine's part; the core holds at most a window of fetches per request.
    pub fn engine_parts(&mut self) -> Option<crate::engine::GatewayParts> {
        Some(crate::engine::GatewayParts {
            commands: self.commands.take()?,
            max_fetches: self.cfg.max_concurrent.saturating_mul(CAR_WINDOW + 1),
        })
    }

    /// The HTTP routes, for the port bound at `local`. Provider records name
    /// `announced` (from `--announce`) when given, else the port's own addresses.
    pub fn router(
        &self,
        peer_id: PeerId,
        local: std::net::SocketAddr,
        tls: bool,
        announced: &[Multiaddr],
        trusted: Arc<Vec<Cidr>>,
    ) -> axum::Router {
        let addrs = if !announced.is_empty() {
            announced.to_vec()
        } else if local.ip().is_unspecified() {
            Vec::new()
        } else {
            providers::addrs_for(&local.ip().to_string(), local.port(), tls)
        };
        router(GatewayState {
            fetcher: self.fetcher.clone(),
            slots: limits::Slots::keyed(
                self.cfg.max_concurrent,
                self.cfg.max_per_client,
                self.cfg.address_key,
            ),
            pace: self.pace.clone(),
            cfg: self.cfg.clone(),
            trusted,
            metrics: self.metrics.clone(),
            peer_id,
            addrs: Arc::new(addrs),
            port: local.port(),
            tls,
        })
    }
}

/// `/ipfs/{cid}[/path]` and `/routing/v1/providers/{cid}`.
pub fn router(state: GatewayState) -> axum::Router {
    axum::Router::new()
        .route("/ipfs/{*rest}", axum::routing::any(serve::ipfs))
        .route(
            "/routing/v1/providers/{cid}",
            axum::routing::any(providers::providers),
        )
        .with_state(state)
}
