//! Baseline self-tests of the e2e harness: the real peers work on this machine, without Kitsune.
//! Every test here must fail (not skip) when the peers are missing or broken.

use std::time::{Duration, Instant};

use kitsune_e2e::{
    FetchMode, HeliaOptions, JsIpfsDaemon, JsIpfsOptions, KuboNode, KuboOptions, free_port,
    harness_dir, helia_fetch, helia_fetch_with, helia_run, jsipfs_client, random_bytes,
    scratch_dir, write_random_file,
};

const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(60);

#[test]
fn harness_is_installed() {
    let d = harness_dir();
    assert!(d.join("venv/bin/python").exists());
    assert!(d.join("helia/fetch.mjs").exists());
    assert!(d.join("jsipfs/client.mjs").exists());
}

#[tokio::test]
async fn two_kubo_nodes_exchange_blocks() {
    let dir = scratch_dir("self-test").unwrap();
    let file = write_random_file(dir.path(), "a.bin", 600_000, 11).unwrap();
    let a = KuboNode::start(KuboOptions {
        ws: true,
        add: vec![file],
        ..Default::default()
    })
    .await
    .unwrap();
    let b = KuboNode::start(KuboOptions::default()).await.unwrap();
    assert_ne!(a.peer_id, b.peer_id);
    assert!(
        a.peer_id.starts_with("Qm"),
        "kubo uses RSA peer IDs: {}",
        a.peer_id
    );
    assert!(a.ws_addr.as_deref().unwrap().contains("/ws/p2p/"));
    assert!(b.ws_addr.is_none());
    eprintln!("kubo A ready in {:?}, B in {:?}", a.startup, b.startup);

    // RPC shim basics
    let id = a.rpc().id().await.unwrap();
    assert_eq!(id["ID"], a.peer_id.as_str());
    assert!(!a.public_key.is_empty());
    assert_eq!(id["PublicKey"], a.public_key.as_str());
    let addrs: Vec<&str> = id["Addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(addrs.contains(&a.tcp_addr.as_str()), "{addrs:?}");
    let get = reqwest::get(format!("{}/api/v0/id", a.api_url))
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405, "GET must be refused like kubo");
    assert!(a.rpc().post("nope", &[]).await.is_err());

    // startup --add and RPC add give the same CID for the same bytes
    let added = &a.added["a.bin"];
    assert_eq!(
        &a.add_bytes(&random_bytes(600_000, 11)).await.unwrap(),
        added
    );

    // 1 MiB: A has it, B fetches it over bitswap through `refs -r`
    let data = random_bytes(MIB, 1);
    let cid = a.add_bytes(&data).await.unwrap();
    assert!(cid.starts_with("Qm"), "CIDv0 expected: {cid}");
    let refs_a = a.refs_recursive(&cid).await.unwrap();
    assert_eq!(refs_a.len(), 4, "1 MiB = 4 leaves of 256 KiB: {refs_a:?}");
    b.connect(&a.tcp_addr).await.unwrap();
    assert!(b.peers().await.unwrap().contains(&a.peer_id));
    let t = Instant::now();
    let refs_b = b.refs_recursive(&cid).await.unwrap();
    eprintln!(
        "kubo B fetched 1 MiB from A over bitswap in {:?}",
        t.elapsed()
    );
    assert_eq!(refs_a, refs_b);
    assert_eq!(
        a.block_get(&cid).await.unwrap(),
        b.block_get(&cid).await.unwrap()
    );
    for r in &refs_a {
        assert_eq!(a.block_get(r).await.unwrap(), b.block_get(r).await.unwrap());
    }
}

