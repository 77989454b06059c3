//! Goal 1: throughput through the proxy against a direct fetch from the same kubo, and
//! the latency the proxy adds to a 1 KiB block.

use std::time::Duration;

use anyhow::Context;
use cid::Cid;

use super::floor::{self, Floor};
use super::{Section, cpu_seconds, median, ms, num_cpus, percentile, proxy_in_front};
use crate::bitswap_client::BitswapClient;
use crate::{KuboNode, KuboOptions, Proxy, helia_fetch, random_bytes, scratch_dir};

pub struct Config {
    pub size_mib: usize,
    /// MiB the crypto and hashing floor is timed over.
    pub floor_mib: usize,
    pub runs: usize,
    pub small_blocks: usize,
    pub window: usize,
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let size = cfg.size_mib << 20;
    let dir = scratch_dir("bench")?;
    let file = crate::write_random_file(dir.path(), "bench.bin", size, 7)?;
    let kubo = KuboNode::start(KuboOptions {
        add: vec![file],
        ..Default::default()
    })
    .await?;
    let proxy = proxy_in_front(&kubo).await?;
    let root = kubo.added["bench.bin"].clone();
    let mut cids: Vec<Cid> = vec![root.parse()?];
    for c in kubo.refs_recursive(&root).await? {
        cids.push(c.parse()?);
    }
    let mut s = Section::new(
        "1. Throughput and added latency",
        format!(
            "One kubo 0.22 backend holding a {} MiB file ({} blocks of up to 256 KiB). The same \
             client fetches it directly from kubo and through Kitsune, alternating, {} runs \
             each, median; a fresh connection every run. CPU time of each process is read from \
             /proc. Latency: 1 KiB blocks wanted one at a time, want-to-block.",
            cfg.size_mib,
            cids.len(),
            cfg.runs
        ),
    );

    // Native client (the project's codec over rust-libp2p): the fastest client there is.
    let timeout = Duration::from_secs(300);
    let pids = [
        kubo.pid().context("kubo pid")?,
        proxy.proc.pid(),
        std::process::id(),
    ];
    let native = native_runs(&kubo, &proxy, &cids, cfg, pids).await?;

    // The same with the proxy on a CPU of its own (kubo and the client share the other),
    // as when it runs on its own node: what the proxy costs when it does not compete
    // with its backend and its client for the same cores.
    let pinned = if num_cpus() >= 2 {
        pin(pids[0], "0")?;
        pin(pids[2], "0")?;
        pin(pids[1], "1")?;
        let pinned = native_runs(&kubo, &proxy, &cids, cfg, pids).await;
        let all = format!("0-{}", num_cpus() - 1);
        for pid in pids {
            pin(pid, &all)?;
        }
        Some(pinned?)
    } else {
        None
    };

    // The floor, sampled between the runs whose CPU figures it is compared with.
    let floor = Floor::mean(&native.floors);
    s.line(format!(
        "floor {:.2} CPU-s/GiB (one core: ChaCha20-Poly1305 decrypt + encrypt {:.2}, SHA-256 \
         {:.2}); with TLS 1.3 on both legs (AES-128-GCM) {:.2}; as the proxy runs here \
         (AES-128-GCM from kubo, ChaCha20-Poly1305 to the client) {:.2}; the mean of {} \
         samples taken between the runs",
        floor.noise(),
        floor.chacha_both_ways,
        floor.sha256,
        floor.tls(),
        floor.as_run(),
        native.floors.len(),
    ));
    native.report(&mut s, cfg.window, "", &floor);
    if let Some(pinned) = pinned {
        let floor = Floor::mean(&pinned.floors);
        pinned.report(
            &mut s,
            cfg.window,
            ", pinned: kubo and client on CPU 0, the proxy alone on CPU 1",
            &floor,
        );
    }

    // A real client: Helia 7's unixfs cat.
    let expected = random_bytes(size, 7);
    let (mut hd, mut hp) = (Vec::new(), Vec::new());
    for _ in 0..cfg.runs {
        for (to, out) in [(&kubo.tcp_addr, &mut hd), (&proxy.tcp_addr, &mut hp)] {
            let got = helia_fetch(to, &root, timeout).await?;
            anyhow::ensure!(got.bytes == expected, "Helia got different bytes");
            out.push(size as f64 / (1 << 20) as f64 / (got.ms.max(1) as f64 / 1000.0));
        }
    }
    let (hd, hp) = (median(hd), median(hp));
    s.line(format!(
        "Helia 7 (unixfs cat): direct {hd:.1} MiB/s, through Kitsune {hp:.1} MiB/s, **ratio \
         {:.3}**",
        hp / hd
    ));

