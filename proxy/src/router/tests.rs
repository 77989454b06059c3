use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use libp2p::PeerId;
use multihash_codetable::{Code, MultihashDigest};

use super::*;
use crate::bitswap::{Block, Message, Presence, PresenceKind, WantEntry, WantKind};

fn block(i: u32) -> Block {
    let data = Bytes::from(format!("block number {i}"));
    Block {
        cid: Cid::new_v1(0x55, Code::Sha2_256.digest(&data)),
        data,
    }
}

fn want(b: &Block, kind: WantKind, send_dont_have: bool) -> WantEntry {
    WantEntry {
        cid: b.cid,
        priority: 1,
        cancel: false,
        kind,
        send_dont_have,
    }
}

fn cancel(b: &Block) -> WantEntry {
    WantEntry {
        cid: b.cid,
        priority: 0,
        cancel: true,
        kind: WantKind::Block,
        send_dont_have: false,
    }
}

fn wants(entries: Vec<WantEntry>) -> Message {
    Message {
        wants: entries,
        ..Default::default()
    }
}

fn blocks(bs: &[Block]) -> Message {
    Message {
        blocks: bs.to_vec(),
        ..Default::default()
    }
}

fn presence(b: &Block, kind: PresenceKind) -> Message {
    Message {
        presences: vec![Presence { cid: b.cid, kind }],
        ..Default::default()
    }
}

/// Backends in rendezvous order for `b` (first = where its want goes first).
fn order_for(b: &Block, backends: &[PeerId]) -> Vec<PeerId> {
    let mut v: Vec<PeerId> = backends.to_vec();
    v.sort();
    balancer::rank(Policy::Rendezvous, &b.cid, &mut v, 0);
    v
}

fn sent_wants(out: &Outbox, backend: &PeerId) -> Vec<(Cid, bool, WantKind)> {
    out.to_backends
        .get(backend)
        .map(|m| m.wants.iter().map(|w| (w.cid, w.cancel, w.kind)).collect())
        .unwrap_or_default()
}

fn router(backends: &[PeerId], now: Instant) -> Router {
    router_with(Config::default(), backends, now)
}

fn router_with(cfg: Config, backends: &[PeerId], now: Instant) -> Router {
    let mut r = Router::new(cfg);
    for b in backends {
        r.backend_up(*b, now);
    }
    r
}

fn backends(n: usize) -> Vec<PeerId> {
    (0..n).map(|_| PeerId::random()).collect()
}

#[test]
fn identical_wants_become_one_backend_want_and_one_delivery_each() {
    let t = Instant::now();
    let bs = backends(2);
    let mut r = router(&bs, t);
    let (c1, c2) = (PeerId::random(), PeerId::random());
    let b = block(1);
    let first = order_for(&b, &bs)[0];

    r.client_message(c1, &wants(vec![want(&b, WantKind::Block, true)]), t);
    r.client_message(c2, &wants(vec![want(&b, WantKind::Block, false)]), t);
    let out = r.take_outbox();
    assert_eq!(out.to_backends.len(), 1, "one backend asked");
    assert_eq!(
        sent_wants(&out, &first),
        vec![(b.cid, false, WantKind::Block)]
    );

    r.backend_message(first, &blocks(std::slice::from_ref(&b)), t);
    let out = r.take_outbox();
    for c in [c1, c2] {
        assert_eq!(out.to_clients[&c].blocks, vec![b.clone()]);
    }
    assert!(
        out.to_backends.is_empty(),
        "no cancel to the backend that served it"
    );
    assert_eq!(r.wants_in_flight(), 0);

    // A duplicate copy (say, from a slow second backend) goes nowhere.
    r.backend_message(bs[0], &blocks(std::slice::from_ref(&b)), t);
    assert!(r.take_outbox().is_empty());
    assert_eq!(r.stats().unsolicited_blocks, 1);
    assert_eq!(r.stats().blocks_delivered, 2);
}

#[test]
fn want_have_stays_want_have_and_gets_have() {
    let t = Instant::now();
    let bs = backends(1);
    let mut r = router(&bs, t);
    let c = PeerId::random();
    let b = block(2);
    r.client_message(c, &wants(vec![want(&b, WantKind::Have, true)]), t);
    let out = r.take_outbox();
    assert_eq!(
        sent_wants(&out, &bs[0]),
        vec![(b.cid, false, WantKind::Have)]
    );

    r.backend_message(bs[0], &presence(&b, PresenceKind::Have), t);
    let out = r.take_outbox();
    assert_eq!(
        out.to_clients[&c].presences,
        vec![Presence {
            cid: b.cid,
            kind: PresenceKind::Have
        }]
    );
    assert!(out.to_clients[&c].blocks.is_empty());
    assert_eq!(r.client_wants(&c), 0, "a HAVE answers a WANT-HAVE");
}

#[test]
fn a_block_wanter_joining_a_have_want_upgrades_it() {
    let t = Instant::now();
    let bs = backends(1);
    let mut r = router(&bs, t);
    let (ch, cb) = (PeerId::random(), PeerId::random());
    let b = block(3);
    r.client_message(ch, &wants(vec![want(&b, WantKind::Have, false)]), t);
    r.client_message(cb, &wants(vec![want(&b, WantKind::Block, false)]), t);
    let out = r.take_outbox();
    assert_eq!(
        sent_wants(&out, &bs[0]),
        vec![
            (b.cid, false, WantKind::Have),
            (b.cid, false, WantKind::Block)
        ]
    );
    r.backend_message(bs[0], &blocks(std::slice::from_ref(&b)), t);
    let out = r.take_outbox();
    assert_eq!(out.to_clients[&cb].blocks, vec![b.clone()]);
    assert_eq!(out.to_clients[&ch].presences[0].kind, PresenceKind::Have);
    assert!(
        out.to_clients[&ch].blocks.is_empty(),
        "the HAVE-only client gets no block"
    );
}

#[test]
fn dont_have_fails_over_in_order_and_reaches_the_client_only_when_all_say_no() {
    let t = Instant::now();
    let bs = backends(3);
    let mut r = router(&bs, t);
    let (asks, silent) = (PeerId::random(), PeerId::random());
    let b = block(4);
    let order = order_for(&b, &bs);
    r.client_message(asks, &wants(vec![want(&b, WantKind::Block, true)]), t);
    r.client_message(silent, &wants(vec![want(&b, WantKind::Block, false)]), t);
    r.take_outbox();

    for (i, backend) in order.iter().enumerate() {
        r.backend_message(*backend, &presence(&b, PresenceKind::DontHave), t);
        let out = r.take_outbox();
        assert_eq!(
            sent_wants(&out, backend),
            vec![(b.cid, true, WantKind::Block)]
        );
        if let Some(next) = order.get(i + 1) {
            assert_eq!(
                sent_wants(&out, next),
                vec![(b.cid, false, WantKind::Block)]
            );
            assert!(
                out.to_clients.is_empty(),
                "no DONT_HAVE before every backend is tried"
            );
        } else {
            assert_eq!(
                out.to_clients[&asks].presences,
                vec![Presence {
                    cid: b.cid,
                    kind: PresenceKind::DontHave
                }]
            );
            assert!(
                !out.to_clients.contains_key(&silent),
                "only clients that asked"
            );
        }
    }
    // Still wanted (the clients did not cancel): a backend that joins gets asked.
    let newcomer = PeerId::random();
    r.backend_up(newcomer, t);
    let out = r.take_outbox();
    assert_eq!(
        sent_wants(&out, &newcomer),
        vec![(b.cid, false, WantKind::Block)]
    );
}

