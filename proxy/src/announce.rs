//! The lines printed on stdout for whoever started the proxy: its peer ID and the
//! addresses it listens on. They are a courtesy to a script or a terminal; a closed or
//! broken stdout must never stop the proxy (`println!` panics on a broken pipe).

use std::fmt::Display;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout has failed, so the failure is logged only once.
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes `line` and a newline to stdout. A write error is ignored (logged once, at
/// debug): the proxy keeps serving whatever happened to its stdout.
pub fn line(line: impl Display) {
    write_line(&mut std::io::stdout().lock(), line, &STDOUT_FAILED);
}

/// [`line`] on any writer; returns whether the line was written.
fn write_line(out: &mut impl Write, line: impl Display, failed: &AtomicBool) -> bool {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            if !failed.swap(true, Ordering::Relaxed) {
                tracing::debug!(error = %e, "stdout is not writable: start-up lines are dropped");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone, as stdout on a pipe whose read end is closed.
    struct BrokenPipe {
        attempts: usize,
    }

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            self.attempts += 1;
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_broken_stdout_is_noted_once_and_never_panics() {
        let failed = AtomicBool::new(false);
        let mut out = BrokenPipe { attempts: 0 };
        assert!(!write_line(&mut out, "Peer ID: x", &failed));
        assert!(failed.load(Ordering::Relaxed));
        // Later lines (a new listen address) are still attempted, and still harmless.
        assert!(!write_line(
            &mut out,
            "Listening on /ip4/1.2.3.4/tcp/1",
            &failed
        ));
        assert_eq!(out.attempts, 2);
    }

    #[test]
    fn a_working_stdout_gets_the_whole_line() {
        let failed = AtomicBool::new(false);
        let mut out = Vec::new();
        assert!(write_line(
            &mut out,
            format_args!("Peer ID: {}", 7),
            &failed
        ));
        assert_eq!(out, b"Peer ID: 7\n");
        assert!(!failed.load(Ordering::Relaxed));
    }
}
