//! Sovra's cryptographic primitives and formats.
//!
//! Every primitive comes from aws-lc-rs (AEAD, HMAC, signatures, RNG) or vsss-rs (Shamir over
//! GF(256)); this crate only chooses parameters, binds context as AAD and defines the byte
//! formats. It does no I/O.

pub mod aead;
pub mod envelope;
pub mod error;
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
