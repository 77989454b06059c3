//! The KitsuneProxy reconciler: `Context`, `reconcile`, `error_policy`, and the
//! controller loop that wires them to the watches.
//!
//! A reconcile (on the elected replica only):
//! 1. checks the spec ([`crate::spec`]);
//! 2. resolves the identity (reads the Secret, or creates the generated one once);
//! 3. server-side applies the ServiceAccount, Deployment, Services and PDB, each with a
//!    controller owner reference (so deletion is Kubernetes' garbage collection: no
//!    finalizer, nothing to block a delete while the operator is down);
//! 4. writes status (peer ID, ready backends and replicas, conditions with
//!    `observedGeneration`) when it changed, and one event per condition transition.
//!
//! Bad input (spec, missing Secret, bad key) becomes `False` conditions plus an event, and
//! the reconcile returns an error, so [`error_policy`] requeues it with bounded
//! exponential backoff and counts it by reason. Nothing panics on user input.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kitsune_common::backoff::Backoff;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, ReflectHandle, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::conditions::{self, BACKENDS_AVAILABLE, Desired, IDENTITY_READY, READY, State};
use crate::crd::{KitsuneProxy, KitsuneProxyStatus};
use crate::index::{ProxyKey, SharedIndex};
use crate::informers::scoped_api;
use crate::leader::{self, Leadership};
use crate::metrics::Metrics;
use crate::resources::{self, BuildConfig, FIELD_MANAGER};
use crate::spec::{self, Selection, SpecPart, ValidSpec};
use crate::{Error, Result, identity};

/// How often a healthy KitsuneProxy is looked at again without any event.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Retries after a failure: 5 s doubling per consecutive failure, up to 5 min.
pub const RETRY: Backoff = Backoff::must(Backoff::doubling(
    Duration::from_secs(5),
    Duration::from_secs(300),
));
/// The longest retry delay.
pub const BACKOFF_MAX: Duration = RETRY.max();
/// The `reportingController` of the operator's events.
pub const REPORTER: &str = "kitsune-operator";

