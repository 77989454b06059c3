pub mod key;
pub mod watch;
