//! A per-key share of a pool: each key (a client address, widened as its user says)
//! holds at most `max` permits at once, so one address cannot take a whole pool and
//! lock the others out. The shared port's connections, preload's refs calls and the
//! gateway's requests each count theirs with one; the pool's own bound sits beside it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct KeyedQuota<K> {
    max: usize,
    /// Permits per key; a key is forgotten at zero, so the map holds only keys that
    /// hold a permit now and never outgrows the pool.
    held: Mutex<HashMap<K, usize>>,
}

/// One permit; given back on drop.
#[derive(Debug)]
pub struct Permit<K: Hash + Eq + Copy> {
    quota: Arc<KeyedQuota<K>>,
    key: K,
}

impl<K: Hash + Eq + Copy> KeyedQuota<K> {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for `key`, unless it holds `max` already.
    pub fn try_acquire(self: &Arc<Self>, key: K) -> Option<Permit<K>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.get(&key).copied().unwrap_or(0);
        if n >= self.max {
            return None;
        }
        held.insert(key, n + 1);
        Some(Permit {
            quota: self.clone(),
            key,
        })
    }

    /// Permits `key` holds.
    pub fn held(&self, key: K) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&key).copied().unwrap_or(0)
    }

    /// Keys holding a permit now.
    pub fn keys(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<K: Hash + Eq + Copy> Drop for Permit<K> {
    fn drop(&mut self) {
        let mut held = self.quota.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_holds_at_most_its_share_and_drops_give_back() {
        let q = KeyedQuota::new(2);
        let p1 = q.try_acquire('a').unwrap();
        let _p2 = q.try_acquire('a').unwrap();
        assert!(q.try_acquire('a').is_none());
        assert!(q.try_acquire('b').is_some(), "another key is not affected");
        assert_eq!(q.keys(), 1, "b's permit was dropped at once");
        drop(p1);
        assert_eq!(q.held('a'), 1);
        assert!(q.try_acquire('a').is_some());
        assert_eq!(q.held('b'), 0, "a dropped permit leaves no entry");
        let none = KeyedQuota::new(0);
        assert!(none.try_acquire('a').is_none());
        assert_eq!(none.keys(), 0, "a refusal leaves no entry");
    }
}