#[test]
fn stale_dont_have_from_a_backend_already_left_is_ignored() {
    let t = Instant::now();
    let bs = backends(2);
    let mut r = router(&bs, t);
    let c = PeerId::random();
    let b = block(5);
    let order = order_for(&b, &bs);
    r.client_message(c, &wants(vec![want(&b, WantKind::Block, true)]), t);
    r.backend_message(order[0], &presence(&b, PresenceKind::DontHave), t);
    r.take_outbox();
    r.backend_message(order[0], &presence(&b, PresenceKind::DontHave), t);
    assert!(r.take_outbox().is_empty());
}

#[test]
fn a_want_the_backends_stream_never_carried_moves_on_at_once() {
    let t = Instant::now();
    let bs = backends(2);
    let mut r = router(&bs, t);
    let c = PeerId::random();
    let (b, other) = (block(6), block(7));
    let order = order_for(&b, &bs);
    r.client_message(c, &wants(vec![want(&b, WantKind::Block, true)]), t);
    r.take_outbox();

    // Not pending at the other backend: nothing happens.
    r.backend_undelivered(order[1], &[b.cid, other.cid], t);
    assert!(r.take_outbox().is_empty());
    assert_eq!(r.stats().undelivered_wants, 0);

    r.backend_undelivered(order[0], &[b.cid], t);
    let out = r.take_outbox();
    assert_eq!(
        sent_wants(&out, &order[1]),
        vec![(b.cid, false, WantKind::Block)],
        "asked of the next backend without waiting for a timeout"
    );
    assert!(
        out.to_clients.is_empty(),
        "no DONT_HAVE: another backend is left"
    );
    assert_eq!((r.stats().undelivered_wants, r.stats().failovers), (1, 1));

    r.backend_message(order[1], &blocks(std::slice::from_ref(&b)), t);
    assert_eq!(r.take_outbox().to_clients[&c].blocks, vec![b]);
}

#[test]
fn cancel_goes_to_the_backend_only_when_no_client_wants_the_cid() {
    let t = Instant::now();
    let bs = backends(1);
    let mut r = router(&bs, t);
    let (c1, c2) = (PeerId::random(), PeerId::random());
    let b = block(6);
    r.client_message(c1, &wants(vec![want(&b, WantKind::Block, false)]), t);
    r.client_message(c2, &wants(vec![want(&b, WantKind::Block, false)]), t);
    r.take_outbox();

    r.client_message(c1, &wants(vec![cancel(&b)]), t);
    assert!(r.take_outbox().is_empty(), "c2 still wants it");
    r.client_message(c2, &wants(vec![cancel(&b)]), t);
    let out = r.take_outbox();
    assert_eq!(
        sent_wants(&out, &bs[0]),
        vec![(b.cid, true, WantKind::Block)]
    );

    // The block arriving after the cancel goes nowhere.
    r.backend_message(bs[0], &blocks(&[b]), t);
    assert!(r.take_outbox().to_clients.is_empty());
}

#[test]
fn full_wantlist_replaces_only_that_clients_wants() {
    let t = Instant::now();
    let bs = backends(1);
    let mut r = router(&bs, t);
    let (c1, c2) = (PeerId::random(), PeerId::random());
    let (a, b, c) = (block(7), block(8), block(9));
    r.client_message(
        c1,
        &wants(vec![
            want(&a, WantKind::Block, false),
            want(&b, WantKind::Block, false),
        ]),
        t,
    );
    r.client_message(c2, &wants(vec![want(&a, WantKind::Block, false)]), t);
    r.take_outbox();

    let full = Message {
        full: true,
        wants: vec![want(&c, WantKind::Block, false)],
        ..Default::default()
    };
    r.client_message(c1, &full, t);
    let out = r.take_outbox();
    assert_eq!(
        sent_wants(&out, &bs[0]),
        vec![
            (b.cid, true, WantKind::Block),
            (c.cid, false, WantKind::Block)
        ],
        "b cancelled (no one else wants it), a kept for c2, c added; never a union"
    );
    assert_eq!(r.client_wants(&c1), 1);
    assert_eq!(r.client_wants(&c2), 1);
    r.backend_message(bs[0], &blocks(std::slice::from_ref(&a)), t);
    let out = r.take_outbox();
    assert!(out.to_clients.contains_key(&c2));
    assert!(
        !out.to_clients.contains_key(&c1),
        "c1 dropped a from its full wantlist"
    );
}

#[test]
fn disconnect_cancels_the_clients_wants() {
    let t = Instant::now();
    let bs = backends(1);
    let mut r = router(&bs, t);
    let c = PeerId::random();
    let (a, b) = (block(10), block(11));
    r.client_message(
        c,
        &wants(vec![
            want(&a, WantKind::Block, false),
            want(&b, WantKind::Have, false),
        ]),
        t,
    );
    r.take_outbox();
    r.client_disconnected(c, t);
    let out = r.take_outbox();
    let mut cancelled: Vec<Cid> = sent_wants(&out, &bs[0])
        .into_iter()
        .filter(|w| w.1)
        .map(|w| w.0)
        .collect();
    cancelled.sort();
    let mut expected = vec![a.cid, b.cid];
    expected.sort();
    assert_eq!(cancelled, expected);
    assert_eq!(r.wants_in_flight(), 0);
    assert_eq!(r.client_count(), 0);
}

#[test]
fn lost_backend_moves_its_wants_to_the_next_in_order() {
    let t = Instant::now();
    let bs = backends(3);
    let mut r = router(&bs, t);
    let c = PeerId::random();
    // 6 wants per backend: however they move, none reaches the load floor, so each
    // goes exactly to the next in its order.
    let all: Vec<Block> = bs
        .iter()
        .flat_map(|b| blocks_first_at(*b, &bs, 0, 6))
        .collect();
    r.client_message(
        c,
        &wants(all.iter().map(|b| want(b, WantKind::Block, true)).collect()),
        t,
    );
    r.take_outbox();
    let victim = bs[1];
    r.backend_down(victim, t);
    let out = r.take_outbox();
    assert!(!out.to_backends.contains_key(&victim));
    let mut moved = 0;
    for b in &all {
        let order = order_for(b, &bs);
        if order[0] == victim {
            moved += 1;
            assert_eq!(
                sent_wants(&out, &order[1])
                    .iter()
                    .filter(|w| w.0 == b.cid)
                    .count(),
                1
            );
        }
    }
    assert_eq!(moved, 6);
    assert!(out.to_clients.is_empty());
}

#[test]
fn timeouts_move_wants_on_and_late_blocks_still_count_once() {
    let t = Instant::now();
    let bs = backends(2);
    let mut r = router(&bs, t);
    let c = PeerId::random();
    let b = block(12);
    let order = order_for(&b, &bs);
    r.client_message(c, &wants(vec![want(&b, WantKind::Block, true)]), t);
    r.take_outbox();
    r.tick(t + Duration::from_secs(5));
    assert!(r.take_outbox().is_empty(), "not yet");
    r.tick(t + Duration::from_secs(11));
    let out = r.take_outbox();
    assert_eq!(
        sent_wants(&out, &order[0]),
        vec![(b.cid, true, WantKind::Block)]
    );
    assert_eq!(
        sent_wants(&out, &order[1]),
        vec![(b.cid, false, WantKind::Block)]
    );
    // The slow backend delivers after all: the client gets it once; the other is cancelled.
    r.backend_message(
        order[0],
        &blocks(std::slice::from_ref(&b)),
        t + Duration::from_secs(12),
    );
    let out = r.take_outbox();
    assert_eq!(out.to_clients[&c].blocks.len(), 1);
    assert_eq!(
        sent_wants(&out, &order[1]),
        vec![(b.cid, true, WantKind::Block)]
    );
    r.backend_message(order[1], &blocks(&[b]), t + Duration::from_secs(12));
    assert!(r.take_outbox().to_clients.is_empty());
    assert_eq!(r.stats().timeouts, 1);
}

