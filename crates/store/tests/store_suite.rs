//! The store traits' contract, run against SQLite and PostgreSQL alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::TestDb;
use sovra_core::StoreError;
use sovra_core::model::{
    KekRecord, KeyRecord, KeyState, KeyVersionRecord, OrgRecord, OrgStatus, SealKind, SealRecord,
};
use sovra_crypto::KeyType;
use std::sync::Arc;
use uuid::Uuid;

fn org(id: &str) -> OrgRecord {
    OrgRecord {
        id: id.into(),
        display_name: format!("Org {id}"),
        status: OrgStatus::Active,
        active_kek_version: 1,
        created_at: 1_000,
    }
}

fn kek(org_id: &str, version: u32) -> KekRecord {
    KekRecord {
        org_id: org_id.into(),
        version,
        wrapped_kek: format!("wrapped-kek/{org_id}/{version}").into_bytes(),
        created_at: 1_000 + version as i64,
    }
}

fn key(org_id: &str, owner: &str, name: &str, created_at: i64) -> KeyRecord {
    KeyRecord {
        id: Uuid::new_v4(),
        org_id: org_id.into(),
        owner: owner.into(),
        name: name.into(),
        key_type: KeyType::Aes256Gcm,
        description: Some(format!("{name} of {owner}")),
        state: KeyState::Enabled,
        latest_version: 1,
        min_decryption_version: 1,
        created_at,
        rotated_at: None,
        deletion_date: None,
        revision: 1,
        row_mac: format!("mac of {name}").into_bytes(),
    }
}

/// The key row as stored, whatever its org.
async fn stored(db: &TestDb, id: Uuid) -> KeyRecord {
    db.store
        .all_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.id == id)
        .expect("the key exists")
}

/// The stored key row moved to `v` as the core moves it (through `org`, the next revision).
async fn rotated(db: &TestDb, org: &str, v: &KeyVersionRecord) -> KeyRecord {
    let mut k = stored(db, v.key_id).await;
    k.org_id = org.into();
    k.latest_version = v.version;
    k.rotated_at = Some(v.created_at);
    k.revision += 1;
    k.row_mac = format!("mac of {} at {}", k.name, k.revision).into_bytes();
    k
}

async fn add_version(db: &TestDb, org: &str, v: &KeyVersionRecord) -> Result<(), StoreError> {
    let after = rotated(db, org, v).await;
    db.store.add_key_version(&after, v).await
}

fn version(key_id: Uuid, version: u32, kek_version: u32) -> KeyVersionRecord {
    KeyVersionRecord {
        key_id,
        version,
        kek_version,
        wrapped_material: format!("wrapped/{key_id}/{version}/{kek_version}").into_bytes(),
        created_at: 2_000 + version as i64,
    }
}

async fn setup_org(db: &TestDb, id: &str) {
    db.store.create_org(&org(id), &kek(id, 1)).await.unwrap();
}

/// Creates a key with its first version (wrapped under KEK 1).
async fn setup_key(db: &TestDb, org_id: &str, owner: &str, name: &str, at: i64) -> KeyRecord {
    let k = key(org_id, owner, name, at);
    db.store.create_key(&k, &version(k.id, 1, 1)).await.unwrap();
    k
}

fn is_conflict<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

async fn stored_versions(db: &TestDb, key_id: Uuid) -> Vec<i64> {
    db.i64s(&format!(
        "SELECT version FROM key_versions WHERE key_id = '{key_id}' ORDER BY version"
    ))
    .await
}

both!(migrations_create_the_schema, |db| async move {
    let tables = db.tables().await;
    for t in ["seal", "orgs", "org_keks", "keys", "key_versions"] {
        assert!(
            tables.iter().any(|x| x == t),
            "missing table {t} in {tables:?}"
        );
    }
    setup_org(&db, "acme").await;
    // Opening the same database again runs the migrations again: a no-op that keeps the data.
    let reopened = sovra_store::open(&db.url).await.unwrap();
    assert_eq!(reopened.get_org("acme").await.unwrap(), Some(org("acme")));
    assert!(reopened.get_seal().await.unwrap().is_none());
});

