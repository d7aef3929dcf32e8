//! Asymmetric keys: generation (PKCS#8), signing of a message or a pre-computed digest,
//! verification and SPKI export. Signatures use standard encodings (Ed25519 raw, ECDSA DER,
//! RSA-PSS with salt length = digest length, PKCS#1 v1.5) so openssl verifies them.

use crate::error::CryptoError;
use crate::keytype::KeyType;
use crate::secret::SecretBytes;
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey,
};

/// A signature scheme offered by `sign`/`verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    Ed25519,
    EcdsaP256Sha256,
    RsaPssSha256,
    RsaPssSha384,
    RsaPssSha512,
    RsaPkcs1Sha256,
    RsaPkcs1Sha384,
    RsaPkcs1Sha512,
}

impl SignatureAlgorithm {
    pub const ALL: [SignatureAlgorithm; 8] = [
        SignatureAlgorithm::Ed25519,
        SignatureAlgorithm::EcdsaP256Sha256,
        SignatureAlgorithm::RsaPssSha256,
        SignatureAlgorithm::RsaPssSha384,
        SignatureAlgorithm::RsaPssSha512,
        SignatureAlgorithm::RsaPkcs1Sha256,
        SignatureAlgorithm::RsaPkcs1Sha384,
        SignatureAlgorithm::RsaPkcs1Sha512,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignatureAlgorithm::Ed25519 => "ed25519",
            SignatureAlgorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            SignatureAlgorithm::RsaPssSha256 => "rsa-pss-sha256",
            SignatureAlgorithm::RsaPssSha384 => "rsa-pss-sha384",
            SignatureAlgorithm::RsaPssSha512 => "rsa-pss-sha512",
            SignatureAlgorithm::RsaPkcs1Sha256 => "rsa-pkcs1-sha256",
            SignatureAlgorithm::RsaPkcs1Sha384 => "rsa-pkcs1-sha384",
            SignatureAlgorithm::RsaPkcs1Sha512 => "rsa-pkcs1-sha512",
        }
    }

    /// The algorithm of this name (`ed25519`, `ecdsa-p256-sha256`, `rsa-pss-sha256`, …).
    pub fn parse(name: &str) -> Result<Self, CryptoError> {
        SignatureAlgorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| CryptoError::InvalidInput("unknown signature algorithm".into()))
    }

    /// The algorithm the caller asked for, or the key type's default, checked against the key
    /// type.
    pub fn resolve(key_type: KeyType, requested: Option<Self>) -> Result<Self, CryptoError> {
        let alg = match requested {
            None => match key_type {
                KeyType::Ed25519 => SignatureAlgorithm::Ed25519,
                KeyType::EcdsaP256 => SignatureAlgorithm::EcdsaP256Sha256,
                KeyType::Rsa3072 | KeyType::Rsa4096 => SignatureAlgorithm::RsaPssSha256,
                _ => {
                    return Err(CryptoError::Unsupported(format!(
                        "{key_type} keys do not sign"
                    )));
                }
            },
            Some(alg) => alg,
        };
        let fits = match alg {
            SignatureAlgorithm::Ed25519 => key_type == KeyType::Ed25519,
            SignatureAlgorithm::EcdsaP256Sha256 => key_type == KeyType::EcdsaP256,
            _ => matches!(key_type, KeyType::Rsa3072 | KeyType::Rsa4096),
        };
        if !fits {
            return Err(CryptoError::InvalidInput(format!(
                "signature algorithm {} does not fit a {key_type} key",
                alg.as_str()
            )));
        }
        Ok(alg)
    }

    /// The hash a caller-supplied digest must come from; `None` for Ed25519 (pure EdDSA).
    pub fn digest_algorithm(self) -> Option<&'static digest::Algorithm> {
        match self {
            SignatureAlgorithm::Ed25519 => None,
            SignatureAlgorithm::EcdsaP256Sha256
            | SignatureAlgorithm::RsaPssSha256
            | SignatureAlgorithm::RsaPkcs1Sha256 => Some(&digest::SHA256),
            SignatureAlgorithm::RsaPssSha384 | SignatureAlgorithm::RsaPkcs1Sha384 => {
                Some(&digest::SHA384)
            }
            SignatureAlgorithm::RsaPssSha512 | SignatureAlgorithm::RsaPkcs1Sha512 => {
                Some(&digest::SHA512)
            }
        }
    }

    fn rsa_encoding(self) -> Option<&'static dyn signature::RsaEncoding> {
        Some(match self {
            SignatureAlgorithm::RsaPssSha256 => &signature::RSA_PSS_SHA256,
            SignatureAlgorithm::RsaPssSha384 => &signature::RSA_PSS_SHA384,
            SignatureAlgorithm::RsaPssSha512 => &signature::RSA_PSS_SHA512,
            SignatureAlgorithm::RsaPkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
            SignatureAlgorithm::RsaPkcs1Sha384 => &signature::RSA_PKCS1_SHA384,
            SignatureAlgorithm::RsaPkcs1Sha512 => &signature::RSA_PKCS1_SHA512,
            _ => return None,
        })
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            SignatureAlgorithm::Ed25519 => &signature::ED25519,
            SignatureAlgorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
            SignatureAlgorithm::RsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
            SignatureAlgorithm::RsaPssSha384 => &signature::RSA_PSS_2048_8192_SHA384,
            SignatureAlgorithm::RsaPssSha512 => &signature::RSA_PSS_2048_8192_SHA512,
            SignatureAlgorithm::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            SignatureAlgorithm::RsaPkcs1Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            SignatureAlgorithm::RsaPkcs1Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        }
    }
}

