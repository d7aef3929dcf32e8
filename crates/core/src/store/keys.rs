//! Storage of keys and their versions.

use super::{StoreChange, StoreError};
use crate::model::{KeyRecord, KeyVersionRecord};
use async_trait::async_trait;
use uuid::Uuid;

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// A feed of key changes as they commit, for caches shared by several nodes; `None` when
    /// this process is the database's only writer (SQLite), so its own invalidation suffices.
    async fn key_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<StoreChange>>, StoreError>;

    /// Creates a key and its first version in one transaction (conflict on a duplicate name
    /// for the same owner).
    async fn create_key(&self, key: &KeyRecord, first: &KeyVersionRecord)
    -> Result<(), StoreError>;
    async fn get_key(&self, org_id: &str, key_id: Uuid) -> Result<Option<KeyRecord>, StoreError>;
    /// The owner's key of this name in the org (names are unique per owner and org).
    async fn get_key_by_name(
        &self,
        org_id: &str,
        owner: &str,
        name: &str,
    ) -> Result<Option<KeyRecord>, StoreError>;
    async fn list_keys(&self, org_id: &str, owner: &str) -> Result<Vec<KeyRecord>, StoreError>;
    /// Every key of the org (for its key admins).
    async fn list_org_keys(&self, org_id: &str) -> Result<Vec<KeyRecord>, StoreError>;
    /// Updates the mutable metadata (state, min_decryption_version, description, deletion
    /// date) and the revision and row MAC from `before` to `after`, if the stored row still
    /// holds `before`'s values and revision; conflict otherwise, so a concurrent change
    /// (another request or node) is never silently undone.
    async fn update_key(&self, before: &KeyRecord, after: &KeyRecord) -> Result<(), StoreError>;
    /// Adds a version and moves the key row to `key` (its latest version, rotation time,
    /// revision and MAC), if the stored row is still at `version.version - 1` and the revision
    /// before `key`'s; conflict otherwise, so concurrent rotations never produce two equal
    /// version numbers and a change that raced the rotation is not undone.
    async fn add_key_version(
        &self,
        key: &KeyRecord,
        version: &KeyVersionRecord,
    ) -> Result<(), StoreError>;
    /// Sets the revision and MAC of a row that has none (written before row MACs existed),
    /// if it still has none and holds `key`'s values; returns whether it did.
    async fn adopt_unsigned_key(&self, key: &KeyRecord) -> Result<bool, StoreError>;
    /// Every key row of every org, for the offline check (`sovra db verify`).
    async fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    async fn get_key_version(
        &self,
        key_id: Uuid,
        version: u32,
    ) -> Result<Option<KeyVersionRecord>, StoreError>;
    /// Replaces the wrapped material of a version if it is still wrapped under
    /// `old_kek_version`; returns whether it was replaced.
    async fn rewrap_key_version(
        &self,
        key_id: Uuid,
        version: u32,
        old_kek_version: u32,
        new: &KeyVersionRecord,
    ) -> Result<bool, StoreError>;
    /// Versions of the org's keys still wrapped under a KEK older than `kek_version`, in
    /// (key id, version) order, after `after` when given (to page past versions a sweep could
    /// not move).
    async fn versions_below_kek(
        &self,
        org_id: &str,
        kek_version: u32,
        after: Option<(Uuid, u32)>,
        limit: u32,
    ) -> Result<Vec<KeyVersionRecord>, StoreError>;
    /// Keys pending deletion whose date has passed.
    async fn keys_due_for_deletion(&self, now_ms: i64) -> Result<Vec<(String, Uuid)>, StoreError>;
    /// Destroys a key and all its versions if it is still pending deletion with its date at or
    /// before `now_ms` (a cancellation that raced the purge wins). Returns whether it did.
    async fn delete_key(&self, org_id: &str, key_id: Uuid, now_ms: i64)
    -> Result<bool, StoreError>;
}
