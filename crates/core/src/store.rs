//! The storage interface of the core. Implementations (SQLite, PostgreSQL) live in
//! `sovra-store` and pass the same test-suite.

use crate::audit::{AuditEvent, AuditQuery, Checkpoint};
use crate::model::{AuditKeyRecord, KekRecord, KeyRecord, KeyVersionRecord, OrgRecord, SealRecord};
use async_trait::async_trait;
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
pub enum StoreError {
    /// A uniqueness rule or an optimistic-concurrency check refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or refused the operation.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A stored row does not decode (corruption or an incompatible schema).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// A change to stored keys, made by any process sharing the database (other nodes included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    /// This key's metadata or versions changed, or it was deleted.
    Key(Uuid),
    /// Changes may have been missed (the listening connection dropped): forget every key.
    Lost,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A feed of key changes as they commit, for caches shared by several nodes; `None` when
    /// this process is the database's only writer (SQLite), so its own invalidation suffices.
    async fn key_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<KeyChange>>, StoreError>;

    async fn get_seal(&self) -> Result<Option<SealRecord>, StoreError>;
    /// Writes the seal record once; a second initialization is a conflict.
    async fn create_seal(&self, seal: &SealRecord) -> Result<(), StoreError>;

    async fn get_org(&self, org_id: &str) -> Result<Option<OrgRecord>, StoreError>;
    /// Creates an org with its first KEK version in one transaction (conflict if it exists).
    async fn create_org(&self, org: &OrgRecord, kek: &KekRecord) -> Result<(), StoreError>;
    async fn get_kek(&self, org_id: &str, version: u32) -> Result<Option<KekRecord>, StoreError>;
    /// Adds KEK version `kek.version` and makes it active, if the active version is still
    /// `kek.version - 1` (conflict otherwise).
    async fn add_kek_version(&self, kek: &KekRecord) -> Result<(), StoreError>;

    /// Creates a key and its first version in one transaction (conflict on a duplicate name
    /// for the same owner).
    async fn create_key(&self, key: &KeyRecord, first: &KeyVersionRecord)
    -> Result<(), StoreError>;
    async fn get_key(&self, org_id: &str, key_id: Uuid) -> Result<Option<KeyRecord>, StoreError>;
    async fn list_keys(&self, org_id: &str, owner: &str) -> Result<Vec<KeyRecord>, StoreError>;
    /// Updates the mutable metadata (state, min_decryption_version, description, deletion date)
    /// from `before` to `after`, if the stored row still holds `before`'s values; conflict
    /// otherwise, so a concurrent change (another request or node) is never silently undone.
    async fn update_key(&self, before: &KeyRecord, after: &KeyRecord) -> Result<(), StoreError>;
    /// Adds a version if the key's latest version is still `version.version - 1`; conflict
    /// otherwise, so concurrent rotations never produce two equal version numbers.
    async fn add_key_version(
        &self,
        org_id: &str,
        version: &KeyVersionRecord,
    ) -> Result<(), StoreError>;
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
    /// Versions of the org's keys still wrapped under a KEK older than `kek_version`.
    async fn versions_below_kek(
        &self,
        org_id: &str,
        kek_version: u32,
        limit: u32,
    ) -> Result<Vec<KeyVersionRecord>, StoreError>;
    /// Appends events to the audit chain in one transaction: each gets the next sequence number
    /// and is linked to the current head. Returns them as stored. A concurrent append from
    /// another node makes this a conflict (the caller retries), never a fork.
    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditEvent>, StoreError>;
    /// Stores events already sealed into the chain (by a node's audit journal) in one
    /// transaction. The first must continue the stored head exactly (next sequence number,
    /// `prev_hash` equal to the head's hash), else this is a conflict and nothing is stored.
    async fn insert_sealed_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// Where a node keeps its audit journal when it is the only writer of this store (a SQLite
    /// file: the journal sits beside it); `None` when nodes share the store or it is in memory.
    fn audit_journal_path(&self) -> Option<std::path::PathBuf>;
    /// The chain head: the highest sequence number and its hash (`None` while empty).
    async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// Audit events with `seq >= from_seq`, in order, at most `limit`.
    async fn audit_events(&self, from_seq: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;
    /// One org's events matching the filters, newest first.
    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError>;
    /// Stores a signed checkpoint; one that already exists for the sequence is kept.
    async fn add_audit_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError>;
    /// Checkpoints with `from_seq <= seq <= to_seq`, in order.
    async fn audit_checkpoints(
        &self,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Vec<Checkpoint>, StoreError>;
    async fn get_audit_keys(&self) -> Result<Option<AuditKeyRecord>, StoreError>;
    /// Stores the audit keys once; a second creation (another node) is a conflict.
    async fn create_audit_keys(&self, keys: &AuditKeyRecord) -> Result<(), StoreError>;
    /// Keys pending deletion whose date has passed.
    async fn keys_due_for_deletion(&self, now_ms: i64) -> Result<Vec<(String, Uuid)>, StoreError>;
    /// Destroys a key and all its versions if it is still pending deletion with its date at or
    /// before `now_ms` (a cancellation that raced the purge wins). Returns whether it did.
    async fn delete_key(&self, org_id: &str, key_id: Uuid, now_ms: i64)
    -> Result<bool, StoreError>;
}