/// One backend, and one client wanting blocks `n` and `n + 1` of it at the start.
fn one_backend_two_wants(n: u32) -> (Router, Instant, PeerId, PeerId, Block, Block) {
    let t = Instant::now();
    let backend = PeerId::random();
    let mut r = router(&[backend], t);
    let c = PeerId::random();
    let (a, b) = (block(n), block(n + 1));
    r.client_message(
        c,
        &wants(vec![
            want(&a, WantKind::Block, true),
            want(&b, WantKind::Block, true),
        ]),
        t,
    );
    (r, t, backend, c, a, b)
}

/// A backend that keeps answering other wants is busy, not hung: a want waiting in its
/// queue stays for up to BUSY_GRACE timeouts, then moves like any other.
#[test]
fn a_busy_backend_keeps_its_wants_longer_than_a_silent_one() {
    let (mut r, t, backend, c, slow, other) = one_backend_two_wants(30);
    let s = |n: u64| t + Duration::from_secs(n);
    r.take_outbox();
    // It answers one want at 9 s: busy. At 11 s the other want is past its timeout
    // but stays, and keeps staying while answers come.
    r.backend_message(backend, &blocks(std::slice::from_ref(&other)), s(9));
    r.take_outbox();
    r.tick(s(11));
    let out = r.take_outbox();
    assert!(out.to_clients.is_empty(), "a busy backend keeps the want");
    assert_eq!(
        sent_wants(&out, &backend),
        vec![(slow.cid, false, WantKind::Block)],
        "and is asked for it again"
    );
    assert_eq!(r.stats().refreshes, 1);
    for i in 0..4u32 {
        let b = block(100 + i);
        r.client_message(
            c,
            &wants(vec![want(&b, WantKind::Block, true)]),
            s(12 + 10 * i as u64),
        );
        r.backend_message(backend, &blocks(&[b]), s(15 + 10 * i as u64));
        r.take_outbox();
        r.tick(s(20 + 10 * i as u64));
        let out = r.take_outbox();
        assert!(
            out.to_clients
                .get(&c)
                .is_none_or(|m| m.presences.is_empty()),
            "still waiting at {} s",
            20 + 10 * i
        );
    }
    assert_eq!(r.stats().timeouts, 0);
    // Asked again at 11, 30, 40 and 50 s (each deadline is a timeout after the last).
    assert_eq!(r.stats().refreshes, 4);
    // Past BUSY_GRACE timeouts it moves on anyway: one backend, so DONT_HAVE.
    r.client_message(
        c,
        &wants(vec![want(&block(200), WantKind::Block, true)]),
        s(55),
    );
    r.backend_message(backend, &blocks(&[block(200)]), s(58));
    r.take_outbox();
    r.tick(s(61));
    let out = r.take_outbox();
    assert_eq!(
        out.to_clients[&c].presences,
        vec![Presence {
            cid: slow.cid,
            kind: PresenceKind::DontHave
        }]
    );
    assert_eq!(r.stats().timeouts, 1);

    // A silent backend loses its want after one timeout.
    let mut r = router(&[backend], t);
    r.client_message(c, &wants(vec![want(&slow, WantKind::Block, true)]), t);
    r.take_outbox();
    r.tick(s(11));
    assert_eq!(r.stats().timeouts, 1);
}

/// A busy backend that dropped a want (as kubo does when a CANCEL overtakes a later
/// WANT on another stream) is asked again at the timeout, with the same priority, and
/// the block it then sends reaches the client once: no DONT_HAVE.
#[test]
fn a_want_a_busy_backend_dropped_is_asked_again_and_served() {
    let (mut r, t, backend, c, lost, other) = one_backend_two_wants(40);
    let s = |n: u64| t + Duration::from_secs(n);
    let first = r.take_outbox().to_backends[&backend].wants.clone();
    let priority = first.iter().find(|w| w.cid == lost.cid).unwrap().priority;
    r.backend_message(backend, &blocks(std::slice::from_ref(&other)), s(8));
    r.take_outbox();
    r.tick(s(10));
    let again = r.take_outbox().to_backends[&backend].wants.clone();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].cid, again[0].cancel, again[0].priority),
        (lost.cid, false, priority)
    );
    r.backend_message(backend, &blocks(std::slice::from_ref(&lost)), s(12));
    let out = r.take_outbox();
    assert_eq!(out.to_clients[&c].blocks, vec![lost.clone()]);
    assert!(out.to_clients[&c].presences.is_empty());
    // A second copy (the backend had it queued after all) is dropped, not delivered.
    r.backend_message(backend, &blocks(std::slice::from_ref(&lost)), s(13));
    assert!(r.take_outbox().to_clients.is_empty());
    assert_eq!(r.stats().unsolicited_blocks, 1);
    assert_eq!((r.stats().timeouts, r.stats().refreshes), (0, 1));
}

/// Clients' priorities live in their own spaces (kubo counts down from i32::MAX,
/// Helia sends 1). The backend sees one peer, so the proxy numbers the wants itself:
/// a newcomer's want never goes behind another client's older one, the client's
/// order holds within one message, and a want keeps its number when it moves to
/// another backend. Oldest first across clients when fair scheduling is off.
#[test]
fn the_proxy_numbers_wants_itself_whatever_the_clients_priorities() {
    for fair in [true, false] {
        let t = Instant::now();
        let bs = backends(2);
        let cfg = Config {
            fair_scheduling: fair,
            ..Config::default()
        };
        let mut r = router_with(cfg, &bs, t);
        let (helia, kubo) = (PeerId::random(), PeerId::random());
        let prio = |r: &mut Router| -> HashMap<Cid, i32> {
            let out = r.take_outbox();
            out.to_backends
                .values()
                .flat_map(|m| m.wants.iter())
                .filter(|w| !w.cancel)
                .map(|w| (w.cid, w.priority))
                .collect()
        };
        let with = |b: &Block, p: i32| WantEntry {
            priority: p,
            ..want(b, WantKind::Block, true)
        };
        let (a, b, c, d, e) = (block(50), block(51), block(52), block(53), block(54));
        r.client_message(helia, &wants(vec![with(&a, 1)]), t);
        let pa = prio(&mut r)[&a.cid];
        r.client_message(kubo, &wants(vec![with(&b, i32::MAX)]), t);
        let pb = prio(&mut r)[&b.cid];
        // One message: highest client priority first, ties in the order listed.
        r.client_message(kubo, &wants(vec![with(&c, 3), with(&d, 9), with(&e, 3)]), t);
        let p = prio(&mut r);
        if fair {
            assert_eq!(pa, pb, "two clients' first wants start level");
        } else {
            assert!(
                pa > pb,
                "the older Helia want goes ahead of the newer kubo one"
            );
        }
        assert!(pb > p[&d.cid] && p[&d.cid] > p[&c.cid] && p[&c.cid] > p[&e.cid]);
        assert!(p.values().all(|&v| v > 0));

        // DONT_HAVE from the first backend: the want moves with its number.
        let first = order_for(&a, &bs)[0];
        r.backend_message(first, &presence(&a, PresenceKind::DontHave), t);
        let moved = r.take_outbox();
        let next = order_for(&a, &bs)[1];
        let w = &moved.to_backends[&next].wants;
        assert_eq!((w[0].cid, w[0].priority), (a.cid, pa));
    }
}

