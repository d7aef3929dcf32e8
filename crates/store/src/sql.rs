//! One implementation of the `Store` trait, instantiated for SQLite and PostgreSQL.

use async_trait::async_trait;
use sovra_core::StoreError;
use sovra_core::audit::{AuditEvent, AuditQuery, Checkpoint, GENESIS, seal_chain};
use sovra_core::model::{
    AuditKeyRecord, KekRecord, KeyRecord, KeyState, KeyVersionRecord, OrgRecord, SealKind,
    SealRecord,
};
use sovra_core::store::KeyChange;
use sovra_crypto::KeyType;
use uuid::Uuid;

pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_string())
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(what))
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| corrupt("key id"))
}

/// The columns of `keys`, as a literal so that queries stay static strings.
macro_rules! key_columns {
    () => {
        "id, org_id, owner, name, key_type, description, state, latest_version, \
         min_decryption_version, created_at, rotated_at, deletion_date"
    };
}

/// The columns of `audit_events`, in the order `event_from_row` reads them.
macro_rules! event_columns {
    () => {
        "seq, time_ms, org_id, actor, auth_method, cert_fingerprint, action, resource, outcome, \
         error_code, request_id, source, hashed, prev_hash, hash"
    };
}

/// Rows per audit INSERT statement on SQLite (15 parameters each, well under SQLite's limit of
/// 32,766).
const SQLITE_AUDIT_INSERT_ROWS: usize = 64;

/// `INSERT INTO audit_events (…) VALUES (?, …, ?), (?, …)` for `rows` rows (SQLite). The text
/// holds only column names and placeholders — every value is bound — which is why it may be
/// built at run time. Anonymous placeholders, not `$N`: sqlx asks SQLite for each parameter's
/// name, and SQLite finds a name by scanning the statement's named parameters, so numbered
/// placeholders made binding grow with the square of the parameters per statement (at 128 rows
/// it took most of the SQLite thread's time in a profile of the encrypt path).
fn audit_insert_sql(rows: usize) -> String {
    const COLUMNS: usize = 15;
    let row = format!("({})", vec!["?"; COLUMNS].join(", "));
    let mut sql = String::from(concat!(
        "INSERT INTO audit_events (",
        event_columns!(),
        ") VALUES "
    ));
    sql.push_str(&vec![row; rows].join(", "));
    sql
}