#[tokio::test]
async fn helia_fetches_1mib_from_kubo_over_tcp_and_ws() {
    let a = KuboNode::start(KuboOptions {
        ws: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let data = random_bytes(MIB, 2);
    let cid = a.add_bytes(&data).await.unwrap();

    for maddr in [a.tcp_addr.clone(), a.ws_addr.clone().unwrap()] {
        let r = helia_fetch(&maddr, &cid, T).await.unwrap();
        eprintln!(
            "helia <- kubo {maddr}: {} bytes in {} ms (dial {:?} ms, wall {:?}, {:?}/{:?})",
            r.bytes.len(),
            r.ms,
            r.own.dial_ms,
            r.wall,
            r.own.muxer,
            r.own.encryption
        );
        assert!(r.bytes == data, "bytes differ over {maddr}");
        assert_eq!(r.own.peer.as_deref(), Some(a.peer_id.as_str()));
        assert_eq!(r.own.muxer.as_deref(), Some("/yamux/1.0.0"));
        assert_eq!(r.own.encryption.as_deref(), Some("/noise"));
        assert!(r.own.dial_ms.is_some());
    }

    // root block only, and mplex instead of yamux
    let r = helia_fetch_with(
        &a.tcp_addr,
        &cid,
        &HeliaOptions {
            mode: FetchMode::Blocks,
            muxers: vec!["mplex".into()],
            timeout: T,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.bytes, a.block_get(&cid).await.unwrap());
    assert_eq!(r.own.muxer.as_deref(), Some("/mplex/6.7.0"));
}

#[tokio::test]
async fn helia_failures_are_reported() {
    // nobody listens there
    let dead = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/QmfYpqZzjvBye3YKhjq41RmcneE9gmhKiPwd6x7BebrhFC",
        free_port()
    );
    let cid = "QmRwdNC8dQeGgWhYX57vyFqLZ5QZnW1WGb6tSAXCtogqMD";
    let opts = HeliaOptions {
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let r = helia_run(&dead, cid, &opts).await.unwrap();
    assert!(!r.ok);
    assert!(r.own.dial_ms.is_none(), "{r:?}");
    assert!(
        helia_fetch(&dead, cid, Duration::from_secs(5))
            .await
            .is_err()
    );

    // a live peer that does not have the CID: the fetch times out
    let a = KuboNode::start(KuboOptions::default()).await.unwrap();
    let r = helia_run(&a.tcp_addr, cid, &opts).await.unwrap();
    assert!(!r.ok, "{r:?}");
    assert!(r.own.dial_ms.is_some(), "dial must have worked: {r:?}");
}

#[tokio::test]
async fn ipfs_core_client_fetches_from_kubo_and_preloads() {
    let a = KuboNode::start(KuboOptions {
        fetch_timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .unwrap();
    let data = random_bytes(700_000, 3);
    let cid = a.add_bytes(&data).await.unwrap();
    // kubo's CID of the bytes the client will add (same generator, same chunking)
    let to_add = random_bytes(300_000, 4);
    let expected_added = {
        let tmp = KuboNode::start(KuboOptions::default()).await.unwrap();
        tmp.add_bytes(&to_add).await.unwrap()
    };

    let r = jsipfs_client(&JsIpfsOptions {
        connect: vec![a.tcp_addr.clone()],
        // preload via kubo's RPC: `POST /api/v0/refs?r=true&arg=<added>` makes kubo fetch it
        preload: Some(format!("{}/http", a.api_multiaddr)),
        add_bytes: Some((to_add.len(), 4)),
        cat: Some(cid.clone()),
        timeout: T,
        linger: Duration::from_secs(3),
    })
    .await
    .unwrap();
    eprintln!(
        "ipfs-core <- kubo: 700 KB in {:?} ms (connect {:?} ms, wall {:?})",
        r.ms, r.connect_ms, r.wall
    );
    assert!(r.bytes.as_deref() == Some(&data[..]), "cat bytes differ");
    assert!(r.peer_id.as_deref().unwrap().starts_with("12D3KooW"));
    assert_eq!(r.added.as_deref(), Some(expected_added.as_str()));
    // the preload made kubo fetch the client's DAG while the client was up: now it is local
    // (the client is gone, so this cannot go to the network)
    let refs = a.refs_recursive(&expected_added).await.unwrap();
    assert_eq!(refs.len(), 2, "300 KB = 2 leaves: {refs:?}");
}

#[tokio::test]
async fn kubo_identity_key_export() {
    let a = KuboNode::start(KuboOptions {
        export_identity_key: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let p = a.identity_key_path.as_ref().expect("identity key path");
    let key = std::fs::read(p).unwrap();
    assert!(!key.is_empty());
    // libp2p PrivateKey protobuf: field 1 (KeyType) = 0 (RSA), field 2 = key bytes
    assert_eq!(
        &key[..3],
        &[0x08, 0x00, 0x12],
        "RSA PrivateKey protobuf expected"
    );
    assert!(
        key.len() > 1000,
        "RSA-2048 key is ~1.2 KB, got {}",
        key.len()
    );
}

#[tokio::test]
async fn kubo_kill_terminate_restart() {
    let mut a = KuboNode::start(KuboOptions::default()).await.unwrap();
    let data = random_bytes(300_000, 5);
    let cid = a.add_bytes(&data).await.unwrap();
    let (peer, tcp) = (a.peer_id.clone(), a.tcp_addr.clone());

    a.kill();
    assert!(!a.is_running());
    assert!(
        a.rpc().id().await.is_err(),
        "API must be gone after SIGKILL"
    );

    a.restart().await.unwrap();
    assert!(a.is_running());
    assert_eq!(
        (a.peer_id.as_str(), a.tcp_addr.as_str()),
        (peer.as_str(), tcp.as_str())
    );
    assert_eq!(
        a.refs_recursive(&cid).await.unwrap().len(),
        2,
        "blocks survive a restart"
    );
    let r = helia_fetch(&a.tcp_addr, &cid, T).await.unwrap();
    assert!(r.bytes == data);

    // `kill PID` (SIGTERM) ends it promptly despite Go swallowing SIGTERM
    let t = Instant::now();
    let st = a.terminate().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "SIGTERM took {:?} ({st})",
        t.elapsed()
    );
    assert!(!a.is_running());
}

#[tokio::test]
async fn jsipfs_daemon_serves_kubo_and_helia() {
    let j = JsIpfsDaemon::start().await.unwrap();
    assert!(j.peer_id.starts_with("12D3KooW"), "{}", j.peer_id);
    // js-ipfs and kubo produce the same CIDv0 for the same bytes
    let data = random_bytes(500_000, 6);
    let cid = j.add_bytes(&data).await.unwrap();
    let k = KuboNode::start(KuboOptions::default()).await.unwrap();
    assert_eq!(k.add_bytes(&data).await.unwrap(), cid);

    // Helia <- js-ipfs needs mplex (small content only: see tests/harness/README.md)
    let small = random_bytes(200_000, 7);
    let small_cid = j.add_bytes(&small).await.unwrap();
    let r = helia_fetch(&j.tcp_addr, &small_cid, T).await.unwrap();
    assert!(r.bytes == small);
    assert_eq!(r.own.muxer.as_deref(), Some("/mplex/6.7.0"));

    // js-ipfs <- kubo over bitswap
    let kdata = random_bytes(MIB, 8);
    let kcid = k.add_bytes(&kdata).await.unwrap();
    j.rpc().swarm_connect(&k.tcp_addr).await.unwrap();
    assert!(j.rpc().cat(&kcid).await.unwrap() == kdata);
}