/// What is signed: the message itself, or the caller's digest of it.
#[derive(Debug, Clone, Copy)]
pub enum SignInput<'a> {
    Message(&'a [u8]),
    Digest(&'a [u8]),
}

pub(crate) fn generate_pkcs8(key_type: KeyType) -> Result<SecretBytes, CryptoError> {
    let der = match key_type {
        KeyType::Ed25519 => Ed25519KeyPair::generate()?.to_pkcs8()?.as_ref().to_vec(),
        KeyType::EcdsaP256 => EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)?
            .to_pkcs8v1()?
            .as_ref()
            .to_vec(),
        KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let size = if key_type == KeyType::Rsa3072 {
                KeySize::Rsa3072
            } else {
                KeySize::Rsa4096
            };
            let kp = RsaKeyPair::generate(size)?;
            AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp)?
                .as_ref()
                .to_vec()
        }
        _ => {
            return Err(CryptoError::Unsupported(format!(
                "{key_type} is not an asymmetric key type"
            )));
        }
    };
    Ok(SecretBytes::new(der))
}

/// A parsed private key, ready to sign.
pub enum SigningKey {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

impl SigningKey {
    pub fn from_pkcs8(key_type: KeyType, pkcs8: &SecretBytes) -> Result<Self, CryptoError> {
        let der = pkcs8.expose();
        Ok(match key_type {
            KeyType::Ed25519 => SigningKey::Ed25519(
                Ed25519KeyPair::from_pkcs8(der).map_err(|_| CryptoError::InvalidKey)?,
            ),
            KeyType::EcdsaP256 => SigningKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der)
                    .map_err(|_| CryptoError::InvalidKey)?,
            ),
            KeyType::Rsa3072 | KeyType::Rsa4096 => {
                SigningKey::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|_| CryptoError::InvalidKey)?)
            }
            _ => {
                return Err(CryptoError::Unsupported(format!(
                    "{key_type} keys do not sign"
                )));
            }
        })
    }

    pub fn sign(
        &self,
        alg: SignatureAlgorithm,
        input: SignInput<'_>,
    ) -> Result<Vec<u8>, CryptoError> {
        let digest = match input {
            SignInput::Message(_) => None,
            SignInput::Digest(d) => {
                let hash = alg.digest_algorithm().ok_or_else(|| {
                    CryptoError::Unsupported("ed25519 signs messages, not digests".into())
                })?;
                Some(Digest::import_less_safe(d, hash).map_err(|_| {
                    CryptoError::InvalidInput(format!(
                        "digest must be {} bytes for {}",
                        hash.output_len(),
                        alg.as_str()
                    ))
                })?)
            }
        };
        match (self, alg) {
            (SigningKey::Ed25519(kp), SignatureAlgorithm::Ed25519) => match input {
                SignInput::Message(m) => Ok(kp.sign(m).as_ref().to_vec()),
                SignInput::Digest(_) => Err(CryptoError::Unsupported(
                    "ed25519 signs messages, not digests".into(),
                )),
            },
            (SigningKey::Ecdsa(kp), SignatureAlgorithm::EcdsaP256Sha256) => {
                let sig = match (input, digest) {
                    (_, Some(d)) => kp.sign_digest(&d)?,
                    (SignInput::Message(m), None) => kp.sign(&SystemRandom::new(), m)?,
                    (SignInput::Digest(_), None) => return Err(CryptoError::Internal),
                };
                Ok(sig.as_ref().to_vec())
            }
            (SigningKey::Rsa(kp), _) => {
                let enc = alg.rsa_encoding().ok_or(CryptoError::Internal)?;
                let mut sig = vec![0u8; kp.public_modulus_len()];
                match (input, digest) {
                    (_, Some(d)) => kp.sign_digest(enc, &d, &mut sig)?,
                    (SignInput::Message(m), None) => {
                        kp.sign(enc, &SystemRandom::new(), m, &mut sig)?
                    }
                    (SignInput::Digest(_), None) => return Err(CryptoError::Internal),
                }
                Ok(sig)
            }
            _ => Err(CryptoError::InvalidInput(format!(
                "{} does not fit this key",
                alg.as_str()
            ))),
        }
    }

    pub fn verify(
        &self,
        alg: SignatureAlgorithm,
        input: SignInput<'_>,
        sig: &[u8],
    ) -> Result<bool, CryptoError> {
        verify_raw(alg, self.public_key_raw(), input, sig)
    }

    /// The public key in the form aws-lc-rs verifies with.
    fn public_key_raw(&self) -> &[u8] {
        match self {
            SigningKey::Ed25519(kp) => kp.public_key().as_ref(),
            SigningKey::Ecdsa(kp) => kp.public_key().as_ref(),
            SigningKey::Rsa(kp) => kp.public_key().as_ref(),
        }
    }

    /// SubjectPublicKeyInfo DER.
    pub fn public_key_spki_der(&self) -> Result<Vec<u8>, CryptoError> {
        let der: PublicKeyX509Der<'static> = match self {
            SigningKey::Ed25519(kp) => kp.public_key().as_der()?,
            SigningKey::Ecdsa(kp) => kp.public_key().as_der()?,
            SigningKey::Rsa(kp) => kp.public_key().as_der()?,
        };
        Ok(der.as_ref().to_vec())
    }
}

