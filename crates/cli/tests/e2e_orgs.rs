//! Organizations and identities as records, attacked end to end with real JWTs against real
//! servers (threat rows platform S-3, E-1, E-2, E-4, T-2): a valid token of an org that does
//! not exist or is suspended is refused and creates nothing; only operators manage orgs; every
//! principal is a stored identity of its org (provisioned on first use where its issuer allows
//! it), refused while disabled, and a service account never holds the admin role; an identity
//! row an insider edits is refused; a change through one node binds the others at commit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt;

use common::{
    DevNodes, Server, TempDir, api_call as call, api_ok as ok, assert_error, create_aes_key as key,
    encrypt_hi as encrypt, list_all, sqlite3, text,
};
use jwt::{AUDIENCE, ISSUER, Signer, claims, claims_with_roles, identity_of};
use reqwest::Method;
use serde_json::{Value, json};
use sovra_client::path_segment;
use std::time::{Duration, Instant};

fn dev(s: &Server) -> &str {
    s.token.as_deref().unwrap()
}

/// The identity path of `id` (ids hold ':', '/' and '#').
fn identity_path(id: &str) -> String {
    format!("/api/v1/identities/{}", path_segment(id))
}

// ---- organizations ------------------------------------------------------------------------

/// A valid token naming an org that is no record is refused on every kind of route, and
/// stores nothing (no org, no identity, no key); only an operator creates the org, after which
/// the same token works. Admins and users cannot create, list or suspend orgs.
#[tokio::test]
async fn nothing_creates_an_org_but_an_operator() {
    let (_dir, idp, s) = jwt::dev_server("orgs-implicit", "");
    let stranger = idp.token(&claims_with_roles("mallory", "initech", &["admin"]));
    for (method, path, body) in [
        (Method::GET, "/api/v1/keys", None),
        (
            Method::POST,
            "/api/v1/keys",
            Some(json!({"name": "k", "type": "aes-256-gcm"})),
        ),
        (Method::GET, "/api/v1/identities", None),
        (Method::GET, "/api/v1/audit", None),
        (Method::POST, "/api/v1/sys/kek/rotate", None),
    ] {
        let r = call(&s, &stranger, method.clone(), path, body).await;
        assert_error(&r, 403, "unknown_org");
        assert!(r.text.contains("initech"), "{r:?}");
    }
    assert_eq!(s.sql("SELECT count(*) FROM orgs WHERE id = 'initech'"), "0");
    assert_eq!(
        s.sql("SELECT count(*) FROM identities WHERE org_id = 'initech'"),
        "0"
    );

    // An org admin and a user of an existing org are no operators.
    let acme_admin = idp.token(&claims_with_roles("root", "acme", &["admin"]));
    let acme_user = idp.token(&claims("alice", "acme"));
    for t in [&acme_admin, &acme_user] {
        for (method, path, body) in [
            (Method::POST, "/api/v1/orgs", Some(json!({"id": "initech"}))),
            (Method::GET, "/api/v1/orgs", None),
            (Method::GET, "/api/v1/orgs/acme", None),
            (Method::POST, "/api/v1/orgs/globex/suspend", None),
        ] {
            assert_error(&call(&s, t, method, path, body).await, 403, "forbidden");
        }
    }
    assert_eq!(s.sql("SELECT count(*) FROM orgs WHERE id = 'initech'"), "0");

    // Bad input from the operator: refused, nothing stored.
    for (body, code) in [
        (json!({"id": "Initech"}), "invalid_input"),
        (json!({"id": "a/b"}), "invalid_input"),
        (json!({"id": ""}), "invalid_input"),
        (json!({"id": "x".repeat(65)}), "invalid_input"),
        (
            json!({"id": "initech", "display_name": "x".repeat(201)}),
            "invalid_input",
        ),
        (
            json!({"id": "initech", "display_name": "a\nb"}),
            "invalid_input",
        ),
        (
            json!({"id": "initech", "display_name": " "}),
            "invalid_input",
        ),
        (json!({"id": 7}), "invalid_input"),
        (json!({"id": "initech", "owner": "me"}), "invalid_input"),
    ] {
        let r = call(
            &s,
            dev(&s),
            Method::POST,
            "/api/v1/orgs",
            Some(body.clone()),
        )
        .await;
        assert_error(&r, 400, code);
    }
    assert_eq!(s.sql("SELECT count(*) FROM orgs WHERE id = 'initech'"), "0");

    // The operator creates it (through the CLI); a second create conflicts.
    let out = s.cli(
        &[
            "org",
            "create",
            "initech",
            "--display-name",
            "Initech",
            "--output",
            "json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (created["id"].as_str(), created["status"].as_str()),
        (Some("initech"), Some("active"))
    );
    let r = call(
        &s,
        dev(&s),
        Method::POST,
        "/api/v1/orgs",
        Some(json!({"id": "initech"})),
    )
    .await;
    assert_error(&r, 409, "conflict");
    let listed = s.cli(&["org", "list"], None);
    assert!(
        text(&listed.stdout).contains("initech\tactive\tInitech"),
        "{}",
        text(&listed.stdout)
    );

    // Now the same token works, and the org has its own KEK.
    let k = key(&s, &stranger, "first").await;
    assert_eq!(encrypt(&s, &stranger, &k).await.status, 200);
    assert_eq!(
        s.sql("SELECT count(*) FROM org_keks WHERE org_id = 'initech'"),
        "1"
    );
    // The creation is audited with the operator as actor.
    let events = list_all(&s, dev(&s)).await;
    assert!(
        events.iter().any(|e| e["action"] == "org.create"
            && e["resource"] == "org/initech"
            && e["outcome"] == "success"),
        "{events:?}"
    );
}

/// A suspended org's principals are refused at once, also with tokens the server has already
/// verified and identities it has cached, on every route; its keys stay intact and work again
/// when it is resumed. Suspending is idempotent; an unknown org is 404. An operator whose own
/// org is suspended still manages orgs (server-wide) but uses nothing of the org.
#[tokio::test]
async fn a_suspended_org_is_refused_until_resumed() {
    let (_dir, idp, s) = jwt::dev_server("orgs-suspend", "");
    let alice = idp.token(&claims("alice", "acme"));
    let gina = idp.token(&claims("gina", "globex"));
    let k = key(&s, &alice, "k").await;
    let ct = encrypt(&s, &alice, &k).await.json["ciphertext"].clone();
    let g = key(&s, &gina, "g").await;

    let out = s.cli(&["org", "suspend", "acme", "--output", "json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["status"], "suspended");
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/keys/{k}"), None),
        (Method::GET, "/api/v1/keys".to_string(), None),
        (
            Method::POST,
            format!("/api/v1/keys/{k}/encrypt"),
            Some(json!({"plaintext": "aGk="})),
        ),
        (
            Method::POST,
            "/api/v1/decrypt".to_string(),
            Some(json!({"ciphertext": ct})),
        ),
        (Method::POST, format!("/api/v1/keys/{k}/disable"), None),
    ] {
        let r = call(&s, &alice, method, &path, body).await;
        assert_error(&r, 403, "org_suspended");
    }
    // Another org is untouched.
    assert_eq!(encrypt(&s, &gina, &g).await.status, 200);
    // Idempotent, and the state is what the record says.
    let again = ok(&s, dev(&s), Method::POST, "/api/v1/orgs/acme/suspend", None).await;
    assert_eq!(again["status"], "suspended");
    assert_eq!(
        s.sql("SELECT status FROM orgs WHERE id = 'acme'"),
        "suspended"
    );
    assert_error(
        &call(
            &s,
            dev(&s),
            Method::POST,
            "/api/v1/orgs/nosuch/suspend",
            None,
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &call(
            &s,
            dev(&s),
            Method::POST,
            "/api/v1/orgs/nosuch/resume",
            None,
        )
        .await,
        404,
        "not_found",
    );

    let resumed = ok(&s, dev(&s), Method::POST, "/api/v1/orgs/acme/resume", None).await;
    assert_eq!(resumed["status"], "active");
    assert_eq!(encrypt(&s, &alice, &k).await.status, 200);
    let r = call(
        &s,
        &alice,
        Method::POST,
        "/api/v1/decrypt",
        Some(json!({"ciphertext": ct})),
    )
    .await;
    assert_eq!(
        (r.status, r.json["plaintext"].as_str()),
        (200, Some("aGk="))
    );

    // The operator's own org (the dev org) suspended: org management still works, keys not.
    ok(&s, dev(&s), Method::POST, "/api/v1/orgs/dev/suspend", None).await;
    assert_error(
        &call(&s, dev(&s), Method::GET, "/api/v1/keys", None).await,
        403,
        "forbidden",
    );
    let orgs = ok(&s, dev(&s), Method::GET, "/api/v1/orgs", None).await;
    assert!(orgs["orgs"].as_array().unwrap().len() >= 5, "{orgs}");
    ok(&s, dev(&s), Method::POST, "/api/v1/orgs/dev/resume", None).await;
    ok(&s, dev(&s), Method::GET, "/api/v1/keys", None).await;
    let events = list_all(&s, dev(&s)).await;
    for action in ["org.suspend", "org.resume"] {
        assert!(
            events
                .iter()
                .any(|e| e["action"] == action && e["resource"] == "org/acme"),
            "{action}: {events:?}"
        );
    }
}

/// Two nodes on one PostgreSQL: an org suspended and an identity disabled through node A are
/// refused by node B, which had both cached, well within the cache's age bound (the change
/// reaches it at commit); both come back the same way.
#[tokio::test]
async fn a_suspension_through_one_node_binds_the_other_at_once() {
    let dir = TempDir::new("orgs-nodes-jwks");
    let idp = Signer::es256("nodes-key");
    let jwks = dir.path().join("jwks.json");
    jwt::write_jwks(&jwks, std::slice::from_ref(&idp.jwk));
    let nodes = DevNodes::start("orgs-nodes", &jwt::issuer_toml(ISSUER, AUDIENCE, &jwks, ""));
    let (a, b) = (&nodes.a, &nodes.b);
    let alice = idp.token(&claims("alice", "acme"));
    let bob = idp.token(&claims("bob", "acme"));
    let admin = idp.token(&claims_with_roles("root", "acme", &["admin"]));
    let k = key(b, &alice, "k").await;
    let kb = key(b, &bob, "kb").await;
    assert_eq!(encrypt(b, &alice, &k).await.status, 200);

    // Refused by B within 5 s (the cache would keep it 30 s), polled without sleeping long.
    async fn refused_soon(s: &Server, token: &str, key: &str, code: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = encrypt(s, token, key).await;
            if r.status == 403 {
                assert_error(&r, 403, code);
                return;
            }
            assert_eq!(r.status, 200, "{r:?}");
            assert!(Instant::now() < deadline, "node still admits: {r:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ok(a, dev(a), Method::POST, "/api/v1/orgs/acme/suspend", None).await;
    refused_soon(b, &alice, &k, "org_suspended").await;
    ok(a, dev(a), Method::POST, "/api/v1/orgs/acme/resume", None).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while encrypt(b, &alice, &k).await.status != 200 {
        assert!(Instant::now() < deadline, "node B did not see the resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let patch = json!({"status": "disabled"});
    ok(
        a,
        &admin,
        Method::PATCH,
        &identity_path(&identity_of("bob")),
        Some(patch),
    )
    .await;
    refused_soon(b, &bob, &kb, "identity_disabled").await;
    assert_eq!(encrypt(b, &alice, &k).await.status, 200, "only bob");
}

// ---- identities -----------------------------------------------------------------------------

/// A new subject becomes an identity at its first request (kind from its roles), which its
/// org's admins and auditors list and users cannot; another org's admin sees none of it and
/// cannot change it. Disabling refuses the identity's (already verified) token at once.
#[tokio::test]
async fn identities_are_provisioned_listed_and_disabled() {
    let (_dir, idp, s) = jwt::dev_server("orgs-identities", "");
    let alice = idp.token(&claims("alice", "acme"));
    let admin = idp.token(&claims_with_roles("root", "acme", &["admin"]));
    let auditor = idp.token(&claims_with_roles("audrey", "acme", &["auditor"]));
    let globex_admin = idp.token(&claims_with_roles("gadmin", "globex", &["admin"]));
    let k = key(&s, &alice, "k").await;
    ok(&s, &auditor, Method::GET, "/api/v1/audit?limit=1", None).await;

    let list = ok(&s, &admin, Method::GET, "/api/v1/identities", None).await;
    let kinds: Vec<(String, String)> = list["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["subject"].as_str().unwrap().to_string(),
                i["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (sub, kind) in [("alice", "user"), ("root", "admin"), ("audrey", "auditor")] {
        assert!(
            kinds.contains(&(sub.to_string(), kind.to_string())),
            "{sub} {kind}: {kinds:?}"
        );
    }
    let a = ok(
        &s,
        &auditor,
        Method::GET,
        &identity_path(&identity_of("alice")),
        None,
    )
    .await;
    assert_eq!(
        (
            a["status"].as_str(),
            a["issuer"].as_str(),
            a["auth_source"].as_str()
        ),
        (Some("active"), Some(ISSUER), Some("jwt"))
    );
    assert!(a["last_seen"].is_string(), "{a}");
    assert_error(
        &call(&s, &alice, Method::GET, "/api/v1/identities", None).await,
        403,
        "forbidden",
    );
    // Another org's admin: alice is no identity of globex.
    let g = ok(&s, &globex_admin, Method::GET, "/api/v1/identities", None).await;
    assert!(!g.to_string().contains("alice"), "{g}");
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"status": "disabled"}))),
    ] {
        let r = call(
            &s,
            &globex_admin,
            method,
            &identity_path(&identity_of("alice")),
            body,
        )
        .await;
        assert_error(&r, 404, "not_found");
    }
    assert_eq!(encrypt(&s, &alice, &k).await.status, 200);

    // Disabled by its admin (the CLI): the cached token is refused at once; enabled: back.
    let out = s.cli_token(
        &[
            "identity",
            "disable",
            &identity_of("alice"),
            "--output",
            "json",
        ],
        None,
        Some(&admin),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_error(&encrypt(&s, &alice, &k).await, 403, "identity_disabled");
    let out = s.cli_token(
        &["identity", "enable", &identity_of("alice")],
        None,
        Some(&admin),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(encrypt(&s, &alice, &k).await.status, 200);

    // Bad changes: refused, nothing changed.
    let path = identity_path(&identity_of("alice"));
    for (body, code) in [
        (json!({"status": "gone"}), "invalid_input"),
        (json!({"kind": "root"}), "invalid_input"),
        (json!({"roles": ["root"]}), "invalid_input"),
        (json!({"roles": ["operator"]}), "invalid_input"),
        (json!({"roles": "admin"}), "invalid_input"),
        (json!({"org": "globex"}), "invalid_input"),
    ] {
        let r = call(&s, &admin, Method::PATCH, &path, Some(body.clone())).await;
        assert_error(&r, 400, code);
    }
    let r = call(
        &s,
        &alice,
        Method::PATCH,
        &path,
        Some(json!({"roles": ["admin"]})),
    )
    .await;
    assert_error(&r, 403, "forbidden");
    let row = s.sql("SELECT kind, roles, status, revision FROM identities WHERE subject = 'alice'");
    assert_eq!(
        row, "user  active 3",
        "two changes (disable, enable) and nothing else"
    );
    let events = list_all(&s, &admin).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["action"] == "identity.update" && e["outcome"] == "success")
            .count(),
        2,
        "{events:?}"
    );
}

/// With an issuer that does not provision, an unknown subject is refused and nothing is
/// stored until an admin registers it; a subject that owns keys from before identities were
/// records keeps working (its identity is made from its keys).
#[tokio::test]
async fn without_provisioning_only_registered_or_key_owning_subjects_get_in() {
    let (dir, idp, s) = jwt::dev_server("orgs-noprov", "");
    let alice = idp.token(&claims("alice", "acme"));
    let admin_token = idp.token(&claims_with_roles("root", "acme", &["admin"]));
    let k = key(&s, &alice, "old").await;
    key(&s, &admin_token, "admin-old").await;
    // As before identities existed: alice and root own keys, but have no identity row.
    assert!(s.stop());
    sqlite3(
        &dir.path().join("sovra.db"),
        "DELETE FROM identities WHERE org_id = 'acme'",
    );
    let jwks = dir.path().join("jwks.json");
    let s = Server::start_dev(
        dir.path(),
        &jwt::issuer_toml(ISSUER, AUDIENCE, &jwks, "provision_identities = false"),
    );
    assert_eq!(
        encrypt(&s, &alice, &k).await.status,
        200,
        "alice keeps her key"
    );
    assert_eq!(
        s.sql("SELECT kind FROM identities WHERE subject = 'alice'"),
        "user"
    );

    let carol = idp.token(&claims("carol", "acme"));
    let r = call(&s, &carol, Method::GET, "/api/v1/keys", None).await;
    assert_error(&r, 403, "unknown_identity");
    assert_eq!(
        s.sql("SELECT count(*) FROM identities WHERE subject = 'carol'"),
        "0"
    );
    // root, recognised by its keys, is an admin of acme again and registers carol.
    let r = call(
        &s,
        &admin_token,
        Method::POST,
        "/api/v1/identities",
        Some(json!({"issuer": ISSUER, "subject": "carol", "kind": "user"})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["id"], identity_of("carol"));
    let r = call(&s, &carol, Method::GET, "/api/v1/keys", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // A subject of another org registered nowhere: still refused.
    let dave = idp.token(&claims("dave", "globex"));
    assert_error(
        &call(&s, &dave, Method::GET, "/api/v1/keys", None).await,
        403,
        "unknown_identity",
    );
    // Registering twice conflicts.
    let r = call(
        &s,
        &admin_token,
        Method::POST,
        "/api/v1/identities",
        Some(json!({"issuer": ISSUER, "subject": "carol", "kind": "user"})),
    )
    .await;
    assert_error(&r, 409, "conflict");
}

/// A service account never holds the admin role: not through its token's claims, not through
/// a role given in Sovra, not by turning an admin into a service account (threat row E-4).
#[tokio::test]
async fn a_service_account_never_becomes_admin() {
    let (_dir, idp, s) = jwt::dev_server("orgs-service", "provision_identities = false");
    // The dev token is an admin of the dev org: the service account is registered there.
    let admin = dev(&s).to_string();
    let svc_claims = |roles: &[&str]| claims_with_roles("ci-bot", "dev", roles);
    let r = call(
        &s,
        &admin,
        Method::POST,
        "/api/v1/identities",
        Some(json!({"issuer": ISSUER, "subject": "ci-bot", "kind": "service_account", "roles": ["admin"]})),
    )
    .await;
    assert_error(&r, 403, "identity_refused");
    // Only subjects of a configured issuer: `dev-token#dev-admin` would be the dev identity
    // itself (made a service account, it would lock the operator out).
    for issuer in ["dev-token", "https://idp.unknown.test"] {
        let r = call(
            &s,
            &admin,
            Method::POST,
            "/api/v1/identities",
            Some(json!({"issuer": issuer, "subject": "dev-admin", "kind": "service_account"})),
        )
        .await;
        assert_error(&r, 400, "invalid_input");
    }
    // Malformed registrations: refused, nothing stored.
    for body in [
        json!({"issuer": ISSUER, "subject": "x".repeat(513), "kind": "user"}),
        json!({"issuer": ISSUER, "subject": "", "kind": "user"}),
        json!({"issuer": ISSUER, "subject": "a\u{1}b", "kind": "user"}),
        json!({"issuer": ISSUER, "subject": "bob", "kind": "root"}),
        json!({"issuer": ISSUER, "subject": "bob", "kind": "user", "roles": ["operator"]}),
        json!({"issuer": ISSUER, "subject": "bob", "kind": "user", "org": "acme"}),
        json!({"issuer": ISSUER, "subject": 7, "kind": "user"}),
    ] {
        let r = call(&s, &admin, Method::POST, "/api/v1/identities", Some(body)).await;
        assert_error(&r, 400, "invalid_input");
    }
    assert_eq!(
        s.sql("SELECT count(*) FROM identities WHERE subject != 'dev-admin'"),
        "0"
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM identities WHERE subject = 'dev-admin' AND kind != 'admin'"),
        "0"
    );
    let out = s.cli(
        &[
            "identity",
            "register",
            "--issuer",
            ISSUER,
            "--subject",
            "ci-bot",
            "--kind",
            "service_account",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bot = idp.token(&svc_claims(&[]));
    let bot_admin = idp.token(&svc_claims(&["admin"]));
    let k = key(&s, &bot, "ci").await;
    assert_eq!(encrypt(&s, &bot, &k).await.status, 200);
    assert_error(&encrypt(&s, &bot_admin, &k).await, 403, "identity_refused");
    let path = identity_path(&identity_of("ci-bot"));
    assert_error(
        &call(
            &s,
            &admin,
            Method::PATCH,
            &path,
            Some(json!({"roles": ["admin"]})),
        )
        .await,
        403,
        "identity_refused",
    );
    // An identity holding the admin role cannot be made a service account.
    let r = call(
        &s,
        &admin,
        Method::POST,
        "/api/v1/identities",
        Some(
            json!({"issuer": ISSUER, "subject": "ops-person", "kind": "admin", "roles": ["admin"]}),
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = call(
        &s,
        &admin,
        Method::PATCH,
        &identity_path(&identity_of("ops-person")),
        Some(json!({"kind": "service_account"})),
    )
    .await;
    assert_error(&r, 403, "identity_refused");
    assert_eq!(
        s.sql("SELECT kind, roles FROM identities WHERE subject IN ('ci-bot', 'ops-person') ORDER BY subject"
        ),
        "service_account \nadmin admin"
    );
}

/// An insider with write access to the database flips an identity's status, kind or roles:
/// the row fails its MAC and every request of that identity is refused as
/// `integrity_violation`, never admitted with the edited values (threat row T-2).
#[tokio::test]
async fn an_identity_row_edited_in_the_database_is_refused() {
    let (_dir, idp, s) = jwt::dev_server("orgs-rowmac", "");
    let admin = idp.token(&claims_with_roles("root", "acme", &["admin"]));
    let path = |sub: &str| identity_path(&identity_of(sub));
    let mut tokens = Vec::new();
    for sub in ["eve", "mal", "trudy"] {
        let t = idp.token(&claims(sub, "acme"));
        ok(&s, &t, Method::GET, "/api/v1/keys", None).await;
        tokens.push(t);
    }
    ok(
        &s,
        &admin,
        Method::PATCH,
        &path("eve"),
        Some(json!({"status": "disabled"})),
    )
    .await;
    assert_error(
        &call(&s, &tokens[0], Method::GET, "/api/v1/keys", None).await,
        403,
        "identity_disabled",
    );
    for sql in [
        "UPDATE identities SET status = 'active' WHERE subject = 'eve'",
        "UPDATE identities SET roles = 'admin' WHERE subject = 'mal'",
        "UPDATE identities SET kind = 'admin' WHERE subject = 'trudy'",
    ] {
        s.sql(sql);
    }
    // Listing reads every row of the org: it fails at once rather than show an edited one.
    let r = call(&s, &admin, Method::GET, "/api/v1/identities", None).await;
    assert_error(&r, 500, "integrity_violation");
    // Admission reads a row again when its cache entry is gone (its age bound, a seal, a
    // restart): after a restart, each edited identity is refused, never admitted as edited.
    let data = s.data_dir.clone();
    assert!(s.stop());
    let jwks = data.join("jwks.json");
    let s = Server::start_dev(&data, &jwt::issuer_toml(ISSUER, AUDIENCE, &jwks, ""));
    for t in &tokens {
        let r = call(&s, t, Method::GET, "/api/v1/keys", None).await;
        assert_error(&r, 500, "integrity_violation");
    }
    let r = call(&s, &tokens[1], Method::GET, "/api/v1/identities", None).await;
    assert_error(&r, 500, "integrity_violation");
    // Counted under its own record kind.
    let metrics = s.get_ok("/metrics").await.text;
    let counted = common::sample(
        &metrics,
        "sovra_integrity_violations_total",
        &[("record", "identity")],
    );
    assert!(counted.is_some_and(|n| n >= 4.0), "{counted:?}");
    // An untouched identity still works.
    ok(&s, &admin, Method::GET, "/api/v1/keys", None).await;
}
