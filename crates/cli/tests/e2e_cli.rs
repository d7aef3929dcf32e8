//! The `sovra` CLI against a dev server: every `key` subcommand in text and JSON, binary-safe
//! encrypt/decrypt through files and pipes, encryption context, data keys, sign/verify, key
//! states, rotation with min_decryption_version, and authentication errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{
    Server, TempDir, assert_fails_saying, assert_wrong_contexts_refused, create, ok, ok_json, p,
    text, with_context,
};

fn ok_text(s: &Server, args: &[&str]) -> String {
    text(&ok(s, args, None).stdout)
}

/// Runs the CLI expecting a failure with the usual `error: ...` line; returns stderr.
fn fails(s: &Server, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = s.cli(args, stdin);
    assert!(
        !out.status.success(),
        "sovra {args:?} should fail; stdout: {}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    text(&out.stderr)
}

/// The value of `label:` in the CLI's text key view.
fn field(view: &str, label: &str) -> Option<String> {
    view.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .map(|v| v.trim().to_string())
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut v).unwrap();
    v
}

/// Checks the self-describing header: magic, format 1, key id, key version.
fn assert_header(ct: &[u8], key_id: &str, version: u32, pt_len: usize) {
    assert_eq!(ct.len(), 36 + pt_len + 16, "header + ciphertext + tag");
    assert_eq!(&ct[0..3], b"sv\x01");
    let id = key_id.replace('-', "");
    let hex: String = ct[4..20].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, id);
    assert_eq!(&ct[20..24], &version.to_be_bytes());
}

