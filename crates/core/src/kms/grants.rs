//! Grants: a key's owner or a key admin of its org lets another identity or a role of the org
//! do some operations on the key, optionally only under an encryption context (equals or
//! subset, as AWS KMS grants), until it expires or is revoked. A grantee sees only what its
//! grant allows: everything else answers exactly like a missing key. Every grant row carries a
//! MAC; one that fails it grants nothing.

use super::Kms;
use crate::authz::{Action, Resource, authorize};
use crate::error::CoreError;
use crate::identity::{Principal, Role};
use crate::ids::KeyId;
use crate::keymeta::MAX_KEY_META_AGE;
use crate::model::{ContextConstraint, GrantRecord, Grantee, KeyOp, KeyRecord};
use crate::store::StoreChange;
use dashmap::DashMap;
use sovra_crypto::keytype::KeyUsage;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use uuid::Uuid;

/// Most pairs in a grant's context condition, and bytes of each key or value.
pub const MAX_CONSTRAINT_PAIRS: usize = 16;
pub const MAX_CONSTRAINT_ITEM_LEN: usize = 128;
/// Most grants on one key.
pub const MAX_GRANTS_PER_KEY: usize = 100;
/// Keys whose grants a node keeps.
const GRANT_CACHE_CAPACITY: usize = 100_000;
/// Longest lifetime of a grant that expires.
pub const MAX_GRANT_SECONDS: u64 = 366 * 24 * 3600;

/// A grant as requested.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub grantee: Grantee,
    pub operations: Vec<KeyOp>,
    pub constraint: Option<ContextConstraint>,
    /// Seconds from now; `None`: until revoked.
    pub expires_in_seconds: Option<u64>,
}

/// The intact grants of each key, kept as briefly as key metadata and forgotten with it when
/// the key changes (a grant made or revoked anywhere is a change of its key).
#[derive(Default)]
pub(crate) struct GrantCache {
    entries: DashMap<Uuid, (Arc<Vec<GrantRecord>>, Instant)>,
    generation: AtomicU64,
}

impl GrantCache {
    pub(crate) fn get(&self, key: Uuid) -> Option<Arc<Vec<GrantRecord>>> {
        self.entries
            .get(&key)
            .filter(|e| e.1.elapsed() < MAX_KEY_META_AGE)
            .map(|e| e.0.clone())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(crate) fn insert(
        &self,
        generation: u64,
        key: Uuid,
        grants: Arc<Vec<GrantRecord>>,
        fetched: Instant,
    ) {
        if self.generation() != generation {
            return;
        }
        crate::cache::evict_one_at_capacity(&self.entries, GRANT_CACHE_CAPACITY);
        self.entries.insert(key, (grants, fetched));
        if self.generation() != generation {
            self.entries.remove(&key);
        }
    }

    pub(crate) fn forget(&self, change: &StoreChange) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        match change {
            StoreChange::Key(id) => {
                self.entries.remove(id);
            }
            StoreChange::Lost => self.entries.clear(),
            StoreChange::Org(_) | StoreChange::Identity { .. } => {}
        }
    }
}

/// Whether a key of this usage can do the operation. `verify` is the verification of a
/// signature or of a MAC, so a grantee can check MACs without being able to make them.
fn key_can(usage: KeyUsage, op: KeyOp) -> bool {
    match op {
        KeyOp::Encrypt | KeyOp::Decrypt | KeyOp::Datakey | KeyOp::Reencrypt => {
            usage == KeyUsage::EncryptDecrypt
        }
        KeyOp::Sign => usage == KeyUsage::SignVerify,
        KeyOp::Verify => matches!(usage, KeyUsage::SignVerify | KeyUsage::Mac),
        KeyOp::Mac => usage == KeyUsage::Mac,
        KeyOp::Read => true,
    }
}

impl Kms {
    /// The key's grants whose MAC holds, read from the store.
    pub(crate) async fn stored_grants(
        &self,
        org: &str,
        key: Uuid,
    ) -> Result<Vec<GrantRecord>, CoreError> {
        let rows = self.seal.row_mac()?;
        Ok(self
            .store
            .grants_for_key(org, key)
            .await?
            .into_iter()
            .filter(|g| rows.grant_is_intact(g))
            .collect())
    }

