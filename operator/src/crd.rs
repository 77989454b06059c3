//! The `KitsuneProxy` custom resource: `kitsune.dev/v1alpha1`, short name `kp`.
//!
//! Every field carries a doc comment, which becomes its `description` in the CRD so
//! `kubectl explain kitsuneproxy.spec...` is useful. Schema bounds and CEL rules reject
//! the mistakes that can be caught at admission; the reconciler re-checks everything
//! (see [`crate::spec`]) because a CRD applied without CEL support must not crash us.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Kitsune resource.
pub const GROUP: &str = "kitsune.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The image a proxy runs when `spec.proxy.image` is unset.
pub const DEFAULT_PROXY_IMAGE: &str = concat!(
    "ghcr.io/kitsune-proxy/kitsune-proxy:",
    env!("CARGO_PKG_VERSION")
);

/// A Kitsune proxy: pods that hold one fixed libp2p peer ID in front of a set of kubo nodes.
// Two printer columns share `type_ = "integer"`, which clippy takes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kitsune.dev",
    version = "v1alpha1",
    kind = "KitsuneProxy",
    plural = "kitsuneproxies",
    singular = "kitsuneproxy",
    shortname = "kp",
    category = "kitsune",
    namespaced,
    status = "KitsuneProxyStatus",
    derive = "PartialEq",
    doc = "A Kitsune libp2p reverse proxy: pods holding one fixed peer ID in front of the kubo pods it selects.",
    scale(
        spec_replicas_path = ".spec.proxy.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Peer ID",
        type_ = "string",
        description = "The libp2p peer ID the proxy pods present",
        json_path = ".status.peerId"
    ),
    printcolumn(
        name = "Backends",
        type_ = "integer",
        description = "Ready kubo backends",
        json_path = ".status.readyBackends"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        description = "Ready proxy replicas",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KitsuneProxySpec {
    /// The libp2p identity the proxy pods present. Set exactly one of `secretRef` or `generate: true`.
    pub identity: IdentitySpec,
    /// The kubo nodes the proxy forwards to. Set exactly one of `selector` or `serviceName`.
    pub backends: BackendsSpec,
    /// The proxy pods: replicas, image, resources, listeners, preload and metrics.
    #[serde(default)]
    pub proxy: ProxySpec,
    /// The Service that exposes the proxy's listeners.
    #[serde(default)]
    pub service: ServiceSpec,
}

/// Where the proxy's private key comes from.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.secretRef) != (has(self.generate) && self.generate)",
    "message": "set exactly one of identity.secretRef or identity.generate: true"
}]))]
pub struct IdentitySpec {
    /// A Secret in this namespace holding the private key: the bytes `ipfs key export` writes,
    /// the base64 text of kubo's `Identity.PrivKey`, or a whole kubo config JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Create an Ed25519 key once, in the Secret `<name>-identity` (key `key`), and keep it:
    /// it is never rotated, and it outlives this resource so that re-creating the
    /// KitsuneProxy keeps the same peer ID.
    #[serde(default, skip_serializing_if = "is_false")]
    pub generate: bool,
}

/// A key in a Secret of the KitsuneProxy's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside the Secret's data that holds the private key.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Which kubo pods are backends, and on which ports they listen.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.selector) != has(self.serviceName)",
    "message": "set exactly one of backends.selector or backends.serviceName"
}]))]
pub struct BackendsSpec {
    /// A label selector over the pods of this namespace. Readiness is read from each Pod's
    /// `Ready` condition (such pods need no Service or EndpointSlice); terminating pods are
    /// left out. Must select something: an empty selector is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The name of a Service in this namespace whose `discovery.k8s.io/v1` EndpointSlices
    /// list the backends: ready, non-terminating endpoints only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub service_name: Option<String>,
    /// The kubo HTTP RPC port on the backend pods: a number, or the name of a container
    /// port (selector) or EndpointSlice port (serviceName).
    #[serde(default = "default_rpc_port")]
    pub rpc_port: Option<IntOrString>,
    /// The kubo libp2p swarm (TCP) port on the backend pods: a number or a port name.
    /// When a name cannot be resolved the proxy learns the port from the RPC API.
    #[serde(default = "default_swarm_port")]
    pub swarm_port: Option<IntOrString>,
}

