//! A non-dev server with the Shamir seal, end to end: `sovra operator init|unseal|seal|status`
//! against the real binary on loopback, with an openssl certificate, a SQLite database from the
//! config and JWT users whose tokens an independent issuer (Python `cryptography`) signs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Resp, Server, TempDir, free_port, make_cert, run_ok, send};
use reqwest::Method;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const ISSUER: &str = "https://idp.sovra-e2e.test";
const AUDIENCE: &str = "sovra-e2e";

fn jwt_tool() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/jwt_tool.py")
}

/// An identity provider: an RSA key (openssl), its JWKS file and RS256 tokens, both made by
/// Python `cryptography`, independently of the server's JWT library.
struct Idp {
    key: PathBuf,
    jwks: PathBuf,
}

impl Idp {
    fn new(dir: &Path) -> Idp {
        let key = dir.join("idp-rsa.pem");
        run_ok(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
                .arg("rsa_keygen_bits:2048")
                .arg("-out")
                .arg(&key),
        );
        let jwks = dir.join("jwks.json");
        let out = run_ok(
            Command::new("python3")
                .arg(jwt_tool())
                .arg("jwks")
                .arg(&key)
                .arg("e2e-1"),
        );
        let set: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(set["keys"][0]["kty"], "RSA");
        std::fs::write(&jwks, &out.stdout).unwrap();
        Idp { key, jwks }
    }

