//! A cap on the shared port's connections per client address, taken at accept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use crate::net::ip_limit::AddressKey;

/// Open connections per client key; a connection holds a [`Slot`] while it lives.
#[derive(Debug, Clone)]
pub struct PerIp {
    limit: u32,
    /// The same keying as the libp2p listeners' (an IPv6 client counts as its /64).
    keying: AddressKey,
    open: Arc<Mutex<HashMap<IpNet, u32>>>,
}

impl PerIp {
    pub fn new(limit: u32, keying: AddressKey) -> Self {
        Self {
            limit,
            keying,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `limit` already.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<Slot> {
        let key = self.keying.of(ip);
        let mut open = self.open.lock().expect("not poisoned");
        let n = open.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: self.open.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.open.lock().expect("not poisoned").len()
    }
}

/// One counted connection; released on drop.
#[derive(Debug)]
pub struct Slot {
    open: Arc<Mutex<HashMap<IpNet, u32>>>,
    key: IpNet,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // Forgotten at zero, so the table holds only clients connected now.
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_limit_and_slots_come_back() {
        let p = PerIp::new(2, AddressKey::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let s1 = p.try_acquire(a).unwrap();
        let s2 = p.try_acquire(a).unwrap();
        assert!(p.try_acquire(a).is_none(), "a third from one address");
        // The same IPv4 client seen on a dual-stack socket is the same client.
        assert!(p.try_acquire("::ffff:192.0.2.1".parse().unwrap()).is_none());
        let s3 = p.try_acquire(b).expect("another address is not affected");
        drop(s1);
        let s4 = p
            .try_acquire(a)
            .expect("a closed connection frees its slot");
        // Another address in the same IPv6 /64 is the same client.
        assert!(p.try_acquire("2001:db8::2".parse().unwrap()).is_some());
        let _s5 = p.try_acquire("2001:db8::3".parse().unwrap());
        assert!(p.try_acquire("2001:db8::4".parse().unwrap()).is_none());
        drop(_s5);
        drop((s4, s2, s3));
        assert_eq!(p.tracked(), 0, "nothing is kept for gone clients");
    }
}
