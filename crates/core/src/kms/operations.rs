//! The cryptographic operations: encrypt, decrypt, re-encrypt, data keys, sign and verify,
//! MAC, public keys. Each loads the key through the caller's authorization first, so another
//! owner's key answers exactly like a missing one.

use super::loaded::LoadedKey;
use super::types::{DataKey, Decrypted, Encrypted, Signed};
use super::{Kms, require_usable, require_usage};
use crate::error::CoreError;
use crate::identity::Principal;
use crate::ids::KeyId;
use crate::model::{KeyOp, KeyRecord};
use sovra_crypto::envelope::{self, EncryptionContext, Header};
use sovra_crypto::keytype::KeyUsage;
use sovra_crypto::sign::{SignInput, SignatureAlgorithm, pem_encode};
use sovra_crypto::{SecretBytes, rng};

impl Kms {
    pub async fn encrypt(
        &self,
        p: &Principal,
        id: KeyId,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Encrypted, CoreError> {
        let key = self.key_for_op(p, id, KeyOp::Encrypt, Some(ctx)).await?;
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
            key_id: KeyId::from(key.id),
            key_version: key.latest_version,
        })
    }

    /// Encrypts several plaintexts under one key with one key lookup.
    pub async fn encrypt_batch(
        &self,
        p: &Principal,
        id: KeyId,
        items: &[(Vec<u8>, EncryptionContext)],
    ) -> Result<Vec<Encrypted>, CoreError> {
        let mut out = Vec::with_capacity(items.len());
        for (pt, ctx) in items {
            // Each item's context meets a grant's condition on its own (a cache hit after the
            // first for the owner).
            let key = self.key_for_op(p, id, KeyOp::Encrypt, Some(ctx)).await?;
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
        let key = self
            .key_for_op(p, KeyId::from(header.key_id), KeyOp::Decrypt, Some(ctx))
            .await?;
        self.decrypt_with(&key, &header, ciphertext, ctx).await
    }

    async fn decrypt_with(
        &self,
        key: &KeyRecord,
        header: &Header,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Decrypted, CoreError> {
        let key = key.clone();
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
            key_id: KeyId::from(key.id),
            key_version: header.key_version,
        })
    }

    /// Decrypts and encrypts again under the key's newest version, without returning the
    /// plaintext. The ciphertext must belong to key `id`.
    pub async fn reencrypt(
        &self,
        p: &Principal,
        id: KeyId,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Encrypted, CoreError> {
        let header = Header::parse(ciphertext)?;
        if header.key_id != id.as_uuid() {
            return Err(CoreError::InvalidInput(
                "the ciphertext was not made with this key".into(),
            ));
        }
        let key = self.key_for_op(p, id, KeyOp::Reencrypt, Some(ctx)).await?;
        let dec = self.decrypt_with(&key, &header, ciphertext, ctx).await?;
        self.encrypt_with(&key, dec.plaintext.expose(), ctx).await
    }

    /// A fresh data key of `bytes` bytes, returned encrypted under the key (and in plaintext
    /// when asked).
    pub async fn data_key(
        &self,
        p: &Principal,
        id: KeyId,
        bytes: usize,
        ctx: &EncryptionContext,
        include_plaintext: bool,
    ) -> Result<DataKey, CoreError> {
        if ![16, 32, 64].contains(&bytes) {
            return Err(CoreError::InvalidInput(
                "bits must be 128, 256 or 512".into(),
            ));
        }
        let key = self.key_for_op(p, id, KeyOp::Datakey, Some(ctx)).await?;
        let dk = SecretBytes::new(rng::random_vec(bytes)?);
        let enc = self.encrypt_with(&key, dk.expose(), ctx).await?;
        Ok(DataKey {
            plaintext: include_plaintext.then_some(dk),
            ciphertext: enc.ciphertext,
            key_id: enc.key_id,
            key_version: enc.key_version,
        })
    }
    pub async fn sign(
        &self,
        p: &Principal,
        id: KeyId,
        input: SignInput<'_>,
        algorithm: Option<SignatureAlgorithm>,
    ) -> Result<Signed, CoreError> {
        let (key, version, loaded) = self.signing_key(p, id, KeyOp::Sign, None).await?;
        let alg = SignatureAlgorithm::resolve(key.key_type, algorithm)?;
        let LoadedKey::Sign(_) = &*loaded else {
            return Err(CoreError::Internal);
        };
        let signature = if key.key_type.is_cpu_heavy() {
            let (owned, is_digest) = match input {
                SignInput::Message(m) => (m.to_vec(), false),
                SignInput::Digest(d) => (d.to_vec(), true),
            };
            let loaded = loaded.clone();
            let cost = super::heavy_cost(key.key_type, false);
            self.heavy_op_for(p, cost, move || {
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
            algorithm: alg,
        })
    }

    pub async fn verify(
        &self,
        p: &Principal,
        id: KeyId,
        input: SignInput<'_>,
        signature: &[u8],
        algorithm: Option<SignatureAlgorithm>,
        version: Option<u32>,
    ) -> Result<bool, CoreError> {
        let (key, _, loaded) = self.signing_key(p, id, KeyOp::Verify, version).await?;
        let alg = SignatureAlgorithm::resolve(key.key_type, algorithm)?;
        let LoadedKey::Sign(sk) = &*loaded else {
            return Err(CoreError::Internal);
        };
        Ok(sk.verify(alg, input, signature)?)
    }

    pub async fn public_key_pem(
        &self,
        p: &Principal,
        id: KeyId,
        version: Option<u32>,
    ) -> Result<(String, u32), CoreError> {
        let key = self.key_for_op(p, id, KeyOp::Read, None).await?;
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
        id: KeyId,
        message: &[u8],
    ) -> Result<(Vec<u8>, u32), CoreError> {
        let key = self.key_for_op(p, id, KeyOp::Mac, None).await?;
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
        id: KeyId,
        message: &[u8],
        tag: &[u8],
        version: Option<u32>,
    ) -> Result<bool, CoreError> {
        // Verifying needs `verify`, not `mac`: a grantee may check MACs it cannot make.
        let key = self.key_for_op(p, id, KeyOp::Verify, None).await?;
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