fn verify_raw(
    alg: SignatureAlgorithm,
    public_key: &[u8],
    input: SignInput<'_>,
    sig: &[u8],
) -> Result<bool, CryptoError> {
    let pk = UnparsedPublicKey::new(alg.verification(), public_key);
    match input {
        SignInput::Message(m) => Ok(pk.verify(m, sig).is_ok()),
        SignInput::Digest(d) => {
            let hash = alg.digest_algorithm().ok_or_else(|| {
                CryptoError::Unsupported("ed25519 signs messages, not digests".into())
            })?;
            let digest = Digest::import_less_safe(d, hash).map_err(|_| {
                CryptoError::InvalidInput(format!(
                    "digest must be {} bytes for {}",
                    hash.output_len(),
                    alg.as_str()
                ))
            })?;
            Ok(pk.verify_digest(&digest, sig).is_ok())
        }
    }
}

/// Verifies with a public key given as SPKI DER (used by the known-answer tests).
pub fn verify_spki(
    alg: SignatureAlgorithm,
    spki_der: &[u8],
    input: SignInput<'_>,
    sig: &[u8],
) -> Result<bool, CryptoError> {
    let parsed = signature::ParsedPublicKey::new(alg.verification(), spki_der)
        .map_err(|_| CryptoError::InvalidKey)?;
    match input {
        SignInput::Message(m) => Ok(parsed.verify_sig(m, sig).is_ok()),
        SignInput::Digest(_) => Err(CryptoError::Unsupported(
            "digest verification with SPKI".into(),
        )),
    }
}

/// PEM armour ("-----BEGIN {label}-----", base64 in 64-column lines).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asymmetric_type_signs_and_verifies_message_and_digest() {
        for kt in [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::Rsa3072] {
            let sk = SigningKey::from_pkcs8(kt, &kt.generate().unwrap()).unwrap();
            let algs: Vec<_> = SignatureAlgorithm::ALL
                .into_iter()
                .filter(|a| SignatureAlgorithm::resolve(kt, Some(*a)).is_ok())
                .collect();
            assert!(!algs.is_empty());
            for alg in algs {
                let sig = sk.sign(alg, SignInput::Message(b"msg")).unwrap();
                assert!(
                    sk.verify(alg, SignInput::Message(b"msg"), &sig).unwrap(),
                    "{alg:?}"
                );
                assert!(
                    !sk.verify(alg, SignInput::Message(b"msh"), &sig).unwrap(),
                    "{alg:?}"
                );
                if let Some(h) = alg.digest_algorithm() {
                    let d = digest::digest(h, b"msg");
                    // A signature over the message verifies as a signature over its digest.
                    assert!(sk.verify(alg, SignInput::Digest(d.as_ref()), &sig).unwrap());
                    let sig2 = sk.sign(alg, SignInput::Digest(d.as_ref())).unwrap();
                    assert!(sk.verify(alg, SignInput::Message(b"msg"), &sig2).unwrap());
                    assert!(sk.sign(alg, SignInput::Digest(&d.as_ref()[1..])).is_err());
                }
                let spki = sk.public_key_spki_der().unwrap();
                assert!(verify_spki(alg, &spki, SignInput::Message(b"msg"), &sig).unwrap());
            }
        }
    }

    #[test]
    fn algorithm_must_fit_key_type() {
        let pss = SignatureAlgorithm::parse("rsa-pss-sha256").unwrap();
        assert!(SignatureAlgorithm::resolve(KeyType::Ed25519, Some(pss)).is_err());
        assert!(SignatureAlgorithm::resolve(KeyType::Aes256Gcm, None).is_err());
        assert!(SignatureAlgorithm::parse("nope").is_err());
        for alg in SignatureAlgorithm::ALL {
            assert_eq!(SignatureAlgorithm::parse(alg.as_str()).unwrap(), alg);
        }
        assert_eq!(
            SignatureAlgorithm::resolve(KeyType::Rsa4096, None).unwrap(),
            SignatureAlgorithm::RsaPssSha256
        );
    }
}
