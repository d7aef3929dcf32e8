//! Sovra's domain and services: the seal, organizations and their KEKs, keys and the
//! cryptographic operations on them, and the one authorization function every call goes
//! through. No HTTP here; the store sits behind the [`store::Store`] trait.

pub mod audit;
pub mod authz;
pub mod clock;
pub mod error;
pub mod identity;
pub mod ids;
pub mod integrity;
pub mod keymeta;
pub mod kms;
pub mod model;
pub mod seal;
pub mod store;
#[doc(hidden)]
pub mod test_support;

pub mod cache;
#[cfg(test)]
mod format_vectors;
mod hierarchy;

pub use error::CoreError;
pub use identity::{AuthMethod, Principal, Role};
pub use ids::{IdentityId, KeyId, KeyRef, OrgId};
pub use kms::Kms;
pub use store::{Store, StoreError};
