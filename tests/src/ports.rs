//! Free loopback ports for peers started by the tests.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use rand::Rng;

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has never handed
/// out before (so parallel tests never get the same port).
///
/// Ports come from below the kernel's ephemeral range (`ip_local_port_range`), so outgoing
/// connections of the peers themselves cannot grab a port between this call and the peer's
/// bind. Another process can still race for it: peers that fail to bind are restarted on fresh
/// ports by the harness ([`crate::KuboNode::start`] retries).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (lo, hi) = range();
    let mut rng = rand::thread_rng();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let p = rng.gen_range(lo..hi);
        if given.contains(&p) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok() {
            given.insert(p);
            return p;
        }
    }
    // Fallback: let the kernel choose (ephemeral range), still never handed out twice.
    loop {
        let p = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if given.insert(p) {
            return p;
        }
    }
}

/// `[lo, hi)`: up to 12000 ports just below the ephemeral range (default 20768..32768).
fn range() -> (u16, u16) {
    let eph_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if eph_lo > 12000 {
        (eph_lo.saturating_sub(12000).max(10000), eph_lo)
    } else {
        (61000, 65535)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_and_bindable() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let set: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(set.len(), ports.len());
        for p in ports.iter().take(20) {
            TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).expect("free port is bindable");
        }
    }
}
