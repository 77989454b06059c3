//! Graceful drain: after SIGTERM the engine stops taking new connections but keeps
//! serving the ones it has, until their wants are finished or the drain budget is
//! spent; then it returns and its connections close.

use std::time::{Duration, Instant};

/// How long the proxy must have been idle (no wants held, nothing queued to a client)
/// before the drain ends early. A client fetching a DAG has a round trip between one
/// batch of wants and the next, during which nothing is wanted; a second covers a
/// round trip on the public internet many times over, and costs one second of a
/// rollout.
pub const QUIET: Duration = Duration::from_secs(1);

/// Why the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No client connection left.
    NoClients,
    /// Every want was finished and the proxy stayed idle for [`QUIET`].
    Idle,
    /// The drain budget ran out with work still in flight.
    Timeout,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::NoClients => "no client connected",
            Ended::Idle => "every want finished",
            Ended::Timeout => "the drain timeout passed",
        }
    }
}

/// The drain's clock. Pure: the engine says what it sees and when.
#[derive(Debug)]
pub struct Drain {
    deadline: Instant,
    idle_since: Option<Instant>,
}

impl Drain {
    pub fn start(now: Instant, timeout: Duration) -> Self {
        Self {
            deadline: now + timeout,
            idle_since: None,
        }
    }

    /// Whether the drain is over, given whether clients are connected and whether
    /// the proxy is idle (no wants held, nothing waiting to be written) at `now`.
    pub fn check(&mut self, clients: bool, idle: bool, now: Instant) -> Option<Ended> {
        if !clients {
            return Some(Ended::NoClients);
        }
        if !idle {
            self.idle_since = None;
        } else if now.saturating_duration_since(*self.idle_since.get_or_insert(now)) >= QUIET {
            return Some(Ended::Idle);
        }
        (now >= self.deadline).then_some(Ended::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_at_once_without_clients() {
        let t0 = Instant::now();
        let mut d = Drain::start(t0, Duration::from_secs(25));
        assert_eq!(d.check(false, false, t0), Some(Ended::NoClients));
    }

    #[test]
    fn ends_after_a_quiet_second_and_activity_restarts_the_count() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Drain::start(t0, Duration::from_secs(25));
        assert_eq!(d.check(true, false, t0), None, "wants in flight");
        assert_eq!(d.check(true, true, t0 + ms(100)), None, "just went idle");
        assert_eq!(
            d.check(true, false, t0 + ms(900)),
            None,
            "a new batch of wants"
        );
        assert_eq!(d.check(true, true, t0 + ms(1000)), None);
        assert_eq!(d.check(true, true, t0 + ms(1900)), None, "idle 900 ms only");
        assert_eq!(d.check(true, true, t0 + ms(2000)), Some(Ended::Idle));
    }

    #[test]
    fn ends_at_the_deadline_with_work_in_flight() {
        let t0 = Instant::now();
        let mut d = Drain::start(t0, Duration::from_secs(25));
        assert_eq!(d.check(true, false, t0 + Duration::from_secs(24)), None);
        assert_eq!(
            d.check(true, false, t0 + Duration::from_secs(25)),
            Some(Ended::Timeout)
        );
    }
}