both!(seal_record_is_written_once, |db| async move {
    assert_eq!(db.store.get_seal().await.unwrap(), None);
    let first = SealRecord {
        kind: SealKind::Shamir,
        shares: 5,
        threshold: 3,
        wrapped_root_key: vec![1, 2, 3, 4, 0, 255],
        created_at: 42,
        share_commitments: Some((1..=5u8).map(|i| [i; 32]).collect()),
    };
    db.store.create_seal(&first).await.unwrap();
    assert_eq!(db.store.get_seal().await.unwrap(), Some(first.clone()));

    let second = SealRecord {
        kind: SealKind::DevFile,
        shares: 1,
        threshold: 1,
        wrapped_root_key: vec![9; 40],
        created_at: 43,
        share_commitments: None,
    };
    let r = db.store.create_seal(&second).await;
    assert!(is_conflict(&r), "second create_seal must conflict: {r:?}");
    assert_eq!(db.store.get_seal().await.unwrap(), Some(first));
});

both!(org_is_created_with_its_first_kek, |db| async move {
    assert_eq!(db.store.get_org("acme").await.unwrap(), None);
    setup_org(&db, "acme").await;
    assert_eq!(db.store.get_org("acme").await.unwrap(), Some(org("acme")));
    assert_eq!(
        db.store.get_kek("acme", 1).await.unwrap(),
        Some(kek("acme", 1))
    );
    assert_eq!(db.store.get_kek("acme", 2).await.unwrap(), None);
    assert_eq!(db.store.get_kek("other", 1).await.unwrap(), None);

    // A second creation conflicts and leaves the first KEK untouched.
    let mut other_kek = kek("acme", 1);
    other_kek.wrapped_kek = b"replacement".to_vec();
    let r = db.store.create_org(&org("acme"), &other_kek).await;
    assert!(is_conflict(&r), "duplicate org must conflict: {r:?}");
    assert_eq!(
        db.store.get_kek("acme", 1).await.unwrap(),
        Some(kek("acme", 1))
    );
});

both!(add_kek_version_is_optimistic, |db| async move {
    setup_org(&db, "acme").await;

    // Skipping a version: the active version is 1, not 2.
    let r = db.store.add_kek_version(&kek("acme", 3)).await;
    assert!(is_conflict(&r), "v3 over active v1 must conflict: {r:?}");
    assert_eq!(
        db.store
            .get_org("acme")
            .await
            .unwrap()
            .unwrap()
            .active_kek_version,
        1
    );
    assert_eq!(db.store.get_kek("acme", 3).await.unwrap(), None);

    db.store.add_kek_version(&kek("acme", 2)).await.unwrap();
    assert_eq!(
        db.store
            .get_org("acme")
            .await
            .unwrap()
            .unwrap()
            .active_kek_version,
        2
    );
    assert_eq!(
        db.store.get_kek("acme", 2).await.unwrap(),
        Some(kek("acme", 2))
    );
    // The old version stays readable.
    assert_eq!(
        db.store.get_kek("acme", 1).await.unwrap(),
        Some(kek("acme", 1))
    );

    // The same version again: the expected previous version (1) is no longer active.
    let r = db.store.add_kek_version(&kek("acme", 2)).await;
    assert!(is_conflict(&r), "v2 again must conflict: {r:?}");
    // A version for an org that does not exist.
    let r = db.store.add_kek_version(&kek("ghost", 2)).await;
    assert!(is_conflict(&r), "unknown org must conflict: {r:?}");
    assert_eq!(db.store.get_kek("ghost", 2).await.unwrap(), None);
});

