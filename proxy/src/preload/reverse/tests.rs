use std::time::Duration;

use super::*;
use crate::bitswap::Presence;
use crate::fixtures::{self, blocks, cancel, cbor_block, presence, raw_block};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn conn() -> ConnectionId {
    ConnectionId::new_unchecked(rand::random())
}

fn want(cid: Cid, kind: WantKind) -> WantEntry {
    fixtures::want(cid, kind, true)
}

struct World {
    r: Reverse,
    backend: PeerId,
    uploader: PeerId,
    bystander: PeerId,
    now: Instant,
}

impl World {
    /// A refs call for `root` from `from`, sent to the world's backend.
    fn open(&mut self, root: Cid, from: &str) {
        self.r
            .open(&[root], ip(from), self.backend, None, self.now)
            .unwrap();
    }

    /// The world's backend wants these blocks (an update, not a full wantlist);
    /// returns what goes out.
    fn backend_wants_blocks(&mut self, cids: &[Cid]) -> Outbox {
        let wants: Vec<WantEntry> = cids.iter().map(|c| want(*c, WantKind::Block)).collect();
        self.r.backend_wants(self.backend, false, &wants);
        self.r.take_outbox()
    }
}

fn world() -> World {
    let mut r = Reverse::new(Limits::default());
    let (uploader, bystander) = (PeerId::random(), PeerId::random());
    r.client_connected(uploader, conn(), ip("198.51.100.1"));
    r.client_connected(bystander, conn(), ip("203.0.113.7"));
    World {
        r,
        backend: PeerId::random(),
        uploader,
        bystander,
        now: Instant::now(),
    }
}

/// A world with a refs call open, from `from`, for the DAG of one raw block: that block.
fn world_preloading(from: &str) -> (World, Block) {
    let mut w = world();
    let root = raw_block(1);
    w.open(root.cid, from);
    (w, root)
}

fn client_wants(out: &Outbox, client: &PeerId) -> Vec<(Cid, bool)> {
    out.to_clients
        .get(client)
        .map(|m| m.wants.iter().map(|w| (w.cid, w.cancel)).collect())
        .unwrap_or_default()
}

fn backend_presences(out: &Outbox, backend: &PeerId) -> Vec<Presence> {
    out.to_backends
        .get(backend)
        .map(|m| m.presences.clone())
        .unwrap_or_default()
}

#[test]
fn an_unrelated_backend_want_gets_dont_have_and_reaches_no_client() {
    let mut w = world();
    let other = raw_block(1).cid;
    let out = w.backend_wants_blocks(&[other]);
    assert!(out.to_clients.is_empty(), "never broadcast: {out:?}");
    assert_eq!(
        backend_presences(&out, &w.backend),
        vec![Presence {
            cid: other,
            kind: PresenceKind::DontHave
        }]
    );
    assert_eq!(w.r.stats().wants_refused, 1);
    assert_eq!(w.r.stats().wants_forwarded, 0);
}

#[test]
fn the_dag_goes_from_the_uploader_to_the_backend_and_nowhere_else() {
    let mut w = world();
    let (l1, l2) = (raw_block(1), raw_block(2));
    let root = cbor_block(&[l1.cid, l2.cid]);
    w.open(root.cid, "198.51.100.1");

    // The backend's want for a leaf before the root arrives: not (yet) in the DAG.
    assert!(w.backend_wants_blocks(&[l1.cid]).to_clients.is_empty());

    let out = w.backend_wants_blocks(&[root.cid]);
    assert_eq!(client_wants(&out, &w.uploader), vec![(root.cid, false)]);
    assert!(client_wants(&out, &w.bystander).is_empty());

    // The uploader answers; the block goes to the backend, and its links join the DAG.
    let got =
        w.r.client_message(w.uploader, &blocks(std::slice::from_ref(&root)));
    assert_eq!(got, vec![root.clone()]);
    let out = w.r.take_outbox();
    assert_eq!(out.to_backends[&w.backend].blocks, vec![root.clone()]);
    w.r.backend_wants(
        w.backend,
        false,
        &[want(l1.cid, WantKind::Block), want(l2.cid, WantKind::Have)],
    );
    let out = w.r.take_outbox();
    assert_eq!(
        client_wants(&out, &w.uploader),
        vec![(l1.cid, false), (l2.cid, false)]
    );
    assert_eq!(out.to_clients[&w.uploader].wants[1].kind, WantKind::Have);
    assert!(client_wants(&out, &w.bystander).is_empty());

    w.r.client_message(w.uploader, &blocks(std::slice::from_ref(&l1)));
    w.r.client_message(w.uploader, &presence(l2.cid, PresenceKind::Have));
    let out = w.r.take_outbox();
    assert_eq!(out.to_backends[&w.backend].blocks, vec![l1]);
    assert_eq!(
        backend_presences(&out, &w.backend),
        vec![Presence {
            cid: l2.cid,
            kind: PresenceKind::Have
        }]
    );
    assert_eq!(w.r.wants_outstanding(), 0);
    assert_eq!(w.r.stats().wants_forwarded, 3);
    assert_eq!(w.r.stats().blocks_to_backends, 2);
}

