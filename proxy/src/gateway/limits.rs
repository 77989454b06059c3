//! How many gateway requests run at once: in total, and per client address (an
//! IPv4 address or an IPv6 /64, as preload counts them). A request holds a slot
//! until its response body is done.
//!
//! A client past its own bound waits for one of its slots to free (up to
//! [`WAITING_PER_SLOT`] times its bound, within the request's budget) rather than
//! being refused at once: a trustless-gateway client walks a DAG level with as many
//! requests as the level has blocks (Helia 7 in a browser over HTTP/2, or on Node's
//! fetch: 80 for a 20 MiB file) and takes a 429 for a failed block, not a cue to retry.
//! Past the total bound, or with the client's wait list full, the answer is 429.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use ipnet::IpNet;

use crate::net::ip_limit::AddressKey;

/// Requests one client may have waiting, per slot of its bound.
pub const WAITING_PER_SLOT: usize = 4;

pub struct Slots {
    total: Arc<Semaphore>,
    per_client: usize,
    /// What one client is: an address key (`--ipv4-prefix-len`, `--ipv6-prefix-len`).
    keying: AddressKey,
    /// Per client holding or waiting for a slot; an entry exists only while it does,
    /// and a client waits only once it holds all its slots, so the map never
    /// outgrows the total.
    clients: Mutex<HashMap<IpNet, Client>>,
}

#[derive(Default)]
struct Client {
    held: usize,
    waiting: usize,
    /// Told when one of its slots frees.
    freed: Arc<Notify>,
}

/// One request's slot; freed on drop.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    slots: Arc<Slots>,
    key: IpNet,
}

/// A request counted among its client's waiting ones; uncounted on drop (also when
/// the request is dropped while it waits), and an idle entry removed.
struct Waiter {
    slots: Arc<Slots>,
    key: IpNet,
    counted: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut clients = self.slots.clients.lock().expect("not poisoned");
        if let Some(c) = clients.get_mut(&self.key) {
            if self.counted {
                c.waiting -= 1;
            }
            if c.held == 0 && c.waiting == 0 {
                clients.remove(&self.key);
            }
        }
    }
}

impl Slots {
    pub fn new(total: usize, per_client: usize) -> Arc<Self> {
        Self::keyed(total, per_client, AddressKey::default())
    }

    /// [`Slots::new`] with clients grouped by `keying`.
    pub fn keyed(total: usize, per_client: usize, keying: AddressKey) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            per_client,
            keying,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a request from `ip`: at once, or once one of the client's own
    /// frees before `deadline`. None when the total bound is reached, the client's
    /// wait list is full, or the deadline passes.
    pub async fn take(self: &Arc<Self>, ip: IpAddr, deadline: Instant) -> Option<Slot> {
        let key = self.keying.of(ip);
        let mut waiter = Waiter {
            slots: self.clone(),
            key,
            counted: false,
        };
        loop {
            let freed: Arc<Notify>;
            let notified = {
                let mut clients = self.clients.lock().expect("not poisoned");
                let c = clients.entry(key).or_default();
                if c.held < self.per_client {
                    let total = self.total.clone().try_acquire_owned().ok()?;
                    c.held += 1;
                    if waiter.counted {
                        c.waiting -= 1;
                        waiter.counted = false;
                    }
                    return Some(Slot {
                        _total: total,
                        slots: self.clone(),
                        key,
                    });
                }
                if !waiter.counted {
                    if c.waiting >= self.per_client * WAITING_PER_SLOT {
                        return None;
                    }
                    c.waiting += 1;
                    waiter.counted = true;
                }
                // In the wait list before the lock is let go: every slot freed after
                // this wakes a waiter (a stored permit would cover only one).
                freed = c.freed.clone();
                let mut notified = Box::pin(freed.notified());
                notified.as_mut().enable();
                notified
            };
            tokio::time::timeout_at(deadline.into(), notified)
                .await
                .ok()?;
        }
    }

    /// A slot for a request from `ip` now, or none when either bound is reached.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let key = self.keying.of(ip);
        let mut clients = self.clients.lock().expect("not poisoned");
        let c = clients.entry(key).or_default();
        if c.held >= self.per_client {
            return None;
        }
        c.held += 1;
        Some(Slot {
            _total: total,
            slots: self.clone(),
            key,
        })
    }

    /// Clients holding or waiting for a slot now.
    pub fn clients(&self) -> usize {
        self.clients.lock().expect("not poisoned").len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut clients = self.slots.clients.lock().expect("not poisoned");
        if let Some(c) = clients.get_mut(&self.key) {
            c.held -= 1;
            if c.waiting > 0 {
                c.freed.notify_one();
            } else if c.held == 0 {
                clients.remove(&self.key);
            }
        }
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

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    #[tokio::test]
    async fn past_its_bound_a_client_waits_for_its_own_slot_then_is_refused() {
        let slots = Slots::new(100, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let a1 = slots.take(a, later()).await.unwrap();
        let a2 = slots.take(a, later()).await.unwrap();
        // Up to WAITING_PER_SLOT per slot of its bound wait (each takes its slot and
        // frees it at once when it gets one).
        let mut waiting = Vec::new();
        for _ in 0..2 * WAITING_PER_SLOT {
            let s = slots.clone();
            waiting.push(tokio::spawn(
                async move { s.take(a, later()).await.is_some() },
            ));
        }
        let wait_list_full = || {
            let c = slots.clients.lock().unwrap();
            c.get(&AddressKey::default().of(a)).map(|c| c.waiting)
        };
        while wait_list_full() != Some(2 * WAITING_PER_SLOT) {
            tokio::task::yield_now().await;
        }
        assert!(
            slots.take(a, later()).await.is_none(),
            "past the wait list: refused at once"
        );
        // Another client is not held up by a's queue.
        let b = slots.take("192.0.2.2".parse().unwrap(), later()).await;
        assert!(b.is_some());
        drop(b);
        // Each freed slot lets one waiter in; all of them get one in turn.
        drop((a1, a2));
        for w in waiting {
            assert!(w.await.unwrap());
        }
        assert_eq!(slots.clients(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gives_up_at_its_deadline_or_when_dropped_and_leaves_nothing() {
        let slots = Slots::new(100, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held = slots.take(a, later()).await.unwrap();
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(slots.take(a, soon).await.is_none(), "the deadline passed");
        // A waiting request whose client went away is no longer counted.
        let s = slots.clone();
        let w = tokio::spawn(async move { s.take(a, later()).await.map(|_| ()) });
        while slots.clients.lock().unwrap()[&AddressKey::default().of(a)].waiting != 1 {
            tokio::task::yield_now().await;
        }
        w.abort();
        let _ = w.await;
        assert_eq!(
            slots.clients.lock().unwrap()[&AddressKey::default().of(a)].waiting,
            0
        );
        drop(held);
        assert_eq!(slots.clients(), 0);
    }

    #[tokio::test]
    async fn the_total_bound_refuses_at_once() {
        let slots = Slots::new(1, 5);
        let _a = slots
            .take("192.0.2.1".parse().unwrap(), later())
            .await
            .unwrap();
        assert!(
            slots
                .take("192.0.2.2".parse().unwrap(), later())
                .await
                .is_none()
        );
        assert_eq!(slots.clients(), 1, "the refused client left no entry");
    }
}
