//! Storage of grants on keys.

use super::StoreError;
use crate::model::GrantRecord;
use async_trait::async_trait;
use uuid::Uuid;

#[async_trait]
pub trait GrantStore: Send + Sync {
    async fn create_grant(&self, grant: &GrantRecord) -> Result<(), StoreError>;
    /// Every grant on the key, oldest first.
    async fn grants_for_key(
        &self,
        org_id: &str,
        key_id: Uuid,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    /// Deletes a grant of this key; returns whether it existed.
    async fn delete_grant(
        &self,
        org_id: &str,
        key_id: Uuid,
        grant_id: Uuid,
    ) -> Result<bool, StoreError>;
}
