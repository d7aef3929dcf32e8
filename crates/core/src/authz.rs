//! The one authorization decision point. Every core operation calls [`authorize`] with the
//! principal, the action and the resource; Rego policies will plug in here, restricting what
//! these base rules allow.

use crate::error::CoreError;
use crate::identity::{Principal, Role};
use crate::ids::OrgId;
use crate::model::{GrantRecord, Grantee, KeyOp, KeyRecord};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    KeyCreate,
    KeyList,
    KeyRead,
    KeyManage,
    KeyUse,
    /// Grant others operations on a key, list and revoke its grants.
    KeyGrant,
    OrgKekRotate,
    /// Create, list, show, suspend and resume organizations (server operators).
    OrgManage,
    /// List and show the org's identities.
    IdentityRead,
    /// Register identities and change their kind, roles and status.
    IdentityManage,
    SysSeal,
    /// Read the org's audit log (list, export, keyed-hash lookups).
    AuditRead,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::KeyCreate => "key.create",
            Action::KeyList => "key.list",
            Action::KeyRead => "key.read",
            Action::KeyManage => "key.manage",
            Action::KeyUse => "key.use",
            Action::KeyGrant => "key.grant",
            Action::OrgKekRotate => "org.kek.rotate",
            Action::OrgManage => "org.manage",
            Action::IdentityRead => "identity.read",
            Action::IdentityManage => "identity.manage",
            Action::SysSeal => "sys.seal",
            Action::AuditRead => "audit.read",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// An organization (the principal's own, for every action today).
    Org(&'a OrgId),
    Key(&'a KeyRecord),
    System,
}

/// Base rules: a key is visible and usable only by its owner in its org; rotating an org's KEK
/// and managing its identities take an admin of that org (auditors may read identities);
/// sealing the server and managing organizations take an operator. A key that is not the
/// caller's answers `NotFound`, exactly like a key that does not exist, so ids reveal nothing.
pub fn authorize(p: &Principal, action: Action, resource: Resource<'_>) -> Result<(), CoreError> {
    // Only server-wide actions are open to a principal whose org or identity was not found
    // active (an operator whose token names an org that does not exist yet).
    match resource {
        Resource::System => {}
        // A key answers like a missing one, as for any caller it is not for.
        Resource::Key(_) if !p.is_admitted() => return Err(CoreError::NotFound),
        _ if !p.is_admitted() => return Err(CoreError::Forbidden),
        _ => {}
    }
    match (action, resource) {
        (Action::KeyCreate | Action::KeyList, Resource::Org(org)) if org == p.org() => Ok(()),
        (
            Action::KeyRead | Action::KeyManage | Action::KeyUse | Action::KeyGrant,
            Resource::Key(k),
        ) => {
            let in_org = p.org().as_str() == k.org_id;
            let owner = in_org && *p.identity() == k.owner;
            // A key admin manages every key of its org but uses none.
            let key_admin = in_org && p.has_role(Role::KeyAdmin) && action != Action::KeyUse;
            if owner || key_admin {
                Ok(())
            } else {
                Err(CoreError::NotFound)
            }
        }
        (Action::OrgKekRotate, Resource::Org(org)) if org == p.org() && p.has_role(Role::Admin) => {
            Ok(())
        }
        (Action::AuditRead, Resource::Org(org))
            if org == p.org() && (p.has_role(Role::Admin) || p.has_role(Role::Auditor)) =>
        {
            Ok(())
        }
        (Action::IdentityRead, Resource::Org(org))
            if org == p.org() && (p.has_role(Role::Admin) || p.has_role(Role::Auditor)) =>
        {
            Ok(())
        }
        (Action::IdentityManage, Resource::Org(org))
            if org == p.org() && p.has_role(Role::Admin) =>
        {
            Ok(())
        }
        (Action::SysSeal | Action::OrgManage, Resource::System) if p.has_role(Role::Operator) => {
            Ok(())
        }
        _ => Err(CoreError::Forbidden),
    }
}

/// Whether one of the key's grants lets the principal do `op` with this encryption context
/// (`None` for an operation without one) at `now_ms`: a grant of the key's org, to the
/// principal's identity or one of its roles, naming the operation, not expired, whose context
/// condition the request meets. The grants must be intact (checked by the caller).
pub fn grant_allows(
    p: &Principal,
    key: &KeyRecord,
    grants: &[GrantRecord],
    op: KeyOp,
    context: Option<&BTreeMap<String, String>>,
    now_ms: i64,
) -> bool {
    // A key admin never uses keys, not even through a grant it could give itself.
    if !p.is_admitted() || p.org().as_str() != key.org_id || p.has_role(Role::KeyAdmin) {
        return false;
    }
    grants.iter().any(|g| {
        let for_caller = match &g.grantee {
            Grantee::Identity(id) => id == p.identity().as_str(),
            Grantee::Role(role) => Role::parse(role).is_some_and(|r| p.has_role(r)),
        };
        for_caller
            && g.org_id == key.org_id
            && g.key_id == key.id
            && g.operations.contains(&op)
            && g.expires_at.is_none_or(|t| now_ms < t)
            && match (&g.constraint, context) {
                (None, _) => true,
                (Some(c), Some(ctx)) => c.allows(ctx),
                (Some(_), None) => false,
            }
    })
}
