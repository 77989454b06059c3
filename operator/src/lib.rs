//! The Kitsune operator: reconciles `KitsuneProxy` resources (`kitsune.dev/v1alpha1`)
//! into proxy Deployments holding one fixed peer ID, and keeps, for every KitsuneProxy,
//! the live set of kubo backends that the watch channel serves to the proxies.
//!
//! One job per module:
//! - [`crd`]: the resource types and the generated CRD;
//! - [`spec`]: spec checks the schema cannot express;
//! - [`resources`]: pure builders of the owned objects;
//! - [`index`]: the pure EndpointSlice/Pod backend index;
//! - [`informers`]: the watches that feed the index;
//! - [`identity`]: reading, validating and generating the identity Secret;
//! - [`conditions`]: status conditions and their transitions;
//! - [`controller`]: `Context`, `reconcile`, `error_policy` and the controller loop;
//! - [`leader`]: Lease-based election that gates writes;
//! - [`metrics`], [`http`]: Prometheus metrics, `/metrics`, `/healthz`, `/readyz`;
//! - [`tls`]: the optional TLS listener for the same routes, certificate reloaded on change.

pub mod conditions;
pub mod controller;
pub mod crd;
pub mod http;
pub mod identity;
pub mod index;
pub mod informers;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod spec;
pub mod tls;
pub mod watch_server;

#[cfg(test)]
mod fixtures;

/// Everything a reconcile can fail with. [`Error::reason`] is the bounded label used in
/// metrics, condition reasons and events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid spec: {0}")]
    Spec(#[from] spec::SpecError),
    #[error("identity: {0}")]
    Identity(#[from] identity::IdentityError),
    #[error("the object has no {0}")]
    MissingObjectKey(&'static str),
}

impl Error {
    /// A short CamelCase reason, bounded in cardinality.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "Forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "Conflict",
            Error::Kube(kube::Error::Api(_)) => "ApiError",
            Error::Kube(_) => "ApiUnreachable",
            Error::Spec(e) => e.reason,
            Error::Identity(e) => e.reason,
            Error::MissingObjectKey(_) => "MissingObjectKey",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
