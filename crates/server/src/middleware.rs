//! Request-wide layers: request id and access log, metrics, and the seal gate (which follows
//! the route table, [`crate::routes::table`]).

use crate::error::{ApiError, REQUEST_ID};
use crate::routes::table;
use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

/// Gives every request an id (response header `x-request-id`, error bodies, log lines) and
/// logs method, route, status and latency — never bodies or credentials.
pub async fn request_id_and_log(req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let span = tracing::info_span!("request", request_id = %id, %method, path = %path);
    let mut resp = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(req), span.clone()),
        )
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let _e = span.enter();
    tracing::info!(
        status = resp.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    resp
}

/// Prometheus: requests by route and status, latency histogram by route.
pub async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // Only standard methods become label values: invented ones must not grow the registry.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("sovra_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("sovra_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// While sealed, only the routes the table declares `allowed_while_sealed` (status, init,
/// unseal, probes, the API document, the audit public key) are served; everything else,
/// unmatched paths included, answers 503.
pub async fn seal_gate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !st.kms.is_unsealed() && !table::spec(req.method(), req.extensions()).allowed_while_sealed {
        let status = st.kms.seal_status();
        let (code, msg) = if status.initialized {
            ("sealed", "Sovra is sealed; operators must unseal it")
        } else {
            ("not_initialized", "Sovra is not initialized")
        };
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, msg).into_response();
    }
    next.run(req).await
}

/// Any route that does not exist: a JSON 404 like every other error.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Ends a request that takes longer than `limit` (a slow client or a stuck dependency) with a
/// JSON 503 `request_timeout`, so that every answer has the API's error shape.
pub async fn request_timeout(
    State(limit): State<std::time::Duration>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!("the request took longer than {} s", limit.as_secs()),
            );
            e.retry_after = Some(1);
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::routes::table::{self, ROUTES};
    use axum::http::Method;

    #[test]
    fn only_the_intended_routes_work_while_sealed() {
        let allowed: Vec<(Method, &str)> = ROUTES
            .iter()
            .filter(|s| s.allowed_while_sealed)
            .map(|s| (s.method.clone(), s.path))
            .collect();
        assert_eq!(
            allowed,
            [
                (Method::GET, "/health"),
                (Method::GET, "/ready"),
                (Method::GET, "/metrics"),
                (Method::GET, "/api/v1/openapi.json"),
                (Method::GET, "/api/v1/sys/seal-status"),
                (Method::POST, "/api/v1/sys/init"),
                (Method::POST, "/api/v1/sys/unseal"),
                (Method::GET, "/api/v1/audit/public-key"),
            ]
        );
        assert!(!table::lookup(&Method::GET, None).allowed_while_sealed);
        assert!(!table::lookup(&Method::POST, Some("/health")).allowed_while_sealed);
    }
}
