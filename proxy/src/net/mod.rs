//! The libp2p side: the hosts, a per-IP connection cap, TLS writes gathered per frame,
//! and bitswap on them.

pub mod backend_tls;
pub mod bitswap;
pub mod flush_buf;
pub mod ip_limit;
pub mod swarm;