/// Wants the proxy already holds keep their number (a full wantlist resent every
/// few seconds charges its client nothing), and a want cancelled and wanted again in
/// one message still gets one.
#[test]
fn only_new_wants_are_numbered() {
    let t = Instant::now();
    let backend = PeerId::random();
    let mut r = router(&[backend], t);
    let (c, d) = (PeerId::random(), PeerId::random());
    let (x, y) = (block(70), block(71));
    r.client_message(c, &wants(vec![want(&x, WantKind::Block, true)]), t);
    r.take_outbox();
    let numbered = r.number(
        c,
        &[
            want(&x, WantKind::Block, true),
            want(&y, WantKind::Block, true),
            cancel(&y),
        ],
    );
    assert!(numbered[0].is_none() && numbered[1].is_some() && numbered[2].is_none());
    r.client_message(
        c,
        &wants(vec![cancel(&x), want(&x, WantKind::Block, true)]),
        t,
    );
    let out = r.take_outbox();
    let sent: Vec<(bool, bool)> = out.to_backends[&backend]
        .wants
        .iter()
        .map(|w| (w.cancel, w.priority > 0))
        .collect();
    assert_eq!(sent, vec![(true, false), (false, true)]);
    // Another client joining an existing want changes nothing at the backend, and
    // is not charged for it.
    r.client_message(d, &wants(vec![want(&x, WantKind::Block, true)]), t);
    assert!(r.take_outbox().is_empty());
    assert_eq!(r.fair.lanes(), 1);
}

/// One backend with room for four wants; a client with a thousand wants, then one
/// with ten. The backend serves the highest priority it holds first. Fair: the light
/// client's ten go ahead of the heavy client's backlog, in the proxy's queue and in
/// the priorities the backend sees. Off: they wait behind all of it.
#[test]
fn a_light_client_is_served_in_turn_beside_a_heavy_one() {
    fn heavy_blocks_before_light_done(fair: bool) -> usize {
        let t = Instant::now();
        let backend = PeerId::random();
        let cfg = Config {
            max_inflight_per_backend: 4,
            fair_scheduling: fair,
            ..Config::default()
        };
        let mut r = router_with(cfg, &[backend], t);
        let (heavy, light) = (PeerId::random(), PeerId::random());
        let heavy_blocks: Vec<Block> = (0..1000).map(|i| block(10_000 + i)).collect();
        let light_blocks: Vec<Block> = (0..10).map(|i| block(20_000 + i)).collect();
        let all: HashMap<Cid, Block> = heavy_blocks
            .iter()
            .chain(&light_blocks)
            .map(|b| (b.cid, b.clone()))
            .collect();
        let ask = |bs: &[Block]| wants(bs.iter().map(|b| want(b, WantKind::Block, true)).collect());
        // What the backend holds: CID -> the priority it was asked with.
        let mut at_backend: HashMap<Cid, i32> = HashMap::new();
        let take = |r: &mut Router, at: &mut HashMap<Cid, i32>| -> Vec<(PeerId, Cid)> {
            let out = r.take_outbox();
            for w in out
                .to_backends
                .get(&backend)
                .map_or(&[][..], |m| &m.wants[..])
            {
                if w.cancel {
                    at.remove(&w.cid);
                } else {
                    at.insert(w.cid, w.priority);
                }
            }
            out.to_clients
                .iter()
                .flat_map(|(c, m)| m.blocks.iter().map(|b| (*c, b.cid)))
                .collect()
        };
        r.client_message(heavy, &ask(&heavy_blocks), t);
        take(&mut r, &mut at_backend);
        // The backend has served two of the heavy client's wants when the light one comes.
        let mut heavy_served = 0;
        for _ in 0..2 {
            let next = *at_backend.iter().max_by_key(|(c, p)| (**p, **c)).unwrap().0;
            at_backend.remove(&next);
            r.backend_message(backend, &blocks(&[all[&next].clone()]), t);
            heavy_served += take(&mut r, &mut at_backend).len();
        }
        r.client_message(light, &ask(&light_blocks), t);
        take(&mut r, &mut at_backend);
        let mut light_served = 0;
        let mut heavy_before = 0;
        while light_served < light_blocks.len() {
            let next = *at_backend.iter().max_by_key(|(c, p)| (**p, **c)).unwrap().0;
            at_backend.remove(&next);
            r.backend_message(backend, &blocks(&[all[&next].clone()]), t);
            for (client, _) in take(&mut r, &mut at_backend) {
                if client == light {
                    light_served += 1;
                } else {
                    heavy_before += 1;
                }
            }
        }
        assert_eq!(heavy_served, 2);
        heavy_before
    }
    let fair = heavy_blocks_before_light_done(true);
    assert!(
        fair <= 10 + 4,
        "{fair} heavy blocks served before the light client's ten"
    );
    let fifo = heavy_blocks_before_light_done(false);
    assert!(
        fifo >= 990,
        "oldest first: {fifo} heavy blocks before the light client's ten"
    );
}

#[test]
fn per_backend_inflight_is_bounded_and_the_queue_drains() {
    let t = Instant::now();
    let bs = backends(1);
    let cfg = Config {
        max_inflight_per_backend: 4,
        ..Config::default()
    };
    let mut r = router_with(cfg, &bs, t);
    let c = PeerId::random();
    let all: Vec<Block> = (0..10).map(block).collect();
    r.client_message(
        c,
        &wants(
            all.iter()
                .map(|b| want(b, WantKind::Block, false))
                .collect(),
        ),
        t,
    );
    let out = r.take_outbox();
    assert_eq!(sent_wants(&out, &bs[0]).len(), 4);
    assert_eq!(r.queued_wants(), 6);

    let mut delivered = HashSet::new();
    let mut outstanding: Vec<Cid> = sent_wants(&out, &bs[0]).into_iter().map(|w| w.0).collect();
    while let Some(cid) = outstanding.pop() {
        let b = all.iter().find(|b| b.cid == cid).unwrap().clone();
        r.backend_message(bs[0], &blocks(&[b]), t);
        let out = r.take_outbox();
        for blk in &out.to_clients[&c].blocks {
            assert!(delivered.insert(blk.cid), "delivered twice");
        }
        outstanding.extend(
            sent_wants(&out, &bs[0])
                .into_iter()
                .filter(|w| !w.1)
                .map(|w| w.0),
        );
        assert!(outstanding.len() <= 4);
    }
    assert_eq!(delivered.len(), 10);
    assert_eq!(r.queued_wants(), 0);
}

