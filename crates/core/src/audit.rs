//! The audit chain's format and its offline verifier.
//!
//! Each event carries its sequence number and the hash of the previous event; its own hash
//! covers every field (length-prefixed, so no two events encode alike) and the previous hash.
//! Checkpoints sign (sequence, chain head, time) with the server's Ed25519 audit key. An export
//! is JSON lines of events and checkpoints in sequence order; [`verify_export`] checks it with
//! only the audit public key and names the first broken link.

use serde::{Deserialize, Serialize};
use sovra_crypto::sign::{SignInput, SignatureAlgorithm, SigningKey, verify_spki};
use sovra_crypto::wrap::context;

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub seq: u64,
    pub time_ms: i64,
    pub org: Option<String>,
    pub actor: String,
    pub auth_method: String,
    pub cert_fingerprint: Option<String>,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub error_code: Option<String>,
    pub request_id: String,
    pub source: String,
    /// Hex SHA-256 of the previous event ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of this event's fields and `prev_hash`.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: String,
    pub time_ms: i64,
    /// Base64 Ed25519 signature over [`Checkpoint::signed_bytes`].
    pub signature: String,
}

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportLine {
    Event(Box<AuditEvent>),
    Checkpoint(Checkpoint),
}

fn opt(s: &Option<String>) -> Vec<u8> {
    // Absent and empty must differ: a presence byte precedes the value.
    match s {
        None => vec![0],
        Some(v) => [&[1u8][..], v.as_bytes()].concat(),
    }
}

impl AuditEvent {
    /// The hash this event must carry, given its fields and `prev_hash`.
    pub fn compute_hash(&self) -> String {
        let bytes = context(
            "sovra/audit-event/v1",
            &[
                &self.seq.to_be_bytes(),
                &self.time_ms.to_be_bytes(),
                &opt(&self.org),
                self.actor.as_bytes(),
                self.auth_method.as_bytes(),
                &opt(&self.cert_fingerprint),
                self.action.as_bytes(),
                self.resource.as_bytes(),
                self.outcome.as_bytes(),
                &opt(&self.error_code),
                self.request_id.as_bytes(),
                self.source.as_bytes(),
                self.prev_hash.as_bytes(),
            ],
        );
        hex(&sovra_crypto::sha256(&bytes))
    }

    /// Links this event after `prev_hash` at `seq` and sets its hash.
    pub fn seal_after(mut self, seq: u64, prev_hash: &str) -> AuditEvent {
        self.seq = seq;
        self.prev_hash = prev_hash.to_string();
        self.hash = self.compute_hash();
        self
    }
}

impl Checkpoint {
    pub fn signed_bytes(seq: u64, head: &str, time_ms: i64) -> Vec<u8> {
        context(
            "sovra/audit-checkpoint/v1",
            &[&seq.to_be_bytes(), head.as_bytes(), &time_ms.to_be_bytes()],
        )
    }