macro_rules! sql_store {
    ($name:ident, $db:ty, $row:ty, $begin:literal, $insert_rows:path, $append_rows:path) => {
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
                })
            }

            /// Appends `events` after the head read inside the same transaction.
            async fn append_after_stored_head(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditEvent>, StoreError> {
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                let (seq, prev) = Self::audit_head_on(&mut *tx).await?.unwrap_or((0, GENESIS.to_string()));
                let stored = seal_chain(events, seq, &prev);
                Self::insert_audit_rows(&mut tx, &stored).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(stored)
            }

            fn event_from_row(r: &$row) -> Result<AuditEvent, StoreError> {
                use sqlx::Row;
                let hashed = match r.try_get::<Option<String>, _>("hashed").map_err(map_err)? {
                    Some(j) => serde_json::from_str(&j).map_err(|_| corrupt("audit hashed values"))?,
                    None => Default::default(),
                };
                Ok(AuditEvent {
                    seq: r.try_get::<i64, _>("seq").map_err(map_err)? as u64,
                    time_ms: r.try_get("time_ms").map_err(map_err)?,
                    org: r.try_get("org_id").map_err(map_err)?,
                    actor: r.try_get("actor").map_err(map_err)?,
                    auth_method: r.try_get("auth_method").map_err(map_err)?,
                    cert_fingerprint: r.try_get("cert_fingerprint").map_err(map_err)?,
                    action: r.try_get("action").map_err(map_err)?,
                    resource: r.try_get("resource").map_err(map_err)?,
                    outcome: r.try_get("outcome").map_err(map_err)?,
                    error_code: r.try_get("error_code").map_err(map_err)?,
                    request_id: r.try_get("request_id").map_err(map_err)?,
                    source: r.try_get("source").map_err(map_err)?,
                    hashed,
                    prev_hash: r.try_get("prev_hash").map_err(map_err)?,
                    hash: r.try_get("hash").map_err(map_err)?,
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
        impl sovra_core::Store for $name {
            fn audit_journal_path(&self) -> Option<std::path::PathBuf> {
                self.audit_journal.clone()
            }

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

            async fn get_org(&self, org_id: &str) -> Result<Option<OrgRecord>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT id, active_kek_version, created_at FROM orgs WHERE id = $1")
                    .bind(org_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?;
                row.map(|r| {
                    Ok(OrgRecord {
                        id: r.try_get("id").map_err(map_err)?,
                        active_kek_version: to_u32(r.try_get("active_kek_version").map_err(map_err)?, "kek version")?,
                        created_at: r.try_get("created_at").map_err(map_err)?,
                    })
                })
                .transpose()
            }

            async fn create_org(&self, org: &OrgRecord, kek: &KekRecord) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                sqlx::query("INSERT INTO orgs (id, active_kek_version, created_at) VALUES ($1, $2, $3)")
                    .bind(&org.id)
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

            async fn create_key(&self, k: &KeyRecord, first: &KeyVersionRecord) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                sqlx::query(concat!(
                    "INSERT INTO keys (",
                    key_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
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

            async fn update_key(&self, before: &KeyRecord, k: &KeyRecord) -> Result<(), StoreError> {
                let done = sqlx::query(
                    "UPDATE keys SET state = $1, min_decryption_version = $2, description = $3, deletion_date = $4 \
                     WHERE id = $5 AND org_id = $6 AND state = $7 AND min_decryption_version = $8 \
                     AND description IS NOT DISTINCT FROM $9 AND deletion_date IS NOT DISTINCT FROM $10",
                )
                .bind(k.state.as_str())
                .bind(k.min_decryption_version as i64)
                .bind(&k.description)
                .bind(k.deletion_date)
                .bind(k.id.to_string())
                .bind(&k.org_id)
                .bind(before.state.as_str())
                .bind(before.min_decryption_version as i64)
                .bind(&before.description)
                .bind(before.deletion_date)
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
            ) -> Result<Option<tokio::sync::mpsc::Receiver<KeyChange>>, StoreError> {
                self.watch_key_changes().await
            }

            async fn add_key_version(&self, org_id: &str, v: &KeyVersionRecord) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                let moved = sqlx::query(
                    "UPDATE keys SET latest_version = $1, rotated_at = $2 WHERE id = $3 AND org_id = $4 AND latest_version = $5",
                )
                .bind(v.version as i64)
                .bind(v.created_at)
                .bind(v.key_id.to_string())
                .bind(org_id)
                .bind(v.version as i64 - 1)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if moved.rows_affected() != 1 {
                    return Err(StoreError::Conflict("key version changed".into()));
                }
                Self::insert_version(&mut tx, v).await?;
                tx.commit().await.map_err(map_err)
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
                limit: u32,
            ) -> Result<Vec<KeyVersionRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT v.key_id, v.version, v.kek_version, v.wrapped_material, v.created_at \
                     FROM key_versions v JOIN keys k ON k.id = v.key_id \
                     WHERE k.org_id = $1 AND v.kek_version < $2 ORDER BY v.key_id, v.version LIMIT $3",
                )
                .bind(org_id)
                .bind(kek_version as i64)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(Self::version_from_row).collect()
            }

            async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditEvent>, StoreError> {
                // Taken, not read: after a failure the next batch reads the stored head.
                let known = self.audit_head.lock().unwrap_or_else(|e| e.into_inner()).take();
                let stored = match known {
                    Some((seq, prev)) => {
                        let sealed = seal_chain(events, seq, &prev);
                        if $append_rows(&self.pool, (seq, &prev), &sealed).await? {
                            sealed
                        } else {
                            // Not the stored head any more: continue the one stored.
                            self.append_after_stored_head(sealed).await?
                        }
                    }
                    None => self.append_after_stored_head(events).await?,
                };
                if let Some(last) = stored.last() {
                    *self.audit_head.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((last.seq, last.hash.clone()));
                }
                Ok(stored)
            }

            async fn insert_sealed_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
                let Some(first) = events.first() else { return Ok(()) };
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                let (seq, hash) = Self::audit_head_on(&mut *tx).await?.unwrap_or((0, GENESIS.to_string()));
                if first.seq != seq + 1 || first.prev_hash != hash {
                    return Err(StoreError::Conflict(format!(
                        "audit events from seq {} do not continue the stored head {seq}",
                        first.seq
                    )));
                }
                Self::insert_audit_rows(&mut tx, events).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(())
            }

            async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
                Self::audit_head_on(&self.pool).await
            }

            async fn audit_events(&self, from_seq: u64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
                let rows = sqlx::query(concat!(
                    "SELECT ", event_columns!(), " FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2"
                ))
                .bind(from_seq as i64)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(Self::event_from_row).collect()
            }

            async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
                // One static statement: an absent filter is a NULL parameter that matches all.
                let rows = sqlx::query(concat!(
                    "SELECT ", event_columns!(), " FROM audit_events WHERE org_id = $1 \
                     AND ($2 IS NULL OR seq < $2) AND ($3 IS NULL OR time_ms >= $3) \
                     AND ($4 IS NULL OR time_ms < $4) AND ($5 IS NULL OR actor = $5) \
                     AND ($6 IS NULL OR action = $6) AND ($7 IS NULL OR outcome = $7) \
                     ORDER BY seq DESC LIMIT $8"
                ))
                .bind(&q.org)
                .bind(q.before_seq.map(|s| s.min(i64::MAX as u64) as i64))
                .bind(q.from_time_ms)
                .bind(q.to_time_ms)
                .bind(&q.actor)
                .bind(&q.action)
                .bind(&q.outcome)
                .bind(q.limit as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(Self::event_from_row).collect()
            }

            async fn add_audit_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (seq, head, time_ms, signature) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (seq) DO NOTHING",
                )
                .bind(cp.seq as i64)
                .bind(&cp.head)
                .bind(cp.time_ms)
                .bind(&cp.signature)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn audit_checkpoints(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Checkpoint>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT seq, head, time_ms, signature FROM audit_checkpoints WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
                )
                .bind(from_seq.min(i64::MAX as u64) as i64)
                .bind(to_seq.min(i64::MAX as u64) as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(Checkpoint {
                            seq: r.try_get::<i64, _>("seq").map_err(map_err)? as u64,
                            head: r.try_get("head").map_err(map_err)?,
                            time_ms: r.try_get("time_ms").map_err(map_err)?,
                            signature: r.try_get("signature").map_err(map_err)?,
                        })
                    })
                    .collect()
            }

            async fn get_audit_keys(&self) -> Result<Option<AuditKeyRecord>, StoreError> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT wrapped_signing_key, wrapped_hmac_key, public_key, created_at FROM audit_keys WHERE id = 1",
                )
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
                row.map(|r| {
                    Ok(AuditKeyRecord {
                        wrapped_signing_key: r.try_get("wrapped_signing_key").map_err(map_err)?,
                        wrapped_hmac_key: r.try_get("wrapped_hmac_key").map_err(map_err)?,
                        public_key: r.try_get("public_key").map_err(map_err)?,
                        created_at: r.try_get("created_at").map_err(map_err)?,
                    })
                })
                .transpose()
            }

            async fn create_audit_keys(&self, k: &AuditKeyRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO audit_keys (id, wrapped_signing_key, wrapped_hmac_key, public_key, created_at) \
                     VALUES (1, $1, $2, $3, $4)",
                )
                .bind(&k.wrapped_signing_key)
                .bind(&k.wrapped_hmac_key)
                .bind(&k.public_key)
                .bind(k.created_at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
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

            /// The chain head, read through the pool or inside a transaction.
            async fn audit_head_on<'e, E>(exec: E) -> Result<Option<(u64, String)>, StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                use sqlx::Row;
                let head = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(exec)
                    .await
                    .map_err(map_err)?;
                head.map(|r| {
                    Ok((
                        r.try_get::<i64, _>("seq").map_err(map_err)? as u64,
                        r.try_get::<String, _>("hash").map_err(map_err)?,
                    ))
                })
                .transpose()
            }

            /// Inserts sealed events. One multi-row INSERT per chunk: a statement per event would
            /// make a batch's commit latency, and so the throughput of audited requests, grow per
            /// event.
            async fn insert_audit_rows(tx: &mut sqlx::Transaction<'_, $db>, events: &[AuditEvent]) -> Result<(), StoreError> {
                $insert_rows(tx, events).await
            }
        }
    };
}

