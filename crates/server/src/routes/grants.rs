//! Grants on a key: made, listed and revoked by its owner or a key admin of its org; a
//! grantee may retire its own.

use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, Auth, key_id};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sovra_core::CoreError;
use sovra_core::clock::Timestamp;
use sovra_core::kms::NewGrant;
use sovra_core::model::{ContextConstraint, GrantRecord, Grantee, KeyOp};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// Who a grant is for: exactly one of the two.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GranteeSpec {
    /// An identity id of the key's org.
    pub identity: Option<String>,
    /// A role of the key's org: admin, auditor, key_admin, user.
    pub role: Option<String>,
}

/// The encryption-context condition: at most one of the two (as AWS KMS grant constraints).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantConstraints {
    /// The request's context must be exactly this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
    /// The request's context must hold every pair of this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrantRequest {
    pub grantee: GranteeSpec,
    /// Of encrypt, decrypt, sign, verify, mac, datakey, reencrypt, read.
    pub operations: Vec<String>,
    pub constraints: Option<GrantConstraints>,
    /// Lifetime; without it the grant lasts until revoked.
    #[schema(minimum = 1, maximum = 31622400)]
    pub expires_in_seconds: Option<u64>,
}

/// A grant as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantInfo {
    pub id: uuid::Uuid,
    pub key_id: uuid::Uuid,
    pub grantee: GranteeSpec,
    pub operations: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraints: Option<GrantConstraints>,
    /// RFC 3339; none: until revoked.
    pub expires: Option<String>,
    pub created_by: String,
    pub created: String,
}

impl From<GrantRecord> for GrantInfo {
    fn from(g: GrantRecord) -> Self {
        let grantee = match g.grantee {
            Grantee::Identity(id) => GranteeSpec {
                identity: Some(id),
                role: None,
            },
            Grantee::Role(role) => GranteeSpec {
                identity: None,
                role: Some(role),
            },
        };
        let constraints = g.constraint.map(|c| match c {
            ContextConstraint::Equals(ctx) => GrantConstraints {
                encryption_context_equals: Some(ctx),
                encryption_context_subset: None,
            },
            ContextConstraint::Subset(ctx) => GrantConstraints {
                encryption_context_equals: None,
                encryption_context_subset: Some(ctx),
            },
        });
        GrantInfo {
            id: g.id,
            key_id: g.key_id,
            grantee,
            operations: g
                .operations
                .iter()
                .map(|o| o.as_str().to_string())
                .collect(),
            constraints,
            expires: g.expires_at.map(|t| Timestamp::from_millis(t).to_rfc3339()),
            created_by: g.created_by,
            created: Timestamp::from_millis(g.created_at).to_rfc3339(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct GrantList {
    pub grants: Vec<GrantInfo>,
}

fn invalid(message: &str) -> crate::error::ApiError {
    CoreError::InvalidInput(message.into()).into()
}

fn new_grant(req: CreateGrantRequest) -> ApiResult<NewGrant> {
    let grantee = match (req.grantee.identity, req.grantee.role) {
        (Some(id), None) => Grantee::Identity(id),
        (None, Some(role)) => Grantee::Role(role),
        _ => return Err(invalid("grantee names exactly one of identity and role")),
    };
    let operations = req
        .operations
        .iter()
        .map(|o| {
            KeyOp::parse(o).ok_or_else(|| {
                invalid("operations are of encrypt, decrypt, sign, verify, mac, datakey, reencrypt, read")
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let constraint = match req.constraints.unwrap_or_default() {
        GrantConstraints {
            encryption_context_equals: Some(c),
            encryption_context_subset: None,
        } => Some(ContextConstraint::Equals(c)),
        GrantConstraints {
            encryption_context_equals: None,
            encryption_context_subset: Some(c),
        } => Some(ContextConstraint::Subset(c)),
        GrantConstraints {
            encryption_context_equals: None,
            encryption_context_subset: None,
        } => None,
        _ => {
            return Err(invalid(
                "a grant has at most one encryption-context condition",
            ));
        }
    };
    Ok(NewGrant {
        grantee,
        operations,
        constraint,
        expires_in_seconds: req.expires_in_seconds,
    })
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/grants", tag = "keys",
    params(("id" = String, Path, description = "key id")), request_body = CreateGrantRequest,
    responses((status = 201, body = GrantInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_grant(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateGrantRequest>,
) -> ApiResult<(StatusCode, Json<GrantInfo>)> {
    let id = key_id(&id)?;
    let grant = st.kms.create_grant(&p, id, new_grant(req)?).await?;
    crate::audit::note_resource(format!("key/{id}/grant/{}", grant.id));
    Ok((StatusCode::CREATED, Json(grant.into())))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}/grants", tag = "keys",
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = GrantList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_grants(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<GrantList>> {
    let grants = st.kms.list_grants(&p, key_id(&id)?).await?;
    Ok(Json(GrantList {
        grants: grants.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}/grants/{grant_id}", tag = "keys",
    params(("id" = String, Path, description = "key id"), ("grant_id" = String, Path, description = "grant id")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_grant(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    Path((id, grant_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = key_id(&id)?;
    let grant = uuid::Uuid::parse_str(&grant_id).map_err(|_| CoreError::NotFound)?;
    crate::audit::note_resource(format!("key/{id}/grant/{grant}"));
    st.kms.revoke_grant(&p, id, grant).await?;
    Ok(StatusCode::NO_CONTENT)
}
