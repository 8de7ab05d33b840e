//! Caches bounded in bytes: decoded blocks (format 1) or frames (format 2), and, for format 2,
//! the metadata read on the way to them (map pages, frame tables, page fingerprints).
//!
//! Invariants: keys are the immutable identity of what they name — (pack id, block or frame
//! number), (map id, page), (pack id, table chunk) — so every point that shares a stored block
//! shares its entry, and an entry can never go stale (a pack is only ever replaced by a repack
//! that keeps identical bytes for the blocks it keeps, and a map never changes). Each shard's
//! byte total never exceeds its share of the capacity after an insert returns. Holes are never
//! cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;
use uuid::Uuid;

/// Identity of a stored block (format 1) or frame (format 2: `block` is the frame number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub pack: Uuid,
    pub block: u64,
}

/// Default cache capacity (256 MiB).
pub const DEFAULT_CAPACITY: usize = 256 << 20;
/// Default capacity of the metadata cache (32 MiB).
pub const DEFAULT_META_CAPACITY: usize = 32 << 20;
const SHARDS: usize = 16;

/// What a cached value costs, in bytes.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for Arc<[u8]> {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// A key the cache can shard on.
pub trait CacheKey: std::hash::Hash + Eq + Clone {
    /// A well-mixed 64-bit digest of the key.
    fn mix(&self) -> u64;
}

impl CacheKey for BlockKey {
    fn mix(&self) -> u64 {
        let (hi, lo) = self.pack.as_u64_pair();
        hi ^ lo ^ self.block
    }
}

struct Shard<K: CacheKey, V> {
    lru: LruCache<K, V>,
    bytes: usize,
}

/// A sharded LRU bounded in bytes.
pub struct Cache<K: CacheKey, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    shard_capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Decoded blocks or frames.
pub type BlockCache = Cache<BlockKey, Arc<[u8]>>;

impl<K: CacheKey, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("capacity", &(self.shard_capacity * SHARDS))
            .finish()
    }
}

impl<K: CacheKey, V: Weigh + Clone> Cache<K, V> {
    /// A cache holding at most `capacity` bytes (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Cache {
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

    fn shard(&self, key: &K) -> &Mutex<Shard<K, V>> {
        let mix = key.mix().wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.shards[(mix >> 60) as usize % SHARDS]
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let hit = self.shard(key).lock().lru.get(key).cloned();
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    pub fn insert(&self, key: K, value: V) {
        let weight = value.weight();
        if weight > self.shard_capacity {
            return;
        }
        let mut shard = self.shard(&key).lock();
        shard.bytes += weight;
        if let Some(old) = shard.lru.put(key, value) {
            shard.bytes -= old.weight();
        }
        while shard.bytes > self.shard_capacity {
            match shard.lru.pop_lru() {
                Some((_, evicted)) => shard.bytes -= evicted.weight(),
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
