//! Storage of the seal record: how the root key is protected.

use super::StoreError;
use crate::model::SealRecord;
use async_trait::async_trait;

#[async_trait]
pub trait SealStore: Send + Sync {
    async fn get_seal(&self) -> Result<Option<SealRecord>, StoreError>;
    /// Writes the seal record once; a second initialization is a conflict.
    async fn create_seal(&self, seal: &SealRecord) -> Result<(), StoreError>;
}
