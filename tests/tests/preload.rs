//! Preload mode end to end: real ipfs-core (js-ipfs) uploaders and fetchers, real kubo
//! backends, the real `kitsune-proxy` with `-p`, all over loopback.

use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use kitsune_e2e::bitswap_client::BitswapClient;
use kitsune_e2e::preload::{JsIpfsDone, JsIpfsJob, JsIpfsProc, Service, rss_bytes};
use kitsune_e2e::{
    KuboNode, KuboOptions, Proxy, ProxyOptions, free_port, random_bytes, scratch_dir, wait_for,
};
use kitsune_proxy::bitswap::{Block, Message};
use multihash_codetable::{Code, MultihashDigest};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(120);

async fn kubo(fetch_timeout: Duration) -> KuboNode {
    KuboNode::start(KuboOptions {
        fetch_timeout,
        ..Default::default()
    })
    .await
    .expect("kubo starts")
}

/// A proxy in preload mode; returns it and its preload port.
async fn preload_proxy(
    backends: &[&KuboNode],
    key: Option<std::path::PathBuf>,
    extra: &[&str],
) -> (Proxy, u16) {
    let port = free_port();
    let mut args: Vec<String> = vec![
        "-p".into(),
        port.to_string(),
        "--preload-bind".into(),
        "127.0.0.1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let p = Proxy::start(ProxyOptions {
        backends: backends.iter().map(|k| k.api_multiaddr.clone()).collect(),
        key,
        args,
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    p.wait_backends(backends.len(), T).await.unwrap();
    (p, port)
}

fn ws_addr(port: u16, peer: &str) -> String {
    format!("/ip4/127.0.0.1/tcp/{port}/ws/p2p/{peer}")
}

fn http_addr(port: u16) -> String {
    format!("/ip4/127.0.0.1/tcp/{port}/http")
}

async fn metric(p: &Proxy, name: &str) -> f64 {
    p.metric(name).await.ok().flatten().unwrap_or(0.0)
}

async fn wait_metric(p: &Proxy, name: &str, at_least: f64, timeout: Duration) {
    let r = wait_for(name, timeout, Duration::from_millis(100), || async {
        Ok(metric(p, name).await >= at_least)
    })
    .await;
    if let Err(e) = r {
        panic!("{e}\n{}", p.proc.log_tail(40));
    }
}

const REFS_OK: &str = "kitsune_preload_refs_requests_total{outcome=\"ok\"}";
const FORWARDED: &str = "kitsune_preload_reverse_wants_total{outcome=\"forwarded\"}";
const REFUSED: &str = "kitsune_preload_reverse_wants_total{outcome=\"refused\"}";
const BLOCKS_DOWN: &str = "kitsune_bitswap_blocks_forwarded_total{direction=\"Downstream\"}";

enum Content {
    File(usize, u64),
    DagCbor {
        leaves: usize,
        size: usize,
        seed: u64,
    },
}

impl Content {
    fn expected(&self) -> Vec<u8> {
        match *self {
            Content::File(len, seed) => random_bytes(len, seed),
            Content::DagCbor { leaves, size, seed } => (0..leaves as u64)
                .flat_map(|i| random_bytes(size, seed + i))
                .collect(),
        }
    }
}

/// Node A: adds `content` with preload on, then keeps serving it.
fn uploader(ws: &str, http: &str, content: &Content) -> JsIpfsProc {
    JsIpfsProc::spawn(&JsIpfsJob {
        connect: vec![ws.to_owned()],
        preload: Some(http.to_owned()),
        add_bytes: match *content {
            Content::File(len, seed) => Some((len, seed)),
            _ => None,
        },
        add_dag_cbor: match *content {
            Content::DagCbor { leaves, size, seed } => Some((leaves, size, seed)),
            _ => None,
        },
        timeout: Duration::from_secs(60),
        linger: Duration::from_secs(300),
        ..Default::default()
    })
    .unwrap()
}

/// Waits until the `proxies` together have answered one refs call with success (it returns
/// once the backend holds A's whole DAG); panics with their logs and A's if none does.
async fn wait_preloaded(what: &str, proxies: &[&Proxy], a: &JsIpfsProc) {
    let r = wait_for(what, T, Duration::from_millis(100), || async {
        let mut ok = 0.0;
        for p in proxies {
            ok += metric(p, REFS_OK).await;
        }
        Ok(ok >= 1.0)
    })
    .await;
    if let Err(e) = r {
        let logs: String = proxies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("\nproxy {}:\n{}", i + 1, p.proc.log_tail(40)))
            .collect();
        panic!("{e}{logs}\nA:\n{}", a.log());
    }
}

