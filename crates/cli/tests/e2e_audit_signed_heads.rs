//! Every group commit of the audit log carries a signature over the chain head it leaves
//! (threat rows mini-kms 17, platform R-1): an answered request's event never lies beyond a
//! signed head, so events deleted or rewritten after it are caught by `sovra audit verify`
//! without waiting for the periodic checkpoint. On PostgreSQL the head is stored before a
//! batch is answered; on SQLite it is written into the same journal frame, in its one sync.
//! Sinks forward every signed head, so a SIEM's copy verifies on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::{
    DevApi, Server, TempDir, fresh_pg_database, psql, sample, send, sovra_bin, sqlite3, text,
};
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Waits until the server signs its group commits (it starts within a second of unsealing,
/// once the chain found at start is checked).
async fn wait_until_signing(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = s.get_ok("/metrics").await.text;
        if sample(&metrics, "sovra_audit_group_commits_signed", &[]) == Some(1.0) {
            return;
        }
        assert!(Instant::now() < deadline, "group commits never signed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Concurrent and sequential audited requests; the request ids of those answered.
async fn answered_requests(api: &DevApi) -> BTreeSet<String> {
    let r = send(
        &api.server,
        &api.http,
        Method::POST,
        "/api/v1/keys",
        api.t(),
        Some(r#"{"name":"signed-heads","type":"aes-256-gcm"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json["id"].as_str().unwrap().to_string();
    let mut ids = BTreeSet::from([r.request_id().unwrap().to_string()]);
    let body = json!({"plaintext": "aGk="}).to_string();
    let path = format!("/api/v1/keys/{id}/encrypt");
    let encrypt = || {
        send(
            &api.server,
            &api.http,
            Method::POST,
            &path,
            api.t(),
            Some(&body),
        )
    };
    for _ in 0..3 {
        let burst = futures_util::future::join_all((0..24).map(|_| encrypt())).await;
        // A burst (batched commits), then a lone request (a commit of its own).
        for r in burst.into_iter().chain([encrypt().await]) {
            assert_eq!(r.status, 200, "{r:?}");
            ids.insert(r.request_id().unwrap().to_string());
        }
    }
    ids
}

fn audit_public_key_spki(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn signature_holds(spki: &[u8], cp: &sovra_core::audit::Checkpoint) -> bool {
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&cp.signature)
        .unwrap();
    let signed = sovra_core::audit::Checkpoint::signed_bytes(cp.seq, &cp.head, cp.time_ms);
    sovra_crypto::sign::verify_spki(
        sovra_crypto::sign::SignatureAlgorithm::Ed25519,
        spki,
        sovra_crypto::sign::SignInput::Message(&signed),
        &sig,
    )
    .unwrap()
}

/// PostgreSQL (the store-committing writer): right after the answers, before any periodic
/// checkpoint, the newest answered event is covered by a signed head in the database.
#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_no_answered_event_lies_beyond_a_signed_head() {
    let url = fresh_pg_database();
    let api = DevApi::start_with("signed-heads-pg", |_| format!("database_url = \"{url}\"\n"));
    wait_until_signing(&api.server).await;
    let ids = answered_requests(&api).await;
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    // One statement, one snapshot.
    let row = psql(
        &url,
        &format!(
            "SELECT (SELECT max(seq) FROM audit_events WHERE request_id IN ({list})), \
                (SELECT count(*) FROM audit_events WHERE request_id IN ({list})), \
                (SELECT max(seq) FROM audit_checkpoints)"
        ),
    );
    let n: Vec<u64> = row.split('|').map(|v| v.parse().unwrap()).collect();
    assert_eq!(n[1], ids.len() as u64, "every answered request is audited");
    assert!(
        n[2] >= n[0],
        "newest answered event {} lies beyond the last signed head {}",
        n[0],
        n[2]
    );
}

/// SQLite (the journaled writer): the journal itself carries each frame's signed head, so a
/// node killed right after answering leaves every answered event under a valid signature in
/// its journal, and they are in the database after the next start.
#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite_each_journal_frame_carries_its_signed_head() {
    let api = DevApi::start("signed-heads-sqlite");
    wait_until_signing(&api.server).await;
    let spki = audit_public_key_spki(&api.server.get_ok("/api/v1/audit/public-key").await.text);
    let ids = answered_requests(&api).await;
    let dir = api.server.data_dir.clone();
    let DevApi { mut server, .. } = api;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let journal = std::fs::read(dir.join("sovra.db-audit-journal")).unwrap();
    let (read, _) =
        sovra_core::audit::parse_journal(std::path::Path::new("journal"), &journal).unwrap();
    let answered: Vec<u64> = read
        .events
        .iter()
        .filter(|e| ids.contains(&e.request_id))
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        answered.len(),
        ids.len(),
        "the journal holds every answered event"
    );
    assert!(!read.checkpoints.is_empty());
    for cp in &read.checkpoints {
        assert!(signature_holds(&spki, cp), "head {} verifies", cp.seq);
        let event = read.events.iter().find(|e| e.seq == cp.seq).unwrap();
        assert_eq!(event.hash, cp.head);
    }
    let last_head = read.checkpoints.iter().map(|c| c.seq).max().unwrap();
    assert!(
        answered.iter().all(|s| *s <= last_head),
        "an answered event lies beyond the last signed head"
    );

    // The heads are in the database after a restart (stored by the node before it was killed,
    // or by the recovery of its journal).
    let restarted = Server::start_dev(&dir, "");
    let db = dir.join("sovra.db");
    for cp in &read.checkpoints {
        assert_eq!(
            sqlite3(
                &db,
                &format!(
                    "SELECT signature FROM audit_checkpoints WHERE seq = {}",
                    cp.seq
                )
            ),
            cp.signature,
            "head {} stored",
            cp.seq
        );
    }
    drop(restarted);
}

/// A file sink's copy holds the signed heads between the events, and verifies as an export.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_forwards_every_signed_head() {
    let dir = TempDir::new("signed-heads-sink");
    let sink_file = dir.path().join("sink").join("audit.jsonl");
    let s = Server::start_dev(
        dir.path(),
        &format!(
            "[[audit.sinks]]\nkind = \"file\"\nname = \"all\"\npath = \"{}\"\npoll_interval_ms = 50\n",
            sink_file.display()
        ),
    );
    wait_until_signing(&s).await;
    let token = s.token.clone().unwrap();
    let mut last_request = String::new();
    for i in 0..5 {
        let body = format!(r#"{{"name":"sunk-{i}","type":"aes-256-gcm"}}"#);
        let r = send(
            &s,
            &s.http(),
            Method::POST,
            "/api/v1/keys",
            Some(&token),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        last_request = r.request_id().unwrap().to_string();
    }
    // Until the sink holds the last request's event and a head signed over it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let lines: Vec<serde_json::Value> = loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&sink_file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let last_seq = lines
            .iter()
            .find(|l| l["request_id"] == last_request.as_str())
            .and_then(|l| l["seq"].as_u64());
        let covered = last_seq.is_some_and(|seq| {
            lines
                .iter()
                .any(|l| l["type"] == "checkpoint" && l["seq"].as_u64() >= Some(seq))
        });
        if covered {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "the sink never got the signed head"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let heads = lines.iter().filter(|l| l["type"] == "checkpoint").count();
    assert!(heads >= 2, "{heads} signed heads forwarded");
    let pem = dir.path().join("audit.pem");
    std::fs::write(&pem, s.get_ok("/api/v1/audit/public-key").await.text).unwrap();
    let out = std::process::Command::new(sovra_bin())
        .args(["audit", "verify"])
        .arg(&sink_file)
        .arg("--public-key")
        .arg(&pem)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("{heads} checkpoints")),
        "{}",
        text(&out.stdout)
    );
}
