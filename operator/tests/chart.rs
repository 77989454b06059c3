//! The Helm chart (`charts/kitsune`) and the plain manifests (`manifests/`).
//!
//! The chart is linted and rendered by the real Helm engine (PyPI `helm-python-sdk`,
//! through `charts/render.py`, with the Python of `.harness/venv` that
//! `tests/harness/install.sh` creates). Every rendered object and every manifest must parse
//! into its k8s-openapi (or KitsuneProxy) type with no field the type would drop, and the
//! install invariants are asserted: security contexts, exact RBAC, labels, the CRD, the
//! watch URL, the images, and `manifests/install.yaml` equal to the default render.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kitsune_operator::crd::{DEFAULT_PROXY_IMAGE, KitsuneProxy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const REGENERATE: &str = ".harness/venv/bin/python charts/render.py > manifests/install.yaml";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The harness venv's Python, with helm-python-sdk. Missing tooling fails the test: CI
/// installs it, so a silent skip would hide a broken chart.
fn python() -> PathBuf {
    let py = std::env::var_os("KITSUNE_HELM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".harness/venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", "import helm_python"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import helm_python (PyPI helm-python-sdk). Run tests/harness/install.sh \
         (it installs it into .harness/venv), or set KITSUNE_HELM_PYTHON to a Python that has it.",
        py.display()
    );
    py
}