both!(concurrent_kek_rotations_have_one_winner, |db| async move {
    setup_org(&db, "acme").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(6));
    let mut tasks = Vec::new();
    for i in 0..6u8 {
        let store = db.store.clone();
        let barrier = barrier.clone();
        let mut rec = kek("acme", 2);
        rec.wrapped_kek = vec![i; 40];
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (rec.wrapped_kek.clone(), store.add_kek_version(&rec).await)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (blob, r) = t.await.unwrap();
        match r {
            Ok(()) => winners.push(blob),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("a losing rotation must be a Conflict, got {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one rotation must win");
    let stored = db.store.get_kek("acme", 2).await.unwrap().unwrap();
    assert_eq!(stored.wrapped_kek, winners[0]);
    assert_eq!(
        db.i64s("SELECT COUNT(*) FROM org_keks WHERE org_id = 'acme'")
            .await,
        vec![2]
    );
});

both!(create_key_and_name_uniqueness, |db| async move {
    setup_org(&db, "acme").await;
    setup_org(&db, "globex").await;
    let k = setup_key(&db, "acme", "alice", "payments", 10).await;
    assert_eq!(
        db.store.get_key("acme", k.id).await.unwrap(),
        Some(k.clone())
    );
    assert_eq!(
        db.store.get_key_version(k.id, 1).await.unwrap(),
        Some(version(k.id, 1, 1))
    );

    // Same owner, same name: conflict, and nothing of the refused key is stored.
    let dup = key("acme", "alice", "payments", 11);
    let r = db.store.create_key(&dup, &version(dup.id, 1, 1)).await;
    assert!(is_conflict(&r), "duplicate name must conflict: {r:?}");
    assert_eq!(db.store.get_key("acme", dup.id).await.unwrap(), None);
    assert_eq!(db.store.get_key_version(dup.id, 1).await.unwrap(), None);
    assert!(stored_versions(&db, dup.id).await.is_empty());

    // Same name for another owner, or in another org: fine.
    let bob = setup_key(&db, "acme", "bob", "payments", 12).await;
    assert_eq!(db.store.get_key("acme", bob.id).await.unwrap(), Some(bob));
    let other_org = setup_key(&db, "globex", "alice", "payments", 13).await;
    assert_eq!(
        db.store.get_key("globex", other_org.id).await.unwrap(),
        Some(other_org)
    );

    // The same key id twice is a conflict too.
    let mut same_id = key("acme", "carol", "other", 14);
    same_id.id = k.id;
    let r = db.store.create_key(&same_id, &version(k.id, 1, 1)).await;
    assert!(is_conflict(&r), "duplicate id must conflict: {r:?}");
    assert_eq!(db.store.get_key("acme", k.id).await.unwrap(), Some(k));
});

both!(get_key_is_scoped_by_org, |db| async move {
    setup_org(&db, "acme").await;
    setup_org(&db, "globex").await;
    let k = setup_key(&db, "acme", "alice", "k", 10).await;
    assert!(db.store.get_key("acme", k.id).await.unwrap().is_some());
    assert_eq!(db.store.get_key("globex", k.id).await.unwrap(), None);
    assert_eq!(db.store.get_key("nonexistent", k.id).await.unwrap(), None);
    assert_eq!(
        db.store.get_key("acme", Uuid::new_v4()).await.unwrap(),
        None
    );
});

both!(get_key_by_name_finds_the_owners_key, |db| async move {
    setup_org(&db, "acme").await;
    let k = setup_key(&db, "acme", "alice", "payments", 10).await;
    setup_key(&db, "acme", "alice", "other", 11).await;
    assert_eq!(
        db.store
            .get_key_by_name("acme", "alice", "payments")
            .await
            .unwrap(),
        Some(k)
    );
    assert_eq!(
        db.store
            .get_key_by_name("acme", "alice", "unknown")
            .await
            .unwrap(),
        None
    );
});

both!(
    get_key_by_name_is_scoped_by_owner_and_org,
    |db| async move {
        setup_org(&db, "acme").await;
        setup_org(&db, "globex").await;
        let alices = setup_key(&db, "acme", "alice", "k", 10).await;
        // Another owner's key of the same name is not theirs, until they create their own.
        assert_eq!(
            db.store.get_key_by_name("acme", "bob", "k").await.unwrap(),
            None
        );
        // Another org, even with the same owner name, does not see it.
        assert_eq!(
            db.store
                .get_key_by_name("globex", "alice", "k")
                .await
                .unwrap(),
            None
        );
        let bobs = setup_key(&db, "acme", "bob", "k", 11).await;
        assert_eq!(
            db.store.get_key_by_name("acme", "bob", "k").await.unwrap(),
            Some(bobs)
        );
        assert_eq!(
            db.store
                .get_key_by_name("acme", "alice", "k")
                .await
                .unwrap(),
            Some(alices)
        );
    }
);

both!(list_keys_per_owner, |db| async move {
    setup_org(&db, "acme").await;
    setup_org(&db, "globex").await;
    let a1 = setup_key(&db, "acme", "alice", "one", 10).await;
    let b1 = setup_key(&db, "acme", "bob", "bobs", 11).await;
    let a2 = setup_key(&db, "acme", "alice", "two", 12).await;
    let a3 = setup_key(&db, "acme", "alice", "three", 13).await;
    let g1 = setup_key(&db, "globex", "alice", "elsewhere", 14).await;

    assert_eq!(
        db.store.list_keys("acme", "alice").await.unwrap(),
        vec![a1, a2, a3],
        "alice's keys in acme, oldest first"
    );
    assert_eq!(db.store.list_keys("acme", "bob").await.unwrap(), vec![b1]);
    assert_eq!(
        db.store.list_keys("globex", "alice").await.unwrap(),
        vec![g1]
    );
    assert!(
        db.store
            .list_keys("globex", "bob")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        db.store
            .list_keys("acme", "carol")
            .await
            .unwrap()
            .is_empty()
    );
});

// The revision and row MAC travel with every write; a writer holding an older revision is
// refused even when the columns it compares are equal (a change and its undo between its read
// and its write), so a revision never goes back.
both!(
    revision_and_row_mac_round_trip_and_guard_updates,
    |db| async move {
        setup_org(&db, "acme").await;
        let k = setup_key(&db, "acme", "alice", "k", 10).await;
        assert_eq!(
            db.store.get_key("acme", k.id).await.unwrap(),
            Some(k.clone())
        );

        let mut disabled = k.clone();
        disabled.state = KeyState::Disabled;
        disabled.revision = 2;
        disabled.row_mac = b"mac 2".to_vec();
        db.store.update_key(&k, &disabled).await.unwrap();
        let mut enabled = disabled.clone();
        enabled.state = KeyState::Enabled;
        enabled.revision = 3;
        enabled.row_mac = b"mac 3".to_vec();
        db.store.update_key(&disabled, &enabled).await.unwrap();
        assert_eq!(
            db.store.get_key("acme", k.id).await.unwrap(),
            Some(enabled.clone())
        );

        // Same state as stored, older revision: refused, nothing changes.
        let mut stale = k.clone();
        stale.description = Some("from a stale writer".into());
        assert!(is_conflict(&db.store.update_key(&k, &stale).await));
        assert_eq!(
            db.store.get_key("acme", k.id).await.unwrap(),
            Some(enabled.clone())
        );

        // A rotation must name the next revision of the stored row.
        let v2 = version(k.id, 2, 1);
        let mut skipping = enabled.clone();
        skipping.latest_version = 2;
        skipping.revision = 5;
        assert!(is_conflict(&db.store.add_key_version(&skipping, &v2).await));
        assert_eq!(stored_versions(&db, k.id).await, vec![1]);
        let mut next = skipping.clone();
        next.revision = 4;
        next.rotated_at = Some(v2.created_at);
        db.store.add_key_version(&next, &v2).await.unwrap();
        assert_eq!(db.store.get_key("acme", k.id).await.unwrap(), Some(next));
    }
);

// Adoption signs only a row that has no MAC and still holds the values it was checked with.
both!(
    adopt_unsigned_key_only_signs_unsigned_rows,
    |db| async move {
        setup_org(&db, "acme").await;
        setup_org(&db, "globex").await;
        let signed = setup_key(&db, "acme", "alice", "signed", 10).await;
        let mut legacy = key("acme", "alice", "legacy", 11);
        legacy.revision = 0;
        legacy.row_mac = Vec::new();
        db.store
            .create_key(&legacy, &version(legacy.id, 1, 1))
            .await
            .unwrap();
        let other = setup_key(&db, "globex", "bob", "other", 12).await;
        let mut all: Vec<Uuid> = db
            .store
            .all_keys()
            .await
            .unwrap()
            .iter()
            .map(|k| k.id)
            .collect();
        all.sort();
        let mut expected = vec![signed.id, legacy.id, other.id];
        expected.sort();
        assert_eq!(all, expected, "all_keys spans orgs");

        let mut resigned = signed.clone();
        resigned.revision = 9;
        resigned.row_mac = b"another mac".to_vec();
        assert!(
            !db.store.adopt_unsigned_key(&resigned).await.unwrap(),
            "a signed row is kept"
        );
        assert_eq!(
            db.store.get_key("acme", signed.id).await.unwrap(),
            Some(signed)
        );

        let mut wrong = legacy.clone();
        wrong.owner = "mallory".into();
        wrong.revision = 1;
        wrong.row_mac = b"adopted".to_vec();
        assert!(
            !db.store.adopt_unsigned_key(&wrong).await.unwrap(),
            "values must match"
        );
        let mut adopted = legacy.clone();
        adopted.revision = 1;
        adopted.row_mac = b"adopted".to_vec();
        assert!(db.store.adopt_unsigned_key(&adopted).await.unwrap());
        assert_eq!(
            db.store.get_key("acme", legacy.id).await.unwrap(),
            Some(adopted.clone())
        );
        assert!(
            !db.store.adopt_unsigned_key(&adopted).await.unwrap(),
            "only once"
        );
    }
);

both!(update_key_changes_only_mutable_metadata, |db| async move {
    setup_org(&db, "acme").await;
    setup_org(&db, "globex").await;
    let k = setup_key(&db, "acme", "alice", "k", 10).await;

    let mut changed = k.clone();
    changed.state = KeyState::PendingDeletion;
    changed.min_decryption_version = 1;
    changed.description = None;
    changed.deletion_date = Some(99_999);
    db.store.update_key(&k, &changed).await.unwrap();
    assert_eq!(
        db.store.get_key("acme", k.id).await.unwrap(),
        Some(changed.clone())
    );

    let mut changed2 = changed.clone();
    changed2.state = KeyState::Disabled;
    changed2.deletion_date = None;
    changed2.description = Some("new description".into());
    // Not mutable through update_key: name, owner, type, versions, timestamps.
    changed2.name = "renamed".into();
    changed2.owner = "mallory".into();
    changed2.key_type = KeyType::HmacSha256;
    changed2.latest_version = 9;
    changed2.created_at = 1;
    changed2.rotated_at = Some(5);
    // A writer still holding the old row is refused: it would undo the change above.
    let mut stale = k.clone();
    stale.state = KeyState::Enabled;
    assert!(matches!(
        db.store.update_key(&k, &stale).await,
        Err(StoreError::Conflict(_))
    ));
    db.store.update_key(&changed, &changed2).await.unwrap();
    let stored = db.store.get_key("acme", k.id).await.unwrap().unwrap();
    assert_eq!(stored.state, KeyState::Disabled);
    assert_eq!(stored.deletion_date, None);
    assert_eq!(stored.description.as_deref(), Some("new description"));
    assert_eq!(stored.name, k.name);
    assert_eq!(stored.owner, k.owner);
    assert_eq!(stored.key_type, k.key_type);
    assert_eq!(stored.latest_version, 1);
    assert_eq!(stored.created_at, k.created_at);
    assert_eq!(stored.rotated_at, None);

    // An update naming another org changes nothing.
    let mut foreign = stored.clone();
    foreign.org_id = "globex".into();
    foreign.state = KeyState::Enabled;
    let _ = db.store.update_key(&foreign, &foreign).await;
    assert_eq!(db.store.get_key("acme", k.id).await.unwrap(), Some(stored));
});

both!(add_key_version_requires_latest_plus_one, |db| async move {
    setup_org(&db, "acme").await;
    setup_org(&db, "globex").await;
    let k = setup_key(&db, "acme", "alice", "k", 10).await;

    let r = add_version(&db, "acme", &version(k.id, 3, 1)).await;
    assert!(is_conflict(&r), "v3 after v1 must conflict: {r:?}");
    let r = add_version(&db, "acme", &version(k.id, 1, 1)).await;
    assert!(is_conflict(&r), "v1 again must conflict: {r:?}");
    // The right number, but through another org.
    let r = add_version(&db, "globex", &version(k.id, 2, 1)).await;
    assert!(is_conflict(&r), "another org's add must conflict: {r:?}");
    assert_eq!(stored_versions(&db, k.id).await, vec![1]);

    let v2 = version(k.id, 2, 1);
    add_version(&db, "acme", &v2).await.unwrap();
    let stored = db.store.get_key("acme", k.id).await.unwrap().unwrap();
    assert_eq!(stored.latest_version, 2);
    assert_eq!(stored.rotated_at, Some(v2.created_at));
    assert_eq!(db.store.get_key_version(k.id, 2).await.unwrap(), Some(v2));
    assert_eq!(
        db.store.get_key_version(k.id, 1).await.unwrap(),
        Some(version(k.id, 1, 1))
    );

    let r = add_version(&db, "acme", &version(k.id, 2, 1)).await;
    assert!(is_conflict(&r), "v2 again must conflict: {r:?}");
    add_version(&db, "acme", &version(k.id, 3, 1))
        .await
        .unwrap();
    assert_eq!(stored_versions(&db, k.id).await, vec![1, 2, 3]);
    assert_eq!(db.store.get_key_version(k.id, 4).await.unwrap(), None);
});

both!(
    concurrent_add_key_version_has_exactly_one_winner,
    |db| async move {
        setup_org(&db, "acme").await;
        let k = setup_key(&db, "acme", "alice", "raced", 10).await;
        const RACERS: usize = 8;
        // Several rounds: each round, RACERS tasks try to add version `v` at the same moment.
        for v in 2..=5u32 {
            let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
            let mut tasks = Vec::new();
            for i in 0..RACERS {
                let store = db.store.clone();
                let barrier = barrier.clone();
                let rec = KeyVersionRecord {
                    key_id: k.id,
                    version: v,
                    kek_version: 1,
                    wrapped_material: format!("racer {i} for v{v}").into_bytes(),
                    created_at: 10_000 * v as i64 + i as i64,
                };
                let after = rotated(&db, "acme", &rec).await;
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    let r = store.add_key_version(&after, &rec).await;
                    (rec, r)
                }));
            }
            let mut winners = Vec::new();
            let mut conflicts = 0;
            for t in tasks {
                let (rec, r) = t.await.unwrap();
                match r {
                    Ok(()) => winners.push(rec),
                    Err(StoreError::Conflict(_)) => conflicts += 1,
                    Err(e) => panic!("round v{v}: a loser must get Conflict, got {e:?}"),
                }
            }
            assert_eq!(winners.len(), 1, "round v{v}: exactly one add must succeed");
            assert_eq!(conflicts, RACERS - 1);
            let winner = winners.pop().unwrap();
            assert_eq!(
                db.store.get_key_version(k.id, v).await.unwrap(),
                Some(winner.clone()),
                "round v{v}: the stored version is the winner's"
            );
            let stored = db.store.get_key("acme", k.id).await.unwrap().unwrap();
            assert_eq!(stored.latest_version, v);
            assert_eq!(stored.rotated_at, Some(winner.created_at));
            let expected: Vec<i64> = (1..=v as i64).collect();
            assert_eq!(
                stored_versions(&db, k.id).await,
                expected,
                "round v{v}: versions must be contiguous without duplicates"
            );
        }
    }
);

