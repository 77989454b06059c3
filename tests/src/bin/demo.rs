//! The main job: two real kubo backends holding the same file, Kitsune in front of
//! them, and a real Helia client fetching the file through it over TCP and WebSocket,
//! next to a direct fetch from one backend.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use kitsune_e2e::{
    KuboNode, KuboOptions, Proxy, ProxyOptions, helia_fetch, random_bytes, scratch_dir,
};

#[derive(Parser)]
#[command(about = "Kitsune demo: real kubo backends, the proxy, a real Helia client")]
struct Args {
    /// Size of the file to fetch, in MiB.
    #[arg(long, default_value_t = 20)]
    size_mib: usize,
    /// Number of kubo backends.
    #[arg(long, default_value_t = 2)]
    backends: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = args.size_mib << 20;
    let dir = scratch_dir("demo")?;
    let file = kitsune_e2e::write_random_file(dir.path(), "demo.bin", size, 42)?;

    println!(
        "Starting {} kubo 0.22 backends, each holding a {} MiB file...",
        args.backends, args.size_mib
    );
    let mut kubos = Vec::new();
    for _ in 0..args.backends {
        kubos.push(
            KuboNode::start(KuboOptions {
                add: vec![file.clone()],
                ..Default::default()
            })
            .await
            .context("starting kubo")?,
        );
    }
    for (i, k) in kubos.iter().enumerate() {
        println!("  kubo-{i}: peer {}  RPC {}", k.peer_id, k.api_multiaddr);
    }
    let cid = kubos[0].added["demo.bin"].clone();

    let proxy = Proxy::start(ProxyOptions {
        backends: kubos.iter().map(|k| k.api_multiaddr.clone()).collect(),
        ws: true,
        release: true,
        ..Default::default()
    })
    .await?;
    proxy
        .wait_backends(kubos.len(), Duration::from_secs(30))
        .await?;
    println!();
    println!("Kitsune is up in {:?}", proxy.startup);
    println!("  Peer ID: {}", proxy.peer_id);
    println!("  TCP:     {}", proxy.tcp_addr);
    println!("  WS:      {}", proxy.ws_addr.as_deref().unwrap_or("-"));
    println!("  metrics: {}/metrics", proxy.metrics_url);
    println!();
    println!("A Helia 7 client fetches {cid} ({} MiB):", args.size_mib);

    let expected = random_bytes(size, 42);
    let timeout = Duration::from_secs(120);
    let runs = [
        ("direct from kubo-0 (TCP)", kubos[0].tcp_addr.clone()),
        ("through Kitsune (TCP)", proxy.tcp_addr.clone()),
        (
            "through Kitsune (WebSocket)",
            proxy.ws_addr.clone().unwrap_or_default(),
        ),
    ];
    let mut failed = false;
    for (label, addr) in runs {
        let got = helia_fetch(&addr, &cid, timeout).await?;
        let same = got.bytes == expected;
        failed |= !same;
        let mibs = got.bytes.len() as f64 / (1 << 20) as f64 / (got.ms.max(1) as f64 / 1000.0);
        println!(
            "  {label:<30} {:>9} bytes in {:>5} ms  {:>7.1} MiB/s  {}",
            got.bytes.len(),
            got.ms,
            mibs,
            if same { "byte-identical" } else { "MISMATCH" }
        );
    }
    let blocks = proxy
        .metric("kitsune_bitswap_blocks_forwarded_total{direction=\"Upstream\"}")
        .await?
        .unwrap_or(0.0);
    let bytes = proxy
        .metric("kitsune_bitswap_bytes_forwarded_total{direction=\"Upstream\"}")
        .await?
        .unwrap_or(0.0);
    println!();
    println!(
        "Kitsune forwarded {blocks} blocks ({:.1} MiB) from {} backends under one peer ID.",
        bytes / (1 << 20) as f64,
        kubos.len()
    );
    if failed {
        bail!("a fetch did not return the file's bytes");
    }
    Ok(())
}
