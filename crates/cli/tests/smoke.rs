//! The dev server starts, serves over TLS 1.3, keeps keys across a restart and refuses to run
//! when SOVRA_ENV=production.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, TempDir, assert_fails_saying};

#[tokio::test]
async fn dev_server_roundtrip_survives_restart() {
    let dir = TempDir::new("smoke");
    let s = Server::start_dev(dir.path(), "");
    let c = s.client();
    let key = c.create_key("smoke", "aes-256-gcm", None).await.unwrap();
    let ctx = Default::default();
    let ct = c.encrypt(&key.id, b"persist me", &ctx).await.unwrap();
    assert!(s.stop(), "graceful shutdown exits 0");

    let s = Server::start_dev(dir.path(), "");
    let c = s.client();
    let pt = c
        .decrypt(&sovra_client::unb64(&ct.ciphertext).unwrap(), &ctx)
        .await
        .unwrap();
    assert_eq!(sovra_client::unb64(&pt.plaintext).unwrap(), b"persist me");
    assert_eq!(c.list_keys().await.unwrap().len(), 1);
}

#[test]
fn dev_mode_is_refused_in_production() {
    let dir = TempDir::new("prod");
    let out = std::process::Command::new(common::sovra_bin())
        .args(["server", "--dev", "--data-dir"])
        .arg(dir.path())
        .env("SOVRA_ENV", "production")
        .output()
        .unwrap();
    assert_fails_saying(&out, "SOVRA_ENV=production");
    assert!(!dir.path().join("sovra.db").exists(), "nothing is created");
}
