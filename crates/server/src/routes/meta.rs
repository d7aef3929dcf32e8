//! Health, readiness, metrics and the OpenAPI document.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    /// Why the server is not ready, when the status alone does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        detail: None,
    })
}

/// How long readiness waits for the database before calling it unavailable.
const READY_DATABASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Ready to serve keys: unsealed, the database answers a read, and every JWT issuer's keys
/// are fresh enough to be trusted, and the audit log is being written. Otherwise 503 with the
/// first failing check as `status` (`sealed`, `database_unavailable`, `audit_halted`,
/// `issuer_keys_expired`) and what failed in `detail`.
#[utoipa::path(get, path = "/ready", tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(st): State<Arc<AppState>>) -> (StatusCode, Json<Health>) {
    let not_ready = |status: &str, detail: Option<String>| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: status.into(),
                detail,
            }),
        )
    };
    if !st.kms.is_unsealed() {
        return not_ready("sealed", None);
    }
    match tokio::time::timeout(READY_DATABASE_TIMEOUT, st.kms.store().get_seal()).await {
        Ok(Ok(Some(_))) => {}
        // The error's text may name hosts; the log has it, the probe only the fact.
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
            tracing::warn!("readiness: the database did not answer a read of the seal record");
            return not_ready("database_unavailable", None);
        }
    }
    if let Some(why) = st.audit.as_ref().and_then(|a| a.halted()) {
        return not_ready("audit_halted", Some(why.to_string()));
    }
    let expired = st.auth.issuers_with_expired_keys();
    if !expired.is_empty() {
        return not_ready(
            "issuer_keys_expired",
            Some(format!(
                "the keys of these JWT issuers could not be refreshed in time; their tokens are refused: {}",
                expired.join(", ")
            )),
        );
    }
    (
        StatusCode::OK,
        Json(Health {
            status: "ready".into(),
            detail: None,
        }),
    )
}

#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    metrics::gauge!("sovra_sealed").set(if st.kms.is_unsealed() { 0.0 } else { 1.0 });
    let halted = st.audit.as_ref().is_some_and(|a| a.halted().is_some());
    metrics::gauge!("sovra_audit_halted").set(if halted { 1.0 } else { 0.0 });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json")))]
pub async fn openapi(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        st.openapi_json.clone(),
    )
}
