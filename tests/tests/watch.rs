//! The backend set changing under live traffic, end to end: real kubo backends, the real
//! `kitsune-proxy` binary, a native bitswap client fetching a large file, and the backend
//! set arriving either through the operator's real watch server (in process, its real
//! index fed EndpointSlices) or through a `--backends-file` replaced by atomic rename.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cid::Cid;
use kitsune_e2e::bitswap_client::{BitswapClient, Copies};
use kitsune_e2e::operator::{SliceBackend, WatchServer};
use kitsune_e2e::{
    KuboNode, KuboOptions, Proxy, ProxyOptions, scratch_dir, wait_for, write_random_file,
};

const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(50);

/// `n` kubo nodes, each holding the same 32 MiB file (128 leaves of 256 KiB).
async fn fleet(n: usize, dir: &Path) -> (Vec<KuboNode>, Vec<Cid>) {
    let file = write_random_file(dir, "big.bin", 32 * MIB, 51).unwrap();
    let mut ks = Vec::new();
    for _ in 0..n {
        ks.push(
            KuboNode::start(KuboOptions {
                add: vec![file.clone()],
                ..Default::default()
            })
            .await
            .expect("kubo starts"),
        );
    }
    let cids = ks[0].dag_cids(&ks[0].added["big.bin"]).await.unwrap();
    (ks, cids)
}

async fn proxy_with(args: Vec<String>) -> Proxy {
    Proxy::start(ProxyOptions {
        args,
        ..Default::default()
    })
    .await
    .expect("proxy starts")
}

/// A proxy fed by the channel. Without the block cache: these tests count which
/// backend served each block, and a second fetch must go to the backends again.
async fn watching_proxy(server: &WatchServer, dir: &Path) -> Proxy {
    let token = WatchServer::write_token(dir).unwrap();
    proxy_with(vec![
        "--backends-url".into(),
        server.url(),
        "--backends-token-file".into(),
        token.display().to_string(),
        "--block-cache-bytes".into(),
        "0".into(),
    ])
    .await
}

async fn metric(p: &Proxy, name: &str) -> Option<f64> {
    p.metric(name).await.ok().flatten()
}

/// Blocks the proxy has received from backend `k` since it connected, if connected.
async fn served_by(p: &Proxy, k: &KuboNode) -> Option<f64> {
    metric(
        p,
        &format!(
            "kitsune_backend_blocks_received_total{{backend=\"{}\"}}",
            k.peer_id
        ),
    )
    .await
}

async fn ready(p: &Proxy) -> bool {
    let url = format!("{}/readyz", p.metrics_url);
    reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Every block arrived, exactly once, and together they are the whole file.
fn assert_whole_once(copies: &Copies, cids: &[Cid], what: &str) {
    assert_eq!(copies.len(), cids.len(), "{what}: every block");
    let twice: Vec<_> = copies.iter().filter(|(_, (n, _))| *n > 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: blocks delivered twice: {twice:?}"
    );
    let bytes: usize = copies.values().map(|(_, len)| len).sum();
    assert!(bytes > 32 * MIB, "{what}: the whole file ({bytes} bytes)");
}

#[tokio::test]
async fn a_backend_added_through_the_channel_takes_wants_during_a_fetch() {
    let dir = scratch_dir("watch-add").unwrap();
    let (ks, cids) = fleet(2, dir.path()).await;
    let mut server = WatchServer::start(None, 100, Duration::from_secs(5))
        .await
        .unwrap();
    server.set_backends(&[SliceBackend::from(&ks[0])]);
    let proxy = watching_proxy(&server, dir.path()).await;
    proxy.wait_backends(1, T).await.unwrap();

    let mut client = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let half = cids.len() / 2;
    // The first half comes from the only backend; kubo B joins through the channel
    // once some blocks have arrived.
    let mut copies = client
        .fetch_counting(&cids[..half], 8, T, 8, || {
            server.set_backends(&[SliceBackend::from(&ks[0]), SliceBackend::from(&ks[1])])
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.proc.log_tail(30)));
    // Once B is connected, the rest of the same fetch spreads over both.
    proxy.wait_backends(2, T).await.unwrap();
    let rest = client
        .fetch_counting(&cids[half..], 8, T, usize::MAX, || {})
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.proc.log_tail(30)));
    for (cid, (n, len)) in rest {
        copies.entry(cid).or_insert((0, len)).0 += n;
    }
    assert_whole_once(&copies, &cids, "fetch across the addition");
    let from_b = served_by(&proxy, &ks[1]).await.unwrap_or(0.0);
    assert!(
        from_b >= 1.0,
        "the added backend took wants (it served {from_b} blocks)"
    );
    eprintln!(
        "blocks served: A {:?}, B {from_b}",
        served_by(&proxy, &ks[0]).await
    );
}