/// `charts/render.py` with `args`; panics with its stderr on failure.
fn render_py(args: &[&str]) -> std::process::Output {
    Command::new(python())
        .arg(repo().join("charts/render.py"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run charts/render.py")
}

/// The chart rendered with these values files (paths relative to the repository).
fn render(values: &[&str]) -> String {
    let mut args = vec![];
    for v in values {
        args.extend(["-f", v]);
    }
    let out = render_py(&args);
    assert!(
        out.status.success(),
        "charts/render.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Fails when `original` holds anything the typed round trip lost: an unknown field (a
/// typo the apiserver would reject or prune) or a changed value. Numbers compare as
/// numbers (YAML `65535` and `65535.0` are one value).
fn assert_subset(path: &str, original: &Value, typed: &Value) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let Some(other) = b.get(k) else {
                    panic!("unknown or dropped field {path}.{k}");
                };
                assert_subset(&format!("{path}.{k}"), v, other);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: list length changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_subset(&format!("{path}[{i}]"), x, y);
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(a.as_f64(), b.as_f64(), "{path}");
        }
        _ => assert_eq!(original, typed, "{path}"),
    }
}

fn typed<K: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> K {
    let k: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse as its type: {e}"));
    assert_subset(what, doc, &serde_json::to_value(&k).unwrap());
    k
}

/// The prometheus-operator ServiceMonitor, as far as this chart uses it (no k8s-openapi
/// type exists); unknown fields are refused.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace_selector: Option<NamespaceSelector>,
    selector: LabelSelector,
    endpoints: Vec<MonitorEndpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    any: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_names: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MonitorEndpoint {
    port: String,
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    honor_labels: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_config: Option<BTreeMap<String, Value>>,
    interval: String,
    scrape_timeout: String,
}

/// Every object of a rendered chart or manifest file, checked against its type.
#[derive(Default)]
struct Objects {
    kinds: Vec<(String, String)>,
    deployments: Vec<Deployment>,
    statefulsets: Vec<StatefulSet>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    pdbs: Vec<PodDisruptionBudget>,
    crds: Vec<CustomResourceDefinition>,
    service_monitors: Vec<ServiceMonitor>,
    proxies: Vec<KitsuneProxy>,
    secrets: Vec<Secret>,
    hpas: Vec<HorizontalPodAutoscaler>,
    network_policies: Vec<NetworkPolicy>,
    namespaces: Vec<Namespace>,
    /// Every object's metadata, for label checks.
    metas: Vec<(String, ObjectMeta)>,
}

impl Objects {
    fn parse(file: &str, yaml: &str) -> Self {
        let mut o = Objects::default();
        for doc in docs(yaml) {
            let api = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let what = format!("{file}: {kind} {name}");
            match (api.as_str(), kind.as_str()) {
                ("apps/v1", "Deployment") => o.deployments.push(typed(&doc, &what)),
                ("apps/v1", "StatefulSet") => o.statefulsets.push(typed(&doc, &what)),
                ("v1", "Service") => o.services.push(typed(&doc, &what)),
                ("v1", "ServiceAccount") => o.service_accounts.push(typed(&doc, &what)),
                ("v1", "Secret") => o.secrets.push(typed(&doc, &what)),
                ("v1", "Namespace") => o.namespaces.push(typed(&doc, &what)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    o.cluster_roles.push(typed(&doc, &what))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    o.cluster_role_bindings.push(typed(&doc, &what))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => o.roles.push(typed(&doc, &what)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    o.role_bindings.push(typed(&doc, &what))
                }
                ("policy/v1", "PodDisruptionBudget") => o.pdbs.push(typed(&doc, &what)),
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                    o.crds.push(typed(&doc, &what))
                }
                ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                    o.service_monitors.push(typed(&doc, &what))
                }
                ("kitsune.dev/v1alpha1", "KitsuneProxy") => {
                    let kp: KitsuneProxy = typed(&doc, &what);
                    kitsune_operator::spec::validate(&kp.spec)
                        .unwrap_or_else(|e| panic!("{what}: the operator refuses it: {e:?}"));
                    o.proxies.push(kp)
                }
                ("autoscaling/v2", "HorizontalPodAutoscaler") => o.hpas.push(typed(&doc, &what)),
                ("networking.k8s.io/v1", "NetworkPolicy") => {
                    o.network_policies.push(typed(&doc, &what))
                }
                _ => panic!("{what}: no type known for {api} {kind}; add it to this test"),
            }
            let meta: ObjectMeta = serde_json::from_value(doc["metadata"].clone()).unwrap();
            o.metas.push((format!("{kind} {name}"), meta));
            o.kinds.push((kind, name.to_owned()));
        }
        o
    }

    fn kinds(&self) -> BTreeSet<&str> {
        self.kinds.iter().map(|(k, _)| k.as_str()).collect()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Exactly what operator/src uses on KitsuneProxies and what they own.
fn workload_rules() -> Vec<PolicyRule> {
    let own = ["list", "watch", "create", "patch"];
    vec![
        rule(&["kitsune.dev"], &["kitsuneproxies"], &["list", "watch"]),
        rule(&["kitsune.dev"], &["kitsuneproxies/status"], &["patch"]),
        rule(
            &["kitsune.dev"],
            &["kitsuneproxies/finalizers"],
            &["update"],
        ),
        rule(&[""], &["pods"], &["list", "watch"]),
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["list", "watch"],
        ),
        rule(&["apps"], &["deployments"], &own),
        rule(&[""], &["services", "serviceaccounts"], &own),
        rule(&["policy"], &["poddisruptionbudgets"], &own),
        rule(&[""], &["secrets"], &["get", "create"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
    ]
}

fn token_review_rule() -> PolicyRule {
    rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"])
}

fn lease_rules(lease: &str) -> Vec<PolicyRule> {
    let mut named = rule(&["coordination.k8s.io"], &["leases"], &["get", "update"]);
    named.resource_names = Some(vec![lease.into()]);
    vec![
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        named,
    ]
}

fn assert_container_hardened(what: &str, c: &Container) {
    let sc = c
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no securityContext"));
    assert_eq!(sc.run_as_non_root, Some(true), "{what}: runAsNonRoot");
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );
    assert_ne!(sc.privileged, Some(true), "{what}: privileged");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{what}"
    );
    assert!(caps.add.as_ref().is_none_or(Vec::is_empty), "{what}: adds");
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{what}: seccompProfile"
    );
}

fn assert_pod_hardened(what: &str, pod: &PodSpec) {
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true), "{what}: pod runAsNonRoot");
    assert!(psc.run_as_user.is_some_and(|u| u != 0), "{what}: uid");
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{what}: pod seccompProfile"
    );
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true));
    for c in &pod.containers {
        assert_container_hardened(&format!("{what}/{}", c.name), c);
    }
}

fn operator_container(d: &Deployment) -> &Container {
    let pod = d.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    &pod.containers[0]
}

fn arg<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    c.args
        .as_ref()?
        .iter()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn assert_standard_labels(o: &Objects) {
    for (what, meta) in &o.metas {
        let l = labels(meta);
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/component",
            "app.kubernetes.io/part-of",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert!(l.contains_key(key), "{what}: label {key} missing");
        }
        assert_eq!(l["app.kubernetes.io/managed-by"], "Helm", "{what}");
        assert_eq!(l["app.kubernetes.io/part-of"], "kitsune", "{what}");
    }
}

