//! Fair scheduling among clients when the backends are the bottleneck: start-time
//! fair queueing, by bytes. Every want new to the proxy gets a start tag in a virtual
//! time measured in bytes: its client's previous finish tag, or the virtual time now
//! if that is later (an idle client banks no credit), and the client's finish tag
//! moves on by what the want will cost (its recent average block size). The virtual
//! time is the largest tag the backends have answered so far.
//!
//! The tag orders a want twice: in the proxy's queue for a backend (lowest first),
//! and at the backend itself, which serves one peer (the proxy) highest priority
//! first; the priority sent is the tag turned around. So a light client's wants,
//! tagged near the virtual time, go ahead of a heavy client's, whose tags run far
//! ahead, and the two are served in turn by bytes: one client with 16,384 wants
//! cannot starve one with 10. Pure; bounded by the clients connected (a client's
//! lane is forgotten when it leaves).

use libp2p::PeerId;

use crate::bitswap::WantKind;
use crate::keyed::Map;

/// What a block want is taken to cost before the client has received any block:
/// the chunk size kubo and Helia write by default.
const FIRST_BLOCK_COST: u64 = 256 * 1024;
/// What a HAVE want costs: its answer is a few dozen bytes, but it still takes a
/// turn at the backend.
const HAVE_COST: u64 = 1024;

#[derive(Debug, Clone, Copy)]
struct Lane {
    /// Where this client's next want starts, unless the virtual time is later.
    finish: u64,
    /// Its average block size (a moving average over its last blocks).
    block_cost: u64,
}

#[derive(Debug, Default)]
pub(super) struct FairClock {
    /// Off: every want is tagged in arrival order (oldest first, whoever asked).
    fair: bool,
    now: u64,
    /// The next arrival tag when off.
    arrivals: u64,
    lanes: Map<PeerId, Lane>,
}

impl FairClock {
    pub(super) fn new(fair: bool) -> Self {
        Self {
            fair,
            ..Self::default()
        }
    }

    /// The start tag of a new want of `client`, charging the client its cost.
    pub(super) fn tag(&mut self, client: PeerId, kind: WantKind) -> u64 {
        if !self.fair {
            // A KiB apart: each gets a priority of its own (see [`priority`]).
            let tag = self.arrivals;
            self.arrivals = self.arrivals.wrapping_add(1024);
            return tag;
        }
        let now = self.now;
        let lane = self.lanes.entry(client).or_insert(Lane {
            finish: now,
            block_cost: FIRST_BLOCK_COST,
        });
        let start = lane.finish.max(now);
        let cost = match kind {
            WantKind::Block => lane.block_cost,
            WantKind::Have => HAVE_COST,
        };
        lane.finish = start.saturating_add(cost.max(1));
        start
    }

    /// A backend answered the want tagged `tag`: virtual time is at least there.
    pub(super) fn answered(&mut self, tag: u64) {
        self.now = self.now.max(tag);
    }

    /// `client` received a block of `bytes`: its later wants cost about that much.
    pub(super) fn delivered(&mut self, client: &PeerId, bytes: usize) {
        if let Some(lane) = self.lanes.get_mut(client) {
            // An eighth of the new size: a few odd blocks move it little.
            let bytes = bytes.max(1) as u64;
            lane.block_cost = (lane.block_cost * 7 + bytes).div_ceil(8);
        }
    }

    /// The client has left.
    pub(super) fn forget(&mut self, client: &PeerId) {
        self.lanes.remove(client);
    }

    #[cfg(test)]
    pub(super) fn lanes(&self) -> usize {
        self.lanes.len()
    }
}

