//! Key types Sovra offers, their names on the wire and what they may be used for.

use crate::aead::{AeadAlg, KEY_LEN};
use crate::error::CryptoError;
use crate::rng;
use crate::secret::SecretBytes;
use crate::sign;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Aes256Gcm,
    ChaCha20Poly1305,
    HmacSha256,
    Ed25519,
    EcdsaP256,
    Rsa3072,
    Rsa4096,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsage {
    EncryptDecrypt,
    SignVerify,
    Mac,
}

impl KeyType {
    pub const ALL: [KeyType; 7] = [
        KeyType::Aes256Gcm,
        KeyType::ChaCha20Poly1305,
        KeyType::HmacSha256,
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes256Gcm => "aes-256-gcm",
            KeyType::ChaCha20Poly1305 => "chacha20-poly1305",
            KeyType::HmacSha256 => "hmac-sha256",
            KeyType::Ed25519 => "ed25519",
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    pub fn parse(s: &str) -> Result<KeyType, CryptoError> {
        KeyType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                CryptoError::InvalidInput(format!(
                    "unknown key type (expected one of: {})",
                    Self::names()
                ))
            })
    }

    pub fn names() -> String {
        KeyType::ALL.map(|t| t.as_str()).join(", ")
    }

    pub fn usage(self) -> KeyUsage {
        match self {
            KeyType::Aes256Gcm | KeyType::ChaCha20Poly1305 => KeyUsage::EncryptDecrypt,
            KeyType::HmacSha256 => KeyUsage::Mac,
            KeyType::Ed25519 | KeyType::EcdsaP256 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                KeyUsage::SignVerify
            }
        }
    }

    pub fn aead(self) -> Option<AeadAlg> {
        match self {
            KeyType::Aes256Gcm => Some(AeadAlg::Aes256Gcm),
            KeyType::ChaCha20Poly1305 => Some(AeadAlg::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// RSA generation and private-key operations are the expensive ones.
    pub fn is_cpu_heavy(self) -> bool {
        matches!(self, KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    /// Generates fresh key material: raw bytes for symmetric keys, PKCS#8 DER for key pairs.
    pub fn generate(self) -> Result<SecretBytes, CryptoError> {
        match self {
            KeyType::Aes256Gcm | KeyType::ChaCha20Poly1305 | KeyType::HmacSha256 => {
                Ok(SecretBytes::new(rng::random_vec(KEY_LEN)?))
            }
            KeyType::Ed25519 | KeyType::EcdsaP256 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                sign::generate_pkcs8(self)
            }
        }
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_unknown_is_rejected() {
        for t in KeyType::ALL {
            assert_eq!(KeyType::parse(t.as_str()).unwrap(), t);
        }
        assert!(KeyType::parse("des").is_err());
        assert!(KeyType::parse("AES-256-GCM").is_err());
    }
}