    /// Grants `new` on key `id` (its owner or a key admin of its org).
    pub async fn create_grant(
        &self,
        p: &Principal,
        id: KeyId,
        new: NewGrant,
    ) -> Result<GrantRecord, CoreError> {
        let key = self.key_for_update(p, id, Action::KeyGrant).await?;
        let mut operations = new.operations;
        operations.sort();
        operations.dedup();
        if operations.is_empty() {
            return Err(CoreError::InvalidInput(
                "a grant names at least one operation".into(),
            ));
        }
        if let Some(op) = operations
            .iter()
            .find(|op| !key_can(key.key_type.usage(), **op))
        {
            return Err(CoreError::InvalidInput(format!(
                "a {} key cannot do {}",
                key.key_type,
                op.as_str()
            )));
        }
        if let Some(c) = &new.constraint {
            if let Some(op) = operations.iter().find(|op| !op.has_context()) {
                return Err(CoreError::InvalidInput(format!(
                    "an encryption-context condition cannot apply to {}, which has no context",
                    op.as_str()
                )));
            }
            let ctx = c.context();
            if ctx.len() > MAX_CONSTRAINT_PAIRS
                || ctx.iter().any(|(k, v)| {
                    k.is_empty()
                        || k.len() > MAX_CONSTRAINT_ITEM_LEN
                        || v.len() > MAX_CONSTRAINT_ITEM_LEN
                })
            {
                return Err(CoreError::InvalidInput(format!(
                    "a context condition has at most {MAX_CONSTRAINT_PAIRS} pairs of non-empty keys and values of at most {MAX_CONSTRAINT_ITEM_LEN} bytes"
                )));
            }
        }
        match &new.grantee {
            Grantee::Identity(grantee) if grantee == p.identity().as_str() => {
                return Err(CoreError::InvalidInput(
                    "a grant is for another identity than its grantor".into(),
                ));
            }
            Grantee::Identity(grantee) => {
                // Only an identity of the key's org: another org's id is no identity here.
                if self
                    .store
                    .get_identity(&key.org_id, grantee)
                    .await?
                    .is_none()
                {
                    return Err(CoreError::InvalidInput(
                        "the grantee is no identity of this organization".into(),
                    ));
                }
            }
            // Key admins never use keys; the operator role is server-wide.
            Grantee::Role(role) => match Role::parse(role) {
                Some(Role::Operator | Role::KeyAdmin) | None => {
                    return Err(CoreError::InvalidInput(
                        "a grant's role is one of admin, auditor, user".into(),
                    ));
                }
                Some(_) => {}
            },
        }
        let now = self.clock().now().as_millis();
        let expires_at = match new.expires_in_seconds {
            None => None,
            Some(s) if (1..=MAX_GRANT_SECONDS).contains(&s) => {
                Some(now.saturating_add(s as i64 * 1000))
            }
            Some(_) => {
                return Err(CoreError::InvalidInput(format!(
                    "expires_in_seconds is 1 to {MAX_GRANT_SECONDS}"
                )));
            }
        };
        // Counted as they act: intact and not expired.
        let live = self
            .stored_grants(&key.org_id, key.id)
            .await?
            .iter()
            .filter(|g| g.expires_at.is_none_or(|t| now < t))
            .count();
        if live >= MAX_GRANTS_PER_KEY {
            return Err(CoreError::Conflict(format!(
                "a key has at most {MAX_GRANTS_PER_KEY} grants"
            )));
        }
        let mut grant = GrantRecord {
            id: Uuid::new_v4(),
            org_id: key.org_id.clone(),
            key_id: key.id,
            grantee: new.grantee,
            operations,
            constraint: new.constraint,
            expires_at,
            created_by: p.identity().to_string(),
            created_at: now,
            row_mac: Vec::new(),
        };
        self.seal.row_mac()?.sign_grant(&mut grant);
        self.store.create_grant(&grant).await?;
        self.forget_key(key.id);
        Ok(grant)
    }

    /// The key's grants (its owner or a key admin of its org).
    pub async fn list_grants(
        &self,
        p: &Principal,
        id: KeyId,
    ) -> Result<Vec<GrantRecord>, CoreError> {
        let key = self.key_for_update(p, id, Action::KeyGrant).await?;
        self.stored_grants(&key.org_id, key.id).await
    }

    /// Revokes a grant: by the key's owner or a key admin, or retired by its grantee.
    pub async fn revoke_grant(
        &self,
        p: &Principal,
        id: KeyId,
        grant_id: Uuid,
    ) -> Result<(), CoreError> {
        let key = match self.key_for_update(p, id, Action::KeyGrant).await {
            Ok(key) => key,
            Err(CoreError::NotFound) => self.key_retired_by_grantee(p, id, grant_id).await?,
            Err(e) => return Err(e),
        };
        if !self
            .store
            .delete_grant(&key.org_id, key.id, grant_id)
            .await?
        {
            return Err(CoreError::NotFound);
        }
        self.forget_key(key.id);
        Ok(())
    }

    /// The key of a grant the caller holds itself (a grantee retiring its grant).
    async fn key_retired_by_grantee(
        &self,
        p: &Principal,
        id: KeyId,
        grant_id: Uuid,
    ) -> Result<KeyRecord, CoreError> {
        authorize(p, Action::KeyList, Resource::Org(p.org()))?;
        // The grants are read whether or not the key exists: the same reads either way.
        let key = self.stored_key(p.org().as_str(), id.as_uuid()).await?;
        let grants = self.stored_grants(p.org().as_str(), id.as_uuid()).await?;
        let key = key.ok_or(CoreError::NotFound)?;
        let mine = grants.iter().any(|g| {
            g.id == grant_id
                && matches!(&g.grantee, Grantee::Identity(i) if i == p.identity().as_str())
        });
        if mine {
            Ok(key)
        } else {
            Err(CoreError::NotFound)
        }
    }

    /// Forgets a key's cached metadata and grants on this node (other nodes hear of it from
    /// the store's change feed).
    pub(crate) fn forget_key(&self, id: Uuid) {
        self.grants.forget(&StoreChange::Key(id));
        self.key_meta.invalidate(id);
    }
}
