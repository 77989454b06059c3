//! The reverse path of preload mode: a backend fetching a preloaded DAG from the client
//! that uploaded it, through the proxy. Pure, like the router: no I/O and no clock.
//!
//! A backend WANT goes on only if an open preload for that backend includes the CID,
//! and then only to the clients connected from that preload's uploader address. Every
//! other backend WANT is answered DONT_HAVE (when the backend asked for one) and goes
//! nowhere. The clients' blocks, HAVEs and DONT_HAVEs go back to the backends that
//! asked. Blocks passing either way teach the sessions the DAG's links.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use cid::Cid;
use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

use super::client_ip::IpKey;
use super::sessions::{Limits, OpenError, Session, SessionId, Sessions};
use crate::bitswap::{Block, Message, PresenceKind, WantEntry, WantKind};
use crate::router::Outbox;

/// Counters, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Backend wants passed on to an uploader (once per backend want).
    pub wants_forwarded: u64,
    /// Backend wants refused: no open preload includes the CID.
    pub wants_refused: u64,
    /// Blocks from uploaders delivered to backends.
    pub blocks_to_backends: u64,
    pub bytes_to_backends: u64,
    /// Blocks of a preloaded DAG whose codec the proxy cannot read (not followed).
    pub undecodable_blocks: u64,
    /// Backend wants a preload allows but whose uploader is not connected: answered
    /// DONT_HAVE at once, so the backend does not wait for its own timeout.
    pub wants_no_uploader: u64,
}

#[derive(Debug)]
struct ReverseWant {
    kind: WantKind,
    send_dont_have: bool,
    /// Clients this want was passed to, and those of them that said DONT_HAVE.
    sent_to: BTreeSet<PeerId>,
    dont_have: BTreeSet<PeerId>,
}

#[derive(Debug, Default)]
pub struct Reverse {
    sessions: Sessions,
    /// Each client connection's address key.
    conns: HashMap<PeerId, HashMap<ConnectionId, IpKey>>,
    /// Clients by address key, with their connection count there.
    by_key: HashMap<IpKey, HashMap<PeerId, usize>>,
    /// Outstanding reverse wants: CID → backend → want. Every entry is for a CID that
    /// some open session allows that backend, so the sessions' bounds bound this too.
    wants: HashMap<Cid, HashMap<PeerId, ReverseWant>>,
    out: Outbox,
    stats: Stats,
}

impl Reverse {
    pub fn new(limits: Limits) -> Self {
        Self {
            sessions: Sessions::new(limits),
            ..Self::default()
        }
    }

