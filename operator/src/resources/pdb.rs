use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{names, owned_meta, selector_labels};
use crate::crd::KitsuneProxy;

/// Voluntary disruptions (node drains) take down at most one proxy pod at a time.
pub fn pod_disruption_budget(kp: &KitsuneProxy) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(kp, names::workload(&kp.name_any())),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(kp)),
                match_expressions: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kp;

    #[test]
    fn pdb_allows_one_disruption_and_selects_the_proxy_pods() {
        let pdb = pod_disruption_budget(&kp());
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert!(spec.min_available.is_none());
        let sel = spec.selector.unwrap().match_labels.unwrap();
        assert_eq!(sel["app.kubernetes.io/instance"], "preload");
        assert_eq!(sel["app.kubernetes.io/name"], "kitsune-proxy");
        assert!(pdb.metadata.owner_references.is_some());
    }
}
