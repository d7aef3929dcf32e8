//! What the key service takes and returns: typed ids, key types, algorithms and times. How
//! these look on the wire (JSON, RFC 3339, the OpenAPI document) is the server's business.

use crate::clock::Timestamp;
use crate::ids::{IdentityId, KeyId};
use crate::model::{KeyRecord, KeyState};
use sovra_crypto::sign::SignatureAlgorithm;
use sovra_crypto::{KeyType, SecretBytes};

/// A key's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: KeyId,
    pub name: String,
    pub key_type: KeyType,
    pub description: Option<String>,
    pub state: KeyState,
    pub owner: IdentityId,
    /// Number of versions; the newest is used for new operations.
    pub latest_version: u32,
    pub min_decryption_version: u32,
    pub created: Timestamp,
    pub rotated: Option<Timestamp>,
    pub deletion_date: Option<Timestamp>,
}

impl From<&KeyRecord> for KeyInfo {
    fn from(k: &KeyRecord) -> Self {
        KeyInfo {
            id: KeyId::from(k.id),
            name: k.name.clone(),
            key_type: k.key_type,
            description: k.description.clone(),
            state: k.state,
            owner: IdentityId::from_stored(&k.owner),
            latest_version: k.latest_version,
            min_decryption_version: k.min_decryption_version,
            created: Timestamp::from_millis(k.created_at),
            rotated: k.rotated_at.map(Timestamp::from_millis),
            deletion_date: k.deletion_date.map(Timestamp::from_millis),
        }
    }
}

pub struct NewKey {
    pub name: String,
    pub key_type: KeyType,
    pub description: Option<String>,
}

pub struct KeyUpdate {
    pub min_decryption_version: Option<u32>,
    pub description: Option<String>,
}

pub struct Encrypted {
    pub ciphertext: Vec<u8>,
    pub key_id: KeyId,
    pub key_version: u32,
}

pub struct Decrypted {
    pub plaintext: SecretBytes,
    pub key_id: KeyId,
    pub key_version: u32,
}

pub struct DataKey {
    pub plaintext: Option<SecretBytes>,
    pub ciphertext: Vec<u8>,
    pub key_id: KeyId,
    pub key_version: u32,
}

pub struct Signed {
    pub signature: Vec<u8>,
    pub key_version: u32,
    pub algorithm: SignatureAlgorithm,
}
