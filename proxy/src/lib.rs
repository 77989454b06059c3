//! Kitsune: one libp2p peer ID in front of many kubo nodes, routing bitswap.
//!
//! Layout: `bitswap` is the wire format; `routing` the pure routing core, which owns
//! `router` (the want tables and balancing) and `preload`'s reverse path; `backend` the
//! pure backend lifecycle; `net` the libp2p hosts and stream I/O; `engine` the event
//! loop that feeds the cores events and carries out their effects; `sources` where the
//! backend set comes from; `front` the shared HTTP + WebSocket port; `http` the admin
//! server; `config` the flags.

pub mod allocator;
pub mod announce;
pub mod backend;
pub mod bitswap;
pub mod cache;
pub mod config;
pub mod engine;
#[cfg(test)]
mod fixtures;
pub mod front;
pub mod gateway;
pub mod http;
pub mod http_client;
pub mod identity;
pub mod keyed;
pub mod metrics;
pub mod net;
pub mod preload;
pub mod quota;
pub mod router;
pub mod routing;
pub mod sources;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::backend::BackendSpec;
use crate::config::Cli;
use crate::engine::{Engine, Parts};

/// Runs the proxy until ctrl-c or SIGTERM, then stops its tasks.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // First, so a signal during start-up is not lost: it stops the proxy once started.
    let shutdown = CancellationToken::new();
    kitsune_common::shutdown::cancel_on_signal(shutdown.clone())
        .context("listening for SIGTERM")?;
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
    announce::line(format_args!("Peer ID: {peer_id}"));

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
    let shared_port = cli.shared_port()?;
    // A bad certificate or key is a start-up error, naming the file (never its contents).
    let tls = cli
        .tls_files()
        .map(front::tls::server_config)
        .transpose()
        .context("the shared port's TLS certificate")?;
    let splices = shared_port.map(|_| front::Splices::default());
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
    let mut gateway = cli.gateway.enabled.then(|| {
        gateway::Gateway::new(cli.gateway.config(cli.limits.address_key()), &mut registry)
            .with_byte_rate(cli.limits.bytes_per_second_per_address)
    });
    // Announced addresses replace the listen addresses in identify and on stdout.
    for addr in &cli.announce {
        swarm.add_external_address(addr.clone());
        announce::line(format_args!("Listening on {addr}/p2p/{peer_id}"));
    }
    let (preload_parts, refs_app) = match cli.preload_port {
        Some(_) => {
            let (parts, app) = preload_setup(&cli, &metrics)?;
            (Some(parts), Some(app))
        }
        None => (None, None),
    };
    // The shared port's HTTP app, from the features that are on; 404 for the rest.
    let mut app = axum::Router::new();
    if let Some(refs) = refs_app {
        app = app.merge(refs);
    }
    let app = app.fallback(front::not_found);
    let (front_parts, front) = match (shared_port, splices) {
        (Some(port), Some(splices)) => {
            let tls_on = tls.is_some();
            let (parts, mut front) = front_setup(&cli, port, splices, app, tls, &mut swarm).await?;
            if let Some(g) = &gateway {
                let local = front.0.local_addr()?;
                let app = g.router(
                    peer_id,
                    local,
                    tls_on,
                    &cli.announce,
                    front.1.trusted.clone(),
                );
                front.1.app = front.1.app.merge(app);
                tracing::info!(%local, "trustless gateway and /routing/v1 on the shared port");
            }
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
            front: front_parts,
            announced: !cli.announce.is_empty(),
            block_cache_bytes: cli.block_cache_bytes,
            gateway: gateway.as_mut().and_then(gateway::Gateway::engine_parts),
        },
        &mut registry,
    )?;
    for s in &specs {
        tracing::info!(backend = %s, "backend configured");
    }
    if !specs.is_empty() {
        handle.set_backends(specs).await?;
    }
    // `shutdown` (the signal) starts the drain; `stop` ends everything once the
    // engine has drained.
    let stop = CancellationToken::new();
    if let Some(path) = cli.backends_file.clone() {
        let every = std::time::Duration::from_secs(1);
        let watch = sources::file::watch(path, handle.clone(), every);
        tokio::spawn(stop.clone().run_until_cancelled_owned(watch));
    }
    if let (Some(url), Some(status)) = (cli.backends_url.clone(), watch_status) {
        let mut cfg = sources::watch::WatchConfig::new(url, cli.backends_token_file.clone());
        cfg.ca_file = cli.backends_ca_file.clone();
        cfg.ca_pem = cli.backends_ca_pem.clone();
        cfg.max_backends = cli.max_backends;
        // A bad CA bundle is a start-up error, not a proxy that never becomes ready.
        let http = sources::watch::http_client(&cfg).context("the --backends-url client")?;
        let watch = sources::watch::run_with(http, cfg, handle.clone(), status);
        tokio::spawn(stop.clone().run_until_cancelled_owned(watch));
    }

    let admin = http::router(Arc::new(registry), health);
    let listener = kitsune_common::admin::bind(cli.metrics_addr).await?;
    let mut tasks = tokio::task::JoinSet::new();
    // The admin server answers through the drain (`/readyz` failing).
    let s = stop.clone();
    tasks.spawn(async move {
        kitsune_common::admin::serve(listener, admin, s)
            .await
            .context("admin server")
    });
    let (s, drain_timeout) = (stop.clone(), cli.drain_timeout);
    let signal = shutdown.clone();
    tasks.spawn(async move {
        s.run_until_cancelled(engine.run(signal, drain_timeout))
            .await;
        s.cancel();
        Ok(())
    });
    if let Some((listener, front)) = front {
        // The preload port stops accepting at the signal; connections it already
        // spliced are the engine's and drain with it.
        let s = shutdown.clone();
        tasks.spawn(async move {
            let r = s.run_until_cancelled(front::serve(listener, front));
            r.await.unwrap_or(Ok(())).context("shared port")
        });
    }
    // A task that fails stops the others at once.
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        let r = r.context("a task panicked").and_then(|r| r);
        if let (Ok(()), Err(e)) = (&result, r) {
            result = Err(e);
            shutdown.cancel();
            stop.cancel();
        }
    }
    tracing::info!("stopped");
    result
}

