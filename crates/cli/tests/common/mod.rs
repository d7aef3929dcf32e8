//! End-to-end harness: starts the real `sovra` binary on a loopback port and talks to it with
//! the real client, the CLI and plain HTTPS.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn sovra_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sovra"))
}

/// A unique temporary directory, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sovra-e2e-{tag}-{}", uuid_like()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn uuid_like() -> String {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A running server. Killed on drop.
/// The orgs test JWTs name; a dev server trusting an issuer has them created at start.
pub(crate) const FIXTURE_ORGS: [&str; 4] = ["acme", "globex", "other", "partner"];

pub(crate) struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub addr: String,
    pub token: Option<String>,
    pub cacert: PathBuf,
    pub log: PathBuf,
}

/// A handle on the server's log file in append mode: stdout and stderr each get one, and
/// neither overwrites what the other wrote.
fn log_file(path: &Path) -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
    )
}

/// Extra config for `--dev --config`: always listens on an ephemeral loopback port.
pub(crate) fn write_config(dir: &Path, extra: &str) -> PathBuf {
    write_config_listening(dir, "127.0.0.1:0", extra)
}

/// [`write_config`] listening on `listen` (an ephemeral port of another address: `[::1]:0`).
pub(crate) fn write_config_listening(dir: &Path, listen: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("sovra-{}.toml", uuid_like()));
    std::fs::write(&p, format!("listen = \"{listen}\"\n{extra}")).unwrap();
    p
}

