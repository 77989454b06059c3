//! The reference docs and the monitoring examples stay true to the code:
//! - every flag and environment variable of both binaries is in docs/configuration.md;
//! - every metric both binaries register is in docs/metrics.md;
//! - every KitsuneProxy field is in docs/crd-reference.md;
//! - the Grafana dashboard and the alert rules query only metrics that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use kube::CustomResourceExt;
use prometheus_client::registry::Registry;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `--long` flags and env vars of the proxy, from its clap definition.
fn proxy_flags() -> (Vec<String>, Vec<String>) {
    let cmd = kitsune_proxy::config::Cli::command();
    let mut flags = vec![];
    let mut envs = vec![];
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long().filter(|l| !matches!(*l, "help" | "version")) {
            flags.push(format!("--{l}"));
        }
        if let Some(e) = a.get_env() {
            envs.push(e.to_string_lossy().into_owned());
        }
    }
    (flags, envs)
}

/// `--long` flags and env vars of the operator, from its `--help` (its CLI lives in the
/// binary, not the library).
fn operator_flags() -> (Vec<String>, Vec<String>) {
    let mut flags = vec![];
    let mut envs = vec![];
    for args in [&["--help"][..], &["run", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_kitsune-operator"))
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success());
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let t = line.trim_start();
            if t.starts_with('-')
                && let Some(flag) = t
                    .split([' ', ','])
                    .find(|w| w.starts_with("--"))
                    .filter(|f| !matches!(*f, "--help" | "--version"))
            {
                flags.push(flag.to_owned());
            }
            if let Some(i) = line.find("[env: ") {
                let rest = &line[i + 6..];
                let end = rest.find(['=', ']']).unwrap();
                envs.push(rest[..end].to_owned());
            }
        }
    }
    (flags, envs)
}

#[test]
fn configuration_doc_lists_every_flag_and_env_var() {
    let doc = read("docs/configuration.md");
    let mut missing = vec![];
    for (bin, (flags, envs)) in [
        ("kitsune-proxy", proxy_flags()),
        ("kitsune-operator", operator_flags()),
    ] {
        assert!(flags.len() > 5, "{bin}: too few flags found: {flags:?}");
        for f in flags {
            if !doc.contains(&format!("`{f}")) {
                missing.push(format!("{bin} {f}"));
            }
        }
        for e in envs {
            if !doc.contains(&format!("`{e}`")) {
                missing.push(format!("{bin} ${e}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks {missing:?}; add them (see `kitsune-proxy --help`, \
         `kitsune-operator run --help`)"
    );
}

/// Every series name the registries expose: counters as `_total`, histograms as their
/// `_bucket`, `_sum` and `_count`.
fn series(registry: &Registry) -> (BTreeSet<String>, BTreeSet<String>) {
    let text = kitsune_operator::metrics::encode(registry);
    let mut documented = BTreeSet::new();
    let mut queryable = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                documented.insert(format!("{name}_total"));
                queryable.insert(format!("{name}_total"));
            }
            "histogram" => {
                documented.insert(name.to_owned());
                for s in ["bucket", "sum", "count"] {
                    queryable.insert(format!("{name}_{s}"));
                }
            }
            _ => {
                documented.insert(name.to_owned());
                queryable.insert(name.to_owned());
            }
        }
    }
    (documented, queryable)
}

fn all_series() -> (BTreeSet<String>, BTreeSet<String>) {
    use kitsune_proxy::metrics as pm;
    let mut proxy = Registry::default();
    let m = pm::Metrics::register(&mut proxy);
    // A labelled family is only encoded once it holds a label set: create one each.
    let direction = pm::DirectionLabels {
        direction: pm::Direction::Upstream,
    };
    let _ = m.blocks_forwarded.get_or_create(&direction);
    let _ = m.bytes_forwarded.get_or_create(&direction);
    let _ = m
        .presences_sent
        .get_or_create(&pm::ReasonLabels { reason: "have" });
    let _ = m.backends.get_or_create(&pm::StateLabels {
        state: pm::BackendState::Connected,
    });
    m.reject("oversized_frame");
    m.refs_outcome("ok");
    let _ = m
        .reverse_wants
        .get_or_create(&pm::OutcomeLabels { outcome: "refused" });
    kitsune_proxy::sources::watch::WatchStatus::register(&mut proxy);
    let mut operator = Registry::default();
    let om = kitsune_operator::metrics::Metrics::new(&mut operator);
    om.failed("Forbidden");
    let _ = om
        .ready_backends
        .get_or_create(&kitsune_operator::metrics::ProxyLabels {
            namespace: "ns".into(),
            name: "kp".into(),
        });
    kitsune_operator::watch_server::WatchMetrics::register(&mut operator);
    let (mut d, mut q) = series(&proxy);
    let (d2, q2) = series(&operator);
    d.extend(d2);
    q.extend(q2);
    (d, q)
}

#[test]
fn metrics_doc_lists_every_metric() {
    let doc = read("docs/metrics.md");
    let (documented, _) = all_series();
    assert!(documented.len() > 20, "{documented:?}");
    let missing: Vec<&String> = documented
        .iter()
        .filter(|m| !doc.contains(&format!("`{m}`")) && !doc.contains(&format!("`{m}{{")))
        .collect();
    assert!(missing.is_empty(), "docs/metrics.md lacks {missing:?}");
}

/// The `kitsune_*` names a text (PromQL in a dashboard or rules file) refers to.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut i = 0;
    while let Some(pos) = text[i..].find("kitsune_") {
        let start = i + pos;
        let boundary = start == 0 || !is_name(bytes[start - 1]);
        let mut end = start;
        while end < bytes.len() && is_name(bytes[end]) {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn dashboard_and_alerts_query_only_real_metrics() {
    let (_, queryable) = all_series();
    for rel in [
        "deploy/monitoring/grafana-dashboard.json",
        "deploy/monitoring/prometheus-alerts.yaml",
    ] {
        let text = read(rel);
        if rel.ends_with(".json") {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v["panels"].as_array().is_some_and(|p| !p.is_empty()));
        } else {
            let v: Value = serde_yaml::from_str(&text).unwrap();
            let rules = v["groups"][0]["rules"].as_array().unwrap();
            for r in rules {
                assert!(r["alert"].is_string() && r["expr"].is_string(), "{r}");
            }
        }
        let used = referenced_metrics(&text);
        assert!(used.len() > 5, "{rel}: {used:?}");
        let unknown: Vec<&String> = used.iter().filter(|m| !queryable.contains(*m)).collect();
        assert!(
            unknown.is_empty(),
            "{rel} queries unknown metrics {unknown:?}"
        );
    }
}

#[test]
fn crd_reference_lists_every_field() {
    // Kubernetes types documented upstream; their inner fields are not repeated.
    const OPAQUE: [&str; 3] = [
        "spec.backends.selector",
        "spec.proxy.resources",
        "status.conditions",
    ];
    fn walk(path: &str, node: &Value, out: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                out.push(p.clone());
                if !OPAQUE.contains(&p.as_str()) {
                    walk(&p, child, out);
                }
            }
        }
    }
    let crd = serde_json::to_value(kitsune_operator::crd::KitsuneProxy::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut fields = vec![];
    walk("spec", &schema["spec"], &mut fields);
    walk("status", &schema["status"], &mut fields);
    assert!(fields.len() > 20);
    let doc = read("docs/crd-reference.md");
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/crd-reference.md lacks {missing:?}"
    );
}
