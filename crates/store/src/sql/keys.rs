//! Keys, their versions, their purge, and the feed of key changes.

use super::{
    PG_BEGIN, PostgresStore, SQLITE_BEGIN, SqliteStore, corrupt, map_err, parse_uuid, to_u32,
};
use async_trait::async_trait;
use sovra_core::StoreError;
use sovra_core::model::{KeyRecord, KeyState, KeyVersionRecord};
use sovra_core::store::{KeyStore, StoreChange};
use sovra_crypto::KeyType;
use uuid::Uuid;

/// The columns of `keys`, as a literal so that queries stay static strings.
macro_rules! key_columns {
    () => {
        "id, org_id, owner, name, key_type, description, state, latest_version, \
         min_decryption_version, created_at, rotated_at, deletion_date, revision, row_mac"
    };
}

macro_rules! key_store {
    ($name:ident, $db:ty, $row:ty, $begin:expr) => {
        impl $name {
            fn key_from_row(r: &$row) -> Result<KeyRecord, StoreError> {
                use sqlx::Row;
                let get_i64 = |c: &str| r.try_get::<i64, _>(c).map_err(map_err);
                Ok(KeyRecord {
                    id: parse_uuid(&r.try_get::<String, _>("id").map_err(map_err)?)?,
                    org_id: r.try_get("org_id").map_err(map_err)?,
                    owner: r.try_get("owner").map_err(map_err)?,
                    name: r.try_get("name").map_err(map_err)?,
                    key_type: KeyType::parse(&r.try_get::<String, _>("key_type").map_err(map_err)?)
                        .map_err(|_| corrupt("key type"))?,
                    description: r.try_get("description").map_err(map_err)?,
                    state: KeyState::parse(&r.try_get::<String, _>("state").map_err(map_err)?)
                        .ok_or_else(|| corrupt("key state"))?,
                    latest_version: to_u32(get_i64("latest_version")?, "latest_version")?,
                    min_decryption_version: to_u32(get_i64("min_decryption_version")?, "min_decryption_version")?,
                    created_at: get_i64("created_at")?,
                    rotated_at: r.try_get("rotated_at").map_err(map_err)?,
                    deletion_date: r.try_get("deletion_date").map_err(map_err)?,
                    revision: u64::try_from(get_i64("revision")?).map_err(|_| corrupt("revision"))?,
                    row_mac: r
                        .try_get::<Option<Vec<u8>>, _>("row_mac")
                        .map_err(map_err)?
                        .unwrap_or_default(),
                })
            }


            fn version_from_row(r: &$row) -> Result<KeyVersionRecord, StoreError> {
                use sqlx::Row;
                Ok(KeyVersionRecord {
                    key_id: parse_uuid(&r.try_get::<String, _>("key_id").map_err(map_err)?)?,
                    version: to_u32(r.try_get("version").map_err(map_err)?, "version")?,
                    kek_version: to_u32(r.try_get("kek_version").map_err(map_err)?, "kek_version")?,
                    wrapped_material: r.try_get("wrapped_material").map_err(map_err)?,
                    created_at: r.try_get("created_at").map_err(map_err)?,
                })
            }
        }

        #[async_trait]
        impl KeyStore for $name {
            async fn create_key(&self, k: &KeyRecord, first: &KeyVersionRecord) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                sqlx::query(concat!(
                    "INSERT INTO keys (",
                    key_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                ))
                .bind(k.id.to_string())
                .bind(&k.org_id)
                .bind(&k.owner)
                .bind(&k.name)
                .bind(k.key_type.as_str())
                .bind(&k.description)
                .bind(k.state.as_str())
                .bind(k.latest_version as i64)
                .bind(k.min_decryption_version as i64)
                .bind(k.created_at)
                .bind(k.rotated_at)
                .bind(k.deletion_date)
                .bind(revision(k)?)
                .bind(&k.row_mac)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                Self::insert_version(&mut tx, first).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn get_key(&self, org_id: &str, key_id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
                let row = sqlx::query(concat!("SELECT ", key_columns!(), " FROM keys WHERE id = $1 AND org_id = $2"))
                    .bind(key_id.to_string())
                    .bind(org_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                row.as_ref().map(Self::key_from_row).transpose()
            }

            async fn get_key_by_name(&self, org_id: &str, owner: &str, name: &str) -> Result<Option<KeyRecord>, StoreError> {
                // Served by the index of the UNIQUE (org_id, owner, name) constraint.
                let row = sqlx::query(concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM keys WHERE org_id = $1 AND owner = $2 AND name = $3"
                ))
                .bind(org_id)
                .bind(owner)
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
                row.as_ref().map(Self::key_from_row).transpose()
            }

            async fn list_keys(&self, org_id: &str, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM keys WHERE org_id = $1 AND owner = $2 ORDER BY created_at, id"
                ))
                .bind(org_id)
                .bind(owner)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(Self::key_from_row).collect()
            }

            async fn list_org_keys(&self, org_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM keys WHERE org_id = $1 ORDER BY created_at, id"
                ))
                .bind(org_id)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(Self::key_from_row).collect()
            }

            async fn update_key(&self, before: &KeyRecord, k: &KeyRecord) -> Result<(), StoreError> {
                let done = sqlx::query(
                    "UPDATE keys SET state = $1, min_decryption_version = $2, description = $3, deletion_date = $4, \
                     revision = $5, row_mac = $6 \
                     WHERE id = $7 AND org_id = $8 AND state = $9 AND min_decryption_version = $10 \
                     AND description IS NOT DISTINCT FROM $11 AND deletion_date IS NOT DISTINCT FROM $12 \
                     AND revision = $13",
                )
                .bind(k.state.as_str())
                .bind(k.min_decryption_version as i64)
                .bind(&k.description)
                .bind(k.deletion_date)
                .bind(revision(k)?)
                .bind(&k.row_mac)
                .bind(k.id.to_string())
                .bind(&k.org_id)
                .bind(before.state.as_str())
                .bind(before.min_decryption_version as i64)
                .bind(&before.description)
                .bind(before.deletion_date)
                .bind(revision(before)?)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict("key changed concurrently".into()));
                }
                Ok(())
            }

            async fn key_changes(
                &self,
            ) -> Result<Option<tokio::sync::mpsc::Receiver<StoreChange>>, StoreError> {
                self.watch_key_changes().await
            }

            async fn add_key_version(&self, k: &KeyRecord, v: &KeyVersionRecord) -> Result<(), StoreError> {
                if k.id != v.key_id || k.latest_version != v.version || k.revision == 0 {
                    return Err(StoreError::Conflict("version does not match its key row".into()));
                }
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                let moved = sqlx::query(
                    "UPDATE keys SET latest_version = $1, rotated_at = $2, revision = $3, row_mac = $4 \
                     WHERE id = $5 AND org_id = $6 AND latest_version = $7 AND revision = $8",
                )
                .bind(v.version as i64)
                .bind(k.rotated_at)
                .bind(revision(k)?)
                .bind(&k.row_mac)
                .bind(v.key_id.to_string())
                .bind(&k.org_id)
                .bind(v.version as i64 - 1)
                .bind(revision(k)? - 1)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if moved.rows_affected() != 1 {
                    return Err(StoreError::Conflict("key version changed".into()));
                }
                Self::insert_version(&mut tx, v).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn adopt_unsigned_key(&self, k: &KeyRecord) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE keys SET revision = $1, row_mac = $2 \
                     WHERE id = $3 AND org_id = $4 AND owner = $5 AND state = $6 AND latest_version = $7 \
                     AND min_decryption_version = $8 AND deletion_date IS NOT DISTINCT FROM $9 \
                     AND (row_mac IS NULL OR length(row_mac) = 0)",
                )
                .bind(revision(k)?)
                .bind(&k.row_mac)
                .bind(k.id.to_string())
                .bind(&k.org_id)
                .bind(&k.owner)
                .bind(k.state.as_str())
                .bind(k.latest_version as i64)
                .bind(k.min_decryption_version as i64)
                .bind(k.deletion_date)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
                let rows = sqlx::query(concat!("SELECT ", key_columns!(), " FROM keys ORDER BY org_id, created_at, id"))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(Self::key_from_row).collect()
            }

            async fn get_key_version(&self, key_id: Uuid, version: u32) -> Result<Option<KeyVersionRecord>, StoreError> {
                let row = sqlx::query(
                    "SELECT key_id, version, kek_version, wrapped_material, created_at FROM key_versions \
                     WHERE key_id = $1 AND version = $2",
                )
                .bind(key_id.to_string())
                .bind(version as i64)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
                row.as_ref().map(Self::version_from_row).transpose()
            }

            async fn rewrap_key_version(
                &self,
                key_id: Uuid,
                version: u32,
                old_kek_version: u32,
                new: &KeyVersionRecord,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE key_versions SET kek_version = $1, wrapped_material = $2 \
                     WHERE key_id = $3 AND version = $4 AND kek_version = $5",
                )
                .bind(new.kek_version as i64)
                .bind(&new.wrapped_material)
                .bind(key_id.to_string())
                .bind(version as i64)
                .bind(old_kek_version as i64)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn versions_below_kek(
                &self,
                org_id: &str,
                kek_version: u32,
                after: Option<(Uuid, u32)>,
                limit: u32,
            ) -> Result<Vec<KeyVersionRecord>, StoreError> {
                // Without `after`, from before every key id ('' sorts first).
                let (after_key, after_version) =
                    after.map_or((String::new(), 0), |(k, v)| (k.to_string(), v as i64));
                let rows = sqlx::query(
                    "SELECT v.key_id, v.version, v.kek_version, v.wrapped_material, v.created_at \
                     FROM key_versions v JOIN keys k ON k.id = v.key_id \
                     WHERE k.org_id = $1 AND v.kek_version < $2 \
                     AND (v.key_id > $3 OR (v.key_id = $3 AND v.version > $4)) \
                     ORDER BY v.key_id, v.version LIMIT $5",
                )
                .bind(org_id)
                .bind(kek_version as i64)
                .bind(after_key)
                .bind(after_version)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(Self::version_from_row).collect()
            }

            async fn keys_due_for_deletion(&self, now_ms: i64) -> Result<Vec<(String, Uuid)>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT org_id, id FROM keys WHERE state = 'pending_deletion' AND deletion_date <= $1",
                )
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get::<String, _>("org_id").map_err(map_err)?,
                            parse_uuid(&r.try_get::<String, _>("id").map_err(map_err)?)?,
                        ))
                    })
                    .collect()
            }

            async fn delete_key(&self, org_id: &str, key_id: Uuid, now_ms: i64) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                // Versions only of a key of this org that is still due: another org's key id,
                // or a key whose deletion was cancelled meanwhile, touches nothing.
                sqlx::query(
                    "DELETE FROM key_versions WHERE key_id IN (SELECT id FROM keys WHERE id = $1 AND org_id = $2 \
                     AND state = 'pending_deletion' AND deletion_date <= $3)",
                )
                .bind(key_id.to_string())
                .bind(org_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                let done = sqlx::query(
                    "DELETE FROM keys WHERE id = $1 AND org_id = $2 AND state = 'pending_deletion' AND deletion_date <= $3",
                )
                .bind(key_id.to_string())
                .bind(org_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(done.rows_affected() == 1)
            }
        }

        impl $name {
            async fn insert_version(
                tx: &mut sqlx::Transaction<'_, $db>,
                v: &KeyVersionRecord,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO key_versions (key_id, version, kek_version, wrapped_material, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(v.key_id.to_string())
                .bind(v.version as i64)
                .bind(v.kek_version as i64)
                .bind(&v.wrapped_material)
                .bind(v.created_at)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
                Ok(())
            }

        }
    };
}

