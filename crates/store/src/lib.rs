//! The SQLite and PostgreSQL implementations of the store traits (`sovra_core::store`).
//!
//! Both speak the same SQL (`$n` parameters, BIGINT, BLOB/BYTEA), so one macro per entity
//! writes the implementation for each native sqlx driver; only migrations and connection setup
//! differ.

pub mod nodelay;
mod sql;

use sovra_core::StoreError;
use sqlx::migrate::{MigrateError, Migration, Migrator};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use sql::{PostgresStore, SqliteStore};

/// Opens the store a database URL names (`sqlite://path` or `postgres://…`) and runs its
/// pending migrations. With nothing pending it changes no schema, so on PostgreSQL a service
/// role without DDL rights can open an up-to-date database (docs/postgres.md).
pub async fn open(database_url: &str) -> Result<Arc<dyn sovra_core::Store>, StoreError> {
    if is_postgres(database_url) {
        Ok(Arc::new(PostgresStore::connect(database_url).await?))
    } else if is_sqlite(database_url) {
        Ok(Arc::new(SqliteStore::connect(database_url).await?))
    } else {
        Err(bad_url())
    }
}

/// Applies the pending migrations of the database a URL names, without opening a store, and
/// returns their names (`0003_audit_append_only`); empty when the schema was up to date.
/// On PostgreSQL this runs as the owner of the tables, not as the service role.
pub async fn migrate(database_url: &str) -> Result<Vec<String>, StoreError> {
    if is_postgres(database_url) {
        let pool = pg_pool(database_url, 1).await?;
        let applied = pg_migrate(&pool).await;
        pool.close().await;
        applied
    } else if is_sqlite(database_url) {
        let pool = sqlite_pool(database_url, 1).await?;
        let applied = sqlite_migrate(&pool).await;
        pool.close().await;
        applied
    } else {
        Err(bad_url())
    }
}

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// The database file a SQLite URL names (`sqlite://dir/sovra.db?mode=rwc`), or `None` for an
/// in-memory database.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory"))
        .then(|| std::path::PathBuf::from(path))
}

/// Creates a missing SQLite database file readable by its owner only (0600): SQLite would
/// create it by the umask, commonly world-readable, and gives its `-wal` and `-shm` files the
/// database file's mode. An existing file is left as it is.
fn create_private_file(file: &std::path::Path) -> Result<(), StoreError> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    match open.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create the database file {}: {e}",
            file.display()
        ))),
    }
}

fn bad_url() -> StoreError {
    StoreError::Unavailable("database_url must start with sqlite: or postgres://".into())
}

/// One row of `_sqlx_migrations`: version, checksum, success.
type Applied = (i64, Vec<u8>, bool);

/// The embedded migrations the database still lacks (absent, failed, or applied with another
/// checksum: the migrator then reports the mismatch). A version the database has applied but
/// this build does not know means the schema is newer than the binary: an error.
fn pending<'m>(
    migrator: &'m Migrator,
    applied: &[Applied],
) -> Result<Vec<&'m Migration>, StoreError> {
    let ups = || {
        migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
    };
    if let Some((version, _, _)) = applied
        .iter()
        .find(|(v, _, _)| !ups().any(|m| m.version == *v))
    {
        return Err(StoreError::Unavailable(format!(
            "the database has migration {version}, which this build of Sovra does not know: \
             the schema is newer than the binary"
        )));
    }
    Ok(ups()
        .filter(|m| {
            !applied
                .iter()
                .any(|(v, sum, ok)| *v == m.version && *ok && sum[..] == m.checksum[..])
        })
        .collect())
}

fn names(migrations: &[&Migration]) -> Vec<String> {
    migrations
        .iter()
        .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
        .collect()
}

/// Explains a failed migration; a role without DDL rights (the PostgreSQL service role) is told
/// to have the owner apply them.
fn migration_error(e: MigrateError, pending: &[String]) -> StoreError {
    let db_error = match &e {
        MigrateError::Execute(sqlx::Error::Database(db))
        | MigrateError::ExecuteMigration(sqlx::Error::Database(db), _) => Some(db),
        _ => None,
    };
    // 42501 insufficient_privilege: "permission denied for schema", "must be owner of table".
    if db_error.is_some_and(|db| db.code().as_deref() == Some("42501")) {
        StoreError::Unavailable(format!(
            "database migrations are pending ({}) and this database role may not change the \
             schema: run `sovra db migrate --database-url <URL of the owner role>` as the owner \
             of the tables, then start the server again ({e})",
            pending.join(", ")
        ))
    } else {
        StoreError::Unavailable(format!("migration failed: {e}"))
    }
}