// IMMEDIATE: a SQLite transaction that reads and then writes takes the write lock up front;
// otherwise a write committed by another connection in between fails it at once
// (SQLITE_BUSY_SNAPSHOT), which the busy timeout does not retry.
sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    "BEGIN IMMEDIATE",
    insert_audit_rows_sqlite,
    append_audit_rows_sqlite
);
sql_store!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    "BEGIN",
    insert_audit_rows_pg,
    append_audit_rows_pg
);

/// The `hashed` column: the keyed hashes as a JSON object, or NULL when there are none.
fn hashed_column(ev: &AuditEvent) -> Option<String> {
    (!ev.hashed.is_empty()).then(|| serde_json::to_string(&ev.hashed).unwrap_or_default())
}

/// Audit rows into SQLite: multi-row INSERTs of [`SQLITE_AUDIT_INSERT_ROWS`] rows.
async fn insert_audit_rows_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    // The statement for a full chunk is built once; only a batch's last chunk varies.
    static FULL_CHUNK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let full = FULL_CHUNK.get_or_init(|| audit_insert_sql(SQLITE_AUDIT_INSERT_ROWS));
    for chunk in events.chunks(SQLITE_AUDIT_INSERT_ROWS) {
        let sql = if chunk.len() == SQLITE_AUDIT_INSERT_ROWS {
            std::borrow::Cow::Borrowed(full.as_str())
        } else {
            std::borrow::Cow::Owned(audit_insert_sql(chunk.len()))
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ev in chunk {
            q = q
                .bind(ev.seq as i64)
                .bind(ev.time_ms)
                .bind(&ev.org)
                .bind(&ev.actor)
                .bind(&ev.auth_method)
                .bind(&ev.cert_fingerprint)
                .bind(&ev.action)
                .bind(&ev.resource)
                .bind(&ev.outcome)
                .bind(&ev.error_code)
                .bind(&ev.request_id)
                .bind(&ev.source)
                .bind(hashed_column(ev))
                .bind(&ev.prev_hash)
                .bind(&ev.hash);
        }
        q.execute(&mut **tx).await.map_err(map_err)?;
    }
    Ok(())
}

