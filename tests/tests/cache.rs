//! The block cache end to end: real kubo backends, real Helia clients, the real
//! `kitsune-proxy` binary, over loopback.

use std::time::Duration;

use kitsune_e2e::{
    KuboNode, KuboOptions, Proxy, helia_fetch, random_bytes, scratch_dir, write_random_file,
};

const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(90);

/// Blocks received from all backends together, from the per-backend counter.
async fn backend_blocks(p: &Proxy) -> f64 {
    p.metrics()
        .await
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("kitsune_backend_blocks_received_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn metric(p: &Proxy, name: &str) -> f64 {
    p.metric(name).await.unwrap().unwrap_or(0.0)
}

async fn two_backends(len: usize, seed: u64) -> (KuboNode, KuboNode, String) {
    let dir = scratch_dir("cache").unwrap();
    let file = write_random_file(dir.path(), "f.bin", len, seed).unwrap();
    let start = || async {
        KuboNode::start(KuboOptions {
            add: vec![file.clone()],
            ..Default::default()
        })
        .await
        .expect("kubo starts")
    };
    let (k1, k2) = (start().await, start().await);
    let root = k1.added["f.bin"].clone();
    (k1, k2, root)
}

#[tokio::test]
async fn a_file_fetched_twice_is_served_from_the_cache_the_second_time() {
    let (k1, k2, root) = two_backends(4 * MIB, 61).await;
    // The default cache (128 MiB) holds the whole file.
    let p = Proxy::in_front_of(&[&k1, &k2], &[], T).await;
    let first = helia_fetch(&p.tcp_addr, &root, T).await.unwrap();
    assert!(first.ok, "{:?}", first.error);
    assert!(first.bytes == random_bytes(4 * MIB, 61));
    let from_backends = backend_blocks(&p).await;
    // 16 leaves of 256 KiB and their root, at least, came from the backends.
    assert!(
        from_backends >= 17.0,
        "{from_backends} blocks from backends"
    );
    let hits = metric(&p, "kitsune_block_cache_hits_total").await;
    let cached = metric(&p, "kitsune_block_cache_blocks").await;
    assert!(cached >= 17.0, "{cached} blocks cached");

    // Another client (a new Helia, its own identity) fetches the same file.
    let second = helia_fetch(&p.tcp_addr, &root, T).await.unwrap();
    assert!(second.ok, "{:?}", second.error);
    assert!(second.bytes == random_bytes(4 * MIB, 61));
    assert_eq!(
        backend_blocks(&p).await,
        from_backends,
        "no backend was asked for a block the second time"
    );
    let hits_after = metric(&p, "kitsune_block_cache_hits_total").await;
    assert!(
        hits_after >= hits + 17.0,
        "every block was a cache hit: {hits} -> {hits_after}"
    );
}

#[tokio::test]
async fn a_scan_of_distinct_blocks_keeps_the_cache_within_its_bound() {
    // A 1 MiB cache and a 12 MiB file: every block distinct, many times the bound.
    const BOUND: usize = MIB;
    let (k1, k2, root) = two_backends(12 * MIB, 62).await;
    let bound = BOUND.to_string();
    let p = Proxy::in_front_of(&[&k1, &k2], &["--block-cache-bytes", &bound], T).await;
    let got = helia_fetch(&p.tcp_addr, &root, T).await.unwrap();
    assert!(got.ok, "{:?}", got.error);
    assert!(got.bytes == random_bytes(12 * MIB, 62));
    let bytes = metric(&p, "kitsune_block_cache_bytes").await;
    let blocks = metric(&p, "kitsune_block_cache_blocks").await;
    eprintln!("cache after a 12 MiB scan: {bytes} bytes in {blocks} blocks");
    assert!(
        bytes <= BOUND as f64,
        "{bytes} bytes cached over a bound of {BOUND}"
    );
    assert!(blocks >= 1.0, "the cache is on and holds something");
    assert!(
        backend_blocks(&p).await >= 49.0,
        "the 48 leaves and the root came from the backends"
    );
}
