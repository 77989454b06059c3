//! Kitsune: one libp2p peer ID in front of many kubo nodes, routing bitswap.
//!
//! Layout: `bitswap` is the wire format, `router` the pure routing core, `backend` the
//! pure backend lifecycle, `net` the libp2p host and stream I/O, `engine` the event
//! loop that joins them, `http` the admin server, `config` the flags.

pub mod allocator;
pub mod backend;
pub mod bitswap;
pub mod config;
pub mod engine;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod preload;
pub mod router;
pub mod sources;

use std::sync::Arc;

use anyhow::Context;

use crate::backend::BackendSpec;
use crate::config::Cli;
use crate::engine::{Engine, Parts};

/// Runs the proxy until ctrl-c or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // rustls is built with both ring and aws-lc-rs in this workspace; HTTPS clients
    // (the watch channel) use ring, as the operator does (an error: one is already set).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = identity::load_or_create(&cli.key)?;
    let peer_id = key.public().to_peer_id();
    let specs = cli
        .downstream
        .iter()
        .map(BackendSpec::from_multiaddr)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &cli.backends_file {
        // Fail fast on a bad file at start; later bad edits only log and keep the set.
        sources::file::load(path).with_context(|| format!("backends file {}", path.display()))?;
    }
    if specs.is_empty() && cli.backends_file.is_none() && cli.backends_url.is_none() {
        anyhow::bail!("no backends: give -d/--downstream, --backends-file or --backends-url");
    }
    println!("Peer ID: {peer_id}");

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let watch_status = cli
        .backends_url
        .as_ref()
        .map(|_| sources::watch::WatchStatus::register(&mut registry));
    // With the watch channel the backend set is unknown until the first snapshot.
    let synced = watch_status.as_ref().map_or_else(
        || Arc::new(std::sync::atomic::AtomicBool::new(true)),
        |w| w.synced.clone(),
    );
    let splices = cli.preload_port.map(|_| preload::front::Splices::default());
    let mut swarm = net::swarm::build(
        key,
        &cli.limits,
        splices.clone().map(|s| Box::new(s) as _),
        &mut registry,
    )
    .await?;
    for addr in cli.listen.iter().chain(cli.ws_listen_addrs().iter()) {
        swarm
            .listen_on(addr.clone())
            .with_context(|| format!("listening on {addr}"))?;
    }
    let (preload_parts, front) = match (cli.preload_port, splices) {
        (Some(port), Some(splices)) => {
            let (parts, front) = preload_setup(&cli, port, splices, &mut swarm, &metrics).await?;
            (Some(parts), Some(front))
        }
        _ => (None, None),
    };
    let health = Arc::new(http::Health::new(synced));
    let backend_swarm = net::swarm::build_backend_side(&cli.limits)?;
    tracing::info!(peer = %backend_swarm.local_peer_id(), "backend-facing identity of this process");
    let client_frames = net::bitswap::FrameBounds::new(
        cli.limits.max_client_frame_bytes,
        cli.limits.frame_timeout,
        metrics.client_frame_bytes.clone(),
    );
    let (engine, handle) = Engine::new(
        Parts {
            swarm,
            backend_swarm,
            router: router::Router::new(cli.router_config()),
            metrics,
            health: health.clone(),
            max_streams_per_peer: cli.limits.max_streams_per_peer,
            client_frames,
            max_client_buffer: cli.limits.max_client_buffer_bytes,
            preload: preload_parts,
        },
        &mut registry,
    )?;
    for s in &specs {
        tracing::info!(backend = %s, "backend configured");
    }
    if !specs.is_empty() {
        handle.set_backends(specs).await?;
    }
    if let Some(path) = cli.backends_file.clone() {
        tokio::spawn(sources::file::watch(
            path,
            handle.clone(),
            std::time::Duration::from_secs(1),
        ));
    }
    if let (Some(url), Some(status)) = (cli.backends_url.clone(), watch_status) {
        let mut cfg = sources::watch::WatchConfig::new(url, cli.backends_token_file.clone());
        cfg.ca_file = cli.backends_ca_file.clone();
        cfg.ca_pem = cli.backends_ca_pem.clone();
        // A bad CA bundle is a start-up error, not a proxy that never becomes ready.
        let http =
            sources::watch::http_client(&cfg).context("--backends-ca-file / --backends-ca-pem")?;
        tokio::spawn(sources::watch::run_with(http, cfg, handle.clone(), status));
    }

    let admin = http::router(Arc::new(registry), health);
    let admin = tokio::spawn(http::serve(cli.metrics_addr, admin));
    let engine = tokio::spawn(engine.run());
    let front = async {
        match front {
            Some((listener, front)) => preload::front::serve(listener, front).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = admin => r.context("admin server")??,
        r = front => r.context("preload port")?,
        r = engine => r.context("engine")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

/// Preload mode: the loopback WebSocket listener the preload port splices to, the
/// preload port itself, and the engine's side of both.
async fn preload_setup(
    cli: &Cli,
    port: u16,
    splices: preload::front::Splices,
    swarm: &mut libp2p::Swarm<net::swarm::Behaviour>,
    metrics: &metrics::Metrics,
) -> anyhow::Result<(
    engine::PreloadParts,
    (tokio::net::TcpListener, preload::front::Front),
)> {
    let internal_ws = swarm
        .listen_on("/ip4/127.0.0.1/tcp/0/ws".parse().expect("valid"))
        .context("listening on loopback for the preload port's WebSocket")?;
    let bind = std::net::SocketAddr::new(cli.preload.bind, port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the preload port {bind}"))?;
    let local = listener.local_addr()?;
    let ip = match local.ip() {
        std::net::IpAddr::V4(v4) => format!("/ip4/{v4}"),
        std::net::IpAddr::V6(v6) => format!("/ip6/{v6}"),
    };
    println!(
        "Listening on {ip}/tcp/{}/ws/p2p/{}",
        local.port(),
        swarm.local_peer_id()
    );
    tracing::info!(%local, "preload mode: /api/v0/refs and the WebSocket listener share this port");
    let (commands_tx, commands) = tokio::sync::mpsc::unbounded_channel();
    let (internal_ws_addr, ws_target) = tokio::sync::watch::channel(None);
    let trusted = Arc::new(cli.preload.trusted_proxies.clone());
    let app = preload::refs::router(preload::refs::RefsState {
        engine: commands_tx,
        http: reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("building the preload HTTP client")?,
        permits: Arc::new(tokio::sync::Semaphore::new(cli.preload.max_concurrent)),
        trusted: trusted.clone(),
        timeout: cli.preload.timeout,
        metrics: metrics.clone(),
    });
    let front = preload::front::Front {
        app,
        ws_target,
        splices: splices.clone(),
        trusted,
        max_connections: (cli.limits.max_connections + cli.limits.max_pending_connections) as usize,
    };
    let parts = engine::PreloadParts {
        reverse: preload::Reverse::new(cli.preload_limits()),
        commands,
        splices,
        internal_ws,
        internal_ws_addr,
    };
    Ok((parts, (listener, front)))
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
