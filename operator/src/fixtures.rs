//! Test builders and doubles, in one place: the KitsuneProxy, EndpointSlice and Pod
//! literals the tests share; a `kube::Client` over a mocked service; and
//! `ApiServerVerifier`, which plays the apiserver for one scenario, asserting each request
//! in order (method, path, SSA parameters, body) and answering as the apiserver would.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ObjectReference, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use crate::controller::Context;
use crate::crd::{BackendsSpec, IdentitySpec, KitsuneProxy, KitsuneProxySpec, SecretKeyRef};
use crate::index::{Index, SERVICE_NAME_LABEL, SharedIndex};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::resources::BuildConfig;

/// The KitsuneProxy `ipfs/preload`: identity from Secret `preload-key`, backends from
/// Service `kubo` (RPC 5001, swarm 4001), as read from the API (uid, generation 1).
pub fn kp() -> KitsuneProxy {
    let mut kp = KitsuneProxy::new(
        "preload",
        KitsuneProxySpec {
            identity: IdentitySpec {
                secret_ref: Some(SecretKeyRef {
                    name: "preload-key".into(),
                    key: "key".into(),
                }),
                generate: false,
            },
            backends: BackendsSpec {
                selector: None,
                service_name: Some("kubo".into()),
                rpc_port: Some(IntOrString::Int(5001)),
                swarm_port: Some(IntOrString::Int(4001)),
            },
            proxy: Default::default(),
            service: Default::default(),
        },
    );
    kp.metadata.namespace = Some("ipfs".into());
    kp.metadata.uid = Some("uid-1".into());
    kp.metadata.generation = Some(1);
    kp
}

/// [`kp`] serving the public face: the shared port 8443 without preload, TLS from the
/// cert-manager Secret `ipfs-example-com`, and announced public addresses.
pub fn kp_public() -> KitsuneProxy {
    let mut kp = kp();
    kp.spec.proxy.listeners.http_port = Some(8443);
    kp.spec.proxy.tls = Some(crate::crd::ProxyTlsSpec {
        secret_name: "ipfs-example-com".into(),
    });
    kp.spec.proxy.announce = vec![
        "/dns4/ipfs.example.com/tcp/443/tls/ws".into(),
        "/dns4/ipfs.example.com/tcp/443/tls/http".into(),
    ];
    kp.spec.proxy.gateway = true;
    kp
}

/// A KitsuneProxy selecting the EndpointSlices of `service` (swarm port by name).
pub fn proxy_for_service(ns: &str, name: &str, service: &str) -> KitsuneProxy {
    let mut kp = kp();
    kp.metadata.name = Some(name.into());
    kp.metadata.namespace = Some(ns.into());
    kp.spec.backends.service_name = Some(service.into());
    kp.spec.backends.swarm_port = Some(IntOrString::String("swarm".into()));
    kp
}

/// A KitsuneProxy selecting the pods labelled `app=<app>`.
pub fn proxy_for_selector(ns: &str, name: &str, app: &str) -> KitsuneProxy {
    let mut kp = proxy_for_service(ns, name, "unused");
    kp.spec.backends.service_name = None;
    kp.spec.backends.selector = Some(LabelSelector {
        match_labels: Some([("app".to_string(), app.to_string())].into()),
        match_expressions: None,
    });
    kp
}

/// (ip, ready, terminating, pod)
pub type Ep<'a> = (&'a str, Option<bool>, Option<bool>, &'a str);

