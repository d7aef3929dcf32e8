//! The self-describing ciphertext of `encrypt`:
//!
//! ```text
//! offset  size  field
//! 0       2     magic "sv"
//! 2       1     format version (1)
//! 3       1     algorithm (1 = AES-256-GCM, 2 = ChaCha20-Poly1305)
//! 4       16    key id (UUID bytes)
//! 20      4     key version (big-endian)
//! 24      12    nonce
//! 36      n+16  AEAD ciphertext and tag
//! ```
//!
//! The AAD is the 36-byte header followed by the canonical encoding of the caller's encryption
//! context, so decrypt needs no key id from the caller and any changed byte, or another context,
//! fails authentication.

use crate::aead::{AeadAlg, AeadKey, NONCE_LEN, TAG_LEN, random_nonce};
use crate::error::CryptoError;
use std::collections::BTreeMap;
use uuid::Uuid;

const MAGIC: &[u8; 2] = b"sv";
const FORMAT_V1: u8 = 1;
pub const HEADER_LEN: usize = 36;

/// Caller-supplied encryption context: authenticated, not encrypted, never stored.
pub type EncryptionContext = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub alg: AeadAlg,
    pub key_id: Uuid,
    pub key_version: u32,
    pub nonce: [u8; NONCE_LEN],
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(MAGIC);
        h[2] = FORMAT_V1;
        h[3] = match self.alg {
            AeadAlg::Aes256Gcm => 1,
            AeadAlg::ChaCha20Poly1305 => 2,
        };
        h[4..20].copy_from_slice(self.key_id.as_bytes());
        h[20..24].copy_from_slice(&self.key_version.to_be_bytes());
        h[24..36].copy_from_slice(&self.nonce);
        h
    }

    /// Parses the header of a ciphertext; rejects anything that is not a complete v1 envelope.
    pub fn parse(ciphertext: &[u8]) -> Result<Header, CryptoError> {
        if ciphertext.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::MalformedCiphertext("too short"));
        }
        if &ciphertext[0..2] != MAGIC {
            return Err(CryptoError::MalformedCiphertext("not a Sovra ciphertext"));
        }
        if ciphertext[2] != FORMAT_V1 {
            return Err(CryptoError::MalformedCiphertext("unknown format version"));
        }
        let alg = match ciphertext[3] {
            1 => AeadAlg::Aes256Gcm,
            2 => AeadAlg::ChaCha20Poly1305,
            _ => return Err(CryptoError::MalformedCiphertext("unknown algorithm")),
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&ciphertext[4..20]);
        let mut ver = [0u8; 4];
        ver.copy_from_slice(&ciphertext[20..24]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&ciphertext[24..36]);
        let key_version = u32::from_be_bytes(ver);
        if key_version == 0 {
            return Err(CryptoError::MalformedCiphertext("key version 0"));
        }
        Ok(Header {
            alg,
            key_id: Uuid::from_bytes(id),
            key_version,
            nonce,
        })
    }
}

/// Canonical, unambiguous encoding of a context: entries in key order, each part
/// length-prefixed.
pub fn encode_context(ctx: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
    for (k, v) in ctx {
        for part in [k.as_bytes(), v.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn aad(header: &[u8; HEADER_LEN], ctx: &EncryptionContext) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(&encode_context(ctx));
    aad
}

pub fn seal(
    key: &AeadKey,
    key_id: Uuid,
    key_version: u32,
    plaintext: &[u8],
    ctx: &EncryptionContext,
) -> Result<Vec<u8>, CryptoError> {
    seal_with_nonce(key, random_nonce()?, key_id, key_version, plaintext, ctx)
}

/// [`seal`] with a given nonce, for the known-answer vectors of the format
/// (docs/formats.md). A nonce must never repeat under one key: product code calls [`seal`].
#[doc(hidden)]
pub fn seal_with_nonce(
    key: &AeadKey,
    nonce: [u8; NONCE_LEN],
    key_id: Uuid,
    key_version: u32,
    plaintext: &[u8],
    ctx: &EncryptionContext,
) -> Result<Vec<u8>, CryptoError> {
    let header = Header {
        alg: key.alg(),
        key_id,
        key_version,
        nonce,
    }
    .to_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&header);
    let mut body = zeroize::Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    body.extend_from_slice(plaintext);
    key.seal_in_place(nonce, &aad(&header, ctx), &mut body)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens a ciphertext whose header was parsed with [`Header::parse`] and whose key the caller
/// looked up from it.
pub fn open(
    key: &AeadKey,
    ciphertext: &[u8],
    ctx: &EncryptionContext,
) -> Result<Vec<u8>, CryptoError> {
    let header = Header::parse(ciphertext)?;
    if header.alg != key.alg() {
        return Err(CryptoError::Decrypt);
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&ciphertext[..HEADER_LEN]);
    key.open(header.nonce, &aad(&h, ctx), &ciphertext[HEADER_LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn roundtrip_and_every_altered_byte_fails() {
        let key = AeadKey::new(AeadAlg::Aes256Gcm, &[3u8; 32]).unwrap();
        let id = Uuid::new_v4();
        let c = ctx(&[("app", "billing")]);
        let ct = seal(&key, id, 4, b"payload", &c).unwrap();
        let h = Header::parse(&ct).unwrap();
        assert_eq!((h.key_id, h.key_version), (id, 4));
        assert_eq!(open(&key, &ct, &c).unwrap(), b"payload");
        for i in 0..ct.len() {
            let mut t = ct.clone();
            t[i] ^= 0x01;
            assert!(open(&key, &t, &c).is_err(), "byte {i}");
        }
        for len in 0..ct.len() {
            assert!(open(&key, &ct[..len], &c).is_err(), "truncated to {len}");
        }
        assert_eq!(
            open(&key, &ct, &ctx(&[("app", "other")])),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            open(&key, &ct, &EncryptionContext::new()),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn context_encoding_is_unambiguous() {
        assert_ne!(
            encode_context(&ctx(&[("a", "bc")])),
            encode_context(&ctx(&[("ab", "c")]))
        );
        assert_ne!(encode_context(&ctx(&[])), encode_context(&ctx(&[("", "")])));
    }

    #[test]
    fn header_parse_rejects_garbage() {
        assert!(Header::parse(b"").is_err());
        assert!(Header::parse(&[0u8; 100]).is_err());
    }
}
