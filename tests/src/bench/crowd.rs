//! Memory per client: many concurrent clients, idle and then each fetching its own
//! 64 KiB, through one proxy. The proxy's RSS is read with none, with all of them
//! connected and idle, and with all of them connected after their fetch; the
//! differences divided by the clients connected are the memory each costs.
//!
//! The load generator is this process: one rust-libp2p swarm (TCP, noise, yamux) per
//! client, dialing from one of [`SOURCES`] loopback addresses, as a crowd of hosts would.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{Barrier, Semaphore};

use super::{Section, cpu_seconds, mem_mib, p50_p99, settle};
use crate::bitswap_client::BitswapClient;
use crate::{KuboNode, KuboOptions, Proxy, ProxyOptions};

pub struct Config {
    pub clients: usize,
}

/// Bytes each client fetches: one block.
const FILE_BYTES: usize = 64 * 1024;
/// Source addresses the clients dial from, 127.0.1.1 onwards.
const SOURCES: usize = 64;
/// Dials in flight at once (the proxy bounds pending handshakes at 256).
const DIALING: usize = 64;
/// How long the proxy is left alone before each RSS reading: identify exchanges and
/// stream closes finish, tasks end.
const SETTLE: Duration = Duration::from_secs(3);

fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % SOURCES) as u8))
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let n = cfg.clients;
    let kubo = KuboNode::start(KuboOptions::default()).await?;
    let started = Instant::now();
    let cids = super::add_single_blocks(&[&kubo], n, FILE_BYTES, 70_000).await?;
    let adding = started.elapsed();
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![kubo.api_multiaddr.clone()],
        release: super::RELEASE,
        args: [
            // The clients share SOURCES addresses: lift the per-address limit, and the
            // total one past them.
            "--max-connections-per-ip",
            &n.to_string(),
            "--max-connections",
            &(n + 64).to_string(),
            // Idle clients are the point: none may be closed while they are counted.
            "--idle-timeout",
            "30m",
            // No block cache: what grows is the clients' cost, not cached blocks.
            "--block-cache-bytes",
            "0",
            // All wants arrive at once by design; shedding would answer the tail of
            // that queue DONT_HAVE, and every client is to fetch here.
            "--shed-after",
            "0",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await?;
    proxy.wait_backends(1, Duration::from_secs(30)).await?;
    let mut s = Section::new(
        &format!("Memory per client: {n} concurrent clients"),
        format!(
            "{} build. One kubo 0.22 backend holds {n} distinct 64 KiB files (one block each; \
             added in {:.0} s). {n} native bitswap clients (one rust-libp2p swarm each: TCP, \
             noise, yamux; all in the load generator's process, dialing from {SOURCES} \
             loopback addresses, {DIALING} dials at a time) connect and stay idle; then, at a \
             barrier, each fetches its own file. The proxy runs with the per-address \
             connection limit lifted, a 30 min idle timeout, no block cache and no load \
             shedding (all the wants come at once, on purpose). Its VmRSS \
             from /proc is read {} s after each phase: before any client, with all connected \
             and idle (identify done, no bitswap stream), and with all still connected after \
             their fetch (a bitswap stream open each way); each difference over the clients \
             connected is the memory per client. Peak is VmHWM over the whole run.",
            super::build_profile(),
            adding.as_secs_f64(),
            SETTLE.as_secs()
        ),
    );
    let addr: libp2p::Multiaddr = proxy.tcp_addr.parse()?;
    let pid = proxy.proc.pid();
    tokio::time::sleep(SETTLE).await;
    let rss_before = mem_mib(pid, "VmRSS")?;
    let cpu_before = cpu_seconds(pid);

    let dialing = Arc::new(Semaphore::new(DIALING));
    let barrier = Arc::new(Barrier::new(n + 1));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, cid) in cids.into_iter().enumerate() {
        let (addr, dialing, barrier, ready) = (
            addr.clone(),
            dialing.clone(),
            barrier.clone(),
            ready_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = {
                let _permit = dialing.acquire().await;
                BitswapClient::connect_from(&addr, source(i)).await
            };
            let _ = ready.send(client.is_ok());
            // Every task reaches the barrier, connected or not, so none waits forever.
            barrier.wait().await;
            let mut client = client.context("connecting")?;
            let start = Instant::now();
            let (_, stats) = client.fetch(&[cid], 1, Duration::from_secs(300)).await?;
            anyhow::Ok((start.elapsed(), stats.latencies, client))
        }));
    }
    drop(ready_tx);
    let mut connected = 0;
    for _ in 0..n {
        connected += usize::from(ready_rx.recv().await.context("a client task ended")?);
    }
    let connecting = started.elapsed();
    let cpu_connect = cpu_seconds(pid) - cpu_before;
    tokio::time::sleep(SETTLE).await;
    let rss_idle = mem_mib(pid, "VmRSS")?;
    let own_idle = mem_mib(std::process::id(), "VmRSS")?;

    let cpu_fetch_before = cpu_seconds(pid);
    barrier.wait().await;
    let start = Instant::now();
    let (done, failed) = settle(tasks).await?;
    let wall = start.elapsed();
    let cpu_fetch = cpu_seconds(pid) - cpu_fetch_before;
    let still = done.iter().filter(|d| d.2.is_connected()).count();
    tokio::time::sleep(SETTLE).await;
    let rss_after = mem_mib(pid, "VmRSS")?;
    let peak = mem_mib(pid, "VmHWM")?;

    let kib_each = |rss: f64, clients: usize| (rss - rss_before) * 1024.0 / clients.max(1) as f64;
    s.line(format!(
        "connected {connected} of {n} in {:.1} s (proxy {cpu_connect:.2} CPU-seconds, {:.2} ms \
         per connection)",
        connecting.as_secs_f64(),
        cpu_connect * 1e3 / connected.max(1) as f64
    ));
    s.line(format!(
        "**success {} of {n}** ({:.1}%) fetching 64 KiB each in {:.1} s wall (proxy {:.2} \
         CPU-seconds)",
        done.len(),
        100.0 * done.len() as f64 / n as f64,
        wall.as_secs_f64(),
        cpu_fetch
    ));
    if let Some(e) = failed.first() {
        s.line(format!("first failure ({} in all): {e:#}", failed.len()));
    }
    let mut lat: Vec<Duration> = done.iter().flat_map(|d| d.1.iter().copied()).collect();
    lat.sort();
    if !lat.is_empty() {
        s.line(format!(
            "time to block, all {} wanted at once: {}",
            lat.len(),
            p50_p99(&lat)
        ));
    }
    s.line(format!(
        "proxy RSS: {rss_before:.1} MiB before, {rss_idle:.1} MiB with {connected} idle \
         clients, {rss_after:.1} MiB with {still} clients connected after their fetch; **peak \
         {peak:.1} MiB** (goal <= 512 MiB)"
    ));
    s.line(format!(
        "**memory per idle connection {:.1} KiB**; per client connected after a fetch {:.1} \
         KiB (goal: a few tens of KiB)",
        kib_each(rss_idle, connected),
        kib_each(rss_after, still)
    ));
    s.line(format!(
        "the load generator (this process, {connected} client swarms): RSS {own_idle:.0} MiB \
         with all idle"
    ));
    drop(done); // the clients disconnect only now, so all were connected at once
    Ok(s)
}
