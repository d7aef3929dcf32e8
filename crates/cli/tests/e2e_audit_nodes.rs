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
