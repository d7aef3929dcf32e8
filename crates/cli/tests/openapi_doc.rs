//! The served OpenAPI document against the live router, by rule rather than by a route list:
//! every method the router serves on a path is documented (and no other), and each operation
//! documents the errors its extractors and layers produce, with the shared error body. Every
//! probe's answer must itself be documented and, when an error, have the documented shape.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DevApi, Resp, Server};
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeSet;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// A well-formed key id that names no key.
const UNKNOWN: &str = "5b0c3f8e-1d2a-4e6b-9c7d-8e9f0a1b2c3d";

/// One request; `body` is (content type, text). A key id in `path` is [`UNKNOWN`].
async fn probe(
    s: &Server,
    http: &reqwest::Client,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> Resp {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut req = http.request(method, s.url(&path.replace("{id}", UNKNOWN)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some((content_type, b)) = body {
        req = req.header("content-type", content_type).body(b.to_string());
    }
    Resp::read(req.send().await.expect("request"))
        .await
        .expect("response body")
}

/// Problems with one answer: undocumented status, or an error body off the shared schema.
fn check_answer(what: &str, op: &Value, p: &Resp, problems: &mut Vec<String>) {
    let code = p.status.to_string();
    if op["responses"][&code].is_null() {
        problems.push(format!("{what}: answered {code}, not documented"));
        return;
    }
    if p.status < 400
        || op["responses"][&code]["content"]["application/json"]["schema"]["$ref"]
            != "#/components/schemas/ErrorBody"
    {
        return;
    }
    let body = &p.json;
    if body.is_null() {
        problems.push(format!("{what}: {code} body is not JSON: {}", p.text));
        return;
    }
    let e = &body["error"];
    let fields_are_strings = ["code", "message", "request_id"]
        .iter()
        .all(|f| e[f].is_string());
    if !fields_are_strings || body.as_object().map(|o| o.len()) != Some(1) {
        problems.push(format!("{what}: {code} body is not an ErrorBody: {body}"));
    } else if p.request_id() != e["request_id"].as_str() {
        problems.push(format!("{what}: request_id differs from x-request-id"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_route_documents_its_errors() {
    let api = DevApi::start("openapi-doc");
    let (s, http, t) = (&api.server, &api.http, api.t());

    let doc = s.get_ok("/api/v1/openapi.json").await.json;
    let schemas = &doc["components"]["schemas"];
    let detail = &schemas["ErrorDetail"];
    for f in ["code", "message", "request_id"] {
        assert_eq!(detail["properties"][f]["type"], "string", "ErrorDetail.{f}");
        assert!(
            detail["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == f),
            "ErrorDetail.{f} is required"
        );
    }
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );

    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() > 20, "{} paths", paths.len());
    let mut problems = Vec::new();
    let mut operations = Vec::new();
    for (path, item) in paths {
        let documented: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| !item[**m].is_null())
            .map(|m| m.to_uppercase())
            .collect();
        for m in METHODS {
            let op = &item[m];
            let what = format!("{m} {path}");
            let p = probe(s, http, m, path, None, None).await;
            if op.is_null() {
                // Served means documented: any other method is refused, naming the others.
                if p.status != 405 {
                    problems.push(format!("{what}: undocumented, answered {}", p.status));
                }
                let allow: BTreeSet<String> = p
                    .header("allow")
                    .unwrap_or_default()
                    .split(',')
                    .map(|a| a.trim().to_string())
                    .filter(|a| !a.is_empty() && a != "HEAD")
                    .collect();
                if allow != documented {
                    problems.push(format!(
                        "{what}: Allow {allow:?}, documented {documented:?}"
                    ));
                }
                continue;
            }
            check_answer(&format!("{what} (no token)"), op, &p, &mut problems);
            operations.push((m, path.clone(), op.clone()));

            let responses = op["responses"].as_object().expect("responses");
            let secured = op["security"].is_array();
            let json_body = !op["requestBody"]["content"]["application/json"].is_null();
            let mut needed = Vec::new();
            if secured {
                // The bearer extractor, then the caller's rate limit.
                needed.extend(["401", "429"]);
                if p.status != 401 {
                    problems.push(format!("{what}: {} without a token", p.status));
                }
            }
            if json_body {
                needed.extend(["400", "413", "415"]);
            }
            if path.contains("{id}") {
                needed.push("404");
            }
            for c in needed {
                if !responses.contains_key(c) {
                    problems.push(format!("{what}: does not document {c}"));
                }
            }
            // `/ready` answers 503 with its health body; every other error is an ErrorBody.
            for (c, r) in responses.iter().filter(|(c, _)| c.as_str() >= "400") {
                if path == "/ready" {
                    continue;
                }
                if r["content"]["application/json"]["schema"]["$ref"]
                    != "#/components/schemas/ErrorBody"
                {
                    problems.push(format!("{what}: {c} is not an ErrorBody"));
                }
                if (c == "429" || c == "503") && r["headers"]["Retry-After"].is_null() {
                    problems.push(format!("{what}: {c} does not document Retry-After"));
                }
            }

            // Answers the extractors give with a token: unknown key, bad JSON, no JSON type.
            if path.contains("{id}") && !json_body {
                let p = probe(s, http, m, path, t, None).await;
                if p.status != 404 {
                    problems.push(format!("{what}: unknown key answered {}", p.status));
                }
                check_answer(&format!("{what} (unknown key)"), op, &p, &mut problems);
            }
            if json_body {
                for (label, body) in [
                    ("malformed JSON", ("application/json", "{not json")),
                    ("wrong field type", ("application/json", "[1]")),
                    ("text body", ("text/plain", "{}")),
                ] {
                    let p = probe(s, http, m, path, t, Some(body)).await;
                    if !(400..500).contains(&p.status) {
                        problems.push(format!("{what}: {label} answered {}", p.status));
                    }
                    check_answer(&format!("{what} ({label})"), op, &p, &mut problems);
                }
            }
        }
    }

    // serde reads a struct from a JSON array too; the document says object, so must the server.
    let created = probe(
        s,
        http,
        "post",
        "/api/v1/keys",
        t,
        Some((
            "application/json",
            r#"{"name":"doc-array","type":"aes-256-gcm"}"#,
        )),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.json["id"].as_str().unwrap().to_string();
    let p = probe(
        s,
        http,
        "patch",
        &format!("/api/v1/keys/{id}"),
        t,
        Some(("application/json", "[null, null]")),
    )
    .await;
    assert_eq!(p.status, 400, "PATCH with a JSON array: {}", p.text);

    // Sealed, every operation outside the seal gate's list answers 503: documented, as an
    // ErrorBody. The probe itself seals with the dev token.
    let seal = probe(s, http, "post", "/api/v1/sys/seal", t, None).await;
    assert_eq!(seal.status, 200, "{seal:?}");
    let mut gated = 0;
    for (m, path, op) in &operations {
        let p = probe(s, http, m, path, t, None).await;
        if p.status == 503 {
            gated += 1;
        }
        check_answer(&format!("{m} {path} (sealed)"), op, &p, &mut problems);
    }
    assert!(
        gated > 20,
        "only {gated} operations were refused while sealed"
    );

    assert!(problems.is_empty(), "{problems:#?}");
}
