//! The index as a specification: watch events in, backend sets out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::fixtures::{pod, proxy_for_selector, proxy_for_service, slice};

fn addrs(index: &Index, ns: &str, name: &str) -> Vec<String> {
    index
        .snapshot(&ProxyKey::new(ns, name))
        .unwrap()
        .backends
        .into_iter()
        .map(|b| b.address)
        .collect()
}

#[test]
fn slice_add_update_delete() {
    let mut index = Index::new(100);
    let key = ProxyKey::new("ns", "kp");
    assert_eq!(
        index.apply_proxy(&proxy_for_service("ns", "kp", "kubo")),
        vec![key.clone()]
    );
    let mut rx = index.subscribe(&key).unwrap();
    let first = rx.borrow_and_update().clone();
    assert!(first.backends.is_empty());
    assert_eq!(first.version, 101);

    // Add.
    let s = slice(
        "ns",
        "kubo-abc",
        "kubo",
        &[("10.0.0.2", Some(true), None, "kubo-1")],
    );
    assert_eq!(index.apply_slice(&s), vec![key.clone()]);
    assert!(rx.has_changed().unwrap());
    let snap = rx.borrow_and_update().clone();
    assert!(snap.version > first.version);
    assert_eq!(
        snap.backends,
        vec![Backend {
            address: "10.0.0.2".into(),
            rpc_port: 5001,
            swarm_port: Some(4001),
            pod_name: Some("kubo-1".into()),
            zone: Some("zone-a".into()),
        }]
    );

    // Update: a second endpoint appears; output stays sorted.
    let s = slice(
        "ns",
        "kubo-abc",
        "kubo",
        &[
            ("10.0.0.9", Some(true), None, "kubo-2"),
            ("10.0.0.2", Some(true), None, "kubo-1"),
        ],
    );
    assert_eq!(index.apply_slice(&s), vec![key.clone()]);
    assert_eq!(addrs(&index, "ns", "kp"), ["10.0.0.2", "10.0.0.9"]);
    assert_eq!(index.ready_backends(&key), Some(2));

    // The same content again changes nothing and sends nothing.
    rx.borrow_and_update();
    assert!(index.apply_slice(&s).is_empty());
    assert!(!rx.has_changed().unwrap());

    // Delete.
    assert_eq!(index.delete_slice("ns", "kubo-abc"), vec![key.clone()]);
    assert!(addrs(&index, "ns", "kp").is_empty());
    assert!(index.delete_slice("ns", "kubo-abc").is_empty());
}

#[test]
fn not_ready_and_terminating_endpoints_are_not_backends() {
    let mut index = Index::new(0);
    index.apply_proxy(&proxy_for_service("ns", "kp", "kubo"));
    index.apply_slice(&slice(
        "ns",
        "s1",
        "kubo",
        &[
            ("10.0.0.1", Some(true), Some(false), "ready"),
            ("10.0.0.2", Some(false), None, "not-ready"),
            ("10.0.0.3", Some(true), Some(true), "terminating-but-ready"),
            ("10.0.0.4", Some(false), Some(true), "terminating"),
            ("10.0.0.5", None, None, "unknown-means-ready"),
        ],
    ));
    assert_eq!(addrs(&index, "ns", "kp"), ["10.0.0.1", "10.0.0.5"]);

    // An endpoint turning unready is removed.
    let key = ProxyKey::new("ns", "kp");
    let changed = index.apply_slice(&slice(
        "ns",
        "s1",
        "kubo",
        &[("10.0.0.1", Some(true), Some(true), "ready")],
    ));
    assert_eq!(changed, vec![key]);
    assert!(addrs(&index, "ns", "kp").is_empty());
}