#[tokio::test]
async fn a_backend_removed_through_the_channel_mid_fetch_loses_no_block() {
    let dir = scratch_dir("watch-remove").unwrap();
    let (ks, cids) = fleet(2, dir.path()).await;
    let mut server = WatchServer::start(None, 100, Duration::from_secs(5))
        .await
        .unwrap();
    server.set_backends(&[SliceBackend::from(&ks[0]), SliceBackend::from(&ks[1])]);
    let proxy = watching_proxy(&server, dir.path()).await;
    proxy.wait_backends(2, T).await.unwrap();

    let mut client = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let copies = client
        .fetch_counting(&cids, 16, T, 16, || {
            server.set_backends(&[SliceBackend::from(&ks[1])])
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.proc.log_tail(30)));
    assert_whole_once(&copies, &cids, "fetch across the removal");

    // A is drained and gone: its connection closed, and a new fetch never touches it.
    proxy.wait_backends(1, T).await.unwrap();
    assert_eq!(served_by(&proxy, &ks[0]).await, None);
    let mut again = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let copies = again
        .fetch_counting(&cids, 16, T, usize::MAX, || {})
        .await
        .unwrap();
    assert_whole_once(&copies, &cids, "fetch after the removal");
    assert_eq!(
        served_by(&proxy, &ks[0]).await,
        None,
        "the removed backend got wants"
    );
    assert!(served_by(&proxy, &ks[1]).await.unwrap_or(0.0) >= cids.len() as f64);
}

#[tokio::test]
async fn fetches_keep_working_while_the_channel_is_cut_and_it_resyncs_after() {
    let dir = scratch_dir("watch-cut").unwrap();
    let (ks, cids) = fleet(2, dir.path()).await;
    let mut server = WatchServer::start(None, 100, Duration::from_millis(500))
        .await
        .unwrap();
    let addr = server.addr;
    server.set_backends(&[SliceBackend::from(&ks[0]), SliceBackend::from(&ks[1])]);
    let proxy = watching_proxy(&server, dir.path()).await;
    proxy.wait_backends(2, T).await.unwrap();
    assert_eq!(metric(&proxy, "kitsune_watch_connected").await, Some(1.0));

    // The operator goes away mid-fetch.
    let mut client = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let copies = client
        .fetch_counting(&cids, 16, T, 16, || server.stop())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.proc.log_tail(30)));
    assert_whole_once(&copies, &cids, "fetch across the cut");
    drop(server);

    // While it is away: the last set is kept, the proxy stays ready, fetches work.
    wait_for("the proxy to notice the cut", T, POLL, || async {
        Ok(metric(&proxy, "kitsune_watch_connected").await == Some(0.0))
    })
    .await
    .unwrap();
    let mut during = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let copies = during
        .fetch_counting(&cids, 16, T, usize::MAX, || {})
        .await
        .unwrap();
    assert_whole_once(&copies, &cids, "fetch while the channel is cut");
    assert_eq!(
        metric(&proxy, "kitsune_bitswap_downstream_peers").await,
        Some(2.0),
        "the last set is kept"
    );
    assert!(
        ready(&proxy).await,
        "still ready while the operator is away"
    );
    assert!(metric(&proxy, "kitsune_watch_reconnects_total").await >= Some(1.0));

    // A restarted operator (lower versions: a new process) with a different set: the
    // proxy reconnects and resets to it.
    let mut server = WatchServer::start(Some(addr), 5, Duration::from_millis(500))
        .await
        .unwrap();
    server.set_backends(&[SliceBackend::from(&ks[1])]);
    proxy.wait_backends(1, T).await.unwrap();
    assert_eq!(metric(&proxy, "kitsune_watch_connected").await, Some(1.0));
    assert_eq!(
        metric(&proxy, "kitsune_watch_snapshot_version").await,
        Some(server.version() as f64)
    );
    assert_eq!(served_by(&proxy, &ks[0]).await, None, "A was dropped");
}