/// Audit rows into PostgreSQL: one statement for any number of rows, each column bound as one
/// array. A multi-row `VALUES` list was a different statement for every batch size, so
/// PostgreSQL parsed and planned a statement of up to 1,920 parameters for most batches.
async fn insert_audit_rows_pg(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    unnest_audit_rows(&mut **tx, None, events)
        .await
        .map(drop)
        .map_err(map_err)
}

/// Audit rows continuing the head `after` (sequence, hash), in PostgreSQL: one statement, atomic
/// on its own, so a batch costs one round trip and its commit. `Ok(false)` when `after` is not
/// the stored head: it is gone (a database restored to an earlier point, a failover that lost
/// commits) or another writer appended after it (the sequence's primary key).
async fn append_audit_rows_pg(
    pool: &sqlx::PgPool,
    after: (u64, &str),
    events: &[AuditEvent],
) -> Result<bool, StoreError> {
    match unnest_audit_rows(pool, Some(after), events).await {
        Ok(rows) => Ok(rows == events.len() as u64),
        Err(sqlx::Error::Database(db))
            if db.is_unique_violation()
                && db.constraint().is_none_or(|c| c == "audit_events_pkey") =>
        {
            Ok(false)
        }
        Err(e) => Err(map_err(e)),
    }
}

