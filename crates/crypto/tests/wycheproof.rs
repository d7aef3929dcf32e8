//! Wycheproof known-answer tests run through Sovra's public API.
//!
//! Every vector whose parameters Sovra supports is run; the rest are counted as skipped. Each
//! test asserts the exact number of vectors run, so a filter that silently drops vectors (or a
//! data set that changes) fails loudly, and collects every mismatch before failing so one run
//! shows all of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sovra_crypto::aead::{AeadAlg, AeadKey, NONCE_LEN};
use sovra_crypto::mac::MacKey;
use sovra_crypto::sign::{SignInput, SignatureAlgorithm, verify_spki};
use wycheproof::{HashFunction, Mgf, TestResult};

/// Counts of one algorithm's vectors, and the mismatches found.
#[derive(Default)]
struct Tally {
    run: usize,
    skipped: usize,
    valid: usize,
    invalid: usize,
    acceptable: usize,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, result: TestResult) {
        self.run += 1;
        match result {
            TestResult::Valid => self.valid += 1,
            TestResult::Invalid => self.invalid += 1,
            TestResult::Acceptable => self.acceptable += 1,
        }
    }

    fn fail(&mut self, what: &str, tc_id: usize, why: &str) {
        self.failures.push(format!("{what} tcId {tc_id}: {why}"));
    }

    /// Prints the counts and fails on any mismatch or on a run count other than `expected_run`.
    fn finish(self, what: &str, expected_run: usize) {
        eprintln!(
            "{what}: run {} (valid {}, invalid {}, acceptable {}), skipped {}",
            self.run, self.valid, self.invalid, self.acceptable, self.skipped
        );
        assert!(
            self.failures.is_empty(),
            "{what}: {} check(s) failed over {} vectors:\n{}",
            self.failures.len(),
            self.run,
            self.failures.join("\n")
        );
        assert!(self.run > 0, "{what}: no vector ran");
        assert!(
            self.valid > 0 && self.invalid > 0,
            "{what}: need both valid and invalid vectors"
        );
        assert_eq!(
            self.run, expected_run,
            "{what}: unexpected number of vectors run"
        );
    }
}

fn run_aead(name: wycheproof::aead::TestName, alg: AeadAlg) -> Tally {
    let set = wycheproof::aead::TestSet::load(name).expect("load AEAD vectors");
    let mut tally = Tally::default();
    for group in set.test_groups {
        // Sovra: 256-bit keys, 96-bit nonces, 128-bit tags.
        let supported = group.key_size == 256 && group.nonce_size == 96 && group.tag_size == 128;
        for t in group.tests {
            if !supported {
                tally.skipped += 1;
                continue;
            }
            tally.record(t.result);
            let key = AeadKey::new(alg, &t.key).expect("32-byte key");
            let nonce: [u8; NONCE_LEN] = t.nonce.as_slice().try_into().expect("96-bit nonce");
            let ct_tag = [t.ct.as_slice(), t.tag.as_slice()].concat();
            let opened = key.open(nonce, &t.aad, &ct_tag);
            match t.result {
                TestResult::Invalid => {
                    if opened.is_ok() {
                        tally.fail("open", t.tc_id, "invalid ciphertext opened");
                    }
                }
                TestResult::Valid | TestResult::Acceptable => {
                    if opened.as_deref() != Ok(t.pt.as_slice()) {
                        tally.fail("open", t.tc_id, &format!("got {opened:?}"));
                    }
                    let mut buf = t.pt.to_vec();
                    key.seal_in_place(nonce, &t.aad, &mut buf).expect("seal");
                    if buf != ct_tag {
                        tally.fail("seal", t.tc_id, "ciphertext || tag differs");
                    }
                }
            }
        }
    }
    tally
}

#[test]
fn aes_256_gcm() {
    run_aead(wycheproof::aead::TestName::AesGcm, AeadAlg::Aes256Gcm).finish("AES-256-GCM", 66);
}

#[test]
fn chacha20_poly1305() {
    run_aead(
        wycheproof::aead::TestName::ChaCha20Poly1305,
        AeadAlg::ChaCha20Poly1305,
    )
    .finish("ChaCha20-Poly1305", 316);
}

#[test]
fn hmac_sha256() {
    let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::HmacSha256)
        .expect("load HMAC vectors");
    let mut tally = Tally::default();
    for group in set.test_groups {
        for t in group.tests {
            if group.tag_size != 256 {
                // Truncated tags: Sovra only produces and checks full 32-byte tags.
                tally.skipped += 1;
                continue;
            }
            tally.record(t.result);
            let key = MacKey::new(&t.key).expect("non-empty key");
            let verified = key.verify(&t.msg, &t.tag);
            match t.result {
                TestResult::Invalid if verified => {
                    tally.fail("verify", t.tc_id, "invalid tag verified")
                }
                TestResult::Invalid => {}
                _ => {
                    if !verified {
                        tally.fail("verify", t.tc_id, "valid tag rejected");
                    }
                    if key.sign(&t.msg) != t.tag.as_slice() {
                        tally.fail("sign", t.tc_id, "tag differs");
                    }
                }
            }
        }
    }
    tally.finish("HMAC-SHA256", 87);
}