#[test]
fn wants_per_client_are_bounded() {
    let t = Instant::now();
    let bs = backends(1);
    let cfg = Config {
        max_wants_per_client: 3,
        ..Config::default()
    };
    let mut r = router_with(cfg, &bs, t);
    let c = PeerId::random();
    let all: Vec<Block> = (0..5).map(block).collect();
    r.client_message(
        c,
        &wants(all.iter().map(|b| want(b, WantKind::Block, true)).collect()),
        t,
    );
    let out = r.take_outbox();
    assert_eq!(sent_wants(&out, &bs[0]).len(), 3);
    assert_eq!(
        out.to_clients[&c].presences.len(),
        2,
        "refused ones get DONT_HAVE"
    );
    assert!(
        out.to_clients[&c]
            .presences
            .iter()
            .all(|p| p.kind == PresenceKind::DontHave)
    );
    assert_eq!(r.client_wants(&c), 3);
    assert_eq!(r.stats().refused_wants, 2);
}

#[test]
fn no_backend_means_dont_have_where_asked_and_a_parked_want() {
    let t = Instant::now();
    let mut r = Router::new(Config::default());
    let c = PeerId::random();
    let b = block(13);
    r.client_message(c, &wants(vec![want(&b, WantKind::Block, true)]), t);
    let out = r.take_outbox();
    assert_eq!(out.to_clients[&c].presences[0].kind, PresenceKind::DontHave);
    let late = PeerId::random();
    r.backend_up(late, t);
    let out = r.take_outbox();
    assert_eq!(
        sent_wants(&out, &late),
        vec![(b.cid, false, WantKind::Block)]
    );
    r.backend_message(late, &blocks(std::slice::from_ref(&b)), t);
    assert_eq!(r.take_outbox().to_clients[&c].blocks, vec![b]);
}

#[test]
fn backend_wants_get_dont_have_and_never_reach_clients() {
    let t = Instant::now();
    let bs = backends(1);
    let mut r = router(&bs, t);
    let c = PeerId::random();
    r.client_message(c, &wants(vec![want(&block(14), WantKind::Block, false)]), t);
    r.take_outbox();
    let b = block(15);
    r.backend_message(bs[0], &wants(vec![want(&b, WantKind::Block, true)]), t);
    let out = r.take_outbox();
    assert!(out.to_clients.is_empty());
    assert_eq!(
        out.to_backends[&bs[0]].presences[0].kind,
        PresenceKind::DontHave
    );
}

/// A randomised run: clients want, cancel and leave; backends answer, time out and
/// die. Invariants: every delivered block was wanted by that client at that moment,
/// no client gets a block twice, and every want that stays wanted is eventually served
/// while a backend that has it stays up. Everything random comes from the seed (peer IDs
/// too), so a failing seed replays the same run.
#[test]
fn randomised_no_loss_no_duplicates() {
    for seed in 0..20u64 {
        let first = randomised_run(seed);
        assert!(!first.is_empty(), "seed {seed}: nothing was delivered");
        assert_eq!(first, randomised_run(seed), "seed {seed} does not replay");
    }
}

/// A peer ID drawn from `rng` (an Ed25519 key from seeded bytes).
fn seeded_peer(rng: &mut impl rand::Rng) -> PeerId {
    let secret: [u8; 32] = rng.r#gen();
    libp2p::identity::Keypair::ed25519_from_bytes(secret)
        .expect("any 32 bytes are an Ed25519 secret")
        .public()
        .to_peer_id()
}

/// One run of [`randomised_no_loss_no_duplicates`]; returns every delivery in order.
fn randomised_run(seed: u64) -> Vec<(PeerId, Cid)> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::collections::{BTreeMap, BTreeSet};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Instant::now();
    let bs: Vec<PeerId> = (0..3).map(|_| seeded_peer(&mut rng)).collect();
    let cfg = Config {
        max_inflight_per_backend: 8,
        ..Config::default()
    };
    let mut r = router_with(cfg, &bs, t);
    let content: Vec<Block> = (0..40).map(|i| block(1000 + i)).collect();
    // Backend 0 has nothing; backends 1 and 2 have everything.
    let has = |b: &PeerId, _: &Cid| *b != bs[0];
    let clients: Vec<PeerId> = (0..4).map(|_| seeded_peer(&mut rng)).collect();
    // Ordered collections: iteration order must not depend on a hasher's random keys.
    let mut wanted: BTreeMap<PeerId, BTreeSet<Cid>> = BTreeMap::new();
    let mut got: BTreeMap<PeerId, BTreeSet<Cid>> = BTreeMap::new();
    let mut pending: Vec<(PeerId, Cid, bool)> = Vec::new(); // backend, cid, cancel
    let mut alive: BTreeSet<PeerId> = bs.iter().copied().collect();
    let mut delivered: Vec<(PeerId, Cid)> = Vec::new();

    let drain = |r: &mut Router,
                 pending: &mut Vec<(PeerId, Cid, bool)>,
                 wanted: &mut BTreeMap<PeerId, BTreeSet<Cid>>,
                 got: &mut BTreeMap<PeerId, BTreeSet<Cid>>,
                 delivered: &mut Vec<(PeerId, Cid)>| {
        let out = r.take_outbox();
        // The outbox is keyed by a HashMap: visit its peers in a fixed order.
        let to_clients: BTreeMap<PeerId, Message> = out.to_clients.into_iter().collect();
        for (c, m) in to_clients {
            for blk in m.blocks {
                assert!(
                    wanted.get_mut(&c).unwrap().remove(&blk.cid),
                    "seed {seed}: unwanted delivery"
                );
                assert!(
                    got.entry(c).or_default().insert(blk.cid),
                    "seed {seed}: duplicate delivery"
                );
                delivered.push((c, blk.cid));
            }
        }
        let to_backends: BTreeMap<PeerId, Message> = out.to_backends.into_iter().collect();
        for (b, m) in to_backends {
            for w in m.wants {
                pending.push((b, w.cid, w.cancel));
            }
        }
    };

    for _ in 0..400 {
        t += Duration::from_millis(rng.gen_range(0..3000));
        match rng.gen_range(0..10) {
            0..=3 => {
                let c = clients[rng.gen_range(0..clients.len())];
                let b = &content[rng.gen_range(0..content.len())];
                if got.get(&c).is_some_and(|g| g.contains(&b.cid)) {
                    continue;
                }
                wanted.entry(c).or_default().insert(b.cid);
                r.client_message(c, &wants(vec![want(b, WantKind::Block, false)]), t);
            }
            4 => {
                let c = clients[rng.gen_range(0..clients.len())];
                if let Some(cid) = wanted.get(&c).and_then(|w| w.iter().next().copied()) {
                    wanted.get_mut(&c).unwrap().remove(&cid);
                    let b = content.iter().find(|b| b.cid == cid).unwrap();
                    r.client_message(c, &wants(vec![cancel(b)]), t);
                }
            }
            5..=8 if !pending.is_empty() => {
                let (b, cid, is_cancel) = pending.remove(rng.gen_range(0..pending.len()));
                if is_cancel || !alive.contains(&b) {
                    continue;
                }
                let blk = content.iter().find(|x| x.cid == cid).unwrap();
                if has(&b, &cid) {
                    r.backend_message(b, &blocks(std::slice::from_ref(blk)), t);
                } else {
                    r.backend_message(b, &presence(blk, PresenceKind::DontHave), t);
                }
            }
            _ => {
                // Backend 2 flaps; backend 1 stays, so everything stays servable.
                if alive.remove(&bs[2]) {
                    r.backend_down(bs[2], t);
                } else {
                    alive.insert(bs[2]);
                    r.backend_up(bs[2], t);
                }
            }
        }
        r.tick(t);
        drain(&mut r, &mut pending, &mut wanted, &mut got, &mut delivered);
    }
    // Settle: clients re-send what they still want (as bitswap clients rebroadcast),
    // backends answer everything, with no more failures.
    if !alive.contains(&bs[2]) {
        alive.insert(bs[2]);
        r.backend_up(bs[2], t);
    }
    for _ in 0..20 {
        for (c, w) in wanted.clone() {
            let entries = content
                .iter()
                .filter(|b| w.contains(&b.cid))
                .map(|b| want(b, WantKind::Block, false))
                .collect();
            r.client_message(c, &wants(entries), t);
        }
        drain(&mut r, &mut pending, &mut wanted, &mut got, &mut delivered);
        while !pending.is_empty() {
            let (b, cid, is_cancel) = pending.remove(0);
            if is_cancel || !alive.contains(&b) {
                continue;
            }
            let blk = content.iter().find(|x| x.cid == cid).unwrap();
            if has(&b, &cid) {
                r.backend_message(b, &blocks(std::slice::from_ref(blk)), t);
            } else {
                r.backend_message(b, &presence(blk, PresenceKind::DontHave), t);
            }
            drain(&mut r, &mut pending, &mut wanted, &mut got, &mut delivered);
        }
        if wanted.values().all(BTreeSet::is_empty) {
            break;
        }
    }
    for (c, w) in &wanted {
        assert!(
            w.is_empty(),
            "seed {seed}: client {c} never got {} wanted blocks",
            w.len()
        );
    }
    assert_eq!(r.wants_in_flight(), 0, "seed {seed}");
    delivered
}

