//! Nothing secret leaks. A whole session runs against a non-dev server on PostgreSQL (a role
//! with a password) at trace log level: Shamir init and unseal, keys of every type, encrypt,
//! batches, data keys, signatures, MACs, bad and forged tokens, failures. Then the server's log,
//! the audit export, a dump of the database, every file of the data directory and every error
//! body are searched for the plaintexts, encryption contexts, data keys, unseal shares, tokens
//! and the database password, raw and in the encodings a careless log line would use.
//!
//! Also: the process hardening of server mode (core dumps off, memory locked) and its report
//! when the OS refuses to lock memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{
    Server, TempDir, free_port, fresh_pg_database, make_cert, psql, sovra_bin, uuid_like,
};
use jwt::{AUDIENCE, ISSUER, Signer, claims, claims_with_roles};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

/// A secret the session handed to the server (or got from it), by name.
struct Secrets(Vec<(String, Vec<u8>)>);

impl Secrets {
    fn add(&mut self, name: &str, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref().to_vec();
        assert!(bytes.len() >= 12, "{name}: too short to search for");
        self.0.push((name.to_string(), bytes));
    }

    /// Every secret in every form worth searching: raw, standard and URL-safe base64, hex.
    fn forms(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (name, raw) in &self.0 {
            out.push((format!("{name} (raw)"), raw.clone()));
            out.push((
                format!("{name} (base64)"),
                STANDARD.encode(raw).into_bytes(),
            ));
            out.push((
                format!("{name} (base64url)"),
                URL_SAFE_NO_PAD.encode(raw).into_bytes(),
            ));
            out.push((format!("{name} (hex)"), hex(raw).into_bytes()));
        }
        out
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
}

struct Session {
    http: reqwest::Client,
    base: String,
    /// Every non-2xx body, to be searched.
    error_bodies: Vec<(String, Vec<u8>)>,
}

impl Session {
    async fn call(&mut self, token: &str, method: Method, path: &str, body: Value) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap().to_vec();
        if status >= 300 {
            self.error_bodies
                .push((format!("{method} {path} -> {status}"), bytes.clone()));
        }
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn ok(&mut self, token: &str, method: Method, path: &str, body: Value) -> Value {
        let (status, v) = self.call(token, method, path, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    }

    async fn fails(&mut self, token: &str, method: Method, path: &str, body: Value) -> u16 {
        let (status, v) = self.call(token, method, path, body).await;
        assert!(status >= 400, "{path} should fail: {status} {v}");
        assert!(v["error"]["code"].is_string(), "{path}: JSON error: {v}");
        status
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_level_session_leaks_no_secret_anywhere() {
    let dir = TempDir::new("leak");
    let mut secrets = Secrets(Vec::new());

    // A database role with a password; the URL that carries it is in the config.
    let admin_db = fresh_pg_database();
    let role = format!("sovra_leak_{}", uuid_like());
    let password = format!("db-pw-{}-{}", uuid_like(), uuid_like());
    secrets.add("database password", &password);
    psql(
        &admin_db,
        &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'"),
    );
    let (base, db_name) = admin_db.rsplit_once('/').unwrap();
    let db_url = format!(
        "postgres://{role}:{password}@{}/{db_name}",
        base.rsplit_once('@').unwrap().1
    );

    let idp = Signer::es256("leak-1");
    let jwks = dir.path().join("jwks.json");
    jwt::write_jwks(&jwks, std::slice::from_ref(&idp.jwk));
    let (cert, key) = make_cert(dir.path(), "leak", false);
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let port = free_port();
    let config = dir.path().join("sovra.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"{db_url}\"\ndata_dir = \"{}\"\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n{}",
            data_dir.display(),
            cert.display(),
            key.display(),
            jwt::issuer_toml(ISSUER, AUDIENCE, &jwks, "allow_operator = true"),
        ),
    )
    .unwrap();
    let addr = format!("https://127.0.0.1:{port}");
    let server =
        Server::start_config_env(&config, &addr, &cert, dir.path(), &[("SOVRA_LOG", "trace")]);
    let mut s = Session {
        http: server.http(),
        base: addr.clone(),
        error_bodies: Vec::new(),
    };

    let alice = idp.token(&claims("alice", "acme"));
    let bob = idp.token(&claims("bob", "acme"));
    let admin = idp.token(&claims_with_roles("root", "acme", &["admin", "operator"]));
    for (name, t) in [
        ("alice's token", &alice),
        ("bob's token", &bob),
        ("admin token", &admin),
    ] {
        secrets.add(name, t);
        secrets.add(&format!("{name} signature"), t.rsplit('.').next().unwrap());
    }

    // Seal: Shamir init (with the installer's one-time token) and unseal; shares and the
    // token are secrets.
    let init_token = std::fs::read_to_string(data_dir.join("init-token")).unwrap();
    secrets.add("init token", init_token.trim());
    let init = s
        .ok(
            "",
            Method::POST,
            "/api/v1/sys/init",
            json!({"shares": 3, "threshold": 2, "init_token": init_token.trim()}),
        )
        .await;
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for (i, sh) in shares.iter().enumerate() {
        secrets.add(&format!("unseal share {i}"), sh);
        secrets.add(
            &format!("unseal share {i} bytes"),
            STANDARD.decode(sh).unwrap(),
        );
    }
    for sh in &shares[..2] {
        s.ok("", Method::POST, "/api/v1/sys/unseal", json!({"share": sh}))
            .await;
    }
    // The operator creates the users' org (nothing creates one implicitly).
    s.ok(
        &admin,
        Method::POST,
        "/api/v1/orgs",
        json!({"id": "acme", "display_name": "Acme"}),
    )
    .await;

    // Keys of every type.
    let mut ids = std::collections::HashMap::new();
    for t in [
        "aes-256-gcm",
        "chacha20-poly1305",
        "hmac-sha256",
        "ed25519",
        "ecdsa-p256",
        "rsa-3072",
        "rsa-4096",
    ] {
        let k = s
            .ok(
                &alice,
                Method::POST,
                "/api/v1/keys",
                json!({"name": t, "type": t}),
            )
            .await;
        ids.insert(t, k["id"].as_str().unwrap().to_string());
    }

    // Encryption with contexts, batches, re-encryption, data keys.
    let plaintext = format!("LEAK-PLAINTEXT-{}", uuid_like());
    let context_value = format!("LEAK-CONTEXT-{}", uuid_like());
    secrets.add("plaintext", &plaintext);
    secrets.add("context value", &context_value);
    let ctx = json!({"tenant": context_value});
    for t in ["aes-256-gcm", "chacha20-poly1305"] {
        let path = format!("/api/v1/keys/{}/encrypt", ids[t]);
        let ct = s
            .ok(
                &alice,
                Method::POST,
                &path,
                json!({"plaintext": STANDARD.encode(&plaintext), "context": ctx}),
            )
            .await["ciphertext"]
            .as_str()
            .unwrap()
            .to_string();
        let d = s
            .ok(
                &alice,
                Method::POST,
                "/api/v1/decrypt",
                json!({"ciphertext": ct, "context": ctx}),
            )
            .await;
        assert_eq!(
            STANDARD.decode(d["plaintext"].as_str().unwrap()).unwrap(),
            plaintext.as_bytes()
        );
        // Failures: wrong context, altered ciphertext, another user.
        s.fails(
            &alice,
            Method::POST,
            "/api/v1/decrypt",
            json!({"ciphertext": ct, "context": {"tenant": "other"}}),
        )
        .await;
        let mut bad = STANDARD.decode(&ct).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        s.fails(
            &alice,
            Method::POST,
            "/api/v1/decrypt",
            json!({"ciphertext": STANDARD.encode(&bad), "context": ctx}),
        )
        .await;
        s.fails(
            &bob,
            Method::POST,
            "/api/v1/decrypt",
            json!({"ciphertext": ct, "context": ctx}),
        )
        .await;
        s.ok(
            &alice,
            Method::POST,
            &format!("/api/v1/keys/{}/reencrypt", ids[t]),
            json!({"ciphertext": ct, "context": ctx}),
        )
        .await;
        let batch = format!("LEAK-BATCH-{}", uuid_like());
        secrets.add("batch plaintext", &batch);
        s.ok(&alice, Method::POST, &format!("{path}/batch"), json!({"items": [{"plaintext": STANDARD.encode(&batch)}, {"plaintext": STANDARD.encode(&batch), "context": ctx}]}))
            .await;
        let dk = s
            .ok(
                &alice,
                Method::POST,
                &format!("/api/v1/keys/{}/datakey", ids[t]),
                json!({"context": ctx}),
            )
            .await;
        secrets.add(
            "data key",
            STANDARD.decode(dk["plaintext"].as_str().unwrap()).unwrap(),
        );
    }
    // A plaintext that is not base64, and one in a body of the wrong shape: the error must
    // not echo it.
    let not_b64 = format!("LEAK-NOT-BASE64-{}!!", uuid_like());
    secrets.add("invalid plaintext", &not_b64);
    let enc = format!("/api/v1/keys/{}/encrypt", ids["aes-256-gcm"]);
    s.fails(&alice, Method::POST, &enc, json!({"plaintext": not_b64}))
        .await;
    s.fails(&alice, Method::POST, &enc, json!({"plaintext": [not_b64]}))
        .await;
    s.fails(
        &alice,
        Method::POST,
        &enc,
        json!({"plaintext": STANDARD.encode(&plaintext), "context": {"tenant": [context_value]}}),
    )
    .await;

    // Signatures, MACs, public keys.
    let message = format!("LEAK-MESSAGE-{}", uuid_like());
    secrets.add("signed message", &message);
    for t in ["ed25519", "ecdsa-p256", "rsa-3072", "rsa-4096"] {
        let path = format!("/api/v1/keys/{}", ids[t]);
        let sig = s
            .ok(
                &alice,
                Method::POST,
                &format!("{path}/sign"),
                json!({"message": STANDARD.encode(&message)}),
            )
            .await;
        let v = s
            .ok(
                &alice,
                Method::POST,
                &format!("{path}/verify"),
                json!({"message": STANDARD.encode(&message), "signature": sig["signature"]}),
            )
            .await;
        assert_eq!(v["valid"], true);
        s.ok(
            &alice,
            Method::GET,
            &format!("{path}/public-key"),
            Value::Null,
        )
        .await;
        s.fails(
            &bob,
            Method::POST,
            &format!("{path}/sign"),
            json!({"message": STANDARD.encode(&message)}),
        )
        .await;
    }
    let mac_path = format!("/api/v1/keys/{}", ids["hmac-sha256"]);
    let mac = s
        .ok(
            &alice,
            Method::POST,
            &format!("{mac_path}/mac"),
            json!({"message": STANDARD.encode(&message)}),
        )
        .await;
    s.ok(
        &alice,
        Method::POST,
        &format!("{mac_path}/verify-mac"),
        json!({"message": STANDARD.encode(&message), "mac": mac["mac"]}),
    )
    .await;
    s.ok(
        &alice,
        Method::POST,
        &format!("/api/v1/keys/{}/rotate", ids["aes-256-gcm"]),
        Value::Null,
    )
    .await;

    // Bad tokens: forged, expired, HS256 with a secret, garbage.
    let forger = Signer::es256("leak-1");
    let forged = forger.token(&claims("alice", "acme"));
    let mut expired_claims = claims("alice", "acme");
    expired_claims["exp"] = json!(jwt::now() - 3600);
    let expired = idp.token(&expired_claims);
    let hs_secret = format!("LEAK-HS-SECRET-{}", uuid_like());
    secrets.add("HS256 secret", &hs_secret);
    let hs = jwt::hs256(
        &idp.header(),
        &claims("alice", "acme"),
        hs_secret.as_bytes(),
    );
    let garbage = format!("LEAK-GARBAGE-TOKEN-{}", uuid_like());
    for (name, t) in [
        ("forged token", &forged),
        ("expired token", &expired),
        ("HS256 token", &hs),
        ("garbage token", &garbage),
    ] {
        secrets.add(name, t);
        assert_eq!(
            s.fails(t, Method::GET, "/api/v1/keys", Value::Null).await,
            401
        );
    }

    // Seal and unseal again, then an auditor's view of the log.
    s.ok(&admin, Method::POST, "/api/v1/sys/seal", Value::Null)
        .await;
    s.fails(
        &alice,
        Method::POST,
        &enc,
        json!({"plaintext": STANDARD.encode(&plaintext)}),
    )
    .await;
    for sh in &shares[1..] {
        s.ok("", Method::POST, "/api/v1/sys/unseal", json!({"share": sh}))
            .await;
    }
    let export = s
        .http
        .get(format!("{addr}/api/v1/audit/export"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    let export = export.bytes().await.unwrap().to_vec();
    assert!(
        export
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            > 50,
        "the export holds the session: {}",
        String::from_utf8_lossy(&export[..export.len().min(3000)])
    );
    assert!(server.stop(), "graceful shutdown");

    // Where secrets could have gone.
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("server-")
        })
        .map(|p| std::fs::read(p).unwrap())
        .next()
        .expect("server log");
    assert!(
        contains(&log, b"TRACE") && log.len() > 100_000,
        "the log is at trace level ({} bytes)",
        log.len()
    );
    places.push(("server log".into(), log));
    places.push(("audit export".into(), export));
    let dump = Command::new("pg_dump").arg(&admin_db).output().unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(contains(&dump.stdout, b"audit_events"));
    places.push(("database dump".into(), dump.stdout));
    files(&data_dir, &mut places);
    places.extend(s.error_bodies.iter().cloned());
    assert!(s.error_bodies.len() >= 15, "the session had its failures");

    let mut found = Vec::new();
    for (secret, needle) in secrets.forms() {
        for (place, hay) in &places {
            if contains(hay, &needle) {
                found.push(format!("{secret} in {place}"));
            }
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));

    // A server that cannot reach its database names the problem, not the password.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            &db_url,
            &format!(
                "postgres://{role}:{password}@127.0.0.1:{}/{db_name}",
                free_port()
            ),
        ),
    )
    .unwrap();
    let out = Command::new(sovra_bin())
        .args(["server", "--config"])
        .arg(&config)
        .env("SOVRA_LOG", "trace")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = [out.stdout, out.stderr].concat();
    assert!(!all.is_empty());
    assert!(
        !contains(&all, password.as_bytes()),
        "{}",
        String::from_utf8_lossy(&all)
    );

