//! Backend choice: the order in which a CID's want visits the healthy backends.

use cid::Cid;
use libp2p::PeerId;
use xxhash_rust::xxh3::Xxh3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Rendezvous (highest-random-weight) hashing of the CID over the backends: the
    /// same CID goes to the same backend from every replica, so repeated content is
    /// served from one cache, and a backend joining or leaving moves only its share.
    /// Loads are bounded: a backend holding more than its share of the wants in flight
    /// (see [`within_bound`]) is passed over for the next one in the CID's order.
    #[default]
    Rendezvous,
    /// Rotate through the backends; spreads load evenly with no cache affinity.
    RoundRobin,
}

/// Orders `candidates` (already sorted by peer ID, so every replica agrees) for `cid`.
/// `turn` is the round-robin position; rendezvous ignores it.
pub fn rank(policy: Policy, cid: &Cid, candidates: &mut [PeerId], turn: u64) {
    match policy {
        Policy::Rendezvous => {
            let digest = cid.hash().digest();
            candidates.sort_by_cached_key(|b| std::cmp::Reverse(score(b, digest)));
        }
        Policy::RoundRobin => {
            if !candidates.is_empty() {
                let k = (turn % candidates.len() as u64) as usize;
                candidates.rotate_left(k);
            }
        }
    }
}

/// Above this many wants in flight a backend may be passed over; below it, affinity
/// always wins (a backend this idle is not the bottleneck).
pub const LOAD_FLOOR: usize = 16;

/// How far above the average load a backend may go, as a fraction: 1.25 × average
/// (consistent hashing with bounded loads, Mirrokni et al. 2018). Hash shares alone
/// vary by several percent per backend, and the busiest one sets the pace of every
/// fetch that needs it; the bound costs little affinity, as only the overflow moves.
const LOAD_SLACK: (usize, usize) = (5, 4);

/// Whether a backend holding `load` wants may take one more, when `total` wants are in
/// flight over `backends` backends: at most `LOAD_SLACK` × the average once this one
/// is counted, and never refused below [`LOAD_FLOOR`].
pub fn within_bound(load: usize, total: usize, backends: usize) -> bool {
    let backends = backends.max(1);
    let (num, den) = LOAD_SLACK;
    // ceil(num/den × (total + 1) / backends), in integers.
    let cap = ((total + 1) * num).div_ceil(den * backends);
    load < cap.max(LOAD_FLOOR)
}

/// A stable score for (backend, content): xxh3 is the same on every platform and
/// release, unlike `std`'s hasher, so replicas route identically.
fn score(backend: &PeerId, digest: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&backend.to_bytes());
    h.update(digest);
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use multihash_codetable::{Code, MultihashDigest};
    use std::collections::HashMap;

    fn cid(i: u32) -> Cid {
        Cid::new_v1(0x55, Code::Sha2_256.digest(&i.to_le_bytes()))
    }

    fn peers(n: usize) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        v.sort();
        v
    }

    #[test]
    fn rendezvous_is_stable_and_balanced() {
        let backends = peers(4);
        let mut counts: HashMap<PeerId, usize> = HashMap::new();
        for i in 0..4000 {
            let mut a = backends.clone();
            rank(Policy::Rendezvous, &cid(i), &mut a, 0);
            let mut b = backends.clone();
            b.reverse();
            rank(Policy::Rendezvous, &cid(i), &mut b, 99);
            assert_eq!(a, b, "the order depends only on the CID and the set");
            *counts.entry(a[0]).or_default() += 1;
        }
        for (_, n) in counts {
            assert!((800..1200).contains(&n), "skewed share {n} of 4000");
        }
    }

    #[test]
    fn rendezvous_moves_only_the_lost_backends_share() {
        let backends = peers(4);
        let gone = backends[2];
        let rest: Vec<PeerId> = backends.iter().copied().filter(|b| *b != gone).collect();
        for i in 0..1000 {
            let mut all = backends.clone();
            rank(Policy::Rendezvous, &cid(i), &mut all, 0);
            let mut fewer = rest.clone();
            rank(Policy::Rendezvous, &cid(i), &mut fewer, 0);
            let expected: Vec<PeerId> = all.into_iter().filter(|b| *b != gone).collect();
            assert_eq!(
                fewer, expected,
                "failover order is the original order minus the lost one"
            );
        }
    }

    #[test]
    fn idle_backends_are_never_passed_over() {
        // Below the floor, whatever the others hold.
        for load in 0..LOAD_FLOOR {
            assert!(within_bound(load, load, 4), "load {load} of {load}");
            assert!(within_bound(load, load, 1000));
        }
        assert!(!within_bound(LOAD_FLOOR, LOAD_FLOOR, 4));
    }

    #[test]
    fn a_backend_may_hold_a_quarter_more_than_the_average() {
        // 400 in flight over 4 backends: average 100.25 once the new want counts, so
        // the cap is 126 (125.3 rounded up).
        assert!(within_bound(125, 400, 4));
        assert!(!within_bound(126, 400, 4));
        // With one backend there is nowhere else to go: it is always within bound.
        for load in [0, 16, 1000, 100_000] {
            assert!(within_bound(load, load, 1));
        }
        // Zero backends is not a division by zero.
        assert!(within_bound(0, 0, 0));
    }

    #[test]
    fn round_robin_rotates() {
        let backends = peers(3);
        let firsts: Vec<PeerId> = (0..6)
            .map(|t| {
                let mut a = backends.clone();
                rank(Policy::RoundRobin, &cid(1), &mut a, t);
                a[0]
            })
            .collect();
        assert_eq!(&firsts[..3], &backends[..]);
        assert_eq!(&firsts[3..], &backends[..]);
    }
}
