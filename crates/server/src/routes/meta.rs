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
}

#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/ready", tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(st): State<Arc<AppState>>) -> (StatusCode, Json<Health>) {
    if st.kms.is_unsealed() {
        (
            StatusCode::OK,
            Json(Health {
                status: "ready".into(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "sealed".into(),
            }),
        )
    }
}

#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    metrics::gauge!("sovra_sealed").set(if st.kms.is_unsealed() { 0.0 } else { 1.0 });
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
