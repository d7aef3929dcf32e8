//! End-to-end harness: starts the real `sovra` binary on a loopback port and talks to it with
//! the real client, the CLI and plain HTTPS.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn sovra_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sovra"))
}

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sovra-e2e-{tag}-{}", uuid_like()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn uuid_like() -> String {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A running server. Killed on drop.
pub struct Server {
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
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join(format!("sovra-{}.toml", uuid_like()));
    std::fs::write(&p, format!("listen = \"127.0.0.1:0\"\n{extra}")).unwrap();
    p
}

impl Server {
    /// `sovra server --dev --data-dir DIR --config (listen on port 0 + extra)`; waits for
    /// dev.env and readiness.
    pub fn start_dev(data_dir: &Path, extra_config: &str) -> Server {
        Self::start_dev_env(data_dir, extra_config, &[])
    }

    pub fn start_dev_env(data_dir: &Path, extra_config: &str, env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let _ = std::fs::remove_file(data_dir.join("dev.env"));
        let cfg = write_config(data_dir, extra_config);
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
        s
    }

    /// `sovra server --config FILE` (not dev): the config must set listen, tls and
    /// database_url. `addr` is where it listens.
    pub fn start_config(config: &Path, addr: &str, cacert: &Path, log_dir: &Path) -> Server {
        Self::start_config_env(config, addr, cacert, log_dir, &[])
    }

    /// [`Server::start_config`] with extra environment variables (`SOVRA_LOG`, ...).
    pub fn start_config_env(
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A typed client with the given token (default: the dev token).
    pub fn client_with(&self, token: Option<String>) -> sovra_client::Client {
        let ca = std::fs::read(&self.cacert).unwrap();
        sovra_client::Client::new(&self.addr, token, Some(&ca)).unwrap()
    }

    pub fn client(&self) -> sovra_client::Client {
        self.client_with(self.token.clone())
    }

    /// A raw HTTPS client trusting the server's certificate.
    pub fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.cacert).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    /// Runs the CLI against this server with the dev token; stdin bytes optional.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.cli_token(args, stdin, self.token.as_deref())
    }

    pub fn cli_token(&self, args: &[&str], stdin: Option<&[u8]>, token: Option<&str>) -> Output {
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
    pub fn stop(mut self) -> bool {
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
pub fn pg_admin_url() -> String {
    std::env::var("SOVRA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates a fresh PostgreSQL database and returns its URL.
pub fn fresh_pg_database() -> String {
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

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn ok(s: &Server, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let out = s.cli(args, stdin);
    assert!(
        out.status.success(),
        "sovra {args:?} failed: {}",
        text(&out.stderr)
    );
    out
}

pub fn ok_json(s: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = ok(s, &all, None);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

// ---- non-dev servers: ports and certificates ----

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A self-signed P-256 certificate for 127.0.0.1 made by openssl: (cert, key).
///
/// `openssl req -x509` marks the certificate `CA:TRUE` by default, and rustls (webpki) refuses
/// a CA certificate as a server's end-entity certificate (`CaUsedAsEndEntity`), so unless
/// `as_ca` the certificate is explicitly `CA:FALSE`.
pub fn make_cert(dir: &Path, tag: &str, as_ca: bool) -> (PathBuf, PathBuf) {
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
