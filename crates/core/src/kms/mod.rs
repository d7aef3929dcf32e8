//! The key service: every operation on keys, each authorized through [`authorize`] and
//! checked against the key's type, usage and state. Split by concern: [`lifecycle`] (create,
//! find, rotate, state changes, deletion), [`operations`] (the cryptographic operations),
//! [`loaded`] (unwrapped key versions and their cache), [`heavy`] (admission and the pool for
//! CPU-heavy work); the types it speaks in are in [`types`], with typed ids and times and no
//! wire format: the server's JSON shapes are its own.

mod admission;
mod grants;
mod heavy;
mod identities;
mod lifecycle;
mod loaded;
mod operations;
mod orgs;
mod types;
mod verify_rows;

pub use grants::{
    MAX_CONSTRAINT_ITEM_LEN, MAX_CONSTRAINT_PAIRS, MAX_GRANT_SECONDS, MAX_GRANTS_PER_KEY, NewGrant,
};
pub use heavy::{HeavyOpAdmission, heavy_cost};
pub use identities::{ASSIGNABLE_ROLES, IdentityUpdate, MAX_SUBJECT_LEN, NewIdentity};
pub use lifecycle::{MAX_DESCRIPTION_LEN, MAX_NAME_LEN, MAX_PENDING_DAYS, MIN_PENDING_DAYS};
pub use orgs::MAX_DISPLAY_NAME_LEN;
pub use types::{DataKey, Decrypted, Encrypted, KeyInfo, KeyUpdate, NewKey, Signed};
pub use verify_rows::{RowCheck, RowFinding};

use crate::authz::{Action, Resource, authorize, grant_allows};
use crate::cache::BoundedCache;
use crate::clock::Clock;
use crate::error::CoreError;
use crate::identity::Principal;
use crate::ids::KeyId;
use crate::keymeta::KeyMetaCache;
use crate::model::{KeyOp, KeyRecord, KeyState};
use crate::seal::{Seal, SealStatus};
use crate::store::Store;
use sovra_crypto::SecretBytes;
use sovra_crypto::envelope::EncryptionContext;
use sovra_crypto::keytype::KeyUsage;
use sovra_crypto::wrap::WrappingKey;
use std::sync::{Arc, OnceLock};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct KmsConfig {
    /// Unwrapped key versions kept in memory.
    pub key_cache_capacity: usize,
    /// Concurrent CPU-heavy operations (RSA generation and private-key operations).
    pub heavy_ops_concurrency: usize,
    /// CPU-heavy operations one identity may have running or queued.
    pub heavy_ops_per_identity: usize,
    /// CPU-heavy operations that may wait for a slot, server-wide.
    pub heavy_ops_queue: usize,
}

impl Default for KmsConfig {
    fn default() -> Self {
        KmsConfig {
            key_cache_capacity: 10_000,
            heavy_ops_concurrency: 2,
            heavy_ops_per_identity: 2,
            heavy_ops_queue: 64,
        }
    }
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Kms {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) seal: Seal,
    pub(crate) keks: BoundedCache<(String, u32), WrappingKey>,
    keys: BoundedCache<(Uuid, u32), loaded::LoadedKey>,
    key_meta: Arc<KeyMetaCache>,
    /// Org statuses and identity records for admission ([`admission`]).
    pub(crate) admission: Arc<admission::AdmissionCache>,
    /// Each key's intact grants, for grantees ([`grants`]).
    grants: Arc<grants::GrantCache>,
    /// Applies the store's change feed to `key_meta` and `admission`; stopped when the
    /// service is dropped (which also ends the store's listener).
    _key_change_follower: Option<AbortOnDrop>,
    heavy: heavy::HeavyPool,
    audit_keys: std::sync::RwLock<Option<Arc<crate::audit::AuditKeys>>>,
    heavy_admission: OnceLock<Arc<dyn HeavyOpAdmission>>,
    clock: Arc<dyn Clock>,
}
impl Kms {
    pub async fn new(store: Arc<dyn Store>, config: KmsConfig) -> Result<Kms, CoreError> {
        Kms::with_clock(store, config, crate::clock::system()).await
    }

