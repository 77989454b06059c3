//! The event loop: one task owns both libp2p hosts (clients see the fixed identity,
//! backends this process's own; see `net::swarm`), the routing core and the backend
//! pool, so routing state needs no locks. Readers, writers and resolvers are separate
//! tasks that talk to it over bounded channels. The loop is plumbing: every routing
//! decision is the core's (`crate::routing`); the loop feeds it events and carries out
//! the effects.

mod accounting;
mod commands;
mod drain;
mod events;
mod handle;
mod parts;
mod side;
mod summary;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::PeerId;
use libp2p::core::transport::ListenerId;
use libp2p::swarm::dial_opts::DialOpts;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{self, Action, BackendSpec, Backends, ResolveError, Resolved};
use crate::bitswap::Message;
use crate::gateway::fetch::FetchCmd;
use crate::http::Health;
use crate::keyed::{Map, Set};
use crate::metrics::Metrics;
use crate::net::bitswap::{Inbound, QueueError, Undelivered};
use crate::routing::{Core, Effects, FetchId, Fetched};
pub use handle::{Command, Handle};
use parts::Preload;
pub use parts::{FrontParts, GatewayParts, Parts, PreloadParts};
use side::Side;
use summary::Summary;

const TICK: Duration = Duration::from_millis(100);

pub struct Engine {
    clients_side: Side,
    backends_side: Side,
    core: Core,
    backends: Backends,
    /// Clients and backends with a live connection: messages from peers whose
    /// connection already closed are dropped, and nothing is sent to them.
    clients: Set<PeerId>,
    /// Each with its blocks counter.
    connected_backends: Map<PeerId, Counter>,
    commands: mpsc::Receiver<Command>,
    resolved_tx: mpsc::Sender<(BackendSpec, Result<Resolved, ResolveError>)>,
    resolved_rx: mpsc::Receiver<(BackendSpec, Result<Resolved, ResolveError>)>,
    undelivered_tx: mpsc::Sender<Undelivered>,
    undelivered_rx: mpsc::Receiver<Undelivered>,
    /// Clients whose writer queue drained while wants of theirs waited for room.
    room_rx: mpsc::Receiver<PeerId>,
    http: reqwest::Client,
    metrics: Metrics,
    libp2p_metrics: libp2p::metrics::Metrics,
    health: Arc<Health>,
    max_client_buffer: usize,
    preload: Option<Preload>,
    front: Option<FrontParts>,
    /// `--announce` set the external addresses; listen addresses stay private.
    announced: bool,
    /// Every client-side listener, closed when the drain starts.
    listeners: HashSet<ListenerId>,
    /// Set once the drain has started.
    drain: Option<drain::Drain>,
    /// The gateway's fetches, and where each one's answer goes (as many as the core
    /// holds: it refuses past its bound).
    fetch_commands: Option<mpsc::Receiver<FetchCmd>>,
    fetch_replies: HashMap<FetchId, tokio::sync::oneshot::Sender<Fetched>>,
    /// When a flood of wants has ebbed, so its memory is given back.
    ebb: crate::allocator::Ebb,
}

