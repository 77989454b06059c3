//! Feeds the backend index from three kinds of watch: KitsuneProxies, EndpointSlices
//! (those naming a Service) and Pods, one watch per label selector in use (in its
//! proxy's namespace, so no other Pod is watched; none at all when no proxy uses a
//! selector). Runs on every replica, leader or not, so every replica
//! can serve the watch channel. A relist (`Init` … `InitDone`) replaces one kind's state
//! atomically. Each backend-set change is forwarded so the controller can refresh status.
//!
//! The KitsuneProxy watch is the only one in the process: it runs through a shared
//! reflector ([`proxy_store`]) whose cache and event fan-out the controller uses instead
//! of a watch of its own, so each KitsuneProxy is listed and watched once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::channel::mpsc::Sender;
use futures::{SinkExt, StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::crd::KitsuneProxy;
use crate::index::{Changed, Index, PodSetKey, ProxyKey, SERVICE_NAME_LABEL, SharedIndex};
use crate::metrics::{Metrics, ProxyLabels};

/// One watch event of any of the three kinds.
// Each event is moved straight into the index; boxing the large Pod variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    Proxy(watcher::Event<KitsuneProxy>),
    Slice(watcher::Event<EndpointSlice>),
    Pod(PodSetKey, watcher::Event<Pod>),
}

/// A kind the index follows: how its live events and relists land there. `Set` names
/// which watch of the kind an event came from.
pub trait Indexed: Resource + Sized {
    type Set;
    fn apply(index: &mut Index, set: &Self::Set, obj: &Self) -> Changed;
    fn delete(index: &mut Index, set: &Self::Set, namespace: &str, name: &str) -> Changed;
    fn reset(index: &mut Index, set: &Self::Set, all: &[Self]) -> Changed;
}

impl Indexed for KitsuneProxy {
    type Set = ();
    fn apply(index: &mut Index, _: &(), obj: &Self) -> Changed {
        index.apply_proxy(obj)
    }
    fn delete(index: &mut Index, _: &(), namespace: &str, name: &str) -> Changed {
        index.delete_proxy(namespace, name)
    }
    fn reset(index: &mut Index, _: &(), all: &[Self]) -> Changed {
        index.reset_proxies(all)
    }
}

impl Indexed for EndpointSlice {
    type Set = ();
    fn apply(index: &mut Index, _: &(), obj: &Self) -> Changed {
        index.apply_slice(obj)
    }
    fn delete(index: &mut Index, _: &(), namespace: &str, name: &str) -> Changed {
        index.delete_slice(namespace, name)
    }
    fn reset(index: &mut Index, _: &(), all: &[Self]) -> Changed {
        index.reset_slices(all)
    }
}

impl Indexed for Pod {
    type Set = PodSetKey;
    fn apply(index: &mut Index, set: &PodSetKey, obj: &Self) -> Changed {
        index.apply_pod(set, obj)
    }
    fn delete(index: &mut Index, set: &PodSetKey, _: &str, name: &str) -> Changed {
        index.delete_pod(set, name)
    }
    fn reset(index: &mut Index, set: &PodSetKey, all: &[Self]) -> Changed {
        index.reset_pods(set, all)
    }
}

/// One watch's relist buffer, and whether its first list completed.
pub struct Relist<K> {
    buffer: Option<Vec<K>>,
    listed: bool,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Self {
            buffer: None,
            listed: false,
        }
    }
}

impl<K: Indexed> Relist<K> {
    /// Applies one event: live events at once, a relist (`Init` … `InitDone`) as one
    /// replacement when it completes.
    fn step(&mut self, index: &mut Index, set: &K::Set, event: watcher::Event<K>) -> Changed {
        use watcher::Event as E;
        match event {
            E::Init => {
                self.buffer = Some(vec![]);
                vec![]
            }
            E::InitApply(o) => {
                self.buffer.get_or_insert_with(Vec::new).push(o);
                vec![]
            }
            E::InitDone => {
                self.listed = true;
                K::reset(index, set, &self.buffer.take().unwrap_or_default())
            }
            E::Apply(o) => K::apply(index, set, &o),
            E::Delete(o) => {
                let ns = o.namespace().unwrap_or_default();
                K::delete(index, set, &ns, &o.name_any())
            }
        }
    }
}

