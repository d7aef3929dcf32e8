//! Test support: a fresh store of each backend per test, a runner that executes one test body
//! against it, and raw-table helpers for tests that inspect what is actually stored.
//!
//! - SQLite: a database file in a unique temporary directory, removed afterwards.
//! - PostgreSQL: a fresh database `sovra_test_<uuid>` per test, created through the admin URL
//!   (`SOVRA_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`) and dropped
//!   afterwards (kept when `SOVRA_TEST_KEEP_DB` is set). An unreachable server FAILS the
//!   PostgreSQL tests: they are never skipped silently.
//!
//! `both!(name, |db| async move { ... })` generates `name::sqlite` and `name::postgres`;
//! attributes written before the name (`#[ignore = "..."]`) apply to both.

#![allow(dead_code)]

use sovra_core::Store;
use sovra_core::model::KeyVersionRecord;
use sovra_store::{PostgresStore, SqliteStore};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs one async test body against a fresh store of each backend:
/// `both!(name, |db| async move { ... })` defines the tests `name::sqlite` and
/// `name::postgres`.
macro_rules! both {
    ($(#[$attr:meta])* $name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                crate::common::run(crate::common::Backend::Sqlite, $body).await;
            }

            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                crate::common::run(crate::common::Backend::Postgres, $body).await;
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// The raw connection pool of a test store, for queries below the `Store` trait.
#[derive(Clone)]
pub(crate) enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

#[derive(Debug)]
enum Cleanup {
    Dir(PathBuf),
    PgDatabase { admin_url: String, name: String },
}

/// A fresh store plus its raw pool. Cloning shares the same database.
#[derive(Clone)]
pub(crate) struct TestDb {
    pub backend: Backend,
    /// The database URL, for reopening the same database.
    pub url: String,
    pub store: Arc<dyn Store>,
    pub raw: Raw,
    /// Databases to remove when the test ends (this one and any made by [`TestDb::another`]).
    cleanups: Arc<Mutex<Vec<(Raw, Cleanup)>>>,
}

/// One stored value of one column, as bytes (text as UTF-8, integers as their decimal text).
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    pub table: String,
    pub column: String,
    pub bytes: Vec<u8>,
}

pub(crate) fn pg_admin_url() -> String {
    std::env::var("SOVRA_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_ADMIN_URL.to_string())
}

/// The admin URL with its database name replaced by `db`.
fn pg_url_for(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let host_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

async fn pg_admin_connection(admin_url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let connect = sqlx::PgConnection::connect(admin_url);
    match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "PostgreSQL is required for the PostgreSQL store tests and is unreachable at \
             {admin_url}: {e}. Start PostgreSQL or set SOVRA_TEST_PG_URL to an admin URL."
        ),
        Err(_) => panic!(
            "PostgreSQL is required for the PostgreSQL store tests and did not answer within \
             15 s at {admin_url}. Start PostgreSQL or set SOVRA_TEST_PG_URL to an admin URL."
        ),
    }
}

impl TestDb {
    /// A fresh, migrated, empty store of `backend`.
    pub(crate) async fn fresh(backend: Backend) -> TestDb {
        let (url, raw, store, cleanup) = open_fresh(backend).await;
        TestDb {
            backend,
            url,
            store,
            raw: raw.clone(),
            cleanups: Arc::new(Mutex::new(vec![(raw, cleanup)])),
        }
    }

    /// Another fresh store of the same backend, removed together with this one.
    pub(crate) async fn another(&self) -> TestDb {
        let (url, raw, store, cleanup) = open_fresh(self.backend).await;
        self.cleanups.lock().unwrap().push((raw.clone(), cleanup));
        TestDb {
            backend: self.backend,
            url,
            store,
            raw,
            cleanups: self.cleanups.clone(),
        }
    }

    async fn cleanup(&self) {
        let all: Vec<_> = std::mem::take(&mut *self.cleanups.lock().unwrap());
        let keep = std::env::var_os("SOVRA_TEST_KEEP_DB").is_some();
        for (raw, c) in all {
            match &raw {
                Raw::Sqlite(p) => p.close().await,
                Raw::Postgres(p) => p.close().await,
            }
            if keep {
                eprintln!("SOVRA_TEST_KEEP_DB: kept {c:?}");
                continue;
            }
            match c {
                Cleanup::Dir(dir) => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Cleanup::PgDatabase { admin_url, name } => {
                    use sqlx::Connection;
                    let mut admin = pg_admin_connection(&admin_url).await;
                    let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                    if let Err(e) = dropped {
                        eprintln!("could not drop test database {name}: {e}");
                    }
                    let _ = admin.close().await;
                }
            }
        }
    }

    /// The org's key versions still wrapped under a KEK below `kek_version` (up to 100), as the
    /// store lists them.
    pub(crate) async fn versions_below_kek(
        &self,
        org: &str,
        kek_version: u32,
    ) -> Vec<KeyVersionRecord> {
        self.store
            .versions_below_kek(org, kek_version, None, 100)
            .await
            .unwrap()
    }

    // ---- raw-table helpers (SQL is test-controlled; ids are inlined as literals) -----------

    /// Executes a statement; returns the number of rows affected.
    pub(crate) async fn exec(&self, sql: &str) -> u64 {
        self.try_exec(sql)
            .await
            .unwrap_or_else(|e| panic!("raw statement failed: {e}"))
    }

    /// Executes a statement that may be refused; returns the rows affected or the error.
    pub(crate) async fn try_exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &self.raw {
            Raw::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
            Raw::Postgres(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        }
    }

    /// Runs a query whose first column is an integer (or NULL, returned as None).
    pub(crate) async fn opt_i64s(&self, sql: &str) -> Vec<Option<i64>> {
        use sqlx::Row;
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &self.raw {
            Raw::Sqlite(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().map(|r| r.get::<Option<i64>, _>(0)).collect()),
            Raw::Postgres(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().map(|r| r.get::<Option<i64>, _>(0)).collect()),
        }
        .unwrap_or_else(|e| panic!("raw query failed: {e}"))
    }

    /// Runs a query whose first column is a non-NULL integer.
    pub(crate) async fn i64s(&self, sql: &str) -> Vec<i64> {
        self.opt_i64s(sql)
            .await
            .into_iter()
            .map(|v| v.expect("unexpected NULL"))
            .collect()
    }

    /// Runs a query whose first column is a non-NULL blob.
    pub(crate) async fn blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        use sqlx::Row;
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &self.raw {
            Raw::Sqlite(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().map(|r| r.get::<Vec<u8>, _>(0)).collect()),
            Raw::Postgres(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().map(|r| r.get::<Vec<u8>, _>(0)).collect()),
        }
        .unwrap_or_else(|e| panic!("raw query failed: {e}"))
    }

    /// Names of the user tables (migration bookkeeping included).
    pub(crate) async fn tables(&self) -> Vec<String> {
        use sqlx::Row;
        let mut names: Vec<String> = match &self.raw {
            Raw::Sqlite(p) => sqlx::query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .fetch_all(p)
            .await
            .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect()),
            Raw::Postgres(p) => sqlx::query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .fetch_all(p)
            .await
            .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect()),
        }
        .unwrap_or_else(|e| panic!("listing tables failed: {e}"));
        names.sort();
        names
    }

    /// Every non-NULL value of every column of every row of every table, as bytes.
    pub(crate) async fn dump_all(&self) -> Vec<Cell> {
        use sqlx::Row;
        let mut out = Vec::new();
        for table in self.tables().await {
            // (column name, SELECT expression yielding the value as bytes)
            let columns: Vec<(String, String)> = match &self.raw {
                Raw::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{table}')"
                )))
                .fetch_all(p)
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            let c: String = r.get(0);
                            let expr = format!("CAST(\"{c}\" AS BLOB)");
                            (c, expr)
                        })
                        .collect()
                }),
                Raw::Postgres(p) => sqlx::query(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1",
                )
                .bind(&table)
                .fetch_all(p)
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            let c: String = r.get(0);
                            let ty: String = r.get(1);
                            let expr = if ty == "bytea" {
                                format!("\"{c}\"")
                            } else {
                                format!("convert_to(\"{c}\"::text, 'UTF8')")
                            };
                            (c, expr)
                        })
                        .collect()
                }),
            }
            .unwrap_or_else(|e| panic!("listing columns of {table} failed: {e}"));
            assert!(!columns.is_empty(), "table {table} has no columns?");
            for (column, expr) in columns {
                let sql = sqlx::AssertSqlSafe(format!("SELECT {expr} FROM \"{table}\""));
                let values: Vec<Option<Vec<u8>>> = match &self.raw {
                    Raw::Sqlite(p) => sqlx::query(sql)
                        .fetch_all(p)
                        .await
                        .map(|rows| rows.iter().map(|r| r.get(0)).collect()),
                    Raw::Postgres(p) => sqlx::query(sql)
                        .fetch_all(p)
                        .await
                        .map(|rows| rows.iter().map(|r| r.get(0)).collect()),
                }
                .unwrap_or_else(|e| panic!("reading {table}.{column} failed: {e}"));
                out.extend(values.into_iter().flatten().map(|bytes| Cell {
                    table: table.clone(),
                    column: column.clone(),
                    bytes,
                }));
            }
        }
        out
    }
}

