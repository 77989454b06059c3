//! Exponential backoff with optional jitter, shared by every retry loop (the proxy's
//! backends and watch channel, the operator's reconciles).
//!
//! Pure: the random draw is an argument, so callers that must stay deterministic (the
//! proxy's backend state machine) pass it in, and tests choose it.

use std::time::Duration;

/// Growth stops after this many attempts even if `max` is not reached (a factor barely
/// above 1); it keeps [`Backoff::delay`] cheap for any attempt number.
const MAX_STEPS: u32 = 1024;

/// A validated exponential backoff: `base · factor^attempt`, capped at `max`, then
/// scaled by a jitter factor in `[1 - jitter, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
}

/// A parameter [`Backoff::new`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff base must be above zero")]
    ZeroBase,
    #[error("backoff max ({max:?}) must be at least the base ({base:?})")]
    MaxBelowBase { base: Duration, max: Duration },
    #[error("backoff factor must be a finite number of at least 1, not {0}")]
    Factor(f64),
    #[error("backoff jitter must be a fraction in [0, 1], not {0}")]
    Jitter(f64),
}

impl Backoff {
    /// Checks the parameters. A `const fn`, so constants are checked at compile time
    /// (see [`Backoff::must`]).
    #[allow(clippy::manual_range_contains)] // `contains` is not const
    pub const fn new(
        base: Duration,
        max: Duration,
        factor: f64,
        jitter: f64,
    ) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if max.as_nanos() < base.as_nanos() {
            return Err(BackoffError::MaxBelowBase { base, max });
        }
        // Written so that NaN fails too.
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(BackoffError::Factor(factor));
        }
        if !(jitter >= 0.0 && jitter <= 1.0) {
            return Err(BackoffError::Jitter(jitter));
        }
        Ok(Self {
            base,
            max,
            factor,
            jitter,
        })
    }

    /// Doubling from `base` up to `max`, without jitter.
    pub const fn doubling(base: Duration, max: Duration) -> Result<Self, BackoffError> {
        Self::new(base, max, 2.0, 0.0)
    }

    /// [`Backoff::new`]'s value, for constants: bad parameters fail the build when used
    /// in a `const` item (a panic at run time otherwise).
    pub const fn must(r: Result<Self, BackoffError>) -> Self {
        match r {
            Ok(b) => b,
            Err(_) => panic!("invalid backoff parameters"),
        }
    }

    /// The same curve with another jitter fraction.
    pub const fn with_jitter(self, jitter: f64) -> Result<Self, BackoffError> {
        Self::new(self.base, self.max, self.factor, jitter)
    }

    /// The same curve with another base and max (the factor and jitter kept).
    pub const fn with_bounds(self, base: Duration, max: Duration) -> Result<Self, BackoffError> {
        Self::new(base, max, self.factor, self.jitter)
    }

    pub const fn base(&self) -> Duration {
        self.base
    }

    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The delay before retry number `attempt` (0 for the first retry). `draw` is a
    /// uniform random number in `[0, 1]` (out-of-range values are clamped, NaN counts
    /// as 1): 0 gives the shortest delay the jitter allows, 1 the full one.
    pub fn delay(&self, attempt: u32, draw: f64) -> Duration {
        let full = self.undelayed(attempt);
        let draw = if draw.is_nan() {
            1.0
        } else {
            draw.clamp(0.0, 1.0)
        };
        // In [1 - jitter, 1]: never longer than `full`, so never over `max`.
        let scale = 1.0 - self.jitter * (1.0 - draw);
        full.mul_f64(scale).min(full)
    }

    /// The delay before jitter. Multiplies step by step (IEEE rounding is monotone, so
    /// the result never shrinks as `attempt` grows), stopping at `max`.
    fn undelayed(&self, attempt: u32) -> Duration {
        let max = self.max.as_secs_f64();
        let mut secs = self.base.as_secs_f64();
        if self.factor > 1.0 {
            for _ in 0..attempt.min(MAX_STEPS) {
                if secs >= max {
                    break;
                }
                secs *= self.factor;
            }
        }
        if secs >= max {
            self.max
        } else if attempt == 0 || self.factor == 1.0 {
            self.base
        } else {
            Duration::from_secs_f64(secs).clamp(self.base, self.max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_the_base_and_stops_at_max() {
        let b = Backoff::doubling(Duration::from_secs(5), Duration::from_secs(300)).unwrap();
        let secs: Vec<u64> = (0..8).map(|a| b.delay(a, 0.3).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(300));
    }

    #[test]
    fn jitter_scales_between_its_bounds() {
        let b = Backoff::new(SECOND, SECOND * 60, 2.0, 0.5).unwrap();
        assert_eq!(b.delay(2, 0.0), SECOND * 2);
        assert_eq!(b.delay(2, 1.0), SECOND * 4);
        assert_eq!(b.delay(2, 0.5), SECOND * 3);
        assert_eq!(b.delay(2, f64::NAN), SECOND * 4);
        assert_eq!(b.delay(2, -3.0), SECOND * 2);
    }

    #[test]
    fn bad_parameters_are_refused_with_a_reason() {
        let e = |r: Result<Backoff, BackoffError>| r.unwrap_err().to_string();
        assert_eq!(
            e(Backoff::new(Duration::ZERO, SECOND, 2.0, 0.0)),
            "backoff base must be above zero"
        );
        assert!(e(Backoff::new(SECOND * 2, SECOND, 2.0, 0.0)).contains("at least the base"));
        for f in [0.5, 0.0, -2.0, f64::NAN, f64::INFINITY] {
            assert!(e(Backoff::new(SECOND, SECOND, f, 0.0)).contains("factor"));
        }
        for j in [-0.1, 1.5, f64::NAN] {
            assert!(e(Backoff::new(SECOND, SECOND, 2.0, j)).contains("jitter"));
        }
    }

    #[test]
    #[should_panic(expected = "invalid backoff parameters")]
    fn must_panics_on_bad_parameters() {
        Backoff::must(Backoff::doubling(SECOND, Duration::ZERO));
    }

    fn nanos(max: u64) -> impl Strategy<Value = Duration> {
        (1..=max).prop_map(Duration::from_nanos)
    }

    /// Valid parameters: base up to an hour, max up to a day above it.
    fn valid() -> impl Strategy<Value = Backoff> {
        (
            nanos(3_600_000_000_000),
            0..86_400_000_000_000u64,
            1.0..16.0f64,
            0.0..=1.0f64,
        )
            .prop_map(|(base, extra, factor, jitter)| {
                Backoff::new(base, base + Duration::from_nanos(extra), factor, jitter)
                    .expect("valid by construction")
            })
    }

    proptest! {
        #[test]
        fn delays_never_exceed_max(b in valid(), attempt in any::<u32>(), draw in any::<f64>()) {
            prop_assert!(b.delay(attempt, draw) <= b.max());
        }

        #[test]
        fn without_jitter_delays_never_shrink(
            b in valid(), attempt in 0..2048u32, draw in 0.0..=1.0f64,
        ) {
            let b = b.with_jitter(0.0).unwrap();
            prop_assert!(b.delay(attempt, draw) <= b.delay(attempt + 1, draw));
            prop_assert!(b.delay(attempt, draw) >= b.base());
        }

        #[test]
        fn jitter_stays_within_its_bounds(
            b in valid(), attempt in 0..64u32, draw in 0.0..=1.0f64,
        ) {
            let full = b.with_jitter(0.0).unwrap().delay(attempt, 0.0);
            let d = b.delay(attempt, draw);
            prop_assert!(d <= full);
            // One nanosecond of slack for the float scaling.
            let floor = full.mul_f64(1.0 - b.jitter);
            prop_assert!(d + Duration::from_nanos(1) >= floor, "{d:?} < {floor:?}");
        }

        #[test]
        fn bad_parameters_are_refused(
            base in 0..1_000_000u64, max in 0..1_000_000u64,
            factor in any::<f64>(), jitter in any::<f64>(),
        ) {
            let (base, max) = (Duration::from_nanos(base), Duration::from_nanos(max));
            let ok = !base.is_zero()
                && max >= base
                && factor.is_finite()
                && factor >= 1.0
                && (0.0..=1.0).contains(&jitter);
            prop_assert_eq!(Backoff::new(base, max, factor, jitter).is_ok(), ok);
        }
    }
}
