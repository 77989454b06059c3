//! Load shedding: a want that would wait longer than `shed_after` in every backend's
//! queue is answered at once (DONT_HAVE where asked, `Fetched::Shed` for the HTTP
//! gateway) instead of queued to time out at the client.
//!
//! How long a queue takes is estimated from the backend's measured answer rate
//! (blocks and presences per second). The rate is sampled only while the backend has
//! wants queued, that is while its in-flight window is full: then it answers as fast
//! as it can, and the sample is its capacity, not the demand of the moment (a
//! backend that served ten wants a second while asked for ten would otherwise look
//! slow to the first burst). Until one window has been measured a backend is never
//! shed from: no estimate, no refusal.

use std::time::{Duration, Instant};

/// How long one rate sample spans.
pub(super) const WINDOW: Duration = Duration::from_secs(1);
/// A window cut short by the queue emptying still counts from this long: it was
/// all saturated time (a backend that drains its queue quickly is fast, and the
/// sample says so, instead of leaving an older, slower rate in place).
const PART: Duration = Duration::from_millis(100);

/// A backend's answer rate while saturated.
#[derive(Debug, Default)]
pub(super) struct Meter {
    /// The open window: when it started, and the answers counted since.
    start: Option<Instant>,
    answers: u64,
    /// Answers per second, each window weighing half; `None` until a window closed.
    rate: Option<f64>,
}

impl Meter {
    /// The backend's queue is not empty (its window is full): measure.
    pub(super) fn saturated(&mut self, now: Instant) {
        if self.start.is_none() {
            self.start = Some(now);
            self.answers = 0;
        }
    }

    /// Its queue emptied: the open window is folded in if it lasted [`PART`],
    /// else dropped; either way the next one starts when the queue fills again.
    pub(super) fn unsaturated(&mut self, now: Instant) {
        if let Some(start) = self.start.take() {
            let elapsed = now.saturating_duration_since(start);
            if elapsed >= PART {
                self.fold(self.answers as f64 / elapsed.as_secs_f64());
            }
        }
    }

    fn fold(&mut self, sample: f64) {
        self.rate = Some(self.rate.map_or(sample, |r| (r + sample) / 2.0));
    }

    /// `n` answers arrived.
    pub(super) fn answered(&mut self, n: usize, now: Instant) {
        self.roll(now);
        if self.start.is_some() {
            self.answers += n as u64;
        }
    }

    /// Closes the open window if it has lasted [`WINDOW`], folding it into the rate.
    pub(super) fn roll(&mut self, now: Instant) {
        let Some(start) = self.start else {
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < WINDOW {
            return;
        }
        self.fold(self.answers as f64 / elapsed.as_secs_f64());
        self.start = Some(now);
        self.answers = 0;
    }

    /// Answers per second, once measured.
    pub(super) fn rate(&self) -> Option<f64> {
        self.rate
    }
}

/// Whether `outstanding` wants (in flight and queued, the new one included) at a
/// backend answering `rate` per second take longer than `shed_after`. No rate yet:
/// no.
pub(super) fn too_deep(outstanding: usize, rate: Option<f64>, shed_after: Duration) -> bool {
    match rate {
        None => false,
        Some(r) => outstanding as f64 > r * shed_after.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_estimate_before_a_whole_saturated_window() {
        let t0 = Instant::now();
        let mut m = Meter::default();
        // Answers while not saturated are not a sample.
        m.answered(500, t0);
        m.roll(t0 + WINDOW * 3);
        assert_eq!(m.rate(), None);
        m.saturated(t0 + WINDOW * 3);
        m.answered(100, t0 + WINDOW * 3 + WINDOW / 2);
        assert_eq!(m.rate(), None, "half a window is no sample");
        assert!(!too_deep(usize::MAX, m.rate(), Duration::from_secs(1)));
        m.roll(t0 + WINDOW * 4);
        assert_eq!(m.rate(), Some(100.0));
    }

    #[test]
    fn windows_average_and_a_silent_backend_decays() {
        let t0 = Instant::now();
        let mut m = Meter::default();
        m.saturated(t0);
        m.answered(400, t0 + WINDOW / 2);
        m.roll(t0 + WINDOW);
        assert_eq!(m.rate(), Some(400.0));
        m.answered(200, t0 + WINDOW * 3 / 2);
        m.roll(t0 + WINDOW * 2);
        assert_eq!(m.rate(), Some(300.0));
        // Saturated and answering nothing: halves each window.
        m.roll(t0 + WINDOW * 3);
        m.roll(t0 + WINDOW * 4);
        assert_eq!(m.rate(), Some(75.0));
    }

    #[test]
    fn an_idle_stretch_is_not_a_slow_sample() {
        let t0 = Instant::now();
        let mut m = Meter::default();
        m.saturated(t0);
        m.roll(t0 + WINDOW);
        m.answered(1000, t0 + WINDOW);
        m.unsaturated(t0 + WINDOW + PART / 2);
        // Ten idle seconds later it is saturated again: the window starts then.
        m.saturated(t0 + WINDOW * 11);
        m.answered(1000, t0 + WINDOW * 11);
        m.roll(t0 + WINDOW * 12);
        assert_eq!(
            m.rate(),
            Some(500.0),
            "(0 + 1000) / 2, the idle time unseen"
        );
        // A queue that empties after half a window, 400 answers in: 800 a second.
        m.unsaturated(t0 + WINDOW * 12);
        m.saturated(t0 + WINDOW * 20);
        m.answered(400, t0 + WINDOW * 20 + WINDOW / 4);
        m.unsaturated(t0 + WINDOW * 20 + WINDOW / 2);
        assert_eq!(m.rate(), Some(650.0));
        m.roll(t0 + WINDOW * 30);
        assert_eq!(m.rate(), Some(650.0), "no window open: nothing to fold");
    }

    #[test]
    fn deep_means_longer_than_the_bound_at_the_measured_rate() {
        let bound = Duration::from_secs(10);
        assert!(!too_deep(1000, Some(100.0), bound));
        assert!(too_deep(1001, Some(100.0), bound));
        assert!(too_deep(1, Some(0.0), bound), "a silent backend is deep");
        assert!(!too_deep(1_000_000, None, bound));
    }
}