/// Audit rows continuing the head `after`, in SQLite: its chunks in one transaction that first
/// checks the head is still there (see [`append_audit_rows_pg`]).
async fn append_audit_rows_sqlite(
    pool: &sqlx::SqlitePool,
    after: (u64, &str),
    events: &[AuditEvent],
) -> Result<bool, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
    let present: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM audit_events WHERE seq = ? AND hash = ?)")
            .bind(after.0 as i64)
            .bind(after.1)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
    if !present {
        return Ok(false);
    }
    // The only unique key of the table is the sequence.
    match insert_audit_rows_sqlite(&mut tx, events).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Ok(false),
        Err(e) => return Err(e),
    }
    tx.commit().await.map_err(map_err)?;
    Ok(true)
}

/// One INSERT of every row, each column bound as one array; with `after`, only if that event
/// (sequence, hash) is stored. Returns the rows inserted.
async fn unnest_audit_rows<'c>(
    exec: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    after: Option<(u64, &str)>,
    events: &[AuditEvent],
) -> Result<u64, sqlx::Error> {
    fn column<'e, T>(events: &'e [AuditEvent], f: impl Fn(&'e AuditEvent) -> T) -> Vec<T> {
        events.iter().map(f).collect()
    }
    macro_rules! insert_unnest {
        () => {
            concat!(
                "INSERT INTO audit_events (",
                event_columns!(),
                ") SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                 $11::text[], $12::text[], $13::text[], $14::text[], $15::text[])"
            )
        };
    }
    let sql = match after {
        None => insert_unnest!(),
        Some(_) => concat!(
            insert_unnest!(),
            " WHERE EXISTS (SELECT 1 FROM audit_events WHERE seq = $16 AND hash = $17)"
        ),
    };
    let query = sqlx::query(sql)
        .bind(column(events, |e| e.seq as i64))
        .bind(column(events, |e| e.time_ms))
        .bind(column(events, |e| e.org.as_deref()))
        .bind(column(events, |e| e.actor.as_str()))
        .bind(column(events, |e| e.auth_method.as_str()))
        .bind(column(events, |e| e.cert_fingerprint.as_deref()))
        .bind(column(events, |e| e.action.as_str()))
        .bind(column(events, |e| e.resource.as_str()))
        .bind(column(events, |e| e.outcome.as_str()))
        .bind(column(events, |e| e.error_code.as_deref()))
        .bind(column(events, |e| e.request_id.as_str()))
        .bind(column(events, |e| e.source.as_str()))
        .bind(column(events, hashed_column))
        .bind(column(events, |e| e.prev_hash.as_str()))
        .bind(column(events, |e| e.hash.as_str()));
    let query = match after {
        None => query,
        Some((seq, hash)) => query.bind(seq as i64).bind(hash),
    };
    Ok(query.execute(exec).await?.rows_affected())
}

impl SqliteStore {
    /// One process owns a SQLite database: nobody else changes its keys.
    async fn watch_key_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<KeyChange>>, StoreError> {
        Ok(None)
    }
}

/// The channel a trigger on `keys` notifies with the changed key's id (migration 0005).
const KEY_CHANGE_CHANNEL: &str = "sovra_key_changed";

impl PostgresStore {
    /// LISTENs on [`KEY_CHANGE_CHANNEL`] on a connection of its own (outside the service
    /// pool, so closing that pool never waits for it). When the connection drops, sqlx
    /// reconnects and listens again on the next receive; the gap is reported as
    /// [`KeyChange::Lost`]. The task ends when the receiver is dropped.
    async fn watch_key_changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<KeyChange>>, StoreError> {
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
                    Ok(Some(n)) => match Uuid::parse_str(n.payload()) {
                        Ok(id) => KeyChange::Key(id),
                        Err(_) => continue,
                    },
                    Ok(None) => KeyChange::Lost,
                    Err(e) => {
                        tracing::warn!(error = %e, "key change listener lost its connection; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        KeyChange::Lost
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
