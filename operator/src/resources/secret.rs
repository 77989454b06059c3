use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::{GENERATED_FOR_ANNOTATION, labels};
use crate::crd::KitsuneProxy;
use crate::spec::{GENERATED_SECRET_KEY, generated_secret_name};

/// The Secret `generate: true` creates once: an immutable Opaque Secret holding the key
/// in the protobuf form `ipfs key export` writes.
///
/// It deliberately has **no owner reference**: the peer ID is what clients pin, so it
/// must survive deleting and re-creating the KitsuneProxy. Delete it by hand to rotate.
pub fn generated_identity_secret(kp: &KitsuneProxy, key_protobuf: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(generated_secret_name(&kp.name_any())),
            namespace: kp.namespace(),
            labels: Some(labels(kp)),
            annotations: Some(BTreeMap::from([(
                GENERATED_FOR_ANNOTATION.to_string(),
                kp.name_any(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            GENERATED_SECRET_KEY.to_string(),
            ByteString(key_protobuf),
        )])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kp;

    #[test]
    fn generated_secret_is_immutable_unowned_and_holds_a_loadable_key() {
        let (key, bytes) = kitsune_common::key::generate_ed25519();
        let s = generated_identity_secret(&kp(), bytes);
        assert_eq!(s.metadata.name.as_deref(), Some("preload-identity"));
        assert_eq!(s.immutable, Some(true));
        assert!(s.metadata.owner_references.is_none());
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[GENERATED_FOR_ANNOTATION],
            "preload"
        );
        let stored = &s.data.as_ref().unwrap()["key"].0;
        assert_eq!(
            kitsune_common::key::peer_id(stored).unwrap(),
            key.public().to_peer_id()
        );
    }
}
