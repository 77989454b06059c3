//! Preload mode (`-p`): js-ipfs's `/api/v0/refs` preload, with the backend's fetch of
//! the uploaded DAG travelling in reverse through the proxy, for that DAG only.
//!
//! Pure parts: [`dag`] (link extraction), [`client_ip`] (who a request is from),
//! [`sessions`] (the allowed-CID tables) and [`reverse`] (reverse want routing).
//! I/O part: [`refs`] (the endpoint), served on the shared port (`crate::front`).

pub mod client_ip;
pub mod dag;
pub mod refs;
pub mod reverse;
pub mod sessions;

/// The shared port was preload's alone once; the old path still names it.
pub use crate::front;
pub use client_ip::{Cidr, IpKey};
pub use reverse::Reverse;
pub use sessions::{Limits, SessionId};
