//! Organizations, managed by server operators: create, list, show, suspend, resume.

use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, Auth};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sovra_core::CoreError;
use sovra_core::clock::Timestamp;
use sovra_core::ids::OrgId;
use sovra_core::model::OrgRecord;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// 1 to 64 of a-z, 0-9, '-' and '_'.
    #[schema(pattern = r"^[a-z0-9_-]{1,64}$")]
    pub id: String,
    /// Shown to people; defaults to the id. At most 200 printable characters.
    #[schema(max_length = 200)]
    pub display_name: Option<String>,
}

/// An organization as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgInfo {
    pub id: String,
    pub display_name: String,
    /// `active` or `suspended`: a suspended org's tokens are refused.
    pub status: String,
    /// RFC 3339.
    pub created: String,
}

impl From<OrgRecord> for OrgInfo {
    fn from(o: OrgRecord) -> Self {
        OrgInfo {
            id: o.id,
            display_name: o.display_name,
            status: o.status.as_str().into(),
            created: Timestamp::from_millis(o.created_at).to_rfc3339(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct OrgList {
    pub orgs: Vec<OrgInfo>,
}

/// The org a path names, noted as the request's audit resource; an invalid id is a missing
/// org.
fn org_id(raw: &str) -> ApiResult<OrgId> {
    let id = OrgId::parse(raw).map_err(|_| CoreError::NotFound)?;
    crate::audit::note_resource(format!("org/{id}"));
    Ok(id)
}

#[utoipa::path(post, path = "/api/v1/orgs", tag = "orgs", request_body = CreateOrgRequest,
    responses((status = 201, body = OrgInfo), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_org(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateOrgRequest>,
) -> ApiResult<(StatusCode, Json<OrgInfo>)> {
    let id = OrgId::parse(&req.id).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
    crate::audit::note_resource(format!("org/{id}"));
    let org = st
        .kms
        .create_org(&p, &id, req.display_name.as_deref())
        .await?;
    tracing::info!(org = %id, by = %p.subject(), "organization created");
    Ok((StatusCode::CREATED, Json(org.into())))
}

#[utoipa::path(get, path = "/api/v1/orgs", tag = "orgs",
    responses((status = 200, body = OrgList)),
    security(("bearer" = [])))]
pub async fn list_orgs(State(st): State<Arc<AppState>>, Auth(p): Auth) -> ApiResult<Json<OrgList>> {
    let orgs = st.kms.list_orgs(&p).await?;
    Ok(Json(OrgList {
        orgs: orgs.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/orgs/{id}", tag = "orgs", params(("id" = String, Path, description = "org id")),
    responses((status = 200, body = OrgInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_org(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<OrgInfo>> {
    Ok(Json(st.kms.show_org(&p, &org_id(&id)?).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/orgs/{id}/suspend", tag = "orgs", params(("id" = String, Path, description = "org id")),
    responses((status = 200, body = OrgInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn suspend_org(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<OrgInfo>> {
    let org = st.kms.set_org_suspended(&p, &org_id(&id)?, true).await?;
    tracing::warn!(org = %org.id, by = %p.subject(), "organization suspended");
    Ok(Json(org.into()))
}

#[utoipa::path(post, path = "/api/v1/orgs/{id}/resume", tag = "orgs", params(("id" = String, Path, description = "org id")),
    responses((status = 200, body = OrgInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume_org(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<OrgInfo>> {
    let org = st.kms.set_org_suspended(&p, &org_id(&id)?, false).await?;
    tracing::info!(org = %org.id, by = %p.subject(), "organization resumed");
    Ok(Json(org.into()))
}
