//! Identities, the principals of each org.

use super::{PostgresStore, SqliteStore, corrupt, map_err};
use async_trait::async_trait;
use sovra_core::StoreError;
use sovra_core::model::{IdentityKind, IdentityRecord, IdentityStatus};
use sovra_core::store::IdentityStore;

/// The columns of `identities`, as a literal so that queries stay static strings.
macro_rules! identity_columns {
    () => {
        "org_id, id, kind, roles, status, auth_source, issuer, subject, created_at, \
         last_seen_at, revision, row_mac"
    };
}

/// Roles are stored as one comma-separated column (role names hold no comma).
fn roles_column(roles: &[String]) -> String {
    roles.join(",")
}

fn roles_from_column(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

fn revision(rec: &IdentityRecord) -> Result<i64, StoreError> {
    i64::try_from(rec.revision).map_err(|_| corrupt("identity revision"))
}

macro_rules! identity_store {
    ($name:ident, $row:ty) => {
        impl $name {
            fn identity_from_row(r: &$row) -> Result<IdentityRecord, StoreError> {
                use sqlx::Row;
                let text = |c: &str| r.try_get::<String, _>(c).map_err(map_err);
                Ok(IdentityRecord {
                    org_id: text("org_id")?,
                    id: text("id")?,
                    kind: IdentityKind::parse(&text("kind")?)
                        .ok_or_else(|| corrupt("identity kind"))?,
                    roles: roles_from_column(&text("roles")?),
                    status: IdentityStatus::parse(&text("status")?)
                        .ok_or_else(|| corrupt("identity status"))?,
                    auth_source: text("auth_source")?,
                    issuer: text("issuer")?,
                    subject: text("subject")?,
                    created_at: r.try_get("created_at").map_err(map_err)?,
                    last_seen_at: r.try_get("last_seen_at").map_err(map_err)?,
                    revision: u64::try_from(r.try_get::<i64, _>("revision").map_err(map_err)?)
                        .map_err(|_| corrupt("identity revision"))?,
                    row_mac: r.try_get("row_mac").map_err(map_err)?,
                })
            }
        }

        #[async_trait]
        impl IdentityStore for $name {
            async fn get_identity(
                &self,
                org_id: &str,
                id: &str,
            ) -> Result<Option<IdentityRecord>, StoreError> {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    identity_columns!(),
                    " FROM identities WHERE org_id = $1 AND id = $2"
                ))
                .bind(org_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
                row.as_ref().map(Self::identity_from_row).transpose()
            }

            async fn create_identity(&self, i: &IdentityRecord) -> Result<(), StoreError> {
                sqlx::query(concat!(
                    "INSERT INTO identities (",
                    identity_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ))
                .bind(&i.org_id)
                .bind(&i.id)
                .bind(i.kind.as_str())
                .bind(roles_column(&i.roles))
                .bind(i.status.as_str())
                .bind(&i.auth_source)
                .bind(&i.issuer)
                .bind(&i.subject)
                .bind(i.created_at)
                .bind(i.last_seen_at)
                .bind(revision(i)?)
                .bind(&i.row_mac)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn update_identity(
                &self,
                before: &IdentityRecord,
                after: &IdentityRecord,
            ) -> Result<(), StoreError> {
                let done = sqlx::query(
                    "UPDATE identities SET kind = $1, roles = $2, status = $3, revision = $4, \
                     row_mac = $5 WHERE org_id = $6 AND id = $7 AND revision = $8",
                )
                .bind(after.kind.as_str())
                .bind(roles_column(&after.roles))
                .bind(after.status.as_str())
                .bind(revision(after)?)
                .bind(&after.row_mac)
                .bind(&before.org_id)
                .bind(&before.id)
                .bind(revision(before)?)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict("identity changed concurrently".into()));
                }
                Ok(())
            }

            async fn list_identities(
                &self,
                org_id: &str,
            ) -> Result<Vec<IdentityRecord>, StoreError> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    identity_columns!(),
                    " FROM identities WHERE org_id = $1 ORDER BY id"
                ))
                .bind(org_id)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(Self::identity_from_row).collect()
            }

            async fn touch_identity(
                &self,
                org_id: &str,
                id: &str,
                at_ms: i64,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE identities SET last_seen_at = $1 WHERE org_id = $2 AND id = $3",
                )
                .bind(at_ms)
                .bind(org_id)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }
        }
    };
}

identity_store!(SqliteStore, sqlx::sqlite::SqliteRow);
identity_store!(PostgresStore, sqlx::postgres::PgRow);
