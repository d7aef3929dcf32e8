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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRecord {
    pub id: String,
    pub active_kek_version: u32,
    pub created_at: i64,
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
