//! AES-256-GCM and ChaCha20-Poly1305 with 96-bit random nonces (aws-lc-rs).

use crate::error::CryptoError;
use crate::rng;
use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeadAlg {
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl AeadAlg {
    fn algorithm(self) -> &'static aws_lc_rs::aead::Algorithm {
        match self {
            AeadAlg::Aes256Gcm => &AES_256_GCM,
            AeadAlg::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        }
    }
}

/// A ready-to-use AEAD key. Building one costs a key schedule, so callers that encrypt often
/// keep it (the core caches them next to the unwrapped material).
pub struct AeadKey {
    key: LessSafeKey,
    alg: AeadAlg,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AeadKey({:?}, [REDACTED])", self.alg)
    }
}

impl AeadKey {
    pub fn new(alg: AeadAlg, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != KEY_LEN {
            return Err(CryptoError::InvalidKey);
        }
        let unbound = UnboundKey::new(alg.algorithm(), key).map_err(|_| CryptoError::InvalidKey)?;
        Ok(AeadKey {
            key: LessSafeKey::new(unbound),
            alg,
        })
    }

    pub fn alg(&self) -> AeadAlg {
        self.alg
    }

    /// Encrypts in place: `buf` holds the plaintext and receives ciphertext || tag.
    pub fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .map_err(|_| CryptoError::Internal)
    }

    /// Decrypts ciphertext || tag and returns the plaintext.
    pub fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if ciphertext_and_tag.len() < TAG_LEN {
            return Err(CryptoError::Decrypt);
        }
        let mut buf = ciphertext_and_tag.to_vec();
        match self.key.open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        ) {
            Ok(pt) => {
                let len = pt.len();
                buf.truncate(len);
                Ok(buf)
            }
            Err(_) => {
                // A failed open may leave unauthenticated plaintext in the buffer.
                zeroize::Zeroize::zeroize(&mut buf);
                Err(CryptoError::Decrypt)
            }
        }
    }
}

pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut n = [0u8; NONCE_LEN];
    rng::fill(&mut n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper_for_both_algorithms() {
        for alg in [AeadAlg::Aes256Gcm, AeadAlg::ChaCha20Poly1305] {
            let key = AeadKey::new(alg, &[7u8; 32]).unwrap();
            let nonce = random_nonce().unwrap();
            let mut buf = b"hello".to_vec();
            key.seal_in_place(nonce, b"aad", &mut buf).unwrap();
            assert_eq!(key.open(nonce, b"aad", &buf).unwrap(), b"hello");
            assert_eq!(key.open(nonce, b"aaD", &buf), Err(CryptoError::Decrypt));
            buf[0] ^= 1;
            assert_eq!(key.open(nonce, b"aad", &buf), Err(CryptoError::Decrypt));
        }
    }

    #[test]
    fn rejects_wrong_key_length() {
        assert_eq!(
            AeadKey::new(AeadAlg::Aes256Gcm, &[0u8; 16]).unwrap_err(),
            CryptoError::InvalidKey
        );
    }
}
