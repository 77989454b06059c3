//! The backend pool: which kubo nodes exist, and where each is in its life
//! (resolving its peer ID, dialing, connected, backing off). Pure: the engine performs
//! the [`Action`]s and reports outcomes back, so any source of backends (flags, a
//! file, the operator's watch channel) drives the same logic through [`Backends::set`].

pub mod resolve;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kitsune_common::backoff::Backoff;
use libp2p::{Multiaddr, PeerId};

pub use resolve::{ResolveError, Resolved};
pub use spec::BackendSpec;

/// What the engine must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the backend's RPC API who it is.
    Resolve(BackendSpec),
    /// Dial the backend.
    Dial { peer: PeerId, addrs: Vec<Multiaddr> },
    /// The backend may take wants.
    Up(PeerId),
    /// The backend must take no more wants; move its wants elsewhere.
    Down(PeerId),
    /// Close the connection (a backend removed from the set).
    Disconnect(PeerId),
}

/// Where a backend is in its life, as [`Backends::state_counts`] counts it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum BackendState {
    Resolving,
    Connecting,
    Connected,
    Backoff,
}

/// How the pool retries and how long a dial may take.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Exponential in the consecutive failures, capped, jittered by half so a fleet of
    /// proxies does not retry in lockstep.
    pub retry: Backoff,
    /// How long a dial may take before it counts as failed.
    pub dial_timeout: Duration,
}

/// 250 ms doubling to 30 s, each delay scaled into [0.5, 1.0] of itself.
pub const RETRY: Backoff = Backoff::must(Backoff::new(
    Duration::from_millis(250),
    Duration::from_secs(30),
    2.0,
    0.5,
));

impl Default for Timing {
    fn default() -> Self {
        Self {
            retry: RETRY,
            dial_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Resolving,
    Dialing { peer: PeerId, since: Instant },
    Connected { peer: PeerId },
    Waiting { until: Instant },
}

#[derive(Debug)]
struct Slot {
    state: State,
    /// Consecutive failures, for the backoff; reset on connect.
    failures: u32,
}

#[derive(Debug, Default)]
pub struct Backends {
    slots: BTreeMap<BackendSpec, Slot>,
    by_peer: HashMap<PeerId, BackendSpec>,
    timing: Timing,
}

impl Backends {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            ..Self::default()
        }
    }

    /// Replaces the backend set. New ones start resolving; removed ones are drained
    /// (their wants move elsewhere) and disconnected.
    pub fn set(&mut self, specs: impl IntoIterator<Item = BackendSpec>) -> Vec<Action> {
        let wanted: BTreeMap<BackendSpec, ()> = specs.into_iter().map(|s| (s, ())).collect();
        let mut actions = Vec::new();
        let removed: Vec<BackendSpec> = self
            .slots
            .keys()
            .filter(|s| !wanted.contains_key(*s))
            .cloned()
            .collect();
        for spec in removed {
            let slot = self.slots.remove(&spec).expect("listed");
            match slot.state {
                State::Connected { peer } => {
                    self.by_peer.remove(&peer);
                    actions.push(Action::Down(peer));
                    actions.push(Action::Disconnect(peer));
                }
                State::Dialing { peer, .. } => {
                    self.by_peer.remove(&peer);
                    actions.push(Action::Disconnect(peer));
                }
                _ => {}
            }
        }
        for spec in wanted.into_keys() {
            if !self.slots.contains_key(&spec) {
                self.slots.insert(
                    spec.clone(),
                    Slot {
                        state: State::Resolving,
                        failures: 0,
                    },
                );
                actions.push(Action::Resolve(spec));
            }
        }
        actions
    }

