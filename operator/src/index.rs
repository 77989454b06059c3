//! The backend index: for every KitsuneProxy, the live set of kubo backends.
//!
//! Pure and synchronous (linkerd's index pattern): watch events go in through `apply_*`,
//! `delete_*` and `reset_*`, and each call returns the proxies whose set changed. Each
//! proxy's current set is published on a `tokio::sync::watch` channel, which coalesces
//! bursts, so the watch-channel server ([`crate::watch_server`]) serves subscribers without ever
//! buffering. The I/O that feeds it lives in [`crate::informers`].
//!
//! What counts as a live backend:
//! - `serviceName`: endpoints of the Service's `discovery.k8s.io/v1` EndpointSlices that
//!   are ready (unset means ready) and not terminating (unset means not terminating);
//!   ports resolved per slice (a named port the slice lacks drops that slice's endpoints).
//! - `selector`: Pods matching the selector, read directly, because a bare selector's
//!   pods need not be behind any Service and so may have no EndpointSlice at all. A pod
//!   counts when its `Ready` condition is `True`, it has an IP, and it is not being deleted.
//!   Pods come in per [`PodSetKey`] (namespace and selector): the index says which sets
//!   its proxies use ([`Index::pod_sets`]) and the informers watch exactly those, so no
//!   other Pod is watched. Until a set's first list arrives its proxies keep the backends
//!   they had (a selector change swaps sets at once, as soon as the new one is listed).
//!
//! Sets are sorted and deduplicated by (address, RPC port); every change gets a new
//! version, larger than any version this index handed out before.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kitsune_common::watch::{Backend, Snapshot};
use kube::ResourceExt;
use tokio::sync::watch;

use crate::crd::KitsuneProxy;
use crate::spec::{self, BackendSource, PortRef, Selection, SpecError};

/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Identifies one KitsuneProxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyKey {
    pub namespace: String,
    pub name: String,
}

impl ProxyKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
    fn of(kp: &KitsuneProxy) -> Self {
        Self::new(kp.namespace().unwrap_or_default(), kp.name_any())
    }
}

impl std::fmt::Display for ProxyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

type ObjKey = (String, String);

/// The Pods of one namespace that one label selector matches: what one Pod watch lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodSetKey {
    pub namespace: String,
    /// The selector in label-selector query form (`app=kubo,tier in (a,b)`).
    pub selector: String,
}

impl PodSetKey {
    fn of(namespace: &str, source: &Result<BackendSource, SpecError>) -> Option<Self> {
        match source {
            Ok(BackendSource {
                selection: Selection::Pods(sel),
                ..
            }) => Some(Self {
                namespace: namespace.to_owned(),
                selector: sel.text().to_owned(),
            }),
            _ => None,
        }
    }
}

/// Pods by name; `None` until the set's first list arrives.
type PodSet = Option<BTreeMap<String, PodRecord>>;

#[derive(Debug, Clone, PartialEq)]
struct SliceRecord {
    service: Option<String>,
    /// (name, port) of each slice port.
    ports: Vec<(Option<String>, Option<i32>)>,
    endpoints: Vec<EndpointRecord>,
}

#[derive(Debug, Clone, PartialEq)]
struct EndpointRecord {
    address: Option<String>,
    live: bool,
    pod_name: Option<String>,
    zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct PodRecord {
    labels: BTreeMap<String, String>,
    ip: Option<String>,
    live: bool,
    /// Named TCP container ports.
    ports: BTreeMap<String, i32>,
}

impl From<&EndpointSlice> for SliceRecord {
    fn from(s: &EndpointSlice) -> Self {
        Self {
            service: s.labels().get(SERVICE_NAME_LABEL).cloned(),
            ports: s
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().filter(|n| !n.is_empty()), p.port))
                .collect(),
            endpoints: s
                .endpoints
                .iter()
                .flatten()
                .map(|e| {
                    let c = e.conditions.as_ref();
                    let ready = c.and_then(|c| c.ready).unwrap_or(true);
                    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                    EndpointRecord {
                        address: e.addresses.first().cloned(),
                        live: ready && !terminating,
                        pod_name: e
                            .target_ref
                            .as_ref()
                            .filter(|r| r.kind.as_deref() == Some("Pod"))
                            .and_then(|r| r.name.clone()),
                        zone: e.zone.clone(),
                    }
                })
                .collect(),
        }
    }
}

