//! The key service: every operation on keys, each authorized through [`authorize`] and
//! checked against the key's type, usage and state. Split by concern: [`lifecycle`] (create,
//! find, rotate, state changes, deletion), [`operations`] (the cryptographic operations),
//! [`loaded`] (unwrapped key versions and their cache), [`heavy`] (admission and the pool for
//! CPU-heavy work); the types it speaks in are in [`types`], with typed ids and times and no
//! wire format: the server's JSON shapes are its own.

mod admission;
mod heavy;
mod identities;
mod lifecycle;
mod loaded;
mod operations;
mod orgs;
mod types;
mod verify_rows;

pub use heavy::{HeavyOpAdmission, heavy_cost};
pub use identities::{ASSIGNABLE_ROLES, IdentityUpdate, MAX_SUBJECT_LEN, NewIdentity};
pub use lifecycle::{MAX_DESCRIPTION_LEN, MAX_NAME_LEN, MAX_PENDING_DAYS, MIN_PENDING_DAYS};
pub use orgs::MAX_DISPLAY_NAME_LEN;
pub use types::{DataKey, Decrypted, Encrypted, KeyInfo, KeyUpdate, NewKey, Signed};
pub use verify_rows::{RowCheck, RowFinding};

use crate::authz::{Action, Resource, authorize};
use crate::cache::BoundedCache;
use crate::clock::Clock;
use crate::error::CoreError;
use crate::identity::Principal;
use crate::ids::KeyId;
use crate::keymeta::KeyMetaCache;
use crate::model::{KeyRecord, KeyState};
use crate::seal::{Seal, SealStatus};
use crate::store::Store;
use sovra_crypto::SecretBytes;
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
        let follower = store.key_changes().await?.map(|mut feed| {
            let (key_meta, admission) = (key_meta.clone(), admission.clone());
            AbortOnDrop(tokio::spawn(async move {
                while let Some(change) = feed.recv().await {
                    key_meta.apply(&change);
                    admission.forget(&change);
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
        self.clear_audit_keys_cache();
        Ok(())
    }

    pub async fn rotate_org_kek(&self, p: &Principal) -> Result<u32, CoreError> {
        authorize(p, Action::OrgKekRotate, Resource::Org(p.org()))?;
        self.rotate_kek(p.org().as_str()).await
    }

    // ---- access ---------------------------------------------------------------------------

    /// Loads a key the principal may act on; another owner's or org's key is `NotFound`.
    /// The row may come from the metadata cache (see [`crate::keymeta`] for its bounds).
    async fn key_for(
        &self,
        p: &Principal,
        id: KeyId,
        action: Action,
    ) -> Result<KeyRecord, CoreError> {
        self.seal.root()?;
        if let Some(k) = self.key_meta.get(p.org().as_str(), id.as_uuid())
            && authorize(p, action, Resource::Key(&k)).is_ok()
        {
            return Ok(k);
        }
        // A key the caller may not use takes the path of a missing id, which is never cached:
        // one database read, then the refusal. Answered from the cache, another owner's key
        // would be measurably faster than a missing one and reveal which ids exist.
        let generation = self.key_meta.generation();
        let fetched = std::time::Instant::now();
        let key = self
            .stored_key(p.org().as_str(), id.as_uuid())
            .await?
            .ok_or(CoreError::NotFound)?;
        self.key_meta.insert(generation, &key, fetched);
        authorize(p, action, Resource::Key(&key))?;
        Ok(key)
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
