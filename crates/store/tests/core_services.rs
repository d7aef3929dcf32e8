//! `sovra_core::Kms` driven over real stores (SQLite and PostgreSQL): seal, key lifecycle,
//! cryptographic operations, ownership, and the key hierarchy as it is actually stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::{TestDb, contains, hex};
use sovra_core::clock::{ManualClock, Timestamp};
use sovra_core::kms::{KeyUpdate, KmsConfig, NewKey};
use sovra_core::model::SealKind;
use sovra_core::{AuthMethod, CoreError, KeyId, KeyRef, Kms, Principal, Role};
use sovra_crypto::envelope::{EncryptionContext, Header};
use sovra_crypto::sign::{SignInput, SignatureAlgorithm, verify_spki};
use sovra_crypto::{KeyType, SecretBytes};
use std::sync::Arc;
use uuid::Uuid;

// ---- helpers ------------------------------------------------------------------------------

fn principal(org: &str, subject: &str, roles: Vec<Role>) -> Principal {
    Principal::for_tests(org, subject, roles, AuthMethod::DevToken)
}

fn user(org: &str, subject: &str) -> Principal {
    principal(org, subject, vec![Role::User])
}

fn admin(org: &str, subject: &str) -> Principal {
    principal(org, subject, vec![Role::Admin])
}

/// A server operator (may seal); not tied to any org's keys.
fn operator() -> Principal {
    principal("ops", "operator", vec![Role::Operator])
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn new_kms(db: &TestDb) -> Arc<Kms> {
    Arc::new(
        Kms::new(db.store.clone(), KmsConfig::default())
            .await
            .unwrap(),
    )
}

/// A Kms on `db`, initialized with Shamir 3-of-5 and unsealed; returns it and the shares.
async fn unsealed_kms(db: &TestDb) -> (Arc<Kms>, Vec<SecretBytes>) {
    unseal_new(new_kms(db).await).await
}

async fn unseal_new(kms: Arc<Kms>) -> (Arc<Kms>, Vec<SecretBytes>) {
    let (_, shares) = kms.initialize(SealKind::Shamir, 5, 3, false).await.unwrap();
    assert_eq!(shares.len(), 5);
    unseal(&kms, &shares[..3]).await;
    (kms, shares)
}

async fn unseal(kms: &Kms, shares: &[SecretBytes]) {
    for s in shares {
        kms.submit_unseal_share(s.clone()).await.unwrap();
    }
    assert!(!kms.seal_status().sealed, "the shares must unseal");
    fixture_orgs(kms).await;
}

/// The orgs the tests' principals name, created by the operator (nothing creates an org
/// implicitly); already there is fine.
async fn fixture_orgs(kms: &Kms) {
    for org in ["acme", "globex"] {
        let id = sovra_core::ids::OrgId::parse(org).unwrap();
        match kms.create_org(&operator(), &id, None).await {
            Ok(_) | Err(CoreError::Conflict(_)) => {}
            Err(e) => panic!("create org {org}: {e:?}"),
        }
    }
}

/// Seals and unseals again, dropping every cached KEK and key so the next use reads the store.
async fn reseal(kms: &Kms, shares: &[SecretBytes]) {
    kms.seal(&operator()).unwrap();
    assert!(kms.seal_status().sealed);
    unseal(kms, &shares[2..5]).await;
}

async fn create(kms: &Kms, p: &Principal, name: &str, key_type: KeyType) -> KeyId {
    let info = kms
        .create_key(
            p,
            NewKey {
                name: name.into(),
                key_type,
                description: Some(format!("test key {name}")),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create {key_type} key {name}: {e:?}"));
    assert_eq!(info.key_type, key_type);
    assert_eq!(info.latest_version, 1);
    assert_eq!(&info.owner, p.identity());
    info.id
}

async fn decrypt_ok(kms: &Kms, p: &Principal, ct: &[u8], c: &EncryptionContext) -> Vec<u8> {
    kms.decrypt(p, ct, c)
        .await
        .unwrap_or_else(|e| panic!("decrypt failed: {e:?}"))
        .plaintext
        .expose()
        .to_vec()
}

/// Minimal standard base64 decoder for PEM bodies.
fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, &c) in data.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..data.len().saturating_sub(1)]);
    }
    out
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    b64_decode(&body)
}

