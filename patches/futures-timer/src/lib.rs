//! libp2p's timers (a stream's negotiation, a connection's idle time, pings, dial and
//! upgrade timeouts) on tokio's timer, in place of futures-timer's helper thread.
//!
//! futures-timer wakes a thread of its own each time a timer is created, reset or
//! dropped. libp2p-swarm creates one for every stream it negotiates, and kubo opens a
//! stream for every message it sends, so each block cost two wake-ups of that thread:
//! 2 % of the proxy's CPU on 256 KiB blocks, 5 % on 1 KiB blocks (perf, by thread),
//! plus the wake-up calls on the workers. libp2p takes its timer from futures-timer with
//! no way to choose another, and futures-timer has none to install one, so this crate
//! stands in for it through `[patch.crates-io]` with the API libp2p uses: `Delay::new`,
//! `Delay::reset` and `Future`. Registering a tokio timer wakes no thread: the worker
//! that parks next drives it.
//!
//! A `Delay` must be created inside a tokio runtime with time enabled, as every libp2p
//! timer in this workspace is (the swarms and their connections run on tokio).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A future that completes once its duration has passed.
pub struct Delay {
    // Boxed so that `Delay` is `Unpin`, as futures-timer's is (libp2p polls it by `&mut`).
    sleep: Pin<Box<Sleep>>,
}

impl Delay {
    /// Completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        Delay {
            sleep: Box::pin(tokio::time::sleep_until(deadline(dur))),
        }
    }

    /// Completes `dur` from now instead, whether or not it had completed.
    pub fn reset(&mut self, dur: Duration) {
        self.sleep.as_mut().reset(deadline(dur));
    }
}

/// `dur` from now; a duration past what `Instant` can hold (libp2p uses
/// `Duration::MAX` for "never") waits for a very long time instead of panicking.
fn deadline(dur: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(dur).unwrap_or_else(|| now + NEVER)
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay")
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    fn poll(d: &mut Delay) -> Poll<()> {
        let waker = std::task::Waker::noop();
        Pin::new(d).poll(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn completes_once_its_time_has_passed() {
        let mut d = Delay::new(Duration::from_secs(10));
        assert!(poll(&mut d).is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(poll(&mut d).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(poll(&mut d).is_ready());
        // And stays complete, as futures-timer's does.
        assert!(poll(&mut d).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn reset_counts_from_the_reset() {
        let mut d = Delay::new(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(8)).await;
        d.reset(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(poll(&mut d).is_pending(), "reset pushed the deadline out");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(poll(&mut d).is_ready());
        // A completed delay that is reset waits again.
        d.reset(Duration::from_secs(5));
        assert!(poll(&mut d).is_pending());
        tokio::time::advance(Duration::from_secs(5)).await;
        d.await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_duration_past_the_clock_waits_instead_of_panicking() {
        let mut d = Delay::new(Duration::MAX);
        tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
        assert!(poll(&mut d).is_pending());
        d.reset(Duration::MAX);
        assert!(poll(&mut d).is_pending());
    }
}
