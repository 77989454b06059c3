//! The real `kitsune-proxy` binary at start-up and in unusual surroundings: a backend
//! named by `/dns`, a closed stdout, an image without CA certificates, key paths that
//! are not key files. Real kubo backends and clients, all over loopback.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kitsune_e2e::bitswap_client::BitswapClient;
use kitsune_e2e::{
    KuboNode, Proxy, ProxyOptions, binary, free_port, run_proxy_to_exit, scratch_dir,
    write_random_file,
};

const T: Duration = Duration::from_secs(90);

/// Fetches every block of `root` from kubo's DAG through `addr` with a bitswap client.
async fn fetch_through(addr: &str, k: &KuboNode, root: &str) -> usize {
    let cids = k.dag_cids(root).await.unwrap();
    let mut c = BitswapClient::connect(&addr.parse().unwrap())
        .await
        .unwrap();
    let (blocks, _) = c.fetch(&cids, 32, T).await.expect("fetched");
    assert_eq!(blocks.len(), cids.len());
    blocks.iter().map(|b| b.data.len()).sum()
}

/// Environment variables that make rustls-native-certs find no CA certificate (both are
/// read in place of the distribution's bundle), as in an image without one.
fn no_ca_env(dir: &Path) -> Vec<(String, String)> {
    let empty = dir.join("no-ca");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("none.pem"), "").unwrap();
    vec![
        ("SSL_CERT_DIR".into(), empty.display().to_string()),
        (
            "SSL_CERT_FILE".into(),
            empty.join("none.pem").display().to_string(),
        ),
    ]
}

#[tokio::test]
async fn a_dns_backend_is_dialled_over_either_family() {
    // `localhost` resolves to 127.0.0.1 here, where kubo listens; `/dns` used to be
    // dialled as `/dns6`, which never reached it.
    let dir = scratch_dir("dns").unwrap();
    let file = write_random_file(dir.path(), "d.bin", 300_000, 31).unwrap();
    let k = KuboNode::with_files(&[file]).await;
    let by_name = k
        .api_multiaddr
        .replace("/ip4/127.0.0.1/", "/dns/localhost/");
    assert!(by_name.starts_with("/dns/localhost/tcp/"), "{by_name}");
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![by_name],
        ..Default::default()
    })
    .await
    .unwrap();
    proxy.wait_backends(1, T).await.unwrap();
    let bytes = fetch_through(&proxy.tcp_addr, &k, &k.added["d.bin"]).await;
    assert!(bytes >= 300_000);
}

