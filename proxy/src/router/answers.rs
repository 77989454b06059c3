//! What the backends' answers do: a block goes to every client that wanted it and is
//! cancelled where it is still pending; a HAVE answers the clients that asked only
//! HAVE; a DONT_HAVE (or a want the backend's stream never carried) moves the want to
//! the next backend.

use std::time::Instant;

use cid::Cid;
use libp2p::PeerId;

use super::{Router, State};
use crate::bitswap::{Block, PresenceKind, WantKind};

impl Router {
    /// Delivers a block from backend `from` (`None`: from preload's reverse path).
    pub(super) fn deliver(&mut self, from: Option<PeerId>, block: &Block, now: Instant) {
        let Some(want) = self.wants.remove(&block.cid) else {
            self.stats.unsolicited_blocks += 1;
            return;
        };
        if let State::Sent { at, .. } = want.state
            && from.is_some()
        {
            self.out.rtts.push(now.saturating_duration_since(at));
            self.fair.answered(want.tag);
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
                    self.fair.delivered(&client, block.data.len());
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

    pub(super) fn presence(&mut self, from: PeerId, cid: Cid, kind: PresenceKind, now: Instant) {
        let Some(want) = self.wants.get_mut(&cid) else {
            return;
        };
        let State::Sent { backend, .. } = want.state else {
            return;
        };
        if backend != from {
            return; // a stale answer from a backend we already moved away from
        }
        self.fair.answered(want.tag);
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
