//! Fair scheduling end to end: one slow backend (a real kubo behind a paced relay),
//! a heavy client and a light client through the real `kitsune-proxy` binary.

use std::time::{Duration, Instant};

use kitsune_e2e::bitswap_client::BitswapClient;
use kitsune_e2e::relay::{paced_relay, proxy_behind_relay};
use kitsune_e2e::{KuboNode, Proxy, random_bytes};

const MIB: usize = 1 << 20;
/// The slow backend's pace (kubo → proxy), bytes a second.
const PACE: f64 = 4.0 * MIB as f64;
/// How much longer the light client's fetch may take beside the heavy one than alone.
/// Served in turn by bytes, it shares the link about evenly: twice its time alone,
/// plus what kubo had already sent of the heavy client's blocks when it came.
const FACTOR: f64 = 4.0;

/// The light client (2 MiB, 10 wants at most) fetches alone, then while a heavy client
/// has all 129 blocks of 32 MiB wanted at once at the same slow backend. Oldest first,
/// the light client would wait for most of the heavy client's 32 MiB (8 s at this
/// pace, 16 times its time alone); in turn, it stays within [`FACTOR`] of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_client_beside_a_heavy_one_on_a_slow_backend() {
    let kubo = KuboNode::start(Default::default())
        .await
        .expect("kubo starts");
    let heavy_root = kubo.add_bytes(&random_bytes(32 * MIB, 501)).await.unwrap();
    let light_root = kubo.add_bytes(&random_bytes(2 * MIB, 502)).await.unwrap();
    let heavy_cids = kubo.dag_cids(&heavy_root).await.unwrap();
    let light_cids = kubo.dag_cids(&light_root).await.unwrap();
    assert_eq!((heavy_cids.len(), light_cids.len()), (129, 9));

    // The relay's own loopback address stands for the backend's.
    let host = 41;
    let relays = paced_relay(
        host,
        &[(kubo.api_port, false), (kubo.swarm_port, true)],
        PACE,
    )
    .await
    .expect("relay binds");
    let proxy = Proxy::start(proxy_behind_relay(host, kubo.api_port, &[]))
        .await
        .expect("proxy starts");
    proxy
        .wait_backends(1, Duration::from_secs(30))
        .await
        .unwrap();
    let addr: libp2p::Multiaddr = proxy.tcp_addr.parse().unwrap();

    let light_fetch = || {
        let (addr, cids) = (addr.clone(), light_cids.clone());
        async move {
            let mut c = BitswapClient::connect(&addr).await.unwrap();
            let t = Instant::now();
            let (blocks, _) = c
                .fetch(&cids, 10, Duration::from_secs(120))
                .await
                .expect("the light client's fetch completes");
            assert_eq!(blocks.len(), cids.len());
            t.elapsed()
        }
    };
    let alone = light_fetch().await;

    let heavy = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut c = BitswapClient::connect(&addr).await.unwrap();
            let (blocks, _) = c.fetch(&heavy_cids, 256, Duration::from_secs(120)).await?;
            anyhow::Ok(blocks.len())
        }
    });
    // The heavy fetch is under way (its wants are at the backend, blocks flow).
    let before = proxy
        .metric("kitsune_bitswap_blocks_forwarded_total{direction=\"Upstream\"}")
        .await
        .unwrap()
        .unwrap_or(0.0);
    proxy
        .wait_blocks_sent(before + 4.0, Duration::from_secs(60))
        .await
        .unwrap();
    let beside = light_fetch().await;
    let heavy_blocks = heavy.await.unwrap().expect("the heavy fetch completes");
    assert_eq!(heavy_blocks, 129);
    for r in relays {
        r.abort();
    }
    eprintln!("light client: alone {alone:?}, beside the heavy one {beside:?}");
    assert!(
        beside.as_secs_f64() <= FACTOR * alone.as_secs_f64(),
        "the light client took {beside:?} beside the heavy one, {alone:?} alone \
         (more than {FACTOR}x)"
    );
}
