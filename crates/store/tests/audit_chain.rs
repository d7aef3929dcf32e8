//! The audit chain in the store: group-committed appends from many concurrent requests form
//! one gap-free chain that the offline verifier accepts; a row altered in the database (by
//! someone who first switched off the append-only triggers) is detected. Runs on SQLite and
//! PostgreSQL.

#[macro_use]
mod common;

use common::{Backend, TestDb};
use sovra_core::audit::{AuditEvent, AuditWriter, ExportLine, verify_export};
use sovra_crypto::KeyType;
use sovra_crypto::sign::SigningKey;
use std::collections::HashSet;

fn event(i: u32) -> AuditEvent {
    AuditEvent {
        seq: 0,
        time_ms: 1_700_000_000_000 + i as i64,
        org: Some("acme".into()),
        actor: format!("idp#user{}", i % 7),
        auth_method: "jwt".into(),
        cert_fingerprint: None,
        action: "key.use".into(),
        resource: format!("key/{i}"),
        outcome: if i.is_multiple_of(5) {
            "denied".into()
        } else {
            "success".into()
        },
        error_code: i.is_multiple_of(5).then(|| "not_found".to_string()),
        request_id: format!("req-{i}"),
        source: "127.0.0.1:5555".into(),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

async fn export_text(db: &TestDb) -> String {
    let events = db.store.audit_events(1, 100_000).await.unwrap();
    events
        .into_iter()
        .map(|e| serde_json::to_string(&ExportLine::Event(Box::new(e))).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What an attacker with owner rights on the database does before tampering: switch off the
/// append-only triggers, which the owner of the table (or the file) may do.
async fn disable_append_only(db: &TestDb) {
    match db.backend {
        Backend::Sqlite => {
            db.exec("DROP TRIGGER audit_events_no_update").await;
            db.exec("DROP TRIGGER audit_events_no_delete").await;
        }
        Backend::Postgres => {
            db.exec("ALTER TABLE audit_events DISABLE TRIGGER USER")
                .await;
        }
    }
}

both!(
    concurrent_requests_form_one_verifiable_chain,
    |db| async move {
        let writer = AuditWriter::start(db.store.clone());
        let mut tasks = Vec::new();
        for i in 0..300u32 {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move { w.record(event(i)).await }));
        }
        let mut seqs = HashSet::new();
        for t in tasks {
            let seq = t
                .await
                .unwrap()
                .expect("durable before the request is answered");
            assert!(seqs.insert(seq), "sequence {seq} handed out twice");
        }
        assert_eq!(
            seqs,
            (1..=300).collect::<HashSet<u64>>(),
            "no gap, no duplicate"
        );

        let key = SigningKey::from_pkcs8(KeyType::Ed25519, &KeyType::Ed25519.generate().unwrap())
            .unwrap();
        let spki = key.public_key_spki_der().unwrap();
        let report = verify_export(&export_text(&db).await, &spki).unwrap();
        assert_eq!(report.events, 300);
        let events = db.store.audit_events(300, 1).await.unwrap();
        assert_eq!(
            db.store.audit_head().await.unwrap(),
            Some((300, events[0].hash.clone())),
            "the head is the last event"
        );

        // Someone with owner access to the database rewrites one event. The triggers refuse
        // it until the attacker switches them off; then only the verifier stands in the way,
        // and it names the event.
        let original = db.store.audit_events(120, 1).await.unwrap().remove(0);
        let tamper = "UPDATE audit_events SET actor = 'idp#mallory' WHERE seq = 120";
        let refused = db.try_exec(tamper).await.unwrap_err();
        assert!(refused.to_string().contains("append-only"), "{refused}");
        disable_append_only(&db).await;
        let changed = db.exec(tamper).await;
        assert_eq!(changed, 1);
        let err = verify_export(&export_text(&db).await, &spki).unwrap_err();
        assert!(err.problem.contains("event 120 was altered"), "{err}");

        // Deleting a row shows as a gap.
        let restore = format!(
            "UPDATE audit_events SET actor = '{}' WHERE seq = 120",
            original.actor
        );
        db.exec(&restore).await;
        verify_export(&export_text(&db).await, &spki).expect("the restored chain verifies again");
        db.exec("DELETE FROM audit_events WHERE seq = 200").await;
        let err = verify_export(&export_text(&db).await, &spki).unwrap_err();
        assert!(err.problem.contains("jumps from 199 to 201"), "{err}");
    }
);

both!(
    appends_continue_the_chain_after_a_restart,
    |db| async move {
        let first = AuditWriter::start(db.store.clone());
        for i in 0..5 {
            first.record(event(i)).await.unwrap();
        }
        // A second writer (a restart, or a second node) continues from the stored head.
        let second = AuditWriter::start(db.store.clone());
        assert_eq!(second.record(event(5)).await.unwrap(), 6);
        let key = SigningKey::from_pkcs8(KeyType::Ed25519, &KeyType::Ed25519.generate().unwrap())
            .unwrap();
        let report =
            verify_export(&export_text(&db).await, &key.public_key_spki_der().unwrap()).unwrap();
        assert_eq!(report.events, 6);
    }
);
