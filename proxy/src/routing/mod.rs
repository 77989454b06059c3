//! The pure routing core: the one place that decides where every bitswap message goes.
//! It owns the forward [`Router`] and, in preload mode, the reverse path
//! ([`Reverse`]), and sequences the two. No I/O and no clock: each event is a method
//! that takes the time and returns the [`Effects`] to carry out, so the engine around
//! it is plumbing and the data path reads one way: client → core → backend → core →
//! client.

pub mod effects;
pub mod fetches;
pub mod rate;
#[cfg(test)]
mod tests;
mod waiting;
pub mod window;

use std::net::IpAddr;
use std::time::Instant;

use cid::Cid;
use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

use crate::bitswap::{Message, PresenceKind, WantEntry, WantKind};
use crate::cache::BlockCache;
use crate::keyed::Set;
use crate::preload::Reverse;
use crate::preload::refs::OpenFail;
use crate::preload::sessions::SessionId;
use crate::router::{Outbox, Router};
pub use effects::{Counts, Effects};
pub use fetches::{FetchId, Fetched, Fetches};

/// HTTP fetches waiting at once unless [`Core::with_max_fetches`] says otherwise.
pub const DEFAULT_MAX_FETCHES: usize = 4096;

pub struct Core {
    router: Router,
    reverse: Option<Reverse>,
    /// The totals already handed out as deltas.
    reported: Counts,
    /// Verified blocks from the backends; `None` when `--block-cache-bytes` is 0.
    cache: Option<BlockCache>,
    /// Answers from the cache, sent with the next effects.
    cached: Outbox,
    /// The gateway's fetches, one client of the router.
    fetches: Fetches,
    /// Per-address wants-per-second and bytes-per-second budgets; new wants over
    /// them wait here.
    rates: rate::WantRates,
    /// Per-client flow control: block wants go on as far as the client's writer
    /// queue has room for their blocks; the rest wait here.
    windows: window::ClientWindows,
}

impl Core {
    pub fn new(router: Router, reverse: Option<Reverse>) -> Self {
        let cfg = router.config();
        let rates = rate::WantRates::new(
            rate::Rates {
                wants_per_second: cfg.wants_per_second_per_address,
                bytes_per_second: cfg.bytes_per_second_per_address,
            },
            cfg.address_key,
            cfg.max_wants_per_client,
        );
        Self {
            rates,
            windows: window::ClientWindows::new(cfg.max_wants_per_client),
            router,
            reverse,
            reported: Counts::default(),
            cache: None,
            cached: Outbox::default(),
            fetches: Fetches::new(PeerId::random(), DEFAULT_MAX_FETCHES),
        }
    }

    /// With a block cache: clients' wants it holds are answered from it, without
    /// asking a backend, and the backends' blocks fill it.
    pub fn with_cache(mut self, cache: Option<BlockCache>) -> Self {
        self.cache = cache;
        self
    }

    pub fn cache(&self) -> Option<&BlockCache> {
        self.cache.as_ref()
    }

    /// Bounds the HTTP fetches waiting at once.
    pub fn with_max_fetches(mut self, max: usize) -> Self {
        self.fetches = Fetches::new(self.fetches.client_id(), max);
        self
    }

