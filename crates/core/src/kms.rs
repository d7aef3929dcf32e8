//! The key service: lifecycle and cryptographic operations, each authorized through
//! [`authorize`] and checked against the key's type, usage and state.

use crate::authz::{Action, Resource, authorize};
use crate::cache::BoundedCache;
use crate::error::CoreError;
use crate::identity::Principal;
use crate::keymeta::KeyMetaCache;
use crate::model::{KeyRecord, KeyState};
use crate::now_ms;
use crate::seal::{Seal, SealStatus};
use crate::store::{Store, StoreError};
use serde::Serialize;
use sovra_crypto::aead::AeadKey;
use sovra_crypto::envelope::{self, EncryptionContext, Header};
use sovra_crypto::keytype::KeyUsage;
use sovra_crypto::mac::MacKey;
use sovra_crypto::sign::{SignInput, SignatureAlgorithm, SigningKey, pem_encode};
use sovra_crypto::wrap::WrappingKey;
use sovra_crypto::{KeyType, SecretBytes, rng};
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;
use uuid::Uuid;

pub const MIN_PENDING_DAYS: u32 = 7;
pub const MAX_PENDING_DAYS: u32 = 30;
const DAY_MS: i64 = 86_400_000;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_DESCRIPTION_LEN: usize = 1024;

#[derive(Debug, Clone)]
pub struct KmsConfig {
    /// Unwrapped key versions kept in memory.
    pub key_cache_capacity: usize,
    /// Concurrent CPU-heavy operations (RSA generation and private-key operations).
    pub heavy_ops_concurrency: usize,
}

impl Default for KmsConfig {
    fn default() -> Self {
        KmsConfig {
            key_cache_capacity: 10_000,
            heavy_ops_concurrency: 2,
        }
    }
}

/// Asked before CPU-heavy work (RSA key generation and private-key operations) is queued: only
/// here is the key type known, so this is where the server charges the caller's RSA quota.
/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub trait HeavyOpAdmission: Send + Sync {
    fn admit(&self, p: &Principal) -> Result<(), CoreError>;
}

/// A key version ready for use.
pub(crate) enum LoadedKey {
    Aead(AeadKey),
    Mac(Box<MacKey>),
    Sign(SigningKey),
}

pub struct Kms {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) seal: Seal,
    pub(crate) keks: BoundedCache<(String, u32), WrappingKey>,
    keys: BoundedCache<(Uuid, u32), LoadedKey>,
    key_meta: Arc<KeyMetaCache>,
    /// Applies the store's key-change feed to `key_meta`; stopped when the service is dropped
    /// (which also ends the store's listener).
    _key_change_follower: Option<AbortOnDrop>,
    heavy: Arc<Semaphore>,
    audit_keys: std::sync::RwLock<Option<Arc<crate::audit::AuditKeys>>>,
    heavy_admission: OnceLock<Arc<dyn HeavyOpAdmission>>,
}

/// Key metadata as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: String,
    pub description: Option<String>,
    pub state: KeyState,
    pub owner: String,
    /// Number of versions; the newest is used for new operations.
    pub latest_version: u32,
    pub min_decryption_version: u32,
    /// RFC 3339 timestamps.
    pub created: String,
    pub rotated: Option<String>,
    pub deletion_date: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl From<&KeyRecord> for KeyInfo {
    fn from(k: &KeyRecord) -> Self {
        KeyInfo {
            id: k.id,
            name: k.name.clone(),
            key_type: k.key_type.as_str().into(),
            description: k.description.clone(),
            state: k.state,
            owner: k.owner.clone(),
            latest_version: k.latest_version,
            min_decryption_version: k.min_decryption_version,
            created: rfc3339(k.created_at),
            rotated: k.rotated_at.map(rfc3339),
            deletion_date: k.deletion_date.map(rfc3339),
        }
    }
}

pub struct NewKey {
    pub name: String,
    pub key_type: String,
    pub description: Option<String>,
}

pub struct KeyUpdate {
    pub min_decryption_version: Option<u32>,
    pub description: Option<String>,
}

pub struct Encrypted {
    pub ciphertext: Vec<u8>,
    pub key_id: Uuid,
    pub key_version: u32,
}

pub struct Decrypted {
    pub plaintext: SecretBytes,
    pub key_id: Uuid,
    pub key_version: u32,
}

pub struct DataKey {
    pub plaintext: Option<SecretBytes>,
    pub ciphertext: Vec<u8>,
    pub key_id: Uuid,
    pub key_version: u32,
}

