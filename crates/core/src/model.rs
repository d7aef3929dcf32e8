//! Records as the store keeps them. Key material appears here only wrapped.

use serde::Serialize;
use sovra_crypto::KeyType;
use uuid::Uuid;

/// The persisted seal configuration: the root key wrapped under the unseal key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealRecord {
    pub kind: SealKind,
    pub shares: u32,
    pub threshold: u32,
    pub wrapped_root_key: Vec<u8>,
    pub created_at: i64,
    /// One commitment per Shamir share, in share-id order (`seal::share_commitment`): a share
    /// this initialization did not issue is refused when submitted. `None` for seals made
    /// before commitments existed, and for the dev-file seal.
    pub share_commitments: Option<Vec<[u8; 32]>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SealKind {
    /// M-of-N Shamir shares of the unseal key held by operators.
    Shamir,
    /// A key file in the data directory: dev mode only, refused in production.
    DevFile,
}

impl SealKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SealKind::Shamir => "shamir",
            SealKind::DevFile => "dev-file",
        }
    }

    pub fn parse(s: &str) -> Option<SealKind> {
        match s {
            "shamir" => Some(SealKind::Shamir),
            "dev-file" => Some(SealKind::DevFile),
            _ => None,
        }
    }
}

/// An organization: created by a server operator, never implicitly; a suspended org's
/// principals are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRecord {
    pub id: String,
    pub display_name: String,
    pub status: OrgStatus,
    pub active_kek_version: u32,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgStatus {
    Active,
    Suspended,
}

impl OrgStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrgStatus::Active => "active",
            OrgStatus::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<OrgStatus> {
        match s {
            "active" => Some(OrgStatus::Active),
            "suspended" => Some(OrgStatus::Suspended),
            _ => None,
        }
    }
}

/// What an identity is. A service account can never hold the admin role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// A person administering the org.
    Admin,
    /// A person using keys.
    User,
    /// A person reading the audit log.
    Auditor,
    /// A machine.
    ServiceAccount,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Admin => "admin",
            IdentityKind::User => "user",
            IdentityKind::Auditor => "auditor",
            IdentityKind::ServiceAccount => "service_account",
        }
    }

    pub fn parse(s: &str) -> Option<IdentityKind> {
        match s {
            "admin" => Some(IdentityKind::Admin),
            "user" => Some(IdentityKind::User),
            "auditor" => Some(IdentityKind::Auditor),
            "service_account" => Some(IdentityKind::ServiceAccount),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityStatus {
    Active,
    Disabled,
}

impl IdentityStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityStatus::Active => "active",
            IdentityStatus::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<IdentityStatus> {
        match s {
            "active" => Some(IdentityStatus::Active),
            "disabled" => Some(IdentityStatus::Disabled),
            _ => None,
        }
    }
}

/// A stored identity of an org: every principal is one. Its id is the owner of the keys it
/// creates (`ISSUER#SUB` for a JWT subject, `dev-token#SUB` for the dev identity: the forms key
/// owners had before identities were records, so every existing key keeps its owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub org_id: String,
    pub id: String,
    pub kind: IdentityKind,
    /// Roles granted in Sovra, besides those its credential asserts (names as
    /// [`crate::identity::Role::as_str`], sorted).
    pub roles: Vec<String>,
    pub status: IdentityStatus,
    /// Where it authenticates: `jwt` (issuer + subject) or `dev-token`.
    pub auth_source: String,
    pub issuer: String,
    pub subject: String,
    pub created_at: i64,
    /// When a credential of it was last accepted (updated at most once a minute; not covered
    /// by the row MAC: it decides nothing).
    pub last_seen_at: Option<i64>,
    /// Incremented by every change to the row ([`crate::integrity`]).
    pub revision: u64,
    /// HMAC-SHA256 of the columns above except `last_seen_at`.
    pub row_mac: Vec<u8>,
}

