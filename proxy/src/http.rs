//! The admin HTTP server: Prometheus metrics and health probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// What `/readyz` reports: listening, the backend set known (with the watch channel:
/// the first snapshot applied; never cleared, so an absent operator does not make the
/// proxy unready), and at least one backend connected.
#[derive(Debug)]
pub struct Health {
    pub listening: AtomicBool,
    pub backend_connected: AtomicBool,
    pub synced: Arc<AtomicBool>,
}

impl Health {
    pub fn new(synced: Arc<AtomicBool>) -> Self {
        Self {
            listening: AtomicBool::new(false),
            backend_connected: AtomicBool::new(false),
            synced,
        }
    }

    pub fn ready(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
            && self.backend_connected.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

pub fn router(registry: Arc<Registry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health })
}

/// Binds the admin server's address (a start-up error if taken).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics server to {addr}: {e}"))
}

/// Serves `app` until `shutdown`, then lets open requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "metrics and health on /metrics, /healthz, /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.ready() {
        (StatusCode::OK, "ready\n")
    } else if !s.health.listening.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not listening yet\n")
    } else if !s.health.synced.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no backend set from the operator yet\n",
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no backend connected\n")
    }
}