/// `rewrap_org` with a deadline, so a sweep that stops making progress fails instead of hanging.
async fn rewrap_org(kms: &Kms, org: &str) -> usize {
    tokio::time::timeout(std::time::Duration::from_secs(60), kms.rewrap_org(org))
        .await
        .unwrap_or_else(|_| panic!("rewrap_org({org}) did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("rewrap_org({org}): {e:?}"))
}

fn key_versions_of_org_sql(org: &str) -> String {
    format!(
        "SELECT v.kek_version FROM key_versions v JOIN keys k ON k.id = v.key_id \
         WHERE k.org_id = '{org}' ORDER BY v.key_id, v.version"
    )
}

// ---- seal ---------------------------------------------------------------------------------

both!(initialize_and_unseal_with_shares, |db| async move {
    let kms = new_kms(&db).await;
    let alice = user("acme", "alice");
    let st = kms.seal_status();
    assert!(!st.initialized && st.sealed);
    let r = kms.create_key(&alice, aes("k")).await;
    assert!(matches!(r, Err(CoreError::NotInitialized)), "{:?}", r.err());

    let (_, shares) = kms.initialize(SealKind::Shamir, 5, 3, false).await.unwrap();
    assert_eq!(shares.len(), 5);
    let st = kms.seal_status();
    assert!(st.initialized && st.sealed);
    assert_eq!((st.shares, st.threshold, st.progress), (5, 3, 0));
    assert_eq!(st.seal_type.as_deref(), Some("shamir"));
    // Initialization is once only, also through another instance on the same store.
    let again = kms.initialize(SealKind::Shamir, 5, 3, false).await;
    assert!(matches!(again, Err(CoreError::AlreadyInitialized)));
    let again = new_kms(&db)
        .await
        .initialize(SealKind::Shamir, 3, 2, false)
        .await;
    assert!(matches!(again, Err(CoreError::AlreadyInitialized)));

    let r = kms.create_key(&alice, aes("k")).await;
    assert!(matches!(r, Err(CoreError::Sealed)), "{:?}", r.err());

    let st = kms.submit_unseal_share(shares[4].clone()).await.unwrap();
    assert!(st.sealed);
    assert_eq!(st.progress, 1);
    // The same share twice: refused, progress kept.
    let dup = kms.submit_unseal_share(shares[4].clone()).await;
    assert!(
        matches!(dup, Err(CoreError::InvalidShare(_))),
        "{:?}",
        dup.err()
    );
    assert_eq!(kms.seal_status().progress, 1);
    assert!(kms.seal_status().sealed);
    let r = kms.create_key(&alice, aes("k")).await;
    assert!(matches!(r, Err(CoreError::Sealed)));

    let st = kms.submit_unseal_share(shares[1].clone()).await.unwrap();
    assert!(st.sealed);
    assert_eq!(st.progress, 2);
    let st = kms.submit_unseal_share(shares[2].clone()).await.unwrap();
    assert!(!st.sealed, "three distinct shares unseal");
    assert_eq!(st.progress, 0);
    assert!(kms.is_unsealed());

    fixture_orgs(&kms).await;
    let id = kms.create_key(&alice, aes("k")).await.unwrap().id;
    let c = ctx(&[("purpose", "restart")]);
    let ct = kms
        .encrypt(&alice, id, b"persisted", &c)
        .await
        .unwrap()
        .ciphertext;

    // A restarted instance on the same store starts sealed and unseals with other shares.
    let restarted = new_kms(&db).await;
    let st = restarted.seal_status();
    assert!(st.initialized && st.sealed);
    let r = restarted.decrypt(&alice, &ct, &c).await;
    assert!(matches!(r, Err(CoreError::Sealed)));
    unseal(&restarted, &shares[..3]).await;
    assert_eq!(decrypt_ok(&restarted, &alice, &ct, &c).await, b"persisted");
});

both!(
    shares_of_another_initialization_do_not_unseal,
    |db| async move {
        let kms = new_kms(&db).await;
        let (_, shares) = kms.initialize(SealKind::Shamir, 5, 3, false).await.unwrap();
        // Foreign shares: a second initialization on another fresh store.
        let other_db = db.another().await;
        let other = new_kms(&other_db).await;
        let (_, foreign) = other
            .initialize(SealKind::Shamir, 5, 3, false)
            .await
            .unwrap();

        // Two operators have submitted real shares when a share of another initialization, a
        // made-up one and a real one under a wrong id arrive: each is refused on its own, and
        // the operators' progress stands.
        kms.submit_unseal_share(shares[0].clone()).await.unwrap();
        kms.submit_unseal_share(shares[1].clone()).await.unwrap();
        let mut made_up = shares[2].expose().to_vec();
        made_up[5] ^= 1;
        let mut wrong_id = shares[3].expose().to_vec();
        wrong_id[0] = shares[4].expose()[0];
        let mut beyond = shares[3].expose().to_vec();
        beyond[0] = 200;
        for bad in [
            foreign[2].clone(),
            SecretBytes::new(made_up),
            SecretBytes::new(wrong_id),
            SecretBytes::new(beyond),
        ] {
            match kms.submit_unseal_share(bad).await {
                Err(CoreError::InvalidShare(m)) => {
                    assert!(m.contains("not issued by this server"), "message: {m}")
                }
                other => panic!("a share this server did not issue was accepted: {other:?}"),
            }
            let st = kms.seal_status();
            assert!(st.sealed);
            assert_eq!(
                st.progress, 2,
                "a refused share leaves the others' progress"
            );
        }
        let r = kms.create_key(&user("acme", "alice"), aes("k")).await;
        assert!(matches!(r, Err(CoreError::Sealed)));
        let st = kms.submit_unseal_share(shares[2].clone()).await.unwrap();
        assert!(!st.sealed, "the third real share unseals");
        kms.seal(&operator()).unwrap();

        // The right shares still work afterwards.
        unseal(&kms, &shares[2..5]).await;
        kms.create_key(&user("acme", "alice"), aes("k"))
            .await
            .unwrap();
    }
);

// A threshold of 1 lets one operator unseal alone: refused unless asked for explicitly.
both!(a_single_share_threshold_needs_asking_for, |db| async move {
    let kms = new_kms(&db).await;
    for (shares, threshold) in [(1, 1), (3, 1)] {
        let r = kms
            .initialize(SealKind::Shamir, shares, threshold, false)
            .await;
        match r {
            Err(CoreError::InvalidInput(m)) => assert!(m.contains("allow_single_share"), "{m}"),
            other => panic!("threshold {threshold} accepted: {:?}", other.map(|_| ())),
        }
        assert!(
            !kms.seal_status().initialized,
            "a refused init stores nothing"
        );
    }
    let (_, shares) = kms.initialize(SealKind::Shamir, 1, 1, true).await.unwrap();
    assert!(
        !kms.submit_unseal_share(shares[0].clone())
            .await
            .unwrap()
            .sealed
    );
});

// A seal made before share commitments existed (the column is NULL) still unseals, and a
// wrong share there is caught by combining, as before.
both!(a_seal_without_commitments_still_unseals, |db| async move {
    let kms = new_kms(&db).await;
    let (_, shares) = kms.initialize(SealKind::Shamir, 3, 2, false).await.unwrap();
    db.exec("UPDATE seal SET share_commitments = NULL").await;
    let legacy = new_kms(&db).await;
    let other_db = db.another().await;
    let (_, foreign) = new_kms(&other_db)
        .await
        .initialize(SealKind::Shamir, 3, 2, false)
        .await
        .unwrap();
    legacy.submit_unseal_share(shares[0].clone()).await.unwrap();
    let r = legacy.submit_unseal_share(foreign[1].clone()).await;
    assert!(matches!(r, Err(CoreError::InvalidShare(_))), "{:?}", r.ok());
    unseal(&legacy, &shares[1..3]).await;
    assert!(legacy.is_unsealed());
});

both!(seal_drops_keys_and_unseal_restores_them, |db| async move {
    let (kms, shares) = unsealed_kms(&db).await;
    let alice = user("acme", "alice");
    let aes_id = create(&kms, &alice, "aes", KeyType::Aes256Gcm).await;
    let mac_id = create(&kms, &alice, "mac", KeyType::HmacSha256).await;
    let c = ctx(&[("tenant", "t1")]);
    let ct = kms
        .encrypt(&alice, aes_id, b"before seal", &c)
        .await
        .unwrap()
        .ciphertext;
    let (tag, _) = kms.mac(&alice, mac_id, b"message").await.unwrap();

    // Only a server operator may seal: neither a user nor an org admin.
    for p in [&alice, &admin("acme", "root")] {
        let r = kms.seal(p);
        assert!(matches!(r, Err(CoreError::Forbidden)), "{p:?}: {r:?}");
        assert!(!kms.seal_status().sealed);
    }

    kms.seal(&operator()).unwrap();
    assert!(kms.seal_status().sealed);
    assert!(!kms.is_unsealed());
    let r = kms.encrypt(&alice, aes_id, b"x", &c).await;
    assert!(matches!(r, Err(CoreError::Sealed)), "{:?}", r.err());
    let r = kms.decrypt(&alice, &ct, &c).await;
    assert!(matches!(r, Err(CoreError::Sealed)), "{:?}", r.err());
    let r = kms.mac(&alice, mac_id, b"message").await;
    assert!(matches!(r, Err(CoreError::Sealed)), "{:?}", r.err());
    let r = kms.get_key(&alice, aes_id).await;
    assert!(matches!(r, Err(CoreError::Sealed)), "{:?}", r.err());
    let r = kms.list_keys(&alice).await;
    assert!(matches!(r, Err(CoreError::Sealed)), "{:?}", r.err());
    let r = kms.rotate_org_kek(&admin("acme", "root")).await;
    assert!(matches!(r, Err(CoreError::Sealed)), "{:?}", r.err());

    unseal(&kms, &shares[1..4]).await;
    assert_eq!(decrypt_ok(&kms, &alice, &ct, &c).await, b"before seal");
    assert!(
        kms.verify_mac(&alice, mac_id, b"message", &tag, None)
            .await
            .unwrap()
    );
});

// ---- key types ----------------------------------------------------------------------------

fn aes(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        key_type: KeyType::Aes256Gcm,
        description: None,
    }
}

both!(every_key_type_creates_and_works, |db| async move {
    let (kms, _) = unsealed_kms(&db).await;
    let alice = user("acme", "alice");
    let msg = b"the message to authenticate";
    let c1 = ctx(&[("tenant", "t1"), ("record", "42")]);
    let c2 = ctx(&[("tenant", "t2"), ("record", "42")]);

    for t in KeyType::ALL {
        let id = create(&kms, &alice, t.as_str(), t).await;
        let info = kms.get_key(&alice, id).await.unwrap();
        assert_eq!(info.key_type, t);
        match t.usage() {
            sovra_crypto::keytype::KeyUsage::EncryptDecrypt => {
                let pt = format!("secret for {t}").into_bytes();
                let enc = kms.encrypt(&alice, id, &pt, &c1).await.unwrap();
                assert_eq!((enc.key_id, enc.key_version), (id, 1));
                assert!(
                    !contains(&enc.ciphertext, &pt),
                    "{t}: plaintext in ciphertext"
                );
                let h = Header::parse(&enc.ciphertext).unwrap();
                assert_eq!((KeyId::from(h.key_id), h.key_version), (id, 1));
                let dec = kms.decrypt(&alice, &enc.ciphertext, &c1).await.unwrap();
                assert_eq!(dec.plaintext.expose(), &pt[..]);
                assert_eq!((dec.key_id, dec.key_version), (id, 1));
                // Two encryptions of one plaintext differ (fresh nonce).
                let enc2 = kms.encrypt(&alice, id, &pt, &c1).await.unwrap();
                assert_ne!(enc.ciphertext, enc2.ciphertext);

                for wrong in [c2.clone(), ctx(&[]), ctx(&[("tenant", "t1")])] {
                    let r = kms.decrypt(&alice, &enc.ciphertext, &wrong).await;
                    assert!(
                        matches!(r, Err(CoreError::DecryptFailed)),
                        "{t}: wrong context must fail: {:?}",
                        r.as_ref().err()
                    );
                }
                let mut tampered = enc.ciphertext.clone();
                *tampered.last_mut().unwrap() ^= 1;
                let r = kms.decrypt(&alice, &tampered, &c1).await;
                assert!(matches!(r, Err(CoreError::DecryptFailed)), "{t}: tampered");

                let dk = kms.data_key(&alice, id, 32, &c1, true).await.unwrap();
                let dk_plain = dk.plaintext.expect("plaintext requested").expose().to_vec();
                assert_eq!(dk_plain.len(), 32);
                assert_eq!(
                    decrypt_ok(&kms, &alice, &dk.ciphertext, &c1).await,
                    dk_plain
                );
                let dk = kms.data_key(&alice, id, 16, &c1, false).await.unwrap();
                assert!(dk.plaintext.is_none());
                assert_eq!(
                    decrypt_ok(&kms, &alice, &dk.ciphertext, &c1).await.len(),
                    16
                );

                let r = kms.sign(&alice, id, SignInput::Message(msg), None).await;
                assert!(matches!(r, Err(CoreError::WrongKeyUsage(_))), "{t}: sign");
                let r = kms.mac(&alice, id, msg).await;
                assert!(matches!(r, Err(CoreError::WrongKeyUsage(_))), "{t}: mac");
                let r = kms.public_key_pem(&alice, id, None).await;
                assert!(matches!(r, Err(CoreError::WrongKeyUsage(_))), "{t}: pem");
            }
            sovra_crypto::keytype::KeyUsage::SignVerify => {
                let signed = kms
                    .sign(&alice, id, SignInput::Message(msg), None)
                    .await
                    .unwrap();
                assert_eq!(signed.key_version, 1);
                let ok = kms
                    .verify(
                        &alice,
                        id,
                        SignInput::Message(msg),
                        &signed.signature,
                        None,
                        None,
                    )
                    .await
                    .unwrap();
                assert!(ok, "{t}: own signature verifies");
                let ok = kms
                    .verify(
                        &alice,
                        id,
                        SignInput::Message(b"other"),
                        &signed.signature,
                        None,
                        None,
                    )
                    .await
                    .unwrap();
                assert!(!ok, "{t}: signature over another message must not verify");
                let mut bad = signed.signature.clone();
                let mid = bad.len() / 2;
                bad[mid] ^= 0x40;
                let ok = kms
                    .verify(&alice, id, SignInput::Message(msg), &bad, None, None)
                    .await
                    .unwrap_or(false);
                assert!(!ok, "{t}: altered signature must not verify");

                let (pem, v) = kms.public_key_pem(&alice, id, None).await.unwrap();
                assert_eq!(v, 1);
                assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
                assert!(pem.trim_end().ends_with("-----END PUBLIC KEY-----"));
                assert!(!pem.contains("PRIVATE"));
                // The exported public key verifies the signature outside the Kms.
                let alg = SignatureAlgorithm::resolve(t, Some(signed.algorithm)).unwrap();
                let der = pem_to_der(&pem);
                assert!(
                    verify_spki(alg, &der, SignInput::Message(msg), &signed.signature).unwrap(),
                    "{t}: the exported public key verifies"
                );
                assert!(
                    !verify_spki(alg, &der, SignInput::Message(b"other"), &signed.signature)
                        .unwrap()
                );

                let r = kms.encrypt(&alice, id, b"x", &c1).await;
                assert!(
                    matches!(r, Err(CoreError::WrongKeyUsage(_))),
                    "{t}: encrypt"
                );
                let r = kms.mac(&alice, id, msg).await;
                assert!(matches!(r, Err(CoreError::WrongKeyUsage(_))), "{t}: mac");
            }
            sovra_crypto::keytype::KeyUsage::Mac => {
                let (tag, v) = kms.mac(&alice, id, msg).await.unwrap();
                assert_eq!(v, 1);
                assert_eq!(tag.len(), 32);
                assert_eq!(
                    kms.mac(&alice, id, msg).await.unwrap().0,
                    tag,
                    "deterministic"
                );
                assert!(kms.verify_mac(&alice, id, msg, &tag, None).await.unwrap());
                assert!(
                    !kms.verify_mac(&alice, id, b"other", &tag, None)
                        .await
                        .unwrap()
                );
                let mut bad = tag.clone();
                bad[0] ^= 1;
                assert!(!kms.verify_mac(&alice, id, msg, &bad, None).await.unwrap());
                // Another HMAC key gives another tag: the tag depends on the stored key.
                let other = create(&kms, &alice, "hmac-other", t).await;
                assert_ne!(kms.mac(&alice, other, msg).await.unwrap().0, tag);
                assert!(
                    !kms.verify_mac(&alice, other, msg, &tag, None)
                        .await
                        .unwrap()
                );

                let r = kms.encrypt(&alice, id, b"x", &c1).await;
                assert!(
                    matches!(r, Err(CoreError::WrongKeyUsage(_))),
                    "{t}: encrypt"
                );
                let r = kms.sign(&alice, id, SignInput::Message(msg), None).await;
                assert!(matches!(r, Err(CoreError::WrongKeyUsage(_))), "{t}: sign");
                let r = kms.public_key_pem(&alice, id, None).await;
                assert!(matches!(r, Err(CoreError::WrongKeyUsage(_))), "{t}: pem");
            }
        }
    }
    let names: Vec<String> = kms
        .list_keys(&alice)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names.len(), KeyType::ALL.len() + 1, "{names:?}");

    // Invalid requests (an unknown key type cannot reach the core: it is a `KeyType`).
    let r = kms
        .create_key(
            &alice,
            NewKey {
                name: "x".into(),
                key_type: KeyType::Aes256Gcm,
                description: Some("d".repeat(1025)),
            },
        )
        .await;
    assert!(
        matches!(r, Err(CoreError::InvalidInput(_))),
        "{:?}",
        r.err()
    );
    let r = kms.create_key(&alice, aes("bad name!")).await;
    assert!(
        matches!(r, Err(CoreError::InvalidInput(_))),
        "{:?}",
        r.err()
    );
    let r = kms.create_key(&alice, aes("aes-256-gcm")).await;
    assert!(matches!(r, Err(CoreError::Conflict(_))), "{:?}", r.err());
    // Same name for another user is fine.
    kms.create_key(&user("acme", "bob"), aes("aes-256-gcm"))
        .await
        .unwrap();
});

