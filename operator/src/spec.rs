//! Checks a `KitsuneProxySpec` beyond what the CRD schema can, and turns it into the
//! typed values the rest of the operator uses. Pure: no I/O.
//!
//! The CRD's CEL rules catch most of these at admission, but the reconciler must not
//! trust that (an old apiserver, a CRD applied without rules, a hand-edited status), so
//! every rule is checked again here and reported as a `False` condition.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Selector, SelectorExt};

use crate::crd::KitsuneProxySpec;

/// Why a spec cannot be acted on. `reason` is a CamelCase condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub part: SpecPart,
    pub reason: &'static str,
    pub message: String,
}

/// Which part of the spec is wrong, so the matching condition turns `False`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecPart {
    Identity,
    Backends,
    Proxy,
}

impl SpecError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            part: SpecPart::Proxy,
            reason,
            message: message.into(),
        }
    }
    fn in_part(mut self, part: SpecPart) -> Self {
        self.part = part;
        self
    }
}

/// A backend port: a number, or a name resolved against pod or EndpointSlice ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl PortRef {
    fn parse(field: &str, v: &IntOrString) -> Result<Self, SpecError> {
        match v {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .map(PortRef::Number)
                .ok_or_else(|| {
                    SpecError::new("InvalidPort", format!("{field} {n} is not in 1..=65535"))
                }),
            IntOrString::String(s) => {
                if let Ok(n) = s.parse::<i32>() {
                    return Self::parse(field, &IntOrString::Int(n));
                }
                if is_port_name(s) {
                    Ok(PortRef::Name(s.clone()))
                } else {
                    Err(SpecError::new(
                        "InvalidPort",
                        format!(
                            "{field} {s:?} is neither a port number nor a port name \
                             (1-15 lowercase letters, digits and '-')"
                        ),
                    ))
                }
            }
        }
    }
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => write!(f, "{s}"),
        }
    }
}

fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Which objects list the backends.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// Pods of the namespace matching a label selector, read directly.
    Pods(PodSelector),
    /// The EndpointSlices of a Service.
    Service(String),
}

/// A parsed, non-empty label selector, with its text form for messages.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSelector {
    selector: Selector,
    text: String,
}

impl PodSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.matches(labels)
    }
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Everything the index needs to compute one KitsuneProxy's backend set.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSource {
    pub selection: Selection,
    pub rpc_port: PortRef,
    pub swarm_port: PortRef,
}

impl BackendSource {
    /// A human description for condition messages.
    pub fn describe(&self) -> String {
        match &self.selection {
            Selection::Pods(s) => format!("pods matching {:?}", s.text()),
            Selection::Service(name) => format!("EndpointSlices of Service {name:?}"),
        }
    }
}

/// Where the identity key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    Secret { name: String, key: String },
    Generate,
}

/// The name of the Secret `generate: true` creates.
pub fn generated_secret_name(proxy_name: &str) -> String {
    format!("{proxy_name}-identity")
}
/// The data key of a generated identity Secret.
pub const GENERATED_SECRET_KEY: &str = "key";

/// A spec that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    pub identity: IdentitySource,
    pub backends: BackendSource,
}

/// Checks the whole spec; the first problem found is returned.
pub fn validate(spec: &KitsuneProxySpec) -> Result<ValidSpec, SpecError> {
    let identity = identity(spec).map_err(|e| e.in_part(SpecPart::Identity))?;
    let backends = backend_source(spec).map_err(|e| e.in_part(SpecPart::Backends))?;
    check_ports(spec)?;
    Ok(ValidSpec { identity, backends })
}

fn identity(spec: &KitsuneProxySpec) -> Result<IdentitySource, SpecError> {
    match (&spec.identity.secret_ref, spec.identity.generate) {
        (Some(r), false) => {
            if r.name.is_empty() || r.key.is_empty() {
                return Err(SpecError::new(
                    "ConflictingSpec",
                    "identity.secretRef needs a non-empty name and key",
                ));
            }
            Ok(IdentitySource::Secret {
                name: r.name.clone(),
                key: r.key.clone(),
            })
        }
        (None, true) => Ok(IdentitySource::Generate),
        (Some(_), true) => Err(SpecError::new(
            "ConflictingSpec",
            "identity.secretRef and identity.generate are both set; set exactly one",
        )),
        (None, false) => Err(SpecError::new(
            "ConflictingSpec",
            "identity needs secretRef or generate: true",
        )),
    }
}

