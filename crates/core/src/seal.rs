//! The seal: the root key exists only in memory, and only while unsealed. It is stored wrapped
//! under an unseal key that is never stored: Shamir shares of it are held by operators (or, in
//! dev mode only, a key file). A share submitted for unseal is kept in memory until the
//! threshold is reached, then the shares are combined and the root key unwrapped, which
//! authenticates the result: wrong shares never unseal. Each share is also checked, alone and
//! before it counts, against the commitment stored for its id at initialization, so a share
//! of another initialization or a made-up one is refused without touching the others' progress.

use crate::clock::Timestamp;
use crate::error::CoreError;
use crate::integrity::RowMac;
use crate::model::{SealKind, SealRecord};
use crate::store::{Store, StoreError};
use serde::Serialize;
use sovra_crypto::secret::ct_eq;
use sovra_crypto::wrap::{WrappingKey, context};
use sovra_crypto::{SecretBytes, rng, shamir};
use std::sync::{Arc, RwLock};

const UNSEAL_KEY_LEN: usize = 32;

/// The commitment to one unseal share stored at initialization: SHA-256 over a domain tag, the
/// initialization's wrapped root key (unique to it) and the share. A share carries 256 bits
/// that fewer than threshold other shares do not determine, so the commitment reveals nothing.
pub fn share_commitment(wrapped_root_key: &[u8], share: &[u8]) -> [u8; 32] {
    let input = SecretBytes::new(
        [
            b"sovra/unseal-share-commitment/v1\0".as_slice(),
            &(wrapped_root_key.len() as u32).to_be_bytes(),
            wrapped_root_key,
            share,
        ]
        .concat(),
    );
    sovra_crypto::sha256(input.expose())
}

/// Whether `share` is one this initialization issued; without commitments (a seal made before
/// they existed) only combining the shares can tell.
fn issued_by(record: &SealRecord, share: &SecretBytes, id: u8) -> bool {
    let Some(commitments) = &record.share_commitments else {
        return true;
    };
    let Some(expected) = usize::from(id)
        .checked_sub(1)
        .and_then(|i| commitments.get(i))
    else {
        return false;
    };
    ct_eq(
        &share_commitment(&record.wrapped_root_key, share.expose()),
        expected,
    )
}

pub(crate) fn root_key_aad() -> Vec<u8> {
    context("sovra/root-key/v1", &[])
}

enum State {
    Uninitialized,
    Sealed {
        record: SealRecord,
        pending: Vec<SecretBytes>,
    },
    Unsealed {
        record: SealRecord,
        keys: RootKeys,
    },
}

/// What exists only while unsealed: the root key, and the row-MAC key derived from it.
#[derive(Clone)]
pub(crate) struct RootKeys {
    pub(crate) root: Arc<WrappingKey>,
    pub(crate) rows: Arc<RowMac>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    /// `shamir` or `dev-file`.
    pub seal_type: Option<String>,
    pub shares: u32,
    pub threshold: u32,
    /// Shares received so far toward the threshold.
    pub progress: u32,
}

pub struct Seal {
    state: RwLock<State>,
}

impl Seal {
    /// Loads the seal state from the store: uninitialized or sealed.
    pub async fn load(store: &dyn Store) -> Result<Seal, CoreError> {
        let state = match store.get_seal().await? {
            None => State::Uninitialized,
            Some(record) => State::Sealed {
                record,
                pending: Vec::new(),
            },
        };
        Ok(Seal {
            state: RwLock::new(state),
        })
    }

    pub fn status(&self) -> SealStatus {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        match &*st {
            State::Uninitialized => SealStatus {
                initialized: false,
                sealed: true,
                seal_type: None,
                shares: 0,
                threshold: 0,
                progress: 0,
            },
            State::Sealed { record, pending } => SealStatus {
                initialized: true,
                sealed: true,
                seal_type: Some(record.kind.as_str().into()),
                shares: record.shares,
                threshold: record.threshold,
                progress: pending.len() as u32,
            },
            State::Unsealed { record, .. } => SealStatus {
                initialized: true,
                sealed: false,
                seal_type: Some(record.kind.as_str().into()),
                shares: record.shares,
                threshold: record.threshold,
                progress: 0,
            },
        }
    }

