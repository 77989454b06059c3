//! Per-address want rates: a token bucket per address key (an IPv4 address, an IPv6
//! /64) for the new wants its clients send. A client over its address's budget is
//! slowed, not refused: its new wants wait here and go on to the router as tokens
//! come back, so it gets what it asked for at the allowed rate and other addresses
//! never notice. Cancels are never held (and withdraw a waiting want), wants the
//! router already holds cost nothing. Pure: time is passed in.
//!
//! Bounded: a client's waiting wants count with the wants the router holds for it
//! against `--max-wants-per-client`; past that, new wants go straight to the router,
//! which refuses them as it would anyway.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use ipnet::IpNet;
use libp2p::PeerId;

use crate::bitswap::{Message, WantEntry};
use crate::net::ip_limit::AddressKey;

/// A token bucket: `rate` tokens a second, at most `burst` held, full at the start.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.at {
            let dt = now.duration_since(self.at).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
            self.at = now;
        }
    }

    /// Takes up to `n` whole tokens; returns how many it took.
    pub fn take(&mut self, n: usize, now: Instant) -> usize {
        self.refill(now);
        let k = (self.tokens.floor().max(0.0) as usize).min(n);
        self.tokens -= k as f64;
        k
    }

    /// Whether it is full again (and so need not be kept).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One client's waiting wants, oldest first. A cancel only forgets the CID (O(1));
/// the queue skips forgotten entries and is compacted when they outnumber the rest.
#[derive(Debug, Default)]
struct Waiting {
    queue: VecDeque<WantEntry>,
    live: std::collections::HashSet<cid::Cid>,
}

impl Waiting {
    fn len(&self) -> usize {
        self.live.len()
    }

    fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn push(&mut self, w: &WantEntry) {
        if self.live.insert(w.cid) {
            self.queue.push_back(w.clone());
        }
    }

    fn forget(&mut self, cid: &cid::Cid) {
        if self.live.remove(cid) && self.queue.len() > 2 * self.live.len() + 64 {
            let live = &self.live;
            self.queue.retain(|w| live.contains(&w.cid));
        }
    }

    fn pop(&mut self) -> Option<WantEntry> {
        while let Some(w) = self.queue.pop_front() {
            if self.live.remove(&w.cid) {
                return Some(w);
            }
        }
        None
    }
}

pub struct WantRates {
    per_second: f64,
    keying: AddressKey,
    max_per_client: usize,
    of_client: HashMap<PeerId, IpNet>,
    buckets: HashMap<IpNet, Bucket>,
    /// Clients' new wants waiting for tokens, oldest first.
    waiting: HashMap<PeerId, Waiting>,
    /// Wants delayed so far (a counter for metrics).
    delayed: u64,
}

impl WantRates {
    /// `per_second` new wants a second for each address key, a second's worth at
    /// once; 0 turns the limit off.
    pub fn new(per_second: u32, keying: AddressKey, max_per_client: usize) -> Self {
        Self {
            per_second: f64::from(per_second),
            keying,
            max_per_client,
            of_client: HashMap::new(),
            buckets: HashMap::new(),
            waiting: HashMap::new(),
            delayed: 0,
        }
    }

    pub fn is_on(&self) -> bool {
        self.per_second > 0.0
    }

    pub fn delayed(&self) -> u64 {
        self.delayed
    }

    /// Wants waiting over all clients.
    pub fn waiting(&self) -> usize {
        self.waiting.values().map(Waiting::len).sum()
    }

    pub fn client_connected(&mut self, client: PeerId, ip: IpAddr) {
        if self.is_on() {
            self.of_client.entry(client).or_insert(self.keying.of(ip));
        }
    }

    /// The client is gone: its waiting wants are dropped.
    pub fn client_gone(&mut self, client: &PeerId) {
        self.of_client.remove(client);
        self.waiting.remove(client);
    }

