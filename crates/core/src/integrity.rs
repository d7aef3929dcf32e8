//! Integrity of security-relevant rows. Wrapping binds key material to its org, key id,
//! version and type, but a key's owner, state, versions and deletion date are plain columns:
//! an insider with write access to the database could give a key to another user, re-enable a
//! disabled one or lower its `min_decryption_version`. Every such row carries an HMAC-SHA256
//! over all its columns under the row-MAC key, which is derived from the root key and so exists
//! only while unsealed. Sovra signs each row it writes and checks each row it reads; a row that
//! fails is refused ([`CoreError::IntegrityViolation`]), never used.
//!
//! A MAC cannot tell a row from an older row of the same key that was valid once (a replay).
//! Each row therefore carries a `revision`, incremented by every change, and `sovra db verify`
//! compares it with the changes the audit log records ([`crate::kms::Kms::verify_rows`]).
//!
//! An insider can still delete rows: that loses keys, it never hands them out.

use crate::error::CoreError;
use crate::model::{GrantRecord, Grantee, IdentityRecord, KeyRecord, KeyState};
use sovra_crypto::SecretBytes;
use sovra_crypto::kdf::hkdf_sha256;
use sovra_crypto::mac::MacKey;
use sovra_crypto::wrap::context;

/// The HKDF `info` of the row-MAC key (no salt; the root key is uniformly random).
pub(crate) const ROW_MAC_KEY_INFO: &[u8] = b"sovra/row-mac/v1";

/// The audit action of a key's creation: its actor and org are the row's owner and org.
pub const KEY_CREATE: &str = "key.create";

/// The audit actions that change a key row, each writing it exactly once when it succeeds,
/// and the state each leaves the key in (`None`: unchanged). A key's revision is the number of
/// these in the audit log; the server's route table is tested to agree with this list.
pub const KEY_ROW_CHANGES: &[(&str, Option<KeyState>)] = &[
    (KEY_CREATE, Some(KeyState::Enabled)),
    ("key.update", None),
    ("key.rotate", None),
    ("key.disable", Some(KeyState::Disabled)),
    ("key.enable", Some(KeyState::Enabled)),
    ("key.schedule_deletion", Some(KeyState::PendingDeletion)),
    ("key.cancel_deletion", Some(KeyState::Disabled)),
];

/// The MAC key of stored rows, derived from the root key.
#[derive(Debug)]
pub struct RowMac(MacKey);

impl RowMac {
    pub(crate) fn derive(root_key: &SecretBytes) -> Result<RowMac, CoreError> {
        let key = hkdf_sha256(b"", root_key, ROW_MAC_KEY_INFO, 32)?;
        Ok(RowMac(MacKey::new(key.expose())?))
    }

    /// Sets the key row's MAC over its current columns (its `revision` included).
    pub(crate) fn sign_key(&self, key: &mut KeyRecord) {
        key.row_mac = self.0.sign(&key_row_message(key));
    }

    /// The row as read, if its MAC holds; otherwise the refusal, logged with the key's id.
    pub(crate) fn check_key(&self, key: KeyRecord) -> Result<KeyRecord, CoreError> {
        if self.key_is_intact(&key) {
            Ok(key)
        } else {
            tracing::error!(
                key_id = %key.id,
                org = key.org_id,
                "key row fails its integrity check: it was changed outside Sovra and is not used"
            );
            Err(CoreError::IntegrityViolation("key"))
        }
    }

    pub(crate) fn key_is_intact(&self, key: &KeyRecord) -> bool {
        !key.row_mac.is_empty() && self.0.verify(&key_row_message(key), &key.row_mac)
    }

    /// Sets the identity row's MAC over its current columns.
    pub(crate) fn sign_identity(&self, identity: &mut IdentityRecord) {
        identity.row_mac = self.0.sign(&identity_row_message(identity));
    }

    /// The identity as read, if its MAC holds; otherwise the refusal, logged with its id.
    pub(crate) fn check_identity(
        &self,
        identity: IdentityRecord,
    ) -> Result<IdentityRecord, CoreError> {
        if !identity.row_mac.is_empty()
            && self
                .0
                .verify(&identity_row_message(&identity), &identity.row_mac)
        {
            Ok(identity)
        } else {
            tracing::error!(
                identity = identity.id,
                org = identity.org_id,
                "identity row fails its integrity check: it was changed outside Sovra and is not used"
            );
            Err(CoreError::IntegrityViolation("identity"))
        }
    }
}

