//! Key sharing inside an org, attacked end to end (threat rows mini-kms 17, platform E-2,
//! T-2): a grant lets its grantee do exactly the operations it names, under its context
//! condition, until it expires or is revoked, and everything else still answers exactly like a
//! missing key; a key admin manages every key of its org but uses none; a grant to another
//! org's identity is refused; a grant row an insider writes or edits gives nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt;

use common::{
    Resp, Server, api_call as call, api_ok as ok, assert_error, create_aes_key as aes_key,
    encrypt_hi, list_all, text,
};
use jwt::{claims, claims_with_roles, identity_of};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn grant(s: &Server, token: &str, key: &str, body: Value) -> Resp {
    call(
        s,
        token,
        Method::POST,
        &format!("/api/v1/keys/{key}/grants"),
        Some(body),
    )
    .await
}

async fn grant_ok(s: &Server, token: &str, key: &str, body: Value) -> String {
    let r = grant(s, token, key, body).await;
    assert_eq!(r.status, 201, "{r:?}");
    r.json["id"].as_str().unwrap().to_string()
}

async fn encrypt_ctx(s: &Server, token: &str, key: &str, ctx: Value) -> Resp {
    call(
        s,
        token,
        Method::POST,
        &format!("/api/v1/keys/{key}/encrypt"),
        Some(json!({"plaintext": "aGk=", "context": ctx})),
    )
    .await
}

async fn decrypt_ctx(s: &Server, token: &str, ct: &Value, ctx: Value) -> Resp {
    call(
        s,
        token,
        Method::POST,
        "/api/v1/decrypt",
        Some(json!({"ciphertext": ct, "context": ctx})),
    )
    .await
}

/// Every identity a test uses exists before it is granted anything (provisioned at its first
/// request).
async fn provision(s: &Server, tokens: &[&str]) {
    for t in tokens {
        ok(s, t, Method::GET, "/api/v1/keys", None).await;
    }
}

