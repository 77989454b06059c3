//! Faults end to end: backends killed again and again, a hung backend, a backend that
//! answers garbage, and a proxy restarted under its clients. Real kubo backends, the
//! real `kitsune-proxy` binary, native bitswap clients, all over loopback. (The
//! operator restarting is covered by `operator/tests/watch_channel.rs`, and the
//! channel cut under live traffic by `tests/tests/watch.rs`.)

use std::time::Duration;

use kitsune_e2e::bitswap_client::BitswapClient;
use kitsune_e2e::{KuboNode, Proxy, ProxyOptions, scratch_dir, write_random_file};

const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(90);

async fn proxy_for(backends: Vec<String>, key: Option<std::path::PathBuf>, args: &[&str]) -> Proxy {
    let n = backends.len();
    let p = Proxy::start(ProxyOptions {
        backends,
        key,
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    p.wait_backends(n, T).await.unwrap();
    p
}

async fn metric(p: &Proxy, name: &str) -> f64 {
    p.metric(name).await.ok().flatten().unwrap_or(0.0)
}

/// Six rounds; in each a client fetches a 16 MiB file and one of three backends is
/// killed mid-transfer (then brought back for the next round). Every fetch completes
/// and no block reaches the client twice.
#[tokio::test]
async fn backends_killed_again_and_again_lose_no_fetch_and_send_no_block_twice() {
    let dir = scratch_dir("kills").unwrap();
    let file = write_random_file(dir.path(), "f.bin", 16 * MIB, 41).unwrap();
    let mut ks = Vec::new();
    for _ in 0..3 {
        ks.push(KuboNode::with_files(std::slice::from_ref(&file)).await);
    }
    // No block cache: with it, every round after the first is served from the proxy's
    // memory and no backend is asked, so no kill could move a want.
    let proxy = proxy_for(
        ks.iter().map(|k| k.api_multiaddr.clone()).collect(),
        None,
        &["--block-cache-bytes", "0"],
    )
    .await;
    let cids = ks[0].dag_cids(&ks[0].added["f.bin"]).await.unwrap();
    let addr = proxy.tcp_addr.parse().unwrap();
    for round in 0..6 {
        let victim = round % ks.len();
        let mut client = BitswapClient::connect(&addr).await.unwrap();
        let pid = ks[victim].pid().expect("running");
        let copies = client
            .fetch_counting(&cids, 4, T, 8, || {
                // SIGKILL: the backend vanishes mid-transfer, its connection with it.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            })
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", proxy.proc.log_tail(30)));
        assert_eq!(copies.len(), cids.len(), "round {round}: every block");
        let dups: Vec<_> = copies.iter().filter(|(_, (n, _))| *n > 1).collect();
        assert!(
            dups.is_empty(),
            "round {round}: blocks delivered twice: {dups:?}"
        );
        let bytes: usize = copies.values().map(|(_, len)| len).sum();
        assert!(bytes > 16 * MIB, "round {round}: the whole file");
        ks[victim].restart().await.unwrap();
        proxy.wait_backends(3, T).await.unwrap();
    }
    assert!(
        metric(&proxy, "kitsune_bitswap_failovers_total").await >= 1.0,
        "wants moved off the killed backends"
    );
}

/// A hung backend (SIGSTOP: connections stay open, nothing is answered) keeps none of
/// the wants it was given: each moves on after the want timeout.
#[tokio::test]
async fn a_hung_backend_loses_its_wants_to_the_others() {
    let dir = scratch_dir("hung").unwrap();
    let file = write_random_file(dir.path(), "f.bin", 4 * MIB, 42).unwrap();
    let k1 = KuboNode::with_files(std::slice::from_ref(&file)).await;
    let mut k2 = KuboNode::with_files(&[file]).await;
    let proxy = proxy_for(
        vec![k1.api_multiaddr.clone(), k2.api_multiaddr.clone()],
        None,
        &["--want-timeout", "1s"],
    )
    .await;
    let cids = k1.dag_cids(&k1.added["f.bin"]).await.unwrap();
    k2.pause().unwrap();
    let mut client = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let got = client.fetch(&cids, 32, T).await;
    k2.resume().unwrap();
    let (blocks, _) = got.unwrap_or_else(|e| panic!("{e}\n{}", proxy.proc.log_tail(30)));
    assert_eq!(blocks.len(), cids.len());
    assert!(
        metric(&proxy, "kitsune_bitswap_failovers_total").await >= 1.0,
        "some wants went to the hung backend first and moved"
    );
}

/// A backend that answers every want with a malformed frame: the proxy closes that
/// stream, counts it, and the wants move to the healthy backend.
#[tokio::test]
async fn a_backend_answering_garbage_is_cut_off_and_wants_move() {
    let dir = scratch_dir("garbage").unwrap();
    let file = write_random_file(dir.path(), "f.bin", 2 * MIB, 43).unwrap();
    let good = KuboNode::with_files(&[file]).await;
    let bad = garbage::Backend::start().await;
    let proxy = proxy_for(
        vec![good.api_multiaddr.clone(), bad.rpc_multiaddr.clone()],
        None,
        &["--want-timeout", "1s"],
    )
    .await;
    let cids = good.dag_cids(&good.added["f.bin"]).await.unwrap();
    let mut client = BitswapClient::connect(&proxy.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let (blocks, _) = client
        .fetch(&cids, 16, T)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.proc.log_tail(30)));
    assert_eq!(blocks.len(), cids.len());
    assert!(bad.wants_seen() > 0, "the garbage backend was asked");
    let refused = metric(
        &proxy,
        "kitsune_rejected_total{reason=\"malformed_message\"}",
    )
    .await;
    assert!(refused >= 1.0, "its garbage was refused and counted");
}

/// The proxy is killed under a client and started again with the same key: the
/// client reconnects to the same peer ID and its fetch completes.
#[tokio::test]
async fn a_restarted_proxy_serves_its_reconnecting_clients() {
    let dir = scratch_dir("restart").unwrap();
    let file = write_random_file(dir.path(), "f.bin", 8 * MIB, 44).unwrap();
    let k = KuboNode::with_files(&[file]).await;
    let key = dir.path().join("key");
    let mut first = proxy_for(vec![k.api_multiaddr.clone()], Some(key.clone()), &[]).await;
    let cids = k.dag_cids(&k.added["f.bin"]).await.unwrap();
    let (head, tail) = cids.split_at(cids.len() / 2);
    let mut client = BitswapClient::connect(&first.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    client.fetch(head, 8, T).await.expect("the first half");
    first.proc.kill();
    let deadline = tokio::time::Instant::now() + T;
    while client.is_connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!client.is_connected(), "the client saw the proxy go");

    let second = proxy_for(vec![k.api_multiaddr.clone()], Some(key), &[]).await;
    assert_eq!(second.peer_id, first.peer_id, "same key, same peer ID");
    let mut client = BitswapClient::connect(&second.tcp_addr.parse().unwrap())
        .await
        .unwrap();
    let (blocks, _) = client.fetch(tail, 8, T).await.expect("the second half");
    assert_eq!(blocks.len(), tail.len());
}

/// A fake backend: the `/api/v0/id` kubo serves, and a libp2p host that answers every
/// bitswap message with a frame that is not a bitswap message.
mod garbage {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::{AsyncWriteExt, StreamExt};
    use kitsune_proxy::bitswap::Version;
    use kitsune_proxy::bitswap::codec::read_frame;
    use kitsune_proxy::net::bitswap;
    use libp2p::Multiaddr;
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};

    #[derive(NetworkBehaviour)]
    struct Behaviour {
        bitswap: bitswap::Behaviour,
        stream: libp2p_stream::Behaviour,
    }

    pub struct Backend {
        pub rpc_multiaddr: String,
        wants: Arc<AtomicUsize>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Drop for Backend {
        fn drop(&mut self) {
            for t in &self.tasks {
                t.abort();
            }
        }
    }

    impl Backend {
        pub fn wants_seen(&self) -> usize {
            self.wants.load(Ordering::Relaxed)
        }

        pub async fn start() -> Self {
            let mut swarm = kitsune_e2e::tcp_swarm(|_| Behaviour {
                bitswap: bitswap::Behaviour::default(),
                stream: libp2p_stream::Behaviour::new(),
            });
            swarm
                .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .unwrap();
            let listen: Multiaddr = loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    break address;
                }
            };
            let peer = *swarm.local_peer_id();
            let control = swarm.behaviour().stream.new_control();
            let wants = Arc::new(AtomicUsize::new(0));
            let counted = wants.clone();
            let host = tokio::spawn(async move {
                loop {
                    if let SwarmEvent::Behaviour(BehaviourEvent::Bitswap(s)) =
                        swarm.select_next_some().await
                    {
                        let (mut control, counted) = (control.clone(), counted.clone());
                        tokio::spawn(async move {
                            let mut r = futures::io::BufReader::new(s.stream);
                            while let Ok(Some(frame)) = read_frame(&mut r, 1 << 22).await {
                                if frame.is_empty() {
                                    continue; // the proxy's empty full wantlist
                                }
                                counted.fetch_add(1, Ordering::Relaxed);
                                let Ok(mut out) = control
                                    .open_stream(s.peer, Version::V1_2_0.protocol())
                                    .await
                                else {
                                    return;
                                };
                                // A length prefix, then bytes no protobuf decoder takes.
                                let mut garbage = vec![100u8];
                                garbage.extend(std::iter::repeat_n(0xffu8, 100));
                                let _ = out.write_all(&garbage).await;
                                let _ = out.flush().await;
                            }
                        });
                    }
                }
            });
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let rpc_port = http.local_addr().unwrap().port();
            let body = serde_json::json!({
                "ID": peer.to_string(),
                "Addresses": [listen.to_string()],
                "AgentVersion": "garbage/0",
            })
            .to_string();
            let app = axum::Router::new().route(
                "/api/v0/id",
                axum::routing::post(move || {
                    let body = body.clone();
                    async move { body }
                }),
            );
            let rpc = tokio::spawn(async move {
                let _ = axum::serve(http, app).await;
            });
            Self {
                rpc_multiaddr: format!("/ip4/127.0.0.1/tcp/{rpc_port}"),
                wants,
                tasks: vec![host, rpc],
            }
        }
    }
}