impl Server {
    /// Starts `sovra server --dev` with `extra_config` expecting it to refuse to start (a
    /// configuration error); returns its stderr. Panics if it is still running after 60 s.
    pub(crate) fn run_dev_expecting_failure(dir: &Path, extra_config: &str) -> String {
        let cfg = write_config(dir, extra_config);
        let mut child = Command::new(sovra_bin())
            .args(["server", "--dev", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sovra");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the server started with {extra_config:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{extra_config:?}: {err}");
        err
    }

    /// `sovra server --dev --data-dir DIR --config (listen on port 0 + extra)`; waits for
    /// dev.env and readiness.
    pub(crate) fn start_dev(data_dir: &Path, extra_config: &str) -> Server {
        Self::start_dev_env(data_dir, extra_config, &[])
    }

    pub(crate) fn start_dev_env(
        data_dir: &Path,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Server {
        Self::start_dev_listening(data_dir, "127.0.0.1:0", extra_config, env)
    }

    /// [`Server::start_dev_env`] listening on `listen` instead of 127.0.0.1.
    pub(crate) fn start_dev_listening(
        data_dir: &Path,
        listen: &str,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let _ = std::fs::remove_file(data_dir.join("dev.env"));
        let cfg = write_config_listening(data_dir, listen, extra_config);
        let log = data_dir.join(format!("server-{}.log", uuid_like()));
        let mut cmd = Command::new(sovra_bin());
        cmd.args(["server", "--dev", "--data-dir"])
            .arg(data_dir)
            .arg("--config")
            .arg(&cfg);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .expect("start sovra");
        let mut s = Server {
            child,
            data_dir: data_dir.to_path_buf(),
            addr: String::new(),
            token: None,
            cacert: PathBuf::new(),
            log,
        };
        let env_file = data_dir.join("dev.env");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&env_file) {
                let vars: HashMap<_, _> = text
                    .lines()
                    .filter_map(|l| {
                        l.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect();
                if let (Some(a), Some(t), Some(c)) = (
                    vars.get("SOVRA_ADDR"),
                    vars.get("SOVRA_TOKEN"),
                    vars.get("SOVRA_CACERT"),
                ) {
                    s.addr = a.clone();
                    s.token = Some(t.clone());
                    s.cacert = PathBuf::from(c);
                    break;
                }
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!(
                    "sovra exited with {status}: {}",
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sovra did not start: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if extra_config.contains("[[auth.jwt]]") {
            s.create_fixture_orgs();
        }
        s
    }

    /// Creates the orgs the tests' JWTs name ([`FIXTURE_ORGS`]) as the dev operator: nothing
    /// creates an org implicitly. Already there (a restart on the same data) is fine.
    pub(crate) fn create_fixture_orgs(&self) {
        for org in FIXTURE_ORGS {
            let out = self.cli(&["org", "create", org], None);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || err.contains("already exists"),
                "org create {org}: {err}"
            );
        }
    }

    /// `sovra server --config FILE` (not dev): the config must set listen, tls and
    /// database_url. `addr` is where it listens.
    pub(crate) fn start_config(config: &Path, addr: &str, cacert: &Path, log_dir: &Path) -> Server {
        Self::start_config_env(config, addr, cacert, log_dir, &[])
    }

    /// [`Server::start_config`] with extra environment variables (`SOVRA_LOG`, ...).
    pub(crate) fn start_config_env(
        config: &Path,
        addr: &str,
        cacert: &Path,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Server {
        let log = log_dir.join(format!("server-{}.log", uuid_like()));
        let child = Command::new(sovra_bin())
            .args(["server", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .expect("start sovra");
        let s = Server {
            child,
            data_dir: log_dir.to_path_buf(),
            addr: addr.to_string(),
            token: None,
            cacert: cacert.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr.trim_start_matches("https://")).is_err() {
            assert!(
                Instant::now() < deadline,
                "sovra did not listen: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A typed client with the given token (default: the dev token).
    pub(crate) fn client_with(&self, token: Option<String>) -> sovra_client::Client {
        let ca = std::fs::read(&self.cacert).unwrap();
        sovra_client::Client::new(&self.addr, token, Some(&ca)).unwrap()
    }

    pub(crate) fn client(&self) -> sovra_client::Client {
        self.client_with(self.token.clone())
    }

    /// A raw HTTPS client trusting the server's certificate.
    pub(crate) fn http(&self) -> reqwest::Client {
        self.http_builder().build().unwrap()
    }

    /// A client whose connections come from `local` (any 127.0.0.0/8 address on loopback):
    /// another source, as far as the server can tell.
    pub(crate) fn http_from(&self, local: std::net::IpAddr) -> reqwest::Client {
        self.http_builder().local_address(local).build().unwrap()
    }

    fn http_builder(&self) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.cacert).unwrap()).unwrap();
        reqwest::Client::builder().tls_certs_only([ca])
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    /// Runs the CLI against this server with the dev token; stdin bytes optional.
    pub(crate) fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.cli_token(args, stdin, self.token.as_deref())
    }

    pub(crate) fn cli_token(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        token: Option<&str>,
    ) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(sovra_bin());
        cmd.args(args)
            .env("SOVRA_ADDR", &self.addr)
            .env("SOVRA_CACERT", &self.cacert)
            .env_remove("SOVRA_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("SOVRA_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        {
            let mut input = child.stdin.take().unwrap();
            if let Some(b) = stdin {
                // A command that fails before reading its input (a bad argument) may exit
                // first: the pipe is then closed, which is not the test's failure.
                match input.write_all(b) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    other => other.unwrap(),
                }
            }
        }
        child.wait_with_output().unwrap()
    }

    /// SIGTERM and wait (graceful shutdown); returns whether it exited cleanly.
    pub(crate) fn stop(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Admin URL of the test PostgreSQL (CI provides one at 127.0.0.1:5432).
pub(crate) fn pg_admin_url() -> String {
    std::env::var("SOVRA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Runs one SQL statement with psql (stops at the first error) and returns its unaligned,
/// tuples-only output.
pub(crate) fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .expect("psql must be installed");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// Runs SQL statements on a SQLite database file with Python's `sqlite3` (an independent
/// client, as an insider with the file would), returning the rows of the last statement as
/// lines of space-separated values.
pub(crate) fn sqlite3(db: &Path, sql: &str) -> String {
    const SCRIPT: &str = "import sqlite3, sys\n\
        c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
        *head, last = [s for s in sys.argv[2].split(';') if s.strip()]\n\
        for s in head: c.execute(s)\n\
        for row in c.execute(last): print(' '.join(str(v) for v in row))\n";
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(db)
        .arg(sql)
        .output()
        .expect("python3 must be installed");
    assert!(out.status.success(), "{sql}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// Takes the database named `db` away from every client: new connections are refused and the
/// open ones are ended (the server's pool included), as when PostgreSQL goes down.
pub(crate) fn take_pg_database_away(db: &str) {
    let admin = pg_admin_url();
    psql(
        &admin,
        &format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false"),
    );
    psql(
        &admin,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'"
        ),
    );
}

/// Undoes [`take_pg_database_away`].
pub(crate) fn give_pg_database_back(db: &str) {
    psql(
        &pg_admin_url(),
        &format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true"),
    );
}

/// Creates a fresh PostgreSQL database and returns its URL.
pub(crate) fn fresh_pg_database() -> String {
    let name = format!("sovra_e2e_{}", uuid_like());
    let admin = pg_admin_url();
    let out = Command::new("psql")
        .arg(&admin)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("psql must be installed");
    assert!(
        out.status.success(),
        "cannot create database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    format!("{base}/{name}")
}

// ---- CLI helpers shared by the end-to-end tests ----

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) fn ok(s: &Server, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let out = s.cli(args, stdin);
    assert!(
        out.status.success(),
        "sovra {args:?} failed: {}",
        text(&out.stderr)
    );
    out
}

pub(crate) fn ok_json(s: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = ok(s, &all, None);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

/// A command that failed and said `needle` on stderr.
#[track_caller]
pub(crate) fn assert_fails_saying(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "it succeeded: {err}");
    assert!(err.contains(needle), "no {needle:?} in: {err}");
}

/// `args` followed by one `--context` argument for each `key=value` of `context`.
pub(crate) fn with_context<'a>(args: &[&'a str], context: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(context.iter().flat_map(|kv| ["--context", kv]));
    all
}

/// `sovra decrypt` of `ciphertext` under each of the `wrong` contexts fails, prints no
/// plaintext and says every one of `says`.
#[track_caller]
pub(crate) fn assert_wrong_contexts_refused(
    s: &Server,
    ciphertext: &[u8],
    wrong: &[&[&str]],
    says: &[&str],
) {
    for context in wrong {
        let out = s.cli(&with_context(&["decrypt"], context), Some(ciphertext));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{context:?} must not decrypt");
        assert!(
            out.stdout.is_empty(),
            "{context:?}: no plaintext on failure"
        );
        for needle in says {
            assert!(err.contains(needle), "{context:?}: {err}");
        }
    }
}

// ---- non-dev servers: ports and certificates ----

pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A self-signed P-256 certificate for 127.0.0.1 made by openssl: (cert, key).
///
/// `openssl req -x509` marks the certificate `CA:TRUE` by default, and rustls (webpki) refuses
/// a CA certificate as a server's end-entity certificate (`CaUsedAsEndEntity`), so unless
/// `as_ca` the certificate is explicitly `CA:FALSE`.
pub(crate) fn make_cert(dir: &Path, tag: &str, as_ca: bool) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{tag}-cert.pem"));
    let key = dir.join(format!("{tag}-key.pem"));
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-days",
        "2",
    ]);
    if !as_ca {
        cmd.args(["-addext", "basicConstraints=critical,CA:FALSE"]);
    }
    cmd.arg("-keyout").arg(&key).arg("-out").arg(&cert);
    run_ok(&mut cmd);
    (cert, key)
}

// ---- raw HTTPS answers ----

/// An HTTP answer as the tests read it: the body as text and, when it is JSON, parsed
/// (`Value::Null` otherwise).
pub(crate) struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: serde_json::Value,
}

impl Resp {
    pub(crate) async fn read(resp: reqwest::Response) -> Result<Resp, reqwest::Error> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok(Resp {
            status,
            headers,
            text,
            json,
        })
    }

    /// A header's value, when it is there and readable.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn request_id(&self) -> Option<&str> {
        self.header("x-request-id")
    }
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bounded: some answers to oversized requests echo a lot.
        let t: String = self.text.chars().take(2000).collect();
        write!(f, "HTTP {} {t}", self.status)
    }
}

/// One HTTPS request to `s` with `http`; `body` is sent as JSON text (it may be malformed).
pub(crate) async fn send(
    s: &Server,
    http: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let mut req = http.request(method, s.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    Resp::read(req.send().await.expect("request"))
        .await
        .expect("response body")
}

/// One JSON API request as the holder of `token`.
pub(crate) async fn api_call(
    s: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Resp {
    let body = body.map(|b| b.to_string());
    send(s, &s.http(), method, path, Some(token), body.as_deref()).await
}

/// [`api_call`] that must succeed; its JSON body.
pub(crate) async fn api_ok(
    s: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let r = api_call(s, token, method.clone(), path, body).await;
    assert!((200..300).contains(&r.status), "{method} {path}: {r:?}");
    r.json
}

/// An AES key `name` made by the holder of `token`; its id.
pub(crate) async fn create_aes_key(s: &Server, token: &str, name: &str) -> String {
    let k = api_ok(
        s,
        token,
        reqwest::Method::POST,
        "/api/v1/keys",
        Some(serde_json::json!({"name": name, "type": "aes-256-gcm"})),
    )
    .await;
    k["id"].as_str().unwrap().to_string()
}

/// Encrypts "hi" (no context) under `key` as the holder of `token`.
pub(crate) async fn encrypt_hi(s: &Server, token: &str, key: &str) -> Resp {
    api_call(
        s,
        token,
        reqwest::Method::POST,
        &format!("/api/v1/keys/{key}/encrypt"),
        Some(serde_json::json!({"plaintext": "aGk="})),
    )
    .await
}

impl Server {
    /// Rows of SQL on this dev server's SQLite database, read as an insider with the file
    /// would ([`sqlite3`]).
    pub(crate) fn sql(&self, sql: &str) -> String {
        sqlite3(&self.data_dir.join("sovra.db"), sql)
    }

    /// An unauthenticated `GET path` over HTTPS that must answer 200.
    pub(crate) async fn get_ok(&self, path: &str) -> Resp {
        let r = send(self, &self.http(), reqwest::Method::GET, path, None, None).await;
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        r
    }
}

/// Every event the caller may list, newest first (paging through `next_before_seq`).
pub(crate) async fn list_all(s: &Server, token: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut before = String::new();
    loop {
        let r = send(
            s,
            &s.http(),
            reqwest::Method::GET,
            &format!("/api/v1/audit?limit=1000{before}"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "audit list: {}", r.text);
        out.extend(r.json["events"].as_array().unwrap().iter().cloned());
        match r.json["next_before_seq"].as_u64() {
            Some(n) => before = format!("&before_seq={n}"),
            None => return out,
        }
    }
}

// ---- raw TLS connections ----

impl Server {
    /// The listener's `host:port`.
    pub(crate) fn host_port(&self) -> &str {
        self.addr.trim_start_matches("https://")
    }

    /// A TLS client trusting this server's certificate and offering the ALPN `protocols`.
    pub(crate) fn tls_connector(&self, protocols: &[&[u8]]) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(&self.cacert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
    }

    /// A TCP connection to the server from the local address `source` (on Linux every
    /// 127.0.0.0/8 address is loopback: each one is another client to the server).
    pub(crate) async fn tcp_from(
        &self,
        source: std::net::IpAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let server: std::net::SocketAddr = self.host_port().parse().unwrap();
        let socket = if source.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        socket.connect(server).await
    }

    /// A TLS connection from `source` offering `protocols`, with nothing on top.
    pub(crate) async fn tls_from(
        &self,
        source: std::net::IpAddr,
        protocols: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = self.tcp_from(source).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        self.tls_connector(protocols).connect(name, tcp).await
    }
}

/// A dev server in a temporary directory of its own, with a raw HTTPS client trusting it and
/// its dev token: what the tests of the HTTP API start with. The server stops before its
/// directory is removed.
pub(crate) struct DevApi {
    pub server: Server,
    pub http: reqwest::Client,
    pub token: String,
    _dir: TempDir,
}

impl DevApi {
    /// `sovra server --dev` with no extra config.
    pub(crate) fn start(tag: &str) -> DevApi {
        Self::start_with(tag, |_| String::new())
    }

    /// `sovra server --dev` with the extra config that `config` writes for the data directory
    /// (it may put files there first: a JWKS, a sink's path).
    pub(crate) fn start_with(tag: &str, config: impl FnOnce(&Path) -> String) -> DevApi {
        let dir = TempDir::new(tag);
        let server = Server::start_dev(dir.path(), &config(dir.path()));
        DevApi {
            http: server.http(),
            token: server.token.clone().unwrap(),
            server,
            _dir: dir,
        }
    }

    /// Stops the server cleanly (its audit events flushed and signed), runs `offline` on the
    /// data directory while it is down, and starts it again there with `extra_config`.
    pub(crate) fn restart_after<T>(
        self,
        extra_config: &str,
        offline: impl FnOnce(&Path) -> T,
    ) -> (DevApi, T) {
        let DevApi { server, _dir, .. } = self;
        assert!(server.stop(), "the server stops cleanly");
        let result = offline(_dir.path());
        let server = Server::start_dev(_dir.path(), extra_config);
        let api = DevApi {
            http: server.http(),
            token: server.token.clone().unwrap(),
            server,
            _dir,
        };
        (api, result)
    }

    /// The dev token as [`send`] takes it.
    pub(crate) fn t(&self) -> Option<&str> {
        Some(&self.token)
    }
}

/// Two dev servers on one fresh PostgreSQL database, as two nodes of one deployment: the
/// second shares the first's unseal material, token and certificate.
pub(crate) struct DevNodes {
    pub a: Server,
    pub b: Server,
    /// The config both run with (`database_url` and the extra config), to restart one.
    pub config: String,
    /// The data directories of `a` and `b`.
    pub dirs: (TempDir, TempDir),
}

impl DevNodes {
    pub(crate) fn start(tag: &str, extra_config: &str) -> DevNodes {
        let config = format!("database_url = \"{}\"\n{extra_config}", fresh_pg_database());
        let dir_a = TempDir::new(&format!("{tag}-a"));
        let dir_b = TempDir::new(&format!("{tag}-b"));
        let a = Server::start_dev(dir_a.path(), &config);
        for f in ["dev-seal.key", "dev-token", "tls-cert.pem", "tls-key.pem"] {
            std::fs::copy(dir_a.path().join(f), dir_b.path().join(f)).unwrap();
        }
        let b = Server::start_dev(dir_b.path(), &config);
        assert_ne!(a.addr, b.addr);
        DevNodes {
            a,
            b,
            config,
            dirs: (dir_a, dir_b),
        }
    }
}

/// A JSON API error: status, one of `codes`, a message, and the request id (also in
/// `x-request-id`).
#[track_caller]
pub(crate) fn assert_error_any(r: &Resp, status: u16, codes: &[&str]) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{r:?}"
    );
    let e = &r.json["error"];
    let code = e["code"].as_str().unwrap_or_default();
    assert!(codes.contains(&code), "expected {codes:?}: {r:?}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
    let rid = e["request_id"].as_str().unwrap_or_default();
    assert_eq!(rid.len(), 36, "request id is a uuid: {r:?}");
    assert_eq!(r.request_id(), Some(rid), "{r:?}");
}

#[track_caller]
pub(crate) fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_error_any(r, status, &[code]);
}

/// An error answer whose message says `needle`.
#[track_caller]
pub(crate) fn assert_message_has(r: &Resp, needle: &str) {
    let message = r.json["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {r:?}"));
    assert!(
        message.contains(needle),
        "no {needle:?} in the message: {r:?}"
    );
}

/// The value of the Prometheus sample whose name is `name` and whose labels include every
/// `labels` pair.
pub(crate) fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (labelset, value) = if let Some(r) = rest.strip_prefix('{') {
            let (set, v) = r.rsplit_once('}')?;
            (set, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            return None;
        };
        labels
            .iter()
            .all(|(k, v)| labelset.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// The 16 bytes of a hyphenated UUID.
pub(crate) fn uuid_bytes(id: &str) -> Vec<u8> {
    let hex = id.replace('-', "");
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The ciphertext (base64) with the key id in its envelope header (bytes 4..20) replaced.
pub(crate) fn with_key_id(ciphertext_b64: &str, key_id: &str) -> String {
    let mut ct = sovra_client::unb64(ciphertext_b64).unwrap();
    ct[4..20].copy_from_slice(&uuid_bytes(key_id));
    sovra_client::b64(&ct)
}

/// A path as a CLI argument.
pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `sovra key create` of `key_type`; checks the type it answers and returns the key id.
pub(crate) fn create(s: &Server, name: &str, key_type: &str) -> String {
    let k = ok_json(s, &["key", "create", "--name", name, "--type", key_type]);
    assert_eq!(k["type"], key_type);
    k["id"].as_str().unwrap().to_string()
}