/// Node B: fetches `root` (cat of a file, dag.get of a dag-cbor root, as `content` is).
async fn fetcher(ws: String, http: String, root: String, content: &Content) -> JsIpfsDone {
    let file = matches!(content, Content::File(..));
    JsIpfsProc::spawn(&JsIpfsJob {
        connect: vec![ws],
        preload: Some(http),
        cat: file.then(|| root.clone()),
        get_dag: (!file).then_some(root),
        timeout: Duration::from_secs(90),
        linger: Duration::ZERO,
        ..Default::default()
    })
    .unwrap()
    .finish(T + T)
    .await
    .unwrap()
}

/// The original's golden scenario: node A adds with preload on (preload → the proxy's
/// HTTP port, Bootstrap → its `/ws` on the same port, no MDNS), the backend fetches the
/// DAG from A through the proxy, A goes away, and node B gets identical bytes.
async fn golden(content: Content) {
    let k = kubo(Duration::from_secs(60)).await;
    let (proxy, port) = preload_proxy(&[&k], None, &[]).await;
    let (ws, http) = (ws_addr(port, &proxy.peer_id), http_addr(port));
    let mut a = uploader(&ws, &http, &content);
    let root = a.added(T).await.unwrap();
    // The refs call returns once the backend holds the whole DAG.
    wait_preloaded("the preload to finish", &[&proxy], &a).await;
    assert!(metric(&proxy, FORWARDED).await >= 1.0);
    assert!(
        metric(&proxy, BLOCKS_DOWN).await >= 1.0,
        "blocks went from A to the backend through the proxy"
    );
    drop(a); // A is gone: only the backend has the content now.

    let done = fetcher(ws, http, root, &content).await;
    assert!(
        done.ok,
        "B failed: {:?}\n{}\nproxy:\n{}",
        done.error,
        done.log,
        proxy.proc.log_tail(30)
    );
    assert!(
        done.bytes.as_deref() == Some(&content.expected()[..]),
        "B's bytes differ from A's"
    );
}

#[tokio::test]
async fn golden_512_kib_added_on_a_is_cat_on_b() {
    golden(Content::File(512 * KIB, 11)).await;
}

// 10 MiB to an ipfs-core client over mplex: js-libp2p resets an mplex stream holding
// over 4 MiB unread, so the proxy spreads its writes over streams (net/bitswap/writer.rs).
#[tokio::test]
async fn golden_10_mib_added_on_a_is_cat_on_b() {
    golden(Content::File(10 * MIB, 12)).await;
}

#[tokio::test]
async fn golden_dag_cbor_linking_raw_blocks() {
    golden(Content::DagCbor {
        leaves: 8,
        size: 64 * KIB,
        seed: 13,
    })
    .await;
}

fn raw_block(data: &[u8]) -> Block {
    Block {
        cid: Cid::new_v1(0x55, Code::Sha2_256.digest(data)),
        data: Bytes::copy_from_slice(data),
    }
}

