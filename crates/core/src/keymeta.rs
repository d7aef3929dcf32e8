//! A short-lived cache of key metadata (state, versions, owner), so the hot path does not read
//! the key's row for every request.
//!
//! Staleness is bounded three ways: this node drops an entry when it changes the key; a feed
//! of changes from the store (PostgreSQL LISTEN/NOTIFY) drops entries other nodes change; and
//! no entry is used after [`MAX_KEY_META_AGE`], the fallback when a notification is missed.

use crate::cache::BoundedCache;
use crate::model::KeyRecord;
use crate::store::StoreChange;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest time a cached key row is trusted without a notification.
pub const MAX_KEY_META_AGE: Duration = Duration::from_millis(500);

struct Cached {
    record: KeyRecord,
    fetched: Instant,
}

pub(crate) struct KeyMetaCache {
    entries: BoundedCache<Uuid, Cached>,
    /// Bumped by every invalidation, so that a read which started before one never caches
    /// the row it got (it may predate the change).
    generation: AtomicU64,
}

impl KeyMetaCache {
    pub(crate) fn new(capacity: usize) -> Self {
        KeyMetaCache {
            entries: BoundedCache::new(capacity),
            generation: AtomicU64::new(0),
        }
    }

    /// The cached row of key `id` in `org_id`, if fresh.
    pub(crate) fn get(&self, org_id: &str, id: Uuid) -> Option<KeyRecord> {
        let c = self.entries.get(&id)?;
        (c.fetched.elapsed() < MAX_KEY_META_AGE && c.record.org_id == org_id)
            .then(|| c.record.clone())
    }

    /// The generation to pass to [`Self::insert`] for a read that starts now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches a row read since `generation`, unless an invalidation happened meanwhile.
    pub(crate) fn insert(&self, generation: u64, record: &KeyRecord, fetched: Instant) {
        if self.generation() == generation {
            self.entries.insert(
                record.id,
                Arc::new(Cached {
                    record: record.clone(),
                    fetched,
                }),
            );
            // An invalidation between the check and the insert may have missed this entry.
            if self.generation() != generation {
                self.entries.remove(&record.id);
            }
        }
    }

    pub(crate) fn invalidate(&self, id: Uuid) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.remove(&id);
    }

    pub(crate) fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// Applies one change of a store's feed (org and identity changes concern no key row).
    pub(crate) fn apply(&self, change: &StoreChange) {
        match change {
            StoreChange::Key(id) => self.invalidate(*id),
            StoreChange::Lost => self.invalidate_all(),
            StoreChange::Org(_) | StoreChange::Identity { .. } => {}
        }
    }

    /// Applies a store's change feed until it ends.
    #[cfg(test)]
    async fn follow(self: Arc<Self>, mut feed: tokio::sync::mpsc::Receiver<StoreChange>) {
        while let Some(change) = feed.recv().await {
            self.apply(&change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KeyState;
    use sovra_crypto::KeyType;

    fn record(org: &str) -> KeyRecord {
        KeyRecord {
            id: Uuid::new_v4(),
            org_id: org.into(),
            owner: "alice".into(),
            name: "k".into(),
            key_type: KeyType::Aes256Gcm,
            description: None,
            state: KeyState::Enabled,
            latest_version: 1,
            min_decryption_version: 1,
            created_at: 0,
            rotated_at: None,
            deletion_date: None,
            revision: 1,
            row_mac: Vec::new(),
        }
    }

    #[test]
    fn a_fresh_row_is_served_only_to_its_own_org() {
        let c = KeyMetaCache::new(10);
        let k = record("acme");
        c.insert(c.generation(), &k, Instant::now());
        assert_eq!(c.get("acme", k.id).map(|r| r.id), Some(k.id));
        assert!(
            c.get("globex", k.id).is_none(),
            "another org's id is a miss"
        );
    }

    #[test]
    fn rows_older_than_the_age_bound_are_not_used() {
        let c = KeyMetaCache::new(10);
        let k = record("acme");
        let old = Instant::now() - MAX_KEY_META_AGE - Duration::from_millis(1);
        c.insert(c.generation(), &k, old);
        assert!(c.get("acme", k.id).is_none());
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let c = KeyMetaCache::new(10);
        let k = record("acme");
        let before_read = c.generation();
        // Another request changes the key while this one reads the old row.
        c.invalidate(k.id);
        c.insert(before_read, &k, Instant::now());
        assert!(
            c.get("acme", k.id).is_none(),
            "the possibly stale row was dropped"
        );
        // A read that started after the change is cached.
        c.insert(c.generation(), &k, Instant::now());
        assert!(c.get("acme", k.id).is_some());
    }

    #[tokio::test]
    async fn the_change_feed_drops_changed_keys_and_everything_when_lost() {
        let c = Arc::new(KeyMetaCache::new(10));
        let (a, b) = (record("acme"), record("acme"));
        for k in [&a, &b] {
            c.insert(c.generation(), k, Instant::now());
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let follower = tokio::spawn(c.clone().follow(rx));
        tx.send(StoreChange::Key(a.id)).await.unwrap();
        tokio::task::yield_now().await;
        while c.get("acme", a.id).is_some() {
            tokio::task::yield_now().await;
        }
        assert!(
            c.get("acme", b.id).is_some(),
            "only the changed key is dropped"
        );
        tx.send(StoreChange::Lost).await.unwrap();
        drop(tx);
        follower.await.unwrap();
        assert!(
            c.get("acme", b.id).is_none(),
            "a gap in the feed drops every key"
        );
    }
}
