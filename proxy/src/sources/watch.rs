//! `--backends-url`: the backend set streamed by the operator (the watch channel).
//!
//! Semantics follow linkerd's destination stream and Envoy's EDS: every message is the
//! full set with a version, so a (re)connect simply replaces what we had; while the
//! operator is away the last set stays in force; limits on connecting, on silence
//! (missed heartbeats) and on a stream's lifetime turn every failure into a reconnect
//! with jittered exponential backoff.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kitsune_common::backoff::Backoff;
use kitsune_common::clock::unix_now;
use kitsune_common::metrics::Registrar;
use kitsune_common::throttle::Throttle;
use kitsune_common::watch::{self, Snapshot, WatchEvent};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use crate::backend::BackendSpec;
use crate::backend::spec::Host;
use crate::engine::Handle;

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub url: String,
    /// A file holding the bearer token (a projected ServiceAccount token); re-read on
    /// every connect, since the kubelet rotates it.
    pub token_file: Option<PathBuf>,
    /// A PEM bundle of the CAs trusted for an https URL (only these); with neither this
    /// nor `ca_pem`, the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The same bundle given inline (the operator sets it in the pod's environment).
    pub ca_pem: Option<String>,
    pub connect_timeout: Duration,
    /// No line (snapshot or heartbeat) for this long means the stream is dead.
    pub idle_timeout: Duration,
    /// Reconnect after this long anyway, so a stream never outlives a rebalanced
    /// operator replica or an expired token.
    pub max_lifetime: Duration,
    /// Between reconnects: exponential in the consecutive failures, jittered by half.
    pub backoff: Backoff,
    /// Backends one snapshot may name; a bigger snapshot is refused and the last set
    /// kept (each backend costs a resolve loop and a connection).
    pub max_backends: usize,
}

/// The default of `max_backends`: far more kubo nodes than one proxy fleet fronts.
pub const MAX_BACKENDS: usize = 1024;

/// At most one warning a minute for what the operator or the network can repeat.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// 200 ms doubling to 30 s, each delay scaled into [0.5, 1.0] of itself.
pub const RECONNECT: Backoff = Backoff::must(Backoff::new(
    Duration::from_millis(200),
    Duration::from_secs(30),
    2.0,
    0.5,
));

impl WatchConfig {
    pub fn new(url: String, token_file: Option<PathBuf>) -> Self {
        Self {
            url,
            token_file,
            ca_file: None,
            ca_pem: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(30 * 60),
            backoff: RECONNECT,
            max_backends: MAX_BACKENDS,
        }
    }
}

/// The client's metrics and what readiness needs.
#[derive(Clone, Default)]
pub struct WatchStatus {
    /// Set once the first snapshot has been applied; never cleared.
    pub synced: Arc<AtomicBool>,
    pub version: Gauge,
    pub last_message: Gauge,
    pub connected: Gauge,
    pub reconnects: Counter,
    /// Snapshots refused for naming more than `max_backends` backends.
    pub refused: Counter,
}

impl WatchStatus {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Registrar::new(registry, "kitsune_watch");
        Self {
            synced: Arc::default(),
            version: r.add(
                "snapshot_version",
                "Version of the last backend snapshot applied",
            ),
            last_message: r.add(
                "last_message_timestamp_seconds",
                "Unix time of the last line (snapshot or heartbeat) from the operator",
            ),
            connected: r.add("connected", "1 while the watch stream is open"),
            reconnects: r.add("reconnects", "Watch streams that ended and were retried"),
            refused: r.add(
                "snapshots_refused",
                "Backend snapshots refused for naming more backends than --max-backends",
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("reading the token file: {0}")]
    Token(std::io::Error),
    #[error("connecting: {0}")]
    Connect(String),
    #[error("the operator answered {0}")]
    Status(u16),
    #[error("no message for {0:?} (heartbeats missed)")]
    Idle(Duration),
    #[error("stream broken: {0}")]
    Stream(String),
    #[error("a line over {} bytes", watch::MAX_LINE_BYTES)]
    LineTooLong,
    #[error("a malformed line: {0}")]
    Malformed(String),
    #[error("a snapshot with an unusable backend: {0}")]
    BadBackend(String),
}

/// The HTTP client for `cfg`: plain HTTP (no TLS roots loaded), or HTTPS trusting only
/// the CAs of `cfg.ca_file` or `cfg.ca_pem` (rustls on ring) or, with neither, the
/// system's roots.
pub fn http_client(cfg: &WatchConfig) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context as _;
    let mut builder = reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .no_proxy();
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the CA bundle {}", path.display()))?;
        let tls = tls_config(&pem).with_context(|| format!("the CA bundle {}", path.display()))?;
        builder = builder.tls_backend_preconfigured(tls);
    } else if let Some(pem) = &cfg.ca_pem {
        let tls = tls_config(pem.as_bytes()).context("the inline CA bundle")?;
        builder = builder.tls_backend_preconfigured(tls);
    } else if crate::http_client::is_https(&cfg.url) {
        return crate::http_client::with_system_roots(builder);
    } else {
        builder = crate::http_client::without_roots(builder);
    }
    Ok(builder.build()?)
}