    pub fn sign(
        key: &SigningKey,
        seq: u64,
        head: &str,
        time_ms: i64,
    ) -> Result<Checkpoint, sovra_crypto::CryptoError> {
        use base64::Engine;
        let sig = key.sign(
            SignatureAlgorithm::Ed25519,
            SignInput::Message(&Self::signed_bytes(seq, head, time_ms)),
        )?;
        Ok(Checkpoint {
            seq,
            head: head.to_string(),
            time_ms,
            signature: base64::engine::general_purpose::STANDARD.encode(sig),
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub checkpoints: u64,
    /// Highest sequence covered by a valid checkpoint.
    pub last_checkpoint_seq: Option<u64>,
    /// Events after the last checkpoint: intact as a chain, not yet signed.
    pub unsigned_tail: u64,
}

/// The first broken link, with the 1-based line of the export where it shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct VerifyError {
    pub line: usize,
    pub problem: String,
}

/// Verifies an export against the audit public key (SPKI DER).
pub fn verify_export(text: &str, public_key_spki: &[u8]) -> Result<VerifyReport, VerifyError> {
    let fail = |line: usize, problem: String| Err(VerifyError { line, problem });
    let mut prev_hash = GENESIS.to_string();
    let mut next_seq: Option<u64> = None;
    let mut heads: Vec<(u64, String)> = Vec::new();
    let mut report = VerifyReport {
        events: 0,
        checkpoints: 0,
        last_checkpoint_seq: None,
        unsigned_tail: 0,
    };
    let mut last_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        last_line = line;
        if raw.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = match serde_json::from_str(raw) {
            Ok(p) => p,
            Err(e) => return fail(line, format!("not an audit export line: {e}")),
        };
        match parsed {
            ExportLine::Event(ev) => {
                if let Some(expected) = next_seq
                    && ev.seq != expected
                {
                    return fail(
                        line,
                        if ev.seq > expected {
                            format!(
                                "sequence jumps from {} to {}: events deleted",
                                expected - 1,
                                ev.seq
                            )
                        } else {
                            format!(
                                "sequence {} after {}: events reordered or duplicated",
                                ev.seq,
                                expected - 1
                            )
                        },
                    );
                }
                if ev.compute_hash() != ev.hash {
                    return fail(
                        line,
                        format!(
                            "event {} was altered: its hash does not match its fields",
                            ev.seq
                        ),
                    );
                }
                if ev.prev_hash != prev_hash {
                    return fail(
                        line,
                        format!(
                            "event {} does not link to the previous event (chain broken)",
                            ev.seq
                        ),
                    );
                }
                prev_hash = ev.hash.clone();
                next_seq = Some(ev.seq + 1);
                heads.push((ev.seq, ev.hash));
                report.events += 1;
                report.unsigned_tail += 1;
            }
            ExportLine::Checkpoint(cp) => {
                use base64::Engine;
                let sig = base64::engine::general_purpose::STANDARD
                    .decode(&cp.signature)
                    .unwrap_or_default();
                let msg = Checkpoint::signed_bytes(cp.seq, &cp.head, cp.time_ms);
                let valid = verify_spki(
                    SignatureAlgorithm::Ed25519,
                    public_key_spki,
                    SignInput::Message(&msg),
                    &sig,
                )
                .unwrap_or(false);
                if !valid {
                    return fail(
                        line,
                        format!(
                            "checkpoint at sequence {} has an invalid signature (forged)",
                            cp.seq
                        ),
                    );
                }
                match heads.iter().rev().find(|(s, _)| *s == cp.seq) {
                    Some((_, h)) if *h == cp.head => {}
                    Some(_) => {
                        return fail(
                            line,
                            format!("checkpoint at sequence {} signs another chain head", cp.seq),
                        );
                    }
                    None => {
                        return fail(
                            line,
                            format!(
                                "checkpoint covers sequence {} but that event is missing: export truncated",
                                cp.seq
                            ),
                        );
                    }
                }
                report.checkpoints += 1;
                report.last_checkpoint_seq = Some(cp.seq);
                report.unsigned_tail = next_seq.map(|n| n - 1 - cp.seq).unwrap_or(0);
            }
        }
    }
    if report.events == 0 {
        return fail(last_line.max(1), "the export holds no audit events".into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sovra_crypto::KeyType;

    fn event(i: u64) -> AuditEvent {
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
            source: "127.0.0.1".into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// 10 events with checkpoints after events 5 and 10, as JSON lines.
    fn export(key: &SigningKey) -> Vec<String> {
        let mut lines = Vec::new();
        let mut prev = GENESIS.to_string();
        for i in 1..=10 {
            let ev = event(i).seal_after(i, &prev);
            prev = ev.hash.clone();
            lines.push(serde_json::to_string(&ExportLine::Event(Box::new(ev))).unwrap());
            if i % 5 == 0 {
                let cp = Checkpoint::sign(key, i, &prev, 42).unwrap();
                lines.push(serde_json::to_string(&ExportLine::Checkpoint(cp)).unwrap());
            }
        }
        lines
    }

    fn keypair() -> (SigningKey, Vec<u8>) {
        let k = SigningKey::from_pkcs8(KeyType::Ed25519, &KeyType::Ed25519.generate().unwrap())
            .unwrap();
        let spki = k.public_key_spki_der().unwrap();
        (k, spki)
    }

    fn verify(lines: &[String], spki: &[u8]) -> Result<VerifyReport, VerifyError> {
        verify_export(&lines.join("\n"), spki)
    }

    #[test]
    fn an_intact_export_verifies() {
        let (k, spki) = keypair();
        let r = verify(&export(&k), &spki).unwrap();
        assert_eq!(
            (
                r.events,
                r.checkpoints,
                r.last_checkpoint_seq,
                r.unsigned_tail
            ),
            (10, 2, Some(10), 0)
        );
    }

    #[test]
    fn an_altered_field_is_named() {
        let (k, spki) = keypair();
        let mut lines = export(&k);
        lines[2] = lines[2].replace("\"outcome\":\"success\"", "\"outcome\":\"denied\"");
        let e = verify(&lines, &spki).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.problem.contains("event 3 was altered"), "{e}");
    }

    #[test]
    fn a_deleted_row_is_named() {
        let (k, spki) = keypair();
        let mut lines = export(&k);
        lines.remove(3); // event 4
        let e = verify(&lines, &spki).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.problem.contains("jumps from 3 to 5"), "{e}");
    }

    #[test]
    fn reordered_rows_are_named() {
        let (k, spki) = keypair();
        let mut lines = export(&k);
        lines.swap(1, 2);
        let e = verify(&lines, &spki).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.problem.contains("jumps from 1 to 3"), "{e}");
    }

    #[test]
    fn a_rehashed_event_still_breaks_the_chain() {
        // An attacker who edits an event and recomputes its hash breaks the next link.
        let (k, spki) = keypair();
        let mut lines = export(&k);
        let ExportLine::Event(mut ev) = serde_json::from_str(&lines[1]).unwrap() else {
            panic!()
        };
        ev.actor = "someone-else".into();
        ev.hash = ev.compute_hash();
        lines[1] = serde_json::to_string(&ExportLine::Event(ev)).unwrap();
        let e = verify(&lines, &spki).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.problem.contains("event 3 does not link"), "{e}");
    }

