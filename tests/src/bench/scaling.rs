//! Goal 4: aggregate throughput with 1, 2 and 4 backends, each throttled alike.
//!
//! Each kubo is reached through a relay on its own loopback address (127.0.0.1x) that
//! passes the RPC untouched and paces the swarm connection's kubo → proxy bytes with a
//! token bucket. The proxy is given the relay's address; kubo's `/api/v0/id` reports
//! 127.0.0.1, so the proxy dials kubo's swarm port on the relay's host, as it would a
//! pod IP. What is measured is the proxy spreading load, not kubo's own speed.

use std::time::{Duration, Instant};

use cid::Cid;

use super::Section;
use crate::bitswap_client::BitswapClient;
use crate::relay::paced_relay;
use crate::{KuboNode, KuboOptions, Proxy, ProxyOptions, random_bytes};

pub struct Config {
    /// Each backend's pace, MiB/s.
    pub rate_mib: f64,
    /// Distinct files fetched at once, 1 MiB each round.
    pub clients: usize,
    /// MiB each client fetches per measurement.
    pub mib_per_client: usize,
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let mut s = Section::new(
        "3. Backend scaling",
        format!(
            "N kubo backends each paced to {:.0} MiB/s (kubo → proxy) by a relay on its own \
             loopback address; every backend holds all content. {} native clients fetch \
             distinct files at once, {} MiB each, 8 wants outstanding each; aggregate throughput is total bytes over \
             wall time. A fresh proxy per N (rendezvous hashing with bounded loads, the default).",
            cfg.rate_mib, cfg.clients, cfg.mib_per_client
        ),
    );
    let mut kubos = Vec::new();
    for _ in 0..4 {
        kubos.push(KuboNode::start(KuboOptions::default()).await?);
    }
    // Content: one file of `mib_per_client` MiB per client, on every backend.
    let mut files: Vec<Vec<Cid>> = Vec::new();
    for i in 0..cfg.clients {
        let data = random_bytes(cfg.mib_per_client << 20, 70_000 + i as u64);
        let mut root = String::new();
        for k in &kubos {
            root = k.add_bytes(&data).await?;
        }
        let mut cids = vec![root.parse::<Cid>()?];
        for c in kubos[0].refs_recursive(&root).await? {
            cids.push(c.parse()?);
        }
        files.push(cids);
    }
    let rate = cfg.rate_mib * (1 << 20) as f64;
    let mut relays = Vec::new();
    let mut via = Vec::new();
    for (i, k) in kubos.iter().enumerate() {
        let host = 20 + i as u8;
        relays.extend(paced_relay(host, &[(k.api_port, false), (k.swarm_port, true)], rate).await?);
        via.push(format!("/ip4/127.0.0.{host}/tcp/{}", k.api_port));
    }
    let mut base = None;
    for n in [1usize, 2, 4] {
        let proxy = Proxy::start(ProxyOptions {
            backends: via[..n].to_vec(),
            release: super::RELEASE,
            // Paced backends are slow by design: no want should time out and move.
            args: vec!["--want-timeout".into(), "60s".into()],
            ..Default::default()
        })
        .await?;
        proxy.wait_backends(n, Duration::from_secs(30)).await?;
        let addr: libp2p::Multiaddr = proxy.tcp_addr.parse()?;
        let start = Instant::now();
        let results = futures::future::join_all(files.iter().map(|cids| {
            let addr = addr.clone();
            async move {
                let mut c = BitswapClient::connect(&addr).await?;
                let (_, stats) = c.fetch(cids, 8, Duration::from_secs(600)).await?;
                anyhow::Ok(stats.bytes)
            }
        }))
        .await;
        let wall = start.elapsed().as_secs_f64();
        let bytes: usize = results
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .sum();
        let mibs = bytes as f64 / (1 << 20) as f64 / wall;
        let base = *base.get_or_insert(mibs);
        // The busiest backend sets the pace: every backend runs at the same rate.
        let per_backend = blocks_per_backend(&proxy.metrics().await?);
        let busiest = per_backend.iter().copied().fold(0.0, f64::max);
        let served: f64 = per_backend.iter().sum();
        s.line(format!(
            "N = {n}: {mibs:.1} MiB/s aggregate, **{:.2}x** N = 1{}; the busiest backend \
             served {:.1}% of the blocks (even: {:.1}%)",
            mibs / base,
            if n == 4 { " (goal >= 3.6x)" } else { "" },
            100.0 * busiest / served.max(1.0),
            100.0 / n as f64,
        ));
    }
    for r in relays {
        r.abort();
    }
    Ok(s)
}

/// Blocks each backend served, from the proxy's `/metrics` text.
fn blocks_per_backend(metrics: &str) -> Vec<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("kitsune_backend_blocks_received_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect()
}
