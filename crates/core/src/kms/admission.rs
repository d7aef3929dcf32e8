//! Admission: a verified credential is let in only as a stored identity of an active org.
//! The org must be a record and active; the identity a record of that org (created on first
//! use when its issuer provisions identities, or when keys of it exist from before identities
//! were records), active, its row intact, and not a service account holding the admin role.
//!
//! Orgs and identities are cached per node; every change through this node forgets its entry
//! at once, and on PostgreSQL every other node forgets it at commit through the change feed
//! (a lost feed forgets everything). Entries also expire after [`MAX_AGE`], a bound for a
//! notification that never arrived.

use super::Kms;
use crate::cache::evict_one_at_capacity;
use crate::error::CoreError;
use crate::identity::{AuthMethod, Authenticated, Role};
use crate::model::{IdentityKind, IdentityRecord, IdentityStatus, OrgStatus};
use crate::store::{StoreChange, StoreError};
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a cached org status or identity is used without reading it again.
const MAX_AGE: Duration = Duration::from_secs(30);
/// How often an identity's `last_seen_at` is written, at most.
const TOUCH_INTERVAL_MS: i64 = 60_000;
/// Most entries of each cache; past it, the cache is emptied (it refills from the store).
const CAPACITY: usize = 100_000;

struct CachedIdentity {
    record: Arc<IdentityRecord>,
    roles: Vec<Role>,
    fetched: Instant,
    last_touch_ms: AtomicI64,
}

#[derive(Default)]
pub(crate) struct AdmissionCache {
    orgs: DashMap<String, (OrgStatus, Instant)>,
    identities: DashMap<(String, String), Arc<CachedIdentity>>,
    /// Bumped by every forget: a read that started before one is not cached.
    generation: AtomicU64,
}

impl AdmissionCache {
    /// Forgets what a change makes stale.
    pub(crate) fn forget(&self, change: &StoreChange) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        match change {
            StoreChange::Key(_) => {}
            StoreChange::Org(org) => {
                self.orgs.remove(org);
            }
            StoreChange::Identity { org, id } => {
                self.identities.remove(&(org.clone(), id.clone()));
            }
            StoreChange::Lost => {
                self.orgs.clear();
                self.identities.clear();
            }
        }
    }

    /// Forgets everything (at seal: identity rows are checked under the row-MAC key).
    pub(crate) fn clear(&self) {
        self.forget(&StoreChange::Lost);
    }
}

/// Roles as an identity record stores them; a name Sovra does not know is ignored.
pub(crate) fn stored_roles(names: &[String]) -> Vec<Role> {
    names.iter().filter_map(|n| Role::parse(n)).collect()
}

/// The kind a provisioned identity gets from the roles of its first credential.
fn kind_from_roles(roles: &[Role]) -> IdentityKind {
    if roles.contains(&Role::Admin) {
        IdentityKind::Admin
    } else if roles.contains(&Role::Auditor) {
        IdentityKind::Auditor
    } else {
        IdentityKind::User
    }
}

/// A service account never holds an org's admin role, nor the server's operator role:
/// whether a credential asserts it or a record was given it.
pub(crate) fn refuse_service_admin(kind: IdentityKind, roles: &[Role]) -> Result<(), CoreError> {
    if kind == IdentityKind::ServiceAccount
        && roles
            .iter()
            .any(|r| matches!(r, Role::Admin | Role::Operator))
    {
        return Err(CoreError::IdentityRefused(
            "a service account cannot hold the admin or operator role".into(),
        ));
    }
    Ok(())
}

impl Kms {
    /// Admits a verified credential: the principal as its stored identity, with the roles the
    /// record adds, or the refusal ([`CoreError::UnknownOrg`], [`CoreError::OrgSuspended`],
    /// [`CoreError::UnknownIdentity`], [`CoreError::IdentityDisabled`],
    /// [`CoreError::IdentityRefused`], [`CoreError::IntegrityViolation`]).
    ///
    /// A server operator whose token names an org that is no record (the first operator, before
    /// any org exists) is let through as it came, not admitted: the core then authorizes it for
    /// server-wide actions only. One whose org is suspended must still be an active identity
    /// of it (not a service account) to be let through that way.
    pub async fn admit(&self, a: &Arc<Authenticated>) -> Result<Arc<Authenticated>, CoreError> {
        let p = &a.principal;
        let operator = p.has_role(Role::Operator);
        match self.check_org_active(p.org().as_str()).await {
            Ok(()) => {}
            Err(CoreError::UnknownOrg(_)) if operator => return Ok(a.clone()),
            Err(CoreError::OrgSuspended(_)) if operator => {
                self.admitted_identity(a).await?;
                return Ok(a.clone());
            }
            Err(e) => return Err(e),
        }
        let identity = self.admitted_identity(a).await?;
        Ok(Arc::new(Authenticated {
            principal: p.admitted(&identity.roles),
            token_hash: a.token_hash.clone(),
            provision_identity: a.provision_identity,
        }))
    }

    /// The principal's identity if it may be admitted: active, and no service account holding
    /// the admin or operator role.
    async fn admitted_identity(&self, a: &Authenticated) -> Result<Arc<CachedIdentity>, CoreError> {
        let identity = self.identity_for(a).await?;
        let record = &identity.record;
        if record.status != IdentityStatus::Active {
            return Err(CoreError::IdentityDisabled);
        }
        refuse_service_admin(record.kind, a.principal.roles())?;
        refuse_service_admin(record.kind, &identity.roles)?;
        self.touch(&identity).await;
        Ok(identity)
    }

