//! The event loop: one task owns both libp2p hosts (clients see the fixed identity,
//! backends this process's own; see `net::swarm`), the router and the backend pool,
//! so routing state needs no locks. Readers, writers and resolvers are separate tasks
//! that talk to it over bounded channels.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{PeerId, Swarm};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use crate::backend::{self, Action, BackendSpec, Backends, ResolveError, Resolved};
use crate::bitswap::{Message, WantEntry, WantKind};
use crate::http::Health;
use crate::metrics::{
    BackendLabels, Direction, DirectionLabels, Metrics, OutcomeLabels, ReasonLabels, StateLabels,
};
use crate::net::bitswap::{
    Control, FrameBounds, Inbound, InboundStream, ONE_STREAM, QueueError, Readers, STREAM_BUDGET,
    Undelivered, Writer,
};
use crate::net::swarm::{Behaviour, BehaviourEvent};
use crate::preload::Reverse;
use crate::preload::front::{Splices, socket_addr_of};
use crate::preload::refs::{OpenFail, Opened, PreloadCmd};
use crate::router::Router;

const TICK: Duration = Duration::from_millis(100);

/// Commands from outside the loop (the backend sources).
#[derive(Debug)]
pub enum Command {
    SetBackends(Vec<BackendSpec>),
}

/// A handle to steer a running engine.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    /// A handle and the command stream it feeds, for embedding a backend source
    /// without an engine (tests, tools).
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    /// True once the engine has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Replaces the backend set (the diff is applied: unchanged backends are untouched).
    pub async fn set_backends(&self, specs: Vec<BackendSpec>) -> anyhow::Result<()> {
        self.tx
            .send(Command::SetBackends(specs))
            .await
            .map_err(|_| anyhow::anyhow!("the engine has stopped"))
    }
}

pub struct Engine {
    clients_side: Side,
    backends_side: Side,
    router: Router,
    backends: Backends,
    clients: HashSet<PeerId>,
    connected_backends: HashSet<PeerId>,
    commands: mpsc::Receiver<Command>,
    resolved_tx: mpsc::Sender<(BackendSpec, Result<Resolved, ResolveError>)>,
    resolved_rx: mpsc::Receiver<(BackendSpec, Result<Resolved, ResolveError>)>,
    undelivered_tx: mpsc::Sender<Undelivered>,
    undelivered_rx: mpsc::Receiver<Undelivered>,
    http: reqwest::Client,
    metrics: Metrics,
    libp2p_metrics: libp2p::metrics::Metrics,
    health: Arc<Health>,
    max_client_buffer: usize,
    preload: Option<Preload>,
    preload_rx: Option<mpsc::UnboundedReceiver<PreloadCmd>>,
}

/// Preload mode's part of the engine.
pub struct PreloadParts {
    pub reverse: Reverse,
    pub commands: mpsc::UnboundedReceiver<PreloadCmd>,
    /// Who the spliced WebSocket connections really are.
    pub splices: Splices,
    /// The loopback WebSocket listener the preload port splices to.
    pub internal_ws: ListenerId,
    /// Where that listener ended up, for the preload port.
    pub internal_ws_addr: watch::Sender<Option<SocketAddr>>,
}

struct Preload {
    reverse: Reverse,
    splices: Splices,
    internal_ws: ListenerId,
    internal_ws_addr: watch::Sender<Option<SocketAddr>>,
}

/// One libp2p host and its bitswap stream I/O.
struct Side {
    swarm: Swarm<Behaviour>,
    control: Control,
    readers: Readers,
    inbound: mpsc::Receiver<Inbound>,
    writers: HashMap<PeerId, Writer>,
    /// Bytes per outbound stream before the writer moves to a fresh one.
    stream_budget: usize,
}

impl Side {
    fn new(
        swarm: Swarm<Behaviour>,
        max_streams_per_peer: usize,
        frame_bounds: Option<FrameBounds>,
        stream_budget: usize,
        metrics: &Metrics,
    ) -> Self {
        let control = swarm.behaviour().bitswap.control();
        let (tx, inbound) = mpsc::channel(1024);
        Self {
            swarm,
            control,
            readers: Readers::new(max_streams_per_peer, frame_bounds, tx, metrics.clone()),
            inbound,
            writers: HashMap::new(),
            stream_budget,
        }
    }

