//! The audit log is append-only in the database itself:
//! - on both stores, triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) even to
//!   the owner, and the rows stay as they were;
//! - on PostgreSQL, the service role set up by `deploy/postgres/service-role.sql` runs the store
//!   normally but has no UPDATE, DELETE or TRUNCATE on the audit table and cannot switch the
//!   triggers off; it opens an up-to-date database without DDL rights, and is told to have the
//!   owner migrate when the schema is behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::{Backend, TestDb};
use sovra_core::audit::{AuditEvent, Checkpoint};
use sovra_core::model::{AuditKeyRecord, KekRecord, OrgRecord};
use sovra_core::test_support::audit_event;

/// The grant script exactly as shipped, so the documented setup is the tested one.
const SERVICE_ROLE_SQL: &str = include_str!("../../../deploy/postgres/service-role.sql");
const SERVICE_ROLE: &str = "sovra_service";

/// `url` with its user replaced by `user` and no password (trust auth for the test server).
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

fn is_append_only_refusal(e: &sqlx::Error) -> bool {
    e.to_string().contains("audit log is append-only")
}

fn is_permission_denied(e: &sqlx::Error) -> bool {
    // 42501 insufficient_privilege: "permission denied for …", "must be owner of …".
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"))
}

async fn apply_service_role(db: &TestDb) {
    let common::Raw::Postgres(pool) = &db.raw else {
        panic!("the service role exists only on PostgreSQL")
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(SERVICE_ROLE_SQL))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("deploy/postgres/service-role.sql failed: {e}"));
}

/// Everything the append-only guard protects, as stored: events, checkpoints, audit keys.
async fn audit_snapshot(db: &TestDb) -> (Vec<AuditEvent>, Vec<Checkpoint>, Option<AuditKeyRecord>) {
    (
        db.store.audit_events(1, 100).await.unwrap(),
        db.store.audit_checkpoints(0, u64::MAX).await.unwrap(),
        db.store.get_audit_keys().await.unwrap(),
    )
}

/// Five events, a checkpoint at 5 and the audit keys row, so that every guarded table has rows.
async fn seed_audit_rows(db: &TestDb) {
    db.store
        .append_audit((0..5).map(audit_event).collect())
        .await
        .unwrap();
    db.exec(
        "INSERT INTO audit_checkpoints (seq, head, time_ms, signature) VALUES (5, 'h', 1, 's')",
    )
    .await;
    let blob = if db.backend == Backend::Postgres {
        "'\\x00'::bytea"
    } else {
        "x'00'"
    };
    db.exec(&format!(
        "INSERT INTO audit_keys (id, wrapped_signing_key, wrapped_hmac_key, public_key, created_at) \
         VALUES (1, {blob}, {blob}, {blob}, 1)"
    ))
    .await;
}

/// Runs each statement as the database owner, triggers untouched, and asserts it is refused by
/// the append-only guard and that nothing guarded changed.
async fn assert_all_refused(db: &TestDb, attempts: &[String]) {
    let before = audit_snapshot(db).await;
    assert_eq!(before.0.len(), 5);
    assert_eq!(before.1.len(), 1);
    assert!(before.2.is_some());
    for sql in attempts {
        let err = db
            .try_exec(sql)
            .await
            .expect_err(&format!("`{sql}` was allowed on the audit log"));
        assert!(is_append_only_refusal(&err), "`{sql}`: {err}");
        assert_eq!(
            audit_snapshot(db).await,
            before,
            "`{sql}` was refused but changed the audit rows"
        );
    }
}

both!(
    audit_rows_cannot_be_updated_deleted_or_truncated,
    |db| async move {
        seed_audit_rows(&db).await;
        let before = audit_snapshot(&db).await.0;
        let mut attempts = vec![
            "UPDATE audit_checkpoints SET head = 'forged'",
            "DELETE FROM audit_checkpoints",
            "UPDATE audit_keys SET created_at = 2",
            "DELETE FROM audit_keys",
            "UPDATE audit_events SET actor = 'idp#mallory' WHERE seq = 3",
            "UPDATE audit_events SET outcome = 'success'",
            "DELETE FROM audit_events WHERE seq = 5",
            "DELETE FROM audit_events",
        ];
        if db.backend == Backend::Postgres {
            attempts.push("TRUNCATE audit_events");
            attempts.push("TRUNCATE audit_checkpoints");
            attempts.push("TRUNCATE audit_keys");
        } else {
            // UPDATE OR REPLACE onto another row's key deletes that row without a DELETE trigger.
            attempts.push("UPDATE OR REPLACE audit_events SET seq = 4 WHERE seq = 5");
        }
        let attempts: Vec<String> = attempts.into_iter().map(String::from).collect();
        assert_all_refused(&db, &attempts).await;

        // Appending still works and continues the chain.
        let more = db.store.append_audit(vec![audit_event(5)]).await.unwrap();
        assert_eq!(more[0].seq, 6);
        assert_eq!(more[0].prev_hash, before[4].hash);
    }
);