#[test]
fn key_subcommands_in_text_and_json() {
    let dir = TempDir::new("cli-keys");
    let s = Server::start_dev(dir.path(), "");

    // create, text
    let t = ok_text(
        &s,
        &[
            "key",
            "create",
            "--name",
            "app-key",
            "--type",
            "aes-256-gcm",
            "--description",
            "first key",
        ],
    );
    let id = field(&t, "id").expect("id line");
    assert_eq!(id.len(), 36, "{t}");
    assert_eq!(field(&t, "name").as_deref(), Some("app-key"));
    assert_eq!(field(&t, "type").as_deref(), Some("aes-256-gcm"));
    assert_eq!(field(&t, "state").as_deref(), Some("enabled"));
    assert_eq!(field(&t, "versions").as_deref(), Some("1"));
    assert_eq!(field(&t, "min decryption version").as_deref(), Some("1"));
    assert_eq!(field(&t, "owner").as_deref(), Some("dev-token#dev-admin"));
    assert_eq!(field(&t, "description").as_deref(), Some("first key"));
    assert!(field(&t, "created").unwrap().starts_with("20"), "{t}");
    assert_eq!(field(&t, "deletion date"), None);

    // create, JSON
    let k2 = ok_json(
        &s,
        &["key", "create", "--name", "sig-key", "--type", "ed25519"],
    );
    let id2 = k2["id"].as_str().unwrap().to_string();
    assert_eq!(k2["name"], "sig-key");
    assert_eq!(k2["state"], "enabled");
    assert_eq!(k2["latest_version"], 1);
    assert_eq!(k2["min_decryption_version"], 1);
    assert!(k2["description"].is_null());
    assert_ne!(id, id2);

    let err = fails(
        &s,
        &[
            "key",
            "create",
            "--name",
            "app-key",
            "--type",
            "aes-256-gcm",
        ],
        None,
    );
    assert!(
        err.contains("already exists") && err.contains("HTTP 409"),
        "{err}"
    );
    let err = fails(
        &s,
        &["key", "create", "--name", "x", "--type", "des-56"],
        None,
    );
    assert!(err.contains("HTTP 400"), "{err}");

    // list
    let t = ok_text(&s, &["key", "list"]);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("id") && lines[0].contains("versions"),
        "{t}"
    );
    assert_eq!(lines.len(), 3, "{t}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&id) && l.contains("app-key") && l.contains("enabled"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&id2) && l.contains("ed25519"))
    );
    let list = ok_json(&s, &["key", "list"]);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&id.as_str()) && ids.contains(&id2.as_str()));

    // show
    let t = ok_text(&s, &["key", "show", &id]);
    assert_eq!(field(&t, "id").as_deref(), Some(id.as_str()));
    assert_eq!(field(&t, "name").as_deref(), Some("app-key"));
    let k = ok_json(&s, &["key", "show", &id2]);
    assert_eq!(k["type"], "ed25519");
    let err = fails(
        &s,
        &["key", "show", "6f1c3a52-0000-4000-8000-000000000000"],
        None,
    );
    assert!(
        err.contains("not found") && err.contains("HTTP 404"),
        "{err}"
    );
    let err = fails(&s, &["key", "show", "not-a-uuid"], None);
    assert!(err.contains("HTTP 404"), "{err}");

    // rotate
    let t = ok_text(&s, &["key", "rotate", &id]);
    assert_eq!(field(&t, "versions").as_deref(), Some("2"));
    assert!(field(&t, "rotated").is_some(), "{t}");
    let k = ok_json(&s, &["key", "rotate", &id]);
    assert_eq!(k["latest_version"], 3);
    assert!(k["rotated"].is_string());
    assert_eq!(ok_json(&s, &["key", "show", &id])["latest_version"], 3);

    // disable / enable
    let t = ok_text(&s, &["key", "disable", &id]);
    assert_eq!(field(&t, "state").as_deref(), Some("disabled"));
    assert_eq!(ok_json(&s, &["key", "show", &id])["state"], "disabled");
    let k = ok_json(&s, &["key", "enable", &id]);
    assert_eq!(k["state"], "enabled");
    let t = ok_text(&s, &["key", "disable", &id2]);
    assert_eq!(field(&t, "state").as_deref(), Some("disabled"));
    let t = ok_text(&s, &["key", "enable", &id2]);
    assert_eq!(field(&t, "state").as_deref(), Some("enabled"));

    // update
    let k = ok_json(&s, &["key", "update", &id, "--description", "renamed"]);
    assert_eq!(k["description"], "renamed");
    assert_eq!(k["min_decryption_version"], 1, "unchanged");
    let t = ok_text(&s, &["key", "update", &id, "--min-decryption-version", "2"]);
    assert_eq!(field(&t, "min decryption version").as_deref(), Some("2"));
    assert_eq!(field(&t, "description").as_deref(), Some("renamed"));
    let err = fails(
        &s,
        &["key", "update", &id, "--min-decryption-version", "4"],
        None,
    );
    assert!(
        err.contains("between 1 and the latest version (3)"),
        "{err}"
    );
    assert_eq!(
        ok_json(&s, &["key", "show", &id])["min_decryption_version"],
        2
    );

    // delete / cancel-delete
    for days in ["6", "31", "0"] {
        let err = fails(&s, &["key", "delete", &id, "--pending-days", days], None);
        assert!(
            err.contains("pending_days must be between 7 and 30"),
            "{err}"
        );
    }
    assert_eq!(ok_json(&s, &["key", "show", &id])["state"], "enabled");
    let before = time::OffsetDateTime::now_utc();
    let t = ok_text(&s, &["key", "delete", &id, "--pending-days", "7"]);
    assert_eq!(field(&t, "state").as_deref(), Some("pending_deletion"));
    let date = field(&t, "deletion date").expect("deletion date line");
    let date =
        time::OffsetDateTime::parse(&date, &time::format_description::well_known::Rfc3339).unwrap();
    let wait = date - before;
    assert!(
        wait >= time::Duration::days(7) - time::Duration::minutes(1)
            && wait <= time::Duration::days(7) + time::Duration::minutes(5),
        "deletion in 7 days, got {wait}"
    );
    let k = ok_json(&s, &["key", "show", &id]);
    assert_eq!(k["state"], "pending_deletion");
    assert!(k["deletion_date"].is_string());
    let t = ok_text(&s, &["key", "show", &id]);
    assert_eq!(field(&t, "state").as_deref(), Some("pending_deletion"));
    let err = fails(&s, &["key", "delete", &id, "--pending-days", "7"], None);
    assert!(
        err.contains("pending deletion") && err.contains("HTTP 409"),
        "{err}"
    );
    let err = fails(&s, &["key", "enable", &id], None);
    assert!(err.contains("pending deletion"), "{err}");
    let k = ok_json(&s, &["key", "cancel-delete", &id]);
    assert_eq!(
        k["state"], "disabled",
        "cancelled deletion returns the key disabled"
    );
    assert!(k["deletion_date"].is_null());
    let err = fails(&s, &["key", "cancel-delete", &id], None);
    assert!(err.contains("not pending deletion"), "{err}");
    // delete + cancel in text form too
    let t = ok_text(&s, &["key", "delete", &id2, "--pending-days", "30"]);
    assert_eq!(field(&t, "state").as_deref(), Some("pending_deletion"));
    let t = ok_text(&s, &["key", "cancel-delete", &id2]);
    assert_eq!(field(&t, "state").as_deref(), Some("disabled"));
    assert_eq!(field(&t, "deletion date"), None);
}

