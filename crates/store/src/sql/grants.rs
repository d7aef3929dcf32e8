//! Grants on keys.

use super::{PostgresStore, SqliteStore, corrupt, map_err, parse_uuid};
use async_trait::async_trait;
use sovra_core::StoreError;
use sovra_core::model::{ContextConstraint, GrantRecord, Grantee, KeyOp};
use sovra_core::store::GrantStore;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The columns of `grants`, as a literal so that queries stay static strings.
macro_rules! grant_columns {
    () => {
        "id, org_id, key_id, grantee_type, grantee, operations, constraint_kind, \
         constraint_context, expires_at, created_by, created_at, row_mac"
    };
}

fn grantee_columns(g: &Grantee) -> (&'static str, &str) {
    match g {
        Grantee::Identity(id) => ("identity", id),
        Grantee::Role(role) => ("role", role),
    }
}

fn operations_column(ops: &[KeyOp]) -> String {
    ops.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(",")
}

fn constraint_columns(
    c: &Option<ContextConstraint>,
) -> Result<(Option<&str>, Option<String>), StoreError> {
    match c {
        None => Ok((None, None)),
        Some(c) => Ok((
            Some(c.kind()),
            Some(serde_json::to_string(c.context()).map_err(|_| corrupt("grant context"))?),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn grant_from_columns(
    id: String,
    org_id: String,
    key_id: String,
    grantee_type: String,
    grantee: String,
    operations: String,
    constraint_kind: Option<String>,
    constraint_context: Option<String>,
    expires_at: Option<i64>,
    created_by: String,
    created_at: i64,
    row_mac: Vec<u8>,
) -> Result<GrantRecord, StoreError> {
    let grantee = match grantee_type.as_str() {
        "identity" => Grantee::Identity(grantee),
        "role" => Grantee::Role(grantee),
        _ => return Err(corrupt("grantee type")),
    };
    let operations = operations
        .split(',')
        .map(|o| KeyOp::parse(o).ok_or_else(|| corrupt("grant operation")))
        .collect::<Result<Vec<_>, _>>()?;
    let context = |c: Option<String>| -> Result<BTreeMap<String, String>, StoreError> {
        serde_json::from_str(c.as_deref().unwrap_or("")).map_err(|_| corrupt("grant context"))
    };
    let constraint = match constraint_kind.as_deref() {
        None => None,
        Some("equals") => Some(ContextConstraint::Equals(context(constraint_context)?)),
        Some("subset") => Some(ContextConstraint::Subset(context(constraint_context)?)),
        Some(_) => return Err(corrupt("grant constraint")),
    };
    Ok(GrantRecord {
        id: parse_uuid(&id)?,
        org_id,
        key_id: parse_uuid(&key_id)?,
        grantee,
        operations,
        constraint,
        expires_at,
        created_by,
        created_at,
        row_mac,
    })
}

macro_rules! grant_store {
    ($name:ident, $row:ty) => {
        impl $name {
            fn grant_from_row(r: &$row) -> Result<GrantRecord, StoreError> {
                use sqlx::Row;
                let text = |c: &str| r.try_get::<String, _>(c).map_err(map_err);
                let opt = |c: &str| r.try_get::<Option<String>, _>(c).map_err(map_err);
                grant_from_columns(
                    text("id")?,
                    text("org_id")?,
                    text("key_id")?,
                    text("grantee_type")?,
                    text("grantee")?,
                    text("operations")?,
                    opt("constraint_kind")?,
                    opt("constraint_context")?,
                    r.try_get("expires_at").map_err(map_err)?,
                    text("created_by")?,
                    r.try_get("created_at").map_err(map_err)?,
                    r.try_get("row_mac").map_err(map_err)?,
                )
            }
        }

        #[async_trait]
        impl GrantStore for $name {
            async fn create_grant(&self, g: &GrantRecord) -> Result<(), StoreError> {
                let (grantee_type, grantee) = grantee_columns(&g.grantee);
                let (kind, context) = constraint_columns(&g.constraint)?;
                sqlx::query(concat!(
                    "INSERT INTO grants (",
                    grant_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ))
                .bind(g.id.to_string())
                .bind(&g.org_id)
                .bind(g.key_id.to_string())
                .bind(grantee_type)
                .bind(grantee)
                .bind(operations_column(&g.operations))
                .bind(kind)
                .bind(context)
                .bind(g.expires_at)
                .bind(&g.created_by)
                .bind(g.created_at)
                .bind(&g.row_mac)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn grants_for_key(
                &self,
                org_id: &str,
                key_id: Uuid,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    grant_columns!(),
                    " FROM grants WHERE org_id = $1 AND key_id = $2 ORDER BY created_at, id"
                ))
                .bind(org_id)
                .bind(key_id.to_string())
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                // A row that does not decode was not written by Sovra: like one that fails
                // its MAC, it grants nothing, and it must not make the key unusable.
                Ok(rows
                    .iter()
                    .filter_map(|r| match Self::grant_from_row(r) {
                        Ok(g) => Some(g),
                        Err(e) => {
                            tracing::error!(key_id = %key_id, error = %e, "a grant row does not decode; it grants nothing");
                            None
                        }
                    })
                    .collect())
            }

            async fn delete_grant(
                &self,
                org_id: &str,
                key_id: Uuid,
                grant_id: Uuid,
            ) -> Result<bool, StoreError> {
                let done =
                    sqlx::query("DELETE FROM grants WHERE id = $1 AND org_id = $2 AND key_id = $3")
                        .bind(grant_id.to_string())
                        .bind(org_id)
                        .bind(key_id.to_string())
                        .execute(&self.pool)
                        .await
                        .map_err(map_err)?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

grant_store!(SqliteStore, sqlx::sqlite::SqliteRow);
grant_store!(PostgresStore, sqlx::postgres::PgRow);
