//! Builders the operator's integration tests share (the unit tests' are in
//! `src/fixtures.rs`, which these test crates cannot reach).

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// An EndpointSlice `name` of the Service `kubo` in `ns`, with the RPC port (`rpc`,
/// 5001) and these endpoints: `(ip, pod, ready, terminating)`.
pub fn kubo_slice(ns: &str, name: &str, endpoints: &[(&str, &str, bool, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some([("kubernetes.io/service-name".to_string(), "kubo".to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(ip, pod, ready, terminating)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(*terminating),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(pod.to_string()),
                        namespace: Some(ns.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("rpc".into()),
            port: Some(5001),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}
