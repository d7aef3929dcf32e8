//! Storage of identities, the principals of an org.

use super::StoreError;
use crate::model::IdentityRecord;
use async_trait::async_trait;

#[async_trait]
pub trait IdentityStore: Send + Sync {
    async fn get_identity(
        &self,
        org_id: &str,
        id: &str,
    ) -> Result<Option<IdentityRecord>, StoreError>;
    /// Creates an identity (conflict if the org already has one of this id).
    async fn create_identity(&self, identity: &IdentityRecord) -> Result<(), StoreError>;
    /// Moves the row from `before` to `after` (kind, roles, status, revision, MAC) if the
    /// stored row is still at `before`'s revision; conflict otherwise.
    async fn update_identity(
        &self,
        before: &IdentityRecord,
        after: &IdentityRecord,
    ) -> Result<(), StoreError>;
    /// The org's identities, by id.
    async fn list_identities(&self, org_id: &str) -> Result<Vec<IdentityRecord>, StoreError>;
    /// Records when a credential of the identity was last accepted.
    async fn touch_identity(&self, org_id: &str, id: &str, at_ms: i64) -> Result<(), StoreError>;
}
