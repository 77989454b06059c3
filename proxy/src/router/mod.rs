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
//! client's wants would starve a Helia client's. So the proxy numbers wants itself,
//! oldest first, and a client's priorities only order the wants within one message.

pub mod balancer;
mod dispatch;
mod outbox;
mod shares;
mod shedding;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use cid::Cid;
use libp2p::PeerId;

use crate::bitswap::{Block, Message, PresenceKind, WantEntry, WantKind};
pub use balancer::Policy;
pub use outbox::Outbox;

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Policy,
    /// Wants one client may hold; more are refused (DONT_HAVE where asked).
    pub max_wants_per_client: usize,
    /// Wants outstanding at one backend. kubo queues at most 1024 wants per peer and
    /// sees the proxy as one peer, so more would be silently dropped there.
    pub max_inflight_per_backend: usize,
    /// Wants waiting for a backend with room, across all backends.
    pub max_queued_wants: usize,
    /// How long a backend may take to answer before the want moves on. A backend that
    /// answered anything within this time is busy, not hung: its wants get up to
    /// [`BUSY_GRACE`] times this before they move.
    pub want_timeout: Duration,
    /// Wants all the clients of one address key may hold together (see `shares`).
    pub max_wants_per_address: usize,
    /// What an address key is (an IPv4 address, an IPv6 /64 by default).
    pub address_key: crate::net::ip_limit::AddressKey,
    /// Load shedding: a want that would wait longer than this in every backend's
    /// queue (at its measured rate) is refused at once (see `shedding`). Zero: off.
    pub shed_after: Duration,
    /// New wants a second the clients of one address key may send; more wait (see
    /// `routing::rate`). Zero: no limit.
    pub wants_per_second_per_address: u32,
}

/// How many want timeouts a want may wait at a backend that keeps answering others.
/// A deep queue at a slow but working backend is not a reason to give up on it (and
/// with one backend, giving up means DONT_HAVE to the client). At each of those
/// timeouts the want is sent again: a backend that dropped it (a CANCEL overtaking a
/// later WANT across two streams, say) is reminded, one that holds it merges the copy.
pub const BUSY_GRACE: u32 = 6;

impl Default for Config {
    fn default() -> Self {
        Self {
            policy: Policy::Rendezvous,
            max_wants_per_client: 16 * 1024,
            max_inflight_per_backend: 1000,
            max_queued_wants: 256 * 1024,
            want_timeout: Duration::from_secs(10),
            max_wants_per_address: 64 * 1024,
            address_key: crate::net::ip_limit::AddressKey::default(),
            shed_after: Duration::ZERO,
            wants_per_second_per_address: 0,
        }
    }
}

/// Counters the engine exports as metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub blocks_delivered: u64,
    pub haves_delivered: u64,
    pub dont_haves_delivered: u64,
    pub unsolicited_blocks: u64,
    pub refused_wants: u64,
    pub failovers: u64,
    pub timeouts: u64,
    /// Wants sent again to a busy backend that had not answered them in time.
    pub refreshes: u64,
    /// Wants a backend's stream failed to carry, moved on to the next backend.
    pub undelivered_wants: u64,
    /// Wants refused because the clients of their address key hold too many.
    pub refused_address_wants: u64,
    /// Wants refused because every backend's queue was too deep (load shedding).
    pub shed_wants: u64,
}

#[derive(Debug, Clone, Copy)]
struct ClientWant {
    kind: WantKind,
    send_dont_have: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for room at this backend (the first in its order).
    Queued(PeerId),
    /// Asked of this backend at this time, for this kind.
    Sent {
        backend: PeerId,
        kind: WantKind,
        at: Instant,
    },
    /// Every healthy backend said no (or none is up); parked until one joins or a
    /// client asks again.
    Exhausted,
}

#[derive(Debug)]
struct Want {
    /// Client → the kind it wants. A BTreeMap keeps fan-out order deterministic.
    wanters: BTreeMap<PeerId, WantKind>,
    state: State,
    /// Backends that failed this want, in order.
    tried: Vec<PeerId>,
    /// The proxy's priority for it (see the module docs), kept across failovers.
    priority: i32,
}

