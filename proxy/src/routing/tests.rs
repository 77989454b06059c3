//! The core's sequencing rules, event by event, without I/O.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;

use super::*;
use crate::bitswap::{Block, PresenceKind, WantKind};
use crate::fixtures::{blocks, cbor_block, peer, raw_block, want, wants};
use crate::preload::sessions::Limits;
use crate::router::{Config, Outbox};
// The HTTP fetch tests below.
use crate::fixtures::presence;

const UPLOADER_IP: &str = "198.51.100.1";
const BYSTANDER_IP: &str = "203.0.113.7";

fn core(preload: bool) -> Core {
    let reverse = preload.then(|| Reverse::new(Limits::default()));
    Core::new(Router::new(Config::default()), reverse)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn wanted_of(out: &Outbox, backend: &PeerId) -> Vec<(Cid, bool)> {
    out.to_backends
        .get(backend)
        .map(|m| m.wants.iter().map(|w| (w.cid, w.cancel)).collect())
        .unwrap_or_default()
}

fn blocks_to_client(out: &Outbox, client: &PeerId) -> Vec<Block> {
    out.to_clients
        .get(client)
        .map(|m| m.blocks.clone())
        .unwrap_or_default()
}

fn want_block(b: &Block) -> Message {
    wants(vec![want(b.cid, WantKind::Block, true)])
}

#[test]
fn a_new_backend_first_gets_an_empty_full_wantlist() {
    let (mut c, now, b) = (core(false), Instant::now(), peer(1));
    let fx = c.backend_up(b, now);
    let m = &fx.outbox.to_backends[&b];
    assert!(m.full, "the backend's ledger for us starts clean");
    assert!(m.wants.is_empty() && m.blocks.is_empty());
}

#[test]
fn parked_wants_go_out_inside_the_new_backends_full_wantlist() {
    let (mut c, now, b, client) = (core(false), Instant::now(), peer(1), peer(10));
    let x = raw_block(1);
    let fx = c.client_message(client, &want_block(&x), now);
    assert!(fx.outbox.to_backends.is_empty(), "no backend to ask");
    let fx = c.backend_up(b, now);
    let m = &fx.outbox.to_backends[&b];
    assert!(m.full);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, false)]);
}

#[test]
fn a_block_flows_client_to_backend_and_back_to_the_client_that_asked() {
    let (mut c, now) = (core(false), Instant::now());
    let (b, asker, other) = (peer(1), peer(10), peer(11));
    c.backend_up(b, now);
    let x = raw_block(1);
    let fx = c.client_message(asker, &want_block(&x), now);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, false)]);
    assert!(fx.outbox.to_clients.is_empty());
    c.client_message(other, &want_block(&raw_block(2)), now);

    let fx = c.backend_message(b, &blocks(std::slice::from_ref(&x)), now);
    assert_eq!(blocks_to_client(&fx.outbox, &asker), vec![x]);
    assert!(!fx.outbox.to_clients.contains_key(&other));
    assert_eq!(fx.outbox.rtts.len(), 1, "one want-to-block time");
}

#[test]
fn counts_are_what_each_event_added() {
    let (mut c, now) = (core(false), Instant::now());
    let (b1, b2, client) = (peer(1), peer(2), peer(10));
    c.backend_up(b1, now);
    c.backend_up(b2, now);
    let x = raw_block(1);
    let fx = c.client_message(client, &want_block(&x), now);
    assert_eq!(fx.counts, Counts::default());
    // Neither backend answers: the want times out at one and moves to the other.
    let later = now + Config::default().want_timeout + Duration::from_millis(1);
    let fx = c.tick(later);
    assert_eq!(
        (fx.counts.timeouts, fx.counts.failovers),
        (1, 1),
        "{:?}",
        fx.counts
    );
    assert_eq!(c.tick(later).counts, Counts::default(), "counted once");

    let mut small = core(false);
    small.router = Router::new(Config {
        max_wants_per_client: 1,
        ..Config::default()
    });
    small.backend_up(b1, now);
    let two = wants(vec![
        want(raw_block(1).cid, WantKind::Block, true),
        want(raw_block(2).cid, WantKind::Block, true),
    ]);
    let fx = small.client_message(client, &two, now);
    assert_eq!(
        (fx.counts.refused_wants, fx.counts.dont_haves_delivered),
        (1, 1)
    );
}

#[test]
fn undelivered_blocks_are_wanted_again_for_their_client() {
    let (mut c, now, b, client) = (core(false), Instant::now(), peer(1), peer(10));
    c.backend_up(b, now);
    let x = raw_block(1);
    c.client_message(client, &want_block(&x), now);
    c.backend_message(b, &blocks(std::slice::from_ref(&x)), now);

    let fx = c.undelivered(client, vec![x.cid], now);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, false)]);
    let fx = c.backend_message(b, &blocks(std::slice::from_ref(&x)), now);
    assert_eq!(blocks_to_client(&fx.outbox, &client), vec![x]);
}

