//! API errors: JSON `{"error": {"code", "message", "request_id"}}` with the status HTTP
//! gives the condition. The request id comes from the request's task-local scope.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sovra_core::CoreError;

tokio::task_local! {
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

/// The error code of a response, for the audit event (a response extension).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for the `Retry-After` header of a 429.
    pub retry_after: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: String,
    pub message: String,
    pub request_id: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        use CoreError::*;
        let status = match &e {
            Sealed | NotInitialized => StatusCode::SERVICE_UNAVAILABLE,
            AlreadyInitialized | Conflict(_) | KeyDisabled | KeyPendingDeletion => {
                StatusCode::CONFLICT
            }
            NotFound => StatusCode::NOT_FOUND,
            InvalidInput(_)
            | WrongKeyUsage(_)
            | DecryptFailed
            | MalformedCiphertext(_)
            | InvalidShare(_) => StatusCode::BAD_REQUEST,
            Forbidden | UnknownOrg(_) | OrgSuspended(_) | UnknownIdentity | IdentityDisabled
            | IdentityRefused(_) => StatusCode::FORBIDDEN,
            Storage(sovra_core::StoreError::Conflict(_)) => StatusCode::CONFLICT,
            Storage(_) | Busy => StatusCode::SERVICE_UNAVAILABLE,
            Internal | IntegrityViolation(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        if let IntegrityViolation(record) = &e {
            // The core logged which row; the request's audit event carries the code.
            metrics::counter!("sovra_integrity_violations_total", "record" => *record).increment(1);
        }
        if let Storage(inner) = &e {
            // The detail goes to the log only; it may name tables or hosts.
            tracing::error!(error = %inner, "storage error");
        }
        let message = match &e {
            Storage(sovra_core::StoreError::Conflict(_)) => {
                "conflicting concurrent change; retry".to_string()
            }
            _ => e.to_string(),
        };
        let retry_after = match &e {
            RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        ApiError {
            status,
            code: e.code(),
            message,
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                request_id: current_request_id(),
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(ErrorCode(self.code));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs.max(1)),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
