//! Kitsune's proxy core end to end: real kubo backends, real Helia, ipfs-core and
//! rust-libp2p clients, the real `kitsune-proxy` binary, all over loopback.

use std::time::Duration;

use cid::Cid;
use kitsune_e2e::bitswap_client::BitswapClient;
use kitsune_e2e::{
    JsIpfsOptions, KuboNode, KuboOptions, Proxy, ProxyOptions, helia_fetch, jsipfs_client,
    random_bytes, run_proxy_to_exit, scratch_dir, write_random_file,
};
use kitsune_proxy::bitswap::Message;

const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(90);

async fn kubo_with(files: &[std::path::PathBuf], ws: bool) -> KuboNode {
    KuboNode::start(KuboOptions {
        ws,
        add: files.to_vec(),
        ..Default::default()
    })
    .await
    .expect("kubo starts")
}

async fn proxy_for(backends: &[&KuboNode], ws: bool) -> Proxy {
    let p = Proxy::start(ProxyOptions {
        backends: backends.iter().map(|k| k.api_multiaddr.clone()).collect(),
        ws,
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    p.wait_backends(backends.len(), T).await.unwrap();
    p
}

/// The proxy dials kubo over TLS 1.3 offering AES-128-GCM first, and kubo (Go's TLS
/// server on a CPU with AES instructions) takes it; with libp2p-tls's own order
/// (ChaCha20 first) it took ChaCha20 (checked: this test then fails).
#[tokio::test]
async fn kubo_is_reached_over_tls_with_aes_gcm() {
    let kubo = kubo_with(&[], false).await;
    let p = Proxy::start(ProxyOptions {
        backends: vec![kubo.api_multiaddr.clone()],
        env: vec![(
            "RUST_LOG".into(),
            "info,kitsune_proxy::net::backend_tls=debug".into(),
        )],
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    p.wait_backends(1, T).await.unwrap();
    let log = std::fs::read_to_string(p.proc.stderr_path()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("backend TLS"))
        .unwrap_or_else(|| panic!("no TLS handshake with kubo logged:\n{log}"));
    // Go prefers ChaCha20 whatever the client offers on a CPU without AES instructions.
    let aes_hardware = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .any(|l| {
            (l.starts_with("flags") || l.starts_with("Features"))
                && l.split_whitespace().any(|f| f == "aes")
        });
    let expected = if aes_hardware {
        "TLS13_AES_128_GCM_SHA256"
    } else {
        "TLS13_CHACHA20_POLY1305_SHA256"
    };
    assert!(line.contains(expected), "{line}");
}

#[tokio::test]
async fn helia_fetches_1_and_20_mib_byte_identical_over_tcp_and_ws() {
    let dir = scratch_dir("fetch").unwrap();
    let small = write_random_file(dir.path(), "small.bin", MIB, 1).unwrap();
    let big = write_random_file(dir.path(), "big.bin", 20 * MIB, 2).unwrap();
    let k1 = kubo_with(&[small.clone(), big.clone()], false).await;
    let k2 = kubo_with(&[small, big], false).await;
    let proxy = proxy_for(&[&k1, &k2], true).await;
    assert!(
        proxy.peer_id.starts_with("12D3KooW"),
        "a generated key is Ed25519"
    );

    for (name, seed, len) in [("small.bin", 1, MIB), ("big.bin", 2, 20 * MIB)] {
        let cid = &k1.added[name];
        for addr in [&proxy.tcp_addr, proxy.ws_addr.as_ref().unwrap()] {
            let got = helia_fetch(addr, cid, T).await.unwrap();
            assert!(
                got.bytes == random_bytes(len, seed),
                "{name} via {addr} differs"
            );
            eprintln!("{name} via {addr}: {} ms", got.ms);
        }
    }
    // Both backends served: rendezvous spread the blocks.
    let forwarded = proxy
        .metric("kitsune_bitswap_blocks_forwarded_total{direction=\"Upstream\"}")
        .await
        .unwrap()
        .unwrap();
    assert!(forwarded >= 2.0 * 81.0, "forwarded {forwarded} blocks");
}

#[tokio::test]
async fn ipfs_core_client_fetches_through_the_proxy_over_mplex() {
    let dir = scratch_dir("jsipfs").unwrap();
    let file = write_random_file(dir.path(), "f.bin", 700_000, 3).unwrap();
    let k = kubo_with(&[file], true).await;
    let proxy = proxy_for(&[&k], false).await;
    let cid = k.added["f.bin"].clone();
    // TCP here; the preload tests cover ipfs-core over the proxy's WebSocket.
    let r = jsipfs_client(&JsIpfsOptions {
        connect: vec![proxy.tcp_addr.clone()],
        cat: Some(cid),
        timeout: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        r.bytes.as_deref() == Some(&random_bytes(700_000, 3)[..]),
        "{}",
        r.log
    );
}

#[tokio::test]
async fn a_kubo_exported_rsa_key_gives_the_peer_id_kubo_reports() {
    let k = KuboNode::start(KuboOptions {
        export_identity_key: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let key = k.identity_key_path.clone().unwrap();
    let backend = kubo_with(&[], false).await;
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![backend.api_multiaddr.clone()],
        key: Some(key),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(k.peer_id.starts_with("Qm"));
    assert_eq!(proxy.peer_id, k.peer_id);
    assert!(proxy.tcp_addr.ends_with(&format!("/p2p/{}", k.peer_id)));
    // A client dialing that identity reaches the proxy (the handshake checks the key).
    let client = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(client.server.to_string(), k.peer_id);
}

#[tokio::test]
async fn content_on_only_one_backend_is_found() {
    let dir = scratch_dir("one").unwrap();
    let file = write_random_file(dir.path(), "only.bin", 5 * MIB, 4).unwrap();
    let has = kubo_with(&[file], false).await;
    let lacks = kubo_with(&[], false).await;
    let proxy = proxy_for(&[&has, &lacks], false).await;
    let got = helia_fetch(&proxy.tcp_addr, &has.added["only.bin"], T)
        .await
        .unwrap();
    assert!(got.bytes == random_bytes(5 * MIB, 4));
    let failovers = proxy
        .metric("kitsune_bitswap_failovers_total")
        .await
        .unwrap()
        .unwrap();
    assert!(
        failovers > 0.0,
        "some wants were first routed to the backend without the content"
    );
}

#[tokio::test]
async fn a_backend_killed_mid_transfer_does_not_fail_the_fetch() {
    let dir = scratch_dir("kill").unwrap();
    let file = write_random_file(dir.path(), "big.bin", 20 * MIB, 5).unwrap();
    let k1 = kubo_with(std::slice::from_ref(&file), false).await;
    let mut k2 = kubo_with(&[file], false).await;
    let proxy = proxy_for(&[&k1, &k2], false).await;
    let cids = k1.dag_cids(&k1.added["big.bin"]).await.unwrap();

    let addr = proxy.tcp_addr.parse().unwrap();
    let fetch = tokio::spawn(async move {
        let mut c = BitswapClient::connect(&addr).await.unwrap();
        // A small window keeps the transfer going long enough to be cut.
        c.fetch(&cids, 4, T).await
    });
    // Kill one backend once blocks are flowing.
    proxy.wait_blocks_sent(10.0, T).await.unwrap();
    k2.kill();
    let (blocks, stats) = fetch.await.unwrap().expect("the fetch completes");
    let data: Vec<u8> = blocks.iter().flat_map(|b| b.data.to_vec()).collect();
    assert!(
        data.len() > 20 * MIB,
        "all blocks, each once: {} blocks",
        stats.blocks
    );
    proxy.wait_backends(1, T).await.unwrap();
}

#[tokio::test]
async fn a_backend_down_at_start_joins_later() {
    let dir = scratch_dir("late").unwrap();
    let file = write_random_file(dir.path(), "late.bin", MIB, 6).unwrap();
    let mut k = kubo_with(&[file], false).await;
    k.kill();
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![k.api_multiaddr.clone()],
        ..Default::default()
    })
    .await
    .expect("the proxy starts without any backend up");
    let ready = reqwest::get(format!("{}/readyz", proxy.metrics_url))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503, "not ready without a backend");
    tokio::time::sleep(Duration::from_millis(500)).await;
    k.restart().await.unwrap();
    proxy.wait_ready(T).await.unwrap();
    let got = helia_fetch(&proxy.tcp_addr, &k.added["late.bin"], T)
        .await
        .unwrap();
    assert!(got.bytes == random_bytes(MIB, 6));
}

#[tokio::test]
async fn two_clients_wanting_the_same_blocks_both_get_them() {
    let dir = scratch_dir("two").unwrap();
    let file = write_random_file(dir.path(), "shared.bin", 8 * MIB, 7).unwrap();
    let k = kubo_with(&[file], false).await;
    let proxy = proxy_for(&[&k], false).await;
    let cids = k.dag_cids(&k.added["shared.bin"]).await.unwrap();
    let addr: libp2p::Multiaddr = proxy.tcp_addr.parse().unwrap();
    let mut a = BitswapClient::connect(&addr).await.unwrap();
    let mut b = BitswapClient::connect(&addr).await.unwrap();
    let (ca, cb) = (cids.clone(), cids.clone());
    let (ra, rb) = tokio::join!(a.fetch(&ca, 64, T), b.fetch(&cb, 64, T));
    let (ba, bb) = (ra.unwrap().0, rb.unwrap().0);
    assert_eq!(ba.len(), cids.len());
    assert_eq!(ba, bb);
    // And a real client too, at the same time as another.
    let cid = k.added["shared.bin"].clone();
    let (h1, h2) = tokio::join!(
        helia_fetch(&proxy.tcp_addr, &cid, T),
        helia_fetch(&proxy.tcp_addr, &cid, T)
    );
    assert!(h1.unwrap().bytes == random_bytes(8 * MIB, 7));
    assert!(h2.unwrap().bytes == random_bytes(8 * MIB, 7));
}

#[tokio::test]
async fn a_client_fetches_over_quic() {
    let dir = scratch_dir("quic").unwrap();
    let file = write_random_file(dir.path(), "q.bin", 2 * MIB, 8).unwrap();
    let k = kubo_with(&[file], false).await;
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![k.api_multiaddr.clone()],
        quic: true,
        ..Default::default()
    })
    .await
    .unwrap();
    proxy.wait_ready(T).await.unwrap();
    let cids = k.dag_cids(&k.added["q.bin"]).await.unwrap();
    let mut c = BitswapClient::connect(&proxy.quic_addr.clone().unwrap().parse().unwrap())
        .await
        .unwrap();
    let (blocks, _) = c.fetch(&cids, 32, T).await.unwrap();
    assert_eq!(blocks.len(), cids.len());
}

#[tokio::test]
async fn bad_frames_close_only_their_stream_and_other_clients_are_served() {
    let dir = scratch_dir("bad").unwrap();
    let file = write_random_file(dir.path(), "ok.bin", MIB, 9).unwrap();
    let k = kubo_with(&[file], false).await;
    let proxy = proxy_for(&[&k], false).await;
    let addr: libp2p::Multiaddr = proxy.tcp_addr.parse().unwrap();
    let mut attacker = BitswapClient::connect(&addr).await.unwrap();

    // A frame that claims 4 MiB + 1 (and some bytes of it).
    let mut oversized = Vec::new();
    let mut tmp = unsigned_varint::encode::usize_buffer();
    oversized.extend_from_slice(unsigned_varint::encode::usize((4 << 20) + 1, &mut tmp));
    oversized.extend_from_slice(&[0u8; 1024]);
    attacker
        .send_raw("/ipfs/bitswap/1.2.0", &oversized)
        .await
        .unwrap();
    // A frame of garbage that is not a protobuf.
    attacker
        .send_raw(
            "/ipfs/bitswap/1.1.0",
            &[8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        )
        .await
        .unwrap();
    // A frame whose length prefix never ends.
    attacker
        .send_raw("/ipfs/bitswap", &[0xff; 12])
        .await
        .unwrap();

    let rejected = |reason: &'static str| {
        let proxy = &proxy;
        async move {
            Ok(proxy
                .metric(&format!("kitsune_rejected_total{{reason=\"{reason}\"}}"))
                .await?
                .unwrap_or(0.0)
                >= 1.0)
        }
    };
    for reason in ["oversized_frame", "malformed_message", "malformed_frame"] {
        kitsune_e2e::wait_for(reason, T, Duration::from_millis(20), || rejected(reason))
            .await
            .unwrap();
    }
    // The attacker's connection survives (only the streams were closed), and both it
    // and an innocent client are still served.
    let cids = k.dag_cids(&k.added["ok.bin"]).await.unwrap();
    let (blocks, _) = attacker.fetch(&cids, 16, T).await.unwrap();
    assert_eq!(blocks.len(), cids.len());
    let got = helia_fetch(&proxy.tcp_addr, &k.added["ok.bin"], T)
        .await
        .unwrap();
    assert!(got.bytes == random_bytes(MIB, 9));
}

#[tokio::test]
async fn only_bitswap_identify_and_ping_are_served() {
    let k = kubo_with(&[], false).await;
    let proxy = proxy_for(&[&k], false).await;
    let mut c = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    for proto in [
        "/ipfs/kad/1.0.0",
        "/meshsub/1.1.0",
        "/libp2p/circuit/relay/0.2.0/hop",
        "/x/",
    ] {
        match c.open(proto).await {
            Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => {}
            other => panic!(
                "{proto} should be refused, got {:?}",
                other.map(|_| "a stream")
            ),
        }
    }
    assert!(c.open("/ipfs/ping/1.0.0").await.is_ok());
    assert!(c.open("/ipfs/bitswap/1.2.0").await.is_ok());
}

#[tokio::test]
async fn wants_nobody_has_get_dont_have_after_every_backend_is_tried() {
    let k1 = kubo_with(&[], false).await;
    let k2 = kubo_with(&[], false).await;
    let proxy = proxy_for(&[&k1, &k2], false).await;
    let mut c = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let missing: Cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
        .parse()
        .unwrap();
    c.send(&Message {
        wants: vec![kitsune_e2e::bitswap_client::want(missing)],
        ..Default::default()
    })
    .await
    .unwrap();
    let reply = c.recv(T).await.expect("an answer");
    assert_eq!(reply.presences.len(), 1);
    assert_eq!(reply.presences[0].cid, missing);
    assert_eq!(
        reply.presences[0].kind,
        kitsune_proxy::bitswap::PresenceKind::DontHave
    );
    // Both backends were asked before the client was told (the metric follows within a tick).
    kitsune_e2e::wait_for("two failovers", T, Duration::from_millis(20), || async {
        Ok(proxy.metric("kitsune_bitswap_failovers_total").await? >= Some(2.0))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_bad_key_file_is_a_clear_error_and_exit_code_1() {
    let dir = scratch_dir("badkey").unwrap();
    let secret = "c2VjcmV0LWJ1dC1ub3QtYS1rZXk=";
    std::fs::write(dir.path().join("key"), secret).unwrap();
    let out = run_proxy_to_exit(
        &[
            "-k",
            "key",
            "-d",
            "/ip4/127.0.0.1/tcp/1",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        dir.path(),
        T,
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key file key") && err.contains("not a libp2p private key"),
        "{err}"
    );
    assert!(
        !err.contains(secret),
        "the key's content never reaches the logs"
    );

    let out = run_proxy_to_exit(
        &["-k", "fresh-key", "-d", "/ip4/1.2.3.4/udp/5"],
        dir.path(),
        T,
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no TCP port"));
}

#[tokio::test]
async fn an_unreachable_backend_is_retried_and_harms_nothing() {
    let dir = scratch_dir("unreach").unwrap();
    let file = write_random_file(dir.path(), "u.bin", MIB, 10).unwrap();
    let k = kubo_with(&[file], false).await;
    let dead = format!("/ip4/127.0.0.1/tcp/{}", kitsune_e2e::free_port());
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![dead, k.api_multiaddr.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    proxy.wait_backends(1, T).await.unwrap();
    let got = helia_fetch(&proxy.tcp_addr, &k.added["u.bin"], T)
        .await
        .unwrap();
    assert!(got.bytes == random_bytes(MIB, 10));
    kitsune_e2e::wait_for(
        "the dead backend to be in backoff",
        T,
        Duration::from_millis(50),
        || async { Ok(proxy.metric("kitsune_backends{state=\"Backoff\"}").await? == Some(1.0)) },
    )
    .await
    .unwrap();
    assert!(proxy.proc.stderr().contains("backend not reachable"));
}

/// Replicas share the public peer ID but not their identity towards kubo: each one
/// is its own peer to the backend, so neither's full wantlist erases the other's and
/// kubo's replies reach the replica that asked. Two replicas with one key in front of
/// one kubo, a client on each, fetching at once.
#[tokio::test]
async fn replicas_sharing_a_key_are_distinct_peers_to_a_shared_backend() {
    let dir = scratch_dir("replicas").unwrap();
    let a_file = write_random_file(dir.path(), "a.bin", 4 * MIB, 21).unwrap();
    let b_file = write_random_file(dir.path(), "b.bin", 4 * MIB, 22).unwrap();
    let k = kubo_with(&[a_file, b_file], false).await;
    let key = dir.path().join("shared-key");
    let start = |key: std::path::PathBuf| {
        let backend = k.api_multiaddr.clone();
        async move {
            let p = Proxy::start(ProxyOptions {
                backends: vec![backend],
                key: Some(key),
                ..Default::default()
            })
            .await
            .expect("proxy starts");
            p.wait_backends(1, T).await.unwrap();
            p
        }
    };
    let ra = start(key.clone()).await;
    let rb = start(key).await;
    assert_eq!(ra.peer_id, rb.peer_id, "one public peer ID");

    // A replica counts its backend as connected once its own side of the handshake is
    // done; kubo lists the connection when its side is, which on a loaded machine can
    // come a moment later: wait for both (or the bound) before judging.
    let _ = kitsune_e2e::wait_for(
        "kubo to list two peers",
        T,
        Duration::from_millis(100),
        || async { Ok(k.peers().await?.len() >= 2) },
    )
    .await;
    let peers = k.peers().await.unwrap();
    let proxy_side: Vec<_> = peers.iter().filter(|p| **p != ra.peer_id).collect();
    assert!(
        !peers.contains(&ra.peer_id),
        "kubo must not see the public identity: {peers:?}"
    );
    assert_eq!(
        proxy_side.len(),
        2,
        "one backend-facing peer per replica: {peers:?}"
    );

    let (a_cids, b_cids) = (
        k.dag_cids(&k.added["a.bin"]).await.unwrap(),
        k.dag_cids(&k.added["b.bin"]).await.unwrap(),
    );
    let fetch = |addr: String, cids: Vec<Cid>| async move {
        let mut c = BitswapClient::connect(&addr.parse().unwrap()).await?;
        c.fetch(&cids, 64, Duration::from_secs(60)).await
    };
    let (a, b) = tokio::join!(
        fetch(ra.tcp_addr.clone(), a_cids.clone()),
        fetch(rb.tcp_addr.clone(), b_cids.clone())
    );
    assert_eq!(a.expect("client on replica A").0.len(), a_cids.len());
    assert_eq!(b.expect("client on replica B").0.len(), b_cids.len());
    for r in [&ra, &rb] {
        let failovers = r
            .metric("kitsune_bitswap_failovers_total")
            .await
            .unwrap()
            .unwrap_or(0.0);
        assert_eq!(failovers, 0.0, "no want had to time out and move");
    }
}