    pub fn fetches(&self) -> &Fetches {
        &self.fetches
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn reverse(&self) -> Option<&Reverse> {
        self.reverse.as_ref()
    }

    /// Client wants held back now, for their address's budget or their writer's room.
    pub fn wants_waiting(&self) -> usize {
        self.rates.waiting() + self.windows.waiting()
    }

    /// Tells the router how many of `client`'s wants are held back here (for its
    /// address's rates or its room): they count against its caps there.
    fn sync_held_back(&mut self, client: &PeerId) {
        let n = self.rates.waiting_of(client) + self.windows.waiting_of(client);
        self.router.set_held_back(client, n);
    }

    /// Whether `client` has wants waiting for room in its writer's queue.
    pub fn waiting_for_room(&self, client: &PeerId) -> bool {
        self.windows.is_waiting(client)
    }

    /// The clients with wants waiting for room, in a stable order.
    pub fn clients_waiting_for_room(&self) -> Vec<PeerId> {
        self.windows.waiting_clients()
    }

    // ---------------------------------------------------------------- clients

    /// A client connection opened, from `ip` (its real address, splices resolved).
    /// Preload's reverse wants for that address go to it too.
    pub fn client_connected(
        &mut self,
        client: PeerId,
        conn: ConnectionId,
        ip: Option<IpAddr>,
    ) -> Effects {
        if let (Some(r), Some(ip)) = (&mut self.reverse, ip) {
            r.client_connected(client, conn, ip);
        }
        if let Some(ip) = ip {
            self.router.client_address(client, ip);
            self.rates.client_connected(client, ip);
        }
        // No block reaches a client on a connect: nothing to charge.
        self.effects()
    }

    /// A client connection closed; `last` when the client has no other connection,
    /// and then its wants are cancelled.
    pub fn client_disconnected(
        &mut self,
        client: PeerId,
        conn: ConnectionId,
        last: bool,
        now: Instant,
    ) -> Effects {
        if let Some(r) = &mut self.reverse {
            r.client_disconnected(client, conn);
        }
        if last {
            self.router.set_held_back(&client, 0);
            self.windows.client_gone(&client);
            self.router.client_disconnected(client, now);
            self.rates.client_gone(&client, now);
        }
        self.effects_at(now)
    }

    /// A client's message: its wantlist goes to the router. In preload mode its blocks
    /// and presences answer the backends' reverse wants, and a block that does may
    /// also answer other clients waiting for it.
    pub fn client_message(&mut self, client: PeerId, msg: &Message, now: Instant) -> Effects {
        self.client_message_within(client, msg, usize::MAX, now)
    }

    /// [`Self::client_message`] for a client whose writer can take `room` more bytes
    /// ([`window::UNBOUNDED`]: no writer to protect). The cache answers at most that
    /// much, and block wants go on to the backends as far as the rest holds their
    /// blocks; the others wait for [`Self::client_room`]. A cache answering a big
    /// wantlist at once, or backends sending it at their speed, would otherwise queue
    /// more than the client may have queued, and it would be cut off as slow.
    pub fn client_message_within(
        &mut self,
        client: PeerId,
        msg: &Message,
        room: usize,
        now: Instant,
    ) -> Effects {
        // The cache answers no more than the address's bytes budget holds: a cached
        // file would otherwise come at once, whatever the budget.
        let cache_room = room.min(self.rates.bytes_room(&client, now));
        let (rest, answered) = self.answer_from_cache(client, msg, cache_room);
        let room = if room == window::UNBOUNDED {
            room
        } else {
            room.saturating_sub(answered)
        };
        let msg_on = rest.as_ref().unwrap_or(msg);
        // Wants held back here (for the address's rates, then for the client's room)
        // count against the client's cap and its address's share, as the router's do.
        let rated;
        let msg_on = if self.rates.is_on() {
            let router = &self.router;
            rated = self.rates.admit(
                client,
                msg_on,
                |cid| router.client_has(&client, cid),
                router.client_wants(&client) + self.windows.waiting_of(&client),
                router.share_room(&client),
                now,
            );
            self.sync_held_back(&client);
            &rated
        } else {
            msg_on
        };
        let router = &self.router;
        // A WANT-BLOCK upgrading a held WANT-HAVE brings a block: not free.
        let paced = self.windows.admit(
            client,
            msg_on,
            |cid| router.client_wants_block(&client, cid),
            router.client_wants(&client) + self.rates.waiting_of(&client),
            router.share_room(&client),
            room,
            now,
        );
        self.sync_held_back(&client);
        self.router.client_message(client, &paced, now);
        if let Some(r) = &mut self.reverse
            && (!msg.blocks.is_empty() || !msg.presences.is_empty())
        {
            for block in r.client_message(client, msg) {
                self.router.offer_block(&block, now);
            }
        }
        self.effects_at(now)
    }

    /// The client's writer can take `room` more bytes: its wants waiting for room
    /// that fit go on.
    pub fn client_room(&mut self, client: PeerId, room: usize, now: Instant) -> Effects {
        if let Some(msg) = self.windows.release(&client, room, now) {
            self.sync_held_back(&client);
            self.router.client_message(client, &msg, now);
        }
        self.effects_at(now)
    }

    /// Answers the wants of `msg` the cache holds; returns the message without them,
    /// or `None` when the cache answered none (then `msg` goes on as it is), and the
    /// block bytes answered.
    fn answer_from_cache(
        &mut self,
        client: PeerId,
        msg: &Message,
        room: usize,
    ) -> (Option<Message>, usize) {
        let Some(cache) = self.cache.as_mut() else {
            return (None, 0);
        };
        let mut answered_bytes = 0;
        let mut answered = vec![false; msg.wants.len()];
        let mut room = room;
        for (i, w) in msg.wants.iter().enumerate() {
            // Once a block does not fit, no later one is looked up (nor counted a hit).
            if w.cancel || (w.kind == WantKind::Block && room == 0) {
                continue;
            }
            if let Some(block) = cache.get(&w.cid) {
                match w.kind {
                    WantKind::Block if block.data.len() > room => room = 0,
                    WantKind::Block => {
                        room -= block.data.len();
                        answered_bytes += block.data.len();
                        answered[i] = true;
                        self.cached.block_to_client(client, block);
                    }
                    WantKind::Have => {
                        answered[i] = true;
                        self.cached
                            .presence_to_client(client, w.cid, PresenceKind::Have);
                    }
                }
            }
        }
        if !answered.contains(&true) {
            return (None, 0);
        }
        let mut rest = msg.clone();
        let mut i = 0;
        rest.wants.retain(|_| {
            i += 1;
            !answered[i - 1]
        });
        (Some(rest), answered_bytes)
    }

    /// Blocks the client's writer could not deliver (its stream failed). The router had
    /// cleared those wants on delivery, so they are wanted again for the client: it
    /// still wants them or it would not have asked, and a later cancel clears them.
    pub fn undelivered(&mut self, client: PeerId, cids: Vec<Cid>, now: Instant) -> Effects {
        let msg = Message {
            wants: cids
                .into_iter()
                .map(|cid| WantEntry {
                    cid,
                    priority: 1,
                    cancel: false,
                    kind: WantKind::Block,
                    send_dont_have: false,
                })
                .collect(),
            ..Message::default()
        };
        self.router.client_message(client, &msg, now);
        self.effects_at(now)
    }

    // ---------------------------------------------------------------- backends

    /// A backend connected. It first gets an empty full wantlist: that is the truth at
    /// connect (its ledger for us starts clean), and it opens the long-lived stream
    /// that keeps the connection out of libp2p's idle timeout. Parked wants follow.
    pub fn backend_up(&mut self, backend: PeerId, now: Instant) -> Effects {
        self.router.backend_up(backend, now);
        let mut effects = self.effects_at(now);
        effects.outbox.to_backends.entry(backend).or_default().full = true;
        effects
    }

    /// Wants the backend's writer could not deliver: the backend never saw them, so
    /// they move on as if it had said DONT_HAVE (a backend that takes no stream is no
    /// place to wait; one that recovers is tried again when the others say no).
    pub fn backend_undelivered(
        &mut self,
        backend: PeerId,
        cids: Vec<Cid>,
        now: Instant,
    ) -> Effects {
        self.router.backend_undelivered(backend, &cids, now);
        self.effects_at(now)
    }

    /// A backend is gone: its forward wants move on, its reverse wants end.
    pub fn backend_down(&mut self, backend: PeerId, now: Instant) -> Effects {
        self.router.backend_down(backend, now);
        if let Some(r) = &mut self.reverse {
            r.backend_down(backend);
        }
        self.effects_at(now)
    }

    /// A backend's message: blocks and presences answer clients' wants; its own wants
    /// are refused, or in preload mode routed on the reverse path. Its blocks may
    /// teach a preload session the DAG's links, so they are seen first.
    pub fn backend_message(&mut self, backend: PeerId, msg: &Message, now: Instant) -> Effects {
        if let Some(cache) = &mut self.cache {
            for block in &msg.blocks {
                cache.insert(block);
            }
        }
        match &mut self.reverse {
            Some(r) => {
                for block in &msg.blocks {
                    r.observe(block);
                }
                self.router.backend_replies(backend, msg, now);
                r.backend_wants(backend, msg.full, &msg.wants);
            }
            None => self.router.backend_message(backend, msg, now),
        }
        self.effects_at(now)
    }

    // ---------------------------------------------------------------- preload

    /// A refs call for `roots` from `client`: the session is opened at the backend
    /// that will later serve the root (rendezvous). `rpc_url` names a backend's RPC
    /// base URL; returns the session and that URL.
    pub fn preload_open(
        &mut self,
        roots: &[Cid],
        client: IpAddr,
        max_depth: Option<u32>,
        rpc_url: impl FnOnce(&PeerId) -> Option<String>,
        now: Instant,
    ) -> Result<(SessionId, String), OpenFail> {
        let reverse = self.reverse.as_mut().ok_or(OpenFail::NoBackend)?;
        let root = roots.first().ok_or(OpenFail::NoBackend)?;
        let backend = self.router.backend_for(root).ok_or(OpenFail::NoBackend)?;
        let url = rpc_url(&backend).ok_or(OpenFail::NoBackend)?;
        let id = reverse
            .open(roots, client, backend, max_depth, now)
            .map_err(|e| match e {
                crate::preload::sessions::OpenError::TooManyForAddress => {
                    OpenFail::TooManyForAddress
                }
                _ => OpenFail::TooMany,
            })?;
        Ok((id, url))
    }

    /// The refs call ended.
    pub fn preload_close(&mut self, id: SessionId, now: Instant) -> Effects {
        if let Some(r) = &mut self.reverse {
            r.close(id, now);
        }
        self.effects_at(now)
    }

    // ---------------------------------------------------------------- HTTP fetches

    /// An HTTP fetch of `cid` (the block, or only whether a backend has it): asked
    /// of the backends through the router like any client's want, and answered in
    /// [`Effects::fetched`] by this or a later event, by `deadline` at the latest.
    pub fn fetch(
        &mut self,
        id: FetchId,
        cid: Cid,
        kind: WantKind,
        deadline: Instant,
        now: Instant,
    ) -> Effects {
        let me = self.fetches.client_id();
        let refused = match self.fetches.open(id, cid, kind, deadline) {
            Err(fetches::Full) => Some(Fetched::Overloaded),
            Ok(want) => {
                let msg = one_want(want);
                // The cache answers as it does bitswap clients, backends or none.
                if self.answer_from_cache(me, &msg, usize::MAX).0.is_some() {
                    None
                } else if self.router.healthy_backends() == 0 {
                    if let Some(cancel) = self.fetches.close(id) {
                        self.router.client_message(me, &one_want(cancel), now);
                    }
                    Some(Fetched::NoBackend)
                } else {
                    self.router.client_message(me, &msg, now);
                    None
                }
            }
        };
        let mut effects = self.effects_at(now);
        effects.fetched.extend(refused.map(|why| (id, why)));
        effects
    }

    /// The asker of fetch `id` gave up; its want goes unless another fetch has it.
    pub fn fetch_cancel(&mut self, id: FetchId, now: Instant) -> Effects {
        if let Some(cancel) = self.fetches.close(id) {
            let me = self.fetches.client_id();
            self.router.client_message(me, &one_want(cancel), now);
        }
        self.effects_at(now)
    }

    // ---------------------------------------------------------------- time

    /// Moves on the wants whose backend did not answer in time and expires preload
    /// sessions.
    pub fn tick(&mut self, now: Instant) -> Effects {
        let (expired, cancels) = self.fetches.expire(now);
        if !cancels.is_empty() {
            let me = self.fetches.client_id();
            let msg = Message {
                wants: cancels,
                ..Message::default()
            };
            self.router.client_message(me, &msg, now);
        }
        for (client, msg) in self.rates.release(now) {
            self.sync_held_back(&client);
            self.router.client_message(client, &msg, now);
        }
        self.windows.expire(now);
        self.router.tick(now);
        if let Some(cache) = &self.cache {
            cache.settle();
        }
        let mut ended = Vec::new();
        if let Some(r) = &mut self.reverse {
            ended = r.tick(now).iter().map(|s| s.dag_size()).collect();
        }
        let mut effects = self.effects_at(now);
        effects.preload_dag_sizes = ended;
        effects.fetched.extend(expired);
        effects
    }

    /// [`Self::effects`], with the blocks it delivers charged to their clients'
    /// bytes budgets and settling their windows' reservations.
    fn effects_at(&mut self, now: Instant) -> Effects {
        let fx = self.effects();
        for (client, msg) in &fx.outbox.to_clients {
            if self.rates.is_on() {
                self.rates.delivered(client, msg, now);
            }
            self.windows.delivered(client, msg);
        }
        fx
    }

    /// What the last event decided: both paths' messages, merged per peer, and the
    /// counters' growth since the last event.
    fn effects(&mut self) -> Effects {
        let mut outbox = std::mem::take(&mut self.cached);
        outbox.merge(self.router.take_outbox());
        let fetched = self.answer_fetches(&mut outbox);
        let mut totals = Counts::from_router(&self.router.stats());
        if let Some(cache) = &self.cache {
            totals.add_cache(&cache.stats());
        }
        let delayed = self.rates.delayed();
        totals.delayed_wants = delayed.for_wants;
        totals.delayed_bytes_wants = delayed.for_bytes;
        totals.paced_wants = self.windows.delayed();
        if let Some(r) = &mut self.reverse {
            outbox.merge(r.take_outbox());
            totals.add_reverse(&r.stats());
        }
        let counts = totals.since(&self.reported);
        self.reported = totals;
        Effects {
            outbox,
            counts,
            preload_dag_sizes: Vec::new(),
            fetched,
        }
    }

    /// Takes the router's message to the gateway's identity out of the outbox: it
    /// answers fetches instead of going to a peer.
    fn answer_fetches(&mut self, outbox: &mut crate::router::Outbox) -> Vec<(FetchId, Fetched)> {
        let me = self.fetches.client_id();
        let shed = self.router.take_shed();
        let Some(mut msg) = outbox.to_clients.remove(&me) else {
            return Vec::new();
        };
        // A shed want's DONT_HAVE is not "no backend has it": those fetches end as
        // shed (503 and Retry-After, not 404).
        let mut answers = Vec::new();
        if !shed.is_empty() {
            let shed: Set<Cid> = shed.into_iter().collect();
            let mut shed_here = Vec::new();
            msg.presences.retain(|p| {
                let was_shed = p.kind == PresenceKind::DontHave && shed.contains(&p.cid);
                if was_shed {
                    shed_here.push(p.cid);
                }
                !was_shed
            });
            for cid in shed_here {
                answers.extend(self.fetches.shed(&cid));
                self.router.withdraw_parked(me, cid);
            }
        }
        let (more, withdraw) = self.fetches.answer(&msg);
        answers.extend(more);
        for cid in withdraw {
            self.router.withdraw_parked(me, cid);
        }
        answers
    }
}

fn one_want(entry: WantEntry) -> Message {
    Message {
        wants: vec![entry],
        ..Message::default()
    }
}
