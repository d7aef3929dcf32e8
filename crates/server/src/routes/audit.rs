//! The audit log: its public key, an org's events, a verifiable export and keyed-hash lookups.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Auth};
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sovra_core::audit::{AuditEvent, AuditQuery};
use sovra_crypto::envelope::{EncryptionContext, encode_context};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[utoipa::path(get, path = "/api/v1/audit/public-key", tag = "audit",
    responses((status = 200, description = "Ed25519 audit public key (SPKI PEM)", content_type = "application/x-pem-file", body = String),
              (status = 503, body = ErrorBody)))]
pub async fn public_key(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    let pem = st.kms.audit_public_key_pem().await?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Events at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Events before this time (RFC 3339).
    pub to: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// `success`, `denied` or `failure`.
    pub outcome: Option<String>,
    /// The next page: `next_before_seq` of the previous page.
    pub before_seq: Option<u64>,
    /// Events per page (1-1000, default 100).
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEventView {
    pub seq: u64,
    /// RFC 3339.
    pub time: String,
    pub org: Option<String>,
    pub actor: String,
    pub auth_method: String,
    pub cert_fingerprint: Option<String>,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub error_code: Option<String>,
    pub request_id: String,
    pub source: String,
    /// Keyed hashes of sensitive values, by field.
    pub hashed: std::collections::BTreeMap<String, String>,
    pub hash: String,
}

impl From<AuditEvent> for AuditEventView {
    fn from(e: AuditEvent) -> Self {
        AuditEventView {
            seq: e.seq,
            time: rfc3339(e.time_ms),
            org: e.org,
            actor: e.actor,
            auth_method: e.auth_method,
            cert_fingerprint: e.cert_fingerprint,
            action: e.action,
            resource: e.resource,
            outcome: e.outcome,
            error_code: e.error_code,
            request_id: e.request_id,
            source: e.source,
            hashed: e.hashed,
            hash: e.hash,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub events: Vec<AuditEventView>,
    /// Pass as `before_seq` for the next page; absent on the last page.
    pub next_before_seq: Option<u64>,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn parse_time(field: &str, value: &Option<String>) -> ApiResult<Option<i64>> {
    value
        .as_deref()
        .map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("{field} is not an RFC 3339 time"),
                    )
                })
        })
        .transpose()
}

const DEFAULT_PAGE: u32 = 100;

/// Sequence numbers are stored as signed 64-bit integers, as the document says (int64).
fn check_seq(field: &str, value: Option<u64>) -> ApiResult<()> {
    match value {
        Some(v) if i64::try_from(v).is_err() => Err(ApiError::bad_request(
            "invalid_range",
            format!("{field} is out of range"),
        )),
        _ => Ok(()),
    }
}

