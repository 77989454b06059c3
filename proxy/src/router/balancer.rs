//! Backend choice: the order in which a CID's want visits the healthy backends.

use cid::Cid;
use libp2p::PeerId;
use xxhash_rust::xxh3::Xxh3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Policy {
    /// Rendezvous (highest-random-weight) hashing of the CID over the backends: the
    /// same CID goes to the same backend from every replica, so repeated content is
    /// served from one cache, and a backend joining or leaving moves only its share.
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
