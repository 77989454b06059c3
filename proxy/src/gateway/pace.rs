//! `--bytes-per-second-per-address` for the gateway's responses: a token bucket per
//! address key, as for bitswap clients (`routing::rate`), but here the size of what
//! is sent is known before it is sent, so a response waits before each block until
//! its address has paid for it. The bytes an address is sent by any time `t` stay
//! within one second's worth plus the rate × `t`; other addresses never wait.
//! A response still ends at `--gateway-timeout`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::net::ip_limit::AddressKey;
use crate::routing::rate::Bucket;

pub struct Pace {
    /// Bytes a second per address key; 0: no limit.
    rate: u64,
    keying: AddressKey,
    buckets: Mutex<HashMap<IpNet, Bucket>>,
}

/// Buckets kept before the full ones (idle addresses) are dropped.
const SWEEP_AT: usize = 4096;

impl Pace {
    pub fn new(bytes_per_second: u64, keying: AddressKey) -> Arc<Self> {
        Arc::new(Self {
            rate: bytes_per_second,
            keying,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Charges `bytes` about to be sent to `ip`; returns how long to wait first.
    pub fn charge(&self, ip: IpAddr, bytes: usize, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, b| !b.is_full(now));
        }
        let rate = self.rate as f64;
        let bucket = buckets
            .entry(self.keying.of(ip))
            .or_insert_with(|| Bucket::new(rate, rate, now));
        bucket.charge(bytes as u64, now);
        bucket.until_paid(now)
    }

    /// Waits until `ip`'s address may be sent `bytes` more.
    pub async fn wait(&self, ip: IpAddr, bytes: usize) {
        let wait = self.charge(ip, bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of random sizes sent to one address as fast as it is let: by the
    /// time each is sent, the address has had no more than a second's worth plus
    /// the rate over the time, and within a block of that; another address, sending
    /// now and then, never waits.
    #[test]
    fn an_address_is_sent_its_rate_and_another_never_waits() {
        let (heavy, light): (IpAddr, IpAddr) = (
            "198.51.100.1".parse().unwrap(),
            "203.0.113.7".parse().unwrap(),
        );
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..50 {
            let rate = 10_000 + next() % 1_000_000;
            let max_block = 1 + next() % (2 * rate);
            let pace = Pace::new(rate, AddressKey::default());
            let t0 = Instant::now();
            let (mut now, mut sent) = (t0, 0u64);
            for _ in 0..200 {
                let n = 1 + next() % max_block;
                now += pace.charge(heavy, n as usize, now);
                sent += n;
                let allowed = rate as f64 * (1.0 + (now - t0).as_secs_f64());
                assert!(
                    sent as f64 <= allowed + 1.0,
                    "case {case}: {sent} > {allowed}"
                );
                // Sent as soon as allowed: never much less than allowed either.
                assert!(
                    sent as f64 + n as f64 + rate as f64 >= allowed,
                    "case {case}: {sent} sent, {allowed} allowed"
                );
                if next() % 4 == 0 {
                    assert!(pace.charge(light, 10, now).is_zero(), "case {case}");
                }
            }
        }
    }

    #[test]
    fn without_a_rate_nothing_waits() {
        let pace = Pace::new(0, AddressKey::default());
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(pace.charge(ip, usize::MAX, Instant::now()).is_zero());
    }
}
