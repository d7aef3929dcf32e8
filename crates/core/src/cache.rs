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
        if self.map.len() >= self.capacity {
            // Random-ish eviction: drop the first entry the map yields. Cheap, and hot keys
            // simply come back on the next use.
            if let Some(victim) = self.map.iter().next().map(|e| e.key().clone()) {
                self.map.remove(&victim);
            }
        }
        self.map.insert(k, v);
    }

    pub fn remove_if(&self, pred: impl Fn(&K) -> bool) {
        self.map.retain(|k, _| !pred(k));
    }

    pub fn clear(&self) {
        self.map.clear();
    }
}