/// A rustls client configuration (ring) that trusts exactly the CAs of a PEM bundle.
pub fn tls_config(pem: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context as _;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.context("a malformed PEM block")?)
            .context("an unusable CA certificate")?;
    }
    anyhow::ensure!(!roots.is_empty(), "no CA certificate in it");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Runs until the engine stops.
pub async fn run(cfg: WatchConfig, engine: Handle, status: WatchStatus) {
    match http_client(&cfg) {
        Ok(http) => run_with(http, cfg, engine, status).await,
        Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot build the watch client"),
    }
}

/// [`run`] with a client built by [`http_client`].
pub async fn run_with(
    http: reqwest::Client,
    cfg: WatchConfig,
    engine: Handle,
    status: WatchStatus,
) {
    let mut failures = 0u32;
    let mut ended = Throttle::new(WARN_EVERY);
    let mut refused = Throttle::new(WARN_EVERY);
    loop {
        let started = Instant::now();
        let result = session(&http, &cfg, &engine, &status, &mut refused).await;
        status.connected.set(0);
        match result {
            Ok(()) => tracing::debug!("watch stream reached its lifetime; reconnecting"),
            Err(e) => match ended.allow(Instant::now()) {
                Some(held_back) => {
                    tracing::warn!(url = %cfg.url, error = %e, held_back, "watch stream ended; keeping the last backend set")
                }
                None => tracing::debug!(url = %cfg.url, error = %e, "watch stream ended"),
            },
        }
        if engine.is_closed() {
            return;
        }
        status.reconnects.inc();
        // A stream that lived a while was healthy: start the backoff afresh.
        if started.elapsed() > cfg.idle_timeout {
            failures = 0;
        }
        let delay = cfg.backoff.delay(failures, rand::random());
        failures = failures.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

async fn session(
    http: &reqwest::Client,
    cfg: &WatchConfig,
    engine: &Handle,
    status: &WatchStatus,
    refused: &mut Throttle,
) -> Result<(), WatchError> {
    let mut req = http.get(&cfg.url).header("accept", watch::CONTENT_TYPE);
    if let Some(path) = &cfg.token_file {
        let token = std::fs::read_to_string(path).map_err(WatchError::Token)?;
        req = req.bearer_auth(token.trim());
    }
    let resp = tokio::time::timeout(cfg.connect_timeout, req.send())
        .await
        .map_err(|_| WatchError::Connect("timed out".into()))?
        .map_err(|e| WatchError::Connect(error_chain(&e.without_url())))?;
    if !resp.status().is_success() {
        return Err(WatchError::Status(resp.status().as_u16()));
    }
    status.connected.set(1);
    let deadline = Instant::now() + cfg.max_lifetime;
    let body = resp
        .bytes_stream()
        .map_err(|e| std::io::Error::other(e.without_url()));
    let mut lines = FramedRead::new(StreamReader::new(body), line_codec());
    let mut version: Option<u64> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let line = match tokio::time::timeout(cfg.idle_timeout.min(left), lines.next()).await {
            Err(_) if left <= cfg.idle_timeout => return Ok(()),
            Err(_) => return Err(WatchError::Idle(cfg.idle_timeout)),
            Ok(None) => return Err(WatchError::Stream("closed by the operator".into())),
            Ok(Some(Err(e))) => return Err(line_error(e)),
            Ok(Some(Ok(line))) => line,
        };
        if line.trim().is_empty() {
            continue;
        }
        status.last_message.set(unix_now().as_secs() as i64);
        match parse_line(line.as_bytes())? {
            WatchEvent::Heartbeat { .. } => {}
            WatchEvent::Snapshot(snap) => {
                // Within one stream versions only grow; a new stream (say, a
                // restarted operator) resets us to whatever it says.
                if version.is_some_and(|v| snap.version <= v) {
                    continue;
                }
                version = Some(snap.version);
                if snap.backends.len() > cfg.max_backends {
                    status.refused.inc();
                    if let Some(held_back) = refused.allow(Instant::now()) {
                        tracing::warn!(
                            version = snap.version,
                            backends = snap.backends.len(),
                            max = cfg.max_backends,
                            held_back,
                            "backend snapshot over --max-backends refused; keeping the last set"
                        );
                    }
                    continue;
                }
                let specs = to_specs(&snap)?;
                tracing::info!(
                    version = snap.version,
                    backends = specs.len(),
                    "backend snapshot applied"
                );
                engine
                    .set_backends(specs)
                    .await
                    .map_err(|e| WatchError::Stream(e.to_string()))?;
                status.version.set(snap.version as i64);
                status.synced.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// An error and its causes, `: `-joined (a TLS failure says why, not only "error
/// sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// One NDJSON line.
pub fn parse_line(line: &[u8]) -> Result<WatchEvent, WatchError> {
    serde_json::from_slice(line).map_err(|e| WatchError::Malformed(e.to_string()))
}

/// The backend specs a snapshot names.
pub fn to_specs(snap: &Snapshot) -> Result<Vec<BackendSpec>, WatchError> {
    let mut specs = Vec::with_capacity(snap.backends.len());
    for b in &snap.backends {
        let host = match b.address.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) if is_dns_name(&b.address) => Host::Dns4(b.address.clone()),
            Err(_) => return Err(WatchError::BadBackend(b.address.clone())),
        };
        if b.rpc_port == 0 {
            return Err(WatchError::BadBackend(format!("{}: port 0", b.address)));
        }
        specs.push(BackendSpec {
            host,
            rpc_port: b.rpc_port,
            swarm_port: b.swarm_port,
        });
    }
    specs.sort();
    specs.dedup();
    Ok(specs)
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// The stream's framing: NDJSON lines of at most the contract's bound (the codec
/// buffers no more than that while looking for a newline).
pub fn line_codec() -> LinesCodec {
    LinesCodec::new_with_max_length(watch::MAX_LINE_BYTES)
}

/// What a framing failure means for the stream.
pub fn line_error(e: LinesCodecError) -> WatchError {
    match e {
        LinesCodecError::MaxLineLengthExceeded => WatchError::LineTooLong,
        LinesCodecError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            WatchError::Malformed("a line that is not UTF-8".into())
        }
        LinesCodecError::Io(e) => WatchError::Stream(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kitsune_common::watch::Backend;

    #[test]
    fn lines_split_across_chunks_and_are_bounded() {
        use tokio_util::codec::Decoder;
        let mut codec = line_codec();
        let mut buf = bytes::BytesMut::from(&b"{\"type\":\"heart"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"beat\",\"version\":1}\n{\"a\":1}\n{");
        let first = codec.decode(&mut buf).unwrap().unwrap();
        assert!(matches!(
            parse_line(first.as_bytes()).unwrap(),
            WatchEvent::Heartbeat { version: 1 }
        ));
        let second = codec.decode(&mut buf).unwrap().unwrap();
        assert!(parse_line(second.as_bytes()).is_err());
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            None,
            "a partial line waits"
        );
        let mut huge = bytes::BytesMut::from(&vec![b'x'; watch::MAX_LINE_BYTES + 1][..]);
        let e = line_codec().decode(&mut huge).unwrap_err();
        assert!(matches!(line_error(e), WatchError::LineTooLong));
    }

    fn backend(address: &str, rpc_port: u16) -> Backend {
        Backend {
            address: address.into(),
            rpc_port,
            swarm_port: Some(4001),
            pod_name: Some("kubo-0".into()),
            zone: None,
        }
    }

    fn snapshot_line(version: u64, n: usize) -> String {
        let backends = (0..n)
            .map(|i| backend(&format!("10.0.{}.{}", i / 250, i % 250 + 1), 5001))
            .collect();
        let event = WatchEvent::Snapshot(Snapshot { version, backends });
        serde_json::to_string(&event).unwrap() + "\n"
    }

    /// A snapshot naming more backends than allowed is refused; the set before it
    /// stays, and a later snapshot within the bound applies.
    #[tokio::test]
    async fn a_snapshot_over_the_backend_cap_is_refused_and_the_last_set_kept() {
        let body = [
            snapshot_line(1, 2),
            snapshot_line(2, 3),
            snapshot_line(3, 1),
        ]
        .concat();
        let app = axum::Router::new().route("/w", axum::routing::get(move || async move { body }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/w", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let mut cfg = WatchConfig::new(url, None);
        cfg.max_backends = 2;
        let (engine, mut commands) = Handle::channel(16);
        let status = WatchStatus::default();
        let http = http_client(&cfg).unwrap();
        let mut throttle = Throttle::new(WARN_EVERY);
        let ended = session(&http, &cfg, &engine, &status, &mut throttle).await;
        assert!(matches!(ended, Err(WatchError::Stream(_))), "{ended:?}");
        drop(engine);
        let mut applied = Vec::new();
        while let Some(crate::engine::Command::SetBackends(specs)) = commands.recv().await {
            applied.push(specs.len());
        }
        assert_eq!(applied, [2, 1], "version 2 (3 backends) was never applied");
        assert_eq!(status.refused.get(), 1);
        assert_eq!(status.version.get(), 3);
    }

    #[test]
    fn snapshots_become_specs_and_bad_addresses_are_refused() {
        let snap = Snapshot {
            version: 3,
            backends: vec![
                backend("10.0.0.7", 5001),
                backend("fd00::7", 5001),
                backend("kubo-1.kubo", 5001),
            ],
        };
        let specs = to_specs(&snap).unwrap();
        assert_eq!(specs.len(), 3);
        assert!(specs.iter().all(|s| s.swarm_port == Some(4001)));
        assert!(specs.iter().any(|s| s.rpc_url() == "http://[fd00::7]:5001"));
        for bad in [
            backend("not a host", 5001),
            backend("10.0.0.7", 0),
            backend("", 5001),
        ] {
            let snap = Snapshot {
                version: 4,
                backends: vec![bad],
            };
            assert!(to_specs(&snap).is_err());
        }
    }
}