/// The backend part of the spec alone; the index uses it for every KitsuneProxy.
pub fn backend_source(spec: &KitsuneProxySpec) -> Result<BackendSource, SpecError> {
    let b = &spec.backends;
    let selection = match (&b.selector, &b.service_name) {
        (Some(sel), None) => Selection::Pods(parse_selector(sel)?),
        (None, Some(name)) if !name.is_empty() => Selection::Service(name.clone()),
        (None, Some(_)) => {
            return Err(SpecError::new(
                "ConflictingSpec",
                "backends.serviceName is empty",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(SpecError::new(
                "ConflictingSpec",
                "backends.selector and backends.serviceName are both set; set exactly one",
            ));
        }
        (None, None) => {
            return Err(SpecError::new(
                "ConflictingSpec",
                "backends needs selector or serviceName",
            ));
        }
    };
    Ok(BackendSource {
        selection,
        rpc_port: PortRef::parse(
            "backends.rpcPort",
            b.rpc_port
                .as_ref()
                .unwrap_or(&IntOrString::Int(crate::crd::DEFAULT_RPC_PORT)),
        )?,
        swarm_port: PortRef::parse(
            "backends.swarmPort",
            b.swarm_port
                .as_ref()
                .unwrap_or(&IntOrString::Int(crate::crd::DEFAULT_SWARM_PORT)),
        )?,
    })
}

/// Parses a label selector, refusing one that is malformed or selects every pod.
pub fn parse_selector(sel: &LabelSelector) -> Result<PodSelector, SpecError> {
    let bad = |m: String| SpecError::new("InvalidSelector", m);
    let labels = sel.match_labels.clone().unwrap_or_default();
    let exprs = sel.match_expressions.clone().unwrap_or_default();
    if labels.is_empty() && exprs.is_empty() {
        return Err(bad(
            "backends.selector is empty and would select every pod in the namespace".into(),
        ));
    }
    for (k, v) in &labels {
        if !is_label_key(k) || !is_label_value(v) {
            return Err(bad(format!(
                "matchLabels {k:?}: {v:?} is not a valid label"
            )));
        }
    }
    for e in &exprs {
        if !is_label_key(&e.key) {
            return Err(bad(format!(
                "matchExpressions key {:?} is not valid",
                e.key
            )));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(bad(format!(
                    "matchExpressions {:?} {} needs at least one value",
                    e.key, e.operator
                )));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(bad(format!(
                    "matchExpressions {:?} {} takes no values",
                    e.key, e.operator
                )));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(bad(format!(
                    "matchExpressions operator {other:?} is not In, NotIn, Exists or DoesNotExist"
                )));
            }
        }
        if let Some(v) = values.iter().find(|v| !is_label_value(v)) {
            return Err(bad(format!("matchExpressions value {v:?} is not valid")));
        }
    }
    let selector = Selector::try_from(sel.clone()).map_err(|e| bad(e.to_string()))?;
    Ok(PodSelector {
        text: selector.to_string(),
        selector,
    })
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => {
            (1..=253).contains(&prefix.len())
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                })
                && is_label_name(name)
        }
        None => is_label_name(s),
    }
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

fn check_ports(spec: &KitsuneProxySpec) -> Result<(), SpecError> {
    let p = &spec.proxy;
    let l = &p.listeners;
    if l.tcp_port.is_none() && l.ws_port.is_none() && l.quic_port.is_none() && l.http_port.is_none()
    {
        return Err(SpecError::new(
            "ConflictingSpec",
            "proxy.listeners needs at least one of tcpPort, wsPort, quicPort or httpPort",
        ));
    }
    check_shared_port(p)?;
    if p.replicas < 0 {
        return Err(SpecError::new(
            "ConflictingSpec",
            "proxy.replicas is negative",
        ));
    }
    // Every TCP port the container opens must be distinct; QUIC is UDP and may share.
    let mut tcp: Vec<(&str, i32)> = vec![("proxy.metricsPort", p.metrics_port)];
    if let Some(n) = l.tcp_port {
        tcp.push(("proxy.listeners.tcpPort", n));
    }
    if let Some(n) = l.ws_port {
        tcp.push(("proxy.listeners.wsPort", n));
    }
    if p.preload.enabled {
        tcp.push(("proxy.preload.port", p.preload.port));
    } else if let Some(n) = l.http_port {
        tcp.push(("proxy.listeners.httpPort", n));
    }
    let mut all = tcp.clone();
    if let Some(n) = l.quic_port {
        all.push(("proxy.listeners.quicPort", n));
    }
    if let Some((field, n)) = all.iter().find(|(_, n)| !(1..=65535).contains(n)) {
        return Err(SpecError::new(
            "InvalidPort",
            format!("{field} {n} is not in 1..=65535"),
        ));
    }
    for (i, (a, pa)) in tcp.iter().enumerate() {
        if let Some((b, _)) = tcp[i + 1..].iter().find(|(_, pb)| pb == pa) {
            return Err(SpecError::new(
                "ConflictingSpec",
                format!("{a} and {b} are both TCP port {pa}"),
            ));
        }
    }
    Ok(())
}