    psql(
        &admin_db.replace(&format!("/{db_name}"), "/postgres"),
        &format!("DROP DATABASE {db_name}"),
    );
    psql(
        &admin_db.replace(&format!("/{db_name}"), "/postgres"),
        &format!("DROP ROLE {role}"),
    );
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/limits` of a running server.
fn proc_file(server: &Server, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{}/{name}", server.child.id())).unwrap()
}

#[test]
fn server_mode_disables_core_dumps_and_locks_memory() {
    let dir = TempDir::new("harden");
    let server = Server::start_dev(dir.path(), "");
    let limits = proc_file(&server, "limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    let status = proc_file(&server, "status");
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    // The tests run as root (CAP_IPC_LOCK): everything is locked.
    assert!(locked_kb > 1024, "VmLck {locked_kb} kB");
    let log = server.log_text();
    assert!(log.contains("core dumps disabled"), "{log}");
    assert!(log.contains("memory locked"), "{log}");
}

#[test]
fn without_cap_ipc_lock_and_a_small_memlock_limit_the_server_says_why_it_cannot_lock() {
    let dir = TempDir::new("harden-nolock");
    std::fs::create_dir_all(dir.path()).unwrap();
    let cfg = common::write_config(dir.path(), "");
    let log = dir.path().join("server.log");
    // `prlimit` sets a 64 KiB lock limit, `setpriv` drops CAP_IPC_LOCK from the bounding set,
    // so that even root is bound by that limit.
    let mut child = Command::new("prlimit")
        .args([
            "--memlock=65536:65536",
            "setpriv",
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
        ])
        .arg(sovra_bin())
        .args(["server", "--dev", "--data-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(&cfg)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("server.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !dir.path().join("dev.env").exists() {
        assert!(child.try_wait().unwrap().is_none(), "server exited");
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(dir.path().join("server.err")).unwrap();
    assert!(text.contains("memory NOT locked"), "{text}");
    assert!(text.contains("LimitMEMLOCK"), "{text}");
    assert!(text.contains("core dumps disabled"), "{text}");
    assert!(status.contains("VmLck:\t       0 kB"), "{status}");
}