/// The listing's time range (ms) and page size, checked.
pub(crate) fn list_range(q: &ListParams) -> ApiResult<(Option<i64>, Option<i64>, u32)> {
    check_seq("before_seq", q.before_seq)?;
    let from = parse_time("from", &q.from)?;
    let to = parse_time("to", &q.to)?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::bad_request(
            "invalid_range",
            "from must be before to",
        ));
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > sovra_core::audit::MAX_PAGE {
        return Err(ApiError::bad_request(
            "invalid_range",
            format!("limit must be 1 to {}", sovra_core::audit::MAX_PAGE),
        ));
    }
    Ok((from, to, limit))
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(ListParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn list(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<AuditPage>> {
    let (from, to, limit) = list_range(&q)?;
    events_stored(&st).await?;
    let events = st
        .kms
        .query_audit(
            &p,
            AuditQuery {
                org: String::new(),
                before_seq: q.before_seq,
                from_time_ms: from,
                to_time_ms: to,
                actor: q.actor,
                action: q.action,
                outcome: q.outcome,
                limit,
            },
        )
        .await?;
    let next_before_seq = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditPage {
        events: events.into_iter().map(AuditEventView::from).collect(),
        next_before_seq,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// First sequence (default 1).
    pub from_seq: Option<u64>,
    /// Last sequence (default: the head when the export starts).
    pub to_seq: Option<u64>,
}

/// The export's sequence range, checked, ending at the chain head at most.
pub(crate) fn export_range(q: &ExportParams, head: u64) -> ApiResult<(u64, u64)> {
    check_seq("from_seq", q.from_seq)?;
    check_seq("to_seq", q.to_seq)?;
    let from = q.from_seq.unwrap_or(1);
    let to = q.to_seq.unwrap_or(head);
    if from == 0 || q.to_seq.is_some_and(|t| t < from) {
        return Err(ApiError::bad_request(
            "invalid_range",
            "from_seq must be at least 1 and not after to_seq",
        ));
    }
    Ok((from, to.min(head)))
}

/// Waits until the events of requests already answered are in the store (they may still be
/// only in this node's journal), so a listing or export includes them.
async fn events_stored(st: &AppState) -> ApiResult<()> {
    if let Some(writer) = &st.audit {
        writer
            .flushed()
            .await
            .map_err(sovra_core::CoreError::from)?;
    }
    Ok(())
}

/// Events read from the store per step of the stream.
const EXPORT_PAGE: u32 = 1000;

#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", params(ExportParams),
    responses((status = 200, description = "JSON lines: the org's events, other orgs' events as links, checkpoints",
               content_type = "application/x-ndjson", body = String),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn export(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> ApiResult<Response> {
    events_stored(&st).await?;
    let head = st.kms.audit_export_head(&p).await?;
    let (from, to) = export_range(&q, head)?;
    // Pages are read as the client consumes them, so a long chain never sits in memory.
    let stream = futures_util::stream::unfold(Some(from), move |next| {
        let st = st.clone();
        let p = p.clone();
        async move {
            let from = next.filter(|n| *n <= to)?;
            match st.kms.audit_export_page(&p, from, to, EXPORT_PAGE).await {
                Ok(lines) if lines.is_empty() => None,
                Ok(lines) => {
                    let mut chunk = Vec::new();
                    let mut last = from;
                    for line in &lines {
                        if let sovra_core::audit::ExportLine::Event(e) = line {
                            last = e.seq;
                        } else if let sovra_core::audit::ExportLine::Redacted(r) = line {
                            last = r.seq;
                        }
                        if serde_json::to_writer(&mut chunk, line).is_err() {
                            return Some((Err(std::io::Error::other("encode")), None));
                        }
                        chunk.push(b'\n');
                    }
                    Some((Ok::<_, std::io::Error>(chunk), Some(last + 1)))
                }
                Err(e) => {
                    // Headers are sent: cut the stream, so the export ends visibly short.
                    tracing::error!(error = %e, "audit export failed mid-stream");
                    Some((Err(std::io::Error::other("audit export failed")), None))
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Exactly one value to hash.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HashRequest {
    /// A bearer token, as sent in `Authorization: Bearer`.
    pub token: Option<String>,
    /// An encryption context.
    pub context: Option<EncryptionContext>,
}

#[derive(Serialize, ToSchema)]
pub struct HashResponse {
    /// The field the hash appears under in events' `hashed`.
    pub field: String,
    pub hash: String,
}

/// The field name and the bytes to hash: exactly one of token and context.
pub(crate) fn hash_input(
    req: HashRequest,
) -> ApiResult<(&'static str, zeroize::Zeroizing<Vec<u8>>)> {
    let (field, value) = match (req.token, req.context) {
        (Some(t), None) => ("token", t.into_bytes()),
        (None, Some(c)) => ("context", encode_context(&c)),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_input",
                "give exactly one of token or context",
            ));
        }
    };
    Ok((field, zeroize::Zeroizing::new(value)))
}

#[utoipa::path(post, path = "/api/v1/audit/hash", tag = "audit", request_body = HashRequest,
    responses((status = 200, body = HashResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 503, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited",
               headers(("Retry-After" = u64, description = "Whole seconds to wait")))),
    security(("bearer" = [])))]
pub async fn hash(
    State(st): State<Arc<AppState>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<HashRequest>,
) -> ApiResult<Json<HashResponse>> {
    let (field, value) = hash_input(req)?;
    let hash = st.kms.audit_keyed_hash(&p, field, &value).await?;
    Ok(Json(HashResponse {
        field: field.into(),
        hash,
    }))
}
