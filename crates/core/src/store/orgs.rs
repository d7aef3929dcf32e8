//! Storage of organizations and their KEK versions.

use super::StoreError;
use crate::model::{KekRecord, OrgRecord};
use async_trait::async_trait;

#[async_trait]
pub trait OrgStore: Send + Sync {
    async fn get_org(&self, org_id: &str) -> Result<Option<OrgRecord>, StoreError>;
    /// Creates an org with its first KEK version in one transaction (conflict if it exists).
    async fn create_org(&self, org: &OrgRecord, kek: &KekRecord) -> Result<(), StoreError>;
    async fn get_kek(&self, org_id: &str, version: u32) -> Result<Option<KekRecord>, StoreError>;
    /// Adds KEK version `kek.version` and makes it active, if the active version is still
    /// `kek.version - 1` (conflict otherwise).
    async fn add_kek_version(&self, kek: &KekRecord) -> Result<(), StoreError>;
}
