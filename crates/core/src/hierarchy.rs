//! The key hierarchy below the root key: one versioned KEK per organization, wrapped by the
//! root key; every key version's material wrapped by a KEK version. Each wrap binds its
//! context (org, key id, version, purpose) as AAD.
//!
//! KEK rotation adds a version and makes it active; key material wrapped under an older KEK
//! is rewrapped lazily when it is next loaded, and by a background sweep ([`Kms::rewrap_org`]).

use crate::error::CoreError;
use crate::kms::Kms;
use crate::model::{KekRecord, KeyRecord, KeyVersionRecord};
use crate::store::StoreError;
use sovra_crypto::wrap::{WrappingKey, context};
use sovra_crypto::{SecretBytes, rng};
use std::sync::Arc;

pub(crate) fn kek_aad(org_id: &str, version: u32) -> Vec<u8> {
    context(
        "sovra/org-kek/v1",
        &[org_id.as_bytes(), &version.to_be_bytes()],
    )
}

pub(crate) fn material_aad(key: &KeyRecord, version: u32) -> Vec<u8> {
    context(
        "sovra/key-material/v1",
        &[
            key.org_id.as_bytes(),
            key.id.as_bytes(),
            &version.to_be_bytes(),
            key.key_type.as_str().as_bytes(),
        ],
    )
}

impl Kms {
    pub(crate) async fn kek(
        &self,
        org_id: &str,
        version: u32,
    ) -> Result<Arc<WrappingKey>, CoreError> {
        let cache_key = (org_id.to_string(), version);
        if let Some(k) = self.keks.get(&cache_key) {
            return Ok(k);
        }
        let root = self.seal.root()?;
        let rec = self
            .store
            .get_kek(org_id, version)
            .await?
            .ok_or(CoreError::Internal)?;
        let kek = root
            .unwrap(&rec.wrapped_kek, &kek_aad(org_id, version))
            .map_err(|_| {
                tracing::error!(
                    org = org_id,
                    version,
                    "org KEK does not unwrap under the root key"
                );
                CoreError::Internal
            })?;
        let kek = Arc::new(WrappingKey::new(&kek)?);
        self.keks.insert(cache_key, kek.clone());
        // A seal that ran meanwhile must not leave the KEK cached.
        if !self.is_unsealed() {
            self.keks.clear();
            return Err(CoreError::Sealed);
        }
        Ok(kek)
    }

    /// Wraps new key material under the org's active KEK.
    pub(crate) async fn wrap_material(
        &self,
        key: &KeyRecord,
        version: u32,
        material: &SecretBytes,
    ) -> Result<KeyVersionRecord, CoreError> {
        let org = self.org_for_keys(&key.org_id).await?;
        let kek = self.kek(&key.org_id, org.active_kek_version).await?;
        Ok(KeyVersionRecord {
            key_id: key.id,
            version,
            kek_version: org.active_kek_version,
            wrapped_material: kek.wrap(material, &material_aad(key, version))?,
            created_at: self.clock().now().as_millis(),
        })
    }

    /// Unwraps a version's material, rewrapping it under the active KEK if it is behind.
    pub(crate) async fn unwrap_material(
        &self,
        key: &KeyRecord,
        v: &KeyVersionRecord,
    ) -> Result<SecretBytes, CoreError> {
        let kek = self.kek(&key.org_id, v.kek_version).await?;
        let material = kek.unwrap(&v.wrapped_material, &material_aad(key, v.version)).map_err(|_| {
            tracing::error!(key_id = %key.id, version = v.version, "key material does not unwrap");
            CoreError::Internal
        })?;
        let org = self.org_for_keys(&key.org_id).await?;
        if v.kek_version < org.active_kek_version {
            let new = self.wrap_material(key, v.version, &material).await?;
            self.store
                .rewrap_key_version(key.id, v.version, v.kek_version, &new)
                .await?;
        }
        Ok(material)
    }

    /// Adds a KEK version to the org and makes it active. Keys follow lazily and through
    /// [`Kms::rewrap_org`]; old KEK versions stay readable, so there is no downtime.
    pub(crate) async fn rotate_kek(&self, org_id: &str) -> Result<u32, CoreError> {
        let root = self.seal.root()?;
        let org = self.org_for_keys(org_id).await?;
        let version = org.active_kek_version + 1;
        let kek = SecretBytes::new(rng::random_vec(32)?);
        let rec = KekRecord {
            org_id: org_id.to_string(),
            version,
            wrapped_kek: root.wrap(&kek, &kek_aad(org_id, version))?,
            created_at: self.clock().now().as_millis(),
        };
        self.store
            .add_kek_version(&rec)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    CoreError::Conflict("a concurrent KEK rotation won; retry".into())
                }
                e => e.into(),
            })?;
        Ok(version)
    }

    /// Rewraps every key version of the org still under an older KEK. Returns how many.
    pub async fn rewrap_org(&self, org_id: &str) -> Result<usize, CoreError> {
        let mut total = 0;
        // Pages past what it could not move (a version that does not unwrap, a row that fails
        // its MAC), so that such rows, however many, never stop the sweep; starts over if the
        // KEK is rotated meanwhile.
        let mut after: Option<(uuid::Uuid, u32)> = None;
        let mut active = None;
        loop {
            let org = self.org_for_keys(org_id).await?;
            if active.replace(org.active_kek_version) != Some(org.active_kek_version) {
                after = None;
            }
            let batch = self
                .store
                .versions_below_kek(org_id, org.active_kek_version, after, 100)
                .await?;
            let Some(last) = batch.last() else {
                return Ok(total);
            };
            after = Some((last.key_id, last.version));
            for v in batch {
                // A row that fails its MAC is skipped here (and logged by the check).
                let key = match self.stored_key(org_id, v.key_id).await {
                    Ok(Some(key)) => key,
                    Ok(None) | Err(CoreError::IntegrityViolation(_)) => continue,
                    Err(e) => return Err(e),
                };
                // Unwrapping rewraps under the active KEK (the lazy path).
                match self.unwrap_material(&key, &v).await {
                    Ok(_) => total += 1,
                    Err(e) => {
                        tracing::error!(key_id = %v.key_id, version = v.version, error = %e, "rewrap skipped")
                    }
                }
            }
        }
    }
}
