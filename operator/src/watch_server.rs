//! The watch channel, server side: `GET /v1/backends/{namespace}/{name}` streams the
//! proxy's live backend set as NDJSON (`kitsune_common::watch`).
//!
//! - The first line is the full snapshot, sent at once, but only after the backend
//!   index has finished its first list: never an empty placeholder before the real set.
//! - Changes are coalesced: a `tokio::sync::watch` keeps only the latest snapshot, so a
//!   slow reader gets the newest full set, never a backlog.
//! - Heartbeats flow when nothing changes, so a proxy can tell silence from death.
//! - Auth: the proxy's projected ServiceAccount token (audience `kitsune-watch`) is
//!   checked with a TokenReview, and must name the KitsuneProxy's own ServiceAccount.
//!   No or bad token: 401. Someone else's ServiceAccount: 403. Unknown proxy: 404.
//!
//! Every operator replica serves watches (reads need no leadership).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kitsune_common::metrics::Registrar;
use kitsune_common::watch::{self, Snapshot, WatchEvent};
use kube::api::{Api, PostParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch as tokio_watch;

use crate::index::{ProxyKey, SharedIndex};
use crate::metrics::ProxyLabels;
use crate::resources::names;

/// Who a bearer token belongs to.
pub trait Authenticator: Send + Sync + 'static {
    /// `Ok(Some(username))` for a valid token, `Ok(None)` for an invalid one, `Err`
    /// when the check itself failed (the API server is unreachable).
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>, String>>;
}

/// The real check: a TokenReview for the watch audience.
pub struct TokenReviewer {
    pub client: kube::Client,
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![watch::TOKEN_AUDIENCE.to_owned()]),
                },
                ..Default::default()
            };
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let out = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| format!("TokenReview failed: {e}"))?;
            let status = out.status.unwrap_or_default();
            let audience_ok = status
                .audiences
                .as_ref()
                .is_none_or(|a| a.iter().any(|x| x == watch::TOKEN_AUDIENCE));
            if status.authenticated == Some(true) && audience_ok {
                Ok(status.user.and_then(|u| u.username))
            } else {
                Ok(None)
            }
        })
    }
}

#[derive(Clone, Default)]
pub struct WatchMetrics {
    pub subscribers: Gauge,
    pub snapshots: Counter,
    pub heartbeats: Counter,
    pub refused: Counter,
    /// Per KitsuneProxy (bounded by their number): the version last sent, and when the
    /// last line (snapshot or heartbeat) went out, so a stalled channel shows.
    pub version: Family<ProxyLabels, Gauge>,
    pub last_message: Family<ProxyLabels, Gauge>,
}

impl WatchMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Registrar::new(registry, "kitsune_operator_watch");
        Self {
            subscribers: r.add("subscribers", "Open watch streams"),
            snapshots: r.add("snapshots", "Snapshots sent"),
            heartbeats: r.add("heartbeats", "Heartbeats sent"),
            refused: r.add("refused", "Watch requests refused (401, 403, 404, 503)"),
            version: r.add(
                "snapshot_version",
                "Version of the last snapshot sent, by KitsuneProxy",
            ),
            last_message: r.add(
                "last_message_timestamp_seconds",
                "Unix time of the last line (snapshot or heartbeat) sent, by KitsuneProxy",
            ),
        }
    }
}