    /// What of `msg` goes to the router now; the rest waits. `held` says whether
    /// the router already holds a want of this client (those pass at no cost) and
    /// `holds` how many it holds for it. A full wantlist stays full: the wants held
    /// back are not dropped from it, only added later.
    pub fn admit(
        &mut self,
        client: PeerId,
        msg: &Message,
        held: impl Fn(&cid::Cid) -> bool,
        holds: usize,
        now: Instant,
    ) -> Message {
        let Some(key) = self
            .of_client
            .get(&client)
            .copied()
            .filter(|_| self.is_on())
        else {
            return msg.clone();
        };
        let waiting = self.waiting.entry(client).or_default();
        if msg.full {
            *waiting = Waiting::default();
        }
        let mut out = Message {
            full: msg.full,
            blocks: msg.blocks.clone(),
            presences: msg.presences.clone(),
            ..Message::default()
        };
        let (rate, burst) = (self.per_second, self.per_second.max(1.0));
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(rate, burst, now));
        for w in &msg.wants {
            if w.cancel {
                waiting.forget(&w.cid);
            }
            // In order (a token is taken only when nothing else lets it pass); past
            // its cap the router refuses it either way, so it need not wait.
            let passes = w.cancel
                || held(&w.cid)
                || (waiting.is_empty() && bucket.take(1, now) == 1)
                || holds + waiting.len() >= self.max_per_client;
            if passes {
                out.wants.push(w.clone());
            } else {
                waiting.push(w);
                self.delayed += 1;
            }
        }
        if waiting.is_empty() {
            self.waiting.remove(&client);
        }
        out
    }

    /// The waiting wants whose tokens have come, per client; buckets full again are
    /// dropped. The peers of one address take its tokens in turn, one want each.
    pub fn release(&mut self, now: Instant) -> Vec<(PeerId, Message)> {
        // Clients in a stable order, so the same events give the same result.
        let mut clients: Vec<PeerId> = self.waiting.keys().copied().collect();
        clients.sort();
        let mut released: Vec<Vec<WantEntry>> = vec![Vec::new(); clients.len()];
        loop {
            let mut moved = false;
            for (i, client) in clients.iter().enumerate() {
                let (Some(key), Some(waiting)) =
                    (self.of_client.get(client), self.waiting.get_mut(client))
                else {
                    continue;
                };
                let Some(bucket) = self.buckets.get_mut(key) else {
                    continue;
                };
                if !waiting.is_empty() && bucket.take(1, now) == 1 {
                    released[i].extend(waiting.pop());
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        let mut out = Vec::new();
        for (client, wants) in clients.into_iter().zip(released) {
            if self.waiting.get(&client).is_some_and(Waiting::is_empty) {
                self.waiting.remove(&client);
            }
            if !wants.is_empty() {
                out.push((
                    client,
                    Message {
                        wants,
                        ..Message::default()
                    },
                ));
            }
        }
        let waiting_keys: std::collections::HashSet<IpNet> = self
            .waiting
            .keys()
            .filter_map(|c| self.of_client.get(c).copied())
            .collect();
        self.buckets
            .retain(|k, b| waiting_keys.contains(k) || !b.is_full(now));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A small deterministic generator: the property tests below replay the same
    /// cases every run.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn a_bucket_never_gives_more_than_its_burst_plus_its_rate() {
        let mut g = XorShift(0x9e37_79b9_7f4a_7c15);
        for case in 0..200 {
            let rate = 1 + g.next() % 500;
            let burst = 1 + g.next() % 1000;
            let t0 = Instant::now();
            let mut b = Bucket::new(rate as f64, burst as f64, t0);
            let (mut now, mut taken) = (t0, 0usize);
            for _ in 0..300 {
                now += Duration::from_micros(g.next() % 200_000);
                taken += b.take((g.next() % 300) as usize, now);
                let allowed = burst as f64 + rate as f64 * (now - t0).as_secs_f64();
                assert!(
                    taken as f64 <= allowed + 1e-6,
                    "case {case}: {taken} taken, {allowed} allowed"
                );
            }
        }
    }

    #[test]
    fn a_bucket_asked_always_gives_its_rate() {
        let mut g = XorShift(42);
        for case in 0..200 {
            // At least 2 a second: a step's refill (at most a twentieth of a second's)
            // plus a fraction of a token then never overflows the burst.
            let rate = 2 + g.next() % 500;
            let t0 = Instant::now();
            let mut b = Bucket::new(rate as f64, rate as f64, t0);
            let mut taken = b.take(usize::MAX, t0);
            assert_eq!(taken as u64, rate, "full at the start");
            let mut now = t0;
            for _ in 0..300 {
                now += Duration::from_micros(g.next() % 50_000);
                taken += b.take(usize::MAX, now);
            }
            // Everything refilled was taken, but for the fraction of a token left.
            let due = rate as f64 * (1.0 + (now - t0).as_secs_f64());
            assert!(
                taken as f64 >= due - 1.0 - 1e-6,
                "case {case}: {taken} taken, {due} due"
            );
        }
    }

    #[test]
    fn an_idle_bucket_fills_up_to_its_burst_only() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 5.0, t0);
        assert_eq!(b.take(100, t0), 5);
        assert!(!b.is_full(t0));
        assert_eq!(b.take(100, t0 + Duration::from_secs(60)), 5);
        assert_eq!(b.take(100, t0 + Duration::from_millis(60_100)), 1);
        // Time going backwards takes nothing and gives nothing.
        assert_eq!(b.take(100, t0), 0);
    }
}
