//! Goal 4: cache affinity. Repeated content requested by many clients through 4
//! backends: which share of the blocks each backend served came from its cache, under
//! rendezvous hashing and under round-robin.
//!
//! Real kubo nodes do not fetch a block they lack on a peer's behalf, so a backend's
//! cache cannot be observed through them. Instead the real routing core
//! ([`kitsune_proxy::router::Router`], pure code, the same the proxy runs) is driven
//! with synthetic peers: every want it sends to a backend is answered with the block,
//! and each backend's cache is modelled as an LRU of a fixed number of blocks.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use kitsune_proxy::bitswap::{Block, Message, WantEntry, WantKind};
use kitsune_proxy::router::{self, Policy, Router};
use libp2p::PeerId;
use multihash_codetable::{Code, MultihashDigest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Section;

pub struct Config {
    pub quick: bool,
}

/// The workload, identical for both policies.
struct Workload {
    blocks: Vec<Block>,
    index: HashMap<Cid, u32>,
    clients: Vec<PeerId>,
    backends: Vec<PeerId>,
    /// Per round, one (client, block index) per client: each client has one want out.
    rounds: Vec<Vec<(usize, u32)>>,
    cache_blocks: usize,
    zipf_s: f64,
}

/// What one policy's run produced.
struct Outcome {
    /// Per backend (in `Workload::backends` order): blocks served, of which cache hits.
    served: Vec<(u64, u64)>,
    requests: u64,
    delivered: u64,
    elapsed: Duration,
}

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    // Pure CPU: keep it off the async runtime's worker.
    let quick = cfg.quick;
    tokio::task::spawn_blocking(move || measure(quick)).await?
}

fn measure(quick: bool) -> anyhow::Result<Section> {
    let (contents, requests, clients) = if quick {
        (5_000, 40_000, 100)
    } else {
        (20_000, 200_000, 200)
    };
    let w = workload(contents, requests, clients, 4, contents / 10, 1.0, 7);
    let mut s = Section::new(
        "4. Cache affinity",
        format!(
            "Modelled on the real router, not measured on kubo (kubo does not fetch a block it \
             lacks on a peer's behalf, so its cache cannot be observed this way): the proxy's \
             routing core (`kitsune_proxy::router::Router`, the code the proxy runs, driven \
             without I/O) with {} synthetic backends and {} synthetic clients. {} requests for \
             {} distinct blocks drawn from a Zipf popularity (s = {}), each client keeping one \
             want outstanding; every want the router sends to a backend is answered with the \
             block at once. Each backend's cache is modelled as an LRU of {} blocks ({}% of \
             the content), starting cold; a block served is a cache hit if that backend's LRU \
             held it. Same seeded request stream for both policies.",
            w.backends.len(),
            w.clients.len(),
            w.rounds.iter().map(Vec::len).sum::<usize>(),
            w.blocks.len(),
            w.zipf_s,
            w.cache_blocks,
            w.cache_blocks * 100 / w.blocks.len(),
        ),
    );
    let mut overall = Vec::new();
    for (name, policy) in [
        ("rendezvous", Policy::Rendezvous),
        ("round-robin", Policy::RoundRobin),
    ] {
        let o = simulate(&w, policy)?;
        anyhow::ensure!(
            o.delivered == o.requests,
            "{name}: {} of {} requests delivered",
            o.delivered,
            o.requests
        );
        let total: u64 = o.served.iter().map(|x| x.0).sum();
        let hits: u64 = o.served.iter().map(|x| x.1).sum();
        let per: Vec<String> = o
            .served
            .iter()
            .enumerate()
            .map(|(i, (n, h))| {
                format!(
                    "backend {} served {n} ({:.1}% of blocks served), {:.1}% from cache",
                    i + 1,
                    pct(*n, total),
                    pct(*h, *n)
                )
            })
            .collect();
        s.line(format!(
            "{name}: {}; **overall {:.1}% served from cache** ({total} blocks served for {} \
             requests; {:.2} s of CPU)",
            per.join("; "),
            pct(hits, total),
            o.requests,
            o.elapsed.as_secs_f64()
        ));
        overall.push(pct(hits, total));
    }
    // Reference: one cache of the four caches' combined size, no router in the way.
    let mut one = Lru::new(w.cache_blocks * w.backends.len());
    let mut hits = 0u64;
    let mut n = 0u64;
    for round in &w.rounds {
        for &(_, b) in round {
            n += 1;
            hits += u64::from(one.access(b));
        }
    }
    s.line(format!(
        "Reference: one LRU of the combined size ({} blocks) fed the same requests hits \
         {:.1}%; rendezvous hit share − round-robin: {:+.1} points",
        w.cache_blocks * w.backends.len(),
        pct(hits, n),
        overall[0] - overall[1]
    ));
    Ok(s)
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

/// A deterministic peer ID (an Ed25519 key from a fixed seed).
fn peer(tag: u8, i: u32) -> PeerId {
    let mut seed = [tag; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    libp2p::identity::Keypair::ed25519_from_bytes(seed)
        .expect("32 bytes is an Ed25519 secret")
        .public()
        .to_peer_id()
}

fn workload(
    contents: usize,
    requests: usize,
    clients: usize,
    backends: usize,
    cache_blocks: usize,
    zipf_s: f64,
    seed: u64,
) -> Workload {
    let blocks: Vec<Block> = (0..contents)
        .map(|i| {
            let data = Bytes::from(format!("affinity block {i}"));
            Block {
                cid: Cid::new_v1(0x55, Code::Sha2_256.digest(&data)),
                data,
            }
        })
        .collect();
    let index = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.cid, i as u32))
        .collect();
    // Popularity rank r (1-based) has weight 1 / r^s; block i has rank i + 1.
    let mut cdf = Vec::with_capacity(contents);
    let mut sum = 0.0;
    for r in 1..=contents {
        sum += 1.0 / (r as f64).powf(zipf_s);
        cdf.push(sum);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rounds = Vec::new();
    let mut left = requests;
    while left > 0 {
        let n = left.min(clients);
        let round = (0..n)
            .map(|c| {
                let x = rng.r#gen::<f64>() * sum;
                let b = cdf.partition_point(|&v| v < x).min(contents - 1);
                (c, b as u32)
            })
            .collect();
        rounds.push(round);
        left -= n;
    }
    Workload {
        blocks,
        index,
        clients: (0..clients as u32).map(|i| peer(1, i)).collect(),
        backends: (0..backends as u32).map(|i| peer(2, i)).collect(),
        rounds,
        cache_blocks,
        zipf_s,
    }
}

/// Runs the workload through a real [`Router`] with `policy`.
fn simulate(w: &Workload, policy: Policy) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut r = Router::new(router::Config {
        policy,
        ..Default::default()
    });
    let mut now = Instant::now();
    for b in &w.backends {
        r.backend_up(*b, now);
    }
    let slot: HashMap<PeerId, usize> = w
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (*b, i))
        .collect();
    let mut caches: Vec<Lru> = w
        .backends
        .iter()
        .map(|_| Lru::new(w.cache_blocks))
        .collect();
    let mut served = vec![(0u64, 0u64); w.backends.len()];
    let (mut requests, mut delivered) = (0u64, 0u64);
    for round in &w.rounds {
        for &(c, b) in round {
            requests += 1;
            let msg = Message {
                wants: vec![WantEntry {
                    cid: w.blocks[b as usize].cid,
                    priority: 1,
                    cancel: false,
                    kind: WantKind::Block,
                    send_dont_have: true,
                }],
                ..Default::default()
            };
            r.client_message(w.clients[c], &msg, now);
        }
        // Answer every want until none is left: each backend has every block, and
        // serves it from its cache when its LRU holds it.
        loop {
            let out = r.take_outbox();
            delivered += out
                .to_clients
                .values()
                .map(|m| m.blocks.len() as u64)
                .sum::<u64>();
            // Sorted by peer: the same order every run.
            let to_backends: BTreeMap<PeerId, Message> = out.to_backends.into_iter().collect();
            if to_backends
                .values()
                .all(|m| m.wants.iter().all(|x| x.cancel))
            {
                break;
            }
            for (backend, msg) in to_backends {
                let i = slot[&backend];
                let mut reply = Message::default();
                for want in msg.wants.iter().filter(|x| !x.cancel) {
                    let b = *w
                        .index
                        .get(&want.cid)
                        .ok_or_else(|| anyhow::anyhow!("router asked for an unknown CID"))?;
                    served[i].0 += 1;
                    served[i].1 += u64::from(caches[i].access(b));
                    reply.blocks.push(w.blocks[b as usize].clone());
                }
                r.backend_message(backend, &reply, now);
            }
        }
        now += Duration::from_millis(1);
        r.tick(now);
    }
    anyhow::ensure!(
        r.wants_in_flight() == 0,
        "{} wants left open",
        r.wants_in_flight()
    );
    Ok(Outcome {
        served,
        requests,
        delivered,
        elapsed: started.elapsed(),
    })
}

