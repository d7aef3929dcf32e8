//! The audit chain, its signed checkpoints and the audit keys.

use super::{PG_BEGIN, PostgresStore, SQLITE_BEGIN, SqliteStore, corrupt, map_err};
use async_trait::async_trait;
use sovra_core::StoreError;
use sovra_core::audit::{AuditEvent, AuditQuery, Checkpoint, GENESIS, seal_chain};
use sovra_core::model::AuditKeyRecord;
use sovra_core::store::AuditStore;

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

macro_rules! audit_store {
    ($name:ident, $db:ty, $row:ty, $begin:expr, $insert_rows:path, $append_rows:path) => {
        impl $name {
            /// Appends `events` after the head read inside the same transaction; with
            /// `appended`, only if that event (the last this store appended) is still stored:
            /// another node may have appended after it, but nothing may have removed it.
            async fn append_after_stored_head(
                &self,
                events: Vec<AuditEvent>,
                appended: Option<&(u64, String)>,
            ) -> Result<Vec<AuditEvent>, StoreError> {
                let mut tx = self.pool.begin_with($begin).await.map_err(map_err)?;
                let head = Self::audit_head_on(&mut *tx).await?;
                if let Some((a_seq, a_hash)) = appended {
                    let present: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM audit_events WHERE seq = $1 AND hash = $2)",
                    )
                    .bind(*a_seq as i64)
                    .bind(a_hash)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    if !present {
                        return Err(StoreError::AuditRollback {
                            appended_seq: *a_seq,
                            appended_hash: a_hash.clone(),
                            stored_head: head.map_or_else(|| "empty".into(), |(s, h)| format!("{s}:{h}")),
                        });
                    }
                }
                let (seq, prev) = head.unwrap_or((0, GENESIS.to_string()));
                let stored = seal_chain(events, seq, &prev);
                Self::insert_audit_rows(&mut tx, &stored).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(stored)
            }

            fn checkpoint_from_row(r: &$row) -> Result<Checkpoint, StoreError> {
                use sqlx::Row;
                Ok(Checkpoint {
                    seq: r.try_get::<i64, _>("seq").map_err(map_err)? as u64,
                    head: r.try_get("head").map_err(map_err)?,
                    time_ms: r.try_get("time_ms").map_err(map_err)?,
                    signature: r.try_get("signature").map_err(map_err)?,
                })
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

            /// Stores a signed head once: a sequence already signed (by another node, or a
            /// recovery) is kept.
            async fn insert_checkpoint<'e, E>(on: E, cp: &Checkpoint) -> Result<(), StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                sqlx::query(
                    // A sequence another node already signed is skipped before the INSERT, as
                    // SQLite's append-only trigger refuses an INSERT onto an existing row; the
                    // ON CONFLICT covers two PostgreSQL nodes racing past the check.
                    "INSERT INTO audit_checkpoints (seq, head, time_ms, signature) SELECT $1, $2, $3, $4 \
                     WHERE NOT EXISTS (SELECT 1 FROM audit_checkpoints WHERE seq = $1) \
                     ON CONFLICT (seq) DO NOTHING",
                )
                .bind(cp.seq as i64)
                .bind(&cp.head)
                .bind(cp.time_ms)
                .bind(&cp.signature)
                .execute(on)
                .await
                .map_err(map_err)?;
                Ok(())
            }
        }

        #[async_trait]
        impl AuditStore for $name {
            fn audit_journal_path(&self) -> Option<std::path::PathBuf> {
                self.audit_journal.clone()
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
                            // Not the stored head any more: continue the one stored, if it
                            // still holds ours.
                            let known = (seq, prev);
                            match self.append_after_stored_head(sealed, Some(&known)).await {
                                Err(e @ StoreError::AuditRollback { .. }) => {
                                    // Kept, so that every later append finds the rollback too.
                                    *self.audit_head.lock().unwrap_or_else(|e| e.into_inner()) =
                                        Some(known);
                                    return Err(e);
                                }
                                other => other?,
                            }
                        }
                    }
                    None => self.append_after_stored_head(events, None).await?,
                };
                if let Some(last) = stored.last() {
                    *self.audit_head.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((last.seq, last.hash.clone()));
                }
                Ok(stored)
            }

            fn accept_audit_rollback(&self) {
                *self.audit_head.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }

            async fn insert_sealed_audit(&self, events: &[AuditEvent], checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
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
                for cp in checkpoints {
                    Self::insert_checkpoint(&mut *tx, cp).await?;
                }
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
                Self::insert_checkpoint(&self.pool, cp).await
            }

            async fn audit_checkpoints(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Checkpoint>, StoreError> {
                let rows = sqlx::query(
                    "SELECT seq, head, time_ms, signature FROM audit_checkpoints WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
                )
                .bind(from_seq.min(i64::MAX as u64) as i64)
                .bind(to_seq.min(i64::MAX as u64) as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                rows.iter().map(Self::checkpoint_from_row).collect()
            }

            async fn last_audit_checkpoint(&self, up_to_seq: u64) -> Result<Option<Checkpoint>, StoreError> {
                sqlx::query(
                    "SELECT seq, head, time_ms, signature FROM audit_checkpoints WHERE seq <= $1 ORDER BY seq DESC LIMIT 1",
                )
                .bind(up_to_seq.min(i64::MAX as u64) as i64)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?
                .as_ref()
                .map(Self::checkpoint_from_row)
                .transpose()
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
        }
    };
}

audit_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    SQLITE_BEGIN,
    insert_audit_rows_sqlite,
    append_audit_rows_sqlite
);
audit_store!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    PG_BEGIN,
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
    let mut tx = pool.begin_with(SQLITE_BEGIN).await.map_err(map_err)?;
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
