//! The audit keys: an Ed25519 key that signs checkpoints and an HMAC key that turns sensitive
//! values into keyed hashes. Both are created once per deployment (every node sharing the
//! store uses the same pair), stored wrapped by the root key, and exist unwrapped only while
//! the server is unsealed.

use super::Checkpoint;
use super::chain::hex;
use crate::clock::Timestamp;
use crate::error::CoreError;
use crate::kms::Kms;
use crate::model::AuditKeyRecord;
use crate::store::StoreError;
use sovra_crypto::mac::MacKey;
use sovra_crypto::sign::{SigningKey, pem_encode};
use sovra_crypto::wrap::context;
use sovra_crypto::{KeyType, SecretBytes, rng};
use std::sync::Arc;

pub(crate) fn aad(purpose: &str) -> Vec<u8> {
    context("sovra/audit-key/v1", &[purpose.as_bytes()])
}

pub struct AuditKeys {
    signing: SigningKey,
    hmac: MacKey,
    public_key_spki: Vec<u8>,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKeys([REDACTED])")
    }
}

impl AuditKeys {
    /// Hex HMAC-SHA256 of a sensitive value, bound to its field name so that equal bytes in
    /// two fields (a token and a context) hash differently.
    pub fn keyed_hash(&self, field: &str, value: &[u8]) -> String {
        hex(&self
            .hmac
            .sign(&context("sovra/audit-hash/v1", &[field.as_bytes(), value])))
    }

    pub fn sign_checkpoint(
        &self,
        seq: u64,
        head: &str,
        now: Timestamp,
    ) -> Result<Checkpoint, CoreError> {
        Ok(Checkpoint::sign(&self.signing, seq, head, now.as_millis())?)
    }

    pub fn public_key_spki(&self) -> &[u8] {
        &self.public_key_spki
    }
}

/// Signs chain heads for the audit writer, one signature per group commit
/// ([`super::AuditWriter::sign_heads_with`]).
pub trait HeadSigner: Send + Sync {
    /// A checkpoint over `(seq, head)`, or `None` while no signing key is in memory (sealed):
    /// the first head signed after unsealing covers what was appended meanwhile.
    fn sign_head(&self, seq: u64, head: &str) -> Option<Checkpoint>;
}

impl HeadSigner for Kms {
    fn sign_head(&self, seq: u64, head: &str) -> Option<Checkpoint> {
        // The cached keys only: they are dropped when Sovra seals, and signing must not wait
        // for the store inside a group commit.
        let keys = self.audit_keys_cache()?;
        match keys.sign_checkpoint(seq, head, self.clock().now()) {
            Ok(cp) => Some(cp),
            Err(e) => {
                tracing::error!(error = %e, "audit head could not be signed");
                None
            }
        }
    }
}