/// A least-recently-used set of block indexes with a fixed capacity.
struct Lru {
    cap: usize,
    clock: u64,
    /// Block → the time it was last used.
    at: HashMap<u32, u64>,
    /// Last-use time → block (oldest first).
    order: BTreeMap<u64, u32>,
}

impl Lru {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            clock: 0,
            at: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Uses `b`: true if it was cached (a hit); it is cached afterwards either way.
    fn access(&mut self, b: u32) -> bool {
        self.clock += 1;
        let hit = match self.at.insert(b, self.clock) {
            Some(old) => {
                self.order.remove(&old);
                true
            }
            None => false,
        };
        self.order.insert(self.clock, b);
        if self.at.len() > self.cap
            && let Some((_, evicted)) = self.order.pop_first()
        {
            self.at.remove(&evicted);
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut l = Lru::new(2);
        assert!(!l.access(1));
        assert!(!l.access(2));
        assert!(l.access(1));
        assert!(!l.access(3)); // evicts 2
        assert!(l.access(1));
        assert!(!l.access(2));
    }

    #[test]
    fn small_run_is_deterministic_and_rendezvous_wins() {
        let w = workload(1_000, 10_000, 20, 4, 100, 1.0, 3);
        let a = simulate(&w, Policy::Rendezvous).unwrap();
        let b = simulate(&w, Policy::Rendezvous).unwrap();
        assert_eq!(a.served, b.served);
        assert_eq!(a.delivered, a.requests);
        let rr = simulate(&w, Policy::RoundRobin).unwrap();
        let hits = |o: &Outcome| o.served.iter().map(|x| x.1).sum::<u64>();
        assert!(hits(&a) > hits(&rr));
    }
}
