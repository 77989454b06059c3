//! The benchmark suite behind `kitsune-bench`: each module measures one thing against
//! real peers and returns a [`Section`] of figures; the binary prints them and writes
//! `docs/PERFORMANCE.md`. Figures, never pass/fail: goals are printed beside them.

pub mod affinity;
pub mod clients;
pub mod crowd;
pub mod fairness;
pub mod floor;
pub mod footprint;
pub mod http;
pub mod peer;
pub mod propagation;
pub mod report;
pub mod scaling;
pub mod small_blocks;
pub mod soak;
pub mod throughput;
pub mod zipf;

use std::time::Duration;

use anyhow::Context;

use crate::{KuboNode, Proxy, ProxyOptions};

/// One benchmark's results, as Markdown lines (also printed as they come).
#[derive(Debug, Default)]
pub struct Section {
    pub title: String,
    /// How it was measured: the setup, in a sentence or two.
    pub method: String,
    pub lines: Vec<String>,
}

impl Section {
    pub fn new(title: &str, method: impl Into<String>) -> Self {
        let s = Self {
            title: title.into(),
            method: method.into(),
            lines: Vec::new(),
        };
        println!("\n## {}\n{}", s.title, s.method);
        s
    }

    /// Adds (and prints) one result line.
    pub fn line(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("  {text}");
        self.lines.push(text);
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("## {}\n\n{}\n\n", self.title, self.method);
        for l in &self.lines {
            out.push_str(&format!("- {l}\n"));
        }
        out
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Awaits every client task: what succeeded, in order, and the errors of the others.
/// A task that panicked or was cancelled is an error of the bench itself.
pub async fn settle<T>(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<T>>>,
) -> anyhow::Result<(Vec<T>, Vec<anyhow::Error>)> {
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.context("client task")? {
            Ok(r) => done.push(r),
            Err(e) => failed.push(e),
        }
    }
    Ok((done, failed))
}

/// "p50 X ms, p99 Y ms" of sorted samples.
pub fn p50_p99(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99))
    )
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// User plus system CPU seconds a process has used (Linux `/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0 // USER_HZ on Linux
}

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`) in MiB.
pub fn mem_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} for {pid}"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

/// The machine's online CPUs (not this thread's affinity: the throughput benchmark pins
/// threads for a while).
pub fn num_cpus() -> usize {
    // SAFETY: sysconf only reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

/// Benchmarks run the proxy and operator built as they are: a release `kitsune-bench`
/// (`scripts/bench.sh`) measures release binaries; a debug one (the CI smoke run) only
/// shows that every benchmark still runs, and its figures say so.
pub const RELEASE: bool = !cfg!(debug_assertions);

/// Adds `n` single-block files of `len` random bytes (seeds `seed`, `seed + 1`, …) to
/// every kubo in `kubos`, eight at a time; returns their CIDs in order.
pub async fn add_single_blocks(
    kubos: &[&KuboNode],
    n: usize,
    len: usize,
    seed: u64,
) -> anyhow::Result<Vec<cid::Cid>> {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .map(|i| async move {
            let data = crate::random_bytes(len, seed + i as u64);
            let mut root = String::new();
            for k in kubos {
                root = k.add_bytes(&data).await?;
            }
            anyhow::Ok(root.parse::<cid::Cid>()?)
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Want-to-block times of `cids` wanted one at a time over one fresh connection to
/// `to`, sorted; the first CID only warms the streams up and is not counted.
pub async fn one_at_a_time(
    to: &libp2p::Multiaddr,
    cids: &[cid::Cid],
    timeout: std::time::Duration,
) -> anyhow::Result<Vec<std::time::Duration>> {
    let mut client = crate::bitswap_client::BitswapClient::connect(to).await?;
    client.fetch(&cids[..1], 1, timeout).await?;
    let mut samples = Vec::with_capacity(cids.len());
    for cid in &cids[1..] {
        let (_, stats) = client.fetch(std::slice::from_ref(cid), 1, timeout).await?;
        samples.push(stats.latencies[0]);
    }
    samples.sort();
    Ok(samples)
}

/// A proxy built as this bench is, in front of `kubo` alone. Without the block cache:
/// the figures are the cost of proxying, every block from kubo, whatever ran before.
pub fn one_backend(kubo: &KuboNode) -> ProxyOptions {
    ProxyOptions {
        backends: vec![kubo.api_multiaddr.clone()],
        args: vec!["--block-cache-bytes".into(), "0".into()],
        release: RELEASE,
        ..Default::default()
    }
}

/// Starts [`one_backend`] and waits until its backend is up.
pub async fn proxy_in_front(kubo: &KuboNode) -> anyhow::Result<Proxy> {
    let proxy = Proxy::start(one_backend(kubo)).await?;
    proxy.wait_backends(1, Duration::from_secs(30)).await?;
    Ok(proxy)
}

/// The build profile, for the methods' text.
pub fn build_profile() -> &'static str {
    if RELEASE { "Release" } else { "Debug" }
}
