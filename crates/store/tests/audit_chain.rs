//! The audit chain in the store: group-committed appends from many concurrent requests form
//! one gap-free chain that the offline verifier accepts; a row altered in the database (by
//! someone who first switched off the append-only triggers) is detected. Runs on SQLite and
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::{Backend, TestDb};
use sovra_core::audit::{
    AuditEvent, AuditQuery, AuditWriter, Checkpoint, ExportLine, verify_export,
};
use sovra_core::test_support::{audit_event, audit_key};
use sovra_core::{Store, StoreError};
use sovra_store::{PostgresStore, SqliteStore};
use std::collections::HashSet;

/// Seven actors; every fifth event denied; every third carries keyed hashes.
fn event(i: u32) -> AuditEvent {
    AuditEvent {
        actor: format!("idp#user{}", i % 7),
        outcome: if i.is_multiple_of(5) {
            "denied".into()
        } else {
            "success".into()
        },
        error_code: i.is_multiple_of(5).then(|| "not_found".to_string()),
        // Some events carry keyed hashes, so that they round-trip through the store too.
        hashed: if i.is_multiple_of(3) {
            [("token".to_string(), format!("{i:064x}"))].into()
        } else {
            Default::default()
        },
        ..audit_event(u64::from(i))
    }
}

async fn export_text(db: &TestDb) -> String {
    let events = db.store.audit_events(1, 100_000).await.unwrap();
    events
        .into_iter()
        .map(|e| serde_json::to_string(&ExportLine::Event(Box::new(e))).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Records `n` events as concurrent requests would, into an empty chain: each must get its own
/// sequence number, together 1..=n with no gap and no duplicate.
async fn record_concurrently(writer: &AuditWriter, n: u32) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let w = writer.clone();
        tasks.push(tokio::spawn(async move { w.record(event(i)).await }));
    }
    let mut seqs = HashSet::new();
    for t in tasks {
        let seq = t
            .await
            .unwrap()
            .expect("durable before the request is answered");
        assert!(seqs.insert(seq), "sequence {seq} handed out twice");
    }
    assert_eq!(
        seqs,
        (1..=u64::from(n)).collect::<HashSet<u64>>(),
        "no gap, no duplicate"
    );
}

/// Verifies the stored chain as an export under a throwaway key (there are no checkpoints) and
/// returns how many events it holds.
async fn verified_event_count(db: &TestDb) -> u64 {
    let key = audit_key();
    verify_export(&export_text(db).await, &key.public_key_spki_der().unwrap())
        .unwrap()
        .events
}

/// What an attacker with owner rights on the database does before tampering: switch off the
/// append-only triggers, which the owner of the table (or the file) may do.
async fn disable_append_only(db: &TestDb) {
    match db.backend {
        Backend::Sqlite => {
            db.exec("DROP TRIGGER audit_events_no_update").await;
            db.exec("DROP TRIGGER audit_events_no_delete").await;
        }
        Backend::Postgres => {
            db.exec("ALTER TABLE audit_events DISABLE TRIGGER USER")
                .await;
        }
    }
}

