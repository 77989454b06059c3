//! How many gateway requests run at once: in total, and per client address (an
//! IPv4 address or an IPv6 /64, as preload counts them). A request holds a slot
//! until its response body is done.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::preload::IpKey;
use crate::quota::{KeyedQuota, Permit};

pub struct Slots {
    total: Arc<Semaphore>,
    per_client: Arc<KeyedQuota<IpKey>>,
}

/// One request's slot; freed on drop.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    _client: Permit<IpKey>,
}

impl Slots {
    pub fn new(total: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            per_client: KeyedQuota::new(per_client),
        })
    }

    /// A slot for a request from `ip`, or none when either bound is reached.
    pub fn try_take(&self, ip: IpAddr) -> Option<Slot> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some(Slot {
            _total: total,
            _client: self.per_client.try_acquire(IpKey::of(ip))?,
        })
    }

    /// Clients holding a slot now.
    pub fn clients(&self) -> usize {
        self.per_client.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_total_and_per_client_and_freed_on_drop() {
        let slots = Slots::new(3, 2);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        let a1 = slots.try_take(a).unwrap();
        let _a2 = slots.try_take(a).unwrap();
        assert!(slots.try_take(a).is_none(), "a's own bound");
        let _b1 = slots.try_take(b).unwrap();
        assert!(slots.try_take(c).is_none(), "the total bound");
        drop(a1);
        assert!(slots.try_take(a).is_some(), "a freed slot is taken again");
        // b and c share a /64: one client.
        let slots = Slots::new(10, 1);
        let _b = slots.try_take(b).unwrap();
        assert!(slots.try_take(c).is_none());
        assert_eq!(slots.clients(), 1);
    }

    #[test]
    fn a_refused_request_leaves_nothing_behind() {
        let slots = Slots::new(1, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let s = slots.try_take(a).unwrap();
        assert!(slots.try_take("192.0.2.2".parse().unwrap()).is_none());
        assert_eq!(slots.clients(), 1);
        drop(s);
        assert_eq!(slots.clients(), 0);
    }
}
