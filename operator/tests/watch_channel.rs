//! The watch channel end to end in one process: the operator's real watch server and
//! the proxy's real watch client (`kitsune_proxy::sources::watch`), over real HTTP.
//! TokenReview is the only double (there is no API server here).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kitsune_operator::crd::KitsuneProxy;
use kitsune_operator::index::{Index, SharedIndex};
use kitsune_operator::watch_server::{self, Authenticator, WatchMetrics, WatchState};
use kitsune_proxy::backend::BackendSpec;
use kitsune_proxy::engine::{Command, Handle};
use kitsune_proxy::sources::watch::{self as client, WatchConfig, WatchStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

mod support;

struct Tokens(HashMap<String, String>);

impl Authenticator for Tokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move { Ok(self.0.get(token).cloned()) })
    }
}

fn kp() -> KitsuneProxy {
    serde_yaml::from_str(include_str!("../../manifests/examples/kitsuneproxy.yaml")).unwrap()
}

/// The Service `kubo`'s slice in `ipfs`: ready endpoints at `ips`, of pods `kubo-<ip>`.
fn slice(ips: &[&str]) -> EndpointSlice {
    let pods: Vec<String> = ips.iter().map(|ip| format!("kubo-{ip}")).collect();
    let endpoints: Vec<_> = ips
        .iter()
        .zip(&pods)
        .map(|(ip, pod)| (*ip, pod.as_str(), true, false))
        .collect();
    support::kubo_slice("ipfs", "kubo-1", &endpoints)
}

struct Operator {
    addr: SocketAddr,
    index: SharedIndex,
    stop: CancellationToken,
    _synced: watch::Sender<bool>,
}

/// An operator watch server on `addr` (or a fresh port), index seeded at `first_version`.
async fn operator(addr: Option<SocketAddr>, first_version: u64, heartbeat: Duration) -> Operator {
    let index: SharedIndex = Arc::new(RwLock::new(Index::new(first_version)));
    index.write().unwrap().apply_proxy(&kp());
    let (synced, synced_rx) = watch::channel(true);
    let stop = CancellationToken::new();
    let app = watch_server::routes(WatchState {
        index: index.clone(),
        synced: synced_rx,
        auth: Arc::new(Tokens(
            [
                (
                    "good".to_string(),
                    "system:serviceaccount:ipfs:preload".to_string(),
                ),
                (
                    "other".to_string(),
                    "system:serviceaccount:ipfs:someone".to_string(),
                ),
            ]
            .into(),
        )),
        heartbeat,
        metrics: WatchMetrics::default(),
        shutdown: stop.clone(),
    });
    let listener =
        tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
    let addr = listener.local_addr().unwrap();
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await
            .unwrap()
    });
    Operator {
        addr,
        index,
        stop,
        _synced: synced,
    }
}

struct Proxy {
    commands: mpsc::Receiver<Command>,
    status: WatchStatus,
    _task: tokio::task::JoinHandle<()>,
}

fn proxy(addr: SocketAddr, token: &str, idle: Duration) -> Proxy {
    let dir = tempfile::tempdir().unwrap().keep();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut cfg = WatchConfig::new(
        format!("http://{addr}/v1/backends/ipfs/preload"),
        Some(token_file),
    );
    cfg.idle_timeout = idle;
    cfg.backoff = cfg
        .backoff
        .with_bounds(Duration::from_millis(50), Duration::from_millis(200))
        .unwrap();
    let (handle, commands) = Handle::channel(16);
    let status = WatchStatus::default();
    let task = tokio::spawn(client::run(cfg, handle, status.clone()));
    Proxy {
        commands,
        status,
        _task: task,
    }
}

impl Proxy {
    async fn next_set(&mut self, within: Duration) -> Option<Vec<BackendSpec>> {
        match tokio::time::timeout(within, self.commands.recv()).await {
            Ok(Some(Command::SetBackends(specs))) => Some(specs),
            _ => None,
        }
    }
}