#[test]
fn several_slices_per_service_merge_and_deduplicate() {
    let mut index = Index::new(0);
    index.apply_proxy(&proxy_for_service("ns", "kp", "kubo"));
    index.apply_slice(&slice(
        "ns",
        "a",
        "kubo",
        &[("10.0.0.3", Some(true), None, "p3")],
    ));
    index.apply_slice(&slice(
        "ns",
        "b",
        "kubo",
        &[
            ("10.0.0.1", Some(true), None, "p1"),
            // The same endpoint in two slices (mid-migration) counts once.
            ("10.0.0.3", Some(true), None, "p3"),
        ],
    ));
    // Another Service's slice, and the same Service name in another namespace.
    index.apply_slice(&slice(
        "ns",
        "c",
        "web",
        &[("10.0.0.7", Some(true), None, "w")],
    ));
    index.apply_slice(&slice(
        "other",
        "d",
        "kubo",
        &[("10.9.0.1", Some(true), None, "x")],
    ));
    assert_eq!(addrs(&index, "ns", "kp"), ["10.0.0.1", "10.0.0.3"]);
    assert!(index.has_slices_for("ns", "kubo"));
    assert!(!index.has_slices_for("ns", "nothing"));

    index.delete_slice("ns", "b");
    assert_eq!(addrs(&index, "ns", "kp"), ["10.0.0.3"]);
}

#[test]
fn named_ports_resolve_per_slice() {
    let mut index = Index::new(0);
    let mut kp = proxy_for_service("ns", "kp", "kubo");
    kp.spec.backends.rpc_port = Some(IntOrString::String("rpc".into()));
    index.apply_proxy(&kp);
    let mut s = slice("ns", "a", "kubo", &[("10.0.0.3", Some(true), None, "p3")]);
    s.ports.as_mut().unwrap()[0].port = Some(15001);
    index.apply_slice(&s);
    let snap = index.snapshot(&ProxyKey::new("ns", "kp")).unwrap();
    assert_eq!(snap.backends[0].rpc_port, 15001);
    assert_eq!(snap.backends[0].swarm_port, Some(4001));

    // A slice without the named RPC port contributes nothing.
    s.ports = Some(vec![]);
    index.apply_slice(&s);
    assert!(addrs(&index, "ns", "kp").is_empty());
}

/// The pod set of `proxy_for_selector(ns, _, app)`.
fn app(ns: &str, app: &str) -> PodSetKey {
    PodSetKey {
        namespace: ns.into(),
        selector: format!("app={app}"),
    }
}

#[test]
fn bare_selector_reads_pods_without_endpoint_slices() {
    let mut index = Index::new(0);
    let kubo = app("ns", "kubo");
    index.apply_proxy(&proxy_for_selector("ns", "kp", "kubo"));
    assert_eq!(index.pod_sets().collect::<Vec<_>>(), [&kubo]);
    assert!(!index.pod_sets_listed());
    // Nothing counts before the set's first list.
    assert!(
        index
            .apply_pod(&kubo, &pod("ns", "kubo-9", "kubo", "10.1.0.9", true))
            .is_empty()
    );
    index.reset_pods(&kubo, &[pod("ns", "kubo-0", "kubo", "10.1.0.1", true)]);
    assert!(index.pod_sets_listed());
    index.apply_pod(&kubo, &pod("ns", "kubo-1", "kubo", "10.1.0.2", false));
    // A stray pod the selector does not match stays out.
    index.apply_pod(&kubo, &pod("ns", "web-0", "web", "10.1.0.3", true));
    let mut deleting = pod("ns", "kubo-2", "kubo", "10.1.0.4", true);
    deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    index.apply_pod(&kubo, &deleting);
    let snap = index.snapshot(&ProxyKey::new("ns", "kp")).unwrap();
    assert_eq!(
        snap.backends,
        vec![Backend {
            address: "10.1.0.1".into(),
            rpc_port: 5001,
            swarm_port: Some(4001),
            pod_name: Some("kubo-0".into()),
            zone: None,
        }]
    );
    // Becoming ready adds it; deletion removes it.
    index.apply_pod(&kubo, &pod("ns", "kubo-1", "kubo", "10.1.0.2", true));
    assert_eq!(addrs(&index, "ns", "kp"), ["10.1.0.1", "10.1.0.2"]);
    index.delete_pod(&kubo, "kubo-0");
    assert_eq!(addrs(&index, "ns", "kp"), ["10.1.0.2"]);
    // Slices do not matter in selector mode.
    assert!(
        index
            .apply_slice(&slice(
                "ns",
                "s",
                "kubo",
                &[("10.0.0.1", Some(true), None, "p")]
            ))
            .is_empty()
    );
}

