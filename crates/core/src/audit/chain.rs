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
use std::collections::BTreeMap;

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
    /// Keyed hashes (hex HMAC-SHA256 under the audit HMAC key) of sensitive values the request
    /// carried, by name (`token`, `context`): an auditor can match a known value through
    /// `POST /api/v1/audit/hash` without the log revealing it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hashed: BTreeMap<String, String>,
    /// Hex SHA-256 of the previous event ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// Hex SHA-256 linking `seq`, the digest of this event's fields and `prev_hash`.
    pub hash: String,
}

/// An event of another organization in an export: only what the chain needs, so an org's
/// auditor can verify the whole chain without seeing other orgs' events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactedEvent {
    pub seq: u64,
    /// Hex SHA-256 of the hidden fields ([`AuditEvent::body_digest`]).
    pub body_digest: String,
    pub prev_hash: String,
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
    Redacted(RedactedEvent),
    Checkpoint(Checkpoint),
}

/// The encoding of [`context`], written part by part into one buffer: an event's digest is
/// taken on every audited request, and building each part (and the parts' list) first cost a
/// dozen allocations.
struct Parts(Vec<u8>);

impl Parts {
    fn new(purpose: &str, capacity: usize) -> Parts {
        let mut parts = Parts(Vec::with_capacity(capacity));
        parts.part(purpose.as_bytes());
        parts
    }

