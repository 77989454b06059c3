//! The watch channel over TLS: the operator's real HTTPS server (`kitsune_operator::tls`)
//! and the proxy's real watch client, with certificates made here by rcgen. TokenReview
//! is the only double.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use kitsune_operator::crd::KitsuneProxy;
use kitsune_operator::index::{Index, SharedIndex};
use kitsune_operator::tls::{self, TlsFiles};
use kitsune_operator::watch_server::{self, Authenticator, WatchMetrics, WatchState};
use kitsune_proxy::engine::{Command, Handle};
use kitsune_proxy::sources::watch::{self as client, WatchConfig, WatchStatus};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

struct OneToken;

impl Authenticator for OneToken {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            Ok((token == "good").then(|| "system:serviceaccount:ipfs:preload".to_string()))
        })
    }
}

/// A CA, and a server certificate for 127.0.0.1 / localhost signed by it (PEM).
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Writes the serving pair into `dir` as a rotation does: new files renamed over.
fn install(dir: &Path, p: &Pki) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    for (path, text) in [(&files.key, &p.key_pem), (&files.cert, &p.cert_pem)] {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    files
}

struct Server {
    addr: std::net::SocketAddr,
    _stop: tokio_util::sync::DropGuard,
    _synced: watch::Sender<bool>,
}

async fn https_server(files: TlsFiles) -> Server {
    let kp: KitsuneProxy =
        serde_yaml::from_str(include_str!("../../manifests/examples/kitsuneproxy.yaml")).unwrap();
    let index: SharedIndex = Arc::new(RwLock::new(Index::new(1)));
    index.write().unwrap().apply_proxy(&kp);
    let (synced, synced_rx) = watch::channel(true);
    let stop = CancellationToken::new();
    let app = watch_server::routes(WatchState {
        index,
        synced: synced_rx,
        auth: Arc::new(OneToken),
        heartbeat: Duration::from_secs(5),
        metrics: WatchMetrics::default(),
        shutdown: stop.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = tls::server_config(files).expect("usable certificate files");
    tokio::spawn(tls::serve(listener, app, cfg, stop.clone()));
    Server {
        addr,
        _stop: stop.drop_guard(),
        _synced: synced,
    }
}

/// The proxy's watch client trusting `ca_pem` (or the system roots when `None`) against
/// `url`: whether a snapshot arrives within `within`.
async fn snapshot_arrives(url: String, ca_pem: Option<&str>, within: Duration) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "good\n").unwrap();
    let mut cfg = WatchConfig::new(url, Some(token));
    cfg.ca_pem = ca_pem.map(str::to_owned);
    cfg.backoff = cfg
        .backoff
        .with_bounds(Duration::from_millis(50), Duration::from_millis(300))
        .unwrap();
    let (handle, mut commands): (Handle, mpsc::Receiver<Command>) = Handle::channel(4);
    let status = WatchStatus::default();
    let task = tokio::spawn(client::run(cfg, handle, status.clone()));
    let got = matches!(
        tokio::time::timeout(within, commands.recv()).await,
        Ok(Some(Command::SetBackends(_)))
    );
    assert_eq!(got, status.synced.load(Ordering::Relaxed));
    task.abort();
    got
}

fn url(s: &Server, scheme: &str) -> String {
    format!("{scheme}://{}/v1/backends/ipfs/preload", s.addr)
}

#[tokio::test]
async fn snapshots_flow_over_tls_only_to_clients_trusting_the_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pki(), pki());
    let s = https_server(install(dir.path(), &a)).await;
    let quick = Duration::from_millis(1500);

    assert!(
        snapshot_arrives(url(&s, "https"), Some(&a.ca_pem), Duration::from_secs(10)).await,
        "a client trusting the CA gets its snapshot"
    );
    assert!(
        !snapshot_arrives(url(&s, "https"), Some(&b.ca_pem), quick).await,
        "a client trusting another CA gets nothing"
    );
    assert!(
        !snapshot_arrives(url(&s, "http"), None, quick).await,
        "plain HTTP to the TLS port gets nothing"
    );

    // Rotation: a certificate from another CA replaces the files; once the server has
    // looked again (at most every RELOAD_CHECK, on a handshake), clients trusting the
    // new CA connect and those trusting only the old one no longer do.
    install(dir.path(), &b);
    let within = tls::RELOAD_CHECK + Duration::from_secs(10);
    assert!(
        snapshot_arrives(url(&s, "https"), Some(&b.ca_pem), within).await,
        "the rotated certificate is served"
    );
    assert!(!snapshot_arrives(url(&s, "https"), Some(&a.ca_pem), quick).await);
}

#[test]
fn unusable_files_are_clear_errors_naming_the_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pki(), pki());
    let mut files = install(dir.path(), &a);

    // A key that does not belong to the certificate.
    std::fs::write(&files.key, &b.key_pem).unwrap();
    let e = format!("{:#}", tls::server_config(files.clone()).unwrap_err());
    assert!(e.contains("does not fit"), "{e}");

    // Not a key at all: the message names the file and holds none of its contents.
    std::fs::write(&files.key, "not a key, secret-ish text\n").unwrap();
    let e = format!("{:#}", tls::server_config(files.clone()).unwrap_err());
    assert!(e.contains("tls.key") && !e.contains("secret-ish"), "{e}");

    files.cert = dir.path().join("missing.crt");
    let e = format!("{:#}", tls::server_config(files).unwrap_err());
    assert!(e.contains("missing.crt"), "{e}");

    std::fs::write(dir.path().join("ca.crt"), &a.ca_pem).unwrap();
    assert!(tls::read_ca_bundle(&dir.path().join("ca.crt")).is_ok());
    std::fs::write(dir.path().join("empty.crt"), "").unwrap();
    assert!(tls::read_ca_bundle(&dir.path().join("empty.crt")).is_err());
}
