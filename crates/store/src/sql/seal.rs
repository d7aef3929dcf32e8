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
                let row = sqlx::query("SELECT kind, shares, threshold, wrapped_root_key, created_at, share_commitments FROM seal WHERE id = 1")
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
                    share_commitments: r
                        .try_get::<Option<Vec<u8>>, _>("share_commitments")
                        .map_err(map_err)?
                        .map(|b| decode_commitments(&b))
                        .transpose()?,
                }))
            }

            async fn create_seal(&self, s: &SealRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO seal (id, kind, shares, threshold, wrapped_root_key, created_at, share_commitments) \
                     VALUES (1, $1, $2, $3, $4, $5, $6)",
                )
                .bind(s.kind.as_str())
                .bind(s.shares as i64)
                .bind(s.threshold as i64)
                .bind(&s.wrapped_root_key)
                .bind(s.created_at)
                .bind(s.share_commitments.as_ref().map(|c| c.concat()))
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }
        }
    };
}

/// The stored concatenation of 32-byte commitments.
fn decode_commitments(bytes: &[u8]) -> Result<Vec<[u8; 32]>, StoreError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(corrupt("share commitments"));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| {
            let mut out = [0u8; 32];
            out.copy_from_slice(c);
            out
        })
        .collect())
}

seal_store!(SqliteStore);
seal_store!(PostgresStore);
