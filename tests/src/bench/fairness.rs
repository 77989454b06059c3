//! Issue 20: a light client's fetch time beside a heavy client, with and without fair
//! scheduling, on one slow backend (a real kubo behind the paced relay).

use std::time::{Duration, Instant};

use cid::Cid;

use super::{Section, ms, percentile};
use crate::bitswap_client::BitswapClient;
use crate::relay::{paced_relay, proxy_behind_relay};
use crate::{KuboNode, Proxy, ProxyOptions, random_bytes};

pub struct Config {
    /// Light fetches measured per case.
    pub runs: usize,
    pub heavy_mib: usize,
    pub light_mib: usize,
    /// The backend's pace (kubo → proxy), MiB/s.
    pub pace_mib: f64,
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let mut s = Section::new(
        "Fair scheduling: a light client beside a heavy one",
        format!(
            "One kubo 0.22 backend paced to {:.0} MiB/s (kubo → proxy) by a relay; no block \
             cache. A heavy client fetches a {} MiB file over and over with all its wants \
             out at once (window 256); a light client fetches a {} MiB file (window 10), \
             {} times alone and {} times beside the heavy one, a fresh connection each \
             time. Once with `--fair-scheduling true` (the default), once `false` (oldest \
             want first).",
            cfg.pace_mib, cfg.heavy_mib, cfg.light_mib, cfg.runs, cfg.runs
        ),
    );
    let kubo = KuboNode::start(Default::default()).await?;
    let heavy_root = kubo
        .add_bytes(&random_bytes(cfg.heavy_mib << 20, 601))
        .await?;
    let light_root = kubo
        .add_bytes(&random_bytes(cfg.light_mib << 20, 602))
        .await?;
    let heavy: Vec<Cid> = kubo.dag_cids(&heavy_root).await?;
    let light: Vec<Cid> = kubo.dag_cids(&light_root).await?;
    let host = 42;
    let relays = paced_relay(
        host,
        &[(kubo.api_port, false), (kubo.swarm_port, true)],
        cfg.pace_mib * (1 << 20) as f64,
    )
    .await?;
    for fair in [true, false] {
        let flag = if fair { "true" } else { "false" };
        let proxy = Proxy::start(ProxyOptions {
            release: super::RELEASE,
            ..proxy_behind_relay(host, kubo.api_port, &["--fair-scheduling", flag])
        })
        .await?;
        proxy.wait_backends(1, Duration::from_secs(30)).await?;
        let addr: libp2p::Multiaddr = proxy.tcp_addr.parse()?;
        let light_once = || {
            let (addr, light) = (addr.clone(), light.clone());
            async move {
                let mut c = BitswapClient::connect(&addr).await?;
                let t = Instant::now();
                c.fetch(&light, 10, Duration::from_secs(300)).await?;
                anyhow::Ok(t.elapsed())
            }
        };
        let mut alone = Vec::new();
        for _ in 0..cfg.runs {
            alone.push(light_once().await?);
        }
        let heavy_loop = tokio::spawn({
            let (addr, heavy) = (addr.clone(), heavy.clone());
            async move {
                loop {
                    let mut c = BitswapClient::connect(&addr).await?;
                    c.fetch(&heavy, 256, Duration::from_secs(600)).await?;
                }
                #[allow(unreachable_code)]
                anyhow::Ok(())
            }
        });
        // The heavy client's wants are at the backend before the light one comes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut beside = Vec::new();
        for _ in 0..cfg.runs {
            beside.push(light_once().await?);
        }
        let heavy_failed = heavy_loop.is_finished();
        heavy_loop.abort();
        if heavy_failed {
            anyhow::bail!("the heavy client's fetch failed");
        }
        alone.sort();
        beside.sort();
        let (a50, a99) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
        let (b50, b99) = (percentile(&beside, 0.5), percentile(&beside, 0.99));
        s.line(format!(
            "fair scheduling {}: light fetch alone p50 {:.0} ms, p99 {:.0} ms; beside the \
             heavy client p50 {:.0} ms, p99 {:.0} ms: **p99 {:.1}x alone**",
            if fair { "on" } else { "off" },
            ms(a50),
            ms(a99),
            ms(b50),
            ms(b99),
            b99.as_secs_f64() / a99.as_secs_f64().max(1e-9),
        ));
    }
    for r in relays {
        r.abort();
    }
    Ok(s)
}
