//! Lease-based leader election (`coordination.k8s.io/v1`). Every replica runs the
//! informers, keeps the index and serves reads; only the Lease holder writes (children,
//! status, events). Writes are gated by [`Leadership::is_leader`], checked at the start of
//! every reconcile. No fencing: a replica that cannot renew steps down at once, before its
//! lease can expire for others.
//!
//! Expiry is measured as client-go measures it: from when this replica last saw the
//! Lease's record change, on its own monotonic clock, never by comparing the holder's
//! `renewTime` with the local wall clock. Clocks that disagree across nodes then cannot
//! make a live holder look expired (two leaders), nor a dead one look alive for ever.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
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
        rises(self.rx.clone())
    }
}

/// Yields once each time the flag changes to true (after the value `rx` has seen).
pub fn rises(rx: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    })
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

/// The Lease record as this replica last saw it, and when (on the local monotonic clock)
/// it first saw that record.
#[derive(Debug, Default)]
pub struct Observed {
    record: Option<LeaseSpec>,
    since: Option<Instant>,
}

impl Observed {
    /// Notes the record read at `now`; returns how long it has been unchanged, as far as
    /// this replica knows. A record never seen before counts as changed just now.
    pub fn observe(&mut self, record: Option<&LeaseSpec>, now: Instant) -> Duration {
        match self.since {
            Some(since) if self.record.as_ref() == record => now.saturating_duration_since(since),
            _ => {
                self.record = record.cloned();
                self.since = Some(now);
                Duration::ZERO
            }
        }
    }
}

/// Decides, from the current Lease and how long this replica has seen it unchanged
/// (`unchanged_for`, see [`Observed`]), what to do. Pure. The holder's `renewTime` is
/// never compared with the local clock.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
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
    let seconds = spec.lease_duration_seconds.unwrap_or(15);
    let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    if unchanged_for < duration {
        Decision::Follow {
            holder: holder.to_owned(),
        }
    } else {
        Decision::Acquire { transition: true }
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
async fn round(api: &Api<Lease>, cfg: &LeaseConfig, seen: &mut Observed) -> kube::Result<bool> {
    let current = api.get_opt(&cfg.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let unchanged_for = seen.observe(spec, Instant::now());
    // The wall clock only stamps what this replica writes, for others and for humans.
    let now = Timestamp::now();
    let transition = match decide(spec, &cfg.identity, unchanged_for) {
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
    let mut seen = Observed::default();
    loop {
        let leading = match round(&api, &cfg, &mut seen).await {
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

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn election_decisions() {
        assert_eq!(
            decide(None, "a", secs(0)),
            Decision::Acquire { transition: false }
        );
        assert_eq!(
            decide(Some(&spec(Some("a"), 990, 15)), "a", secs(100)),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 990, 15)), "a", secs(10)),
            Decision::Follow { holder: "b".into() }
        );
        // b's record has not changed for 20 s with a 15 s lease.
        assert_eq!(
            decide(Some(&spec(Some("b"), 990, 15)), "a", secs(20)),
            Decision::Acquire { transition: true }
        );
        // Released.
        assert_eq!(
            decide(Some(&spec(None, 999, 15)), "a", secs(0)),
            Decision::Acquire { transition: true }
        );
    }

    /// Clock skew: the holder's renewTime says nothing about expiry here; only how long
    /// this replica has seen the record unchanged does.
    #[tokio::test(start_paused = true)]
    async fn expiry_is_measured_from_local_observation_not_renew_time() {
        let wall_now = Timestamp::now().as_second();
        let mut seen = Observed::default();
        // A holder whose clock is an hour behind ours, renewing every 5 s: by our wall
        // clock its lease expired long ago, but we see it change, so we follow it.
        let mut renew = wall_now - 3_600;
        for _ in 0..10 {
            let lease = spec(Some("b"), renew, 15);
            let unchanged = seen.observe(Some(&lease), Instant::now());
            assert_eq!(
                decide(Some(&lease), "a", unchanged),
                Decision::Follow { holder: "b".into() }
            );
            tokio::time::advance(secs(5)).await;
            renew += 5;
        }
        // A holder whose clock is an hour ahead: by our wall clock its lease is good for an
        // hour, but once it stops renewing we take over after one lease duration.
        let stuck = spec(Some("c"), wall_now + 3_600, 15);
        let mut seen = Observed::default();
        let unchanged = seen.observe(Some(&stuck), Instant::now());
        assert!(matches!(
            decide(Some(&stuck), "a", unchanged),
            Decision::Follow { .. }
        ));
        tokio::time::advance(secs(14)).await;
        let unchanged = seen.observe(Some(&stuck), Instant::now());
        assert!(matches!(
            decide(Some(&stuck), "a", unchanged),
            Decision::Follow { .. }
        ));
        tokio::time::advance(secs(2)).await;
        let unchanged = seen.observe(Some(&stuck), Instant::now());
        assert_eq!(unchanged, secs(16));
        assert_eq!(
            decide(Some(&stuck), "a", unchanged),
            Decision::Acquire { transition: true }
        );
        // A replica that starts up and finds a stale-looking lease waits a full duration
        // from its own first sight of it before taking over.
        let mut fresh = Observed::default();
        let old = spec(Some("b"), 1, 15);
        let unchanged = fresh.observe(Some(&old), Instant::now());
        assert_eq!(unchanged, Duration::ZERO);
        assert!(matches!(
            decide(Some(&old), "a", unchanged),
            Decision::Follow { .. }
        ));
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