impl Want {
    /// Block if any client wants the block; Have only if all want just HAVE.
    fn kind(&self) -> WantKind {
        if self.wanters.values().any(|k| *k == WantKind::Block) {
            WantKind::Block
        } else {
            WantKind::Have
        }
    }
}

#[derive(Debug, Default)]
struct Backend {
    inflight: std::collections::HashSet<Cid>,
    /// When it last answered anything (a block or a presence).
    last_answer: Option<Instant>,
    /// CIDs waiting for room here; entries may be stale (checked on pop).
    queue: VecDeque<Cid>,
    /// The live entries of `queue`.
    queued: usize,
    /// Its answer rate while saturated, for load shedding.
    meter: shedding::Meter,
}

pub struct Router {
    cfg: Config,
    clients: HashMap<PeerId, HashMap<Cid, ClientWant>>,
    wants: HashMap<Cid, Want>,
    /// Healthy backends, sorted so every replica ranks them the same way.
    backends: BTreeMap<PeerId, Backend>,
    queued: usize,
    /// Send order of wants, for timeouts; stale entries are skipped.
    deadlines: VecDeque<(Instant, Cid, PeerId)>,
    turn: u64,
    /// The priority the next new want gets; counts down.
    next_priority: i32,
    out: Outbox,
    stats: Stats,
    shares: shares::AddressShares,
    /// CIDs shed since the last [`Router::take_shed`].
    shed: Vec<Cid>,
}

