//! The routing core: which client wants what, which backend was asked, and what each
//! peer must be told next. Pure: no I/O and no clock (time is passed in), so every
//! rule here is unit-tested without a network.
//!
//! Model. Each client keeps its own wantlist. Identical wants from many clients become
//! one want per CID, sent to one backend at a time, in the order the balancing policy
//! gives. A backend's DONT_HAVE, a timeout or the backend's loss moves the want to the
//! next backend; only when every healthy backend has been tried are the clients that
//! asked for it told DONT_HAVE. A block goes once to each client that wants it, and the
//! want is then cleared everywhere, so a late copy from another backend is dropped.
//!
//! Priorities. Every client numbers its wants in its own space (kubo counts down from
//! i32::MAX per connection, Helia and js-ipfs send 1), and the backend sees the proxy
//! as one peer serving the highest priority first; forwarded as they are, a new kubo
//! client's wants would starve a Helia client's. So the proxy orders wants itself, by
//! fair queueing among clients (see `fair`; or oldest first when that is turned off),
//! and a client's priorities only order the wants within one message.

mod answers;
pub mod balancer;
mod config;
mod dispatch;
mod fair;
mod outbox;
mod shares;
mod shedding;
mod state;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use cid::Cid;
use libp2p::PeerId;

use crate::bitswap::{Block, Message, PresenceKind, WantEntry, WantKind};
use crate::keyed::{Map, Set};
pub use balancer::Policy;
pub use config::{BUSY_GRACE, Config, Stats};
pub use outbox::Outbox;
use state::{Backend, ClientWant, State, Want};

pub struct Router {
    cfg: Config,
    clients: Map<PeerId, Map<Cid, ClientWant>>,
    wants: Map<Cid, Want>,
    /// Healthy backends, sorted so every replica ranks them the same way.
    backends: BTreeMap<PeerId, Backend>,
    queued: usize,
    /// Send order of wants, for timeouts; stale entries are skipped.
    deadlines: VecDeque<(Instant, Cid, PeerId)>,
    turn: u64,
    /// The start tags of new wants: fair queueing among clients.
    fair: fair::FairClock,
    out: Outbox,
    stats: Stats,
    shares: shares::AddressShares,
    /// CIDs shed since the last [`Router::take_shed`].
    shed: Vec<Cid>,
    /// Wants per client held back outside the router (see `set_held_back`).
    held_back: Map<PeerId, usize>,
}

impl Router {
    pub fn new(cfg: Config) -> Self {
        Self {
            shares: shares::AddressShares::new(cfg.address_key, cfg.max_wants_per_address),
            fair: fair::FairClock::new(cfg.fair_scheduling),
            cfg,
            clients: Map::default(),
            wants: Map::default(),
            backends: BTreeMap::new(),
            queued: 0,
            deadlines: VecDeque::new(),
            turn: 0,
            out: Outbox::default(),
            stats: Stats::default(),
            shed: Vec::new(),
            held_back: Map::default(),
        }
    }