pub struct Signed {
    pub signature: Vec<u8>,
    pub key_version: u32,
    pub algorithm: &'static str,
}

impl Kms {
    pub async fn new(store: Arc<dyn Store>, config: KmsConfig) -> Result<Kms, CoreError> {
        let seal = Seal::load(store.as_ref()).await?;
        let key_meta = Arc::new(KeyMetaCache::new(config.key_cache_capacity));
        let follower = store
            .key_changes()
            .await?
            .map(|feed| AbortOnDrop(tokio::spawn(key_meta.clone().follow(feed))));
        Ok(Kms {
            store,
            seal,
            keks: BoundedCache::new(1024),
            keys: BoundedCache::new(config.key_cache_capacity),
            key_meta,
            _key_change_follower: follower,
            heavy: Arc::new(Semaphore::new(config.heavy_ops_concurrency.max(1))),
            audit_keys: std::sync::RwLock::new(None),
            heavy_admission: OnceLock::new(),
        })
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

    /// Installs the admission check for CPU-heavy work; only the first one counts (returns
    /// whether this one was installed).
    pub fn set_heavy_op_admission(&self, admission: Arc<dyn HeavyOpAdmission>) -> bool {
        self.heavy_admission.set(admission).is_ok()
    }

    fn admit_heavy(&self, p: &Principal) -> Result<(), CoreError> {
        match self.heavy_admission.get() {
            Some(a) => a.admit(p),
            None => Ok(()),
        }
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
    pub async fn initialize(
        &self,
        kind: crate::model::SealKind,
        shares: u32,
        threshold: u32,
    ) -> Result<(SecretBytes, Vec<SecretBytes>), CoreError> {
        self.seal
            .initialize(self.store.as_ref(), kind, shares, threshold)
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
        *self.audit_keys.write().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    pub async fn rotate_org_kek(&self, p: &Principal) -> Result<u32, CoreError> {
        authorize(p, Action::OrgKekRotate, Resource::Org(p.org()))?;
        self.rotate_kek(p.org().as_str()).await
    }

    // ---- lifecycle ----------------------------------------------------------------------

    /// Loads a key the principal may act on; another owner's or org's key is `NotFound`.
    /// The row may come from the metadata cache (see [`crate::keymeta`] for its bounds).
    async fn key_for(
        &self,
        p: &Principal,
        id: Uuid,
        action: Action,
    ) -> Result<KeyRecord, CoreError> {
        self.seal.root()?;
        let key = match self.key_meta.get(p.org().as_str(), id) {
            Some(k) => k,
            None => {
                let generation = self.key_meta.generation();
                let fetched = std::time::Instant::now();
                let k = self
                    .store
                    .get_key(p.org().as_str(), id)
                    .await?
                    .ok_or(CoreError::NotFound)?;
                self.key_meta.insert(generation, &k, fetched);
                k
            }
        };
        authorize(p, action, Resource::Key(&key))?;
        Ok(key)
    }

    /// [`Self::key_for`] reading the database, for changes that must start from the row as
    /// stored (their optimistic-concurrency check compares against it).
    async fn key_for_update(
        &self,
        p: &Principal,
        id: Uuid,
        action: Action,
    ) -> Result<KeyRecord, CoreError> {
        self.seal.root()?;
        let key = self
            .store
            .get_key(p.org().as_str(), id)
            .await?
            .ok_or(CoreError::NotFound)?;
        authorize(p, action, Resource::Key(&key))?;
        Ok(key)
    }

    pub async fn create_key(&self, p: &Principal, req: NewKey) -> Result<KeyInfo, CoreError> {
        self.seal.root()?;
        authorize(p, Action::KeyCreate, Resource::Org(p.org()))?;
        validate_name(&req.name)?;
        validate_description(req.description.as_deref())?;
        let key_type = KeyType::parse(&req.key_type)?;
        self.ensure_org(p.org().as_str()).await?;
        let now = now_ms();
        let key = KeyRecord {
            id: Uuid::new_v4(),
            org_id: p.org().to_string(),
            owner: p.identity().to_string(),
            name: req.name,
            key_type,
            description: req.description,
            state: KeyState::Enabled,
            latest_version: 1,
            min_decryption_version: 1,
            created_at: now,
            rotated_at: None,
            deletion_date: None,
        };
        let material = self.generate(p, key_type).await?;
        let first = self.wrap_material(&key, 1, &material).await?;
        self.store
            .create_key(&key, &first)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    CoreError::Conflict("a key with this name already exists".into())
                }
                e => e.into(),
            })?;
        Ok(KeyInfo::from(&key))
    }

