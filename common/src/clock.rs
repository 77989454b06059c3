//! Wall-clock time, as metrics and versions record it.

use std::time::{Duration, SystemTime};

/// Time since the Unix epoch; zero on a clock set before 1970 (a wrong metric rather
/// than a panic).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_now_is_after_2020_and_moves_forward() {
        let a = super::unix_now();
        assert!(a.as_secs() > 1_577_836_800, "{a:?}");
        assert!(super::unix_now() >= a);
    }
}