// ---- ownership ----------------------------------------------------------------------------

both!(
    keys_are_invisible_to_other_users_and_orgs,
    |db| async move {
        let (kms, _) = unsealed_kms(&db).await;
        let a = user("acme", "alice");
        let b = user("acme", "bob");
        let c = user("globex", "alice"); // same subject name, another org
        let b_admin = admin("acme", "bob-admin");
        // Same org and subject, authenticated elsewhere: another owner.
        let jwt_alice = Principal::for_tests(
            "acme",
            "alice",
            vec![Role::User],
            AuthMethod::Jwt {
                issuer: "https://idp.example".into(),
            },
        );
        let c1 = ctx(&[("k", "v")]);
        let aes_id = create(&kms, &a, "mine", KeyType::Aes256Gcm).await;
        let sig_id = create(&kms, &a, "signer", KeyType::Ed25519).await;
        let mac_id = create(&kms, &a, "macer", KeyType::HmacSha256).await;
        let ct = kms
            .encrypt(&a, aes_id, b"alice's secret", &c1)
            .await
            .unwrap()
            .ciphertext;
        // Bob and Carol have keys of their own, so their orgs exist too.
        create(&kms, &b, "bobs", KeyType::Aes256Gcm).await;
        create(&kms, &c, "carols", KeyType::Aes256Gcm).await;

        fn nf<T>(r: Result<T, CoreError>, what: &str) {
            match r {
                Err(CoreError::NotFound) => {}
                Err(e) => panic!("{what}: expected NotFound, got {e:?}"),
                Ok(_) => panic!("{what}: expected NotFound, got Ok"),
            }
        }
        for (who, p) in [
            ("bob", &b),
            ("other org", &c),
            ("admin of the org", &b_admin),
            ("same subject from a JWT issuer", &jwt_alice),
        ] {
            nf(kms.get_key(p, aes_id).await, &format!("{who} get"));
            nf(
                kms.find_key(p, &KeyRef::Name("mine".into())).await,
                &format!("{who} find by name"),
            );
            nf(
                kms.find_key(p, &KeyRef::Id(aes_id)).await,
                &format!("{who} find by id"),
            );
            nf(
                kms.encrypt(p, aes_id, b"x", &c1).await,
                &format!("{who} encrypt"),
            );
            nf(kms.decrypt(p, &ct, &c1).await, &format!("{who} decrypt"));
            nf(
                kms.reencrypt(p, aes_id, &ct, &c1).await,
                &format!("{who} reencrypt"),
            );
            nf(
                kms.data_key(p, aes_id, 32, &c1, true).await,
                &format!("{who} data key"),
            );
            nf(kms.rotate_key(p, aes_id).await, &format!("{who} rotate"));
            nf(kms.disable_key(p, aes_id).await, &format!("{who} disable"));
            nf(
                kms.schedule_deletion(p, aes_id, 7).await,
                &format!("{who} delete"),
            );
            let upd = KeyUpdate {
                min_decryption_version: None,
                description: Some("hijacked".into()),
            };
            nf(
                kms.update_key(p, aes_id, upd).await,
                &format!("{who} update"),
            );
            nf(
                kms.sign(p, sig_id, SignInput::Message(b"m"), None).await,
                &format!("{who} sign"),
            );
            nf(
                kms.public_key_pem(p, sig_id, None).await,
                &format!("{who} pem"),
            );
            nf(kms.mac(p, mac_id, b"m").await, &format!("{who} mac"));
            let listed = kms.list_keys(p).await.unwrap();
            assert!(
                listed
                    .iter()
                    .all(|k| &k.owner == p.identity() && ![aes_id, sig_id, mac_id].contains(&k.id)),
                "{who} lists alice's keys"
            );
        }
        // The owner finds its key by name as by id.
        for by in [KeyRef::Name("mine".into()), KeyRef::Id(aes_id)] {
            let found = kms.find_key(&a, &by).await.unwrap();
            assert_eq!((found.id, found.name.as_str()), (aes_id, "mine"), "{by:?}");
        }
        nf(
            kms.find_key(&a, &KeyRef::Name("no-such-key".into())).await,
            "unknown name",
        );
        // A key id that does not exist answers exactly the same.
        nf(
            kms.get_key(&a, KeyId::from(Uuid::new_v4())).await,
            "unknown id",
        );

        // Nothing changed for the owner.
        let info = kms.get_key(&a, aes_id).await.unwrap();
        assert_eq!(
            info.latest_version, 1,
            "a foreign rotate must not have happened"
        );
        assert_eq!(info.state, sovra_core::model::KeyState::Enabled);
        assert_eq!(info.description.as_deref(), Some("test key mine"));
        assert_eq!(decrypt_ok(&kms, &a, &ct, &c1).await, b"alice's secret");
        assert_eq!(kms.list_keys(&a).await.unwrap().len(), 3);
    }
);

