//! Goal 7: a soak. Clients fetch without pause for the given time; the proxy's RSS is
//! sampled, and its growth after the warm-up is reported with the curve and the
//! proxy's own counters of what went wrong.

use std::time::{Duration, Instant};

use cid::Cid;

use super::{Section, median, mem_mib, proxy_in_front};
use crate::bitswap_client::BitswapClient;
use crate::{KuboNode, KuboOptions, random_bytes};

pub struct Config {
    pub duration: Duration,
    pub clients: usize,
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let kubo = KuboNode::start(KuboOptions::default()).await?;
    let mut files: Vec<Vec<Cid>> = Vec::new();
    for i in 0..16u64 {
        let root = kubo.add_bytes(&random_bytes(2 << 20, 90_000 + i)).await?;
        let mut cids = vec![root.parse::<Cid>()?];
        for c in kubo.refs_recursive(&root).await? {
            cids.push(c.parse()?);
        }
        files.push(cids);
    }
    let proxy = proxy_in_front(&kubo).await?;
    let mut s = Section::new(
        "7. Soak",
        format!(
            "{} clients fetch 2 MiB files from one kubo through the proxy without pause for \
             {} min, each reconnecting every 20 fetches (connections churn too). The proxy's \
             RSS is sampled every 10 s; growth is the median of the last fifth of the run over \
             the median of the second (the first is the warm-up).",
            cfg.clients,
            cfg.duration.as_secs() / 60
        ),
    );
    let addr: libp2p::Multiaddr = proxy.tcp_addr.parse()?;
    let end = Instant::now() + cfg.duration;
    let mut workers = Vec::new();
    for w in 0..cfg.clients {
        let (addr, files) = (addr.clone(), files.clone());
        workers.push(tokio::spawn(async move {
            let (mut fetched, mut failed) = (0u64, 0u64);
            let mut first_error = None;
            let mut i = w;
            while Instant::now() < end {
                let mut c = match BitswapClient::connect(&addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(format!("connect: {e:#}"));
                        continue;
                    }
                };
                for _ in 0..20 {
                    i = (i + 7) % files.len();
                    match c.fetch(&files[i], 16, Duration::from_secs(60)).await {
                        Ok(_) => fetched += 1,
                        Err(e) => {
                            failed += 1;
                            first_error.get_or_insert(format!("fetch: {e:#}"));
                        }
                    }
                }
            }
            (fetched, failed, first_error)
        }));
    }
    let pid = proxy.proc.pid();
    let mut samples = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(10).min(cfg.duration / 10)).await;
        let rss = mem_mib(pid, "VmRSS")?;
        samples.push(rss);
        // Progress for a long run; the report has the curve.
        eprintln!("soak: RSS {rss:.1} MiB");
    }
    let (mut fetched, mut failed, mut first_error) = (0, 0, None);
    for w in workers {
        let (f, e, first) = w.await?;
        fetched += f;
        failed += e;
        first_error = first_error.or(first);
    }
    // One sample swings by a few MiB with the blocks in flight; compare medians of
    // fifths of the run: the one after the warm-up (the first fifth) and the last.
    let fifth = |i: usize| {
        let n = samples.len();
        median(samples[n * i / 5..(n * (i + 1) / 5).max(n * i / 5 + 1)].to_vec())
    };
    anyhow::ensure!(samples.len() >= 5, "too short a soak to measure");
    let (warm, end_rss) = (fifth(1), fifth(4));
    let max = samples.iter().copied().fold(0.0, f64::max);
    s.line(format!(
        "{fetched} fetches of 2 MiB ({failed} failed); RSS (median of a fifth of the run) after \
         warm-up {warm:.1} MiB, at the end {end_rss:.1} MiB, max sample {max:.1} MiB: **growth \
         {:+.1}%** (goal < 5%)",
        (end_rss - warm) / warm * 100.0
    ));
    // The curve, in tenths of the run: a leak climbs to the end, allocator retention
    // levels off.
    let curve: Vec<String> = (1..=10)
        .filter_map(|i| samples.get((samples.len() * i / 10).saturating_sub(1)))
        .map(|r| format!("{r:.1}"))
        .collect();
    s.line(format!(
        "RSS at each tenth of the run (MiB): {}",
        curve.join(", ")
    ));
    // What the proxy saw: a failed fetch is a DONT_HAVE it passed on; these say why.
    let mut counters = Vec::new();
    for name in [
        "kitsune_bitswap_failovers_total",
        "kitsune_bitswap_want_timeouts_total",
        "kitsune_bitswap_want_refreshes_total",
        "kitsune_bitswap_presences_sent_total{reason=\"dont_have\"}",
    ] {
        counters.push(proxy.metric(name).await?.unwrap_or(0.0));
    }
    s.line(format!(
        "proxy counters: failovers {}, of them want timeouts {}; wants asked again {}; \
         DONT_HAVE sent to clients {}",
        counters[0], counters[1], counters[2], counters[3]
    ));
    if let Some(e) = first_error {
        s.line(format!("first failure: {e}"));
    }
    Ok(s)
}