#[test]
fn without_preload_backend_wants_are_refused_and_reach_no_client() {
    let (mut c, now, b, client) = (core(false), Instant::now(), peer(1), peer(10));
    c.backend_up(b, now);
    c.client_connected(client, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    let x = raw_block(1);
    let fx = c.backend_message(b, &want_block(&x), now);
    assert!(fx.outbox.to_clients.is_empty());
    let told = &fx.outbox.to_backends[&b].presences;
    assert_eq!(told.len(), 1);
    assert_eq!((told[0].cid, told[0].kind), (x.cid, PresenceKind::DontHave));
}

#[test]
fn only_the_last_connection_of_a_client_cancels_its_wants() {
    let (mut c, now, b, client) = (core(false), Instant::now(), peer(1), peer(10));
    c.backend_up(b, now);
    let x = raw_block(1);
    c.client_message(client, &want_block(&x), now);
    let fx = c.client_disconnected(client, ConnectionId::new_unchecked(1), false, now);
    assert!(fx.outbox.to_backends.is_empty());
    let fx = c.client_disconnected(client, ConnectionId::new_unchecked(2), true, now);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, true)]);
}

/// A preload world: two backends, the uploader and a bystander connected, and a
/// refs call for `root` open at the backend rendezvous picks for it.
struct Preloaded {
    c: Core,
    now: Instant,
    backend: PeerId,
    other_backend: PeerId,
    uploader: PeerId,
    bystander: PeerId,
}

fn preloaded(root: &Block) -> Preloaded {
    let (mut c, now) = (core(true), Instant::now());
    let (b1, b2, uploader, bystander) = (peer(1), peer(2), peer(10), peer(11));
    c.backend_up(b1, now);
    c.backend_up(b2, now);
    c.client_connected(uploader, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    c.client_connected(bystander, ConnectionId::new_unchecked(2), ip(BYSTANDER_IP));
    let (_, url) = c
        .preload_open(
            &[root.cid],
            ip(UPLOADER_IP).unwrap(),
            None,
            |p| Some(format!("rpc of {p}")),
            now,
        )
        .expect("opens");
    let backend = c.router().backend_for(&root.cid).unwrap();
    assert_eq!(url, format!("rpc of {backend}"));
    let other_backend = if backend == b1 { b2 } else { b1 };
    Preloaded {
        c,
        now,
        backend,
        other_backend,
        uploader,
        bystander,
    }
}

#[test]
fn a_preloaded_block_goes_to_the_backend_and_to_clients_waiting_for_it() {
    let root = cbor_block(&[raw_block(1).cid]);
    let mut w = preloaded(&root);
    let reader = peer(12);
    let fx = w.c.backend_message(w.backend, &want_block(&root), w.now);
    let to_uploader = &fx.outbox.to_clients[&w.uploader].wants;
    assert_eq!(to_uploader.len(), 1);
    assert_eq!(to_uploader[0].cid, root.cid);
    assert!(!fx.outbox.to_clients.contains_key(&w.bystander));
    assert_eq!(fx.counts.reverse_forwarded, 1);

    // The other backend has no preload open: refused.
    let fx =
        w.c.backend_message(w.other_backend, &want_block(&root), w.now);
    assert_eq!(fx.counts.reverse_refused, 1);
    assert!(fx.outbox.to_clients.is_empty());

    // A reader wants the root too; the uploader's copy answers both.
    w.c.client_message(reader, &want_block(&root), w.now);
    let fx =
        w.c.client_message(w.uploader, &blocks(std::slice::from_ref(&root)), w.now);
    assert_eq!(fx.outbox.to_backends[&w.backend].blocks, vec![root.clone()]);
    assert_eq!(blocks_to_client(&fx.outbox, &reader), vec![root]);
}

#[test]
fn a_backends_blocks_teach_the_dag_before_its_wants_are_routed() {
    // In one message the backend sends the root (answering a reader) and wants the
    // root's link: the link is allowed only because the root was read first.
    let leaf = raw_block(1);
    let root = cbor_block(&[leaf.cid]);
    let mut w = preloaded(&root);
    let msg = Message {
        blocks: vec![root.clone()],
        ..want_block(&leaf)
    };
    let fx = w.c.backend_message(w.backend, &msg, w.now);
    let to_uploader = &fx.outbox.to_clients[&w.uploader].wants;
    assert_eq!(
        to_uploader.iter().map(|w| w.cid).collect::<Vec<_>>(),
        vec![leaf.cid]
    );
    assert_eq!(
        (fx.counts.reverse_forwarded, fx.counts.reverse_refused),
        (1, 0)
    );
}

#[test]
fn a_preload_opens_only_with_a_backend_to_fetch_it() {
    let (root, now) = (raw_block(1), Instant::now());
    let client = ip(UPLOADER_IP).unwrap();
    let url = |p: &PeerId| Some(p.to_string());
    let mut plain = core(false);
    plain.backend_up(peer(1), now);
    assert_eq!(
        plain
            .preload_open(&[root.cid], client, None, url, now)
            .err(),
        Some(OpenFail::NoBackend),
        "not in preload mode"
    );
    let mut c = core(true);
    assert_eq!(
        c.preload_open(&[root.cid], client, None, url, now).err(),
        Some(OpenFail::NoBackend)
    );
    c.backend_up(peer(1), now);
    assert_eq!(
        c.preload_open(&[root.cid], client, None, |_| None, now)
            .err(),
        Some(OpenFail::NoBackend),
        "a backend whose RPC address is unknown"
    );
    assert!(c.preload_open(&[root.cid], client, None, url, now).is_ok());
}

#[test]
fn ended_preloads_are_reported_with_their_dag_size_on_the_tick() {
    let root = cbor_block(&[raw_block(1).cid, raw_block(2).cid]);
    let mut w = preloaded(&root);
    w.c.backend_message(w.backend, &want_block(&root), w.now);
    w.c.client_message(w.uploader, &blocks(std::slice::from_ref(&root)), w.now);
    assert!(w.c.tick(w.now).preload_dag_sizes.is_empty());
    let end = w.now + Limits::default().max_lifetime + Duration::from_secs(1);
    assert_eq!(
        w.c.tick(end).preload_dag_sizes,
        vec![3],
        "the root and its links"
    );
}

#[test]
fn a_cached_block_is_answered_without_asking_a_backend() {
    let (now, b) = (Instant::now(), peer(1));
    let mut c = Core::new(Router::new(Config::default()), None)
        .with_cache(crate::cache::BlockCache::new(1 << 20));
    c.backend_up(b, now);
    let (first, second) = (peer(10), peer(11));
    let x = raw_block(1);
    let fx = c.client_message(first, &want_block(&x), now);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, false)]);
    let fx = c.backend_message(b, &blocks(std::slice::from_ref(&x)), now);
    assert_eq!(blocks_to_client(&fx.outbox, &first), vec![x.clone()]);

    // The same block for another client, with a WANT-HAVE for it and a want for
    // another block in the same message: only the other block goes to the backend.
    let y = raw_block(2);
    let msg = wants(vec![
        want(x.cid, WantKind::Block, true),
        want(x.cid, WantKind::Have, true),
        want(y.cid, WantKind::Block, true),
    ]);
    let fx = c.client_message(second, &msg, now);
    assert_eq!(blocks_to_client(&fx.outbox, &second), vec![x.clone()]);
    let presences = &fx.outbox.to_clients[&second].presences;
    assert_eq!(presences.len(), 1);
    assert_eq!(
        (presences[0].cid, presences[0].kind),
        (x.cid, PresenceKind::Have)
    );
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(y.cid, false)]);
    assert_eq!(fx.counts.cache_hits, 2);
    assert_eq!(fx.counts.cache_misses, 1);
    assert_eq!(
        c.router().client_wants(&second),
        1,
        "only the block not cached"
    );
}