/// Relist buffers, and which watches have completed their first list.
#[derive(Default)]
pub struct SyncState {
    proxies: Relist<KitsuneProxy>,
    slices: Relist<EndpointSlice>,
    pods: BTreeMap<PodSetKey, Relist<Pod>>,
}

impl SyncState {
    /// True once proxies and slices were listed, and every pod set the proxies use: only
    /// then is the index complete.
    pub fn synced(&self, index: &Index) -> bool {
        self.proxies.listed && self.slices.listed && index.pod_sets_listed()
    }
}

/// Applies one watch event to the index. Pure apart from the index itself.
pub fn apply(index: &mut Index, state: &mut SyncState, input: Input) -> Changed {
    match input {
        Input::Proxy(ev) => state.proxies.step(index, &(), ev),
        Input::Slice(ev) => state.slices.step(index, &(), ev),
        Input::Pod(set, ev) => {
            let relist = state.pods.entry(set.clone()).or_default();
            relist.step(index, &set, ev)
        }
    }
}

/// The running Pod watches, one per pod set in use; each stops when its token is cancelled.
#[derive(Default)]
pub struct PodWatches(BTreeMap<PodSetKey, CancellationToken>);

impl PodWatches {
    /// Matches the running watches to the pod sets the index uses: returns the sets to
    /// start watching, and stops (and forgets the relist state of) the rest.
    pub fn update(&mut self, index: &Index, state: &mut SyncState) -> Vec<PodSetKey> {
        let wanted: BTreeSet<&PodSetKey> = index.pod_sets().collect();
        self.0.retain(|set, stop| {
            let keep = wanted.contains(set);
            if !keep {
                stop.cancel();
                state.pods.remove(set);
            }
            keep
        });
        wanted
            .into_iter()
            .filter(|set| !self.0.contains_key(*set))
            .cloned()
            .collect()
    }

    fn start(&mut self, set: PodSetKey, parent: &CancellationToken) -> CancellationToken {
        let stop = parent.child_token();
        self.0.insert(set, stop.clone());
        stop
    }
}

/// An API over one namespace, or over all of them when `namespace` is `None`. With a
/// namespace, the operator needs only namespaced Roles there (no cluster-wide list).
pub fn scoped_api<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// How many backend-set changes may wait for the controller; when it lags, the informers
/// wait (the controller's scheduler coalesces, so it drains them quickly).
pub const CHANGES_BUFFER: usize = 256;

/// How many KitsuneProxy events may wait for the controller's subscription before the
/// shared watch waits for it.
pub const PROXY_EVENTS_BUFFER: usize = 256;

/// The shared KitsuneProxy reflector: `writer` goes to [`run`], which drives the one
/// watch; `store` and `subscriber` go to the controller. The controller must poll
/// `subscriber` from the start (a full buffer holds the watch, and so the index, back).
pub struct ProxyStore {
    pub store: Store<KitsuneProxy>,
    pub subscriber: ReflectHandle<KitsuneProxy>,
    pub writer: reflector::store::Writer<KitsuneProxy>,
}

pub fn proxy_store() -> ProxyStore {
    let (store, writer) = reflector::store_shared(PROXY_EVENTS_BUFFER);
    let subscriber = writer
        .subscribe()
        .expect("a shared store always gives subscribers");
    ProxyStore {
        store,
        subscriber,
        writer,
    }
}

/// Where the informers' results go.
pub struct Sinks {
    pub index: SharedIndex,
    /// From the first sync on, each proxy whose backend set changed (before that the
    /// controller reconciles every proxy anyway, once the index is synced).
    pub changes: Sender<ProxyKey>,
    pub metrics: Arc<Metrics>,
    /// Turns true once every kind was listed.
    pub synced: watch::Sender<bool>,
}