    /// The outcome of a [`Action::Resolve`].
    pub fn resolved(
        &mut self,
        spec: &BackendSpec,
        result: Result<Resolved, ResolveError>,
        now: Instant,
        jitter: f64,
    ) -> Vec<Action> {
        let Some(slot) = self.slots.get_mut(spec) else {
            return Vec::new(); // removed meanwhile
        };
        if slot.state != State::Resolving {
            return Vec::new();
        }
        match result {
            Ok(r) => {
                if let Some(other) = self.by_peer.get(&r.peer)
                    && other != spec
                {
                    tracing::warn!(backend = %spec, peer = %r.peer, also = %other,
                        "two backend addresses are the same kubo node; using one");
                    slot.failures += 1;
                    slot.state = State::Waiting {
                        until: now + self.timing.retry.max(),
                    };
                    return Vec::new();
                }
                self.by_peer.insert(r.peer, spec.clone());
                slot.state = State::Dialing {
                    peer: r.peer,
                    since: now,
                };
                vec![Action::Dial {
                    peer: r.peer,
                    addrs: r.addrs,
                }]
            }
            Err(e) => {
                let delay = self.timing.retry.delay(slot.failures, jitter);
                slot.failures += 1;
                tracing::warn!(backend = %spec, error = %e, retry_in = ?delay, "backend not reachable");
                slot.state = State::Waiting { until: now + delay };
                Vec::new()
            }
        }
    }

    /// A connection to `peer` is established.
    pub fn connected(&mut self, peer: PeerId) -> Vec<Action> {
        let Some(slot) = self.by_peer.get(&peer).and_then(|s| self.slots.get_mut(s)) else {
            return Vec::new();
        };
        match slot.state {
            State::Dialing { peer: p, .. } if p == peer => {
                slot.state = State::Connected { peer };
                slot.failures = 0;
                vec![Action::Up(peer)]
            }
            _ => Vec::new(),
        }
    }

    /// The last connection to `peer` closed, or a dial to it failed.
    pub fn disconnected(&mut self, peer: PeerId, now: Instant, jitter: f64) -> Vec<Action> {
        let Some(spec) = self.by_peer.get(&peer).cloned() else {
            return Vec::new();
        };
        let slot = self.slots.get_mut(&spec).expect("by_peer follows slots");
        let mut actions = Vec::new();
        match slot.state {
            State::Connected { .. } => actions.push(Action::Down(peer)),
            State::Dialing { .. } => {}
            _ => return actions,
        }
        self.by_peer.remove(&peer);
        // Re-resolve after the backoff: the node may come back with a new peer ID.
        let delay = self.timing.retry.delay(slot.failures, jitter);
        slot.failures += 1;
        slot.state = State::Waiting { until: now + delay };
        actions
    }