/// What every reconcile shares. Built once (the event recorder caches recent events to
/// aggregate repeats into series).
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub index: SharedIndex,
    pub leader: Leadership,
    /// True once the backend index is complete: before, status would report backends
    /// missing that are only not listed yet, so nothing is written.
    pub synced: tokio::sync::watch::Receiver<bool>,
    pub build: BuildConfig,
    /// Consecutive failures per KitsuneProxy, for the backoff.
    failures: Mutex<HashMap<ProxyKey, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        reporter_instance: Option<String>,
        metrics: Arc<Metrics>,
        index: SharedIndex,
        leader: Leadership,
        synced: tokio::sync::watch::Receiver<bool>,
        build: BuildConfig,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: REPORTER.into(),
                instance: reporter_instance,
            },
        );
        Self {
            client,
            recorder,
            metrics,
            index,
            leader,
            synced,
            build,
            failures: Mutex::default(),
        }
    }

    fn note_failure(&self, key: &ProxyKey) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn note_success(&self, key: &ProxyKey) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Called for each backend-set change the index reports: a proxy the index no longer
    /// knows was deleted, so its failure count goes (the map stays as large as the
    /// proxies that exist, and a re-created proxy starts its backoff afresh).
    pub fn index_changed(&self, key: &ProxyKey) {
        let gone = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot(key)
            .is_none();
        if gone {
            self.note_success(key);
        }
    }

    /// How many proxies have a failure count (for tests and debugging).
    pub fn failing(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// The longest wait before an identity Secret that was missing or bad is read again.
pub const SECRET_RECHECK: Duration = Duration::from_secs(10);

/// The retry delay after `failures` consecutive failures: 5 s, 10 s, 20 s … capped at 5 min.
pub fn backoff(failures: u32) -> Duration {
    RETRY.delay(failures.saturating_sub(1), 1.0)
}

fn key_of(kp: &KitsuneProxy) -> ProxyKey {
    ProxyKey::new(kp.namespace().unwrap_or_default(), kp.name_any())
}

/// Reconciles one KitsuneProxy.
#[instrument(skip_all, fields(namespace = kp.namespace().unwrap_or_default(), name = kp.name_any()))]
pub async fn reconcile(kp: Arc<KitsuneProxy>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    if kp.meta().deletion_timestamp.is_some() {
        // Owned children go with it (owner references). The generated identity Secret
        // stays on purpose, so re-creating the resource keeps the peer ID.
        debug!("being deleted; nothing to do");
        return Ok(Action::await_change());
    }
    if !ctx.leader.is_leader() || !*ctx.synced.borrow() {
        // Another replica writes, or the index is still listing; this one reconciles
        // everything once it is elected and synced.
        return Ok(Action::await_change());
    }
    let result = reconcile_as_leader(&kp, &ctx).await;
    if result.is_ok() {
        ctx.note_success(&key_of(&kp));
    }
    result
}

/// Requeues a failed reconcile with bounded exponential backoff, and counts the failure.
pub fn error_policy(kp: Arc<KitsuneProxy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.reason());
    let n = ctx.note_failure(&key_of(&kp));
    let mut delay = backoff(n);
    if matches!(error, Error::Identity(_)) {
        // The user fixes these by writing the Secret, and no Secret change wakes the
        // operator (it never lists Secrets: RBAC cannot grant a watch without their
        // data). So it looks again often instead of backing off for minutes.
        delay = delay.min(SECRET_RECHECK);
    }
    warn!(
        namespace = kp.namespace().unwrap_or_default(),
        name = kp.name_any(),
        reason = error.reason(),
        %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_as_leader(kp: &KitsuneProxy, ctx: &Context) -> Result<Action> {
    let ns = kp.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let old = kp.status.clone().unwrap_or_default();

    let valid: ValidSpec = match spec::validate(&kp.spec) {
        Ok(v) => v,
        Err(e) => {
            let unknown = |t| Desired::new(t, State::Unknown, "SpecInvalid", e.message.clone());
            let failed = |t| Desired::new(t, State::False, e.reason, e.message.clone());
            let desired = vec![
                if e.part == SpecPart::Identity {
                    failed(IDENTITY_READY)
                } else {
                    unknown(IDENTITY_READY)
                },
                if e.part == SpecPart::Backends {
                    failed(BACKENDS_AVAILABLE)
                } else {
                    unknown(BACKENDS_AVAILABLE)
                },
                failed(READY),
            ];
            write_status(ctx, kp, &old, old.clone(), &desired).await?;
            return Err(e.into());
        }
    };

    let ready_backends = ctx
        .index
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .ready_backends(&key_of(kp))
        .unwrap_or(0);
    let backends_cond = backends_condition(ctx, &ns, &valid, ready_backends);

    let resolved = match identity::resolve(&ctx.client, kp, &valid.identity).await {
        Ok(r) => r,
        Err(Error::Identity(e)) => {
            let mut status = old.clone();
            status.ready_backends = count(ready_backends);
            let desired = vec![
                Desired::new(IDENTITY_READY, State::False, e.reason, e.message.clone()),
                backends_cond,
                Desired::new(READY, State::False, e.reason, e.message.clone()),
            ];
            write_status(ctx, kp, &old, status, &desired).await?;
            return Err(e.into());
        }
        Err(e) => return Err(e),
    };
    let id = &resolved.identity;
    if resolved.generated {
        publish(
            ctx,
            kp,
            EventType::Normal,
            "IdentityGenerated",
            format!(
                "created Secret {:?} with a new Ed25519 key; peer ID {}",
                id.secret_name, id.peer_id
            ),
        )
        .await;
    }

    let client = &ctx.client;
    apply(client, &ns, &resources::service_account(kp)).await?;
    let deployment = apply(client, &ns, &resources::deployment(kp, id, &ctx.build)).await?;
    apply(client, &ns, &resources::service(kp)).await?;
    apply(client, &ns, &resources::metrics_service(kp)).await?;
    apply(client, &ns, &resources::pod_disruption_budget(kp)).await?;

    let dstatus = deployment.status.unwrap_or_default();
    let replicas = dstatus.replicas.unwrap_or(0);
    let ready_replicas = dstatus.ready_replicas.unwrap_or(0);
    let wanted = kp.spec.proxy.replicas;
    let ready = if ready_backends == 0 {
        Desired::new(
            READY,
            State::False,
            "NoReadyBackends",
            backends_cond.message.clone(),
        )
    } else if wanted == 0 {
        Desired::new(READY, State::False, "ScaledToZero", "proxy.replicas is 0")
    } else if ready_replicas == 0 {
        Desired::new(
            READY,
            State::False,
            "NoReadyReplicas",
            format!("0/{wanted} proxy pods ready"),
        )
    } else {
        Desired::new(
            READY,
            State::True,
            "Ready",
            format!("{ready_replicas}/{wanted} proxy pods ready, {ready_backends} backends"),
        )
    };
    let desired = vec![
        Desired::new(
            IDENTITY_READY,
            State::True,
            "KeyLoaded",
            format!("peer ID {} from Secret {:?}", id.peer_id, id.secret_name),
        ),
        backends_cond,
        ready,
    ];
    if let Some(prev) = old.peer_id.as_deref()
        && prev != id.peer_id
    {
        publish(
            ctx,
            kp,
            EventType::Normal,
            "PeerIdChanged",
            format!(
                "peer ID changed from {prev} to {}; proxy pods roll",
                id.peer_id
            ),
        )
        .await;
    }
    let status = KitsuneProxyStatus {
        observed_generation: None,
        peer_id: Some(id.peer_id.clone()),
        identity_secret: Some(id.secret_name.clone()),
        ready_backends: count(ready_backends),
        replicas,
        ready_replicas,
        conditions: vec![],
    };
    write_status(ctx, kp, &old, status, &desired).await?;
    Ok(Action::requeue(RESYNC))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn backends_condition(ctx: &Context, ns: &str, valid: &ValidSpec, ready: usize) -> Desired {
    let from = valid.backends.describe();
    if ready > 0 {
        return Desired::new(
            BACKENDS_AVAILABLE,
            State::True,
            "BackendsReady",
            format!("{ready} ready backends from {from}"),
        );
    }
    let message = match &valid.backends.selection {
        Selection::Service(svc)
            if !ctx
                .index
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .has_slices_for(ns, svc) =>
        {
            format!("no EndpointSlices found for Service {svc:?}")
        }
        Selection::Service(_) => format!("no ready, non-terminating endpoints in {from}"),
        Selection::Pods(_) => format!("no ready pods among {from}"),
    };
    Desired::new(BACKENDS_AVAILABLE, State::False, "NoReadyBackends", message)
}

/// Server-side applies one owned object and returns what the apiserver holds.
async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("name"))?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
}

/// Merges conditions into `status`, patches it if anything changed, and emits one
/// event per condition transition.
async fn write_status(
    ctx: &Context,
    kp: &KitsuneProxy,
    old: &KitsuneProxyStatus,
    mut status: KitsuneProxyStatus,
    desired: &[Desired],
) -> Result<()> {
    let generation = kp.metadata.generation;
    status.observed_generation = generation;
    status.conditions = conditions::merge(
        &old.conditions,
        desired,
        generation,
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    if status != *old {
        let api: Api<KitsuneProxy> =
            Api::namespaced(ctx.client.clone(), &kp.namespace().unwrap_or_default());
        let body = serde_json::json!({
            "apiVersion": KitsuneProxy::api_version(&()),
            "kind": KitsuneProxy::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch_status(&kp.name_any(), &params, &Patch::Apply(&body))
            .await?;
    }
    // One event per transition, except to Unknown (no news), and once per reason: the
    // `Ready` condition usually repeats the reason of the condition that failed.
    let mut sent: Vec<(EventType, &str)> = vec![];
    for c in conditions::transitions(&old.conditions, &status.conditions) {
        let type_ = match c.status.as_str() {
            "True" => EventType::Normal,
            "False" => EventType::Warning,
            _ => continue,
        };
        if sent.contains(&(type_, c.reason.as_str())) {
            continue;
        }
        sent.push((type_, c.reason.as_str()));
        let note = format!("{} is {}: {}", c.type_, c.status, c.message);
        publish(ctx, kp, type_, &c.reason, note).await;
    }
    Ok(())
}

/// Publishes an event; failures are logged, not fatal (events are best effort).
async fn publish(ctx: &Context, kp: &KitsuneProxy, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &kp.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    }
}

/// Runs the controller until `shutdown`: reconciles on KitsuneProxy changes (from the
/// shared reflector the informers drive: `store` and its `subscriber`), on changes of the
/// owned Deployments and Services, on backend-set changes from the index
/// (`index_changes`), and all at once whenever this replica becomes leader or its index
/// synced. With a `namespace`, only that namespace is watched.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    (store, subscriber): (Store<KitsuneProxy>, ReflectHandle<KitsuneProxy>),
    index_changes: impl Stream<Item = ProxyKey> + Send + 'static,
    shutdown: CancellationToken,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=kitsune-operator");
    let may_write =
        futures::stream::select(ctx.leader.acquisitions(), leader::rises(ctx.synced.clone()));
    Controller::for_shared_stream(subscriber, store)
        .owns(scoped_api::<Deployment>(client.clone(), ns), owned.clone())
        .owns(scoped_api::<Service>(client.clone(), ns), owned.clone())
        .owns(
            scoped_api::<ServiceAccount>(client.clone(), ns),
            owned.clone(),
        )
        .owns(scoped_api::<PodDisruptionBudget>(client, ns), owned)
        .reconcile_on(index_changes.map({
            let ctx = ctx.clone();
            move |k| {
                ctx.index_changed(&k);
                ObjectRef::new(&k.name).within(&k.namespace)
            }
        }))
        .reconcile_all_on(may_write)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                Err(e) => debug!(error = %e, "controller: reconcile not completed"),
            }
        })
        .await;
    info!("controller stopped");
}

#[cfg(test)]
mod tests;
