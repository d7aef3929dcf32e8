//! Two `sovra server` processes on one PostgreSQL keep one audit chain under concurrent load:
//! no fork, no gap, no duplicate sequence, every request recorded once, and the export (with
//! the checkpoints both nodes signed) verifies offline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DevNodes, Server};
use sovra_core::audit::{ExportLine, verify_export};
use std::collections::HashSet;

/// The audit public key (SPKI DER) from a node.
async fn audit_public_key(s: &Server) -> Vec<u8> {
    let pem = s.get_ok("/api/v1/audit/public-key").await.text;
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

async fn export(s: &Server) -> String {
    let r = s
        .http()
        .get(s.url("/api/v1/audit/export"))
        .bearer_auth(s.token.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_one_postgres_keep_one_audit_chain() {
    let DevNodes {
        a: node1,
        b: node2,
        config,
        dirs,
    } = DevNodes::start("nodes", "[audit]\ncheckpoint_interval_seconds = 1\n");

    let key = node1
        .client()
        .create_key("shared", "aes-256-gcm", None)
        .await
        .unwrap();
    // 8 clients, each alternating between the nodes; every answered request is one event.
    let per_client = 40;
    let mut tasks = Vec::new();
    for c in 0..8 {
        let clients = [node1.client(), node2.client()];
        let key_id = key.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut request_ids = 0;
            for i in 0..per_client {
                let node = &clients[(c + i) % 2];
                let ctx = Default::default();
                node.encrypt(&key_id, format!("c{c} i{i}").as_bytes(), &ctx)
                    .await
                    .expect("encrypt through either node");
                request_ids += 1;
            }
            request_ids
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert_eq!(answered, 8 * per_client);

    // Both nodes stop (each signs its final checkpoint), then a fresh node exports.
    assert!(node2.stop(), "node 2 shuts down cleanly");
    assert!(node1.stop(), "node 1 shuts down cleanly");
    let node1 = Server::start_dev(dirs.0.path(), &config);
    let text = export(&node1).await;
    let spki = audit_public_key(&node1).await;
    let report = verify_export(&text, &spki).unwrap_or_else(|e| panic!("chain broken: {e}"));
    assert_eq!(report.first_seq, 1);

    let mut seqs = HashSet::new();
    let mut encrypts = 0;
    let mut checkpoints = 0;
    for line in text.lines() {
        match serde_json::from_str::<ExportLine>(line).unwrap() {
            ExportLine::Event(e) => {
                assert!(seqs.insert(e.seq), "sequence {} twice", e.seq);
                if e.action == "key.encrypt" && e.outcome == "success" {
                    encrypts += 1;
                }
            }
            ExportLine::Redacted(_) => panic!("one org: nothing is redacted"),
            ExportLine::Checkpoint(_) => checkpoints += 1,
        }
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<HashSet<_>>(),
        "no gap"
    );
    assert_eq!(
        encrypts, answered,
        "every answered encrypt has exactly one event"
    );
    assert!(checkpoints >= 1, "checkpoints were signed");
    assert!(
        report.last_checkpoint_seq.is_some(),
        "the export ends under a checkpoint"
    );
    assert!(node1.stop());
}

/// A node on PostgreSQL whose last appended events are deleted behind its back (an insider
/// with the table owner's rights switches the triggers off) raises the alarm at its next
/// append: a log line, an audit event naming both heads, `/ready` and a metric. With the
/// default policy it then stops appending, so no request is answered over a chain it cannot
/// vouch for; with `continue_after_rollback` it goes on from the database's head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_chain_is_an_alarm_and_stops_appending() {
    for continue_after in [false, true] {
        let tag = format!("audit-rollback-{continue_after}");
        let dir = common::TempDir::new(&tag);
        let url = common::fresh_pg_database();
        let s = Server::start_dev(
            dir.path(),
            &format!(
                "database_url = \"{url}\"\n[audit]\ncontinue_after_rollback = {continue_after}\n"
            ),
        );
        let c = s.client();
        let key = c.create_key("k", "aes-256-gcm", None).await.unwrap();
        for _ in 0..3 {
            c.encrypt(&key.id, b"x", &Default::default()).await.unwrap();
        }
        let deleted = common::psql(
            &url,
            "ALTER TABLE audit_events DISABLE TRIGGER USER; \
             WITH gone AS (DELETE FROM audit_events WHERE seq > (SELECT max(seq) - 2 FROM audit_events) RETURNING 1) \
             SELECT count(*) FROM gone; \
             ALTER TABLE audit_events ENABLE TRIGGER USER;",
        );
        assert!(deleted.contains('2'), "{deleted}");

        let r = c.encrypt(&key.id, b"x", &Default::default()).await;
        let alarms = common::psql(
            &url,
            "SELECT error_code FROM audit_events WHERE action = 'audit.rollback_detected'",
        );
        assert!(
            alarms.contains("rolled back") && alarms.matches(':').count() >= 1,
            "one alarm event naming both heads: {alarms}"
        );
        assert!(s.log_text().contains("AUDIT CHAIN ROLLED BACK"));
        let http = s.http();
        let ready = http.get(s.url("/ready")).send().await.unwrap();
        let metrics = s.get_ok("/metrics").await.text;
        if continue_after {
            r.expect("continues after the alarm when told a failover lost data");
            assert_eq!(ready.status(), 200);
            assert!(metrics.contains("sovra_audit_halted 0"), "{metrics}");
        } else {
            let e = r.expect_err("a node must not append over a rolled-back chain");
            assert!(e.to_string().contains("audit"), "{e}");
            // And it stays stopped.
            assert!(c.encrypt(&key.id, b"x", &Default::default()).await.is_err());
            assert_eq!(ready.status(), 503);
            let body: serde_json::Value = ready.json().await.unwrap();
            assert_eq!(body["status"], "audit_halted", "{body}");
            assert!(metrics.contains("sovra_audit_halted 1"), "{metrics}");
        }
        drop(c);
        drop(s);
        let db = url.rsplit('/').next().unwrap();
        common::psql(
            &common::pg_admin_url(),
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
    }
}
