use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;

use super::{names, owned_meta};
use crate::crd::KitsuneProxy;

/// The proxy pods' ServiceAccount. It is their identity towards the operator's watch
/// channel only: no API token is auto-mounted, and the operator grants it no RBAC.
pub fn service_account(kp: &KitsuneProxy) -> ServiceAccount {
    ServiceAccount {
        metadata: owned_meta(kp, names::service_account(&kp.name_any())),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kp;

    #[test]
    fn service_account_is_owned_and_mounts_no_token() {
        let sa = service_account(&kp());
        assert_eq!(sa.metadata.name.as_deref(), Some("preload"));
        assert_eq!(sa.metadata.namespace.as_deref(), Some("ipfs"));
        assert_eq!(sa.automount_service_account_token, Some(false));
        let owner = &sa.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "KitsuneProxy");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        let json = serde_json::to_value(&sa).unwrap();
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "ServiceAccount");
    }
}