    // Added latency for 1 KiB blocks: one want at a time, want to block.
    let small = super::add_single_blocks(&[&kubo], cfg.small_blocks, 1024, 1000).await?;
    let mut lat = Vec::new();
    for to in [&kubo.tcp_addr, &proxy.tcp_addr] {
        lat.push(super::one_at_a_time(&to.parse()?, &small, timeout).await?);
    }
    let (ld, lp) = (&lat[0], &lat[1]);
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        let (a, b) = (percentile(ld, q), percentile(lp, q));
        s.line(format!(
            "1 KiB block latency {name} ({} blocks): direct {:.3} ms, through Kitsune {:.3} ms, \
             **added {:.3} ms** (goal < 0.5 ms)",
            ld.len(),
            ms(a),
            ms(b),
            ms(b) - ms(a)
        ));
    }
    Ok(s)
}

/// Fetch figures of the native client: medians and CPU per GiB.
struct Native {
    direct: f64,
    proxied: f64,
    /// [direct, proxied] x [kubo, proxy, client] CPU seconds.
    cpu: [[f64; 3]; 2],
    /// GiB moved, [direct, proxied].
    moved: [f64; 2],
    /// The floor, sampled once per round of runs.
    floors: Vec<Floor>,
}

impl Native {
    fn report(&self, s: &mut Section, window: usize, how: &str, floor: &Floor) {
        let (d, p) = (self.direct, self.proxied);
        s.line(format!(
            "rust-libp2p bitswap client, window {window}{how}: direct {d:.1} MiB/s, through \
             Kitsune {p:.1} MiB/s, **ratio {:.3}** (goal >= 0.95)",
            p / d
        ));
        for (i, label) in ["direct", "through Kitsune"].into_iter().enumerate() {
            s.line(format!(
                "CPU seconds per GiB{how}, {label}: kubo {:.2}, proxy {:.2}, client {:.2} \
                 (total {:.2}; {} cores)",
                self.cpu[i][0] / self.moved[i],
                self.cpu[i][1] / self.moved[i],
                self.cpu[i][2] / self.moved[i],
                self.cpu[i].iter().sum::<f64>() / self.moved[i],
                num_cpus()
            ));
        }
        let proxy = self.cpu[1][1] / self.moved[1];
        s.line(format!(
            "proxy CPU per GiB{how}: {proxy:.2} = **{:.2} x the floor** (goal <= 1.5); {:.2} x \
             the floor as the proxy runs",
            proxy / floor.noise(),
            proxy / floor.as_run()
        ));
    }
}

/// `cfg.runs` fetches of `cids` each way, alternating direct and through the proxy.
/// `pids`: kubo, proxy, this process.
async fn native_runs(
    kubo: &KuboNode,
    proxy: &Proxy,
    cids: &[Cid],
    cfg: &Config,
    pids: [u32; 3],
) -> anyhow::Result<Native> {
    let timeout = Duration::from_secs(300);
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    let mut cpu = [[0.0f64; 3]; 2];
    let mut moved = [0.0f64; 2];
    let mut floors = Vec::new();
    for _ in 0..cfg.runs {
        floors.push(floor::sample(cfg.floor_mib, cfg.runs));
        for (i, to) in [&kubo.tcp_addr, &proxy.tcp_addr].into_iter().enumerate() {
            let before = pids.map(cpu_seconds);
            let mut c = BitswapClient::connect(&to.parse()?).await?;
            let leg = ["direct from kubo", "through Kitsune"][i];
            let (_, stats) = c
                .fetch(cids, cfg.window, timeout)
                .await
                .with_context(|| format!("fetch {leg}"))?;
            let after = pids.map(cpu_seconds);
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
    Ok(Native {
        direct: median(direct),
        proxied: median(proxied),
        cpu,
        moved,
        floors,
    })
}

/// Pins every thread of `pid` (and the threads it starts later) to `cpus` (taskset).
fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-cp", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset -a -cp {cpus} {pid}: {status}");
    Ok(())
}