    pub fn kind(&self) -> Option<SealKind> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            State::Uninitialized => None,
            State::Sealed { record, .. } | State::Unsealed { record, .. } => Some(record.kind),
        }
    }

    /// The root key, or `Sealed`.
    pub fn root(&self) -> Result<Arc<WrappingKey>, CoreError> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            State::Unsealed { keys, .. } => Ok(keys.root.clone()),
            State::Uninitialized => Err(CoreError::NotInitialized),
            State::Sealed { .. } => Err(CoreError::Sealed),
        }
    }

    /// The row-MAC key, or `Sealed`.
    pub fn row_mac(&self) -> Result<Arc<RowMac>, CoreError> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            State::Unsealed { keys, .. } => Ok(keys.rows.clone()),
            State::Uninitialized => Err(CoreError::NotInitialized),
            State::Sealed { .. } => Err(CoreError::Sealed),
        }
    }

    /// Creates the root key and the unseal key, stores the wrapped root key and returns the
    /// unseal key split into `shares` shares (threshold `threshold`). Leaves Sovra sealed. A
    /// Shamir threshold below 2 (one operator alone unseals) needs `allow_single_share`.
    pub async fn initialize(
        &self,
        store: &dyn Store,
        kind: SealKind,
        shares: u32,
        threshold: u32,
        allow_single_share: bool,
        now: Timestamp,
    ) -> Result<(SecretBytes, Vec<SecretBytes>), CoreError> {
        if kind == SealKind::Shamir && threshold < 2 && !allow_single_share {
            return Err(CoreError::InvalidInput(
                "a threshold below 2 lets one operator unseal alone; ask for it explicitly \
                 (allow_single_share)"
                    .into(),
            ));
        }
        if !matches!(
            &*self.state.read().unwrap_or_else(|e| e.into_inner()),
            State::Uninitialized
        ) {
            return Err(CoreError::AlreadyInitialized);
        }
        let unseal_key = SecretBytes::new(rng::random_vec(UNSEAL_KEY_LEN)?);
        let split = shamir::split(&unseal_key, shares as usize, threshold as usize)?;
        let root = SecretBytes::new(rng::random_vec(32)?);
        let wrapped_root_key = WrappingKey::new(&unseal_key)?.wrap(&root, &root_key_aad())?;
        // Shares come out of the split in id order (1, 2, ...); the commitments follow it.
        let share_commitments = (kind == SealKind::Shamir).then(|| {
            split
                .iter()
                .map(|s| share_commitment(&wrapped_root_key, s.expose()))
                .collect()
        });
        let record = SealRecord {
            kind,
            shares,
            threshold,
            wrapped_root_key,
            created_at: now.as_millis(),
            share_commitments,
        };
        match store.create_seal(&record).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(CoreError::AlreadyInitialized),
            Err(e) => return Err(e.into()),
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = State::Sealed {
            record,
            pending: Vec::new(),
        };
        Ok((unseal_key, split))
    }

    /// Submits one share. Returns the status after it; unseals at the threshold.
    pub async fn submit_share(
        &self,
        store: &dyn Store,
        share: SecretBytes,
    ) -> Result<SealStatus, CoreError> {
        self.refresh_if_uninitialized(store).await?;
        // A share is its id byte and the unseal key's length: refuse anything else before
        // keeping it in memory.
        if share.len() != 1 + UNSEAL_KEY_LEN {
            return Err(CoreError::InvalidShare(
                "share has the wrong length; progress is kept".into(),
            ));
        }
        let id = shamir::share_id(&share)?;
        {
            let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
            match &mut *st {
                State::Uninitialized => return Err(CoreError::NotInitialized),
                State::Unsealed { .. } => {}
                State::Sealed { record, pending } => {
                    if !issued_by(record, &share, id) {
                        return Err(CoreError::InvalidShare(
                            "this share was not issued by this server's initialization; progress is kept".into(),
                        ));
                    }
                    if pending.iter().any(|p| shamir::share_id(p).ok() == Some(id)) {
                        return Err(CoreError::InvalidShare(
                            "this share was already submitted; progress is kept".into(),
                        ));
                    }
                    if let Some(first) = pending.first()
                        && first.len() != share.len()
                    {
                        return Err(CoreError::InvalidShare(
                            "share has the wrong length; progress is kept".into(),
                        ));
                    }
                    pending.push(share);
                    if pending.len() as u32 >= record.threshold {
                        let shares = std::mem::take(pending);
                        let result = shamir::combine(&shares)
                            .map_err(CoreError::from)
                            .and_then(|key| unwrap_root(record, &key));
                        match result {
                            Ok(keys) => {
                                let record = record.clone();
                                *st = State::Unsealed { record, keys };
                            }
                            Err(_) => {
                                return Err(CoreError::InvalidShare(
                                    "the submitted shares do not reconstruct the unseal key; progress was reset".into(),
                                ));
                            }
                        }
                    }
                }
            }
        }
        Ok(self.status())
    }

    /// Unseals with the whole unseal key (dev-file seal).
    pub async fn unseal_with_key(
        &self,
        store: &dyn Store,
        key: &SecretBytes,
    ) -> Result<(), CoreError> {
        self.refresh_if_uninitialized(store).await?;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let record = match &*st {
            State::Sealed { record, .. } => record.clone(),
            State::Unsealed { .. } => return Ok(()),
            State::Uninitialized => return Err(CoreError::NotInitialized),
        };
        let keys = unwrap_root(&record, key)
            .map_err(|_| CoreError::InvalidShare("unseal key does not match".into()))?;
        *st = State::Unsealed { record, keys };
        Ok(())
    }

    /// Drops the root key (and with the caller's cache purge, every key) from memory.
    pub fn seal(&self) -> Result<(), CoreError> {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        match &*st {
            State::Unsealed { record, .. } => {
                let record = record.clone();
                *st = State::Sealed {
                    record,
                    pending: Vec::new(),
                };
                Ok(())
            }
            State::Sealed { .. } => Ok(()),
            State::Uninitialized => Err(CoreError::NotInitialized),
        }
    }

    /// Another node may have initialized the shared store since we loaded it.
    async fn refresh_if_uninitialized(&self, store: &dyn Store) -> Result<(), CoreError> {
        let uninit = matches!(
            &*self.state.read().unwrap_or_else(|e| e.into_inner()),
            State::Uninitialized
        );
        if uninit && let Some(record) = store.get_seal().await? {
            let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
            if matches!(&*st, State::Uninitialized) {
                *st = State::Sealed {
                    record,
                    pending: Vec::new(),
                };
            }
        }
        Ok(())
    }
}

pub(crate) fn unwrap_root(
    record: &SealRecord,
    unseal_key: &SecretBytes,
) -> Result<RootKeys, CoreError> {
    if unseal_key.len() != UNSEAL_KEY_LEN {
        return Err(CoreError::InvalidShare("wrong unseal key length".into()));
    }
    let root = WrappingKey::new(unseal_key)?
        .unwrap(&record.wrapped_root_key, &root_key_aad())
        .map_err(|_| CoreError::InvalidShare("unseal key does not match".into()))?;
    Ok(RootKeys {
        rows: Arc::new(RowMac::derive(&root)?),
        root: Arc::new(WrappingKey::new(&root)?),
    })
}