/// The CRD the chart installs is the one `crdgen` writes (crds/kitsuneproxy.yaml): same
/// name and spec; the chart only adds labels and the keep annotation.
fn assert_crd_is_generated_one(crd: &CustomResourceDefinition) {
    let path = repo().join("crds/kitsuneproxy.yaml");
    let generated: CustomResourceDefinition =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(crd.metadata.name, generated.metadata.name);
    assert!(
        crd.spec == generated.spec,
        "the chart's CRD differs from crds/kitsuneproxy.yaml"
    );
}

#[test]
fn chart_lints_with_no_errors() {
    for values in [
        vec![],
        vec!["-f", "charts/kitsune/ci/namespaced-values.yaml"],
        vec!["-f", "charts/kitsune/ci/minimal-values.yaml"],
    ] {
        let mut args = values.clone();
        args.push("--lint");
        let out = render_py(&args);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no lint report ({e}):\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let errors: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 3)
            .collect();
        assert!(errors.is_empty(), "lint errors with {values:?}: {errors:?}");
        assert_eq!(report["errors"], serde_json::json!([]), "{values:?}");
        assert_eq!(report["total_charts_linted"], 1);
        assert!(out.status.success());
    }
}

#[test]
fn default_render_is_hardened_least_privilege_and_consistent() {
    let o = Objects::parse("default render", &render(&[]));
    assert_eq!(
        o.kinds(),
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ])
    );
    assert_standard_labels(&o);

    // Workload.
    let d = &o.deployments[0];
    assert_eq!(d.metadata.name.as_deref(), Some("kitsune-operator"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("kitsune-system"));
    let pod = d.spec.template.spec.as_ref().unwrap();
    assert_pod_hardened("operator", pod);
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("kitsune-operator")
    );
    let c = operator_container(d);
    assert_eq!(c.args.as_ref().unwrap()[0], "run");
    assert_eq!(
        c.image.as_deref(),
        Some(concat!(
            "ghcr.io/kitsune-proxy/kitsune-operator:",
            env!("CARGO_PKG_VERSION")
        ))
    );
    // The chart passes the same proxy image the operator defaults to.
    assert_eq!(arg(c, "--proxy-image"), Some(DEFAULT_PROXY_IMAGE));
    // Proxies reach the watch channel through this chart's Service, which is what the
    // operator assumes when nothing is passed.
    let svc = &o.services[0];
    assert_eq!(svc.metadata.name.as_deref(), Some("kitsune-operator"));
    let port = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
    assert_eq!(
        arg(c, "--watch-base-url"),
        Some(format!("http://kitsune-operator.kitsune-system.svc:{port}").as_str())
    );
    assert_eq!(
        arg(c, "--watch-base-url"),
        Some(
            kitsune_operator::resources::BuildConfig::default()
                .watch_base_url
                .as_str()
        )
    );
    assert_eq!(arg(c, "--lease-name"), Some("kitsune-operator"));
    assert_eq!(arg(c, "--watch-namespace"), None);
    assert_eq!(
        arg(c, "--watch-tls-cert-file"),
        None,
        "plain HTTP by default"
    );
    assert_eq!(
        svc.spec.as_ref().unwrap().selector,
        d.spec.selector.match_labels
    );
    let probes = [&c.liveness_probe, &c.readiness_probe].map(|p| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    });
    assert_eq!(probes, [Some("/healthz".into()), Some("/readyz".into())]);

    // RBAC: one ClusterRole with exactly the operator's rules plus TokenReview create, and
    // the Lease only in the release namespace.
    assert_eq!(o.cluster_roles.len(), 1);
    let mut expected = workload_rules();
    expected.push(token_review_rule());
    assert_eq!(o.cluster_roles[0].rules.as_ref().unwrap(), &expected);
    assert_eq!(o.roles.len(), 1);
    assert_eq!(
        o.roles[0].metadata.namespace.as_deref(),
        Some("kitsune-system")
    );
    assert_eq!(
        o.roles[0].rules.as_ref().unwrap(),
        &lease_rules("kitsune-operator")
    );
    for s in o
        .cluster_role_bindings
        .iter()
        .flat_map(|b| b.subjects.iter().flatten())
        .chain(
            o.role_bindings
                .iter()
                .flat_map(|b| b.subjects.iter().flatten()),
        )
    {
        assert_eq!(
            (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
            ("ServiceAccount", "kitsune-operator", Some("kitsune-system"))
        );
    }
    assert_eq!(o.cluster_role_bindings[0].role_ref.name, "kitsune-operator");

    // The CRD: the generated one, kept on uninstall.
    let crd = &o.crds[0];
    assert_crd_is_generated_one(crd);
    assert_eq!(
        crd.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("helm.sh/resource-policy"))
            .map(String::as_str),
        Some("keep")
    );
}