#[test]
fn without_a_cache_every_want_goes_to_a_backend() {
    let (mut c, now, b) = (core(false), Instant::now(), peer(1));
    c.backend_up(b, now);
    let x = raw_block(1);
    c.client_message(peer(10), &want_block(&x), now);
    c.backend_message(b, &blocks(std::slice::from_ref(&x)), now);
    let fx = c.client_message(peer(11), &want_block(&x), now);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, false)]);
    assert!(c.cache().is_none());
}

// ------------------------------------------------------------------ HTTP fetches

fn fetch_block(c: &mut Core, id: FetchId, b: &Block, now: Instant) -> Effects {
    c.fetch(
        id,
        b.cid,
        WantKind::Block,
        now + Duration::from_secs(60),
        now,
    )
}

#[test]
fn a_fetch_is_a_want_at_a_backend_and_its_block_answers_it() {
    let (mut c, now, b) = (core(false), Instant::now(), peer(1));
    c.backend_up(b, now);
    let x = raw_block(1);
    let fx = fetch_block(&mut c, 7, &x, now);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, false)]);
    assert!(fx.fetched.is_empty());
    let fx = c.backend_message(b, &blocks(std::slice::from_ref(&x)), now);
    assert_eq!(fx.fetched, vec![(7, Fetched::Block(x))]);
    assert!(
        fx.outbox.to_clients.is_empty(),
        "the gateway's identity is answered, never sent to"
    );
    assert_eq!((c.fetches().len(), c.router().wants_in_flight()), (0, 0));
}

#[test]
fn a_bitswap_client_and_a_fetch_of_one_block_are_one_want_at_one_backend() {
    let (mut c, now, b, client) = (core(false), Instant::now(), peer(1), peer(10));
    c.backend_up(b, now);
    let x = raw_block(1);
    let fx = c.client_message(client, &want_block(&x), now);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, false)]);
    let fx = fetch_block(&mut c, 1, &x, now);
    assert!(fx.outbox.to_backends.is_empty(), "already asked: not again");
    let fx = fetch_block(&mut c, 2, &x, now);
    assert!(fx.outbox.to_backends.is_empty());
    let fx = c.backend_message(b, &blocks(std::slice::from_ref(&x)), now);
    assert_eq!(blocks_to_client(&fx.outbox, &client), vec![x.clone()]);
    let mut got = fx.fetched;
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(
        got,
        vec![(1, Fetched::Block(x.clone())), (2, Fetched::Block(x))]
    );
}

#[test]
fn a_have_fetch_asks_want_have_and_ends_on_have() {
    let (mut c, now, b) = (core(false), Instant::now(), peer(1));
    c.backend_up(b, now);
    let x = raw_block(1);
    let deadline = now + Duration::from_secs(60);
    let fx = c.fetch(3, x.cid, WantKind::Have, deadline, now);
    let sent = &fx.outbox.to_backends[&b].wants;
    assert_eq!(
        (sent[0].kind, sent[0].send_dont_have),
        (WantKind::Have, true)
    );
    let fx = c.backend_message(b, &presence(x.cid, PresenceKind::Have), now);
    assert_eq!(fx.fetched, vec![(3, Fetched::Have)]);
    assert_eq!(c.router().wants_in_flight(), 0);
}

