//! Key versions ready for use: unwrapped once, parsed once, and kept in a bounded cache that a
//! seal empties.

use super::{Kms, require_usable, require_usage};
use crate::error::CoreError;
use crate::identity::Principal;
use crate::ids::KeyId;
use crate::model::{KeyOp, KeyRecord};
use sovra_crypto::aead::AeadKey;
use sovra_crypto::keytype::KeyUsage;
use sovra_crypto::mac::MacKey;
use sovra_crypto::sign::SigningKey;
use std::sync::Arc;

/// A key version ready for use.
pub(crate) enum LoadedKey {
    Aead(AeadKey),
    Mac(Box<MacKey>),
    Sign(SigningKey),
}

impl Kms {
    pub(super) async fn loaded(
        &self,
        key: &KeyRecord,
        version: u32,
    ) -> Result<Arc<LoadedKey>, CoreError> {
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

    pub(super) fn aead(loaded: &LoadedKey) -> Result<&AeadKey, CoreError> {
        match loaded {
            LoadedKey::Aead(k) => Ok(k),
            _ => Err(CoreError::Internal),
        }
    }

    pub(super) async fn signing_key(
        &self,
        p: &Principal,
        id: KeyId,
        op: KeyOp,
        version: Option<u32>,
    ) -> Result<(KeyRecord, u32, Arc<LoadedKey>), CoreError> {
        let key = self.key_for_op(p, id, op, None).await?;
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
}
