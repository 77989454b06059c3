//! Lease-based leader election (`coordination.k8s.io/v1`). Every replica runs the
//! informers, keeps the index and serves reads; only the Lease holder writes (children,
//! status, events). Writes are gated by [`Leadership::is_leader`], checked at the start of
//! every reconcile. No fencing: a replica that cannot renew steps down at once, before its
//! lease can expire for others.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Election settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity, e.g. its pod name.
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews (and others retry).
    pub renew_every: Duration,
}

/// A read handle on whether this replica may write.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
}

impl Leadership {
    /// A replica that is always leader: one replica, election disabled, or tests.
    pub fn always() -> Self {
        let (_, rx) = watch::channel(true);
        Self { rx }
    }

    /// A handle fed by [`run`] through the returned sender.
    pub fn elected() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self { rx })
    }

    /// The underlying channel, to follow leadership changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Yields once each time this replica becomes leader (to reconcile everything then).
    pub fn acquisitions(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let rx = self.rx.clone();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                if *rx.borrow_and_update() {
                    return Some(((), rx));
                }
            }
        })
    }
}

/// What to do with the Lease as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire { transition: bool },
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// Decides, from the current Lease, what this replica should do. Pure.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire { transition: false };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire { transition: true };
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(t) if t + duration > now => Decision::Follow {
            holder: holder.to_owned(),
        },
        _ => Decision::Acquire { transition: true },
    }
}

fn lease_spec(
    cfg: &LeaseConfig,
    prev: Option<&LeaseSpec>,
    transition: bool,
    now: Timestamp,
) -> LeaseSpec {
    let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs().try_into().unwrap_or(i32::MAX)),
        acquire_time: if transition || prev.is_none() {
            Some(MicroTime(now))
        } else {
            prev.and_then(|p| p.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if transition {
            transitions + 1
        } else {
            transitions
        }),
        ..Default::default()
    }
}

/// One election round; returns whether this replica now holds the lease.
async fn round(api: &Api<Lease>, cfg: &LeaseConfig) -> kube::Result<bool> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let transition = match decide(spec, &cfg.identity, now) {
        Decision::Follow { .. } => return Ok(false),
        Decision::Renew => false,
        Decision::Acquire { transition } => transition,
    };
    let new_spec = lease_spec(cfg, spec, transition, now);
    let result = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(new_spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            // `replace` carries the resourceVersion: a concurrent writer makes it 409.
            lease.spec = Some(new_spec);
            api.replace(&cfg.name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the election until `shutdown`, publishing leadership on `tx`. On shutdown the
/// holder gives the lease up so another replica takes over at once.
pub async fn run(
    client: Client,
    cfg: LeaseConfig,
    tx: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    loop {
        let leading = match round(&api, &cfg).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, lease = %cfg.name, "lease round failed; not leading");
                false
            }
        };
        tx.send_if_modified(|was| {
            if *was != leading {
                info!(leading, identity = %cfg.identity, "leadership changed");
                *was = leading;
                true
            } else {
                false
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_every) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if *tx.borrow() {
        tx.send_replace(false);
        if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(cfg.identity.as_str())
        {
            spec.holder_identity = None;
            if let Err(e) = api.replace(&cfg.name, &PostParams::default(), &lease).await {
                warn!(error = %e, "could not release the lease");
            } else {
                info!("released the lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn election_decisions() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            decide(None, "a", now),
            Decision::Acquire { transition: false }
        );
        assert_eq!(
            decide(Some(&spec(Some("a"), 990, 15)), "a", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 990, 15)), "a", now),
            Decision::Follow { holder: "b".into() }
        );
        // b stopped renewing 20 s ago with a 15 s lease.
        assert_eq!(
            decide(Some(&spec(Some("b"), 980, 15)), "a", now),
            Decision::Acquire { transition: true }
        );
        // Released.
        assert_eq!(
            decide(Some(&spec(None, 999, 15)), "a", now),
            Decision::Acquire { transition: true }
        );
    }

    #[test]
    fn lease_spec_counts_transitions_and_keeps_acquire_time_on_renew() {
        let cfg = LeaseConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let t0 = Timestamp::from_second(100).unwrap();
        let first = lease_spec(&cfg, None, false, t0);
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(15));
        let t1 = Timestamp::from_second(105).unwrap();
        let renewed = lease_spec(&cfg, Some(&first), false, t1);
        assert_eq!(renewed.acquire_time, first.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(t1)));
        let taken = lease_spec(&cfg, Some(&spec(Some("b"), 10, 15)), true, t1);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
    }

    #[tokio::test]
    async fn leadership_handle_reports_acquisitions() {
        use futures::StreamExt;
        let (tx, l) = Leadership::elected();
        assert!(!l.is_leader());
        let mut acq = Box::pin(l.acquisitions());
        tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), acq.next())
            .await
            .unwrap()
            .unwrap();
        assert!(l.is_leader());
        assert!(Leadership::always().is_leader());
    }
}
