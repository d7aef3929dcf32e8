//! CPU-heavy work (RSA key generation and private-key operations): charged to the caller's
//! quota at what it costs, bounded per identity and server-wide, then run on the blocking pool
//! a few at a time, so that a flood of it is refused at once instead of queueing for minutes
//! in front of everyone else's (threat row 16 of the small KMS).
//!
//! Bounds, all checked before anything waits:
//! - each identity has at most `heavy_ops_per_identity` operations running or queued; past
//!   that, 429 `rate_limited` with `Retry-After`;
//! - at most `heavy_ops_queue` operations wait for a slot server-wide; past that, 503 `busy`;
//! - `heavy_ops_concurrency` run at once, and key generations (hundreds of signatures' worth
//!   each) on at most all but one of those slots, so that signatures always have one.

use super::Kms;
use crate::error::CoreError;
use crate::identity::Principal;
use crate::ids::IdentityId;
use sovra_crypto::keytype::KeyType;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Asked before CPU-heavy work is queued: only here is the key type known, so this is where
/// the server charges the caller's RSA quota, `cost` units at once.
pub trait HeavyOpAdmission: Send + Sync {
    fn admit(&self, p: &Principal, cost: u32) -> Result<(), CoreError>;
}

/// What a heavy operation costs in the RSA quota, in RSA-3072 private-key operations (about a
/// millisecond of one core each). Generation costs what it takes: the ratio of generation to
/// signing time measured with OpenSSL (Python `cryptography`) on the development machine, about
/// 240 for RSA-3072; RSA-4096 generation about 580 and a signature about 3 of these units.
pub fn heavy_cost(key_type: KeyType, generation: bool) -> u32 {
    match (key_type, generation) {
        (KeyType::Rsa4096, true) => 580,
        (KeyType::Rsa4096, false) => 3,
        (_, true) => 240,
        (_, false) => 1,
    }
}

/// Costs from this up are key generations ([`heavy_cost`]).
const GENERATION_COST: u32 = 100;

/// Slots for CPU-heavy work and the bounds on who may wait for them.
pub(crate) struct HeavyPool {
    running: Arc<Semaphore>,
    /// Slots key generation may take: one fewer than `running` (at least one).
    generating: Arc<Semaphore>,
    per_identity: usize,
    queue: usize,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Operations queued for a slot, server-wide.
    queued: usize,
    /// Operations running or queued, per identity.
    by_identity: HashMap<IdentityId, usize>,
}

/// An identity's claim on the pool, given back when dropped (finished, failed or cancelled).
struct Claim<'a> {
    pool: &'a HeavyPool,
    identity: Option<IdentityId>,
    queued: bool,
}

impl Claim<'_> {
    fn leave_queue(&mut self) {
        if std::mem::take(&mut self.queued) {
            self.pool.lock().queued -= 1;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.leave_queue();
        if let Some(id) = self.identity.take() {
            let mut w = self.pool.lock();
            if let Some(n) = w.by_identity.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    w.by_identity.remove(&id);
                }
            }
        }
    }
}

