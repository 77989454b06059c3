use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, KeyToPath,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile,
    SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kitsune_common::watch::{TOKEN_AUDIENCE, watch_path};
use kube::ResourceExt;

use super::{
    BuildConfig, Identity, PEER_ID_ANNOTATION, labels, names, owned_meta, selector_labels,
};
use crate::crd::KitsuneProxy;

/// Where the identity Secret is mounted, read-only.
pub const IDENTITY_DIR: &str = "/var/run/kitsune/identity";
/// The key's file name inside [`IDENTITY_DIR`].
pub const IDENTITY_FILE: &str = "key";
/// Where the shared port's `kubernetes.io/tls` Secret is mounted, read-only.
pub const TLS_DIR: &str = "/var/run/kitsune/tls";
/// Where the projected watch-channel token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/kitsune/watch";
/// The token's file name inside [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "token";
/// The uid/gid the proxy runs as (the distroless `nonroot` user).
const RUN_AS: i64 = 65532;
/// How long a projected token lives; the kubelet refreshes it at 80%.
const TOKEN_SECONDS: i64 = 3600;
/// The proxy's `--drain-timeout` after SIGTERM: transfers in flight finish within it.
pub const DRAIN_SECONDS: i64 = 25;
/// The pod's grace period beyond the drain: closing connections and exiting, before
/// the kubelet's SIGKILL.
pub const DRAIN_MARGIN_SECONDS: i64 = 5;

