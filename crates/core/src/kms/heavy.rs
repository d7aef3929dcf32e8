//! CPU-heavy work (RSA key generation and private-key operations): admitted by the caller's
//! quota first, then run on the blocking pool a few at a time, so that a flood of it queues
//! instead of starving cheap requests (threat row D-1 of the small KMS).

use super::Kms;
use crate::error::CoreError;
use crate::identity::Principal;
use std::sync::Arc;

/// Asked before CPU-heavy work is queued: only here is the key type known, so this is where
/// the server charges the caller's RSA quota.
pub trait HeavyOpAdmission: Send + Sync {
    fn admit(&self, p: &Principal) -> Result<(), CoreError>;
}

impl Kms {
    /// Installs the admission check for CPU-heavy work; only the first one counts (returns
    /// whether this one was installed).
    pub fn set_heavy_op_admission(&self, admission: Arc<dyn HeavyOpAdmission>) -> bool {
        self.heavy_admission.set(admission).is_ok()
    }

    pub(super) fn admit_heavy(&self, p: &Principal) -> Result<(), CoreError> {
        match self.heavy_admission.get() {
            Some(a) => a.admit(p),
            None => Ok(()),
        }
    }

    /// Runs a CPU-heavy operation on the blocking pool, at most `heavy_ops_concurrency` at a
    /// time, so RSA work queues instead of starving cheap requests.
    pub(super) async fn heavy_op<T: Send + 'static>(
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
}