both!(rewrap_only_when_old_kek_version_matches, |db| async move {
    setup_org(&db, "acme").await;
    let k = setup_key(&db, "acme", "alice", "k", 10).await;
    let original = version(k.id, 1, 1);
    let mut rewrapped = version(k.id, 1, 2);
    rewrapped.wrapped_material = b"rewrapped under kek 2".to_vec();

    // Wrong expected KEK version: nothing changes.
    assert!(
        !db.store
            .rewrap_key_version(k.id, 1, 2, &rewrapped)
            .await
            .unwrap()
    );
    assert!(
        !db.store
            .rewrap_key_version(k.id, 1, 0, &rewrapped)
            .await
            .unwrap()
    );
    assert_eq!(
        db.store.get_key_version(k.id, 1).await.unwrap(),
        Some(original.clone())
    );
    // A version that does not exist.
    assert!(
        !db.store
            .rewrap_key_version(k.id, 2, 1, &rewrapped)
            .await
            .unwrap()
    );
    assert!(
        !db.store
            .rewrap_key_version(Uuid::new_v4(), 1, 1, &rewrapped)
            .await
            .unwrap()
    );

    assert!(
        db.store
            .rewrap_key_version(k.id, 1, 1, &rewrapped)
            .await
            .unwrap()
    );
    let stored = db.store.get_key_version(k.id, 1).await.unwrap().unwrap();
    assert_eq!(stored.kek_version, 2);
    assert_eq!(stored.wrapped_material, rewrapped.wrapped_material);
    assert_eq!(stored.version, 1);
    assert_eq!(
        stored.created_at, original.created_at,
        "creation time is kept"
    );

    // A second (late, concurrent) rewrap from KEK 1 no longer applies.
    let mut late = rewrapped.clone();
    late.wrapped_material = b"late".to_vec();
    assert!(
        !db.store
            .rewrap_key_version(k.id, 1, 1, &late)
            .await
            .unwrap()
    );
    assert_eq!(
        db.store
            .get_key_version(k.id, 1)
            .await
            .unwrap()
            .unwrap()
            .wrapped_material,
        rewrapped.wrapped_material
    );
});

