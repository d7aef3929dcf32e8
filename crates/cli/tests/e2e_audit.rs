//! End-to-end audit log against the real `sovra` binary: one event per request with the right
//! facts, nothing sensitive stored, who may read what, checkpoints (periodic and at shutdown),
//! bad queries, SIEM forwarding to a destination that comes up late, and a slow client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt;

use common::{Resp, Server, TempDir, free_port, list_all, send, sovra_bin, text};
use jwt::{AUDIENCE, ISSUER, Signer, claims_with_roles};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

fn dev_token(s: &Server) -> &str {
    s.token.as_deref().unwrap()
}

async fn export(s: &Server, token: &str, query: &str) -> String {
    let r = send(
        s,
        &s.http(),
        Method::GET,
        &format!("/api/v1/audit/export{query}"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "audit export: {}", r.text);
    r.text
}

fn lines(export: &str) -> Vec<Value> {
    export
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn public_key_pem(s: &Server) -> String {
    let r = send(
        s,
        &s.http(),
        Method::GET,
        "/api/v1/audit/public-key",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "public key: {}", r.text);
    assert!(r.text.contains("BEGIN PUBLIC KEY"), "{}", r.text);
    r.text
}

/// `sovra audit verify` on an export: (success, stdout + stderr).
fn verify(dir: &Path, export: &str, pem: &str) -> (bool, String) {
    let tag = common::uuid_like();
    let file = dir.join(format!("export-{tag}.jsonl"));
    let key = dir.join(format!("audit-{tag}.pem"));
    std::fs::write(&file, export).unwrap();
    std::fs::write(&key, pem).unwrap();
    let out = std::process::Command::new(sovra_bin())
        .args(["audit", "verify"])
        .arg(&file)
        .arg("--public-key")
        .arg(&key)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn b64(b: &[u8]) -> String {
    sovra_client::b64(b)
}

async fn create_key(s: &Server, token: &str, name: &str) -> String {
    let r = send(
        s,
        &s.http(),
        Method::POST,
        "/api/v1/keys",
        Some(token),
        Some(&json!({"name": name, "type": "aes-256-gcm"}).to_string()),
    )
    .await;
    assert!(r.status < 300, "create key: {}", r.text);
    r.json["id"].as_str().unwrap().to_string()
}

fn by_request_id<'a>(events: &'a [Value], rid: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["request_id"] == json!(rid))
        .collect()
}

/// The events a `file` sink wrote, once it holds every sequence up to `head`.
async fn sink_events(file: &Path, head: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = std::fs::read_to_string(file)
            .map(|t| lines(&t))
            .unwrap_or_default();
        if events.iter().any(|e| e["seq"].as_u64() >= Some(head)) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "the file sink never reached {head}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- one event per request -------------------------------------------------------------------

#[tokio::test]
async fn every_request_yields_exactly_one_event_with_its_facts() {
    let dir = TempDir::new("audit-one");
    let sink_file = dir.path().join("sink").join("audit.jsonl");
    let s = Server::start_dev(
        dir.path(),
        &format!(
            "[[audit.sinks]]\nkind = \"file\"\nname = \"all\"\npath = \"{}\"\npoll_interval_ms = 100\n",
            sink_file.display()
        ),
    );
    let token = dev_token(&s).to_string();
    let actor = "dev-token#dev-admin";

    // The newest event before the mix; the list's own event comes right after it.
    let before = list_all(&s, &token).await;
    let base = before.first().map_or(0, |e| e["seq"].as_u64().unwrap());

    // (response, action, outcome, actor, resource or None when not pinned)
    let mut expected: Vec<(Resp, &str, &str, &str, Option<String>)> = Vec::new();

    let create = send(
        &s,
        &s.http(),
        Method::POST,
        "/api/v1/keys",
        Some(&token),
        Some(r#"{"name":"audit-one","type":"aes-256-gcm"}"#),
    )
    .await;
    assert!(create.status < 300, "{}", create.text);
    let id = create.json["id"].as_str().unwrap().to_string();
    // A creation names the key it created.
    expected.push((
        create,
        "key.create",
        "success",
        actor,
        Some(format!("key/{id}")),
    ));

    let ctx = json!({"tenant": "t-1"});
    let enc = send(
        &s,
        &s.http(),
        Method::POST,
        &format!("/api/v1/keys/{id}/encrypt"),
        Some(&token),
        Some(&json!({"plaintext": b64(b"hello"), "context": ctx}).to_string()),
    )
    .await;
    assert_eq!(enc.status, 200, "{}", enc.text);
    let ciphertext = enc.json["ciphertext"].as_str().unwrap().to_string();
    expected.push((
        enc,
        "key.encrypt",
        "success",
        actor,
        Some(format!("key/{id}")),
    ));

    // The decrypt route names no key: the event's resource is the key from the ciphertext.
    let dec = send(
        &s,
        &s.http(),
        Method::POST,
        "/api/v1/decrypt",
        Some(&token),
        Some(&json!({"ciphertext": ciphertext, "context": ctx}).to_string()),
    )
    .await;
    assert_eq!(dec.status, 200, "{}", dec.text);
    expected.push((
        dec,
        "key.decrypt",
        "success",
        actor,
        Some(format!("key/{id}")),
    ));

    let unknown = "00000000-0000-4000-8000-000000000000";
    let missing = send(
        &s,
        &s.http(),
        Method::GET,
        &format!("/api/v1/keys/{unknown}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    expected.push((
        missing,
        "key.read",
        "failure",
        actor,
        Some(format!("key/{unknown}")),
    ));

    let bad_token = send(
        &s,
        &s.http(),
        Method::GET,
        "/api/v1/keys",
        Some("not-a-valid-token"),
        None,
    )
    .await;
    assert_eq!(bad_token.status, 401, "{}", bad_token.text);
    expected.push((bad_token, "key.list", "denied", "anonymous", None));

    let malformed = send(
        &s,
        &s.http(),
        Method::POST,
        &format!("/api/v1/keys/{id}/encrypt"),
        Some(&token),
        Some("{\"plaintext\": "),
    )
    .await;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    expected.push((
        malformed,
        "key.encrypt",
        "failure",
        actor,
        Some(format!("key/{id}")),
    ));

    let unmatched = send(
        &s,
        &s.http(),
        Method::GET,
        "/api/v1/no-such-route",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(unmatched.status, 404, "{}", unmatched.text);
    expected.push((unmatched, "unmatched", "failure", "anonymous", None));

    // Count through the export: it holds every event (other orgs' and anonymous ones as links).
    let exported = lines(&export(&s, &token, "").await);
    let seqs: Vec<u64> = exported
        .iter()
        .filter(|l| l["type"] != json!("checkpoint"))
        .map(|l| l["seq"].as_u64().unwrap())
        .filter(|q| *q > base)
        .collect();
    // The first list's event plus one per request of the mix; nothing else, nothing missing.
    assert_eq!(
        seqs,
        (base + 1..=base + 1 + expected.len() as u64).collect::<Vec<_>>(),
        "events after {base}"
    );
    let head = *seqs.last().unwrap();
    // Anonymous events belong to no org, so no one lists them in full; the file sink gets
    // every event in full.
    let after = sink_events(&sink_file, head).await;

    for (resp, action, outcome, actor, resource) in &expected {
        let rid = resp
            .request_id()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| panic!("no x-request-id: {}", resp.text));
        let found = by_request_id(&after, rid);
        assert_eq!(found.len(), 1, "{action}: events {found:#?}");
        let e = found[0];
        assert_eq!(e["action"], json!(action), "{e:#}");
        assert_eq!(e["outcome"], json!(outcome), "{e:#}");
        assert_eq!(e["actor"], json!(actor), "{e:#}");
        assert_eq!(e["source"], json!("127.0.0.1"), "{e:#}");
        if let Some(r) = resource {
            assert_eq!(e["resource"], json!(r), "{e:#}");
        }
        if resp.status < 300 {
            assert!(e["error_code"].is_null(), "{e:#}");
        } else {
            // The event names the same error the caller was told.
            let code = resp.json["error"]["code"].as_str().unwrap_or("missing");
            assert_eq!(
                e["error_code"],
                json!(code),
                "{action}: {e:#} vs {}",
                resp.text
            );
        }
    }
    // The encrypt and decrypt events carry the keyed hashes of the token and the context.
    for (resp, action, ..) in &expected[1..3] {
        let e = by_request_id(&after, resp.request_id().unwrap())[0];
        let hashed = e["hashed"].as_object().unwrap();
        assert!(
            hashed.contains_key("token") && hashed.contains_key("context"),
            "{action}: {e:#}"
        );
    }
}

// ---- nothing sensitive stored ----------------------------------------------------------------

fn db_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("sovra.db"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    assert!(!files.is_empty(), "no sovra.db* files in the data dir");
    files
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn token_plaintext_and_context_are_stored_only_as_keyed_hashes() {
    let dir = TempDir::new("audit-secret");
    let s = Server::start_dev(dir.path(), "");
    let token = dev_token(&s).to_string();
    let marker = format!("PLAINTEXT-MARKER-{}", common::uuid_like());
    let ctx_value = format!("CTX-MARKER-{}", common::uuid_like());
    let ctx = json!({"tenant": ctx_value});

    let id = create_key(&s, &token, "audit-secret").await;
    let enc = send(
        &s,
        &s.http(),
        Method::POST,
        &format!("/api/v1/keys/{id}/encrypt"),
        Some(&token),
        Some(&json!({"plaintext": b64(marker.as_bytes()), "context": ctx}).to_string()),
    )
    .await;
    assert_eq!(enc.status, 200, "{}", enc.text);
    let dec = send(
        &s,
        &s.http(),
        Method::POST,
        "/api/v1/decrypt",
        Some(&token),
        Some(&json!({"ciphertext": enc.json["ciphertext"], "context": ctx}).to_string()),
    )
    .await;
    assert_eq!(dec.status, 200, "{}", dec.text);

    let secrets: [(&str, Vec<u8>); 4] = [
        ("the dev token", token.as_bytes().to_vec()),
        ("the plaintext", marker.as_bytes().to_vec()),
        ("the base64 plaintext", b64(marker.as_bytes()).into_bytes()),
        ("the context value", ctx_value.as_bytes().to_vec()),
    ];
    let exported = export(&s, &token, "").await;
    for (what, secret) in &secrets {
        assert!(
            !contains(exported.as_bytes(), secret),
            "{what} appears in the audit export"
        );
    }
    for (file, bytes) in db_bytes(dir.path()) {
        for (what, secret) in &secrets {
            assert!(!contains(&bytes, secret), "{what} appears in {file}");
        }
    }

    // An auditor holding the token or the context finds the events by their keyed hash.
    let events = lines(&exported);
    let enc_event = events
        .iter()
        .find(|e| e["request_id"] == json!(enc.request_id()))
        .expect("encrypt event in the export");
    let dec_event = events
        .iter()
        .find(|e| e["request_id"] == json!(dec.request_id()))
        .expect("decrypt event in the export");
    let h = send(
        &s,
        &s.http(),
        Method::POST,
        "/api/v1/audit/hash",
        Some(&token),
        Some(&json!({"token": token}).to_string()),
    )
    .await;
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.json["field"], json!("token"));
    assert_eq!(enc_event["hashed"]["token"], h.json["hash"]);
    assert_eq!(dec_event["hashed"]["token"], h.json["hash"]);
    let h = send(
        &s,
        &s.http(),
        Method::POST,
        "/api/v1/audit/hash",
        Some(&token),
        Some(&json!({"context": ctx}).to_string()),
    )
    .await;
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.json["field"], json!("context"));
    assert_eq!(enc_event["hashed"]["context"], h.json["hash"]);
    assert_eq!(dec_event["hashed"]["context"], h.json["hash"]);
    // The token's hash is not the context's: the field keys the hash.
    assert_ne!(enc_event["hashed"]["token"], enc_event["hashed"]["context"]);
}

// ---- access --------------------------------------------------------------------------------

/// A dev server that also accepts the JWTs of the returned signer (issuer [`ISSUER`]).
fn server_trusting_an_issuer(dir: &Path) -> (Signer, Server) {
    let es = Signer::es256("es-1");
    let jwks = dir.join("jwks.json");
    jwt::write_jwks(&jwks, std::slice::from_ref(&es.jwk));
    let s = Server::start_dev(dir, &jwt::issuer_toml(ISSUER, AUDIENCE, &jwks, ""));
    (es, s)
}

/// A token's keyed hash is kept with the verified token, so that it is computed once per token:
/// every event must still carry the hash of the token that made its request, whichever tokens
/// came before it, as the auditor's hash lookup computes it afresh.
#[tokio::test]
async fn each_event_carries_the_keyed_hash_of_its_own_token() {
    let dir = TempDir::new("audit-token-hash");
    let (es, s) = server_trusting_an_issuer(dir.path());
    let alice = es.token(&claims_with_roles("alice", "acme", &["user"]));
    let carol = es.token(&claims_with_roles("carol", "acme", &["user"]));
    let auditor = es.token(&claims_with_roles("audrey", "acme", &["auditor"]));
    let alice_key = create_key(&s, &alice, "alice-key").await;
    let carol_key = create_key(&s, &carol, "carol-key").await;

    let mut requests = Vec::new();
    for (token, key) in [
        (&alice, &alice_key),
        (&carol, &carol_key),
        (&alice, &alice_key),
        (&carol, &carol_key),
        // Someone else's key: denied, and still audited under the caller's token.
        (&alice, &carol_key),
    ] {
        let r = send(
            &s,
            &s.http(),
            Method::POST,
            &format!("/api/v1/keys/{key}/encrypt"),
            Some(token),
            Some(&json!({"plaintext": b64(b"x")}).to_string()),
        )
        .await;
        requests.push((token, r.request_id().unwrap_or_default().to_string()));
    }

    let events = lines(&export(&s, &auditor, "").await);
    for (token, request_id) in &requests {
        let expected = send(
            &s,
            &s.http(),
            Method::POST,
            "/api/v1/audit/hash",
            Some(&auditor),
            Some(&json!({ "token": token }).to_string()),
        )
        .await;
        assert_eq!(expected.status, 200, "{}", expected.text);
        let event = by_request_id(&events, request_id);
        assert_eq!(event.len(), 1, "one event for {request_id}");
        assert_eq!(
            event[0]["hashed"]["token"], expected.json["hash"],
            "event {request_id} carries another token's hash"
        );
    }
    let alice_hash = &by_request_id(&events, &requests[0].1)[0]["hashed"]["token"];
    let carol_hash = &by_request_id(&events, &requests[1].1)[0]["hashed"]["token"];
    assert_ne!(alice_hash, carol_hash);
}

#[tokio::test]
async fn users_cannot_read_the_log_and_auditors_see_only_their_org() {
    let dir = TempDir::new("audit-access");
    let (es, s) = server_trusting_an_issuer(dir.path());
    let alice = es.token(&claims_with_roles("alice", "acme", &["user"]));
    let auditor = es.token(&claims_with_roles("audrey", "acme", &["auditor"]));
    let bob = es.token(&claims_with_roles("bobby", "globex", &["user"]));

    let alice_key = create_key(&s, &alice, "acme-key").await;
    let bob_key = create_key(&s, &bob, "globex-secret-key").await;
    for (t, k) in [(&alice, &alice_key), (&bob, &bob_key)] {
        let r = send(
            &s,
            &s.http(),
            Method::POST,
            &format!("/api/v1/keys/{k}/encrypt"),
            Some(t),
            Some(&json!({"plaintext": b64(b"x")}).to_string()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }

    // A plain user may not read the log, export it, or use the hash lookup.
    for (method, path, body) in [
        (Method::GET, "/api/v1/audit", None),
        (Method::GET, "/api/v1/audit/export", None),
        (
            Method::POST,
            "/api/v1/audit/hash",
            Some(r#"{"token":"x"}"#.to_string()),
        ),
    ] {
        let r = send(&s, &s.http(), method, path, Some(&alice), body.as_deref()).await;
        assert_eq!(r.status, 403, "user on {path}: {}", r.text);
    }

    let alice_id = format!("{ISSUER}#alice");
    let listed = list_all(&s, &auditor).await;
    assert!(
        listed
            .iter()
            .any(|e| e["actor"] == json!(alice_id) && e["action"] == json!("key.encrypt")),
        "alice's encrypt missing: {listed:#?}"
    );
    for e in &listed {
        assert_eq!(e["org"], json!("acme"), "another org's event listed: {e:#}");
    }

    let exported = export(&s, &auditor, "").await;
    let all = lines(&exported);
    let redacted = all
        .iter()
        .filter(|l| l["type"] == json!("redacted"))
        .count();
    assert!(redacted >= 2, "globex's events are not redacted links");
    for l in all.iter().filter(|l| l["type"] == json!("event")) {
        assert_eq!(l["org"], json!("acme"), "{l:#}");
    }
    for hidden in ["globex", "bobby", bob_key.as_str()] {
        assert!(
            !exported.contains(hidden),
            "{hidden} leaks into acme's export"
        );
    }
    assert!(exported.contains(&alice_key));
    // Redacted links still chain: the export verifies offline.
    let pem = public_key_pem(&s).await;
    let (ok, out) = verify(dir.path(), &exported, &pem);
    assert!(ok, "auditor's export does not verify: {out}");
}

// ---- checkpoints ---------------------------------------------------------------------------

fn checkpoints(export: &str) -> Vec<Value> {
    lines(export)
        .into_iter()
        .filter(|l| l["type"] == json!("checkpoint"))
        .collect()
}

#[tokio::test]
async fn checkpoints_are_signed_periodically_and_at_shutdown() {
    let dir = TempDir::new("audit-cp");
    let data = dir.path().join("data");
    let s = Server::start_dev(&data, "[audit]\ncheckpoint_interval_seconds = 1\n");
    let token = dev_token(&s).to_string();
    create_key(&s, &token, "cp-key").await;
    // Periodic checkpoints: one appears without any shutdown.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !checkpoints(&export(&s, &token, "").await).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no periodic checkpoint");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(s.stop(), "server did not stop cleanly");

    // With an interval far longer than the test, only the shutdown can sign the last request.
    let quiet = "[audit]\ncheckpoint_interval_seconds = 3600\n";
    let s = Server::start_dev(&data, quiet);
    let token = dev_token(&s).to_string();
    let last = send(
        &s,
        &s.http(),
        Method::GET,
        "/api/v1/keys",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(last.status, 200, "{}", last.text);
    assert!(s.stop(), "server did not stop cleanly");

    let s = Server::start_dev(&data, quiet);
    let token = dev_token(&s).to_string();
    let exported = export(&s, &token, "").await;
    let last_seq = lines(&exported)
        .iter()
        .find(|l| l["request_id"] == json!(last.request_id()))
        .expect("the last request's event")["seq"]
        .as_u64()
        .unwrap();
    let head = lines(&exported)
        .iter()
        .filter(|l| l["type"] == json!("event"))
        .map(|l| l["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(head, last_seq, "the last request is the last event");
    let cps = checkpoints(&exported);
    assert_eq!(
        cps.last().unwrap()["seq"],
        json!(last_seq),
        "no shutdown checkpoint over the last event: {cps:#?}"
    );

    let pem = public_key_pem(&s).await;
    let (ok, out) = verify(dir.path(), &exported, &pem);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("signed through sequence {last_seq}")),
        "{out}"
    );

    // One altered byte in an event is found and its line named.
    let mut altered: Vec<String> = exported.lines().map(String::from).collect();
    let idx = altered
        .iter()
        .position(|l| l.contains("\"type\":\"event\"") && l.contains("\"source\":\"127.0.0.1\""))
        .expect("an event line");
    altered[idx] = altered[idx].replacen("\"source\":\"127.0.0.1\"", "\"source\":\"127.0.0.2\"", 1);
    let (ok, out) = verify(dir.path(), &altered.join("\n"), &pem);
    assert!(!ok, "an altered export verified: {out}");
    assert!(out.contains(&format!("line {}", idx + 1)), "{out}");
}

/// The SQLite store's audit chain has one writer, which seals events into its journal: a
/// second server on the same database would fork the chain, so it is refused at start and the
/// first keeps serving.
#[tokio::test]
async fn a_second_server_on_the_same_sqlite_database_is_refused() {
    let dir = TempDir::new("audit-one-writer");
    let data = dir.path().join("data");
    let s = Server::start_dev(&data, "");
    let token = dev_token(&s).to_string();
    let dev_env = std::fs::read_to_string(data.join("dev.env")).unwrap();
    let cfg = common::write_config(dir.path(), "");
    let mut second = std::process::Command::new(sovra_bin())
        .args(["server", "--dev", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server on the same database kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("locked by another process"), "{said}");
    assert_eq!(
        std::fs::read_to_string(data.join("dev.env")).unwrap(),
        dev_env,
        "the refused server must not point dev.env at itself"
    );
    let keys = send(
        &s,
        &s.http(),
        Method::GET,
        "/api/v1/keys",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(keys.status, 200, "{}", keys.text);
    assert_whole_chain_verifies(dir.path(), &s, &token).await;
}

// ---- bad input -----------------------------------------------------------------------------

#[tokio::test]
async fn bad_audit_queries_are_400s_and_each_still_leaves_one_event() {
    let dir = TempDir::new("audit-bad");
    let s = Server::start_dev(dir.path(), "");
    let token = dev_token(&s).to_string();
    let base = list_all(&s, &token)
        .await
        .first()
        .map_or(0, |e| e["seq"].as_u64().unwrap());

    let cases = [
        ("/api/v1/audit/export?from_seq=0", "invalid_range"),
        ("/api/v1/audit/export?from_seq=5&to_seq=2", "invalid_range"),
        ("/api/v1/audit/export?from_seq=abc", "invalid_query"),
        ("/api/v1/audit?from=yesterday", "invalid_query"),
        ("/api/v1/audit?limit=0", "invalid_range"),
        ("/api/v1/audit?limit=5000", "invalid_range"),
        ("/api/v1/audit?no_such_parameter=1", "invalid_query"),
    ];
    let mut ids = Vec::new();
    for (path, code) in cases {
        let r = send(&s, &s.http(), Method::GET, path, Some(&token), None).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert_eq!(r.json["error"]["code"], json!(code), "{path}: {}", r.text);
        ids.push((path, r.request_id().unwrap_or_default().to_string()));
    }

    let events = list_all(&s, &token).await;
    let new: Vec<&Value> = events
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > base)
        .collect();
    // The first list's event and one per bad query.
    assert_eq!(new.len(), 1 + cases.len(), "{new:#?}");
    for (path, rid) in ids {
        let found = by_request_id(&events, &rid);
        assert_eq!(found.len(), 1, "{path}: {found:#?}");
        assert_eq!(found[0]["outcome"], json!("failure"), "{path}");
    }
    // And the chain is whole.
    assert_whole_chain_verifies(dir.path(), &s, &token).await;
}

// ---- SIEM sink that comes up late ----------------------------------------------------------

async fn sink_backlog(s: &Server, sink: &str) -> Option<f64> {
    let r = send(s, &s.http(), Method::GET, "/metrics", None, None).await;
    let prefix = format!("sovra_audit_sink_backlog{{sink=\"{sink}\"}} ");
    r.text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

/// Reads RFC 6587 octet-counted syslog frames and records each event's seq.
fn syslog_collector(
    listener: std::net::TcpListener,
) -> std::sync::Arc<std::sync::Mutex<BTreeSet<u64>>> {
    use std::io::Read;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    // Frames: "<len> <message>".
                    while let Some(sp) = buf.iter().position(|b| *b == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        buf.drain(..sp + 1 + len);
                        let json_at = msg.find('{').expect("JSON in the syslog message");
                        let v: Value = serde_json::from_str(&msg[json_at..]).unwrap();
                        seen.lock().unwrap().insert(v["seq"].as_u64().unwrap());
                    }
                }
            });
        }
    });
    seen
}

#[tokio::test]
async fn a_siem_that_is_down_neither_blocks_requests_nor_loses_events() {
    let dir = TempDir::new("audit-siem");
    let port = free_port();
    let cfg = format!(
        "[[audit.sinks]]\nkind = \"syslog\"\nname = \"siem\"\naddress = \"127.0.0.1:{port}\"\n\
         tls = false\npoll_interval_ms = 100\nmax_backoff_ms = 500\n"
    );
    let s = Server::start_dev(dir.path(), &cfg);
    let token = dev_token(&s).to_string();
    for i in 0..5 {
        create_key(&s, &token, &format!("siem-{i}")).await;
    }
    let r = send(
        &s,
        &s.http(),
        Method::GET,
        "/api/v1/keys",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The forwarder is behind while nothing listens.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink_backlog(&s, "siem").await.unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "backlog never showed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let seen = syslog_collector(listener);
    let head = lines(&export(&s, &token, "").await)
        .iter()
        .filter_map(|l| l["seq"].as_u64())
        .max()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = seen.lock().unwrap().clone();
        if (1..=head).all(|q| got.contains(&q)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events 1..={head} not all delivered: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only /metrics (not audited) from here on: the backlog drains to zero.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink_backlog(&s, "siem").await != Some(0.0) {
        assert!(Instant::now() < deadline, "backlog does not drain to 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- slow client ---------------------------------------------------------------------------

/// The whole chain, exported with `token`, verifies offline against the server's public key.
async fn assert_whole_chain_verifies(dir: &Path, s: &Server, token: &str) {
    assert_export_verifies(dir, s, &export(s, token, "").await).await;
}

/// `sovra audit verify` accepts this export under the server's audit public key.
async fn assert_export_verifies(dir: &Path, s: &Server, exported: &str) {
    let (ok, out) = verify(dir, exported, &public_key_pem(s).await);
    assert!(ok, "{out}");
}

/// Sends an RSA-4096 key creation named `name` over a raw connection and hangs up once it runs,
/// well before such a key can have been generated.
async fn create_a_key_and_hang_up(s: &Server, token: &str, name: &str) {
    use tokio::io::AsyncWriteExt;
    let (mut stream, host_port) = raw_tls(s).await;
    let body = json!({"name": name, "type": "rsa-4096"}).to_string();
    let request = format!(
        "POST /api/v1/keys HTTP/1.1\r\nhost: {host_port}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
}

/// A TLS connection to the server with nothing on top, for requests no HTTP client would send.
async fn raw_tls(
    s: &Server,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    String,
) {
    let host_port = s.host_port().to_string();
    let tcp = tokio::net::TcpStream::connect(&host_port).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = s.tls_connector(&[]).connect(name, tcp).await.unwrap();
    (stream, host_port)
}

/// A client that hangs up while its request runs cannot cancel the request's audit event: the
/// operation it started (here a slow RSA-4096 key creation) happens, and is audited with its
/// real outcome.
#[tokio::test]
async fn a_client_that_hangs_up_mid_request_still_has_its_operation_audited() {
    let dir = TempDir::new("audit-hangup");
    let s = Server::start_dev(dir.path(), "");
    let token = dev_token(&s).to_string();
    create_a_key_and_hang_up(&s, &token, "hung-up").await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let key = loop {
        let keys = s.client().list_keys().await.unwrap();
        if let Some(k) = keys.into_iter().find(|k| k.name == "hung-up") {
            break k;
        }
        assert!(
            Instant::now() < deadline,
            "the key was never created; server log:\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resource = json!(format!("key/{}", key.id));
    let events = lines(&export(&s, &token, "").await);
    let created: Vec<_> = events
        .iter()
        .filter(|e| e["action"] == json!("key.create") && e["resource"] == resource)
        .collect();
    assert_eq!(created.len(), 1, "{events:#?}");
    assert_eq!(created[0]["outcome"], json!("success"));
    assert_whole_chain_verifies(dir.path(), &s, &token).await;
}

/// Stopping the server drains requests, not connections: a request whose client hung up has
/// no connection left, and still runs to its event before the process exits.
#[tokio::test]
async fn a_stop_right_after_a_client_hangs_up_waits_for_its_request() {
    let dir = TempDir::new("audit-hangup-stop");
    let data = dir.path().join("data");
    let s = Server::start_dev(&data, "");
    let token = dev_token(&s).to_string();
    create_a_key_and_hang_up(&s, &token, "hung-up-then-stopped").await;
    assert!(s.stop(), "server did not stop cleanly");

    let s = Server::start_dev(&data, "");
    let token = dev_token(&s).to_string();
    let keys = s.client().list_keys().await.unwrap();
    let key = keys
        .iter()
        .find(|k| k.name == "hung-up-then-stopped")
        .expect("the request ran to its end before the server exited");
    let exported = export(&s, &token, "").await;
    let resource = json!(format!("key/{}", key.id));
    assert!(
        lines(&exported)
            .iter()
            .any(|e| e["action"] == json!("key.create") && e["resource"] == resource),
        "the creation is audited"
    );
    assert_export_verifies(dir.path(), &s, &exported).await;
}

#[tokio::test]
async fn a_byte_per_second_client_is_cut_off_and_loses_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("audit-slow");
    let s = Server::start_dev(dir.path(), "[limits]\nrequest_timeout_seconds = 2\n");
    let token = dev_token(&s).to_string();
    create_key(&s, &token, "before-slow").await;
    let keys_before = s.client().list_keys().await.unwrap();

    let (stream, host_port) = raw_tls(&s).await;
    let (mut rd, mut wr) = tokio::io::split(stream);

    // A body far longer than the deadline allows at one byte per second.
    let body = format!(
        "{{\"name\":\"slow-key\",\"type\":\"aes-256-gcm\",\"description\":\"{}\"}}",
        "x".repeat(300)
    );
    let head = format!(
        "POST /api/v1/keys HTTP/1.1\r\nhost: {host_port}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    wr.flush().await.unwrap();
    let writer = tokio::spawn(async move {
        for b in body.as_bytes() {
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        let mut chunk = [0u8; 4096];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    // The JSON error ends with `}}`.
                    if answer.windows(2).any(|w| w == b"}}") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    writer.abort();
    assert!(read.is_ok(), "the server never cut off the slow client");
    let answer = text(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("\"code\":\"request_timeout\""),
        "slow client got: {answer}"
    );

    // Nothing written before was lost, the slow request created nothing, the chain is whole.
    let keys_after = s.client().list_keys().await.unwrap();
    let ids = |k: &[sovra_client::KeyInfo]| k.iter().map(|k| k.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&keys_before), ids(&keys_after));
    assert_whole_chain_verifies(dir.path(), &s, &token).await;
}

// ---- CLI -----------------------------------------------------------------------------------

#[tokio::test]
async fn cli_lists_exports_hashes_and_prints_the_public_key() {
    use common::{ok, ok_json};
    let dir = TempDir::new("audit-cli");
    let s = Server::start_dev(dir.path(), "");
    let created = ok_json(
        &s,
        &["key", "create", "--name", "cli", "--type", "aes-256-gcm"],
    );
    let id = created["id"].as_str().unwrap();
    ok(
        &s,
        &["encrypt", "--key", id, "--context", "tenant=acme"],
        Some(b"hi"),
    );

    let pem = text(&ok(&s, &["audit", "public-key"], None).stdout);
    assert_eq!(pem, public_key_pem(&s).await);
    let pem_file = dir.path().join("audit.pem");
    std::fs::write(&pem_file, &pem).unwrap();

    // Filters reach the server; JSON output is the page.
    let page = ok_json(&s, &["audit", "list", "--action", "key.encrypt"]);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page:#}");
    let enc = &events[0];
    assert_eq!(enc["resource"], json!(format!("key/{id}")));
    // Every spelling of the UUID the path accepts is audited under the canonical id.
    let uuid = id.to_string();
    let spellings = [
        uuid.to_uppercase(),
        uuid.replace('-', ""),
        format!("%7B{uuid}%7D"),
        format!("urn:uuid:{uuid}"),
    ];
    for spelling in &spellings {
        let r = send(
            &s,
            &s.http(),
            Method::GET,
            &format!("/api/v1/keys/{spelling}"),
            Some(dev_token(&s)),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{spelling}: {r:?}");
    }
    let page = ok_json(
        &s,
        &["audit", "list", "--action", "key.read", "--limit", "4"],
    );
    let reads = page["events"].as_array().unwrap();
    assert_eq!(reads.len(), spellings.len(), "{page:#}");
    for e in reads {
        assert_eq!(e["resource"], json!(format!("key/{id}")), "{e:#}");
    }
    let table = text(&ok(&s, &["audit", "list", "--outcome", "success"], None).stdout);
    assert!(table.lines().next().unwrap().contains("action"), "{table}");
    assert!(
        table.contains("key.encrypt") && table.contains("key.create"),
        "{table}"
    );
    // Paging: one event per page, the next page strictly older.
    let p1 = ok_json(&s, &["audit", "list", "--limit", "1"]);
    let next = p1["next_before_seq"].as_u64().expect("a next page");
    let p2 = ok_json(
        &s,
        &[
            "audit",
            "list",
            "--limit",
            "1",
            "--before-seq",
            &next.to_string(),
        ],
    );
    assert!(p2["events"][0]["seq"].as_u64().unwrap() < next, "{p2:#}");

    // The export written to a file verifies offline and is private to its owner.
    let out = dir.path().join("export.jsonl");
    ok(
        &s,
        &["audit", "export", "--out", out.to_str().unwrap()],
        None,
    );
    let v = std::process::Command::new(sovra_bin())
        .args(["audit", "verify"])
        .arg(&out)
        .arg("--public-key")
        .arg(&pem_file)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "export file mode {mode:o}");
    }
    // A range on stdout.
    let part = text(
        &ok(
            &s,
            &["audit", "export", "--from-seq", "2", "--to-seq", "3"],
            None,
        )
        .stdout,
    );
    let seqs: Vec<u64> = lines(&part)
        .iter()
        .filter(|l| l["type"] != json!("checkpoint"))
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3], "{part}");
    let bad = s.cli(&["audit", "export", "--from-seq", "0"], None);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("invalid_range"),
        "{}",
        text(&bad.stderr)
    );

    // Hash lookups match the events' keyed hashes; the token is read from a file.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", dev_token(&s))).unwrap();
    let h = text(
        &ok(
            &s,
            &[
                "audit",
                "hash",
                "--token-file",
                token_file.to_str().unwrap(),
            ],
            None,
        )
        .stdout,
    );
    assert_eq!(
        h.trim(),
        format!("token: {}", enc["hashed"]["token"].as_str().unwrap())
    );
    let h = ok_json(&s, &["audit", "hash", "--context", "tenant=acme"]);
    assert_eq!(h["field"], json!("context"));
    assert_eq!(h["hash"], enc["hashed"]["context"]);
    // Exactly one of the two.
    assert!(!s.cli(&["audit", "hash"], None).status.success());
}

/// The events in an export: full ones and other organizations' redacted links.
fn event_count(export: &str) -> usize {
    lines(export)
        .iter()
        .filter(|l| l["type"] == "event" || l["type"] == "redacted")
        .count()
}

/// Audit flooding: a caller over its bucket cannot make the server write events at the rate it
/// sends. An anonymous source hitting unknown paths and the unlimited probes, and an identity
/// hammering encrypt, each leave at most their bucket's worth of events plus one refusal a
/// minute; the rest are refused (429) or unaudited and counted.
#[tokio::test]
async fn a_caller_over_its_bucket_cannot_flood_the_audit_log() {
    let dir = TempDir::new("audit-flood");
    let s = Server::start_dev(
        dir.path(),
        "[rate_limits.unauthenticated]\nper_second = 0.01\nburst = 5\n\
         [rate_limits.crypto]\nper_second = 0.01\nburst = 5\n",
    );
    let token = dev_token(&s).to_string();
    let key = create_key(&s, &token, "flood").await;
    let before = event_count(&export(&s, &token, "").await);
    let http = s.http();
    // Concurrently: every 429 is held for half a second before it is sent.
    let requests = (0..300).flat_map(|i| {
        [
            (Method::GET, format!("/api/v1/no-such-route-{i}"), None),
            (Method::GET, "/api/v1/sys/seal-status".to_string(), None),
            (Method::GET, "/api/v1/audit/public-key".to_string(), None),
            (
                Method::POST,
                format!("/api/v1/keys/{key}/encrypt"),
                Some(r#"{"plaintext":"aGk="}"#),
            ),
        ]
    });
    // 64 at a time: below the per-source connection cap.
    let answers: Vec<u16> =
        futures_util::StreamExt::collect(futures_util::StreamExt::buffer_unordered(
            futures_util::stream::iter(requests.map(|(method, path, body)| {
                let (s, http, token) = (&s, &http, &token);
                async move {
                    let auth = body.is_some().then_some(token.as_str());
                    send(s, http, method, &path, auth, body).await.status
                }
            })),
            64,
        ))
        .await;
    let refused = answers.iter().filter(|st| **st == 429).count();
    assert!(
        refused >= 2 * 290,
        "{refused} refusals: the buckets did not run out"
    );
    let after = event_count(&export(&s, &token, "").await);
    // 5 unknown paths and 5 encryptions within the buckets, one audited refusal of each
    // caller, and the first export.
    let written = after - before;
    if written > 13 {
        // Show what was written before failing.
        let all = lines(&export(&s, &token, "").await);
        for l in &all[all.len().saturating_sub(written + 2)..] {
            eprintln!("written: {l}");
        }
    }
    assert!(
        written <= 5 + 5 + 2 + 1,
        "{written} events from 1,200 requests"
    );
    assert!(
        written >= 5 + 5 + 2,
        "{written} events: the admitted requests must be audited"
    );
    let metrics = s.get_ok("/metrics").await.text;
    let unrecorded: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sovra_audit_refusals_unrecorded_total "))
        .expect("the unrecorded refusals are counted")
        .trim()
        .parse()
        .unwrap();
    assert!(
        unrecorded >= (refused - 2) as f64,
        "{unrecorded} of {refused}"
    );
}

/// At start the chain is checked against its last signed checkpoint (item 6 of issue 20): an
/// owner of the SQLite file who deletes the checkpoints, or rewrites the history up to one,
/// gets an alarm (log, metric, an `audit.chain_unverified` event in the chain) instead of a
/// signature over the altered chain. A clean restart raises nothing.
#[tokio::test]
async fn a_chain_altered_while_stopped_is_an_alarm_at_start() {
    let alarm_log = "AUDIT CHAIN NOT VERIFIED";
    let unverified = |db: &Path| {
        common::sqlite3(
            db,
            "SELECT error_code FROM audit_events WHERE action = 'audit.chain_unverified'",
        )
    };
    for attack in ["none", "delete checkpoints", "rewrite history"] {
        let dir = TempDir::new("audit-start-check");
        let db = dir.path().join("sovra.db");
        let s = Server::start_dev(dir.path(), "");
        let token = dev_token(&s).to_string();
        create_key(&s, &token, "k").await;
        assert!(s.stop(), "graceful stop signs the head");
        let checkpoints = common::sqlite3(&db, "SELECT count(*), max(seq) FROM audit_checkpoints");
        assert!(!checkpoints.starts_with('0'), "{checkpoints}");
        match attack {
            "delete checkpoints" => {
                common::sqlite3(
                    &db,
                    "DROP TRIGGER audit_checkpoints_no_delete; DELETE FROM audit_checkpoints; \
                     SELECT count(*) FROM audit_checkpoints",
                );
            }
            "rewrite history" => {
                // As a rewrite with recomputed hashes leaves it: the checkpointed event's hash
                // differs from the signed one. The file's owner also removes the node's audit
                // journal, which would otherwise refuse the altered chain at start.
                std::fs::remove_file(dir.path().join("sovra.db-audit-journal")).unwrap();
                common::sqlite3(
                    &db,
                    "DROP TRIGGER audit_events_no_update; \
                     UPDATE audit_events SET actor = 'idp#mallory', hash = 'ab' || substr(hash, 3) \
                     WHERE seq = (SELECT max(seq) FROM audit_checkpoints); SELECT changes()",
                );
            }
            _ => {}
        }
        let s = Server::start_dev(dir.path(), "");
        let metric = "sovra_audit_chain_alarm";
        let deadline = Instant::now() + Duration::from_secs(30);
        let value = loop {
            let m = s.get_ok("/metrics").await.text;
            if let Some(v) = m
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{metric} ")))
            {
                break v.trim().to_string();
            }
            assert!(Instant::now() < deadline, "the start check did not run");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if attack == "none" {
            assert_eq!(value, "0");
            assert!(!s.log_text().contains(alarm_log));
            assert!(s.stop());
            assert_eq!(unverified(&db), "");
        } else {
            assert_eq!(value, "1", "{attack}");
            assert!(s.log_text().contains(alarm_log), "{attack}");
            assert!(s.stop());
            let alarm = unverified(&db);
            let expected = if attack == "delete checkpoints" {
                "no signed checkpoint"
            } else {
                "history rewritten"
            };
            assert!(alarm.contains(expected), "{attack}: {alarm}");
        }
    }
}
