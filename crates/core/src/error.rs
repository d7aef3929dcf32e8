use crate::store::StoreError;
use sovra_crypto::CryptoError;
use thiserror::Error;

/// Errors of the core. Each has a stable machine code; messages carry no secret.
#[derive(Debug, Error)]
pub enum CoreError {
    #[error("Sovra is sealed")]
    Sealed,
    #[error("Sovra is not initialized")]
    NotInitialized,
    #[error("Sovra is already initialized")]
    AlreadyInitialized,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Conflict(String),
    #[error("key is disabled")]
    KeyDisabled,
    #[error("key is pending deletion")]
    KeyPendingDeletion,
    #[error("{0}")]
    WrongKeyUsage(String),
    #[error("decryption failed: the ciphertext or its context does not authenticate")]
    DecryptFailed,
    #[error("malformed ciphertext: {0}")]
    MalformedCiphertext(&'static str),
    #[error("{0}")]
    InvalidShare(String),
    #[error("permission denied")]
    Forbidden,
    /// The credential names an org that is not a record.
    #[error("organization {0} does not exist")]
    UnknownOrg(String),
    #[error("organization {0} is suspended")]
    OrgSuspended(String),
    /// A valid credential of a subject that is no identity of the org, from an issuer that
    /// does not provision identities.
    #[error("no identity of this organization matches the credential")]
    UnknownIdentity,
    #[error("this identity is disabled")]
    IdentityDisabled,
    /// The identity may not hold what the credential asserts (a service account claiming
    /// the admin role).
    #[error("{0}")]
    IdentityRefused(String),
    #[error("storage unavailable")]
    Storage(#[from] StoreError),
    #[error("server busy, retry later")]
    Busy,
    #[error("internal error")]
    Internal,
    /// A stored row fails its MAC: it was changed outside Sovra, and is not used.
    #[error("a stored record fails its integrity check (changed outside Sovra); it is not used")]
    /// The record kind (`key`, `identity`) names the metric's label, never a column.
    IntegrityViolation(&'static str),
    /// The caller's quota for CPU-heavy work is spent; retry after this many seconds.
    #[error("rate limit for RSA operations exceeded; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
}

impl CoreError {
    /// The stable machine-readable code used in API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::Sealed => "sealed",
            CoreError::NotInitialized => "not_initialized",
            CoreError::AlreadyInitialized => "already_initialized",
            CoreError::NotFound => "not_found",
            CoreError::InvalidInput(_) => "invalid_input",
            CoreError::Conflict(_) => "conflict",
            CoreError::KeyDisabled => "key_disabled",
            CoreError::KeyPendingDeletion => "key_pending_deletion",
            CoreError::WrongKeyUsage(_) => "invalid_key_usage",
            CoreError::DecryptFailed => "decryption_failed",
            CoreError::MalformedCiphertext(_) => "malformed_ciphertext",
            CoreError::InvalidShare(_) => "invalid_share",
            CoreError::Forbidden => "forbidden",
            CoreError::UnknownOrg(_) => "unknown_org",
            CoreError::OrgSuspended(_) => "org_suspended",
            CoreError::UnknownIdentity => "unknown_identity",
            CoreError::IdentityDisabled => "identity_disabled",
            CoreError::IdentityRefused(_) => "identity_refused",
            CoreError::Storage(StoreError::Conflict(_)) => "conflict",
            CoreError::Storage(_) => "storage_unavailable",
            CoreError::Busy => "busy",
            CoreError::Internal => "internal",
            CoreError::IntegrityViolation(_) => "integrity_violation",
            CoreError::RateLimited { .. } => "rate_limited",
        }
    }
}

impl From<CryptoError> for CoreError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Decrypt => CoreError::DecryptFailed,
            CryptoError::MalformedCiphertext(m) => CoreError::MalformedCiphertext(m),
            CryptoError::InvalidInput(m) => CoreError::InvalidInput(m),
            CryptoError::Unsupported(m) => CoreError::WrongKeyUsage(m),
            CryptoError::Shamir(m) => CoreError::InvalidShare(m),
            CryptoError::InvalidKey | CryptoError::Internal => CoreError::Internal,
        }
    }
}