/// One version of an org's KEK, wrapped by the root key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekRecord {
    pub org_id: String,
    pub version: u32,
    pub wrapped_kek: Vec<u8>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion => "pending_deletion",
        }
    }

    pub fn parse(s: &str) -> Option<KeyState> {
        match s {
            "enabled" => Some(KeyState::Enabled),
            "disabled" => Some(KeyState::Disabled),
            "pending_deletion" => Some(KeyState::PendingDeletion),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: Uuid,
    pub org_id: String,
    pub owner: String,
    pub name: String,
    pub key_type: KeyType,
    pub description: Option<String>,
    pub state: KeyState,
    pub latest_version: u32,
    pub min_decryption_version: u32,
    pub created_at: i64,
    pub rotated_at: Option<i64>,
    /// When a key pending deletion is destroyed.
    pub deletion_date: Option<i64>,
    /// Incremented by every change to the row, so that `sovra db verify` can tell a replayed
    /// older row from the current one (it counts the audited changes).
    pub revision: u64,
    /// HMAC-SHA256 of all the columns above under the row-MAC key ([`crate::integrity`]);
    /// empty for a row written before row MACs existed, which is refused until adopted.
    pub row_mac: Vec<u8>,
}

/// One version of a key: its material wrapped by a version of the org KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionRecord {
    pub key_id: Uuid,
    pub version: u32,
    pub kek_version: u32,
    pub wrapped_material: Vec<u8>,
    pub created_at: i64,
}

/// The audit keys as stored: both private keys wrapped by the root key, the public key plain
/// (served while sealed, so auditors can always fetch it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKeyRecord {
    pub wrapped_signing_key: Vec<u8>,
    pub wrapped_hmac_key: Vec<u8>,
    /// SPKI DER of the Ed25519 checkpoint key.
    pub public_key: Vec<u8>,
    pub created_at: i64,
}

/// What a grant gives: one operation on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOp {
    Encrypt,
    Decrypt,
    Sign,
    /// Verifying signatures, and MACs of a MAC key.
    Verify,
    /// Computing MACs.
    Mac,
    /// Data keys, with or without plaintext.
    Datakey,
    Reencrypt,
    /// The key's metadata and public key.
    Read,
}

impl KeyOp {
    pub const ALL: [KeyOp; 8] = [
        KeyOp::Encrypt,
        KeyOp::Decrypt,
        KeyOp::Sign,
        KeyOp::Verify,
        KeyOp::Mac,
        KeyOp::Datakey,
        KeyOp::Reencrypt,
        KeyOp::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyOp::Encrypt => "encrypt",
            KeyOp::Decrypt => "decrypt",
            KeyOp::Sign => "sign",
            KeyOp::Verify => "verify",
            KeyOp::Mac => "mac",
            KeyOp::Datakey => "datakey",
            KeyOp::Reencrypt => "reencrypt",
            KeyOp::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<KeyOp> {
        KeyOp::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Whether the operation carries an encryption context (a constrained grant allows only
    /// these).
    pub fn has_context(self) -> bool {
        matches!(
            self,
            KeyOp::Encrypt | KeyOp::Decrypt | KeyOp::Datakey | KeyOp::Reencrypt
        )
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grantee {
    /// One identity of the key's org, by id.
    Identity(String),
    /// Every identity of the key's org holding this role (its name).
    Role(String),
}

/// The encryption-context condition of a grant, as AWS KMS grants have them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextConstraint {
    /// The request's context is exactly this one.
    Equals(std::collections::BTreeMap<String, String>),
    /// The request's context holds every pair of this one (and maybe more).
    Subset(std::collections::BTreeMap<String, String>),
}

impl ContextConstraint {
    pub fn kind(&self) -> &'static str {
        match self {
            ContextConstraint::Equals(_) => "equals",
            ContextConstraint::Subset(_) => "subset",
        }
    }

    pub fn context(&self) -> &std::collections::BTreeMap<String, String> {
        match self {
            ContextConstraint::Equals(c) | ContextConstraint::Subset(c) => c,
        }
    }

    pub fn allows(&self, request: &std::collections::BTreeMap<String, String>) -> bool {
        match self {
            ContextConstraint::Equals(c) => c == request,
            ContextConstraint::Subset(c) => c.iter().all(|(k, v)| request.get(k) == Some(v)),
        }
    }
}

/// A grant: an identity or a role of the key's org may do these operations on the key, under
/// an optional context condition, until it expires or is revoked (the row is deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub id: Uuid,
    pub org_id: String,
    pub key_id: Uuid,
    pub grantee: Grantee,
    /// Sorted, without repeats.
    pub operations: Vec<KeyOp>,
    pub constraint: Option<ContextConstraint>,
    pub expires_at: Option<i64>,
    /// The identity that granted it.
    pub created_by: String,
    pub created_at: i64,
    /// HMAC-SHA256 of every column above ([`crate::integrity`]): a grant row an insider
    /// writes hands out nothing.
    pub row_mac: Vec<u8>,
}