#[test]
fn encrypt_decrypt_is_binary_safe_through_files_and_pipes() {
    let dir = TempDir::new("cli-enc");
    let s = Server::start_dev(dir.path(), "");
    let all: Vec<u8> = (0..=255u8).collect();
    for key_type in ["aes-256-gcm", "chacha20-poly1305"] {
        let key = create(&s, &format!("bin-{key_type}"), key_type);
        let pt = dir.path().join(format!("{key_type}.pt"));
        let ct = dir.path().join(format!("{key_type}.ct"));
        let back = dir.path().join(format!("{key_type}.back"));
        std::fs::write(&pt, &all).unwrap();
        let out = ok(
            &s,
            &["encrypt", "--key", &key, "--in", p(&pt), "--out", p(&ct)],
            None,
        );
        assert!(out.stdout.is_empty(), "with --out nothing goes to stdout");
        let c = std::fs::read(&ct).unwrap();
        assert_header(&c, &key, 1, all.len());
        assert!(!c.windows(32).any(|w| w == &all[..32]), "plaintext leaked");
        ok(&s, &["decrypt", "--in", p(&ct), "--out", p(&back)], None);
        assert_eq!(std::fs::read(&back).unwrap(), all);
    }

    // ~600 KiB of random bytes through stdin and stdout (base64 makes ~800 KiB, under 1 MiB).
    let key = create(&s, "pipe", "aes-256-gcm");
    let big = random_bytes(600 * 1024);
    let out = ok(&s, &["encrypt", "--key", &key], Some(&big));
    let ct = out.stdout;
    assert_header(&ct, &key, 1, big.len());
    let out = ok(&s, &["decrypt"], Some(&ct));
    assert!(out.stdout == big, "600 KiB roundtrip through pipes");
    // Mixed: file in, stdout out; stdin in, file out.
    let big_file = dir.path().join("big.pt");
    std::fs::write(&big_file, &big).unwrap();
    let ct2 = ok(&s, &["encrypt", "--key", &key, "--in", p(&big_file)], None).stdout;
    assert_ne!(ct2, ct, "fresh nonce per encryption");
    let back = dir.path().join("big.back");
    ok(&s, &["decrypt", "--out", p(&back)], Some(&ct2));
    assert!(std::fs::read(&back).unwrap() == big);

    // Empty input.
    let ct = ok(&s, &["encrypt", "--key", &key], Some(b"")).stdout;
    assert_header(&ct, &key, 1, 0);
    assert!(ok(&s, &["decrypt"], Some(&ct)).stdout.is_empty());

    // Too large for the body limit: a clear error, not a hang or a crash.
    let err = fails(
        &s,
        &["encrypt", "--key", &key],
        Some(&random_bytes(900 * 1024)),
    );
    assert!(
        err.contains("too large") && err.contains("HTTP 413"),
        "{err}"
    );

    // JSON output carries base64.
    let pt = dir.path().join("small.pt");
    std::fs::write(&pt, b"\x00json\xff").unwrap();
    let j = ok_json(&s, &["encrypt", "--key", &key, "--in", p(&pt)]);
    assert_eq!(j["key_id"], key.as_str());
    assert_eq!(j["key_version"], 1);
    let c = STANDARD.decode(j["ciphertext"].as_str().unwrap()).unwrap();
    assert_header(&c, &key, 1, 6);
    let ctf = dir.path().join("small.ct");
    std::fs::write(&ctf, &c).unwrap();
    let j = ok_json(&s, &["decrypt", "--in", p(&ctf)]);
    assert_eq!(
        STANDARD.decode(j["plaintext"].as_str().unwrap()).unwrap(),
        b"\x00json\xff"
    );
    assert_eq!(j["key_version"], 1);

    // A changed byte anywhere fails cleanly.
    for i in [0, 3, 10, 22, 30, 40, c.len() - 1] {
        let mut bad = c.clone();
        bad[i] ^= 0x01;
        let err = fails(&s, &["decrypt"], Some(&bad));
        assert!(
            err.contains("decryption failed")
                || err.contains("malformed ciphertext")
                || err.contains("not found"),
            "byte {i}: {err}"
        );
    }
    let err = fails(
        &s,
        &["decrypt"],
        Some(b"plainly not a ciphertext at all, no, not at all"),
    );
    assert!(err.contains("malformed ciphertext"), "{err}");
}