/// The shared port is one port, TLS needs it, and announced addresses look like
/// multiaddrs (the proxy parses them fully, and would fail to start on a bad one).
fn check_shared_port(p: &crate::crd::ProxySpec) -> Result<(), SpecError> {
    let http = p.listeners.http_port;
    if let Some(h) = http
        && p.preload.enabled
        && h != p.preload.port
    {
        return Err(SpecError::new(
            "ConflictingSpec",
            format!(
                "proxy.listeners.httpPort {h} and proxy.preload.port {} differ: with preload \
                 enabled the shared port is preload.port",
                p.preload.port
            ),
        ));
    }
    if let Some(tls) = &p.tls {
        if !p.preload.enabled && http.is_none() {
            return Err(SpecError::new(
                "ConflictingSpec",
                "proxy.tls needs the shared port: preload.enabled or listeners.httpPort",
            ));
        }
        if tls.secret_name.is_empty() {
            return Err(SpecError::new(
                "ConflictingSpec",
                "proxy.tls.secretName is empty",
            ));
        }
    }
    if let Some(a) = p
        .announce
        .iter()
        .find(|a| !a.starts_with('/') || a.len() < 2 || a.chars().any(char::is_whitespace))
    {
        return Err(SpecError::new(
            "InvalidAnnounce",
            format!("proxy.announce {a:?} is not a multiaddr (e.g. /dns4/host/tcp/443/tls/ws)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BackendsSpec, IdentitySpec, SecretKeyRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn spec() -> KitsuneProxySpec {
        KitsuneProxySpec {
            identity: IdentitySpec {
                secret_ref: Some(SecretKeyRef {
                    name: "id".into(),
                    key: "key".into(),
                }),
                generate: false,
            },
            backends: BackendsSpec {
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "kubo".to_string())].into()),
                    match_expressions: None,
                }),
                service_name: None,
                rpc_port: Some(IntOrString::Int(5001)),
                swarm_port: Some(IntOrString::String("swarm".into())),
            },
            proxy: Default::default(),
            service: Default::default(),
        }
    }

    #[test]
    fn a_good_spec_validates() {
        let v = validate(&spec()).unwrap();
        assert_eq!(
            v.identity,
            IdentitySource::Secret {
                name: "id".into(),
                key: "key".into()
            }
        );
        assert_eq!(v.backends.rpc_port, PortRef::Number(5001));
        assert_eq!(v.backends.swarm_port, PortRef::Name("swarm".into()));
        let Selection::Pods(sel) = &v.backends.selection else {
            panic!("expected pods")
        };
        assert!(sel.matches(&[("app".to_string(), "kubo".to_string())].into()));
        assert!(!sel.matches(&[("app".to_string(), "web".to_string())].into()));
        assert_eq!(sel.text(), "app=kubo");
    }

    #[test]
    fn conflicting_identity_and_backends_are_rejected() {
        let mut s = spec();
        s.identity.generate = true;
        let e = validate(&s).unwrap_err();
        assert_eq!((e.reason, e.part), ("ConflictingSpec", SpecPart::Identity));
        s.identity.secret_ref = None;
        assert_eq!(validate(&s).unwrap().identity, IdentitySource::Generate);
        s.identity.generate = false;
        assert!(validate(&s).unwrap_err().message.contains("identity needs"));

        let mut s = spec();
        s.backends.service_name = Some("kubo".into());
        let e = validate(&s).unwrap_err();
        assert_eq!((e.reason, e.part), ("ConflictingSpec", SpecPart::Backends));
        assert!(e.message.contains("both set"));
        s.backends.selector = None;
        assert_eq!(
            validate(&s).unwrap().backends.selection,
            Selection::Service("kubo".into())
        );
    }

    #[test]
    fn bad_selectors_are_rejected() {
        let req = |op: &str, values: Option<Vec<&str>>| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: values.map(|v| v.into_iter().map(String::from).collect()),
            }]),
        };
        for bad in [
            LabelSelector::default(),
            req("Like", Some(vec!["kubo"])),
            req("In", None),
            req("In", Some(vec![])),
            req("Exists", Some(vec!["x"])),
            req("In", Some(vec!["not a value!"])),
            LabelSelector {
                match_labels: Some([("bad key!".to_string(), "x".to_string())].into()),
                match_expressions: None,
            },
        ] {
            let e = parse_selector(&bad).unwrap_err();
            assert_eq!(e.reason, "InvalidSelector", "{bad:?}");
        }
        let ok = parse_selector(&req("In", Some(vec!["kubo", "ipfs"]))).unwrap();
        assert!(ok.matches(&[("app".to_string(), "ipfs".to_string())].into()));
        assert!(parse_selector(&req("Exists", None)).is_ok());
        let prefixed = LabelSelector {
            match_labels: Some([("app.kubernetes.io/name".to_string(), "kubo".to_string())].into()),
            match_expressions: None,
        };
        assert!(parse_selector(&prefixed).is_ok());
    }

    #[test]
    fn port_conflicts_and_bad_ports_are_rejected() {
        let mut s = spec();
        s.proxy.listeners.ws_port = Some(9090);
        let e = validate(&s).unwrap_err();
        assert_eq!((e.reason, e.part), ("ConflictingSpec", SpecPart::Proxy));
        assert!(e.message.contains("metricsPort"), "{e}");

        let mut s = spec();
        s.proxy.preload.enabled = true;
        s.proxy.preload.port = 4001;
        assert!(validate(&s).unwrap_err().message.contains("preload"));
        s.proxy.preload.enabled = false;
        assert!(validate(&s).is_ok(), "a disabled preload port cannot clash");

        let mut s = spec();
        s.proxy.listeners.tcp_port = None;
        s.proxy.listeners.ws_port = None;
        s.proxy.listeners.quic_port = None;
        assert!(validate(&s).unwrap_err().message.contains("at least one"));

        let mut s = spec();
        s.backends.rpc_port = Some(IntOrString::Int(70000));
        assert_eq!(validate(&s).unwrap_err().reason, "InvalidPort");
        s.backends.rpc_port = Some(IntOrString::String("Not_A_Name".into()));
        assert_eq!(validate(&s).unwrap_err().reason, "InvalidPort");
        s.backends.rpc_port = Some(IntOrString::String("5001".into()));
        assert_eq!(
            validate(&s).unwrap().backends.rpc_port,
            PortRef::Number(5001)
        );
        // null (the schema allows it) means the default.
        s.backends.rpc_port = None;
        assert_eq!(
            validate(&s).unwrap().backends.rpc_port,
            PortRef::Number(5001)
        );
        // QUIC is UDP: sharing the TCP port number is fine.
        let s = spec();
        assert_eq!(s.proxy.listeners.quic_port, s.proxy.listeners.tcp_port);
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn the_shared_port_tls_and_announce_are_checked() {
        use crate::crd::ProxyTlsSpec;
        let tls = || {
            Some(ProxyTlsSpec {
                secret_name: "ipfs-example-com".into(),
            })
        };
        let mut s = spec();
        s.proxy.tls = tls();
        let e = validate(&s).unwrap_err();
        assert!(e.message.contains("shared port"), "TLS without a port: {e}");
        s.proxy.listeners.http_port = Some(8443);
        assert!(validate(&s).is_ok());
        s.proxy.listeners.http_port = Some(9090);
        assert!(validate(&s).unwrap_err().message.contains("metricsPort"));

        let mut s = spec();
        s.proxy.tls = tls();
        s.proxy.preload.enabled = true;
        assert!(validate(&s).is_ok(), "preload's port carries TLS too");
        s.proxy.listeners.http_port = Some(s.proxy.preload.port);
        assert!(validate(&s).is_ok(), "the same port twice is one port");
        s.proxy.listeners.http_port = Some(8443);
        assert!(validate(&s).unwrap_err().message.contains("differ"));

        let mut s = spec();
        s.proxy.listeners = crate::crd::ListenersSpec {
            tcp_port: None,
            ws_port: None,
            quic_port: None,
            http_port: Some(443),
        };
        assert!(validate(&s).is_ok(), "the shared port alone is a listener");

        let mut s = spec();
        s.proxy.announce = vec!["/dns4/ipfs.example.com/tcp/443/tls/ws".into()];
        assert!(validate(&s).is_ok());
        s.proxy.announce.push("ipfs.example.com:443".into());
        assert_eq!(validate(&s).unwrap_err().reason, "InvalidAnnounce");
    }
}