#[test]
fn namespaced_values_narrow_rbac_and_add_monitoring_and_pdb() {
    let o = Objects::parse(
        "namespaced render",
        &render(&["charts/kitsune/ci/namespaced-values.yaml"]),
    );
    assert!(o.crds.is_empty(), "crds.enabled: false");
    assert_standard_labels(&o);
    // Only TokenReview stays cluster-wide (TokenReviews are cluster-scoped).
    assert_eq!(o.cluster_roles.len(), 1);
    assert_eq!(
        o.cluster_roles[0].rules.as_ref().unwrap(),
        &vec![token_review_rule()]
    );
    let by_ns: BTreeMap<&str, &Role> = o
        .roles
        .iter()
        .map(|r| (r.metadata.namespace.as_deref().unwrap(), r))
        .collect();
    assert_eq!(
        by_ns.keys().copied().collect::<Vec<_>>(),
        ["ipfs", "kitsune-system"]
    );
    assert_eq!(by_ns["ipfs"].rules.as_ref().unwrap(), &workload_rules());
    assert_eq!(
        by_ns["kitsune-system"].rules.as_ref().unwrap(),
        &lease_rules("kitsune-ipfs")
    );
    let binding_ns: BTreeSet<&str> = o
        .role_bindings
        .iter()
        .map(|b| b.metadata.namespace.as_deref().unwrap())
        .collect();
    assert_eq!(binding_ns, BTreeSet::from(["ipfs", "kitsune-system"]));

    let d = &o.deployments[0];
    assert_eq!(d.spec.replicas, Some(2));
    let pod = d.spec.template.spec.as_ref().unwrap();
    assert_pod_hardened("operator", pod);
    let c = operator_container(d);
    assert_eq!(arg(c, "--watch-namespace"), Some("ipfs"));
    assert_eq!(
        arg(c, "--watch-base-url"),
        Some("http://kitsune-ipfs.kitsune-system.svc:8080")
    );
    assert_eq!(
        arg(c, "--proxy-image"),
        Some("registry.example.com/kitsune/kitsune-proxy:0.1.0-custom")
    );
    assert!(c.image.as_deref().unwrap().contains("@sha256:"));
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "512Mi");

    assert_eq!(o.pdbs.len(), 1);
    let pdb = o.pdbs[0].spec.as_ref().unwrap();
    assert_eq!(
        pdb.selector.as_ref().unwrap().match_labels,
        d.spec.selector.match_labels
    );
    assert!(pdb.min_available.is_some());

    assert_eq!(o.service_monitors.len(), 2);
    let operator_sm = &o.service_monitors[0];
    assert_eq!(operator_sm.spec.endpoints[0].port, "http");
    assert_eq!(labels(&operator_sm.metadata)["release"], "prometheus");
    let proxies_sm = &o.service_monitors[1];
    assert_eq!(proxies_sm.spec.endpoints[0].port, "metrics");
    assert_eq!(
        proxies_sm
            .spec
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_names
            .as_deref(),
        Some(&["ipfs".to_string()][..])
    );
}

#[test]
fn minimal_values_render_without_lease_rbac_or_own_service_account() {
    let o = Objects::parse(
        "minimal render",
        &render(&["charts/kitsune/ci/minimal-values.yaml"]),
    );
    assert!(o.service_accounts.is_empty());
    assert!(o.roles.is_empty(), "no Lease Role without leader election");
    let c = operator_container(&o.deployments[0]);
    assert_eq!(arg(c, "--leader-election"), Some("false"));
    assert_eq!(
        arg(c, "--watch-base-url"),
        Some("https://kitsune.example.com")
    );
    // TLS from the Secret: the three files, read-only, and probes over HTTPS.
    let dir = "/etc/kitsune/watch-tls";
    assert_eq!(
        [
            "--watch-tls-cert-file",
            "--watch-tls-key-file",
            "--watch-tls-ca-file"
        ]
        .map(|f| arg(c, f)),
        [
            Some(&*format!("{dir}/tls.crt")),
            Some(&*format!("{dir}/tls.key")),
            Some(&*format!("{dir}/ca.crt"))
        ]
    );
    let mount = &c.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        (dir, Some(true))
    );
    assert!(mount.sub_path.is_none(), "rotations must reach the files");
    let pod = o.deployments[0].spec.template.spec.as_ref().unwrap();
    let vol = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(vol.name, mount.name);
    assert_eq!(
        vol.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("kitsune-operator-tls")
    );
    for p in [&c.liveness_probe, &c.readiness_probe] {
        let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
    }
    assert_eq!(
        o.cluster_role_bindings[0].subjects.as_ref().unwrap()[0].name,
        "existing-operator-sa"
    );
    let crd = &o.crds[0];
    assert_crd_is_generated_one(crd);
    assert!(crd.metadata.annotations.is_none(), "crds.keep: false");
}