#[test]
fn only_the_backend_the_refs_went_to_may_fetch() {
    let (mut w, root) = world_preloading("198.51.100.1");
    let other_backend = PeerId::random();
    w.r.backend_wants(other_backend, false, &[want(root.cid, WantKind::Block)]);
    let out = w.r.take_outbox();
    assert!(out.to_clients.is_empty());
    assert_eq!(backend_presences(&out, &other_backend).len(), 1);
}

#[test]
fn a_want_whose_uploader_is_not_connected_ends_at_once_with_dont_have() {
    let (mut w, root) = world_preloading("192.0.2.50");
    let out = w.backend_wants_blocks(&[root.cid]);
    assert!(out.to_clients.is_empty(), "nobody there");
    let p = backend_presences(&out, &w.backend);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].cid, p[0].kind), (root.cid, PresenceKind::DontHave));
    assert_eq!(w.r.stats().wants_no_uploader, 1);
    assert_eq!(w.r.stats().wants_forwarded, 0, "not counted as forwarded");
    assert_eq!(w.r.wants_outstanding(), 0);
    // Once the uploader is there (an IPv4-mapped IPv6 address is the same client),
    // the backend's next want reaches it.
    let late = PeerId::random();
    w.r.client_connected(late, conn(), ip("::ffff:192.0.2.50"));
    assert!(w.r.take_outbox().to_clients.is_empty());
    let out = w.backend_wants_blocks(&[root.cid]);
    assert_eq!(client_wants(&out, &late), vec![(root.cid, false)]);
}

#[test]
fn a_second_uploader_connection_joins_an_outstanding_want() {
    let (mut w, root) = world_preloading("198.51.100.1");
    let out = w.backend_wants_blocks(&[root.cid]);
    assert_eq!(client_wants(&out, &w.uploader), vec![(root.cid, false)]);
    let second = PeerId::random();
    w.r.client_connected(second, conn(), ip("198.51.100.1"));
    assert_eq!(
        client_wants(&w.r.take_outbox(), &second),
        vec![(root.cid, false)]
    );
}

#[test]
fn dont_have_from_every_target_goes_back_and_cancels_go_out() {
    let mut w = world();
    let (a, b) = (raw_block(1), raw_block(2));
    let nat_peer = PeerId::random();
    w.r.client_connected(nat_peer, conn(), ip("198.51.100.1"));
    w.r.open(&[a.cid, b.cid], ip("198.51.100.1"), w.backend, None, w.now)
        .unwrap();
    let out = w.backend_wants_blocks(&[a.cid, b.cid]);
    assert_eq!(client_wants(&out, &w.uploader).len(), 2);
    assert_eq!(
        client_wants(&out, &nat_peer).len(),
        2,
        "behind one NAT: both"
    );

    // One says DONT_HAVE: wait for the other.
    w.r.client_message(nat_peer, &presence(a.cid, PresenceKind::DontHave));
    assert!(w.r.take_outbox().to_backends.is_empty());
    w.r.client_message(w.uploader, &presence(a.cid, PresenceKind::DontHave));
    let out = w.r.take_outbox();
    assert_eq!(
        backend_presences(&out, &w.backend),
        vec![Presence {
            cid: a.cid,
            kind: PresenceKind::DontHave
        }]
    );

    // A block from one: CANCEL at the other.
    w.r.client_message(w.uploader, &blocks(std::slice::from_ref(&b)));
    let out = w.r.take_outbox();
    assert_eq!(client_wants(&out, &nat_peer), vec![(b.cid, true)]);
    assert!(client_wants(&out, &w.uploader).is_empty());

    // A backend CANCEL goes to the clients.
    let c = raw_block(3);
    w.open(c.cid, "198.51.100.1");
    w.backend_wants_blocks(&[c.cid]);
    w.r.backend_wants(w.backend, false, &[cancel(c.cid)]);
    let out = w.r.take_outbox();
    assert_eq!(client_wants(&out, &w.uploader), vec![(c.cid, true)]);
    assert_eq!(client_wants(&out, &nat_peer), vec![(c.cid, true)]);
    assert_eq!(w.r.wants_outstanding(), 0);
}

#[test]
fn expiry_and_full_wantlists_withdraw_wants() {
    let mut w = world();
    let (a, b) = (raw_block(1), raw_block(2));
    let id =
        w.r.open(&[a.cid, b.cid], ip("198.51.100.1"), w.backend, None, w.now)
            .unwrap();
    w.backend_wants_blocks(&[a.cid, b.cid]);
    // A full wantlist without `a` drops it.
    w.r.backend_wants(w.backend, true, &[want(b.cid, WantKind::Block)]);
    let out = w.r.take_outbox();
    assert_eq!(client_wants(&out, &w.uploader), vec![(a.cid, true)]);

    w.r.close(id, w.now);
    assert!(w.r.tick(w.now + Duration::from_secs(29)).is_empty());
    let gone = w.r.tick(w.now + Duration::from_secs(30));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].dag_size(), 2);
    let out = w.r.take_outbox();
    assert_eq!(client_wants(&out, &w.uploader), vec![(b.cid, true)]);
    assert_eq!(backend_presences(&out, &w.backend).len(), 1);
    assert_eq!(w.r.wants_outstanding(), 0);
    // And afterwards the same want is refused.
    assert!(w.backend_wants_blocks(&[b.cid]).to_clients.is_empty());
}