/// The proxy Deployment.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.tls) || (has(self.preload) && self.preload.enabled) || (has(self.listeners) && has(self.listeners.httpPort))",
        "message": "tls needs the shared port: preload.enabled or listeners.httpPort"
    },
    {
        "rule": "!has(self.gateway) || !self.gateway || (has(self.preload) && self.preload.enabled) || (has(self.listeners) && has(self.listeners.httpPort))",
        "message": "gateway needs the shared port: preload.enabled or listeners.httpPort"
    },
    {
        "rule": "!has(self.listeners) || !has(self.listeners.httpPort) || !has(self.preload) || !self.preload.enabled || self.listeners.httpPort == self.preload.port",
        "message": "with preload enabled the shared port is preload.port: listeners.httpPort must be the same number or unset"
    }
]))]
pub struct ProxySpec {
    /// How many proxy pods run. They all present the same peer ID.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// The `kitsune-proxy` container image. Defaults to the image matching the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// When the kubelet pulls the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory requests and limits of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The libp2p listeners. At least one must be set.
    #[serde(default)]
    pub listeners: ListenersSpec,
    /// The HTTP preload endpoint (js-ipfs preload compatible `/api/v0/refs`).
    #[serde(default)]
    pub preload: PreloadSpec,
    /// The port serving `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub metrics_port: i32,
    /// TLS on the shared HTTP + WebSocket port (`preload.port`, or `listeners.httpPort`):
    /// it then serves `wss` and `https` (HTTP/2 and HTTP/1.1) beside plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ProxyTlsSpec>,
    /// Multiaddrs the proxy announces instead of its pod addresses (identify, and so the
    /// DHT and clients), e.g. `/dns4/ipfs.example.com/tcp/443/tls/ws`. Empty: the pod's
    /// listen addresses, as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 2, max = 512), regex(pattern = "^/"))
    )]
    pub announce: Vec<String>,
    /// A trustless HTTP gateway (`/ipfs/{cid}`, raw blocks and CARs) and
    /// `/routing/v1/providers` on the shared port, served from the kubo backends over
    /// bitswap (they need no gateway of their own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gateway: bool,
}

/// The certificate of the shared port.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTlsSpec {
    /// A `kubernetes.io/tls` Secret in this namespace (keys `tls.crt`, the full chain,
    /// and `tls.key`), as cert-manager writes it. Mounted read-only; a renewed
    /// certificate is picked up without a restart.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// The libp2p transports the proxy listens on, each on its own port.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.tcpPort) || has(self.wsPort) || has(self.quicPort) || has(self.httpPort)",
        "message": "set at least one of tcpPort, wsPort, quicPort or httpPort"
    },
    {
        "rule": "!has(self.tcpPort) || !has(self.wsPort) || self.tcpPort != self.wsPort",
        "message": "tcpPort and wsPort are both TCP and must differ"
    }
]))]
pub struct ListenersSpec {
    /// libp2p over TCP (noise, yamux or mplex). Omit to disable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub tcp_port: Option<i32>,
    /// libp2p over WebSocket, for browser clients. Omit to disable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub ws_port: Option<i32>,
    /// libp2p over QUIC v1 (UDP); may equal tcpPort. Omit to disable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub quic_port: Option<i32>,
    /// The shared port without preload: HTTP and libp2p WebSocket on one TCP port
    /// (`--http-port`). With preload enabled the shared port is `preload.port`; set
    /// this only to the same number then. Omit to disable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: Option<i32>,
}

