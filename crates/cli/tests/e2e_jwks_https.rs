//! A JWKS served over HTTPS by a real web server (Python's `http.server` behind TLS), trusted
//! through `jwks_ca_file`; a certificate the server does not trust stops startup clearly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt;

use common::{TempDir, assert_fails_saying, make_cert, sovra_bin, write_config};
use jwt::{AUDIENCE, ISSUER, Signer, claims};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Https(Child);

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `dir` over HTTPS on a free port; returns the server and its port.
fn serve_https(dir: &Path, cert: &Path, key: &Path) -> (Https, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = format!(
        "import http.server, ssl\n\
         ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         ctx.load_cert_chain({cert:?}, {key:?})\n\
         h = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory={dir:?}, **k)\n\
         s = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), h)\n\
         s.socket = ctx.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n",
        cert = cert.display().to_string(),
        key = key.display().to_string(),
        dir = dir.display().to_string(),
    );
    let child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is required");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "https JWKS server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Https(child), port)
}

fn issuer(port: u16, ca: &Path) -> String {
    format!(
        "[[auth.jwt]]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
         jwks = \"https://127.0.0.1:{port}/jwks.json\"\njwks_ca_file = \"{}\"\n\
         provision_identities = true\n",
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_from_an_https_url_authenticates_users() {
    let dir = TempDir::new("jwks-https");
    let web = dir.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    let signer = Signer::es256("https-k1");
    jwt::write_jwks(&web.join("jwks.json"), std::slice::from_ref(&signer.jwk));
    let (cert, key) = make_cert(dir.path(), "idp", false);
    let (_idp, port) = serve_https(&web, &cert, &key);

    let s = common::Server::start_dev(&dir.path().join("data"), &issuer(port, &cert));
    let token = signer.token(&claims("alice", "acme"));
    let c = s.client_with(Some(token));
    let k = c
        .create_key("via-https-jwks", "aes-256-gcm", None)
        .await
        .unwrap();
    assert!(k.owner.ends_with("#alice"), "{k:?}");

    // A token from a key that the served JWKS does not hold is refused.
    let stranger = Signer::es256("not-served");
    let c = s.client_with(Some(stranger.token(&claims("alice", "acme"))));
    let err = c.list_keys().await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
}

#[test]
fn an_untrusted_jwks_certificate_stops_startup_with_a_clear_error() {
    let dir = TempDir::new("jwks-https-bad");
    let web = dir.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    jwt::write_jwks(
        &web.join("jwks.json"),
        std::slice::from_ref(&Signer::es256("k").jwk),
    );
    let (cert, key) = make_cert(dir.path(), "idp", false);
    let (other_ca, _) = make_cert(dir.path(), "other", false);
    let (_idp, port) = serve_https(&web, &cert, &key);
    let cfg = write_config(dir.path(), &issuer(port, &other_ca));
    let out = Command::new(sovra_bin())
        .args(["server", "--dev", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_fails_saying(&out, "cannot load JWKS https://127.0.0.1");
}
