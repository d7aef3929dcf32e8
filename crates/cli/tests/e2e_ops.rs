//! Operability: health, metrics, the OpenAPI document, request ids, TLS 1.3 only, PostgreSQL
//! storage across a restart, and graceful shutdown (including with idle client connections).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{DevApi, Server, TempDir, psql, sample, send, text, uuid_bytes};
use reqwest::Method;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

// ---- health and metrics -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_prometheus_metrics() {
    let api = DevApi::start("ops-metrics");
    let (s, http, t) = (&api.server, &api.http, api.t());

    let r = send(s, http, Method::GET, "/health", None, None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{}",
        r.header("content-type").unwrap_or_default()
    );
    assert_eq!(r.json, json!({"status": "ok"}));
    let r = send(s, http, Method::GET, "/ready", None, None).await;
    assert_eq!((r.status, r.json), (200, json!({"status": "ready"})));

    // Some traffic: 201, 3 x 200, 404, 401.
    let r = send(
        s,
        http,
        Method::POST,
        "/api/v1/keys",
        t,
        Some(r#"{"name":"m","type":"aes-256-gcm"}"#),
    )
    .await;
    assert_eq!(r.status, 201);
    let id = r.json["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let r = send(
            s,
            http,
            Method::POST,
            &format!("/api/v1/keys/{id}/encrypt"),
            t,
            Some(r#"{"plaintext":"aGVsbG8="}"#),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let missing = "/api/v1/keys/3a7e1f8e-8d3c-4c8e-9a37-2f0d3b9c1e55";
    assert_eq!(
        send(s, http, Method::GET, missing, t, None).await.status,
        404
    );
    assert_eq!(
        send(s, http, Method::GET, "/api/v1/keys", None, None)
            .await
            .status,
        401
    );

    let r = send(s, http, Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{}",
        r.header("content-type").unwrap_or_default()
    );
    let m = r.text;
    let req_total = |route: &str, method: &str, status: &str| {
        sample(
            &m,
            "sovra_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(req_total("/api/v1/keys", "POST", "201"), Some(1.0), "{m}");
    assert_eq!(
        req_total("/api/v1/keys/{id}/encrypt", "POST", "200"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        req_total("/api/v1/keys/{id}", "GET", "404"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(req_total("/api/v1/keys", "GET", "401"), Some(1.0), "{m}");
    assert_eq!(req_total("/health", "GET", "200"), Some(1.0), "{m}");
    // The route label is the template, never the concrete id.
    assert!(!m.contains(&id), "{m}");
    assert!(!m.contains("3a7e1f8e"), "{m}");
    // Latency histogram by route.
    let enc = [("route", "/api/v1/keys/{id}/encrypt"), ("method", "POST")];
    let inf = [enc[0], enc[1], ("le", "+Inf")];
    assert_eq!(
        sample(&m, "sovra_http_request_duration_seconds_bucket", &inf),
        Some(3.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "sovra_http_request_duration_seconds_bucket",
            &[enc[0], enc[1], ("le", "0.005")]
        )
        .is_some(),
        "{m}"
    );
    assert_eq!(
        sample(&m, "sovra_http_request_duration_seconds_count", &enc),
        Some(3.0),
        "{m}"
    );
    assert!(sample(&m, "sovra_http_request_duration_seconds_sum", &enc).unwrap() > 0.0);
    assert!(m.lines().any(|l| l == "sovra_sealed 0"), "{m}");

    // The previous /metrics request is counted too, and the gauge follows the seal.
    let r = send(s, http, Method::POST, "/api/v1/sys/seal", t, None).await;
    assert_eq!(r.status, 200);
    let m = send(s, http, Method::GET, "/metrics", None, None)
        .await
        .text;
    assert!(m.lines().any(|l| l == "sovra_sealed 1"), "{m}");
    assert_eq!(
        sample(
            &m,
            "sovra_http_requests_total",
            &[("route", "/metrics"), ("status", "200")]
        ),
        Some(1.0),
        "{m}"
    );
    let r = send(s, http, Method::GET, "/health", None, None).await;
    assert_eq!(r.status, 200, "liveness does not depend on the seal");
}

/// Requests the seal gate refuses (503 `sealed`) and requests to unknown routes never reach
/// `record_metrics`, which is a `route_layer` inside the seal gate: a sealed server looks idle
/// in `sovra_http_requests_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_rejections_are_counted_in_metrics() {
    let api = DevApi::start("ops-metrics-sealed");
    let (s, http, t) = (&api.server, &api.http, api.t());
    assert_eq!(
        send(s, http, Method::GET, "/nope", None, None).await.status,
        404
    );
    let r = send(s, http, Method::POST, "/api/v1/sys/seal", t, None).await;
    assert_eq!(r.status, 200);
    for _ in 0..2 {
        let r = send(s, http, Method::GET, "/api/v1/keys", t, None).await;
        assert_eq!(r.status, 503);
    }
    let m = send(s, http, Method::GET, "/metrics", None, None)
        .await
        .text;
    let total_503: f64 = m
        .lines()
        .filter(|l| l.starts_with("sovra_http_requests_total{") && l.contains("status=\"503\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total_503, 2.0, "sealed 503s are counted: {m}");
    let total_404: f64 = m
        .lines()
        .filter(|l| l.starts_with("sovra_http_requests_total{") && l.contains("status=\"404\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total_404, 1.0, "unknown routes are counted: {m}");
}

// ---- OpenAPI --------------------------------------------------------------------------------

/// Every operation of crates/server/src/openapi.rs with the non-2xx codes it must document
/// (429: crates/server/src/ratelimit.rs).
const OPERATIONS: &[(&str, &str, &[u16])] = &[
    ("get", "/health", &[]),
    ("get", "/ready", &[503]),
    ("get", "/metrics", &[]),
    ("get", "/api/v1/openapi.json", &[]),
    ("get", "/api/v1/sys/seal-status", &[]),
    ("post", "/api/v1/sys/init", &[400, 409, 503, 429]),
    ("post", "/api/v1/sys/unseal", &[400, 503, 429]),
    ("post", "/api/v1/sys/seal", &[401, 403, 503, 429]),
    ("post", "/api/v1/sys/kek/rotate", &[401, 403, 409, 503, 429]),
    ("post", "/api/v1/orgs", &[400, 401, 403, 409, 503, 429]),
    ("get", "/api/v1/orgs", &[401, 403, 503, 429]),
    ("get", "/api/v1/orgs/{id}", &[401, 403, 404, 503, 429]),
    (
        "post",
        "/api/v1/orgs/{id}/suspend",
        &[401, 403, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/orgs/{id}/resume",
        &[401, 403, 404, 409, 503, 429],
    ),
    ("get", "/api/v1/identities", &[401, 403, 500, 503, 429]),
    (
        "post",
        "/api/v1/identities",
        &[400, 401, 403, 409, 503, 429],
    ),
    (
        "get",
        "/api/v1/identities/{id}",
        &[401, 403, 404, 500, 503, 429],
    ),
    (
        "patch",
        "/api/v1/identities/{id}",
        &[400, 401, 403, 404, 409, 503, 429],
    ),
    ("post", "/api/v1/keys", &[400, 401, 403, 409, 503, 429]),
    ("get", "/api/v1/keys", &[401, 503, 429]),
    ("get", "/api/v1/keys/{id}", &[401, 404, 503, 429]),
    ("patch", "/api/v1/keys/{id}", &[400, 401, 404, 503, 429]),
    (
        "post",
        "/api/v1/keys/{id}/rotate",
        &[401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/disable",
        &[401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/enable",
        &[401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/schedule-deletion",
        &[400, 401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/cancel-deletion",
        &[401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/grants",
        &[400, 401, 403, 404, 409, 413, 503, 429],
    ),
    (
        "get",
        "/api/v1/keys/{id}/grants",
        &[401, 403, 404, 503, 429],
    ),
    (
        "delete",
        "/api/v1/keys/{id}/grants/{grant_id}",
        &[401, 403, 404, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/encrypt",
        &[400, 401, 404, 409, 413, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/encrypt/batch",
        &[400, 401, 404, 409, 413, 503, 429],
    ),
    (
        "post",
        "/api/v1/decrypt",
        &[400, 401, 404, 409, 413, 503, 429],
    ),
    ("post", "/api/v1/decrypt/batch", &[400, 401, 413, 503, 429]),
    (
        "post",
        "/api/v1/keys/{id}/reencrypt",
        &[400, 401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/datakey",
        &[400, 401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/datakey-without-plaintext",
        &[400, 401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/sign",
        &[400, 401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/verify",
        &[400, 401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/mac",
        &[400, 401, 404, 409, 503, 429],
    ),
    (
        "post",
        "/api/v1/keys/{id}/verify-mac",
        &[400, 401, 404, 409, 503, 429],
    ),
    (
        "get",
        "/api/v1/keys/{id}/public-key",
        &[400, 401, 404, 503, 429],
    ),
    ("get", "/api/v1/keys/{id}/public-key", &[400, 401, 404, 503]),
    ("get", "/api/v1/audit/public-key", &[503]),
    ("get", "/api/v1/audit", &[400, 401, 403, 503, 429]),
    ("get", "/api/v1/audit/export", &[400, 401, 403, 503, 429]),
    ("post", "/api/v1/audit/hash", &[400, 401, 403, 503, 429]),
];

/// Paths the seal gate lets through (crates/server/src/middleware.rs).
const OPEN_WHILE_SEALED: &[&str] = &[
    "/health",
    "/ready",
    "/metrics",
    "/api/v1/openapi.json",
    "/api/v1/sys/seal-status",
    "/api/v1/sys/init",
    "/api/v1/sys/unseal",
    "/api/v1/audit/public-key",
];

/// A well-formed request body for an operation, naming key `id` where it names one.
fn valid_body(method: &str, path: &str, ct_b64: &str) -> Option<String> {
    let b = match (method, path.rsplit('/').next().unwrap()) {
        ("post", "init") => json!({"shares": 1, "threshold": 1}),
        ("post", "unseal") => json!({"share": "AQI="}),
        ("post", "keys") => json!({"name": "doc-probe", "type": "aes-256-gcm"}),
        ("patch", "{id}") if path.contains("identities") => json!({"status": "active"}),
        ("patch", "{id}") => json!({"description": "d"}),
        ("post", "orgs") => json!({"id": "doc-probe"}),
        ("post", "grants") => json!({"grantee": {"role": "user"}, "operations": ["encrypt"]}),
        ("post", "identities") => {
            json!({"issuer": "https://idp.doc.test", "subject": "probe", "kind": "user"})
        }
        ("post", "schedule-deletion") => json!({"pending_days": 7}),
        ("post", "encrypt") => json!({"plaintext": "aGk="}),
        ("post", "batch") if path.contains("encrypt") => json!({"items": [{"plaintext": "aGk="}]}),
        ("post", "batch") => json!({"items": [{"ciphertext": ct_b64}]}),
        ("post", "decrypt" | "reencrypt") => json!({"ciphertext": ct_b64}),
        ("post", "datakey" | "datakey-without-plaintext") => json!({}),
        ("post", "sign" | "mac") => json!({"message": "aGk="}),
        ("post", "verify") => json!({"message": "aGk=", "signature": "aGk="}),
        ("post", "verify-mac") => json!({"message": "aGk=", "mac": "aGk="}),
        ("post", "hash") => json!({"token": "t"}),
        _ => return None,
    };
    Some(b.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_route_and_its_error_codes() {
    let api = DevApi::start("ops-openapi");
    let (s, http, t) = (&api.server, &api.http, api.t());

    let r = send(s, http, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json")
    );
    let doc = r.json;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Sovra");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().expect("paths");

    // Exactly the routes of the router, no more, no fewer.
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);

    let op = |m: &str, p: &str| &paths[p][m];
    let codes = |m: &str, p: &str| -> BTreeSet<u16> {
        op(m, p)["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{m} {p} has no responses"))
            .keys()
            .map(|c| c.parse().unwrap())
            .collect()
    };
    for (m, p, needed) in OPERATIONS {
        let have = codes(m, p);
        assert!(
            have.iter().any(|c| (200..300).contains(c)),
            "{m} {p}: no success response"
        );
        for c in *needed {
            assert!(have.contains(c), "{m} {p} does not document {c}: {have:?}");
        }
        // Documented errors carry the JSON error body.
        for c in have.iter().filter(|c| **c >= 400 && *p != "/ready") {
            let schema =
                &op(m, p)["responses"][c.to_string()]["content"]["application/json"]["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/ErrorBody",
                "{m} {p} {c}"
            );
        }
    }

    // What the server really answers is documented: no token, unknown key, malformed JSON,
    // and (below) sealed.
    let unknown = "5b0c3f8e-1d2a-4e6b-9c7d-8e9f0a1b2c3d";
    let mut ct = b"sv\x01\x01".to_vec();
    ct.extend(uuid_bytes(unknown));
    ct.extend(1u32.to_be_bytes());
    ct.extend([7u8; 12 + 16]);
    let ct_b64 = STANDARD.encode(&ct);
    let mut observed: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    for (m, p, _) in OPERATIONS {
        let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        let url = p.replace("{id}", unknown);
        let body = valid_body(m, p, &ct_b64);
        let secured = op(m, p)["security"].is_array();
        let mut seen = BTreeSet::new();
        let r = send(s, http, method.clone(), &url, None, body.as_deref()).await;
        if secured {
            assert_eq!(r.status, 401, "{m} {p} without a token: {}", r.text);
        }
        seen.insert(r.status);
        if *p == "/api/v1/sys/seal" {
            // Sealing with the token happens last, below.
            observed.insert((m.to_string(), p.to_string()), seen);
            continue;
        }
        let r = send(s, http, method.clone(), &url, t, body.as_deref()).await;
        if p.contains("{id}") || *p == "/api/v1/decrypt" {
            assert_eq!(r.status, 404, "{m} {p} with an unknown key: {}", r.text);
        }
        seen.insert(r.status);
        if body.is_some() {
            let r = send(s, http, method.clone(), &url, t, Some("{not json")).await;
            assert_eq!(r.status, 400, "{m} {p} malformed JSON: {}", r.text);
            assert_eq!(r.json["error"]["code"], "malformed_json");
            seen.insert(r.status);
        }
        observed.insert((m.to_string(), p.to_string()), seen);
    }
    let r = send(s, http, Method::POST, "/api/v1/sys/seal", t, None).await;
    assert_eq!(r.status, 200);
    for (m, p, _) in OPERATIONS {
        let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        let url = p.replace("{id}", unknown);
        let body = valid_body(m, p, &ct_b64);
        let r = send(s, http, method, &url, t, body.as_deref()).await;
        if *p == "/ready" {
            assert_eq!(r.status, 503, "not ready while sealed");
            continue;
        }
        if OPEN_WHILE_SEALED.contains(p) {
            assert_ne!(r.status, 503, "{m} {p} must work while sealed");
            continue;
        }
        assert_eq!(r.status, 503, "{m} {p} while sealed: {}", r.text);
        assert_eq!(r.json["error"]["code"], "sealed");
        observed
            .get_mut(&(m.to_string(), p.to_string()))
            .unwrap()
            .insert(503);
    }
    let mut undocumented = Vec::new();
    for ((m, p), seen) in &observed {
        let have = codes(m, p);
        for c in seen {
            if !have.contains(c) {
                undocumented.push(format!("{m} {p} answered {c}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "undocumented answers: {undocumented:#?}"
    );
}

/// Every JSON-body operation also answers 413 (body over the limit) and 415 (no JSON content
/// type); the document should say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_413_and_415_for_json_bodies() {
    let api = DevApi::start("ops-openapi-413");
    let (s, http, t) = (&api.server, &api.http, api.t());
    let doc = send(s, http, Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .json;
    let unknown = "5b0c3f8e-1d2a-4e6b-9c7d-8e9f0a1b2c3d";
    let big = format!("{{\"message\":\"{}\"}}", "A".repeat(2 * 1024 * 1024));
    let mut undocumented = Vec::new();
    for (m, p, _) in OPERATIONS {
        if valid_body(m, p, "").is_none() {
            continue;
        }
        let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        let url = s.url(&p.replace("{id}", unknown));
        let documented = doc["paths"][p][m]["responses"].as_object().unwrap();
        let r = send(
            s,
            http,
            method.clone(),
            &p.replace("{id}", unknown),
            t,
            Some(&big),
        )
        .await;
        assert_eq!(r.status, 413, "{m} {p}");
        assert_eq!(r.json["error"]["code"], "body_too_large");
        let r = http
            .request(method, url)
            .bearer_auth(&api.token)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 415, "{m} {p}");
        for c in ["413", "415"] {
            if !documented.contains_key(c) {
                undocumented.push(format!("{m} {p} answers {c}"));
            }
        }
    }
    assert!(undocumented.is_empty(), "undocumented: {undocumented:#?}");
}

// ---- request ids ------------------------------------------------------------------------------

/// method, path, token, JSON body, expected status, expected error code.
type Probe<'a> = (
    Method,
    String,
    Option<&'a str>,
    Option<&'a str>,
    u16,
    Option<&'a str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_a_request_id_matching_the_error_body() {
    let api = DevApi::start("ops-reqid");
    let (s, http, t) = (&api.server, &api.http, api.t());
    let big = format!("{{\"plaintext\":\"{}\"}}", "A".repeat(2 * 1024 * 1024));
    let r = send(
        s,
        http,
        Method::POST,
        "/api/v1/keys",
        t,
        Some(r#"{"name":"r","type":"aes-256-gcm"}"#),
    )
    .await;
    let id = r.json["id"].as_str().unwrap().to_string();
    let enc = format!("/api/v1/keys/{id}/encrypt");
    let cases: Vec<Probe> = vec![
        (Method::GET, "/health".into(), None, None, 200, None),
        (Method::GET, "/metrics".into(), None, None, 200, None),
        (
            Method::GET,
            "/api/v1/openapi.json".into(),
            None,
            None,
            200,
            None,
        ),
        (Method::GET, "/api/v1/keys".into(), t, None, 200, None),
        (
            Method::GET,
            "/api/v1/keys".into(),
            None,
            None,
            401,
            Some("unauthenticated"),
        ),
        (
            Method::GET,
            "/api/v1/keys".into(),
            Some("bogus"),
            None,
            401,
            Some("unauthenticated"),
        ),
        (
            Method::GET,
            "/no/such/route".into(),
            None,
            None,
            404,
            Some("not_found"),
        ),
        (
            Method::DELETE,
            "/api/v1/keys".into(),
            t,
            None,
            405,
            Some("method_not_allowed"),
        ),
        (
            Method::GET,
            "/api/v1/keys/00000000-0000-4000-8000-000000000000".into(),
            t,
            None,
            404,
            Some("not_found"),
        ),
        (
            Method::POST,
            enc.clone(),
            t,
            Some("{"),
            400,
            Some("malformed_json"),
        ),
        (
            Method::POST,
            enc.clone(),
            t,
            Some(r#"{"plaintext":"***"}"#),
            400,
            Some("invalid_base64"),
        ),
        (
            Method::POST,
            enc.clone(),
            t,
            Some(r#"{"plaintext":"aGk=","extra":1}"#),
            400,
            Some("invalid_input"),
        ),
        (
            Method::POST,
            enc.clone(),
            t,
            Some(big.as_str()),
            413,
            Some("body_too_large"),
        ),
        (
            Method::POST,
            "/api/v1/sys/init".into(),
            None,
            Some(r#"{"shares":1,"threshold":1}"#),
            409,
            Some("already_initialized"),
        ),
        (Method::POST, "/api/v1/sys/seal".into(), t, None, 200, None),
        (
            Method::GET,
            "/api/v1/keys".into(),
            t,
            None,
            503,
            Some("sealed"),
        ),
        (Method::GET, "/ready".into(), None, None, 503, None),
    ];
    let mut ids = HashSet::new();
    for (method, path, token, body, status, code) in cases {
        let r = send(s, http, method.clone(), &path, token, body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
        let rid = r
            .request_id()
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{method} {path}: no x-request-id"));
        assert!(is_uuid(&rid), "{rid}");
        assert!(ids.insert(rid.clone()), "request ids are unique");
        if let Some(code) = code {
            let b = &r.json;
            assert_eq!(b["error"]["code"], code, "{method} {path}: {b}");
            assert_eq!(
                b["error"]["request_id"],
                rid.as_str(),
                "{method} {path}: {b}"
            );
            assert!(!b["error"]["message"].as_str().unwrap().is_empty());
        }
    }
}

// ---- TLS --------------------------------------------------------------------------------------

fn s_client(s: &Server, extra: &[&str]) -> (bool, String) {
    let hostport = s.addr.trim_start_matches("https://").to_string();
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &hostport])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl must be installed");
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn only_tls_1_3_is_spoken() {
    let dir = TempDir::new("ops-tls");
    let s = Server::start_dev(dir.path(), "");
    let (ok, out) = s_client(&s, &["-brief", "-tls1_2"]);
    assert!(!ok, "TLS 1.2 must be refused: {out}");
    assert!(!out.contains("Protocol version: TLSv1.2"), "{out}");
    let cafile = s.cacert.to_str().unwrap();
    let (ok, out) = s_client(
        &s,
        &[
            "-brief",
            "-tls1_3",
            "-CAfile",
            cafile,
            "-verify_return_error",
        ],
    );
    assert!(ok, "TLS 1.3 must work: {out}");
    assert!(out.contains("Protocol version: TLSv1.3"), "{out}");
    assert!(out.contains("Verification: OK"), "{out}");
    // ALPN offers HTTP/2 and HTTP/1.1 (the full, non-brief output names it).
    let (ok, out) = s_client(&s, &["-tls1_3", "-alpn", "h2,http/1.1"]);
    assert!(ok && out.contains("ALPN protocol: h2"), "{out}");
    let (ok, out) = s_client(&s, &["-tls1_3", "-alpn", "http/1.1"]);
    assert!(ok && out.contains("ALPN protocol: http/1.1"), "{out}");
}

// ---- PostgreSQL -------------------------------------------------------------------------------

/// Readiness reads the database: a node whose database refuses connections is not ready (and
/// says why), and it is ready again once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reports_an_unreachable_database() {
    let dir = TempDir::new("ops-ready-db");
    let url = common::fresh_pg_database();
    let db = url.rsplit('/').next().unwrap().to_string();
    let admin = common::pg_admin_url();
    let s = Server::start_dev(dir.path(), &format!("database_url = \"{url}\""));
    let http = s.http();
    let ready = || {
        let req = http.get(s.url("/ready"));
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    assert_eq!(ready().await, (200, json!({"status": "ready"})));

    common::take_pg_database_away(&db);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready().await;
        if status == 503 {
            assert_eq!(body, json!({"status": "database_unavailable"}));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without a database: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Liveness is not readiness: the process is alive.
    assert_eq!(
        http.get(s.url("/health")).send().await.unwrap().status(),
        200
    );

    common::give_pg_database_back(&db);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready().await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(s);
    psql(
        &admin,
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_survives_a_restart() {
    let dir = TempDir::new("ops-pg");
    let url = common::fresh_pg_database();
    let cfg = format!("database_url = \"{url}\"");
    let s = Server::start_dev(dir.path(), &cfg);
    let c = s.client();
    let key = c.create_key("pg-key", "aes-256-gcm", None).await.unwrap();
    let ctx: sovra_client::Context = [("db".to_string(), "pg".to_string())].into();
    let ct = c
        .encrypt(&key.id, b"stored in postgres", &ctx)
        .await
        .unwrap();
    drop(c);
    // It really is in PostgreSQL, not in an embedded SQLite file.
    assert_eq!(
        psql(
            &url,
            &format!("SELECT count(*) FROM keys WHERE id::text = '{}'", key.id)
        ),
        "1"
    );
    assert_eq!(psql(&url, "SELECT count(*) FROM seal"), "1");
    assert!(!dir.path().join("sovra.db").exists());
    assert!(s.stop(), "graceful shutdown exits 0");

    let s = Server::start_dev(dir.path(), &cfg);
    let c = s.client();
    let pt = c
        .decrypt(&sovra_client::unb64(&ct.ciphertext).unwrap(), &ctx)
        .await
        .unwrap();
    assert_eq!(
        sovra_client::unb64(&pt.plaintext).unwrap(),
        b"stored in postgres"
    );
    let keys = c.list_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id, key.id);
    drop(c);
    assert!(s.stop());
    let admin = common::pg_admin_url();
    let db = url.rsplit('/').next().unwrap();
    psql(&admin, &format!("DROP DATABASE IF EXISTS {db}"));
}

// ---- graceful shutdown ------------------------------------------------------------------------

fn stamp() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// SIGTERM via the harness; returns (exited cleanly, how long it took).
fn timed_stop(s: Server, what: &str) -> (bool, Duration) {
    eprintln!("[{}] {what}: SIGTERM", stamp());
    let t0 = Instant::now();
    let clean = s.stop();
    let took = t0.elapsed();
    eprintln!("[{}] {what}: exited clean={clean} after {took:?}", stamp());
    (clean, took)
}

const PROMPT: Duration = Duration::from_secs(5);

#[test]
fn graceful_shutdown_is_prompt_without_open_connections() {
    let dir = TempDir::new("ops-stop");
    let s = Server::start_dev(dir.path(), "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = s.client();
        let k = c.create_key("k", "aes-256-gcm", None).await.unwrap();
        c.encrypt(&k.id, b"x", &Default::default()).await.unwrap();
    });
    drop(rt);
    let (clean, took) = timed_stop(s, "no connections");
    assert!(clean, "graceful shutdown exits 0");
    assert!(took < PROMPT, "took {took:?}");
}

/// A live client that keeps an idle HTTP/2 connection and keeps running (its runtime is not
/// blocked) answers the server's GOAWAY, so shutdown is prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connection_of_a_running_client_does_not_delay_shutdown() {
    let dir = TempDir::new("ops-h2");
    let s = Server::start_dev(dir.path(), "");
    let http = s.http();
    let r = http.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    r.bytes().await.unwrap();
    let (clean, took) = tokio::task::spawn_blocking(move || timed_stop(s, "idle h2, live client"))
        .await
        .unwrap();
    assert!(clean && took < PROMPT, "clean={clean}, took {took:?}");
    // The client notices the closed connection.
    drop(http);
}

/// An idle HTTP/1.1 keep-alive connection is closed at once, even if the client is stalled.
#[test]
fn idle_http1_keepalive_connection_does_not_delay_shutdown() {
    let dir = TempDir::new("ops-h1");
    let s = Server::start_dev(dir.path(), "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&s.cacert).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .http1_only()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = http.get(s.url("/health")).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
        r.bytes().await.unwrap();
    });
    // The runtime is not driven from here on: the client is stalled with its idle connection.
    let (clean, took) = timed_stop(s, "idle h1 keep-alive, stalled client");
    assert!(clean && took < PROMPT, "clean={clean}, took {took:?}");
    drop(http);
}

/// The situation of `smoke::dev_server_roundtrip_survives_restart`: a `#[tokio::test]` (one
/// thread) keeps its client, so its idle HTTP/2 connection stays open, and then blocks in
/// `stop()`. Nobody answers the server's GOAWAY/PING, hyper's HTTP/2 graceful shutdown waits
/// for that, and the server only exits when serve.rs's 30 s grace expires — the same 30 s after
/// which the harness's `stop()` gives up, kills and returns false.
#[test]
fn stalled_http2_client_does_not_delay_shutdown() {
    let dir = TempDir::new("ops-h2-stalled");
    let s = Server::start_dev(dir.path(), "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = s.http();
    rt.block_on(async {
        let r = http.get(s.url("/health")).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        r.bytes().await.unwrap();
    });
    let (clean, took) = timed_stop(s, "idle h2, stalled client");
    assert!(clean && took < PROMPT, "clean={clean}, took {took:?}");
    drop(http);
}
