//! Organizations as records: a server operator creates, lists, shows, suspends and resumes
//! them; nothing creates one implicitly. A credential naming an org that does not exist or is
//! suspended is refused at admission ([`super::admission`]).

use super::Kms;
use crate::authz::{Action, Resource, authorize};
use crate::error::CoreError;
use crate::hierarchy::kek_aad;
use crate::identity::Principal;
use crate::ids::OrgId;
use crate::model::{KekRecord, OrgRecord, OrgStatus};
use crate::store::{StoreChange, StoreError};
use sovra_crypto::{SecretBytes, rng};

/// Most characters of an org's display name.
pub const MAX_DISPLAY_NAME_LEN: usize = 200;

impl Kms {
    /// Creates an organization with its first KEK (conflict if the id is taken).
    pub async fn create_org(
        &self,
        p: &Principal,
        id: &OrgId,
        display_name: Option<&str>,
    ) -> Result<OrgRecord, CoreError> {
        authorize(p, Action::OrgManage, Resource::System)?;
        let display_name = display_name.unwrap_or(id.as_str());
        if display_name.trim().is_empty()
            || display_name.chars().count() > MAX_DISPLAY_NAME_LEN
            || display_name.chars().any(char::is_control)
        {
            return Err(CoreError::InvalidInput(format!(
                "display_name must be 1 to {MAX_DISPLAY_NAME_LEN} printable characters"
            )));
        }
        let org = self.insert_org(id, display_name).await?;
        Ok(org)
    }

    /// Creates the org record and its first KEK, wrapped under the root key.
    pub(crate) async fn insert_org(
        &self,
        id: &OrgId,
        display_name: &str,
    ) -> Result<OrgRecord, CoreError> {
        let root = self.seal.root()?;
        let kek = SecretBytes::new(rng::random_vec(32)?);
        let now = self.clock().now().as_millis();
        let org = OrgRecord {
            id: id.to_string(),
            display_name: display_name.to_string(),
            status: OrgStatus::Active,
            active_kek_version: 1,
            created_at: now,
        };
        let rec = KekRecord {
            org_id: id.to_string(),
            version: 1,
            wrapped_kek: root.wrap(&kek, &kek_aad(id.as_str(), 1))?,
            created_at: now,
        };
        self.store
            .create_org(&org, &rec)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    CoreError::Conflict(format!("organization {id} already exists"))
                }
                e => e.into(),
            })?;
        self.admission.forget(&StoreChange::Org(id.to_string()));
        Ok(org)
    }

    /// The org the dev token names, created at the first start in dev mode.
    pub async fn ensure_dev_org(&self) -> Result<(), CoreError> {
        let id = OrgId::parse(crate::identity::DEV_ORG).map_err(|_| CoreError::Internal)?;
        if self.store.get_org(id.as_str()).await?.is_some() {
            return Ok(());
        }
        match self.insert_org(&id, "Development").await {
            Ok(_) | Err(CoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn list_orgs(&self, p: &Principal) -> Result<Vec<OrgRecord>, CoreError> {
        authorize(p, Action::OrgManage, Resource::System)?;
        self.seal.root()?;
        Ok(self.store.list_orgs().await?)
    }

    pub async fn show_org(&self, p: &Principal, id: &OrgId) -> Result<OrgRecord, CoreError> {
        authorize(p, Action::OrgManage, Resource::System)?;
        self.seal.root()?;
        self.store
            .get_org(id.as_str())
            .await?
            .ok_or(CoreError::NotFound)
    }

    /// Suspends (`true`) or resumes an org; its principals are refused while it is suspended,
    /// on every node at once (the change feed empties their admission caches).
    pub async fn set_org_suspended(
        &self,
        p: &Principal,
        id: &OrgId,
        suspended: bool,
    ) -> Result<OrgRecord, CoreError> {
        authorize(p, Action::OrgManage, Resource::System)?;
        self.seal.root()?;
        let (from, to) = if suspended {
            (OrgStatus::Active, OrgStatus::Suspended)
        } else {
            (OrgStatus::Suspended, OrgStatus::Active)
        };
        // Whether it moved or was there already, the record read after says where it is.
        self.store.set_org_status(id.as_str(), from, to).await?;
        self.admission.forget(&StoreChange::Org(id.to_string()));
        let org = self
            .store
            .get_org(id.as_str())
            .await?
            .ok_or(CoreError::NotFound)?;
        // Not moved and not already there, or moved back meanwhile: say so, never report a
        // status the org does not have.
        if org.status != to {
            return Err(CoreError::Conflict(format!(
                "organization {id} changed concurrently; it is {}",
                org.status.as_str()
            )));
        }
        Ok(org)
    }

    /// The org record for the key hierarchy (its active KEK version); an org that is not a
    /// record has no keys, so its absence is an internal error here.
    pub(crate) async fn org_for_keys(&self, org_id: &str) -> Result<OrgRecord, CoreError> {
        self.store.get_org(org_id).await?.ok_or_else(|| {
            tracing::error!(org = org_id, "organization record missing for its keys");
            CoreError::Internal
        })
    }
}
