//! The operator's real watch server (`kitsune_operator::watch_server`) in process, with
//! its real backend index fed EndpointSlices that name harness kubo nodes. The only
//! double is TokenReview: there is no API server here, so one fixed token stands for
//! the proxy's ServiceAccount.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kitsune_operator::crd::KitsuneProxy;
use kitsune_operator::index::{Index, SharedIndex};
use kitsune_operator::watch_server::{self, Authenticator, WatchMetrics, WatchState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The KitsuneProxy every [`WatchServer`] serves (namespace `e2e`).
pub const NAMESPACE: &str = "e2e";
pub const NAME: &str = "kitsune";
/// The bearer token the server accepts as the proxy's ServiceAccount.
pub const TOKEN: &str = "e2e-proxy-token";

/// One kubo backend as an EndpointSlice endpoint (loopback, its own ports).
#[derive(Clone, Debug)]
pub struct SliceBackend {
    pub pod: String,
    pub rpc_port: u16,
    pub swarm_port: u16,
}

impl From<&crate::KuboNode> for SliceBackend {
    fn from(k: &crate::KuboNode) -> Self {
        Self {
            pod: format!("kubo-{}", k.api_port),
            rpc_port: k.api_port,
            swarm_port: k.swarm_port,
        }
    }
}

struct OneToken;

impl Authenticator for OneToken {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            Ok((token == TOKEN).then(|| format!("system:serviceaccount:{NAMESPACE}:{NAME}")))
        })
    }
}

/// A running watch server. Dropping it stops the server.
pub struct WatchServer {
    pub addr: SocketAddr,
    index: SharedIndex,
    slices: Vec<String>,
    stop: CancellationToken,
    _synced: watch::Sender<bool>,
}

impl WatchServer {
    /// Serves on `addr` (or a fresh loopback port), versions starting after
    /// `first_version`, heartbeats every `heartbeat`.
    pub async fn start(
        addr: Option<SocketAddr>,
        first_version: u64,
        heartbeat: Duration,
    ) -> Result<Self> {
        let index: SharedIndex = Arc::new(RwLock::new(Index::new(first_version)));
        index
            .write()
            .expect("index lock")
            .apply_proxy(&kitsune_proxy());
        let (synced, synced_rx) = watch::channel(true);
        let stop = CancellationToken::new();
        let app = watch_server::routes(WatchState {
            index: index.clone(),
            synced: synced_rx,
            auth: Arc::new(OneToken),
            heartbeat,
            metrics: WatchMetrics::default(),
            shutdown: stop.clone(),
        });
        let listener = tokio::net::TcpListener::bind(
            addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await?;
        let addr = listener.local_addr()?;
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        Ok(Self {
            addr,
            index,
            slices: Vec::new(),
            stop,
            _synced: synced,
        })
    }

    /// The proxy's `--backends-url`.
    pub fn url(&self) -> String {
        format!(
            "http://{}{}",
            self.addr,
            kitsune_common::watch::watch_path(NAMESPACE, NAME)
        )
    }

    /// Writes the token to `dir/token` for `--backends-token-file`.
    pub fn write_token(dir: &Path) -> Result<PathBuf> {
        let path = dir.join("token");
        std::fs::write(&path, format!("{TOKEN}\n"))?;
        Ok(path)
    }

    /// Makes `backends` the live set, as the informers would on EndpointSlice events:
    /// one slice per backend (each kubo has its own ports), stale slices deleted.
    pub fn set_backends(&mut self, backends: &[SliceBackend]) {
        let mut index = self.index.write().expect("index lock");
        let names: Vec<String> = backends.iter().map(|b| b.pod.clone()).collect();
        for old in self.slices.iter().filter(|s| !names.contains(s)) {
            index.delete_slice(NAMESPACE, old);
        }
        for b in backends {
            index.apply_slice(&slice(b));
        }
        self.slices = names;
    }

    /// The version of the snapshot the server would send now.
    pub fn version(&self) -> u64 {
        let key = kitsune_operator::index::ProxyKey::new(NAMESPACE, NAME);
        self.index
            .read()
            .expect("index lock")
            .snapshot(&key)
            .map_or(0, |s| s.version)
    }

    /// Stops serving and ends every open stream (the operator going away).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for WatchServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn kitsune_proxy() -> KitsuneProxy {
    let yaml = format!(
        "apiVersion: kitsune.dev/v1alpha1\nkind: KitsuneProxy\n\
         metadata: {{name: {NAME}, namespace: {NAMESPACE}}}\n\
         spec:\n  identity: {{generate: true}}\n\
         \x20 backends: {{serviceName: kubo, rpcPort: rpc, swarmPort: swarm}}\n"
    );
    serde_yaml::from_str(&yaml).expect("a valid KitsuneProxy")
}

/// The EndpointSlice of one ready backend on 127.0.0.1, ports named as the spec says
/// (written as its manifest, like [`kitsune_proxy`]).
fn slice(b: &SliceBackend) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": b.pod,
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": "kubo"},
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": ["127.0.0.1"],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "targetRef": {"kind": "Pod", "name": b.pod},
        }],
        "ports": [
            {"name": "rpc", "port": b.rpc_port},
            {"name": "swarm", "port": b.swarm_port},
        ],
    }))
    .expect("a valid EndpointSlice")
}