// ---- lifecycle ----------------------------------------------------------------------------

both!(disabled_key_refuses_use_until_enabled, |db| async move {
    let (kms, _) = unsealed_kms(&db).await;
    let a = user("acme", "alice");
    let c1 = ctx(&[("k", "v")]);
    let id = create(&kms, &a, "k", KeyType::ChaCha20Poly1305).await;
    let sig = create(&kms, &a, "s", KeyType::EcdsaP256).await;
    let mac = create(&kms, &a, "m", KeyType::HmacSha256).await;
    let ct = kms.encrypt(&a, id, b"data", &c1).await.unwrap().ciphertext;

    for k in [id, sig, mac] {
        let info = kms.disable_key(&a, k).await.unwrap();
        assert_eq!(info.state, sovra_core::model::KeyState::Disabled);
        assert_eq!(
            kms.get_key(&a, k).await.unwrap().state,
            sovra_core::model::KeyState::Disabled,
            "the state is stored"
        );
    }
    let r = kms.encrypt(&a, id, b"x", &c1).await;
    assert!(matches!(r, Err(CoreError::KeyDisabled)), "{:?}", r.err());
    let r = kms.decrypt(&a, &ct, &c1).await;
    assert!(matches!(r, Err(CoreError::KeyDisabled)), "{:?}", r.err());
    let r = kms.data_key(&a, id, 32, &c1, true).await;
    assert!(matches!(r, Err(CoreError::KeyDisabled)), "{:?}", r.err());
    let r = kms.rotate_key(&a, id).await;
    assert!(matches!(r, Err(CoreError::KeyDisabled)), "{:?}", r.err());
    let r = kms.sign(&a, sig, SignInput::Message(b"m"), None).await;
    assert!(matches!(r, Err(CoreError::KeyDisabled)), "{:?}", r.err());
    let r = kms.mac(&a, mac, b"m").await;
    assert!(matches!(r, Err(CoreError::KeyDisabled)), "{:?}", r.err());

    for k in [id, sig, mac] {
        let info = kms.enable_key(&a, k).await.unwrap();
        assert_eq!(info.state, sovra_core::model::KeyState::Enabled);
    }
    assert_eq!(decrypt_ok(&kms, &a, &ct, &c1).await, b"data");
    let ct2 = kms.encrypt(&a, id, b"more", &c1).await.unwrap().ciphertext;
    assert_eq!(decrypt_ok(&kms, &a, &ct2, &c1).await, b"more");
    kms.sign(&a, sig, SignInput::Message(b"m"), None)
        .await
        .unwrap();
    kms.mac(&a, mac, b"m").await.unwrap();
});