#[test]
fn encryption_context_must_match() {
    let dir = TempDir::new("cli-ctx");
    let s = Server::start_dev(dir.path(), "");
    let key = create(&s, "ctx", "aes-256-gcm");
    let ct = ok(
        &s,
        &with_context(&["encrypt", "--key", &key], &["app=billing", "tenant=7"]),
        Some(b"context bound"),
    )
    .stdout;
    // The same context, in another order, decrypts.
    let out = ok(
        &s,
        &with_context(&["decrypt"], &["tenant=7", "app=billing"]),
        Some(&ct),
    );
    assert_eq!(out.stdout, b"context bound");
    assert_wrong_contexts_refused(
        &s,
        &ct,
        &[
            &[],
            &["app=billing"],
            &["app=billing", "tenant=8"],
            &["app=billing", "tenant=7", "x=y"],
            &["app=billing", "Tenant=7"],
        ],
        &[
            "decryption failed: the ciphertext or its context does not authenticate",
            "HTTP 400",
        ],
    );
    let out = s.cli(
        &["encrypt", "--key", &key, "--context", "novalue"],
        Some(b"x"),
    );
    assert_fails_saying(&out, "expected key=value");
}

#[test]
fn datakeys_with_and_without_plaintext() {
    let dir = TempDir::new("cli-dk");
    let s = Server::start_dev(dir.path(), "");
    let key = create(&s, "dk", "aes-256-gcm");

    // Text form.
    let t = ok_text(&s, &["datakey", "--key", &key]);
    let pt = STANDARD
        .decode(field(&t, "plaintext").expect("plaintext line"))
        .unwrap();
    assert_eq!(pt.len(), 32);
    let ct = STANDARD
        .decode(field(&t, "ciphertext").expect("ciphertext line"))
        .unwrap();
    assert_header(&ct, &key, 1, 32);
    assert_eq!(field(&t, "key"), Some(format!("{key} (version 1)")));
    assert_eq!(ok(&s, &["decrypt"], Some(&ct)).stdout, pt);

    // JSON form and sizes.
    for (bits, len) in [("128", 16), ("256", 32), ("512", 64)] {
        let j = ok_json(&s, &["datakey", "--key", &key, "--bits", bits]);
        let pt = STANDARD.decode(j["plaintext"].as_str().unwrap()).unwrap();
        assert_eq!(pt.len(), len);
        let ct = STANDARD.decode(j["ciphertext"].as_str().unwrap()).unwrap();
        assert_eq!(j["key_id"], key.as_str());
        assert_eq!(ok(&s, &["decrypt"], Some(&ct)).stdout, pt);
    }
    let a = ok_json(&s, &["datakey", "--key", &key]);
    let b = ok_json(&s, &["datakey", "--key", &key]);
    assert_ne!(a["plaintext"], b["plaintext"], "fresh keys");
    let err = fails(&s, &["datakey", "--key", &key, "--bits", "100"], None);
    assert!(err.contains("bits must be 128, 256 or 512"), "{err}");

    // Without plaintext: only the ciphertext, which still decrypts to a 32-byte key.
    let t = ok_text(&s, &["datakey", "--key", &key, "--no-plaintext"]);
    assert_eq!(field(&t, "plaintext"), None, "{t}");
    let ct = STANDARD.decode(field(&t, "ciphertext").unwrap()).unwrap();
    assert_eq!(ok(&s, &["decrypt"], Some(&ct)).stdout.len(), 32);
    let j = ok_json(&s, &["datakey", "--key", &key, "--no-plaintext"]);
    assert!(j["plaintext"].is_null(), "{j}");
    let ct = STANDARD.decode(j["ciphertext"].as_str().unwrap()).unwrap();
    assert_eq!(ok(&s, &["decrypt"], Some(&ct)).stdout.len(), 32);

    // Only encryption keys make data keys.
    let sig = create(&s, "dk-sig", "ed25519");
    let err = fails(&s, &["datakey", "--key", &sig], None);
    assert!(err.contains("HTTP 400"), "{err}");
}