both!(
    concurrent_requests_form_one_verifiable_chain,
    |db| async move {
        let writer = AuditWriter::start(db.store.clone(), sovra_core::audit::OnRollback::Halt);
        record_concurrently(&writer, 300).await;

        let key = audit_key();
        let spki = key.public_key_spki_der().unwrap();
        let report = verify_export(&export_text(&db).await, &spki).unwrap();
        assert_eq!(report.events, 300);
        let events = db.store.audit_events(300, 1).await.unwrap();
        assert_eq!(
            db.store.audit_head().await.unwrap(),
            Some((300, events[0].hash.clone())),
            "the head is the last event"
        );

        // Someone with owner access to the database rewrites one event. The triggers refuse
        // it until the attacker switches them off; then only the verifier stands in the way,
        // and it names the event.
        let original = db.store.audit_events(120, 1).await.unwrap().remove(0);
        let tamper = "UPDATE audit_events SET actor = 'idp#mallory' WHERE seq = 120";
        let refused = db.try_exec(tamper).await.unwrap_err();
        assert!(refused.to_string().contains("append-only"), "{refused}");
        disable_append_only(&db).await;
        let changed = db.exec(tamper).await;
        assert_eq!(changed, 1);
        let err = verify_export(&export_text(&db).await, &spki).unwrap_err();
        assert!(err.problem.contains("event 120 was altered"), "{err}");

        // Deleting a row shows as a gap.
        let restore = format!(
            "UPDATE audit_events SET actor = '{}' WHERE seq = 120",
            original.actor
        );
        db.exec(&restore).await;
        verify_export(&export_text(&db).await, &spki).expect("the restored chain verifies again");
        db.exec("DELETE FROM audit_events WHERE seq = 200").await;
        let err = verify_export(&export_text(&db).await, &spki).unwrap_err();
        assert!(err.problem.contains("jumps from 199 to 201"), "{err}");
    }
);

both!(
    appends_continue_the_chain_after_a_restart,
    |db| async move {
        let first = AuditWriter::start(db.store.clone(), sovra_core::audit::OnRollback::Halt);
        for i in 0..5 {
            first.record(event(i)).await.unwrap();
        }
        // A second writer (a restart, or a second node) continues from the stored head.
        let second = AuditWriter::start(db.store.clone(), sovra_core::audit::OnRollback::Halt);
        assert_eq!(second.record(event(5)).await.unwrap(), 6);
        assert_eq!(verified_event_count(&db).await, 6);
    }
);

