//! Organizations and their KEK versions.

use super::{PG_BEGIN, PostgresStore, SQLITE_BEGIN, SqliteStore, corrupt, map_err, to_u32};
use async_trait::async_trait;
use sovra_core::StoreError;
use sovra_core::model::{KekRecord, OrgRecord, OrgStatus};
use sovra_core::store::OrgStore;

/// The columns of `orgs`, as a literal so that queries stay static strings.
macro_rules! org_columns {
    () => {
        "id, display_name, status, active_kek_version, created_at"
    };
}

macro_rules! org_store {
    ($name:ident, $db:ty, $row:ty, $begin:expr) => {
        impl $name {
            fn org_from_row(r: &$row) -> Result<OrgRecord, StoreError> {
                use sqlx::Row;
                let status: String = r.try_get("status").map_err(map_err)?;
                Ok(OrgRecord {
                    id: r.try_get("id").map_err(map_err)?,
                    display_name: r.try_get("display_name").map_err(map_err)?,
                    status: OrgStatus::parse(&status).ok_or_else(|| corrupt("org status"))?,
                    active_kek_version: to_u32(r.try_get("active_kek_version").map_err(map_err)?, "kek version")?,
                    created_at: r.try_get("created_at").map_err(map_err)?,
                })
            }
        }

        #[async_trait]
        impl OrgStore for $name {
            async fn get_org(&self, org_id: &str) -> Result<Option<OrgRecord>, StoreError> {
                let row = sqlx::query(concat!("SELECT ", org_columns!(), " FROM orgs WHERE id = $1"))
                    .bind(org_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                row.as_ref().map(Self::org_from_row).transpose()
            }

            async fn list_orgs(&self) -> Result<Vec<OrgRecord>, StoreError> {
                let rows = sqlx::query(concat!("SELECT ", org_columns!(), " FROM orgs ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(Self::org_from_row).collect()
            }

            async fn set_org_status(&self, org_id: &str, from: OrgStatus, to: OrgStatus) -> Result<(), StoreError> {
                sqlx::query("UPDATE orgs SET status = $1 WHERE id = $2 AND status = $3")
                    .bind(to.as_str())
                    .bind(org_id)
                    .bind(from.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn create_org(&self, org: &OrgRecord, kek: &KekRecord) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                sqlx::query("INSERT INTO orgs (id, display_name, status, active_kek_version, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&org.id)
                    .bind(&org.display_name)
                    .bind(org.status.as_str())
                    .bind(org.active_kek_version as i64)
                    .bind(org.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                Self::insert_kek(&mut tx, kek).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn get_kek(&self, org_id: &str, version: u32) -> Result<Option<KekRecord>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT wrapped_kek, created_at FROM org_keks WHERE org_id = $1 AND version = $2")
                    .bind(org_id)
                    .bind(version as i64)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                row.map(|r| {
                    Ok(KekRecord {
                        org_id: org_id.to_string(),
                        version,
                        wrapped_kek: r.try_get("wrapped_kek").map_err(map_err)?,
                        created_at: r.try_get("created_at").map_err(map_err)?,
                    })
                })
                .transpose()
            }

            async fn add_kek_version(&self, kek: &KekRecord) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                let moved = sqlx::query("UPDATE orgs SET active_kek_version = $1 WHERE id = $2 AND active_kek_version = $3")
                    .bind(kek.version as i64)
                    .bind(&kek.org_id)
                    .bind(kek.version as i64 - 1)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if moved.rows_affected() != 1 {
                    return Err(StoreError::Conflict("active KEK version changed".into()));
                }
                Self::insert_kek(&mut tx, kek).await?;
                tx.commit().await.map_err(map_err)
            }
        }

        impl $name {
            async fn insert_kek(tx: &mut sqlx::Transaction<'_, $db>, kek: &KekRecord) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO org_keks (org_id, version, wrapped_kek, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(&kek.org_id)
                    .bind(kek.version as i64)
                    .bind(&kek.wrapped_kek)
                    .bind(kek.created_at)
                    .execute(&mut **tx)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }
        }
    };
}

org_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    SQLITE_BEGIN
);
org_store!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    PG_BEGIN
);