#[test]
fn a_block_fetch_joining_a_have_fetch_upgrades_the_want() {
    let (mut c, now, b) = (core(false), Instant::now(), peer(1));
    c.backend_up(b, now);
    let x = raw_block(1);
    c.fetch(1, x.cid, WantKind::Have, now + Duration::from_secs(60), now);
    let fx = fetch_block(&mut c, 2, &x, now);
    let sent = &fx.outbox.to_backends[&b].wants;
    assert_eq!(sent[0].kind, WantKind::Block, "asked again for the block");
    let fx = c.backend_message(b, &blocks(std::slice::from_ref(&x)), now);
    let mut got = fx.fetched;
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got, vec![(1, Fetched::Have), (2, Fetched::Block(x))]);
}

#[test]
fn a_fetch_fails_over_and_ends_dont_have_only_when_every_backend_lacks_it() {
    let (mut c, now, b1, b2) = (core(false), Instant::now(), peer(1), peer(2));
    c.backend_up(b1, now);
    c.backend_up(b2, now);
    let x = raw_block(1);
    let fx = fetch_block(&mut c, 1, &x, now);
    let first = *fx.outbox.to_backends.keys().next().unwrap();
    let second = if first == b1 { b2 } else { b1 };
    let fx = c.backend_message(first, &presence(x.cid, PresenceKind::DontHave), now);
    assert!(fx.fetched.is_empty(), "the other backend is asked first");
    assert_eq!(wanted_of(&fx.outbox, &second), vec![(x.cid, false)]);
    let fx = c.backend_message(second, &presence(x.cid, PresenceKind::DontHave), now);
    assert_eq!(fx.fetched, vec![(1, Fetched::DontHave)]);
    assert_eq!(
        c.router().wants_in_flight(),
        0,
        "the parked want is withdrawn, not kept forever"
    );
    assert_eq!(c.router().client_count(), 0);
}

#[test]
fn a_fetch_past_its_deadline_times_out_and_is_cancelled_at_the_backend() {
    let (mut c, now, b) = (core(false), Instant::now(), peer(1));
    c.backend_up(b, now);
    let x = raw_block(1);
    c.fetch(1, x.cid, WantKind::Block, now + Duration::from_secs(2), now);
    assert!(c.tick(now + Duration::from_secs(1)).fetched.is_empty());
    let fx = c.tick(now + Duration::from_secs(2));
    assert_eq!(fx.fetched, vec![(1, Fetched::Timeout)]);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, true)]);
    assert_eq!(c.fetches().len(), 0);
}

#[test]
fn a_cancelled_fetch_cancels_its_want_only_when_no_other_fetch_has_it() {
    let (mut c, now, b) = (core(false), Instant::now(), peer(1));
    c.backend_up(b, now);
    let x = raw_block(1);
    fetch_block(&mut c, 1, &x, now);
    fetch_block(&mut c, 2, &x, now);
    let fx = c.fetch_cancel(1, now);
    assert!(fx.outbox.to_backends.is_empty(), "fetch 2 still wants it");
    let fx = c.fetch_cancel(2, now);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(x.cid, true)]);
    assert!(
        c.fetch_cancel(2, now).outbox.is_empty(),
        "closing twice is harmless"
    );
}

#[test]
fn fetches_are_refused_without_backends_and_past_their_bound() {
    let now = Instant::now();
    let mut c = core(false).with_max_fetches(1);
    let (x, y) = (raw_block(1), raw_block(2));
    assert_eq!(
        fetch_block(&mut c, 1, &x, now).fetched,
        vec![(1, Fetched::NoBackend)]
    );
    c.backend_up(peer(1), now);
    assert!(fetch_block(&mut c, 2, &x, now).fetched.is_empty());
    let fx = fetch_block(&mut c, 3, &y, now);
    assert_eq!(fx.fetched, vec![(3, Fetched::Overloaded)]);
    assert!(fx.outbox.to_backends.is_empty());
}

#[test]
fn a_fetch_of_a_cached_block_is_answered_without_a_backend() {
    let (now, b) = (Instant::now(), peer(1));
    let mut c = Core::new(Router::new(Config::default()), None)
        .with_cache(crate::cache::BlockCache::new(1 << 20));
    c.backend_up(b, now);
    let x = raw_block(1);
    c.client_message(peer(10), &want_block(&x), now);
    c.backend_message(b, &blocks(std::slice::from_ref(&x)), now);
    c.backend_down(b, now);
    let fx = fetch_block(&mut c, 9, &x, now);
    assert!(fx.outbox.to_backends.is_empty(), "no backend is asked");
    assert_eq!(fx.fetched.len(), 1);
    assert_eq!(fx.fetched[0].0, 9);
    assert!(
        matches!(&fx.fetched[0].1, Fetched::Block(b) if b.cid == x.cid),
        "{:?}",
        fx.fetched[0].1
    );
    assert_eq!(fx.counts.cache_hits, 1);
    // Not cached and no backend: answered NoBackend, nothing left open.
    let y = raw_block(2);
    let fx = fetch_block(&mut c, 10, &y, now);
    assert!(matches!(fx.fetched[..], [(10, Fetched::NoBackend)]));
    assert_eq!(c.fetches().len(), 0);
}