/// An EndpointSlice of `service` with ports `rpc` 5001 and `swarm` 4001.
pub fn slice(ns: &str, name: &str, service: &str, eps: &[Ep]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            eps.iter()
                .map(|(ip, ready, terminating, pod)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: *ready,
                        terminating: *terminating,
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(pod.to_string()),
                        namespace: Some(ns.into()),
                        ..Default::default()
                    }),
                    zone: Some("zone-a".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![
            EndpointPort {
                name: Some("rpc".into()),
                port: Some(5001),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            EndpointPort {
                name: Some("swarm".into()),
                port: Some(4001),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
    }
}

/// A kubo pod labelled `app=<app>` with named ports `rpc` 5001 and `swarm` 4001.
pub fn pod(ns: &str, name: &str, app: &str, ip: &str, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some([("app".to_string(), app.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "kubo".into(),
                ports: Some(vec![
                    ContainerPort {
                        name: Some("rpc".into()),
                        container_port: 5001,
                        ..Default::default()
                    },
                    ContainerPort {
                        name: Some("swarm".into()),
                        container_port: 4001,
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// A slice of ready, non-terminating endpoints at `ips`, of pods `<service>-<i>`.
pub fn ready_slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    let pods: Vec<String> = (0..ips.len()).map(|i| format!("{service}-{i}")).collect();
    let eps: Vec<Ep> = ips
        .iter()
        .zip(&pods)
        .map(|(ip, pod)| (*ip, Some(true), Some(false), pod.as_str()))
        .collect();
    slice(ns, name, service, &eps)
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub struct ApiServerVerifier(Handle);

/// One request the verifier received.
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Context {
    /// A context whose client talks to the returned verifier. Always leader.
    pub fn test() -> (Arc<Context>, ApiServerVerifier, SharedIndex) {
        Self::test_with_leadership(Leadership::always())
    }

    pub fn test_with_leadership(
        leader: Leadership,
    ) -> (Arc<Context>, ApiServerVerifier, SharedIndex) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let index: SharedIndex = Arc::new(RwLock::new(Index::new(0)));
        let ctx = Context::new(
            client,
            Some("test".into()),
            Arc::new(Metrics::default()),
            index.clone(),
            leader,
            tokio::sync::watch::channel(true).1,
            BuildConfig {
                watch_base_url: "http://op.kitsune.svc:8080".into(),
                default_image: "kitsune-proxy:test".into(),
                watch_ca_pem: None,
            },
        );
        (Arc::new(ctx), ApiServerVerifier(handle), index)
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

impl ApiServerVerifier {
    /// Receives the next request, asserting its method and path.
    pub async fn expect(
        &mut self,
        method: &str,
        path: &str,
    ) -> (Seen, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(2), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
            .unwrap_or_else(|| panic!("client dropped before {method} {path}"));
        let seen_method = req.method().to_string();
        let seen_path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        assert_eq!(
            (seen_method.as_str(), seen_path.as_str()),
            (method, path),
            "unexpected request (query {query})"
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (
            Seen {
                method: seen_method,
                path: seen_path,
                query,
                body,
            },
            send,
        )
    }

    fn reply(send: tower_test::mock::SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    /// GET of a Secret, answered with `secret` (or 404 when `None`).
    pub async fn get_secret(&mut self, ns: &str, name: &str, secret: Option<Value>) {
        let (_, send) = self
            .expect("GET", &format!("/api/v1/namespaces/{ns}/secrets/{name}"))
            .await;
        match secret {
            Some(s) => Self::reply(send, StatusCode::OK, &s),
            None => Self::reply(
                send,
                StatusCode::NOT_FOUND,
                &status_body(404, "NotFound", &format!("secrets \"{name}\" not found")),
            ),
        }
    }

    /// POST of a Secret; answered by echoing it. Returns the body.
    pub async fn create_secret(&mut self, ns: &str) -> Value {
        let (seen, send) = self
            .expect("POST", &format!("/api/v1/namespaces/{ns}/secrets"))
            .await;
        Self::reply(send, StatusCode::CREATED, &seen.body);
        seen.body
    }

    /// A server-side apply to `path`: asserts the field manager and force, merges
    /// `extra` into the echoed object (e.g. a Deployment status). Returns the body.
    pub async fn apply(&mut self, path: &str, extra: Option<Value>) -> Value {
        let (seen, send) = self.expect("PATCH", path).await;
        assert!(
            seen.query.contains("fieldManager=kitsune-operator")
                && seen.query.contains("force=true"),
            "{} is not a forced SSA: {}",
            seen.path,
            seen.query
        );
        let mut reply = seen.body.clone();
        if let (Some(obj), Some(Value::Object(extra))) = (reply.as_object_mut(), extra) {
            obj.extend(extra);
        }
        Self::reply(send, StatusCode::OK, &reply);
        seen.body
    }

    /// The five owned objects, in the reconciler's order; returns the Deployment body.
    pub async fn apply_children(
        &mut self,
        ns: &str,
        name: &str,
        deployment_status: Value,
    ) -> Value {
        self.apply(
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}"),
            None,
        )
        .await;
        let d = self
            .apply(
                &format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
                Some(json!({ "status": deployment_status })),
            )
            .await;
        self.apply(&format!("/api/v1/namespaces/{ns}/services/{name}"), None)
            .await;
        self.apply(
            &format!("/api/v1/namespaces/{ns}/services/{name}-metrics"),
            None,
        )
        .await;
        self.apply(
            &format!("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}"),
            None,
        )
        .await;
        d
    }

    /// The status SSA; returns `status` from the body.
    pub async fn status(&mut self, ns: &str, name: &str) -> Value {
        // The apiserver answers with the whole object; only its shape matters here.
        let whole = json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"identity": {"generate": true}, "backends": {"serviceName": "x"}},
        });
        let body = self
            .apply(
                &format!("/apis/kitsune.dev/v1alpha1/namespaces/{ns}/kitsuneproxies/{name}/status"),
                Some(whole),
            )
            .await;
        assert_eq!(body["apiVersion"], "kitsune.dev/v1alpha1");
        assert_eq!(body["kind"], "KitsuneProxy");
        body["status"].clone()
    }

    /// An event; returns (type, reason, note).
    pub async fn event(&mut self, ns: &str) -> (String, String, String) {
        let (seen, send) = self
            .expect(
                "POST",
                &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            )
            .await;
        Self::reply(send, StatusCode::CREATED, &seen.body);
        let s = |k: &str| seen.body[k].as_str().unwrap_or_default().to_owned();
        (s("type"), s("reason"), s("note"))
    }

    /// Asserts that no request arrives within a short while.
    pub async fn silence(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await;
        if let Ok(Some((req, _))) = next {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}