/// Watches until `shutdown`, in `namespace` or in all of them, KitsuneProxies through
/// the shared reflector `proxies` (see [`proxy_store`]).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    proxies: reflector::store::Writer<KitsuneProxy>,
    sinks: Sinks,
    shutdown: CancellationToken,
) {
    let Sinks {
        index,
        mut changes,
        metrics,
        synced,
    } = sinks;
    let ns = namespace.as_deref();
    let proxies = watcher(
        scoped_api::<KitsuneProxy>(client.clone(), ns),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect_shared(proxies)
    .map(|r| r.map(Input::Proxy));
    let slices = watcher(
        scoped_api::<EndpointSlice>(client.clone(), ns),
        watcher::Config::default().labels(SERVICE_NAME_LABEL),
    )
    .default_backoff()
    .map(|r| r.map(Input::Slice));
    let mut events = stream::select_all([proxies.boxed(), slices.boxed()]);
    let mut state = SyncState::default();
    let mut pod_watches = PodWatches::default();
    loop {
        let next = tokio::select! {
            n = events.next() => n,
            _ = shutdown.cancelled() => break,
        };
        let Some(next) = next else { break };
        let input = match next {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "watch failed; retrying with backoff");
                continue;
            }
        };
        let proxy_event = matches!(input, Input::Proxy(_));
        let (changed, now_synced) = {
            let mut idx = index.write().unwrap_or_else(|e| e.into_inner());
            let changed = apply(&mut idx, &mut state, input);
            if proxy_event {
                for set in pod_watches.update(&idx, &mut state) {
                    let stop = pod_watches.start(set.clone(), &shutdown);
                    let api = Api::<Pod>::namespaced(client.clone(), &set.namespace);
                    let cfg = watcher::Config::default().labels(&set.selector);
                    let pods = watcher(api, cfg)
                        .default_backoff()
                        .map(move |r| r.map(|e| Input::Pod(set.clone(), e)))
                        .take_until(stop.cancelled_owned());
                    events.push(pods.boxed());
                }
            }
            for key in &changed {
                let labels = ProxyLabels {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                };
                match idx.ready_backends(key) {
                    Some(n) => {
                        metrics
                            .ready_backends
                            .get_or_create(&labels)
                            .set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                    None => {
                        metrics.ready_backends.remove(&labels);
                    }
                }
            }
            (changed, state.synced(&idx))
        };
        if now_synced && !*synced.borrow() {
            info!("backend index synced");
            synced.send_replace(true);
        }
        // Synced is a latch: a pod set added later does not hold changes back.
        if *synced.borrow() {
            forward(&mut changes, changed, &shutdown).await;
        }
    }
    info!("informers stopped");
}

