//! The trustless HTTP gateway and `/routing/v1` end to end: real kubo backends (the
//! content on one of two), the real proxy with `--gateway` on its shared port, and
//! plain HTTP clients. The scheme is a parameter so the same checks run over https
//! once the shared port serves TLS.

use std::collections::HashSet;
use std::time::Duration;

use cid::Cid;
use kitsune_e2e::{KuboNode, Proxy, ProxyOptions, free_port, scratch_dir, write_random_file};
use multihash_codetable::{Code, MultihashDigest};

const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(90);

/// Two backends, the content on the first only, and a gateway in front.
struct World {
    has: KuboNode,
    _lacks: KuboNode,
    proxy: Proxy,
    base: String,
    _dir: tempfile::TempDir,
}

async fn world(scheme: &str, file_len: usize, args: &[&str]) -> World {
    let dir = scratch_dir("gateway").unwrap();
    let file = write_random_file(dir.path(), "f.bin", file_len, 16).unwrap();
    let has = KuboNode::with_files(&[file]).await;
    let lacks = KuboNode::with_files(&[]).await;
    let port = free_port();
    let mut extra: Vec<String> = vec![
        "-p".into(),
        port.to_string(),
        "--preload-bind".into(),
        "127.0.0.1".into(),
        "--gateway".into(),
    ];
    extra.extend(args.iter().map(|a| a.to_string()));
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![has.api_multiaddr.clone(), lacks.api_multiaddr.clone()],
        args: extra,
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    proxy.wait_backends(2, T).await.unwrap();
    World {
        has,
        _lacks: lacks,
        proxy,
        base: format!("{scheme}://127.0.0.1:{port}"),
        _dir: dir,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(T).build().unwrap()
}

/// A block's data hashes to its CID (sha2-256, as kubo makes them).
fn verify(cid: &Cid, data: &[u8]) -> bool {
    cid.hash().code() == 0x12 && Code::Sha2_256.digest(data).digest() == cid.hash().digest()
}

/// A CARv1 parsed: its header's bytes and its (CID, block) sections.
fn parse_car(mut buf: &[u8]) -> (Vec<u8>, Vec<(Cid, Vec<u8>)>) {
    let (len, rest) = unsigned_varint::decode::usize(buf).expect("header length");
    let header = rest[..len].to_vec();
    buf = &rest[len..];
    let mut blocks = Vec::new();
    while !buf.is_empty() {
        let (len, rest) = unsigned_varint::decode::usize(buf).expect("section length");
        let section = &rest[..len];
        let mut r = std::io::Cursor::new(section);
        let cid = Cid::read_bytes(&mut r).expect("a CID");
        let at = r.position() as usize;
        blocks.push((cid, section[at..].to_vec()));
        buf = &rest[len..];
    }
    (header, blocks)
}

async fn gateway_checks(scheme: &str) {
    let w = world(scheme, 10 * MIB, &[]).await;
    let root = &w.has.added["f.bin"];
    let c = http();

    // A raw block: verified, with the trustless headers.
    let r = c
        .get(format!("{}/ipfs/{root}", w.base))
        .header("accept", "application/vnd.ipld.raw")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "application/vnd.ipld.raw");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "public, max-age=29030400, immutable");
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["etag"], format!("\"{root}.raw\"").as_str());
    let data = r.bytes().await.unwrap();
    assert_eq!(h["content-length"], data.len().to_string().as_str());
    assert!(
        verify(&root.parse().unwrap(), &data),
        "the block hashes to its CID"
    );

    // The probe CID, a bad CID, a foreign format.
    let r = c
        .get(format!("{}/ipfs/bafkqaaa?format=raw", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c
        .get(format!("{}/ipfs/notacid?format=raw", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{}/ipfs/{root}?format=dag-json", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);

    // HEAD: present (from a HAVE) and absent (every backend says no).
    let r = c
        .head(format!("{}/ipfs/{root}?format=raw", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let absent = Cid::new_v1(0x55, Code::Sha2_256.digest(b"nobody has this"));
    let r = c
        .head(format!("{}/ipfs/{absent}?format=raw", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{}/ipfs/{absent}?format=raw", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A CAR of the whole DAG: every block verified, every block of the DAG there,
    // depth-first from the root.
    let r = c
        .get(format!("{}/ipfs/{root}?format=car&dag-scope=all", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.ipld.car; version=1; order=dfs; dups=n"
    );
    let car = r.bytes().await.unwrap();
    let (header, blocks) = parse_car(&car);
    let root_cid: Cid = root.parse().unwrap();
    assert!(
        header
            .windows(root_cid.to_bytes().len())
            .any(|s| s == root_cid.to_bytes()),
        "the header names the root"
    );
    assert_eq!(blocks[0].0, root_cid, "the root first");
    for (cid, data) in &blocks {
        assert!(verify(cid, data), "{cid} hashes to its CID");
    }
    let got: HashSet<Cid> = blocks.iter().map(|(c, _)| *c).collect();
    let want: HashSet<Cid> = w.has.dag_cids(root).await.unwrap().into_iter().collect();
    assert_eq!(got, want, "the CAR holds exactly the DAG's blocks");
    assert_eq!(got.len(), blocks.len(), "dups=n: no block twice");
    assert!(blocks.len() > 40, "a 10 MiB file is many blocks");

    // dag-scope=block: the root only; entity of a file: the whole file.
    let r = c
        .get(format!("{}/ipfs/{root}?format=car&dag-scope=block", w.base))
        .send()
        .await
        .unwrap();
    let (_, one) = parse_car(&r.bytes().await.unwrap());
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0, root_cid);
    let r = c
        .get(format!(
            "{}/ipfs/{root}?format=car&dag-scope=entity",
            w.base
        ))
        .send()
        .await
        .unwrap();
    let (_, entity) = parse_car(&r.bytes().await.unwrap());
    assert_eq!(
        entity.len(),
        blocks.len(),
        "a file's entity is all its blocks"
    );

    // Delegated routing: the proxy names itself for content a backend has.
    let r = c
        .get(format!("{}/routing/v1/providers/{root}", w.base))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    let p = &v["Providers"][0];
    assert_eq!(p["ID"], w.proxy.peer_id.as_str());
    assert_eq!(p["Schema"], "peer");
    let addrs = p["Addrs"].to_string();
    assert!(addrs.contains("/http"), "{addrs}");
    let r = c
        .get(format!("{}/routing/v1/providers/{absent}", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The metrics saw it all.
    let ok_raw = w
        .proxy
        .metric("kitsune_gateway_requests_total{route=\"ipfs\",format=\"raw\",status=\"200\"}")
        .await
        .unwrap()
        .unwrap_or(0.0);
    assert!(ok_raw >= 3.0, "{ok_raw}");
    let car_bytes = w
        .proxy
        .metric("kitsune_gateway_bytes_served_total{format=\"car\"}")
        .await
        .unwrap()
        .unwrap_or(0.0);
    assert!(car_bytes >= car.len() as f64);
}

#[tokio::test]
async fn trustless_gateway_over_http() {
    gateway_checks("http").await;
}

#[tokio::test]
async fn a_client_past_its_bound_is_answered_429_until_its_slot_frees() {
    let w = world("http", 20 * MIB, &["--gateway-max-per-client", "1"]).await;
    let root = &w.has.added["f.bin"];
    let c = http();
    let car = format!("{}/ipfs/{root}?format=car", w.base);
    // A 20 MiB CAR whose body is not read holds the client's one slot: the walk
    // waits once the socket buffers are full.
    let held = c.get(&car).send().await.unwrap();
    assert_eq!(held.status(), 200);
    let r = c
        .get(format!("{}/ipfs/{root}?format=raw", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Read to its end, the CAR is whole, and the slot is free again.
    assert!(held.bytes().await.unwrap().len() > 20 * MIB);
    let r = c
        .get(format!("{}/ipfs/{root}?format=raw", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_block_wanted_over_bitswap_and_http_at_once_is_asked_of_the_backend_once() {
    use kitsune_e2e::bitswap_client::{BitswapClient, want};
    use kitsune_proxy::bitswap::Message;

    let mut w = world("http", MIB, &[]).await;
    let root = w.has.added["f.bin"].clone();
    let leaf = w.has.dag_cids(&root).await.unwrap()[1];
    // Paused, the backend holds both wants unanswered until both are in.
    w.has.pause().unwrap();
    let mut client = BitswapClient::connect(&w.proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    client
        .send(&Message {
            wants: vec![want(leaf)],
            ..Message::default()
        })
        .await
        .unwrap();
    let url = format!("{}/ipfs/{leaf}?format=raw", w.base);
    let http_get = tokio::spawn(async move { http().get(url).send().await.unwrap() });
    let inflight = "kitsune_gateway_requests_in_flight";
    let proxy = &w.proxy;
    kitsune_e2e::wait_for("the HTTP fetch", T, Duration::from_millis(50), || async {
        Ok(proxy.metric(inflight).await.ok().flatten() == Some(1.0))
    })
    .await
    .unwrap();
    w.has.resume().unwrap();
    let r = http_get.await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(verify(&leaf, &r.bytes().await.unwrap()));
    let mut got = false;
    while let Some(m) = client.recv(T).await {
        if m.blocks.iter().any(|b| b.cid == leaf) {
            got = true;
            break;
        }
    }
    assert!(got, "the bitswap client got the block too");
    let from_has = format!(
        "kitsune_backend_blocks_received_total{{backend=\"{}\"}}",
        w.has.peer_id
    );
    assert_eq!(w.proxy.metric(&from_has).await.unwrap(), Some(1.0));
}

#[tokio::test]
async fn a_backend_killed_mid_car_breaks_the_transfer_or_it_completes_whole() {
    use futures::StreamExt;

    let mut w = world("http", 20 * MIB, &[]).await;
    let root = w.has.added["f.bin"].clone();
    let dag: HashSet<Cid> = w.has.dag_cids(&root).await.unwrap().into_iter().collect();
    let r = http()
        .get(format!("{}/ipfs/{root}?format=car", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut car = body.next().await.unwrap().unwrap().to_vec();
    // The only backend with the content goes away mid-stream.
    w.has.kill();
    let mut broken = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => car.extend_from_slice(&c),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    if !broken {
        // Then it must be whole: every block of the DAG, each verified.
        let (_, blocks) = parse_car(&car);
        let got: HashSet<Cid> = blocks.iter().map(|(c, _)| *c).collect();
        assert_eq!(got, dag, "a CAR that ended cleanly is complete");
        assert!(blocks.iter().all(|(c, d)| verify(c, d)));
    }
    let aborted = w
        .proxy
        .metrics()
        .await
        .unwrap()
        .lines()
        .any(|l| l.starts_with("kitsune_gateway_car_aborted_total"));
    assert_eq!(
        broken, aborted,
        "an abort is counted exactly when it happened"
    );
}
