use thiserror::Error;

/// Errors of the crypto layer. Messages never contain key material or plaintext.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// Authentication failed: wrong key, wrong context, or altered bytes.
    #[error("decryption failed: the ciphertext or its context does not authenticate")]
    Decrypt,
    #[error("malformed ciphertext: {0}")]
    MalformedCiphertext(&'static str),
    #[error("invalid key material")]
    InvalidKey,
    #[error("unsupported operation: {0}")]
    Unsupported(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("shamir: {0}")]
    Shamir(String),
    #[error("internal cryptographic failure")]
    Internal,
}

impl From<aws_lc_rs::error::Unspecified> for CryptoError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        CryptoError::Internal
    }
}