/// A revision as the database keeps it (a signed 64-bit integer).
fn revision(k: &KeyRecord) -> Result<i64, StoreError> {
    i64::try_from(k.revision).map_err(|_| StoreError::Conflict("revision out of range".into()))
}

key_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    SQLITE_BEGIN
);
key_store!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    PG_BEGIN
);

impl SqliteStore {
    /// One process owns a SQLite database: nobody else changes its keys.
    async fn watch_key_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<StoreChange>>, StoreError> {
        Ok(None)
    }
}

/// What a notification names: a key id (migration 0005), `org:ID` or `identity:ORG:ID`
/// (migration 0008). Org ids hold no `:`; identity ids may.
fn parse_change(payload: &str) -> Option<StoreChange> {
    if let Some(org) = payload.strip_prefix("org:") {
        return Some(StoreChange::Org(org.to_string()));
    }
    if let Some(rest) = payload.strip_prefix("identity:") {
        let (org, id) = rest.split_once(':')?;
        return Some(StoreChange::Identity {
            org: org.to_string(),
            id: id.to_string(),
        });
    }
    Uuid::parse_str(payload).ok().map(StoreChange::Key)
}

/// The channel triggers on `keys`, `orgs` and `identities` notify with what changed.
const KEY_CHANGE_CHANNEL: &str = "sovra_key_changed";

