//! HKDF-SHA256 (RFC 5869, aws-lc-rs): keys for one purpose derived from a key held for
//! another, so that the derived key exists exactly as long as its source (the row-MAC key
//! exists only while the root key is unsealed).

use crate::error::CryptoError;
use crate::secret::SecretBytes;
use aws_lc_rs::hkdf;

/// The longest output HKDF-SHA256 can give (255 blocks of 32 bytes).
pub const MAX_OUTPUT_LEN: usize = 255 * 32;

/// `len` bytes of HKDF-SHA256 output (extract with `salt`, expand with `info`).
pub fn hkdf_sha256(
    salt: &[u8],
    ikm: &SecretBytes,
    info: &[u8],
    len: usize,
) -> Result<SecretBytes, CryptoError> {
    if len == 0 || len > MAX_OUTPUT_LEN {
        return Err(CryptoError::InvalidInput(format!(
            "HKDF output length must be 1 to {MAX_OUTPUT_LEN} bytes"
        )));
    }
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm.expose());
    let info = [info];
    let okm = prk
        .expand(&info, Len(len))
        .map_err(|_| CryptoError::Internal)?;
    let mut out = zeroize::Zeroizing::new(vec![0u8; len]);
    okm.fill(&mut out).map_err(|_| CryptoError::Internal)?;
    Ok(SecretBytes::from_slice(&out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 5869, appendix A: test cases 1 (basic), 2 (long inputs) and 3 (empty salt and info).
    #[test]
    fn rfc5869_vectors() {
        let long = |start: u8| (start..=start.wrapping_add(0x4f)).collect::<Vec<u8>>();
        /// Input key material, salt, info, the expected output (hex).
        type Case = (Vec<u8>, Vec<u8>, Vec<u8>, &'static str);
        let cases: [Case; 3] = [
            (
                hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
                hex("000102030405060708090a0b0c"),
                hex("f0f1f2f3f4f5f6f7f8f9"),
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
            ),
            (
                long(0x00),
                long(0x60),
                long(0xb0),
                "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
            ),
            (
                hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
                Vec::new(),
                Vec::new(),
                "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
            ),
        ];
        for (ikm, salt, info, okm) in cases {
            let okm = hex(okm);
            let out = hkdf_sha256(&salt, &SecretBytes::new(ikm), &info, okm.len()).unwrap();
            assert_eq!(out.expose(), okm.as_slice());
        }
    }

    #[test]
    fn refuses_impossible_lengths() {
        let ikm = SecretBytes::from_slice(&[7; 32]);
        assert!(hkdf_sha256(b"", &ikm, b"x", 0).is_err());
        assert!(hkdf_sha256(b"", &ikm, b"x", MAX_OUTPUT_LEN + 1).is_err());
        assert_eq!(
            hkdf_sha256(b"", &ikm, b"x", MAX_OUTPUT_LEN).unwrap().len(),
            MAX_OUTPUT_LEN
        );
    }
}
