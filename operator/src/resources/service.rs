use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{names, owned_meta, selector_labels};
use crate::crd::KitsuneProxy;

fn port(name: &str, protocol: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        protocol: Some(protocol.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        ..Default::default()
    }
}

/// The Service exposing the proxy's libp2p listeners (and the shared port, when on), with
/// the type, annotations, session affinity and traffic policy from `spec.service`.
pub fn service(kp: &KitsuneProxy) -> Service {
    let l = &kp.spec.proxy.listeners;
    let mut ports = vec![];
    if let Some(p) = l.tcp_port {
        ports.push(port("libp2p-tcp", "TCP", p));
    }
    if let Some(p) = l.quic_port {
        ports.push(port("libp2p-quic", "UDP", p));
    }
    if let Some(p) = l.ws_port {
        ports.push(port("libp2p-ws", "TCP", p));
    }
    if kp.spec.proxy.preload.enabled {
        ports.push(port("preload", "TCP", kp.spec.proxy.preload.port));
    } else if let Some(p) = l.http_port {
        ports.push(port("http", "TCP", p));
    }
    let s = &kp.spec.service;
    let mut meta = owned_meta(kp, names::workload(&kp.name_any()));
    if !s.annotations.is_empty() {
        meta.annotations = Some(s.annotations.clone());
    }
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(s.type_.as_str().into()),
            selector: Some(selector_labels(kp)),
            ports: Some(ports),
            session_affinity: s.session_affinity.map(|a| a.as_str().into()),
            external_traffic_policy: s.external_traffic_policy.map(|p| p.as_str().into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A ClusterIP Service for scraping the proxies' metrics, kept off the public Service.
pub fn metrics_service(kp: &KitsuneProxy) -> Service {
    Service {
        metadata: owned_meta(kp, names::metrics_service(&kp.name_any())),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(kp)),
            ports: Some(vec![port("metrics", "TCP", kp.spec.proxy.metrics_port)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ExternalTrafficPolicy, ServiceType, SessionAffinity};
    use crate::fixtures::kp;

    fn summary(s: &Service) -> Vec<(String, String, i32)> {
        s.spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap(), p.protocol.clone().unwrap(), p.port))
            .collect()
    }

    #[test]
    fn service_exposes_the_listeners_with_user_settings() {
        let mut kp = kp();
        let svc = service(&kp);
        assert_eq!(
            summary(&svc),
            [
                ("libp2p-tcp".into(), "TCP".into(), 4001),
                ("libp2p-quic".into(), "UDP".into(), 4001),
                ("libp2p-ws".into(), "TCP".into(), 8081),
            ]
        );
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert!(spec.session_affinity.is_none());
        assert!(svc.metadata.annotations.is_none());
        assert_eq!(
            spec.selector.as_ref().unwrap()["app.kubernetes.io/instance"],
            "preload"
        );

        kp.spec.proxy.preload.enabled = true;
        kp.spec.proxy.listeners.ws_port = None;
        kp.spec.service.type_ = ServiceType::LoadBalancer;
        kp.spec.service.session_affinity = Some(SessionAffinity::ClientIP);
        kp.spec.service.external_traffic_policy = Some(ExternalTrafficPolicy::Local);
        kp.spec
            .service
            .annotations
            .insert("lb.example/internal".into(), "true".into());
        let svc = service(&kp);
        assert_eq!(
            summary(&svc),
            [
                ("libp2p-tcp".into(), "TCP".into(), 4001),
                ("libp2p-quic".into(), "UDP".into(), 4001),
                ("preload".into(), "TCP".into(), 8080),
            ]
        );
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            svc.metadata.annotations.unwrap()["lb.example/internal"],
            "true"
        );
    }

    #[test]
    fn the_shared_port_without_preload_is_exposed_as_http() {
        let svc = service(&crate::fixtures::kp_public());
        assert!(summary(&svc).contains(&("http".into(), "TCP".into(), 8443)));
        let mut kp = crate::fixtures::kp_public();
        kp.spec.proxy.preload.enabled = true;
        kp.spec.proxy.listeners.http_port = None;
        let names: Vec<_> = summary(&service(&kp)).into_iter().map(|p| p.0).collect();
        assert!(names.contains(&"preload".to_string()) && !names.contains(&"http".to_string()));
    }

    #[test]
    fn metrics_service_is_cluster_internal() {
        let svc = metrics_service(&kp());
        assert_eq!(svc.metadata.name.as_deref(), Some("preload-metrics"));
        assert_eq!(summary(&svc), [("metrics".into(), "TCP".into(), 9090)]);
        assert_eq!(svc.spec.unwrap().type_.as_deref(), Some("ClusterIP"));
    }
}