impl HeavyPool {
    pub(crate) fn new(concurrency: usize, per_identity: usize, queue: usize) -> HeavyPool {
        HeavyPool {
            running: Arc::new(Semaphore::new(concurrency.max(1))),
            generating: Arc::new(Semaphore::new(concurrency.saturating_sub(1).max(1))),
            per_identity: per_identity.max(1),
            queue,
            waiting: Mutex::new(Waiting::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims a place for `identity`'s operation (none: work on behalf of no caller, such as
    /// parsing a key for the cache, bounded only by the server-wide queue), or refuses at once.
    fn claim(&self, identity: Option<&IdentityId>) -> Result<Claim<'_>, CoreError> {
        let mut w = self.lock();
        if let Some(id) = identity
            && w.by_identity.get(id).copied().unwrap_or(0) >= self.per_identity
        {
            return Err(CoreError::RateLimited {
                retry_after_secs: 1,
            });
        }
        // Counted as queued until it holds a slot, however briefly it waits.
        if w.queued >= self.queue {
            return Err(CoreError::Busy);
        }
        w.queued += 1;
        if let Some(id) = identity {
            *w.by_identity.entry(id.clone()).or_insert(0) += 1;
        }
        Ok(Claim {
            pool: self,
            identity: identity.cloned(),
            queued: true,
        })
    }
}

impl Kms {
    /// Installs the admission check for CPU-heavy work; only the first one counts (returns
    /// whether this one was installed).
    pub fn set_heavy_op_admission(&self, admission: Arc<dyn HeavyOpAdmission>) -> bool {
        self.heavy_admission.set(admission).is_ok()
    }

    fn admit_heavy(&self, p: &Principal, cost: u32) -> Result<(), CoreError> {
        match self.heavy_admission.get() {
            Some(a) => a.admit(p, cost),
            None => Ok(()),
        }
    }

    /// Runs `p`'s CPU-heavy operation of `cost` (see [`heavy_cost`]) on the blocking pool:
    /// charged to `p`'s quota, within `p`'s and the server's bounds, or refused at once.
    pub(super) async fn heavy_op_for<T: Send + 'static>(
        &self,
        p: &Principal,
        cost: u32,
        f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let claim = self.heavy.claim(Some(p.identity()))?;
        // Charged only once admitted to the pool: a refusal at the bound costs no quota.
        self.admit_heavy(p, cost)?;
        let _generation_slot = if cost >= GENERATION_COST {
            Some(
                self.heavy
                    .generating
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| CoreError::Busy)?,
            )
        } else {
            None
        };
        self.run_heavy(claim, f).await
    }

    /// Runs CPU-heavy work done for no caller in particular (parsing an RSA key into the
    /// cache), bounded by the server-wide queue only.
    pub(super) async fn heavy_op<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let claim = self.heavy.claim(None)?;
        self.run_heavy(claim, f).await
    }

    async fn run_heavy<T: Send + 'static>(
        &self,
        mut claim: Claim<'_>,
        f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let _slot = self
            .heavy
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CoreError::Busy)?;
        claim.leave_queue();
        let result = tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| CoreError::Internal)?;
        drop(claim);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> IdentityId {
        IdentityId::from_stored(s)
    }

    /// Key generations get all slots but one, so a signature always finds one free of them;
    /// with one slot, generation shares it.
    #[test]
    fn generations_leave_one_slot_to_signatures() {
        for (slots, generating) in [(1, 1), (2, 1), (4, 3)] {
            let pool = HeavyPool::new(slots, 2, 2);
            assert_eq!(pool.running.available_permits(), slots);
            assert_eq!(pool.generating.available_permits(), generating);
        }
        assert!(heavy_cost(KeyType::Rsa3072, true) >= GENERATION_COST);
        assert!(heavy_cost(KeyType::Rsa4096, false) < GENERATION_COST);
    }

    /// An identity at its bound is refused with 429 while others still get in; the
    /// server-wide queue refuses with 503 once full; every place is given back on drop.
    #[test]
    fn bounds_per_identity_and_server_wide() {
        let pool = HeavyPool::new(1, 2, 2);
        let running = pool.running.clone().try_acquire_owned().unwrap();
        let a1 = pool.claim(Some(&id("idp#a"))).unwrap();
        let a2 = pool.claim(Some(&id("idp#a"))).unwrap();
        assert!(matches!(
            pool.claim(Some(&id("idp#a"))),
            Err(CoreError::RateLimited { .. })
        ));
        // The queue holds two (a1, a2): b is refused server-wide, not for its own count.
        assert!(matches!(
            pool.claim(Some(&id("idp#b"))),
            Err(CoreError::Busy)
        ));
        drop(a1);
        let b1 = pool.claim(Some(&id("idp#b"))).unwrap();
        assert!(matches!(pool.claim(None), Err(CoreError::Busy)));
        drop((a2, b1));
        assert_eq!(pool.lock().queued, 0);
        assert!(pool.lock().by_identity.is_empty());
        // A claim that got its slot leaves the queue but still counts for its identity.
        drop(running);
        let mut c1 = pool.claim(Some(&id("idp#c"))).unwrap();
        c1.leave_queue();
        let _c2 = pool.claim(Some(&id("idp#c"))).unwrap();
        assert_eq!(pool.lock().queued, 1);
        assert!(matches!(
            pool.claim(Some(&id("idp#c"))),
            Err(CoreError::RateLimited { .. })
        ));
        assert!(pool.claim(Some(&id("idp#d"))).is_ok());
    }
}
