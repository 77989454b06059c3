//! Kitsune: one libp2p peer ID in front of many kubo nodes, routing bitswap.
//!
//! Layout: `bitswap` is the wire format, `router` the pure routing core, `backend` the
//! pure backend lifecycle, `net` the libp2p host and stream I/O, `engine` the event
//! loop that joins them, `http` the admin server, `config` the flags.

pub mod backend;
pub mod bitswap;
pub mod config;
pub mod engine;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod router;

use std::sync::Arc;

use anyhow::Context;

use crate::backend::BackendSpec;
use crate::config::Cli;
use crate::engine::{Engine, Parts};

/// Runs the proxy until ctrl-c or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let key = identity::load_or_create(&cli.key)?;
    let peer_id = key.public().to_peer_id();
    let specs = cli
        .downstream
        .iter()
        .map(BackendSpec::from_multiaddr)
        .collect::<Result<Vec<_>, _>>()?;
    if specs.is_empty() {
        anyhow::bail!("no backends: give kubo RPC addresses with -d/--downstream");
    }
    println!("Peer ID: {peer_id}");

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let mut swarm = net::swarm::build(key, &cli.limits, &mut registry).await?;
    for addr in cli.listen.iter().chain(cli.ws_listen_addrs().iter()) {
        swarm
            .listen_on(addr.clone())
            .with_context(|| format!("listening on {addr}"))?;
    }
    let health = Arc::new(http::Health::default());
    let (engine, handle) = Engine::new(
        Parts {
            swarm,
            router: router::Router::new(cli.router_config()),
            metrics,
            health: health.clone(),
            max_streams_per_peer: cli.limits.max_streams_per_peer,
            max_client_buffer: cli.limits.max_client_buffer_bytes,
        },
        &mut registry,
    )?;
    for s in &specs {
        tracing::info!(backend = %s, "backend configured");
    }
    handle.set_backends(specs).await?;

    let admin = http::router(Arc::new(registry), health);
    let admin = tokio::spawn(http::serve(cli.metrics_addr, admin));
    let engine = tokio::spawn(engine.run());
    tokio::select! {
        r = admin => r.context("admin server")??,
        r = engine => r.context("engine")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