both!(
    audit_queries_filter_one_org_newest_first_and_page,
    |db| async move {
        let writer = AuditWriter::start(db.store.clone(), sovra_core::audit::OnRollback::Halt);
        for i in 0..40u32 {
            let mut ev = event(i);
            if i % 4 == 0 {
                ev.org = Some("other".into());
            }
            writer.record(ev).await.unwrap();
        }
        let all = |q: AuditQuery| {
            let store = db.store.clone();
            async move { store.query_audit(&q).await.unwrap() }
        };
        let base = AuditQuery {
            org: "acme".into(),
            limit: 1000,
            ..Default::default()
        };
        let acme = all(base.clone()).await;
        assert_eq!(acme.len(), 30, "another org's events never appear");
        assert!(acme.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        // Paging by sequence: two pages of 20 and 10, no overlap.
        let p1 = all(AuditQuery {
            limit: 20,
            ..base.clone()
        })
        .await;
        let p2 = all(AuditQuery {
            limit: 20,
            before_seq: Some(p1.last().unwrap().seq),
            ..base.clone()
        })
        .await;
        assert_eq!((p1.len(), p2.len()), (20, 10));
        assert!(p2[0].seq < p1[19].seq);
        // Each filter narrows.
        let denied = all(AuditQuery {
            outcome: Some("denied".into()),
            ..base.clone()
        })
        .await;
        assert!(!denied.is_empty() && denied.iter().all(|e| e.outcome == "denied"));
        let actor = all(AuditQuery {
            actor: Some("idp#user3".into()),
            ..base.clone()
        })
        .await;
        assert!(!actor.is_empty() && actor.iter().all(|e| e.actor == "idp#user3"));
        assert!(
            all(AuditQuery {
                action: Some("key.create".into()),
                ..base.clone()
            })
            .await
            .is_empty()
        );
        let window = all(AuditQuery {
            from_time_ms: Some(1_700_000_000_010),
            to_time_ms: Some(1_700_000_000_020),
            ..base.clone()
        })
        .await;
        assert!(!window.is_empty());
        assert!(
            window
                .iter()
                .all(|e| (1_700_000_000_010..1_700_000_000_020).contains(&e.time_ms))
        );
    }
);

both!(checkpoints_are_stored_once_per_sequence, |db| async move {
    let key = audit_key();
    let cp = Checkpoint::sign(&key, 5, "aa", 1).unwrap();
    db.store.add_audit_checkpoint(&cp).await.unwrap();
    // A second node signing the same sequence keeps the first.
    let again = Checkpoint::sign(&key, 5, "aa", 2).unwrap();
    db.store.add_audit_checkpoint(&again).await.unwrap();
    db.store
        .add_audit_checkpoint(&Checkpoint::sign(&key, 9, "bb", 3).unwrap())
        .await
        .unwrap();
    assert_eq!(db.store.audit_checkpoints(1, 100).await.unwrap().len(), 2);
    assert_eq!(db.store.audit_checkpoints(1, 8).await.unwrap(), vec![cp]);
    assert!(
        db.store
            .audit_checkpoints(10, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
});

/// Events sealed onto the chain in advance, as a journal holds them.
fn sealed(from_seq: u64, prev: &str, n: u32) -> Vec<AuditEvent> {
    sovra_core::audit::seal_chain((0..n).map(event).collect(), from_seq - 1, prev)
}

both!(
    sealed_events_are_stored_only_when_they_continue_the_head,
    |db| async move {
        let batch = sealed(1, sovra_core::audit::GENESIS, 4);
        db.store.insert_sealed_audit(&batch, &[]).await.unwrap();
        assert_eq!(
            db.store.audit_head().await.unwrap(),
            Some((4, batch[3].hash.clone()))
        );
        // The same batch again, a batch that skips a sequence number, and one that claims
        // another predecessor: each is a conflict and stores nothing.
        let skipping = sealed(6, &batch[3].hash, 2);
        let forked = sealed(5, &batch[2].hash, 2);
        for refused in [&batch, &skipping, &forked] {
            let err = db
                .store
                .insert_sealed_audit(refused, &[])
                .await
                .unwrap_err();
            assert!(matches!(err, sovra_core::StoreError::Conflict(_)), "{err}");
        }
        assert_eq!(db.store.audit_events(1, 100).await.unwrap(), batch);
        // The signed heads travel in the same transaction: a refused batch stores none.
        let head = |e: &AuditEvent| sovra_core::audit::Checkpoint {
            seq: e.seq,
            head: e.hash.clone(),
            time_ms: 1,
            signature: "c2ln".into(),
        };
        let refused_head = head(&skipping[1]);
        let err = db
            .store
            .insert_sealed_audit(&skipping, std::slice::from_ref(&refused_head))
            .await
            .unwrap_err();
        assert!(matches!(err, sovra_core::StoreError::Conflict(_)), "{err}");
        let next = sealed(5, &batch[3].hash, 3);
        let heads = [head(&next[0]), head(&next[2])];
        db.store.insert_sealed_audit(&next, &heads).await.unwrap();
        assert_eq!(verified_event_count(&db).await, 7);
        assert_eq!(db.store.audit_checkpoints(1, 100).await.unwrap(), heads);
    }
);

/// The journal of a SQLite test store (only SQLite stores have one).
fn journal_path(db: &TestDb) -> std::path::PathBuf {
    db.store
        .audit_journal_path()
        .expect("a SQLite file store names its audit journal")
}

/// Starts a journaled writer, retrying while the previous one's tasks still hold the journal.
async fn journaled(db: &TestDb) -> AuditWriter {
    for _ in 0..200 {
        match AuditWriter::start_journaled(db.store.clone(), &journal_path(db)).await {
            Err(sovra_core::audit::JournalError::Locked(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            other => return other.unwrap(),
        }
    }
    panic!("the previous writer never released the journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journaled_writer_hands_out_one_gap_free_chain_and_stores_it() {
    common::run(Backend::Sqlite, |db| async move {
        let writer = journaled(&db).await;
        record_concurrently(&writer, 600).await;
        // Answered means durable in the journal; `flushed` means in the store too.
        writer.flushed().await.unwrap();
        let head = db.store.audit_head().await.unwrap().unwrap();
        assert_eq!(head.0, 600);
        assert_eq!(writer.last_appended(), Some(head));
        assert_eq!(verified_event_count(&db).await, 600);
    })
    .await;
}

/// Under steady load the store is always a gathering pause behind the journal. The writer must
/// still empty the journal once it is large, or the journal grows without end (and, past its
/// preallocation, every sync writes the file's size again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_journal_is_emptied_under_steady_load() {
    common::run(Backend::Sqlite, |db| async move {
        let writer = journaled(&db).await;
        let path = journal_path(&db);
        let generation = |p: &std::path::Path| {
            let header = std::fs::read(p).unwrap();
            u64::from_be_bytes(header[8..16].try_into().unwrap())
        };
        let first = generation(&path);
        // Enough events for the journal to pass its emptying size about twice over.
        let per_task = 1800u32;
        let tasks: Vec<_> = (0..16u32)
            .map(|t| {
                let w = writer.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        w.record(event(t * per_task + i)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        writer.flushed().await.unwrap();
        assert!(
            generation(&path) >= first + 2,
            "the journal was emptied {} times",
            generation(&path) - first
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            sovra_core::audit::JOURNAL_PREALLOCATED_BYTES,
            "it never grew past its preallocation"
        );
        assert_eq!(verified_event_count(&db).await, u64::from(16 * per_task));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_only_in_the_journal_reach_the_store_at_the_next_start() {
    common::run(Backend::Sqlite, |db| async move {
        let writer = journaled(&db).await;
        for i in 0..3 {
            writer.record(event(i)).await.unwrap();
        }
        writer.flushed().await.unwrap();
        let (_, head_hash) = db.store.audit_head().await.unwrap().unwrap();
        drop(writer);
        // What a crash leaves: answered events in the journal that the store never got, and a
        // torn frame after them whose requests were never answered.
        let pending = sealed(4, &head_hash, 5);
        let path = journal_path(&db);
        let mut j = loop {
            match sovra_core::audit::AuditJournal::open(&path) {
                Err(sovra_core::audit::JournalError::Locked(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                other => break other.unwrap().0,
            }
        };
        j.append(&pending).unwrap();
        let torn_at = j.next_frame_offset() as usize;
        j.append(&sealed(9, &pending[4].hash, 3)).unwrap();
        let torn_end = j.next_frame_offset() as usize;
        drop(j);
        // The crash came during that last write: only its header and the start of its payload
        // reached the disk.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[torn_at + 60..torn_end].fill(0);
        std::fs::write(&path, bytes).unwrap();

        let restarted = journaled(&db).await;
        let head = db.store.audit_head().await.unwrap().unwrap();
        assert_eq!(
            head,
            (8, pending[4].hash.clone()),
            "recovered before serving"
        );
        assert_eq!(db.store.audit_events(4, 10).await.unwrap(), pending);
        assert_eq!(restarted.record(event(9)).await.unwrap(), 9);
        restarted.flushed().await.unwrap();
        assert_eq!(verified_event_count(&db).await, 9);
    })
    .await;
}

/// A database that stops taking audit events: answered events pile up in the journal until the
/// store backlog (65,536 events) is full; then requests fail within seconds instead of waiting
/// without end. Once the database takes events again, every answered one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_stops_taking_events_fails_requests_and_loses_none() {
    common::run(Backend::Sqlite, |db| async move {
        let writer = journaled(&db).await;
        db.exec(
            "CREATE TRIGGER audit_blocked BEFORE INSERT ON audit_events \
             BEGIN SELECT RAISE(ABORT, 'blocked by the test'); END",
        )
        .await;
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks: Vec<_> = (0..64u32)
            .map(|t| {
                let (w, answered) = (writer.clone(), answered.clone());
                tokio::spawn(async move {
                    for i in 0.. {
                        match w.record(event(t * 100_000 + i)).await {
                            Ok(_) => answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                            Err(_) => return,
                        };
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(std::time::Duration::from_secs(120), t)
                .await
                .expect("a request failed once the backlog was full, without waiting forever")
                .unwrap();
        }
        let answered = answered.load(std::sync::atomic::Ordering::SeqCst);
        // Each answered event holds its room in the backlog until it is stored; the frame that
        // no longer fits (at most 64 events here, one per task) fails whole, and so do the
        // events sealed after it.
        assert!(
            (65_536 - 64..=65_536).contains(&answered),
            "{answered} events answered while the database took none"
        );
        assert_eq!(db.store.audit_head().await.unwrap(), None);
        db.exec("DROP TRIGGER audit_blocked").await;
        // The chain goes on from the last durable event: the failed events left no gap.
        assert_eq!(writer.record(event(0)).await.unwrap(), answered + 1);
        writer.flushed().await.unwrap();
        assert_eq!(verified_event_count(&db).await, answered + 1);
    })
    .await;
}

/// Writes a journal holding `journaled` and starts a journaled writer on it, which must refuse
/// (the events do not fit the stored chain) and leave the journal exactly as it was.
async fn start_refused_with_journal(db: &TestDb, journaled: &[AuditEvent]) {
    let path = journal_path(db);
    let (mut j, _) = sovra_core::audit::AuditJournal::open(&path).unwrap();
    j.append(journaled).unwrap();
    drop(j);
    let before = std::fs::read(&path).unwrap();
    let err = AuditWriter::start_journaled(db.store.clone(), &path)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, sovra_core::audit::JournalError::Mismatch { .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the journal is kept, nothing dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_journal_that_does_not_continue_the_stored_chain_stops_startup() {
    common::run(Backend::Sqlite, |db| async move {
        db.store
            .insert_sealed_audit(&sealed(1, sovra_core::audit::GENESIS, 3), &[])
            .await
            .unwrap();
        // A journal from another chain (say, the database was restored from an older backup
        // than the journal): its events cannot be placed, and nothing is guessed.
        let foreign = sealed(4, &"ab".repeat(32), 2);
        start_refused_with_journal(&db, &foreign).await;
        assert_eq!(db.store.audit_head().await.unwrap().unwrap().0, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_journal_whose_events_differ_from_the_stored_ones_is_kept_and_refused() {
    common::run(Backend::Sqlite, |db| async move {
        let stored = sealed(1, sovra_core::audit::GENESIS, 3);
        db.store.insert_sealed_audit(&stored, &[]).await.unwrap();
        // Another chain from the same genesis: same sequence numbers, different events.
        let mut other = sealed(1, sovra_core::audit::GENESIS, 4);
        other[0].actor = "idp#someone-else".into();
        let other = other
            .into_iter()
            .scan(sovra_core::audit::GENESIS.to_string(), |prev, ev| {
                let seq = ev.seq;
                let ev = ev.seal_after(seq, prev);
                *prev = ev.hash.clone();
                Some(ev)
            })
            .collect::<Vec<_>>();
        start_refused_with_journal(&db, &other).await;
        assert_eq!(db.store.audit_events(1, 10).await.unwrap(), stored);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_journal_is_named_by_the_database_file_not_by_the_path_used() {
    common::run(Backend::Sqlite, |db| async move {
        let real = journal_path(&db);
        let db_file = std::path::PathBuf::from(
            real.to_string_lossy()
                .strip_suffix("-audit-journal")
                .unwrap()
                .to_string(),
        );
        let link_dir = std::env::temp_dir().join(format!("sovra-link-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&link_dir).unwrap();
        let link = link_dir.join("other-name.db");
        std::os::unix::fs::symlink(&db_file, &link).unwrap();
        let through_link =
            sovra_store::SqliteStore::connect(&format!("sqlite://{}", link.display()))
                .await
                .unwrap();
        use sovra_core::store::AuditStore;
        let named = through_link.audit_journal_path();
        through_link.pool().close().await;
        std::fs::remove_dir_all(&link_dir).unwrap();
        assert_eq!(named, Some(real));
    })
    .await;
}

both!(
    every_field_of_an_event_round_trips_through_the_store,
    |db| async move {
        // One event with every optional field set, one with none, in one batch: each column of
        // the batch insert carries both cases.
        let mut full = event(3);
        full.cert_fingerprint = Some("sha256:ab".repeat(8));
        full.error_code = Some("forbidden".into());
        full.hashed = [
            ("context".to_string(), "c".repeat(64)),
            ("token".to_string(), "t".repeat(64)),
        ]
        .into();
        let mut bare = event(1);
        bare.org = None;
        bare.error_code = None;
        bare.hashed = Default::default();
        let stored = db.store.append_audit(vec![full, bare]).await.unwrap();
        let read = db.store.audit_events(1, 10).await.unwrap();
        assert_eq!(read, stored, "the rows read back are the events appended");
        assert!(read[0].cert_fingerprint.is_some() && read[1].org.is_none());
    }
);

both!(
    a_node_whose_remembered_head_is_stale_continues_the_stored_chain,
    |db| async move {
        // Two nodes on one database. Each remembers the head it appended last, to skip reading
        // it; once the other node has appended, that memory is stale and must not fork the
        // chain or lose the batch.
        let other: std::sync::Arc<dyn Store> = match db.backend {
            Backend::Sqlite => std::sync::Arc::new(SqliteStore::connect(&db.url).await.unwrap()),
            Backend::Postgres => {
                std::sync::Arc::new(PostgresStore::connect(&db.url).await.unwrap())
            }
        };
        let first = db
            .store
            .append_audit(vec![event(0), event(1)])
            .await
            .unwrap();
        assert_eq!(first.last().unwrap().seq, 2);
        let between = other.append_audit(vec![event(2), event(3)]).await.unwrap();
        assert_eq!(between.first().unwrap().seq, 3);
        let after = db.store.append_audit(vec![event(4)]).await.unwrap();
        assert_eq!(after[0].seq, 5, "continues after the other node's events");
        assert_eq!(after[0].prev_hash, between[1].hash);
        let again = other.append_audit(vec![event(5)]).await.unwrap();
        assert_eq!(again[0].seq, 6);
        assert_eq!(verified_event_count(&db).await, 6);
    }
);

both!(
    a_remembered_head_the_database_no_longer_has_is_refused_until_accepted,
    |db| async move {
        // The database loses the newest event behind the process's back (restored to an
        // earlier point, or a failover that lost a commit). Continuing either head silently
        // would hide it: every append is refused as a rollback, naming both heads, until the
        // caller (the audit writer, after its alarm) accepts it; then the stored head is
        // followed, without a gap.
        let appended = db
            .store
            .append_audit(vec![event(0), event(1), event(2)])
            .await
            .unwrap();
        disable_append_only(&db).await;
        assert_eq!(db.exec("DELETE FROM audit_events WHERE seq = 3").await, 1);
        for _ in 0..2 {
            match db.store.append_audit(vec![event(3)]).await {
                Err(StoreError::AuditRollback {
                    appended_seq,
                    appended_hash,
                    stored_head,
                }) => {
                    assert_eq!(appended_seq, 3);
                    assert_eq!(appended_hash, appended[2].hash);
                    assert_eq!(stored_head, format!("2:{}", appended[1].hash));
                }
                other => panic!("a rolled-back chain was continued: {other:?}"),
            }
        }
        assert_eq!(verified_event_count(&db).await, 2, "nothing was appended");
        db.store.accept_audit_rollback();
        let next = db.store.append_audit(vec![event(3)]).await.unwrap();
        assert_eq!(next[0].seq, 3, "follows the stored head once accepted");
        assert_eq!(next[0].prev_hash, appended[1].hash);
        assert_eq!(verified_event_count(&db).await, 3);
    }
);