impl RowMac {
    /// Sets the grant row's MAC over its columns.
    pub(crate) fn sign_grant(&self, grant: &mut GrantRecord) {
        grant.row_mac = self.0.sign(&grant_row_message(grant));
    }

    /// Whether the grant row is as Sovra wrote it; one that is not is logged and ignored
    /// (it grants nothing).
    pub(crate) fn grant_is_intact(&self, grant: &GrantRecord) -> bool {
        let intact =
            !grant.row_mac.is_empty() && self.0.verify(&grant_row_message(grant), &grant.row_mac);
        if !intact {
            tracing::error!(
                grant = %grant.id,
                key_id = %grant.key_id,
                org = grant.org_id,
                "grant row fails its integrity check: it was changed outside Sovra and grants nothing"
            );
        }
        intact
    }
}

/// What a grant row's MAC covers: every column, in a fixed order, length-prefixed; the
/// operations joined by commas; the constraint as its kind then each pair of its context in
/// key order. docs/formats.md section 6 documents it.
pub(crate) fn grant_row_message(g: &GrantRecord) -> Vec<u8> {
    let (grantee_type, grantee) = match &g.grantee {
        Grantee::Identity(id) => ("identity", id.as_str()),
        Grantee::Role(role) => ("role", role.as_str()),
    };
    let operations: Vec<&str> = g.operations.iter().map(|o| o.as_str()).collect();
    let mut constraint: Vec<&[u8]> = Vec::new();
    if let Some(c) = &g.constraint {
        constraint.push(c.kind().as_bytes());
        for (k, v) in c.context() {
            constraint.push(k.as_bytes());
            constraint.push(v.as_bytes());
        }
    }
    let expires_at = g.expires_at.map(i64::to_be_bytes);
    context(
        "sovra/row/grant/v1",
        &[
            g.id.as_bytes(),
            g.org_id.as_bytes(),
            g.key_id.as_bytes(),
            grantee_type.as_bytes(),
            grantee.as_bytes(),
            operations.join(",").as_bytes(),
            &optional(
                g.constraint
                    .is_some()
                    .then(|| context("constraint", &constraint))
                    .as_deref(),
            ),
            &optional(expires_at.as_ref().map(|b| &b[..])),
            g.created_by.as_bytes(),
            &g.created_at.to_be_bytes(),
        ],
    )
}

/// What an identity row's MAC covers: every column but `last_seen_at` (which decides
/// nothing), in a fixed order, length-prefixed; roles joined by commas. docs/formats.md
/// section 6 documents it.
pub(crate) fn identity_row_message(i: &IdentityRecord) -> Vec<u8> {
    context(
        "sovra/row/identity/v1",
        &[
            i.org_id.as_bytes(),
            i.id.as_bytes(),
            i.kind.as_str().as_bytes(),
            i.roles.join(",").as_bytes(),
            i.status.as_str().as_bytes(),
            i.auth_source.as_bytes(),
            i.issuer.as_bytes(),
            i.subject.as_bytes(),
            &i.created_at.to_be_bytes(),
            &i.revision.to_be_bytes(),
        ],
    )
}

/// An optional column: absent is an empty part, present is a 1 byte and the value, so that
/// `None` and `Some("")` differ.
fn optional(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        None => Vec::new(),
        Some(v) => [&[1u8][..], v].concat(),
    }
}

/// What a key row's MAC covers: every column, in a fixed order, each length-prefixed
/// ([`context`]); numbers big-endian. docs/formats.md documents it, and
/// `tests/vectors/row_mac.json` (from Python) pins it.
pub(crate) fn key_row_message(k: &KeyRecord) -> Vec<u8> {
    let rotated_at = k.rotated_at.map(i64::to_be_bytes);
    let deletion_date = k.deletion_date.map(i64::to_be_bytes);
    context(
        "sovra/row/key/v1",
        &[
            k.id.as_bytes(),
            k.org_id.as_bytes(),
            k.owner.as_bytes(),
            k.name.as_bytes(),
            k.key_type.as_str().as_bytes(),
            &optional(k.description.as_deref().map(str::as_bytes)),
            k.state.as_str().as_bytes(),
            &k.latest_version.to_be_bytes(),
            &k.min_decryption_version.to_be_bytes(),
            &k.created_at.to_be_bytes(),
            &optional(rotated_at.as_ref().map(|b| &b[..])),
            &optional(deletion_date.as_ref().map(|b| &b[..])),
            &k.revision.to_be_bytes(),
        ],
    )
}
