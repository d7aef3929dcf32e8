//! Seal management and organization administration.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, Auth, b64, to_b64};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sovra_core::model::SealKind;
use sovra_core::seal;
use sovra_crypto::SecretBytes;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    pub shares: u32,
    pub threshold: u32,
    /// The one-time token the server wrote to `<data_dir>/init-token` at its first start:
    /// proof of being its installer.
    pub init_token: Option<String>,
    /// Allows a threshold of 1 (one operator alone unseals).
    #[serde(default)]
    pub allow_single_share: bool,
}

#[derive(Serialize, ToSchema)]
pub struct InitResponse {
    /// Base64 unseal shares. Shown once: give each to a different operator.
    pub shares: Vec<String>,
    pub threshold: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    /// One base64 unseal share.
    pub share: String,
}

/// The seal's state as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    /// `shamir` or `dev-file`.
    pub seal_type: Option<String>,
    pub shares: u32,
    pub threshold: u32,
    /// Shares received so far toward the threshold.
    pub progress: u32,
}

impl From<seal::SealStatus> for SealStatus {
    fn from(s: seal::SealStatus) -> Self {
        SealStatus {
            initialized: s.initialized,
            sealed: s.sealed,
            seal_type: s.seal_type,
            shares: s.shares,
            threshold: s.threshold,
            progress: s.progress,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct KekRotated {
    pub kek_version: u32,
}

#[utoipa::path(get, path = "/api/v1/sys/seal-status", tag = "sys", responses((status = 200, body = SealStatus)))]
pub async fn seal_status(State(st): State<Arc<AppState>>) -> Json<SealStatus> {
    Json(st.kms.seal_status().into())
}

#[utoipa::path(post, path = "/api/v1/sys/init", tag = "sys", request_body = InitRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = InitResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))))]
pub async fn init(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<InitRequest>,
) -> ApiResult<Json<InitResponse>> {
    crate::audit::note_resource(format!("seal/{}-of-{}", req.threshold, req.shares));
    if st.kms.seal_status().initialized {
        return Err(sovra_core::CoreError::AlreadyInitialized.into());
    }
    if !st.init_gate.admits(req.init_token.as_deref()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_init_token",
            format!(
                "sys/init needs the one-time init token this server wrote to its data directory \
                 ({}); pass it with `sovra operator init --init-token-file`",
                crate::init_token::INIT_TOKEN_FILE
            ),
        ));
    }
    let (_unseal_key, shares) = st
        .kms
        .initialize(
            SealKind::Shamir,
            req.shares,
            req.threshold,
            req.allow_single_share,
        )
        .await?;
    st.init_gate.spend();
    tracing::info!(
        shares = req.shares,
        threshold = req.threshold,
        "seal initialized"
    );
    Ok(Json(InitResponse {
        shares: shares.iter().map(|s| to_b64(s.expose())).collect(),
        threshold: req.threshold,
    }))
}

/// An unseal share as sent: base64, surrounding whitespace ignored.
pub fn decode_share(share: &str) -> ApiResult<SecretBytes> {
    Ok(SecretBytes::new(b64("share", share.trim())?))
}

#[utoipa::path(post, path = "/api/v1/sys/unseal", tag = "sys", request_body = UnsealRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = SealStatus), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))))]
pub async fn unseal(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<UnsealRequest>,
) -> ApiResult<Json<SealStatus>> {
    let share = decode_share(&req.share)?;
    // The ceremony's events name which share was submitted (its id byte, not a secret).
    if let Some(id) = share.expose().first() {
        crate::audit::note_resource(format!("seal/share/{id}"));
    }
    let status = st.kms.submit_unseal_share(share).await?;
    if !status.sealed {
        tracing::info!("unsealed");
    }
    Ok(Json(status.into()))
}

#[utoipa::path(post, path = "/api/v1/sys/seal", tag = "sys",
    responses((status = 200, body = SealStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn seal(State(st): State<Arc<AppState>>, Auth(p): Auth) -> ApiResult<Json<SealStatus>> {
    st.kms.seal(&p)?;
    tracing::info!(subject = %p.subject(), "sealed by operator");
    Ok(Json(st.kms.seal_status().into()))
}

#[utoipa::path(post, path = "/api/v1/sys/kek/rotate", tag = "sys",
    responses((status = 200, body = KekRotated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn rotate_kek(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
) -> ApiResult<Json<KekRotated>> {
    let version = st.kms.rotate_org_kek(&p).await?;
    // Rewrap the org's keys in the background; requests keep working meanwhile (lazy rewrap).
    let kms = st.kms.clone();
    let org = p.org().to_string();
    tokio::spawn(async move {
        match kms.rewrap_org(&org).await {
            Ok(n) => {
                tracing::info!(org = %org, rewrapped = n, "KEK rotation: key material rewrapped")
            }
            Err(e) => {
                tracing::warn!(org = %org, error = %e, "KEK rotation: background rewrap stopped; lazy rewrap continues")
            }
        }
    });
    Ok(Json(KekRotated {
        kek_version: version,
    }))
}
