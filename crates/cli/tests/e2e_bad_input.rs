//! End to end: bad input of every kind gets a clear JSON error with the right status and code,
//! never a 500, and leaves the state unchanged. No response (other than a decrypt) and no log
//! line ever carries a plaintext the test encrypted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DevApi, Resp, assert_error, assert_error_any, assert_message_has, with_key_id};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};

/// The plaintext every test encrypts; it must never come back except from decrypt.
const SECRET: &[u8] = b"TOP-SECRET-PLAINTEXT-7f3a9c";

fn b64(bytes: &[u8]) -> String {
    sovra_client::b64(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    sovra_client::unb64(s).unwrap()
}

enum Body<'a> {
    None,
    Json(&'a Value),
    /// Raw bytes with the given Content-Type (or none).
    Raw(Option<&'a str>, Vec<u8>),
}

struct Env {
    api: DevApi,
}

impl Env {
    fn start(tag: &str) -> Env {
        Env {
            api: DevApi::start(tag),
        }
    }

    async fn send(&self, method: Method, path: &str, body: Body<'_>) -> Resp {
        self.send_as(self.api.t(), method, path, body).await
    }

    async fn send_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Body<'_>,
    ) -> Resp {
        let mut req = self
            .api
            .http
            .request(method, format!("{}{path}", self.api.server.addr));
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Raw(ct, bytes) => {
                let req = match ct {
                    Some(ct) => req.header(CONTENT_TYPE, ct),
                    None => req,
                };
                req.body(bytes)
            }
        };
        let r = Resp::read(req.send().await.unwrap()).await.unwrap();
        assert_ne!(r.status, 500, "{path}: {r:?}");
        if r.status >= 400 {
            // Every error, whatever produced it, is the API's JSON error.
            let code = r.json["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert_error(&r, r.status, &code);
        }
        if !path.starts_with("/api/v1/decrypt") {
            assert_no_secret(&r.text, path);
        }
        r
    }

    async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(Method::POST, path, Body::Json(body)).await
    }

    async fn create(&self, name: &str, key_type: &str) -> String {
        let r = self
            .post("/api/v1/keys", &json!({"name": name, "type": key_type}))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.json["id"].as_str().unwrap().to_string()
    }

    async fn encrypt(&self, key: &str, plaintext: &[u8], ctx: Value) -> String {
        let r = self
            .post(
                &format!("/api/v1/keys/{key}/encrypt"),
                &json!({"plaintext": b64(plaintext), "context": ctx}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json["ciphertext"].as_str().unwrap().to_string()
    }

    async fn decrypt(&self, ciphertext: &str, ctx: Value) -> Resp {
        self.post(
            "/api/v1/decrypt",
            &json!({"ciphertext": ciphertext, "context": ctx}),
        )
        .await
    }

    /// The key still decrypts its old ciphertext to SECRET.
    async fn assert_decrypts(&self, ciphertext: &str, ctx: Value) {
        let r = self.decrypt(ciphertext, ctx).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(unb64(r.json["plaintext"].as_str().unwrap()), SECRET);
    }

    async fn keys(&self) -> Vec<Value> {
        let r = self.send(Method::GET, "/api/v1/keys", Body::None).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json["keys"].as_array().unwrap().clone()
    }

    async fn key(&self, id: &str) -> Value {
        let r = self
            .send(Method::GET, &format!("/api/v1/keys/{id}"), Body::None)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json
    }

    /// The server never logged the secret.
    fn finish(self) {
        let log = self.api.server.log_text();
        assert!(!log.is_empty());
        assert_no_secret(&log, "server log");
    }
}

#[track_caller]
fn assert_no_secret(text: &str, what: &str) {
    let raw = std::str::from_utf8(SECRET).unwrap();
    assert!(!text.contains(raw), "{what} carries the plaintext");
    assert!(
        !text.contains(&b64(SECRET)),
        "{what} carries the base64 plaintext"
    );
}

// ---- JSON bodies ----------------------------------------------------------------------------

#[tokio::test]
async fn malformed_bodies_get_clear_errors_and_change_nothing() {
    let env = Env::start("bad-json");
    let key = env.create("k", "aes-256-gcm").await;
    let signer = env.create("s", "ecdsa-p256").await;
    let ct = env.encrypt(&key, SECRET, json!({})).await;
    let before = env.keys().await;

    // (path, a valid body, a body with a wrong type, a body missing a required field)
    let routes: Vec<(Method, String, Value, Value, Value)> = vec![
        (
            Method::POST,
            "/api/v1/keys".into(),
            json!({"name": "new", "type": "aes-256-gcm"}),
            json!({"name": 5, "type": "aes-256-gcm"}),
            json!({"name": "new"}),
        ),
        (
            Method::POST,
            format!("/api/v1/keys/{key}/encrypt"),
            json!({"plaintext": b64(SECRET)}),
            json!({"plaintext": b64(SECRET), "context": ["a", "b"]}),
            json!({"context": {}}),
        ),
        (
            Method::POST,
            "/api/v1/decrypt".into(),
            json!({"ciphertext": ct}),
            json!({"ciphertext": ct, "context": {"a": 1}}),
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/v1/keys/{signer}/sign"),
            json!({"message": b64(b"m")}),
            json!({"message": true}),
            json!({"algorithm": "ecdsa-p256-sha256"}),
        ),
        (
            Method::POST,
            format!("/api/v1/keys/{key}/schedule-deletion"),
            json!({"pending_days": 7}),
            json!({"pending_days": "7"}),
            json!({}),
        ),
        (
            Method::PATCH,
            format!("/api/v1/keys/{key}"),
            json!({"description": "d"}),
            json!({"min_decryption_version": -1}),
            json!("not an object"),
        ),
        (
            Method::POST,
            format!("/api/v1/keys/{key}/encrypt/batch"),
            json!({"items": [{"plaintext": b64(SECRET)}]}),
            json!({"items": {"plaintext": b64(SECRET)}}),
            json!({"things": []}),
        ),
    ];
    let json_ct = Some("application/json");
    for (method, path, valid, wrong_type, missing) in &routes {
        let m = || method.clone();
        let raw = |s: &str| Body::Raw(json_ct, s.as_bytes().to_vec());
        // Syntax errors before any field: always `malformed_json`.
        for text in [
            "{",
            "}",
            "",
            " ",
            "[",
            "{\"",
            "{'name': 'x'}",
            "\u{feff}{}",
            "nul",
            "{\n\n  ,",
        ] {
            let r = env.send(m(), path, raw(text)).await;
            assert_error(&r, 400, "malformed_json");
        }
        // Syntax errors after some fields: 400, as a syntax error or for the fields already
        // read (serde stops at the first problem).
        for text in [
            "{\"name\":",
            "{\"a\" 1}",
            "{\"name\": \"x\",}",
            "{} trailing",
            "{}{}",
            "{\"name\": \"unterminated}",
            "{\"name\": \"bad escape \\q\"}",
            "{\"n\": 1e999999}",
            "{\"n\": NaN}",
        ] {
            let r = env.send(m(), path, raw(text)).await;
            assert_error_any(&r, 400, &["malformed_json", "invalid_input"]);
        }
        // Well-formed JSON of the wrong shape.
        for v in [
            wrong_type.clone(),
            missing.clone(),
            json!(null),
            json!([]),
            json!(42),
            json!("string"),
        ] {
            let r = env.send(m(), path, Body::Json(&v)).await;
            assert_error(&r, 400, "invalid_input");
        }
        // Unknown fields, also next to valid ones; duplicate fields.
        let mut unknown = valid.clone();
        unknown["unexpected"] = json!(1);
        let r = env.send(m(), path, Body::Json(&unknown)).await;
        assert_error(&r, 400, "invalid_input");
        assert_message_has(&r, "unexpected");
        let dup = valid.to_string();
        let dup = format!("{},{}", &dup[..dup.len() - 1], &dup[1..]);
        let r = env.send(m(), path, raw(&dup)).await;
        assert_error(&r, 400, "invalid_input");
        // Content type.
        let body = valid.to_string().into_bytes();
        let r = env.send(m(), path, Body::Raw(None, body.clone())).await;
        assert_error(&r, 415, "unsupported_media_type");
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/xml",
        ] {
            let r = env.send(m(), path, Body::Raw(Some(ct), body.clone())).await;
            assert_error(&r, 415, "unsupported_media_type");
        }
        // Not UTF-8.
        for bytes in [
            b"{\"name\": \"\xff\xfe\", \"type\": \"aes-256-gcm\"}".to_vec(),
            b"\xff\xfe{\x00}\x00".to_vec(),
            vec![0x80; 64],
        ] {
            let r = env.send(m(), path, Body::Raw(json_ct, bytes)).await;
            assert_error_any(&r, 400, &["malformed_json", "invalid_input"]);
        }
        // Deep nesting, at the top and inside a field.
        for text in [
            "[".repeat(100_000),
            format!("{{\"name\": {}", "[".repeat(100_000)),
            format!("{}{}", "{\"a\":".repeat(50_000), "1"),
        ] {
            let r = env.send(m(), path, raw(&text)).await;
            assert_error_any(&r, 400, &["malformed_json", "invalid_input"]);
        }
        // Over the 1 MiB body limit: valid JSON, just too big.
        let big = format!(
            "{{\"name\": \"{}\", \"plaintext\": \"{}\"}}",
            "a".repeat(16),
            "A".repeat(1024 * 1024)
        );
        let r = env.send(m(), path, raw(&big)).await;
        assert_error(&r, 413, "body_too_large");
        let r = env
            .send(m(), path, Body::Raw(json_ct, vec![b' '; 1024 * 1024 + 1]))
            .await;
        assert_error(&r, 413, "body_too_large");
    }
    // Authentication comes before the body: a bad body without a token is a 401.
    let r = env
        .send_as(
            None,
            Method::POST,
            "/api/v1/keys",
            Body::Raw(json_ct, b"{".to_vec()),
        )
        .await;
    assert_error(&r, 401, "unauthenticated");

    // A charset parameter is fine, and a plaintext just under the limit works.
    let r = env
        .send(
            Method::POST,
            "/api/v1/keys",
            Body::Raw(
                Some("application/json; charset=utf-8"),
                br#"{"name": "charset", "type": "aes-256-gcm"}"#.to_vec(),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let mut big = SECRET.to_vec();
    big.resize(700 * 1024, b'x');
    let big_ct = env.encrypt(&key, &big, json!({})).await;
    let r = env.decrypt(&big_ct, json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(unb64(r.json["plaintext"].as_str().unwrap()), big);

    // Nothing changed but the one key created on purpose.
    let after = env.keys().await;
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    let k = env.key(&key).await;
    assert_eq!(k["state"], "enabled");
    assert_eq!(k["latest_version"], 1);
    assert!(k["description"].is_null(), "{k}");
    assert!(k["deletion_date"].is_null(), "{k}");
    env.assert_decrypts(&ct, json!({})).await;
    env.finish();
}

// ---- base64 -------------------------------------------------------------------------------

#[tokio::test]
async fn binary_fields_must_be_standard_base64() {
    let env = Env::start("bad-b64");
    let key = env.create("k", "aes-256-gcm").await;
    let ed = env.create("ed", "ed25519").await;
    let ec = env.create("ec", "ecdsa-p256").await;
    let mac = env.create("mac", "hmac-sha256").await;
    let ct = env.encrypt(&key, SECRET, json!({})).await;
    let sig = env
        .post(
            &format!("/api/v1/keys/{ed}/sign"),
            &json!({"message": b64(b"m")}),
        )
        .await
        .json["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_text = std::str::from_utf8(SECRET).unwrap();
    let bad = [
        "not base64!",
        "YQ",     // unpadded
        "YQ===",  // over-padded
        "-_-_",   // URL-safe alphabet
        "YQ==\n", // trailing newline
        " YQ==",
        "YQ==YQ==",
        "Y Q = =",
        "\u{00e9}t\u{00e9}",
        secret_text, // a caller who forgot to encode: the error must not echo it
    ];
    for b in bad {
        let cases: Vec<(String, Value, &str)> = vec![
            (
                format!("/api/v1/keys/{key}/encrypt"),
                json!({"plaintext": b}),
                "plaintext",
            ),
            (
                "/api/v1/decrypt".into(),
                json!({"ciphertext": b}),
                "ciphertext",
            ),
            (
                format!("/api/v1/keys/{key}/reencrypt"),
                json!({"ciphertext": b}),
                "ciphertext",
            ),
            (
                format!("/api/v1/keys/{ed}/sign"),
                json!({"message": b}),
                "message",
            ),
            (
                format!("/api/v1/keys/{ec}/sign"),
                json!({"digest": b}),
                "digest",
            ),
            (
                format!("/api/v1/keys/{ed}/verify"),
                json!({"message": b64(b"m"), "signature": b}),
                "signature",
            ),
            (
                format!("/api/v1/keys/{ed}/verify"),
                json!({"message": b, "signature": sig}),
                "message",
            ),
            (
                format!("/api/v1/keys/{mac}/mac"),
                json!({"message": b}),
                "message",
            ),
            (
                format!("/api/v1/keys/{mac}/verify-mac"),
                json!({"message": b64(b"m"), "mac": b}),
                "mac",
            ),
            (
                format!("/api/v1/keys/{key}/encrypt/batch"),
                json!({"items": [{"plaintext": b64(SECRET)}, {"plaintext": b}]}),
                "items[1].plaintext",
            ),
        ];
        for (path, body, field) in cases {
            let r = env.post(&path, &body).await;
            assert_error(&r, 400, "invalid_base64");
            let msg = r.json["error"]["message"].as_str().unwrap();
            assert!(msg.contains(field), "{path} {b:?}: {msg}");
            assert!(
                !msg.contains(b),
                "{path}: the error echoes the input: {msg}"
            );
        }
        // In a batch decrypt only the bad item fails.
        let r = env
            .post(
                "/api/v1/decrypt/batch",
                &json!({"items": [{"ciphertext": ct}, {"ciphertext": b}]}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let res = &r.json["results"];
        assert_eq!(unb64(res[0]["plaintext"].as_str().unwrap()), SECRET);
        assert_eq!(res[1]["error"]["code"], "invalid_base64", "{r:?}");
        assert!(res[1]["plaintext"].is_null());
    }
    // An empty string is valid base64 for an empty plaintext, but not a ciphertext.
    let r = env
        .post(
            &format!("/api/v1/keys/{key}/encrypt"),
            &json!({"plaintext": ""}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = env.decrypt("", json!({})).await;
    assert_error(&r, 400, "malformed_ciphertext");

    assert_eq!(env.keys().await.len(), 4);
    assert_eq!(env.key(&key).await["latest_version"], 1);
    env.assert_decrypts(&ct, json!({})).await;
    env.finish();
}

// ---- key settings -----------------------------------------------------------------------------

#[tokio::test]
async fn key_types_names_and_settings_are_validated() {
    let env = Env::start("bad-settings");
    let key = env.create("k", "aes-256-gcm").await;
    let ct = env.encrypt(&key, SECRET, json!({})).await;

    for t in [
        "aes-128-gcm",
        "AES-256-GCM",
        "aes-256-gcm ",
        "rsa-2048",
        "rsa-1024",
        "des",
        "",
        "ecdsa-p384",
        "hmac-sha1",
    ] {
        let r = env
            .post("/api/v1/keys", &json!({"name": "t", "type": t}))
            .await;
        assert_error(&r, 400, "invalid_input");
        assert_message_has(&r, "key type");
    }
    let long = "x".repeat(129);
    for name in [
        "",
        " ",
        "a b",
        long.as_str(),
        "ключ",
        "nul\u{0}byte",
        "tab\there",
        "new\nline",
        "semi;colon",
        "quote\"d",
        "<script>",
        "percent%20",
        "back\\slash",
        "emoji\u{1f511}",
    ] {
        let r = env
            .post(
                "/api/v1/keys",
                &json!({"name": name, "type": "aes-256-gcm"}),
            )
            .await;
        assert_error(&r, 400, "invalid_input");
    }
    let r = env
        .post(
            "/api/v1/keys",
            &json!({"name": "d", "type": "aes-256-gcm", "description": "d".repeat(1025)}),
        )
        .await;
    assert_error(&r, 400, "invalid_input");
    // Limits are inclusive.
    env.create(&"x".repeat(128), "aes-256-gcm").await;
    env.create("a-b_c.d/e", "aes-256-gcm").await;

    // Scheduled deletion: 7 to 30 days.
    let path = format!("/api/v1/keys/{key}/schedule-deletion");
    for days in [json!(6), json!(31), json!(0), json!(365), json!(u32::MAX)] {
        let r = env.post(&path, &json!({"pending_days": days})).await;
        assert_error(&r, 400, "invalid_input");
        assert_message_has(&r, "7");
    }
    for days in [
        json!(-1),
        json!(7.5),
        json!("7"),
        json!(4_294_967_303u64),
        json!(null),
    ] {
        let r = env.post(&path, &json!({"pending_days": days})).await;
        assert_error(&r, 400, "invalid_input");
    }
    // Other settings.
    let kpath = format!("/api/v1/keys/{key}");
    for body in [
        json!({"min_decryption_version": 0}),
        json!({"min_decryption_version": 2}),
        json!({"description": "d".repeat(1025)}),
    ] {
        let r = env.send(Method::PATCH, &kpath, Body::Json(&body)).await;
        assert_error(&r, 400, "invalid_input");
    }
    for bits in [json!(0), json!(64), json!(100), json!(1024), json!(-256)] {
        let r = env
            .post(
                &format!("/api/v1/keys/{key}/datakey"),
                &json!({"bits": bits}),
            )
            .await;
        assert_error(&r, 400, "invalid_input");
    }

    let k = env.key(&key).await;
    assert_eq!(k["state"], "enabled", "{k}");
    assert!(k["deletion_date"].is_null(), "{k}");
    assert_eq!(k["min_decryption_version"], 1, "{k}");
    assert!(k["description"].is_null(), "{k}");
    assert_eq!(env.keys().await.len(), 3);
    // The boundaries work.
    for days in [7, 30] {
        let r = env.post(&path, &json!({"pending_days": days})).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = env
            .send(
                Method::POST,
                &format!("/api/v1/keys/{key}/cancel-deletion"),
                Body::None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json["state"], "disabled");
    }
    let r = env
        .send(
            Method::POST,
            &format!("/api/v1/keys/{key}/enable"),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    env.assert_decrypts(&ct, json!({})).await;
    env.finish();
}

// ---- ciphertexts ------------------------------------------------------------------------------

#[tokio::test]
async fn truncated_or_altered_ciphertexts_never_decrypt() {
    let env = Env::start("bad-ct");
    let aes = env.create("aes", "aes-256-gcm").await;
    let chacha = env.create("chacha", "chacha20-poly1305").await;
    let ctx = json!({"purpose": "test"});
    for key in [&aes, &chacha] {
        let ct_b64 = env.encrypt(key, SECRET, ctx.clone()).await;
        let ct = unb64(&ct_b64);
        assert_eq!(ct.len(), 36 + SECRET.len() + 16);
        // Every truncation.
        for len in 0..ct.len() {
            let r = env.decrypt(&b64(&ct[..len]), ctx.clone()).await;
            assert_error_any(&r, 400, &["malformed_ciphertext", "decryption_failed"]);
        }
        // Extra bytes.
        for extra in [&[0u8][..], &[0u8; 16][..]] {
            let mut c = ct.clone();
            c.extend_from_slice(extra);
            let r = env.decrypt(&b64(&c), ctx.clone()).await;
            assert_error_any(&r, 400, &["malformed_ciphertext", "decryption_failed"]);
        }
        // Every length from 0 to 100: random bytes, and this key's real header followed by
        // random bytes. Nothing decrypts; an unknown key id in random bytes reads as missing.
        for len in 0..=100usize {
            let mut random = vec![0u8; len];
            aws_lc_rs::rand::fill(&mut random).unwrap();
            let r = env.decrypt(&b64(&random), ctx.clone()).await;
            if r.status == 404 {
                assert_error(&r, 404, "not_found");
            } else {
                assert_error_any(&r, 400, &["malformed_ciphertext", "decryption_failed"]);
            }
            let mut forged = ct[..len.min(36)].to_vec();
            forged.extend_from_slice(&random[forged.len()..]);
            let r = env.decrypt(&b64(&forged), ctx.clone()).await;
            assert_error_any(&r, 400, &["malformed_ciphertext", "decryption_failed"]);
        }
        // Every byte altered, in several ways.
        for i in 0..ct.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut c = ct.clone();
                c[i] ^= mask;
                let r = env.decrypt(&b64(&c), ctx.clone()).await;
                assert!(
                    r.status == 400 || r.status == 404,
                    "byte {i} ^ {mask:#x}: {r:?}"
                );
                if r.status == 404 {
                    assert!((4..20).contains(&i), "only a changed key id is 'not found'");
                    assert_error(&r, 404, "not_found");
                } else {
                    assert_error_any(&r, 400, &["malformed_ciphertext", "decryption_failed"]);
                }
            }
        }
        env.assert_decrypts(&ct_b64, ctx.clone()).await;
    }
    // The algorithm byte says the other AEAD; the header names the other key; the version
    // names a newer version of the same key.
    let ct_b64 = env.encrypt(&aes, SECRET, ctx.clone()).await;
    let mut c = unb64(&ct_b64);
    c[3] = 2;
    assert_error(
        &env.decrypt(&b64(&c), ctx.clone()).await,
        400,
        "decryption_failed",
    );
    let r = env
        .decrypt(&with_key_id(&ct_b64, &chacha), ctx.clone())
        .await;
    assert_error(&r, 400, "decryption_failed");
    let r = env
        .send(
            Method::POST,
            &format!("/api/v1/keys/{aes}/rotate"),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut c = unb64(&ct_b64);
    c[20..24].copy_from_slice(&2u32.to_be_bytes());
    assert_error(
        &env.decrypt(&b64(&c), ctx.clone()).await,
        400,
        "decryption_failed",
    );
    // Reencrypt refuses the same tampering.
    let r = env
        .post(
            &format!("/api/v1/keys/{aes}/reencrypt"),
            &json!({"ciphertext": b64(&c), "context": ctx}),
        )
        .await;
    assert_error(&r, 400, "decryption_failed");
    env.assert_decrypts(&ct_b64, ctx.clone()).await;
    assert_eq!(env.keys().await.len(), 2);
    env.finish();
}

#[tokio::test]
async fn the_encryption_context_must_match_exactly() {
    let env = Env::start("bad-ctx");
    let k1 = env.create("k1", "aes-256-gcm").await;
    let k2 = env.create("k2", "chacha20-poly1305").await;
    let ctx = json!({"tenant": "a", "purpose": "backup"});
    let ct1 = env.encrypt(&k1, SECRET, ctx.clone()).await;
    let ct2 = env.encrypt(&k2, SECRET, json!({"ab": "c"})).await;
    for wrong in [
        json!({}),
        json!(null),
        json!({"tenant": "a"}),
        json!({"tenant": "b", "purpose": "backup"}),
        json!({"tenant": "a", "purpose": "backup", "extra": ""}),
        json!({"Tenant": "a", "purpose": "backup"}),
        json!({"tenant": "a ", "purpose": "backup"}),
        json!({"tenant": "a", "purpose": "backupx"}),
    ] {
        for ct in [&ct1, &ct2] {
            let r = env.decrypt(ct, wrong.clone()).await;
            assert_error(&r, 400, "decryption_failed");
        }
    }
    // The context encoding is unambiguous: {"ab": "c"} is not {"a": "bc"}.
    for wrong in [json!({"a": "bc"}), json!({"abc": ""}), json!({"": "abc"})] {
        let r = env.decrypt(&ct2, wrong).await;
        assert_error(&r, 400, "decryption_failed");
    }
    // Reencrypt needs the context too.
    let r = env
        .post(
            &format!("/api/v1/keys/{k1}/reencrypt"),
            &json!({"ciphertext": ct1, "context": {}}),
        )
        .await;
    assert_error(&r, 400, "decryption_failed");
    // A context is a map of strings.
    for bad in [
        json!({"a": 1}),
        json!(["a"]),
        json!("a"),
        json!({"a": null}),
    ] {
        let r = env.decrypt(&ct1, bad).await;
        assert_error(&r, 400, "invalid_input");
    }
    env.assert_decrypts(&ct1, ctx).await;
    env.assert_decrypts(&ct2, json!({"ab": "c"})).await;
    env.finish();
}

// ---- key usage ---------------------------------------------------------------------------------

#[tokio::test]
async fn operations_need_a_key_of_the_right_kind() {
    let env = Env::start("bad-usage");
    let aes = env.create("aes", "aes-256-gcm").await;
    let mac = env.create("mac", "hmac-sha256").await;
    let ed = env.create("ed", "ed25519").await;
    let ec = env.create("ec", "ecdsa-p256").await;
    let ct = env.encrypt(&aes, SECRET, json!({})).await;
    let pt = json!({"plaintext": b64(SECRET)});
    let msg = json!({"message": b64(b"m")});

    for id in [&mac, &ed, &ec] {
        for (path, body) in [
            (format!("/api/v1/keys/{id}/encrypt"), pt.clone()),
            (
                format!("/api/v1/keys/{id}/encrypt/batch"),
                json!({"items": [pt.clone()]}),
            ),
            (format!("/api/v1/keys/{id}/datakey"), json!({})),
            (
                format!("/api/v1/keys/{id}/datakey-without-plaintext"),
                json!({}),
            ),
            // A ciphertext whose header names this key.
            (
                "/api/v1/decrypt".into(),
                json!({"ciphertext": with_key_id(&ct, id)}),
            ),
            (
                format!("/api/v1/keys/{id}/reencrypt"),
                json!({"ciphertext": with_key_id(&ct, id)}),
            ),
        ] {
            let r = env.post(&path, &body).await;
            assert_error(&r, 400, "invalid_key_usage");
        }
    }
    for id in [&aes, &mac] {
        for (path, body) in [
            (format!("/api/v1/keys/{id}/sign"), msg.clone()),
            (
                format!("/api/v1/keys/{id}/verify"),
                json!({"message": b64(b"m"), "signature": b64(&[0; 64])}),
            ),
        ] {
            let r = env.post(&path, &body).await;
            assert_error(&r, 400, "invalid_key_usage");
        }
        let r = env
            .send(
                Method::GET,
                &format!("/api/v1/keys/{id}/public-key"),
                Body::None,
            )
            .await;
        assert_error(&r, 400, "invalid_key_usage");
    }
    for id in [&aes, &ed, &ec] {
        let r = env.post(&format!("/api/v1/keys/{id}/mac"), &msg).await;
        assert_error(&r, 400, "invalid_key_usage");
    }

    // Signing input.
    let sign = |id: &str| format!("/api/v1/keys/{id}/sign");
    for len in [0usize, 20, 31, 33, 48, 64] {
        let r = env
            .post(&sign(&ec), &json!({"digest": b64(&vec![7u8; len])}))
            .await;
        assert_error(&r, 400, "invalid_input");
        assert_message_has(&r, "32");
    }
    let r = env
        .post(&sign(&ec), &json!({"digest": b64(&[7u8; 32])}))
        .await;
    assert_eq!(r.status, 200, "a 32-byte digest works: {r:?}");
    let r = env
        .post(&sign(&ed), &json!({"digest": b64(&[7u8; 64])}))
        .await;
    assert_error_any(&r, 400, &["invalid_input", "invalid_key_usage"]);
    for body in [
        json!({"message": b64(b"m"), "digest": b64(&[7u8; 32])}),
        json!({}),
        json!({"algorithm": "ecdsa-p256-sha256"}),
    ] {
        let r = env.post(&sign(&ec), &body).await;
        assert_error(&r, 400, "invalid_input");
        let r = env
            .post(&format!("/api/v1/keys/{ec}/verify"), &{
                let mut b = body.clone();
                b["signature"] = json!(b64(&[0u8; 64]));
                b
            })
            .await;
        assert_error(&r, 400, "invalid_input");
    }
    for (id, alg) in [
        (&ec, "ed25519"),
        (&ec, "rsa-pss-sha256"),
        (&ed, "ecdsa-p256-sha256"),
        (&ed, "bogus"),
        (&ec, ""),
    ] {
        let r = env
            .post(&sign(id), &json!({"message": b64(b"m"), "algorithm": alg}))
            .await;
        assert_error(&r, 400, "invalid_input");
    }
    // Verifying garbage is "not valid", not an error; a version that does not exist is.
    for sig in [vec![], vec![0u8; 64], vec![0x30; 72], vec![0xff; 1000]] {
        for id in [&ed, &ec] {
            let r = env
                .post(
                    &format!("/api/v1/keys/{id}/verify"),
                    &json!({"message": b64(b"m"), "signature": b64(&sig)}),
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.json["valid"], false, "{r:?}");
        }
    }
    for v in [0, 2, 99] {
        let r = env
            .post(
                &format!("/api/v1/keys/{ed}/verify"),
                &json!({"message": b64(b"m"), "signature": b64(&[0; 64]), "key_version": v}),
            )
            .await;
        assert_error(&r, 400, "invalid_input");
    }

    assert_eq!(env.keys().await.len(), 4);
    for id in [&aes, &mac, &ed, &ec] {
        assert_eq!(env.key(id).await["latest_version"], 1);
    }
    env.assert_decrypts(&ct, json!({})).await;
    env.finish();
}

// ---- key states --------------------------------------------------------------------------------

#[tokio::test]
async fn disabled_and_pending_deletion_keys_refuse_use() {
    let env = Env::start("bad-state");
    let aes = env.create("aes", "aes-256-gcm").await;
    let ed = env.create("ed", "ed25519").await;
    let mac = env.create("mac", "hmac-sha256").await;
    let ct = env.encrypt(&aes, SECRET, json!({})).await;
    let action = |id: &str, a: &str| format!("/api/v1/keys/{id}/{a}");
    let post_none = |path: String| {
        let env = &env;
        async move { env.send(Method::POST, &path, Body::None).await }
    };

    // (path, body) of every use of each key.
    let uses = |aes: &str, ed: &str, mac: &str| -> Vec<(String, Value)> {
        vec![
            (action(aes, "encrypt"), json!({"plaintext": b64(SECRET)})),
            (
                action(aes, "encrypt/batch"),
                json!({"items": [{"plaintext": b64(SECRET)}]}),
            ),
            ("/api/v1/decrypt".into(), json!({"ciphertext": ct})),
            (action(aes, "reencrypt"), json!({"ciphertext": ct})),
            (action(aes, "datakey"), json!({})),
            (action(ed, "sign"), json!({"message": b64(b"m")})),
            (
                action(ed, "verify"),
                json!({"message": b64(b"m"), "signature": b64(&[0; 64])}),
            ),
            (action(mac, "mac"), json!({"message": b64(b"m")})),
            (
                action(mac, "verify-mac"),
                json!({"message": b64(b"m"), "mac": b64(&[0; 32])}),
            ),
        ]
    };

    for id in [&aes, &ed, &mac] {
        assert_eq!(post_none(action(id, "disable")).await.status, 200);
    }
    for (path, body) in uses(&aes, &ed, &mac) {
        let r = env.post(&path, &body).await;
        assert_error(&r, 409, "key_disabled");
    }
    for id in [&aes, &ed] {
        assert_error(&post_none(action(id, "rotate")).await, 409, "key_disabled");
    }
    let r = env
        .post(
            "/api/v1/decrypt/batch",
            &json!({"items": [{"ciphertext": ct}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["results"][0]["error"]["code"], "key_disabled");
    assert!(r.json["results"][0]["plaintext"].is_null());
    for id in [&aes, &ed, &mac] {
        assert_eq!(post_none(action(id, "enable")).await.status, 200);
    }
    env.assert_decrypts(&ct, json!({})).await;

    // Pending deletion.
    for id in [&aes, &ed, &mac] {
        let r = env
            .post(
                &action(id, "schedule-deletion"),
                &json!({"pending_days": 7}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json["state"], "pending_deletion", "{r:?}");
        assert!(r.json["deletion_date"].is_string(), "{r:?}");
    }
    for (path, body) in uses(&aes, &ed, &mac) {
        let r = env.post(&path, &body).await;
        assert_error(&r, 409, "key_pending_deletion");
    }
    for id in [&aes, &ed, &mac] {
        for a in ["enable", "disable", "rotate"] {
            assert_error(&post_none(action(id, a)).await, 409, "key_pending_deletion");
        }
        let r = env
            .post(
                &action(id, "schedule-deletion"),
                &json!({"pending_days": 30}),
            )
            .await;
        assert_error(&r, 409, "key_pending_deletion");
    }
    for id in [&aes, &ed, &mac] {
        let r = post_none(action(id, "cancel-deletion")).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json["state"], "disabled");
        assert!(r.json["deletion_date"].is_null());
        assert_error(
            &post_none(action(id, "cancel-deletion")).await,
            409,
            "conflict",
        );
        assert_eq!(post_none(action(id, "enable")).await.status, 200);
    }
    env.assert_decrypts(&ct, json!({})).await;
    for id in [&aes, &ed, &mac] {
        let k = env.key(id).await;
        assert_eq!(k["state"], "enabled");
        assert_eq!(k["latest_version"], 1, "no rotation happened");
    }
    env.finish();
}

// ---- batches ---------------------------------------------------------------------------------

#[tokio::test]
async fn batches_are_bounded_and_fail_per_item() {
    let env = Env::start("bad-batch");
    let k1 = env.create("k1", "aes-256-gcm").await;
    let k2 = env.create("k2", "chacha20-poly1305").await;
    let ctx = json!({"batch": "yes"});
    let ct1 = env.encrypt(&k1, SECRET, ctx.clone()).await;
    let ct2 = env.encrypt(&k2, SECRET, json!({})).await;
    let enc_batch = format!("/api/v1/keys/{k1}/encrypt/batch");
    let item = json!({"plaintext": b64(SECRET)});
    let dec_item = json!({"ciphertext": ct1, "context": ctx});

    for n in [0usize, 1001, 5000] {
        let r = env
            .post(&enc_batch, &json!({"items": vec![item.clone(); n]}))
            .await;
        assert_error(&r, 400, "invalid_input");
        assert_message_has(&r, "1000");
        let r = env
            .post(
                "/api/v1/decrypt/batch",
                &json!({"items": vec![dec_item.clone(); n]}),
            )
            .await;
        assert_error(&r, 400, "invalid_input");
    }
    // Exactly 1000 is allowed.
    let r = env
        .post(&enc_batch, &json!({"items": vec![item.clone(); 1000]}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let cts: Vec<String> = r.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["ciphertext"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cts.len(), 1000);
    let items: Vec<Value> = cts.iter().map(|c| json!({"ciphertext": c})).collect();
    let r = env
        .post("/api/v1/decrypt/batch", &json!({"items": items}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.json["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["error"].is_null() && x["plaintext"] == b64(SECRET))
    );

    // One bad item among good ones: the good ones succeed, each bad one carries its error.
    let mut truncated = unb64(&ct1);
    truncated.truncate(30);
    let mut flipped = unb64(&ct1);
    *flipped.last_mut().unwrap() ^= 1;
    let batch = json!({"items": [
        {"ciphertext": ct1, "context": ctx},
        {"ciphertext": "%%%"},
        {"ciphertext": ct2},
        {"ciphertext": b64(&truncated), "context": ctx},
        {"ciphertext": ct1, "context": {"batch": "no"}},
        {"ciphertext": b64(&flipped), "context": ctx},
        {"ciphertext": with_key_id(&ct1, "0f0e0d0c-0b0a-4908-8706-050403020100")},
        {"ciphertext": ct1, "context": ctx},
    ]});
    let r = env.post("/api/v1/decrypt/batch", &batch).await;
    assert_eq!(r.status, 200, "{r:?}");
    let res = r.json["results"].as_array().unwrap();
    assert_eq!(res.len(), 8);
    let expect = [
        None,
        Some("invalid_base64"),
        None,
        Some("malformed_ciphertext"),
        Some("decryption_failed"),
        Some("decryption_failed"),
        Some("not_found"),
        None,
    ];
    for (i, (x, want)) in res.iter().zip(expect).enumerate() {
        match want {
            None => {
                assert!(x["error"].is_null(), "item {i}: {x}");
                assert_eq!(x["plaintext"], b64(SECRET), "item {i}");
                assert!(x["key_id"].is_string(), "item {i}: {x}");
            }
            Some(code) => {
                assert_eq!(x["error"]["code"], code, "item {i}: {x}");
                assert!(x["error"]["message"].is_string(), "item {i}: {x}");
                assert!(x["plaintext"].is_null(), "item {i}: {x}");
            }
        }
    }
    // A bad item in an encrypt batch fails the whole batch (nothing is half done).
    let r = env
        .post(
            &enc_batch,
            &json!({"items": [item, {"plaintext": b64(SECRET), "context": {"a": 1}}]}),
        )
        .await;
    assert_error(&r, 400, "invalid_input");

    assert_eq!(env.keys().await.len(), 2);
    env.assert_decrypts(&ct1, ctx).await;
    env.assert_decrypts(&ct2, json!({})).await;
    env.finish();
}

// ---- routes ----------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_ids_routes_and_methods_are_json_errors() {
    let env = Env::start("bad-routes");
    let key = env.create("k", "aes-256-gcm").await;
    let ct = env.encrypt(&key, SECRET, json!({})).await;
    let long = "a".repeat(4000);
    for id in [
        "not-a-uuid",
        "123",
        "00000000-0000-0000-0000-000000000000",
        "%2e%2e",
        "..%2F..%2Fsys%2Fseal",
        "'%20OR%201=1--",
        long.as_str(),
        &key[..35],
        &format!("{key}0"),
    ] {
        for (method, suffix, body) in [
            (Method::GET, "", None),
            (Method::PATCH, "", Some(json!({"description": "x"}))),
            (
                Method::POST,
                "/encrypt",
                Some(json!({"plaintext": b64(SECRET)})),
            ),
            (Method::POST, "/rotate", None),
            (Method::POST, "/disable", None),
            (Method::POST, "/sign", Some(json!({"message": "AA=="}))),
            (Method::GET, "/public-key", None),
        ] {
            let path = format!("/api/v1/keys/{id}{suffix}");
            let r = match &body {
                Some(b) => env.send(method.clone(), &path, Body::Json(b)).await,
                None => env.send(method.clone(), &path, Body::None).await,
            };
            assert_error(&r, 404, "not_found");
        }
    }
    // Unknown routes, with and without credentials.
    for token in [env.api.t(), None] {
        for (method, path) in [
            (Method::GET, "/api/v1/nope"),
            (Method::GET, "/api/v2/keys"),
            (Method::POST, "/api/v1/keys/x/y/z"),
            (Method::GET, "/"),
            (Method::GET, "/api/v1/keys/"),
            (Method::POST, "/api/v1/decrypt/batch/more"),
        ] {
            let r = env.send_as(token, method, path, Body::None).await;
            assert_error(&r, 404, "not_found");
        }
        let r = env
            .send_as(
                token,
                Method::POST,
                &format!("/api/v1/keys/{key}/explode"),
                Body::None,
            )
            .await;
        assert_error(&r, 404, "not_found");
    }
    // Wrong methods.
    for (method, path) in [
        (Method::DELETE, "/api/v1/keys".to_string()),
        (Method::PUT, format!("/api/v1/keys/{key}")),
        (Method::DELETE, format!("/api/v1/keys/{key}")),
        (Method::GET, "/api/v1/decrypt".into()),
        (Method::GET, format!("/api/v1/keys/{key}/encrypt")),
        (Method::POST, format!("/api/v1/keys/{key}/public-key")),
        (Method::GET, "/api/v1/sys/seal".into()),
        (Method::POST, "/health".into()),
    ] {
        let r = env.send(method, &path, Body::None).await;
        assert_error(&r, 405, "method_not_allowed");
    }
    assert_eq!(env.keys().await.len(), 1);
    let k = env.key(&key).await;
    assert_eq!(k["state"], "enabled");
    assert_eq!(k["latest_version"], 1);
    assert!(k["description"].is_null());
    env.assert_decrypts(&ct, json!({})).await;
    env.finish();
}