impl Router {
    pub fn new(cfg: Config) -> Self {
        Self {
            shares: shares::AddressShares::new(cfg.address_key, cfg.max_wants_per_address),
            cfg,
            clients: HashMap::new(),
            wants: HashMap::new(),
            backends: BTreeMap::new(),
            queued: 0,
            deadlines: VecDeque::new(),
            turn: 0,
            next_priority: i32::MAX,
            out: Outbox::default(),
            stats: Stats::default(),
            shed: Vec::new(),
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

    /// How many wants a client holds (for tests and introspection).
    pub fn client_wants(&self, peer: &PeerId) -> usize {
        self.clients.get(peer).map_or(0, HashMap::len)
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
            let keep: std::collections::HashSet<Cid> = msg
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
        let priorities = self.number(&msg.wants);
        for (entry, priority) in msg.wants.iter().zip(priorities) {
            if entry.cancel {
                self.remove_want(client, entry.cid, now);
            } else {
                self.add_want(client, entry, priority, now);
            }
        }
    }

    /// The proxy's priorities for a message's wants that are new to the proxy (0 for
    /// the others, which keep theirs, and for cancels): below every want numbered
    /// before, and among themselves in the client's order (highest first, then as
    /// listed).
    fn number(&mut self, entries: &[WantEntry]) -> Vec<i32> {
        let mut rank: Vec<usize> = (0..entries.len())
            .filter(|&i| !entries[i].cancel && !self.wants.contains_key(&entries[i].cid))
            .collect();
        rank.sort_by_key(|&i| std::cmp::Reverse(entries[i].priority));
        let first = self.reserve(rank.len());
        let mut out = vec![0; entries.len()];
        for (k, i) in rank.into_iter().enumerate() {
            out[i] = first - k as i32;
        }
        out
    }

    /// Reserves `n` priorities, counting down; returns the highest. Counting down
    /// from i32::MAX lasts two billion new wants; then it starts over, and only the
    /// wants in flight at that moment are out of order. Never below 1.
    fn reserve(&mut self, n: usize) -> i32 {
        let n = i32::try_from(n).unwrap_or(i32::MAX - 1);
        if self.next_priority - 1 < n {
            self.next_priority = i32::MAX;
        }
        let first = self.next_priority;
        self.next_priority -= n;
        first
    }

    /// The client is gone: its wants are cancelled (and cancelled at the backends
    /// where no one else wants them).
    pub fn client_disconnected(&mut self, client: PeerId, now: Instant) {
        if let Some(wants) = self.clients.remove(&client) {
            self.shares.removed(&client, wants.len());
            for cid in wants.into_keys() {
                self.drop_wanter(client, cid, now);
            }
        }
        self.shares.forget(&client);
    }

    /// `priority` is the proxy's, used if this want is new to the proxy.
    fn add_want(&mut self, client: PeerId, entry: &WantEntry, priority: i32, now: Instant) {
        let wants = self.clients.entry(client).or_default();
        let existing = wants.get(&entry.cid).copied();
        if existing.is_none() && wants.len() >= self.cfg.max_wants_per_client {
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
                let priority = if priority > 0 {
                    priority
                } else {
                    self.reserve(1)
                };
                self.wants.insert(
                    entry.cid,
                    Want {
                        wanters: BTreeMap::from([(client, kind)]),
                        state: State::Exhausted,
                        tried: Vec::new(),
                        priority,
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
                        let priority = want.priority;
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
        if self.clients.get(&client).is_some_and(HashMap::is_empty) {
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
        moved.extend(b.queue);
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
        if self.clients.get(&client).is_some_and(HashMap::is_empty) {
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
                        self.out.want(backend, cid, kind, want.priority);
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

    /// Delivers a block from backend `from` (`None`: from preload's reverse path).
    fn deliver(&mut self, from: Option<PeerId>, block: &Block, now: Instant) {
        let Some(want) = self.wants.remove(&block.cid) else {
            self.stats.unsolicited_blocks += 1;
            return;
        };
        if let State::Sent { at, .. } = want.state
            && from.is_some()
        {
            self.out.rtts.push(now.saturating_duration_since(at));
        }
        // Cancel wherever it is still pending, unless that is the sender (who has
        // served it and dropped it from its ledger).
        let cancel = !matches!(want.state, State::Sent { backend, .. } if Some(backend) == from);
        self.release(block.cid, want.state, cancel, now);
        for (client, kind) in want.wanters {
            if let Some(w) = self.clients.get_mut(&client) {
                if w.remove(&block.cid).is_some() {
                    self.shares.removed(&client, 1);
                }
                if w.is_empty() {
                    self.clients.remove(&client);
                }
            }
            match kind {
                WantKind::Block => {
                    self.stats.blocks_delivered += 1;
                    self.out.block_to_client(client, block.clone());
                }
                WantKind::Have => self.tell_client(client, block.cid, PresenceKind::Have),
            }
        }
    }

    /// Wants never delivered to `backend`: each still pending there moves on, as
    /// after a DONT_HAVE (counted as an undelivered failover).
    pub fn backend_undelivered(&mut self, backend: PeerId, cids: &[Cid], now: Instant) {
        for cid in cids {
            let pending_there = self
                .wants
                .get(cid)
                .is_some_and(|w| matches!(w.state, State::Sent { backend: b, .. } if b == backend));
            if pending_there {
                self.stats.undelivered_wants += 1;
                self.presence(backend, *cid, PresenceKind::DontHave, now);
            }
        }
    }

    fn presence(&mut self, from: PeerId, cid: Cid, kind: PresenceKind, now: Instant) {
        let Some(want) = self.wants.get_mut(&cid) else {
            return;
        };
        let State::Sent { backend, .. } = want.state else {
            return;
        };
        if backend != from {
            return; // a stale answer from a backend we already moved away from
        }
        match kind {
            PresenceKind::Have => {
                // HAVE answers the clients that asked only HAVE; block wanters wait on.
                let have_only: Vec<PeerId> = want
                    .wanters
                    .iter()
                    .filter(|(_, k)| **k == WantKind::Have)
                    .map(|(c, _)| *c)
                    .collect();
                for client in have_only {
                    self.tell_client(client, cid, PresenceKind::Have);
                    self.remove_want(client, cid, now);
                }
            }
            PresenceKind::DontHave => {
                want.tried.push(from);
                self.stats.failovers += 1;
                let state = want.state;
                want.state = State::Exhausted;
                self.release(cid, state, true, now);
                self.dispatch(cid, now);
            }
        }
    }
}