    /// A 4-byte big-endian length, then the bytes.
    fn part(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    /// An optional value: absent and empty must differ, so a presence byte precedes the value.
    fn optional(&mut self, value: &Option<String>) {
        match value {
            None => self.part(&[0]),
            Some(v) => {
                self.0
                    .extend_from_slice(&(1 + v.len() as u32).to_be_bytes());
                self.0.push(1);
                self.0.extend_from_slice(v.as_bytes());
            }
        }
    }

    /// One part made of what `write` appends, its length filled in afterwards.
    fn nested(&mut self, write: impl FnOnce(&mut Parts)) {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        write(self);
        let len = (self.0.len() - at - 4) as u32;
        self.0[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

impl AuditEvent {
    /// SHA-256 of every field except the chain links (seq, prev_hash, hash): the hex digest of
    /// `context("sovra/audit-event/v1", [time_ms, org?, actor, auth_method, cert_fingerprint?,
    /// action, resource, outcome, error_code?, request_id, source, hashed])`, where an optional
    /// field is a presence byte and its value, and `hashed` is each (name, value) pair's
    /// `context("", [name, value])`, in name order.
    pub fn body_digest(&self) -> String {
        let strings = [
            self.org.as_deref(),
            Some(self.actor.as_str()),
            Some(self.auth_method.as_str()),
            self.cert_fingerprint.as_deref(),
            Some(self.action.as_str()),
            Some(self.resource.as_str()),
            Some(self.outcome.as_str()),
            self.error_code.as_deref(),
            Some(self.request_id.as_str()),
            Some(self.source.as_str()),
        ];
        let hashed_len: usize = self
            .hashed
            .iter()
            .map(|(k, v)| 12 + k.len() + v.len())
            .sum();
        let capacity = 128 + strings.iter().flatten().map(|s| s.len()).sum::<usize>() + hashed_len;
        let mut parts = Parts::new("sovra/audit-event/v1", capacity);
        parts.part(&self.time_ms.to_be_bytes());
        parts.optional(&self.org);
        parts.part(self.actor.as_bytes());
        parts.part(self.auth_method.as_bytes());
        parts.optional(&self.cert_fingerprint);
        parts.part(self.action.as_bytes());
        parts.part(self.resource.as_bytes());
        parts.part(self.outcome.as_bytes());
        parts.optional(&self.error_code);
        parts.part(self.request_id.as_bytes());
        parts.part(self.source.as_bytes());
        parts.nested(|hashed| {
            for (k, v) in &self.hashed {
                hashed.part(b"");
                hashed.part(k.as_bytes());
                hashed.part(v.as_bytes());
            }
        });
        hex(&sovra_crypto::sha256(&parts.0))
    }

    /// The hash this event must carry, given its fields and `prev_hash`.
    pub fn compute_hash(&self) -> String {
        link_hash(self.seq, &self.body_digest(), &self.prev_hash)
    }

    /// The event as another organization's auditor sees it in an export.
    pub fn redacted(&self) -> RedactedEvent {
        RedactedEvent {
            seq: self.seq,
            body_digest: self.body_digest(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        }
    }

    /// Links this event after `prev_hash` at `seq`, given its [`body_digest`](Self::body_digest)
    /// (computed beforehand, outside whatever lock orders the chain).
    pub fn link_after(&mut self, seq: u64, prev_hash: String, body_digest: &str) {
        self.seq = seq;
        self.hash = link_hash(seq, body_digest, &prev_hash);
        self.prev_hash = prev_hash;
    }

    /// Links this event after `prev_hash` at `seq` and sets its hash.
    /// An event the node itself raises (an alarm about the chain): no caller, no request, the
    /// problem in `error_code`.
    pub fn node_alarm(action: &str, problem: String, time_ms: i64) -> AuditEvent {
        AuditEvent {
            seq: 0,
            time_ms,
            org: None,
            actor: "sovra".into(),
            auth_method: "none".into(),
            cert_fingerprint: None,
            action: action.into(),
            resource: "audit".into(),
            outcome: "failure".into(),
            error_code: Some(problem),
            request_id: String::new(),
            source: "node".into(),
            hashed: Default::default(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    pub fn seal_after(mut self, seq: u64, prev_hash: &str) -> AuditEvent {
        let digest = self.body_digest();
        self.link_after(seq, prev_hash.to_string(), &digest);
        self
    }
}

/// `events` sealed into the chain one after another, the first after `seq` and `prev_hash`.
pub fn seal_chain(events: Vec<AuditEvent>, mut seq: u64, prev_hash: &str) -> Vec<AuditEvent> {
    let mut prev = prev_hash.to_string();
    events
        .into_iter()
        .map(|ev| {
            seq += 1;
            let ev = ev.seal_after(seq, &prev);
            prev.clone_from(&ev.hash);
            ev
        })
        .collect()
}

impl RedactedEvent {
    /// The hash this link must carry, given its body digest and `prev_hash`.
    pub fn compute_hash(&self) -> String {
        link_hash(self.seq, &self.body_digest, &self.prev_hash)
    }
}

impl Checkpoint {
    pub fn signed_bytes(seq: u64, head: &str, time_ms: i64) -> Vec<u8> {
        context(
            "sovra/audit-checkpoint/v1",
            &[&seq.to_be_bytes(), head.as_bytes(), &time_ms.to_be_bytes()],
        )
    }

    /// Whether the signature is the audit key's (SPKI DER) over this checkpoint.
    pub fn verifies(&self, public_key_spki: &[u8]) -> bool {
        use base64::Engine;
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(&self.signature) else {
            return false;
        };
        let msg = Self::signed_bytes(self.seq, &self.head, self.time_ms);
        verify_spki(
            SignatureAlgorithm::Ed25519,
            public_key_spki,
            SignInput::Message(&msg),
            &sig,
        )
        .unwrap_or(false)
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

/// One link of the chain: `context("sovra/audit-link/v1", [seq, body digest, prev_hash])`.
fn link_hash(seq: u64, body_digest: &str, prev_hash: &str) -> String {
    let mut parts = Parts::new("sovra/audit-link/v1", 180);
    parts.part(&seq.to_be_bytes());
    parts.part(body_digest.as_bytes());
    parts.part(prev_hash.as_bytes());
    hex(&sovra_crypto::sha256(&parts.0))
}

pub(crate) fn hex(b: &[u8]) -> String {
    ::hex::encode(b)
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Sequence of the first event: 1 when the export starts at the beginning of the chain.
    /// A later start is anchored only by that event's `prev_hash`.
    pub first_seq: u64,
    /// Events verified, full or redacted.
    pub events: u64,
    /// Events of other organizations, verified as links only.
    pub redacted: u64,
    pub checkpoints: u64,
    /// Highest sequence covered by a valid checkpoint.
    pub last_checkpoint_seq: Option<u64>,
    /// That checkpoint: the signed head an auditor keeps, to check a later export against
    /// ([`verify_export_since`]).
    pub last_checkpoint: Option<Checkpoint>,
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

struct ChainState {
    prev_hash: Option<String>,
    next_seq: Option<u64>,
    heads: Vec<(u64, String)>,
    report: VerifyReport,
}

/// Checks one event (full or redacted) against the chain so far and appends it.
fn link(
    st: &mut ChainState,
    line: usize,
    seq: u64,
    computed: &str,
    prev: &str,
    hash: &str,
) -> Result<(), VerifyError> {
    let fail = |problem: String| Err(VerifyError { line, problem });
    if let Some(expected) = st.next_seq
        && seq != expected
    {
        return fail(if seq > expected {
            format!(
                "sequence jumps from {} to {seq}: events deleted",
                expected - 1
            )
        } else {
            format!(
                "sequence {seq} after {}: events reordered or duplicated",
                expected - 1
            )
        });
    }
    if computed != hash {
        return fail(format!(
            "event {seq} was altered: its hash does not match its fields"
        ));
    }
    match &st.prev_hash {
        Some(p) if p != prev => {
            return fail(format!(
                "event {seq} does not link to the previous event (chain broken)"
            ));
        }
        None if seq == 1 && prev != GENESIS => {
            return fail("event 1 does not start from the genesis hash".into());
        }
        _ => {}
    }
    // No server reaches the largest sequence: only a forged export holds it.
    let Some(next) = seq.checked_add(1) else {
        return fail(format!("sequence {seq} is out of range"));
    };
    if st.next_seq.is_none() {
        st.report.first_seq = seq;
    }
    st.prev_hash = Some(hash.to_string());
    st.next_seq = Some(next);
    st.heads.push((seq, hash.to_string()));
    st.report.events += 1;
    st.report.unsigned_tail += 1;
    Ok(())
}

/// Verifies an export against the audit public key (SPKI DER).
pub fn verify_export(text: &str, public_key_spki: &[u8]) -> Result<VerifyReport, VerifyError> {
    verify(text, public_key_spki, None)
}

/// [`verify_export`], and that the export extends `seen`, a signed head kept from an earlier
/// export (its last checkpoint): the export holds `seen`'s event with that hash. A log rolled
/// back to before `seen`, or rewritten up to it, fails though it is consistent in itself. A
/// `seen` whose signature does not verify fails at line 0.
pub fn verify_export_since(
    text: &str,
    public_key_spki: &[u8],
    seen: &Checkpoint,
) -> Result<VerifyReport, VerifyError> {
    if !seen.verifies(public_key_spki) {
        return Err(VerifyError {
            line: 0,
            problem: "the head seen earlier is not signed by this audit key".into(),
        });
    }
    verify(text, public_key_spki, Some(seen))
}

fn verify(
    text: &str,
    public_key_spki: &[u8],
    seen: Option<&Checkpoint>,
) -> Result<VerifyReport, VerifyError> {
    let fail = |line: usize, problem: String| Err(VerifyError { line, problem });
    let mut st = ChainState {
        prev_hash: None,
        next_seq: None,
        heads: Vec::new(),
        report: VerifyReport {
            first_seq: 0,
            events: 0,
            redacted: 0,
            checkpoints: 0,
            last_checkpoint_seq: None,
            last_checkpoint: None,
            unsigned_tail: 0,
        },
    };
    let rewritten = |line: usize, seq: u64| {
        fail(
            line,
            format!("event {seq} differs from the head seen earlier: the log was rewritten"),
        )
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
                let computed = ev.compute_hash();
                link(&mut st, line, ev.seq, &computed, &ev.prev_hash, &ev.hash)?;
                if seen.is_some_and(|s| s.seq == ev.seq && s.head != ev.hash) {
                    return rewritten(line, ev.seq);
                }
            }
            ExportLine::Redacted(r) => {
                let computed = r.compute_hash();
                link(&mut st, line, r.seq, &computed, &r.prev_hash, &r.hash)?;
                if seen.is_some_and(|s| s.seq == r.seq && s.head != r.hash) {
                    return rewritten(line, r.seq);
                }
                st.report.redacted += 1;
            }
            ExportLine::Checkpoint(cp) => {
                if !cp.verifies(public_key_spki) {
                    return fail(
                        line,
                        format!(
                            "checkpoint at sequence {} has an invalid signature (forged)",
                            cp.seq
                        ),
                    );
                }
                match st.heads.iter().rev().find(|(s, _)| *s == cp.seq) {
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
                let r = &mut st.report;
                r.checkpoints += 1;
                r.last_checkpoint_seq = Some(cp.seq);
                r.last_checkpoint = Some(cp.clone());
                r.unsigned_tail = st.next_seq.map(|n| n - 1 - cp.seq).unwrap_or(0);
            }
        }
    }
    if st.report.events == 0 {
        return fail(last_line.max(1), "the export holds no audit events".into());
    }
    if let Some(seen) = seen {
        let last = st.next_seq.map_or(0, |n| n - 1);
        if st.report.first_seq > seen.seq {
            return fail(
                1,
                format!(
                    "the export starts at sequence {}, after the head seen earlier ({}): export from sequence {} or earlier",
                    st.report.first_seq, seen.seq, seen.seq
                ),
            );
        }
        if last < seen.seq {
            return fail(
                last_line,
                format!(
                    "the export ends at sequence {last}, before the head seen earlier ({}): the log was rolled back or the export truncated",
                    seen.seq
                ),
            );
        }
    }
    Ok(st.report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{audit_event, audit_key, export_lines};

    /// 10 events with checkpoints after events 5 and 10, as JSON lines.
    fn export(key: &SigningKey) -> Vec<String> {
        export_lines(key, 10, 5)
    }

    fn keypair() -> (SigningKey, Vec<u8>) {
        let k = audit_key();
        let spki = k.public_key_spki_der().unwrap();
        (k, spki)
    }

    fn verify(lines: &[String], spki: &[u8]) -> Result<VerifyReport, VerifyError> {
        verify_export(&lines.join("\n"), spki)
    }

    /// An auditor keeps the last signed head of an export; a later export must extend it. A
    /// rolled-back log (the later export ends before it), one rewritten and re-signed up to it
    /// (a consistent chain with another hash there), a forged head and an export starting past
    /// it all fail; the honest later export passes.
    #[test]
    fn a_later_export_must_extend_the_head_seen_earlier() {
        let (key, spki) = keypair();
        let earlier = export_lines(&key, 5, 5);
        let seen = verify(&earlier, &spki).unwrap().last_checkpoint.unwrap();
        assert_eq!(seen.seq, 5);
        let later = export(&key);
        let r = verify_export_since(&later.join("\n"), &spki, &seen).unwrap();
        assert_eq!(r.last_checkpoint_seq, Some(10));

        // Rolled back to event 4: consistent on its own, not an extension of the head seen.
        let rolled_back: Vec<String> = later[..4].to_vec();
        verify(&rolled_back, &spki).unwrap();
        let e = verify_export_since(&rolled_back.join("\n"), &spki, &seen).unwrap_err();
        assert!(e.problem.contains("rolled back"), "{e}");

        // Rewritten from event 2 on, hashes recomputed and re-signed with the real key.
        let mut prev = GENESIS.to_string();
        let mut rewritten = Vec::new();
        for i in 1..=10u64 {
            let mut ev = audit_event(i);
            if i == 2 {
                ev.actor = "idp#mallory".into();
            }
            let ev = ev.seal_after(i, &prev);
            prev = ev.hash.clone();
            rewritten.push(serde_json::to_string(&ExportLine::Event(Box::new(ev))).unwrap());
        }
        let cp = Checkpoint::sign(&key, 10, &prev, 43).unwrap();
        rewritten.push(serde_json::to_string(&ExportLine::Checkpoint(cp)).unwrap());
        verify(&rewritten, &spki).unwrap();
        let e = verify_export_since(&rewritten.join("\n"), &spki, &seen).unwrap_err();
        assert!(e.problem.contains("rewritten"), "{e}");

        // A head file that was not signed by this key.
        let forged = Checkpoint {
            head: "00".repeat(32),
            ..seen.clone()
        };
        let e = verify_export_since(&later.join("\n"), &spki, &forged).unwrap_err();
        assert_eq!(e.line, 0, "{e}");
        // An export that starts after the head cannot show it extends it.
        let e = verify_export_since(&later[7..].join("\n"), &spki, &seen).unwrap_err();
        assert!(e.problem.contains("starts at sequence"), "{e}");
    }

    /// The chain's format is what every stored chain and every export was written in: these
    /// digests and links were computed independently (Python's `hashlib` and `struct`, from the
    /// format as documented in docs/audit.md), not by this code.
    #[test]
    fn event_digests_and_links_match_an_independent_computation() {
        let a = AuditEvent {
            seq: 0,
            time_ms: 1_764_000_000_123,
            org: Some("org-1".into()),
            actor: "user:alice".into(),
            auth_method: "jwt".into(),
            cert_fingerprint: None,
            action: "keys.encrypt".into(),
            resource: "key/k1".into(),
            outcome: "success".into(),
            error_code: None,
            request_id: "req-1".into(),
            source: "127.0.0.1".into(),
            hashed: BTreeMap::from([
                ("token".to_string(), "ab".repeat(32)),
                ("context".to_string(), "cd".repeat(32)),
            ]),
            prev_hash: String::new(),
            hash: String::new(),
        };
        // Absent and empty differ; a negative time; no keyed hashes.
        let b = AuditEvent {
            time_ms: -5,
            org: None,
            actor: String::new(),
            auth_method: "none".into(),
            cert_fingerprint: Some(String::new()),
            action: "decrypt".into(),
            resource: "none".into(),
            outcome: "failure".into(),
            error_code: Some("bad_ciphertext".into()),
            request_id: String::new(),
            source: "::1".into(),
            hashed: BTreeMap::new(),
            ..a.clone()
        };
        assert_eq!(
            a.body_digest(),
            "1e2731bcd706f0d0e71a2c1877d9ca09f4e905071dd7362fb961674989e7e2cf"
        );
        assert_eq!(
            b.body_digest(),
            "4e413968bf577c0da175e8c27da9d24ecbfa57651863d2a3f4f9dc41fac3b58f"
        );
        let sealed = seal_chain(vec![a, b], 0, GENESIS);
        assert_eq!(
            sealed[0].hash,
            "6a75cab4632626fa4d15947a8e3419698e57eb7299ddaffe14e86dc8ee82ac01"
        );
        assert_eq!(
            sealed[1].hash,
            "a98b86f0c50e54a8ccaa86647fe9a5e1f848750353f553c2c54a38f7f5bd1181"
        );
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
    fn redacted_events_of_other_orgs_still_verify_as_links() {
        let (k, spki) = keypair();
        let mut lines = export(&k);
        let redact = |l: &str| {
            let ExportLine::Event(ev) = serde_json::from_str(l).unwrap() else {
                panic!()
            };
            serde_json::to_string(&ExportLine::Redacted(ev.redacted())).unwrap()
        };
        lines[1] = redact(&lines[1]);
        lines[7] = redact(&lines[7]);
        assert!(
            !lines[1].contains("idp#user2"),
            "a redacted line hides the fields"
        );
        let r = verify(&lines, &spki).unwrap();
        assert_eq!((r.events, r.redacted, r.checkpoints), (10, 2, 2));
        // A forged digest in a redacted line breaks its hash.
        lines[1] = lines[1].replacen("\"body_digest\":\"", "\"body_digest\":\"00", 1);
        let e = verify(&lines, &spki).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.problem.contains("event 2 was altered"), "{e}");
    }

    #[test]
    fn an_export_may_start_mid_chain_and_says_so() {
        let (k, spki) = keypair();
        let lines = export(&k);
        // Events 7..10 and the checkpoint at 10.
        let r = verify(&lines[7..], &spki).unwrap();
        assert_eq!(
            (r.first_seq, r.events, r.last_checkpoint_seq),
            (7, 4, Some(10))
        );
        // A chain that claims to begin at event 1 must start from the genesis hash.
        let mut ev = audit_event(1).seal_after(1, "ab");
        ev.hash = ev.compute_hash();
        let line = serde_json::to_string(&ExportLine::Event(Box::new(ev))).unwrap();
        let e = verify_export(&line, &spki).unwrap_err();
        assert!(e.problem.contains("genesis"), "{e}");
    }

    #[test]
    fn an_altered_keyed_hash_is_named() {
        let (k, spki) = keypair();
        let mut prev = GENESIS.to_string();
        let mut lines = Vec::new();
        for i in 1..=3 {
            let mut ev = audit_event(i);
            ev.hashed.insert("token".into(), format!("{i:064x}"));
            let ev = ev.seal_after(i, &prev);
            prev = ev.hash.clone();
            lines.push(serde_json::to_string(&ExportLine::Event(Box::new(ev))).unwrap());
        }
        lines.push(
            serde_json::to_string(&ExportLine::Checkpoint(
                Checkpoint::sign(&k, 3, &prev, 1).unwrap(),
            ))
            .unwrap(),
        );
        verify(&lines, &spki).unwrap();
        lines[1] = lines[1].replace(&format!("{:064x}", 2), &format!("{:064x}", 9));
        let e = verify(&lines, &spki).unwrap_err();
        assert!(e.problem.contains("event 2 was altered"), "{e}");
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

    /// The sequence after the largest one overflowed (seed `repaired_bigseq` of the audit_export
    /// fuzz target).
    #[test]
    fn the_largest_sequence_is_an_error_not_an_overflow() {
        let (_, spki) = keypair();
        let last = audit_event(1).seal_after(u64::MAX, GENESIS);
        let line = serde_json::to_string(&ExportLine::Event(Box::new(last))).unwrap();
        let e = verify_export(&line, &spki).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.problem.contains("sequence"), "{e}");
    }
}
