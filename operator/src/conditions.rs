//! Status conditions: building them with `observedGeneration`, keeping
//! `lastTransitionTime` when nothing changed, and finding the transitions worth an event.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The proxy is serving: identity loaded, backends available, a proxy pod ready.
pub const READY: &str = "Ready";
/// The identity key was read (or generated) and parsed.
pub const IDENTITY_READY: &str = "IdentityReady";
/// At least one kubo backend is live.
pub const BACKENDS_AVAILABLE: &str = "BackendsAvailable";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    True,
    False,
    Unknown,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::True => "True",
            State::False => "False",
            State::Unknown => "Unknown",
        }
    }
}

/// A condition as the reconciler decides it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub state: State,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        state: State,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            state,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Turns desired conditions into API conditions. A condition whose status did not change
/// keeps its previous `lastTransitionTime`.
pub fn merge(
    old: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let prev = old.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match prev {
                Some(p) if p.status == d.state.as_str() => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: d.type_.to_owned(),
                status: d.state.as_str().to_owned(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The conditions whose status or reason differ from before: one event each.
pub fn transitions<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter()
        .filter(|n| {
            !old.iter()
                .any(|o| o.type_ == n.type_ && o.status == n.status && o.reason == n.reason)
        })
        .collect()
}

/// Whether a condition list says `type_` is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let first = merge(
            &[],
            &[
                Desired::new(READY, State::False, "NoBackends", "none"),
                Desired::new(IDENTITY_READY, State::True, "KeyLoaded", "ok"),
            ],
            Some(3),
            t(100),
        );
        assert_eq!(first[0].observed_generation, Some(3));
        assert_eq!(first[0].last_transition_time, t(100));
        assert_eq!(transitions(&[], &first).len(), 2);

        // Same status, new message and generation: time kept, no event.
        let second = merge(
            &first,
            &[
                Desired::new(READY, State::False, "NoBackends", "still none"),
                Desired::new(IDENTITY_READY, State::True, "KeyLoaded", "ok"),
            ],
            Some(4),
            t(200),
        );
        assert_eq!(second[0].last_transition_time, t(100));
        assert_eq!(second[0].observed_generation, Some(4));
        assert_eq!(second[0].message, "still none");
        assert!(transitions(&first, &second).is_empty());

        // Status flips: time moves, one event.
        let third = merge(
            &second,
            &[
                Desired::new(READY, State::True, "Ready", "serving"),
                Desired::new(IDENTITY_READY, State::True, "KeyLoaded", "ok"),
            ],
            Some(4),
            t(300),
        );
        assert_eq!(third[0].last_transition_time, t(300));
        assert_eq!(third[1].last_transition_time, t(100));
        let tr = transitions(&second, &third);
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].type_, READY);
        assert!(is_true(&third, READY));
        assert!(!is_true(&second, READY));
    }
}
