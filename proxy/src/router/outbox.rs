//! What the router decided to say, batched per peer until the engine sends it.

use std::time::Duration;

use cid::Cid;
use libp2p::PeerId;

use crate::bitswap::{Block, Message, Presence, PresenceKind, WantEntry, WantKind};
use crate::keyed::Map;

#[derive(Debug, Default)]
pub struct Outbox {
    /// Incremental wantlists (wants and cancels) for backends, in decision order.
    pub to_backends: Map<PeerId, Message>,
    /// Blocks and presences for clients.
    pub to_clients: Map<PeerId, Message>,
    /// Want-to-block times of the blocks delivered, for the RTT histogram.
    pub rtts: Vec<Duration>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.to_backends.is_empty() && self.to_clients.is_empty()
    }

    /// Appends `other`'s messages after this one's.
    pub fn merge(&mut self, other: Outbox) {
        for (map, more) in [
            (&mut self.to_backends, other.to_backends),
            (&mut self.to_clients, other.to_clients),
        ] {
            for (peer, msg) in more {
                let m = map.entry(peer).or_default();
                m.full |= msg.full;
                m.wants.extend(msg.wants);
                m.blocks.extend(msg.blocks);
                m.presences.extend(msg.presences);
            }
        }
        self.rtts.extend(other.rtts);
    }

    fn backend(&mut self, peer: PeerId) -> &mut Message {
        self.to_backends.entry(peer).or_default()
    }

    fn client(&mut self, peer: PeerId) -> &mut Message {
        self.to_clients.entry(peer).or_default()
    }

    pub(crate) fn want(&mut self, backend: PeerId, cid: Cid, kind: WantKind, priority: i32) {
        // Always ask for DONT_HAVE: it is what lets the want move on at once.
        self.backend(backend).wants.push(ask(cid, kind, priority));
    }

    pub(crate) fn cancel(&mut self, backend: PeerId, cid: Cid) {
        self.backend(backend).wants.push(WantEntry::cancel(cid));
    }

    pub(crate) fn presence_to_backend(&mut self, backend: PeerId, cid: Cid, kind: PresenceKind) {
        self.backend(backend).presences.push(Presence { cid, kind });
    }

    pub(crate) fn block_to_client(&mut self, client: PeerId, block: Block) {
        self.client(client).blocks.push(block);
    }

    pub(crate) fn presence_to_client(&mut self, client: PeerId, cid: Cid, kind: PresenceKind) {
        self.client(client).presences.push(Presence { cid, kind });
    }

    /// Preload's reverse path: a backend's want, passed on to a client.
    pub(crate) fn want_to_client(&mut self, client: PeerId, cid: Cid, kind: WantKind) {
        self.client(client).wants.push(ask(cid, kind, 1));
    }

    pub(crate) fn cancel_to_client(&mut self, client: PeerId, cid: Cid) {
        self.client(client).wants.push(WantEntry::cancel(cid));
    }

    pub(crate) fn block_to_backend(&mut self, backend: PeerId, block: Block) {
        self.backend(backend).blocks.push(block);
    }
}

/// A want that asks for DONT_HAVE.
fn ask(cid: Cid, kind: WantKind, priority: i32) -> WantEntry {
    WantEntry {
        cid,
        priority,
        cancel: false,
        kind,
        send_dont_have: true,
    }
}