impl PostgresStore {
    /// LISTENs on [`KEY_CHANGE_CHANNEL`] on a connection of its own (outside the service
    /// pool, so closing that pool never waits for it). When the connection drops, sqlx
    /// reconnects and listens again on the next receive; the gap is reported as
    /// [`StoreChange::Lost`]. The task ends when the receiver is dropped.
    async fn watch_key_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<StoreChange>>, StoreError> {
        let options = (*self.pool.connect_options()).clone();
        let listen_pool = crate::pg_pool_options(&options)
            .max_connections(1)
            .connect_lazy_with(options);
        let mut listener = sqlx::postgres::PgListener::connect_with(&listen_pool)
            .await
            .map_err(map_err)?;
        listener.listen(KEY_CHANGE_CHANNEL).await.map_err(map_err)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = tx.closed() => break,
                    r = listener.try_recv() => r,
                };
                let change = match received {
                    Ok(Some(n)) => match parse_change(n.payload()) {
                        Some(change) => change,
                        None => continue,
                    },
                    Ok(None) => StoreChange::Lost,
                    Err(e) => {
                        tracing::warn!(error = %e, "key change listener lost its connection; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        StoreChange::Lost
                    }
                };
                if tx.send(change).await.is_err() {
                    break;
                }
            }
            drop(listener);
            listen_pool.close().await;
        });
        Ok(Some(rx))
    }
}
