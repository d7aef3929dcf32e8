//! The seal record: how the root key is protected.

use super::{PostgresStore, SqliteStore, corrupt, map_err, to_u32};
use async_trait::async_trait;
use sovra_core::StoreError;
use sovra_core::model::{SealKind, SealRecord};
use sovra_core::store::SealStore;

macro_rules! seal_store {
    ($name:ident) => {
        #[async_trait]
        impl SealStore for $name {
            async fn get_seal(&self) -> Result<Option<SealRecord>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT kind, shares, threshold, wrapped_root_key, created_at FROM seal WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                let Some(r) = row else { return Ok(None) };
                Ok(Some(SealRecord {
                    kind: SealKind::parse(&r.try_get::<String, _>("kind").map_err(map_err)?)
                        .ok_or_else(|| corrupt("seal kind"))?,
                    shares: to_u32(r.try_get("shares").map_err(map_err)?, "shares")?,
                    threshold: to_u32(r.try_get("threshold").map_err(map_err)?, "threshold")?,
                    wrapped_root_key: r.try_get("wrapped_root_key").map_err(map_err)?,
                    created_at: r.try_get("created_at").map_err(map_err)?,
                }))
            }

            async fn create_seal(&self, s: &SealRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO seal (id, kind, shares, threshold, wrapped_root_key, created_at) VALUES (1, $1, $2, $3, $4, $5)",
                )
                .bind(s.kind.as_str())
                .bind(s.shares as i64)
                .bind(s.threshold as i64)
                .bind(&s.wrapped_root_key)
                .bind(s.created_at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }
        }
    };
}

seal_store!(SqliteStore);
seal_store!(PostgresStore);