    /// A key service that reads time from `clock` (a [`crate::clock::ManualClock`] in tests).
    pub async fn with_clock(
        store: Arc<dyn Store>,
        config: KmsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Kms, CoreError> {
        let seal = Seal::load(store.as_ref()).await?;
        let key_meta = Arc::new(KeyMetaCache::new(config.key_cache_capacity));
        let admission = Arc::new(admission::AdmissionCache::default());
        let grant_cache = Arc::new(grants::GrantCache::default());
        let follower = store.key_changes().await?.map(|mut feed| {
            let (key_meta, admission, grant_cache) =
                (key_meta.clone(), admission.clone(), grant_cache.clone());
            AbortOnDrop(tokio::spawn(async move {
                while let Some(change) = feed.recv().await {
                    key_meta.apply(&change);
                    admission.forget(&change);
                    grant_cache.forget(&change);
                }
            }))
        });
        Ok(Kms {
            store,
            seal,
            keks: BoundedCache::new(1024),
            keys: BoundedCache::new(config.key_cache_capacity),
            key_meta,
            admission,
            grants: grant_cache,
            _key_change_follower: follower,
            heavy: heavy::HeavyPool::new(
                config.heavy_ops_concurrency,
                config.heavy_ops_per_identity,
                config.heavy_ops_queue,
            ),
            audit_keys: std::sync::RwLock::new(None),
            heavy_admission: OnceLock::new(),
            clock,
        })
    }

    /// The clock this service reads; the server stamps its audit events with it too.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub(crate) fn audit_keys_cache(&self) -> Option<Arc<crate::audit::AuditKeys>> {
        self.audit_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_audit_keys_cache(&self, keys: Arc<crate::audit::AuditKeys>) {
        *self.audit_keys.write().unwrap_or_else(|e| e.into_inner()) = Some(keys);
    }

    pub(crate) fn clear_audit_keys_cache(&self) {
        *self.audit_keys.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    // ---- seal -------------------------------------------------------------------------

    pub fn seal_status(&self) -> SealStatus {
        self.seal.status()
    }

    pub fn seal_kind(&self) -> Option<crate::model::SealKind> {
        self.seal.kind()
    }

    pub fn is_unsealed(&self) -> bool {
        self.seal.root().is_ok()
    }

    /// Initializes the seal; returns the unseal key (kept only by dev mode) and its shares.
    /// Initializes the seal (see [`crate::seal::Seal::initialize`]); a Shamir threshold
    /// below 2 needs `allow_single_share`.
    pub async fn initialize(
        &self,
        kind: crate::model::SealKind,
        shares: u32,
        threshold: u32,
        allow_single_share: bool,
    ) -> Result<(SecretBytes, Vec<SecretBytes>), CoreError> {
        let now = self.clock.now();
        self.seal
            .initialize(
                self.store.as_ref(),
                kind,
                shares,
                threshold,
                allow_single_share,
                now,
            )
            .await
    }

    pub async fn submit_unseal_share(&self, share: SecretBytes) -> Result<SealStatus, CoreError> {
        self.seal.submit_share(self.store.as_ref(), share).await
    }

    pub async fn unseal_with_key(&self, key: &SecretBytes) -> Result<(), CoreError> {
        self.seal.unseal_with_key(self.store.as_ref(), key).await
    }

    /// Seals: drops the root key, every KEK and every unwrapped key from memory.
    pub fn seal(&self, p: &Principal) -> Result<(), CoreError> {
        authorize(p, Action::SysSeal, Resource::System)?;
        self.seal.seal()?;
        self.keks.clear();
        self.keys.clear();
        self.admission.clear();
        self.grants.forget(&crate::store::StoreChange::Lost);
        self.clear_audit_keys_cache();
        Ok(())
    }

    pub async fn rotate_org_kek(&self, p: &Principal) -> Result<u32, CoreError> {
        authorize(p, Action::OrgKekRotate, Resource::Org(p.org()))?;
        self.rotate_kek(p.org().as_str()).await
    }

    // ---- access ---------------------------------------------------------------------------

    /// Loads a key for operation `op` (with the request's encryption context, if it has one):
    /// the owner's, or one a grant lets the caller use this way. Anything else answers
    /// `NotFound` after the path of a missing id (the key's row and grants read from the
    /// store), so a key the caller may not use is indistinguishable from one that does not
    /// exist, also in the database reads it costs.
    pub(crate) async fn key_for_op(
        &self,
        p: &Principal,
        id: KeyId,
        op: KeyOp,
        context: Option<&EncryptionContext>,
    ) -> Result<KeyRecord, CoreError> {
        self.seal.root()?;
        let action = if op == KeyOp::Read {
            Action::KeyRead
        } else {
            Action::KeyUse
        };
        let now = self.clock.now().as_millis();
        if let Some(k) = self.key_meta.get(p.org().as_str(), id.as_uuid()) {
            if authorize(p, action, Resource::Key(&k)).is_ok() {
                return Ok(k);
            }
            if let Some(grants) = self.grants.get(k.id)
                && grant_allows(p, &k, &grants, op, context, now)
            {
                return Ok(k);
            }
        }
        let generation = self.key_meta.generation();
        let grant_generation = self.grants.generation();
        let fetched = std::time::Instant::now();
        let key = self.stored_key(p.org().as_str(), id.as_uuid()).await?;
        // Read for a missing id too: the same reads whether or not the key exists.
        let grants = Arc::new(self.stored_grants(p.org().as_str(), id.as_uuid()).await?);
        let key = key.ok_or(CoreError::NotFound)?;
        self.key_meta.insert(generation, &key, fetched);
        self.grants
            .insert(grant_generation, key.id, grants.clone(), fetched);
        match authorize(p, action, Resource::Key(&key)) {
            Ok(()) => Ok(key),
            Err(CoreError::NotFound) if grant_allows(p, &key, &grants, op, context, now) => Ok(key),
            Err(e) => Err(e),
        }
    }

    /// [`Self::key_for`] reading the database, for changes that must start from the row as
    /// stored (their optimistic-concurrency check compares against it).
    async fn key_for_update(
        &self,
        p: &Principal,
        id: KeyId,
        action: Action,
    ) -> Result<KeyRecord, CoreError> {
        let key = self
            .stored_key(p.org().as_str(), id.as_uuid())
            .await?
            .ok_or(CoreError::NotFound)?;
        authorize(p, action, Resource::Key(&key))?;
        Ok(key)
    }

    /// A key row as stored, if its MAC holds (`None`: no such row); sealed, nothing is read.
    pub(crate) async fn stored_key(
        &self,
        org_id: &str,
        id: Uuid,
    ) -> Result<Option<KeyRecord>, CoreError> {
        let rows = self.seal.row_mac()?;
        self.store
            .get_key(org_id, id)
            .await?
            .map(|k| rows.check_key(k))
            .transpose()
    }
}

fn require_usable(key: &KeyRecord) -> Result<(), CoreError> {
    match key.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(CoreError::KeyDisabled),
        KeyState::PendingDeletion => Err(CoreError::KeyPendingDeletion),
    }
}

fn require_usage(key: &KeyRecord, usage: KeyUsage) -> Result<(), CoreError> {
    if key.key_type.usage() == usage {
        Ok(())
    } else {
        Err(CoreError::WrongKeyUsage(format!(
            "a {} key cannot do this operation",
            key.key_type
        )))
    }
}