fn hosts(specs: &[BackendSpec]) -> Vec<String> {
    specs.iter().map(|s| s.rpc_url()).collect()
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn the_first_snapshot_arrives_and_updates_are_coalesced() {
    let op = operator(None, 10, Duration::from_secs(5)).await;
    op.index.write().unwrap().apply_slice(&slice(&["10.0.0.1"]));
    let mut p = proxy(op.addr, "good", Duration::from_secs(5));
    assert_eq!(
        hosts(&p.next_set(T).await.unwrap()),
        ["http://10.0.0.1:5001"]
    );
    assert!(p.status.synced.load(Ordering::Relaxed));
    let first_version = p.status.version.get();

    for ips in [
        &["10.0.0.1", "10.0.0.2"][..],
        &["10.0.0.2"],
        &["10.0.0.2", "10.0.0.3"],
    ] {
        op.index.write().unwrap().apply_slice(&slice(ips));
    }
    // The proxy may see an intermediate set or not, but it ends on the newest, in order.
    let mut last = Vec::new();
    while let Some(set) = p.next_set(Duration::from_millis(500)).await {
        last = hosts(&set);
    }
    assert_eq!(last, ["http://10.0.0.2:5001", "http://10.0.0.3:5001"]);
    assert!(p.status.version.get() > first_version);
}

#[tokio::test]
async fn after_a_server_restart_the_client_resets_to_the_new_full_state() {
    let op = operator(None, 1_000, Duration::from_secs(5)).await;
    op.index
        .write()
        .unwrap()
        .apply_slice(&slice(&["10.0.0.1", "10.0.0.2"]));
    let mut p = proxy(op.addr, "good", Duration::from_secs(5));
    assert_eq!(p.next_set(T).await.unwrap().len(), 2);

    // The operator goes away: the proxy keeps its last set (no empty set is applied).
    let addr = op.addr;
    op.stop.cancel();
    drop(op);
    assert!(p.next_set(Duration::from_millis(700)).await.is_none());
    assert!(p.status.reconnects.get() >= 1, "it keeps trying");
    assert!(
        p.status.synced.load(Ordering::Relaxed),
        "still ready while the operator is away"
    );

    // A new operator (a lower version: it restarted) with a different set.
    let op2 = operator(Some(addr), 5, Duration::from_secs(5)).await;
    op2.index
        .write()
        .unwrap()
        .apply_slice(&slice(&["10.0.0.9"]));
    let mut got = None;
    while let Some(set) = p.next_set(T).await {
        got = Some(hosts(&set));
        if got.as_deref() == Some(&["http://10.0.0.9:5001".to_string()][..]) {
            break;
        }
    }
    assert_eq!(got.unwrap(), ["http://10.0.0.9:5001"]);
}

#[tokio::test]
async fn a_missed_heartbeat_triggers_a_reconnect() {
    // A server that sends one snapshot and then goes silent without closing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let body = "{\"type\":\"snapshot\",\"version\":1,\"backends\":[{\"address\":\"10.0.0.1\",\"rpc_port\":5001}]}\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            held.push(s); // never another byte
        }
    });
    let mut p = proxy(addr, "good", Duration::from_millis(300));
    assert_eq!(p.next_set(T).await.unwrap().len(), 1);
    tokio::time::timeout(T, async {
        while accepted.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client reconnected after the silence");
    assert!(p.status.reconnects.get() >= 1);
}

#[tokio::test]
async fn a_bad_or_foreign_token_gets_nothing() {
    let op = operator(None, 10, Duration::from_secs(5)).await;
    op.index.write().unwrap().apply_slice(&slice(&["10.0.0.1"]));
    for token in ["forged", "other"] {
        let mut p = proxy(op.addr, token, Duration::from_secs(5));
        assert!(
            p.next_set(Duration::from_millis(800)).await.is_none(),
            "{token}"
        );
        assert!(!p.status.synced.load(Ordering::Relaxed));
        assert!(
            p.status.reconnects.get() >= 1,
            "{token}: retried with backoff"
        );
    }
    // The statuses themselves: 401 and 403.
    let url = format!("http://{}/v1/backends/ipfs/preload", op.addr);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(&url)
            .bearer_auth("forged")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth("other")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
}