#[test]
fn a_fetch_shed_for_a_deep_queue_ends_as_shed_not_as_dont_have() {
    let now = Instant::now();
    let cfg = Config {
        max_inflight_per_backend: 1,
        shed_after: Duration::from_secs(1),
        // Oldest first: the fetch waits behind the whole queue (fair scheduling
        // would put it, a lighter client, ahead of it and not shed it).
        fair_scheduling: false,
        ..Config::default()
    };
    let mut c = Core::new(Router::new(cfg), None);
    let b = peer(1);
    c.backend_up(b, now);
    // A bitswap client fills the window and queues two; the backend answers one in
    // the first second: 1 a second, with 1 in flight and 1 queued.
    let client = peer(9);
    let ask: Vec<_> = (0..3)
        .map(|i| want(raw_block(i).cid, WantKind::Block, true))
        .collect();
    c.client_message(client, &wants(ask), now);
    c.backend_message(
        b,
        &blocks(&[raw_block(0)]),
        now + Duration::from_millis(500),
    );
    let later = now + Duration::from_secs(1);
    c.tick(later);
    // A fetch would wait 3 s: shed, at once.
    let x = raw_block(100);
    let fx = fetch_block(&mut c, 5, &x, later);
    assert_eq!(fx.fetched, vec![(5, Fetched::Shed)]);
    assert_eq!(fx.counts.shed_wants, 1);
    assert!(wanted_of(&fx.outbox, &b).is_empty());
    assert!(fx.outbox.to_clients.is_empty());
    assert_eq!(c.fetches().len(), 0);
    assert_eq!(
        c.router().wants_in_flight(),
        2,
        "the shed want is withdrawn; the client's two remain"
    );
    // A bitswap client asking the same is told DONT_HAVE and counted alike.
    let other = peer(10);
    let fx = c.client_message(
        other,
        &wants(vec![want(x.cid, WantKind::Block, true)]),
        later,
    );
    let told = &fx.outbox.to_clients[&other].presences;
    assert_eq!(told.len(), 1);
    assert_eq!((told[0].cid, told[0].kind), (x.cid, PresenceKind::DontHave));
    assert_eq!(fx.counts.shed_wants, 1);
}

// ------------------------------------------------------------------ want rates

fn rate_limited(per_second: u32) -> Core {
    let cfg = Config {
        wants_per_second_per_address: per_second,
        ..Config::default()
    };
    Core::new(Router::new(cfg), None).with_cache(None)
}

fn asks(range: std::ops::Range<u32>) -> Message {
    wants(
        range
            .map(|i| want(raw_block(i).cid, WantKind::Block, true))
            .collect(),
    )
}