#[test]
fn sign_and_verify_every_asymmetric_type() {
    let dir = TempDir::new("cli-sign");
    let s = Server::start_dev(dir.path(), "");
    let msg = dir.path().join("msg");
    let other = dir.path().join("other");
    std::fs::write(&msg, b"the message to sign\n\x00\xff").unwrap();
    std::fs::write(&other, b"the message to sign\n\x00\xfe").unwrap();
    let rsa = create(&s, "rsa3072", "rsa-3072");
    let cases = [
        ("ed25519", create(&s, "ed", "ed25519"), None, "ed25519"),
        (
            "ecdsa",
            create(&s, "ec", "ecdsa-p256"),
            None,
            "ecdsa-p256-sha256",
        ),
        ("rsa-pss", rsa.clone(), None, "rsa-pss-sha256"),
        (
            "rsa-pkcs1",
            rsa.clone(),
            Some("rsa-pkcs1-sha256"),
            "rsa-pkcs1-sha256",
        ),
    ];
    for (tag, key, alg, alg_name) in cases.iter().map(|(t, k, a, n)| (*t, k.as_str(), *a, *n)) {
        let sig = dir.path().join(format!("{tag}.sig"));
        let mut sign = vec!["sign", "--key", key, "--in", p(&msg), "--out", p(&sig)];
        let mut verify = vec![
            "verify",
            "--key",
            key,
            "--in",
            p(&msg),
            "--signature",
            p(&sig),
        ];
        if let Some(a) = alg {
            sign.extend(["--algorithm", a]);
            verify.extend(["--algorithm", a]);
        }
        ok(&s, &sign, None);
        let sig_bytes = std::fs::read(&sig).unwrap();
        match tag {
            "ed25519" => assert_eq!(sig_bytes.len(), 64),
            "ecdsa" => assert_eq!(sig_bytes[0], 0x30, "DER SEQUENCE"),
            _ => assert_eq!(sig_bytes.len(), 384, "RSA-3072"),
        }
        assert_eq!(ok_text(&s, &verify).trim(), "valid", "{tag}");
        let j = ok_json(&s, &verify);
        assert_eq!(j["valid"], true);

        // Another message, or a changed signature: INVALID and a failing exit code.
        let mut bad = verify.clone();
        bad[4] = p(&other);
        let out = s.cli(&bad, None);
        assert!(!out.status.success(), "{tag}");
        assert_eq!(text(&out.stdout).trim(), "INVALID");
        assert!(text(&out.stderr).contains("signature is not valid"));
        let mut flipped = sig_bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x80;
        let bad_sig = dir.path().join(format!("{tag}.badsig"));
        std::fs::write(&bad_sig, &flipped).unwrap();
        let mut bad = verify.clone();
        bad[6] = p(&bad_sig);
        assert!(
            !s.cli(&bad, None).status.success(),
            "{tag}: flipped signature"
        );

        // JSON and base64 forms.
        let mut sign_json = sign.clone();
        sign_json.drain(5..7);
        let j = ok_json(&s, &sign_json);
        assert_eq!(j["algorithm"], alg_name);
        assert_eq!(j["key_version"], 1);
        let printed = ok_text(&s, &sign_json);
        let from_stdout = STANDARD.decode(printed.trim()).unwrap();
        let sig2 = dir.path().join(format!("{tag}.sig2"));
        std::fs::write(&sig2, &from_stdout).unwrap();
        let mut v2 = verify.clone();
        v2[6] = p(&sig2);
        assert_eq!(ok_text(&s, &v2).trim(), "valid");

        // Message from stdin.
        let mut from_stdin = vec!["sign", "--key", key];
        if let Some(a) = alg {
            from_stdin.extend(["--algorithm", a]);
        }
        let out = ok(&s, &from_stdin, Some(&std::fs::read(&msg).unwrap()));
        let sig3 = dir.path().join(format!("{tag}.sig3"));
        std::fs::write(&sig3, STANDARD.decode(text(&out.stdout).trim()).unwrap()).unwrap();
        let mut v3 = verify.clone();
        v3[6] = p(&sig3);
        assert_eq!(ok_text(&s, &v3).trim(), "valid");

        // A digest signed with --digest verifies as a signature over the message.
        if tag != "ed25519" {
            let d = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                &std::fs::read(&msg).unwrap(),
            );
            let dfile = dir.path().join(format!("{tag}.sha256"));
            std::fs::write(&dfile, d.as_ref()).unwrap();
            let dsig = dir.path().join(format!("{tag}.dsig"));
            let mut sd = vec![
                "sign",
                "--key",
                key,
                "--digest",
                "--in",
                p(&dfile),
                "--out",
                p(&dsig),
            ];
            if let Some(a) = alg {
                sd.extend(["--algorithm", a]);
            }
            ok(&s, &sd, None);
            let mut v4 = verify.clone();
            v4[6] = p(&dsig);
            assert_eq!(ok_text(&s, &v4).trim(), "valid", "{tag}: digest signature");
            let mut vd = vec![
                "verify",
                "--key",
                key,
                "--digest",
                "--in",
                p(&dfile),
                "--signature",
                p(&sig),
            ];
            if let Some(a) = alg {
                vd.extend(["--algorithm", a]);
            }
            assert_eq!(ok_text(&s, &vd).trim(), "valid", "{tag}: verify by digest");
            let err = fails(
                &s,
                &["sign", "--key", key, "--digest", "--in", p(&msg)],
                None,
            );
            assert!(err.contains("digest must be 32 bytes"), "{err}");
        } else {
            let err = fails(
                &s,
                &["sign", "--key", key, "--digest", "--in", p(&msg)],
                None,
            );
            assert!(err.contains("ed25519 signs messages, not digests"), "{err}");
        }
    }

    // PKCS#1 v1.5 is deterministic, PSS is randomized, and --algorithm is honoured in verify.
    let a = ok_text(
        &s,
        &[
            "sign",
            "--key",
            &rsa,
            "--in",
            p(&msg),
            "--algorithm",
            "rsa-pkcs1-sha256",
        ],
    );
    let b = ok_text(
        &s,
        &[
            "sign",
            "--key",
            &rsa,
            "--in",
            p(&msg),
            "--algorithm",
            "rsa-pkcs1-sha256",
        ],
    );
    assert_eq!(a, b);
    let a = ok_text(&s, &["sign", "--key", &rsa, "--in", p(&msg)]);
    let b = ok_text(&s, &["sign", "--key", &rsa, "--in", p(&msg)]);
    assert_ne!(a, b);
    let pkcs1 = dir.path().join("rsa-pkcs1.sig");
    let out = s.cli(
        &[
            "verify",
            "--key",
            &rsa,
            "--in",
            p(&msg),
            "--signature",
            p(&pkcs1),
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "a PKCS#1 signature is not a valid PSS signature"
    );

    // Algorithm and key type must fit; encryption keys do not sign.
    let ed = &cases[0].1;
    let err = fails(
        &s,
        &[
            "sign",
            "--key",
            ed,
            "--in",
            p(&msg),
            "--algorithm",
            "rsa-pkcs1-sha256",
        ],
        None,
    );
    assert!(err.contains("does not fit"), "{err}");
    let err = fails(
        &s,
        &[
            "sign",
            "--key",
            &rsa,
            "--in",
            p(&msg),
            "--algorithm",
            "rsa-md5",
        ],
        None,
    );
    assert!(err.contains("unknown signature algorithm"), "{err}");
    let aes = create(&s, "not-a-signer", "aes-256-gcm");
    let err = fails(&s, &["sign", "--key", &aes, "--in", p(&msg)], None);
    assert!(err.contains("HTTP 400"), "{err}");
    let err = fails(&s, &["public-key", &aes], None);
    assert!(err.contains("HTTP 400"), "{err}");

    // public-key prints SPKI PEM; JSON wraps it.
    for (_, key, _, _) in &cases {
        let pem = ok_text(&s, &["public-key", key]);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert!(pem.trim_end().ends_with("-----END PUBLIC KEY-----"));
        let j = ok_json(&s, &["public-key", key]);
        assert_eq!(j["public_key"].as_str().unwrap(), pem);
    }
}

