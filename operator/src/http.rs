//! The operator's HTTP server: [`kitsune_common::admin`]'s `/metrics`, `/healthz` (the
//! process answers) and `/readyz` (the backend index has completed its first list).
//! The watch channel's routes merge into [`router`]'s result.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use kitsune_common::admin;
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
    let ready = state.ready;
    admin::router(
        state.registry,
        Arc::new(move || {
            if *ready.borrow() {
                Ok(())
            } else {
                Err("backend index not synced yet")
            }
        }),
    )
}

/// Serves `router` on `addr` until `shutdown`, then drains open requests; over TLS when
/// `tls` is given ([`crate::tls`]).
pub async fn serve_with(
    addr: SocketAddr,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = admin::bind(addr).await?;
    match tls {
        Some(cfg) => {
            tracing::info!(addr = %listener.local_addr()?, "HTTPS server listening");
            crate::tls::serve(listener, router, cfg, shutdown).await
        }
        None => admin::serve(listener, router, shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
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
        let server = tokio::spawn(serve_with(addr, router(state), None, stop.clone()));
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
