//! The stop signal of both binaries: ctrl-c (SIGINT) or SIGTERM (what Kubernetes and
//! `kill` send) cancels a token that every task watches, so they stop and drain.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first ctrl-c or SIGTERM. The SIGTERM handler is installed
/// before this returns (an error here is a start-up error), so a signal that arrives
/// right after start is not lost.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        let ctrl_c = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!(error = %e, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
            _ = token.cancelled() => return,
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = ctrl_c => {}
            _ = token.cancelled() => return,
        }
        tracing::info!("shutting down");
        token.cancel();
    });
    Ok(())
}
