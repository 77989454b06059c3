//! Issue 20's cache benchmark: repeated content with Zipf popularity, on real kubo
//! through the proxy, with its block cache on and off. What the proxy's own counters
//! say: the share of delivered blocks the cache served, and how many blocks the
//! backends sent per block delivered to a client.

use std::time::{Duration, Instant};

use cid::Cid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Section;
use crate::bitswap_client::BitswapClient;
use crate::{KuboNode, KuboOptions, Proxy, ProxyOptions};

pub struct Config {
    /// Distinct blocks (each a small file of one block), on every backend.
    pub blocks: usize,
    pub block_kib: usize,
    /// Requests in all, split evenly between the clients.
    pub requests: usize,
    pub clients: usize,
    /// Wants each client keeps out.
    pub window: usize,
    /// The cache's size as a share of the content (blocks and their overhead), percent.
    pub cache_percent: u64,
}

const BACKENDS: usize = 2;
/// The proxy's per-block weight in the cache beyond the data (`cache::ENTRY_OVERHEAD`).
const ENTRY_OVERHEAD: u64 = 256;

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let mut kubos = Vec::new();
    for _ in 0..BACKENDS {
        kubos.push(KuboNode::start(KuboOptions::default()).await?);
    }
    // Block rank r (0 = most popular) is the file of seed 90_000 + r: one block each.
    let size = cfg.block_kib << 10;
    let cids =
        super::add_single_blocks(&kubos.iter().collect::<Vec<_>>(), cfg.blocks, size, 90_000)
            .await?;

    // Each client's requests, drawn once and replayed alike with the cache off and on.
    let per_client = cfg.requests / cfg.clients;
    let mut rng = StdRng::seed_from_u64(20);
    let draws: Vec<Vec<usize>> = (0..cfg.clients)
        .map(|_| {
            (0..per_client)
                .map(|_| zipf_rank(&mut rng, cfg.blocks))
                .collect()
        })
        .collect();
    let requests = per_client * cfg.clients;
    let content = cfg.blocks as u64 * (size as u64 + ENTRY_OVERHEAD);
    let cache_bytes = content * cfg.cache_percent / 100;
    let cache_blocks = (cache_bytes / (size as u64 + ENTRY_OVERHEAD)) as usize;
    // What a cache that always held the most popular blocks would serve of these draws.
    let ideal = draws
        .iter()
        .flatten()
        .filter(|r| **r < cache_blocks)
        .count();

    let mut s = Section::new(
        "Zipf-popular content and the block cache",
        format!(
            "{BACKENDS} kubo 0.22 backends each hold the same {} distinct blocks of {} KiB (one \
             small file each). {} native bitswap clients at once send {requests} requests in \
             all, drawn from a Zipf popularity (s = 1) over the blocks, {} wants out each (a \
             block is wanted again only after its last copy arrived); the same seeded draws \
             with the proxy's block cache off (`--block-cache-bytes 0`) and on \
             (`--block-cache-bytes {cache_bytes}`, {}% of the content with the cache's 256 \
             bytes per block, room for {cache_blocks} blocks), each time a fresh proxy in \
             front of the same kubos, the cache starting cold. From the proxy's /metrics: \
             blocks delivered to clients (`kitsune_bitswap_blocks_forwarded_total`, \
             upstream), cache hits, and the blocks each backend sent \
             (`kitsune_backend_blocks_received_total`). {} build.",
            cfg.blocks,
            cfg.block_kib,
            cfg.clients,
            cfg.window,
            cfg.cache_percent,
            super::build_profile()
        ),
    );

    let mut backend_per_delivered = Vec::new();
    for cache in [0, cache_bytes] {
        let proxy = Proxy::start(ProxyOptions {
            backends: kubos.iter().map(|k| k.api_multiaddr.clone()).collect(),
            args: vec!["--block-cache-bytes".into(), cache.to_string()],
            release: super::RELEASE,
            ..Default::default()
        })
        .await?;
        proxy
            .wait_backends(BACKENDS, Duration::from_secs(30))
            .await?;
        let before = Counters::read(&proxy).await?;
        let addr: libp2p::Multiaddr = proxy.tcp_addr.parse()?;
        let start = Instant::now();
        let results = futures::future::join_all(draws.iter().map(|ranks| {
            let (addr, cids) = (addr.clone(), &cids);
            async move {
                let mut c = BitswapClient::connect(&addr).await?;
                for chunk in distinct_chunks(ranks, cfg.window) {
                    let want: Vec<Cid> = chunk.iter().map(|r| cids[*r]).collect();
                    c.fetch(&want, cfg.window, Duration::from_secs(60)).await?;
                }
                anyhow::Ok(())
            }
        }))
        .await;
        let wall = start.elapsed().as_secs_f64();
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        let d = Counters::read(&proxy).await?.minus(&before);
        let delivered = d.delivered.max(1.0);
        let per = d.backend / delivered;
        backend_per_delivered.push(per);
        let what = if cache == 0 {
            "cache off".to_owned()
        } else {
            format!("cache on ({:.1} MiB)", cache as f64 / (1 << 20) as f64)
        };
        s.line(format!(
            "{what}: {requests} requests in {wall:.1} s ({:.0}/s), {:.0} blocks delivered; \
             **{:.1}% served from the cache** ({:.0} hits, {:.0} misses, {:.0} evictions); \
             backends sent {:.0} blocks: **{per:.3} backend blocks per delivered block**",
            requests as f64 / wall,
            d.delivered,
            100.0 * d.hits / delivered,
            d.hits,
            d.misses,
            d.evictions,
            d.backend,
        ));
    }
    s.line(format!(
        "backend blocks with the cache on / off: **{:.3}**; a cache always holding the {} most \
         popular blocks would serve {:.1}% of these requests",
        backend_per_delivered[1] / backend_per_delivered[0].max(f64::MIN_POSITIVE),
        cache_blocks,
        100.0 * ideal as f64 / requests.max(1) as f64
    ));
    Ok(s)
}