#[tokio::test]
async fn the_proxy_is_not_ready_until_the_first_snapshot() {
    let dir = scratch_dir("watch-ready").unwrap();
    let (ks, cids) = fleet(1, dir.path()).await;
    // The operator is not up yet: reserve its port, then free it for the proxy to fail on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!(
        "http://{addr}{}",
        kitsune_common::watch::watch_path(
            kitsune_e2e::operator::NAMESPACE,
            kitsune_e2e::operator::NAME
        )
    );
    let token = WatchServer::write_token(dir.path()).unwrap();
    let proxy = proxy_with(vec![
        "--backends-url".into(),
        url,
        "--backends-token-file".into(),
        token.display().to_string(),
    ])
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!ready(&proxy).await, "ready before any snapshot");
    assert!(metric(&proxy, "kitsune_watch_reconnects_total").await >= Some(1.0));

    let mut server = WatchServer::start(Some(addr), 100, Duration::from_secs(5))
        .await
        .unwrap();
    server.set_backends(&[SliceBackend::from(&ks[0])]);
    wait_for("ready after the first snapshot", T, POLL, || async {
        Ok(ready(&proxy).await)
    })
    .await
    .unwrap();
    let mut client = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let copies = client
        .fetch_counting(&cids, 16, T, usize::MAX, || {})
        .await
        .unwrap();
    assert_whole_once(&copies, &cids, "fetch after the first snapshot");
}

/// Replaces `path` atomically (write a sibling, rename over), as config tools and
/// Kubernetes ConfigMap volumes do.
fn replace_atomically(path: &Path, backends: &[&KuboNode]) {
    let mut text = String::from("# kubo RPC multiaddrs, one a line\n\n");
    for k in backends {
        text.push_str(&k.api_multiaddr);
        text.push_str("  # a trailing comment\n");
    }
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_backends_file_replaced_by_rename_adds_and_drains_backends() {
    let dir = scratch_dir("watch-file").unwrap();
    let (ks, cids) = fleet(2, dir.path()).await;
    let list = dir.path().join("backends");
    replace_atomically(&list, &[&ks[0]]);
    let proxy = proxy_with(vec!["--backends-file".into(), list.display().to_string()]).await;
    proxy.wait_backends(1, T).await.unwrap();

    replace_atomically(&list, &[&ks[0], &ks[1]]);
    proxy.wait_backends(2, T).await.unwrap();
    let mut client = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    // B was added; A is removed mid-fetch, by another rename.
    let copies = client
        .fetch_counting(&cids, 16, T, 16, || replace_atomically(&list, &[&ks[1]]))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.proc.log_tail(30)));
    assert_whole_once(&copies, &cids, "fetch across the file change");
    proxy.wait_backends(1, T).await.unwrap();
    assert_eq!(served_by(&proxy, &ks[0]).await, None, "A drained");
    assert!(
        served_by(&proxy, &ks[1]).await.unwrap_or(0.0) >= 1.0,
        "B took wants"
    );
}
