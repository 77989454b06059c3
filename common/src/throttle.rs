//! Rate-limited repeated warnings: a warning a remote party can repeat at will (a bad
//! snapshot, a failing stream) is logged at most once per interval, and the next one
//! logged says how many were held back, so logs stay small and nothing goes unseen.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a warning may be logged at `now`, `n` being how many were held
    /// back since the last one; `None` to hold this one back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_and_the_next_counts_the_held_back() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Throttle::new(s(60));
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + s(1)), None);
        assert_eq!(t.allow(t0 + s(59)), None);
        assert_eq!(t.allow(t0 + s(60)), Some(2));
        assert_eq!(t.allow(t0 + s(61)), None);
        assert_eq!(t.allow(t0 + s(200)), Some(1));
    }
}