/// A rank in `0..n` drawn from Zipf(s = 1): rank r has weight 1 / (r + 1).
fn zipf_rank(rng: &mut StdRng, n: usize) -> usize {
    let total: f64 = (1..=n).map(|r| 1.0 / r as f64).sum();
    let mut x = rng.r#gen::<f64>() * total;
    for r in 0..n {
        x -= 1.0 / (r + 1) as f64;
        if x <= 0.0 {
            return r;
        }
    }
    n - 1
}

/// `ranks` cut, in order, into runs of at most `max` distinct ranks: a run ends before
/// a repeat, so every request is wanted anew after the earlier one was answered.
fn distinct_chunks(ranks: &[usize], max: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new()];
    for &r in ranks {
        let last = out.last_mut().expect("never empty");
        if last.len() >= max || last.contains(&r) {
            out.push(vec![r]);
        } else {
            last.push(r);
        }
    }
    out.retain(|c| !c.is_empty());
    out
}

/// The proxy counters this benchmark reads.
#[derive(Default)]
struct Counters {
    delivered: f64,
    hits: f64,
    misses: f64,
    evictions: f64,
    backend: f64,
}

impl Counters {
    async fn read(proxy: &Proxy) -> anyhow::Result<Self> {
        let m = proxy.metrics().await?;
        Ok(Self {
            delivered: metric_sum(&m, "kitsune_bitswap_blocks_forwarded_total", "upstream"),
            hits: metric_sum(&m, "kitsune_block_cache_hits_total", ""),
            misses: metric_sum(&m, "kitsune_block_cache_misses_total", ""),
            evictions: metric_sum(&m, "kitsune_block_cache_evictions_total", ""),
            backend: metric_sum(&m, "kitsune_backend_blocks_received_total", ""),
        })
    }

    fn minus(&self, o: &Self) -> Self {
        Self {
            delivered: self.delivered - o.delivered,
            hits: self.hits - o.hits,
            misses: self.misses - o.misses,
            evictions: self.evictions - o.evictions,
            backend: self.backend - o.backend,
        }
    }
}

/// The sum of every series of `name` whose labels contain `label` (case-insensitive),
/// from Prometheus text; 0 when there is none.
pub(super) fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    let label = label.to_lowercase();
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            let ok = (labels.is_empty() || labels.starts_with('{'))
                && labels.to_lowercase().contains(&label);
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_order_and_split_before_a_repeat() {
        assert_eq!(
            distinct_chunks(&[1, 2, 1, 3, 4, 5, 6], 3),
            vec![vec![1, 2], vec![1, 3, 4], vec![5, 6]]
        );
    }

    #[test]
    fn metric_sum_adds_matching_series_only() {
        let m = "# HELP x\nk_total{direction=\"Upstream\"} 5\nk_total{direction=\"Downstream\"} 7\n\
                 k_total_other 9\nb_total{backend=\"a\"} 1\nb_total{backend=\"b\"} 2\n";
        assert_eq!(metric_sum(m, "k_total", "upstream"), 5.0);
        assert_eq!(metric_sum(m, "b_total", ""), 3.0);
        assert_eq!(metric_sum(m, "missing", ""), 0.0);
    }
}
