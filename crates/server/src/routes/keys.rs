//! Key lifecycle: create, list, show, rotate, enable/disable, deletion, settings.

use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, Auth, key_id};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sovra_core::kms::{self, KeyUpdate, NewKey};
use sovra_core::model;
use sovra_crypto::KeyType;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Unique per owner: letters, digits, '-', '_', '.', '/'.
    #[schema(pattern = r"^[A-Za-z0-9._/-]{1,128}$")]
    pub name: String,
    #[serde(rename = "type")]
    #[schema(value_type = KeyTypeName)]
    pub key_type: String,
    /// At most 1024 bytes.
    #[schema(max_length = 1024)]
    pub description: Option<String>,
}

/// The key types, for the document only: the core parses the name (the constraints above
/// mirror sovra_core's checks, so generated requests can create keys).
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum KeyTypeName {
    #[schema(rename = "aes-256-gcm")]
    Aes256Gcm,
    #[schema(rename = "chacha20-poly1305")]
    Chacha20Poly1305,
    #[schema(rename = "hmac-sha256")]
    HmacSha256,
    #[schema(rename = "ed25519")]
    Ed25519,
    #[schema(rename = "ecdsa-p256")]
    EcdsaP256,
    #[schema(rename = "rsa-3072")]
    Rsa3072,
    #[schema(rename = "rsa-4096")]
    Rsa4096,
}

/// Key metadata as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    pub id: uuid::Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: String,
    pub description: Option<String>,
    pub state: KeyState,
    pub owner: String,
    /// Number of versions; the newest is used for new operations.
    pub latest_version: u32,
    pub min_decryption_version: u32,
    /// RFC 3339 timestamps.
    pub created: String,
    pub rotated: Option<String>,
    pub deletion_date: Option<String>,
}

impl From<kms::KeyInfo> for KeyInfo {
    fn from(k: kms::KeyInfo) -> Self {
        KeyInfo {
            id: k.id.as_uuid(),
            name: k.name,
            key_type: k.key_type.as_str().into(),
            description: k.description,
            state: k.state.into(),
            owner: k.owner.to_string(),
            latest_version: k.latest_version,
            min_decryption_version: k.min_decryption_version,
            created: k.created.to_rfc3339(),
            rotated: k.rotated.map(|t| t.to_rfc3339()),
            deletion_date: k.deletion_date.map(|t| t.to_rfc3339()),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl From<model::KeyState> for KeyState {
    fn from(s: model::KeyState) -> Self {
        match s {
            model::KeyState::Enabled => KeyState::Enabled,
            model::KeyState::Disabled => KeyState::Disabled,
            model::KeyState::PendingDeletion => KeyState::PendingDeletion,
        }
    }
}

/// The key type a request names; an unknown name is `invalid_input`, as the core says it.
pub fn key_type(name: &str) -> ApiResult<KeyType> {
    KeyType::parse(name).map_err(|e| sovra_core::CoreError::from(e).into())
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// Ciphertexts of older versions no longer decrypt.
    pub min_decryption_version: Option<u32>,
    pub description: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDeletionRequest {
    /// Waiting period, 7 to 30 days.
    #[schema(minimum = 7, maximum = 30)]
    pub pending_days: u32,
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 201, body = KeyInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn create_key(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Json<KeyInfo>)> {
    let info = st
        .kms
        .create_key(
            &p,
            NewKey {
                name: req.name,
                key_type: key_type(&req.key_type)?,
                description: req.description,
            },
        )
        .await?;
    // The event names the key created, not just the collection.
    crate::audit::note_resource(format!("key/{}", info.id));
    Ok((StatusCode::CREATED, Json(info.into())))
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys",
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn list_keys(State(st): State<Arc<AppState>>, Auth(p): Auth) -> ApiResult<Json<KeyList>> {
    Ok(Json(KeyList {
        keys: st
            .kms
            .list_keys(&p)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn get_key(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(st.kms.get_key(&p, key_id(&id)?).await?.into()))
}

#[utoipa::path(patch, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path, description = "key id")),
    request_body = UpdateKeyRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = KeyInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn update_key(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateKeyRequest>,
) -> ApiResult<Json<KeyInfo>> {
    let update = KeyUpdate {
        min_decryption_version: req.min_decryption_version,
        description: req.description,
    };
    Ok(Json(
        st.kms.update_key(&p, key_id(&id)?, update).await?.into(),
    ))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", tag = "keys", params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn rotate_key(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(st.kms.rotate_key(&p, key_id(&id)?).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/disable", tag = "keys", params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn disable_key(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(st.kms.disable_key(&p, key_id(&id)?).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/enable", tag = "keys", params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn enable_key(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(st.kms.enable_key(&p, key_id(&id)?).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/schedule-deletion", tag = "keys",
    params(("id" = String, Path, description = "key id")), request_body = ScheduleDeletionRequest,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 200, body = KeyInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn schedule_deletion(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ScheduleDeletionRequest>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(
        st.kms
            .schedule_deletion(&p, key_id(&id)?, req.pending_days)
            .await?
            .into(),
    ))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/cancel-deletion", tag = "keys",
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyInfo), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn cancel_deletion(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyInfo>> {
    Ok(Json(st.kms.cancel_deletion(&p, key_id(&id)?).await?.into()))
}