    fn token(&self, sub: &str, org: &str, roles: &[&str]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "org": org,
            "roles": roles, "iat": now, "exp": now + 3600,
        });
        let out = run_ok(
            Command::new("python3")
                .arg(jwt_tool())
                .arg("token")
                .arg(&self.key)
                .arg("e2e-1")
                .arg(claims.to_string()),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

/// One non-dev server's files: config (own port, own SQLite database, TLS, optional JWT issuer).
struct Node {
    dir: PathBuf,
    config: PathBuf,
    addr: String,
    cacert: PathBuf,
}

impl Node {
    fn new(parent: &Path, tag: &str, idp: Option<&Idp>) -> Node {
        Self::with_cert(parent, tag, idp, false)
    }

    fn with_cert(parent: &Path, tag: &str, idp: Option<&Idp>, ca_cert: bool) -> Node {
        let dir = parent.join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = make_cert(&dir, tag, ca_cert);
        let port = free_port();
        let mut cfg = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("data").display(),
            cert.display(),
            key.display()
        );
        if let Some(idp) = idp {
            cfg.push_str(&format!(
                "\n[[auth.jwt]]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks = \"{}\"\nallow_operator = true\nprovision_identities = true\n",
                idp.jwks.display()
            ));
        }
        let config = dir.join("sovra.toml");
        std::fs::write(&config, cfg).unwrap();
        Node {
            addr: format!("https://127.0.0.1:{port}"),
            config,
            cacert: cert,
            dir,
        }
    }

    /// The one-time init token the server writes into its data directory at first start.
    fn init_token_file(&self) -> PathBuf {
        self.dir.join("data").join("init-token")
    }

    fn start(&self) -> Server {
        Server::start_config(&self.config, &self.addr, &self.cacert, &self.dir)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs the CLI; asserts success; parses stdout as JSON when `--output json` was given.
fn cli_ok(s: &Server, args: &[&str], token: Option<&str>) -> String {
    let out = s.cli_token(args, None, token);
    assert!(
        out.status.success(),
        "sovra {args:?} failed: {}\nserver log:\n{}",
        text(&out.stderr),
        s.log_text()
    );
    text(&out.stdout)
}

fn cli_json(s: &Server, args: &[&str], token: Option<&str>) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = cli_ok(s, &all, token);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Runs the CLI expecting failure; returns stderr.
fn cli_err(s: &Server, args: &[&str], token: Option<&str>) -> String {
    let out = s.cli_token(args, None, token);
    assert!(
        !out.status.success(),
        "sovra {args:?} should fail, printed {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn status(s: &Server) -> Value {
    cli_json(s, &["operator", "status"], None)
}

fn assert_progress(s: &Server, sealed: bool, progress: u64) {
    let st = status(s);
    assert_eq!(st["sealed"], sealed, "{st}");
    assert_eq!(st["progress"], progress, "{st}");
}

async fn get(s: &Server, path: &str, token: Option<&str>) -> Resp {
    send(s, &s.http(), Method::GET, path, token, None).await
}

/// Outside dev mode the server creates its data directory for its user only (0700) and the
/// SQLite database and its WAL files 0600, whatever the umask (the tests run with 022).
fn assert_private_data_dir(data: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(data), 0o700, "{}", data.display());
    let mut files = 0;
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("sovra.db")
        {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files += 1;
        }
    }
    // The database, its WAL and shared-memory files and the audit journal.
    assert!(files >= 3, "{files} database files in {}", data.display());
}

fn share_id(share: &str) -> u8 {
    STANDARD.decode(share).unwrap()[0]
}

fn init(node: &Node, s: &Server) -> Vec<String> {
    let token_file = node.init_token_file();
    let init = cli_json(
        s,
        &[
            "operator",
            "init",
            "--shares",
            "5",
            "--threshold",
            "3",
            "--init-token-file",
            token_file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(init["threshold"], 3);
    let shares: Vec<String> = init["shares"]
        .as_array()
        .expect("shares array")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 5);
    let ids: std::collections::HashSet<u8> = shares.iter().map(|s| share_id(s)).collect();
    assert_eq!(ids.len(), 5, "every share has its own identifier");
    for sh in &shares {
        assert_eq!(
            STANDARD.decode(sh).unwrap().len(),
            33,
            "id byte + 32-byte unseal key share"
        );
    }
    shares
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shamir_init_unseal_seal_and_restart() {
    let dir = TempDir::new("seal");
    let idp = Idp::new(dir.path());
    let node = Node::new(dir.path(), "a", Some(&idp));
    let s = node.start();
    let user = idp.token("alice", "acme", &["user"]);
    let admin = idp.token("ops-admin", "acme", &["operator"]);

    // Before init: nothing works but status, and status says so.
    let st = status(&s);
    assert_eq!(st["initialized"], false, "{st}");
    assert_eq!(st["sealed"], true, "{st}");
    let t = cli_ok(&s, &["operator", "status"], None);
    assert!(t.contains("initialized: false"), "{t}");
    let r = get(&s, "/api/v1/keys", Some(&user)).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json["error"]["code"], "not_initialized", "{r:?}");
    assert_eq!(get(&s, "/ready", None).await.status, 503);

    // Init prints 5 distinct shares, once.
    let shares = init(&node, &s);
    assert_private_data_dir(&node.dir.join("data"));
    let err = cli_err(
        &s,
        &[
            "operator",
            "init",
            "--shares",
            "5",
            "--threshold",
            "3",
            "--init-token-file",
            "/dev/null",
        ],
        None,
    );
    assert!(err.contains("already initialized"), "{err}");
    assert!(
        !node.init_token_file().exists(),
        "the spent init token is removed"
    );
    let st = status(&s);
    assert_eq!(st["initialized"], true);
    assert_eq!(st["sealed"], true);
    assert_eq!(st["seal_type"], "shamir");
    assert_eq!(st["shares"], 5);
    assert_eq!(st["threshold"], 3);
    assert_eq!(st["progress"], 0);

    // Sealed: liveness yes, readiness no, the API answers 503 `sealed`.
    let r = get(&s, "/health", None).await;
    assert_eq!((r.status, r.json["status"].as_str()), (200, Some("ok")));
    let r = get(&s, "/ready", None).await;
    assert_eq!((r.status, r.json["status"].as_str()), (503, Some("sealed")));
    let r = get(&s, "/api/v1/keys", Some(&user)).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json["error"]["code"], "sealed", "{r:?}");
    assert!(r.headers.contains_key("retry-after"));
    let err = cli_err(&s, &["key", "list"], Some(&user));
    assert!(err.contains("sealed") && err.contains("HTTP 503"), "{err}");

    // Unseal, one share at a time.
    let st = cli_json(&s, &["operator", "unseal", &shares[0]], None);
    assert_eq!(st["sealed"], true, "{st}");
    assert_eq!(st["progress"], 1, "{st}");
    let t = cli_ok(&s, &["operator", "unseal", &shares[1]], None);
    assert!(t.contains("progress:    2/3"), "{t}");
    assert_progress(&s, true, 2);

    // A share given twice is refused and the progress is kept.
    let err = cli_err(&s, &["operator", "unseal", &shares[0]], None);
    assert!(err.contains("already submitted"), "{err}");
    assert!(err.contains("HTTP 400"), "{err}");
    assert_progress(&s, true, 2);
    // Garbage: not base64, too short to be a share, the wrong length.
    let err = cli_err(&s, &["operator", "unseal", "not a share!!"], None);
    assert!(err.contains("share is not valid standard base64"), "{err}");
    assert_progress(&s, true, 2);
    let err = cli_err(&s, &["operator", "unseal", "AA=="], None);
    assert!(err.contains("wrong length"), "{err}");
    let short = STANDARD.encode([9u8; 10]);
    let err = cli_err(&s, &["operator", "unseal", &short], None);
    assert!(err.contains("wrong length"), "{err}");
    assert_progress(&s, true, 2);
    assert_eq!(get(&s, "/ready", None).await.status, 503);

    // The third distinct share (from stdin this time) unseals.
    let out = s.cli_token(
        &["operator", "unseal", "--output", "json"],
        Some(format!("{}\n", shares[2]).as_bytes()),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["sealed"], false, "{st}");
    let r = get(&s, "/ready", None).await;
    assert_eq!((r.status, r.json["status"].as_str()), (200, Some("ready")));
    assert!(cli_ok(&s, &["operator", "status"], None).contains("sealed:      false"));

    // Nothing creates an org implicitly: the user's org does not exist yet, and the operator
    // (whose own org is no record either) creates it.
    let r = get(&s, "/api/v1/keys", Some(&user)).await;
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (403, Some("unknown_org")),
        "{r:?}"
    );
    cli_ok(&s, &["org", "create", "acme"], Some(&admin));

    // Use it: a JWT user creates a key and encrypts.
    let key = cli_json(
        &s,
        &[
            "key",
            "create",
            "--name",
            "sealed-app",
            "--type",
            "aes-256-gcm",
        ],
        Some(&user),
    );
    let key_id = key["id"].as_str().unwrap().to_string();
    assert!(key["owner"].as_str().unwrap().ends_with("#alice"), "{key}");
    let pt_file = dir.path().join("pt.bin");
    let ct_file = dir.path().join("ct.bin");
    let back = dir.path().join("back.bin");
    std::fs::write(&pt_file, b"made before the seal and the restart").unwrap();
    let enc_args = [
        "encrypt",
        "--key",
        &key_id,
        "--context",
        "purpose=e2e",
        "--in",
        pt_file.to_str().unwrap(),
        "--out",
        ct_file.to_str().unwrap(),
    ];
    cli_ok(&s, &enc_args, Some(&user));
    let dec_args = [
        "decrypt",
        "--context",
        "purpose=e2e",
        "--in",
        ct_file.to_str().unwrap(),
        "--out",
        back.to_str().unwrap(),
    ];
    cli_ok(&s, &dec_args, Some(&user));
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&pt_file).unwrap()
    );

    // Sealing takes a token, and an admin's.
    let err = cli_err(&s, &["operator", "seal"], None);
    assert!(err.contains("HTTP 401"), "{err}");
    let err = cli_err(&s, &["operator", "seal"], Some(&user));
    assert!(
        err.contains("HTTP 403") && err.contains("permission denied"),
        "{err}"
    );
    assert_eq!(get(&s, "/ready", None).await.status, 200, "still unsealed");
    let st = cli_json(&s, &["operator", "seal"], Some(&admin));
    assert_eq!(st["sealed"], true, "{st}");
    assert_eq!(st["progress"], 0, "{st}");
    assert_eq!(get(&s, "/ready", None).await.status, 503);
    let r = get(&s, "/api/v1/keys", Some(&user)).await;
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (503, Some("sealed"))
    );
    let err = cli_err(&s, &dec_args, Some(&user));
    assert!(err.contains("sealed"), "{err}");

    // The same shares (any three) unseal again.
    for i in [3, 1, 4] {
        cli_ok(&s, &["operator", "unseal", &shares[i]], None);
    }
    assert_progress(&s, false, 0);
    std::fs::remove_file(&back).unwrap();
    cli_ok(&s, &dec_args, Some(&user));
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&pt_file).unwrap()
    );

    // A restarted process comes up sealed and needs the shares again.
    assert!(s.stop(), "graceful shutdown exits 0");
    let s = node.start();
    let st = status(&s);
    assert_eq!(st["initialized"], true, "{st}");
    assert_eq!(st["sealed"], true, "{st}");
    assert_eq!(st["progress"], 0, "{st}");
    let r = get(&s, "/api/v1/keys", Some(&user)).await;
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (503, Some("sealed"))
    );
    let err = cli_err(&s, &dec_args, Some(&user));
    assert!(err.contains("sealed"), "{err}");
    for (n, i) in [4, 2, 0].into_iter().enumerate() {
        let st = cli_json(&s, &["operator", "unseal", &shares[i]], None);
        assert_eq!(st["sealed"], n < 2, "{st}");
    }
    std::fs::remove_file(&back).unwrap();
    cli_ok(&s, &dec_args, Some(&user));
    assert_eq!(
        std::fs::read(&back).unwrap(),
        b"made before the seal and the restart"
    );
    let list = cli_json(&s, &["key", "list"], Some(&user));
    assert_eq!(list[0]["id"], key_id.as_str(), "{list}");
    // The context is still bound after the restart.
    let err = cli_err(
        &s,
        &[
            "decrypt",
            "--context",
            "purpose=other",
            "--in",
            ct_file.to_str().unwrap(),
        ],
        Some(&user),
    );
    assert!(err.contains("decryption failed"), "{err}");
}