/// Verifies one signature vector with `verify_spki`. A key that does not parse counts as a
/// rejection, which is only right for invalid vectors.
fn check_signature(
    tally: &mut Tally,
    alg: SignatureAlgorithm,
    spki: &[u8],
    t: (usize, TestResult, &[u8], &[u8]),
) {
    let (tc_id, result, msg, sig) = t;
    tally.record(result);
    let outcome = verify_spki(alg, spki, SignInput::Message(msg), sig);
    match (result, outcome) {
        (TestResult::Valid, Ok(true)) | (TestResult::Invalid, Ok(false) | Err(_)) => {}
        (TestResult::Acceptable, _) => {}
        (TestResult::Valid, other) => tally.fail(alg.as_str(), tc_id, &format!("valid: {other:?}")),
        (TestResult::Invalid, Ok(true)) => {
            tally.fail(alg.as_str(), tc_id, "invalid signature verified")
        }
    }
}

#[test]
fn ecdsa_p256_sha256_der() {
    let set = wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256)
        .expect("load ECDSA vectors");
    let mut tally = Tally::default();
    for group in set.test_groups {
        assert_eq!(group.test_type, wycheproof::ecdsa::TestGroupTypeId::Ecdsa);
        assert_eq!(group.key.curve, wycheproof::EllipticCurve::Secp256r1);
        assert_eq!(group.hash, HashFunction::Sha2_256);
        for t in &group.tests {
            let v = (t.tc_id, t.result, t.msg.as_slice(), t.sig.as_slice());
            check_signature(
                &mut tally,
                SignatureAlgorithm::EcdsaP256Sha256,
                &group.der,
                v,
            );
        }
    }
    tally.finish("ECDSA P-256 SHA-256", 471);
}

/// SubjectPublicKeyInfo prefix of an Ed25519 key (RFC 8410): SEQ { SEQ { OID 1.3.101.112 },
/// BIT STRING (32 bytes) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[test]
fn ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519)
        .expect("load Ed25519 vectors");
    let mut tally = Tally::default();
    for group in set.test_groups {
        // verify_spki takes SPKI; build it from the raw key and check it against the vector's.
        let spki = [ED25519_SPKI_PREFIX.as_slice(), group.key.pk.as_slice()].concat();
        assert_eq!(spki, group.der.as_slice(), "Ed25519 SPKI of the raw key");
        for t in &group.tests {
            let v = (t.tc_id, t.result, t.msg.as_slice(), t.sig.as_slice());
            check_signature(&mut tally, SignatureAlgorithm::Ed25519, &spki, v);
        }
    }
    tally.finish("Ed25519", 150);
}

/// Sovra's RSA algorithm for a hash, and the hash's output length.
fn rsa_alg(pss: bool, hash: HashFunction) -> Option<(SignatureAlgorithm, usize)> {
    use SignatureAlgorithm::*;
    Some(match (pss, hash) {
        (true, HashFunction::Sha2_256) => (RsaPssSha256, 32),
        (true, HashFunction::Sha2_384) => (RsaPssSha384, 48),
        (true, HashFunction::Sha2_512) => (RsaPssSha512, 64),
        (false, HashFunction::Sha2_256) => (RsaPkcs1Sha256, 32),
        (false, HashFunction::Sha2_384) => (RsaPkcs1Sha384, 48),
        (false, HashFunction::Sha2_512) => (RsaPkcs1Sha512, 64),
        _ => return None,
    })
}

#[test]
fn rsa_pss() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let mut tally = Tally::default();
    for name in TestName::all() {
        let set = TestSet::load(name).expect("load RSA-PSS vectors");
        for group in set.test_groups {
            // Sovra: MGF1 with the message hash, salt length = hash length, 2048..4096-bit
            // keys. Both key encodings are run: rsaEncryption SPKI and id-RSASSA-PSS SPKI whose
            // parameters (the "_params" files) equal the group's.
            let alg = rsa_alg(true, group.hash).filter(|(_, hash_len)| {
                group.mgf == Mgf::Mgf1
                    && group.mgf_hash == Some(group.hash)
                    && group.salt_size == *hash_len
                    && (2048..=4096).contains(&group.key_size)
            });
            let Some((alg, _)) = alg else {
                tally.skipped += group.tests.len();
                continue;
            };
            for t in &group.tests {
                let v = (t.tc_id, t.result, t.msg.as_slice(), t.sig.as_slice());
                check_signature(&mut tally, alg, &group.der, v);
            }
        }
    }
    tally.finish("RSA-PSS", 1186);
}

#[test]
fn rsa_pkcs1_v15() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let mut tally = Tally::default();
    for name in TestName::all() {
        let set = TestSet::load(name).expect("load RSA PKCS#1 vectors");
        for group in set.test_groups {
            // Sovra verifies 2048..8192-bit keys with SHA-256/384/512.
            let alg =
                rsa_alg(false, group.hash).filter(|_| (2048..=8192).contains(&group.key_size));
            let Some((alg, _)) = alg else {
                tally.skipped += group.tests.len();
                continue;
            };
            for t in &group.tests {
                let v = (t.tc_id, t.result, t.msg.as_slice(), t.sig.as_slice());
                check_signature(&mut tally, alg, &group.der, v);
            }
        }
    }
    tally.finish("RSA PKCS#1 v1.5", 3106);
}
