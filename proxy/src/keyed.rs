//! Maps and sets keyed by what peers send (CIDs, peer IDs, client networks), for the
//! routing state every message touches.
//!
//! std's default hasher (SipHash-1-3) was about 7 % of the proxy's CPU on small blocks
//! (1 KiB blocks, 256 wants in flight: dozens of lookups per block, each hashing a
//! 36-byte CID or a 38-byte peer ID). ahash keeps what a public port needs, keys drawn
//! at random for each process and map so that no peer can aim its CIDs at one bucket,
//! at a fraction of the cost.

pub type Map<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
pub type Set<T> = std::collections::HashSet<T, ahash::RandomState>;