    #[test]
    fn a_truncated_tail_is_named() {
        let (k, spki) = keypair();
        let mut lines = export(&k);
        // Drop events 9 and 10 but keep the final checkpoint.
        let last = lines.pop().unwrap();
        lines.truncate(lines.len() - 2);
        lines.push(last);
        let e = verify(&lines, &spki).unwrap_err();
        assert!(e.problem.contains("export truncated"), "{e}");
        // Without any checkpoint after them, dropped tail events show as an unsigned tail
        // shrinking; an intact chain after the last checkpoint is reported as unsigned.
        let mut lines = export(&k);
        lines.pop();
        let r = verify(&lines, &spki).unwrap();
        assert_eq!((r.last_checkpoint_seq, r.unsigned_tail), (Some(5), 5));
    }

    #[test]
    fn a_forged_checkpoint_is_named() {
        let (k, spki) = keypair();
        let (other, _) = keypair();
        let mut lines = export(&k);
        let ExportLine::Checkpoint(cp) = serde_json::from_str(&lines[5]).unwrap() else {
            panic!()
        };
        let forged = Checkpoint::sign(&other, cp.seq, &cp.head, cp.time_ms).unwrap();
        lines[5] = serde_json::to_string(&ExportLine::Checkpoint(forged)).unwrap();
        let e = verify(&lines, &spki).unwrap_err();
        assert_eq!(e.line, 6);
        assert!(e.problem.contains("invalid signature"), "{e}");
    }

    #[test]
    fn garbage_and_empty_exports_are_clear_errors() {
        let (_, spki) = keypair();
        assert!(
            verify_export("", &spki)
                .unwrap_err()
                .problem
                .contains("no audit events")
        );
        let e = verify_export("{not json", &spki).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.problem.contains("not an audit export line"), "{e}");
    }
}

/// Events queued for the writer, each with the channel its request waits on.
type Pending = (
    AuditEvent,
    tokio::sync::oneshot::Sender<Result<u64, crate::StoreError>>,
);

/// Group commit: requests hand their event to one writer task, which appends everything queued
/// in one transaction and then answers each waiter with its sequence number. A request is
/// answered only after its event is durable, and one commit serves many requests.
#[derive(Clone)]
pub struct AuditWriter {
    tx: tokio::sync::mpsc::Sender<Pending>,
}

/// Most events in one commit.
const MAX_BATCH: usize = 512;

impl AuditWriter {
    /// Starts the writer task on the current runtime.
    pub fn start(store: std::sync::Arc<dyn crate::Store>) -> AuditWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Pending>(8192);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let (events, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let result = append_with_retry(store.as_ref(), events).await;
                match result {
                    Ok(stored) => {
                        for (ev, w) in stored.iter().zip(waiters) {
                            let _ = w.send(Ok(ev.seq));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit append failed; the requests fail with it");
                        for w in waiters {
                            let _ = w.send(Err(crate::StoreError::Unavailable(
                                "audit log unavailable".into(),
                            )));
                        }
                    }
                }
            }
        });
        AuditWriter { tx }
    }

    /// Appends one event and returns its sequence number once it is durable.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, crate::StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send((event, done))
            .await
            .map_err(|_| crate::StoreError::Unavailable("audit writer stopped".into()))?;
        wait.await
            .map_err(|_| crate::StoreError::Unavailable("audit writer stopped".into()))?
    }
}

/// Another node appending at the same moment makes the commit conflict; retry on the new head.
async fn append_with_retry(
    store: &dyn crate::Store,
    events: Vec<AuditEvent>,
) -> Result<Vec<AuditEvent>, crate::StoreError> {
    let mut attempt = 0;
    loop {
        match store.append_audit(events.clone()).await {
            Err(crate::StoreError::Conflict(_)) if attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2 * attempt)).await;
            }
            other => return other,
        }
    }
}
