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
use sovra_core::model::{KekRecord, OrgRecord};
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

both!(
    audit_rows_cannot_be_updated_deleted_or_truncated,
    |db| async move {
        db.store
            .append_audit((0..5).map(audit_event).collect())
            .await
            .unwrap();
        let before = db.store.audit_events(1, 100).await.unwrap();
        assert_eq!(before.len(), 5);
        // A checkpoint and the audit keys row, so that row triggers have rows to guard.
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
        }
        // As the owner of the database, triggers untouched.
        for sql in attempts {
            let err = db
                .try_exec(sql)
                .await
                .expect_err(&format!("`{sql}` was allowed on the audit log"));
            assert!(is_append_only_refusal(&err), "`{sql}`: {err}");
        }
        assert_eq!(
            db.store.audit_events(1, 100).await.unwrap(),
            before,
            "refused statements left the audit rows unchanged"
        );

        // Appending still works and continues the chain.
        let more = db.store.append_audit(vec![audit_event(5)]).await.unwrap();
        assert_eq!(more[0].seq, 6);
        assert_eq!(more[0].prev_hash, before[4].hash);
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
