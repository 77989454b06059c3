//! Issue 18's peer in the same run: what a user might deploy instead of Kitsune, the
//! Elastic IPFS design: every kubo with the same key behind a plain TCP balancer. Its
//! throughput and CPU beside Kitsune's, and what it cannot do: a connection the
//! balancer landed on one backend never sees content held only by another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cid::Cid;
use tokio::net::{TcpListener, TcpStream};

use super::floor::{self, Floor};
use super::{Section, cpu_seconds, median, ms, percentile};
use crate::bitswap_client::BitswapClient;
use crate::{KuboNode, KuboOptions, Proxy, ProxyOptions, random_bytes, scratch_dir};

pub struct Config {
    pub size_mib: usize,
    pub runs: usize,
    pub window: usize,
    /// How long a fetch of the content held on one backend may take before it counts
    /// as failed.
    pub fail_after: Duration,
    /// 1 KiB blocks wanted one at a time each way for the latency line.
    pub latency_blocks: usize,
    /// MiB the crypto and hashing floor is timed over, spread between the runs.
    pub floor_mib: usize,
}

/// A round-robin TCP balancer on 127.0.0.1: connection k goes to `targets[k % n]`,
/// spliced both ways. It runs on a thread of its own (a current-thread runtime), so
/// its CPU time is that thread's.
struct Balancer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    targets: usize,
    /// The balancer thread's CPU-time clock.
    clock: libc::clockid_t,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Balancer {
    fn start(targets: Vec<u16>) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (count, n) = (accepted.clone(), targets.len());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(l) = TcpListener::from_std(listener) else {
                    return;
                };
                let serve = async {
                    loop {
                        let Ok((mut inbound, _)) = l.accept().await else {
                            continue;
                        };
                        let port = targets[count.fetch_add(1, Ordering::SeqCst) % targets.len()];
                        tokio::spawn(async move {
                            let Ok(mut out) = TcpStream::connect(("127.0.0.1", port)).await else {
                                return;
                            };
                            let _ = inbound.set_nodelay(true);
                            let _ = out.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional_with_sizes(
                                &mut inbound,
                                &mut out,
                                64 << 10,
                                64 << 10,
                            )
                            .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the thread is alive (it runs until `stop`); the call only writes `clock`.
        let rc = unsafe {
            libc::pthread_getcpuclockid(
                std::os::unix::thread::JoinHandleExt::as_pthread_t(&thread),
                &mut clock,
            )
        };
        anyhow::ensure!(rc == 0, "pthread_getcpuclockid: {rc}");
        Ok(Self {
            addr,
            accepted,
            targets: n,
            clock,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// CPU seconds the balancer thread has used. (`/proc/<tid>/stat` would not do: it
    /// counts the whole process, the client included.)
    fn cpu_seconds(&self) -> f64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock` is the live balancer thread's clock; the call only writes `t`.
        unsafe { libc::clock_gettime(self.clock, &mut t) };
        t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
    }

    /// The target the next connection will land on.
    fn next_target(&self) -> usize {
        self.accepted.load(Ordering::SeqCst) % self.targets
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let size = cfg.size_mib << 20;
    let dir = scratch_dir("bench-peer")?;
    let file = crate::write_random_file(dir.path(), "peer.bin", size, 18)?;
    let with_file = || KuboOptions {
        add: vec![file.clone()],
        ..Default::default()
    };
    // A and B share A's key (the Elastic IPFS design); C has its own, as Kitsune needs
    // (it tells its backends apart by peer ID).
    let a = KuboNode::start(with_file()).await?;
    let b = KuboNode::start(KuboOptions {
        identity_from: Some(a.config_path()),
        ..with_file()
    })
    .await?;
    anyhow::ensure!(a.peer_id == b.peer_id, "the two kubos have different keys");
    let c = KuboNode::start(with_file()).await?;
    let root = a.added["peer.bin"].clone();
    let cids = a.dag_cids(&root).await?;
    // 1 KiB blocks on all three, for the latency each way adds.
    let small = super::add_single_blocks(&[&a, &b, &c], cfg.latency_blocks, 1024, 181_000).await?;
    // Content held on A only.
    let only_root = a.add_bytes(&random_bytes(1 << 20, 1818)).await?;
    let only: Vec<Cid> = a.dag_cids(&only_root).await?;

    let balancer = Balancer::start(vec![a.swarm_port, b.swarm_port])?;
    let via_balancer: libp2p::Multiaddr = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}",
        balancer.addr.port(),
        a.peer_id
    )
    .parse()?;
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![a.api_multiaddr.clone(), c.api_multiaddr.clone()],
        args: vec!["--block-cache-bytes".into(), "0".into()],
        release: super::RELEASE,
        ..Default::default()
    })
    .await?;
    proxy.wait_backends(2, Duration::from_secs(30)).await?;

    let mut s = Section::new(
        "A peer: one key on every kubo behind a TCP balancer",
        format!(
            "The Elastic IPFS design, as a user might deploy it instead of Kitsune: two kubo \
             0.22 nodes (A, B) started with the same identity (PeerID and PrivKey in their \
             config), behind a round-robin TCP balancer written in the bench (a Tokio thread \
             of its own splicing each accepted connection to the next kubo's swarm port, 64 \
             KiB buffers; its CPU is that thread's). Kitsune (block cache off) in front of A \
             and a third kubo C with its own key (Kitsune tells backends apart by peer ID). \
             A, B and C hold the same {} MiB file ({} blocks). The same native client (window \
             {}) fetches it directly from A, through the balancer and through Kitsune, in \
             turn, {} runs each, a fresh connection every run, median; CPU of each process \
             (kubo: the whole node) from /proc; the crypto and hashing floor (see the \
             throughput section) timed on one core before each run. Then 1 MiB added to A only is fetched over a \
             connection the balancer landed on A, one it landed on B, and through Kitsune, \
             each with a {} s limit. Latency: {} 1 KiB blocks (held by all three) wanted one \
             at a time, want to block, over one connection each way. {} build.",
            cfg.size_mib,
            cids.len(),
            cfg.window,
            cfg.runs,
            cfg.fail_after.as_secs(),
            cfg.latency_blocks,
            super::build_profile()
        ),
    );

    // CPU of [kubo A, kubo B, kubo C, proxy, balancer], per way.
    let pids = [
        a.pid().context("kubo A pid")?,
        b.pid().context("kubo B pid")?,
        c.pid().context("kubo C pid")?,
        proxy.proc.pid(),
    ];
    let cpu_now = || {
        let p = pids.map(cpu_seconds);
        [p[0], p[1], p[2], p[3], balancer.cpu_seconds()]
    };
    let ways: [(&str, libp2p::Multiaddr); 3] = [
        ("direct from A", a.tcp_addr.parse()?),
        ("through the balancer", via_balancer.clone()),
        ("through Kitsune", proxy.tcp_addr.parse()?),
    ];
    let mut rates = vec![Vec::new(); ways.len()];
    let mut cpu = vec![[0.0f64; 5]; ways.len()];
    let mut gib = vec![0.0f64; ways.len()];
    let mut floors = Vec::new();
    let timeout = Duration::from_secs(300);
    for _ in 0..cfg.runs {
        floors.push(floor::sample(cfg.floor_mib, cfg.runs));
        for (i, (_, to)) in ways.iter().enumerate() {
            let mut client = BitswapClient::connect(to).await?;
            let before = cpu_now();
            let (_, stats) = client
                .fetch(&cids, cfg.window, timeout)
                .await
                .with_context(|| format!("fetch {}", ways[i].0))?;
            let after = cpu_now();
            for k in 0..after.len() {
                cpu[i][k] += after[k] - before[k];
            }
            gib[i] += stats.bytes as f64 / (1u64 << 30) as f64;
            rates[i].push(stats.bytes as f64 / (1 << 20) as f64 / stats.elapsed.as_secs_f64());
        }
    }
    let rates: Vec<f64> = rates.into_iter().map(median).collect();
    s.line(format!(
        "throughput: direct from A {:.1} MiB/s, through the balancer {:.1} MiB/s, through \
         Kitsune {:.1} MiB/s; **Kitsune / balancer {:.3}**",
        rates[0],
        rates[1],
        rates[2],
        rates[2] / rates[1]
    ));
    let per = |i: usize, k: usize| cpu[i][k] / gib[i];
    let kubos = |i: usize| per(i, 0) + per(i, 1) + per(i, 2);
    let balancer_total = kubos(1) + per(1, 4);
    let kitsune_total = kubos(2) + per(2, 3);
    s.line(format!(
        "CPU seconds per GiB, through the balancer: balancer {:.2}, kubo {:.2} (A {:.2}, B \
         {:.2}); total {balancer_total:.2}",
        per(1, 4),
        kubos(1),
        per(1, 0),
        per(1, 1)
    ));
    s.line(format!(
        "CPU seconds per GiB, through Kitsune: proxy {:.2}, kubo {:.2} (A {:.2}, C {:.2}); \
         total {kitsune_total:.2}; **Kitsune / balancer: proxy {:.1}x the balancer, total \
         {:.2}x**",
        per(2, 3),
        kubos(2),
        per(2, 0),
        per(2, 2),
        per(2, 3) / per(1, 4).max(f64::MIN_POSITIVE),
        kitsune_total / balancer_total
    ));
    s.line(format!(
        "CPU seconds per GiB, direct from A (reference): kubo {:.2}",
        kubos(0)
    ));
    // The least any relay doing the proxy's work could spend: the crypto and hashing
    // floor plus what relaying the same bytes costs with no crypto at all (the
    // balancer's receives, sends and wake-ups), both from this run.
    let floor = Floor::mean(&floors).as_run();
    let relay_floor = floor + per(1, 4);
    s.line(format!(
        "the least a relay doing the proxy's work could spend: the floor as the proxy runs \
         here {floor:.2} (sampled between the runs) + the balancer's relaying {:.2} = \
         {relay_floor:.2} CPU-s/GiB; **proxy {:.2}x that** ({:.2}x the floor alone)",
        per(1, 4),
        per(2, 3) / relay_floor,
        per(2, 3) / floor
    ));

    // What one more hop costs a small block: a bare TCP splice beside Kitsune.
    let mut p50 = Vec::new();
    for (_, to) in &ways {
        p50.push(ms(percentile(
            &super::one_at_a_time(to, &small, timeout).await?,
            0.5,
        )));
    }
    s.line(format!(
        "1 KiB block latency p50 ({} blocks): direct from A {:.3} ms, through the balancer \
         {:.3} ms (**added {:.3} ms**), through Kitsune {:.3} ms (**added {:.3} ms**)",
        small.len() - 1,
        p50[0],
        p50[1],
        p50[1] - p50[0],
        p50[2],
        p50[2] - p50[0]
    ));

    // What the balancer cannot do: content on A only, over a connection on B.
    let names = ["A", "B"];
    let mut outcomes = Vec::new();
    for _ in 0..balancer.targets {
        let landed = names[balancer.next_target()];
        let mut client = BitswapClient::connect(&via_balancer).await?;
        outcomes.push(format!(
            "balancer, connection landed on {landed}: {}",
            outcome(&mut client, &only, cfg).await
        ));
    }
    let mut client = BitswapClient::connect(&proxy.tcp_addr.parse()?).await?;
    outcomes.push(format!(
        "Kitsune: {}",
        outcome(&mut client, &only, cfg).await
    ));
    s.line(format!(
        "1 MiB held on A only ({} blocks): {}",
        only.len(),
        outcomes.join("; ")
    ));
    Ok(s)
}

/// "ok in N ms" or "**failed** (why)", for a fetch of `cids` within `cfg.fail_after`.
async fn outcome(client: &mut BitswapClient, cids: &[Cid], cfg: &Config) -> String {
    let start = Instant::now();
    match client.fetch(cids, cfg.window, cfg.fail_after).await {
        Ok(_) => format!("ok in {:.0} ms", start.elapsed().as_secs_f64() * 1e3),
        Err(e) => format!(
            "**failed** after {:.0} ms ({e:#})",
            start.elapsed().as_secs_f64() * 1e3
        ),
    }
}
