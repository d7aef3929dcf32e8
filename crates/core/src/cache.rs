//! Bounded caches of unwrapped keys. Entries hold zeroizing buffers or aws-lc key objects
//! (which clear their memory when freed); eviction and `clear` drop them.

use dashmap::DashMap;
use std::hash::Hash;
use std::sync::Arc;

pub struct BoundedCache<K: Eq + Hash + Clone, V> {
    map: DashMap<K, Arc<V>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> BoundedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedCache {
            map: DashMap::new(),
            capacity,
        }
    }

    pub fn get(&self, k: &K) -> Option<Arc<V>> {
        self.map.get(k).map(|v| v.clone())
    }

    pub fn insert(&self, k: K, v: Arc<V>) {
        evict_one_at_capacity(&self.map, self.capacity);
        self.map.insert(k, v);
    }

    pub fn remove(&self, k: &K) {
        self.map.remove(k);
    }

    pub fn remove_if(&self, pred: impl Fn(&K) -> bool) {
        self.map.retain(|k, _| !pred(k));
    }

    pub fn clear(&self) {
        self.map.clear();
    }
}

/// Makes room for one entry in a map of at most `capacity`: random-ish eviction, the first
/// entry the map yields. Cheap, hot keys simply come back on their next use, and many distinct
/// callers evict one entry each, never the whole map.
pub(crate) fn evict_one_at_capacity<K: Eq + Hash + Clone, V>(map: &DashMap<K, V>, capacity: usize) {
    if map.len() >= capacity {
        // The iterator holds a shard read lock: let it go before removing (same shard).
        let victim = map.iter().next().map(|e| e.key().clone());
        if let Some(victim) = victim {
            map.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_at_capacity_keeps_the_bound_and_does_not_block() {
        let c: BoundedCache<u32, u32> = BoundedCache::new(2);
        for i in 0..100 {
            c.insert(i, Arc::new(i));
            assert!(c.map.len() <= 2);
        }
        assert!(c.get(&99).is_some(), "the newest entry is kept");
        let one: BoundedCache<u32, u32> = BoundedCache::new(1);
        one.insert(1, Arc::new(1));
        one.insert(2, Arc::new(2));
        assert!(one.get(&1).is_none() && one.get(&2).is_some());
    }
}
