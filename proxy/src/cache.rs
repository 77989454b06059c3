//! The block cache: verified blocks from the backends, kept in memory so a block many
//! clients want is fetched from a backend once, not once per client. Bounded in bytes
//! (each entry weighs its data plus [`ENTRY_OVERHEAD`]); moka's TinyLFU admission lets
//! a new block in only when it is wanted more often than the one it would evict, so a
//! scan of blocks wanted once does not flush the blocks wanted often.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cid::Cid;
use moka::notification::RemovalCause;

use crate::bitswap::Block;

/// What one entry costs beyond its data, counted in its weight: the CID, moka's
/// entry, its frequency sketch and queue nodes (about 200 bytes measured in moka's
/// docs for small keys), rounded up.
pub const ENTRY_OVERHEAD: usize = 256;

/// The cache's counters, as totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    /// Entries evicted to keep the byte bound (not replaced or removed ones).
    pub evictions: u64,
}

pub struct BlockCache {
    blocks: moka::sync::Cache<Cid, Bytes>,
    hits: u64,
    misses: u64,
    evictions: Arc<AtomicU64>,
}

impl BlockCache {
    /// A cache of at most `max_bytes` (data and overhead); `None` for 0 (off).
    pub fn new(max_bytes: u64) -> Option<Self> {
        if max_bytes == 0 {
            return None;
        }
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let blocks = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Cid, data: &Bytes| {
                u32::try_from(data.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Some(Self {
            blocks,
            hits: 0,
            misses: 0,
            evictions,
        })
    }

    /// The block under `cid`, if cached; counted as a hit or a miss.
    pub fn get(&mut self, cid: &Cid) -> Option<Block> {
        match self.blocks.get(cid) {
            Some(data) => {
                self.hits += 1;
                Some(Block { cid: *cid, data })
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Whether `cid` is cached, without counting (a HAVE answer).
    pub fn contains(&self, cid: &Cid) -> bool {
        self.blocks.contains_key(cid)
    }

    /// Offers a verified block. Its bytes are copied: a block decoded from a frame
    /// shares that frame's buffer, which the cache must not keep alive (its weight
    /// would be a lie).
    pub fn insert(&mut self, block: &Block) {
        if !self.blocks.contains_key(&block.cid) {
            let data = Bytes::copy_from_slice(&block.data);
            self.blocks.insert(block.cid, data);
        }
    }

    /// Bytes held (data and overhead), as of the last maintenance.
    pub fn bytes(&self) -> u64 {
        self.blocks.weighted_size()
    }

    pub fn entries(&self) -> u64 {
        self.blocks.entry_count()
    }

    /// Applies pending admissions and evictions now (moka batches them), so that
    /// [`bytes`](Self::bytes) is within the bound.
    pub fn settle(&self) {
        self.blocks.run_pending_tasks();
    }

    pub fn stats(&self) -> Stats {
        Stats {
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::block;

    const KIB: usize = 1024;

    #[test]
    fn zero_is_off() {
        assert!(BlockCache::new(0).is_none());
    }

    #[test]
    fn a_hit_returns_the_block_and_counts() {
        let mut c = BlockCache::new(1 << 20).unwrap();
        let b = block(1, 4 * KIB);
        assert!(c.get(&b.cid).is_none());
        c.insert(&b);
        c.settle();
        let got = c.get(&b.cid).expect("cached");
        assert_eq!(got.data, b.data);
        assert!(c.contains(&b.cid));
        assert_eq!(
            c.stats(),
            Stats {
                hits: 1,
                misses: 1,
                evictions: 0
            }
        );
        assert_eq!(c.bytes(), (4 * KIB + ENTRY_OVERHEAD) as u64);
    }

    #[test]
    fn a_scan_of_distinct_blocks_keeps_the_byte_bound_and_the_hot_blocks() {
        let cap = 1 << 20;
        let mut c = BlockCache::new(cap).unwrap();
        // Hot: 8 blocks of 64 KiB (half the cache), each wanted several times.
        let hot: Vec<Block> = (0..8).map(|i| block(i, 64 * KIB)).collect();
        for b in &hot {
            c.insert(b);
        }
        c.settle();
        for _ in 0..4 {
            for b in &hot {
                assert!(c.get(&b.cid).is_some());
            }
        }
        // A scan: 4,000 distinct blocks (250 MiB), each seen once.
        for i in 0..4_000u64 {
            c.insert(&block(1_000 + i, 64 * KIB));
            if i % 64 == 0 {
                c.settle();
                assert!(c.bytes() <= cap, "{} > {cap}", c.bytes());
            }
        }
        c.settle();
        assert!(c.bytes() <= cap, "{} > {cap}", c.bytes());
        let kept = hot.iter().filter(|b| c.contains(&b.cid)).count();
        assert!(
            kept >= 7,
            "the scan flushed the hot blocks: {kept} of 8 kept"
        );
    }
}
