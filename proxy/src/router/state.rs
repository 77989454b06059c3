//! The router's per-want and per-backend state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Instant;

use cid::Cid;
use libp2p::PeerId;

use crate::bitswap::WantKind;
use crate::keyed::Set;

#[derive(Debug, Clone, Copy)]
pub(super) struct ClientWant {
    pub(super) kind: WantKind,
    pub(super) send_dont_have: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
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
pub(super) struct Want {
    /// Client → the kind it wants. A BTreeMap keeps fan-out order deterministic.
    pub(super) wanters: BTreeMap<PeerId, WantKind>,
    pub(super) state: State,
    /// Backends that failed this want, in order.
    pub(super) tried: Vec<PeerId>,
    /// Its start tag in fair queueing (see `fair`), kept across failovers.
    pub(super) tag: u64,
}

impl Want {
    /// Block if any client wants the block; Have only if all want just HAVE.
    pub(super) fn kind(&self) -> WantKind {
        if self.wanters.values().any(|k| *k == WantKind::Block) {
            WantKind::Block
        } else {
            WantKind::Have
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Backend {
    pub(super) inflight: Set<Cid>,
    /// When it last answered anything (a block or a presence).
    pub(super) last_answer: Option<Instant>,
    /// CIDs waiting for room here, lowest start tag first; entries may be stale
    /// (checked on pop).
    pub(super) queue: BinaryHeap<Reverse<(u64, Cid)>>,
    /// The live entries of `queue`.
    pub(super) queued: usize,
    /// Its answer rate while saturated, for load shedding.
    pub(super) meter: super::shedding::Meter,
}
