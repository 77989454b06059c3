//! HTTP retrieval through the proxy's trustless gateway, beside bitswap through the
//! proxy and bitswap straight from kubo, in one run: throughput and the proxy's CPU
//! per GiB. Goal: HTTP through the proxy at least as fast as bitswap through it.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use cid::Cid;
use futures::{StreamExt, TryStreamExt};
use kitsune_proxy::gateway::car::{Follow, children};

use super::{RELEASE, Section, cpu_seconds, median};
use crate::bitswap_client::BitswapClient;
use crate::{KuboNode, KuboOptions, Proxy, ProxyOptions, free_port, scratch_dir};

pub struct Config {
    pub size_mib: usize,
    pub runs: usize,
    /// Raw-block GETs in flight at once (a trustless-gateway client's parallelism).
    pub parallel: usize,
    /// Bitswap wants in flight at once.
    pub window: usize,
}

/// One way of fetching the file: its throughputs (MiB/s) and the proxy's CPU seconds
/// and GiB moved over all runs.
#[derive(Default)]
struct Way {
    mibs: Vec<f64>,
    proxy_cpu: f64,
    gib: f64,
}

impl Way {
    fn cpu_per_gib(&self) -> f64 {
        self.proxy_cpu / self.gib.max(1e-9)
    }
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let size = cfg.size_mib << 20;
    let dir = scratch_dir("bench-http")?;
    let file = crate::write_random_file(dir.path(), "http.bin", size, 64)?;
    let kubo = KuboNode::start(KuboOptions {
        add: vec![file],
        ..Default::default()
    })
    .await?;
    let port = free_port();
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![kubo.api_multiaddr.clone()],
        release: RELEASE,
        args: vec![
            "--http-port".into(),
            port.to_string(),
            "--preload-bind".into(),
            "127.0.0.1".into(),
            "--gateway".into(),
            // Every way fetches from kubo: with the block cache on, each run after the
            // first would be served from the proxy's memory.
            "--block-cache-bytes".into(),
            "0".into(),
        ],
        ..Default::default()
    })
    .await?;
    proxy.wait_backends(1, Duration::from_secs(30)).await?;
    let root = kubo.added["http.bin"].clone();
    let cids = kubo.dag_cids(&root).await?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let mut s = Section::new(
        "HTTP retrieval through the gateway",
        format!(
            "One kubo 0.22 backend holding a {} MiB file ({} blocks of up to 256 KiB), the \
             proxy with `--http-port --gateway --block-cache-bytes 0` in front (every block from kubo). Each run fetches the whole file \
             four ways, in turn: bitswap straight from kubo and through the proxy (the \
             project's rust-libp2p client, window {}, a fresh connection), HTTP raw blocks \
             through the proxy (`GET /ipfs/{{cid}}?format=raw`, {} in flight, walking the \
             DAG as a trustless-gateway client does, plain HTTP/1.1 with keep-alive), and one \
             CAR (`?format=car&dag-scope=all`). {} runs, median; the proxy's CPU time from \
             /proc. {} build.",
            cfg.size_mib,
            cids.len(),
            cfg.window,
            cfg.parallel,
            cfg.runs,
            super::build_profile()
        ),
    );
    let pid = proxy.proc.pid();
    let timeout = Duration::from_secs(300);
    let mut ways: [Way; 4] = Default::default();
    for _ in 0..cfg.runs {
        for (i, way) in ways.iter_mut().enumerate() {
            let before = cpu_seconds(pid);
            let t = Instant::now();
            let bytes = match i {
                0 | 1 => {
                    let to = if i == 0 {
                        &kubo.tcp_addr
                    } else {
                        &proxy.tcp_addr
                    };
                    let mut c = BitswapClient::connect(&to.parse()?).await?;
                    let (_, stats) = c.fetch(&cids, cfg.window, timeout).await.context("fetch")?;
                    stats.bytes
                }
                2 => raw_walk(&http, &base, &cids[0], cfg.parallel).await?,
                _ => car(&http, &base, &cids[0]).await?,
            };
            let secs = t.elapsed().as_secs_f64();
            way.proxy_cpu += cpu_seconds(pid) - before;
            way.gib += bytes as f64 / (1u64 << 30) as f64;
            way.mibs.push(bytes as f64 / (1 << 20) as f64 / secs);
        }
    }
    let names = [
        "bitswap direct from kubo",
        "bitswap through Kitsune",
        &format!(
            "HTTP raw blocks through Kitsune ({} in flight)",
            cfg.parallel
        ),
        "HTTP CAR through Kitsune",
    ];
    let medians: Vec<f64> = ways.iter().map(|w| median(w.mibs.clone())).collect();
    for (i, name) in names.iter().enumerate() {
        let cpu = if i == 0 {
            "the proxy idle".to_string()
        } else {
            format!("proxy {:.2} CPU-s/GiB", ways[i].cpu_per_gib())
        };
        s.line(format!("{name}: {:.1} MiB/s, {cpu}", medians[i]));
    }
    // The machine is shared: the figures move with what else runs.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    s.line(format!(
        "load average at the end (1, 5, 15 min): {}",
        load.join(", ")
    ));
    for (i, what) in [(2, "raw blocks"), (3, "CAR")] {
        s.line(format!(
            "HTTP {what} / bitswap through Kitsune: throughput **{:.2}** (goal >= 1), proxy \
             CPU per GiB **{:.2}**",
            medians[i] / medians[1],
            ways[i].cpu_per_gib() / ways[1].cpu_per_gib()
        ));
    }
    Ok(s)
}

/// Fetches the DAG under `root` block by block over HTTP, `parallel` GETs in flight,
/// each verified against its CID; the bytes fetched.
async fn raw_walk(
    http: &reqwest::Client,
    base: &str,
    root: &Cid,
    parallel: usize,
) -> anyhow::Result<usize> {
    let mut level = vec![*root];
    let mut bytes = 0;
    // Level by level: a block's links are known once it has arrived.
    while !level.is_empty() {
        let got: Vec<(Cid, bytes::Bytes)> = futures::stream::iter(level)
            .map(|cid| async move {
                let r = http
                    .get(format!("{base}/ipfs/{cid}?format=raw"))
                    .send()
                    .await?
                    .error_for_status()?;
                anyhow::Ok((cid, r.bytes().await?))
            })
            .buffer_unordered(parallel)
            .try_collect()
            .await?;
        let mut next = Vec::new();
        for (cid, data) in got {
            ensure!(verified(&cid, &data), "{cid} does not hash to its CID");
            bytes += data.len();
            next.extend(
                children(Follow::All, &cid, &data)?
                    .into_iter()
                    .map(|(c, _)| c),
            );
        }
        level = next;
    }
    Ok(bytes)
}

/// One CAR of the whole DAG: its length.
async fn car(http: &reqwest::Client, base: &str, root: &Cid) -> anyhow::Result<usize> {
    let r = http
        .get(format!("{base}/ipfs/{root}?format=car&dag-scope=all"))
        .send()
        .await?
        .error_for_status()?;
    let mut body = r.bytes_stream();
    let mut n = 0;
    while let Some(chunk) = body.next().await {
        n += chunk?.len();
    }
    Ok(n)
}

fn verified(cid: &Cid, data: &[u8]) -> bool {
    use multihash_codetable::{Code, MultihashDigest};
    Code::try_from(cid.hash().code())
        .is_ok_and(|code| code.digest(data).digest() == cid.hash().digest())
}