// An INSERT that lands on an existing row rewrites it: SQLite's REPLACE (which deletes the old
// row without firing DELETE triggers), upserts on both stores, and PostgreSQL's MERGE.
both!(
    audit_rows_cannot_be_rewritten_by_insert_replace_upsert_or_merge,
    |db| async move {
        seed_audit_rows(&db).await;
        const EVENT_COLUMNS: &str = "(seq, time_ms, org_id, actor, auth_method, action, resource, \
             outcome, request_id, source, prev_hash, hash)";
        let forged_event = "VALUES (3, 1, 'acme', 'idp#mallory', 'jwt', 'key.use', 'key/3', \
             'success', 'req-3', '127.0.0.1:1', 'p', 'h')";
        let blob = if db.backend == Backend::Postgres {
            "'\\x01'::bytea"
        } else {
            "x'01'"
        };
        let forged_keys = format!("VALUES (1, {blob}, {blob}, {blob}, 2)");
        const KEY_COLUMNS: &str =
            "(id, wrapped_signing_key, wrapped_hmac_key, public_key, created_at)";
        let mut attempts = vec![
            format!(
                "INSERT INTO audit_events {EVENT_COLUMNS} {forged_event} \
                 ON CONFLICT (seq) DO UPDATE SET actor = excluded.actor"
            ),
            "INSERT INTO audit_checkpoints (seq, head, time_ms, signature) VALUES (5, 'forged', 2, 'x') \
             ON CONFLICT (seq) DO UPDATE SET head = excluded.head, signature = excluded.signature"
                .to_string(),
            format!(
                "INSERT INTO audit_keys {KEY_COLUMNS} {forged_keys} \
                 ON CONFLICT (id) DO UPDATE SET public_key = excluded.public_key"
            ),
        ];
        if db.backend == Backend::Sqlite {
            for verb in ["INSERT OR REPLACE", "REPLACE"] {
                attempts.push(format!(
                    "{verb} INTO audit_events {EVENT_COLUMNS} {forged_event}"
                ));
                attempts.push(format!(
                    "{verb} INTO audit_checkpoints (seq, head, time_ms, signature) VALUES (5, 'forged', 2, 'x')"
                ));
                attempts.push(format!(
                    "{verb} INTO audit_keys {KEY_COLUMNS} {forged_keys}"
                ));
            }
        } else {
            for (table, key) in [
                ("audit_events", "seq = 3"),
                ("audit_checkpoints", "seq = 5"),
                ("audit_keys", "id = 1"),
            ] {
                let (column, value) = match table {
                    "audit_keys" => ("created_at", "2"),
                    "audit_checkpoints" => ("head", "'forged'"),
                    _ => ("actor", "'idp#mallory'"),
                };
                for action in [
                    format!("UPDATE SET {column} = {value}"),
                    "DELETE".to_string(),
                ] {
                    attempts.push(format!(
                        "MERGE INTO {table} t USING (SELECT 1) s ON t.{key} WHEN MATCHED THEN {action}"
                    ));
                }
            }
        }
        assert_all_refused(&db, &attempts).await;

        // The store's own idempotent write still works: a checkpoint another node already
        // signed is skipped, not refused.
        let cp = db.store.audit_checkpoints(5, 5).await.unwrap().remove(0);
        db.store.add_audit_checkpoint(&cp).await.unwrap();
        let next = Checkpoint {
            seq: 6,
            ..cp.clone()
        };
        db.store.append_audit(vec![audit_event(5)]).await.unwrap();
        db.store.add_audit_checkpoint(&next).await.unwrap();
        db.store.add_audit_checkpoint(&next).await.unwrap();
        assert_eq!(
            db.store.audit_checkpoints(0, u64::MAX).await.unwrap(),
            vec![cp, next]
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_role_uses_the_store_but_cannot_rewrite_the_audit_log() {
    common::run(Backend::Postgres, |db| async move {
        // The fresh database is migrated by its owner; the grant script is safe to re-run.
        apply_service_role(&db).await;
        apply_service_role(&db).await;
        let service_url = as_user(&db.url, SERVICE_ROLE);

        // Nothing pending: the service role opens the store without any DDL.
        let store = sovra_store::open(&service_url)
            .await
            .unwrap_or_else(|e| panic!("the service role cannot open an up-to-date store: {e}"));
        let org = OrgRecord {
            id: "acme".into(),
            display_name: "Acme".into(),
            status: sovra_core::model::OrgStatus::Active,
            active_kek_version: 1,
            created_at: 1_000,
        };
        let kek = KekRecord {
            org_id: "acme".into(),
            version: 1,
            wrapped_kek: b"wrapped-kek".to_vec(),
            created_at: 1_000,
        };
        store.create_org(&org, &kek).await.unwrap();
        assert_eq!(store.get_org("acme").await.unwrap(), Some(org));
        let appended = store
            .append_audit((0..3).map(audit_event).collect())
            .await
            .unwrap();
        assert_eq!(store.audit_events(1, 100).await.unwrap(), appended);
        assert_eq!(
            store.audit_head().await.unwrap(),
            Some((3, appended[2].hash.clone()))
        );

        let service = sqlx::PgPool::connect(&service_url).await.unwrap();
        let as_service = |sql: &'static str| {
            let service = service.clone();
            async move { sqlx::query(sql).execute(&service).await }
        };
        // The other tables are the service's to change.
        assert_eq!(
            as_service("UPDATE orgs SET created_at = created_at WHERE id = 'acme'")
                .await
                .unwrap()
                .rows_affected(),
            1
        );
        as_service("DELETE FROM org_keks WHERE org_id = 'nobody'")
            .await
            .unwrap();

        // The audit table: no grant to change rows, no ownership to remove the guard.
        for sql in [
            "UPDATE audit_events SET actor = 'idp#mallory' WHERE seq = 2",
            "DELETE FROM audit_events WHERE seq = 3",
            "TRUNCATE audit_events",
            "DROP TRIGGER audit_events_append_only ON audit_events",
            "ALTER TABLE audit_events DISABLE TRIGGER USER",
            "DROP FUNCTION sovra_refuse_audit_change() CASCADE",
            "DROP TABLE audit_events",
            // Replica mode would skip ordinary triggers.
            "SET session_replication_role = replica",
            "UPDATE _sqlx_migrations SET success = false",
        ] {
            let err = as_service(sql)
                .await
                .expect_err(&format!("the service role was allowed `{sql}`"));
            assert!(is_permission_denied(&err), "`{sql}`: {err}");
        }

        // The owner is refused by the triggers.
        for sql in [
            "UPDATE audit_events SET actor = 'idp#mallory' WHERE seq = 2",
            "DELETE FROM audit_events WHERE seq = 3",
        ] {
            let err = db
                .try_exec(sql)
                .await
                .expect_err(&format!("the owner was allowed `{sql}`"));
            assert!(is_append_only_refusal(&err), "`{sql}`: {err}");
        }
        assert_eq!(
            store.audit_events(1, 100).await.unwrap(),
            appended,
            "the audit rows are unchanged"
        );
        service.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_role_is_told_to_migrate_as_owner_when_the_schema_is_behind() {
    common::run(Backend::Postgres, |db| async move {
        apply_service_role(&db).await;
        // Put the database back to the schema before 0003, as an older release left it.
        db.exec("DROP FUNCTION sovra_refuse_audit_change() CASCADE")
            .await;
        db.exec("DELETE FROM _sqlx_migrations WHERE version = 3")
            .await;
        let service_url = as_user(&db.url, SERVICE_ROLE);

        let err = match sovra_store::open(&service_url).await {
            Ok(_) => panic!("the service role opened a store with a pending migration"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("0003_audit_append_only"), "{err}");
        assert!(err.contains("sovra db migrate"), "{err}");
        assert!(err.contains("owner"), "{err}");

        // The owner applies it (`sovra db migrate`); a second run has nothing to do. The
        // timeout turns a migration lock left behind by the failed attempt into a failure.
        let applied = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            sovra_store::migrate(&db.url),
        )
        .await
        .expect("migrate waited on a leftover migration lock")
        .unwrap();
        assert_eq!(applied, vec!["0003_audit_append_only".to_string()]);
        assert!(sovra_store::migrate(&db.url).await.unwrap().is_empty());

        let store = sovra_store::open(&service_url)
            .await
            .unwrap_or_else(|e| panic!("the service role cannot open the migrated store: {e}"));
        store.append_audit(vec![audit_event(0)]).await.unwrap();
        let err = db
            .try_exec("DELETE FROM audit_events")
            .await
            .expect_err("the re-applied trigger refuses DELETE");
        assert!(is_append_only_refusal(&err), "{err}");
    })
    .await;
}