#[test]
fn a_leaving_uploader_and_a_lost_backend_clean_up() {
    let mut w = world();
    let a = raw_block(1);
    let c1 = conn();
    let lone = PeerId::random();
    w.r.client_connected(lone, c1, ip("192.0.2.9"));
    w.open(a.cid, "192.0.2.9");
    w.backend_wants_blocks(&[a.cid]);
    w.r.client_disconnected(lone, c1);
    // No uploader left: the backend is told at once rather than waiting.
    assert_eq!(w.r.wants_outstanding(), 0);
    let p = backend_presences(&w.r.take_outbox(), &w.backend);
    assert_eq!((p[0].cid, p[0].kind), (a.cid, PresenceKind::DontHave));
    let b = raw_block(2);
    w.open(b.cid, "198.51.100.1");
    w.backend_wants_blocks(&[b.cid]);
    assert_eq!(w.r.wants_outstanding(), 1);
    w.r.backend_down(w.backend);
    assert_eq!(w.r.wants_outstanding(), 0);
}

/// Random traffic: whatever happens, a client only ever receives wants for CIDs of a
/// DAG preloaded from its own address, and only backends receive blocks.
#[test]
fn random_traffic_never_leaks_wants() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let leaves: Vec<Block> = (0..20).map(raw_block).collect();
    let mid = cbor_block(&leaves[..10].iter().map(|b| b.cid).collect::<Vec<_>>());
    let root = cbor_block(&[mid.cid, leaves[10].cid]);
    let dag: BTreeSet<Cid> = [root.cid, mid.cid]
        .into_iter()
        .chain(leaves[..11].iter().map(|b| b.cid))
        .collect();
    let all: Vec<Block> = [root.clone(), mid.clone()]
        .into_iter()
        .chain(leaves.iter().cloned())
        .collect();
    let uploader_ip = ip("198.51.100.1");
    let clients: Vec<(PeerId, IpAddr)> = (0..6)
        .map(|i| {
            (
                PeerId::random(),
                if i < 2 {
                    uploader_ip
                } else {
                    ip("203.0.113.1")
                },
            )
        })
        .collect();
    let backends: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
    let mut r = Reverse::new(Limits::default());
    let now = Instant::now();
    r.open(&[root.cid], uploader_ip, backends[0], None, now)
        .unwrap();
    let mut conns: Vec<Option<ConnectionId>> = vec![None; clients.len()];
    for _ in 0..5000 {
        let (peer, addr) = clients[rng.gen_range(0..clients.len())];
        let idx = clients.iter().position(|c| c.0 == peer).unwrap();
        match rng.gen_range(0..6) {
            0 => match conns[idx].take() {
                Some(c) => r.client_disconnected(peer, c),
                None => {
                    let c = conn();
                    r.client_connected(peer, c, addr);
                    conns[idx] = Some(c);
                }
            },
            1 | 2 => {
                let b = backends[rng.gen_range(0..2)];
                let cid = all[rng.gen_range(0..all.len())].cid;
                let kind = if rng.gen_bool(0.5) {
                    WantKind::Block
                } else {
                    WantKind::Have
                };
                let entry = if rng.gen_bool(0.1) {
                    cancel(cid)
                } else {
                    want(cid, kind)
                };
                r.backend_wants(b, rng.gen_bool(0.05), &[entry]);
            }
            3 => {
                let block = all[rng.gen_range(0..all.len())].clone();
                r.client_message(peer, &blocks(&[block]));
            }
            4 => {
                let cid = all[rng.gen_range(0..all.len())].cid;
                let kind = if rng.gen_bool(0.5) {
                    PresenceKind::Have
                } else {
                    PresenceKind::DontHave
                };
                r.client_message(peer, &presence(cid, kind));
            }
            _ => {
                let b = backends[rng.gen_range(0..2)];
                let block = all[rng.gen_range(0..all.len())].clone();
                let _ = b;
                r.observe(&block);
            }
        }
        let out = r.take_outbox();
        for (client, msg) in &out.to_clients {
            let addr = clients.iter().find(|c| c.0 == *client).unwrap().1;
            assert!(msg.blocks.is_empty(), "clients never get blocks here");
            for w in msg.wants.iter().filter(|w| !w.cancel) {
                assert_eq!(addr, uploader_ip, "a want reached a bystander");
                assert!(dag.contains(&w.cid), "a want outside the DAG");
            }
        }
        for (backend, msg) in &out.to_backends {
            assert!(msg.wants.is_empty());
            if *backend != backends[0] {
                assert!(
                    msg.blocks.is_empty(),
                    "only the preload's backend gets blocks"
                );
            }
        }
        assert!(r.wants_outstanding() <= dag.len());
    }
    assert!(r.stats().wants_forwarded > 0 && r.stats().blocks_to_backends > 0);
}