#[test]
fn an_address_over_its_want_rate_waits_and_other_addresses_do_not() {
    let (mut c, t, b) = (rate_limited(10), Instant::now(), peer(1));
    c.backend_up(b, t);
    let (heavy, same_address, other) = (peer(2), peer(3), peer(4));
    c.client_connected(heavy, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    c.client_connected(
        same_address,
        ConnectionId::new_unchecked(2),
        ip(UPLOADER_IP),
    );
    c.client_connected(other, ConnectionId::new_unchecked(3), ip(BYSTANDER_IP));
    // 30 new wants at once: a second's worth (10) go on, 20 wait, none refused.
    let fx = c.client_message(heavy, &asks(0..30), t);
    assert_eq!(wanted_of(&fx.outbox, &b).len(), 10);
    assert!(fx.outbox.to_clients.is_empty(), "no DONT_HAVE");
    assert_eq!((c.wants_waiting(), fx.counts.delayed_wants), (20, 20));
    // Another peer of the same address shares its budget; another address does not.
    let fx = c.client_message(same_address, &asks(100..101), t);
    assert!(wanted_of(&fx.outbox, &b).is_empty());
    let fx = c.client_message(other, &asks(200..205), t);
    assert_eq!(
        wanted_of(&fx.outbox, &b).len(),
        5,
        "the other address at once"
    );
    // The waiting wants go on as the budget refills, each peer's oldest first and
    // the address's peers in turn: 5 in half a second, and never more than a
    // second's worth at once however long they waited.
    let fx = c.tick(t + Duration::from_millis(500));
    let sent: Vec<Cid> = wanted_of(&fx.outbox, &b).iter().map(|w| w.0).collect();
    assert_eq!(sent.len(), 5);
    assert!(sent.contains(&raw_block(10).cid) && sent.contains(&raw_block(100).cid));
    let fx = c.tick(t + Duration::from_secs(3));
    assert_eq!(wanted_of(&fx.outbox, &b).len(), 10);
    assert_eq!(c.wants_waiting(), 6);
    // Everyone gets everything in the end.
    let fx = c.tick(t + Duration::from_millis(4500));
    assert_eq!(wanted_of(&fx.outbox, &b).len(), 6);
    assert_eq!(c.wants_waiting(), 0);
    assert_eq!(c.router().client_wants(&heavy), 30);
    assert_eq!(c.router().client_wants(&same_address), 1);
}

#[test]
fn a_waiting_want_can_be_cancelled_and_goes_with_its_client() {
    let (mut c, t, b) = (rate_limited(2), Instant::now(), peer(1));
    c.backend_up(b, t);
    let (x, y) = (peer(2), peer(3));
    c.client_connected(x, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    c.client_connected(y, ConnectionId::new_unchecked(2), ip(UPLOADER_IP));
    c.client_message(x, &asks(0..5), t);
    assert_eq!(c.wants_waiting(), 3);
    // A cancel of a waiting want withdraws it; a want the router holds costs
    // nothing when sent again.
    let cancel = wants(vec![crate::fixtures::cancel(raw_block(2).cid)]);
    c.client_message(x, &cancel, t);
    assert_eq!(c.wants_waiting(), 2);
    let again = c.client_message(x, &asks(0..1), t);
    assert!(again.counts.delayed_wants == 0 && c.wants_waiting() == 2);
    // y's waiting want goes when y does.
    c.client_message(y, &asks(10..11), t);
    assert_eq!(c.wants_waiting(), 3);
    c.client_disconnected(y, ConnectionId::new_unchecked(2), true, t);
    assert_eq!(c.wants_waiting(), 2);
    let fx = c.tick(t + Duration::from_secs(5));
    let sent: Vec<Cid> = wanted_of(&fx.outbox, &b).iter().map(|w| w.0).collect();
    assert_eq!(sent, vec![raw_block(3).cid, raw_block(4).cid]);
}

#[test]
fn without_a_want_rate_nothing_waits() {
    let (mut c, t, b) = (rate_limited(0), Instant::now(), peer(1));
    c.backend_up(b, t);
    let x = peer(2);
    c.client_connected(x, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    let fx = c.client_message(x, &asks(0..500), t);
    assert_eq!(wanted_of(&fx.outbox, &b).len(), 500);
    assert_eq!((c.wants_waiting(), fx.counts.delayed_wants), (0, 0));
}

// ------------------------------------------------------------------ byte rates

fn byte_limited(per_second: u64, cache: Option<crate::cache::BlockCache>) -> Core {
    let cfg = Config {
        bytes_per_second_per_address: per_second,
        ..Config::default()
    };
    Core::new(Router::new(cfg), None).with_cache(cache)
}

#[test]
fn an_address_over_its_byte_rate_waits_and_other_addresses_do_not() {
    let (mut c, t, b) = (byte_limited(1_000_000, None), Instant::now(), peer(1));
    c.backend_up(b, t);
    let (heavy, other) = (peer(2), peer(4));
    c.client_connected(heavy, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    c.client_connected(other, ConnectionId::new_unchecked(3), ip(BYSTANDER_IP));
    let big: Vec<Block> = (0..7).map(|i| crate::fixtures::block(i, 300_000)).collect();
    // Five wants at once: each that goes on reserves a block's worth (256 KiB)
    // of the 1 MB budget; the fourth puts it in debt, the fifth waits (counted for
    // the bytes budget, not refused).
    let five = wants(
        big[0..5]
            .iter()
            .map(|blk| want(blk.cid, WantKind::Block, true))
            .collect(),
    );
    let fx = c.client_message(heavy, &five, t);
    assert_eq!(wanted_of(&fx.outbox, &b).len(), 4);
    assert!(fx.outbox.to_clients.is_empty(), "no DONT_HAVE");
    assert_eq!(
        (fx.counts.delayed_bytes_wants, fx.counts.delayed_wants),
        (1, 0)
    );
    assert_eq!(c.wants_waiting(), 1);
    // The four blocks are bigger than reserved: the debt grows to 200 kB
    // (4 × 300 kB delivered against the 1 MB burst).
    let fx = c.backend_message(b, &blocks(&big[0..4]), t);
    assert_eq!(blocks_to_client(&fx.outbox, &heavy).len(), 4);
    // A cancel of a waiting want passes and withdraws it; asked again, it waits.
    let cancel = wants(vec![crate::fixtures::cancel(big[4].cid)]);
    c.client_message(heavy, &cancel, t);
    assert_eq!(c.wants_waiting(), 0);
    c.client_message(heavy, &want_block(&big[4]), t);
    assert_eq!(c.wants_waiting(), 1);
    // Another address is served at once, block after block.
    for blk in &big[5..7] {
        let fx = c.client_message(other, &want_block(blk), t);
        assert_eq!(wanted_of(&fx.outbox, &b), vec![(blk.cid, false)]);
        let fx = c.backend_message(b, &blocks(std::slice::from_ref(blk)), t);
        assert_eq!(blocks_to_client(&fx.outbox, &other), vec![blk.clone()]);
    }
    // The debt is paid in 0.2 s at 1 MB/s: the waiting want goes on then.
    let fx = c.tick(t + Duration::from_millis(150));
    assert!(wanted_of(&fx.outbox, &b).is_empty());
    let fx = c.tick(t + Duration::from_millis(250));
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(big[4].cid, false)]);
    assert_eq!(c.wants_waiting(), 0);
}

#[test]
fn a_want_that_ends_without_a_block_gives_its_reservation_back() {
    let (mut c, t, b) = (byte_limited(100_000, None), Instant::now(), peer(1));
    c.backend_up(b, t);
    let heavy = peer(2);
    c.client_connected(heavy, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    let (absent, next) = (raw_block(1), raw_block(2));
    // The first want reserves 256 KiB of a 100 kB budget: the next one waits.
    c.client_message(heavy, &want_block(&absent), t);
    let fx = c.client_message(heavy, &want_block(&next), t);
    assert!(wanted_of(&fx.outbox, &b).is_empty());
    // The only backend has no such block: the client is told, the reservation is
    // given back, and the waiting want goes on at the next tick, not seconds later.
    let fx = c.backend_message(b, &presence(absent.cid, PresenceKind::DontHave), t);
    assert_eq!(fx.outbox.to_clients[&heavy].presences.len(), 1);
    let fx = c.tick(t + Duration::from_millis(100));
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(next.cid, false)]);
}

#[test]
fn the_cache_answers_within_the_byte_budget_and_is_charged_to_it() {
    let cache = crate::cache::BlockCache::new(1 << 20);
    let (mut c, t, b) = (byte_limited(100_000, cache), Instant::now(), peer(1));
    c.backend_up(b, t);
    let heavy = peer(2);
    c.client_connected(heavy, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    let big: Vec<Block> = (0..3).map(|i| crate::fixtures::block(i, 60_000)).collect();
    // The cache holds all three (another client, of no address, fetched them).
    for blk in &big {
        c.client_message(peer(10), &want_block(blk), t);
    }
    c.backend_message(b, &blocks(&big), t);
    // The first comes from the cache and is charged: 40 kB left.
    let fx = c.client_message(heavy, &want_block(&big[0]), t);
    assert_eq!(blocks_to_client(&fx.outbox, &heavy), vec![big[0].clone()]);
    // The second is more than is left: the cache does not answer it, a backend
    // does (the budget is not in debt, so the want goes on), and that is charged.
    let fx = c.client_message(heavy, &want_block(&big[1]), t);
    assert!(blocks_to_client(&fx.outbox, &heavy).is_empty());
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(big[1].cid, false)]);
    let fx = c.backend_message(b, &blocks(&big[1..2]), t);
    assert_eq!(blocks_to_client(&fx.outbox, &heavy), vec![big[1].clone()]);
    // In debt now: the third, though cached, waits.
    let fx = c.client_message(heavy, &want_block(&big[2]), t);
    assert!(fx.outbox.is_empty());
    assert_eq!((fx.counts.delayed_bytes_wants, c.wants_waiting()), (1, 1));
}