/// Hands changed proxies to the controller, waiting while its buffer is full, but never
/// past `shutdown`. The controller may be gone during shutdown; that is fine.
async fn forward(changes: &mut Sender<ProxyKey>, changed: Changed, shutdown: &CancellationToken) {
    for key in changed {
        tokio::select! {
            biased;
            r = changes.send(key) => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{proxy_for_selector, proxy_for_service, ready_slice};
    use watcher::Event as E;

    fn kp(name: &str) -> KitsuneProxy {
        proxy_for_service("ns", name, "kubo")
    }

    fn slice(name: &str, ip: &str) -> EndpointSlice {
        ready_slice("ns", name, "kubo", &[ip])
    }

    #[test]
    fn relists_apply_atomically_and_sync_needs_every_kind() {
        let mut index = Index::new(0);
        let mut st = SyncState::default();
        let key = ProxyKey::new("ns", "a");
        assert!(apply(&mut index, &mut st, Input::Proxy(E::Init)).is_empty());
        assert!(apply(&mut index, &mut st, Input::Proxy(E::InitApply(kp("a")))).is_empty());
        assert!(
            index.snapshot(&key).is_none(),
            "nothing lands before InitDone"
        );
        assert_eq!(
            apply(&mut index, &mut st, Input::Proxy(E::InitDone)),
            vec![key.clone()]
        );
        apply(&mut index, &mut st, Input::Slice(E::Init));
        apply(
            &mut index,
            &mut st,
            Input::Slice(E::InitApply(slice("s1", "10.0.0.1"))),
        );
        assert_eq!(index.ready_backends(&key), Some(0));
        assert!(!st.synced(&index));
        apply(&mut index, &mut st, Input::Slice(E::InitDone));
        assert_eq!(index.ready_backends(&key), Some(1));
        // No proxy uses a selector: no pod watch to wait for.
        assert!(st.synced(&index));

        // A later relist that lacks s1 drops it.
        apply(&mut index, &mut st, Input::Slice(E::Init));
        apply(
            &mut index,
            &mut st,
            Input::Slice(E::InitApply(slice("s2", "10.0.0.2"))),
        );
        let changed = apply(&mut index, &mut st, Input::Slice(E::InitDone));
        assert_eq!(changed, vec![key.clone()]);
        let snap = index.snapshot(&key).unwrap();
        assert_eq!(snap.backends[0].address, "10.0.0.2");

        // Live events.
        apply(
            &mut index,
            &mut st,
            Input::Slice(E::Delete(slice("s2", "10.0.0.2"))),
        );
        assert_eq!(index.ready_backends(&key), Some(0));
        apply(&mut index, &mut st, Input::Proxy(E::Delete(kp("a"))));
        assert!(index.snapshot(&key).is_none());
    }

    #[tokio::test]
    async fn changes_wait_for_a_full_buffer_but_not_past_shutdown() {
        let (mut tx, mut rx) = futures::channel::mpsc::channel(1);
        let stop = CancellationToken::new();
        let keys = |n: usize| {
            (0..n)
                .map(|i| ProxyKey::new("ns", format!("p{i}")))
                .collect()
        };
        // The buffer holds 1 + one per sender; the third send waits for the reader.
        let fwd = tokio::spawn({
            let stop = stop.clone();
            async move {
                forward(&mut tx, keys(3), &stop).await;
                tx
            }
        });
        assert_eq!(rx.next().await.unwrap().name, "p0");
        assert_eq!(rx.next().await.unwrap().name, "p1");
        assert_eq!(rx.next().await.unwrap().name, "p2");
        let mut tx = fwd.await.unwrap();
        // Nobody reads any more: a full buffer does not hold the informers past shutdown.
        stop.cancel();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            forward(&mut tx, keys(5), &stop),
        )
        .await
        .expect("forward returns on shutdown");
        // What fitted in the buffer was sent, the rest dropped.
        assert_eq!(rx.try_recv().unwrap().name, "p0");
        assert_eq!(rx.try_recv().unwrap().name, "p1");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn one_proxy_watch_feeds_the_index_and_the_controller_subscription() {
        let ProxyStore {
            store,
            mut subscriber,
            writer,
        } = proxy_store();
        let events = stream::iter([
            E::Init,
            E::InitApply(kp("a")),
            E::InitDone,
            E::Apply(kp("b")),
        ])
        .map(Ok::<_, watcher::Error>)
        .reflect_shared(writer);
        let mut events = std::pin::pin!(events);
        let (mut index, mut st) = (Index::new(0), SyncState::default());
        while let Some(ev) = events.next().await {
            apply(&mut index, &mut st, Input::Proxy(ev.unwrap()));
        }
        // The index saw both proxies...
        assert_eq!(index.proxies().count(), 2);
        // ...and the controller's store and trigger stream hold the same objects, from the
        // same watch: the listed one at InitDone, then the live one.
        assert_eq!(store.len(), 2);
        let first = subscriber.next().await.unwrap();
        let second = subscriber.next().await.unwrap();
        assert_eq!(
            (first.name_any(), second.name_any()),
            ("a".into(), "b".into())
        );
    }

    #[test]
    fn pods_are_watched_per_selector_in_use_and_sync_waits_for_them() {
        let (mut index, mut st) = (Index::new(0), SyncState::default());
        let mut watches = PodWatches::default();
        let root = CancellationToken::new();
        let selecting = proxy_for_selector("ns", "a", "kubo");
        for ev in [E::Init, E::InitApply(selecting.clone()), E::InitDone] {
            apply(&mut index, &mut st, Input::Proxy(ev));
        }
        apply(&mut index, &mut st, Input::Slice(E::Init));
        apply(&mut index, &mut st, Input::Slice(E::InitDone));
        // The one selector in use gets a watch, in the proxy's namespace.
        let set = PodSetKey {
            namespace: "ns".into(),
            selector: "app=kubo".into(),
        };
        assert_eq!(watches.update(&index, &mut st), vec![set.clone()]);
        let stop = watches.start(set.clone(), &root);
        assert!(watches.update(&index, &mut st).is_empty(), "started once");
        assert!(!st.synced(&index), "the pod set is not listed yet");
        apply(&mut index, &mut st, Input::Pod(set.clone(), E::Init));
        apply(&mut index, &mut st, Input::Pod(set.clone(), E::InitDone));
        assert!(st.synced(&index));

        // No proxy uses it any more: its watch stops.
        apply(&mut index, &mut st, Input::Proxy(E::Delete(selecting)));
        assert!(watches.update(&index, &mut st).is_empty());
        assert!(stop.is_cancelled());
        assert!(!root.is_cancelled());
        assert_eq!(index.pod_sets().count(), 0);
    }
}
