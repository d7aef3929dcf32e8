//! Interoperability with independent implementations: Python's `cryptography` (AEAD envelope
//! body, HMAC, HKDF) and the `openssl` command line (signatures). Both tools are required: a missing
//! one fails the test rather than skipping it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sovra_crypto::KeyType;
use sovra_crypto::aead::{AeadAlg, AeadKey};
use sovra_crypto::envelope::{self, EncryptionContext, Header};
use sovra_crypto::kdf::hkdf_sha256;
use sovra_crypto::mac::MacKey;
use sovra_crypto::sign::{SignInput, SignatureAlgorithm, SigningKey, pem_encode};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use uuid::Uuid;

/// The Python side. It encodes the context itself from the documented format (entry count,
/// then each key and value, all u32 big-endian length-prefixed, in key order) and checks the
/// documented header fields, so nothing of Sovra's encoding is reused.
const PY: &str = r#"
import sys, json, struct, uuid, hmac, hashlib
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives import hashes, hmac as chmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

def context(ctx):
    out = struct.pack(">I", len(ctx))
    for k in sorted(ctx):
        for part in (k.encode(), ctx[k].encode()):
            out += struct.pack(">I", len(part)) + part
    return out

AEADS = {"aes-256-gcm": (1, AESGCM), "chacha20-poly1305": (2, ChaCha20Poly1305)}
mode, args = sys.argv[1], sys.argv[2:]
if mode == "hmac":
    key, msg = bytes.fromhex(args[0]), bytes.fromhex(args[1])
    tag = hmac.new(key, msg, hashlib.sha256).digest()
    h = chmac.HMAC(key, hashes.SHA256())
    h.update(msg)
    assert h.finalize() == tag
    print(tag.hex())
elif mode == "hkdf":
    salt, ikm, info, length = bytes.fromhex(args[0]), bytes.fromhex(args[1]), bytes.fromhex(args[2]), int(args[3])
    print(HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm).hex())
else:
    alg_id, cls = AEADS[args[0]]
    key, data, ctx = bytes.fromhex(args[1]), bytes.fromhex(args[2]), json.loads(args[3])
    key_id, version = uuid.UUID(args[4]), int(args[5])
    header = data[:36]
    assert header[:4] == b"sv" + bytes([1, alg_id]), header[:4]
    assert header[4:20] == key_id.bytes and header[20:24] == struct.pack(">I", version)
    nonce, aad = header[24:36], header + context(ctx)
    if mode == "open":
        print(cls(key).decrypt(nonce, data[36:], aad).hex())
    elif mode == "seal":
        print(cls(key).encrypt(nonce, bytes.fromhex(args[6]), aad).hex())
"#;

