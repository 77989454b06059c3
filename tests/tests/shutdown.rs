//! Stopping the real `kitsune-proxy` binary: SIGTERM (what Kubernetes sends) or ctrl-c
//! cancels its shutdown token, its tasks stop, and it exits 0. Its logs on stderr hold
//! no colour codes, since stderr is a file here.

use std::time::Duration;

use kitsune_e2e::{KuboNode, KuboOptions, Proxy, ProxyOptions};

/// Generous: a stop is expected in well under a second.
const STOP: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(90);

async fn stop_with(proxy: &mut Proxy, signal: i32) {
    proxy.proc.signal(signal).unwrap();
    let status = proxy.proc.wait_timeout(STOP).await.unwrap_or_else(|| {
        panic!(
            "no exit {STOP:?} after the signal\n{}",
            proxy.proc.log_tail(30)
        )
    });
    assert_eq!(status.code(), Some(0), "{}", proxy.proc.log_tail(30));
    let err = proxy.proc.stderr();
    assert!(err.contains("shutting down"), "{err}");
    assert!(!err.contains('\x1b'), "no ANSI codes in a log file: {err}");
}

#[tokio::test]
async fn sigterm_stops_a_connected_proxy_with_exit_code_0() {
    let kubo = KuboNode::start(KuboOptions::default())
        .await
        .expect("kubo starts");
    let mut proxy = Proxy::start(ProxyOptions {
        backends: vec![kubo.api_multiaddr.clone()],
        ws: true,
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    proxy.wait_ready(T).await.unwrap();
    stop_with(&mut proxy, libc::SIGTERM).await;
}

#[tokio::test]
async fn ctrl_c_stops_a_proxy_whose_backend_is_down_with_exit_code_0() {
    let dead = format!("/ip4/127.0.0.1/tcp/{}", kitsune_e2e::free_port());
    let mut proxy = Proxy::start(ProxyOptions {
        backends: vec![dead],
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    stop_with(&mut proxy, libc::SIGINT).await;
}