#[test]
fn backend_for_is_the_rendezvous_first_choice_whatever_the_policy() {
    let now = Instant::now();
    let backends: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
    let mut r = Router::new(Config {
        policy: Policy::RoundRobin,
        ..Config::default()
    });
    for b in &backends {
        r.backend_up(*b, now);
    }
    for i in 0..50 {
        let b = block(i);
        assert_eq!(r.backend_for(&b.cid), Some(order_for(&b, &backends)[0]));
    }
    assert_eq!(
        Router::new(Config::default()).backend_for(&block(0).cid),
        None
    );
}

#[test]
fn an_offered_block_answers_waiting_clients_and_cancels_at_the_backend() {
    let now = Instant::now();
    let backends: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
    let mut r = router(&backends, now);
    let client = PeerId::random();
    let b = block(1);
    r.client_message(client, &wants(vec![want(&b, WantKind::Block, true)]), now);
    let first = order_for(&b, &backends)[0];
    assert_eq!(
        sent_wants(&r.take_outbox(), &first),
        vec![(b.cid, false, WantKind::Block)]
    );
    r.offer_block(&b, now);
    let out = r.take_outbox();
    assert_eq!(out.to_clients[&client].blocks, vec![b.clone()]);
    assert_eq!(
        sent_wants(&out, &first),
        vec![(b.cid, true, WantKind::Block)]
    );
    assert!(
        out.rtts.is_empty(),
        "no backend RTT for a block from elsewhere"
    );
    // Offered again, or a block nobody wants: nothing happens.
    r.offer_block(&b, now);
    r.offer_block(&block(2), now);
    assert!(r.take_outbox().is_empty());
}

#[test]
fn want_cancel_churn_leaves_no_stale_growth() {
    let t = Instant::now();
    let bs = backends(1);
    let cfg = Config {
        max_inflight_per_backend: 2,
        ..Config::default()
    };
    let mut r = router_with(cfg, &bs, t);
    let c = PeerId::random();
    // Fill the backend, so further wants queue.
    r.client_message(
        c,
        &wants(vec![
            want(&block(0), WantKind::Block, false),
            want(&block(1), WantKind::Block, false),
        ]),
        t,
    );
    for i in 0..20_000 {
        let b = block(2 + i % 7);
        r.client_message(c, &wants(vec![want(&b, WantKind::Block, false)]), t);
        r.client_message(c, &wants(vec![cancel(&b)]), t);
        // And churn a sent want too (the deadline queue).
        r.client_message(c, &wants(vec![cancel(&block(0))]), t);
        r.client_message(c, &wants(vec![want(&block(0), WantKind::Block, false)]), t);
        r.take_outbox();
    }
    assert_eq!(r.queued_wants(), 0);
    let queue_len: usize = r.backends.values().map(|b| b.queue.len()).sum();
    assert!(
        queue_len <= 2 * r.queued_wants() + 65,
        "stale queue entries: {queue_len}"
    );
    assert!(
        r.deadlines.len() <= 2 * r.wants_in_flight() + 65,
        "stale deadlines: {}",
        r.deadlines.len()
    );
    assert_eq!(r.wants_in_flight(), 2);
}

/// WANT-BLOCK for each of `bs`, without DONT_HAVE.
fn want_blocks(bs: &[Block]) -> Message {
    wants(bs.iter().map(|b| want(b, WantKind::Block, false)).collect())
}

/// `n` blocks, from `from` on, whose rendezvous first choice among `backends` is `first`.
fn blocks_first_at(first: PeerId, backends: &[PeerId], from: u32, n: usize) -> Vec<Block> {
    (from..)
        .map(block)
        .filter(|b| order_for(b, backends)[0] == first)
        .take(n)
        .collect()
}

#[test]
fn below_the_load_floor_every_want_goes_to_its_first_choice() {
    let t = Instant::now();
    let bs = backends(2);
    let mut r = router(&bs, t);
    let hot = blocks_first_at(bs[0], &bs, 0, balancer::LOAD_FLOOR);
    let c = PeerId::random();
    r.client_message(c, &want_blocks(&hot), t);
    let out = r.take_outbox();
    assert_eq!(sent_wants(&out, &bs[0]).len(), balancer::LOAD_FLOOR);
    assert!(sent_wants(&out, &bs[1]).is_empty(), "affinity kept");
}

#[test]
fn a_backends_overflow_goes_to_the_next_in_each_wants_order() {
    let t = Instant::now();
    let bs = backends(2);
    let mut r = router(&bs, t);
    // 100 wants whose first choice is bs[0], 20 whose first is bs[1]: unbounded,
    // bs[0] would hold 100 of 120.
    let hot = blocks_first_at(bs[0], &bs, 0, 100);
    let cold = blocks_first_at(bs[1], &bs, 0, 20);
    let c = PeerId::random();
    let all: Vec<Block> = hot.iter().chain(&cold).cloned().collect();
    r.client_message(c, &want_blocks(&all), t);
    let out = r.take_outbox();
    let (at0, at1) = (sent_wants(&out, &bs[0]), sent_wants(&out, &bs[1]));
    // 1.25 × the average of 120 over 2, rounded up: 76.
    assert!(at0.len() <= 76, "bs[0] holds {}", at0.len());
    assert!(at0.len() >= 60, "bs[0] holds only {}", at0.len());
    assert_eq!(at0.len() + at1.len(), 120, "every want sent once");
    assert_eq!(r.queued_wants(), 0);
    let to0: HashSet<Cid> = at0.iter().map(|w| w.0).collect();
    assert!(
        cold.iter().all(|b| !to0.contains(&b.cid)),
        "only the overloaded backend's wants move"
    );

    // A want that moved is served from where it went, once.
    let moved = hot.iter().find(|b| !to0.contains(&b.cid)).unwrap();
    r.backend_message(bs[1], &blocks(std::slice::from_ref(moved)), t);
    let out = r.take_outbox();
    assert_eq!(out.to_clients[&c].blocks, vec![moved.clone()]);
    // If the backend it moved to lacks it, its first choice is asked next.
    let moved2 = hot
        .iter()
        .find(|b| !to0.contains(&b.cid) && b.cid != moved.cid)
        .unwrap();
    r.backend_message(bs[1], &presence(moved2, PresenceKind::DontHave), t);
    let out = r.take_outbox();
    assert!(out.to_clients.is_empty(), "not exhausted: bs[0] is left");
    assert_eq!(
        sent_wants(&out, &bs[0]),
        vec![(moved2.cid, false, WantKind::Block)]
    );

    // Once bs[0] has drained, its content goes back to it.
    let served: Vec<Block> = all
        .iter()
        .filter(|b| to0.contains(&b.cid))
        .cloned()
        .collect();
    r.backend_message(bs[0], &blocks(&served), t);
    r.backend_message(bs[0], &blocks(std::slice::from_ref(moved2)), t);
    r.take_outbox();
    let more = blocks_first_at(bs[0], &bs, 100_000, 10);
    r.client_message(c, &want_blocks(&more), t);
    let out = r.take_outbox();
    assert_eq!(sent_wants(&out, &bs[0]).len(), 10, "affinity back");
}