/// Runs a required external tool; panics (fails the test) if it cannot be started.
fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}`, which this test requires: {e}"))
}

/// Runs the Python side and returns its stdout, failing on any Python error.
fn python(args: &[&str]) -> String {
    let out = run("python3", &[&["-c", PY], args].concat());
    assert!(
        out.status.success(),
        "python3 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sovra-crypto-interop-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            Uuid::new_v4()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).expect("create temp dir");
        TempDir(path)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn test_context() -> EncryptionContext {
    [("app", "billing"), ("Zone", ""), ("é-key", "välue ✓")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

const AEADS: [(KeyType, AeadAlg); 2] = [
    (KeyType::Aes256Gcm, AeadAlg::Aes256Gcm),
    (KeyType::ChaCha20Poly1305, AeadAlg::ChaCha20Poly1305),
];

#[test]
fn sovra_envelope_opens_in_python() {
    let ctx = test_context();
    let ctx_json = serde_json::to_string(&ctx).expect("json");
    for (kt, alg) in AEADS {
        let raw = kt.generate().expect("key");
        let key = AeadKey::new(alg, raw.expose()).expect("aead key");
        let key_id = Uuid::new_v4();
        for plaintext in [&b""[..], b"a secret payload \x00\xff"] {
            let ct = envelope::seal(&key, key_id, 7, plaintext, &ctx).expect("seal");
            let args = [
                "open",
                kt.as_str(),
                &hex::encode(raw.expose()),
                &hex::encode(&ct),
                &ctx_json,
                &key_id.to_string(),
                "7",
            ];
            assert_eq!(python(&args), hex::encode(plaintext), "{kt}");
        }
    }
}

#[test]
fn python_body_opens_with_envelope_open() {
    let ctx = test_context();
    let ctx_json = serde_json::to_string(&ctx).expect("json");
    for (kt, alg) in AEADS {
        let raw = kt.generate().expect("key");
        let key = AeadKey::new(alg, raw.expose()).expect("aead key");
        let header = Header {
            alg,
            key_id: Uuid::new_v4(),
            key_version: 0x0102_0304,
            nonce: sovra_crypto::aead::random_nonce().expect("nonce"),
        };
        let plaintext = b"encrypted by python";
        let body = python(&[
            "seal",
            kt.as_str(),
            &hex::encode(raw.expose()),
            &hex::encode(header.to_bytes()),
            &ctx_json,
            &header.key_id.to_string(),
            &header.key_version.to_string(),
            &hex::encode(plaintext),
        ]);
        let ct = [header.to_bytes().to_vec(), hex::decode(body).expect("hex")].concat();
        assert_eq!(
            envelope::open(&key, &ct, &ctx).expect("open"),
            plaintext,
            "{kt}"
        );
        assert!(
            envelope::open(&key, &ct, &EncryptionContext::new()).is_err(),
            "{kt}"
        );
    }
}

/// The derivation of the row-MAC key from the root key (`sovra/row-mac/v1`, no salt) and
/// other shapes: Sovra's HKDF gives what `cryptography`'s does.
#[test]
fn hkdf_sha256_matches_python() {
    /// Salt, input key material, info, output length.
    type Case<'a> = (&'a [u8], Vec<u8>, &'a [u8], usize);
    let cases: [Case; 4] = [
        (b"", vec![0x42; 32], b"sovra/row-mac/v1", 32),
        (b"salt", (0u8..=80).collect(), b"", 42),
        (&[0u8; 32], vec![1; 16], b"info", 255),
        (b"s", vec![9; 64], &[0xff; 100], 1),
    ];
    for (salt, ikm, info, len) in cases {
        let ours = hkdf_sha256(
            salt,
            &sovra_crypto::SecretBytes::new(ikm.clone()),
            info,
            len,
        )
        .expect("hkdf");
        let theirs = python(&[
            "hkdf",
            &hex::encode(salt),
            &hex::encode(&ikm),
            &hex::encode(info),
            &len.to_string(),
        ]);
        assert_eq!(hex::encode(ours.expose()), theirs, "len {len}");
    }
}

#[test]
fn hmac_sha256_matches_python() {
    let keys = [
        vec![0x0b; 20],
        vec![0x5a; 32],
        (0u8..=130).collect::<Vec<_>>(),
    ];
    let messages = [&b""[..], b"Hi There", &[0xa5; 1000]];
    for key in &keys {
        let mac = MacKey::new(key).expect("mac key");
        for msg in messages {
            let expected = python(&["hmac", &hex::encode(key), &hex::encode(msg)]);
            assert_eq!(
                hex::encode(mac.sign(msg)),
                expected,
                "key len {}",
                key.len()
            );
        }
    }
}

/// Whether `openssl` accepts `sig` over `msg` under the SPKI in `pem`.
fn openssl_verifies(
    dir: &TempDir,
    alg: SignatureAlgorithm,
    pem: &Path,
    msg: &Path,
    sig: &[u8],
) -> bool {
    let sig_path = dir.write("sig.bin", sig);
    let [pem, msg, sig] = [pem, msg, &sig_path].map(|p| p.to_str().expect("utf-8 temp path"));
    let mut args = match alg {
        SignatureAlgorithm::Ed25519 => vec![
            "pkeyutl", "-verify", "-pubin", "-inkey", pem, "-rawin", "-in", msg, "-sigfile", sig,
        ],
        _ => vec!["dgst", "-sha256", "-verify", pem, "-signature", sig],
    };
    if alg == SignatureAlgorithm::RsaPssSha256 {
        args.extend([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ]);
    }
    if alg != SignatureAlgorithm::Ed25519 {
        args.push(msg);
    }
    let out = run("openssl", &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success() && stdout.contains("Verified")
}

#[test]
fn sovra_signatures_verify_with_openssl() {
    use SignatureAlgorithm::*;
    let cases = [
        (KeyType::Ed25519, &[Ed25519][..]),
        (KeyType::EcdsaP256, &[EcdsaP256Sha256][..]),
        (KeyType::Rsa3072, &[RsaPssSha256, RsaPkcs1Sha256][..]),
    ];
    let message = b"message signed by Sovra, verified by openssl";
    let mut checked = 0;
    for (kt, algs) in cases {
        let dir = TempDir::new();
        let sk = SigningKey::from_pkcs8(kt, &kt.generate().expect("keygen")).expect("pkcs8");
        let spki = sk.public_key_spki_der().expect("spki");
        let pem = dir.write("pub.pem", pem_encode("PUBLIC KEY", &spki).as_bytes());
        let msg = dir.write("msg.bin", message);
        for &alg in algs {
            let digest = alg
                .digest_algorithm()
                .map(|h| aws_lc_rs::digest::digest(h, message));
            let inputs = [
                Some(SignInput::Message(message)),
                digest.as_ref().map(|d| SignInput::Digest(d.as_ref())),
            ];
            for input in inputs.into_iter().flatten() {
                let mut sig = sk.sign(alg, input).expect("sign");
                assert!(
                    openssl_verifies(&dir, alg, &pem, &msg, &sig),
                    "{alg:?} {input:?}: openssl rejected"
                );
                let last = sig.len() - 1;
                sig[last] ^= 0x01;
                assert!(
                    !openssl_verifies(&dir, alg, &pem, &msg, &sig),
                    "{alg:?} {input:?}: openssl accepted a flipped bit"
                );
                checked += 1;
            }
        }
    }
    // Ed25519 message; ECDSA message + digest; RSA-PSS and PKCS#1 message + digest.
    assert_eq!(checked, 7);
}
