//! The storage interface of the core, one trait per entity; [`Store`] combines them for the
//! services, which hold an `Arc<dyn Store>`. Implementations (SQLite, PostgreSQL) live in
//! `sovra-store` and pass the same test-suite.

mod audit;
mod grants;
mod identities;
mod keys;
mod orgs;
mod seal;

pub use audit::AuditStore;
pub use grants::GrantStore;
pub use identities::IdentityStore;
pub use keys::KeyStore;
pub use orgs::OrgStore;
pub use seal::SealStore;

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
    /// The audit chain no longer holds the last event this node appended: rows were deleted
    /// or rewritten, or the database went back to an earlier point (a failover that lost
    /// commits, a restored backup).
    #[error(
        "the audit chain was rolled back: this node appended up to seq {appended_seq}, the database's head is {stored_head}"
    )]
    AuditRollback {
        appended_seq: u64,
        appended_hash: String,
        /// `seq:hash` of the stored head, or `empty`.
        stored_head: String,
    },
}

/// A change to stored keys, orgs or identities, made by any process sharing the database
/// (other nodes included): what caches of them must forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// This key's metadata or versions changed, or it was deleted.
    Key(Uuid),
    /// This org's record changed (its status).
    Org(String),
    /// This identity of this org changed (kind, roles, status).
    Identity { org: String, id: String },
    /// Changes may have been missed (the listening connection dropped): forget everything.
    Lost,
}

/// Everything the services store. A new entity gets a trait of its own, added here.
pub trait Store:
    SealStore + OrgStore + IdentityStore + KeyStore + GrantStore + AuditStore + Send + Sync + 'static
{
}

impl<T> Store for T where
    T: SealStore
        + OrgStore
        + IdentityStore
        + KeyStore
        + GrantStore
        + AuditStore
        + Send
        + Sync
        + 'static
{
}
