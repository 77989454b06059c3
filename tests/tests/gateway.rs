//! The trustless HTTP gateway and `/routing/v1` end to end: real kubo backends (the
//! content on one of two), the real proxy with `--gateway` on its shared port, and
//! HTTP clients: reqwest over plain HTTP/1.1 and over TLS with HTTP/2 (a test CA), and a
//! real Helia 7 that speaks HTTP only. The scheme is a parameter of the world and of the
//! checks, so the same checks run over both.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use cid::Cid;
use kitsune_e2e::pki::{TestCa, install_tls_files};
use kitsune_e2e::{
    HttpOptions, HttpRouting, KuboNode, Proxy, ProxyOptions, free_port, helia_http_fetch,
    helia_http_run, random_bytes, scratch_dir, write_random_file,
};
use multihash_codetable::{Code, MultihashDigest};

const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(90);
/// The seed of the file a world's first backend holds.
const SEED: u64 = 16;

/// Two backends, the content on the first only, and a gateway in front.
struct World {
    has: KuboNode,
    _lacks: KuboNode,
    proxy: Proxy,
    base: String,
    /// The test CA's certificate (PEM file), when the port serves TLS (`https`).
    ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// With `scheme` `https` the port gets a certificate from a CA of the test's own (it
/// then serves TLS and plain HTTP alike).
async fn world(scheme: &str, file_len: usize, args: &[&str]) -> World {
    let dir = scratch_dir("gateway").unwrap();
    let file = write_random_file(dir.path(), "f.bin", file_len, SEED).unwrap();
    let has = KuboNode::with_files(&[file]).await;
    let lacks = KuboNode::with_files(&[]).await;
    let port = free_port();
    // Both ways to the shared port: with preload (`-p`) over http, without it
    // (`--http-port`) over https.
    let shared = if scheme == "https" {
        "--http-port"
    } else {
        "-p"
    };
    let mut extra: Vec<String> = vec![
        shared.into(),
        port.to_string(),
        "--preload-bind".into(),
        "127.0.0.1".into(),
        "--gateway".into(),
    ];
    let ca = (scheme == "https").then(|| {
        let ca = TestCa::new().unwrap();
        let (crt, key) = install_tls_files(dir.path(), &ca.server_cert().unwrap()).unwrap();
        extra.extend([
            "--tls-cert-file".into(),
            crt.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
        ]);
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, ca.pem()).unwrap();
        file
    });
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
        ca,
        _dir: dir,
    }
}

impl World {
    /// A client for this world: over https it trusts the test CA only and offers h2
    /// and http/1.1 by ALPN.
    fn client(&self) -> reqwest::Client {
        let b = reqwest::Client::builder().timeout(T);
        match &self.ca {
            Some(ca) => {
                let pem = std::fs::read(ca).unwrap();
                b.tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
                    .https_only(true)
                    .build()
                    .unwrap()
            }
            None => b.build().unwrap(),
        }
    }

    /// The HTTP version every response must come in: HTTP/2 over TLS (ALPN), else 1.1.
    fn version(&self) -> reqwest::Version {
        if self.ca.is_some() {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        }
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
    let c = w.client();

    // A raw block: verified, with the trustless headers.
    let r = c
        .get(format!("{}/ipfs/{root}", w.base))
        .header("accept", "application/vnd.ipld.raw")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), w.version());
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
    assert_eq!(r.version(), w.version());
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
async fn trustless_gateway_over_https_with_http2() {
    gateway_checks("https").await;
}