#[test]
fn disabled_and_pending_deletion_keys_cannot_be_used() {
    let dir = TempDir::new("cli-state");
    let s = Server::start_dev(dir.path(), "");
    let key = create(&s, "state", "aes-256-gcm");
    let ct = ok(&s, &["encrypt", "--key", &key], Some(b"before")).stdout;

    ok(&s, &["key", "disable", &key], None);
    let err = fails(&s, &["encrypt", "--key", &key], Some(b"x"));
    assert!(
        err.contains("key is disabled") && err.contains("HTTP 409"),
        "{err}"
    );
    let err = fails(&s, &["decrypt"], Some(&ct));
    assert!(err.contains("key is disabled"), "{err}");
    let err = fails(&s, &["datakey", "--key", &key], None);
    assert!(err.contains("key is disabled"), "{err}");
    ok(&s, &["key", "enable", &key], None);
    assert_eq!(ok(&s, &["decrypt"], Some(&ct)).stdout, b"before");
    let ct2 = ok(&s, &["encrypt", "--key", &key], Some(b"after enable")).stdout;
    assert_eq!(ok(&s, &["decrypt"], Some(&ct2)).stdout, b"after enable");

    let err = fails(&s, &["key", "delete", &key, "--pending-days", "6"], None);
    assert!(
        err.contains("pending_days must be between 7 and 30") && err.contains("HTTP 400"),
        "{err}"
    );
    assert_eq!(ok_json(&s, &["key", "show", &key])["state"], "enabled");
    ok(&s, &["key", "delete", &key, "--pending-days", "7"], None);
    let t = ok_text(&s, &["key", "show", &key]);
    assert_eq!(field(&t, "state").as_deref(), Some("pending_deletion"));
    let err = fails(&s, &["encrypt", "--key", &key], Some(b"x"));
    assert!(err.contains("key is pending deletion"), "{err}");
    let err = fails(&s, &["decrypt"], Some(&ct));
    assert!(err.contains("key is pending deletion"), "{err}");
    let k = ok_json(&s, &["key", "cancel-delete", &key]);
    assert_eq!(k["state"], "disabled");
    let err = fails(&s, &["encrypt", "--key", &key], Some(b"x"));
    assert!(err.contains("key is disabled"), "{err}");
    ok(&s, &["key", "enable", &key], None);
    assert_eq!(ok(&s, &["decrypt"], Some(&ct)).stdout, b"before");

    // Signing keys obey the same states.
    let ed = create(&s, "state-ed", "ed25519");
    ok(&s, &["key", "disable", &ed], None);
    let err = fails(&s, &["sign", "--key", &ed], Some(b"m"));
    assert!(err.contains("key is disabled"), "{err}");
}