/// A grant names operations: the grantee can do those and nothing else, and what it cannot do
/// answers like a missing key. Context conditions hold as AWS defines them (equals: exactly;
/// subset: at least these pairs), on encrypt, decrypt and data keys.
#[tokio::test]
async fn a_grant_allows_exactly_what_it_names() {
    let (_dir, idp, s) = jwt::dev_server("grants-ops", "");
    let alice = idp.token(&claims("alice", "acme"));
    let bob = idp.token(&claims("bob", "acme"));
    let carol = idp.token(&claims("carol", "acme"));
    provision(&s, &[&alice, &bob, &carol]).await;
    let k = aes_key(&s, &alice, "shared").await;
    let missing = "5b0c3f8e-1d2a-4e6b-9c7d-8e9f0a1b2c3d";

    // Before any grant: bob's view of alice's key is a missing key's.
    for key in [k.as_str(), missing] {
        assert_error(&encrypt_hi(&s, &bob, key).await, 404, "not_found");
    }
    grant_ok(
        &s,
        &alice,
        &k,
        json!({"grantee": {"identity": identity_of("bob")}, "operations": ["encrypt"]}),
    )
    .await;
    let r = encrypt_ctx(&s, &bob, &k, json!({"app": "billing"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let ct = r.json["ciphertext"].clone();
    // Everything else bob tries on the key is a missing key's answer.
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/decrypt".to_string(),
            Some(json!({"ciphertext": ct, "context": {"app": "billing"}})),
        ),
        (Method::GET, format!("/api/v1/keys/{k}"), None),
        (Method::POST, format!("/api/v1/keys/{k}/rotate"), None),
        (Method::POST, format!("/api/v1/keys/{k}/disable"), None),
        (
            Method::POST,
            format!("/api/v1/keys/{k}/datakey"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/keys/{k}/reencrypt"),
            Some(json!({"ciphertext": ct, "context": {"app": "billing"}})),
        ),
        (Method::GET, format!("/api/v1/keys/{k}/grants"), None),
        (
            Method::POST,
            format!("/api/v1/keys/{k}/grants"),
            Some(json!({"grantee": {"identity": identity_of("carol")}, "operations": ["encrypt"]})),
        ),
    ] {
        let r = call(&s, &bob, method.clone(), &path, body).await;
        assert_error(&r, 404, "not_found");
    }
    // carol has no grant at all.
    assert_error(&encrypt_hi(&s, &carol, &k).await, 404, "not_found");
    // bob's listing shows only bob's keys.
    let mine = ok(&s, &bob, Method::GET, "/api/v1/keys", None).await;
    assert_eq!(mine["keys"].as_array().unwrap().len(), 0, "{mine}");

    // Decrypt only with exactly {app: billing}.
    grant_ok(
        &s,
        &alice,
        &k,
        json!({"grantee": {"identity": identity_of("bob")}, "operations": ["decrypt"],
               "constraints": {"encryption_context_equals": {"app": "billing"}}}),
    )
    .await;
    let r = decrypt_ctx(&s, &bob, &ct, json!({"app": "billing"})).await;
    assert_eq!(
        (r.status, r.json["plaintext"].as_str()),
        (200, Some("aGk=")),
        "{r:?}"
    );
    let other = encrypt_ctx(&s, &alice, &k, json!({"app": "billing", "extra": "1"}))
        .await
        .json["ciphertext"]
        .clone();
    let r = decrypt_ctx(&s, &bob, &other, json!({"app": "billing", "extra": "1"})).await;
    assert_error(&r, 404, "not_found");

    // Data keys for carol when the context holds {tenant: t1}.
    grant_ok(
        &s,
        &alice,
        &k,
        json!({"grantee": {"identity": identity_of("carol")}, "operations": ["datakey"],
               "constraints": {"encryption_context_subset": {"tenant": "t1"}}}),
    )
    .await;
    let dk_path = format!("/api/v1/keys/{k}/datakey");
    let dk = |ctx: Value| {
        call(
            &s,
            &carol,
            Method::POST,
            &dk_path,
            Some(json!({"context": ctx})),
        )
    };
    assert_eq!(dk(json!({"tenant": "t1", "app": "x"})).await.status, 200);
    assert_eq!(dk(json!({"tenant": "t1"})).await.status, 200);
    assert_error(&dk(json!({"tenant": "t2"})).await, 404, "not_found");
    assert_error(&dk(json!({})).await, 404, "not_found");
    // The datakey grant is no encrypt grant.
    assert_error(
        &encrypt_ctx(&s, &carol, &k, json!({"tenant": "t1"})).await,
        404,
        "not_found",
    );

    // The owner lists them; each names its grantee, operations and condition.
    let list = ok(
        &s,
        &alice,
        Method::GET,
        &format!("/api/v1/keys/{k}/grants"),
        None,
    )
    .await;
    let grants = list["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 3, "{list}");
    assert_eq!(
        grants[1]["constraints"]["encryption_context_equals"]["app"],
        "billing"
    );
    // Audited: the grants, and bob's use under his own name.
    let auditor = idp.token(&claims_with_roles("audrey", "acme", &["auditor"]));
    let events = list_all(&s, &auditor).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["action"] == "key.grant" && e["outcome"] == "success")
            .count(),
        3
    );
    assert!(
        events.iter().any(|e| e["action"] == "key.encrypt"
            && e["actor"] == identity_of("bob")
            && e["outcome"] == "success"),
        "{events:?}"
    );
}

/// A grant to a role covers every identity of the org holding it; a signing grant signs and a
/// read grant reads the public key, while verify needs its own grant.
#[tokio::test]
async fn a_grant_to_a_role_covers_its_holders() {
    let (_dir, idp, s) = jwt::dev_server("grants-role", "");
    let alice = idp.token(&claims("alice", "acme"));
    let dave = idp.token(&claims_with_roles("dave", "acme", &["auditor"]));
    let erin = idp.token(&claims("erin", "acme"));
    provision(&s, &[&alice, &dave, &erin]).await;
    let key = ok(
        &s,
        &alice,
        Method::POST,
        "/api/v1/keys",
        Some(json!({"name": "sig", "type": "ed25519"})),
    )
    .await;
    let k = key["id"].as_str().unwrap();
    grant_ok(
        &s,
        &alice,
        k,
        json!({"grantee": {"role": "auditor"}, "operations": ["sign", "read"]}),
    )
    .await;
    let sign_path = format!("/api/v1/keys/{k}/sign");
    let sign = |t: String| {
        let (s, path) = (&s, &sign_path);
        async move { call(s, &t, Method::POST, path, Some(json!({"message": "aGk="}))).await }
    };
    let r = sign(dave.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let sig = r.json["signature"].clone();
    ok(
        &s,
        &dave,
        Method::GET,
        &format!("/api/v1/keys/{k}/public-key"),
        None,
    )
    .await;
    let r = call(
        &s,
        &dave,
        Method::POST,
        &format!("/api/v1/keys/{k}/verify"),
        Some(json!({"message": "aGk=", "signature": sig})),
    )
    .await;
    assert_error(&r, 404, "not_found");
    assert_error(&sign(erin.clone()).await, 404, "not_found");

    // An HMAC key: erin may verify its MACs without being able to make one.
    let hm = ok(
        &s,
        &alice,
        Method::POST,
        "/api/v1/keys",
        Some(json!({"name": "mac", "type": "hmac-sha256"})),
    )
    .await;
    let hm = hm["id"].as_str().unwrap();
    let tag = ok(
        &s,
        &alice,
        Method::POST,
        &format!("/api/v1/keys/{hm}/mac"),
        Some(json!({"message": "aGk="})),
    )
    .await;
    grant_ok(
        &s,
        &alice,
        hm,
        json!({"grantee": {"identity": identity_of("erin")}, "operations": ["verify"]}),
    )
    .await;
    let r = call(
        &s,
        &erin,
        Method::POST,
        &format!("/api/v1/keys/{hm}/verify-mac"),
        Some(json!({"message": "aGk=", "mac": tag["mac"]})),
    )
    .await;
    assert_eq!(
        (r.status, r.json["valid"].as_bool()),
        (200, Some(true)),
        "{r:?}"
    );
    let r = call(
        &s,
        &erin,
        Method::POST,
        &format!("/api/v1/keys/{hm}/mac"),
        Some(json!({"message": "aGk="})),
    )
    .await;
    assert_error(&r, 404, "not_found");
}

/// Expiry, revocation and retirement take effect at once, also for a grantee whose key and
/// grants the server has cached; only the owner, a key admin or the grantee itself revokes.
#[tokio::test]
async fn grants_expire_and_revoke_at_once() {
    let (_dir, idp, s) = jwt::dev_server("grants-revoke", "");
    let alice = idp.token(&claims("alice", "acme"));
    let bob = idp.token(&claims("bob", "acme"));
    let carol = idp.token(&claims("carol", "acme"));
    provision(&s, &[&alice, &bob, &carol]).await;
    let k = aes_key(&s, &alice, "k").await;
    let g = grant_ok(
        &s,
        &alice,
        &k,
        json!({"grantee": {"identity": identity_of("bob")}, "operations": ["encrypt"]}),
    )
    .await;
    assert_eq!(encrypt_hi(&s, &bob, &k).await.status, 200);
    // carol cannot revoke bob's grant; bob sees no grant list.
    let path = format!("/api/v1/keys/{k}/grants/{g}");
    assert_error(
        &call(&s, &carol, Method::DELETE, &path, None).await,
        404,
        "not_found",
    );
    let out = s.cli_token(&["key", "revoke-grant", &k, &g], None, Some(&alice));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_error(&encrypt_hi(&s, &bob, &k).await, 404, "not_found");
    assert_error(
        &call(&s, &alice, Method::DELETE, &path, None).await,
        404,
        "not_found",
    );

    // The grantee retires its own grant.
    let g2 = grant_ok(
        &s,
        &alice,
        &k,
        json!({"grantee": {"identity": identity_of("bob")}, "operations": ["encrypt"]}),
    )
    .await;
    assert_eq!(encrypt_hi(&s, &bob, &k).await.status, 200);
    let r = call(
        &s,
        &bob,
        Method::DELETE,
        &format!("/api/v1/keys/{k}/grants/{g2}"),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_error(&encrypt_hi(&s, &bob, &k).await, 404, "not_found");

    // An expiring grant: works, then stops (polled, no fixed wait).
    grant_ok(
        &s,
        &alice,
        &k,
        json!({"grantee": {"identity": identity_of("bob")}, "operations": ["encrypt"], "expires_in_seconds": 1}),
    )
    .await;
    assert_eq!(encrypt_hi(&s, &bob, &k).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = encrypt_hi(&s, &bob, &k).await;
        if r.status == 404 {
            assert_error(&r, 404, "not_found");
            break;
        }
        assert_eq!(r.status, 200, "{r:?}");
        assert!(Instant::now() < deadline, "the grant did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let auditor = idp.token(&claims_with_roles("audrey", "acme", &["auditor"]));
    let events = list_all(&s, &auditor).await;
    let revoked: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "key.revoke_grant" && e["outcome"] == "success")
        .map(|e| &e["actor"])
        .collect();
    assert_eq!(
        revoked,
        [&json!(identity_of("bob")), &json!(identity_of("alice"))],
        "the owner's revocation and the grantee's retirement, newest first; the refused ones failed"
    );
}

/// A key admin reads, lists, disables and grants every key of its org, and uses none; its
/// role gives it nothing in another org.
#[tokio::test]
async fn a_key_admin_manages_keys_without_using_them() {
    let (_dir, idp, s) = jwt::dev_server("grants-keyadmin", "");
    let alice = idp.token(&claims("alice", "acme"));
    let bob = idp.token(&claims("bob", "acme"));
    let kadmin = idp.token(&claims_with_roles("kim", "acme", &["key_admin"]));
    let gina = idp.token(&claims("gina", "globex"));
    provision(&s, &[&alice, &bob, &kadmin, &gina]).await;
    let k = aes_key(&s, &alice, "payroll").await;
    let g = aes_key(&s, &gina, "globex-key").await;
    let listed = ok(&s, &kadmin, Method::GET, "/api/v1/keys", None).await;
    assert!(listed.to_string().contains(&k), "{listed}");
    assert!(
        !listed.to_string().contains(&g),
        "another org's key: {listed}"
    );
    ok(&s, &kadmin, Method::GET, &format!("/api/v1/keys/{k}"), None).await;
    ok(
        &s,
        &kadmin,
        Method::POST,
        &format!("/api/v1/keys/{k}/disable"),
        None,
    )
    .await;
    ok(
        &s,
        &kadmin,
        Method::POST,
        &format!("/api/v1/keys/{k}/enable"),
        None,
    )
    .await;
    assert_error(&encrypt_hi(&s, &kadmin, &k).await, 404, "not_found");
    assert_error(
        &call(
            &s,
            &kadmin,
            Method::POST,
            &format!("/api/v1/keys/{k}/datakey"),
            Some(json!({})),
        )
        .await,
        404,
        "not_found",
    );
    // It grants bob; bob encrypts; the key admin still does not.
    grant_ok(
        &s,
        &kadmin,
        &k,
        json!({"grantee": {"identity": identity_of("bob")}, "operations": ["encrypt"]}),
    )
    .await;
    assert_eq!(encrypt_hi(&s, &bob, &k).await.status, 200);
    assert_error(&encrypt_hi(&s, &kadmin, &k).await, 404, "not_found");
    // It cannot grant itself, nor be granted use through its role or by name.
    let r = grant(
        &s,
        &kadmin,
        &k,
        json!({"grantee": {"identity": identity_of("kim")}, "operations": ["decrypt"]}),
    )
    .await;
    assert_error(&r, 400, "invalid_input");
    let r = grant(
        &s,
        &alice,
        &k,
        json!({"grantee": {"role": "key_admin"}, "operations": ["encrypt"]}),
    )
    .await;
    assert_error(&r, 400, "invalid_input");
    grant_ok(
        &s,
        &alice,
        &k,
        json!({"grantee": {"identity": identity_of("kim")}, "operations": ["encrypt"]}),
    )
    .await;
    assert_error(&encrypt_hi(&s, &kadmin, &k).await, 404, "not_found");
    // Not in globex.
    for (method, path) in [
        (Method::GET, format!("/api/v1/keys/{g}")),
        (Method::POST, format!("/api/v1/keys/{g}/disable")),
    ] {
        assert_error(
            &call(&s, &kadmin, method, &path, None).await,
            404,
            "not_found",
        );
    }
}

/// Bad grants are refused with a clear error and store nothing: another org's identity, an
/// unknown identity or role, the operator role, operations the key cannot do, a context
/// condition on an operation without a context, two conditions, a bad lifetime, malformed
/// bodies.
#[tokio::test]
async fn bad_grants_are_refused_and_store_nothing() {
    let (_dir, idp, s) = jwt::dev_server("grants-bad", "");
    let alice = idp.token(&claims("alice", "acme"));
    let gina = idp.token(&claims("gina", "globex"));
    provision(&s, &[&alice, &gina]).await;
    let k = aes_key(&s, &alice, "k").await;
    let bob = json!({"identity": identity_of("alice")});
    for body in [
        json!({"grantee": {"identity": identity_of("gina")}, "operations": ["encrypt"]}),
        json!({"grantee": {"identity": identity_of("nobody")}, "operations": ["encrypt"]}),
        json!({"grantee": {"role": "operator"}, "operations": ["encrypt"]}),
        json!({"grantee": {"role": "root"}, "operations": ["encrypt"]}),
        json!({"grantee": {}, "operations": ["encrypt"]}),
        json!({"grantee": {"identity": identity_of("alice"), "role": "user"}, "operations": ["encrypt"]}),
        json!({"grantee": bob, "operations": []}),
        json!({"grantee": bob, "operations": ["launch"]}),
        json!({"grantee": bob, "operations": ["sign"]}),
        json!({"grantee": bob, "operations": ["read"], "constraints": {"encryption_context_equals": {"a": "b"}}}),
        json!({"grantee": bob, "operations": ["encrypt"], "constraints": {"encryption_context_equals": {"a": "b"}, "encryption_context_subset": {"a": "b"}}}),
        json!({"grantee": bob, "operations": ["encrypt"], "constraints": {"encryption_context_equals": {"": "b"}}}),
        json!({"grantee": bob, "operations": ["encrypt"], "expires_in_seconds": 0}),
        json!({"grantee": bob, "operations": ["encrypt"], "expires_in_seconds": 400_000_000}),
        json!({"grantee": bob, "operations": ["encrypt"], "org": "globex"}),
        json!({"grantee": bob, "operations": "encrypt"}),
    ] {
        let r = grant(&s, &alice, &k, body.clone()).await;
        assert_error(&r, 400, "invalid_input");
    }
    let r = call(
        &s,
        &alice,
        Method::POST,
        &format!("/api/v1/keys/{k}/grants"),
        None,
    )
    .await;
    assert_eq!(r.status, 415, "{r:?}");
    // Another org's user cannot grant on the key (it does not exist for them).
    let r = grant(
        &s,
        &gina,
        &k,
        json!({"grantee": {"identity": identity_of("gina")}, "operations": ["encrypt"]}),
    )
    .await;
    assert_error(&r, 404, "not_found");
    assert_eq!(s.sql("SELECT count(*) FROM grants"), "0");
}

/// An insider with write access to the database gives bob a grant by copying a valid grant
/// row to him, or widens a grant's operations: neither row holds its MAC, and neither grants
/// anything (the edited one stops working too).
#[tokio::test]
async fn grant_rows_written_in_the_database_give_nothing() {
    let (_dir, idp, s) = jwt::dev_server("grants-insider", "");
    let alice = idp.token(&claims("alice", "acme"));
    let bob = idp.token(&claims("bob", "acme"));
    let carol = idp.token(&claims("carol", "acme"));
    provision(&s, &[&alice, &bob, &carol]).await;
    let k = aes_key(&s, &alice, "k").await;
    let g = grant_ok(
        &s,
        &alice,
        &k,
        json!({"grantee": {"identity": identity_of("carol")}, "operations": ["encrypt"]}),
    )
    .await;
    assert_eq!(encrypt_hi(&s, &carol, &k).await.status, 200);
    s.sql(&format!(
        "INSERT INTO grants SELECT '{}', org_id, key_id, grantee_type, '{}', operations, \
             constraint_kind, constraint_context, expires_at, created_by, created_at, row_mac \
             FROM grants WHERE id = '{g}'",
        "6f1c2b1e-0000-4000-8000-000000000001",
        identity_of("bob")
    ));
    s.sql(&format!(
        "UPDATE grants SET operations = 'decrypt,encrypt' WHERE id = '{g}'"
    ));
    // The key's grants are cached for at most half a second: polled until read again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while encrypt_hi(&s, &carol, &k).await.status == 200 {
        assert!(Instant::now() < deadline, "the edited grant still works");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_error(&encrypt_hi(&s, &carol, &k).await, 404, "not_found");
    assert_error(&encrypt_hi(&s, &bob, &k).await, 404, "not_found");
    assert!(s.log_text().contains("grant row fails its integrity check"));
}
