//! One libp2p host and its bitswap stream I/O: the readers feeding the engine and a
//! writer task per peer.

use libp2p::{PeerId, Swarm};
use tokio::sync::mpsc;

use crate::keyed::Map;
use crate::metrics::Metrics;
use crate::net::bitswap::Control;
use crate::net::bitswap::{FrameBounds, Inbound, Readers, Undelivered, Writer};
use crate::net::swarm::Behaviour;

pub struct Side {
    pub swarm: Swarm<Behaviour>,
    control: Control,
    pub readers: Readers,
    pub inbound: mpsc::Receiver<Inbound>,
    pub writers: Map<PeerId, Writer>,
    /// Bytes per outbound stream before the writer moves to a fresh one.
    stream_budget: usize,
    /// Where writers say their queue drained (the clients' side only).
    room: Option<mpsc::Sender<PeerId>>,
}

impl Side {
    pub fn new(
        swarm: Swarm<Behaviour>,
        max_streams_per_peer: usize,
        frame_bounds: Option<FrameBounds>,
        stream_budget: usize,
        room: Option<mpsc::Sender<PeerId>>,
        metrics: &Metrics,
    ) -> Self {
        let control = swarm.behaviour().bitswap.control();
        let (tx, inbound) = mpsc::channel(1024);
        Self {
            swarm,
            control,
            readers: Readers::new(max_streams_per_peer, frame_bounds, tx, metrics.clone()),
            inbound,
            writers: Map::default(),
            stream_budget,
            room,
        }
    }

    /// The writer for `peer`, started on first use.
    pub fn writer(
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
                self.room.clone(),
            )
        })
    }
}