#[test]
fn without_a_byte_rate_nothing_is_charged_or_waits() {
    let (mut c, t, b) = (byte_limited(0, None), Instant::now(), peer(1));
    c.backend_up(b, t);
    let x = peer(2);
    c.client_connected(x, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    let big: Vec<Block> = (0..20)
        .map(|i| crate::fixtures::block(i, 100_000))
        .collect();
    for blk in &big {
        let fx = c.client_message(x, &want_block(blk), t);
        assert_eq!(wanted_of(&fx.outbox, &b).len(), 1);
        c.backend_message(b, &blocks(std::slice::from_ref(blk)), t);
    }
    assert_eq!(c.wants_waiting(), 0);
}

#[test]
fn the_cache_answers_no_more_than_the_clients_room_and_the_rest_goes_on_as_room_comes_back() {
    let (now, b) = (Instant::now(), peer(1));
    let mut c = Core::new(Router::new(Config::default()), None)
        .with_cache(crate::cache::BlockCache::new(1 << 20));
    c.backend_up(b, now);
    let (x, y, z) = (raw_block(1), raw_block(2), raw_block(3));
    let all = [x.clone(), y.clone(), z.clone()];
    for blk in &all {
        c.client_message(peer(10), &want_block(blk), now);
    }
    c.backend_message(b, &blocks(&all), now);
    // Room for two of the three cached blocks: the third is asked of the backend.
    let room = x.data.len() + y.data.len();
    let msg = wants(
        all.iter()
            .map(|blk| want(blk.cid, WantKind::Block, true))
            .collect(),
    );
    let fx = c.client_message_within(peer(11), &msg, room, now);
    assert_eq!(blocks_to_client(&fx.outbox, &peer(11)), vec![x, y]);
    // The cache took all the room: the third waits until the client's writer drains.
    assert!(wanted_of(&fx.outbox, &b).is_empty());
    assert!(c.waiting_for_room(&peer(11)));
    let fx = c.client_room(peer(11), room, now);
    assert_eq!(wanted_of(&fx.outbox, &b), vec![(z.cid, false)]);
    assert!(!c.waiting_for_room(&peer(11)));
    // No room: every block goes to the backend; a HAVE is still answered.
    let have = wants(vec![want(z.cid, WantKind::Have, true)]);
    let fx = c.client_message_within(peer(12), &have, 0, now);
    assert_eq!(fx.outbox.to_clients[&peer(12)].presences.len(), 1);
}

#[test]
fn a_clients_block_wants_go_on_as_far_as_its_writer_has_room_and_the_rest_as_it_drains() {
    let (now, b, x) = (Instant::now(), peer(1), peer(2));
    let mut c = Core::new(Router::new(Config::default()), None);
    c.backend_up(b, now);
    let big: Vec<Block> = (0..8)
        .map(|i| crate::fixtures::block(i, 256 * 1024))
        .collect();
    let msg = wants(
        big.iter()
            .map(|blk| want(blk.cid, WantKind::Block, true))
            .collect(),
    );
    // 1 MiB of room: four blocks' worth of wants go to the backend, four wait.
    let fx = c.client_message_within(x, &msg, 1 << 20, now);
    assert_eq!(wanted_of(&fx.outbox, &b).len(), 4);
    assert_eq!((c.wants_waiting(), fx.counts.paced_wants), (4, 4));
    // Their blocks reach the client's queue: no room until its writer drains.
    let fx = c.backend_message(b, &blocks(&big[..4]), now);
    assert_eq!(blocks_to_client(&fx.outbox, &x), big[..4].to_vec());
    assert!(wanted_of(&c.client_room(x, 0, now).outbox, &b).is_empty());
    let fx = c.client_room(x, 1 << 20, now);
    let rest: Vec<(Cid, bool)> = big[4..].iter().map(|blk| (blk.cid, false)).collect();
    assert_eq!(wanted_of(&fx.outbox, &b), rest);
    assert_eq!(c.wants_waiting(), 0);
    // A WANT-BLOCK upgrading a WANT-HAVE the router holds brings a block: it waits
    // for room too.
    let y = peer(4);
    let have = wants(vec![want(big[0].cid, WantKind::Have, true)]);
    c.client_message_within(y, &have, 0, now);
    let upgrade = wants(vec![want(big[0].cid, WantKind::Block, true)]);
    c.client_message_within(y, &upgrade, 0, now);
    assert!(c.waiting_for_room(&y));
    c.client_disconnected(y, ConnectionId::new_unchecked(8), true, now);
    // A client that leaves takes its waiting wants with it.
    c.client_message_within(peer(3), &msg, 0, now);
    assert_eq!(c.wants_waiting(), 8);
    c.client_disconnected(peer(3), ConnectionId::new_unchecked(9), true, now);
    assert_eq!(c.wants_waiting(), 0);
}

#[test]
fn wants_waiting_for_room_count_against_their_addresss_share() {
    let (now, b) = (Instant::now(), peer(1));
    let cfg = Config {
        max_wants_per_address: 10,
        ..Config::default()
    };
    let mut c = Core::new(Router::new(cfg), None);
    c.backend_up(b, now);
    let (x, y) = (peer(2), peer(3));
    for (p, n) in [(x, 1), (y, 2)] {
        c.client_connected(p, ConnectionId::new_unchecked(n), ip("10.0.0.1"));
    }
    let ask = |range: std::ops::Range<u64>| {
        wants(
            range
                .map(|i| want(crate::fixtures::block(i, 8).cid, WantKind::Block, true))
                .collect(),
        )
    };
    // No room: x's eight wants wait, and count in the address's share of ten.
    c.client_message_within(x, &ask(0..8), 0, now);
    assert_eq!(c.wants_waiting(), 8);
    assert_eq!(c.router().address_wants(ip("10.0.0.1").unwrap()), 8);
    // y, of the same address, may hold back two more; the rest are refused.
    let fx = c.client_message_within(y, &ask(8..13), 0, now);
    assert_eq!(c.wants_waiting(), 10);
    assert_eq!(fx.counts.refused_address_wants, 3);
    // Released wants move from waiting to the router: the share is unchanged.
    c.client_room(x, 1 << 30, now);
    assert_eq!(c.wants_waiting(), 2);
    assert_eq!(c.router().address_wants(ip("10.0.0.1").unwrap()), 10);
    // Waiting wants count against the client's own cap too.
    let cfg = Config {
        max_wants_per_client: 5,
        ..Config::default()
    };
    let mut d = Core::new(Router::new(cfg), None);
    d.backend_up(b, now);
    d.client_message_within(x, &ask(0..3), 0, now);
    let fx = d.client_message_within(x, &ask(3..8), 0, now);
    assert_eq!((d.wants_waiting(), fx.counts.refused_wants), (5, 3));
    // A client that leaves gives its share back, waiting wants and all.
    c.client_disconnected(y, ConnectionId::new_unchecked(2), true, now);
    c.client_disconnected(x, ConnectionId::new_unchecked(1), true, now);
    assert_eq!(c.router().address_wants(ip("10.0.0.1").unwrap()), 0);
}

#[test]
fn wants_waiting_for_their_addresss_rate_count_against_its_share_until_they_go_on() {
    let cfg = Config {
        wants_per_second_per_address: 10,
        max_wants_per_address: 25,
        ..Config::default()
    };
    let (mut c, t, b) = (Core::new(Router::new(cfg), None), Instant::now(), peer(1));
    c.backend_up(b, t);
    let heavy = peer(2);
    c.client_connected(heavy, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    let address = ip(UPLOADER_IP).unwrap();
    // 30 at once: 10 go on, 15 wait (the share of 25 is full), 5 are refused.
    let fx = c.client_message(heavy, &asks(0..30), t);
    assert_eq!(wanted_of(&fx.outbox, &b).len(), 10);
    assert_eq!(
        (c.wants_waiting(), fx.counts.refused_address_wants),
        (15, 5)
    );
    assert_eq!(c.router().address_wants(address), 25);
    // As they go on, they move from waiting to the router: the share is unchanged.
    c.tick(t + Duration::from_secs(1));
    assert_eq!(c.wants_waiting(), 5);
    assert_eq!(c.router().address_wants(address), 25);
    c.client_disconnected(heavy, ConnectionId::new_unchecked(1), true, t);
    assert_eq!(c.router().address_wants(address), 0);
}

#[test]
fn a_want_block_for_a_want_have_waiting_for_its_rate_upgrades_it_in_its_place() {
    let (mut c, t, b) = (rate_limited(2), Instant::now(), peer(1));
    c.backend_up(b, t);
    let x = peer(2);
    c.client_connected(x, ConnectionId::new_unchecked(1), ip(UPLOADER_IP));
    // Two go on; a HAVE and a BLOCK wait, in that order.
    c.client_message(x, &asks(0..2), t);
    let (have, block) = (raw_block(10).cid, raw_block(11).cid);
    c.client_message(
        x,
        &wants(vec![
            want(have, WantKind::Have, true),
            want(block, WantKind::Block, true),
        ]),
        t,
    );
    c.client_message(x, &wants(vec![want(have, WantKind::Block, true)]), t);
    assert_eq!(c.wants_waiting(), 2);
    let fx = c.tick(t + Duration::from_secs(1));
    let sent: Vec<(Cid, WantKind)> = fx.outbox.to_backends[&b]
        .wants
        .iter()
        .map(|w| (w.cid, w.kind))
        .collect();
    assert_eq!(
        sent,
        vec![(have, WantKind::Block), (block, WantKind::Block)]
    );
}
