//! Interoperability with independent implementations: openssl verifies signatures made through
//! the CLI with the exported public key, and Python `cryptography` does envelope encryption
//! with Sovra data keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{
    Server, TempDir, assert_fails_saying, assert_wrong_contexts_refused, create, ok, ok_json, p,
    text, with_context,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed")
}

/// Writes `sovra public-key ID` to a PEM file and checks that openssl parses it as `expect`.
fn public_key(s: &Server, dir: &Path, key: &str, expect: &[&str]) -> PathBuf {
    let pem = ok(s, &["public-key", key], None).stdout;
    let path = dir.join(format!("{key}.pub.pem"));
    std::fs::write(&path, &pem).unwrap();
    let out = openssl(&["pkey", "-pubin", "-in", p(&path), "-noout", "-text"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    for e in expect {
        assert!(t.contains(e), "expected {e:?} in {t}");
    }
    path
}

fn sign(s: &Server, dir: &Path, key: &str, input: &Path, extra: &[&str], tag: &str) -> PathBuf {
    let sig = dir.join(format!("{tag}.sig"));
    let mut args = vec!["sign", "--key", key, "--in", p(input), "--out", p(&sig)];
    args.extend(extra);
    ok(s, &args, None);
    sig
}

fn dgst_verify(pubkey: &Path, sig: &Path, msg: &Path, pss: bool) -> Output {
    let mut args = vec!["dgst", "-sha256"];
    if pss {
        args.extend([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ]);
    }
    args.extend(["-verify", p(pubkey), "-signature", p(sig), p(msg)]);
    openssl(&args)
}

fn assert_verified(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: openssl did not verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("Verified"),
        "{what}: {}",
        text(&out.stdout)
    );
}

fn assert_refused(out: &Output, what: &str) {
    assert!(
        !out.status.success(),
        "{what}: openssl accepted a signature it must refuse: {}",
        text(&out.stdout)
    );
}

#[test]
fn openssl_verifies_cli_signatures() {
    let dir = TempDir::new("interop-sig");
    let d = dir.path();
    let s = Server::start_dev(d, "");
    let msg = d.join("msg.bin");
    let mut body = b"Sovra interop message\n".to_vec();
    let mut noise = vec![0u8; 4096];
    aws_lc_rs::rand::fill(&mut noise).unwrap();
    body.extend(&noise);
    std::fs::write(&msg, &body).unwrap();
    let tampered = d.join("tampered.bin");
    body[10] ^= 1;
    std::fs::write(&tampered, &body).unwrap();

    // Ed25519 (pure EdDSA over the raw message).
    let ed = create(&s, "ed", "ed25519");
    let ed_pub = public_key(&s, d, &ed, &["ED25519 Public-Key"]);
    let sig = sign(&s, d, &ed, &msg, &[], "ed");
    let ed_verify = |m: &Path| {
        openssl(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            p(&ed_pub),
            "-rawin",
            "-in",
            p(m),
            "-sigfile",
            p(&sig),
        ])
    };
    assert_verified(&ed_verify(&msg), "ed25519");
    assert_refused(&ed_verify(&tampered), "ed25519 tampered");

    // ECDSA P-256 with SHA-256, DER signature.
    let ec = create(&s, "ec", "ecdsa-p256");
    let ec_pub = public_key(&s, d, &ec, &["(256 bit)", "P-256"]);
    let sig = sign(&s, d, &ec, &msg, &[], "ec");
    assert_verified(&dgst_verify(&ec_pub, &sig, &msg, false), "ecdsa");
    assert_refused(
        &dgst_verify(&ec_pub, &sig, &tampered, false),
        "ecdsa tampered",
    );

    // RSA-3072: default PSS (salt = digest length), and PKCS#1 v1.5 on request.
    let rsa = create(&s, "rsa3072", "rsa-3072");
    let rsa_pub = public_key(&s, d, &rsa, &["(3072 bit)"]);
    let pss = sign(&s, d, &rsa, &msg, &[], "rsa-pss");
    assert_verified(&dgst_verify(&rsa_pub, &pss, &msg, true), "rsa-3072 pss");
    assert_refused(
        &dgst_verify(&rsa_pub, &pss, &tampered, true),
        "rsa-3072 pss tampered",
    );
    assert_refused(
        &dgst_verify(&rsa_pub, &pss, &msg, false),
        "a PSS signature is not PKCS#1 v1.5",
    );
    let pss_explicit = sign(
        &s,
        d,
        &rsa,
        &msg,
        &["--algorithm", "rsa-pss-sha256"],
        "rsa-pss-explicit",
    );
    assert_verified(
        &dgst_verify(&rsa_pub, &pss_explicit, &msg, true),
        "rsa-pss-sha256",
    );
    let pkcs1 = sign(
        &s,
        d,
        &rsa,
        &msg,
        &["--algorithm", "rsa-pkcs1-sha256"],
        "rsa-pkcs1",
    );
    assert_verified(
        &dgst_verify(&rsa_pub, &pkcs1, &msg, false),
        "rsa-3072 pkcs1",
    );
    assert_refused(
        &dgst_verify(&rsa_pub, &pkcs1, &tampered, false),
        "pkcs1 tampered",
    );

    // RSA-4096, default algorithm (PSS-SHA256).
    let rsa4 = create(&s, "rsa4096", "rsa-4096");
    let rsa4_pub = public_key(&s, d, &rsa4, &["(4096 bit)"]);
    let sig4 = sign(&s, d, &rsa4, &msg, &[], "rsa4096");
    assert_eq!(std::fs::read(&sig4).unwrap().len(), 512);
    assert_verified(&dgst_verify(&rsa4_pub, &sig4, &msg, true), "rsa-4096 pss");
    assert_refused(
        &dgst_verify(&rsa4_pub, &sig4, &tampered, true),
        "rsa-4096 tampered",
    );
    // A signature from another key does not verify under this one.
    assert_refused(&dgst_verify(&rsa4_pub, &pss, &msg, true), "wrong key");

    // A signature over the SHA-256 digest (computed by openssl) verifies as one over the message.
    let digest = d.join("msg.sha256");
    let out = openssl(&["dgst", "-sha256", "-binary", "-out", p(&digest), p(&msg)]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&digest).unwrap().len(), 32);
    let dsig = sign(&s, d, &ec, &digest, &["--digest"], "ec-digest");
    assert_verified(
        &dgst_verify(&ec_pub, &dsig, &msg, false),
        "ecdsa over digest",
    );
    assert_refused(
        &dgst_verify(&ec_pub, &dsig, &tampered, false),
        "ecdsa digest tampered",
    );
    let dsig = sign(&s, d, &rsa, &digest, &["--digest"], "rsa-digest");
    assert_verified(
        &dgst_verify(&rsa_pub, &dsig, &msg, true),
        "rsa pss over digest",
    );
    let dsig = sign(
        &s,
        d,
        &rsa,
        &digest,
        &["--digest", "--algorithm", "rsa-pkcs1-sha256"],
        "rsa-pkcs1-digest",
    );
    assert_verified(
        &dgst_verify(&rsa_pub, &dsig, &msg, false),
        "rsa pkcs1 over digest",
    );
    // PKCS#1 v1.5 is deterministic: signing the digest equals signing the message.
    assert_eq!(
        std::fs::read(&dsig).unwrap(),
        std::fs::read(&pkcs1).unwrap()
    );
    let dsig = sign(&s, d, &rsa4, &digest, &["--digest"], "rsa4-digest");
    assert_verified(
        &dgst_verify(&rsa4_pub, &dsig, &msg, true),
        "rsa-4096 pss over digest",
    );
}