#[derive(Clone)]
pub struct WatchState {
    pub index: SharedIndex,
    /// True once the index has completed its first list.
    pub synced: tokio_watch::Receiver<bool>,
    pub auth: Arc<dyn Authenticator>,
    pub heartbeat: Duration,
    pub metrics: WatchMetrics,
    /// Ends every stream, so a graceful shutdown is not held open by watchers.
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub fn routes(state: WatchState) -> Router {
    Router::new()
        .route(
            &format!("{}/{{namespace}}/{{name}}", watch::WATCH_PATH_PREFIX),
            get(watch_handler),
        )
        .with_state(state)
}

fn refuse(s: &WatchState, code: StatusCode, why: &'static str) -> Response {
    s.metrics.refused.inc();
    (code, why).into_response()
}

async fn watch_handler(
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    State(s): State<WatchState>,
) -> Response {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return refuse(&s, StatusCode::UNAUTHORIZED, "a bearer token is required\n");
    };
    let user = match s.auth.authenticate(token).await {
        Ok(Some(user)) => user,
        Ok(None) => return refuse(&s, StatusCode::UNAUTHORIZED, "invalid token\n"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a watch token");
            return refuse(
                &s,
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the token now\n",
            );
        }
    };
    let expected = format!(
        "system:serviceaccount:{namespace}:{}",
        names::service_account(&name)
    );
    if user != expected {
        tracing::warn!(%namespace, %name, %user, "watch refused: not this proxy's ServiceAccount");
        return refuse(
            &s,
            StatusCode::FORBIDDEN,
            "this ServiceAccount may not watch that proxy\n",
        );
    }
    let labels = ProxyLabels {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let key = ProxyKey::new(namespace, name);
    let Some(rx) = s.index.read().expect("index lock").subscribe(&key) else {
        return refuse(&s, StatusCode::NOT_FOUND, "no such KitsuneProxy\n");
    };
    let stream = futures::stream::unfold(Stream::new(labels, rx, &s), |mut st| async move {
        let line = st.next_line().await?;
        Some((Ok::<Bytes, Infallible>(line), st))
    });
    (
        [
            (header::CONTENT_TYPE, watch::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// One subscriber's stream state.
struct Stream {
    labels: ProxyLabels,
    rx: tokio_watch::Receiver<Snapshot>,
    synced: tokio_watch::Receiver<bool>,
    heartbeat: Duration,
    metrics: WatchMetrics,
    shutdown: tokio_util::sync::CancellationToken,
    sent_first: bool,
    version: u64,
    _subscribed: Subscribed,
}

/// Counts the subscriber for as long as its stream lives.
struct Subscribed(Gauge);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Stream {
    /// A stream of `rx` for the proxy `labels` names, paced and ended as `s` says.
    fn new(labels: ProxyLabels, rx: tokio_watch::Receiver<Snapshot>, s: &WatchState) -> Self {
        s.metrics.subscribers.inc();
        Self {
            labels,
            rx,
            synced: s.synced.clone(),
            heartbeat: s.heartbeat,
            metrics: s.metrics.clone(),
            shutdown: s.shutdown.clone(),
            sent_first: false,
            version: 0,
            _subscribed: Subscribed(s.metrics.subscribers.clone()),
        }
    }

    /// The next NDJSON line, or `None` to end the stream (the proxy was deleted).
    async fn next_line(&mut self) -> Option<Bytes> {
        let shutdown = self.shutdown.clone();
        let line = tokio::select! {
            line = self.next_event() => line,
            _ = shutdown.cancelled() => None,
        }?;
        let now = kitsune_common::clock::unix_now().as_secs();
        self.metrics
            .last_message
            .get_or_create(&self.labels)
            .set(i64::try_from(now).unwrap_or(i64::MAX));
        Some(line)
    }

    async fn next_event(&mut self) -> Option<Bytes> {
        if !self.sent_first {
            // Wait for the real set; heartbeats are not sent before it either.
            self.synced.wait_for(|s| *s).await.ok()?;
            self.sent_first = true;
            return Some(self.snapshot());
        }
        tokio::select! {
            changed = self.rx.changed() => {
                changed.ok()?;
                Some(self.snapshot())
            }
            _ = tokio::time::sleep(self.heartbeat) => {
                self.metrics.heartbeats.inc();
                Some(line(&WatchEvent::Heartbeat { version: self.version }))
            }
        }
    }

    fn snapshot(&mut self) -> Bytes {
        let snap = self.rx.borrow_and_update().clone();
        self.version = snap.version;
        self.metrics.snapshots.inc();
        self.metrics
            .version
            .get_or_create(&self.labels)
            .set(i64::try_from(snap.version).unwrap_or(i64::MAX));
        line(&WatchEvent::Snapshot(snap))
    }
}

fn line(event: &WatchEvent) -> Bytes {
    let mut v = serde_json::to_vec(event).expect("watch events serialize");
    v.push(b'\n');
    Bytes::from(v)
}

#[cfg(test)]
mod tests;
