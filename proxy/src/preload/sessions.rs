//! The allowed-CID tables: for each open preload (one `/api/v0/refs` call), the DAG a
//! backend may fetch from the uploader. It starts at the requested roots and grows as
//! blocks of the DAG pass through the proxy and are decoded. Pure; every table is
//! bounded, and sessions expire.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cid::Cid;
use libp2p::PeerId;

use super::client_ip::IpKey;
use super::dag;

/// Bounds on what preloads may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Preloads open at once (in flight, or lingering after their response).
    pub max_sessions: usize,
    /// CIDs one preload's DAG may grow to; the rest of a bigger DAG is refused.
    pub max_blocks_per_session: usize,
    /// CIDs all preloads together may hold.
    pub max_total_blocks: usize,
    /// How long a preload stays after its refs response ends (late wants, cancels).
    pub linger: Duration,
    /// The most a preload may live, finished or not.
    pub max_lifetime: Duration,
    /// Preloads one address key may hold open (a share of `max_sessions`, so one
    /// address cannot lock every other out).
    pub max_sessions_per_address: usize,
    /// Block bytes one preload may pass from its uploader to its backend; past it the
    /// backend's further wants for that DAG are refused.
    pub max_bytes_per_session: u64,
    /// The same for all the open preloads of one address key together.
    pub max_bytes_per_address: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 256,
            max_blocks_per_session: 100_000,
            max_total_blocks: 1_000_000,
            linger: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(600),
            max_sessions_per_address: 32,
            max_bytes_per_session: 1 << 30,
            max_bytes_per_address: 4 << 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("too many preloads open")]
    TooMany,
    #[error("too many preloads open from this address")]
    TooManyForAddress,
    #[error("no roots")]
    NoRoots,
}

#[derive(Debug)]
pub struct Session {
    /// Who asked: the uploader's address (or /64).
    pub client: IpKey,
    /// The backend the refs call went to, the only one whose wants this allows.
    pub backend: PeerId,
    /// `max-depth`: links deeper than this are not followed (`None`: the whole DAG).
    max_depth: Option<u32>,
    /// Every CID of the DAG learned so far, with its smallest depth (roots are 0).
    allowed: HashMap<Cid, u32>,
    opened: Instant,
    closed: Option<Instant>,
    /// The DAG outgrew a bound and was cut.
    pub truncated: bool,
    /// Block bytes passed from the uploader to the backend for it.
    pub bytes: u64,
}

impl Session {
    pub fn dag_size(&self) -> usize {
        self.allowed.len()
    }
}

/// What a block taught the tables.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    /// New CIDs allowed.
    pub added: usize,
    /// The block is in some DAG but its codec could not be read.
    pub undecodable: bool,
}

#[derive(Debug, Default)]
pub struct Sessions {
    limits: Limits,
    sessions: BTreeMap<SessionId, Session>,
    next: u64,
    total: usize,
    /// Bytes passed for the open sessions of each address key.
    bytes_by_key: HashMap<IpKey, u64>,
}

impl Sessions {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// CIDs held by all sessions together.
    pub fn total_blocks(&self) -> usize {
        self.total
    }

    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// A new preload of `roots` for the uploader `client`, fetched by `backend`.
    pub fn open(
        &mut self,
        roots: &[Cid],
        client: IpKey,
        backend: PeerId,
        max_depth: Option<u32>,
        now: Instant,
    ) -> Result<SessionId, OpenError> {
        if roots.is_empty() {
            return Err(OpenError::NoRoots);
        }
        let from_here = self
            .sessions
            .values()
            .filter(|s| s.client == client)
            .count();
        if from_here >= self.limits.max_sessions_per_address {
            return Err(OpenError::TooManyForAddress);
        }
        if self.sessions.len() >= self.limits.max_sessions {
            return Err(OpenError::TooMany);
        }
        let id = SessionId(self.next);
        self.next += 1;
        let mut session = Session {
            client,
            backend,
            max_depth,
            allowed: HashMap::new(),
            opened: now,
            closed: None,
            truncated: false,
            bytes: 0,
        };
        for root in roots {
            if !self.admit(&mut session, *root, 0) {
                break;
            }
        }
        self.sessions.insert(id, session);
        Ok(id)
    }