#[tokio::test]
async fn a_closed_stdout_does_not_stop_the_proxy() {
    let dir = scratch_dir("stdout").unwrap();
    let file = write_random_file(dir.path(), "s.bin", 300_000, 32).unwrap();
    let k = KuboNode::with_files(&[file]).await;
    // A key made here: the peer ID is known without reading the proxy's stdout.
    let (key, bytes) = kitsune_common::key::generate_ed25519();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, bytes).unwrap();
    let peer = key.public().to_peer_id();
    let (tcp, metrics) = (free_port(), free_port());

    // stdout is a pipe whose read end is closed: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let stderr_path = dir.path().join("proxy.stderr");
    let mut proxy = tokio::process::Command::new(binary("kitsune-proxy", false).unwrap())
        .arg("-k")
        .arg(&key_path)
        .args(["-l", &format!("/ip4/127.0.0.1/tcp/{tcp}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .args(["-d", &k.api_multiaddr])
        .env("RUST_LOG", "info,kitsune_proxy::announce=debug")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    // Ready means: past the peer ID line, and the engine saw its listen address (its
    // line was attempted too) and connected the backend.
    let deadline = Instant::now() + T;
    loop {
        if let Some(status) = proxy.try_wait().unwrap() {
            panic!("the proxy exited ({status}) with stdout closed\n{}", log());
        }
        let ready = reqwest::get(format!("http://127.0.0.1:{metrics}/readyz")).await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = format!("/ip4/127.0.0.1/tcp/{tcp}/p2p/{peer}");
    let bytes = fetch_through(&addr, &k, &k.added["s.bin"]).await;
    assert!(bytes >= 300_000);
    assert!(proxy.try_wait().unwrap().is_none(), "still running");
    let log = log();
    assert!(
        log.contains("stdout is not writable"),
        "noted at debug\n{log}"
    );
    assert_eq!(
        log.matches("stdout is not writable").count(),
        1,
        "noted once\n{log}"
    );
}

#[tokio::test]
async fn without_system_ca_certificates_preload_mode_starts_and_serves() {
    let dir = scratch_dir("noca").unwrap();
    // Three chunks: a root and three leaves for `refs -r` to list.
    let file = write_random_file(dir.path(), "p.bin", 600_000, 33).unwrap();
    let k = KuboNode::with_files(&[file]).await;
    let port = free_port();
    let proxy = Proxy::start(ProxyOptions {
        backends: vec![k.api_multiaddr.clone()],
        args: vec![
            "-p".into(),
            port.to_string(),
            "--preload-bind".into(),
            "127.0.0.1".into(),
        ],
        env: no_ca_env(dir.path()),
        ..Default::default()
    })
    .await
    .expect("preload mode starts without CA certificates");
    proxy.wait_backends(1, T).await.unwrap();
    // The preload HTTP client reaches kubo's RPC: a preload of content kubo holds.
    let root = &k.added["p.bin"];
    let resp = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/api/v0/refs?r=true&arg={root}"
        ))
        .timeout(T)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let refs = k.refs_recursive(root).await.unwrap();
    assert_eq!(refs.len(), 3);
    for r in &refs {
        assert!(body.contains(r.as_str()), "{r} missing from {body}");
    }
    // And the bitswap side serves too.
    let bytes = fetch_through(&proxy.tcp_addr, &k, root).await;
    assert!(bytes >= 600_000);
}

#[tokio::test]
async fn without_system_ca_certificates_only_an_https_watch_url_is_refused() {
    let dir = scratch_dir("noca-watch").unwrap();
    let env = no_ca_env(dir.path());
    // Plain http to the operator needs no roots: the proxy starts and waits for it.
    let proxy = Proxy::start(ProxyOptions {
        args: vec![
            "--backends-url".into(),
            format!("http://127.0.0.1:{}/watch", free_port()),
        ],
        env: env.clone(),
        ..Default::default()
    })
    .await
    .expect("a plain-http watch URL needs no CA certificates");
    assert!(proxy.peer_id.starts_with("12D3KooW"));
    drop(proxy);

    // https with no CA given and none in the system: a clear start-up error.
    let mut cmd = tokio::process::Command::new(binary("kitsune-proxy", false).unwrap());
    cmd.args(["-k", "key", "--metrics-addr", "127.0.0.1:0"])
        .args(["-l", "/ip4/127.0.0.1/tcp/0"])
        .args(["--backends-url", "https://127.0.0.1:1/watch"])
        .envs(env)
        .current_dir(dir.path())
        .kill_on_drop(true);
    let out = tokio::time::timeout(T, cmd.output())
        .await
        .expect("exits")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("https needs CA certificates") && err.contains("--backends-ca-file"),
        "{err}"
    );
}

#[tokio::test]
async fn key_paths_that_are_not_key_files_are_refused_at_once() {
    let dir = scratch_dir("keypaths").unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let rsa_1024 = dir.path().join("rsa-1024");
    std::fs::write(
        &rsa_1024,
        include_str!("../../common/testdata/rsa-1024.b64"),
    )
    .unwrap();
    for (key, expected) in [
        ("/dev/zero", "not a regular file but a device"),
        ("fifo", "not a regular file but a FIFO"),
        ("rsa-1024", "RSA keys under 2048 bits"),
    ] {
        // Each must exit with its error well within the timeout (a FIFO used to hang).
        let out = run_proxy_to_exit(&["-k", key, "-d", "/ip4/127.0.0.1/tcp/1"], dir.path(), T)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e:#}"));
        assert_eq!(out.status.code(), Some(1), "{key}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{key}: {err}");
    }
}
