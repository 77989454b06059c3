//! Per-client flow control. The backends send as fast as they can, over connections
//! every client shares, so the proxy cannot slow a backend for one slow client: the
//! blocks would pile up in that client's writer queue until it is cut off as slow,
//! and a fast client with a big wantlist (256 wants of 256 KiB is 64 MiB) would be
//! cut off as well. So a client's block wants go on to the backends only as far as
//! its writer's queue has room for their blocks (kubo's own server paces its peers
//! the same way, by bytes outstanding); the rest wait here, in order, and go on as
//! the queue drains. The engine says how much room there is (bytes, at each call);
//! this module remembers what the wants that went on will still bring.
//!
//! A block's size is known only once it arrives, so a block want that goes on
//! reserves the client's recent block size, and its block (or presence, or cancel)
//! settles it. A reservation unanswered for [`RESERVATION_TTL`] is given back: the
//! router may hold a want of an absent block as long as its client wants it. With
//! nothing reserved, one want always goes on, however big its block: a queue near
//! its bound then holds one block more, never a stalled client.
//!
//! Bounded: a client's waiting wants count with the wants the router holds for it
//! against `--max-wants-per-client`; past that, wants go straight to the router,
//! which refuses them. Reservations are at most one per want the router holds.
//! Pure: time and room are passed in.

use std::time::Instant;

use cid::Cid;
use libp2p::PeerId;

use super::rate::{FIRST_BLOCK_ESTIMATE, RESERVATION_TTL};
use super::waiting::Waiting;
use crate::bitswap::{Message, WantEntry, WantKind};
use crate::keyed::Map;

/// Room that means "no bound": the caller has no writer queue to protect.
pub const UNBOUNDED: usize = usize::MAX;

#[derive(Debug)]
struct Window {
    waiting: Waiting,
    /// Bytes reserved per block want that went on, and since when.
    reserved: Map<Cid, (u64, Instant)>,
    total: u64,
    /// What a block want reserves: a moving average of the client's blocks.
    estimate: f64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            waiting: Waiting::default(),
            reserved: Map::default(),
            total: 0,
            estimate: FIRST_BLOCK_ESTIMATE,
        }
    }
}

impl Window {
    /// Whether a block want may go on with `room` bytes free in the writer's queue.
    fn fits(&self, room: usize) -> bool {
        let room = room as u64;
        self.total + self.estimate as u64 <= room || (self.total == 0 && room > 0)
    }

    fn reserve(&mut self, cid: Cid, now: Instant) {
        let n = self.estimate as u64;
        if let Some((old, _)) = self.reserved.insert(cid, (n, now)) {
            self.total -= old;
        }
        self.total += n;
    }

    fn settle(&mut self, cid: &Cid) {
        if let Some((n, _)) = self.reserved.remove(cid) {
            self.total -= n;
        }
    }

    /// Moves waiting wants to `out` while they fit in `room`.
    fn release(&mut self, room: usize, now: Instant, out: &mut Vec<WantEntry>) {
        while self.fits(room) {
            let Some(w) = self.waiting.pop() else { break };
            self.reserve(w.cid, now);
            out.push(w);
        }
    }

    fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.reserved.is_empty()
    }
}

#[derive(Debug)]
pub struct ClientWindows {
    max_per_client: usize,
    clients: Map<PeerId, Window>,
    /// Wants held back so far (a counter for metrics).
    delayed: u64,
}

impl ClientWindows {
    pub fn new(max_per_client: usize) -> Self {
        Self {
            max_per_client,
            clients: Map::default(),
            delayed: 0,
        }
    }

    pub fn delayed(&self) -> u64 {
        self.delayed
    }

    /// Wants waiting over all clients.
    pub fn waiting(&self) -> usize {
        self.clients.values().map(|w| w.waiting.len()).sum()
    }

    /// `client`'s wants waiting for room.
    pub fn waiting_of(&self, client: &PeerId) -> usize {
        self.clients.get(client).map_or(0, |w| w.waiting.len())
    }

    /// Whether `client` has wants waiting for room.
    pub fn is_waiting(&self, client: &PeerId) -> bool {
        self.clients
            .get(client)
            .is_some_and(|w| !w.waiting.is_empty())
    }