impl Engine {
    /// Runs until `drain` is cancelled and the drain has ended (see [`drain`]): at
    /// most `drain_timeout` after the signal.
    pub async fn run(mut self, drain: CancellationToken, drain_timeout: Duration) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.cancelled(), if self.drain.is_none() => self.start_drain(drain_timeout),
                event = self.clients_side.swarm.select_next_some() => self.on_client_event(event),
                event = self.backends_side.swarm.select_next_some() => self.on_backend_event(event),
                Some(Inbound { peer, msg, .. }) = self.clients_side.inbound.recv() => {
                    self.on_client_message(peer, msg)
                }
                Some(Inbound { peer, msg, .. }) = self.backends_side.inbound.recv() => {
                    self.on_backend_message(peer, msg)
                }
                Some((spec, result)) = self.resolved_rx.recv() => {
                    let actions = self.backends.resolved(&spec, result, Instant::now(), rand::random());
                    self.perform(actions);
                }
                Some(cmd) = commands::next_preload_cmd(&mut self.preload) => self.on_preload(cmd),
                Some(cmd) = commands::next_fetch_cmd(&mut self.fetch_commands) => self.on_fetch(cmd),
                Some(u) = self.undelivered_rx.recv() => self.on_undelivered(u),
                Some(peer) = self.room_rx.recv() => self.on_client_room(peer),
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::SetBackends(specs) => {
                        let actions = self.backends.set(specs);
                        self.perform(actions);
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    let fx = self.core.tick(now);
                    self.carry_out(fx);
                    // A drain signal can be missed (set just after the last write);
                    // the tick makes up for it.
                    for peer in self.core.clients_waiting_for_room() {
                        self.on_client_room(peer);
                    }
                    let actions = self.backends.tick(now);
                    self.perform(actions);
                    accounting::gauges(&self.metrics, &self.core, &self.backends);
                    if self.ebb.ebbed(self.core.router().wants_in_flight()) {
                        crate::allocator::trim();
                    }
                    if let Some(ended) = self.drain_ended(now) {
                        tracing::info!(why = ended.as_str(), "drained; closing connections");
                        return;
                    }
                }
            }
        }
    }

    /// Stops accepting: `/readyz` fails and every listener closes (a new connection
    /// is refused); connections already open are served on.
    fn start_drain(&mut self, timeout: Duration) {
        tracing::info!(
            ?timeout,
            "draining: no new connections; finishing the wants in flight"
        );
        self.health.draining.store(true, Ordering::Relaxed);
        for id in self.listeners.drain() {
            self.clients_side.swarm.remove_listener(id);
        }
        self.drain = Some(drain::Drain::start(Instant::now(), timeout));
    }

    fn drain_ended(&mut self, now: Instant) -> Option<drain::Ended> {
        let drain = self.drain.as_mut()?;
        let idle = self.core.router().wants_in_flight() == 0
            && self
                .clients_side
                .writers
                .values()
                .all(|w| w.queued_bytes.load(Ordering::Relaxed) == 0);
        drain.check(!self.clients.is_empty(), idle, now)
    }

    fn on_client_message(&mut self, peer: PeerId, msg: Message) {
        if !self.clients.contains(&peer) {
            return;
        }
        tracing::debug!(%peer, summary = %Summary(&msg), "from client");
        let room = self.client_room(&peer);
        let fx = self
            .core
            .client_message_within(peer, &msg, room, Instant::now());
        self.carry_out(fx);
        self.watch_room(peer);
    }

    /// What the core may still commit to a client: half its buffer, less what its
    /// writer holds. The other half absorbs the estimates' misses (a block bigger than
    /// the client's recent ones), so a client that reads is never cut off.
    fn client_room(&self, peer: &PeerId) -> usize {
        let queued = self
            .clients_side
            .writers
            .get(peer)
            .map_or(0, |w| w.queued_bytes.load(Ordering::Relaxed));
        (self.max_client_buffer / 2).saturating_sub(queued)
    }

    /// The client's writer drained: wants of its that waited for room go on.
    fn on_client_room(&mut self, peer: PeerId) {
        if !self.clients.contains(&peer) {
            return;
        }
        let room = self.client_room(&peer);
        let fx = self.core.client_room(peer, room, Instant::now());
        self.carry_out(fx);
        self.watch_room(peer);
    }

    /// While wants of `peer` wait for room, its writer says when it drains.
    fn watch_room(&mut self, peer: PeerId) {
        if self.core.waiting_for_room(&peer) {
            let writer = self
                .clients_side
                .writer(peer, &self.metrics, &self.undelivered_tx);
            writer.wants_room.store(true, Ordering::Release);
        }
    }

    fn on_backend_message(&mut self, peer: PeerId, msg: Message) {
        let Some(blocks) = self.connected_backends.get(&peer) else {
            return;
        };
        tracing::debug!(%peer, summary = %Summary(&msg), "from backend");
        accounting::from_backend(&self.metrics, blocks, &msg);
        let fx = self.core.backend_message(peer, &msg, Instant::now());
        self.carry_out(fx);
    }

    /// A writer gave up on a peer's stream: a client's blocks are wanted again for it,
    /// a backend's wants move on to the next backend.
    fn on_undelivered(&mut self, u: Undelivered) {
        let now = Instant::now();
        if self.clients.contains(&u.peer) && !u.cids.is_empty() {
            tracing::debug!(peer = %u.peer, blocks = u.cids.len(), "re-wanting undelivered blocks");
            let fx = self.core.undelivered(u.peer, u.cids, now);
            self.carry_out(fx);
        } else if self.connected_backends.contains_key(&u.peer) && !u.wants.is_empty() {
            tracing::debug!(peer = %u.peer, wants = u.wants.len(), "wants the backend never got move on");
            let fx = self.core.backend_undelivered(u.peer, u.wants, now);
            self.carry_out(fx);
        }
    }

    /// Carries out the backend pool's decisions; those that lead to more (a dial that
    /// fails at once) queue them behind.
    fn perform(&mut self, actions: Vec<Action>) {
        let now = Instant::now();
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Resolve(spec) => {
                    let (http, tx) = (self.http.clone(), self.resolved_tx.clone());
                    tokio::spawn(async move {
                        let result = backend::resolve::resolve(&http, &spec).await;
                        let _ = tx.send((spec, result)).await;
                    });
                }
                Action::Dial { peer, addrs } => {
                    tracing::info!(%peer, addr = %addrs[0], "dialing backend");
                    let opts = DialOpts::peer_id(peer).addresses(addrs).build();
                    if let Err(e) = self.backends_side.swarm.dial(opts) {
                        tracing::warn!(%peer, error = %e, "dial refused");
                        queue.extend(self.backends.disconnected(peer, now, rand::random()));
                    } else if self.backends_side.swarm.is_connected(&peer) {
                        queue.extend(self.backends.connected(peer));
                    }
                }
                Action::Up(peer) => {
                    tracing::info!(%peer, "backend connected");
                    let blocks = accounting::backend_blocks(&self.metrics, peer);
                    self.connected_backends.insert(peer, blocks);
                    self.metrics.downstream_peers.inc();
                    let fx = self.core.backend_up(peer, now);
                    self.carry_out(fx);
                }
                Action::Down(peer) => {
                    tracing::warn!(%peer, "backend lost; its wants move to the others");
                    self.connected_backends.remove(&peer);
                    self.metrics.downstream_peers.dec();
                    accounting::backend_gone(&self.metrics, peer);
                    self.backends_side.writers.remove(&peer);
                    let fx = self.core.backend_down(peer, now);
                    self.carry_out(fx);
                }
                Action::Disconnect(peer) => {
                    let _ = self.backends_side.swarm.disconnect_peer_id(peer);
                }
            }
        }
        self.health
            .backend_connected
            .store(!self.connected_backends.is_empty(), Ordering::Relaxed);
    }

    /// Sends what the core decided, and counts it.
    fn carry_out(&mut self, fx: Effects) {
        accounting::effects(&self.metrics, &fx);
        for (id, fetched) in fx.fetched {
            if let Some(reply) = self.fetch_replies.remove(&id) {
                let _ = reply.send(fetched);
            }
        }
        for (backend, msg) in fx.outbox.to_backends {
            if !self.connected_backends.contains_key(&backend) {
                continue;
            }
            accounting::to_backend(&self.metrics, &msg);
            tracing::debug!(peer = %backend, summary = %Summary(&msg), "to backend");
            let writer = self
                .backends_side
                .writer(backend, &self.metrics, &self.undelivered_tx);
            if let Err(e) = writer.send(msg, usize::MAX) {
                tracing::warn!(%backend, ?e, "backend writer queue refused a message");
                self.metrics.reject("backend_queue_full");
            }
        }
        for (client, msg) in fx.outbox.to_clients {
            if !self.clients.contains(&client) {
                continue;
            }
            tracing::debug!(peer = %client, summary = %Summary(&msg), "to client");
            let blocks = msg.blocks.len();
            let writer = self
                .clients_side
                .writer(client, &self.metrics, &self.undelivered_tx);
            match writer.send(msg, self.max_client_buffer) {
                Ok(()) => accounting::to_client(&self.metrics, blocks),
                Err(QueueError::Full) => {
                    tracing::warn!(peer = %client, "client is not keeping up; disconnecting it");
                    self.metrics.reject("slow_client");
                    let _ = self.clients_side.swarm.disconnect_peer_id(client);
                }
                Err(QueueError::Closed) => {
                    self.clients_side.writers.remove(&client);
                }
            }
        }
    }
}
