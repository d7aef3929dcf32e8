//! Known-answer vectors of the audit formats: event encodings, body digests and link hashes
//! of a three-event chain, keyed hashes, a signed checkpoint and an export, and audit journal
//! files. The vectors come from `tests/vectors/generate.py` (Python, independent of this
//! code); docs/formats.md describes the formats.

use super::keys::AuditKeys;
use super::{AuditEvent, AuditJournal, Checkpoint, GENESIS, parse_journal, seal_chain};
use crate::format_vectors::{bytes, vectors};
use sovra_crypto::mac::MacKey;
use sovra_crypto::sign::SigningKey;
use sovra_crypto::{KeyType, SecretBytes};
use std::path::Path;

fn events(v: &serde_json::Value) -> Vec<AuditEvent> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_value(e["event"].clone()).unwrap())
        .collect()
}

#[test]
fn event_digests_and_links_match_the_vectors() {
    let v = vectors("audit.json");
    assert_eq!(v["genesis"], GENESIS);
    let sealed = events(&v);
    assert_eq!(sealed.len(), 3);
    assert!(sealed.iter().any(|e| !e.hashed.is_empty()));
    for (ev, vector) in sealed.iter().zip(v["events"].as_array().unwrap()) {
        assert_eq!(ev.body_digest(), vector["body_digest"], "event {}", ev.seq);
        assert_eq!(ev.redacted().body_digest, vector["body_digest"]);
        assert_eq!(ev.compute_hash(), ev.hash, "event {}", ev.seq);
    }
    // Sealing the unlinked events from the genesis hash gives Python's links.
    let unlinked: Vec<AuditEvent> = sealed
        .iter()
        .map(|e| AuditEvent {
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            ..e.clone()
        })
        .collect();
    assert_eq!(seal_chain(unlinked, 0, GENESIS), sealed);
}

#[test]
fn keyed_hashes_checkpoint_and_export_match_the_vectors() {
    let v = vectors("audit.json");
    let cp = &v["checkpoint"];
    let signing = SigningKey::from_pkcs8(
        KeyType::Ed25519,
        &SecretBytes::new(bytes(&cp["signing_key_pkcs8"])),
    )
    .unwrap();
    let spki = signing.public_key_spki_der().unwrap();
    assert_eq!(spki, bytes(&cp["public_key_spki"]));
    let kh = &v["keyed_hashes"];
    let keys = AuditKeys::from_parts(
        SigningKey::from_pkcs8(
            KeyType::Ed25519,
            &SecretBytes::new(bytes(&cp["signing_key_pkcs8"])),
        )
        .unwrap(),
        MacKey::new(&bytes(&kh["hmac_key"])).unwrap(),
        spki.clone(),
    );
    let sealed = events(&v);
    for c in kh["cases"].as_array().unwrap() {
        let field = c["field"].as_str().unwrap();
        let hash = keys.keyed_hash(field, &bytes(&c["value"]));
        assert_eq!(hash, c["hash"], "{field}");
        // The first event carries these keyed hashes.
        assert_eq!(sealed[0].hashed[field], hash);
    }
    let seq = cp["seq"].as_u64().unwrap();
    let head = cp["head"].as_str().unwrap();
    let time_ms = cp["time_ms"].as_i64().unwrap();
    assert_eq!(
        Checkpoint::signed_bytes(seq, head, time_ms),
        bytes(&cp["signed_bytes"])
    );
    // Ed25519 is deterministic: the same key signs the same bytes alike.
    let signed = Checkpoint::sign(&signing, seq, head, time_ms).unwrap();
    assert_eq!(signed.signature, cp["signature"]);
    let export: Vec<&str> = v["export"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let report = super::verify_export(&export.join("\n"), &spki).unwrap();
    assert_eq!(
        (
            report.events,
            report.checkpoints,
            report.last_checkpoint_seq
        ),
        (3, 1, Some(3))
    );
}

#[test]
fn journal_files_match_the_vectors() {
    let v = vectors("journal.json");
    let chain = events(&vectors("audit.json"));
    let pick = |ids: &serde_json::Value| -> Vec<AuditEvent> {
        ids.as_array()
            .unwrap()
            .iter()
            .map(|i| chain[i.as_u64().unwrap() as usize - 1].clone())
            .collect()
    };
    // Python's files parse to their events, the valid frames ending where Python says.
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 5);
    let audit = vectors("audit.json");
    let checkpoint: Checkpoint = serde_json::from_value(serde_json::json!({
        "seq": audit["checkpoint"]["seq"],
        "head": audit["checkpoint"]["head"],
        "time_ms": audit["checkpoint"]["time_ms"],
        "signature": audit["checkpoint"]["signature"],
    }))
    .unwrap();
    for f in files {
        let name = f["name"].as_str().unwrap();
        let (found, end) = parse_journal(Path::new(name), &bytes(&f["bytes"])).unwrap();
        assert_eq!(found.events, pick(&f["events"]), "{name}");
        assert_eq!(end as u64, f["end"].as_u64().unwrap(), "{name}: end");
        let heads: Vec<u64> = found.checkpoints.iter().map(|c| c.seq).collect();
        let expected: Vec<u64> = f["checkpoints"].as_array().map_or(Vec::new(), |a| {
            a.iter().map(|s| s.as_u64().unwrap()).collect()
        });
        assert_eq!(heads, expected, "{name}: signed heads");
        if !heads.is_empty() {
            assert_eq!(found.checkpoints, vec![checkpoint.clone()], "{name}");
        }
    }
    // A signed head that does not sign the events before it is corruption, not a head.
    for f in v["corrupt_files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        match parse_journal(Path::new(name), &bytes(&f["bytes"])) {
            Err(super::JournalError::Corrupt { offset, .. }) => {
                assert_eq!(offset, f["offset"].as_u64().unwrap(), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // The writer's signed frame is Python's byte for byte.
    let signed = &v["signed_frame"];
    let mut frame = super::journal::new_frame();
    frame.push(b'[');
    serde_json::to_writer(&mut frame, &pick(&signed["events"])[0]).unwrap();
    frame.push(b']');
    super::writer::append_signed_head(&mut frame, &checkpoint);
    assert_eq!(
        frame[super::journal::FRAME_PAYLOAD_START..],
        bytes(&signed["payload"])[..]
    );
    // The journal writes Python's bytes: header, zeros to 4 KiB, then the frames.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.journal");
    let (mut journal, found) = AuditJournal::open_preallocated(&path, 4096).unwrap();
    assert!(found.events.is_empty());
    assert_eq!(
        std::fs::read(&path).unwrap()[..48],
        bytes(&v["header_generation_1"])
    );
    for frame in v["frames"].as_array().unwrap() {
        journal.append(&pick(&frame["events"])).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes(&files[0]["bytes"]));
    // Emptied, it names generation 2; the next frame is of generation 2.
    journal.clear().unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap()[..48],
        bytes(&v["header_generation_2"])
    );
    journal.append(&chain[2..]).unwrap();
    let regenerated = bytes(&files[2]["bytes"]);
    let end = files[2]["end"].as_u64().unwrap() as usize;
    assert_eq!(std::fs::read(&path).unwrap(), regenerated[..end]);
}
