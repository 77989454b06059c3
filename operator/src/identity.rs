//! The proxy identity: read the referenced Secret, or create the generated one once,
//! and derive the peer ID. Key bytes never leave this module except into the Secret
//! the operator creates; errors and logs describe shape only.

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tracing::info;

use crate::crd::KitsuneProxy;
use crate::resources::{Identity, generated_identity_secret};
use crate::spec::{GENERATED_SECRET_KEY, IdentitySource, generated_secret_name};

/// Why the identity cannot be used. `reason` is a CamelCase condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IdentityError {
    pub reason: &'static str,
    pub message: String,
}

/// The resolved identity, and whether this call created the generated Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub identity: Identity,
    pub generated: bool,
}

/// Derives the peer ID from a Secret's key, or says why it cannot.
pub fn peer_id_from_secret(secret: &Secret, key: &str) -> Result<String, IdentityError> {
    let name = secret.name_any();
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) else {
        let keys: Vec<&str> = secret
            .data
            .iter()
            .flat_map(|d| d.keys())
            .map(String::as_str)
            .collect();
        return Err(IdentityError {
            reason: "SecretKeyMissing",
            message: format!("Secret {name:?} has no key {key:?} (it has: {keys:?})"),
        });
    };
    kitsune_common::key::peer_id(&bytes.0)
        .map(|id| id.to_string())
        .map_err(|e| IdentityError {
            reason: "InvalidKey",
            message: format!("Secret {name:?} key {key:?}: {e}"),
        })
}

/// Resolves the identity of `kp`, creating the generated Secret if it must.
pub async fn resolve(
    client: &Client,
    kp: &KitsuneProxy,
    source: &IdentitySource,
) -> crate::Result<Resolved> {
    let ns = kp
        .namespace()
        .ok_or(crate::Error::MissingObjectKey("namespace"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (name, key) = match source {
        IdentitySource::Secret { name, key } => (name.clone(), key.clone()),
        IdentitySource::Generate => (
            generated_secret_name(&kp.name_any()),
            GENERATED_SECRET_KEY.to_owned(),
        ),
    };
    let mut generated = false;
    let secret = match secrets.get_opt(&name).await? {
        Some(s) => s,
        None if *source == IdentitySource::Generate => {
            let (_, bytes) = kitsune_common::key::generate_ed25519();
            let secret = generated_identity_secret(kp, bytes);
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(s) => {
                    generated = true;
                    info!(secret = %name, "generated a new Ed25519 identity");
                    s
                }
                // Another writer won the race: use theirs, never overwrite.
                Err(kube::Error::Api(s)) if s.is_already_exists() => secrets.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            return Err(IdentityError {
                reason: "SecretNotFound",
                message: format!("Secret {name:?} not found in namespace {ns:?}"),
            }
            .into());
        }
    };
    let peer_id = peer_id_from_secret(&secret, &key)?;
    Ok(Resolved {
        identity: Identity {
            secret_name: name,
            secret_key: key,
            peer_id,
        },
        generated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(data: &[(&str, Vec<u8>)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("id".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn peer_id_from_raw_and_base64_keys() {
        let (key, raw) = kitsune_common::key::generate_ed25519();
        let want = key.public().to_peer_id().to_string();
        assert_eq!(
            peer_id_from_secret(&secret(&[("key", raw.clone())]), "key").unwrap(),
            want
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(
            peer_id_from_secret(&secret(&[("privkey", b64.into_bytes())]), "privkey").unwrap(),
            want
        );
    }

    #[test]
    fn a_kubo_rsa_key_gives_kubos_peer_id() {
        // Test fixtures of the shared key module: an `ipfs key export` RSA key and its ID.
        let b64 = include_str!("../../common/testdata/kubo-rsa.b64");
        let want = include_str!("../../common/testdata/kubo-rsa.peerid").trim();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap();
        assert_eq!(
            peer_id_from_secret(&secret(&[("key", raw)]), "key").unwrap(),
            want
        );
    }

    #[test]
    fn missing_key_and_bad_bytes_are_reported_without_key_material() {
        let (_, raw) = kitsune_common::key::generate_ed25519();
        let e = peer_id_from_secret(&secret(&[("other", raw.clone())]), "key").unwrap_err();
        assert_eq!(e.reason, "SecretKeyMissing");
        assert!(e.message.contains("\"other\""), "{}", e.message);

        let mut broken = raw.clone();
        broken.truncate(10);
        let e = peer_id_from_secret(&secret(&[("key", broken)]), "key").unwrap_err();
        assert_eq!(e.reason, "InvalidKey");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert!(!e.message.contains(&b64[..12]));
        assert!(!format!("{e:?}").contains(&b64[..12]));
    }
}