both!(
    scheduled_deletion_bounds_pending_and_cancel,
    |db| async move {
        // Time is the service's clock, moved by the test: deletion dates are exact and a key
        // becomes due when the clock passes its date, without waiting a week.
        let start = Timestamp::from_millis(1_800_000_000_000);
        let clock = ManualClock::new(start);
        let kms = Kms::with_clock(db.store.clone(), KmsConfig::default(), clock.clone())
            .await
            .unwrap();
        let (kms, _) = unseal_new(Arc::new(kms)).await;
        let a = user("acme", "alice");
        let c1 = ctx(&[("k", "v")]);
        let id = create(&kms, &a, "doomed", KeyType::Aes256Gcm).await;
        let ct = kms.encrypt(&a, id, b"data", &c1).await.unwrap().ciphertext;

        for days in [0, 6, 31, 365] {
            let r = kms.schedule_deletion(&a, id, days).await;
            assert!(
                matches!(r, Err(CoreError::InvalidInput(_))),
                "{days} days must be refused: {:?}",
                r.err()
            );
        }
        assert_eq!(
            kms.get_key(&a, id).await.unwrap().state,
            sovra_core::model::KeyState::Enabled
        );

        let info = kms.schedule_deletion(&a, id, 7).await.unwrap();
        assert_eq!(info.state, sovra_core::model::KeyState::PendingDeletion);
        assert!(info.deletion_date.is_some());
        let stored = db
            .opt_i64s(&format!("SELECT deletion_date FROM keys WHERE id = '{id}'"))
            .await;
        let date = stored[0].expect("deletion date stored");
        let week = 7 * 86_400_000;
        assert_eq!(
            date,
            start.as_millis() + week,
            "deletion date is 7 days out"
        );
        assert_eq!(info.deletion_date, Some(start.plus_days(7)));

        let r = kms.encrypt(&a, id, b"x", &c1).await;
        assert!(
            matches!(r, Err(CoreError::KeyPendingDeletion)),
            "{:?}",
            r.err()
        );
        let r = kms.decrypt(&a, &ct, &c1).await;
        assert!(
            matches!(r, Err(CoreError::KeyPendingDeletion)),
            "{:?}",
            r.err()
        );
        let r = kms.rotate_key(&a, id).await;
        assert!(
            matches!(r, Err(CoreError::KeyPendingDeletion)),
            "{:?}",
            r.err()
        );
        let r = kms.enable_key(&a, id).await;
        assert!(
            matches!(r, Err(CoreError::KeyPendingDeletion)),
            "{:?}",
            r.err()
        );
        let r = kms.disable_key(&a, id).await;
        assert!(
            matches!(r, Err(CoreError::KeyPendingDeletion)),
            "{:?}",
            r.err()
        );
        let r = kms.schedule_deletion(&a, id, 10).await;
        assert!(
            matches!(r, Err(CoreError::KeyPendingDeletion)),
            "{:?}",
            r.err()
        );
        // Not due yet: the purge leaves it alone.
        assert_eq!(kms.purge_due_keys().await.unwrap(), 0);
        assert!(kms.get_key(&a, id).await.is_ok());

        let info = kms.cancel_deletion(&a, id).await.unwrap();
        assert_eq!(
            info.state,
            sovra_core::model::KeyState::Disabled,
            "comes back disabled"
        );
        assert!(info.deletion_date.is_none());
        assert_eq!(
            db.opt_i64s(&format!("SELECT deletion_date FROM keys WHERE id = '{id}'"))
                .await,
            vec![None]
        );
        let r = kms.cancel_deletion(&a, id).await;
        assert!(matches!(r, Err(CoreError::Conflict(_))), "{:?}", r.err());
        let r = kms.encrypt(&a, id, b"x", &c1).await;
        assert!(matches!(r, Err(CoreError::KeyDisabled)), "{:?}", r.err());
        kms.enable_key(&a, id).await.unwrap();
        assert_eq!(decrypt_ok(&kms, &a, &ct, &c1).await, b"data");

        // The upper bound is accepted; once due, the purge destroys key and versions.
        let gone = create(&kms, &a, "gone", KeyType::Aes256Gcm).await;
        kms.schedule_deletion(&a, gone, 30).await.unwrap();
        assert_eq!(kms.purge_due_keys().await.unwrap(), 0);
        clock.set(start.plus_days(30).plus_millis(-1));
        assert_eq!(
            kms.purge_due_keys().await.unwrap(),
            0,
            "not due a millisecond before its date"
        );
        clock.advance_millis(1);
        assert_eq!(kms.purge_due_keys().await.unwrap(), 1);
        let r = kms.get_key(&a, gone).await;
        assert!(matches!(r, Err(CoreError::NotFound)), "{:?}", r.err());
        assert_eq!(
            db.i64s(&format!(
                "SELECT COUNT(*) FROM key_versions WHERE key_id = '{gone}'"
            ))
            .await,
            vec![0]
        );
        // The other key survived.
        assert_eq!(decrypt_ok(&kms, &a, &ct, &c1).await, b"data");
    }
);

// An insider who marks someone's key as pending deletion with a date in the past (threat
// rows mini-kms 16, platform T-2) destroys nothing: the purge checks each row's MAC first.
both!(
    the_purge_destroys_no_row_edited_outside_sovra,
    |db| async move {
        let start = Timestamp::from_millis(1_800_000_000_000);
        let clock = ManualClock::new(start);
        let kms = Kms::with_clock(db.store.clone(), KmsConfig::default(), clock.clone())
            .await
            .unwrap();
        let (kms, _) = unseal_new(Arc::new(kms)).await;
        let a = user("acme", "alice");
        let victim = create(&kms, &a, "victim", KeyType::Aes256Gcm).await;
        let due = create(&kms, &a, "due", KeyType::Aes256Gcm).await;
        kms.schedule_deletion(&a, due, 7).await.unwrap();
        // The control: a key its owner scheduled, untouched, is destroyed once due.
        let control = create(&kms, &a, "control", KeyType::Aes256Gcm).await;
        kms.schedule_deletion(&a, control, 7).await.unwrap();
        db.exec(&format!(
            "UPDATE keys SET state = 'pending_deletion', deletion_date = 1 WHERE id = '{victim}'"
        ))
        .await;
        db.exec(&format!(
            "UPDATE keys SET deletion_date = 1 WHERE id = '{due}'"
        ))
        .await;
        assert_eq!(kms.purge_due_keys().await.unwrap(), 0);
        clock.set(start.plus_days(8));
        assert_eq!(kms.purge_due_keys().await.unwrap(), 1, "only the control");
        assert!(matches!(
            kms.get_key(&a, control).await,
            Err(CoreError::NotFound)
        ));
        for id in [victim, due] {
            assert_eq!(
                db.i64s(&format!(
                    "SELECT COUNT(*) FROM key_versions WHERE key_id = '{id}'"
                ))
                .await,
                vec![1],
                "{id} keeps its material"
            );
            let r = kms.get_key(&a, id).await;
            assert!(
                matches!(r, Err(CoreError::IntegrityViolation(_))),
                "{:?}",
                r.err()
            );
        }
    }
);

