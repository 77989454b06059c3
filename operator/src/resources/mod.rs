//! Pure builders for everything a KitsuneProxy owns. Each takes the resource (and what
//! the reconciler resolved) and returns the full desired object for server-side apply.
//! No I/O here, so every builder is tested with structural asserts.

mod deployment;
mod pdb;
mod secret;
mod service;
mod service_account;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::KitsuneProxy;

pub use deployment::{IDENTITY_DIR, IDENTITY_FILE, TOKEN_DIR, TOKEN_FILE, deployment};
pub use pdb::pod_disruption_budget;
pub use secret::generated_identity_secret;
pub use service::{metrics_service, service};
pub use service_account::service_account;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "kitsune-operator";
/// The pod-template annotation carrying the peer ID: a key change rolls the pods.
pub const PEER_ID_ANNOTATION: &str = "kitsune.dev/peer-id";
/// Marks the Secret `generate: true` created, naming its KitsuneProxy.
pub const GENERATED_FOR_ANNOTATION: &str = "kitsune.dev/generated-for";

/// What the builders need beyond the resource itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildConfig {
    /// The operator's watch server, e.g. `http://kitsune-operator.kitsune-system.svc:8080`;
    /// proxies get `--backends-url <base>/v1/backends/<ns>/<name>`.
    pub watch_base_url: String,
    /// The proxy image when the spec names none.
    pub default_image: String,
    /// The CA bundle (PEM) proxies trust for an https watch channel; set in their pods'
    /// environment as `KITSUNE_BACKENDS_CA_PEM` (a CA certificate is public).
    pub watch_ca_pem: Option<String>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            watch_base_url: "http://kitsune-operator.kitsune-system.svc:8080".into(),
            default_image: crate::crd::DEFAULT_PROXY_IMAGE.into(),
            watch_ca_pem: None,
        }
    }
}

/// What the reconciler resolved about the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub secret_name: String,
    pub secret_key: String,
    pub peer_id: String,
}

/// Object names derived from the KitsuneProxy's name.
pub mod names {
    /// The Deployment, Service, ServiceAccount and PodDisruptionBudget.
    pub fn workload(proxy: &str) -> String {
        proxy.to_owned()
    }
    /// The ServiceAccount whose token the proxy presents to the watch channel.
    pub fn service_account(proxy: &str) -> String {
        proxy.to_owned()
    }
    /// The ClusterIP Service in front of the proxy's metrics port.
    pub fn metrics_service(proxy: &str) -> String {
        format!("{proxy}-metrics")
    }
}

/// The labels on every object the operator creates for a KitsuneProxy.
pub fn labels(kp: &KitsuneProxy) -> BTreeMap<String, String> {
    let mut l = selector_labels(kp);
    l.insert("app.kubernetes.io/component".into(), "proxy".into());
    l.insert("app.kubernetes.io/part-of".into(), "kitsune".into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "kitsune-operator".into(),
    );
    l
}

/// The labels that select the proxy pods; stable for a resource's lifetime (a
/// Deployment's selector is immutable).
pub fn selector_labels(kp: &KitsuneProxy) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "kitsune-proxy".into()),
        ("app.kubernetes.io/instance".into(), kp.name_any()),
    ])
}

/// Metadata for an owned child: name, namespace, labels, and a controller owner reference
/// so Kubernetes garbage-collects it with the KitsuneProxy.
fn owned_meta(kp: &KitsuneProxy, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: kp.namespace(),
        labels: Some(labels(kp)),
        owner_references: Some(vec![owner_ref(kp)]),
        ..Default::default()
    }
}

fn owner_ref(kp: &KitsuneProxy) -> OwnerReference {
    // A resource read from the API always has a uid; only a hand-built one lacks it.
    kp.controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: "kitsune.dev/v1alpha1".into(),
            kind: "KitsuneProxy".into(),
            name: kp.name_any(),
            uid: kp.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
}
