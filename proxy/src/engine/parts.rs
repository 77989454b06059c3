//! Building the engine from its parts.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use libp2p::Swarm;
use libp2p::core::transport::ListenerId;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use super::{Engine, Handle, Side};
use crate::backend::Backends;
use crate::front::Splices;
use crate::gateway::fetch::FetchCmd;
use crate::http::Health;
use crate::keyed::{Map, Set};
use crate::metrics::Metrics;
use crate::net::bitswap::{FrameBounds, ONE_STREAM, STREAM_BUDGET};
use crate::net::swarm::Behaviour;
use crate::preload::Reverse;
use crate::preload::refs::PreloadCmd;
use crate::router::Router;
use crate::routing::Core;

/// Preload mode's part of the engine.
pub struct PreloadParts {
    pub reverse: Reverse,
    pub commands: mpsc::UnboundedReceiver<PreloadCmd>,
}

/// The shared port's part of the engine (with or without preload).
pub struct FrontParts {
    /// Who the spliced WebSocket connections really are.
    pub splices: Splices,
    /// The loopback WebSocket listener the shared port splices to.
    pub internal_ws: ListenerId,
    /// Where that listener ended up, for the shared port.
    pub internal_ws_addr: watch::Sender<Option<SocketAddr>>,
}

/// The plumbing of preload mode (its routing is in the core).
pub(super) struct Preload {
    pub(super) commands: mpsc::UnboundedReceiver<PreloadCmd>,
}

/// The gateway's part of the engine: its fetch commands and their bound.
pub struct GatewayParts {
    pub commands: mpsc::Receiver<FetchCmd>,
    /// Fetches waiting in the core at once.
    pub max_fetches: usize,
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
    pub front: Option<FrontParts>,
    /// External addresses were set from `--announce`: listen addresses are not
    /// announced (identify reports external addresses only).
    pub announced: bool,
    /// `--block-cache-bytes` (0: no cache).
    pub block_cache_bytes: u64,
    pub gateway: Option<GatewayParts>,
}

impl Engine {
    pub fn new(parts: Parts, registry: &mut Registry) -> anyhow::Result<(Self, Handle)> {
        let (room_tx, room_rx) = mpsc::channel(1024);
        let clients_side = Side::new(
            parts.swarm,
            parts.max_streams_per_peer,
            Some(parts.client_frames),
            STREAM_BUDGET,
            Some(room_tx),
            &parts.metrics,
        );
        let backends_side = Side::new(
            parts.backend_swarm,
            parts.max_streams_per_peer,
            None,
            ONE_STREAM,
            None,
            &parts.metrics,
        );
        let (handle, commands) = Handle::channel(16);
        let (resolved_tx, resolved_rx) = mpsc::channel(64);
        let (undelivered_tx, undelivered_rx) = mpsc::channel(1024);
        let (reverse, preload) = match parts.preload {
            Some(p) => (
                Some(p.reverse),
                Some(Preload {
                    commands: p.commands,
                }),
            ),
            None => (None, None),
        };
        super::accounting::zeroes(&parts.metrics);
        let core = Core::new(parts.router, reverse)
            .with_cache(crate::cache::BlockCache::new(parts.block_cache_bytes));
        let (core, fetch_commands) = match parts.gateway {
            Some(g) => (core.with_max_fetches(g.max_fetches), Some(g.commands)),
            None => (core, None),
        };
        let engine = Self {
            clients_side,
            backends_side,
            core,
            backends: Backends::default(),
            clients: Set::default(),
            connected_backends: Map::default(),
            commands,
            resolved_tx,
            resolved_rx,
            undelivered_tx,
            undelivered_rx,
            room_rx,
            http: crate::http_client::plain()
                .build()
                .expect("a client without TLS roots builds"),
            metrics: parts.metrics,
            libp2p_metrics: libp2p::metrics::Metrics::new(registry),
            health: parts.health,
            max_client_buffer: parts.max_client_buffer,
            preload,
            front: parts.front,
            announced: parts.announced,
            listeners: HashSet::new(),
            drain: None,
            fetch_commands,
            fetch_replies: HashMap::new(),
            ebb: crate::allocator::Ebb::default(),
        };
        Ok((engine, handle))
    }
}