    async fn check_org_active(&self, org: &str) -> Result<(), CoreError> {
        let cache = &self.admission;
        let status = match cache.orgs.get(org).filter(|e| e.1.elapsed() < MAX_AGE) {
            Some(e) => e.0,
            None => {
                let generation = cache.generation.load(Ordering::SeqCst);
                let fetched = Instant::now();
                let Some(rec) = self.store.get_org(org).await? else {
                    return Err(CoreError::UnknownOrg(org.to_string()));
                };
                if cache.generation.load(Ordering::SeqCst) == generation {
                    evict_one_at_capacity(&cache.orgs, CAPACITY);
                    cache.orgs.insert(org.to_string(), (rec.status, fetched));
                    // A forget that ran between the check and the insert wins.
                    if cache.generation.load(Ordering::SeqCst) != generation {
                        cache.orgs.remove(org);
                    }
                }
                rec.status
            }
        };
        match status {
            OrgStatus::Active => Ok(()),
            OrgStatus::Suspended => Err(CoreError::OrgSuspended(org.to_string())),
        }
    }

    /// The principal's identity record, from the cache, the store, or provisioned now.
    async fn identity_for(&self, a: &Authenticated) -> Result<Arc<CachedIdentity>, CoreError> {
        let p = &a.principal;
        let cache_key = (p.org().to_string(), p.identity().to_string());
        if let Some(hit) = self.admission.identities.get(&cache_key)
            && hit.fetched.elapsed() < MAX_AGE
        {
            return Ok(hit.clone());
        }
        let rows = self.seal.row_mac()?;
        let generation = self.admission.generation.load(Ordering::SeqCst);
        let fetched = Instant::now();
        let stored = self
            .store
            .get_identity(p.org().as_str(), p.identity().as_str())
            .await?;
        let record = match stored {
            Some(rec) => rows.check_identity(rec)?,
            None => self.provision(a).await?,
        };
        let cached = Arc::new(CachedIdentity {
            roles: stored_roles(&record.roles),
            last_touch_ms: AtomicI64::new(record.last_seen_at.unwrap_or(0)),
            record: Arc::new(record),
            fetched,
        });
        let cache = &self.admission;
        if cache.generation.load(Ordering::SeqCst) == generation {
            evict_one_at_capacity(&cache.identities, CAPACITY);
            cache.identities.insert(cache_key.clone(), cached.clone());
            // A forget that ran between the check and the insert wins.
            if cache.generation.load(Ordering::SeqCst) != generation {
                cache.identities.remove(&cache_key);
            }
        }
        Ok(cached)
    }

    /// Creates the record of a subject seen for the first time, if its issuer provisions
    /// identities or keys of it exist from before identities were records.
    async fn provision(&self, a: &Authenticated) -> Result<IdentityRecord, CoreError> {
        let p = &a.principal;
        let (org, id) = (p.org().as_str(), p.identity().as_str());
        if !a.provision_identity && !self.owns_intact_keys(org, id).await? {
            return Err(CoreError::UnknownIdentity);
        }
        let (auth_source, issuer) = match p.auth_method() {
            AuthMethod::Jwt { issuer } => ("jwt", issuer.clone()),
            AuthMethod::DevToken => ("dev-token", String::new()),
        };
        let mut record = IdentityRecord {
            org_id: org.to_string(),
            id: id.to_string(),
            kind: kind_from_roles(p.roles()),
            roles: Vec::new(),
            status: IdentityStatus::Active,
            auth_source: auth_source.to_string(),
            issuer,
            subject: p.subject().to_string(),
            created_at: self.clock().now().as_millis(),
            last_seen_at: None,
            revision: 1,
            row_mac: Vec::new(),
        };
        self.seal.row_mac()?.sign_identity(&mut record);
        match self.store.create_identity(&record).await {
            Ok(()) => {
                tracing::info!(
                    org,
                    identity = id,
                    kind = record.kind.as_str(),
                    "identity provisioned"
                );
                Ok(record)
            }
            // Another request (or node) provisioned it first: use theirs.
            Err(StoreError::Conflict(_)) => {
                let rec = self
                    .store
                    .get_identity(org, id)
                    .await?
                    .ok_or(CoreError::Internal)?;
                self.seal.row_mac()?.check_identity(rec)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a key row of this owner whose MAC holds exists in the org: a subject from before
    /// identities were records. A row an insider wrote (no valid MAC) makes no identity.
    async fn owns_intact_keys(&self, org: &str, owner: &str) -> Result<bool, CoreError> {
        let rows = self.seal.row_mac()?;
        Ok(self
            .store
            .list_keys(org, owner)
            .await?
            .iter()
            .any(|k| rows.key_is_intact(k)))
    }

    /// Writes `last_seen_at` at most once per [`TOUCH_INTERVAL_MS`]; a failure is logged,
    /// never the request's.
    async fn touch(&self, identity: &CachedIdentity) {
        let now = self.clock().now().as_millis();
        let last = identity.last_touch_ms.load(Ordering::Relaxed);
        if now - last < TOUCH_INTERVAL_MS
            || identity
                .last_touch_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let r = &identity.record;
        if let Err(e) = self.store.touch_identity(&r.org_id, &r.id, now).await {
            tracing::warn!(identity = r.id, error = %e, "could not record when the identity was last seen");
        }
    }
}
