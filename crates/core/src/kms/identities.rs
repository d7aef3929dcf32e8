//! An org's identities: listed and shown by its admins and auditors; registered ahead of
//! first use (a subject of an issuer that does not provision, a service account) and changed
//! (kind, roles, status) by its admins. Every change signs the row anew.

use super::Kms;
use super::admission::{refuse_service_admin, stored_roles};
use crate::authz::{Action, Resource, authorize};
use crate::error::CoreError;
use crate::identity::{Principal, Role};
use crate::ids::IdentityId;
use crate::model::{IdentityKind, IdentityRecord, IdentityStatus};
use crate::store::{StoreChange, StoreError};

/// Roles an org admin may give an identity. `operator` is server-wide: no org grants it.
pub const ASSIGNABLE_ROLES: [Role; 4] = [Role::Admin, Role::Auditor, Role::KeyAdmin, Role::User];

/// Longest issuer URL or subject accepted when registering an identity.
pub const MAX_SUBJECT_LEN: usize = 512;

/// An identity registered ahead of its first credential.
#[derive(Debug, Clone)]
pub struct NewIdentity {
    /// The JWT issuer it authenticates with (one the server trusts).
    pub issuer: String,
    pub subject: String,
    pub kind: IdentityKind,
    pub roles: Vec<Role>,
}

/// A change to an identity; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct IdentityUpdate {
    pub kind: Option<IdentityKind>,
    pub roles: Option<Vec<Role>>,
    pub status: Option<IdentityStatus>,
}

fn role_names(roles: &[Role]) -> Result<Vec<String>, CoreError> {
    if let Some(r) = roles.iter().find(|r| !ASSIGNABLE_ROLES.contains(r)) {
        return Err(CoreError::InvalidInput(format!(
            "the {} role cannot be given to an identity of an organization",
            r.as_str()
        )));
    }
    let mut names: Vec<String> = roles.iter().map(|r| r.as_str().to_string()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn check_text(what: &str, s: &str) -> Result<(), CoreError> {
    if s.is_empty() || s.len() > MAX_SUBJECT_LEN || s.chars().any(char::is_control) {
        return Err(CoreError::InvalidInput(format!(
            "{what} must be 1 to {MAX_SUBJECT_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

impl Kms {
    pub async fn list_identities(&self, p: &Principal) -> Result<Vec<IdentityRecord>, CoreError> {
        authorize(p, Action::IdentityRead, Resource::Org(p.org()))?;
        let rows = self.seal.row_mac()?;
        self.store
            .list_identities(p.org().as_str())
            .await?
            .into_iter()
            .map(|i| rows.check_identity(i))
            .collect()
    }

    pub async fn show_identity(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<IdentityRecord, CoreError> {
        authorize(p, Action::IdentityRead, Resource::Org(p.org()))?;
        self.stored_identity(p, id).await
    }

    async fn stored_identity(&self, p: &Principal, id: &str) -> Result<IdentityRecord, CoreError> {
        let rows = self.seal.row_mac()?;
        let rec = self
            .store
            .get_identity(p.org().as_str(), id)
            .await?
            .ok_or(CoreError::NotFound)?;
        rows.check_identity(rec)
    }

    /// Registers an identity of the caller's org for a JWT subject (conflict if it exists).
    pub async fn register_identity(
        &self,
        p: &Principal,
        new: NewIdentity,
    ) -> Result<IdentityRecord, CoreError> {
        authorize(p, Action::IdentityManage, Resource::Org(p.org()))?;
        check_text("issuer", &new.issuer)?;
        check_text("subject", &new.subject)?;
        if new.issuer.contains('#') {
            return Err(CoreError::InvalidInput(
                "an issuer cannot contain '#'".into(),
            ));
        }
        refuse_service_admin(new.kind, &new.roles)?;
        let roles = role_names(&new.roles)?;
        let mut record = IdentityRecord {
            org_id: p.org().to_string(),
            id: IdentityId::jwt(&new.issuer, &new.subject).to_string(),
            kind: new.kind,
            roles,
            status: IdentityStatus::Active,
            auth_source: "jwt".into(),
            issuer: new.issuer,
            subject: new.subject,
            created_at: self.clock().now().as_millis(),
            last_seen_at: None,
            revision: 1,
            row_mac: Vec::new(),
        };
        self.seal.row_mac()?.sign_identity(&mut record);
        self.store
            .create_identity(&record)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    CoreError::Conflict("this identity already exists".into())
                }
                e => e.into(),
            })?;
        self.admission.forget(&StoreChange::Identity {
            org: record.org_id.clone(),
            id: record.id.clone(),
        });
        Ok(record)
    }

    /// Changes an identity's kind, roles or status. A service account never gets the admin
    /// role; no identity gets the server-wide operator role.
    pub async fn update_identity(
        &self,
        p: &Principal,
        id: &str,
        update: IdentityUpdate,
    ) -> Result<IdentityRecord, CoreError> {
        authorize(p, Action::IdentityManage, Resource::Org(p.org()))?;
        let before = self.stored_identity(p, id).await?;
        let mut after = before.clone();
        if let Some(kind) = update.kind {
            after.kind = kind;
        }
        if let Some(roles) = &update.roles {
            after.roles = role_names(roles)?;
        }
        if let Some(status) = update.status {
            after.status = status;
        }
        refuse_service_admin(after.kind, &stored_roles(&after.roles))?;
        if after == before {
            return Ok(before);
        }
        after.revision = before.revision + 1;
        self.seal.row_mac()?.sign_identity(&mut after);
        let result = self.store.update_identity(&before, &after).await;
        // Forget it whatever the outcome: a conflict means someone else changed it.
        self.admission.forget(&StoreChange::Identity {
            org: after.org_id.clone(),
            id: after.id.clone(),
        });
        result.map_err(|e| match e {
            StoreError::Conflict(_) => {
                CoreError::Conflict("the identity changed concurrently; retry".into())
            }
            e => e.into(),
        })?;
        Ok(after)
    }
}