    /// The refs response ended; the session lingers a little, then expires.
    pub fn close(&mut self, id: SessionId, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.closed.get_or_insert(now);
        }
    }

    /// Removes sessions past their linger or lifetime, and returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<Session> {
        let limits = self.limits;
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.closed.is_some_and(|c| now >= c + limits.linger)
                    || now >= s.opened + limits.max_lifetime
            })
            .map(|(id, _)| *id)
            .collect();
        due.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Removes one session now.
    pub fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.sessions.remove(&id)?;
        self.total -= s.allowed.len();
        if let Some(b) = self.bytes_by_key.get_mut(&s.client) {
            *b = b.saturating_sub(s.bytes);
            if *b == 0 {
                self.bytes_by_key.remove(&s.client);
            }
        }
        Some(s)
    }

    /// The uploaders whose preloads let `backend` want `cid` (deduplicated).
    pub fn clients_for(&self, backend: &PeerId, cid: &Cid) -> Vec<IpKey> {
        let mut keys: Vec<IpKey> = self
            .sessions
            .values()
            .filter(|s| s.backend == *backend && s.allowed.contains_key(cid))
            .filter(|s| self.within_budget(s))
            .map(|s| s.client)
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn within_budget(&self, s: &Session) -> bool {
        let of_key = self.bytes_by_key.get(&s.client).copied().unwrap_or(0);
        s.bytes < self.limits.max_bytes_per_session && of_key < self.limits.max_bytes_per_address
    }

    /// `bytes` of `cid` went from an uploader to `backend`: charged to each session
    /// that allowed it, and to each of their address keys once.
    pub fn charge(&mut self, backend: &PeerId, cid: &Cid, bytes: u64) {
        let mut keys = Vec::new();
        for s in self.sessions.values_mut() {
            if s.backend == *backend && s.allowed.contains_key(cid) {
                s.bytes = s.bytes.saturating_add(bytes);
                keys.push(s.client);
            }
        }
        keys.sort();
        keys.dedup();
        for k in keys {
            let b = self.bytes_by_key.entry(k).or_default();
            *b = b.saturating_add(bytes);
        }
    }

    /// Does any session include `cid`?
    pub fn tracks(&self, cid: &Cid) -> bool {
        self.sessions.values().any(|s| s.allowed.contains_key(cid))
    }

    /// A verified block passed through: if it belongs to a DAG being preloaded, its
    /// links join that DAG (one level deeper, within `max-depth`).
    pub fn learn(&mut self, cid: &Cid, data: &[u8]) -> Learned {
        let mut learned = Learned::default();
        let ids: Vec<(SessionId, u32)> = self
            .sessions
            .iter()
            .filter_map(|(id, s)| {
                let depth = *s.allowed.get(cid)?;
                s.max_depth
                    .is_none_or(|m| depth < m)
                    .then_some((*id, depth))
            })
            .collect();
        if ids.is_empty() {
            return learned;
        }
        let links = match dag::links(cid, data) {
            Ok(l) => l,
            Err(_) => {
                learned.undecodable = true;
                return learned;
            }
        };
        for (id, depth) in ids {
            let mut s = self.sessions.remove(&id).expect("listed");
            for link in &links {
                let before = s.allowed.len();
                if !self.admit(&mut s, *link, depth + 1) {
                    break;
                }
                learned.added += s.allowed.len() - before;
            }
            self.sessions.insert(id, s);
        }
        learned
    }

    /// Adds `cid` at `depth` to `s` within the bounds; false once a bound is hit.
    fn admit(&mut self, s: &mut Session, cid: Cid, depth: u32) -> bool {
        if let Some(d) = s.allowed.get_mut(&cid) {
            *d = (*d).min(depth);
            return true;
        }
        if s.allowed.len() >= self.limits.max_blocks_per_session
            || self.total >= self.limits.max_total_blocks
        {
            s.truncated = true;
            return false;
        }
        s.allowed.insert(cid, depth);
        self.total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multihash_codetable::{Code, MultihashDigest};
    use std::net::Ipv4Addr;

    fn raw(i: u32) -> Cid {
        Cid::new_v1(dag::RAW, Code::Sha2_256.digest(&i.to_le_bytes()))
    }

    /// A dag-json block linking `links`, and its CID.
    fn node(links: &[Cid]) -> (Cid, Vec<u8>) {
        let items: Vec<String> = links.iter().map(|l| format!(r#"{{"/":"{l}"}}"#)).collect();
        let data = format!("[{}]", items.join(",")).into_bytes();
        (
            Cid::new_v1(dag::DAG_JSON, Code::Sha2_256.digest(&data)),
            data,
        )
    }

    const A: IpKey = IpKey::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn the_dag_grows_only_from_blocks_of_the_dag() {
        let now = Instant::now();
        let backend = PeerId::random();
        let (leaf_parent, leaf_parent_data) = node(&[raw(1), raw(2)]);
        let (root, root_data) = node(&[leaf_parent, raw(3)]);
        let mut s = Sessions::new(Limits::default());
        let id = s.open(&[root], A, backend, None, now).unwrap();
        assert_eq!(s.clients_for(&backend, &root), vec![A]);
        assert!(s.clients_for(&backend, &raw(1)).is_empty());
        assert!(
            s.clients_for(&PeerId::random(), &root).is_empty(),
            "other backends: no"
        );

        // A block that is not in the DAG teaches nothing, even if it links to things.
        let (stranger, stranger_data) = node(&[raw(99)]);
        assert_eq!(s.learn(&stranger, &stranger_data).added, 0);
        assert!(!s.tracks(&raw(99)));

        assert_eq!(s.learn(&root, &root_data).added, 2);
        assert_eq!(s.learn(&leaf_parent, &leaf_parent_data).added, 2);
        for c in [raw(1), raw(2), raw(3)] {
            assert_eq!(s.clients_for(&backend, &c), vec![A]);
        }
        assert_eq!(s.get(id).unwrap().dag_size(), 5);
        assert_eq!(s.total_blocks(), 5);
    }

    #[test]
    fn max_depth_stops_learning() {
        let now = Instant::now();
        let b = PeerId::random();
        let (child, child_data) = node(&[raw(1)]);
        let (root, root_data) = node(&[child]);
        let mut s = Sessions::new(Limits::default());
        s.open(&[root], A, b, Some(1), now).unwrap();
        s.learn(&root, &root_data);
        s.learn(&child, &child_data);
        assert!(s.tracks(&child));
        assert!(!s.tracks(&raw(1)), "depth 2 is beyond max-depth 1");
    }

    #[test]
    fn bounds_cut_the_dag_and_count_sessions() {
        let now = Instant::now();
        let b = PeerId::random();
        let limits = Limits {
            max_sessions: 2,
            max_blocks_per_session: 3,
            max_total_blocks: 5,
            ..Limits::default()
        };
        let mut s = Sessions::new(limits);
        let (root, data) = node(&(0..10).map(raw).collect::<Vec<_>>());
        let first = s.open(&[root], A, b, None, now).unwrap();
        s.learn(&root, &data);
        assert_eq!(s.get(first).unwrap().dag_size(), 3);
        assert!(s.get(first).unwrap().truncated);
        let second = s.open(&[root], A, b, None, now).unwrap();
        s.learn(&root, &data);
        assert_eq!(s.total_blocks(), 5, "the global bound holds");
        assert_eq!(s.open(&[root], A, b, None, now), Err(OpenError::TooMany));
        s.remove(first);
        s.remove(second);
        assert_eq!(s.total_blocks(), 0);
        assert_eq!(s.open(&[], A, b, None, now), Err(OpenError::NoRoots));
    }

    #[test]
    fn one_address_holds_its_share_of_the_sessions() {
        let now = Instant::now();
        let b = PeerId::random();
        let limits = Limits {
            max_sessions: 4,
            max_sessions_per_address: 2,
            ..Limits::default()
        };
        let mut s = Sessions::new(limits);
        let other = IpKey::V4(Ipv4Addr::new(198, 51, 100, 2));
        let first = s.open(&[raw(1)], A, b, None, now).unwrap();
        s.open(&[raw(2)], A, b, None, now).unwrap();
        assert_eq!(
            s.open(&[raw(3)], A, b, None, now),
            Err(OpenError::TooManyForAddress)
        );
        assert!(
            s.open(&[raw(3)], other, b, None, now).is_ok(),
            "another address gets in"
        );
        s.remove(first);
        assert!(s.open(&[raw(3)], A, b, None, now).is_ok());
    }

    #[test]
    fn byte_budgets_per_session_and_per_address_end_the_fetch() {
        let now = Instant::now();
        let b = PeerId::random();
        let limits = Limits {
            max_bytes_per_session: 100,
            max_bytes_per_address: 150,
            ..Limits::default()
        };
        let mut s = Sessions::new(limits);
        let (x, y, z) = (raw(1), raw(2), raw(3));
        let one = s.open(&[x, y], A, b, None, now).unwrap();
        assert_eq!(s.clients_for(&b, &y), vec![A]);
        s.charge(&b, &x, 100);
        assert!(
            s.clients_for(&b, &y).is_empty(),
            "the session's budget is spent"
        );
        let two = s.open(&[z], A, b, None, now).unwrap();
        assert_eq!(s.clients_for(&b, &z), vec![A]);
        s.charge(&b, &z, 50);
        assert!(
            s.clients_for(&b, &z).is_empty(),
            "the address's budget is spent"
        );
        assert_eq!(s.get(two).unwrap().bytes, 50);
        s.remove(one);
        assert_eq!(s.clients_for(&b, &z), vec![A], "its bytes went with it");
    }

    #[test]
    fn sessions_expire_after_linger_or_lifetime() {
        let t0 = Instant::now();
        let b = PeerId::random();
        let limits = Limits {
            linger: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(600),
            ..Limits::default()
        };
        let mut s = Sessions::new(limits);
        let done = s.open(&[raw(1)], A, b, None, t0).unwrap();
        let stuck = s.open(&[raw(2)], A, b, None, t0).unwrap();
        s.close(done, t0 + Duration::from_secs(10));
        assert!(s.expire(t0 + Duration::from_secs(39)).is_empty());
        let gone = s.expire(t0 + Duration::from_secs(40));
        assert_eq!(gone.len(), 1);
        assert!(s.get(done).is_none() && s.get(stuck).is_some());
        assert_eq!(s.expire(t0 + Duration::from_secs(600)).len(), 1);
        assert!(s.is_empty());
        assert_eq!(s.total_blocks(), 0);
    }
}
