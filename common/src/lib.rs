pub mod admin;
pub mod backoff;
pub mod clock;
pub mod key;
pub mod logging;
pub mod shutdown;
pub mod throttle;
pub mod watch;
