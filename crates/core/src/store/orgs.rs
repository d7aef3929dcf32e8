//! Storage of organizations and their KEK versions.

use super::StoreError;
use crate::model::{KekRecord, OrgRecord, OrgStatus};
use async_trait::async_trait;

#[async_trait]
pub trait OrgStore: Send + Sync {
    async fn get_org(&self, org_id: &str) -> Result<Option<OrgRecord>, StoreError>;
    /// Every org, by id.
    async fn list_orgs(&self) -> Result<Vec<OrgRecord>, StoreError>;
    /// Creates an org with its first KEK version in one transaction (conflict if it exists).
    async fn create_org(&self, org: &OrgRecord, kek: &KekRecord) -> Result<(), StoreError>;
    /// Moves the org from status `from` to `to` if it is in `from` (otherwise nothing).
    async fn set_org_status(
        &self,
        org_id: &str,
        from: OrgStatus,
        to: OrgStatus,
    ) -> Result<(), StoreError>;
    async fn get_kek(&self, org_id: &str, version: u32) -> Result<Option<KekRecord>, StoreError>;
    /// Adds KEK version `kek.version` and makes it active, if the active version is still
    /// `kek.version - 1` (conflict otherwise).
    async fn add_kek_version(&self, kek: &KekRecord) -> Result<(), StoreError>;
}
