//! An org's identities: listed and shown by its admins and auditors, registered and changed
//! (kind, roles, status) by its admins. Identity ids name where the identity authenticates
//! (`ISSUER#SUBJECT`): clients percent-encode them in paths.

use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, Auth};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sovra_core::CoreError;
use sovra_core::clock::Timestamp;
use sovra_core::identity::Role;
use sovra_core::kms::{IdentityUpdate, NewIdentity};
use sovra_core::model::{IdentityKind, IdentityRecord, IdentityStatus};
use std::sync::Arc;
use utoipa::ToSchema;

/// An identity as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityInfo {
    /// The owner id of its keys.
    pub id: String,
    /// `admin`, `user`, `auditor` or `service_account`.
    pub kind: String,
    /// Roles given in Sovra, besides those its credentials assert.
    pub roles: Vec<String>,
    /// `active` or `disabled`.
    pub status: String,
    /// `jwt` or `dev-token`.
    pub auth_source: String,
    pub issuer: String,
    pub subject: String,
    /// RFC 3339.
    pub created: String,
    pub last_seen: Option<String>,
}

impl From<IdentityRecord> for IdentityInfo {
    fn from(i: IdentityRecord) -> Self {
        IdentityInfo {
            id: i.id,
            kind: i.kind.as_str().into(),
            roles: i.roles,
            status: i.status.as_str().into(),
            auth_source: i.auth_source,
            issuer: i.issuer,
            subject: i.subject,
            created: Timestamp::from_millis(i.created_at).to_rfc3339(),
            last_seen: i
                .last_seen_at
                .map(|t| Timestamp::from_millis(t).to_rfc3339()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct IdentityList {
    pub identities: Vec<IdentityInfo>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterIdentityRequest {
    /// A JWT issuer the server trusts.
    #[schema(max_length = 512)]
    pub issuer: String,
    #[schema(max_length = 512)]
    pub subject: String,
    /// `admin`, `user`, `auditor` or `service_account`.
    pub kind: String,
    /// Of `admin`, `auditor`, `user`.
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIdentityRequest {
    pub kind: Option<String>,
    pub roles: Option<Vec<String>>,
    /// `active` or `disabled`.
    pub status: Option<String>,
}

fn kind(s: &str) -> ApiResult<IdentityKind> {
    IdentityKind::parse(s).ok_or_else(|| {
        CoreError::InvalidInput("kind must be one of admin, user, auditor, service_account".into())
            .into()
    })
}

fn roles(names: &[String]) -> ApiResult<Vec<Role>> {
    names
        .iter()
        .map(|n| {
            Role::parse(n)
                .ok_or_else(|| CoreError::InvalidInput(format!("unknown role {n:?}")).into())
        })
        .collect()
}

fn status(s: &str) -> ApiResult<IdentityStatus> {
    IdentityStatus::parse(s)
        .ok_or_else(|| CoreError::InvalidInput("status must be active or disabled".into()).into())
}

#[utoipa::path(get, path = "/api/v1/identities", tag = "identities",
    responses((status = 200, body = IdentityList)),
    security(("bearer" = [])))]
pub async fn list_identities(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
) -> ApiResult<Json<IdentityList>> {
    let list = st.kms.list_identities(&p).await?;
    Ok(Json(IdentityList {
        identities: list.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/identities", tag = "identities", request_body = RegisterIdentityRequest,
    responses((status = 201, body = IdentityInfo), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register_identity(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<RegisterIdentityRequest>,
) -> ApiResult<(StatusCode, Json<IdentityInfo>)> {
    // Only subjects of a configured issuer: any other id could never authenticate, and one
    // imitating another source (`dev-token`) would name its identity.
    if !st.auth.trusts_issuer(&req.issuer) {
        return Err(CoreError::InvalidInput(
            "issuer is not a JWT issuer this server trusts".into(),
        )
        .into());
    }
    let new = NewIdentity {
        kind: kind(&req.kind)?,
        roles: roles(&req.roles)?,
        issuer: req.issuer,
        subject: req.subject,
    };
    let rec = st.kms.register_identity(&p, new).await?;
    crate::audit::note_resource(format!("identity/{}", rec.id));
    Ok((StatusCode::CREATED, Json(rec.into())))
}

#[utoipa::path(get, path = "/api/v1/identities/{id}", tag = "identities",
    params(("id" = String, Path, description = "identity id, percent-encoded")),
    responses((status = 200, body = IdentityInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_identity(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<IdentityInfo>> {
    crate::audit::note_resource(format!("identity/{id}"));
    Ok(Json(st.kms.show_identity(&p, &id).await?.into()))
}

#[utoipa::path(patch, path = "/api/v1/identities/{id}", tag = "identities",
    params(("id" = String, Path, description = "identity id, percent-encoded")),
    request_body = UpdateIdentityRequest,
    responses((status = 200, body = IdentityInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_identity(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateIdentityRequest>,
) -> ApiResult<Json<IdentityInfo>> {
    crate::audit::note_resource(format!("identity/{id}"));
    let update = IdentityUpdate {
        kind: req.kind.as_deref().map(kind).transpose()?,
        roles: req.roles.as_deref().map(roles).transpose()?,
        status: req.status.as_deref().map(status).transpose()?,
    };
    let rec = st.kms.update_identity(&p, &id, update).await?;
    tracing::info!(identity = %rec.id, kind = rec.kind.as_str(), status = rec.status.as_str(), by = %p.subject(), "identity changed");
    Ok(Json(rec.into()))
}