async fn open_fresh(backend: Backend) -> (String, Raw, Arc<dyn Store>, Cleanup) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(format!("sovra-store-test-{id}"));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            let url = format!("sqlite://{}/x.db", dir.display());
            let store = SqliteStore::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("opening SQLite store at {url}: {e}"));
            let raw = Raw::Sqlite(store.pool().clone());
            (url, raw, Arc::new(store), Cleanup::Dir(dir))
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let admin_url = pg_admin_url();
            let name = format!("sovra_test_{id}");
            let mut admin = pg_admin_connection(&admin_url).await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name} via {admin_url}: {e}"));
            let _ = admin.close().await;
            let url = pg_url_for(&admin_url, &name);
            let store = PostgresStore::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("opening PostgreSQL store at {url}: {e}"));
            let raw = Raw::Postgres(store.pool().clone());
            (
                url,
                raw,
                Arc::new(store),
                Cleanup::PgDatabase { admin_url, name },
            )
        }
    }
}

/// Runs `body` against a fresh store of `backend`, then removes the database(s), also when
/// the body panics (the panic is then re-raised).
pub(crate) async fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let db = TestDb::fresh(backend).await;
    let keep = db.clone();
    let outcome = tokio::spawn(body(db)).await;
    keep.cleanup().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

/// Whether `needle` occurs anywhere in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn pg_url_for_replaces_the_database() {
    assert_eq!(
        pg_url_for("postgres://postgres@127.0.0.1:5432/postgres", "d1"),
        "postgres://postgres@127.0.0.1:5432/d1"
    );
    assert_eq!(
        pg_url_for("postgres://u:p@h/admin?sslmode=disable", "d2"),
        "postgres://u:p@h/d2?sslmode=disable"
    );
    assert_eq!(
        pg_url_for("postgres://h:5432", "d3"),
        "postgres://h:5432/d3"
    );
}