    pub fn take_outbox(&mut self) -> Outbox {
        std::mem::take(&mut self.out)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Reverse wants outstanding (CID and backend pairs).
    pub fn wants_outstanding(&self) -> usize {
        self.wants.values().map(HashMap::len).sum()
    }

    // ------------------------------------------------------------- sessions

    /// A refs call for `roots` from `client`, sent to `backend`.
    pub fn open(
        &mut self,
        roots: &[Cid],
        client: IpAddr,
        backend: PeerId,
        max_depth: Option<u32>,
        now: Instant,
    ) -> Result<SessionId, OpenError> {
        self.sessions
            .open(roots, IpKey::of(client), backend, max_depth, now)
    }

    /// The refs call ended.
    pub fn close(&mut self, id: SessionId, now: Instant) {
        self.sessions.close(id, now);
    }

    /// Expires sessions, withdraws the wants they no longer allow, and returns the
    /// expired sessions (for the DAG-size histogram).
    pub fn tick(&mut self, now: Instant) -> Vec<Session> {
        let gone = self.sessions.expire(now);
        if !gone.is_empty() {
            self.withdraw_disallowed();
        }
        gone
    }

    /// Drops every reverse want no open session allows any more: CANCEL to the clients
    /// it went to, DONT_HAVE to the backend if it asked.
    fn withdraw_disallowed(&mut self) {
        let cids: Vec<Cid> = self.wants.keys().copied().collect();
        for cid in cids {
            let backends: Vec<PeerId> = self.wants[&cid].keys().copied().collect();
            for backend in backends {
                if self.sessions.clients_for(&backend, &cid).is_empty() {
                    let w = self.take_want(&cid, &backend).expect("listed");
                    self.cancel_at_clients(cid, &w, None);
                    if w.send_dont_have {
                        self.out
                            .presence_to_backend(backend, cid, PresenceKind::DontHave);
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------- clients

    /// A client connection from `ip`. Outstanding reverse wants of preloads from that
    /// address go to it too.
    pub fn client_connected(&mut self, client: PeerId, conn: ConnectionId, ip: IpAddr) {
        let key = IpKey::of(ip);
        if self
            .conns
            .entry(client)
            .or_default()
            .insert(conn, key)
            .is_some()
        {
            return;
        }
        *self
            .by_key
            .entry(key)
            .or_default()
            .entry(client)
            .or_default() += 1;
        let mut to_send = Vec::new();
        for (cid, per_backend) in &self.wants {
            for (backend, w) in per_backend {
                if !w.sent_to.contains(&client)
                    && self.sessions.clients_for(backend, cid).contains(&key)
                {
                    to_send.push((*cid, *backend));
                }
            }
        }
        for (cid, backend) in to_send {
            let w = self
                .wants
                .get_mut(&cid)
                .and_then(|m| m.get_mut(&backend))
                .expect("listed");
            if w.sent_to.insert(client) {
                self.out.want_to_client(client, cid, w.kind);
            }
        }
    }

    /// A client connection closed. When it was the client's last, its part in the
    /// outstanding reverse wants ends.
    pub fn client_disconnected(&mut self, client: PeerId, conn: ConnectionId) {
        let Some(conns) = self.conns.get_mut(&client) else {
            return;
        };
        let Some(key) = conns.remove(&conn) else {
            return;
        };
        if let Some(at) = self.by_key.get_mut(&key) {
            if let Some(n) = at.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    at.remove(&client);
                }
            }
            if at.is_empty() {
                self.by_key.remove(&key);
            }
        }
        if !conns.is_empty() {
            return;
        }
        self.conns.remove(&client);
        let cids: Vec<Cid> = self.wants.keys().copied().collect();
        for cid in cids {
            let backends: Vec<PeerId> = self.wants[&cid].keys().copied().collect();
            for backend in backends {
                let w = self
                    .wants
                    .get_mut(&cid)
                    .and_then(|m| m.get_mut(&backend))
                    .expect("listed");
                w.sent_to.remove(&client);
                w.dont_have.remove(&client);
                self.settle(cid, backend);
            }
        }
    }

    /// A client's message: its blocks and presences may answer reverse wants. Returns
    /// the blocks some backend wanted, which the forward router may also use.
    pub fn client_message(&mut self, client: PeerId, msg: &Message) -> Vec<Block> {
        let mut delivered = Vec::new();
        for block in &msg.blocks {
            self.learn(block);
            let Some(per_backend) = self.wants.remove(&block.cid) else {
                continue;
            };
            for (backend, w) in per_backend {
                self.stats.blocks_to_backends += 1;
                self.stats.bytes_to_backends += block.data.len() as u64;
                self.sessions
                    .charge(&backend, &block.cid, block.data.len() as u64);
                self.out.block_to_backend(backend, block.clone());
                self.cancel_at_clients(block.cid, &w, Some(client));
            }
            delivered.push(block.clone());
        }
        for p in &msg.presences {
            let Some(per_backend) = self.wants.get_mut(&p.cid) else {
                continue;
            };
            let backends: Vec<PeerId> = per_backend
                .iter()
                .filter(|(_, w)| w.sent_to.contains(&client))
                .map(|(b, _)| *b)
                .collect();
            for backend in backends {
                match p.kind {
                    PresenceKind::Have => {
                        let is_have = self.wants[&p.cid][&backend].kind == WantKind::Have;
                        if is_have {
                            let w = self.take_want(&p.cid, &backend).expect("listed");
                            self.out
                                .presence_to_backend(backend, p.cid, PresenceKind::Have);
                            self.cancel_at_clients(p.cid, &w, Some(client));
                        }
                    }
                    PresenceKind::DontHave => {
                        if let Some(w) =
                            self.wants.get_mut(&p.cid).and_then(|m| m.get_mut(&backend))
                        {
                            w.dont_have.insert(client);
                        }
                        self.settle(p.cid, backend);
                    }
                }
            }
        }
        delivered
    }

    /// A block from a backend (the forward path): it may teach a DAG being preloaded.
    pub fn observe(&mut self, block: &Block) {
        self.learn(block);
    }

    fn learn(&mut self, block: &Block) {
        if self.sessions.is_empty() {
            return;
        }
        if self.sessions.learn(&block.cid, &block.data).undecodable {
            self.stats.undecodable_blocks += 1;
        }
    }

    // ------------------------------------------------------------- backends

    /// A backend's wantlist (its fetch of a preloaded DAG, or anything else it wants).
    pub fn backend_wants(&mut self, backend: PeerId, full: bool, wants: &[WantEntry]) {
        if full {
            let keep: BTreeSet<Cid> = wants.iter().filter(|w| !w.cancel).map(|w| w.cid).collect();
            let gone: Vec<Cid> = self
                .wants
                .iter()
                .filter(|(c, m)| m.contains_key(&backend) && !keep.contains(c))
                .map(|(c, _)| *c)
                .collect();
            for cid in gone {
                let w = self.take_want(&cid, &backend).expect("listed");
                self.cancel_at_clients(cid, &w, None);
            }
        }
        for entry in wants {
            if entry.cancel {
                if let Some(w) = self.take_want(&entry.cid, &backend) {
                    self.cancel_at_clients(entry.cid, &w, None);
                }
                continue;
            }
            let keys = self.sessions.clients_for(&backend, &entry.cid);
            if keys.is_empty() {
                self.stats.wants_refused += 1;
                if entry.send_dont_have {
                    self.out
                        .presence_to_backend(backend, entry.cid, PresenceKind::DontHave);
                }
                continue;
            }
            let targets: Vec<PeerId> = keys
                .iter()
                .filter_map(|k| self.by_key.get(k))
                .flat_map(|m| m.keys().copied())
                .collect();
            let held = self
                .wants
                .get(&entry.cid)
                .is_some_and(|m| m.contains_key(&backend));
            if targets.is_empty() && !held {
                self.stats.wants_no_uploader += 1;
                if entry.send_dont_have {
                    self.out
                        .presence_to_backend(backend, entry.cid, PresenceKind::DontHave);
                }
                continue;
            }
            let w = self
                .wants
                .entry(entry.cid)
                .or_default()
                .entry(backend)
                .or_insert_with(|| ReverseWant {
                    kind: entry.kind,
                    send_dont_have: entry.send_dont_have,
                    sent_to: BTreeSet::new(),
                    dont_have: BTreeSet::new(),
                });
            self.stats.wants_forwarded += 1;
            w.send_dont_have |= entry.send_dont_have;
            let upgraded = w.kind == WantKind::Have && entry.kind == WantKind::Block;
            if upgraded {
                // It now wants the block itself: ask again, as WANT-BLOCK.
                w.kind = WantKind::Block;
                w.dont_have.clear();
                for c in &w.sent_to {
                    self.out.want_to_client(*c, entry.cid, WantKind::Block);
                }
            }
            for t in targets {
                if w.sent_to.insert(t) {
                    self.out.want_to_client(t, entry.cid, w.kind);
                }
            }
        }
    }

    /// The backend is gone: its reverse wants are cancelled at the clients.
    pub fn backend_down(&mut self, backend: PeerId) {
        let cids: Vec<Cid> = self
            .wants
            .iter()
            .filter(|(_, m)| m.contains_key(&backend))
            .map(|(c, _)| *c)
            .collect();
        for cid in cids {
            let w = self.take_want(&cid, &backend).expect("listed");
            self.cancel_at_clients(cid, &w, None);
        }
    }

    // ------------------------------------------------------------- helpers

    fn take_want(&mut self, cid: &Cid, backend: &PeerId) -> Option<ReverseWant> {
        let per_backend = self.wants.get_mut(cid)?;
        let w = per_backend.remove(backend);
        if per_backend.is_empty() {
            self.wants.remove(cid);
        }
        w
    }

    /// CANCEL at every client `w` went to (except `except`, which just answered),
    /// unless another backend's want for the CID still holds that client.
    fn cancel_at_clients(&mut self, cid: Cid, w: &ReverseWant, except: Option<PeerId>) {
        for c in &w.sent_to {
            if Some(*c) == except {
                continue;
            }
            let still = self
                .wants
                .get(&cid)
                .is_some_and(|m| m.values().any(|o| o.sent_to.contains(c)));
            if !still {
                self.out.cancel_to_client(*c, cid);
            }
        }
    }

    /// Every client the want went to said DONT_HAVE or left: tell the backend (which
    /// would otherwise wait for its own timeout).
    fn settle(&mut self, cid: Cid, backend: PeerId) {
        let Some(w) = self.wants.get(&cid).and_then(|m| m.get(&backend)) else {
            return;
        };
        let all_said_no = w.sent_to.is_subset(&w.dont_have);
        if !all_said_no {
            return;
        }
        let w = self.take_want(&cid, &backend).expect("present");
        if w.send_dont_have {
            self.out
                .presence_to_backend(backend, cid, PresenceKind::DontHave);
        }
    }
}

#[cfg(test)]
mod tests;
