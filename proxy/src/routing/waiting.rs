//! One client's wants held back in the core (for its address's rates, or for room in
//! its writer's queue), oldest first.

use std::collections::{HashSet, VecDeque};

use cid::Cid;

use crate::bitswap::WantEntry;

/// One client's waiting wants, oldest first. A cancel only forgets the CID (O(1));
/// the queue skips forgotten entries and is compacted when they outnumber the rest.
#[derive(Debug, Default)]
pub struct Waiting {
    queue: VecDeque<WantEntry>,
    live: HashSet<Cid>,
}

impl Waiting {
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn push(&mut self, w: &WantEntry) {
        if self.live.insert(w.cid) {
            self.queue.push_back(w.clone());
        }
    }

    pub fn forget(&mut self, cid: &Cid) {
        if self.live.remove(cid) && self.queue.len() > 2 * self.live.len() + 64 {
            let live = &self.live;
            self.queue.retain(|w| live.contains(&w.cid));
        }
    }

    pub fn contains(&self, cid: &Cid) -> bool {
        self.live.contains(cid)
    }

    pub fn pop(&mut self) -> Option<WantEntry> {
        while let Some(w) = self.queue.pop_front() {
            if self.live.remove(&w.cid) {
                return Some(w);
            }
        }
        None
    }
}