/// The ceremony cannot be seized or disrupted by someone who merely reaches the port: init
/// needs the token the server wrote into its data directory (0600), a threshold of 1 needs
/// asking for, and the audit log names each submitted share's index (threat row R-3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_needs_the_installers_token_and_unseal_events_name_the_share() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("seal-token");
    let node = Node::new(dir.path(), "t", None);
    let s = node.start();
    let token_file = node.init_token_file();
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.starts_with("sovra-init-"), "{token}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !s.log_text().contains(token.trim()),
        "the token is never logged"
    );

    let http = s.http();
    let post_init = |body: serde_json::Value| {
        let req = http.post(s.url("/api/v1/sys/init")).json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let mut wrong = token.trim().to_string();
    wrong.pop();
    wrong.push('A');
    for body in [
        serde_json::json!({"shares": 5, "threshold": 3}),
        serde_json::json!({"shares": 5, "threshold": 3, "init_token": ""}),
        serde_json::json!({"shares": 5, "threshold": 3, "init_token": wrong}),
        serde_json::json!({"shares": 5, "threshold": 3, "init_token": "sovra-init-"}),
    ] {
        let (code, json) = post_init(body.clone()).await;
        assert_eq!(code, 403, "{body}: {json}");
        assert_eq!(json["error"]["code"], "invalid_init_token", "{json}");
        assert_eq!(status(&s)["initialized"], false);
    }
    // A threshold of 1 with the right token: refused unless asked for.
    let (code, json) =
        post_init(serde_json::json!({"shares": 3, "threshold": 1, "init_token": token.trim()}))
            .await;
    assert_eq!(code, 400, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_single_share"),
        "{json}"
    );
    assert_eq!(status(&s)["initialized"], false);
    assert!(
        token_file.exists(),
        "a refused init leaves the token usable"
    );

    let shares = init(&node, &s);
    cli_ok(&s, &["operator", "unseal", &shares[3]], None);
    let _ = cli_err(&s, &["operator", "unseal", "AQID"], None);
    cli_ok(&s, &["operator", "unseal", &shares[0]], None);
    cli_ok(&s, &["operator", "unseal", &shares[2]], None);
    assert_progress(&s, false, 0);

    // The events of the ceremony, read from the database file as an auditor with the file would.
    let events = common::sqlite3(
        &node.dir.join("data").join("sovra.db"),
        "SELECT action, resource, outcome FROM audit_events WHERE action LIKE 'sys.%' ORDER BY seq",
    );
    let expected_shares: Vec<String> = [&shares[3], &shares[0], &shares[2]]
        .iter()
        .map(|sh| format!("sys.unseal seal/share/{} success", share_id(sh)))
        .collect();
    for e in &expected_shares {
        assert!(events.contains(e.as_str()), "no {e:?} in\n{events}");
    }
    assert!(
        events.contains("sys.unseal seal/share/1 failure"),
        "{events}"
    );
    assert!(events.contains("sys.init seal/3-of-5 success"), "{events}");
    assert!(events.contains("sys.init seal/3-of-5 denied"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_from_another_server_is_refused_and_progress_kept() {
    let dir = TempDir::new("seal-mix");
    let a_node = Node::new(dir.path(), "a", None);
    let b_node = Node::new(dir.path(), "b", None);
    let a = a_node.start();
    let b = b_node.start();
    let a_shares = init(&a_node, &a);
    let b_shares = init(&b_node, &b);
    let used = [share_id(&a_shares[0]), share_id(&a_shares[1])];
    let foreign = b_shares
        .iter()
        .find(|s| !used.contains(&share_id(s)))
        .unwrap();

    cli_ok(&a, &["operator", "unseal", &a_shares[0]], None);
    cli_ok(&a, &["operator", "unseal", &a_shares[1]], None);
    assert_progress(&a, true, 2);
    // A share B's initialization issued is refused on its own: A's operators keep their
    // progress (threat: one made-up share resetting everyone's).
    let err = cli_err(&a, &["operator", "unseal", foreign], None);
    assert!(
        err.contains("not issued by this server") && err.contains("progress is kept"),
        "{err}"
    );
    assert_progress(&a, true, 2);
    assert_eq!(get(&a, "/ready", None).await.status, 503);
    // B is untouched by A's failure.
    assert_progress(&b, true, 0);

    // The third of A's own shares completes the ceremony.
    cli_ok(&a, &["operator", "unseal", &a_shares[4]], None);
    assert_progress(&a, false, 0);
    assert_eq!(get(&a, "/ready", None).await.status, 200);
    assert_eq!(get(&b, "/ready", None).await.status, 503);
}

/// With the certificate the plain `openssl req -x509` command makes (CA:TRUE), the CLI cannot
/// connect; it should say why (the certificate), not only "error sending request".
#[test]
fn cli_transport_error_names_the_cause() {
    let dir = TempDir::new("seal-ca");
    let node = Node::with_cert(dir.path(), "ca", None, true);
    let s = node.start();
    let err = cli_err(&s, &["operator", "status"], None);
    assert!(err.contains("cannot reach Sovra"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