/// The Deployment of `kitsune-proxy` pods.
///
/// Every pod mounts the identity Secret read-only (mode 0440: root-owned, readable only
/// through the pod's `fsGroup`), has no API token (`automountServiceAccountToken: false`)
/// but a projected token for the watch-channel audience, probes `/healthz` and
/// `/readyz` on the metrics port, and runs non-root on a read-only root filesystem with
/// every capability dropped. The peer ID is a pod-template annotation, so a new key rolls
/// the pods.
pub fn deployment(kp: &KitsuneProxy, id: &Identity, cfg: &BuildConfig) -> Deployment {
    let name = kp.name_any();
    let ns = kp.namespace().unwrap_or_default();
    let p = &kp.spec.proxy;
    let l = &p.listeners;

    let mut args: Vec<String> = vec!["--key".into(), format!("{IDENTITY_DIR}/{IDENTITY_FILE}")];
    let mut ports = vec![];
    if let Some(port) = l.tcp_port {
        args.extend(["--listen".into(), format!("/ip4/0.0.0.0/tcp/{port}")]);
        ports.push(container_port("libp2p-tcp", "TCP", port));
    }
    if let Some(port) = l.quic_port {
        args.extend([
            "--listen".into(),
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
        ]);
        ports.push(container_port("libp2p-quic", "UDP", port));
    }
    if let Some(port) = l.ws_port {
        args.extend(["--ws-listen".into(), format!("/ip4/0.0.0.0/tcp/{port}")]);
        ports.push(container_port("libp2p-ws", "TCP", port));
    }
    if p.preload.enabled {
        args.extend(["--preload-port".into(), p.preload.port.to_string()]);
        ports.push(container_port("preload", "TCP", p.preload.port));
    } else if let Some(port) = l.http_port {
        // The same shared port as preload's, without preload.
        args.extend(["--http-port".into(), port.to_string()]);
        ports.push(container_port("http", "TCP", port));
    }
    if p.tls.is_some() {
        args.extend([
            "--tls-cert-file".into(),
            format!("{TLS_DIR}/tls.crt"),
            "--tls-key-file".into(),
            format!("{TLS_DIR}/tls.key"),
        ]);
    }
    for addr in &p.announce {
        args.extend(["--announce".into(), addr.clone()]);
    }
    if p.gateway {
        args.push("--gateway".into());
    }
    args.extend([
        "--metrics-addr".into(),
        format!("0.0.0.0:{}", p.metrics_port),
        "--log-format".into(),
        "json".into(),
        "--backends-url".into(),
        format!(
            "{}{}",
            cfg.watch_base_url.trim_end_matches('/'),
            watch_path(&ns, &name)
        ),
        "--backends-token-file".into(),
        format!("{TOKEN_DIR}/{TOKEN_FILE}"),
    ]);
    ports.push(container_port("metrics", "TCP", p.metrics_port));
    args.extend(["--drain-timeout".into(), format!("{DRAIN_SECONDS}s")]);

    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };

    let container = Container {
        name: "proxy".into(),
        image: Some(p.image.clone().unwrap_or_else(|| cfg.default_image.clone())),
        image_pull_policy: p.image_pull_policy.map(|x| x.as_str().into()),
        args: Some(args),
        env: cfg.watch_ca_pem.as_ref().map(|pem| {
            vec![EnvVar {
                name: "KITSUNE_BACKENDS_CA_PEM".into(),
                value: Some(pem.clone()),
                ..Default::default()
            }]
        }),
        ports: Some(ports),
        resources: p.resources.clone(),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(volume_mounts(p.tls.is_some())),
        ..Default::default()
    };

    let mut volumes = vec![
        Volume {
            name: "identity".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(id.secret_name.clone()),
                items: Some(vec![KeyToPath {
                    key: id.secret_key.clone(),
                    path: IDENTITY_FILE.into(),
                    ..Default::default()
                }]),
                default_mode: Some(0o440),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "watch-token".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o440),
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: TOKEN_FILE.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    "64Mi".into(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if let Some(tls) = &p.tls {
        // Only the two files the proxy reads; the kubelet updates them in place when
        // cert-manager renews the Secret, and the proxy re-reads them.
        let item = |key: &str| KeyToPath {
            key: key.into(),
            path: key.into(),
            ..Default::default()
        };
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                items: Some(vec![item("tls.crt"), item("tls.key")]),
                default_mode: Some(0o440),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    Deployment {
        metadata: owned_meta(kp, names::workload(&name)),
        spec: DeploymentSpec {
            replicas: Some(p.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(kp)),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(kp)),
                    annotations: Some(BTreeMap::from([(
                        PEER_ID_ANNOTATION.to_string(),
                        id.peer_id.clone(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names::service_account(&name)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(DRAIN_SECONDS + DRAIN_MARGIN_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(runtime_default()),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The identity, the watch token, a scratch /tmp, and the TLS Secret when set: all
/// read-only but /tmp.
fn volume_mounts(tls: bool) -> Vec<VolumeMount> {
    let read_only = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let mut mounts = vec![
        read_only("identity", IDENTITY_DIR),
        read_only("watch-token", TOKEN_DIR),
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if tls {
        mounts.push(read_only("tls", TLS_DIR));
    }
    mounts
}

fn container_port(name: &str, protocol: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        protocol: Some(protocol.into()),
        container_port: port,
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PullPolicy;
    use crate::fixtures::kp;

    fn id() -> Identity {
        Identity {
            secret_name: "preload-key".into(),
            secret_key: "privkey".into(),
            peer_id: "12D3KooWTest".into(),
        }
    }

    fn arg_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn a_tls_watch_channel_hands_its_ca_to_the_proxies() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let cfg = BuildConfig {
            watch_base_url: "https://kitsune-operator.ops.svc:8443".into(),
            default_image: "example/kitsune-proxy:1".into(),
            watch_ca_pem: Some(pem.into()),
        };
        let d = deployment(&kp(), &id(), &cfg);
        let c = &d.spec.template.spec.unwrap().containers[0];
        let env = c.env.as_ref().expect("env");
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].name, "KITSUNE_BACKENDS_CA_PEM");
        assert_eq!(env[0].value.as_deref(), Some(pem));
        assert_eq!(
            arg_after(c.args.as_ref().unwrap(), "--backends-url"),
            ["https://kitsune-operator.ops.svc:8443/v1/backends/ipfs/preload"]
        );
    }

    #[test]
    fn the_grace_period_covers_the_proxys_drain() {
        let d = deployment(&kp(), &id(), &BuildConfig::default());
        let pod = d.spec.template.spec.unwrap();
        let args = pod.containers[0].args.as_ref().unwrap();
        assert_eq!(arg_after(args, "--drain-timeout"), ["25s"]);
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
    }

    #[test]
    fn deployment_runs_the_proxy_with_its_identity_and_watch_channel() {
        let cfg = BuildConfig {
            watch_base_url: "http://kitsune-operator.ops.svc:8080/".into(),
            default_image: "example/kitsune-proxy:1".into(),
            watch_ca_pem: None,
        };
        let d = deployment(&kp(), &id(), &cfg);
        assert_eq!(d.metadata.name.as_deref(), Some("preload"));
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].name,
            "preload"
        );
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(2));
        let tmpl = spec.template;
        let tmeta = tmpl.metadata.unwrap();
        assert_eq!(
            tmeta.annotations.unwrap()[PEER_ID_ANNOTATION],
            "12D3KooWTest"
        );
        // The template's labels satisfy the selector.
        let tlabels = tmeta.labels.unwrap();
        for (k, v) in spec.selector.match_labels.unwrap() {
            assert_eq!(tlabels.get(&k), Some(&v));
        }

        let pod = tmpl.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("preload"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("example/kitsune-proxy:1"));
        let args = c.args.as_ref().unwrap();
        assert_eq!(arg_after(args, "--key"), ["/var/run/kitsune/identity/key"]);
        assert_eq!(
            arg_after(args, "--listen"),
            ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
        );
        assert_eq!(arg_after(args, "--ws-listen"), ["/ip4/0.0.0.0/tcp/8081"]);
        assert_eq!(arg_after(args, "--metrics-addr"), ["0.0.0.0:9090"]);
        assert!(arg_after(args, "--preload-port").is_empty());
        assert_eq!(
            arg_after(args, "--backends-url"),
            ["http://kitsune-operator.ops.svc:8080/v1/backends/ipfs/preload"]
        );
        assert_eq!(
            arg_after(args, "--backends-token-file"),
            ["/var/run/secrets/kitsune/watch/token"]
        );
        assert_eq!(c.env, None, "no CA without a TLS watch channel");

        // Identity: the named key of the Secret, read-only.
        let vols = pod.volumes.as_ref().unwrap();
        let idv = vols.iter().find(|v| v.name == "identity").unwrap();
        let sec = idv.secret.as_ref().unwrap();
        assert_eq!(sec.secret_name.as_deref(), Some("preload-key"));
        let item = &sec.items.as_ref().unwrap()[0];
        assert_eq!((item.key.as_str(), item.path.as_str()), ("privkey", "key"));
        assert_eq!(sec.default_mode, Some(0o440));
        let mounts = c.volume_mounts.as_ref().unwrap();
        let m = mounts.iter().find(|m| m.name == "identity").unwrap();
        assert_eq!(m.read_only, Some(true));
        assert_eq!(m.mount_path, IDENTITY_DIR);

        // The projected token has the watch audience.
        let tv = vols.iter().find(|v| v.name == "watch-token").unwrap();
        let proj = &tv.projected.as_ref().unwrap().sources.as_ref().unwrap()[0];
        let sat = proj.service_account_token.as_ref().unwrap();
        assert_eq!(sat.audience.as_deref(), Some("kitsune-watch"));
        assert_eq!(sat.path, "token");
        assert!(
            mounts
                .iter()
                .any(|m| m.name == "watch-token" && m.mount_path == TOKEN_DIR)
        );

        // Probes on the metrics port.
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::String("metrics".into()));
        assert!(
            c.ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.name.as_deref() == Some("metrics") && p.container_port == 9090)
        );

        // Hardened.
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.fs_group, Some(RUN_AS));
    }

    #[test]
    fn deployment_follows_spec_changes() {
        let mut kp = kp();
        kp.spec.proxy.replicas = 5;
        kp.spec.proxy.image = Some("mirror/kitsune:dev".into());
        kp.spec.proxy.image_pull_policy = Some(PullPolicy::Always);
        kp.spec.proxy.preload.enabled = true;
        kp.spec.proxy.listeners.quic_port = None;
        kp.spec.proxy.listeners.ws_port = None;
        let d = deployment(&kp, &id(), &BuildConfig::default());
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(5));
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("mirror/kitsune:dev"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        let args = c.args.as_ref().unwrap();
        assert_eq!(arg_after(args, "--listen"), ["/ip4/0.0.0.0/tcp/4001"]);
        assert!(arg_after(args, "--ws-listen").is_empty());
        assert_eq!(arg_after(args, "--preload-port"), ["8080"]);
        let names: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["libp2p-tcp", "preload", "metrics"]);
    }

    #[test]
    fn the_shared_port_carries_tls_from_its_secret_and_the_announced_addresses() {
        let kp = crate::fixtures::kp_public();
        let d = deployment(&kp, &id(), &BuildConfig::default());
        let pod = d.spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let args = c.args.as_ref().unwrap();
        assert_eq!(arg_after(args, "--http-port"), ["8443"]);
        assert_eq!(
            arg_after(args, "--tls-cert-file"),
            [format!("{TLS_DIR}/tls.crt")]
        );
        assert_eq!(
            arg_after(args, "--tls-key-file"),
            [format!("{TLS_DIR}/tls.key")]
        );
        assert_eq!(arg_after(args, "--announce").len(), 2);
        assert!(args.iter().any(|a| a == "--gateway"));
        assert!(
            c.ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.name.as_deref() == Some("http") && p.container_port == 8443)
        );
        let vol = pod.volumes.as_ref().unwrap();
        let sec = vol.iter().find(|v| v.name == "tls").unwrap();
        let sec = sec.secret.as_ref().unwrap();
        assert_eq!(sec.secret_name.as_deref(), Some("ipfs-example-com"));
        let keys: Vec<_> = sec
            .items
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect();
        assert_eq!(keys, [("tls.crt", "tls.crt"), ("tls.key", "tls.key")]);
        let m = c.volume_mounts.as_ref().unwrap();
        let m = m.iter().find(|m| m.name == "tls").unwrap();
        assert_eq!((m.mount_path.as_str(), m.read_only), (TLS_DIR, Some(true)));

        // With preload on, its port is the shared port: no second flag, TLS still on.
        let mut kp = kp;
        kp.spec.proxy.listeners.http_port = None;
        kp.spec.proxy.preload.enabled = true;
        let d = deployment(&kp, &id(), &BuildConfig::default());
        let args = d.spec.template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert_eq!(arg_after(&args, "--preload-port"), ["8080"]);
        assert!(arg_after(&args, "--http-port").is_empty());
        assert_eq!(arg_after(&args, "--tls-cert-file").len(), 1);
    }

    #[test]
    fn no_tls_no_announce_means_no_mount_and_no_flags() {
        let d = deployment(&kp(), &id(), &BuildConfig::default());
        let pod = d.spec.template.spec.unwrap();
        let args = pod.containers[0].args.as_ref().unwrap();
        for flag in ["--tls-cert-file", "--announce", "--http-port"] {
            assert!(arg_after(args, flag).is_empty(), "{flag}");
        }
        assert!(!args.iter().any(|a| a == "--gateway"));
        assert!(!pod.volumes.unwrap().iter().any(|v| v.name == "tls"));
    }
}
