//! A per-address-key share of a pool (refs calls in flight): each key holds at most
//! `max` permits, so one address cannot take the whole pool and lock others out. The
//! pool's own bound is applied beside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::IpKey;

#[derive(Debug)]
pub struct KeyedQuota {
    max: usize,
    held: Mutex<HashMap<IpKey, usize>>,
}

/// One permit; given back on drop.
#[derive(Debug)]
pub struct QuotaPermit {
    quota: Arc<KeyedQuota>,
    key: IpKey,
}

impl KeyedQuota {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for `key`, unless it holds `max` already.
    pub fn try_acquire(self: &Arc<Self>, key: IpKey) -> Option<QuotaPermit> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key).or_default();
        if *n >= self.max {
            if *n == 0 {
                held.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(QuotaPermit {
            quota: self.clone(),
            key,
        })
    }

    /// Permits `key` holds.
    pub fn held(&self, key: IpKey) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&key).copied().unwrap_or(0)
    }
}

impl Drop for QuotaPermit {
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
    use std::net::Ipv4Addr;

    #[test]
    fn each_key_holds_at_most_its_share_and_drops_give_back() {
        let q = KeyedQuota::new(2);
        let a = IpKey::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpKey::V4(Ipv4Addr::new(192, 0, 2, 2));
        let p1 = q.try_acquire(a).unwrap();
        let _p2 = q.try_acquire(a).unwrap();
        assert!(q.try_acquire(a).is_none());
        assert!(q.try_acquire(b).is_some(), "another key is not affected");
        drop(p1);
        assert_eq!(q.held(a), 1);
        assert!(q.try_acquire(a).is_some());
        assert_eq!(q.held(b), 0, "a dropped permit leaves no entry");
    }
}