/// The shared port: the loopback WebSocket listener it splices to, the port itself,
/// and the engine's side of both.
async fn front_setup(
    cli: &Cli,
    port: u16,
    splices: front::Splices,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    swarm: &mut libp2p::Swarm<net::swarm::Behaviour>,
) -> anyhow::Result<(engine::FrontParts, (tokio::net::TcpListener, front::Front))> {
    let internal_ws = swarm
        .listen_on("/ip4/127.0.0.1/tcp/0/ws".parse().expect("valid"))
        .context("listening on loopback for the shared port's WebSocket")?;
    let bind = std::net::SocketAddr::new(cli.preload.bind, port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the shared port {bind}"))?;
    let local = listener.local_addr()?;
    if cli.announce.is_empty() {
        let ip = match local.ip() {
            std::net::IpAddr::V4(v4) => format!("/ip4/{v4}"),
            std::net::IpAddr::V6(v6) => format!("/ip6/{v6}"),
        };
        // With TLS the plaintext forms still work on the port; the TLS ones are shown
        // because browsers need them.
        let tls_part = if tls.is_some() { "/tls" } else { "" };
        let base = format!("{ip}/tcp/{}{tls_part}", local.port());
        announce::line(format_args!(
            "Listening on {base}/ws/p2p/{}",
            swarm.local_peer_id()
        ));
        announce::line(format_args!("Serving HTTP on {base}/http"));
    }
    tracing::info!(%local, tls = tls.is_some(), "HTTP and the WebSocket listener share this port");
    let (internal_ws_addr, ws_target) = tokio::sync::watch::channel(None);
    let front = front::Front {
        app,
        ws_target,
        splices: splices.clone(),
        trusted: Arc::new(cli.preload.trusted_proxies.clone()),
        max_connections: (cli.limits.max_connections + cli.limits.max_pending_connections) as usize,
        max_per_ip: cli.limits.max_connections_per_ip,
        address_key: cli.limits.address_key(),
        tls,
    };
    let parts = engine::FrontParts {
        splices,
        internal_ws,
        internal_ws_addr,
    };
    Ok((parts, (listener, front)))
}

/// Preload mode: the refs routes and the engine's side of them.
fn preload_setup(
    cli: &Cli,
    metrics: &metrics::Metrics,
) -> anyhow::Result<(engine::PreloadParts, axum::Router)> {
    let (commands_tx, commands) = tokio::sync::mpsc::unbounded_channel();
    let app = preload::refs::router(preload::refs::RefsState {
        engine: commands_tx,
        http: http_client::plain()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("building the preload HTTP client")?,
        permits: Arc::new(tokio::sync::Semaphore::new(cli.preload.max_concurrent)),
        per_address: quota::KeyedQuota::new(cli.preload.max_concurrent_per_address),
        address_key: cli.limits.address_key(),
        trusted: Arc::new(cli.preload.trusted_proxies.clone()),
        timeout: cli.preload.timeout,
        metrics: metrics.clone(),
    });
    let parts = engine::PreloadParts {
        reverse: preload::Reverse::new(cli.preload_limits()),
        commands,
    };
    Ok((parts, app))
}