impl From<&Pod> for PodRecord {
    fn from(p: &Pod) -> Self {
        let status = p.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let finished = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        let ip = status
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty());
        let ports = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|cp| cp.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|cp| cp.name.clone().map(|n| (n, cp.container_port)))
            .collect();
        Self {
            labels: p.labels().clone(),
            live: ready && !finished && p.metadata.deletion_timestamp.is_none() && ip.is_some(),
            ip,
            ports,
        }
    }
}

struct ProxyEntry {
    source: Result<BackendSource, SpecError>,
    tx: watch::Sender<Snapshot>,
}

/// The index. Wrap it in a lock to share it; never hold the lock across an await.
pub struct Index {
    proxies: BTreeMap<ProxyKey, ProxyEntry>,
    slices: BTreeMap<ObjKey, SliceRecord>,
    /// Exactly the pod sets the proxies use.
    pods: BTreeMap<PodSetKey, PodSet>,
    next_version: u64,
}

/// The proxies whose backend set changed (or that appeared or went away).
pub type Changed = Vec<ProxyKey>;

impl Index {
    /// `first_version` seeds the version counter; seeding it from the clock keeps
    /// versions growing across operator restarts.
    pub fn new(first_version: u64) -> Self {
        Self {
            proxies: BTreeMap::new(),
            slices: BTreeMap::new(),
            pods: BTreeMap::new(),
            next_version: first_version,
        }
    }

    /// The current snapshot of a proxy, or `None` if the index does not know it.
    pub fn snapshot(&self, key: &ProxyKey) -> Option<Snapshot> {
        self.proxies.get(key).map(|e| e.tx.borrow().clone())
    }

    /// A receiver that always holds the proxy's latest snapshot. The sender is dropped
    /// (so `changed()` errors) when the proxy is deleted.
    pub fn subscribe(&self, key: &ProxyKey) -> Option<watch::Receiver<Snapshot>> {
        self.proxies.get(key).map(|e| e.tx.subscribe())
    }

    /// How many backends are live for a proxy.
    pub fn ready_backends(&self, key: &ProxyKey) -> Option<usize> {
        self.proxies.get(key).map(|e| e.tx.borrow().backends.len())
    }

    /// The proxies the index knows.
    pub fn proxies(&self) -> impl Iterator<Item = &ProxyKey> {
        self.proxies.keys()
    }

    pub fn apply_proxy(&mut self, kp: &KitsuneProxy) -> Changed {
        let key = ProxyKey::of(kp);
        let source = spec::backend_source(&kp.spec);
        if let Some(set) = PodSetKey::of(&key.namespace, &source) {
            self.pods.entry(set).or_insert(None);
        }
        let backends = self.compute(&key.namespace, &source);
        let changed = match self.proxies.get_mut(&key) {
            Some(entry) => {
                entry.source = source;
                let sent = backends.is_some_and(|b| publish(&mut self.next_version, &entry.tx, b));
                if sent { vec![key] } else { vec![] }
            }
            None => {
                let version = bump(&mut self.next_version);
                let backends = backends.unwrap_or_default();
                let (tx, _) = watch::channel(Snapshot { version, backends });
                self.proxies.insert(key.clone(), ProxyEntry { source, tx });
                vec![key]
            }
        };
        self.prune_pod_sets();
        changed
    }

    pub fn delete_proxy(&mut self, namespace: &str, name: &str) -> Changed {
        let key = ProxyKey::new(namespace, name);
        let changed = match self.proxies.remove(&key) {
            Some(_) => vec![key],
            None => vec![],
        };
        self.prune_pod_sets();
        changed
    }

