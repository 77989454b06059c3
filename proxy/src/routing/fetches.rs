//! HTTP fetches (the trustless gateway, `/routing/v1`) as one more client of the
//! router. The gateway holds one client identity in the router; its wants are the
//! union of the waiting fetches, so a CID that a bitswap client and an HTTP client
//! both want is one want at one backend, with the same affinity, failover and
//! deduplication. The router's messages to that identity are turned here into
//! answers for the waiting fetches. Pure: time is passed in.

use std::collections::BTreeSet;
use std::time::Instant;

use cid::Cid;
use libp2p::PeerId;

use crate::bitswap::{Block, Message, PresenceKind, WantEntry, WantKind};
use crate::keyed::Map;

/// A fetch, numbered by whoever asks (unique among those open).
pub type FetchId = u64;

/// How a fetch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The block, verified against its CID (the router only delivers blocks whose
    /// CID was derived from their data).
    Block(Block),
    /// A backend has it (a HAVE, or the block itself arrived).
    Have,
    /// Every healthy backend said it lacks it.
    DontHave,
    /// Past the fetch's deadline.
    Timeout,
    /// No backend is connected.
    NoBackend,
    /// Too many fetches wait already.
    Overloaded,
    /// Every backend's queue is too deep to serve it in time (load shedding): try
    /// again later.
    Shed,
}

/// The table is full (or the id is taken): [`Fetched::Overloaded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug, Clone, Copy)]
struct Waiting {
    cid: Cid,
    kind: WantKind,
    deadline: Instant,
}

pub struct Fetches {
    /// The gateway's client identity in the router: random per process, so no
    /// remote peer can take it (and cancel or join the gateway's wants).
    me: PeerId,
    /// Fetches waiting at once; more are refused.
    max: usize,
    open: Map<FetchId, Waiting>,
    by_cid: Map<Cid, Vec<FetchId>>,
    deadlines: BTreeSet<(Instant, FetchId)>,
}

impl Fetches {
    pub fn new(me: PeerId, max: usize) -> Self {
        Self {
            me,
            max,
            open: Map::default(),
            by_cid: Map::default(),
            deadlines: BTreeSet::new(),
        }
    }

    pub fn client_id(&self) -> PeerId {
        self.me
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Opens a fetch; returns the want to give the router, or why not. The want is
    /// a block want if any fetch of that CID wants the block.
    pub fn open(
        &mut self,
        id: FetchId,
        cid: Cid,
        kind: WantKind,
        deadline: Instant,
    ) -> Result<WantEntry, Full> {
        if self.open.len() >= self.max || self.open.contains_key(&id) {
            return Err(Full);
        }
        self.open.insert(
            id,
            Waiting {
                cid,
                kind,
                deadline,
            },
        );
        self.deadlines.insert((deadline, id));
        let ids = self.by_cid.entry(cid).or_default();
        ids.push(id);
        let open = &self.open;
        let block = ids.iter().any(|i| open[i].kind == WantKind::Block);
        Ok(WantEntry {
            cid,
            priority: 1,
            cancel: false,
            kind: if block {
                WantKind::Block
            } else {
                WantKind::Have
            },
            // What lets "every backend lacks it" end the fetch at once.
            send_dont_have: true,
        })
    }

    /// Closes a fetch its asker gave up on; the cancel for the router when no other
    /// fetch wants that CID.
    pub fn close(&mut self, id: FetchId) -> Option<WantEntry> {
        let w = self.remove(id)?;
        (!self.by_cid.contains_key(&w.cid)).then(|| WantEntry::cancel(w.cid))
    }

    /// Fetches past their deadline: their answers, and the cancels for the router.
    pub fn expire(&mut self, now: Instant) -> (Vec<(FetchId, Fetched)>, Vec<WantEntry>) {
        let mut answers = Vec::new();
        let mut cancels = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            answers.push((id, Fetched::Timeout));
            cancels.extend(self.close(id));
        }
        (answers, cancels)
    }

    /// The router's message to the gateway's identity: the answers it gives, and
    /// the CIDs whose want the gateway withdraws (a DONT_HAVE leaves the want parked
    /// in the router, where nothing would ever clear it).
    pub fn answer(&mut self, msg: &Message) -> (Vec<(FetchId, Fetched)>, Vec<Cid>) {
        let mut answers = Vec::new();
        let mut withdraw = Vec::new();
        for block in &msg.blocks {
            for (id, kind) in self.take_cid(&block.cid) {
                let got = match kind {
                    WantKind::Block => Fetched::Block(block.clone()),
                    WantKind::Have => Fetched::Have,
                };
                answers.push((id, got));
            }
        }
        for p in &msg.presences {
            // The router tells HAVE only for a want of kind Have, which it is only
            // while every fetch of that CID is a HAVE fetch; so either answer ends
            // them all.
            let got = match p.kind {
                PresenceKind::Have => Fetched::Have,
                PresenceKind::DontHave => {
                    withdraw.push(p.cid);
                    Fetched::DontHave
                }
            };
            answers.extend(
                self.take_cid(&p.cid)
                    .into_iter()
                    .map(|(id, _)| (id, got.clone())),
            );
        }
        (answers, withdraw)
    }

    /// The want of `cid` was shed: every fetch of it ends so.
    pub fn shed(&mut self, cid: &Cid) -> Vec<(FetchId, Fetched)> {
        self.take_cid(cid)
            .into_iter()
            .map(|(id, _)| (id, Fetched::Shed))
            .collect()
    }

    /// Removes the fetches of `cid`.
    fn take_cid(&mut self, cid: &Cid) -> Vec<(FetchId, WantKind)> {
        let ids = self.by_cid.get(cid).cloned().unwrap_or_default();
        ids.into_iter()
            .filter_map(|id| self.remove(id).map(|w| (id, w.kind)))
            .collect()
    }

    fn remove(&mut self, id: FetchId) -> Option<Waiting> {
        let w = self.open.remove(&id)?;
        self.deadlines.remove(&(w.deadline, id));
        if let Some(ids) = self.by_cid.get_mut(&w.cid) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_cid.remove(&w.cid);
            }
        }
        Some(w)
    }
}
