//! Ed25519 signing against the known answers of RFC 8032, section 7.1 (TEST 1–3). Ed25519 is
//! deterministic, so Sovra's signature over a message must equal the RFC's byte for byte.
//! Wycheproof's Ed25519 vectors (tests/wycheproof.rs) check verification only: they carry no
//! private keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sovra_crypto::KeyType;
use sovra_crypto::SecretBytes;
use sovra_crypto::sign::{SignInput, SignatureAlgorithm, SigningKey, verify_spki};

/// RFC 8032 section 7.1: secret key (the 32-byte seed), public key, message, signature.
const VECTORS: [(&str, &str, &str, &str); 3] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
];

/// PKCS#8 v1 (RFC 8410) around a 32-byte Ed25519 seed: SEQ { INTEGER 0, SEQ { OID 1.3.101.112 },
/// OCTET STRING { OCTET STRING (32 bytes) } }.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// SubjectPublicKeyInfo prefix of an Ed25519 public key (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[test]
fn ed25519_signatures_equal_the_rfc_8032_answers() {
    for (i, (seed, public, msg, expected)) in VECTORS.iter().enumerate() {
        let pkcs8 = [PKCS8_V1_PREFIX.as_slice(), &hex::decode(seed).unwrap()].concat();
        let key = SigningKey::from_pkcs8(KeyType::Ed25519, &SecretBytes::new(pkcs8)).unwrap();
        let spki = key.public_key_spki_der().unwrap();
        let expected_spki = [SPKI_PREFIX.as_slice(), &hex::decode(public).unwrap()].concat();
        assert_eq!(spki, expected_spki, "TEST {}: public key", i + 1);
        let msg = hex::decode(msg).unwrap();
        let sig = key
            .sign(SignatureAlgorithm::Ed25519, SignInput::Message(&msg))
            .unwrap();
        assert_eq!(hex::encode(&sig), *expected, "TEST {}: signature", i + 1);
        let verified = verify_spki(
            SignatureAlgorithm::Ed25519,
            &spki,
            SignInput::Message(&msg),
            &sig,
        );
        assert!(verified.unwrap(), "TEST {}: verification", i + 1);
    }
}