both!(versions_below_kek_per_org, |db| async move {
    setup_org(&db, "acme").await;
    setup_org(&db, "globex").await;
    let a = setup_key(&db, "acme", "alice", "a", 10).await;
    let b = setup_key(&db, "acme", "bob", "b", 11).await;
    let g = setup_key(&db, "globex", "alice", "g", 12).await;
    db.store.add_kek_version(&kek("acme", 2)).await.unwrap();
    // a: v1 (kek 1), v2 (kek 2); b: v1 (kek 1); g: v1 (kek 1).
    add_version(&db, "acme", &version(a.id, 2, 2))
        .await
        .unwrap();

    let mut expected = vec![version(a.id, 1, 1), version(b.id, 1, 1)];
    expected.sort_by_key(|v| (v.key_id.to_string(), v.version));
    let below2 = db.versions_below_kek("acme", 2).await;
    assert_eq!(below2, expected, "acme versions under KEK < 2 only");
    assert!(db.versions_below_kek("acme", 1).await.is_empty());

    let below3 = db.versions_below_kek("acme", 3).await;
    assert_eq!(below3.len(), 3);
    assert!(
        below3.iter().all(|v| v.key_id != g.id),
        "another org's versions leaked"
    );
    assert!(below3.contains(&version(a.id, 2, 2)));

    let limited = db
        .store
        .versions_below_kek("acme", 3, None, 1)
        .await
        .unwrap();
    assert_eq!(limited.len(), 1, "limit is respected");
    // Paging: after the first, the rest in (key id, version) order, and nothing after the last.
    let mut ordered = below3.clone();
    ordered.sort_by_key(|v| (v.key_id.to_string(), v.version));
    assert_eq!(limited[0], ordered[0]);
    let page = |after: &KeyVersionRecord| {
        let store = db.store.clone();
        let after = (after.key_id, after.version);
        async move {
            store
                .versions_below_kek("acme", 3, Some(after), 100)
                .await
                .unwrap()
        }
    };
    assert_eq!(page(&ordered[0]).await, ordered[1..].to_vec());
    assert!(page(&ordered[2]).await.is_empty());

    assert_eq!(
        db.versions_below_kek("globex", 2).await,
        vec![version(g.id, 1, 1)]
    );

    // After rewrapping, a version drops out.
    let mut rewrapped = version(b.id, 1, 2);
    rewrapped.wrapped_material = b"b under kek 2".to_vec();
    assert!(
        db.store
            .rewrap_key_version(b.id, 1, 1, &rewrapped)
            .await
            .unwrap()
    );
    assert_eq!(
        db.versions_below_kek("acme", 2).await,
        vec![version(a.id, 1, 1)]
    );
});

