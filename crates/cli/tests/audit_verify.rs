//! `sovra audit verify` checks an export offline with only the audit public key, and names
//! the first broken link.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TempDir, sovra_bin, text};
use sovra_core::test_support::{audit_key, export_lines};
use sovra_crypto::sign::pem_encode;
use std::path::Path;

fn run(file: &Path, key: &Path) -> (bool, String) {
    run_with(file, key, &[])
}

/// `sovra audit verify FILE --public-key KEY` followed by `extra` arguments.
fn run_with(file: &Path, key: &Path, extra: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = std::process::Command::new(sovra_bin())
        .args(["audit", "verify"])
        .arg(file)
        .arg("--public-key")
        .arg(key)
        .args(extra)
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

/// `--write-head` keeps an export's last signed head; `--since` on a later export passes only if
/// that export extends it: a log rolled back to before the kept head is caught, though the
/// shorter export is intact on its own.
#[test]
fn verify_since_catches_a_log_rolled_back_behind_a_kept_head() {
    let dir = TempDir::new("audit-verify-since");
    let key = audit_key();
    let pem = dir.path().join("audit.pem");
    std::fs::write(
        &pem,
        pem_encode("PUBLIC KEY", &key.public_key_spki_der().unwrap()),
    )
    .unwrap();
    let head = dir.path().join("head.json");
    let earlier = dir.path().join("earlier.jsonl");
    std::fs::write(&earlier, export_lines(&key, 10, 5)[..6].join("\n")).unwrap();
    let (ok, out) = run_with(&earlier, &pem, &["--write-head".as_ref(), head.as_os_str()]);
    assert!(ok, "{out}");
    assert!(
        std::fs::read_to_string(&head)
            .unwrap()
            .contains("\"seq\":5")
    );

    let later = dir.path().join("later.jsonl");
    std::fs::write(&later, export_lines(&key, 10, 5).join("\n")).unwrap();
    let since = ["--since".as_ref(), head.as_os_str()];
    let (ok, out) = run_with(&later, &pem, &since);
    assert!(ok, "{out}");
    assert!(
        out.contains("extends the head seen earlier (sequence 5)"),
        "{out}"
    );

    let rolled_back = dir.path().join("rolled-back.jsonl");
    std::fs::write(&rolled_back, export_lines(&key, 4, 5).join("\n")).unwrap();
    let (ok, out) = run(&rolled_back, &pem);
    assert!(ok, "intact on its own: {out}");
    let (ok, out) = run_with(&rolled_back, &pem, &since);
    assert!(!ok, "{out}");
    assert!(out.contains("rolled back"), "{out}");
}
