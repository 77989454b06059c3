//! `kitsune-bench`: the benchmark suite. Runs each benchmark against real peers on
//! loopback, prints the figures, and writes them with the method and the machine to
//! `docs/PERFORMANCE.md`. Figures, not pass/fail: each goal is printed beside its figure.

use std::time::Duration;

use clap::Parser;
use kitsune_e2e::bench::report::{self, FAILED};
use kitsune_e2e::bench::{self, Section};

#[derive(Parser)]
#[command(about = "Kitsune's benchmark suite (figures, not pass/fail)")]
struct Args {
    /// A quick pass that fits in CI: small sizes, few runs, a 1-minute soak is skipped.
    #[arg(long)]
    quick: bool,
    /// Run only these benchmarks (comma-separated): throughput, http, clients, crowd,
    /// scaling, fairness, affinity, propagation, footprint, soak, zipf, small_blocks, peer.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the report. Default: docs/PERFORMANCE.md for a full run, nowhere
    /// for --quick or --only (a partial report must not replace the full one).
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Replace only the sections run in the existing report (docs/PERFORMANCE.md unless
    /// --write says otherwise), keeping the others; each section names its own run.
    #[arg(long, conflicts_with = "quick")]
    update: bool,
    /// Concurrent clients for the many-clients benchmark.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Concurrent clients for the memory-per-client benchmark (crowd).
    #[arg(long, default_value_t = 10_000)]
    crowd_clients: usize,
    /// Soak duration in minutes.
    #[arg(long, default_value_t = 30)]
    soak_minutes: u64,
    /// File size in MiB for the throughput benchmark.
    #[arg(long, default_value_t = 64)]
    size_mib: usize,
    /// Runs of each throughput measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// 1 KiB blocks fetched one at a time each way for the added-latency figures. The
    /// p99 of N samples rests on its N/100 slowest, so fewer than 1,000 is mostly noise.
    #[arg(long, default_value_t = 1000)]
    latency_blocks: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let wants = |name: &str| a.only.is_empty() || a.only.iter().any(|o| o == name);
    let q = a.quick;
    raise_fd_limit();
    let machine = machine();
    println!("{machine}");
    let mut sections: Vec<Section> = Vec::new();
    let mut failures = Vec::new();
    let mut record = |name: &str, r: anyhow::Result<Section>| match r {
        Ok(s) => sections.push(s),
        Err(e) => {
            eprintln!("benchmark {name} failed: {e:#}");
            failures.push(format!("{name}: {e:#}"));
        }
    };
    if wants("throughput") {
        let cfg = bench::throughput::Config {
            size_mib: if q { 8 } else { a.size_mib },
            floor_mib: if q { 32 } else { 512 },
            runs: if q { 2 } else { a.runs },
            small_blocks: if q { 50 } else { a.latency_blocks },
            window: 256,
        };
        record("throughput", bench::throughput::run(&cfg).await);
    }
    if wants("http") {
        let cfg = bench::http::Config {
            size_mib: if q { 4 } else { a.size_mib },
            runs: if q { 1 } else { a.runs },
            parallel: 16,
            window: 256,
        };
        record("http", bench::http::run(&cfg).await);
    }
    if wants("clients") {
        let cfg = bench::clients::Config {
            clients: if q { 50 } else { a.clients },
            backends: 2,
        };
        record("clients", bench::clients::run(&cfg).await);
    }
    if wants("crowd") {
        let cfg = bench::crowd::Config {
            clients: if q { 40 } else { a.crowd_clients },
        };
        record("crowd", bench::crowd::run(&cfg).await);
    }
    if wants("scaling") {
        let cfg = bench::scaling::Config {
            rate_mib: 8.0,
            clients: if q { 4 } else { 16 },
            mib_per_client: if q { 2 } else { 8 },
        };
        record("scaling", bench::scaling::run(&cfg).await);
    }
    if wants("fairness") {
        let cfg = bench::fairness::Config {
            runs: if q { 2 } else { 10 },
            heavy_mib: if q { 8 } else { 32 },
            light_mib: if q { 1 } else { 2 },
            pace_mib: if q { 16.0 } else { 4.0 },
        };
        record("fairness", bench::fairness::run(&cfg).await);
    }
    if wants("affinity") {
        let cfg = bench::affinity::Config { quick: q };
        record("affinity", bench::affinity::run(&cfg).await);
    }
    if wants("propagation") {
        let cfg = bench::propagation::Config {
            changes: if q { 50 } else { 500 },
            subscribers: if q { vec![1, 20] } else { vec![1, 100] },
        };
        record("propagation", bench::propagation::run(&cfg).await);
    }
    if wants("footprint") {
        let cfg = bench::footprint::Config { quick: q };
        record("footprint", bench::footprint::run(&cfg).await);
    }
    if wants("zipf") {
        let cfg = bench::zipf::Config {
            blocks: if q { 40 } else { 400 },
            block_kib: if q { 16 } else { 64 },
            requests: if q { 600 } else { 20_000 },
            clients: if q { 3 } else { 8 },
            window: 8,
            cache_percent: 15,
        };
        record("zipf", bench::zipf::run(&cfg).await);
    }
    if wants("small_blocks") {
        let cfg = bench::small_blocks::Config {
            blocks: if q { 300 } else { 5000 },
            runs: if q { 1 } else { a.runs },
            window: 256,
        };
        record("small_blocks", bench::small_blocks::run(&cfg).await);
    }
    if wants("peer") {
        let cfg = bench::peer::Config {
            size_mib: if q { 4 } else { a.size_mib },
            runs: if q { 1 } else { a.runs },
            window: 256,
            fail_after: Duration::from_secs(5),
            latency_blocks: if q { 20 } else { a.latency_blocks.min(300) },
            floor_mib: if q { 32 } else { 512 },
        };
        record("peer", bench::peer::run(&cfg).await);
    }
    if wants("soak") && !q {
        let cfg = bench::soak::Config {
            duration: Duration::from_secs(a.soak_minutes * 60),
            clients: 8,
        };
        record("soak", bench::soak::run(&cfg).await);
    }

    let out = a.write.clone().or_else(|| {
        (!q && (a.only.is_empty() || a.update))
            .then(|| kitsune_e2e::repo_root().join("docs/PERFORMANCE.md"))
    });
    if let Some(path) = out {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        // Sections are re-run one at a time (--update), so each names its own run.
        let field = |k: &str| {
            machine
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("?")
        };
        let stamp = format!(
            "_Run: `{command}`, {}, on {}._\n",
            field("date: "),
            field("machine: ")
        );
        let fresh: Vec<(String, String)> = sections
            .iter()
            .map(|s| (s.title.clone(), format!("{}\n{stamp}", s.markdown())))
            .collect();
        let failed = (!failures.is_empty()).then(|| {
            let mut md = format!("## {FAILED}\n\n");
            for f in &failures {
                md.push_str(&format!("- {f}\n"));
            }
            md
        });
        let md = match std::fs::read_to_string(&path) {
            Ok(existing) if a.update => report::update(&existing, &fresh, failed),
            _ => {
                let peers = field("peers: ");
                let mut md = format!(
                    "# Performance\n\nWritten by `kitsune-bench` (`scripts/bench.sh`); do not edit \
                     by hand, run it again (`--only NAME --update` re-runs one section). Each \
                     section ends with the command, date and machine of its run.\n\n- peers: \
                     {peers}\n\n"
                );
                for (_, s) in &fresh {
                    md.push_str(s);
                    md.push('\n');
                }
                md.push_str(&failed.unwrap_or_default());
                md
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, md)?;
        println!("\nwritten to {}", path.display());
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} benchmark(s) failed",
        failures.len()
    );
    Ok(())
}

/// The machine, for the report: CPU, cores, memory, kernel, date.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kb / 1024.0 / 1024.0)
        })
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "machine: {} cores ({cpu}), {mem:.0} GiB RAM, Linux {}\ndate: {date}\npeers: kubo 0.22 \
         backends, {} build of kitsune-proxy, everything on loopback on this one machine",
        bench::num_cpus(),
        kernel.trim(),
        bench::build_profile().to_lowercase()
    )
}

/// Ten thousand clients need as many descriptors, here and in the proxy (which
/// inherits the limit).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
