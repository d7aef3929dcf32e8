//! The audit log: the chain's format and offline verifier ([`chain`]), group commit into the
//! store ([`writer`]), the single-node journal that makes events durable before they reach the
//! store ([`journal`]) and the audit keys that sign checkpoints and hash sensitive values
//! ([`keys`]).

mod chain;
#[cfg(test)]
mod format_vectors;
mod journal;
mod keys;
mod read;
mod writer;

pub use chain::{
    AuditEvent, Checkpoint, ExportLine, GENESIS, RedactedEvent, VerifyError, VerifyReport,
    seal_chain, verify_export, verify_export_since,
};
pub use journal::{
    AuditJournal, JournalContents, JournalError, PREALLOCATED_BYTES as JOURNAL_PREALLOCATED_BYTES,
    parse_journal,
};
#[cfg(test)]
pub(crate) use keys::aad as keys_aad;
pub use keys::{AuditKeys, HeadSigner};
pub use read::MAX_PAGE;
pub use writer::{AuditWriter, OnRollback};

/// Filters of `GET /api/v1/audit`: one org's events, newest first, paged by sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub org: String,
    /// Only events with a sequence below this (the next page of a newest-first listing).
    pub before_seq: Option<u64>,
    pub from_time_ms: Option<i64>,
    pub to_time_ms: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub limit: u32,
}
