//! Request extractors: JSON bodies whose every failure is a clear JSON error, the
//! authenticated principal, and base64 fields.

use crate::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;
use sovra_core::Principal;
use sovra_core::identity::Authenticated;
use std::sync::Arc;

/// A JSON body. Syntax errors, wrong types, missing content type and oversized bodies each
/// get their own code.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(ApiError::bad_request("malformed_json", e.body_text())),
        };
        Self::from_bytes(&bytes)
    }
}

impl<T: DeserializeOwned> ApiJson<T> {
    /// Parses a body that already passed the content-type and size checks, exactly as the
    /// extractor does (the fuzz targets feed it hostile bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_bytes(bytes) {
            // serde reads a struct from a JSON array too (`[null, null]`); every body is an
            // object. (Checked after parsing, so that `[` alone is still a syntax error.)
            Ok(_) if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') => Err(
                ApiError::bad_request("invalid_input", "the request body must be a JSON object"),
            ),
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ApiError::bad_request("invalid_input", e.body_text()))
            }
            Err(e) => Err(ApiError::bad_request("malformed_json", e.body_text())),
        }
    }
}

/// `application/json` or `application/*+json`, as axum's own `Json` accepts.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "expected Content-Type: application/json",
    )
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "request body is too large",
    )
}

/// Query parameters; a wrong type or an unknown parameter is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_uri(&parts.uri)
    }
}

impl<T: DeserializeOwned> ApiQuery<T> {
    /// Parses a request URI's query exactly as the extractor does (for the fuzz targets).
    pub fn from_uri(uri: &axum::http::Uri) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// The caller, as the authentication layer ([`crate::auth::authenticate`]) verified it. A
/// handler on a route the table does not declare authenticated has no caller: it is refused.
pub struct Auth(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Arc<Authenticated>>()
            .map(|a| Auth(a.principal.clone()))
            .ok_or_else(|| ApiError::unauthenticated("missing bearer token"))
    }
}

/// Decodes a standard-base64 field, naming the field in the error.
pub fn b64(field: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    STANDARD.decode(value).map_err(|_| {
        ApiError::bad_request(
            "invalid_base64",
            format!("{field} is not valid standard base64"),
        )
    })
}

pub fn to_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Parses a key id from the path; an unparseable id is simply a key that does not exist. The
/// request's audit event names the key by its canonical id, whichever of the UUID's spellings
/// (upper case, braces, `urn:uuid:`, no hyphens) the path used, so that a search for the key
/// finds every event.
pub fn key_id(raw: &str) -> Result<sovra_core::KeyId, ApiError> {
    let id = sovra_core::KeyId::parse(raw).ok_or(sovra_core::CoreError::NotFound)?;
    crate::audit::note_resource(format!("key/{id}"));
    Ok(id)
}