/// The bitswap priority for a want tagged `tag`: earlier tags higher. In KiB, so the
/// positive half of i32 lasts a TiB of virtual time; then it wraps, and only the wants
/// in flight at that moment are out of order. Always at least 2^30.
pub(super) fn priority(tag: u64) -> i32 {
    const SPAN: u64 = 1 << 30;
    i32::MAX - ((tag >> 10) % SPAN) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes(&[0, 4, 0xca, 0xfe, 0, n]).expect("identity multihash")
    }

    /// The order in which a backend that serves lowest tag first would serve the
    /// tagged wants.
    fn served_order(tags: &mut [(u64, u8)]) -> Vec<u8> {
        tags.sort();
        tags.iter().map(|(_, c)| *c).collect()
    }

    #[test]
    fn a_light_client_goes_ahead_of_a_heavy_clients_backlog() {
        let (heavy, light) = (peer(1), peer(2));
        let mut clock = FairClock::new(true);
        let mut tags: Vec<(u64, u8)> = (0..1000)
            .map(|_| (clock.tag(heavy, WantKind::Block), 1))
            .collect();
        // The backend has served the first ten of the heavy client's wants.
        clock.answered(tags[9].0);
        tags.drain(..10);
        tags.extend((0..10).map(|_| (clock.tag(light, WantKind::Block), 2)));
        let order = served_order(&mut tags);
        // In turn: the light client's ten are among the next twenty served.
        let light_last = order.iter().rposition(|c| *c == 2).expect("light wants");
        assert!(
            light_last < 20,
            "light client's last want served {light_last}th"
        );
    }

    #[test]
    fn clients_share_by_bytes_not_by_wants() {
        let (big, small) = (peer(1), peer(2));
        let mut clock = FairClock::new(true);
        // Both have received enough blocks for their estimates to settle.
        clock.tag(big, WantKind::Block);
        clock.tag(small, WantKind::Block);
        for _ in 0..100 {
            clock.delivered(&big, 256 * 1024);
            clock.delivered(&small, 1024);
        }
        let start = clock.lanes[&big].finish.max(clock.lanes[&small].finish);
        clock.answered(start);
        let mut tags: Vec<(u64, u8)> = Vec::new();
        for _ in 0..2000 {
            tags.push((clock.tag(big, WantKind::Block), 1));
            tags.push((clock.tag(small, WantKind::Block), 2));
        }
        // Serve 2 MiB worth of virtual time (the small client has 2000 wants of
        // 1 KiB queued, the big one 2000 of 256 KiB): bytes per client about equal.
        tags.sort();
        let (mut big_bytes, mut small_bytes) = (0u64, 0u64);
        for (tag, c) in tags {
            if tag >= start + 2 * 1024 * 1024 {
                break;
            }
            match c {
                1 => big_bytes += 256 * 1024,
                _ => small_bytes += 1024,
            }
        }
        let ratio = big_bytes as f64 / small_bytes as f64;
        assert!((0.8..=1.25).contains(&ratio), "big/small bytes {ratio}");
    }

    #[test]
    fn an_idle_client_banks_no_credit() {
        let (busy, idle) = (peer(1), peer(2));
        let mut clock = FairClock::new(true);
        let first_idle = clock.tag(idle, WantKind::Block);
        for _ in 0..100 {
            let t = clock.tag(busy, WantKind::Block);
            clock.answered(t);
        }
        // The idle client comes back: it starts at the virtual time, not where it left.
        let back = clock.tag(idle, WantKind::Block);
        assert!(back > first_idle + 50 * FIRST_BLOCK_COST);
        assert_eq!(back, clock.now);
    }

    #[test]
    fn have_wants_cost_little_and_lanes_are_forgotten() {
        let c = peer(1);
        let mut clock = FairClock::new(true);
        let a = clock.tag(c, WantKind::Have);
        let b = clock.tag(c, WantKind::Have);
        assert_eq!(b - a, HAVE_COST);
        assert_eq!(clock.lanes(), 1);
        clock.forget(&c);
        assert_eq!(clock.lanes(), 0);
    }

    #[test]
    fn turned_off_it_serves_the_oldest_first() {
        let (heavy, light) = (peer(1), peer(2));
        let mut clock = FairClock::new(false);
        let mut tags: Vec<(u64, u8)> = (0..100)
            .map(|_| (clock.tag(heavy, WantKind::Block), 1))
            .collect();
        tags.extend((0..10).map(|_| (clock.tag(light, WantKind::Block), 2)));
        let order = served_order(&mut tags);
        assert_eq!(order.iter().position(|c| *c == 2), Some(100));
        let p: Vec<i32> = tags.iter().map(|(t, _)| priority(*t)).collect();
        assert!(
            p.windows(2).all(|w| w[0] > w[1]),
            "one priority each, falling"
        );
        assert_eq!(clock.lanes(), 0);
    }

    #[test]
    fn priorities_fall_as_tags_rise_and_stay_positive() {
        let mut last = priority(0);
        assert_eq!(last, i32::MAX);
        for kib in [1u64, 2, 1000, 1 << 20, (1 << 30) - 1] {
            let p = priority(kib << 10);
            assert!(p < last, "{kib} KiB");
            assert!(p >= 1 << 30);
            last = p;
        }
        // Past a TiB it starts over.
        assert_eq!(priority(1 << 40), i32::MAX);
    }
}