both!(
    rotation_min_decryption_version_and_reencrypt,
    |db| async move {
        let (kms, _) = unsealed_kms(&db).await;
        let a = user("acme", "alice");
        let c1 = ctx(&[("k", "v")]);
        let id = create(&kms, &a, "rotated", KeyType::Aes256Gcm).await;
        let other = create(&kms, &a, "other", KeyType::Aes256Gcm).await;
        let ct1 = kms
            .encrypt(&a, id, b"v1 data", &c1)
            .await
            .unwrap()
            .ciphertext;

        let info = kms.rotate_key(&a, id).await.unwrap();
        assert_eq!(info.latest_version, 2);
        assert!(info.rotated.is_some());
        assert_eq!(kms.get_key(&a, id).await.unwrap().latest_version, 2);
        let enc2 = kms.encrypt(&a, id, b"v2 data", &c1).await.unwrap();
        assert_eq!(
            enc2.key_version, 2,
            "new encryptions use the newest version"
        );
        assert_eq!(Header::parse(&enc2.ciphertext).unwrap().key_version, 2);
        let ct2 = enc2.ciphertext;

        let d1 = kms.decrypt(&a, &ct1, &c1).await.unwrap();
        assert_eq!(
            (d1.plaintext.expose(), d1.key_version),
            (&b"v1 data"[..], 1)
        );
        let d2 = kms.decrypt(&a, &ct2, &c1).await.unwrap();
        assert_eq!(
            (d2.plaintext.expose(), d2.key_version),
            (&b"v2 data"[..], 2)
        );
        // The versions are really different keys: v1 ciphertext relabelled as v2 fails.
        let mut relabelled = ct1.clone();
        relabelled[20..24].copy_from_slice(&2u32.to_be_bytes());
        let r = kms.decrypt(&a, &relabelled, &c1).await;
        assert!(matches!(r, Err(CoreError::DecryptFailed)), "{:?}", r.err());

        // reencrypt moves a v1 ciphertext to v2.
        let re = kms.reencrypt(&a, id, &ct1, &c1).await.unwrap();
        assert_eq!(re.key_version, 2);
        assert_eq!(Header::parse(&re.ciphertext).unwrap().key_version, 2);
        let d = kms.decrypt(&a, &re.ciphertext, &c1).await.unwrap();
        assert_eq!((d.plaintext.expose(), d.key_version), (&b"v1 data"[..], 2));
        // ... only for ciphertexts of that key, and only with the right context.
        let r = kms.reencrypt(&a, other, &ct1, &c1).await;
        assert!(
            matches!(r, Err(CoreError::InvalidInput(_))),
            "{:?}",
            r.err()
        );
        let r = kms.reencrypt(&a, id, &ct1, &ctx(&[])).await;
        assert!(matches!(r, Err(CoreError::DecryptFailed)), "{:?}", r.err());

        // min_decryption_version bounds and effect.
        for bad in [0, 3] {
            let r = kms
                .update_key(
                    &a,
                    id,
                    KeyUpdate {
                        min_decryption_version: Some(bad),
                        description: None,
                    },
                )
                .await;
            assert!(
                matches!(r, Err(CoreError::InvalidInput(_))),
                "min {bad}: {:?}",
                r.err()
            );
        }
        let info = kms
            .update_key(
                &a,
                id,
                KeyUpdate {
                    min_decryption_version: Some(2),
                    description: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(info.min_decryption_version, 2);
        assert_eq!(kms.get_key(&a, id).await.unwrap().min_decryption_version, 2);
        let r = kms.decrypt(&a, &ct1, &c1).await;
        assert!(
            matches!(r, Err(CoreError::InvalidInput(_))),
            "v1 refused: {:?}",
            r.err()
        );
        let r = kms.reencrypt(&a, id, &ct1, &c1).await;
        assert!(r.is_err(), "reencrypt of a refused version must fail");
        assert_eq!(decrypt_ok(&kms, &a, &ct2, &c1).await, b"v2 data");
        assert_eq!(decrypt_ok(&kms, &a, &re.ciphertext, &c1).await, b"v1 data");

        // Signing and MAC keys keep old versions verifiable.
        let s = create(&kms, &a, "signer", KeyType::Ed25519).await;
        let sig1 = kms
            .sign(&a, s, SignInput::Message(b"m"), None)
            .await
            .unwrap();
        let (pem1, _) = kms.public_key_pem(&a, s, None).await.unwrap();
        kms.rotate_key(&a, s).await.unwrap();
        let (pem2, v) = kms.public_key_pem(&a, s, None).await.unwrap();
        assert_eq!(v, 2);
        assert_ne!(pem1, pem2, "a rotation makes a new key pair");
        assert_eq!(kms.public_key_pem(&a, s, Some(1)).await.unwrap().0, pem1);
        let m = SignInput::Message(b"m");
        assert!(
            kms.verify(&a, s, m, &sig1.signature, None, Some(1))
                .await
                .unwrap()
        );
        assert!(
            !kms.verify(&a, s, m, &sig1.signature, None, None)
                .await
                .unwrap()
        );
        assert_eq!(kms.sign(&a, s, m, None).await.unwrap().key_version, 2);

        let h = create(&kms, &a, "hmac", KeyType::HmacSha256).await;
        let (tag1, _) = kms.mac(&a, h, b"m").await.unwrap();
        kms.rotate_key(&a, h).await.unwrap();
        let (tag2, v) = kms.mac(&a, h, b"m").await.unwrap();
        assert_eq!(v, 2);
        assert_ne!(tag1, tag2);
        assert!(kms.verify_mac(&a, h, b"m", &tag1, Some(1)).await.unwrap());
        assert!(!kms.verify_mac(&a, h, b"m", &tag1, None).await.unwrap());
    }
);

both!(
    concurrent_rotations_never_duplicate_versions,
    |db| async move {
        let (kms, _) = unsealed_kms(&db).await;
        let a = user("acme", "alice");
        let id = create(&kms, &a, "busy", KeyType::Aes256Gcm).await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let kms = kms.clone();
            let a = a.clone();
            tasks.push(tokio::spawn(async move { kms.rotate_key(&a, id).await }));
        }
        let mut ok = 0u32;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(CoreError::Conflict(_)) => {}
                Err(e) => panic!("a concurrent rotation failed with {e:?}"),
            }
        }
        assert!(ok >= 1);
        let latest = kms.get_key(&a, id).await.unwrap().latest_version;
        assert_eq!(
            latest,
            1 + ok,
            "each successful rotation added exactly one version"
        );
        let versions = db
            .i64s(&format!(
                "SELECT version FROM key_versions WHERE key_id = '{id}' ORDER BY version"
            ))
            .await;
        assert_eq!(versions, (1..=latest as i64).collect::<Vec<_>>());
        let c1 = ctx(&[]);
        let ct = kms.encrypt(&a, id, b"x", &c1).await.unwrap();
        assert_eq!(ct.key_version, latest);
        assert_eq!(decrypt_ok(&kms, &a, &ct.ciphertext, &c1).await, b"x");
    }
);

// ---- key hierarchy, as stored -------------------------------------------------------------

both!(no_plaintext_or_key_material_in_any_table, |db| async move {
    let kms = new_kms(&db).await;
    let (unseal_key, shares) = kms.initialize(SealKind::Shamir, 5, 3, false).await.unwrap();
    unseal(&kms, &shares[..3]).await;
    let a = user("acme", "alice");
    let p = user("acme", "bob");
    let plaintext: Vec<u8> = b"PLAINTEXT-MARKER:"
        .iter()
        .copied()
        .chain((0..48u8).map(|i| i.wrapping_mul(37).wrapping_add(11)))
        .collect();
    let ctx_value = format!("context-marker-{}", Uuid::new_v4());
    let c1 = ctx(&[("tenant", &ctx_value)]);

    let mut ids = Vec::new();
    for t in KeyType::ALL {
        ids.push((t, create(&kms, &a, t.as_str(), t).await));
    }
    let mut data_keys = Vec::new();
    let mut public_keys = Vec::new();
    for (t, id) in &ids {
        match t.usage() {
            sovra_crypto::keytype::KeyUsage::EncryptDecrypt => {
                kms.encrypt(&a, *id, &plaintext, &c1).await.unwrap();
                let dk = kms.data_key(&a, *id, 32, &c1, true).await.unwrap();
                data_keys.push(dk.plaintext.unwrap().expose().to_vec());
                kms.rotate_key(&a, *id).await.unwrap();
                kms.encrypt(&a, *id, &plaintext, &c1).await.unwrap();
            }
            sovra_crypto::keytype::KeyUsage::SignVerify => {
                kms.sign(&a, *id, SignInput::Message(&plaintext), None)
                    .await
                    .unwrap();
                let (pem, _) = kms.public_key_pem(&a, *id, None).await.unwrap();
                public_keys.push((*t, pem_to_der(&pem)));
            }
            sovra_crypto::keytype::KeyUsage::Mac => {
                kms.mac(&a, *id, &plaintext).await.unwrap();
            }
        }
    }
    // Another user and a KEK rotation with rewrap, so every table has several rows.
    create(&kms, &p, "bobs", KeyType::Aes256Gcm).await;
    kms.rotate_org_kek(&admin("acme", "root")).await.unwrap();
    rewrap_org(&kms, "acme").await;

    let cells = db.dump_all().await;
    for (table, min_rows) in [("seal", 1), ("orgs", 1), ("org_keks", 2), ("keys", 8)] {
        assert!(
            cells
                .iter()
                .filter(|c| c.table == table && c.column == "created_at")
                .count()
                >= min_rows,
            "the dump must cover table {table}"
        );
    }
    let wrapped: Vec<_> = cells
        .iter()
        .filter(|c| c.table == "key_versions" && c.column == "wrapped_material")
        .collect();
    assert_eq!(wrapped.len(), 10, "every key version is in the dump");

    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("plaintext".into(), plaintext.clone()),
        ("unseal key".into(), unseal_key.expose().to_vec()),
        ("encryption context".into(), ctx_value.clone().into_bytes()),
    ];
    for (i, dk) in data_keys.iter().enumerate() {
        secrets.push((format!("data key {i}"), dk.clone()));
    }
    for (i, s) in shares.iter().enumerate() {
        // A share is its id byte followed by the share value.
        secrets.push((format!("unseal share {i}"), s.expose()[1..].to_vec()));
    }
    // Canaries for private key material: the PKCS#8 Sovra generates embeds the public key
    // (Ed25519 PKCS#8 v2, the RSA modulus and exponent, the EC point when present), and no
    // column stores public keys today, so a public key's bytes in a column mean unwrapped
    // private material. (If a public-key column is ever added, skip that column here.)
    for (t, der) in &public_keys {
        secrets.push((
            format!("{t} public key (canary for its private key)"),
            der[der.len() - 32..].to_vec(),
        ));
    }
    // Every 16-byte (and 32-byte, for hex) window of every stored value.
    let mut windows16 = std::collections::HashSet::new();
    let mut windows32 = std::collections::HashSet::new();
    for cell in &cells {
        windows16.extend(cell.bytes.windows(16));
        windows32.extend(cell.bytes.windows(32));
    }
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is too short to scan for");
        for w in secret.windows(16) {
            assert!(
                !windows16.contains(w),
                "a 16-byte window of the {what} is stored"
            );
        }
        let hexed = hex(secret).into_bytes();
        for w in hexed.windows(32) {
            assert!(
                !windows32.contains(w),
                "a 16-byte window of the {what} is stored in hex"
            );
        }
    }
    // Self-check of the scan: something that is stored is found.
    let sample = &wrapped[0].bytes[..16];
    assert!(windows16.contains(sample));
    // The wrapped blobs are all distinct (fresh nonces, distinct material).
    let mut blobs: Vec<&Vec<u8>> = wrapped.iter().map(|c| &c.bytes).collect();
    blobs.sort();
    blobs.dedup();
    assert_eq!(blobs.len(), 10);
});

