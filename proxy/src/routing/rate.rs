//! Per-address rates: token buckets per address key (an IPv4 address, an IPv6 /64),
//! one for the new wants its clients send, one for the block bytes the proxy
//! delivers to them. A client over its address's budget is slowed, not refused: its
//! new wants wait here and go on to the router as the budget comes back, so it gets
//! what it asked for at the allowed rate and other addresses never notice. Cancels
//! are never held (and withdraw a waiting want), wants the router already holds cost
//! nothing. Pure: time is passed in.
//!
//! A block's size is known only once it is delivered, so a block want that goes on
//! reserves the address's recent block size from the bytes bucket (which may go into
//! debt for it), and the delivery settles the difference; a want that ends without
//! a block (a cancel, a presence, its client gone, or [`RESERVATION_TTL`] without an
//! answer) gives its reservation back. New wants go on only while the bucket is not
//! in debt, so a client asking for a whole file at once gets it at the rate.
//!
//! Bounded: a client's waiting wants count with the wants the router holds for it
//! against `--max-wants-per-client`; past that, new wants go straight to the router,
//! which refuses them as it would anyway. Reservations are one per want the router
//! holds.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use libp2p::PeerId;

use super::waiting::Waiting;
use crate::bitswap::{Message, WantEntry, WantKind};
use crate::keyed::{Map, Set};
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

    /// Takes `n` tokens whatever is left: what was already spent is paid for, so the
    /// bucket may go into debt, repaid as it refills.
    pub fn charge(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.tokens -= n as f64;
    }

    /// Gives back `n` tokens taken before (never past the burst).
    pub fn refund(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }

    /// Whole tokens held now (none while in debt).
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens.floor().max(0.0) as u64
    }

    /// Whether more was charged than it held (see [`Self::charge`]).
    pub fn in_debt(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens < 0.0
    }

    /// How long until what it owes is paid back (zero when it owes nothing).
    pub fn until_paid(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Whether it is full again (and so need not be kept).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// The limits: new wants a second and bytes a second per address key; 0 is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub wants_per_second: u32,
    pub bytes_per_second: u64,
}

/// What a block want reserves before any block was delivered to its address: the
/// usual chunk size of kubo, Helia and js-ipfs.
pub const FIRST_BLOCK_ESTIMATE: f64 = 256.0 * 1024.0;

/// A reservation with no answer for this long is given back: the router may hold a
/// want for an absent block for as long as its client wants it, and that costs no
/// bytes. (The router's default want timeout.)
pub const RESERVATION_TTL: Duration = Duration::from_secs(10);

/// One address key's buckets, for the limits that are on.
#[derive(Debug)]
struct Budget {
    wants: Option<Bucket>,
    bytes: Option<Bucket>,
    /// The size a block want reserves: a moving average of the blocks delivered.
    block_estimate: f64,
}

impl Budget {
    /// Both hold a second's worth (a want a second at least). A block bigger than
    /// the bytes burst still passes: the bucket goes into debt for it.
    fn new(rates: Rates, now: Instant) -> Self {
        let bucket = |rate: f64| (rate > 0.0).then(|| Bucket::new(rate, rate.max(1.0), now));
        Self {
            wants: bucket(f64::from(rates.wants_per_second)),
            bytes: bucket(rates.bytes_per_second as f64),
            block_estimate: FIRST_BLOCK_ESTIMATE,
        }
    }

    /// Reserves a block's bytes for a want that goes on; returns how many.
    fn reserve(&mut self, now: Instant) -> u64 {
        let Some(b) = &mut self.bytes else {
            return 0;
        };
        let n = self.block_estimate.round() as u64;
        b.charge(n, now);
        n
    }

    fn give_back(&mut self, n: u64, now: Instant) {
        if let Some(b) = &mut self.bytes {
            b.refund(n, now);
        }
    }

    /// A block of `size` bytes was delivered; `reserved` was held for it.
    fn settle(&mut self, size: u64, reserved: u64, now: Instant) {
        if let Some(b) = &mut self.bytes {
            b.refund(reserved, now);
            b.charge(size, now);
            // Recent blocks weigh most; a floor keeps reservations few per address.
            self.block_estimate = (0.8 * self.block_estimate + 0.2 * size as f64).max(1024.0);
        }
    }

