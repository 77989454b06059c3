//! Dispatch: which backend a want goes to next, its queue and deadlines, and what the
//! clients are told when it is answered or every backend has said no.

use std::collections::BTreeMap;
use std::time::Instant;

use cid::Cid;
use libp2p::PeerId;

use std::cmp::Reverse;

use super::{Backend, Config, Router, State, balancer, fair, shedding};
use crate::bitswap::PresenceKind;
use crate::keyed::Set;
use balancer::Policy;

impl Router {
    /// Sends (or queues, or parks) a want that is not currently at any backend.
    pub(super) fn dispatch(&mut self, cid: Cid, now: Instant) {
        let Some(want) = self.wants.get(&cid) else {
            return;
        };
        let mut order: Vec<PeerId> = self
            .backends
            .keys()
            .filter(|b| !want.tried.contains(b))
            .copied()
            .collect();
        balancer::rank(self.cfg.policy, &cid, &mut order, self.turn);
        if order.is_empty() {
            self.exhaust(cid);
            return;
        }
        let first = choose_backend(&self.cfg, &self.backends, &order);
        self.turn = self.turn.wrapping_add(1);
        let want = self.wants.get_mut(&cid).expect("checked above");
        let tag = want.tag;
        let backend = self.backends.get_mut(&first).expect("ranked from backends");
        if backend.inflight.len() < self.cfg.max_inflight_per_backend {
            let (kind, priority) = (want.kind(), fair::priority(tag));
            backend.inflight.insert(cid);
            want.state = State::Sent {
                backend: first,
                kind,
                at: now,
            };
            self.push_deadline(cid, first, now);
            self.out.want(first, cid, kind, priority);
        } else if self.queued < self.cfg.max_queued_wants {
            let Some(at) = self.queue_for(first, &order, self.spared(&cid, &first)) else {
                self.stats.shed_wants += 1;
                self.shed.push(cid);
                self.exhaust(cid);
                return;
            };
            let backend = self.backends.get_mut(&at).expect("ranked from backends");
            backend.queue.push(Reverse((tag, cid)));
            backend.queued += 1;
            backend.meter.saturated(now);
            self.wants.get_mut(&cid).expect("checked above").state = State::Queued(at);
            self.queued += 1;
        } else {
            self.stats.refused_wants += 1;
            self.exhaust(cid);
        }
    }

    /// Where a want with no room anywhere waits: `first`, unless load shedding is on
    /// and its queue takes longer than `shed_after`; then the next backend in `order`
    /// whose queue does not. `None`: every one is too deep, the want is shed, unless
    /// `spare` (see [`Router::spared`]), and then it queues at `first`.
    fn queue_for(&self, first: PeerId, order: &[PeerId], spare: bool) -> Option<PeerId> {
        if self.cfg.shed_after.is_zero() {
            return Some(first);
        }
        let fits = |p: &PeerId| {
            self.backends.get(p).is_some_and(|b| {
                let outstanding = b.inflight.len() + b.queued + 1;
                !shedding::too_deep(outstanding, b.meter.rate(), self.cfg.shed_after)
            })
        };
        std::iter::once(&first)
            .chain(order.iter().filter(|p| **p != first))
            .find(|p| fits(p))
            .copied()
            .or(spare.then_some(first))
    }

    /// Whether fair scheduling gets `cid` answered in time at `backend` even though its
    /// queue is deep: some client wanting it holds fewer wants than the clients'
    /// average (so the deep backlog is not its own, and fair order serves it first),
    /// and its own wants, served in turn with every other client's at the backend's
    /// measured rate, take no longer than `shed_after`. A silent backend spares none.
    /// Without fair scheduling a want waits behind the whole queue: none is spared.
    fn spared(&self, cid: &Cid, backend: &PeerId) -> bool {
        let rate = self.backends.get(backend).and_then(|b| b.meter.rate());
        let (Some(rate), true) = (rate, self.cfg.fair_scheduling) else {
            return false;
        };
        let (total, clients) = (self.shares.total(), self.clients.len());
        let budget = rate * self.cfg.shed_after.as_secs_f64();
        self.wants.get(cid).is_some_and(|w| {
            w.wanters.keys().any(|c| {
                let held = self.client_wants(c);
                held.saturating_mul(clients) < total && (held * clients) as f64 <= budget
            })
        })
    }

    /// No backend can be asked: DONT_HAVE to the clients that asked for one; park.
    pub(super) fn exhaust(&mut self, cid: Cid) {
        let Some(want) = self.wants.get_mut(&cid) else {
            return;
        };
        want.state = State::Exhausted;
        let askers: Vec<PeerId> = want
            .wanters
            .keys()
            .filter(|c| {
                self.clients
                    .get(c)
                    .and_then(|w| w.get(&cid))
                    .is_some_and(|w| w.send_dont_have)
            })
            .copied()
            .collect();
        for client in askers {
            self.tell_client(client, cid, PresenceKind::DontHave);
        }
    }

