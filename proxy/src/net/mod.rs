//! The libp2p side: the hosts, a per-IP connection cap, the secure channels' writes
//! gathered per burst, and bitswap on them.

pub mod backend_tls;
pub mod bitswap;
pub mod flush_buf;
pub mod ip_limit;
pub mod shaped;
pub mod swarm;