    /// The writer for `peer`, started on first use.
    fn writer(
        &mut self,
        peer: PeerId,
        metrics: &Metrics,
        undelivered: &mpsc::Sender<Undelivered>,
    ) -> &Writer {
        self.writers.entry(peer).or_insert_with(|| {
            Writer::spawn(
                peer,
                self.stream_budget,
                self.control.clone(),
                metrics.clone(),
                undelivered.clone(),
            )
        })
    }
}

pub struct Parts {
    /// The client-facing host, with the fixed identity.
    pub swarm: Swarm<Behaviour>,
    /// The backend-facing host, with this process's own identity.
    pub backend_swarm: Swarm<Behaviour>,
    pub router: Router,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub max_streams_per_peer: usize,
    /// Bounds on frames arriving from clients.
    pub client_frames: FrameBounds,
    pub max_client_buffer: usize,
    pub preload: Option<PreloadParts>,
}

impl Engine {
    pub fn new(parts: Parts, registry: &mut Registry) -> anyhow::Result<(Self, Handle)> {
        let clients_side = Side::new(
            parts.swarm,
            parts.max_streams_per_peer,
            Some(parts.client_frames),
            STREAM_BUDGET,
            &parts.metrics,
        );
        let backends_side = Side::new(
            parts.backend_swarm,
            parts.max_streams_per_peer,
            None,
            ONE_STREAM,
            &parts.metrics,
        );
        let (tx, commands) = mpsc::channel(16);
        let (resolved_tx, resolved_rx) = mpsc::channel(64);
        let (undelivered_tx, undelivered_rx) = mpsc::channel(1024);
        let libp2p_metrics = libp2p::metrics::Metrics::new(registry);
        let (preload, preload_rx) = match parts.preload {
            Some(p) => (
                Some(Preload {
                    reverse: p.reverse,
                    splices: p.splices,
                    internal_ws: p.internal_ws,
                    internal_ws_addr: p.internal_ws_addr,
                }),
                Some(p.commands),
            ),
            None => (None, None),
        };
        Ok((
            Self {
                clients_side,
                backends_side,
                router: parts.router,
                backends: Backends::default(),
                clients: HashSet::new(),
                connected_backends: HashSet::new(),
                commands,
                resolved_tx,
                resolved_rx,
                undelivered_tx,
                undelivered_rx,
                http: reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .expect("a plain HTTP client builds"),
                metrics: parts.metrics,
                libp2p_metrics,
                health: parts.health,
                max_client_buffer: parts.max_client_buffer,
                preload,
                preload_rx,
            },
            Handle { tx },
        ))
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
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
                Some(cmd) = next_preload_cmd(&mut self.preload_rx) => self.on_preload(cmd),
                Some(u) = self.undelivered_rx.recv() => self.on_undelivered(u),
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::SetBackends(specs) => {
                        let actions = self.backends.set(specs);
                        self.perform(actions);
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.router.tick(now);
                    if let Some(p) = &mut self.preload {
                        for gone in p.reverse.tick(now) {
                            self.metrics.preload_dag_blocks.observe(gone.dag_size() as f64);
                        }
                    }
                    let actions = self.backends.tick(now);
                    self.perform(actions);
                    self.update_gauges();
                }
            }
            self.flush();
        }
    }

    fn on_backend_message(&mut self, peer: PeerId, msg: Message) {
        if !self.connected_backends.contains(&peer) {
            return; // its connection already closed
        }
        let now = Instant::now();
        tracing::debug!(%peer, summary = %Summary(&msg), "from backend");
        let bytes: u64 = msg.blocks.iter().map(|b| b.data.len() as u64).sum();
        if !msg.blocks.is_empty() {
            self.metrics
                .backend_blocks
                .get_or_create(&BackendLabels {
                    backend: peer.to_string(),
                })
                .inc_by(msg.blocks.len() as u64);
        }
        if bytes > 0 {
            self.metrics
                .bytes_forwarded
                .get_or_create(&DirectionLabels {
                    direction: Direction::Upstream,
                })
                .inc_by(bytes);
        }
        match &mut self.preload {
            Some(p) => {
                for b in &msg.blocks {
                    p.reverse.observe(b);
                }
                self.router.backend_replies(peer, &msg, now);
                p.reverse.backend_wants(peer, msg.full, &msg.wants);
            }
            None => self.router.backend_message(peer, &msg, now),
        }
    }

    fn on_client_message(&mut self, peer: PeerId, msg: Message) {
        if !self.clients.contains(&peer) {
            return; // its connection already closed
        }
        let now = Instant::now();
        tracing::debug!(%peer, summary = %Summary(&msg), "from client");
        self.router.client_message(peer, &msg, now);
        if let Some(p) = &mut self.preload
            && (!msg.blocks.is_empty() || !msg.presences.is_empty())
        {
            // The uploader answering a backend's preload fetch. A block that
            // answers it may also answer other clients' wants.
            for block in p.reverse.client_message(peer, &msg) {
                self.router.offer_block(&block, now);
            }
        }
    }

    /// Blocks a client's writer could not deliver: the router had cleared those wants,
    /// so they are wanted again on the client's behalf (it still wants them, or it
    /// would not have asked; a later cancel clears them as usual).
    fn on_undelivered(&mut self, u: Undelivered) {
        if !self.clients.contains(&u.peer) {
            return;
        }
        tracing::debug!(peer = %u.peer, blocks = u.cids.len(), "re-wanting undelivered blocks");
        let msg = Message {
            wants: u
                .cids
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
        self.router.client_message(u.peer, &msg, Instant::now());
    }

    fn on_preload(&mut self, cmd: PreloadCmd) {
        let Some(p) = &mut self.preload else {
            return;
        };
        match cmd {
            PreloadCmd::Open {
                roots,
                client,
                max_depth,
                reply,
            } => {
                let result = (|| {
                    let backend = self
                        .router
                        .backend_for(&roots[0])
                        .ok_or(OpenFail::NoBackend)?;
                    let rpc_url = self
                        .backends
                        .spec_of(&backend)
                        .ok_or(OpenFail::NoBackend)?
                        .rpc_url();
                    let id = p
                        .reverse
                        .open(&roots, client, backend, max_depth, Instant::now())
                        .map_err(|_| OpenFail::TooMany)?;
                    Ok(Opened { id, rpc_url })
                })();
                let _ = reply.send(result);
            }
            PreloadCmd::Close(id) => p.reverse.close(id, Instant::now()),
        }
    }

    /// The client's address behind a listener-side connection: for a connection
    /// spliced from the preload port, the client the splice came from.
    fn client_addr(&self, endpoint: &ConnectedPoint) -> Option<SocketAddr> {
        let ConnectedPoint::Listener { send_back_addr, .. } = endpoint else {
            return None;
        };
        let seen = socket_addr_of(send_back_addr)?;
        Some(
            self.preload
                .as_ref()
                .and_then(|p| p.splices.client_of(&seen))
                .unwrap_or(seen),
        )
    }

    fn on_client_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        libp2p::metrics::Recorder::record(&self.libp2p_metrics, &event);
        match event {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } if self
                .preload
                .as_ref()
                .is_some_and(|p| p.internal_ws == listener_id) =>
            {
                // Internal: reached through the preload port, never announced.
                if let (Some(p), Some(addr)) = (&self.preload, socket_addr_of(&address)) {
                    p.internal_ws_addr.send_replace(Some(addr));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let id = *self.clients_side.swarm.local_peer_id();
                println!("Listening on {address}/p2p/{id}");
                self.health.listening.store(true, Ordering::Relaxed);
                self.clients_side.swarm.add_external_address(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.clients_side.swarm.remove_external_address(&address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                connection_id,
                endpoint,
                ..
            } => {
                if let Some(addr) = self.client_addr(&endpoint)
                    && let Some(p) = &mut self.preload
                {
                    p.reverse
                        .client_connected(peer_id, connection_id, addr.ip());
                }
                if num_established.get() == 1 && self.clients.insert(peer_id) {
                    self.metrics.upstream_peers.inc();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(p) = &mut self.preload {
                    p.reverse.client_disconnected(peer_id, connection_id);
                }
                if num_established == 0 && self.clients.remove(&peer_id) {
                    self.metrics.upstream_peers.dec();
                    self.router.client_disconnected(peer_id, Instant::now());
                    self.clients_side.writers.remove(&peer_id);
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "inbound connection refused or failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Bitswap(InboundStream {
                peer, stream, ..
            })) => {
                self.clients_side.readers.spawn(peer, stream);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => {
                libp2p::metrics::Recorder::record(&self.libp2p_metrics, &e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                libp2p::metrics::Recorder::record(&self.libp2p_metrics, &e);
            }
            _ => {}
        }
    }

    fn on_backend_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 && self.backends.is_backend(&peer_id) => {
                let actions = self.backends.connected(peer_id);
                self.perform(actions);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if self.backends.is_backend(&peer_id) => {
                let actions = self
                    .backends
                    .disconnected(peer_id, Instant::now(), rand::random());
                self.perform(actions);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if self.backends.is_backend(&peer) && !self.connected_backends.contains(&peer) => {
                tracing::warn!(%peer, %error, "cannot connect to backend");
                let actions = self
                    .backends
                    .disconnected(peer, Instant::now(), rand::random());
                self.perform(actions);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Bitswap(InboundStream {
                peer, stream, ..
            })) => {
                self.backends_side.readers.spawn(peer, stream);
            }
            _ => {}
        }
    }

    fn perform(&mut self, actions: Vec<Action>) {
        let now = Instant::now();
        for action in actions {
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
                    if let Err(e) = self
                        .backends_side
                        .swarm
                        .dial(DialOpts::peer_id(peer).addresses(addrs).build())
                    {
                        tracing::warn!(%peer, error = %e, "dial refused");
                        let actions = self.backends.disconnected(peer, now, rand::random());
                        self.perform(actions);
                    } else if self.backends_side.swarm.is_connected(&peer) {
                        let actions = self.backends.connected(peer);
                        self.perform(actions);
                    }
                }
                Action::Up(peer) => {
                    tracing::info!(%peer, "backend connected");
                    self.connected_backends.insert(peer);
                    self.metrics.downstream_peers.inc();
                    // An empty full wantlist is the truth at connect (the backend's
                    // ledger for us starts clean), and it opens the long-lived stream
                    // that keeps this connection out of libp2p's idle timeout.
                    let writer =
                        self.backends_side
                            .writer(peer, &self.metrics, &self.undelivered_tx);
                    let _ = writer.send(
                        Message {
                            full: true,
                            ..Message::default()
                        },
                        usize::MAX,
                    );
                    self.router.backend_up(peer, now);
                }
                Action::Down(peer) => {
                    tracing::warn!(%peer, "backend lost; its wants move to the others");
                    self.connected_backends.remove(&peer);
                    self.metrics.downstream_peers.dec();
                    self.metrics.backend_blocks.remove(&BackendLabels {
                        backend: peer.to_string(),
                    });
                    self.router.backend_down(peer, now);
                    if let Some(p) = &mut self.preload {
                        p.reverse.backend_down(peer);
                    }
                    self.backends_side.writers.remove(&peer);
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

    /// Sends what the router decided.
    fn flush(&mut self) {
        let mut out = self.router.take_outbox();
        if let Some(p) = &mut self.preload {
            out.merge(p.reverse.take_outbox());
        }
        for rtt in &out.rtts {
            self.metrics
                .downstream_block_rtt_ms
                .observe(rtt.as_secs_f64() * 1000.0);
        }
        for (backend, msg) in out.to_backends {
            if !self.connected_backends.contains(&backend) {
                continue;
            }
            let bytes: u64 = msg.blocks.iter().map(|b| b.data.len() as u64).sum();
            if bytes > 0 {
                let down = DirectionLabels {
                    direction: Direction::Downstream,
                };
                self.metrics
                    .blocks_forwarded
                    .get_or_create(&down)
                    .inc_by(msg.blocks.len() as u64);
                self.metrics
                    .bytes_forwarded
                    .get_or_create(&down)
                    .inc_by(bytes);
            }
            tracing::debug!(peer = %backend, summary = %Summary(&msg), "to backend");
            let writer = self
                .backends_side
                .writer(backend, &self.metrics, &self.undelivered_tx);
            if let Err(e) = writer.send(msg, usize::MAX) {
                tracing::warn!(%backend, ?e, "backend writer queue refused a message");
                self.metrics.reject("backend_queue_full");
            }
        }
        for (client, msg) in out.to_clients {
            if !self.clients.contains(&client) {
                continue;
            }
            tracing::debug!(peer = %client, summary = %Summary(&msg), "to client");
            let blocks = msg.blocks.len() as u64;
            let writer = self
                .clients_side
                .writer(client, &self.metrics, &self.undelivered_tx);
            match writer.send(msg, self.max_client_buffer) {
                Ok(()) => {
                    let up = DirectionLabels {
                        direction: Direction::Upstream,
                    };
                    self.metrics
                        .blocks_forwarded
                        .get_or_create(&up)
                        .inc_by(blocks);
                }
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

    fn update_gauges(&self) {
        self.metrics
            .wants_in_flight
            .set(self.router.wants_in_flight() as i64);
        self.metrics
            .wants_queued
            .set(self.router.queued_wants() as i64);
        for (state, n) in self.backends.state_counts() {
            self.metrics
                .backends
                .get_or_create(&StateLabels { state })
                .set(n);
        }
        // The router counts; the metrics follow its totals.
        let stats = self.router.stats();
        let catch_up = |c: &prometheus_client::metrics::counter::Counter, total: u64| {
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        };
        catch_up(&self.metrics.failovers, stats.failovers);
        catch_up(&self.metrics.want_timeouts, stats.timeouts);
        catch_up(&self.metrics.want_refreshes, stats.refreshes);
        catch_up(
            &self.metrics.rejected.get_or_create(&ReasonLabels {
                reason: "too_many_wants",
            }),
            stats.refused_wants,
        );
        let presences = &self.metrics.presences_sent;
        catch_up(
            &presences.get_or_create(&ReasonLabels { reason: "have" }),
            stats.haves_delivered,
        );
        catch_up(
            &presences.get_or_create(&ReasonLabels {
                reason: "dont_have",
            }),
            stats.dont_haves_delivered,
        );
        if let Some(p) = &self.preload {
            let sessions = p.reverse.sessions();
            self.metrics.preload_sessions.set(sessions.len() as i64);
            self.metrics
                .preload_blocks_tracked
                .set(sessions.total_blocks() as i64);
            let stats = p.reverse.stats();
            let wants = &self.metrics.reverse_wants;
            catch_up(
                &wants.get_or_create(&OutcomeLabels {
                    outcome: "forwarded",
                }),
                stats.wants_forwarded,
            );
            catch_up(
                &wants.get_or_create(&OutcomeLabels { outcome: "refused" }),
                stats.wants_refused,
            );
            catch_up(
                &self.metrics.rejected.get_or_create(&ReasonLabels {
                    reason: "preload_undecodable_block",
                }),
                stats.undecodable_blocks,
            );
        }
    }
}

async fn next_preload_cmd(
    rx: &mut Option<mpsc::UnboundedReceiver<PreloadCmd>>,
) -> Option<PreloadCmd> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A one-line account of a message for debug logs (no payloads).
struct Summary<'a>(&'a Message);

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        let cancels = m.wants.iter().filter(|w| w.cancel).count();
        let haves = m
            .wants
            .iter()
            .filter(|w| !w.cancel && w.kind == crate::bitswap::WantKind::Have)
            .count();
        let dont = m
            .presences
            .iter()
            .filter(|p| p.kind == crate::bitswap::PresenceKind::DontHave)
            .count();
        write!(
            f,
            "full={} want_block={} want_have={} cancel={} blocks={} have={} dont_have={}",
            m.full,
            m.wants.len() - cancels - haves,
            haves,
            cancels,
            m.blocks.len(),
            m.presences.len() - dont,
            dont
        )
    }
}