#[tokio::test]
async fn a_client_past_its_bound_waits_for_its_slot_and_past_its_wait_list_is_answered_429() {
    let w = world("http", 20 * MIB, &["--gateway-max-per-client", "1"]).await;
    let root = w.has.added["f.bin"].clone();
    let c = http();
    let car = format!("{}/ipfs/{root}?format=car", w.base);
    // A 20 MiB CAR whose body is not read holds the client's one slot: the walk
    // waits once the socket buffers are full.
    let held = c.get(&car).send().await.unwrap();
    assert_eq!(held.status(), 200);
    // Four (WAITING_PER_SLOT per slot) more wait for it...
    let raw = format!("{}/ipfs/{root}?format=raw", w.base);
    let waiting: Vec<_> = (0..kitsune_proxy::gateway::limits::WAITING_PER_SLOT)
        .map(|_| {
            let (c, raw) = (c.clone(), raw.clone());
            tokio::spawn(async move { c.get(raw).send().await.unwrap().status() })
        })
        .collect();
    let proxy = &w.proxy;
    let inflight = "kitsune_gateway_requests_in_flight";
    kitsune_e2e::wait_for(
        "the waiting requests",
        T,
        Duration::from_millis(50),
        || async { Ok(proxy.metric(inflight).await.ok().flatten() == Some(5.0)) },
    )
    .await
    .unwrap();
    // ...and the next is refused at once.
    let r = c.get(&raw).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Read to its end, the CAR is whole, and its slot goes to each waiter in turn.
    assert!(held.bytes().await.unwrap().len() > 20 * MIB);
    for w in waiting {
        assert_eq!(w.await.unwrap(), 200);
    }
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

/// The proxy's count of `route`/`format` requests answered 200.
async fn served_200(w: &World, route: &str, format: &str) -> f64 {
    let name = format!(
        "kitsune_gateway_requests_total{{route=\"{route}\",format=\"{format}\",status=\"200\"}}"
    );
    w.proxy.metric(&name).await.unwrap().unwrap_or(0.0)
}

/// A real Helia 7 that speaks HTTP only (trustless-gateway block broker, no libp2p)
/// fetches 20 MiB byte-identical with the proxy as its one gateway: over plain HTTP and
/// over https trusting the test CA, on the one port; and not over https without the CA.
#[tokio::test]
async fn helia_over_http_only_fetches_20_mib_through_the_gateway() {
    let w = world("https", 20 * MIB, &[]).await;
    let root = &w.has.added["f.bin"];
    let blocks = w.has.dag_cids(root).await.unwrap().len() as u64;
    let expected = random_bytes(20 * MIB, SEED);
    let plain = w.base.replacen("https://", "http://", 1);
    for url in [&plain, &w.base] {
        let before = served_200(&w, "ipfs", "raw").await;
        let opts = HttpOptions {
            extra_ca: w.ca.as_deref(),
            timeout: T,
            ..Default::default()
        };
        let got = helia_http_fetch(url, root, &opts).await.unwrap();
        assert!(got.bytes == expected, "differs over {url}");
        assert_eq!(
            got.own.origins,
            vec![url.clone()],
            "only the proxy was asked"
        );
        assert!(
            got.own.requests.ipfs >= blocks,
            "{} < {blocks}",
            got.own.requests.ipfs
        );
        let served = served_200(&w, "ipfs", "raw").await - before;
        assert!(
            served >= blocks as f64,
            "the proxy served {served} raw blocks"
        );
    }
    // Without the CA the https fetch fails: the client really checked the certificate.
    let opts = HttpOptions {
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let r = helia_http_run(&w.base, root, &opts).await.unwrap();
    assert!(!r.ok, "a client not trusting the CA must fail\n{}", r.log);
}

/// The same client with the proxy as its only `/routing/v1` router: the proxy names
/// itself as the provider and serves the blocks.
async fn delegated_routing_through_the_proxy(scheme: &str) {
    let w = world(scheme, 20 * MIB, &[]).await;
    let root = &w.has.added["f.bin"];
    let opts = HttpOptions {
        routing: HttpRouting::Delegated,
        extra_ca: w.ca.as_deref(),
        timeout: T,
        ..Default::default()
    };
    let got = helia_http_fetch(&w.base, root, &opts).await.unwrap();
    assert!(got.bytes == random_bytes(20 * MIB, SEED), "differs");
    assert_eq!(
        got.own.origins,
        vec![w.base.clone()],
        "only the proxy was asked"
    );
    assert!(got.own.requests.routing >= 1);
    let blocks = w.has.dag_cids(root).await.unwrap().len() as u64;
    assert!(
        got.own.requests.ipfs >= blocks,
        "{} < {blocks}",
        got.own.requests.ipfs
    );
    let json = served_200(&w, "providers", "json").await;
    let ndjson = served_200(&w, "providers", "ndjson").await;
    assert!(
        json + ndjson >= 1.0,
        "the proxy answered the provider lookups"
    );
}

#[tokio::test]
async fn helia_with_the_proxy_as_its_only_router_fetches_20_mib_over_http() {
    delegated_routing_through_the_proxy("http").await;
}

#[tokio::test]
async fn helia_with_the_proxy_as_its_only_router_fetches_20_mib_over_https() {
    delegated_routing_through_the_proxy("https").await;
}

/// Helia as it comes, on Node's own fetch: no bound on its requests in flight, one
/// connection each, every block of a DAG level asked at once (more than the 32 slots a
/// client has). Those past its slots wait for them rather than take a 429, which
/// Helia's broker would count as a failed block. (The shared port's connection cap per
/// address, 64 by default, is lifted here: it would close the connections past it.)
#[tokio::test]
async fn helia_on_nodes_own_fetch_gets_every_block_past_its_slots_by_waiting() {
    let w = world("http", 20 * MIB, &["--max-connections-per-ip", "1024"]).await;
    let root = &w.has.added["f.bin"];
    let opts = HttpOptions {
        timeout: T,
        connections: 0,
        ..Default::default()
    };
    let got = helia_http_run(&w.base, root, &opts).await.unwrap();
    assert!(got.ok, "{}", got.log);
    assert!(got.bytes == random_bytes(20 * MIB, SEED), "differs");
    let refused = "kitsune_gateway_requests_total{route=\"ipfs\",format=\"raw\",status=\"429\"}";
    assert_eq!(w.proxy.metric(refused).await.unwrap(), None, "no 429");
}
