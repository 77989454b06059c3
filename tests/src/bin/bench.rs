//! The proxy benchmark: the same content fetched from one kubo backend directly and
//! through Kitsune, in one run. Prints throughput of each and their ratio, and the
//! latency Kitsune adds to a 1 KiB block. Figures, not pass/fail.

use std::time::Duration;

use anyhow::Context;
use cid::Cid;
use clap::Parser;
use kitsune_e2e::bitswap_client::BitswapClient;
use kitsune_e2e::{
    KuboNode, KuboOptions, Proxy, ProxyOptions, helia_fetch, random_bytes, scratch_dir,
};

#[derive(Parser)]
#[command(about = "Kitsune throughput and latency against a direct fetch")]
struct Args {
    /// File size in MiB for the throughput test.
    #[arg(long, default_value_t = 64)]
    size_mib: usize,
    /// Runs of each throughput measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// 1 KiB blocks for the latency test.
    #[arg(long, default_value_t = 300)]
    small_blocks: usize,
    /// Wants a client keeps outstanding.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// A quick pass (8 MiB, 2 runs, 50 small blocks) that fits in CI.
    #[arg(long)]
    quick: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.size_mib = 8;
        args.runs = 2;
        args.small_blocks = 50;
    }
    let size = args.size_mib << 20;
    let dir = scratch_dir("bench")?;
    let file = kitsune_e2e::write_random_file(dir.path(), "bench.bin", size, 7)?;
    let kubo = KuboNode::start(KuboOptions {
        add: vec![file],
        ..Default::default()
    })
    .await?;
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![kubo.api_multiaddr.clone()],
        release: true,
        ..Default::default()
    })
    .await?;
    proxy.wait_backends(1, Duration::from_secs(30)).await?;
    let root = kubo.added["bench.bin"].clone();
    let mut cids: Vec<Cid> = vec![root.parse()?];
    for c in kubo.refs_recursive(&root).await? {
        cids.push(c.parse()?);
    }
    println!(
        "machine: {} cores; kubo 0.22 backend on loopback; release build of kitsune-proxy",
        num_cpus()
    );
    println!(
        "content: {} MiB file, {} blocks of up to 256 KiB; {} runs each, median",
        args.size_mib,
        cids.len(),
        args.runs
    );

    // 1. Throughput, native bitswap client (fresh connection each run, alternating).
    // CPU time of each process is read from /proc, to show where the cores go.
    let timeout = Duration::from_secs(300);
    let (kubo_pid, proxy_pid) = (kubo.pid().context("kubo pid")?, proxy.proc.pid());
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    let mut cpu = [[0.0f64; 3]; 2]; // [direct, proxied] x [kubo, proxy, client]
    let mut moved = [0.0f64; 2];
    for _ in 0..args.runs {
        for (i, to) in [&kubo.tcp_addr, &proxy.tcp_addr].into_iter().enumerate() {
            let before = [
                cpu_seconds(kubo_pid),
                cpu_seconds(proxy_pid),
                cpu_seconds(std::process::id()),
            ];
            let mut c = BitswapClient::connect(&to.parse()?).await?;
            let (_, stats) = c
                .fetch(&cids, args.window, timeout)
                .await
                .context("fetch")?;
            let after = [
                cpu_seconds(kubo_pid),
                cpu_seconds(proxy_pid),
                cpu_seconds(std::process::id()),
            ];
            for k in 0..3 {
                cpu[i][k] += after[k] - before[k];
            }
            moved[i] += stats.bytes as f64 / (1 << 30) as f64;
            let mibs = stats.bytes as f64 / (1 << 20) as f64 / stats.elapsed.as_secs_f64();
            if i == 0 {
                direct.push(mibs)
            } else {
                proxied.push(mibs)
            }
        }
    }
    let (d, p) = (median(direct), median(proxied));
    println!();
    println!(
        "throughput, rust-libp2p bitswap client, window {}:",
        args.window
    );
    println!("  direct from kubo      {d:8.1} MiB/s");
    println!("  through Kitsune       {p:8.1} MiB/s");
    println!("  ratio                 {:8.3}   (target >= 0.95)", p / d);
    println!("  CPU seconds per GiB   kubo / proxy / client");
    for (i, label) in ["direct", "through Kitsune"].into_iter().enumerate() {
        println!(
            "    {label:<18} {:5.2} / {:5.2} / {:5.2}   (total {:5.2}; the machine has {} cores)",
            cpu[i][0] / moved[i],
            cpu[i][1] / moved[i],
            cpu[i][2] / moved[i],
            cpu[i].iter().sum::<f64>() / moved[i],
            num_cpus()
        );
    }

    // 2. Throughput, a real Helia client.
    let expected = random_bytes(size, 7);
    let (mut hd, mut hp) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        for (to, out) in [(&kubo.tcp_addr, &mut hd), (&proxy.tcp_addr, &mut hp)] {
            let got = helia_fetch(to, &root, timeout).await?;
            anyhow::ensure!(got.bytes == expected, "Helia got different bytes");
            out.push(size as f64 / (1 << 20) as f64 / (got.ms.max(1) as f64 / 1000.0));
        }
    }
    let (hd, hp) = (median(hd), median(hp));
    println!("throughput, Helia 7 (unixfs cat):");
    println!("  direct from kubo      {hd:8.1} MiB/s");
    println!("  through Kitsune       {hp:8.1} MiB/s");
    println!("  ratio                 {:8.3}", hp / hd);

    // 3. Added latency for 1 KiB blocks: one want at a time, want to block.
    let mut small = Vec::new();
    for i in 0..args.small_blocks {
        let cid = kubo.add_bytes(&random_bytes(1024, 1000 + i as u64)).await?;
        small.push(cid.parse::<Cid>()?);
    }
    let mut lat = Vec::new();
    for to in [&kubo.tcp_addr, &proxy.tcp_addr] {
        let mut c = BitswapClient::connect(&to.parse()?).await?;
        // Warm up the streams.
        c.fetch(&small[..1], 1, timeout).await?;
        let mut samples = Vec::new();
        for cid in &small[1..] {
            let (_, stats) = c.fetch(std::slice::from_ref(cid), 1, timeout).await?;
            samples.push(stats.latencies[0]);
        }
        samples.sort();
        lat.push(samples);
    }
    let (ld, lp) = (&lat[0], &lat[1]);
    println!(
        "latency, 1 KiB blocks, one want at a time ({} blocks):",
        ld.len()
    );
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (a, b) = (percentile(ld, p), percentile(lp, p));
        println!(
            "  {name}: direct {:7.3} ms  through Kitsune {:7.3} ms  added {:7.3} ms",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            (b.as_secs_f64() - a.as_secs_f64()) * 1e3
        );
    }
    Ok(())
}

/// User plus system CPU seconds a process has used (Linux `/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0 // USER_HZ on Linux
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