/// The HTTP preload endpoint.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreloadSpec {
    /// Serve preload requests and expose them on the Service.
    #[serde(default)]
    pub enabled: bool,
    /// The preload HTTP port.
    #[serde(default = "default_preload_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// The Service in front of the proxy pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.externalTrafficPolicy) || (has(self.type) && self.type != 'ClusterIP')",
    "message": "externalTrafficPolicy needs service.type NodePort or LoadBalancer"
}]))]
pub struct ServiceSpec {
    /// The Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations added to the Service, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Session affinity: `ClientIP` keeps a client on one proxy pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// `Local` preserves client source IPs; only for NodePort and LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
}

/// A Kubernetes Service type.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through a cloud load balancer.
    LoadBalancer,
}

/// Service session affinity.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SessionAffinity {
    /// Spread connections.
    None,
    /// Keep a client IP on one pod.
    ClientIP,
}

/// Service external traffic policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExternalTrafficPolicy {
    /// Spread over all nodes (source IP is lost).
    Cluster,
    /// Only to pods on the receiving node (source IP kept).
    Local,
}

/// Container image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is missing.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// What the operator observed, written only by the elected operator replica.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KitsuneProxyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The libp2p peer ID derived from the identity key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// The Secret the identity key is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_secret: Option<String>,
    /// How many backends are ready right now.
    #[serde(default)]
    pub ready_backends: i32,
    /// How many proxy pods exist.
    #[serde(default)]
    pub replicas: i32,
    /// How many proxy pods are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `Ready`, `IdentityReady` and `BackendsAvailable`, each with `observedGeneration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl Default for ProxySpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            image_pull_policy: None,
            resources: None,
            listeners: ListenersSpec::default(),
            preload: PreloadSpec::default(),
            metrics_port: default_metrics_port(),
            tls: None,
            announce: Vec::new(),
            gateway: false,
        }
    }
}

impl Default for ListenersSpec {
    fn default() -> Self {
        Self {
            tcp_port: Some(4001),
            ws_port: Some(8081),
            quic_port: Some(4001),
            http_port: None,
        }
    }
}

impl Default for PreloadSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            port: default_preload_port(),
        }
    }
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

impl SessionAffinity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::ClientIP => "ClientIP",
        }
    }
}

impl ExternalTrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "Cluster",
            Self::Local => "Local",
        }
    }
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn default_secret_key() -> String {
    "key".into()
}
/// The kubo RPC port when `backends.rpcPort` is unset (or null).
pub const DEFAULT_RPC_PORT: i32 = 5001;
/// The kubo swarm port when `backends.swarmPort` is unset (or null).
pub const DEFAULT_SWARM_PORT: i32 = 4001;
fn default_rpc_port() -> Option<IntOrString> {
    Some(IntOrString::Int(DEFAULT_RPC_PORT))
}
fn default_swarm_port() -> Option<IntOrString> {
    Some(IntOrString::Int(DEFAULT_SWARM_PORT))
}
fn default_replicas() -> i32 {
    2
}
fn default_metrics_port() -> i32 {
    9090
}
fn default_preload_port() -> i32 {
    8080
}

