//! Fixtures for tests only: the audit event and export that this crate's unit tests and the
//! integration tests of the store, server and CLI crates all need. It lives here, hidden, because
//! every one of those crates already depends on this one; nothing in the product calls it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::audit::{AuditEvent, Checkpoint, ExportLine, GENESIS};
use sovra_crypto::KeyType;
use sovra_crypto::sign::SigningKey;

/// An unsealed audit event (`seq` and hashes empty) whose fields name `i`: actor `idp#user{i}`,
/// resource `key/{i}`, request id `req-{i}`, one millisecond after the previous one. Tests that
/// need another field say so with `AuditEvent { field, ..audit_event(i) }`.
pub fn audit_event(i: u64) -> AuditEvent {
    AuditEvent {
        seq: 0,
        time_ms: 1_700_000_000_000 + i as i64,
        org: Some("acme".into()),
        actor: format!("idp#user{i}"),
        auth_method: "jwt".into(),
        cert_fingerprint: None,
        action: "key.use".into(),
        resource: format!("key/{i}"),
        outcome: "success".into(),
        error_code: None,
        request_id: format!("req-{i}"),
        source: "127.0.0.1:5555".into(),
        hashed: Default::default(),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

/// A fresh Ed25519 audit signing key.
pub fn audit_key() -> SigningKey {
    SigningKey::from_pkcs8(KeyType::Ed25519, &KeyType::Ed25519.generate().unwrap()).unwrap()
}

/// An export as JSON lines: events 1..=`events` ([`audit_event`]) chained from [`GENESIS`],
/// with a checkpoint signed by `key` after every `checkpoint_every`th event.
pub fn export_lines(key: &SigningKey, events: u64, checkpoint_every: u64) -> Vec<String> {
    let mut lines = Vec::new();
    let mut prev = GENESIS.to_string();
    for i in 1..=events {
        let ev = audit_event(i).seal_after(i, &prev);
        prev = ev.hash.clone();
        lines.push(serde_json::to_string(&ExportLine::Event(Box::new(ev))).unwrap());
        if i % checkpoint_every == 0 {
            let cp = Checkpoint::sign(key, i, &prev, 42).unwrap();
            lines.push(serde_json::to_string(&ExportLine::Checkpoint(cp)).unwrap());
        }
    }
    lines
}