both!(kek_rotation_lazy_and_sweep_rewrap, |db| async move {
    let (kms, shares) = unsealed_kms(&db).await;
    let a = user("acme", "alice");
    let root = admin("acme", "root");
    let c1 = ctx(&[("k", "v")]);
    let aes_id = create(&kms, &a, "aes", KeyType::Aes256Gcm).await;
    let cha_id = create(&kms, &a, "chacha", KeyType::ChaCha20Poly1305).await;
    let sig_id = create(&kms, &a, "sig", KeyType::EcdsaP256).await;
    let mac_id = create(&kms, &a, "mac", KeyType::HmacSha256).await;
    kms.rotate_key(&a, aes_id).await.unwrap(); // aes has versions 1 and 2
    let other_org = user("globex", "carol");
    let g_id = create(&kms, &other_org, "g", KeyType::Aes256Gcm).await;

    let ct_aes = kms
        .encrypt(&a, aes_id, b"aes data", &c1)
        .await
        .unwrap()
        .ciphertext;
    let ct_cha = kms
        .encrypt(&a, cha_id, b"chacha data", &c1)
        .await
        .unwrap()
        .ciphertext;
    let ct_g = kms
        .encrypt(&other_org, g_id, b"globex data", &c1)
        .await
        .unwrap()
        .ciphertext;
    let sig = kms
        .sign(&a, sig_id, SignInput::Message(b"m"), None)
        .await
        .unwrap();
    let (tag, _) = kms.mac(&a, mac_id, b"m").await.unwrap();
    let acme_versions = key_versions_of_org_sql("acme");
    assert_eq!(db.i64s(&acme_versions).await, vec![1; 5]);
    let blobs_before = db
        .blobs("SELECT wrapped_material FROM key_versions ORDER BY key_id, version")
        .await;

    // Only an admin of the org rotates its KEK.
    let r = kms.rotate_org_kek(&a).await;
    assert!(matches!(r, Err(CoreError::Forbidden)), "{r:?}");
    assert_eq!(
        db.i64s("SELECT active_kek_version FROM orgs WHERE id = 'acme'")
            .await,
        vec![1]
    );
    assert_eq!(kms.rotate_org_kek(&root).await.unwrap(), 2);
    assert_eq!(
        db.i64s("SELECT active_kek_version FROM orgs WHERE id = 'acme'")
            .await,
        vec![2]
    );
    assert_eq!(
        db.i64s("SELECT active_kek_version FROM orgs WHERE id = 'globex'")
            .await,
        vec![1],
        "another org's KEK is untouched"
    );
    assert_eq!(
        db.i64s("SELECT COUNT(*) FROM org_keks WHERE org_id = 'acme'")
            .await,
        vec![2]
    );

    // Old ciphertexts still decrypt; with caches dropped, loading a version rewraps it.
    assert_eq!(decrypt_ok(&kms, &a, &ct_aes, &c1).await, b"aes data");
    reseal(&kms, &shares).await;
    assert_eq!(decrypt_ok(&kms, &a, &ct_cha, &c1).await, b"chacha data");
    assert_eq!(
        db.i64s(&format!(
            "SELECT kek_version FROM key_versions WHERE key_id = '{cha_id}'"
        ))
        .await,
        vec![2],
        "lazy rewrap on load"
    );
    assert_eq!(
        db.i64s(&format!(
            "SELECT kek_version FROM key_versions WHERE key_id = '{aes_id}' ORDER BY version"
        ))
        .await,
        vec![1, 1],
        "versions not loaded yet are still under KEK 1"
    );
    // New keys and versions are wrapped under the new KEK.
    let new_id = create(&kms, &a, "after", KeyType::Aes256Gcm).await;
    assert_eq!(
        db.i64s(&format!(
            "SELECT kek_version FROM key_versions WHERE key_id = '{new_id}'"
        ))
        .await,
        vec![2]
    );

    // The sweep rewraps the rest: aes v1, v2, sig v1, mac v1.
    assert_eq!(rewrap_org(&kms, "acme").await, 4);
    assert_eq!(db.i64s(&acme_versions).await, vec![2; 6]);
    assert!(db.versions_below_kek("acme", 2).await.is_empty());
    assert_eq!(rewrap_org(&kms, "acme").await, 0);
    assert_eq!(
        db.i64s(&key_versions_of_org_sql("globex")).await,
        vec![1],
        "another org's keys stay under its own KEK"
    );
    let blobs_after = db
        .blobs("SELECT wrapped_material FROM key_versions ORDER BY key_id, version")
        .await;
    let changed = blobs_before
        .iter()
        .filter(|b| !blobs_after.contains(b))
        .count();
    assert_eq!(
        changed, 5,
        "every acme version was rewrapped; globex's was not"
    );

    // Everything still works from the store, under KEK 2 only.
    reseal(&kms, &shares).await;
    assert_eq!(decrypt_ok(&kms, &a, &ct_aes, &c1).await, b"aes data");
    assert_eq!(decrypt_ok(&kms, &a, &ct_cha, &c1).await, b"chacha data");
    assert_eq!(
        decrypt_ok(&kms, &other_org, &ct_g, &c1).await,
        b"globex data"
    );
    let m = SignInput::Message(b"m");
    assert!(
        kms.verify(&a, sig_id, m, &sig.signature, None, None)
            .await
            .unwrap()
    );
    assert!(kms.verify_mac(&a, mac_id, b"m", &tag, None).await.unwrap());

    // A second rotation goes to 3.
    assert_eq!(kms.rotate_org_kek(&root).await.unwrap(), 3);
    assert_eq!(rewrap_org(&kms, "acme").await, 6);
    assert_eq!(db.i64s(&acme_versions).await, vec![3; 6]);
    reseal(&kms, &shares).await;
    assert_eq!(decrypt_ok(&kms, &a, &ct_aes, &c1).await, b"aes data");
});