    async fn generate(&self, p: &Principal, key_type: KeyType) -> Result<SecretBytes, CoreError> {
        if key_type.is_cpu_heavy() {
            self.admit_heavy(p)?;
            self.heavy_op(move || key_type.generate().map_err(CoreError::from))
                .await
        } else {
            Ok(key_type.generate()?)
        }
    }

    /// Runs a CPU-heavy operation on the blocking pool, at most `heavy_ops_concurrency` at a
    /// time, so RSA work queues instead of starving cheap requests.
    async fn heavy_op<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let _permit = self
            .heavy
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CoreError::Busy)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| CoreError::Internal)?
    }

    pub async fn list_keys(&self, p: &Principal) -> Result<Vec<KeyInfo>, CoreError> {
        self.seal.root()?;
        authorize(p, Action::KeyList, Resource::Org(p.org()))?;
        Ok(self
            .store
            .list_keys(p.org().as_str(), p.identity().as_str())
            .await?
            .iter()
            .map(KeyInfo::from)
            .collect())
    }

    pub async fn get_key(&self, p: &Principal, id: Uuid) -> Result<KeyInfo, CoreError> {
        Ok(KeyInfo::from(&self.key_for(p, id, Action::KeyRead).await?))
    }

    pub async fn rotate_key(&self, p: &Principal, id: Uuid) -> Result<KeyInfo, CoreError> {
        let mut key = self.key_for_update(p, id, Action::KeyManage).await?;
        require_usable(&key)?;
        let material = self.generate(p, key.key_type).await?;
        // Optimistic concurrency: the store refuses a version that is not latest + 1, so
        // concurrent rotations (from any node) each get their own number or retry.
        for _ in 0..5 {
            let version = key.latest_version + 1;
            let rec = self.wrap_material(&key, version, &material).await?;
            let added = self.store.add_key_version(&key.org_id, &rec).await;
            self.key_meta.invalidate(id);
            match added {
                Ok(()) => {
                    key.latest_version = version;
                    key.rotated_at = Some(rec.created_at);
                    return Ok(KeyInfo::from(&key));
                }
                Err(StoreError::Conflict(_)) => {
                    key = self.key_for_update(p, id, Action::KeyManage).await?;
                    require_usable(&key)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict(
            "concurrent rotations of this key; retry".into(),
        ))
    }

    /// Applies `change` to the key's metadata with optimistic concurrency: if another request
    /// changed the key meanwhile, the change is re-applied to the fresh row (a few times).
    async fn set_state(
        &self,
        p: &Principal,
        id: Uuid,
        change: impl Fn(&mut KeyRecord) -> Result<(), CoreError>,
    ) -> Result<KeyInfo, CoreError> {
        for _ in 0..5 {
            let before = self.key_for_update(p, id, Action::KeyManage).await?;
            let mut after = before.clone();
            change(&mut after)?;
            let updated = self.store.update_key(&before, &after).await;
            self.key_meta.invalidate(id);
            match updated {
                Ok(()) => return Ok(KeyInfo::from(&after)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict(
            "the key is changing concurrently; retry".into(),
        ))
    }

    pub async fn disable_key(&self, p: &Principal, id: Uuid) -> Result<KeyInfo, CoreError> {
        self.set_state(p, id, |k| match k.state {
            KeyState::PendingDeletion => Err(CoreError::KeyPendingDeletion),
            _ => {
                k.state = KeyState::Disabled;
                Ok(())
            }
        })
        .await
    }

    pub async fn enable_key(&self, p: &Principal, id: Uuid) -> Result<KeyInfo, CoreError> {
        self.set_state(p, id, |k| match k.state {
            KeyState::PendingDeletion => Err(CoreError::KeyPendingDeletion),
            _ => {
                k.state = KeyState::Enabled;
                Ok(())
            }
        })
        .await
    }

    pub async fn schedule_deletion(
        &self,
        p: &Principal,
        id: Uuid,
        pending_days: u32,
    ) -> Result<KeyInfo, CoreError> {
        if !(MIN_PENDING_DAYS..=MAX_PENDING_DAYS).contains(&pending_days) {
            return Err(CoreError::InvalidInput(format!(
                "pending_days must be between {MIN_PENDING_DAYS} and {MAX_PENDING_DAYS}"
            )));
        }
        self.set_state(p, id, |k| {
            if k.state == KeyState::PendingDeletion {
                return Err(CoreError::KeyPendingDeletion);
            }
            k.state = KeyState::PendingDeletion;
            k.deletion_date = Some(now_ms() + pending_days as i64 * DAY_MS);
            Ok(())
        })
        .await
    }

    /// Cancels a scheduled deletion; the key comes back disabled (as in AWS KMS), so its
    /// owner re-enables it deliberately.
    pub async fn cancel_deletion(&self, p: &Principal, id: Uuid) -> Result<KeyInfo, CoreError> {
        self.set_state(p, id, |k| {
            if k.state != KeyState::PendingDeletion {
                return Err(CoreError::Conflict("key is not pending deletion".into()));
            }
            k.state = KeyState::Disabled;
            k.deletion_date = None;
            Ok(())
        })
        .await
    }

    pub async fn update_key(
        &self,
        p: &Principal,
        id: Uuid,
        update: KeyUpdate,
    ) -> Result<KeyInfo, CoreError> {
        validate_description(update.description.as_deref())?;
        self.set_state(p, id, |k| {
            if let Some(min) = update.min_decryption_version {
                if min < 1 || min > k.latest_version {
                    return Err(CoreError::InvalidInput(format!(
                        "min_decryption_version must be between 1 and the latest version ({})",
                        k.latest_version
                    )));
                }
                k.min_decryption_version = min;
            }
            if update.description.is_some() {
                k.description.clone_from(&update.description);
            }
            Ok(())
        })
        .await
    }

    /// Destroys keys whose deletion date has passed. Returns how many.
    pub async fn purge_due_keys(&self) -> Result<usize, CoreError> {
        let now = now_ms();
        let due = self.store.keys_due_for_deletion(now).await?;
        let mut destroyed = 0;
        for (org, id) in &due {
            let deleted = self.store.delete_key(org, *id, now).await;
            self.key_meta.invalidate(*id);
            if deleted? {
                destroyed += 1;
            }
            self.keys.remove_if(|(k, _)| k == id);
        }
        Ok(destroyed)
    }

    // ---- cryptographic operations --------------------------------------------------------

    async fn loaded(&self, key: &KeyRecord, version: u32) -> Result<Arc<LoadedKey>, CoreError> {
        if let Some(k) = self.keys.get(&(key.id, version)) {
            return Ok(k);
        }
        let v = self
            .store
            .get_key_version(key.id, version)
            .await?
            .ok_or(CoreError::NotFound)?;
        let material = self.unwrap_material(key, &v).await?;
        let kt = key.key_type;
        let loaded = match kt.usage() {
            KeyUsage::EncryptDecrypt => LoadedKey::Aead(AeadKey::new(
                kt.aead().ok_or(CoreError::Internal)?,
                material.expose(),
            )?),
            KeyUsage::Mac => LoadedKey::Mac(Box::new(MacKey::new(material.expose())?)),
            KeyUsage::SignVerify if kt.is_cpu_heavy() => {
                // Parsing an RSA key checks it, which costs: keep it off the async threads.
                LoadedKey::Sign(
                    self.heavy_op(move || Ok(SigningKey::from_pkcs8(kt, &material)?))
                        .await?,
                )
            }
            KeyUsage::SignVerify => LoadedKey::Sign(SigningKey::from_pkcs8(kt, &material)?),
        };
        let loaded = Arc::new(loaded);
        self.keys.insert((key.id, version), loaded.clone());
        // A seal that ran while this key was being loaded must not leave it cached.
        if !self.is_unsealed() {
            self.keys.clear();
            return Err(CoreError::Sealed);
        }
        Ok(loaded)
    }

    fn aead(loaded: &LoadedKey) -> Result<&AeadKey, CoreError> {
        match loaded {
            LoadedKey::Aead(k) => Ok(k),
            _ => Err(CoreError::Internal),
        }
    }

    pub async fn encrypt(
        &self,
        p: &Principal,
        id: Uuid,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Encrypted, CoreError> {
        let key = self.key_for(p, id, Action::KeyUse).await?;
        self.encrypt_with(&key, plaintext, ctx).await
    }

    async fn encrypt_with(
        &self,
        key: &KeyRecord,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Encrypted, CoreError> {
        require_usage(key, KeyUsage::EncryptDecrypt)?;
        require_usable(key)?;
        let loaded = self.loaded(key, key.latest_version).await?;
        let ciphertext = envelope::seal(
            Self::aead(&loaded)?,
            key.id,
            key.latest_version,
            plaintext,
            ctx,
        )?;
        Ok(Encrypted {
            ciphertext,
            key_id: key.id,
            key_version: key.latest_version,
        })
    }

    /// Encrypts several plaintexts under one key with one key lookup.
    pub async fn encrypt_batch(
        &self,
        p: &Principal,
        id: Uuid,
        items: &[(Vec<u8>, EncryptionContext)],
    ) -> Result<Vec<Encrypted>, CoreError> {
        let key = self.key_for(p, id, Action::KeyUse).await?;
        let mut out = Vec::with_capacity(items.len());
        for (pt, ctx) in items {
            out.push(self.encrypt_with(&key, pt, ctx).await?);
        }
        Ok(out)
    }

    /// Decrypts a self-describing ciphertext; the key comes from its header.
    pub async fn decrypt(
        &self,
        p: &Principal,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Decrypted, CoreError> {
        let header = Header::parse(ciphertext)?;
        let key = self.key_for(p, header.key_id, Action::KeyUse).await?;
        require_usage(&key, KeyUsage::EncryptDecrypt)?;
        require_usable(&key)?;
        if header.key_version > key.latest_version {
            return Err(CoreError::DecryptFailed);
        }
        if header.key_version < key.min_decryption_version {
            return Err(CoreError::InvalidInput(format!(
                "ciphertext version {} is below the key's min_decryption_version {}",
                header.key_version, key.min_decryption_version
            )));
        }
        let loaded = self.loaded(&key, header.key_version).await?;
        let plaintext = envelope::open(Self::aead(&loaded)?, ciphertext, ctx)?;
        Ok(Decrypted {
            plaintext: SecretBytes::new(plaintext),
            key_id: key.id,
            key_version: header.key_version,
        })
    }

    /// Decrypts and encrypts again under the key's newest version, without returning the
    /// plaintext. The ciphertext must belong to key `id`.
    pub async fn reencrypt(
        &self,
        p: &Principal,
        id: Uuid,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Encrypted, CoreError> {
        let header = Header::parse(ciphertext)?;
        if header.key_id != id {
            return Err(CoreError::InvalidInput(
                "the ciphertext was not made with this key".into(),
            ));
        }
        let dec = self.decrypt(p, ciphertext, ctx).await?;
        self.encrypt(p, id, dec.plaintext.expose(), ctx).await
    }

    /// A fresh data key of `bytes` bytes, returned encrypted under the key (and in plaintext
    /// when asked).
    pub async fn data_key(
        &self,
        p: &Principal,
        id: Uuid,
        bytes: usize,
        ctx: &EncryptionContext,
        include_plaintext: bool,
    ) -> Result<DataKey, CoreError> {
        if ![16, 32, 64].contains(&bytes) {
            return Err(CoreError::InvalidInput(
                "bits must be 128, 256 or 512".into(),
            ));
        }
        let dk = SecretBytes::new(rng::random_vec(bytes)?);
        let enc = self.encrypt(p, id, dk.expose(), ctx).await?;
        Ok(DataKey {
            plaintext: include_plaintext.then_some(dk),
            ciphertext: enc.ciphertext,
            key_id: enc.key_id,
            key_version: enc.key_version,
        })
    }

    async fn signing_key(
        &self,
        p: &Principal,
        id: Uuid,
        version: Option<u32>,
    ) -> Result<(KeyRecord, u32, Arc<LoadedKey>), CoreError> {
        let key = self.key_for(p, id, Action::KeyUse).await?;
        require_usage(&key, KeyUsage::SignVerify)?;
        require_usable(&key)?;
        let version = version.unwrap_or(key.latest_version);
        // As for decryption and MAC verification: versions below min_decryption_version are
        // retired for verification too.
        if version < key.min_decryption_version.max(1) || version > key.latest_version {
            return Err(CoreError::InvalidInput(format!(
                "key version must be between min_decryption_version {} and the latest version {}",
                key.min_decryption_version, key.latest_version
            )));
        }
        let loaded = self.loaded(&key, version).await?;
        Ok((key, version, loaded))
    }

    pub async fn sign(
        &self,
        p: &Principal,
        id: Uuid,
        input: SignInput<'_>,
        algorithm: Option<&str>,
    ) -> Result<Signed, CoreError> {
        let (key, version, loaded) = self.signing_key(p, id, None).await?;
        let alg = SignatureAlgorithm::resolve(key.key_type, algorithm)?;
        let LoadedKey::Sign(_) = &*loaded else {
            return Err(CoreError::Internal);
        };
        let signature = if key.key_type.is_cpu_heavy() {
            self.admit_heavy(p)?;
            let (owned, is_digest) = match input {
                SignInput::Message(m) => (m.to_vec(), false),
                SignInput::Digest(d) => (d.to_vec(), true),
            };
            let loaded = loaded.clone();
            self.heavy_op(move || {
                let LoadedKey::Sign(sk) = &*loaded else {
                    return Err(CoreError::Internal);
                };
                let input = if is_digest {
                    SignInput::Digest(&owned)
                } else {
                    SignInput::Message(&owned)
                };
                Ok(sk.sign(alg, input)?)
            })
            .await?
        } else {
            let LoadedKey::Sign(sk) = &*loaded else {
                return Err(CoreError::Internal);
            };
            sk.sign(alg, input)?
        };
        Ok(Signed {
            signature,
            key_version: version,
            algorithm: alg.as_str(),
        })
    }

    pub async fn verify(
        &self,
        p: &Principal,
        id: Uuid,
        input: SignInput<'_>,
        signature: &[u8],
        algorithm: Option<&str>,
        version: Option<u32>,
    ) -> Result<bool, CoreError> {
        let (key, _, loaded) = self.signing_key(p, id, version).await?;
        let alg = SignatureAlgorithm::resolve(key.key_type, algorithm)?;
        let LoadedKey::Sign(sk) = &*loaded else {
            return Err(CoreError::Internal);
        };
        Ok(sk.verify(alg, input, signature)?)
    }

    pub async fn public_key_pem(
        &self,
        p: &Principal,
        id: Uuid,
        version: Option<u32>,
    ) -> Result<(String, u32), CoreError> {
        let key = self.key_for(p, id, Action::KeyRead).await?;
        require_usage(&key, KeyUsage::SignVerify)?;
        let version = version.unwrap_or(key.latest_version);
        if version < 1 || version > key.latest_version {
            return Err(CoreError::InvalidInput("no such key version".into()));
        }
        let loaded = self.loaded(&key, version).await?;
        let LoadedKey::Sign(sk) = &*loaded else {
            return Err(CoreError::Internal);
        };
        Ok((
            pem_encode("PUBLIC KEY", &sk.public_key_spki_der()?),
            version,
        ))
    }

    pub async fn mac(
        &self,
        p: &Principal,
        id: Uuid,
        message: &[u8],
    ) -> Result<(Vec<u8>, u32), CoreError> {
        let key = self.key_for(p, id, Action::KeyUse).await?;
        require_usage(&key, KeyUsage::Mac)?;
        require_usable(&key)?;
        let loaded = self.loaded(&key, key.latest_version).await?;
        let LoadedKey::Mac(mk) = &*loaded else {
            return Err(CoreError::Internal);
        };
        Ok((mk.sign(message), key.latest_version))
    }

    pub async fn verify_mac(
        &self,
        p: &Principal,
        id: Uuid,
        message: &[u8],
        tag: &[u8],
        version: Option<u32>,
    ) -> Result<bool, CoreError> {
        let key = self.key_for(p, id, Action::KeyUse).await?;
        require_usage(&key, KeyUsage::Mac)?;
        require_usable(&key)?;
        let version = version.unwrap_or(key.latest_version);
        if version < key.min_decryption_version.max(1) || version > key.latest_version {
            return Err(CoreError::InvalidInput("no usable key version".into()));
        }
        let loaded = self.loaded(&key, version).await?;
        let LoadedKey::Mac(mk) = &*loaded else {
            return Err(CoreError::Internal);
        };
        Ok(mk.verify(message, tag))
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

fn validate_name(name: &str) -> Result<(), CoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidInput(format!(
            "name must be 1 to {MAX_NAME_LEN} characters of letters, digits, '-', '_', '.', '/'"
        )))
    }
}

fn validate_description(d: Option<&str>) -> Result<(), CoreError> {
    match d {
        Some(d) if d.len() > MAX_DESCRIPTION_LEN => Err(CoreError::InvalidInput(format!(
            "description is longer than {MAX_DESCRIPTION_LEN} bytes"
        ))),
        _ => Ok(()),
    }
}
