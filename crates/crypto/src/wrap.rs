//! Wrapping of keys under a 256-bit wrapping key (root key, org KEK, unseal key) with
//! AES-256-GCM. The caller's context (org, key id, version, purpose) is the AAD, so a wrapped
//! blob moved to another row, org or purpose does not unwrap.
//!
//! Format: `0x01 || nonce(12) || ciphertext || tag(16)`.

use crate::aead::{AeadAlg, AeadKey, NONCE_LEN, TAG_LEN, random_nonce};
use crate::error::CryptoError;
use crate::secret::SecretBytes;

const WRAP_FORMAT_V1: u8 = 1;

/// A wrapping key held in memory (root key or unwrapped KEK).
#[derive(Debug)]
pub struct WrappingKey {
    aead: AeadKey,
}

impl WrappingKey {
    pub fn new(key: &SecretBytes) -> Result<Self, CryptoError> {
        Ok(WrappingKey {
            aead: AeadKey::new(AeadAlg::Aes256Gcm, key.expose())?,
        })
    }

    pub fn wrap(&self, secret: &SecretBytes, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.wrap_with_nonce(random_nonce()?, secret, context)
    }

    /// [`wrap`](Self::wrap) with a given nonce, for the known-answer vectors of the format
    /// (docs/formats.md). A nonce must never repeat under one key: product code calls `wrap`.
    #[doc(hidden)]
    pub fn wrap_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        secret: &SecretBytes,
        context: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut buf = Vec::with_capacity(1 + NONCE_LEN + secret.len() + TAG_LEN);
        buf.push(WRAP_FORMAT_V1);
        buf.extend_from_slice(&nonce);
        // Room for the tag up front, so the buffer holding the secret never reallocates.
        let mut body = zeroize::Zeroizing::new(Vec::with_capacity(secret.len() + TAG_LEN));
        body.extend_from_slice(secret.expose());
        self.aead.seal_in_place(nonce, context, &mut body)?;
        buf.extend_from_slice(&body);
        Ok(buf)
    }

    pub fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretBytes, CryptoError> {
        if wrapped.len() < 1 + NONCE_LEN + TAG_LEN || wrapped[0] != WRAP_FORMAT_V1 {
            return Err(CryptoError::Decrypt);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[1..1 + NONCE_LEN]);
        Ok(SecretBytes::new(self.aead.open(
            nonce,
            context,
            &wrapped[1 + NONCE_LEN..],
        )?))
    }
}

/// Builds an unambiguous AAD from labelled parts: each part is length-prefixed, so
/// ("ab","c") and ("a","bc") never collide.
pub fn context(purpose: &str, parts: &[&[u8]]) -> Vec<u8> {
    // Sized exactly: a context is built on every audited request (a bearer token is hundreds
    // of bytes), and growing it from a guess reallocated and copied it several times.
    let len = 4 + purpose.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    for p in std::iter::once(purpose.as_bytes()).chain(parts.iter().copied()) {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap_fails_under_other_context_or_altered_byte() {
        let k = WrappingKey::new(&SecretBytes::new(vec![1u8; 32])).unwrap();
        let secret = SecretBytes::from_slice(b"key material");
        let ctx = context("test", &[b"org-a", b"key-1"]);
        let wrapped = k.wrap(&secret, &ctx).unwrap();
        assert_eq!(k.unwrap(&wrapped, &ctx).unwrap(), secret);
        let other = context("test", &[b"org-b", b"key-1"]);
        assert!(k.unwrap(&wrapped, &other).is_err());
        for i in 0..wrapped.len() {
            let mut w = wrapped.clone();
            w[i] ^= 0x80;
            assert!(
                k.unwrap(&w, &ctx).is_err(),
                "byte {i} altered but unwrapped"
            );
        }
        assert!(k.unwrap(&wrapped[..wrapped.len() - 1], &ctx).is_err());
    }

    #[test]
    fn context_parts_are_length_prefixed() {
        assert_ne!(context("p", &[b"ab", b"c"]), context("p", &[b"a", b"bc"]));
    }
}
