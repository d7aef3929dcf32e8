//! Key lifecycle: create, find, list, rotate, enable and disable, scheduled deletion and its
//! purge, settings. Changes use optimistic concurrency against the stored row, so concurrent
//! requests on any node each apply or retry.

use super::types::{KeyInfo, KeyUpdate, NewKey};
use super::{Kms, require_usable};
use crate::authz::{Action, Resource, authorize};
use crate::error::CoreError;
use crate::identity::Principal;
use crate::ids::{KeyId, KeyRef};
use crate::model::{KeyOp, KeyRecord, KeyState};
use crate::store::StoreError;
use sovra_crypto::{KeyType, SecretBytes};

pub const MIN_PENDING_DAYS: u32 = 7;
pub const MAX_PENDING_DAYS: u32 = 30;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_DESCRIPTION_LEN: usize = 1024;

impl Kms {
    pub async fn create_key(&self, p: &Principal, req: NewKey) -> Result<KeyInfo, CoreError> {
        let rows = self.seal.row_mac()?;
        authorize(p, Action::KeyCreate, Resource::Org(p.org()))?;
        validate_name(&req.name)?;
        validate_description(req.description.as_deref())?;
        let key_type = req.key_type;
        // Admission checked the org already; a principal built without it (the core's tests)
        // meets the same refusal here.
        match self.store.get_org(p.org().as_str()).await? {
            None => return Err(CoreError::UnknownOrg(p.org().to_string())),
            Some(o) if o.status != crate::model::OrgStatus::Active => {
                return Err(CoreError::OrgSuspended(p.org().to_string()));
            }
            Some(_) => {}
        }
        let now = self.clock.now().as_millis();
        let mut key = KeyRecord {
            id: KeyId::random().as_uuid(),
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
            revision: 1,
            row_mac: Vec::new(),
        };
        rows.sign_key(&mut key);
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
    pub(super) async fn generate(
        &self,
        p: &Principal,
        key_type: KeyType,
    ) -> Result<SecretBytes, CoreError> {
        if key_type.is_cpu_heavy() {
            self.heavy_op_for(p, super::heavy_cost(key_type, true), move || {
                key_type.generate().map_err(CoreError::from)
            })
            .await
        } else {
            Ok(key_type.generate()?)
        }
    }
    /// The key a request names, by id or by name: a name is looked up among the caller's own
    /// keys of its org, so another owner's key of the same name is not found.
    pub async fn find_key(&self, p: &Principal, key: &KeyRef) -> Result<KeyInfo, CoreError> {
        match key {
            KeyRef::Id(id) => self.get_key(p, *id).await,
            KeyRef::Name(name) => {
                let rows = self.seal.row_mac()?;
                let key = self
                    .store
                    .get_key_by_name(p.org().as_str(), p.identity().as_str(), name)
                    .await?
                    .map(|k| rows.check_key(k))
                    .transpose()?
                    .ok_or(CoreError::NotFound)?;
                authorize(p, Action::KeyRead, Resource::Key(&key))?;
                Ok(KeyInfo::from(&key))
            }
        }
    }

    /// The caller's keys; for a key admin, every key of its org. One row that fails its MAC
    /// fails the listing: a row edited to name the caller as its owner must not appear among
    /// the caller's keys.
    pub async fn list_keys(&self, p: &Principal) -> Result<Vec<KeyInfo>, CoreError> {
        let rows = self.seal.row_mac()?;
        authorize(p, Action::KeyList, Resource::Org(p.org()))?;
        let org = p.org().as_str();
        let keys = if p.has_role(crate::identity::Role::KeyAdmin) {
            self.store.list_org_keys(org).await?
        } else {
            self.store.list_keys(org, p.identity().as_str()).await?
        };
        keys.into_iter()
            .map(|k| rows.check_key(k).map(|k| KeyInfo::from(&k)))
            .collect()
    }

    pub async fn get_key(&self, p: &Principal, id: KeyId) -> Result<KeyInfo, CoreError> {
        Ok(KeyInfo::from(
            &self.key_for_op(p, id, KeyOp::Read, None).await?,
        ))
    }

    pub async fn rotate_key(&self, p: &Principal, id: KeyId) -> Result<KeyInfo, CoreError> {
        let mut key = self.key_for_update(p, id, Action::KeyManage).await?;
        require_usable(&key)?;
        let material = self.generate(p, key.key_type).await?;
        // Optimistic concurrency: the store refuses a version that is not latest + 1, so
        // concurrent rotations (from any node) each get their own number or retry.
        for _ in 0..5 {
            let version = key.latest_version + 1;
            let rec = self.wrap_material(&key, version, &material).await?;
            let mut after = key.clone();
            after.latest_version = version;
            after.rotated_at = Some(rec.created_at);
            self.sign_change(&mut after)?;
            let added = self.store.add_key_version(&after, &rec).await;
            self.key_meta.invalidate(id.as_uuid());
            match added {
                Ok(()) => return Ok(KeyInfo::from(&after)),
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
        id: KeyId,
        change: impl Fn(&mut KeyRecord) -> Result<(), CoreError>,
    ) -> Result<KeyInfo, CoreError> {
        for _ in 0..5 {
            let before = self.key_for_update(p, id, Action::KeyManage).await?;
            let mut after = before.clone();
            change(&mut after)?;
            self.sign_change(&mut after)?;
            let updated = self.store.update_key(&before, &after).await;
            self.key_meta.invalidate(id.as_uuid());
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

    pub async fn disable_key(&self, p: &Principal, id: KeyId) -> Result<KeyInfo, CoreError> {
        self.set_state(p, id, |k| match k.state {
            KeyState::PendingDeletion => Err(CoreError::KeyPendingDeletion),
            _ => {
                k.state = KeyState::Disabled;
                Ok(())
            }
        })
        .await
    }

    pub async fn enable_key(&self, p: &Principal, id: KeyId) -> Result<KeyInfo, CoreError> {
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
        id: KeyId,
        pending_days: u32,
    ) -> Result<KeyInfo, CoreError> {
        if !(MIN_PENDING_DAYS..=MAX_PENDING_DAYS).contains(&pending_days) {
            return Err(CoreError::InvalidInput(format!(
                "pending_days must be between {MIN_PENDING_DAYS} and {MAX_PENDING_DAYS}"
            )));
        }
        let deletion_date = self.clock.now().plus_days(pending_days).as_millis();
        self.set_state(p, id, |k| {
            if k.state == KeyState::PendingDeletion {
                return Err(CoreError::KeyPendingDeletion);
            }
            k.state = KeyState::PendingDeletion;
            k.deletion_date = Some(deletion_date);
            Ok(())
        })
        .await
    }

    /// Cancels a scheduled deletion; the key comes back disabled (as in AWS KMS), so its
    /// owner re-enables it deliberately.
    pub async fn cancel_deletion(&self, p: &Principal, id: KeyId) -> Result<KeyInfo, CoreError> {
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
        id: KeyId,
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

    /// The next revision of a changed row, signed.
    fn sign_change(&self, after: &mut KeyRecord) -> Result<(), CoreError> {
        let rows = self.seal.row_mac()?;
        after.revision += 1;
        rows.sign_key(after);
        Ok(())
    }

    /// Destroys keys whose deletion date has passed. Returns how many. A row is destroyed
    /// only if its MAC holds, so an edit that schedules someone's key for deletion in the
    /// past destroys nothing (it is logged by the check).
    pub async fn purge_due_keys(&self) -> Result<usize, CoreError> {
        let now = self.clock.now().as_millis();
        let due = self.store.keys_due_for_deletion(now).await?;
        let mut destroyed = 0;
        for (org, id) in &due {
            match self.stored_key(org, *id).await {
                Ok(Some(k))
                    if k.state == KeyState::PendingDeletion
                        && k.deletion_date.is_some_and(|d| d <= now) => {}
                Ok(_) | Err(CoreError::IntegrityViolation(_)) => continue,
                Err(e) => return Err(e),
            }
            let deleted = self.store.delete_key(org, *id, now).await;
            self.key_meta.invalidate(*id);
            if deleted? {
                destroyed += 1;
            }
            self.keys.remove_if(|(k, _)| k == id);
        }
        Ok(destroyed)
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