#[test]
fn a_full_first_choice_sends_wants_on_before_any_queue() {
    let t = Instant::now();
    let bs = backends(2);
    let cfg = Config {
        max_inflight_per_backend: 4,
        ..Config::default()
    };
    let mut r = router_with(cfg, &bs, t);
    let hot = blocks_first_at(bs[0], &bs, 0, 10);
    let c = PeerId::random();
    r.client_message(c, &want_blocks(&hot), t);
    let out = r.take_outbox();
    // 4 at the first choice, 4 where there is room, 2 queued at the first choice.
    assert_eq!(sent_wants(&out, &bs[0]).len(), 4);
    assert_eq!(sent_wants(&out, &bs[1]).len(), 4);
    assert_eq!(r.queued_wants(), 2);
    // When the first choice answers one, a queued want goes there.
    let done = hot
        .iter()
        .find(|b| sent_wants(&out, &bs[0]).iter().any(|w| w.0 == b.cid))
        .unwrap();
    r.backend_message(bs[0], &blocks(std::slice::from_ref(done)), t);
    let out = r.take_outbox();
    assert_eq!(sent_wants(&out, &bs[0]).len(), 1);
    assert_eq!(r.queued_wants(), 1);
}

#[test]
fn one_address_with_many_peers_gets_its_share_and_no_more() {
    let t = Instant::now();
    let bs = backends(1);
    let cfg = Config {
        max_wants_per_client: 4,
        max_wants_per_address: 10,
        ..Config::default()
    };
    let mut r = router_with(cfg, &bs, t);
    let flood: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let same_64: std::net::IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
    // Twenty peers from one /64, each asking for 4 distinct absent blocks.
    let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
    for (i, p) in peers.iter().enumerate() {
        r.client_address(*p, if i % 2 == 0 { flood } else { same_64 });
        let mine: Vec<WantEntry> = (0..4)
            .map(|k| want(&block(1000 + (i * 4 + k) as u32), WantKind::Block, true))
            .collect();
        r.client_message(*p, &wants(mine), t);
    }
    assert_eq!(r.address_wants(flood), 10, "the address's share");
    assert_eq!(r.stats().refused_address_wants, 70);
    assert_eq!(
        r.stats().refused_wants,
        0,
        "not the per-client limit's reason"
    );
    let out = r.take_outbox();
    assert_eq!(sent_wants(&out, &bs[0]).len(), 10);

    // Another address is served in full.
    let good = PeerId::random();
    r.client_address(good, "198.51.100.2".parse().unwrap());
    let x = block(1);
    r.client_message(good, &wants(vec![want(&x, WantKind::Block, true)]), t);
    let out = r.take_outbox();
    assert_eq!(
        sent_wants(&out, &bs[0]),
        vec![(x.cid, false, WantKind::Block)]
    );
    assert!(!out.to_clients.contains_key(&good), "no DONT_HAVE");

    // A flooding peer leaving gives its wants back to the address.
    let held = r.client_wants(&peers[0]);
    assert!(held > 0);
    r.client_disconnected(peers[0], t);
    assert_eq!(r.address_wants(flood), 10 - held);
    // And a delivered block does too.
    r.backend_message(bs[0], &blocks(&[x]), t);
    assert_eq!(r.address_wants("198.51.100.2".parse().unwrap()), 0);
}

// ------------------------------------------------------------------ load shedding

fn shedding(shed_after: Duration, max_inflight_per_backend: usize) -> Config {
    Config {
        max_inflight_per_backend,
        shed_after,
        ..Config::default()
    }
}

fn dont_haves_to(out: &Outbox, client: &PeerId) -> Vec<Cid> {
    out.to_clients
        .get(client)
        .map(|m| {
            m.presences
                .iter()
                .filter(|p| p.kind == PresenceKind::DontHave)
                .map(|p| p.cid)
                .collect()
        })
        .unwrap_or_default()
}

/// One backend, a window of 2: blocks 0 and 1 go out, 2..6 queue (no rate yet, so
/// nothing is shed). It answers block 0 half a second in, and the tick at one second
/// measures 1 answer a second, with 2 in flight and 3 queued.
fn one_slow_backend(cfg: Config, t: Instant) -> (Router, PeerId, PeerId) {
    let b = PeerId::random();
    let mut r = router_with(cfg, &[b], t);
    let heavy = PeerId::random();
    let all: Vec<WantEntry> = (0..6)
        .map(|i| want(&block(i), WantKind::Block, true))
        .collect();
    r.client_message(heavy, &wants(all), t);
    let out = r.take_outbox();
    assert_eq!(sent_wants(&out, &b).len(), 2);
    assert!(
        dont_haves_to(&out, &heavy).is_empty(),
        "no rate yet: nothing shed"
    );
    assert_eq!(r.backends[&b].queued, 4);
    r.backend_message(b, &blocks(&[block(0)]), t + Duration::from_millis(500));
    r.tick(t + Duration::from_secs(1));
    assert_eq!(r.backends[&b].meter.rate(), Some(1.0));
    r.take_outbox();
    (r, b, heavy)
}

