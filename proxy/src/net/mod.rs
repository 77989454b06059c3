//! The libp2p side: the host and bitswap stream I/O.

pub mod inbound;
pub mod ip_limit;
pub mod outbound;
pub mod streams;
pub mod swarm;
