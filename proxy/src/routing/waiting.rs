//! One client's wants held back in the core (for its address's rates, or for room in
//! its writer's queue), oldest first.

use std::collections::VecDeque;

use cid::Cid;

use crate::bitswap::WantEntry;
use crate::keyed::Map;

/// One client's waiting wants, oldest first. The queue holds CIDs and the map the
/// wants themselves, so a cancel only forgets the CID (O(1)) and an upgrade (a
/// WANT-BLOCK for a waiting WANT-HAVE) keeps its place; the queue skips forgotten
/// CIDs and is compacted when they outnumber the rest.
#[derive(Debug, Default)]
pub struct Waiting {
    queue: VecDeque<Cid>,
    live: Map<Cid, WantEntry>,
}

impl Waiting {
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Queues `w` unless its CID already waits.
    pub fn push(&mut self, w: &WantEntry) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.live.entry(w.cid) {
            e.insert(w.clone());
            self.queue.push_back(w.cid);
        }
    }

    /// Replaces the waiting want of `w`'s CID, in its place.
    pub fn replace(&mut self, w: &WantEntry) {
        if let Some(waiting) = self.live.get_mut(&w.cid) {
            *waiting = w.clone();
        }
    }

    pub fn forget(&mut self, cid: &Cid) {
        if self.live.remove(cid).is_some() && self.queue.len() > 2 * self.live.len() + 64 {
            let live = &self.live;
            self.queue.retain(|c| live.contains_key(c));
        }
    }

    pub fn contains(&self, cid: &Cid) -> bool {
        self.live.contains_key(cid)
    }

    pub fn pop(&mut self) -> Option<WantEntry> {
        while let Some(cid) = self.queue.pop_front() {
            if let Some(w) = self.live.remove(&cid) {
                return Some(w);
            }
        }
        None
    }
}
