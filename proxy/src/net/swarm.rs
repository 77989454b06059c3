//! The libp2p hosts. The client-facing host carries the fixed identity: TCP, QUIC-v1 and
//! WebSocket; noise or TLS; yamux or mplex (js-ipfs speaks only mplex). It exposes
//! exactly bitswap, identify and ping: every other protocol is refused at negotiation,
//! since nothing else is registered.
//!
//! Backends are reached from a second host with an identity of this process's own.
//! Replicas share the public peer ID; if they also shared it towards kubo, kubo would
//! see one peer over several connections: one ledger (each replica's full wantlist
//! erasing the others'), and replies sent on whichever connection kubo picks, so one
//! replica would get another's blocks.

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, SwarmBuilder, connection_limits, identify, noise, ping, tcp, tls, yamux};
use prometheus_client::registry::Registry;

use super::ip_limit::{self, RealClient};
use super::shaped::{self, Shaped};
use super::{backend_tls, bitswap};
use crate::config::Limits;

/// Identify's agent string.
pub const AGENT: &str = concat!("kitsune/", env!("CARGO_PKG_VERSION"));

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub ip_limit: ip_limit::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// Bitswap streams both ways. Last: it tracks only connections every other
    /// behaviour accepted.
    pub bitswap: bitswap::Behaviour,
}

/// libp2p's noise, its sends gathered per burst (see `shaped`).
fn shaped_noise(key: &Keypair) -> Result<Shaped<noise::Config, shaped::Noise>, noise::Error> {
    noise::Config::new(key).map(Shaped::new)
}

/// libp2p's TLS, its writes gathered per burst (see `shaped`).
fn shaped_tls(
    key: &Keypair,
) -> Result<Shaped<tls::Config, shaped::Tls>, tls::certificate::GenError> {
    tls::Config::new(key).map(Shaped::new)
}

fn mplex() -> libp2p_mplex::Config {
    let mut c = libp2p_mplex::Config::new();
    // Bigger frames than the 8 KiB default (js mplex takes up to 1 MiB) for throughput;
    // a full per-stream buffer blocks reading rather than resetting the stream.
    c.set_split_send_size(64 * 1024);
    c.set_max_buffer_size(64);
    c.set_max_num_streams(256);
    c
}

/// Builds the host. `real_client` (preload mode) finds the client behind a connection
/// relayed from the preload port, so the per-IP limit counts the real address.
pub async fn build(
    key: Keypair,
    limits: &Limits,
    real_client: Option<Box<dyn RealClient>>,
    registry: &mut Registry,
) -> anyhow::Result<Swarm<Behaviour>> {
    let conn_limits = connection_limits::ConnectionLimits::default()
        .with_max_established_incoming(Some(limits.max_connections))
        .with_max_pending_incoming(Some(limits.max_pending_connections))
        .with_max_established_per_peer(Some(8));
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (shaped_noise, shaped_tls),
            (yamux::Config::default, mplex),
        )?
        .with_quic()
        .with_dns()?
        .with_websocket((shaped_noise, shaped_tls), (yamux::Config::default, mplex))
        .await?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            Behaviour::new(
                key,
                conn_limits,
                ip_limit::Behaviour::new(limits.max_connections_per_ip)
                    .with_keying(limits.address_key())
                    .with_real_client(real_client),
                // Only external addresses are announced (the engine adds the public
                // listeners): preload mode's loopback WebSocket listener must not leak.
                true,
            )
        })?
        .with_swarm_config(|c| swarm_config(c, limits))
        .build();
    Ok(swarm)
}

/// Builds the backend-facing host: a fresh Ed25519 identity, outbound TCP only (kubo
/// announces its swarm port over `/api/v0/id`), TLS or noise, and yamux, which every
/// kubo speaks. It never listens.
pub fn build_backend_side(limits: &Limits) -> anyhow::Result<Swarm<Behaviour>> {
    let conn_limits = connection_limits::ConnectionLimits::default()
        .with_max_established_incoming(Some(0))
        .with_max_pending_incoming(Some(0))
        .with_max_established_per_peer(Some(2));
    let swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        // TLS 1.3 first, offering AES-GCM first (see backend_tls): kubo speaks it, and
        // AES-128-GCM costs a fraction of noise's ChaCha20-Poly1305 per byte on CPUs with
        // AES instructions (the bench's floor line measures both); noise stays for
        // backends without TLS.
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (
                |k: &Keypair| backend_tls::Config::new(k).map(Shaped::<_, shaped::Tls>::new),
                shaped_noise,
            ),
            yamux::Config::default,
        )?
        .with_dns()?
        .with_behaviour(|key| {
            Behaviour::new(
                key,
                conn_limits,
                ip_limit::Behaviour::new(limits.max_connections_per_ip),
                false,
            )
        })?
        .with_swarm_config(|c| swarm_config(c, limits))
        .build();
    Ok(swarm)
}

impl Behaviour {
    /// Either host's behaviour: identify as kubo does, with Kitsune's agent version
    /// (and, with `hide_listen_addrs`, announcing external addresses only), ping, and
    /// bitswap behind these connection limits.
    fn new(
        key: &Keypair,
        limits: connection_limits::ConnectionLimits,
        ip_limit: ip_limit::Behaviour,
        hide_listen_addrs: bool,
    ) -> Self {
        let identify = identify::Config::new("ipfs/0.1.0".into(), key.public())
            .with_agent_version(AGENT.into())
            .with_hide_listen_addrs(hide_listen_addrs);
        Self {
            limits: connection_limits::Behaviour::new(limits),
            ip_limit,
            identify: identify::Behaviour::new(identify),
            ping: ping::Behaviour::default(),
            bitswap: bitswap::Behaviour::default(),
        }
    }
}

/// Both hosts: idle connections close after `--idle-timeout`; inbound streams still
/// negotiating are bounded (a peer opening many at once cannot grow that set).
fn swarm_config(c: libp2p::swarm::Config, limits: &Limits) -> libp2p::swarm::Config {
    c.with_idle_connection_timeout(limits.idle_timeout)
        .with_max_negotiating_inbound_streams(128)
}
