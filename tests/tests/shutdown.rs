//! Stopping the real `kitsune-proxy` binary: SIGTERM (what Kubernetes sends) or ctrl-c
//! cancels its shutdown token, its tasks stop, and it exits 0. Its logs on stderr hold
//! no colour codes, since stderr is a file here.

use std::time::Duration;

use kitsune_e2e::bitswap_client::BitswapClient;
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

const MIB: usize = 1 << 20;

/// The proxy, signalled earlier, drains and exits 0, saying so.
async fn exits_0_once_drained(proxy: &mut Proxy) {
    let status = proxy
        .proc
        .wait_timeout(STOP)
        .await
        .unwrap_or_else(|| panic!("no exit after the drain\n{}", proxy.proc.log_tail(30)));
    assert_eq!(status.code(), Some(0), "{}", proxy.proc.log_tail(30));
    let err = proxy.proc.stderr();
    assert!(err.contains("draining"), "{err}");
    assert!(err.contains("drained"), "{err}");
}

/// A kubo holding a 64 MiB file `big.bin` of seed `seed`, and a proxy in front of it.
async fn kubo_of_64_mib_behind_a_proxy(seed: u64) -> (KuboNode, Proxy) {
    let kubo =
        KuboNode::with_random_files(&[("big.bin", 64 * MIB, seed)], KuboOptions::default()).await;
    let proxy = Proxy::in_front_of(&[&kubo], &[], T).await;
    (kubo, proxy)
}

/// A rollout's SIGTERM while a client is mid-transfer: the proxy stops taking
/// connections and fails `/readyz` at once, finishes the transfer it has, then exits 0.
#[tokio::test]
async fn sigterm_mid_transfer_drains_the_fetch_then_exits() {
    let (kubo, mut proxy) = kubo_of_64_mib_behind_a_proxy(20).await;
    let cids = kubo.dag_cids(&kubo.added["big.bin"]).await.unwrap();

    let addr: libp2p::Multiaddr = proxy.tcp_addr.parse().unwrap();
    let wanted = cids.clone();
    let fetch = tokio::spawn(async move {
        let mut c = BitswapClient::connect(&addr).await.unwrap();
        // A small window keeps the transfer going well past the signal.
        c.fetch(&wanted, 4, T).await
    });
    proxy.wait_blocks_sent(10.0, T).await.unwrap();
    proxy.proc.signal(libc::SIGTERM).unwrap();

    let readyz = format!("{}/readyz", proxy.metrics_url);
    kitsune_e2e::wait_for("/readyz to fail", T, Duration::from_millis(10), || async {
        let r = reqwest::get(&readyz).await?;
        Ok(r.status().as_u16() == 503 && r.text().await?.contains("draining"))
    })
    .await
    .unwrap();
    let port: u16 = proxy
        .tcp_addr
        .split('/')
        .nth(4)
        .and_then(|p| p.parse().ok())
        .expect("/ip4/127.0.0.1/tcp/P/p2p/ID");
    kitsune_e2e::wait_for(
        "the listener to close",
        T,
        Duration::from_millis(10),
        || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err())
        },
    )
    .await
    .unwrap();
    assert!(
        proxy.proc.is_running(),
        "still serving the transfer in flight\n{}",
        proxy.proc.log_tail(30)
    );

    // Every block of the DAG, each verified against its CID on arrival: the file.
    let (blocks, stats) = fetch.await.unwrap().expect("the fetch completes");
    assert_eq!(stats.blocks, cids.len());
    assert_eq!(
        blocks.iter().map(|b| b.cid).collect::<Vec<_>>(),
        cids,
        "every block arrived"
    );
    assert!(stats.bytes > 64 * MIB);
    exits_0_once_drained(&mut proxy).await;
}

/// The same with Helia, the client the cluster's rollout step uses: its fetch of a
/// 64 MiB file, under way when the proxy gets SIGTERM, completes byte-identical.
#[tokio::test]
async fn sigterm_mid_helia_fetch_drains_it() {
    let (kubo, mut proxy) = kubo_of_64_mib_behind_a_proxy(21).await;
    let (addr, cid) = (proxy.tcp_addr.clone(), kubo.added["big.bin"].clone());
    let fetch = tokio::spawn(async move { kitsune_e2e::helia_fetch(&addr, &cid, T).await });
    proxy.wait_blocks_sent(10.0, T).await.unwrap();
    proxy.proc.signal(libc::SIGTERM).unwrap();
    let got = fetch
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\nproxy:\n{}", proxy.proc.log_tail(30)));
    assert!(
        got.bytes == kitsune_e2e::random_bytes(64 * MIB, 21),
        "the file differs"
    );
    exits_0_once_drained(&mut proxy).await;
}