fn py(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script)
}

fn aesgcm(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(py("aesgcm_file.py"))
        .args(args)
        .output()
        .expect("python3 must be installed")
}

#[test]
fn python_envelope_encryption_with_a_sovra_data_key() {
    let dir = TempDir::new("interop-dk");
    let d = dir.path();
    let s = Server::start_dev(d, "");
    let key = create(&s, "envelope", "aes-256-gcm");

    let dk = ok_json(&s, &["datakey", "--key", &key]);
    assert_eq!(dk["key_id"], key.as_str());
    let dk_plain = STANDARD.decode(dk["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(dk_plain.len(), 32);
    let dk_ct = STANDARD.decode(dk["ciphertext"].as_str().unwrap()).unwrap();
    assert_ne!(dk_ct, dk_plain);
    assert!(!dk_ct.windows(32).any(|w| w == dk_plain.as_slice()));

    // The application encrypts its file locally with the plaintext data key, then forgets it.
    let file = d.join("report.bin");
    let mut content = b"quarterly numbers\n".to_vec();
    let mut noise = vec![0u8; 100 * 1024];
    aws_lc_rs::rand::fill(&mut noise).unwrap();
    content.extend(&noise);
    std::fs::write(&file, &content).unwrap();
    let sealed = d.join("report.enc");
    let out = aesgcm(&[
        "encrypt",
        dk["plaintext"].as_str().unwrap(),
        p(&file),
        p(&sealed),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let enc = std::fs::read(&sealed).unwrap();
    assert_eq!(enc.len(), 12 + content.len() + 16);
    let dk_file = d.join("report.key.enc");
    std::fs::write(&dk_file, &dk_ct).unwrap();
    drop(dk);

    // Later (after a rotation, even): Sovra decrypts the stored data key ...
    ok(&s, &["key", "rotate", &key], None);
    let dk_back = d.join("report.key");
    ok(
        &s,
        &["decrypt", "--in", p(&dk_file), "--out", p(&dk_back)],
        None,
    );
    assert_eq!(std::fs::read(&dk_back).unwrap(), dk_plain);
    // ... also through a pipe ...
    assert_eq!(ok(&s, &["decrypt"], Some(&dk_ct)).stdout, dk_plain);
    // ... and Python decrypts the file with it.
    let restored = d.join("report.out");
    let out = aesgcm(&["decrypt", p(&dk_back), p(&sealed), p(&restored)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(&restored).unwrap() == content);

    // Another data key does not open the file.
    let other = ok_json(&s, &["datakey", "--key", &key]);
    let other_key = d.join("other.key");
    std::fs::write(
        &other_key,
        STANDARD
            .decode(other["plaintext"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let out = aesgcm(&["decrypt", p(&other_key), p(&sealed), p(&d.join("nope"))]);
    assert_fails_saying(&out, "InvalidTag");
}

#[test]
fn data_key_made_with_a_context_needs_that_context() {
    let dir = TempDir::new("interop-dkctx");
    let d = dir.path();
    let s = Server::start_dev(d, "");
    let key = create(&s, "ctx", "aes-256-gcm");
    let dk = ok_json(
        &s,
        &with_context(
            &["datakey", "--key", &key],
            &["bucket=photos", "tenant=acme"],
        ),
    );
    let plain = STANDARD.decode(dk["plaintext"].as_str().unwrap()).unwrap();
    let ct = STANDARD.decode(dk["ciphertext"].as_str().unwrap()).unwrap();
    assert_wrong_contexts_refused(
        &s,
        &ct,
        &[
            &[],
            &["bucket=photos"],
            &["tenant=acme"],
            &["bucket=photos", "tenant=other"],
            &["bucket=photos", "tenant=acme", "a=b"],
        ],
        &["decryption failed"],
    );
    let out = ok(
        &s,
        &with_context(&["decrypt"], &["tenant=acme", "bucket=photos"]),
        Some(&ct),
    );
    assert_eq!(out.stdout, plain);

    // Without plaintext, too.
    let dk = ok_json(
        &s,
        &[
            "datakey",
            "--key",
            &key,
            "--no-plaintext",
            "--context",
            "tenant=acme",
        ],
    );
    assert!(dk["plaintext"].is_null());
    let ct = STANDARD.decode(dk["ciphertext"].as_str().unwrap()).unwrap();
    assert!(!s.cli(&["decrypt"], Some(&ct)).status.success());
    let out = ok(&s, &["decrypt", "--context", "tenant=acme"], Some(&ct));
    assert_eq!(out.stdout.len(), 32);
}
