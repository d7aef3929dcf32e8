//! `sovra audit verify` checks an export offline with only the audit public key, and names
//! the first broken link.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TempDir, sovra_bin, text};
use sovra_core::test_support::{audit_key, export_lines};
use sovra_crypto::sign::pem_encode;
use std::path::Path;

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
    let key = audit_key();
    let pem = dir.path().join("audit.pem");
    std::fs::write(
        &pem,
        pem_encode("PUBLIC KEY", &key.public_key_spki_der().unwrap()),
    )
    .unwrap();
    let file = dir.path().join("export.jsonl");

    // Four events and one checkpoint, after the last.
    let lines = export_lines(&key, 4, 4);
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (ok, out) = run(&file, &pem);
    assert!(ok, "{out}");
    assert!(
        out.contains("4 events, 1 checkpoints, signed through sequence 4"),
        "{out}"
    );

    let mut altered = lines.clone();
    altered[1] = altered[1].replace("idp#user2", "idp#mallory");
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