both!(moved_wrapped_blobs_fail_to_unwrap, |db| async move {
    let (kms, shares) = unsealed_kms(&db).await;
    let a = user("acme", "alice");
    let g = user("globex", "gina");
    let c1 = ctx(&[("k", "v")]);
    let k1 = create(&kms, &a, "k1", KeyType::Aes256Gcm).await;
    let k2 = create(&kms, &a, "k2", KeyType::Aes256Gcm).await;
    let k3 = create(&kms, &a, "k3", KeyType::Aes256Gcm).await;
    let kg = create(&kms, &g, "kg", KeyType::Aes256Gcm).await;
    let ct3 = kms.encrypt(&a, k3, b"three", &c1).await.unwrap().ciphertext;
    kms.rotate_key(&a, k3).await.unwrap();
    let ct1 = kms.encrypt(&a, k1, b"one", &c1).await.unwrap().ciphertext;
    let ct2 = kms.encrypt(&a, k2, b"two", &c1).await.unwrap().ciphertext;
    let ctg = kms.encrypt(&g, kg, b"gee", &c1).await.unwrap().ciphertext;

    // Another key's blob in k2's row (same org, same type: only the key id differs).
    let moved = db
        .exec(&format!(
            "UPDATE key_versions SET wrapped_material = \
             (SELECT wrapped_material FROM key_versions WHERE key_id = '{k1}' AND version = 1) \
             WHERE key_id = '{k2}' AND version = 1"
        ))
        .await;
    assert_eq!(moved, 1);
    // Version 1's blob in version 2's row of k3.
    db.exec(&format!(
        "UPDATE key_versions SET wrapped_material = \
         (SELECT wrapped_material FROM key_versions WHERE key_id = '{k3}' AND version = 1) \
         WHERE key_id = '{k3}' AND version = 2"
    ))
    .await;
    // Another org's blob in globex's key row.
    db.exec(&format!(
        "UPDATE key_versions SET wrapped_material = \
         (SELECT wrapped_material FROM key_versions WHERE key_id = '{k1}' AND version = 1) \
         WHERE key_id = '{kg}' AND version = 1"
    ))
    .await;
    reseal(&kms, &shares).await;

    let r = kms.decrypt(&a, &ct2, &c1).await;
    assert!(
        matches!(r, Err(CoreError::Internal)),
        "a moved blob must not unwrap (k2 decrypt): {:?}",
        r.as_ref().map(|d| d.plaintext.expose().to_vec())
    );
    let r = kms.encrypt(&a, k2, b"x", &c1).await;
    assert!(
        matches!(r, Err(CoreError::Internal)),
        "k2 encrypt: {:?}",
        r.ok().map(|e| e.key_version)
    );
    let r = kms.encrypt(&a, k3, b"x", &c1).await;
    assert!(
        matches!(r, Err(CoreError::Internal)),
        "k3 v2: {:?}",
        r.ok().map(|e| e.key_version)
    );
    let r = kms.decrypt(&g, &ctg, &c1).await;
    assert!(
        matches!(r, Err(CoreError::Internal)),
        "cross-org blob: {:?}",
        r.ok().map(|d| d.key_version)
    );
    // The source key is unaffected.
    assert_eq!(decrypt_ok(&kms, &a, &ct1, &c1).await, b"one");
    let ct = kms.encrypt(&a, k1, b"still", &c1).await.unwrap().ciphertext;
    assert_eq!(decrypt_ok(&kms, &a, &ct, &c1).await, b"still");
    // k3's untouched version 1 still works.
    assert_eq!(decrypt_ok(&kms, &a, &ct3, &c1).await, b"three");

    // A wrapped KEK moved to another org does not unwrap either.
    let kg2 = create(&kms, &g, "kg2", KeyType::Aes256Gcm).await;
    let ctg2 = kms.encrypt(&g, kg2, b"gee2", &c1).await.unwrap().ciphertext;
    db.exec(
        "UPDATE org_keks SET wrapped_kek = \
         (SELECT wrapped_kek FROM org_keks WHERE org_id = 'acme' AND version = 1) \
         WHERE org_id = 'globex' AND version = 1",
    )
    .await;
    reseal(&kms, &shares).await;
    let r = kms.decrypt(&g, &ctg2, &c1).await;
    assert!(
        matches!(r, Err(CoreError::Internal)),
        "moved KEK: {:?}",
        r.ok().map(|d| d.key_version)
    );
    assert_eq!(decrypt_ok(&kms, &a, &ct1, &c1).await, b"one");
});

// Concurrent metadata changes never undo each other: a disable racing a description update
// ends with both applied (optimistic concurrency in the store, retried by the core).
both!(concurrent_metadata_changes_are_not_lost, |db| async move {
    let (kms, _) = unsealed_kms(&db).await;
    let a = user("acme", "alice");
    for round in 0..10 {
        let id = create(&kms, &a, &format!("race-{round}"), KeyType::Aes256Gcm).await;
        let (k1, k2, a1, a2) = (kms.clone(), kms.clone(), a.clone(), a.clone());
        let disable = tokio::spawn(async move { k1.disable_key(&a1, id).await });
        let describe = tokio::spawn(async move {
            let update = KeyUpdate {
                min_decryption_version: None,
                description: Some(format!("round {round}")),
            };
            k2.update_key(&a2, id, update).await
        });
        disable.await.unwrap().unwrap();
        describe.await.unwrap().unwrap();
        let info = kms.get_key(&a, id).await.unwrap();
        assert_eq!(
            info.state,
            sovra_core::model::KeyState::Disabled,
            "round {round}"
        );
        assert_eq!(
            info.description.as_deref(),
            Some(format!("round {round}").as_str())
        );
    }
});

// A signature made with a version below min_decryption_version no longer verifies against it.
both!(
    verification_respects_min_decryption_version,
    |db| async move {
        let (kms, _) = unsealed_kms(&db).await;
        let a = user("acme", "alice");
        let id = create(&kms, &a, "signer", KeyType::Ed25519).await;
        let old = kms
            .sign(&a, id, SignInput::Message(b"m"), None)
            .await
            .unwrap();
        assert_eq!(old.key_version, 1);
        kms.rotate_key(&a, id).await.unwrap();
        let ok = kms
            .verify(
                &a,
                id,
                SignInput::Message(b"m"),
                &old.signature,
                None,
                Some(1),
            )
            .await
            .unwrap();
        assert!(ok, "version 1 verifies while it is allowed");
        let update = KeyUpdate {
            min_decryption_version: Some(2),
            description: None,
        };
        kms.update_key(&a, id, update).await.unwrap();
        let r = kms
            .verify(
                &a,
                id,
                SignInput::Message(b"m"),
                &old.signature,
                None,
                Some(1),
            )
            .await;
        assert!(
            matches!(r, Err(CoreError::InvalidInput(_))),
            "{:?}",
            r.err()
        );
    }
);

both!(
    audit_keys_are_shared_by_nodes_and_dropped_when_sealed,
    |db| async move {
        let (kms, shares) = unsealed_kms(&db).await;
        let keys = kms.audit_keys().await.unwrap();
        // A second node on the same store uses the same keys (and unwraps them from the store).
        let node2 = Kms::new(db.store.clone(), KmsConfig::default())
            .await
            .unwrap();
        unseal(&node2, &shares[1..4]).await;
        let keys2 = node2.audit_keys().await.unwrap();
        assert_eq!(keys.public_key_spki(), keys2.public_key_spki());
        assert_eq!(
            keys.keyed_hash("token", b"t"),
            keys2.keyed_hash("token", b"t")
        );
        assert_ne!(
            keys.keyed_hash("token", b"t"),
            keys.keyed_hash("context", b"t"),
            "the field name separates keyed hashes"
        );
        // Neither private key is stored in the clear.
        let pem = kms.audit_public_key_pem().await.unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let cp = node2.audit_checkpoint(7, "head").await.unwrap();
        assert!(
            sovra_crypto::sign::verify_spki(
                sovra_crypto::sign::SignatureAlgorithm::Ed25519,
                keys.public_key_spki(),
                sovra_crypto::sign::SignInput::Message(
                    &sovra_core::audit::Checkpoint::signed_bytes(cp.seq, &cp.head, cp.time_ms)
                ),
                &b64_decode(&cp.signature),
            )
            .unwrap()
        );
        // Sealed: the keys are gone from memory, the public key is still served.
        kms.seal(&operator()).unwrap();
        assert!(matches!(
            kms.audit_keys().await,
            Err(sovra_core::CoreError::Sealed)
        ));
        assert_eq!(kms.audit_public_key_pem().await.unwrap(), pem);
    }
);
