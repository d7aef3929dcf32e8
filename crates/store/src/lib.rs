//! The `Store` trait's SQLite and PostgreSQL implementations.
//!
//! Both speak the same SQL (`$n` parameters, BIGINT, BLOB/BYTEA), so one macro writes the
//! implementation for each native sqlx driver; only migrations and connection setup differ.

mod sql;

use sovra_core::StoreError;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use sql::{PostgresStore, SqliteStore};

/// Opens the store a database URL names (`sqlite://path` or `postgres://…`) and runs its
/// migrations.
pub async fn open(database_url: &str) -> Result<Arc<dyn sovra_core::Store>, StoreError> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(database_url).await?))
    } else if database_url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(database_url).await?))
    } else {
        Err(StoreError::Unavailable(
            "database_url must start with sqlite: or postgres://".into(),
        ))
    }
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        use sqlx::sqlite::{
            SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
        };
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad sqlite url: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged write survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .map_err(sql::map_err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;
        Ok(SqliteStore { pool })
    }
}

impl PostgresStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        use sqlx::postgres::PgPoolOptions;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(sql::map_err)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;
        Ok(PostgresStore { pool })
    }
}