    /// Frees whatever `state` holds at a backend (optionally telling it CANCEL),
    /// then lets that backend's queue move.
    pub(super) fn release(&mut self, cid: Cid, state: State, cancel: bool, now: Instant) {
        match state {
            State::Sent { backend, .. } => {
                if let Some(b) = self.backends.get_mut(&backend)
                    && b.inflight.remove(&cid)
                {
                    if cancel {
                        self.out.cancel(backend, cid);
                    }
                    self.pump(backend, now);
                }
            }
            State::Queued(backend) => {
                self.queued -= 1;
                self.unqueued(backend, now);
                self.compact_queue(backend);
            }
            State::Exhausted => {}
        }
    }

    /// Drops stale entries (cancelled or moved wants) from a backend's queue once they
    /// outnumber the live ones, so a client churning want/cancel cannot grow it.
    pub(super) fn compact_queue(&mut self, backend: PeerId) {
        let wants = &self.wants;
        if let Some(b) = self.backends.get_mut(&backend)
            && b.queue.len() > 2 * self.queued + 64
        {
            b.queue.retain(|Reverse((_, c))| {
                wants
                    .get(c)
                    .is_some_and(|w| w.state == State::Queued(backend))
            });
        }
    }

    /// Records when a want sent now times out. Stale entries (answered, cancelled or
    /// re-sent wants) are dropped once they outnumber the wants, for the same reason.
    pub(super) fn push_deadline(&mut self, cid: Cid, backend: PeerId, now: Instant) {
        self.deadlines
            .push_back((now + self.cfg.want_timeout, cid, backend));
        if self.deadlines.len() > 2 * self.wants.len() + 64 {
            let (wants, timeout) = (&self.wants, self.cfg.want_timeout);
            let mut kept = Set::default();
            self.deadlines.retain(|(deadline, c, b)| {
                let live = wants.get(c).is_some_and(|w| {
                    matches!(w.state, State::Sent { backend, at, .. } if backend == *b && at + timeout <= *deadline)
                });
                live && kept.insert(*c)
            });
        }
    }

    /// Sends queued wants to `backend` while it has room.
    pub(super) fn pump(&mut self, backend: PeerId, now: Instant) {
        loop {
            let Some(b) = self.backends.get_mut(&backend) else {
                return;
            };
            if b.inflight.len() >= self.cfg.max_inflight_per_backend {
                return;
            }
            let Some(Reverse((_, cid))) = b.queue.pop() else {
                return;
            };
            let Some(want) = self.wants.get_mut(&cid) else {
                continue;
            };
            if want.state != State::Queued(backend) {
                continue;
            }
            want.state = State::Exhausted;
            self.queued -= 1;
            self.unqueued(backend, now);
            self.dispatch(cid, now);
        }
    }

    /// One live entry left `backend`'s queue.
    fn unqueued(&mut self, backend: PeerId, now: Instant) {
        if let Some(b) = self.backends.get_mut(&backend) {
            b.queued = b.queued.saturating_sub(1);
            if b.queued == 0 {
                b.meter.unsaturated(now);
            }
        }
    }

    pub(super) fn tell_client(&mut self, client: PeerId, cid: Cid, kind: PresenceKind) {
        match kind {
            PresenceKind::Have => self.stats.haves_delivered += 1,
            PresenceKind::DontHave => self.stats.dont_haves_delivered += 1,
        }
        self.out.presence_to_client(client, cid, kind);
    }
}

/// The first backend in `order` (non-empty) that may take one more want: under
/// rendezvous, one within its load bound and with room; else the first with room;
/// else the first (the want queues there). Round-robin already spreads evenly.
fn choose_backend(cfg: &Config, backends: &BTreeMap<PeerId, Backend>, order: &[PeerId]) -> PeerId {
    if cfg.policy != Policy::Rendezvous || order.len() == 1 {
        return order[0];
    }
    let load = |b: &PeerId| backends.get(b).map_or(0, |b| b.inflight.len());
    let room = |b: &&PeerId| load(b) < cfg.max_inflight_per_backend;
    let total: usize = backends.values().map(|b| b.inflight.len()).sum();
    let n = backends.len();
    order
        .iter()
        .filter(room)
        .find(|b| balancer::within_bound(load(b), total, n))
        .or_else(|| order.iter().find(room))
        .copied()
        .unwrap_or(order[0])
}