#[test]
fn several_replicas_without_leader_election_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("v.yaml");
    std::fs::write(
        &values,
        "replicaCount: 2\nleaderElection:\n  enabled: false\n",
    )
    .unwrap();
    let out = render_py(&["-f", values.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaderElection"));
}

#[test]
fn values_outside_the_schema_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("v.yaml");
    std::fs::write(&values, "replicaCount: two\nimage:\n  pulPolicy: Always\n").unwrap();
    let out = render_py(&["-f", values.to_str().unwrap()]);
    assert!(!out.status.success(), "a typo'd value must not render");
}

#[test]
fn install_yaml_is_the_default_render() {
    let on_disk =
        std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap_or_default();
    assert!(
        on_disk == render(&[]),
        "manifests/install.yaml is out of date with charts/kitsune; regenerate it with:\n  {REGENERATE}"
    );
}

#[test]
fn chart_crd_copy_is_crds_dir() {
    let chart = std::fs::read(repo().join("charts/kitsune/files/kitsuneproxy.yaml")).unwrap();
    let crds = std::fs::read(repo().join("crds/kitsuneproxy.yaml")).unwrap();
    assert!(
        chart == crds,
        "charts/kitsune/files/kitsuneproxy.yaml differs from crds/kitsuneproxy.yaml; copy it:\n  \
         cp crds/kitsuneproxy.yaml charts/kitsune/files/kitsuneproxy.yaml"
    );
}

/// Every YAML file under manifests/ parses into its types, with nothing dropped; the
/// examples fit together (the proxy selects the kubo Service, the Secret it names exists).
#[test]
fn every_manifest_parses_into_its_type() {
    let mut files = vec![];
    let mut dirs = vec![repo().join("manifests")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut all = Objects::default();
    for f in &files {
        let rel = f.strip_prefix(repo()).unwrap().display().to_string();
        let o = Objects::parse(&rel, &std::fs::read_to_string(f).unwrap());
        assert!(!o.kinds.is_empty(), "{rel} holds no object");
        all.kinds.extend(o.kinds);
        all.proxies.extend(o.proxies);
        all.services.extend(o.services);
        all.secrets.extend(o.secrets);
        all.statefulsets.extend(o.statefulsets);
        all.hpas.extend(o.hpas);
        all.deployments.extend(o.deployments);
    }
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "install.yaml",
        "kitsuneproxy.yaml",
        "kubo.yaml",
        "identity-secret.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "manifests: {expected} missing"
        );
    }

    let kp = all
        .proxies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("preload"))
        .unwrap();
    assert!(kp.spec.proxy.preload.enabled, "the example uses preload");
    let svc_name = kp.spec.backends.service_name.as_deref().unwrap();
    let ns = kp.metadata.namespace.as_deref();
    assert!(
        all.services
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(svc_name)
                && s.metadata.namespace.as_deref() == ns),
        "the example KitsuneProxy's Service {svc_name} is in kubo.yaml"
    );
    let secret = kp.spec.identity.secret_ref.as_ref().unwrap();
    let s = all
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(secret.name.as_str()))
        .expect("the identity Secret example");
    assert!(s.string_data.as_ref().unwrap().contains_key(&secret.key));
    let hpa = &all.hpas[0];
    let sts = &all.statefulsets[0];
    assert_eq!(
        Some(hpa.spec.scale_target_ref.name.as_str()),
        sts.metadata.name.as_deref()
    );
    for sts in &all.statefulsets {
        let pod = sts.spec.template.spec.as_ref().unwrap();
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
    }
    for d in &all.deployments {
        let pod = d.spec.template.spec.as_ref().unwrap();
        assert_pod_hardened("install.yaml operator", pod);
    }
}