    /// The pod sets the proxies use: what the informers must watch.
    pub fn pod_sets(&self) -> impl Iterator<Item = &PodSetKey> {
        self.pods.keys()
    }

    /// Whether every pod set in use was listed.
    pub fn pod_sets_listed(&self) -> bool {
        self.pods.values().all(Option::is_some)
    }

    /// Drops the pod sets no proxy uses any more.
    fn prune_pod_sets(&mut self) {
        let used: std::collections::BTreeSet<PodSetKey> = self
            .proxies
            .iter()
            .filter_map(|(k, e)| PodSetKey::of(&k.namespace, &e.source))
            .collect();
        self.pods.retain(|k, _| used.contains(k));
    }

    pub fn apply_slice(&mut self, s: &EndpointSlice) -> Changed {
        let ns = s.namespace().unwrap_or_default();
        self.slices.insert((ns.clone(), s.name_any()), s.into());
        self.recompute_namespace(&ns)
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> Changed {
        if self
            .slices
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_none()
        {
            return vec![];
        }
        self.recompute_namespace(namespace)
    }

    /// A Pod of `set` changed. Events of a set no proxy uses (a watch being stopped) or
    /// not yet listed are ignored.
    pub fn apply_pod(&mut self, set: &PodSetKey, p: &Pod) -> Changed {
        let Some(Some(pods)) = self.pods.get_mut(set) else {
            return vec![];
        };
        let record = PodRecord::from(p);
        let name = p.name_any();
        if pods.get(&name) == Some(&record) {
            return vec![];
        }
        pods.insert(name, record);
        self.recompute_namespace(&set.namespace)
    }

    pub fn delete_pod(&mut self, set: &PodSetKey, name: &str) -> Changed {
        let Some(Some(pods)) = self.pods.get_mut(set) else {
            return vec![];
        };
        if pods.remove(name).is_none() {
            return vec![];
        }
        self.recompute_namespace(&set.namespace)
    }

    /// Replaces every KitsuneProxy at once (after a relist).
    pub fn reset_proxies(&mut self, all: &[KitsuneProxy]) -> Changed {
        let keep: std::collections::BTreeSet<ProxyKey> = all.iter().map(ProxyKey::of).collect();
        let mut changed: Changed = self
            .proxies
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        self.proxies.retain(|k, _| keep.contains(k));
        for kp in all {
            changed.extend(self.apply_proxy(kp));
        }
        changed
    }

    /// Replaces every EndpointSlice at once (after a relist).
    pub fn reset_slices(&mut self, all: &[EndpointSlice]) -> Changed {
        self.slices = all
            .iter()
            .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s.into()))
            .collect();
        self.recompute_all()
    }

    /// Replaces every Pod of one set at once (after a list or relist).
    pub fn reset_pods(&mut self, set: &PodSetKey, all: &[Pod]) -> Changed {
        let Some(slot) = self.pods.get_mut(set) else {
            return vec![];
        };
        *slot = Some(all.iter().map(|p| (p.name_any(), p.into())).collect());
        self.recompute_namespace(&set.namespace)
    }

    fn recompute_all(&mut self) -> Changed {
        let namespaces: std::collections::BTreeSet<String> =
            self.proxies.keys().map(|k| k.namespace.clone()).collect();
        namespaces
            .iter()
            .flat_map(|ns| self.recompute_namespace(ns))
            .collect()
    }

    fn recompute_namespace(&mut self, ns: &str) -> Changed {
        let keys: Vec<ProxyKey> = self
            .proxies
            .keys()
            .filter(|k| k.namespace == ns)
            .cloned()
            .collect();
        let mut changed = vec![];
        for key in keys {
            let Some(backends) = self.compute(ns, &self.proxies[&key].source) else {
                continue;
            };
            let entry = &self.proxies[&key];
            if publish(&mut self.next_version, &entry.tx, backends) {
                changed.push(key);
            }
        }
        changed
    }

    /// The backend set of a source, or `None` while its pod set is not listed yet.
    fn compute(&self, ns: &str, source: &Result<BackendSource, SpecError>) -> Option<Vec<Backend>> {
        let pods = match PodSetKey::of(ns, source) {
            Some(set) => Some(self.pods.get(&set)?.as_ref()?),
            None => None,
        };
        let Ok(source) = source else {
            return Some(vec![]);
        };
        let mut out: BTreeMap<(String, u16), Backend> = BTreeMap::new();
        match &source.selection {
            Selection::Service(service) => {
                for (_, slice) in in_namespace(&self.slices, ns) {
                    if slice.service.as_deref() != Some(service.as_str()) {
                        continue;
                    }
                    let Some(rpc_port) = resolve_slice_port(&source.rpc_port, &slice.ports) else {
                        continue;
                    };
                    let swarm_port = resolve_slice_port(&source.swarm_port, &slice.ports);
                    for ep in slice.endpoints.iter().filter(|e| e.live) {
                        let Some(address) = &ep.address else { continue };
                        out.entry((address.clone(), rpc_port))
                            .or_insert_with(|| Backend {
                                address: address.clone(),
                                rpc_port,
                                swarm_port,
                                pod_name: ep.pod_name.clone(),
                                zone: ep.zone.clone(),
                            });
                    }
                }
            }
            Selection::Pods(selector) => {
                // The watch selects already; matching again costs little and keeps a
                // stray event out.
                for (name, pod) in pods.into_iter().flatten() {
                    if !pod.live || !selector.matches(&pod.labels) {
                        continue;
                    }
                    let Some(ip) = &pod.ip else { continue };
                    let Some(rpc_port) = resolve_pod_port(&source.rpc_port, &pod.ports) else {
                        continue;
                    };
                    out.entry((ip.clone(), rpc_port))
                        .or_insert_with(|| Backend {
                            address: ip.clone(),
                            rpc_port,
                            swarm_port: resolve_pod_port(&source.swarm_port, &pod.ports),
                            pod_name: Some(name.clone()),
                            zone: None,
                        });
                }
            }
        }
        Some(out.into_values().collect())
    }
}

