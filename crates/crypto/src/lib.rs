//! Sovra's cryptographic primitives and formats.
//!
//! Every primitive comes from aws-lc-rs (AEAD, HMAC, HKDF, signatures, RNG) or vsss-rs (Shamir over
//! GF(256)); this crate only chooses parameters, binds context as AAD and defines the byte
//! formats. It does no I/O.

pub mod aead;
pub mod envelope;
pub mod error;
pub mod kdf;
pub mod keytype;
pub mod mac;
pub mod rng;
pub mod secret;
pub mod shamir;
pub mod sign;
pub mod wrap;

pub use error::CryptoError;
pub use keytype::KeyType;
pub use secret::SecretBytes;

/// SHA-256 of `data` (aws-lc-rs).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
