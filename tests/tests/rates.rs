//! Per-address byte rates against the real `kitsune-proxy` binary in front of a real
//! kubo: a client over `--bytes-per-second-per-address` is slowed to it (not
//! refused), while a client of another address, fetching at the same time, is not;
//! over bitswap and over the HTTP gateway.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use kitsune_e2e::bitswap_client::BitswapClient;
use kitsune_e2e::{KuboNode, KuboOptions, Proxy, ProxyOptions, scratch_dir, write_random_file};
use libp2p::Multiaddr;

const MIB: usize = 1 << 20;
/// A failure guard only: every wait below ends as soon as its condition holds.
const T: Duration = Duration::from_secs(120);
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test]
async fn a_client_over_its_byte_rate_is_slowed_to_it_and_another_address_is_not() {
    const RATE: usize = 2 * MIB;
    /// The bucket holds one second's worth (docs/configuration.md).
    const BURST: usize = RATE;
    let dir = scratch_dir("byte-rate").unwrap();
    let heavy_file = write_random_file(dir.path(), "heavy.bin", 8 * MIB, 47).unwrap();
    // Within the burst: the other address never runs short of its own budget.
    let other_file = write_random_file(dir.path(), "other.bin", MIB, 48).unwrap();
    let kubo = KuboNode::start(KuboOptions {
        add: vec![heavy_file, other_file],
        ..Default::default()
    })
    .await
    .expect("kubo starts");
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![kubo.api_multiaddr.clone()],
        args: vec!["--bytes-per-second-per-address".into(), RATE.to_string()],
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    proxy.wait_backends(1, T).await.unwrap();
    let addr: Multiaddr = proxy.tcp_addr.parse().unwrap();
    let heavy_cids = kubo.dag_cids(&kubo.added["heavy.bin"]).await.unwrap();
    let other_cids = kubo.dag_cids(&kubo.added["other.bin"]).await.unwrap();
    let metric = |name: &'static str| {
        let proxy = &proxy;
        async move { proxy.metric(name).await.unwrap().unwrap_or(0.0) }
    };

    // 127.0.0.1 wants all of 8 MiB at once (unlimited, that takes well under a
    // second here).
    let mut heavy = BitswapClient::connect(&addr).await.unwrap();
    let heavy_fetch =
        tokio::spawn(async move { heavy.fetch(&heavy_cids, heavy_cids.len(), T).await });
    kitsune_e2e::wait_for(
        "the heavy client's wants to wait for its bytes budget",
        T,
        Duration::from_millis(10),
        || async { Ok(metric("kitsune_bitswap_wants_delayed_bytes_total").await >= 1.0) },
    )
    .await
    .unwrap();
    // Meanwhile 127.0.0.2 wants all of 1 MiB at once: none of its wants waits, and
    // it is done while the heavy client still waits, in well under its time.
    let delayed = metric("kitsune_bitswap_wants_delayed_bytes_total").await;
    let mut other = BitswapClient::connect_from(&addr, OTHER).await.unwrap();
    let (blocks, other_stats) = other
        .fetch(&other_cids, other_cids.len(), T)
        .await
        .expect("the other address is served");
    assert_eq!(blocks.len(), other_cids.len());
    assert_eq!(
        metric("kitsune_bitswap_wants_delayed_bytes_total").await,
        delayed,
        "none of the other address's wants waited"
    );
    assert!(
        !heavy_fetch.is_finished(),
        "the other address was served while the heavy one waited"
    );
    // The heavy client is slowed, not refused: it gets every block, no sooner than
    // its budget allows: beyond the burst, at the rate. (Each want reserves its
    // block's likely size, so the proxy is ahead by at most a block or so; the 0.8
    // leaves room for that and for the wants' first and last round trips.)
    let (blocks, heavy_stats) = heavy_fetch
        .await
        .unwrap()
        .expect("the heavy client is served");
    assert_eq!(blocks.len(), heavy_stats.blocks);
    let floor = 0.8 * (heavy_stats.bytes - BURST) as f64 / RATE as f64;
    assert!(
        heavy_stats.elapsed.as_secs_f64() >= floor,
        "{} bytes in {:?}: faster than {RATE} bytes a second allows ({floor:.2} s)",
        heavy_stats.bytes,
        heavy_stats.elapsed
    );
    assert!(
        other_stats.elapsed * 2 <= heavy_stats.elapsed,
        "the other address took {:?}, the limited one {:?}",
        other_stats.elapsed,
        heavy_stats.elapsed
    );
    assert_eq!(metric("kitsune_bitswap_wants_delayed_total").await, 0.0);
    assert_eq!(
        metric("kitsune_bitswap_presences_sent_total{reason=\"dont_have\"}").await,
        0.0
    );
    kitsune_e2e::wait_for("no want waiting", T, Duration::from_millis(50), || async {
        Ok(metric("kitsune_bitswap_wants_waiting").await == 0.0)
    })
    .await
    .unwrap();
}

