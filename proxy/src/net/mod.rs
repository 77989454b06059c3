//! The libp2p side: the hosts, a per-IP connection cap, and bitswap on them.

pub mod backend_tls;
pub mod bitswap;
pub mod ip_limit;
pub mod swarm;