#[test]
fn a_want_that_would_wait_past_shed_after_everywhere_is_answered_at_once() {
    let t = Instant::now();
    // 5 outstanding at 1 a second: 6 s for a new want, over a bound of 4 s.
    // The new wants come from the client whose backlog it is (a heavyer one is
    // spared: see the next test).
    let (mut r, b, heavy) = one_slow_backend(shedding(Duration::from_secs(4), 2), t);
    let now = t + Duration::from_secs(1);
    let x = block(100);
    r.client_message(heavy, &wants(vec![want(&x, WantKind::Block, true)]), now);
    let out = r.take_outbox();
    assert_eq!(
        dont_haves_to(&out, &heavy),
        vec![x.cid],
        "DONT_HAVE at once"
    );
    assert!(
        sent_wants(&out, &b).is_empty(),
        "nothing goes to the backend"
    );
    assert_eq!(r.backends[&b].queued, 3, "nor waits in its queue");
    assert_eq!(r.stats().shed_wants, 1);
    assert_eq!(r.take_shed(), vec![x.cid]);
    assert!(r.take_shed().is_empty(), "taken once");
    // One that did not ask for DONT_HAVE is shed all the same, silently.
    let y = block(101);
    r.client_message(heavy, &wants(vec![want(&y, WantKind::Block, false)]), now);
    assert!(dont_haves_to(&r.take_outbox(), &heavy).is_empty());
    assert_eq!(r.stats().shed_wants, 2);
    // Once the queue is short enough for the bound, wants queue again: the backend
    // answers two (each frees a slot the queue fills), leaving 3 outstanding.
    let later = now + Duration::from_millis(100);
    r.backend_message(b, &blocks(&[block(1), block(2)]), later);
    let z = block(102);
    r.client_message(heavy, &wants(vec![want(&z, WantKind::Block, true)]), later);
    let out = r.take_outbox();
    assert!(
        dont_haves_to(&out, &heavy).is_empty(),
        "4 s at 1 a second: it fits"
    );
    assert_eq!(r.wants[&z.cid].state, State::Queued(b));
    assert_eq!(r.stats().shed_wants, 2);
}

/// With fair scheduling, a client holding fewer wants than the average goes ahead of
/// the heavy backlog that makes the queue deep: it is not shed for it, while the
/// heavy client's next want is. Without fair scheduling it would wait behind all of
/// it, and is shed like any other; so it is at a backend that answers nothing.
#[test]
fn a_light_client_is_not_shed_for_a_heavy_clients_backlog() {
    for fair in [true, false] {
        let t = Instant::now();
        let cfg = Config {
            fair_scheduling: fair,
            ..shedding(Duration::from_secs(4), 2)
        };
        let (mut r, b, heavy) = one_slow_backend(cfg, t);
        let now = t + Duration::from_secs(1);
        let light = PeerId::random();
        let (x, y) = (block(100), block(101));
        r.client_message(light, &wants(vec![want(&x, WantKind::Block, true)]), now);
        r.client_message(heavy, &wants(vec![want(&y, WantKind::Block, true)]), now);
        let out = r.take_outbox();
        assert_eq!(dont_haves_to(&out, &heavy), vec![y.cid], "fair: {fair}");
        if fair {
            assert!(dont_haves_to(&out, &light).is_empty());
            assert_eq!(r.wants[&x.cid].state, State::Queued(b));
            assert_eq!(r.stats().shed_wants, 1);
            // It is next: the first slot that frees takes it, ahead of the backlog.
            r.backend_message(b, &blocks(&[block(1)]), now);
            let sent = sent_wants(&r.take_outbox(), &b);
            assert_eq!(sent, vec![(x.cid, false, WantKind::Block)]);
        } else {
            assert_eq!(dont_haves_to(&out, &light), vec![x.cid]);
            assert_eq!(r.stats().shed_wants, 2);
        }
    }
}

#[test]
fn at_a_silent_backend_even_a_light_client_is_shed() {
    let t = Instant::now();
    let b = PeerId::random();
    let mut r = router_with(shedding(Duration::from_secs(4), 2), &[b], t);
    let heavy = PeerId::random();
    let all: Vec<WantEntry> = (0..6)
        .map(|i| want(&block(i), WantKind::Block, true))
        .collect();
    r.client_message(heavy, &wants(all), t);
    // A whole window saturated and not one answer: it serves nothing a second.
    r.tick(t + Duration::from_secs(1));
    assert_eq!(r.backends[&b].meter.rate(), Some(0.0));
    r.take_outbox();
    let light = PeerId::random();
    let x = block(100);
    let now = t + Duration::from_secs(1);
    r.client_message(light, &wants(vec![want(&x, WantKind::Block, true)]), now);
    assert_eq!(dont_haves_to(&r.take_outbox(), &light), vec![x.cid]);
}

#[test]
fn without_shed_after_a_deep_queue_only_grows() {
    let t = Instant::now();
    let (mut r, b, _) = one_slow_backend(shedding(Duration::ZERO, 2), t);
    let light = PeerId::random();
    let x = block(100);
    r.client_message(
        light,
        &wants(vec![want(&x, WantKind::Block, true)]),
        t + Duration::from_secs(1),
    );
    assert!(dont_haves_to(&r.take_outbox(), &light).is_empty());
    assert_eq!(r.wants[&x.cid].state, State::Queued(b));
    assert_eq!((r.stats().shed_wants, r.take_shed().len()), (0, 0));
}

#[test]
fn a_want_queues_at_the_next_backend_when_its_first_is_too_deep() {
    let t = Instant::now();
    let bs = backends(2);
    let (b1, b2) = (bs[0], bs[1]);
    let mut r = router_with(shedding(Duration::from_secs(2), 1), &bs, t);
    // Blocks whose first backend is b1, and ones whose first is b2.
    let firsts = |b: PeerId, n: usize| -> Vec<Block> {
        (0u32..)
            .map(block)
            .filter(|x| order_for(x, &bs)[0] == b)
            .take(n)
            .collect()
    };
    let (to_b1, to_b2) = (firsts(b1, 3), firsts(b2, 6));
    let c = PeerId::random();
    // One in flight at each, then a queue at each (no rate yet: they queue at their
    // first backend).
    let ask = |bs: &[Block]| wants(bs.iter().map(|x| want(x, WantKind::Block, true)).collect());
    r.client_message(c, &ask(&[to_b1[0].clone(), to_b2[0].clone()]), t);
    r.client_message(c, &ask(&[to_b1[1].clone()]), t);
    r.client_message(c, &ask(&to_b2[1..]), t);
    assert_eq!((r.backends[&b1].queued, r.backends[&b2].queued), (1, 5));
    // Within the second, b2 answers four and b1 nothing.
    for (i, x) in to_b2[..4].iter().enumerate() {
        let at = t + Duration::from_millis(100 * (i as u64 + 1));
        r.backend_message(b2, &blocks(std::slice::from_ref(x)), at);
    }
    let now = t + Duration::from_secs(1);
    r.tick(now);
    assert_eq!(r.backends[&b1].meter.rate(), Some(0.0));
    assert_eq!(r.backends[&b2].meter.rate(), Some(4.0));
    r.take_outbox();
    // b1 is first for this one, but answers nothing; b2 serves 3 outstanding in
    // under 2 s.
    let x = &to_b1[2];
    r.client_message(c, &ask(std::slice::from_ref(x)), now);
    assert!(dont_haves_to(&r.take_outbox(), &c).is_empty());
    assert_eq!(r.wants[&x.cid].state, State::Queued(b2));
    assert_eq!(r.stats().shed_wants, 0);
}

#[test]
fn a_saturated_window_that_goes_idle_is_not_a_sample() {
    let t = Instant::now();
    let b = PeerId::random();
    let mut r = router_with(shedding(Duration::from_secs(1), 1), &[b], t);
    let c = PeerId::random();
    r.client_message(
        c,
        &wants(vec![
            want(&block(0), WantKind::Block, true),
            want(&block(1), WantKind::Block, true),
        ]),
        t,
    );
    // Block 0 answered: block 1 leaves the queue, which is now empty.
    r.backend_message(b, &blocks(&[block(0)]), t + Duration::from_millis(10));
    r.tick(t + Duration::from_secs(5));
    assert_eq!(
        r.backends[&b].meter.rate(),
        None,
        "the backend was never slow"
    );
}