    /// Starts due retries and gives up on dials that hang.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (spec, slot) in &mut self.slots {
            match slot.state {
                State::Waiting { until } if until <= now => {
                    slot.state = State::Resolving;
                    actions.push(Action::Resolve(spec.clone()));
                }
                State::Dialing { peer, since } if now - since > self.timing.dial_timeout => {
                    self.by_peer.remove(&peer);
                    slot.failures += 1;
                    slot.state = State::Waiting {
                        until: now + self.timing.retry.base(),
                    };
                    actions.push(Action::Disconnect(peer));
                }
                _ => {}
            }
        }
        actions
    }

    /// The configured backend behind `peer`.
    pub fn spec_of(&self, peer: &PeerId) -> Option<&BackendSpec> {
        self.by_peer.get(peer)
    }

    /// Is `peer` a backend we dialed or are connected to?
    pub fn is_backend(&self, peer: &PeerId) -> bool {
        self.by_peer.contains_key(peer)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many backends are in each state, for the metrics.
    pub fn state_counts(&self) -> [(BackendState, i64); 4] {
        let mut c = [0i64; 4];
        for slot in self.slots.values() {
            let i = match slot.state {
                State::Resolving => 0,
                State::Dialing { .. } => 1,
                State::Connected { .. } => 2,
                State::Waiting { .. } => 3,
            };
            c[i] += 1;
        }
        [
            (BackendState::Resolving, c[0]),
            (BackendState::Connecting, c[1]),
            (BackendState::Connected, c[2]),
            (BackendState::Backoff, c[3]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16) -> BackendSpec {
        BackendSpec::from_multiaddr(&format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()).unwrap()
    }

    fn resolved(peer: PeerId) -> Result<Resolved, ResolveError> {
        Ok(Resolved {
            peer,
            addrs: vec![
                format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
                    .parse()
                    .unwrap(),
            ],
        })
    }

    #[test]
    fn lifecycle_resolve_dial_up_down_and_reresolve_with_a_new_peer_id() {
        let t = Instant::now();
        let mut b = Backends::default();
        assert_eq!(b.set([spec(5001)]), vec![Action::Resolve(spec(5001))]);
        let p1 = PeerId::random();
        let a = b.resolved(&spec(5001), resolved(p1), t, 0.5);
        assert!(matches!(&a[..], [Action::Dial { peer, .. }] if *peer == p1));
        assert!(b.is_backend(&p1));
        assert_eq!(b.connected(p1), vec![Action::Up(p1)]);
        assert_eq!(b.disconnected(p1, t, 0.0), vec![Action::Down(p1)]);
        assert!(!b.is_backend(&p1));
        assert!(b.tick(t).is_empty(), "backs off first");
        assert_eq!(
            b.tick(t + Duration::from_secs(1)),
            vec![Action::Resolve(spec(5001))]
        );
        let p2 = PeerId::random();
        b.resolved(&spec(5001), resolved(p2), t, 0.5);
        assert_eq!(b.connected(p2), vec![Action::Up(p2)]);
        assert!(
            b.connected(p1).is_empty(),
            "the old identity is not a backend any more"
        );
    }

    #[test]
    fn an_unreachable_backend_retries_with_growing_jittered_backoff() {
        let t = Instant::now();
        let mut b = Backends::default();
        b.set([spec(5001)]);
        let mut at = t;
        let mut delays = Vec::new();
        for _ in 0..10 {
            let err = Err(ResolveError::NoAddress("x".into()));
            assert!(b.resolved(&spec(5001), err, at, 0.99).is_empty());
            // Find when it retries.
            let mut probe = at;
            loop {
                probe += Duration::from_millis(50);
                if !b.tick(probe).is_empty() {
                    break;
                }
            }
            delays.push(probe - at);
            at = probe;
        }
        assert!(delays[1] > delays[0] && delays[4] > delays[2]);
        assert!(
            delays[9] <= Duration::from_secs(31),
            "capped: {:?}",
            delays[9]
        );
        let bo = RETRY;
        assert!(bo.delay(3, 0.0) < bo.delay(3, 0.99));
    }

    #[test]
    fn removing_a_connected_backend_drains_and_disconnects_it() {
        let t = Instant::now();
        let mut b = Backends::default();
        b.set([spec(5001), spec(5002)]);
        let p = PeerId::random();
        b.resolved(&spec(5001), resolved(p), t, 0.5);
        b.connected(p);
        assert_eq!(
            b.set([spec(5002)]),
            vec![Action::Down(p), Action::Disconnect(p)]
        );
        assert_eq!(b.len(), 1);
        // A late result for a removed backend is ignored.
        assert!(b.resolved(&spec(5001), resolved(p), t, 0.5).is_empty());
        // Adding one back starts it afresh; unchanged ones are untouched.
        assert_eq!(
            b.set([spec(5002), spec(5003)]),
            vec![Action::Resolve(spec(5003))]
        );
    }

    #[test]
    fn a_hanging_dial_is_abandoned() {
        let t = Instant::now();
        let mut b = Backends::default();
        b.set([spec(5001)]);
        let p = PeerId::random();
        b.resolved(&spec(5001), resolved(p), t, 0.5);
        assert!(b.tick(t + Duration::from_secs(5)).is_empty());
        assert_eq!(
            b.tick(t + Duration::from_secs(16)),
            vec![Action::Disconnect(p)]
        );
        assert!(!b.is_backend(&p));
    }
}
