//! The shared port as the public face: `--http-port` without preload, TLS on it (a test
//! CA, a rotated certificate), HTTP/1.1, HTTP/2 over TLS and h2c on one port, a real
//! Helia 7 client over `wss`, and `--announce`. Real `kitsune-proxy` and kubo, loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kitsune_e2e::pki::{ServerCert, TestCa, install_tls_files};
use kitsune_e2e::{
    ChildProcess, HeliaOptions, KuboNode, Proxy, ProxyOptions, binary, free_port, helia_fetch_with,
    random_bytes, run_proxy_to_exit, scratch_dir, write_random_file,
};
use libp2p::{Multiaddr, identify};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const MIB: usize = 1 << 20;
const T: Duration = Duration::from_secs(120);

/// A proxy serving the shared port `port` on 127.0.0.1 without preload, with TLS from
/// `tls` (certificate, key) when given.
async fn shared_port_proxy(
    backends: &[&KuboNode],
    port: u16,
    tls: Option<(&Path, &Path)>,
    extra: &[&str],
) -> Proxy {
    let mut args: Vec<String> = vec![
        "--http-port".into(),
        port.to_string(),
        "--preload-bind".into(),
        "127.0.0.1".into(),
    ];
    if let Some((cert, key)) = tls {
        args.extend([
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    // No backend is needed for the HTTP checks: an address nothing listens on.
    let backends = if backends.is_empty() {
        vec![format!("/ip4/127.0.0.1/tcp/{}", free_port())]
    } else {
        backends.iter().map(|k| k.api_multiaddr.clone()).collect()
    };
    Proxy::start(ProxyOptions {
        backends,
        args,
        ..Default::default()
    })
    .await
    .expect("proxy starts")
}

/// A TLS connection to 127.0.0.1:`port` trusting only `cas`, offering `alpn`.
async fn tls_connect(port: u16, cas: &[&str], alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake with the test CA")
}

/// The certificate the server showed on `tls`.
fn shown(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

/// One GET over `io` with HTTP/2 (`h2`) or HTTP/1.1: the status and the version the
/// response came in.
async fn get<S>(io: S, h2: bool, scheme: &str, path: &str) -> (StatusCode, Version)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let req = Request::get(format!("{scheme}://127.0.0.1{path}"))
        .header(hyper::header::HOST, "127.0.0.1")
        .body(String::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("an HTTP/2 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("an HTTP/2 response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("an HTTP/1.1 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("an HTTP/1.1 response")
    };
    (resp.status(), resp.version())
}

#[tokio::test]
async fn http1_h2_and_h2c_answer_on_the_shared_port_with_and_without_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = scratch_dir("h2").unwrap();
    let ca = TestCa::new().unwrap();
    let (crt, key) = install_tls_files(dir.path(), &ca.server_cert().unwrap()).unwrap();
    let port = free_port();
    let proxy = shared_port_proxy(&[], port, Some((&crt, &key)), &[]).await;
    let out = proxy.proc.stdout();
    let peer = &proxy.peer_id;
    assert!(
        out.contains(&format!(
            "Listening on /ip4/127.0.0.1/tcp/{port}/tls/ws/p2p/{peer}"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Serving HTTP on /ip4/127.0.0.1/tcp/{port}/tls/http"
        )),
        "{out}"
    );
    let ca_pem = ca.pem();

    // TLS, ALPN h2: HTTP/2. No feature serves /anything: 404, whatever the protocol.
    let tls = tls_connect(port, &[&ca_pem], &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let got = get(tls, true, "https", "/anything").await;
    assert_eq!(got, (StatusCode::NOT_FOUND, Version::HTTP_2));

    // TLS, ALPN http/1.1, and TLS without ALPN: HTTP/1.1.
    let tls = tls_connect(port, &[&ca_pem], &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let got = get(tls, false, "https", "/anything").await;
    assert_eq!(got, (StatusCode::NOT_FOUND, Version::HTTP_11));
    let tls = tls_connect(port, &[&ca_pem], &[]).await;
    let got = get(tls, false, "https", "/api/v0/refs").await;
    assert_eq!(
        got,
        (StatusCode::NOT_FOUND, Version::HTTP_11),
        "no refs without preload"
    );

    // Plaintext on the same port: HTTP/1.1, and HTTP/2 with prior knowledge (h2c).
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let got = get(tcp, false, "http", "/anything").await;
    assert_eq!(got, (StatusCode::NOT_FOUND, Version::HTTP_11));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let got = get(tcp, true, "http", "/anything").await;
    assert_eq!(got, (StatusCode::NOT_FOUND, Version::HTTP_2));
}

#[tokio::test]
async fn preload_routes_answer_over_h2_when_both_flags_name_the_port() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = scratch_dir("h2p").unwrap();
    let ca = TestCa::new().unwrap();
    let (crt, key) = install_tls_files(dir.path(), &ca.server_cert().unwrap()).unwrap();
    let port = free_port();
    let p = port.to_string();
    let _proxy = shared_port_proxy(&[], port, Some((&crt, &key)), &["-p", &p]).await;
    // The refs route is there (a call without `arg` is kubo's 400), over HTTP/2 + TLS.
    let tls = tls_connect(port, &[&ca.pem()], &[b"h2"]).await;
    let got = get(tls, true, "https", "/api/v0/refs").await;
    assert_eq!(got, (StatusCode::BAD_REQUEST, Version::HTTP_2));
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_without_a_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = scratch_dir("rotate").unwrap();
    let (ca_a, ca_b) = (TestCa::new().unwrap(), TestCa::new().unwrap());
    let (cert_a, cert_b): (ServerCert, ServerCert) =
        (ca_a.server_cert().unwrap(), ca_b.server_cert().unwrap());
    let (crt, key) = install_tls_files(dir.path(), &cert_a).unwrap();
    let port = free_port();
    let mut proxy = shared_port_proxy(&[], port, Some((&crt, &key)), &[]).await;
    let pid = proxy.proc.pid();
    let both = [ca_a.pem(), ca_b.pem()];
    let both: Vec<&str> = both.iter().map(String::as_str).collect();

    let before = tls_connect(port, &both, &[b"http/1.1"]).await;
    assert!(
        shown(&before) == cert_a.der,
        "the first certificate is served"
    );

    install_tls_files(dir.path(), &cert_b).unwrap();
    // The files are looked at again at most every RELOAD_CHECK (5 s), on a handshake.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tls = tls_connect(port, &both, &[b"http/1.1"]).await;
        if shown(&tls) == cert_b.der {
            break;
        }
        assert!(shown(&tls) == cert_a.der, "only the two certificates exist");
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not served in 30 s\n{}",
            proxy.proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(proxy.proc.is_running(), "no restart");
    assert_eq!(proxy.proc.pid(), pid);
    // The connection made before the rotation still works.
    let got = get(before, false, "https", "/x").await;
    assert_eq!(got.0, StatusCode::NOT_FOUND);
    // A client trusting only the old CA no longer gets through.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_a.pem().as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let old_only = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await;
    assert!(old_only.is_err(), "the old certificate is gone");
}

#[tokio::test]
async fn helia_fetches_byte_identical_over_wss_trusting_the_test_ca() {
    let dir = scratch_dir("wss").unwrap();
    let file = write_random_file(dir.path(), "w.bin", 4 * MIB, 161).unwrap();
    let k = KuboNode::with_files(&[file]).await;
    let ca = TestCa::new().unwrap();
    let (crt, key) = install_tls_files(dir.path(), &ca.server_cert().unwrap()).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let port = free_port();
    let proxy = shared_port_proxy(&[&k], port, Some((&crt, &key)), &[]).await;
    proxy.wait_backends(1, T).await.unwrap();
    let wss = format!("/ip4/127.0.0.1/tcp/{port}/tls/ws/p2p/{}", proxy.peer_id);
    assert!(proxy.proc.stdout().contains(&wss));

    let opts = HeliaOptions {
        timeout: T,
        extra_ca: Some(ca_file),
        ..Default::default()
    };
    let got = helia_fetch_with(&wss, &k.added["w.bin"], &opts)
        .await
        .unwrap();
    assert!(got.bytes == random_bytes(4 * MIB, 161), "differs over wss");
    assert_eq!(got.own.peer.as_deref(), Some(proxy.peer_id.as_str()));
    let remote = got.own.remote_addr.unwrap_or_default();
    assert!(
        remote.contains("/tls/ws") || remote.contains("/wss"),
        "{remote}"
    );

    // Without the CA the handshake is refused: the client really checked it.
    let opts = HeliaOptions {
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let r = kitsune_e2e::helia_run(&wss, &k.added["w.bin"], &opts)
        .await
        .unwrap();
    assert!(!r.ok, "a client not trusting the CA must fail");
}

/// The proxy's binary started by hand: `--announce` replaces the start-up lines the
/// harness's `Proxy` waits for. Returns it, its peer ID and its stdout once `want`
/// start-up lines have been printed.
async fn start_raw(args: &[String], want: usize) -> (ChildProcess, tempfile::TempDir, String) {
    let dir = scratch_dir("announce").unwrap();
    let mut cmd = tokio::process::Command::new(binary("kitsune-proxy", false).unwrap());
    cmd.arg("-k")
        .arg(dir.path().join("key"))
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["-d", &format!("/ip4/127.0.0.1/tcp/{}", free_port())])
        .args(args);
    let mut proc = ChildProcess::spawn("kitsune-proxy", cmd, dir.path()).unwrap();
    let started = Instant::now();
    loop {
        let out = proc.stdout();
        if out
            .lines()
            .filter(|l| l.starts_with("Listening on "))
            .count()
            >= want
        {
            let peer = out
                .lines()
                .find_map(|l| l.strip_prefix("Peer ID: "))
                .expect("a peer ID line")
                .to_owned();
            return (proc, dir, peer);
        }
        assert!(proc.try_wait().is_none(), "exited\n{}", proc.log_tail(20));
        assert!(started.elapsed() < T, "no start\n{}", proc.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn identify_shows_only_the_announced_addresses() {
    let (tcp, ws, shared) = (free_port(), free_port(), free_port());
    let announced: Vec<Multiaddr> = vec![
        "/dns4/ipfs.example.com/tcp/443/tls/ws".parse().unwrap(),
        "/dns4/ipfs.example.com/tcp/443/tls/http".parse().unwrap(),
        "/ip4/203.0.113.7/udp/4001/quic-v1".parse().unwrap(),
    ];
    let mut args: Vec<String> = vec![
        "-l".into(),
        format!("/ip4/127.0.0.1/tcp/{tcp}"),
        "-w".into(),
        format!("/ip4/127.0.0.1/tcp/{ws}"),
        "--http-port".into(),
        shared.to_string(),
        "--preload-bind".into(),
        "127.0.0.1".into(),
    ];
    for a in &announced {
        args.extend(["--announce".into(), a.to_string()]);
    }
    let (mut proc, _dir, peer) = start_raw(&args, announced.len()).await;

    // The start-up lines name the announced addresses, and nothing it listens on.
    let out = proc.stdout();
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Listening on "))
        .collect();
    let expected: Vec<String> = announced
        .iter()
        .map(|a| format!("{a}/p2p/{peer}"))
        .collect();
    assert_eq!(lines, expected, "{out}");
    assert!(!out.contains("127.0.0.1"), "{out}");

    // A libp2p client's identify: exactly the announced addresses. Wait for the TCP
    // listener first (the lines above come before it is bound).
    let dial: Multiaddr = format!("/ip4/127.0.0.1/tcp/{tcp}/p2p/{peer}")
        .parse()
        .unwrap();
    let deadline = Instant::now() + T;
    while TcpStream::connect(("127.0.0.1", tcp)).await.is_err() {
        assert!(Instant::now() < deadline, "{}", proc.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = kitsune_e2e::tcp_swarm(|key| {
        identify::Behaviour::new(identify::Config::new("ipfs/0.1.0".into(), key.public()))
    });
    client.dial(dial).unwrap();
    let info = tokio::time::timeout(T, async {
        loop {
            if let libp2p::swarm::SwarmEvent::Behaviour(identify::Event::Received {
                info, ..
            }) = client.select_next_some().await
            {
                return info;
            }
        }
    })
    .await
    .expect("identify arrives");
    let mut got = info.listen_addrs.clone();
    let mut want = announced.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "identify shows exactly the announced addresses");
    assert!(proc.is_running());
}

#[tokio::test]
async fn unusable_tls_files_and_conflicting_ports_are_clear_start_up_errors() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = scratch_dir("badtls").unwrap();
    let (a, b) = (TestCa::new().unwrap(), TestCa::new().unwrap());
    let (crt, key) = install_tls_files(dir.path(), &a.server_cert().unwrap()).unwrap();
    let port = free_port().to_string();
    let key_file = dir.path().join("id").display().to_string();
    let metrics = format!("127.0.0.1:{}", free_port());
    let run = |tls_cert: String, tls_key: String, extra: Vec<String>| {
        let dir = dir.path().to_owned();
        let mut args: Vec<String> = vec![
            "-k".into(),
            key_file.clone(),
            "-d".into(),
            "/ip4/127.0.0.1/tcp/1".into(),
            "-l".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--metrics-addr".into(),
            metrics.clone(),
            "--http-port".into(),
            port.clone(),
            "--preload-bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            tls_cert,
            "--tls-key-file".into(),
            tls_key,
        ];
        args.extend(extra);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run_proxy_to_exit(&args, &dir, Duration::from_secs(60))
                .await
                .unwrap();
            assert!(!out.status.success());
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    let crt_s = crt.display().to_string();
    let key_s = key.display().to_string();

    let missing = dir.path().join("missing.crt").display().to_string();
    let e = run(missing, key_s.clone(), vec![]).await;
    assert!(
        e.contains("TLS certificate") && e.contains("missing.crt"),
        "{e}"
    );

    // A key that does not belong to the certificate.
    let other = dir.path().join("other.key");
    std::fs::write(&other, b.server_cert().unwrap().key_pem).unwrap();
    let e = run(crt_s.clone(), other.display().to_string(), vec![]).await;
    assert!(e.contains("does not fit"), "{e}");

    // Not a key at all: the file is named, its contents are not repeated.
    let junk = dir.path().join("junk.key");
    std::fs::write(&junk, "secret-ish text, not PEM\n").unwrap();
    let e = run(crt_s.clone(), junk.display().to_string(), vec![]).await;
    assert!(e.contains("junk.key") && !e.contains("secret-ish"), "{e}");

    // -p and --http-port name one port: two numbers are refused.
    let e = run(crt_s, key_s, vec!["-p".into(), free_port().to_string()]).await;
    assert!(e.contains("--http-port") && e.contains("differ"), "{e}");
}

/// An HTTP/1.1 connection to the plaintext port that has had one answer (so the
/// proxy has accepted and counted it), or `None` when the proxy closed it unanswered.
async fn answered_connection(port: u16) -> Option<hyper::client::conn::http1::SendRequest<String>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get("/x")
        .header(hyper::header::HOST, "127.0.0.1")
        .body(String::new())
        .unwrap();
    let resp = send.send_request(req).await.ok()?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    Some(send)
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_closed_unanswered() {
    let port = free_port();
    let _proxy = shared_port_proxy(&[], port, None, &["--max-connections-per-ip", "2"]).await;
    // Two kept-alive connections hold 127.0.0.1's two slots.
    let first = answered_connection(port)
        .await
        .expect("the first is served");
    let _second = answered_connection(port)
        .await
        .expect("the second is served");
    assert!(
        answered_connection(port).await.is_none(),
        "a third from the same address is closed"
    );
    // Closing one frees its slot (once the proxy sees the close).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered_connection(port).await.is_none() {
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
