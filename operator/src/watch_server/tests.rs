use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kitsune_common::watch::WatchEvent;
use tokio::sync::watch as tokio_watch;

use super::*;
use crate::fixtures::{kp, ready_slice};
use crate::index::Index;

/// Tokens → usernames; "boom" makes the check itself fail.
struct FakeReviewer(HashMap<String, String>);

impl Authenticator for FakeReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            if token == "boom" {
                return Err("apiserver down".into());
            }
            Ok(self.0.get(token).cloned())
        })
    }
}

const GOOD: &str = "token-of-preload";
const OTHER: &str = "token-of-someone-else";

fn slice(ips: &[&str]) -> EndpointSlice {
    ready_slice("ipfs", "kubo-abc", "kubo", ips)
}

struct Server {
    addr: SocketAddr,
    index: SharedIndex,
    synced: tokio_watch::Sender<bool>,
    metrics: WatchMetrics,
}

async fn server(heartbeat: Duration) -> Server {
    let index: SharedIndex = Arc::new(RwLock::new(Index::new(100)));
    index.write().unwrap().apply_proxy(&kp());
    let (synced, synced_rx) = tokio_watch::channel(false);
    let metrics = WatchMetrics::default();
    let auth = FakeReviewer(
        [
            (
                GOOD.to_string(),
                "system:serviceaccount:ipfs:preload".to_string(),
            ),
            (
                OTHER.to_string(),
                "system:serviceaccount:ipfs:intruder".to_string(),
            ),
        ]
        .into(),
    );
    let app = routes(WatchState {
        index: index.clone(),
        synced: synced_rx,
        auth: Arc::new(auth),
        heartbeat,
        metrics: metrics.clone(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        addr,
        index,
        synced,
        metrics,
    }
}

async fn open(addr: SocketAddr, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Reads NDJSON events from a response.
struct Lines {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl Lines {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: resp.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    async fn next(&mut self, timeout: Duration) -> Option<WatchEvent> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = tokio::time::timeout(timeout, self.body.next())
                .await
                .ok()??
                .ok()?;
            self.buf.extend_from_slice(&chunk);
        }
    }
}

const PATH: &str = "/v1/backends/ipfs/preload";

#[tokio::test]
async fn the_first_snapshot_waits_for_the_real_set_then_comes_at_once() {
    let s = server(Duration::from_secs(60)).await;
    let resp = open(s.addr, PATH, Some(GOOD)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], watch::CONTENT_TYPE);
    let mut lines = Lines::new(resp);
    assert!(
        lines.next(Duration::from_millis(300)).await.is_none(),
        "nothing, not even an empty placeholder, before the index is synced"
    );
    s.index
        .write()
        .unwrap()
        .apply_slice(&slice(&["10.0.0.1", "10.0.0.2"]));
    s.synced.send(true).unwrap();
    let Some(WatchEvent::Snapshot(snap)) = lines.next(Duration::from_secs(5)).await else {
        panic!("a snapshot first");
    };
    assert_eq!(snap.backends.len(), 2);
    assert_eq!(snap.backends[0].address, "10.0.0.1");
    assert_eq!(snap.backends[0].rpc_port, 5001);
    assert_eq!(snap.backends[0].swarm_port, Some(4001));
    assert_eq!(s.metrics.subscribers.get(), 1);

    // A late subscriber gets the current set at once.
    let mut late = Lines::new(open(s.addr, PATH, Some(GOOD)).await);
    let Some(WatchEvent::Snapshot(again)) = late.next(Duration::from_secs(1)).await else {
        panic!("a snapshot at once");
    };
    assert_eq!(again, snap);
}

#[tokio::test]
async fn changes_are_coalesced_into_the_latest_full_set_and_heartbeats_flow() {
    let s = server(Duration::from_millis(200)).await;
    s.synced.send(true).unwrap();
    let mut lines = Lines::new(open(s.addr, PATH, Some(GOOD)).await);
    let Some(WatchEvent::Snapshot(first)) = lines.next(Duration::from_secs(5)).await else {
        panic!("snapshot");
    };
    assert!(first.backends.is_empty());
    // Three changes in a row, faster than anyone reads.
    for ips in [&["10.0.0.1"][..], &["10.0.0.1", "10.0.0.2"], &["10.0.0.3"]] {
        s.index.write().unwrap().apply_slice(&slice(ips));
    }
    let Some(WatchEvent::Snapshot(latest)) = lines.next(Duration::from_secs(5)).await else {
        panic!("snapshot");
    };
    assert!(latest.version > first.version);
    let addrs: Vec<&str> = latest.backends.iter().map(|b| b.address.as_str()).collect();
    assert_eq!(
        addrs,
        ["10.0.0.3"],
        "the newest full set, not a backlog of diffs"
    );
    match lines.next(Duration::from_secs(5)).await {
        Some(WatchEvent::Heartbeat { version }) => assert_eq!(version, latest.version),
        other => panic!("expected a heartbeat on idle, got {other:?}"),
    }
    assert!(s.metrics.heartbeats.get() >= 1);
    let labels = crate::metrics::ProxyLabels {
        namespace: "ipfs".into(),
        name: "preload".into(),
    };
    assert_eq!(
        s.metrics.version.get_or_create(&labels).get(),
        latest.version as i64
    );
    let age = kitsune_common::clock::unix_now().as_secs() as i64
        - s.metrics.last_message.get_or_create(&labels).get();
    assert!((0..5).contains(&age), "last line sent {age} s ago");
}

#[tokio::test]
async fn the_stream_ends_when_the_proxy_is_deleted() {
    let s = server(Duration::from_secs(60)).await;
    s.synced.send(true).unwrap();
    let mut lines = Lines::new(open(s.addr, PATH, Some(GOOD)).await);
    assert!(matches!(
        lines.next(Duration::from_secs(5)).await,
        Some(WatchEvent::Snapshot(_))
    ));
    s.index.write().unwrap().delete_proxy("ipfs", "preload");
    assert!(lines.next(Duration::from_secs(5)).await.is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.metrics.subscribers.get(), 0);
}

#[tokio::test]
async fn auth_and_unknown_proxies_are_refused() {
    let s = server(Duration::from_secs(60)).await;
    s.synced.send(true).unwrap();
    assert_eq!(open(s.addr, PATH, None).await.status(), 401);
    assert_eq!(open(s.addr, PATH, Some("forged")).await.status(), 401);
    assert_eq!(open(s.addr, PATH, Some(OTHER)).await.status(), 403);
    assert_eq!(open(s.addr, PATH, Some("boom")).await.status(), 503);
    // Its own ServiceAccount, but for a proxy that does not exist.
    let missing = "/v1/backends/ipfs/preload2";
    let resp = reqwest::Client::new()
        .get(format!("http://{}{missing}", s.addr))
        .bearer_auth(GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        403,
        "preload's account may not watch preload2"
    );
    let s2 = server(Duration::from_secs(60)).await;
    s2.index.write().unwrap().delete_proxy("ipfs", "preload");
    assert_eq!(open(s2.addr, PATH, Some(GOOD)).await.status(), 404);
    assert_eq!(s.metrics.refused.get(), 5);
}