    /// Everything decided since the last call: the messages to send, per peer.
    pub fn take_outbox(&mut self) -> Outbox {
        std::mem::take(&mut self.out)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The CIDs shed since the last call (their wanters were told DONT_HAVE where
    /// asked): the caller tells its own clients why, and must call this after every
    /// event so the list stays short.
    pub fn take_shed(&mut self) -> Vec<Cid> {
        std::mem::take(&mut self.shed)
    }

    /// Distinct CIDs currently wanted by at least one client.
    pub fn wants_in_flight(&self) -> usize {
        self.wants.len()
    }

    pub fn queued_wants(&self) -> usize {
        self.queued
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    pub fn healthy_backends(&self) -> usize {
        self.backends.len()
    }

    pub fn is_healthy_backend(&self, peer: &PeerId) -> bool {
        self.backends.contains_key(peer)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether `client` holds a want of `cid`.
    pub fn client_has(&self, client: &PeerId, cid: &Cid) -> bool {
        self.clients
            .get(client)
            .is_some_and(|w| w.contains_key(cid))
    }

    /// Whether `client` holds a want of `cid`'s block itself (not only a WANT-HAVE).
    pub fn client_wants_block(&self, client: &PeerId, cid: &Cid) -> bool {
        self.clients
            .get(client)
            .and_then(|w| w.get(cid))
            .is_some_and(|w| w.kind == WantKind::Block)
    }

    /// How many wants a client holds (for tests and introspection).
    pub fn client_wants(&self, peer: &PeerId) -> usize {
        self.clients.get(peer).map_or(0, Map::len)
    }

    /// How many more wants the clients of `client`'s address key may hold.
    pub fn share_room(&self, client: &PeerId) -> usize {
        self.shares.room(client)
    }

    /// `client` now has `n` wants held back outside the router: they count against
    /// its own cap and its address's share as the router's own do, so no client or
    /// address can park more than its share anywhere.
    pub fn set_held_back(&mut self, client: &PeerId, n: usize) {
        let before = self.held_back.get(client).copied().unwrap_or(0);
        if n > before {
            self.shares.add(client, n - before);
        } else {
            self.shares.removed(client, before - n);
        }
        if n == 0 {
            self.held_back.remove(client);
        } else {
            self.held_back.insert(*client, n);
        }
    }

    /// Wants the clients of `ip`'s address key hold together.
    pub fn address_wants(&self, ip: std::net::IpAddr) -> usize {
        self.shares.held_by(ip)
    }

    // ---------------------------------------------------------------- clients

    /// A client connection from `ip`: the client's wants count against that
    /// address's share.
    pub fn client_address(&mut self, client: PeerId, ip: std::net::IpAddr) {
        self.shares.connected(client, ip);
    }

    /// A client's message: its wantlist (full or incremental). Blocks and presences
    /// from clients are not routed here (preload mode handles reverse traffic).
    pub fn client_message(&mut self, client: PeerId, msg: &Message, now: Instant) {
        if msg.full {
            // A full wantlist replaces this client's wants, and only this client's.
            let keep: Set<Cid> = msg
                .wants
                .iter()
                .filter(|w| !w.cancel)
                .map(|w| w.cid)
                .collect();
            let gone: Vec<Cid> = self
                .clients
                .get(&client)
                .map(|w| w.keys().filter(|c| !keep.contains(c)).copied().collect())
                .unwrap_or_default();
            for cid in gone {
                self.remove_want(client, cid, now);
            }
        }
        let tags = self.number(client, &msg.wants);
        for (entry, tag) in msg.wants.iter().zip(tags) {
            if entry.cancel {
                self.remove_want(client, entry.cid, now);
            } else {
                self.add_want(client, entry, tag, now);
            }
        }
    }

    /// The start tags (see `fair`) of a message's wants that are new to the proxy
    /// (`None` for the others, which keep theirs, and for cancels), taken in the
    /// client's order: highest priority first, then as listed.
    fn number(&mut self, client: PeerId, entries: &[WantEntry]) -> Vec<Option<u64>> {
        let mut rank: Vec<usize> = (0..entries.len())
            .filter(|&i| !entries[i].cancel && !self.wants.contains_key(&entries[i].cid))
            .collect();
        rank.sort_by_key(|&i| std::cmp::Reverse(entries[i].priority));
        let mut out = vec![None; entries.len()];
        for i in rank {
            out[i] = Some(self.fair.tag(client, entries[i].kind));
        }
        out
    }

    /// The client is gone: its wants are cancelled (and cancelled at the backends
    /// where no one else wants them).
    pub fn client_disconnected(&mut self, client: PeerId, now: Instant) {
        self.fair.forget(&client);
        if let Some(wants) = self.clients.remove(&client) {
            self.shares.removed(&client, wants.len());
            for cid in wants.into_keys() {
                self.drop_wanter(client, cid, now);
            }
        }
        self.shares.forget(&client);
    }

    /// `tag` is the proxy's, used if this want is new to the proxy.
    fn add_want(&mut self, client: PeerId, entry: &WantEntry, tag: Option<u64>, now: Instant) {
        let held_back = self.held_back.get(&client).copied().unwrap_or(0);
        let wants = self.clients.entry(client).or_default();
        let existing = wants.get(&entry.cid).copied();
        if existing.is_none() && wants.len() + held_back >= self.cfg.max_wants_per_client {
            self.stats.refused_wants += 1;
            if entry.send_dont_have {
                self.tell_client(client, entry.cid, PresenceKind::DontHave);
            }
            return;
        }
        if existing.is_none() && !self.shares.has_room(&client) {
            self.stats.refused_address_wants += 1;
            if entry.send_dont_have {
                self.tell_client(client, entry.cid, PresenceKind::DontHave);
            }
            return;
        }
        // A WANT-HAVE never downgrades a WANT-BLOCK from the same client.
        let kind = match existing {
            Some(w) if w.kind == WantKind::Block => WantKind::Block,
            _ => entry.kind,
        };
        wants.insert(
            entry.cid,
            ClientWant {
                kind,
                send_dont_have: entry.send_dont_have,
            },
        );
        if existing.is_none() {
            self.shares.added(&client);
        }

        match self.wants.get_mut(&entry.cid) {
            None => {
                // Not numbered when the same message cancelled it first.
                let tag = tag.unwrap_or_else(|| self.fair.tag(client, kind));
                self.wants.insert(
                    entry.cid,
                    Want {
                        wanters: BTreeMap::from([(client, kind)]),
                        state: State::Exhausted,
                        tried: Vec::new(),
                        tag,
                    },
                );
                self.dispatch(entry.cid, now);
            }
            Some(want) => {
                want.wanters.insert(client, kind);
                match want.state {
                    State::Sent {
                        backend,
                        kind: WantKind::Have,
                        ..
                    } if kind == WantKind::Block => {
                        // Someone now wants the block itself: ask again, as WANT-BLOCK.
                        want.state = State::Sent {
                            backend,
                            kind: WantKind::Block,
                            at: now,
                        };
                        let priority = fair::priority(want.tag);
                        self.push_deadline(entry.cid, backend, now);
                        self.out.want(backend, entry.cid, WantKind::Block, priority);
                    }
                    State::Exhausted => {
                        // Asked again: the content may have arrived since; retry all.
                        want.tried.clear();
                        self.dispatch(entry.cid, now);
                    }
                    _ => {}
                }
            }
        }
    }

    fn remove_want(&mut self, client: PeerId, cid: Cid, now: Instant) {
        let removed = self
            .clients
            .get_mut(&client)
            .and_then(|w| w.remove(&cid))
            .is_some();
        if removed {
            self.shares.removed(&client, 1);
            self.drop_wanter(client, cid, now);
        }
        if self.clients.get(&client).is_some_and(Map::is_empty) {
            self.clients.remove(&client);
        }
    }

    /// Removes one wanter of `cid`; the last one out cancels at the backend.
    fn drop_wanter(&mut self, client: PeerId, cid: Cid, now: Instant) {
        let Some(want) = self.wants.get_mut(&cid) else {
            return;
        };
        want.wanters.remove(&client);
        if want.wanters.is_empty() {
            let want = self.wants.remove(&cid).expect("present");
            self.release(cid, want.state, true, now);
        }
    }

    // ---------------------------------------------------------------- backends

    /// A backend is connected and may take wants. Parked wants get another chance.
    pub fn backend_up(&mut self, backend: PeerId, now: Instant) {
        if self.backends.contains_key(&backend) {
            return;
        }
        self.backends.insert(backend, Backend::default());
        let mut parked: Vec<Cid> = self
            .wants
            .iter()
            .filter(|(_, w)| w.state == State::Exhausted)
            .map(|(c, _)| *c)
            .collect();
        // In CID order, not the map's random one: the same events give the same routing.
        parked.sort();
        for cid in parked {
            self.dispatch(cid, now);
        }
    }

    /// A backend is gone: everything it held or queued moves to the next backend.
    pub fn backend_down(&mut self, backend: PeerId, now: Instant) {
        let Some(b) = self.backends.remove(&backend) else {
            return;
        };
        let mut moved: Vec<Cid> = b.inflight.into_iter().collect();
        moved.extend(b.queue.into_iter().map(|Reverse((_, cid))| cid));
        moved.sort();
        moved.dedup();
        for cid in moved {
            let Some(want) = self.wants.get_mut(&cid) else {
                continue;
            };
            match want.state {
                State::Sent { backend: b, .. } if b == backend => {
                    want.tried.push(backend);
                    self.stats.failovers += 1;
                }
                State::Queued(b) if b == backend => self.queued -= 1,
                _ => continue,
            }
            want.state = State::Exhausted;
            self.dispatch(cid, now);
        }
    }

    /// A message from a backend: blocks and presences for our wants; its own wants
    /// (it fetching from the proxy) are answered DONT_HAVE where asked. Preload mode
    /// calls [`Router::backend_replies`] and routes the wants itself.
    pub fn backend_message(&mut self, backend: PeerId, msg: &Message, now: Instant) {
        self.backend_replies(backend, msg, now);
        self.refuse_backend_wants(backend, &msg.wants);
    }

    /// A backend's blocks and presences, answering clients' wants.
    pub fn backend_replies(&mut self, backend: PeerId, msg: &Message, now: Instant) {
        if (!msg.blocks.is_empty() || !msg.presences.is_empty())
            && let Some(b) = self.backends.get_mut(&backend)
        {
            b.last_answer = Some(now);
            b.meter
                .answered(msg.blocks.len() + msg.presences.len(), now);
        }
        for block in &msg.blocks {
            self.deliver(Some(backend), block, now);
        }
        for p in &msg.presences {
            self.presence(backend, p.cid, p.kind, now);
        }
    }

    /// A backend's wants, all answered DONT_HAVE where asked: nothing is forwarded.
    pub fn refuse_backend_wants(&mut self, backend: PeerId, wants: &[WantEntry]) {
        for w in wants {
            if !w.cancel && w.send_dont_have {
                self.out
                    .presence_to_backend(backend, w.cid, PresenceKind::DontHave);
            }
        }
    }

    /// A verified block that came from elsewhere (preload's reverse path): it answers
    /// any client waiting for it, as a backend's copy would, and the want is cancelled
    /// at the backend that still holds it.
    pub fn offer_block(&mut self, block: &Block, now: Instant) {
        if self.wants.contains_key(&block.cid) {
            self.deliver(None, block, now);
        }
    }

    /// Withdraws `client`'s want of `cid` if it is parked (every backend said no):
    /// nothing of it is at a backend, so nothing moves and no time is needed. A want
    /// that is not parked stays; its next answer reaches the client again.
    pub fn withdraw_parked(&mut self, client: PeerId, cid: Cid) {
        if !self
            .wants
            .get(&cid)
            .is_some_and(|w| w.state == State::Exhausted)
        {
            return;
        }
        let removed = self
            .clients
            .get_mut(&client)
            .and_then(|w| w.remove(&cid))
            .is_some();
        if self.clients.get(&client).is_some_and(Map::is_empty) {
            self.clients.remove(&client);
        }
        if removed {
            let want = self.wants.get_mut(&cid).expect("checked above");
            want.wanters.remove(&client);
            if want.wanters.is_empty() {
                self.wants.remove(&cid);
            }
        }
    }

    /// The healthy backend `cid`'s wants go to first under rendezvous hashing, which
    /// every replica computes alike (whatever `--balance` says): a preload of `cid` is
    /// fetched by the backend that will later serve it.
    pub fn backend_for(&self, cid: &Cid) -> Option<PeerId> {
        let mut order: Vec<PeerId> = self.backends.keys().copied().collect();
        balancer::rank(Policy::Rendezvous, cid, &mut order, 0);
        order.first().copied()
    }

    /// Moves on every want whose backend has not answered in time.
    pub fn tick(&mut self, now: Instant) {
        for b in self.backends.values_mut() {
            b.meter.roll(now);
        }
        self.shrink();
        while let Some(&(deadline, cid, backend)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(want) = self.wants.get_mut(&cid) else {
                continue;
            };
            match want.state {
                State::Sent {
                    backend: b,
                    at,
                    kind,
                } if b == backend && at + self.cfg.want_timeout <= now => {
                    let timeout = self.cfg.want_timeout;
                    let busy = self
                        .backends
                        .get(&backend)
                        .is_some_and(|b| b.last_answer.is_some_and(|t| t + timeout > now));
                    if busy && at + timeout * BUSY_GRACE > now {
                        // Answering others: ask again and wait another round.
                        self.stats.refreshes += 1;
                        self.out.want(backend, cid, kind, fair::priority(want.tag));
                        self.deadlines.push_back((now + timeout, cid, backend));
                        continue;
                    }
                    let want = self.wants.get_mut(&cid).expect("matched above");
                    want.tried.push(backend);
                    self.stats.timeouts += 1;
                    self.stats.failovers += 1;
                    let state = want.state;
                    self.release(cid, state, true, now);
                    if let Some(w) = self.wants.get_mut(&cid) {
                        w.state = State::Exhausted;
                    }
                    self.dispatch(cid, now);
                }
                _ => {}
            }
        }
    }

    /// Gives back the room a flood left behind: tables sized for one never shrink by
    /// themselves, and at 65,536 wants they are tens of MiB (the want table, the
    /// deadlines, the backends' queues). Kept at twice what is live, so a steady
    /// load does not grow and shrink them every tick.
    fn shrink(&mut self) {
        fn roomy(capacity: usize, len: usize) -> bool {
            capacity > 1024 && capacity > 4 * len
        }
        if roomy(self.wants.capacity(), self.wants.len()) {
            self.wants.shrink_to(2 * self.wants.len());
        }
        if roomy(self.clients.capacity(), self.clients.len()) {
            self.clients.shrink_to(2 * self.clients.len());
        }
        if roomy(self.deadlines.capacity(), self.deadlines.len()) {
            self.deadlines.shrink_to(2 * self.deadlines.len());
        }
        for b in self.backends.values_mut() {
            if roomy(b.queue.capacity(), b.queue.len()) {
                b.queue.shrink_to(2 * b.queue.len());
            }
            if roomy(b.inflight.capacity(), b.inflight.len()) {
                b.inflight.shrink_to(2 * b.inflight.len());
            }
        }
    }
}
