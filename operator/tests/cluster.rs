//! Suite against a real cluster: runs only when `KUBECONFIG` is set (scripts/cluster-e2e.sh
//! runs it on the local cluster of ../shared/k8s; any other cluster works too).
//!
//! It needs no running pods: it applies `crds/`, creates a namespace with an identity
//! Secret, backend Pods that are never scheduled (a node selector no node matches) and an
//! EndpointSlice of its own, runs the operator binary as a local process, and asserts the
//! Deployment, Service, status and conditions; then a `kitsune-proxy` run here watches the
//! operator's channel with a real ServiceAccount token, and an EndpointSlice change must
//! reach its pool; last, a missing-Secret case. The backend addresses are ones no pod holds
//! in the local cluster's pod network (see [`fake_backend_ips`]): the proxy run here dials
//! what it is given, and the API server refuses loopback addresses in EndpointSlices. The
//! proxy Deployments never pull
//! (`imagePullPolicy: Never`). Everything lives in a fresh namespace that is deleted at
//! the end. See operator/README.md.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Pod, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kitsune_operator::crd::KitsuneProxy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

mod support;

const NAME: &str = "preload";

/// A child process, killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The addresses of the three fake backends: `KITSUNE_TEST_BACKEND_IPS` (comma-separated),
/// else three addresses of the ../shared/k8s cluster's pod network (10.77.0.0/24, a bridge on
/// this host) past its IPAM range (.10-.250), so no pod ever holds them. Loopback would be the natural choice, but an
/// EndpointSlice may not hold one (the API server answers 422), and the proxy run here
/// dials whatever it is given, so on another cluster set unused addresses of its pod
/// network.
fn fake_backend_ips() -> Vec<String> {
    let ips: Vec<String> = std::env::var("KITSUNE_TEST_BACKEND_IPS")
        .unwrap_or_else(|_| "10.77.0.251,10.77.0.252,10.77.0.253".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(ips.len(), 3, "KITSUNE_TEST_BACKEND_IPS: three addresses");
    ips
}

fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A binary of the workspace built beside this test (`target/<profile>/`).
fn sibling_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    dir.join(name)
}

/// `Ok` once the proxy's `/metrics` counts `n` backends in its pool (any state).
async fn pool_size(metrics: std::net::SocketAddr, n: u32) -> Result<(), String> {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("kitsune_backends{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    if total == f64::from(n) {
        Ok(())
    } else {
        Err(format!("{total} backends"))
    }
}

/// Applies the test's EndpointSlice with these endpoints (server-side apply).
async fn apply_slice(
    slices: &Api<EndpointSlice>,
    ssa: &PatchParams,
    ns: &str,
    ready: &[(&str, &str, bool, bool)],
) {
    slices
        .patch("kubo-manual", ssa, &Patch::Apply(slice(ns, ready)))
        .await
        .unwrap();
}

fn slice(ns: &str, ready: &[(&str, &str, bool, bool)]) -> EndpointSlice {
    let mut s = support::kubo_slice(ns, "kubo-manual", ready);
    // Not the EndpointSlice controller's: it leaves this slice alone.
    s.metadata.labels.get_or_insert_default().insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        "kitsune-cluster-test".into(),
    );
    s
}