both!(deletion_due_and_delete_key, |db| async move {
    setup_org(&db, "acme").await;
    setup_org(&db, "globex").await;
    let now = 1_000_000;
    let mut due = setup_key(&db, "acme", "alice", "due", 10).await;
    let mut due_exact = setup_key(&db, "globex", "alice", "due-exact", 11).await;
    let mut later = setup_key(&db, "acme", "alice", "later", 12).await;
    let mut disabled = setup_key(&db, "acme", "alice", "disabled", 13).await;
    let enabled = setup_key(&db, "acme", "alice", "enabled", 14).await;

    add_version(&db, "acme", &version(due.id, 2, 1))
        .await
        .unwrap();
    due = stored(&db, due.id).await;
    for (k, state, date) in [
        (&mut due, KeyState::PendingDeletion, Some(now - 1)),
        (&mut due_exact, KeyState::PendingDeletion, Some(now)),
        (&mut later, KeyState::PendingDeletion, Some(now + 1)),
        // A date without the pending state is not a deletion.
        (&mut disabled, KeyState::Disabled, Some(now - 1)),
    ] {
        let before = k.clone();
        k.state = state;
        k.deletion_date = date;
        db.store.update_key(&before, k).await.unwrap();
    }

    let mut found = db.store.keys_due_for_deletion(now).await.unwrap();
    found.sort();
    let mut expected = vec![
        ("acme".to_string(), due.id),
        ("globex".to_string(), due_exact.id),
    ];
    expected.sort();
    assert_eq!(found, expected);
    assert!(
        db.store
            .keys_due_for_deletion(now - 2)
            .await
            .unwrap()
            .is_empty()
    );

    // A key that is not pending deletion (or not yet due) is never destroyed.
    assert!(!db.store.delete_key("acme", enabled.id, now).await.unwrap());
    assert!(!db.store.delete_key("acme", later.id, now).await.unwrap());
    assert!(
        db.store
            .get_key("acme", enabled.id)
            .await
            .unwrap()
            .is_some()
    );
    assert!(db.store.get_key("acme", later.id).await.unwrap().is_some());
    assert!(db.store.delete_key("acme", due.id, now).await.unwrap());
    assert_eq!(db.store.get_key("acme", due.id).await.unwrap(), None);
    assert_eq!(db.store.get_key_version(due.id, 1).await.unwrap(), None);
    assert_eq!(db.store.get_key_version(due.id, 2).await.unwrap(), None);
    assert!(
        stored_versions(&db, due.id).await.is_empty(),
        "versions must be destroyed"
    );
    assert_eq!(
        db.store.keys_due_for_deletion(now).await.unwrap(),
        vec![("globex".to_string(), due_exact.id)]
    );

    // The other keys are untouched.
    for k in [&later, &disabled, &enabled] {
        assert_eq!(
            db.store.get_key(&k.org_id, k.id).await.unwrap().as_ref(),
            Some(k)
        );
        assert_eq!(stored_versions(&db, k.id).await, vec![1]);
    }
    // The name is free again.
    setup_key(&db, "acme", "alice", "due", 20).await;
});

