//! Goal 3: many concurrent clients, each fetching its own 1 MiB, through one proxy.
//! The load generator speaks bitswap with the project's codec over rust-libp2p: one
//! real swarm (TCP, noise, yamux) per client, all in this process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cid::Cid;
use futures::StreamExt;
use tokio::sync::{Barrier, Semaphore};

use super::{Section, cpu_seconds, mem_mib, p50_p99, settle};
use crate::bitswap_client::BitswapClient;
use crate::{KuboNode, KuboOptions, Proxy, ProxyOptions, random_bytes};

pub struct Config {
    pub clients: usize,
    pub backends: usize,
}

/// Adds `n` distinct 1 MiB files to every backend; returns each file's blocks.
async fn content(backends: &[KuboNode], n: usize) -> anyhow::Result<Vec<Vec<Cid>>> {
    let files: Vec<Vec<Cid>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let data = random_bytes(1 << 20, 50_000 + i as u64);
            let mut root = String::new();
            for k in backends {
                root = k.add_bytes(&data).await?;
            }
            let mut cids = vec![root.parse::<Cid>()?];
            for c in backends[0].refs_recursive(&root).await? {
                cids.push(c.parse()?);
            }
            anyhow::Ok(cids)
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(files)
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let mut backends = Vec::new();
    for _ in 0..cfg.backends {
        backends.push(KuboNode::start(KuboOptions::default()).await?);
    }
    let files = content(&backends, cfg.clients).await?;
    let proxy = Proxy::start(ProxyOptions {
        backends: backends.iter().map(|k| k.api_multiaddr.clone()).collect(),
        release: super::RELEASE,
        // All clients come from 127.0.0.1: lift the per-IP limit for the test only.
        args: vec![
            "--max-connections-per-ip".into(),
            (cfg.clients * 2).to_string(),
        ],
        ..Default::default()
    })
    .await?;
    proxy
        .wait_backends(cfg.backends, Duration::from_secs(30))
        .await?;
    let mut s = Section::new(
        &format!("2. {} concurrent clients", cfg.clients),
        format!(
            "{} kubo backend(s) hold {} distinct 1 MiB files. {} native bitswap clients (one \
             rust-libp2p swarm each: TCP, noise, yamux; all in the load generator's process) \
             connect, wait at a barrier, then each fetches its own file (window 16). The \
             proxy's per-IP connection limit is lifted for the run: every client is 127.0.0.1.",
            cfg.backends, cfg.clients, cfg.clients
        ),
    );
    let addr: libp2p::Multiaddr = proxy.tcp_addr.parse()?;
    let pid = proxy.proc.pid();
    let rss_before = mem_mib(pid, "VmRSS")?;
    let cpu_before = cpu_seconds(pid);
    // Connecting is staggered (the proxy bounds pending handshakes); fetching is not.
    let connecting = Arc::new(Semaphore::new(64));
    let barrier = Arc::new(Barrier::new(cfg.clients + 1));
    let mut tasks = Vec::new();
    for cids in files {
        let (addr, connecting, barrier) = (addr.clone(), connecting.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let client = {
                let _permit = connecting.acquire().await;
                BitswapClient::connect(&addr).await
            };
            barrier.wait().await;
            let mut client = client?;
            let start = Instant::now();
            let (_, stats) = client.fetch(&cids, 16, Duration::from_secs(300)).await?;
            anyhow::Ok((start.elapsed(), stats.latencies, client))
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let (done, failed) = settle(tasks).await?;
    let wall = start.elapsed();
    let cpu = cpu_seconds(pid) - cpu_before;
    let peak = mem_mib(pid, "VmHWM")?;
    let n = cfg.clients;
    s.line(format!(
        "**success {} of {n}** ({:.1}%) in {:.1} s wall",
        done.len(),
        100.0 * done.len() as f64 / n as f64,
        wall.as_secs_f64()
    ));
    if let Some(e) = failed.first() {
        s.line(format!("first failure: {e}"));
    }
    let mut lat: Vec<Duration> = done.iter().flat_map(|d| d.1.iter().copied()).collect();
    let mut per_client: Vec<Duration> = done.iter().map(|d| d.0).collect();
    lat.sort();
    per_client.sort();
    if !lat.is_empty() {
        s.line(format!(
            "time to block (want → block, {} blocks): {}",
            lat.len(),
            p50_p99(&lat)
        ));
        s.line(format!(
            "time to whole 1 MiB per client: {}",
            p50_p99(&per_client)
        ));
    }
    s.line(format!(
        "proxy: {cpu:.2} CPU-seconds for {} MiB; RSS {rss_before:.1} MiB before, **peak {peak:.1} \
         MiB** (goal: all succeed under 256 MiB)",
        done.len()
    ));
    drop(done); // the clients disconnect only now, so all were connected at once
    Ok(s)
}
