//! A cap on the shared port's connections per client address, taken at accept.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::net::ip_limit::AddressKey;
use crate::quota::{KeyedQuota, Permit};

/// Open connections per client key; a connection holds a [`Slot`] while it lives.
#[derive(Debug, Clone)]
pub struct PerIp {
    /// The same keying as the libp2p listeners' (an IPv6 client counts as its /64).
    keying: AddressKey,
    open: Arc<KeyedQuota<IpNet>>,
}

/// One counted connection; released on drop.
pub type Slot = Permit<IpNet>;

impl PerIp {
    pub fn new(limit: u32, keying: AddressKey) -> Self {
        Self {
            keying,
            open: KeyedQuota::new(limit as usize),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `limit` already.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<Slot> {
        self.open.try_acquire(self.keying.of(ip))
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.open.keys()
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