    fn bytes_in_debt(&mut self, now: Instant) -> bool {
        self.bytes.as_mut().is_some_and(|b| b.in_debt(now))
    }

    /// Whether one more new want may go on now (taking its want token if so).
    fn admits(&mut self, now: Instant) -> bool {
        !self.bytes_in_debt(now) && self.wants.as_mut().is_none_or(|b| b.take(1, now) == 1)
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.wants.as_mut().is_none_or(|b| b.is_full(now))
            && self.bytes.as_mut().is_none_or(|b| b.is_full(now))
    }
}

/// Wants delayed so far, by the budget that held them (counters for metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delayed {
    /// Held back by the wants-per-second budget (or queued behind wants held
    /// before, when the bytes budget is not in debt).
    pub for_wants: u64,
    /// Held back because the address's bytes-per-second budget was in debt.
    pub for_bytes: u64,
}

pub struct WantRates {
    rates: Rates,
    keying: AddressKey,
    max_per_client: usize,
    of_client: Map<PeerId, IpNet>,
    budgets: Map<IpNet, Budget>,
    /// Clients' new wants waiting for their budget, oldest first.
    waiting: Map<PeerId, Waiting>,
    /// Bytes reserved for block wants that went on, and since when, per client.
    reserved: Map<PeerId, Map<cid::Cid, (u64, Instant)>>,
    delayed: Delayed,
}

