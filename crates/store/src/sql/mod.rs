//! One implementation of the store traits, instantiated for SQLite and PostgreSQL: this
//! module holds the store types and the helpers every entity shares; each entity's queries
//! live in a file of their own, as a macro invoked once per driver.

mod audit;
mod grants;
mod identities;
mod keys;
mod orgs;
mod seal;

use sovra_core::StoreError;
use uuid::Uuid;

/// What SQLite's append-only triggers say when an INSERT lands on an existing audit row
/// (migration 0005): to the store, the same conflict as a duplicate key.
const SQLITE_EXISTING_AUDIT_ROW: &str = "INSERT over an existing row of audit_";

pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db)
            if db.is_unique_violation() || db.message().contains(SQLITE_EXISTING_AUDIT_ROW) =>
        {
            StoreError::Conflict(db.message().to_string())
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(super) fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(what))
}

pub(super) fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| corrupt("key id"))
}

// IMMEDIATE: a SQLite transaction that reads and then writes takes the write lock up front;
// otherwise a write committed by another connection in between fails it at once
// (SQLITE_BUSY_SNAPSHOT), which the busy timeout does not retry.
const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE";
const PG_BEGIN: &str = "BEGIN";

macro_rules! store_type {
    ($name:ident, $db:ty) => {
        /// The store on this sqlx driver.
        #[derive(Clone)]
        pub struct $name {
            pub(crate) pool: sqlx::Pool<$db>,
            /// Where the node that is this store's only writer keeps its audit journal.
            pub(crate) audit_journal: Option<std::path::PathBuf>,
            /// The chain head this process appended last, so that its next batch can continue
            /// it in one statement without reading the head first. Only a hint: that batch is
            /// inserted only while this head is stored, and the sequence's primary key refuses
            /// it when another writer has appended after the head.
            pub(crate) audit_head: std::sync::Arc<std::sync::Mutex<Option<(u64, String)>>>,
        }

        impl $name {
            /// The connection pool, for tests that inspect raw tables.
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }
        }
    };
}

store_type!(SqliteStore, sqlx::Sqlite);
store_type!(PostgresStore, sqlx::Postgres);