impl Kms {
    /// The audit keys, unwrapped on first use after unsealing; created on first use ever.
    pub async fn audit_keys(&self) -> Result<Arc<AuditKeys>, CoreError> {
        let root = self.seal.root()?;
        if let Some(k) = self.audit_keys_cache() {
            return Ok(k);
        }
        let record = match self.store.get_audit_keys().await? {
            Some(r) => r,
            None => {
                let signing = KeyType::Ed25519.generate()?;
                let hmac = SecretBytes::new(rng::random_vec(32)?);
                let public_key =
                    SigningKey::from_pkcs8(KeyType::Ed25519, &signing)?.public_key_spki_der()?;
                let rec = AuditKeyRecord {
                    wrapped_signing_key: root.wrap(&signing, &aad("signing"))?,
                    wrapped_hmac_key: root.wrap(&hmac, &aad("hmac"))?,
                    public_key,
                    created_at: self.clock().now().as_millis(),
                };
                match self.store.create_audit_keys(&rec).await {
                    Ok(()) => rec,
                    // Another node created them first: use theirs.
                    Err(StoreError::Conflict(_)) => self
                        .store
                        .get_audit_keys()
                        .await?
                        .ok_or(CoreError::Internal)?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let signing = root.unwrap(&record.wrapped_signing_key, &aad("signing"))?;
        let hmac = root.unwrap(&record.wrapped_hmac_key, &aad("hmac"))?;
        let keys = Arc::new(AuditKeys {
            signing: SigningKey::from_pkcs8(KeyType::Ed25519, &signing)?,
            hmac: MacKey::new(hmac.expose())?,
            public_key_spki: record.public_key,
        });
        self.set_audit_keys_cache(keys.clone());
        // A seal that ran while the keys were being read must not leave them cached (the
        // group-commit signer would go on signing with them).
        if !self.is_unsealed() {
            self.clear_audit_keys_cache();
            return Err(CoreError::Sealed);
        }
        Ok(keys)
    }

    /// The audit public key as PEM. Served while sealed too, once the keys exist.
    pub async fn audit_public_key_pem(&self) -> Result<String, CoreError> {
        let spki = match self.store.get_audit_keys().await? {
            Some(r) => r.public_key,
            None => self.audit_keys().await?.public_key_spki.clone(),
        };
        Ok(pem_encode("PUBLIC KEY", &spki))
    }

    /// Checks the chain as this node found it at start (`head`, read before it appended
    /// anything) against its last signed checkpoint. Returns the alarm, if any: events and no
    /// checkpoint (the checkpoints were deleted), a checkpoint whose signature does not verify
    /// under this deployment's own audit key, a checkpointed event that no longer has the
    /// signed hash (history rewritten), or events past the last checkpoint spanning more than
    /// `interval` (a tail that should have been signed). Needs the audit keys (unsealed).
    pub async fn audit_start_check(
        &self,
        head: Option<&(u64, String)>,
        interval: std::time::Duration,
    ) -> Result<Option<String>, CoreError> {
        let Some((head_seq, _)) = head else {
            return Ok(None);
        };
        let keys = self.audit_keys().await?;
        let Some(cp) = self.store.last_audit_checkpoint(*head_seq).await? else {
            return Ok(Some(format!(
                "the audit chain holds {head_seq} events and no signed checkpoint"
            )));
        };
        // The stored public key must be the one of the (root-key-wrapped) signing key.
        if keys.signing.public_key_spki_der()? != keys.public_key_spki {
            return Ok(Some(
                "the stored audit public key is not this deployment's".into(),
            ));
        }
        if !cp.verifies(&keys.public_key_spki) {
            return Ok(Some(format!(
                "the checkpoint at seq {} does not verify under this deployment's audit key",
                cp.seq
            )));
        }
        let at = |seq: u64| async move {
            Ok::<_, CoreError>(self.store.audit_events(seq, 1).await?.into_iter().next())
        };
        match at(cp.seq).await? {
            Some(e) if e.seq == cp.seq && e.hash == cp.head => {}
            _ => {
                return Ok(Some(format!(
                    "the event at seq {} no longer has the hash its signed checkpoint holds (history rewritten)",
                    cp.seq
                )));
            }
        }
        if *head_seq > cp.seq
            && let Some(last) = at(*head_seq).await?
        {
            let past_ms = last.time_ms.saturating_sub(cp.time_ms);
            // One interval, and a grace for the signing itself.
            if past_ms > interval.as_millis() as i64 + 10_000 {
                return Ok(Some(format!(
                    "{} events follow the last checkpoint (seq {}) over {} s, more than the checkpoint interval: a tail that was never signed",
                    head_seq - cp.seq,
                    cp.seq,
                    past_ms / 1000
                )));
            }
        }
        Ok(None)
    }

    /// Signs a checkpoint over `(seq, head)` and stores it.
    pub async fn audit_checkpoint(&self, seq: u64, head: &str) -> Result<Checkpoint, CoreError> {
        let cp = self
            .audit_keys()
            .await?
            .sign_checkpoint(seq, head, self.clock().now())?;
        self.store.add_audit_checkpoint(&cp).await?;
        Ok(cp)
    }
}

#[cfg(test)]
impl AuditKeys {
    /// Audit keys from given parts, for the known-answer vectors (`format_vectors.rs`).
    pub(crate) fn from_parts(signing: SigningKey, hmac: MacKey, public_key_spki: Vec<u8>) -> Self {
        AuditKeys {
            signing,
            hmac,
            public_key_spki,
        }
    }
}
