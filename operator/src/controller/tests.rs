//! Reconcile flows against a mocked apiserver (the ApiServerVerifier pattern): each
//! test scripts the exact requests the reconciler must make, in order, and what the
//! apiserver answers. A missing request times out; an extra one fails `silence()` or
//! the reconcile itself.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::{Value, json};

use super::*;
use crate::fixtures::ApiServerVerifier;
use crate::fixtures::{kp as base_kp, kp_public, ready_slice};

const NS: &str = "ipfs";
const NAME: &str = "preload";

fn secret_json(name: &str, key: &str, bytes: &[u8]) -> Value {
    serde_json::to_value(Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(bytes.to_vec()),
        )])),
        ..Default::default()
    })
    .unwrap()
}

/// Puts `kp` into the index with `n` ready backends behind Service `kubo`.
fn seed_backends(index: &SharedIndex, kp: &KitsuneProxy, n: usize) {
    let mut idx = index.write().unwrap();
    idx.apply_proxy(kp);
    let ips: Vec<String> = (1..=n).map(|i| format!("10.0.0.{i}")).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    idx.apply_slice(&ready_slice(NS, "kubo-x", "kubo", &ips));
}

/// `type -> (status, reason)` of a status JSON's conditions.
fn conds(status: &Value) -> BTreeMap<String, (String, String)> {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_owned(),
                (
                    c["status"].as_str().unwrap().to_owned(),
                    c["reason"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

fn pair(s: &str, r: &str) -> (String, String) {
    (s.to_owned(), r.to_owned())
}

async fn events(api: &mut ApiServerVerifier, n: usize) -> Vec<(String, String, String)> {
    let mut out = vec![];
    for _ in 0..n {
        out.push(api.event(NS).await);
    }
    out.sort();
    out
}

async fn finish<T>(mock: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), mock)
        .await
        .expect("scenario did not finish")
        .expect("scenario failed")
}

#[tokio::test]
async fn create_applies_owned_children_and_reports_status() {
    let (ctx, mut api, index) = Context::test();
    let kp = base_kp();
    seed_backends(&index, &kp, 2);
    let (key, raw) = kitsune_common::key::generate_ed25519();
    let peer = key.public().to_peer_id().to_string();
    let secret = secret_json("preload-key", "key", &raw);

    let p = peer.clone();
    let mock = tokio::spawn(async move {
        api.get_secret(NS, "preload-key", Some(secret)).await;
        let d = api
            .apply_children(NS, NAME, json!({"replicas": 2, "readyReplicas": 0}))
            .await;
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(d["metadata"]["ownerReferences"][0]["controller"], true);
        let tmpl = &d["spec"]["template"];
        assert_eq!(tmpl["metadata"]["annotations"]["kitsune.dev/peer-id"], p);
        assert_eq!(
            tmpl["spec"]["volumes"][0]["secret"]["secretName"],
            "preload-key"
        );
        let args: Vec<&str> = tmpl["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.contains(&"http://op.kitsune.svc:8080/v1/backends/ipfs/preload"));

        let st = api.status(NS, NAME).await;
        assert_eq!(st["peerId"], p);
        assert_eq!(st["identitySecret"], "preload-key");
        assert_eq!(st["readyBackends"], 2);
        assert_eq!(st["replicas"], 2);
        assert_eq!(st["readyReplicas"], 0);
        assert_eq!(st["observedGeneration"], 1);
        assert!(
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["observedGeneration"] == 1)
        );
        let c = conds(&st);
        assert_eq!(c["IdentityReady"], pair("True", "KeyLoaded"));
        assert_eq!(c["BackendsAvailable"], pair("True", "BackendsReady"));
        assert_eq!(c["Ready"], pair("False", "NoReadyReplicas"));

        let ev = events(&mut api, 3).await;
        let summary: Vec<(&str, &str)> = ev
            .iter()
            .map(|(t, r, _)| (t.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("Normal", "BackendsReady"),
                ("Normal", "KeyLoaded"),
                ("Warning", "NoReadyReplicas")
            ]
        );
        api.silence().await;
        st
    });
    let action = reconcile(Arc::new(kp), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    finish(mock).await;
    assert_eq!(ctx.metrics.reconciles.get(), 1);
}

#[tokio::test]
async fn steady_state_reapplies_children_but_writes_no_status_or_events() {
    let (ctx, mut api, index) = Context::test();
    let kp = base_kp();
    seed_backends(&index, &kp, 1);
    let (_, raw) = kitsune_common::key::generate_ed25519();
    let secret = secret_json("preload-key", "key", &raw);

    let s = secret.clone();
    let mock = tokio::spawn(async move {
        api.get_secret(NS, "preload-key", Some(s)).await;
        api.apply_children(NS, NAME, json!({"replicas": 2, "readyReplicas": 2}))
            .await;
        let st = api.status(NS, NAME).await;
        events(&mut api, 3).await;
        (api, st)
    });
    reconcile(Arc::new(kp.clone()), ctx.clone()).await.unwrap();
    let (mut api, st) = finish(mock).await;

    // The same world again, with the status the first pass wrote.
    let mut kp = kp;
    kp.status = Some(serde_json::from_value(st).unwrap());
    let mock = tokio::spawn(async move {
        api.get_secret(NS, "preload-key", Some(secret)).await;
        api.apply_children(NS, NAME, json!({"replicas": 2, "readyReplicas": 2}))
            .await;
        api.silence().await;
    });
    reconcile(Arc::new(kp), ctx).await.unwrap();
    finish(mock).await;
}

#[tokio::test]
async fn update_rolls_out_spec_and_moves_only_the_changed_condition() {
    let (ctx, mut api, index) = Context::test();
    let (key, raw) = kitsune_common::key::generate_ed25519();
    let peer = key.public().to_peer_id().to_string();
    let mut kp = base_kp();
    seed_backends(&index, &kp, 3);
    kp.metadata.generation = Some(2);
    kp.spec.proxy.replicas = 3;
    kp.spec.proxy.preload.enabled = true;
    let old_time = "2020-01-01T00:00:00Z";
    let cond = |t: &str, s: &str, r: &str| {
        json!({"type": t, "status": s, "reason": r, "message": "m",
               "observedGeneration": 1, "lastTransitionTime": old_time})
    };
    kp.status = Some(
        serde_json::from_value(json!({
            "observedGeneration": 1,
            "peerId": peer,
            "identitySecret": "preload-key",
            "readyBackends": 3,
            "replicas": 2,
            "readyReplicas": 0,
            "conditions": [
                cond("IdentityReady", "True", "KeyLoaded"),
                cond("BackendsAvailable", "True", "BackendsReady"),
                cond("Ready", "False", "NoReadyReplicas"),
            ]
        }))
        .unwrap(),
    );
    let secret = secret_json("preload-key", "key", &raw);
    let mock = tokio::spawn(async move {
        api.get_secret(NS, "preload-key", Some(secret)).await;
        let d = api
            .apply_children(NS, NAME, json!({"replicas": 3, "readyReplicas": 3}))
            .await;
        assert_eq!(d["spec"]["replicas"], 3);
        let args = d["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--preload-port"), "{args}");
        let st = api.status(NS, NAME).await;
        assert_eq!(st["observedGeneration"], 2);
        assert_eq!(st["readyReplicas"], 3);
        let c = conds(&st);
        assert_eq!(c["Ready"], pair("True", "Ready"));
        for c in st["conditions"].as_array().unwrap() {
            assert_eq!(c["observedGeneration"], 2);
            let moved = c["lastTransitionTime"] != old_time;
            assert_eq!(moved, c["type"] == "Ready", "{c}");
        }
        let ev = events(&mut api, 1).await;
        assert_eq!((ev[0].0.as_str(), ev[0].1.as_str()), ("Normal", "Ready"));
        api.silence().await;
    });
    reconcile(Arc::new(kp), ctx).await.unwrap();
    finish(mock).await;
}

#[tokio::test]
async fn missing_secret_is_a_false_condition_an_event_and_backoff() {
    let (ctx, mut api, index) = Context::test();
    let kp = base_kp();
    seed_backends(&index, &kp, 1);
    let mock = tokio::spawn(async move {
        api.get_secret(NS, "preload-key", None).await;
        // No children: nothing is applied without an identity.
        let st = api.status(NS, NAME).await;
        let c = conds(&st);
        assert_eq!(c["IdentityReady"], pair("False", "SecretNotFound"));
        assert_eq!(c["Ready"], pair("False", "SecretNotFound"));
        assert_eq!(c["BackendsAvailable"], pair("True", "BackendsReady"));
        assert!(st.get("peerId").is_none());
        // Ready repeats SecretNotFound: one warning for both.
        let ev = events(&mut api, 2).await;
        let warning = ev
            .iter()
            .find(|(t, r, _)| t == "Warning" && r == "SecretNotFound")
            .expect("a SecretNotFound warning");
        assert!(warning.2.contains("preload-key"), "{}", warning.2);
        api.silence().await;
    });
    let kp = Arc::new(kp);
    let err = reconcile(kp.clone(), ctx.clone()).await.unwrap_err();
    finish(mock).await;
    assert_eq!(err.reason(), "SecretNotFound");

    // Bounded backoff, counted by reason: no busy loop. A missing Secret is read again
    // at most SECRET_RECHECK later however long it stays missing (no Secret change
    // wakes the operator); other failures back off to BACKOFF_MAX.
    assert_eq!(
        error_policy(kp.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(kp.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    for _ in 0..20 {
        error_policy(kp.clone(), &err, ctx.clone());
    }
    assert_eq!(
        error_policy(kp.clone(), &err, ctx.clone()),
        Action::requeue(SECRET_RECHECK)
    );
    let other = Error::MissingObjectKey("test");
    assert_eq!(
        error_policy(kp.clone(), &other, ctx.clone()),
        Action::requeue(BACKOFF_MAX),
        "the failure count is the proxy's, whatever the reason"
    );
    let failures = ctx
        .metrics
        .failures
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: "SecretNotFound".into(),
        })
        .get();
    assert_eq!(failures, 23);
}

#[tokio::test]
async fn bad_key_bytes_are_reported_without_the_bytes() {
    let (ctx, mut api, _index) = Context::test();
    let kp = base_kp();
    let garbage = b"this is not a key at all, but it is secret".to_vec();
    let secret = secret_json("preload-key", "key", &garbage);
    let mock = tokio::spawn(async move {
        api.get_secret(NS, "preload-key", Some(secret)).await;
        let st = api.status(NS, NAME).await;
        let c = conds(&st);
        assert_eq!(c["IdentityReady"], pair("False", "InvalidKey"));
        assert_eq!(c["BackendsAvailable"], pair("False", "NoReadyBackends"));
        assert!(
            !st.to_string().contains("it is secret"),
            "status leaks key bytes: {st}"
        );
        for (_, _, note) in events(&mut api, 2).await {
            assert!(
                !note.contains("it is secret"),
                "event leaks key bytes: {note}"
            );
        }
        api.silence().await;
    });
    let err = reconcile(Arc::new(kp), ctx).await.unwrap_err();
    finish(mock).await;
    assert_eq!(err.reason(), "InvalidKey");
    assert!(!err.to_string().contains("it is secret"));
}

#[tokio::test]
async fn generated_identity_is_created_once_and_used() {
    let (ctx, mut api, _index) = Context::test();
    let mut kp = base_kp();
    kp.spec.identity.secret_ref = None;
    kp.spec.identity.generate = true;
    let mock = tokio::spawn(async move {
        api.get_secret(NS, "preload-identity", None).await;
        let created = api.create_secret(NS).await;
        assert_eq!(created["metadata"]["name"], "preload-identity");
        assert_eq!(created["immutable"], true);
        assert!(created["metadata"].get("ownerReferences").is_none());
        let secret: Secret = serde_json::from_value(created).unwrap();
        let peer = kitsune_common::key::peer_id(&secret.data.unwrap()["key"].0)
            .unwrap()
            .to_string();
        let (t, reason, note) = api.event(NS).await;
        assert_eq!(
            (t.as_str(), reason.as_str()),
            ("Normal", "IdentityGenerated")
        );
        assert!(note.contains(&peer));
        let d = api
            .apply_children(NS, NAME, json!({"replicas": 2, "readyReplicas": 1}))
            .await;
        assert_eq!(
            d["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
            "preload-identity"
        );
        let st = api.status(NS, NAME).await;
        assert_eq!(st["peerId"], peer);
        assert_eq!(st["identitySecret"], "preload-identity");
        assert_eq!(conds(&st)["IdentityReady"], pair("True", "KeyLoaded"));
        let ev = events(&mut api, 2).await;
        assert_eq!(ev[0].1, "KeyLoaded");
        assert_eq!(
            (ev[1].0.as_str(), ev[1].1.as_str()),
            ("Warning", "NoReadyBackends")
        );
        api.silence().await;
    });
    reconcile(Arc::new(kp.clone()), ctx.clone()).await.unwrap();
    finish(mock).await;
}

#[tokio::test]
async fn an_existing_generated_secret_is_reused_never_rotated() {
    let (ctx, mut api, _index) = Context::test();
    let mut kp = base_kp();
    kp.spec.identity.secret_ref = None;
    kp.spec.identity.generate = true;
    let (key, raw) = kitsune_common::key::generate_ed25519();
    let peer = key.public().to_peer_id().to_string();
    let secret = secret_json("preload-identity", "key", &raw);
    let mock = tokio::spawn(async move {
        api.get_secret(NS, "preload-identity", Some(secret)).await;
        // No POST: the existing key stays.
        api.apply_children(NS, NAME, json!({})).await;
        let st = api.status(NS, NAME).await;
        assert_eq!(st["peerId"], peer);
        events(&mut api, 2).await;
        api.silence().await;
    });
    reconcile(Arc::new(kp), ctx).await.unwrap();
    finish(mock).await;
}

#[tokio::test]
async fn bad_selector_and_conflicting_spec_are_reported_before_any_write() {
    for (mutate, reason, cond) in [
        (
            (|kp: &mut KitsuneProxy| {
                kp.spec.backends.service_name = None;
                kp.spec.backends.selector = Some(LabelSelector::default());
            }) as fn(&mut KitsuneProxy),
            "InvalidSelector",
            "BackendsAvailable",
        ),
        (
            |kp: &mut KitsuneProxy| kp.spec.identity.generate = true,
            "ConflictingSpec",
            "IdentityReady",
        ),
        (
            |kp: &mut KitsuneProxy| kp.spec.proxy.listeners.ws_port = Some(4001),
            "ConflictingSpec",
            "Ready",
        ),
    ] {
        let (ctx, mut api, _index) = Context::test();
        let mut kp = base_kp();
        mutate(&mut kp);
        let mock = tokio::spawn(async move {
            // No Secret read, no children: straight to status.
            let st = api.status(NS, NAME).await;
            let c = conds(&st);
            assert_eq!(c[cond], pair("False", reason));
            assert_eq!(c["Ready"], pair("False", reason));
            // One warning: Ready repeats the reason, and Unknown conditions are no news.
            let ev = events(&mut api, 1).await;
            assert_eq!((ev[0].0.as_str(), ev[0].1.as_str()), ("Warning", reason));
            api.silence().await;
        });
        let err = reconcile(Arc::new(kp), ctx).await.unwrap_err();
        finish(mock).await;
        assert_eq!(err.reason(), reason);
    }
}

#[tokio::test]
async fn deletion_writes_nothing() {
    let (ctx, mut api, _index) = Context::test();
    let mut kp = base_kp();
    kp.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let mock = tokio::spawn(async move { api.silence().await });
    let action = reconcile(Arc::new(kp), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    finish(mock).await;
}

#[tokio::test]
async fn a_follower_writes_nothing() {
    let (ctx, mut api, _index) = Context::test_with_leadership(Leadership::elected().1);
    let mock = tokio::spawn(async move { api.silence().await });
    let action = reconcile(Arc::new(base_kp()), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    finish(mock).await;
}

#[test]
fn backoff_doubles_and_is_capped() {
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(2), Duration::from_secs(10));
    assert_eq!(backoff(4), Duration::from_secs(40));
    assert_eq!(backoff(7), BACKOFF_MAX);
    assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
}

#[tokio::test]
async fn failure_counts_go_when_the_proxy_is_deleted() {
    let (ctx, _api, index) = Context::test();
    let kp = Arc::new(base_kp());
    let key = ProxyKey::new(NS, NAME);
    seed_backends(&index, &kp, 0);
    let err = Error::MissingObjectKey("test");
    error_policy(kp.clone(), &err, ctx.clone());
    assert_eq!(
        error_policy(kp.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    // A change for a proxy that still exists keeps its count.
    ctx.index_changed(&key);
    assert_eq!(ctx.failing(), 1);

    // Deleted: the index drops it and reports the change; the count goes with it.
    let changed = index.write().unwrap().delete_proxy(NS, NAME);
    assert_eq!(changed, vec![key.clone()]);
    for k in &changed {
        ctx.index_changed(k);
    }
    assert_eq!(ctx.failing(), 0);
    // Re-created under the same name, it starts from the first backoff step.
    assert_eq!(
        error_policy(kp, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn nothing_is_written_before_the_index_synced() {
    let (ctx, mut api, _index) = Context::test();
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(Context {
        synced,
        ..Arc::into_inner(ctx).unwrap()
    });
    let mock = tokio::spawn(async move { api.silence().await });
    let action = reconcile(Arc::new(base_kp()), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    finish(mock).await;
    drop(synced_tx);
}

#[tokio::test]
async fn the_public_face_mounts_its_certificate_and_announces_its_addresses() {
    let (ctx, mut api, index) = Context::test();
    let kp = kp_public();
    seed_backends(&index, &kp, 1);
    let (_, raw) = kitsune_common::key::generate_ed25519();
    let secret = secret_json("preload-key", "key", &raw);
    let mock = tokio::spawn(async move {
        api.get_secret(NS, "preload-key", Some(secret)).await;
        let d = api
            .apply_children(NS, NAME, json!({"replicas": 2, "readyReplicas": 2}))
            .await;
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let after = |flag: &str| -> Vec<&str> {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1])
                .collect()
        };
        assert_eq!(after("--http-port"), ["8443"]);
        assert!(after("--preload-port").is_empty(), "preload stays off");
        assert_eq!(after("--tls-cert-file"), ["/var/run/kitsune/tls/tls.crt"]);
        assert_eq!(after("--tls-key-file"), ["/var/run/kitsune/tls/tls.key"]);
        assert_eq!(
            after("--announce"),
            [
                "/dns4/ipfs.example.com/tcp/443/tls/ws",
                "/dns4/ipfs.example.com/tcp/443/tls/http"
            ]
        );
        let tls = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "tls")
            .expect("a tls volume");
        assert_eq!(tls["secret"]["secretName"], "ipfs-example-com");
        assert_eq!(tls["secret"]["defaultMode"], 0o440);
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "tls")
            .expect("a tls mount");
        assert_eq!(mount["mountPath"], "/var/run/kitsune/tls");
        assert_eq!(mount["readOnly"], true);
        let st = api.status(NS, NAME).await;
        assert_eq!(conds(&st)["Ready"], pair("True", "Ready"));
        events(&mut api, 3).await;
        api.silence().await;
    });
    reconcile(Arc::new(kp), ctx).await.unwrap();
    finish(mock).await;
}
