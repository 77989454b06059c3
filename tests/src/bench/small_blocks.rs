//! Issue 18's small-block figure: 1 KiB blocks per second with 256 wants in flight,
//! through the proxy next to direct from the same kubo. Per-block costs (messages,
//! wants, lookups, wake-ups) dominate here, not bytes.

use std::time::Duration;

use anyhow::Context;

use super::{Section, cpu_seconds, median, proxy_in_front};
use crate::bitswap_client::BitswapClient;
use crate::{KuboNode, KuboOptions};

pub struct Config {
    /// Distinct 1 KiB blocks fetched per run.
    pub blocks: usize,
    pub runs: usize,
    pub window: usize,
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let kubo = KuboNode::start(KuboOptions::default()).await?;
    let cids = super::add_single_blocks(&[&kubo], cfg.blocks, 1024, 180_000).await?;
    // Without the block cache: every block from kubo, whatever the run before fetched.
    let proxy = proxy_in_front(&kubo).await?;
    let mut s = Section::new(
        "Small blocks: 1 KiB, 256 wants in flight",
        format!(
            "One kubo 0.22 backend holding {} distinct 1 KiB blocks (one small file each). The \
             same native client fetches all of them with {} wants in flight, directly from \
             kubo and through Kitsune (block cache off), alternating, {} runs each, a fresh \
             connection every run; median blocks per second. Proxy CPU from /proc. {} build.",
            cfg.blocks,
            cfg.window,
            cfg.runs,
            super::build_profile()
        ),
    );
    let timeout = Duration::from_secs(300);
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    let mut proxy_cpu = 0.0;
    let pid = proxy.proc.pid();
    for _ in 0..cfg.runs {
        for (i, to) in [&kubo.tcp_addr, &proxy.tcp_addr].into_iter().enumerate() {
            let mut c = BitswapClient::connect(&to.parse()?).await?;
            let cpu = cpu_seconds(pid);
            let (_, stats) = c.fetch(&cids, cfg.window, timeout).await.context("fetch")?;
            let rate = stats.blocks as f64 / stats.elapsed.as_secs_f64();
            if i == 0 {
                direct.push(rate);
            } else {
                proxy_cpu += cpu_seconds(pid) - cpu;
                proxied.push(rate);
            }
        }
    }
    let (d, p) = (median(direct), median(proxied));
    s.line(format!(
        "direct {d:.0} blocks/s, through Kitsune {p:.0} blocks/s, **ratio {:.3}**",
        p / d
    ));
    s.line(format!(
        "proxy CPU: {:.1} µs per block",
        proxy_cpu * 1e6 / (cfg.blocks * cfg.runs) as f64
    ));
    Ok(s)
}
