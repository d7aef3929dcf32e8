//! Storage of the audit chain, its signed checkpoints and the audit keys.

use super::StoreError;
use crate::audit::{AuditEvent, AuditQuery, Checkpoint};
use crate::model::AuditKeyRecord;
use async_trait::async_trait;

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends events to the audit chain in one transaction: each gets the next sequence number
    /// and is linked to the current head. Returns them as stored. A concurrent append from
    /// another node makes this a conflict (the caller retries), never a fork. When the stored
    /// chain no longer holds the last event this store appended (rows deleted or rewritten, a
    /// database gone back in time) it is [`StoreError::AuditRollback`], every time, until
    /// [`AuditStore::accept_audit_rollback`].
    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditEvent>, StoreError>;
    /// Forgets the last appended event, so that the next append continues whatever head the
    /// database holds: after a rollback has been raised as an alarm.
    fn accept_audit_rollback(&self);
    /// Stores events already sealed into the chain (by a node's audit journal) in one
    /// transaction. The first must continue the stored head exactly (next sequence number,
    /// `prev_hash` equal to the head's hash), else this is a conflict and nothing is stored.
    /// The signed heads of those events (`checkpoints`, each for a sequence number among
    /// them) are stored in the same transaction.
    async fn insert_sealed_audit(
        &self,
        events: &[AuditEvent],
        checkpoints: &[Checkpoint],
    ) -> Result<(), StoreError>;
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
    /// The newest checkpoint with `seq <= up_to_seq`.
    async fn last_audit_checkpoint(&self, up_to_seq: u64)
    -> Result<Option<Checkpoint>, StoreError>;
    /// Checkpoints with `from_seq <= seq <= to_seq`, in order.
    async fn audit_checkpoints(
        &self,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Vec<Checkpoint>, StoreError>;
    async fn get_audit_keys(&self) -> Result<Option<AuditKeyRecord>, StoreError>;
    /// Stores the audit keys once; a second creation (another node) is a conflict.
    async fn create_audit_keys(&self, keys: &AuditKeyRecord) -> Result<(), StoreError>;
}
