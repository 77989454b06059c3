pub mod backoff;
pub mod key;
pub mod watch;
