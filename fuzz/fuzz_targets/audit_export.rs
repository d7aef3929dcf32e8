//! Audit export lines through the offline verifier (`sovra audit verify`): hostile text as is,
//! and hostile lines repaired into a chain (hashes recomputed, links joined, checkpoints signed
//! with the audit key) so the checks behind the hashes are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sovra_core::audit::{Checkpoint, ExportLine, verify_export};
use sovra_crypto::sign::SigningKey;
use std::sync::OnceLock;

fn audit_key() -> &'static (SigningKey, Vec<u8>) {
    static K: OnceLock<(SigningKey, Vec<u8>)> = OnceLock::new();
    K.get_or_init(|| {
        // A fixed key (PKCS#8 v1 of a fixed seed), so a crashing input replays.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&[42u8; 32]);
        let pkcs8 = sovra_crypto::SecretBytes::new(der);
        let key = SigningKey::from_pkcs8(sovra_crypto::KeyType::Ed25519, &pkcs8).expect("key");
        let spki = key.public_key_spki_der().expect("spki");
        (key, spki)
    })
}

/// Each parseable line linked after the previous one and re-hashed; each checkpoint re-signed
/// over the head it names when that head exists.
fn repair(text: &str) -> String {
    let (key, _) = audit_key();
    let mut prev: Option<String> = None;
    let mut heads: Vec<(u64, String)> = Vec::new();
    let mut out = String::new();
    for raw in text.lines() {
        let line = match serde_json::from_str::<ExportLine>(raw) {
            Ok(ExportLine::Event(mut e)) => {
                if let Some(p) = &prev {
                    e.prev_hash = p.clone();
                }
                e.hash = e.compute_hash();
                prev = Some(e.hash.clone());
                heads.push((e.seq, e.hash.clone()));
                ExportLine::Event(e)
            }
            Ok(ExportLine::Redacted(mut r)) => {
                if let Some(p) = &prev {
                    r.prev_hash = p.clone();
                }
                r.hash = r.compute_hash();
                prev = Some(r.hash.clone());
                heads.push((r.seq, r.hash.clone()));
                ExportLine::Redacted(r)
            }
            Ok(ExportLine::Checkpoint(c)) => {
                let head = heads
                    .iter()
                    .rev()
                    .find(|(s, _)| *s == c.seq)
                    .map_or(c.head, |(_, h)| h.clone());
                ExportLine::Checkpoint(
                    Checkpoint::sign(key, c.seq, &head, c.time_ms).expect("sign"),
                )
            }
            Err(_) => {
                out.push_str(raw);
                out.push('\n');
                continue;
            }
        };
        out.push_str(&serde_json::to_string(&line).expect("encode"));
        out.push('\n');
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (_, spki) = audit_key();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The verifier reads the export as UTF-8 text.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let text = if mode & 1 == 1 {
        repair(text)
    } else {
        text.to_string()
    };
    if let Ok(report) = verify_export(&text, spki) {
        assert!(report.events >= 1 && report.redacted <= report.events);
        assert!(report.unsigned_tail <= report.events);
    }
});
