//! Audit journal file bytes through the parser the server runs at start
//! (`sovra_core::audit::parse_journal`, what `AuditJournal::open` reads a file with). First
//! byte bit 0: 0 = the rest is the file as is; 1 = the rest is split at 0xFF bytes (never in
//! UTF-8 JSON) into frame payloads that get a version 2 header of generation 1 and valid
//! frame checksums, the text after the last 0xFF appended raw (a torn or garbage tail), so the
//! checks behind the checksums (JSON, chain links, event hashes) are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sovra_core::audit::parse_journal;
use std::path::Path;

/// Frames start after the header's 4 KiB block (docs/formats.md).
const FIRST_FRAME: usize = 4096;

fn framed(rest: &[u8]) -> Vec<u8> {
    let generation = 1u64.to_be_bytes();
    let mut file = b"SOVRAJ02".to_vec();
    file.extend_from_slice(&generation);
    let digest = sovra_crypto::sha256(&file);
    file.extend_from_slice(&digest);
    file.resize(FIRST_FRAME, 0);
    let mut chunks: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
    let tail = chunks.pop().unwrap_or_default();
    for payload in chunks {
        let mut covered = generation.to_vec();
        covered.extend_from_slice(payload);
        file.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        file.extend_from_slice(&sovra_crypto::sha256(&covered));
        file.extend_from_slice(&covered);
    }
    file.extend_from_slice(tail);
    file
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 1 {
        framed(rest)
    } else {
        rest.to_vec()
    };
    if let Ok((read, end)) = parse_journal(Path::new("fuzz.journal"), &file) {
        let events = &read.events;
        // A signed head it accepts is the head of one of its events.
        for cp in &read.checkpoints {
            assert!(events.iter().any(|e| e.seq == cp.seq && e.hash == cp.head));
        }
        // What recovery accepts is a chain: consecutive, linked, each hash matching its fields.
        assert!(end <= file.len().max(FIRST_FRAME));
        for pair in events.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq.wrapping_add(1));
            assert_eq!(pair[1].prev_hash, pair[0].hash);
        }
        for ev in events {
            assert_eq!(ev.hash, ev.compute_hash());
        }
    }
});
