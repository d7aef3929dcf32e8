//! Known-answer vectors of the wrap AADs the core binds (root key, org KEKs, key material,
//! audit keys), of the seal's root key wrapped under Shamir-shared unseal key, and of the row
//! MACs (the row-MAC key's derivation and the MACs of key, identity and grant rows). The vectors
//! come from `tests/vectors/generate.py` (Python, independent of this code); docs/formats.md
//! describes the formats. The audit formats' vectors are in `audit/format_vectors.rs`.

use crate::model::{
    ContextConstraint, GrantRecord, Grantee, IdentityKind, IdentityRecord, IdentityStatus, KeyOp,
    KeyRecord, KeyState, SealKind, SealRecord,
};
use sovra_crypto::wrap::WrappingKey;
use sovra_crypto::{KeyType, SecretBytes, shamir};

pub(crate) fn vectors(name: &str) -> serde_json::Value {
    let path = format!("{}/../../tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

pub(crate) fn bytes(v: &serde_json::Value) -> Vec<u8> {
    ::hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn case<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// Each caller's AAD is the vector's byte for byte, and the Python-wrapped blob unwraps with
/// it (so the wrap format matches too).
#[test]
fn every_wrap_aad_matches_the_vectors() {
    let v = vectors("wrap.json");
    let key = KeyRecord {
        id: uuid::Uuid::parse_str("0190f5a8-3c4e-7b2a-9d61-5e8f0a1b2c3d").unwrap(),
        org_id: "org-1".into(),
        owner: "someone".into(),
        name: "k".into(),
        key_type: KeyType::Aes256Gcm,
        description: None,
        state: KeyState::Enabled,
        latest_version: 2,
        min_decryption_version: 1,
        created_at: 0,
        rotated_at: None,
        deletion_date: None,
        revision: 1,
        row_mac: Vec::new(),
    };
    let callers = [
        ("root-key", crate::seal::root_key_aad()),
        ("org-kek", crate::hierarchy::kek_aad("org-1", 3)),
        ("key-material", crate::hierarchy::material_aad(&key, 2)),
        ("audit-signing-key", crate::audit::keys_aad("signing")),
        ("audit-hmac-key", crate::audit::keys_aad("hmac")),
    ];
    assert_eq!(callers.len(), v["cases"].as_array().unwrap().len());
    for (name, aad) in callers {
        let c = case(&v, name);
        assert_eq!(aad, bytes(&c["aad"]), "{name}: aad");
        let wk = WrappingKey::new(&SecretBytes::new(bytes(&c["wrapping_key"]))).unwrap();
        let secret = wk.unwrap(&bytes(&c["wrapped"]), &aad).unwrap();
        assert_eq!(secret.expose(), bytes(&c["secret"]), "{name}: unwrap");
    }
}

/// Python's shares combine to the unseal key, which unwraps Python's wrapped root key through
/// the seal's own path; fewer shares do not.
#[test]
fn the_seal_unwraps_a_root_key_from_python_shares() {
    let v = vectors("shamir.json");
    let shares: Vec<SecretBytes> = v["splits"][0]["share_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| SecretBytes::new(bytes(s)))
        .collect();
    let record = SealRecord {
        kind: SealKind::Shamir,
        shares: 5,
        threshold: 3,
        wrapped_root_key: bytes(&v["wrapped_root_key"]),
        created_at: 0,
        share_commitments: None,
    };
    // Each share's commitment, computed by Python from the documented encoding.
    for (share, expected) in shares
        .iter()
        .zip(v["share_commitments"].as_array().unwrap())
    {
        assert_eq!(
            crate::seal::share_commitment(&record.wrapped_root_key, share.expose()).to_vec(),
            bytes(expected)
        );
    }
    let key = shamir::combine(&[shares[4].clone(), shares[0].clone(), shares[2].clone()]).unwrap();
    assert_eq!(key.expose(), bytes(&v["unseal_key"]));
    let root = crate::seal::unwrap_root(&record, &key).unwrap();
    // The unwrapped root key is Python's: it opens what Python's root key wrapped.
    let probe = sovra_crypto::wrap::context("probe", &[]);
    let python_root = WrappingKey::new(&SecretBytes::new(bytes(&v["root_key"]))).unwrap();
    let blob = python_root
        .wrap(&SecretBytes::from_slice(b"probe"), &probe)
        .unwrap();
    assert_eq!(root.root.unwrap(&blob, &probe).unwrap().expose(), b"probe");
    let two = shamir::combine(&shares[..2]).unwrap();
    assert!(crate::seal::unwrap_root(&record, &two).is_err());
}

/// The row-MAC key derived from Python's root key, and each key row's message and MAC, are
/// Python's byte for byte; a MAC of one row does not verify another.
#[test]
fn row_macs_match_the_vectors() {
    let v = vectors("row_mac.json");
    let mac = crate::integrity::RowMac::derive(&SecretBytes::new(bytes(&v["root_key"]))).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for c in cases {
        let r = &c["row"];
        let text = |f: &str| r[f].as_str().unwrap().to_string();
        let number = |f: &str| r[f].as_i64();
        let mut key = KeyRecord {
            id: uuid::Uuid::parse_str(&text("id")).unwrap(),
            org_id: text("org_id"),
            owner: text("owner"),
            name: text("name"),
            key_type: KeyType::parse(&text("key_type")).unwrap(),
            description: r["description"].as_str().map(String::from),
            state: KeyState::parse(&text("state")).unwrap(),
            latest_version: number("latest_version").unwrap() as u32,
            min_decryption_version: number("min_decryption_version").unwrap() as u32,
            created_at: number("created_at").unwrap(),
            rotated_at: number("rotated_at"),
            deletion_date: number("deletion_date"),
            revision: r["revision"].as_u64().unwrap(),
            row_mac: Vec::new(),
        };
        let name = c["name"].as_str().unwrap();
        assert_eq!(
            crate::integrity::key_row_message(&key),
            bytes(&c["message"]),
            "{name}: message"
        );
        mac.sign_key(&mut key);
        assert_eq!(key.row_mac, bytes(&c["mac"]), "{name}: mac");
        assert!(mac.key_is_intact(&key));
        key.revision += 1;
        assert!(!mac.key_is_intact(&key), "{name}: another revision");
    }

    let text = |v: &serde_json::Value, f: &str| v[f].as_str().unwrap().to_string();
    let identities = v["identities"].as_array().unwrap();
    assert_eq!(identities.len(), 2);
    for c in identities {
        let r = &c["row"];
        let mut identity = IdentityRecord {
            org_id: text(r, "org_id"),
            id: text(r, "id"),
            kind: IdentityKind::parse(&text(r, "kind")).unwrap(),
            roles: r["roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect(),
            status: IdentityStatus::parse(&text(r, "status")).unwrap(),
            auth_source: text(r, "auth_source"),
            issuer: text(r, "issuer"),
            subject: text(r, "subject"),
            created_at: r["created_at"].as_i64().unwrap(),
            last_seen_at: Some(1),
            revision: r["revision"].as_u64().unwrap(),
            row_mac: Vec::new(),
        };
        let name = c["name"].as_str().unwrap();
        let message = crate::integrity::identity_row_message(&identity);
        assert_eq!(message, bytes(&c["message"]), "{name}: identity message");
        mac.sign_identity(&mut identity);
        assert_eq!(identity.row_mac, bytes(&c["mac"]), "{name}: identity mac");
        identity.status = IdentityStatus::Active;
        identity.roles.push("admin".into());
        assert!(
            mac.check_identity(identity).is_err(),
            "{name}: edited roles"
        );
    }

    let grants = v["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 3);
    for c in grants {
        let r = &c["row"];
        let grantee = match text(r, "grantee_type").as_str() {
            "identity" => Grantee::Identity(text(r, "grantee")),
            _ => Grantee::Role(text(r, "grantee")),
        };
        let constraint = r["constraint"].as_array().map(|c| {
            let context = serde_json::from_value(c[1].clone()).unwrap();
            match c[0].as_str().unwrap() {
                "equals" => ContextConstraint::Equals(context),
                _ => ContextConstraint::Subset(context),
            }
        });
        let mut grant = GrantRecord {
            id: uuid::Uuid::parse_str(&text(r, "id")).unwrap(),
            org_id: text(r, "org_id"),
            key_id: uuid::Uuid::parse_str(&text(r, "key_id")).unwrap(),
            grantee,
            operations: r["operations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| KeyOp::parse(o.as_str().unwrap()).unwrap())
                .collect(),
            constraint,
            expires_at: r["expires_at"].as_i64(),
            created_by: text(r, "created_by"),
            created_at: r["created_at"].as_i64().unwrap(),
            row_mac: Vec::new(),
        };
        let name = c["name"].as_str().unwrap();
        let message = crate::integrity::grant_row_message(&grant);
        assert_eq!(message, bytes(&c["message"]), "{name}: grant message");
        mac.sign_grant(&mut grant);
        assert_eq!(grant.row_mac, bytes(&c["mac"]), "{name}: grant mac");
        assert!(mac.grant_is_intact(&grant));
        grant.operations.push(KeyOp::Read);
        assert!(!mac.grant_is_intact(&grant), "{name}: widened operations");
    }
}
