//! The block cache: decoded blocks, LRU, bounded in bytes.
//!
//! Invariants: keys are the immutable identity of a stored block — (pack id, block number) — so
//! every point that shares a stored block shares its entry, and an entry can never go stale (a
//! pack is only ever replaced by a repack that keeps identical bytes for the blocks it keeps).
//! Each shard's byte total never exceeds its share of the capacity after an insert returns. Holes
//! are never cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;
use uuid::Uuid;

/// Identity of a stored block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub pack: Uuid,
    pub block: u64,
}

/// Default cache capacity (256 MiB).
pub const DEFAULT_CAPACITY: usize = 256 << 20;
const SHARDS: usize = 16;

struct Shard {
    lru: LruCache<BlockKey, Arc<[u8]>>,
    bytes: usize,
}

/// A sharded LRU of decoded blocks.
pub struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("capacity", &(self.shard_capacity * SHARDS))
            .finish()
    }
}

impl BlockCache {
    /// A cache holding at most `capacity` bytes of block data (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        BlockCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        lru: LruCache::unbounded(),
                        bytes: 0,
                    })
                })
                .collect(),
            shard_capacity: capacity / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &BlockKey) -> &Mutex<Shard> {
        let (hi, lo) = key.pack.as_u64_pair();
        let mix = (hi ^ lo ^ key.block).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.shards[(mix >> 60) as usize % SHARDS]
    }

    pub fn get(&self, key: &BlockKey) -> Option<Arc<[u8]>> {
        let hit = self.shard(key).lock().lru.get(key).cloned();
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    pub fn insert(&self, key: BlockKey, data: Arc<[u8]>) {
        if data.len() > self.shard_capacity {
            return;
        }
        let mut shard = self.shard(&key).lock();
        shard.bytes += data.len();
        if let Some(old) = shard.lru.put(key, data) {
            shard.bytes -= old.len();
        }
        while shard.bytes > self.shard_capacity {
            match shard.lru.pop_lru() {
                Some((_, evicted)) => shard.bytes -= evicted.len(),
                None => break,
            }
        }
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Bytes currently cached.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_and_evicts_least_recent() {
        let cache = BlockCache::new(SHARDS * 4096 * 4);
        let pack = Uuid::new_v4();
        for b in 0..10_000u64 {
            cache.insert(BlockKey { pack, block: b }, Arc::from(vec![b as u8; 4096]));
            assert!(cache.bytes() <= cache.capacity());
        }
        let key = BlockKey { pack, block: 9_999 };
        assert_eq!(
            cache.get(&key).expect("recent block cached")[0],
            9_999u64 as u8
        );
        assert!(cache.get(&BlockKey { pack, block: 0 }).is_none());
        assert_eq!(cache.stats(), (1, 1));
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = BlockCache::new(0);
        let key = BlockKey {
            pack: Uuid::new_v4(),
            block: 1,
        };
        cache.insert(key, Arc::from(vec![1u8; 16]));
        assert!(cache.get(&key).is_none());
    }
}