#[test]
fn rotation_keeps_old_ciphertexts_until_min_decryption_version() {
    let dir = TempDir::new("cli-rot");
    let s = Server::start_dev(dir.path(), "");
    let key = create(&s, "rot", "aes-256-gcm");
    let pt = dir.path().join("pt");
    std::fs::write(&pt, b"version one").unwrap();
    let v1 = ok_json(&s, &["encrypt", "--key", &key, "--in", p(&pt)]);
    assert_eq!(v1["key_version"], 1);
    let v1 = STANDARD.decode(v1["ciphertext"].as_str().unwrap()).unwrap();

    let t = ok_text(&s, &["key", "rotate", &key]);
    assert_eq!(field(&t, "versions").as_deref(), Some("2"));
    let v2 = ok(&s, &["encrypt", "--key", &key], Some(b"version two")).stdout;
    assert_header(&v2, &key, 2, 11);
    let old = dir.path().join("v1.ct");
    std::fs::write(&old, &v1).unwrap();
    let j = ok_json(&s, &["decrypt", "--in", p(&old)]);
    assert_eq!(j["key_version"], 1);
    assert_eq!(
        STANDARD.decode(j["plaintext"].as_str().unwrap()).unwrap(),
        b"version one"
    );
    assert_eq!(ok(&s, &["decrypt"], Some(&v2)).stdout, b"version two");

    let k = ok_json(
        &s,
        &["key", "update", &key, "--min-decryption-version", "2"],
    );
    assert_eq!(k["min_decryption_version"], 2);
    let err = fails(&s, &["decrypt", "--in", p(&old)], None);
    assert!(
        err.contains("ciphertext version 1 is below the key's min_decryption_version 2"),
        "{err}"
    );
    assert_eq!(ok(&s, &["decrypt"], Some(&v2)).stdout, b"version two");
    // A ciphertext claiming a version the key does not have fails.
    let mut v3 = v2.clone();
    v3[23] = 3;
    let err = fails(&s, &["decrypt"], Some(&v3));
    assert!(err.contains("decryption failed"), "{err}");
}