fn condition(kp: &KitsuneProxy, type_: &str) -> Option<(String, String)> {
    kp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn operator_against_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) {
        eprintln!("skipped: KUBECONFIG unset");
        return;
    }
    // kube's rustls needs a process-wide crypto provider; the operator's main installs
    // the same one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .expect("a client from KUBECONFIG");
    let ssa = PatchParams::apply("kitsune-cluster-test").force();

    // 1. The CRD, exactly as committed.
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/kitsuneproxy.yaml"
    ))
    .unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("kitsuneproxies.kitsune.dev", &ssa, &Patch::Apply(&crd))
        .await
        .unwrap();
    eventually("the CRD to be established", || {
        let crds = crds.clone();
        async move {
            let c = crds
                .get("kitsuneproxies.kitsune.dev")
                .await
                .map_err(|e| e.to_string())?;
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(())
            } else {
                Err("not established".into())
            }
        }
    })
    .await;

    // 2. A fresh namespace with an identity, backend Pods and their EndpointSlice.
    let ns = format!("kitsune-test-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (key, raw) = kitsune_common::key::generate_ed25519();
    let peer_id = key.public().to_peer_id().to_string();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("preload-key".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("key".into(), ByteString(raw))])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for name in ["kubo-0", "kubo-1", "kubo-2"] {
        pods.create(
            &PostParams::default(),
            &Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(BTreeMap::from([("app".into(), "kubo".into())])),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    // Never scheduled, so never pulled or run: only their names matter.
                    node_selector: Some(BTreeMap::from([(
                        "kitsune.dev/no-such-node".into(),
                        "true".into(),
                    )])),
                    containers: vec![Container {
                        name: "kubo".into(),
                        image: Some("ipfs/kubo:v0.22.0".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let ips = fake_backend_ips();
    apply_slice(
        &slices,
        &ssa,
        &ns,
        &[
            (ips[0].as_str(), "kubo-0", true, false),
            (ips[1].as_str(), "kubo-1", true, false),
            (ips[2].as_str(), "kubo-2", false, false),
        ],
    )
    .await;

    // 3. The KitsuneProxy, and one whose Secret is missing.
    let kps: Api<KitsuneProxy> = Api::namespaced(client.clone(), &ns);
    for (name, secret) in [(NAME, "preload-key"), ("orphan", "does-not-exist")] {
        let kp: KitsuneProxy = serde_json::from_value(json!({
            "apiVersion": "kitsune.dev/v1alpha1",
            "kind": "KitsuneProxy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "identity": {"secretRef": {"name": secret}},
                "backends": {"serviceName": "kubo", "rpcPort": "rpc"},
                "proxy": {"replicas": 1, "imagePullPolicy": "Never"}
            }
        }))
        .unwrap();
        kps.create(&PostParams::default(), &kp).await.unwrap();
    }

    // 4. The operator, as a local process.
    let operator_addr = free_addr();
    let _operator = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_kitsune-operator"))
            .args([
                "run",
                "--http-addr",
                &operator_addr.to_string(),
                "--lease-namespace",
                &ns,
            ])
            .args(["--watch-base-url", "http://kitsune-operator.test.svc:8080"])
            .env("RUST_LOG", "info,kitsune_operator=debug")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the operator binary starts"),
    );

    // 5. Deployment, Service, status and conditions.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = eventually("the Deployment", || {
        let deployments = deployments.clone();
        async move { deployments.get(NAME).await.map_err(|e| e.to_string()) }
    })
    .await;
    let pod = d.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let args = pod.containers[0].args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains(&format!(
            "--backends-url http://kitsune-operator.test.svc:8080/v1/backends/{ns}/{NAME}"
        )),
        "{args}"
    );
    assert_eq!(
        d.spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["kitsune.dev/peer-id"],
        peer_id
    );
    assert_eq!(d.metadata.owner_references.unwrap()[0].kind, "KitsuneProxy");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc = services.get(NAME).await.unwrap();
    let ports: Vec<String> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    assert_eq!(ports, ["libp2p-tcp", "libp2p-quic", "libp2p-ws"]);

    let kp = eventually("status with peer ID and two backends", || {
        let kps = kps.clone();
        async move {
            let kp = kps.get(NAME).await.map_err(|e| e.to_string())?;
            let st = kp.status.clone().unwrap_or_default();
            if st.peer_id.is_some() && st.ready_backends == 2 {
                Ok(kp)
            } else {
                Err(format!("{st:?}"))
            }
        }
    })
    .await;
    let st = kp.status.clone().unwrap();
    assert_eq!(st.peer_id.as_deref(), Some(peer_id.as_str()));
    assert_eq!(st.observed_generation, kp.metadata.generation);
    assert_eq!(
        condition(&kp, "IdentityReady"),
        Some(("True".into(), "KeyLoaded".into()))
    );
    assert_eq!(
        condition(&kp, "BackendsAvailable"),
        Some(("True".into(), "BackendsReady".into()))
    );
    // No proxy pod ever becomes ready: without a kubelet none runs; with one, the image is
    // never pulled, and an imported one cannot reach `kitsune-operator.test.svc`.
    assert_eq!(
        condition(&kp, "Ready"),
        Some(("False".into(), "NoReadyReplicas".into()))
    );

    // 6. A proxy running here watches the operator's channel with a real token of its
    //    ServiceAccount (TokenRequest, audience kitsune-watch, checked by TokenReview).
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let token = sas
        .create_token_request(
            NAME,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(vec![kitsune_common::watch::TOKEN_AUDIENCE.into()]),
                    expiration_seconds: Some(600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("a token for the proxy's ServiceAccount")
        .status
        .and_then(|s| s.token)
        .expect("a token");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let proxy_metrics = free_addr();
    let _proxy = KillOnDrop(
        Command::new(sibling_binary("kitsune-proxy"))
            .arg("-k")
            .arg(dir.path().join("key"))
            .args(["-l", "/ip4/127.0.0.1/tcp/0"])
            .args(["--metrics-addr", &proxy_metrics.to_string()])
            .args([
                "--backends-url",
                &format!(
                    "http://{operator_addr}{}",
                    kitsune_common::watch::watch_path(&ns, NAME)
                ),
            ])
            .arg("--backends-token-file")
            .arg(&token_file)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the proxy binary starts (cargo build --workspace --bins)"),
    );
    // The backends are not real kubo nodes (no kubelet), so they never connect; the
    // proxy's pool still holds them, by state.
    eventually("the proxy's pool of two", || pool_size(proxy_metrics, 2)).await;

    // 7. A backend starts terminating: the count follows, and the proxy's pool too.
    let changed = Instant::now();
    apply_slice(
        &slices,
        &ssa,
        &ns,
        &[
            (ips[0].as_str(), "kubo-0", true, false),
            (ips[1].as_str(), "kubo-1", true, true),
        ],
    )
    .await;
    eventually("one ready backend", || {
        let kps = kps.clone();
        async move {
            let st = kps
                .get(NAME)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            if st.ready_backends == 1 {
                Ok(())
            } else {
                Err(format!("{}", st.ready_backends))
            }
        }
    })
    .await;
    eventually("the proxy's pool of one", || pool_size(proxy_metrics, 1)).await;
    eprintln!(
        "EndpointSlice change to the proxy's pool: {:?} (polled every 500 ms)",
        changed.elapsed()
    );

    // 8. Bad input: a missing Secret is a False condition, and no Deployment.
    let orphan = eventually("the orphan's IdentityReady=False", || {
        let kps = kps.clone();
        async move {
            let kp = kps.get("orphan").await.map_err(|e| e.to_string())?;
            match condition(&kp, "IdentityReady") {
                Some((s, r)) if s == "False" => Ok(r),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(orphan, "SecretNotFound");
    assert!(deployments.get_opt("orphan").await.unwrap().is_none());

    drop(_proxy);
    drop(_operator);
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}