    /// The clients with wants waiting for room, in a stable order.
    pub fn waiting_clients(&self) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .clients
            .iter()
            .filter(|(_, w)| !w.waiting.is_empty())
            .map(|(p, _)| *p)
            .collect();
        out.sort();
        out
    }

    /// The wants of `msg` that go on now, after the waiting ones that fit (only the
    /// wantlist: the router reads nothing else); the rest wait. `held` says whether
    /// the router already holds a block want of this client (those pass, at no cost;
    /// a WANT-BLOCK upgrading a WANT-HAVE does not), and `holds` how many wants it
    /// holds for it. A full wantlist replaces the waiting wants. At most `share` wants
    /// are newly held back (what is left of the address's share); past that they go
    /// on, for the router to refuse.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &mut self,
        client: PeerId,
        msg: &Message,
        held: impl Fn(&Cid) -> bool,
        holds: usize,
        share: usize,
        room: usize,
        now: Instant,
    ) -> Message {
        let mut out = Message {
            full: msg.full,
            ..Message::default()
        };
        if room == UNBOUNDED && !self.clients.contains_key(&client) {
            out.wants = msg.wants.clone();
            return out;
        }
        let window = self.clients.entry(client).or_default();
        if msg.full {
            window.waiting = Waiting::default();
        }
        window.release(room, now, &mut out.wants);
        let mut share = share;
        for w in &msg.wants {
            if w.cancel {
                window.waiting.forget(&w.cid);
                window.settle(&w.cid);
                out.wants.push(w.clone());
                continue;
            }
            let free =
                w.kind == WantKind::Have || held(&w.cid) || window.reserved.contains_key(&w.cid);
            if window.waiting.contains(&w.cid) {
                // Asked again while waiting (only block wants wait here).
            } else if free || (window.waiting.is_empty() && window.fits(room)) {
                if !free {
                    window.reserve(w.cid, now);
                }
                // It takes its place in the share at the router.
                share = share.saturating_sub(1);
                out.wants.push(w.clone());
            } else if holds + window.waiting.len() >= self.max_per_client || share == 0 {
                out.wants.push(w.clone());
            } else {
                window.waiting.push(w);
                share -= 1;
                self.delayed += 1;
            }
        }
        if window.is_idle() {
            self.clients.remove(&client);
        }
        out
    }

    /// The client's writer has `room` bytes free: its waiting wants that fit, as
    /// a message for the router, if any.
    pub fn release(&mut self, client: &PeerId, room: usize, now: Instant) -> Option<Message> {
        let window = self.clients.get_mut(client)?;
        let mut wants = Vec::new();
        window.release(room, now, &mut wants);
        if window.is_idle() {
            self.clients.remove(client);
        }
        (!wants.is_empty()).then(|| Message {
            wants,
            ..Message::default()
        })
    }

    /// `msg` goes to `client`: its blocks settle their reservations and teach the
    /// estimate; a presence ends its want's reservation.
    pub fn delivered(&mut self, client: &PeerId, msg: &Message) {
        let Some(window) = self.clients.get_mut(client) else {
            return;
        };
        for b in &msg.blocks {
            window.settle(&b.cid);
            // Recent blocks weigh most; the floor keeps reservations few.
            window.estimate = (0.8 * window.estimate + 0.2 * b.data.len() as f64).max(1024.0);
        }
        for p in &msg.presences {
            window.settle(&p.cid);
        }
        if window.is_idle() {
            self.clients.remove(client);
        }
    }

    /// Reservations unanswered for [`RESERVATION_TTL`] are given back.
    pub fn expire(&mut self, now: Instant) {
        for window in self.clients.values_mut() {
            let mut freed = 0;
            window.reserved.retain(|_, (n, at)| {
                let keep = now.saturating_duration_since(*at) < RESERVATION_TTL;
                if !keep {
                    freed += *n;
                }
                keep
            });
            window.total -= freed;
        }
        self.clients.retain(|_, w| !w.is_idle());
    }

    pub fn client_gone(&mut self, client: &PeerId) {
        self.clients.remove(client);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bitswap::{Block, Presence, PresenceKind};

    const KIB: usize = 1024;

    fn cid(i: u32) -> Cid {
        crate::fixtures::block(u64::from(i), 8).cid
    }

    fn want(i: u32, kind: WantKind) -> WantEntry {
        WantEntry {
            cid: cid(i),
            priority: 1,
            cancel: false,
            kind,
            send_dont_have: true,
        }
    }

    fn ask(range: std::ops::Range<u32>) -> Message {
        Message {
            wants: range.map(|i| want(i, WantKind::Block)).collect(),
            ..Message::default()
        }
    }

    fn block(i: u32, size: usize) -> Message {
        Message {
            blocks: vec![Block {
                cid: cid(i),
                data: vec![0; size].into(),
            }],
            ..Message::default()
        }
    }

    fn cids(msg: &Message) -> Vec<Cid> {
        msg.wants.iter().map(|w| w.cid).collect()
    }

    fn ids(range: std::ops::Range<u32>) -> Vec<Cid> {
        range.map(cid).collect()
    }

    #[test]
    fn block_wants_go_on_as_far_as_the_room_holds_their_first_estimate() {
        let (mut w, c, t) = (ClientWindows::new(1000), PeerId::random(), Instant::now());
        let out = w.admit(c, &ask(0..10), |_| false, 0, usize::MAX, 1024 * KIB, t);
        assert_eq!(
            cids(&out),
            ids(0..4),
            "1 MiB of room: four 256 KiB estimates"
        );
        assert_eq!((w.waiting(), w.delayed()), (6, 6));
        assert!(w.is_waiting(&c));
        assert_eq!(w.waiting_clients(), vec![c]);
    }

    #[test]
    fn the_waiting_wants_go_on_in_order_as_blocks_arrive_and_room_comes_back() {
        let (mut w, c, t) = (ClientWindows::new(1000), PeerId::random(), Instant::now());
        w.admit(c, &ask(0..10), |_| false, 0, usize::MAX, 512 * KIB, t);
        // Both blocks are in the writer's queue now: still no room.
        w.delivered(&c, &block(0, 256 * KIB));
        w.delivered(&c, &block(1, 256 * KIB));
        assert_eq!(w.release(&c, 0, t), None);
        // The writer drained.
        let out = w.release(&c, 512 * KIB, t).expect("room");
        assert_eq!(cids(&out), ids(2..4));
        // A new message's wants queue behind the waiting ones.
        let more = w.admit(c, &ask(10..11), |_| false, 0, usize::MAX, 0, t);
        assert!(more.wants.is_empty());
        assert_eq!(w.waiting(), 7);
    }

    #[test]
    fn the_estimate_follows_the_blocks_so_small_blocks_get_many_wants_in_flight() {
        let (mut w, c, t) = (
            ClientWindows::new(100_000),
            PeerId::random(),
            Instant::now(),
        );
        let room = 256 * KIB;
        let first = w.admit(c, &ask(0..2000), |_| false, 0, usize::MAX, room, t);
        assert_eq!(first.wants.len(), 1);
        let mut sent = 1;
        for i in 0..60 {
            w.delivered(&c, &block(i, KIB));
            sent += w.release(&c, room, t).map_or(0, |m| m.wants.len());
        }
        assert!(
            sent > 200,
            "only {sent} 1 KiB wants went on with 256 KiB of room"
        );
    }

    #[test]
    fn with_nothing_reserved_one_want_goes_on_whatever_its_size_but_not_into_a_full_queue() {
        let (mut w, c, t) = (ClientWindows::new(1000), PeerId::random(), Instant::now());
        assert_eq!(
            w.admit(c, &ask(0..3), |_| false, 0, usize::MAX, KIB, t)
                .wants
                .len(),
            1
        );
        let (mut w, c) = (ClientWindows::new(1000), PeerId::random());
        assert!(
            w.admit(c, &ask(0..3), |_| false, 0, usize::MAX, 0, t)
                .wants
                .is_empty()
        );
        assert_eq!(w.waiting(), 3);
    }

    #[test]
    fn haves_cancels_and_wants_the_router_already_holds_pass_at_no_cost() {
        let (mut w, c, t) = (ClientWindows::new(1000), PeerId::random(), Instant::now());
        w.admit(c, &ask(0..3), |_| false, 0, usize::MAX, 0, t);
        let mut msg = Message {
            wants: vec![want(7, WantKind::Have), want(8, WantKind::Block)],
            ..Message::default()
        };
        let mut cancel = want(1, WantKind::Block);
        cancel.cancel = true;
        msg.wants.push(cancel);
        let out = w.admit(c, &msg, |x| *x == cid(8), 1, usize::MAX, 0, t);
        assert_eq!(cids(&out), vec![cid(7), cid(8), cid(1)]);
        assert_eq!(w.waiting(), 2, "the cancel withdrew a waiting want");
        let out = w.release(&c, 1024 * KIB, t).expect("room");
        assert_eq!(cids(&out), vec![cid(0), cid(2)]);
    }

    #[test]
    fn presences_cancels_and_time_give_reservations_back() {
        let (mut w, c, t) = (ClientWindows::new(1000), PeerId::random(), Instant::now());
        let room = 512 * KIB;
        w.admit(c, &ask(0..4), |_| false, 0, usize::MAX, room, t);
        let none = Message {
            presences: vec![Presence {
                cid: cid(0),
                kind: PresenceKind::DontHave,
            }],
            ..Message::default()
        };
        w.delivered(&c, &none);
        assert_eq!(cids(&w.release(&c, room, t).expect("one freed")), ids(2..3));
        w.expire(t + RESERVATION_TTL);
        assert_eq!(cids(&w.release(&c, room, t).expect("all freed")), ids(3..4));
        w.expire(t + RESERVATION_TTL + Duration::from_secs(1));
        assert_eq!(w.waiting(), 0);
        assert!(w.clients.is_empty(), "an idle client keeps nothing");
    }

    #[test]
    fn a_full_wantlist_replaces_the_waiting_wants() {
        let (mut w, c, t) = (ClientWindows::new(1000), PeerId::random(), Instant::now());
        w.admit(c, &ask(0..5), |_| false, 0, usize::MAX, 0, t);
        let mut full = ask(5..7);
        full.full = true;
        let out = w.admit(c, &full, |_| false, 0, usize::MAX, 0, t);
        assert!(out.full && out.wants.is_empty());
        assert_eq!(w.waiting(), 2);
    }

    #[test]
    fn past_the_clients_want_cap_wants_go_on_for_the_router_to_refuse() {
        let (mut w, c, t) = (ClientWindows::new(4), PeerId::random(), Instant::now());
        let out = w.admit(c, &ask(0..6), |_| false, 1, usize::MAX, 0, t);
        assert_eq!(w.waiting(), 3, "1 held + 3 waiting reach the cap of 4");
        assert_eq!(cids(&out), ids(3..6));
    }

    #[test]
    fn no_more_wants_wait_than_the_address_share_has_room_for() {
        let (mut w, c, t) = (ClientWindows::new(1000), PeerId::random(), Instant::now());
        let out = w.admit(c, &ask(0..10), |_| false, 0, 4, 0, t);
        assert_eq!(w.waiting(), 4);
        assert_eq!(
            cids(&out),
            ids(4..10),
            "the rest go on, for the router to refuse"
        );
    }

    #[test]
    fn without_a_bound_everything_passes_and_nothing_is_kept() {
        let (mut w, c, t) = (ClientWindows::new(10), PeerId::random(), Instant::now());
        let out = w.admit(c, &ask(0..50), |_| false, 0, usize::MAX, UNBOUNDED, t);
        assert_eq!(out.wants.len(), 50);
        assert!(w.clients.is_empty());
        w.client_gone(&c);
    }

    #[test]
    fn a_client_gone_leaves_nothing_behind() {
        let (mut w, c, t) = (ClientWindows::new(1000), PeerId::random(), Instant::now());
        w.admit(c, &ask(0..5), |_| false, 0, usize::MAX, 300 * KIB, t);
        w.client_gone(&c);
        assert!(w.clients.is_empty() && !w.is_waiting(&c));
    }
}
