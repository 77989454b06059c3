//! The operator's HTTP server: `/metrics`, `/healthz` (the process answers) and
//! `/readyz` (the backend index has completed its first list). The watch channel's
//! routes (a later issue) merge into [`router`]'s result.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct HttpState {
    pub registry: Arc<Registry>,
    /// True once the index is synced.
    pub ready: watch::Receiver<bool>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&s.registry),
    )
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if *s.ready.borrow() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "backend index not synced yet",
        )
    }
}

/// Serves `router` on `addr` until `shutdown`, then drains open requests.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(addr, router, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given ([`crate::tls`]).
pub async fn serve_with(
    addr: SocketAddr,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    match tls {
        Some(cfg) => {
            tracing::info!(%addr, "HTTPS server listening");
            crate::tls::serve(listener, router, cfg, shutdown).await
        }
        None => {
            tracing::info!(%addr, "HTTP server listening");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        (code, out)
    }

    #[tokio::test]
    async fn health_readiness_metrics_and_graceful_shutdown() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.failed("InvalidKey");
        let (tx, rx) = watch::channel(false);
        let state = HttpState {
            registry: Arc::new(registry),
            ready: rx,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(addr, router(state), stop.clone()));
        // Wait for the bind.
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        tx.send_replace(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            body.contains(r#"kitsune_operator_reconcile_failures_total{reason="InvalidKey"} 1"#)
        );
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}
