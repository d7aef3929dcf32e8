//! `sovra db migrate` applies the schema without starting a server, names what it applied,
//! and has nothing to do the second time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TempDir, sovra_bin, text};

fn migrate(url: &str) -> String {
    let out = std::process::Command::new(sovra_bin())
        .args(["db", "migrate", "--database-url", url])
        .env_remove("SOVRA_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sovra db migrate failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn db_migrate_applies_the_schema_once() {
    let dir = TempDir::new("db-migrate");
    let url = format!("sqlite://{}/sovra.db", dir.path().display());
    let first = migrate(&url);
    assert!(
        first.contains("applied migrations: 0001_core, 0002_audit, 0003_audit_append_only"),
        "{first}"
    );
    assert!(migrate(&url).contains("up to date"));
}