/// The CRD as YAML, exactly as `kitsune-operator crdgen` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let body = serde_yaml::to_string(&KitsuneProxy::crd()).expect("the CRD serializes");
    format!(
        "# Generated by `kitsune-operator crdgen` from operator/src/crd.rs. Do not edit:\n\
         # cargo run -p kitsune-operator -- crdgen > crds/kitsuneproxy.yaml\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::Value;

    fn schema() -> Value {
        let crd = serde_json::to_value(KitsuneProxy::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Every property at every depth has a description, so `kubectl explain` helps.
    #[test]
    fn every_field_is_described() {
        fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                for (name, child) in props {
                    let p = format!("{path}.{name}");
                    let described = child
                        .get("description")
                        .and_then(Value::as_str)
                        .is_some_and(|d| !d.is_empty());
                    if !described {
                        missing.push(p.clone());
                    }
                    walk(&p, child, missing);
                }
            }
            if let Some(items) = node.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let mut missing = Vec::new();
        let s = schema();
        walk("spec", &s["properties"]["spec"], &mut missing);
        walk("status", &s["properties"]["status"], &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
        assert!(
            s["properties"]["spec"]["properties"]["identity"]["description"]
                .as_str()
                .unwrap()
                .contains("exactly one")
        );
    }

    #[test]
    fn crd_has_names_subresources_columns_and_rules() {
        let crd = serde_json::to_value(KitsuneProxy::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "kitsuneproxies.kitsune.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "kp");
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert!(v["subresources"]["status"].is_object());
        assert_eq!(
            v["subresources"]["scale"]["specReplicasPath"],
            ".spec.proxy.replicas"
        );
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, ["Peer ID", "Backends", "Ready", "Age"]);

        let s = schema();
        let spec = &s["properties"]["spec"]["properties"];
        let rule = |node: &Value| node["x-kubernetes-validations"][0]["rule"].clone();
        assert!(
            rule(&spec["identity"])
                .as_str()
                .unwrap()
                .contains("secretRef")
        );
        assert!(
            rule(&spec["backends"])
                .as_str()
                .unwrap()
                .contains("serviceName")
        );
        assert!(
            rule(&spec["proxy"]["properties"]["listeners"])
                .as_str()
                .unwrap()
                .contains("quicPort")
        );
        assert_eq!(
            spec["proxy"]["properties"]["metricsPort"]["maximum"].as_f64(),
            Some(65535.0)
        );
        let conditions = &s["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
        let types = &spec["service"]["properties"]["type"]["enum"];
        assert_eq!(
            types,
            &serde_json::json!(["ClusterIP", "NodePort", "LoadBalancer"])
        );
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let kp: KitsuneProxy = serde_json::from_value(serde_json::json!({
            "apiVersion": "kitsune.dev/v1alpha1",
            "kind": "KitsuneProxy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "identity": {"generate": true},
                "backends": {"serviceName": "kubo"}
            }
        }))
        .unwrap();
        assert_eq!(kp.spec.backends.rpc_port, Some(IntOrString::Int(5001)));
        assert_eq!(kp.spec.backends.swarm_port, Some(IntOrString::Int(4001)));
        assert_eq!(kp.spec.proxy.replicas, 2);
        assert_eq!(kp.spec.proxy.listeners.tcp_port, Some(4001));
        assert_eq!(kp.spec.proxy.metrics_port, 9090);
        assert!(!kp.spec.proxy.preload.enabled);
        assert_eq!(kp.spec.service.type_, ServiceType::ClusterIP);
        let sr: SecretKeyRef = serde_json::from_str(r#"{"name":"s"}"#).unwrap();
        assert_eq!(sr.key, "key");
    }

    /// The example manifest parses, passes the reconciler's checks, and has no field the
    /// types would silently drop (a typo).
    #[test]
    fn example_manifest_is_valid() {
        fn subset(path: &str, small: &Value, big: &Value) {
            match (small, big) {
                (Value::Object(a), Value::Object(b)) => {
                    for (k, v) in a {
                        let other = b
                            .get(k)
                            .unwrap_or_else(|| panic!("unknown field {path}.{k}"));
                        subset(&format!("{path}.{k}"), v, other);
                    }
                }
                _ => assert_eq!(small, big, "{path}"),
            }
        }
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/examples/kitsuneproxy.yaml"
        );
        let raw: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let kp: KitsuneProxy = serde_json::from_value(raw.clone()).unwrap();
        subset("", &raw["spec"], &serde_json::to_value(&kp.spec).unwrap());
        crate::spec::validate(&kp.spec).unwrap();
        assert!(kp.spec.proxy.preload.enabled);
    }

    /// crds/ is generated from these types; this fails when they drift apart.
    #[test]
    fn crds_dir_matches_the_rust_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/kitsuneproxy.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml(),
            "crds/kitsuneproxy.yaml is out of date with operator/src/crd.rs; regenerate it with:\n  \
             cargo run -p kitsune-operator -- crdgen > crds/kitsuneproxy.yaml"
        );
    }
}
