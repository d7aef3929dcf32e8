//! `sovra audit verify` checks an export offline with only the audit public key, and names
//! the first broken link.

mod common;

use common::{TempDir, sovra_bin, text};
use sovra_core::audit::{AuditEvent, Checkpoint, ExportLine, GENESIS};
use sovra_crypto::KeyType;
use sovra_crypto::sign::{SigningKey, pem_encode};
use std::path::Path;

fn export(key: &SigningKey) -> Vec<String> {
    let mut prev = GENESIS.to_string();
    let mut lines = Vec::new();
    for i in 1..=4u64 {
        let ev = AuditEvent {
            seq: 0,
            time_ms: 1_700_000_000_000,
            org: Some("acme".into()),
            actor: "idp#alice".into(),
            auth_method: "jwt".into(),
            cert_fingerprint: None,
            action: "key.use".into(),
            resource: format!("key/{i}"),
            outcome: "success".into(),
            error_code: None,
            request_id: format!("r{i}"),
            source: "127.0.0.1".into(),
            hashed: Default::default(),
            prev_hash: String::new(),
            hash: String::new(),
        }
        .seal_after(i, &prev);
        prev = ev.hash.clone();
        lines.push(serde_json::to_string(&ExportLine::Event(Box::new(ev))).unwrap());
    }
    let cp = Checkpoint::sign(key, 4, &prev, 1).unwrap();
    lines.push(serde_json::to_string(&ExportLine::Checkpoint(cp)).unwrap());
    lines
}

fn run(file: &Path, key: &Path) -> (bool, String) {
    let out = std::process::Command::new(sovra_bin())
        .args(["audit", "verify"])
        .arg(file)
        .arg("--public-key")
        .arg(key)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn verify_accepts_an_intact_export_and_names_the_first_broken_link() {
    let dir = TempDir::new("audit-verify");
    let key =
        SigningKey::from_pkcs8(KeyType::Ed25519, &KeyType::Ed25519.generate().unwrap()).unwrap();
    let pem = dir.path().join("audit.pem");
    std::fs::write(
        &pem,
        pem_encode("PUBLIC KEY", &key.public_key_spki_der().unwrap()),
    )
    .unwrap();
    let file = dir.path().join("export.jsonl");

    let lines = export(&key);
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (ok, out) = run(&file, &pem);
    assert!(ok, "{out}");
    assert!(
        out.contains("4 events, 1 checkpoints, signed through sequence 4"),
        "{out}"
    );

    let mut altered = lines.clone();
    altered[1] = altered[1].replace("idp#alice", "idp#mallory");
    std::fs::write(&file, altered.join("\n")).unwrap();
    let (ok, out) = run(&file, &pem);
    assert!(!ok);
    assert!(out.contains("line 2: event 2 was altered"), "{out}");

    std::fs::write(&file, "garbage\n").unwrap();
    let (ok, out) = run(&file, &pem);
    assert!(!ok);
    assert!(out.contains("line 1: not an audit export line"), "{out}");

    std::fs::write(&file, "").unwrap();
    let (ok, out) = run(&file, &pem);
    assert!(!ok);
    assert!(out.contains("no audit events"), "{out}");

    std::fs::write(&file, lines.join("\n")).unwrap();
    std::fs::write(&pem, "not a key").unwrap();
    let (ok, out) = run(&file, &pem);
    assert!(!ok);
    assert!(out.contains("not a PEM public key"), "{out}");
}