#[test]
fn missing_or_wrong_token_is_a_clear_401() {
    let dir = TempDir::new("cli-auth");
    let s = Server::start_dev(dir.path(), "");
    let key = create(&s, "auth", "aes-256-gcm");
    for args in [
        vec!["key", "list"],
        vec!["key", "show", key.as_str()],
        vec!["encrypt", "--key", key.as_str()],
        vec!["operator", "seal"],
    ] {
        let out = s.cli_token(&args, Some(b"x"), None);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains("missing bearer token") && err.contains("unauthenticated, HTTP 401"),
            "{args:?}: {err}"
        );
        let out = s.cli_token(&args, Some(b"x"), Some("sovra-dev-not-the-token"));
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains("invalid token") && err.contains("HTTP 401"),
            "{args:?}: {err}"
        );
    }
    // Status needs no token; the server is still unsealed.
    let out = s.cli_token(&["operator", "status"], None, None);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("sealed:      false"));
    // Not https: refused before any request.
    let out = std::process::Command::new(common::sovra_bin())
        .args(["key", "list"])
        .env("SOVRA_ADDR", s.addr.replace("https://", "http://"))
        .env("SOVRA_TOKEN", s.token.as_deref().unwrap())
        .output()
        .unwrap();
    assert_fails_saying(&out, "must be an https:// URL");
}