async fn sqlite_pool(url: &str, max: u32) -> Result<sqlx::SqlitePool, StoreError> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    if let Some(file) = sqlite_file(url) {
        create_private_file(&file)?;
    }
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("bad sqlite url: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: an acknowledged write survives power loss, not only a process crash.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(max)
        // A full disk or an I/O error can make SQLite end a transaction by itself; sqlx's
        // ROLLBACK then fails and the connection keeps counting an open transaction, refusing
        // every later BEGIN. Such a connection is replaced, so service resumes once space returns.
        .before_acquire(|conn, _| {
            Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
        })
        .connect_with(opts)
        .await
        .map_err(sql::map_err)
}

async fn pg_pool(url: &str, max: u32) -> Result<sqlx::PgPool, StoreError> {
    let opts = sqlx::postgres::PgConnectOptions::from_str(url).map_err(sql::map_err)?;
    pg_pool_options(&opts)
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .map_err(sql::map_err)
}

/// Pool options for every PostgreSQL pool: each new TCP connection gets TCP_NODELAY (see
/// [`nodelay`]).
fn pg_pool_options(opts: &sqlx::postgres::PgConnectOptions) -> sqlx::postgres::PgPoolOptions {
    // A Unix socket has no Nagle's algorithm.
    let tcp = opts
        .get_socket()
        .is_none()
        .then(|| (opts.get_host().to_string(), opts.get_port()));
    sqlx::postgres::PgPoolOptions::new().after_connect(move |_, _| {
        let tcp = tcp.clone();
        Box::pin(async move {
            let Some((host, port)) = tcp else {
                return Ok(());
            };
            let peers: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => addrs.collect(),
                Err(_) => return Ok(()),
            };
            let set = tokio::task::spawn_blocking(move || nodelay::set_on_connections_to(&peers)).await;
            if let Ok(Err(e)) = set {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(error = %e, "cannot disable Nagle's algorithm on database connections; PostgreSQL statements may stall about 40 ms");
                });
            }
            Ok(())
        })
    })
}

async fn sqlite_migrate(pool: &sqlx::SqlitePool) -> Result<Vec<String>, StoreError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await
    .map_err(sql::map_err)?;
    let applied: Vec<Applied> = if exists {
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
            .map_err(sql::map_err)?
    } else {
        Vec::new()
    };
    let pending = names(&pending(&SQLITE_MIGRATIONS, &applied)?);
    if !pending.is_empty() {
        SQLITE_MIGRATIONS
            .run(pool)
            .await
            .map_err(|e| migration_error(e, &pending))?;
    }
    Ok(pending)
}

/// Runs the migrator only when something is pending: sqlx's migrator always starts with
/// `CREATE TABLE IF NOT EXISTS _sqlx_migrations`, which PostgreSQL refuses to a role without
/// CREATE on the schema even when the table exists, so the service role could never start.
async fn pg_migrate(pool: &sqlx::PgPool) -> Result<Vec<String>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(sql::map_err)?;
    let applied: Vec<Applied> = if exists {
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot read the migration table _sqlx_migrations (the service role needs \
                     the grants of deploy/postgres/service-role.sql): {}",
                    sql::map_err(e)
                ))
            })?
    } else {
        Vec::new()
    };
    let pending = names(&pending(&POSTGRES_MIGRATIONS, &applied)?);
    if pending.is_empty() {
        return Ok(pending);
    }
    if let Err(e) = POSTGRES_MIGRATIONS.run(pool).await {
        // The migrator does not release its session advisory lock when it fails; closing the
        // pool ends that session, so the owner's `sovra db migrate` is not left waiting.
        pool.close().await;
        return Err(migration_error(e, &pending));
    }
    Ok(pending)
}

impl SqliteStore {
    /// Opens a SQLite store and applies its pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = sqlite_pool(url, 8).await?;
        sqlite_migrate(&pool).await?;
        Ok(SqliteStore {
            pool,
            audit_journal: sqlite_file(url).map(|db| {
                // One journal per database file, however the path names it (a symlink, `..`):
                // its lock is what keeps a second server off the chain.
                let db = std::fs::canonicalize(&db).unwrap_or(db);
                let mut name = db.into_os_string();
                name.push("-audit-journal");
                std::path::PathBuf::from(name)
            }),
            audit_head: Default::default(),
        })
    }
}

impl PostgresStore {
    /// Opens a PostgreSQL store and applies its pending migrations; with none pending it needs
    /// no DDL rights (the service role).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = pg_pool(url, 16).await?;
        pg_migrate(&pool).await?;
        Ok(PostgresStore {
            pool,
            audit_journal: None,
            audit_head: Default::default(),
        })
    }
}
