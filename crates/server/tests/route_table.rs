//! The assembled application follows the route table: on a sealed server every declared route
//! is gated or served as declared, and requests that no route has are limited per source IP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use sovra_server::routes::table::ROUTES;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;

/// A fresh server, initialized or not, sealed, with no audit log.
async fn sealed_app(dir: &tempfile::TempDir, config: &str, initialized: bool) -> Router {
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("sovra.db").display()
    );
    let store = sovra_store::open(&url).await.unwrap();
    let kms = sovra_core::Kms::new(store, Default::default())
        .await
        .unwrap();
    if initialized {
        kms.initialize(sovra_core::model::SealKind::Shamir, 1, 1, true)
            .await
            .unwrap();
        assert!(!kms.is_unsealed());
    }
    let auth = sovra_server::auth::authenticator(&[], None, sovra_core::clock::system())
        .await
        .unwrap();
    let config = sovra_server::Config::parse(config).unwrap();
    sovra_server::router::app(Arc::new(kms), auth, config, None).0
}

/// Status and JSON error message of one request, from `peer` when given.
async fn send(
    app: &Router,
    method: Method,
    path: &str,
    peer: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    if let Some(peer) = peer {
        let addr: SocketAddr = format!("{peer}:40000").parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, code)
}

#[tokio::test]
async fn while_sealed_only_routes_declared_so_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = sealed_app(&dir, "", true).await;
    // The seal gate's answer; a handler that needs the unsealed core answers `Sovra is sealed`.
    const GATED: &str = "Sovra is sealed; operators must unseal it";
    for spec in ROUTES {
        let path = spec
            .path
            .replace("{id}", "00000000-0000-4000-8000-000000000000");
        let (status, code) = send(&app, spec.method.clone(), &path, None).await;
        let gated = code == GATED;
        assert_eq!(
            gated, !spec.allowed_while_sealed,
            "{} {path}: {status} {code}",
            spec.method
        );
        if gated {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    // Neither a path nor a method that no route has gets past the gate.
    for (method, path) in [(Method::GET, "/no/such/route"), (Method::POST, "/health")] {
        let (status, code) = send(&app, method, path, None).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, GATED)
        );
    }
}

#[tokio::test]
async fn unmatched_requests_are_charged_to_their_source_ip() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[rate_limits.unauthenticated]\nper_second = 0.001\nburst = 2";
    let app = sealed_app(&dir, config, false).await;
    for _ in 0..2 {
        let (status, _) = send(&app, Method::GET, "/no/such/route", Some("192.0.2.1")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let (status, message) = send(&app, Method::GET, "/other/path", Some("192.0.2.1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(message.contains("unauthenticated"), "{message}");
    // A wrong method is charged the same way, to the same bucket.
    let (status, _) = send(&app, Method::DELETE, "/api/v1/keys", Some("192.0.2.1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another source has a bucket of its own; probes are never limited.
    let (status, _) = send(&app, Method::GET, "/no/such/route", Some("192.0.2.2")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    for _ in 0..3 {
        let (status, _) = send(&app, Method::GET, "/health", Some("192.0.2.1")).await;
        assert_eq!(status, StatusCode::OK);
    }
}