/// The same flag paces the HTTP gateway's responses per address: a CAR of 8 MiB to
/// one address comes at the rate, while another address's block comes at once.
#[tokio::test]
async fn a_gateway_client_over_its_byte_rate_is_slowed_to_it_and_another_address_is_not() {
    const RATE: usize = 2 * MIB;
    const BURST: usize = RATE;
    let dir = scratch_dir("byte-rate-gateway").unwrap();
    let heavy_file = write_random_file(dir.path(), "heavy.bin", 8 * MIB, 49).unwrap();
    let other_file = write_random_file(dir.path(), "other.bin", MIB, 50).unwrap();
    let kubo = KuboNode::start(KuboOptions {
        add: vec![heavy_file, other_file],
        ..Default::default()
    })
    .await
    .expect("kubo starts");
    let port = kitsune_e2e::free_port();
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![kubo.api_multiaddr.clone()],
        args: vec![
            "--http-port".into(),
            port.to_string(),
            "--gateway".into(),
            "--bytes-per-second-per-address".into(),
            RATE.to_string(),
        ],
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    proxy.wait_backends(1, T).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client_from = |ip: IpAddr| {
        reqwest::Client::builder()
            .timeout(T)
            .local_address(ip)
            .build()
            .unwrap()
    };

    // 127.0.0.1 asks for the whole file as a CAR.
    let car_url = format!("{base}/ipfs/{}?format=car", kubo.added["heavy.bin"]);
    let heavy = client_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (under_way_tx, under_way) = tokio::sync::oneshot::channel();
    let heavy_get = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut r = heavy.get(car_url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut len = 0;
        let mut under_way_tx = Some(under_way_tx);
        while let Some(chunk) = r.chunk().await.unwrap() {
            len += chunk.len();
            if len > BURST
                && let Some(tx) = under_way_tx.take()
            {
                let _ = tx.send(());
            }
        }
        (len, started.elapsed())
    });
    // Once it is past its burst, 127.0.0.2 asks for a block of its own file (the
    // root, within its own burst) and gets it while the CAR is still coming.
    under_way.await.unwrap();
    let other = client_from(OTHER);
    let started = std::time::Instant::now();
    let raw_url = format!("{base}/ipfs/{}?format=raw", kubo.added["other.bin"]);
    let r = other.get(raw_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.bytes().await.unwrap().is_empty());
    let other_elapsed = started.elapsed();
    assert!(
        !heavy_get.is_finished(),
        "the other address was served while the CAR was still coming"
    );
    let (car_len, heavy_elapsed) = heavy_get.await.unwrap();
    assert!(car_len > 8 * MIB, "the whole DAG");
    let floor = 0.8 * (car_len - BURST) as f64 / RATE as f64;
    assert!(
        heavy_elapsed.as_secs_f64() >= floor,
        "a CAR of {car_len} bytes in {heavy_elapsed:?}: faster than {RATE} bytes a second allows ({floor:.2} s)"
    );
    assert!(
        other_elapsed * 2 <= heavy_elapsed,
        "the other address took {other_elapsed:?}, the limited one {heavy_elapsed:?}"
    );
}