fn in_namespace<'a, V>(
    map: &'a BTreeMap<ObjKey, V>,
    ns: &'a str,
) -> impl Iterator<Item = (&'a ObjKey, &'a V)> {
    map.range((ns.to_owned(), String::new())..)
        .take_while(move |((n, _), _)| n == ns)
}

fn resolve_slice_port(want: &PortRef, ports: &[(Option<String>, Option<i32>)]) -> Option<u16> {
    match want {
        PortRef::Number(n) => Some(*n),
        PortRef::Name(name) => ports
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name.as_str()))
            .and_then(|(_, p)| *p)
            .and_then(|p| u16::try_from(p).ok()),
    }
}

fn resolve_pod_port(want: &PortRef, ports: &BTreeMap<String, i32>) -> Option<u16> {
    match want {
        PortRef::Number(n) => Some(*n),
        PortRef::Name(name) => ports.get(name).and_then(|p| u16::try_from(*p).ok()),
    }
}

fn bump(next: &mut u64) -> u64 {
    *next += 1;
    *next
}

/// Sends a new snapshot if the set differs; returns whether it did.
fn publish(next: &mut u64, tx: &watch::Sender<Snapshot>, backends: Vec<Backend>) -> bool {
    if tx.borrow().backends == backends {
        return false;
    }
    let version = bump(next);
    tx.send_replace(Snapshot { version, backends });
    true
}

/// The index shared between the informers (writers) and the controller and watch
/// server (readers).
pub type SharedIndex = std::sync::Arc<std::sync::RwLock<Index>>;

impl Index {
    /// Whether any EndpointSlice names this Service (for "no EndpointSlices" messages).
    pub fn has_slices_for(&self, ns: &str, service: &str) -> bool {
        in_namespace(&self.slices, ns).any(|(_, s)| s.service.as_deref() == Some(service))
    }
}

impl Default for Index {
    fn default() -> Self {
        Self::new(0)
    }
}

#[cfg(test)]
mod tests;