#[test]
fn selector_changes_move_the_set() {
    let mut index = Index::new(0);
    let key = ProxyKey::new("ns", "kp");
    index.apply_slice(&slice(
        "ns",
        "s",
        "svc",
        &[("10.0.0.1", Some(true), None, "p")],
    ));

    index.apply_proxy(&proxy_for_selector("ns", "kp", "kubo"));
    let kubo_pods = [pod("ns", "kubo-0", "kubo", "10.1.0.1", true)];
    index.reset_pods(&app("ns", "kubo"), &kubo_pods);
    let mut rx = index.subscribe(&key).unwrap();
    assert_eq!(addrs(&index, "ns", "kp"), ["10.1.0.1"]);

    // The selector changes to other pods: the old set is dropped (its watch stops),
    // and the proxy keeps its backends until the new set is listed.
    rx.borrow_and_update();
    assert!(
        index
            .apply_proxy(&proxy_for_selector("ns", "kp", "ipfs"))
            .is_empty()
    );
    assert_eq!(index.pod_sets().collect::<Vec<_>>(), [&app("ns", "ipfs")]);
    assert_eq!(addrs(&index, "ns", "kp"), ["10.1.0.1"]);
    let ipfs_pods = [pod("ns", "ipfs-0", "ipfs", "10.1.0.9", true)];
    assert_eq!(
        index.reset_pods(&app("ns", "ipfs"), &ipfs_pods),
        vec![key.clone()]
    );
    assert!(rx.has_changed().unwrap());
    assert_eq!(addrs(&index, "ns", "kp"), ["10.1.0.9"]);

    // Switching to a Service uses its EndpointSlices instead, and needs no pod watch.
    index.apply_proxy(&proxy_for_service("ns", "kp", "svc"));
    assert_eq!(addrs(&index, "ns", "kp"), ["10.0.0.1"]);
    assert_eq!(index.pod_sets().count(), 0);

    // An invalid selector tracks the proxy with no backends (the reconciler reports why).
    let mut bad = proxy_for_selector("ns", "kp", "kubo");
    bad.spec.backends.selector = Some(LabelSelector::default());
    index.apply_proxy(&bad);
    assert_eq!(index.ready_backends(&key), Some(0));

    // Unchanged spec: nothing to send.
    assert!(index.apply_proxy(&bad).is_empty());
}

#[test]
fn deleting_a_proxy_closes_its_channel_and_relists_replace() {
    let mut index = Index::new(0);
    let key = ProxyKey::new("ns", "kp");
    index.apply_proxy(&proxy_for_service("ns", "kp", "kubo"));
    let rx = index.subscribe(&key).unwrap();
    assert_eq!(index.delete_proxy("ns", "kp"), vec![key.clone()]);
    assert!(
        rx.has_changed().is_err(),
        "subscribers see the channel close"
    );
    assert!(index.subscribe(&key).is_none());
    assert!(index.snapshot(&key).is_none());

    // Relists replace state atomically, dropping what the relist lacks.
    index.reset_proxies(&[
        proxy_for_service("ns", "a", "kubo"),
        proxy_for_service("ns", "b", "kubo"),
    ]);
    index.apply_slice(&slice(
        "ns",
        "old",
        "kubo",
        &[("10.0.0.1", Some(true), None, "p")],
    ));
    assert_eq!(addrs(&index, "ns", "a"), ["10.0.0.1"]);
    let changed = index.reset_slices(&[slice(
        "ns",
        "new",
        "kubo",
        &[("10.0.0.2", Some(true), None, "q")],
    )]);
    assert_eq!(changed.len(), 2);
    assert_eq!(addrs(&index, "ns", "b"), ["10.0.0.2"]);
    let changed = index.reset_proxies(&[proxy_for_service("ns", "a", "kubo")]);
    assert_eq!(changed, vec![ProxyKey::new("ns", "b")]);
    assert_eq!(index.proxies().count(), 1);
    assert!(index.reset_pods(&app("ns", "kubo"), &[]).is_empty());
    assert_eq!(addrs(&index, "ns", "a"), ["10.0.0.2"]);
}