impl WantRates {
    /// `rates` for each address key; a limit of 0 is off.
    pub fn new(rates: Rates, keying: AddressKey, max_per_client: usize) -> Self {
        Self {
            rates,
            keying,
            max_per_client,
            of_client: Map::default(),
            budgets: Map::default(),
            waiting: Map::default(),
            reserved: Map::default(),
            delayed: Delayed::default(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.rates.wants_per_second > 0 || self.rates.bytes_per_second > 0
    }

    pub fn delayed(&self) -> Delayed {
        self.delayed
    }

    /// Wants waiting over all clients.
    pub fn waiting(&self) -> usize {
        self.waiting.values().map(Waiting::len).sum()
    }

    /// `client`'s waiting wants.
    pub fn waiting_of(&self, client: &PeerId) -> usize {
        self.waiting.get(client).map_or(0, Waiting::len)
    }

    pub fn client_connected(&mut self, client: PeerId, ip: IpAddr) {
        if self.is_on() {
            self.of_client.entry(client).or_insert(self.keying.of(ip));
        }
    }

    /// The client is gone: its waiting wants are dropped, its reservations given
    /// back.
    pub fn client_gone(&mut self, client: &PeerId, now: Instant) {
        let key = self.of_client.remove(client);
        self.waiting.remove(client);
        let reserved = self.reserved.remove(client).unwrap_or_default();
        if let Some(budget) = key.and_then(|k| self.budgets.get_mut(&k)) {
            for (n, _) in reserved.into_values() {
                budget.give_back(n, now);
            }
        }
    }

    /// `msg` reaches `client`: its address's bytes budget pays for the blocks (less
    /// what their wants reserved), and a presence ends its want's reservation.
    pub fn delivered(&mut self, client: &PeerId, msg: &Message, now: Instant) {
        if self.rates.bytes_per_second == 0 {
            return;
        }
        let Some(key) = self.of_client.get(client) else {
            return;
        };
        let rates = self.rates;
        let budget = self
            .budgets
            .entry(*key)
            .or_insert_with(|| Budget::new(rates, now));
        let mut reserved = self.reserved.get_mut(client);
        let mut take = |cid: &cid::Cid| {
            reserved
                .as_mut()
                .and_then(|r| r.remove(cid))
                .map_or(0, |(n, _)| n)
        };
        for b in &msg.blocks {
            let n = take(&b.cid);
            budget.settle(b.data.len() as u64, n, now);
        }
        for p in &msg.presences {
            let n = take(&p.cid);
            budget.give_back(n, now);
        }
        if self.reserved.get(client).is_some_and(Map::is_empty) {
            self.reserved.remove(client);
        }
    }

    /// Bytes the client's address may still be delivered now without going into
    /// debt; unbounded without a bytes limit.
    pub fn bytes_room(&mut self, client: &PeerId, now: Instant) -> usize {
        if self.rates.bytes_per_second == 0 {
            return usize::MAX;
        }
        let Some(key) = self.of_client.get(client) else {
            return usize::MAX;
        };
        let rates = self.rates;
        let budget = self
            .budgets
            .entry(*key)
            .or_insert_with(|| Budget::new(rates, now));
        budget.bytes.as_mut().map_or(usize::MAX, |b| {
            usize::try_from(b.available(now)).unwrap_or(usize::MAX)
        })
    }

    /// What of `msg` goes to the router now; the rest waits. `held` says whether
    /// the router already holds a want of this client (those pass at no cost) and
    /// `holds` how many it holds for it. A full wantlist stays full: the wants held
    /// back are not dropped from it, only added later. At most `share` wants are newly
    /// held back (what is left of the address's share); past that they go on, for the
    /// router to refuse.
    pub fn admit(
        &mut self,
        client: PeerId,
        msg: &Message,
        held: impl Fn(&cid::Cid) -> bool,
        holds: usize,
        mut share: usize,
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
        let rates = self.rates;
        let budget = self
            .budgets
            .entry(key)
            .or_insert_with(|| Budget::new(rates, now));
        let reserved = self.reserved.entry(client).or_default();
        for w in &msg.wants {
            if w.cancel {
                waiting.forget(&w.cid);
                if let Some((n, _)) = reserved.remove(&w.cid) {
                    budget.give_back(n, now);
                }
            }
            // In order (a token is taken only when nothing else lets it pass); past
            // its cap the router refuses it either way, so it need not wait.
            let free = w.cancel || held(&w.cid);
            let admitted = !free && waiting.is_empty() && budget.admits(now);
            if admitted && w.kind == WantKind::Block && budget.bytes.is_some() {
                reserved.insert(w.cid, (budget.reserve(now), now));
            }
            if free || admitted || holds + waiting.len() >= self.max_per_client || share == 0 {
                // What goes on takes its place in the share at the router.
                if !w.cancel {
                    share = share.saturating_sub(1);
                }
                out.wants.push(w.clone());
            } else if waiting.contains(&w.cid) {
                // Asked again while waiting: a WANT-BLOCK upgrades a waiting
                // WANT-HAVE in its place.
                if w.kind == WantKind::Block {
                    waiting.replace(w);
                }
            } else {
                waiting.push(w);
                share -= 1;
                if budget.wants.is_none() || budget.bytes_in_debt(now) {
                    self.delayed.for_bytes += 1;
                } else {
                    self.delayed.for_wants += 1;
                }
            }
        }
        if waiting.is_empty() {
            self.waiting.remove(&client);
        }
        if reserved.is_empty() {
            self.reserved.remove(&client);
        }
        out
    }

    /// Reservations unanswered for [`RESERVATION_TTL`] are given back.
    fn expire_reservations(&mut self, now: Instant) {
        for (client, reserved) in &mut self.reserved {
            let budget = self
                .of_client
                .get(client)
                .and_then(|k| self.budgets.get_mut(k));
            let mut budget = budget;
            reserved.retain(|_, (n, at)| {
                let keep = now.saturating_duration_since(*at) < RESERVATION_TTL;
                if let (false, Some(b)) = (keep, budget.as_mut()) {
                    b.give_back(*n, now);
                }
                keep
            });
        }
        self.reserved.retain(|_, r| !r.is_empty());
    }

    /// The waiting wants whose budget has come back, per client; budgets full again
    /// are dropped. The peers of one address take its wants tokens in turn, one want
    /// each; an address out of bytes debt has its waiting wants go on (their blocks
    /// are charged when they are delivered).
    pub fn release(&mut self, now: Instant) -> Vec<(PeerId, Message)> {
        self.expire_reservations(now);
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
                let Some(budget) = self.budgets.get_mut(key) else {
                    continue;
                };
                if !waiting.is_empty() && budget.admits(now) {
                    if let Some(w) = waiting.pop() {
                        if w.kind == WantKind::Block && budget.bytes.is_some() {
                            let n = budget.reserve(now);
                            self.reserved
                                .entry(*client)
                                .or_default()
                                .insert(w.cid, (n, now));
                        }
                        released[i].push(w);
                    }
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
        let waiting_keys: Set<IpNet> = self
            .waiting
            .keys()
            .filter_map(|c| self.of_client.get(c).copied())
            .collect();
        self.budgets
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

    #[test]
    fn a_charged_bucket_goes_into_debt_and_pays_it_back_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000.0, 1000.0, t0);
        b.charge(2500, t0);
        assert!(b.in_debt(t0));
        assert_eq!(b.available(t0), 0);
        // 1500 owed at 1000 a second: still owing at 1.4 s, clear at 1.6 s.
        assert!(b.in_debt(t0 + Duration::from_millis(1400)));
        assert!(!b.in_debt(t0 + Duration::from_millis(1600)));
        assert_eq!(b.available(t0 + Duration::from_millis(1600)), 100);
        assert!(b.is_full(t0 + Duration::from_secs(10)));
    }

    const HEAVY_IP: &str = "198.51.100.1";
    const LIGHT_IP: &str = "203.0.113.7";

    fn cid(i: u32) -> cid::Cid {
        crate::fixtures::raw_block(i).cid
    }

    fn ask(i: u32) -> Message {
        crate::fixtures::wants(vec![crate::fixtures::want(cid(i), WantKind::Block, true)])
    }

    /// The router's answer to a want: a block of `size` bytes, or DONT_HAVE.
    fn answer(cid: cid::Cid, size: Option<u64>) -> Message {
        match size {
            Some(n) => crate::fixtures::blocks(&[crate::bitswap::Block {
                cid,
                data: vec![0u8; n as usize].into(),
            }]),
            None => crate::fixtures::presence(cid, crate::bitswap::PresenceKind::DontHave),
        }
    }

    /// A client that keeps `window` block wants out, against a simulated router that
    /// answers each want that goes on after a random delay, with a block of
    /// `size(g)` bytes or (one in `absent_one_in`) DONT_HAVE; the engine's 100 ms
    /// tick releases waiting wants. Asserts that the bytes delivered by any time
    /// `t` stay within burst + rate × t + `slack`, that a light client of another
    /// address, sending meanwhile, never waits, and that once the heavy client
    /// stops asking nothing waits and nothing stays reserved.
    fn simulate(
        case: usize,
        g: &mut XorShift,
        rate: u64,
        window: usize,
        size: &dyn Fn(&mut XorShift) -> u64,
        absent_one_in: u64,
        slack: u64,
    ) {
        let t0 = Instant::now();
        let rates = Rates {
            wants_per_second: 0,
            bytes_per_second: rate,
        };
        let mut r = WantRates::new(rates, AddressKey::default(), 16 * 1024);
        let (heavy, light) = (crate::fixtures::peer(1), crate::fixtures::peer(2));
        r.client_connected(heavy, HEAVY_IP.parse().unwrap());
        r.client_connected(light, LIGHT_IP.parse().unwrap());
        // The router's wants of the heavy client: when each is answered, and how.
        let mut out: Vec<(Instant, cid::Cid, Option<u64>)> = Vec::new();
        let schedule = |out: &mut Vec<_>, msg: &Message, now, g: &mut XorShift| {
            for w in &msg.wants {
                let latency = Duration::from_micros(g.next() % 200_000);
                let block = (!g.next().is_multiple_of(absent_one_in)).then(|| size(g));
                out.push((now + latency, w.cid, block));
            }
        };
        let (mut now, mut next_tick, mut delivered) = (t0, t0, 0u64);
        let (mut next, mut light_next) = (0u32, 1_000_000u32);
        while (next as usize) < window {
            let passed = r.admit(heavy, &ask(next), |_| false, 0, usize::MAX, now);
            schedule(&mut out, &passed, now, g);
            next += 1;
        }
        for step in 0..300 {
            now += Duration::from_micros(g.next() % 50_000);
            let (due, later): (Vec<_>, Vec<_>) = out.drain(..).partition(|(at, ..)| *at <= now);
            out = later;
            for (_, cid, block) in due {
                delivered += block.unwrap_or(0);
                r.delivered(&heavy, &answer(cid, block), now);
                // Its window has room again: a new want.
                let passed = r.admit(heavy, &ask(next), |_| false, 0, usize::MAX, now);
                schedule(&mut out, &passed, now, g);
                next += 1;
            }
            if now >= next_tick {
                for (client, msg) in r.release(now) {
                    assert_eq!(client, heavy, "case {case}: only the heavy client waits");
                    schedule(&mut out, &msg, now, g);
                }
                next_tick += Duration::from_millis(100);
            }
            let allowed = rate as f64 * (1.0 + (now - t0).as_secs_f64()) + slack as f64;
            assert!(
                delivered as f64 <= allowed,
                "case {case} step {step}: {delivered} delivered, {allowed} allowed"
            );
            assert!(out.len() + r.waiting() <= window, "case {case}: the window");
            // The light client: a small block now and then, well under its rate.
            if g.next().is_multiple_of(4) {
                let passed = r.admit(light, &ask(light_next), |_| false, 0, usize::MAX, now);
                assert_eq!(
                    passed.wants.len(),
                    1,
                    "case {case}: the other address waited"
                );
                let block = Some(1 + g.next() % 100);
                r.delivered(&light, &answer(cid(light_next), block), now);
                light_next += 1;
            }
        }
        assert_eq!(r.delayed().for_wants, 0, "no wants limit");
        // Stopping: the last answers arrive, the waiting wants go on once the debt is
        // paid, their answers arrive, and then nothing is held for anyone.
        let mut later = now;
        for _ in 0..=window {
            for (_, cid, block) in out.drain(..) {
                r.delivered(&heavy, &answer(cid, block), later);
            }
            // A debt of at most a window of blocks, paid in 1000 s.
            later += Duration::from_secs(1000);
            for (_, msg) in r.release(later) {
                out.extend(msg.wants.iter().map(|w| (later, w.cid, Some(1))));
            }
        }
        assert_eq!((r.waiting(), out.len()), (0, 0), "case {case}");
        r.release(later + Duration::from_secs(1000));
        assert!(r.reserved.is_empty() && r.budgets.is_empty(), "case {case}");
    }

    /// Random rates, block sizes up to twice the burst, windows and timings: what a
    /// heavy client gets stays within burst + rate × t + one window of its largest
    /// blocks (a reservation may underestimate each of them).
    #[test]
    fn delivered_bytes_stay_within_burst_rate_and_one_window_and_others_never_wait() {
        let mut g = XorShift(0x0005_eedb_17e5);
        for case in 0..60 {
            let rate = 10_000 + g.next() % 1_000_000;
            let max_block = 1 + g.next() % (2 * rate);
            let window = 1 + (g.next() % 32) as usize;
            let size = move |g: &mut XorShift| 1 + g.next() % max_block;
            simulate(
                case,
                &mut g,
                rate,
                window,
                &size,
                8,
                window as u64 * max_block,
            );
        }
    }

    /// Blocks the size a want reserves (kubo's chunks): however many wants the
    /// client keeps out, it gets no more than burst + rate × t + one block.
    #[test]
    fn with_blocks_as_estimated_a_whole_wantlist_at_once_gets_only_one_block_ahead() {
        let mut g = XorShift(0x000b_10c5);
        for case in 0..60 {
            let rate = 100_000 + g.next() % 10_000_000;
            let window = 1 + (g.next() % 256) as usize;
            let block = FIRST_BLOCK_ESTIMATE as u64;
            simulate(case, &mut g, rate, window, &move |_| block, 5, block);
        }
    }
}