/// A backend WANT for a CID no preload includes is answered DONT_HAVE and reaches no
/// client. The client records every message; a later, legitimate preload's WANT is the
/// marker: messages to one client are sent in order on one stream, so had the
/// unrelated WANT been forwarded, it would have arrived first.
#[tokio::test]
async fn a_backend_want_for_an_unrelated_cid_reaches_no_client() {
    let k = kubo(Duration::from_secs(20)).await;
    let (proxy, port) = preload_proxy(&[&k], None, &[]).await;
    let mut client = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();

    // The backend wants something unrelated (a fetch of a CID nobody preloads).
    let unrelated = raw_block(b"nobody preloaded this");
    let rpc = k.rpc().clone();
    let unrelated_cid = unrelated.cid.to_string();
    let stray = tokio::spawn(async move { rpc.block_get(&unrelated_cid).await });
    wait_metric(&proxy, REFUSED, 1.0, T).await;

    // Now a legitimate preload of a block this client holds.
    let mine = raw_block(b"the client's own block");
    let http = reqwest::Client::new();
    let url = format!(
        "http://127.0.0.1:{port}/api/v0/refs?r=true&arg={}",
        mine.cid
    );
    let refs = tokio::spawn(async move { http.post(url).send().await });
    let mut seen = Vec::new();
    loop {
        let msg = client
            .recv(T)
            .await
            .expect("the preload's WANT reaches the uploader");
        seen.push(msg.clone());
        if msg.wants.iter().any(|w| w.cid == mine.cid && !w.cancel) {
            break;
        }
    }
    for m in &seen {
        assert!(
            m.wants.iter().all(|w| w.cid != unrelated.cid),
            "the unrelated WANT was forwarded: {seen:?}"
        );
    }
    client
        .send(&Message {
            blocks: vec![mine.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let resp = refs.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "*",
        "CORS on success"
    );
    // The backend really has the block now.
    assert_eq!(k.block_get(&mine.cid.to_string()).await.unwrap(), mine.data);
    assert!(metric(&proxy, REFUSED).await >= 1.0);
    stray.abort();
}

#[tokio::test]
async fn refs_errors_cors_and_paths() {
    let k = kubo(Duration::from_secs(20)).await;
    let (proxy, port) = preload_proxy(&[&k], None, &[]).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    let bad = http
        .post(format!("{base}/api/v0/refs?r=true&arg=notacid"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["access-control-allow-origin"], "*");
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["Type"], "error");
    assert_eq!(body["Code"], 0);
    assert!(body["Message"].as_str().unwrap().contains("notacid"));

    let missing = http
        .post(format!("{base}/api/v0/refs"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);

    let pre = http
        .request(reqwest::Method::OPTIONS, format!("{base}/api/v0/refs"))
        .header("origin", "https://example.org")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    assert!(
        pre.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    for path in ["/", "/api/v0/id", "/api/v0/refs/local", "/metrics"] {
        let r = http.post(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }

    // GET works like POST (older js-ipfs sent GET), here for content the backend has.
    let cid = k.add_bytes(&random_bytes(300 * KIB, 5)).await.unwrap();
    let got = http
        .get(format!("{base}/api/v0/refs?r=true&arg={cid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let text = got.text().await.unwrap();
    assert_eq!(text.lines().count(), 2, "two chunks' refs: {text}");
    assert!(text.lines().all(|l| l.contains("\"Ref\"")));
    assert!(
        metric(
            &proxy,
            "kitsune_preload_refs_requests_total{outcome=\"bad_request\"}"
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_backend_that_is_down_or_failing_gives_non_2xx() {
    // Failing: the backend cannot find the content (nobody has it) and gives up.
    let mut k = kubo(Duration::from_secs(2)).await;
    let (proxy, port) = preload_proxy(&[&k], None, &[]).await;
    let http = reqwest::Client::new();
    let nobody = raw_block(b"nobody has this");
    let url = format!(
        "http://127.0.0.1:{port}/api/v0/refs?r=true&arg={}",
        nobody.cid
    );
    let r = http.post(&url).send().await.unwrap();
    assert!(!r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");

    // Down: no backend at all.
    k.kill();
    proxy.wait_backends(0, T).await.unwrap();
    let r = http.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["Type"], "error");
}

/// 1,000 calls at once against a bound of 8: at most 8 reach the backend, the rest get
/// 429 at once, and the proxy's memory does not grow from one burst to the next.
#[tokio::test]
async fn a_burst_of_1000_refs_calls_is_bounded() {
    let k = kubo(Duration::from_secs(30)).await;
    let (proxy, port) = preload_proxy(
        &[&k],
        None,
        &[
            "--preload-max-concurrent",
            "8",
            "--preload-timeout",
            "10s",
            "--preload-linger",
            "1s",
            // The burst comes from one address: lift the shared port's per-address
            // connection cap (64) so the refs bound is what answers.
            "--max-connections-per-ip",
            "2000",
        ],
    )
    .await;
    let pid = proxy.proc.pid();
    let burst = |round: u32| {
        let url = format!("http://127.0.0.1:{port}/api/v0/refs?r=true&arg=");
        async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let calls = (0..1000u32).map(|i| {
                let cid = raw_block(format!("absent {round} {i}").as_bytes()).cid;
                let req = http.post(format!("{url}{cid}")).send();
                async move { req.await.map(|r| r.status().as_u16()).unwrap_or(0) }
            });
            futures::future::join_all(calls).await
        }
    };
    let mut rss = Vec::new();
    for round in 0..3 {
        let statuses = burst(round).await;
        let limited = statuses.iter().filter(|s| **s == 429).count();
        let through = statuses.iter().filter(|s| **s != 429).count();
        assert_eq!(statuses.len(), 1000);
        assert!(statuses.iter().all(|s| *s != 0), "every call was answered");
        assert!(through <= 8, "{through} calls passed a bound of 8");
        assert!(limited >= 992, "{limited} answered 429");
        // The ones that went through timed out at the backend: non-2xx, not 200.
        assert!(statuses.iter().all(|s| *s != 200));
        wait_for(
            "preloads to expire",
            T,
            Duration::from_millis(100),
            || async { Ok(metric(&proxy, "kitsune_preload_sessions").await == 0.0) },
        )
        .await
        .unwrap();
        rss.push(rss_bytes(pid).unwrap());
    }
    let growth = rss[2].saturating_sub(rss[1]);
    assert!(
        growth < 16 * MIB as u64,
        "RSS grew {growth} bytes between bursts ({rss:?})"
    );
    // One address: its share (--preload-max-concurrent-per-address) refuses first.
    let refused = metric(
        &proxy,
        "kitsune_preload_refs_requests_total{outcome=\"too_many_requests\"}",
    )
    .await
        + metric(
            &proxy,
            "kitsune_preload_refs_requests_total{outcome=\"too_many_per_address\"}",
        )
        .await;
    assert!(refused >= 2976.0, "{refused} refused");
}

/// Two proxy processes share one key, behind one Service port with ClientIP affinity
/// (a WebSocket and a refs call from one client land on one replica because they use
/// the same port). A preloads through the Service; B then fetches through it.
#[tokio::test]
async fn two_replicas_sharing_a_key_preload_through_one_port() {
    let dir = scratch_dir("replicas").unwrap();
    let key = dir.path().join("key");
    let k1 = kubo(Duration::from_secs(60)).await;
    let k2 = kubo(Duration::from_secs(60)).await;
    let (p1, port1) = preload_proxy(&[&k1], Some(key.clone()), &[]).await;
    let (p2, port2) = preload_proxy(&[&k2], Some(key.clone()), &[]).await;
    assert_eq!(p1.peer_id, p2.peer_id, "one identity");
    let svc = Service::start(
        vec![
            format!("127.0.0.1:{port2}").parse().unwrap(),
            format!("127.0.0.1:{port1}").parse().unwrap(),
        ],
        true,
    )
    .await
    .unwrap();
    let (ws, http) = (ws_addr(svc.port, &p1.peer_id), http_addr(svc.port));
    let content = Content::File(512 * KIB, 21);
    let mut a = uploader(&ws, &http, &content);
    let root = a.added(T).await.unwrap();
    wait_preloaded("a preload on either replica", &[&p1, &p2], &a).await;
    // Affinity put A's WebSocket and refs call on the first replica the Service chose.
    assert!(
        metric(&p2, REFS_OK).await >= 1.0,
        "the Service pinned A to replica 2"
    );
    assert_eq!(metric(&p1, REFS_OK).await, 0.0);
    drop(a);
    let done = fetcher(ws, http, root, &content).await;
    assert!(done.ok, "B failed: {:?}\n{}", done.error, done.log);
    assert!(done.bytes.as_deref() == Some(&content.expected()[..]));
}

/// The loopback WebSocket listener behind the preload port is internal: identify
/// announces only the public listeners, so a peer never learns (and dials) it.
#[tokio::test]
async fn identify_does_not_announce_the_internal_websocket_listener() {
    use futures::StreamExt;
    use libp2p::identify;
    use libp2p::swarm::SwarmEvent;

    let k = kubo(Duration::from_secs(20)).await;
    let (proxy, _port) = preload_proxy(&[&k], None, &[]).await;
    let mut swarm = kitsune_e2e::tcp_swarm(|key| {
        identify::Behaviour::new(identify::Config::new("ipfs/0.1.0".into(), key.public()))
    });
    swarm
        .dial(proxy.tcp_addr.parse::<libp2p::Multiaddr>().unwrap())
        .unwrap();
    let info = tokio::time::timeout(T, async {
        loop {
            if let SwarmEvent::Behaviour(identify::Event::Received { info, .. }) =
                swarm.select_next_some().await
            {
                return info;
            }
        }
    })
    .await
    .expect("the proxy identifies itself");
    let addrs: Vec<String> = info.listen_addrs.iter().map(|a| a.to_string()).collect();
    let tcp_port = proxy.tcp_addr.split('/').nth(4).unwrap().to_owned();
    assert!(info.agent_version.starts_with("kitsune/"));
    assert!(
        addrs.iter().all(|a| !a.contains("/ws")),
        "internal WebSocket listener announced: {addrs:?}"
    );
    assert!(
        addrs
            .iter()
            .any(|a| a.contains(&format!("/tcp/{tcp_port}"))),
        "the public TCP listener is announced: {addrs:?}"
    );
}