// Deleting with another org's id must touch nothing (versions included).
both!(delete_key_is_scoped_by_org, |db| async move {
    setup_org(&db, "acme").await;
    setup_org(&db, "globex").await;
    let k = setup_key(&db, "acme", "alice", "k", 10).await;
    // Naming the wrong org must not destroy anything: neither the key nor its versions.
    let _ = db.store.delete_key("globex", k.id, i64::MAX).await;
    assert_eq!(
        db.store.get_key("acme", k.id).await.unwrap(),
        Some(k.clone())
    );
    assert_eq!(
        db.store.get_key_version(k.id, 1).await.unwrap(),
        Some(version(k.id, 1, 1)),
        "delete_key with another org's id destroyed the key's versions"
    );
});

both!(key_changes_reach_every_other_writer, |db| async move {
    use sovra_core::store::KeyStore;
    use sovra_core::store::StoreChange;
    let own = db.store.key_changes().await.unwrap();
    if db.backend == common::Backend::Sqlite {
        assert!(own.is_none(), "SQLite has one writer: no feed");
        return;
    }
    drop(own);
    // Another node's view of the same database: it hears of changes made through `db`.
    let other = sovra_store::PostgresStore::connect(&db.url).await.unwrap();
    let mut feed = other
        .key_changes()
        .await
        .unwrap()
        .expect("a PostgreSQL feed");
    async fn next(feed: &mut tokio::sync::mpsc::Receiver<StoreChange>) -> StoreChange {
        tokio::time::timeout(std::time::Duration::from_secs(5), feed.recv())
            .await
            .expect("a notification within 5 s")
            .expect("the feed stays open")
    }
    setup_org(&db, "acme").await;
    let k = setup_key(&db, "acme", "alice", "watched", 10).await;
    let mut disabled = k.clone();
    disabled.state = KeyState::Disabled;
    db.store.update_key(&k, &disabled).await.unwrap();
    assert_eq!(next(&mut feed).await, StoreChange::Key(k.id), "update");
    add_version(&db, "acme", &version(k.id, 2, 1))
        .await
        .unwrap();
    assert_eq!(next(&mut feed).await, StoreChange::Key(k.id), "rotation");
    let rotated = stored(&db, k.id).await;
    let mut pending = rotated.clone();
    pending.state = KeyState::PendingDeletion;
    pending.deletion_date = Some(5);
    db.store.update_key(&rotated, &pending).await.unwrap();
    assert_eq!(
        next(&mut feed).await,
        StoreChange::Key(k.id),
        "scheduled deletion"
    );
    assert!(db.store.delete_key("acme", k.id, 10).await.unwrap());
    assert_eq!(next(&mut feed).await, StoreChange::Key(k.id), "deletion");
    // A refused change (stale optimistic check) notifies nobody.
    let k2 = setup_key(&db, "acme", "alice", "quiet", 11).await;
    let mut stale = k2.clone();
    stale.state = KeyState::Disabled;
    assert!(is_conflict(&db.store.update_key(&stale, &k2).await));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), feed.recv())
            .await
            .is_err(),
        "no notification for a change that did not happen"
    );
});
