//! Key rows edited in the database by an insider (threat rows mini-kms 16, platform T-2): each
//! bound column changed through SQL, on SQLite and on PostgreSQL, makes the row refused with
//! `integrity_violation` (audited, counted), never used; `sovra db verify` names every edited
//! row offline, and finds a replayed older row whose MAC is valid, by comparing it with the
//! audit log. A row without a MAC (written before row MACs) is refused until adopted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    DevApi, assert_error, fresh_pg_database, list_all, psql, sample, send, sovra_bin, sqlite3, text,
};
use reqwest::Method;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The store of a dev deployment, as an insider reaches it: with its own SQL client.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    fn exec(&self, sql: &str) -> String {
        match self {
            Db::Sqlite(path) => sqlite3(path, sql),
            Db::Postgres(url) => psql(url, sql),
        }
    }

    fn url(&self) -> String {
        match self {
            Db::Sqlite(path) => format!("sqlite://{}", path.display()),
            Db::Postgres(url) => url.clone(),
        }
    }
}

/// A dev server on SQLite (its embedded default) or on a fresh PostgreSQL database.
fn deployment(tag: &str, postgres: bool) -> (DevApi, Db) {
    let pg = postgres.then(fresh_pg_database);
    let api = DevApi::start_with(tag, |_| {
        pg.as_ref()
            .map(|u| format!("database_url = \"{u}\"\n"))
            .unwrap_or_default()
    });
    let db = match pg {
        Some(url) => Db::Postgres(url),
        None => Db::Sqlite(api.server.data_dir.join("sovra.db")),
    };
    (api, db)
}

async fn call(
    api: &DevApi,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> common::Resp {
    let body = body.map(|b| b.to_string());
    send(
        &api.server,
        &api.http,
        method,
        path,
        api.t(),
        body.as_deref(),
    )
    .await
}

async fn create_key(api: &DevApi, name: &str) -> String {
    let r = call(
        api,
        Method::POST,
        "/api/v1/keys",
        Some(json!({"name": name, "type": "aes-256-gcm"})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    r.json["id"].as_str().unwrap().to_string()
}

/// Disables a key through the API, as its owner does.
async fn disable(api: &DevApi, id: &str) {
    let path = format!("/api/v1/keys/{id}/disable");
    let r = call(api, Method::POST, &path, None).await;
    assert_eq!(r.status, 200, "{r:?}");
}

async fn encrypt(api: &DevApi, id: &str) -> common::Resp {
    call(
        api,
        Method::POST,
        &format!("/api/v1/keys/{id}/encrypt"),
        Some(json!({"plaintext": "c2VjcmV0"})),
    )
    .await
}

/// `sovra db verify` against the deployment's database with its dev unseal key.
fn db_verify(api_dir: &std::path::Path, db: &Db, extra: &[&str]) -> Output {
    Command::new(sovra_bin())
        .args([
            "db",
            "verify",
            "--database-url",
            &db.url(),
            "--unseal-key-file",
        ])
        .arg(api_dir.join("dev-seal.key"))
        .args(extra)
        .output()
        .unwrap()
}

/// Each column of `keys` as an insider would change it, and whether the dev caller still finds
/// the row in its org afterwards (a row moved to another org is not found there, and is named
/// by `sovra db verify`).
const EDITS: &[(&str, &str, bool)] = &[
    ("owner", "owner = 'https://attacker.example#mallory'", true),
    ("org_id", "org_id = 'globex'", false),
    ("name", "name = 'renamed'", true),
    ("key_type", "key_type = 'chacha20-poly1305'", true),
    ("description", "description = 'edited'", true),
    ("state", "state = 'disabled'", true),
    ("latest_version", "latest_version = 2", true),
    ("min_decryption_version", "min_decryption_version = 2", true),
    ("created_at", "created_at = created_at + 1", true),
    ("rotated_at", "rotated_at = 1767225600000", true),
    ("deletion_date", "deletion_date = 1767225600000", true),
    ("revision", "revision = revision + 1", true),
    ("row_mac", "row_mac = NULL", true),
];

async fn each_bound_column_edited_in_the_database_is_refused(postgres: bool) {
    let (api, db) = deployment(
        if postgres {
            "integrity-pg"
        } else {
            "integrity-sqlite"
        },
        postgres,
    );
    let untouched = create_key(&api, "untouched").await;
    // Another org for the row moved out of the caller's (PostgreSQL checks the reference).
    db.exec("INSERT INTO orgs (id, active_kek_version, created_at) VALUES ('globex', 1, 0)");
    let mut edited = Vec::new();
    for (column, set, _) in EDITS {
        let id = create_key(&api, &format!("edit-{column}")).await;
        // The key works before the edit.
        assert_eq!(encrypt(&api, &id).await.status, 200, "{column}");
        db.exec(&format!("UPDATE keys SET {set} WHERE id = '{id}'"));
        edited.push((column, id));
    }
    // On SQLite no other writer is expected, so the metadata cache may serve a row for its
    // short age bound; wait it out so every answer below comes from the edited rows.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    for ((column, id), (_, _, found)) in edited.iter().zip(EDITS) {
        let get = call(&api, Method::GET, &format!("/api/v1/keys/{id}"), None).await;
        let enc = encrypt(&api, id).await;
        if *found {
            assert_error(&get, 500, "integrity_violation");
            assert_error(&enc, 500, "integrity_violation");
            assert!(
                enc.json.get("ciphertext").is_none(),
                "{column}: nothing encrypted"
            );
        } else {
            assert_error(&get, 404, "not_found");
            assert_error(&enc, 404, "not_found");
        }
    }
    // Listing the caller's keys refuses too: an edited row must not be listed as the
    // caller's (one that names the caller as owner by the edit would be).
    let list = call(&api, Method::GET, "/api/v1/keys", None).await;
    assert_error(&list, 500, "integrity_violation");
    assert_eq!(
        encrypt(&api, &untouched).await.status,
        200,
        "an intact key still works"
    );

    let metrics = api.server.get_ok("/metrics").await.text;
    let counted = sample(
        &metrics,
        "sovra_integrity_violations_total",
        &[("record", "key")],
    )
    .unwrap_or(0.0);
    let refusals = 2 * EDITS.iter().filter(|e| e.2).count() + 1;
    assert!(
        counted >= refusals as f64,
        "{counted} violations counted, {refusals} expected"
    );
    let events = list_all(&api.server, &api.token).await;
    for ((column, id), (_, _, found)) in edited.iter().zip(EDITS) {
        let refused = events.iter().filter(|e| {
            e["resource"] == format!("key/{id}") && e["error_code"] == "integrity_violation"
        });
        assert_eq!(
            refused.count(),
            if *found { 2 } else { 0 },
            "{column}: audited refusals"
        );
    }

    let dir = api.server.data_dir.clone();
    assert!(api.server.stop());
    let out = db_verify(&dir, &db, &[]);
    let report = text(&out.stdout);
    assert!(!out.status.success(), "db verify must fail: {report}");
    for (column, id) in &edited {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("ERROR: key/{id}: "))),
            "{column}: db verify names the row: {report}"
        );
    }
    assert!(
        !report.contains(&untouched),
        "the intact row is not named: {report}"
    );
    assert!(
        text(&out.stderr).contains("NOT intact"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bound_column_edited_on_sqlite_is_refused() {
    each_bound_column_edited_in_the_database_is_refused(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bound_column_edited_on_postgres_is_refused() {
    each_bound_column_edited_in_the_database_is_refused(true).await;
}

/// The two edits an insider wants most: re-enabling a key its owner disabled, and letting an
/// old key version decrypt again. Neither is honoured.
#[tokio::test(flavor = "multi_thread")]
async fn a_re_enabled_or_widened_key_is_not_used() {
    let (api, db) = deployment("integrity-attacks", false);
    let id = create_key(&api, "disabled-by-owner").await;
    disable(&api, &id).await;
    db.exec(&format!(
        "UPDATE keys SET state = 'enabled' WHERE id = '{id}'"
    ));
    let enc = encrypt(&api, &id).await;
    assert_error(&enc, 500, "integrity_violation");

    let id = create_key(&api, "narrowed").await;
    let old = encrypt(&api, &id).await.json["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        call(
            &api,
            Method::POST,
            &format!("/api/v1/keys/{id}/rotate"),
            None
        )
        .await
        .status,
        200
    );
    let r = call(
        &api,
        Method::PATCH,
        &format!("/api/v1/keys/{id}"),
        Some(json!({"min_decryption_version": 2})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let decrypt = |ct: String| {
        let api = &api;
        async move {
            call(
                api,
                Method::POST,
                "/api/v1/decrypt",
                Some(json!({"ciphertext": ct})),
            )
            .await
        }
    };
    assert_error(&decrypt(old.clone()).await, 400, "invalid_input");
    db.exec(&format!(
        "UPDATE keys SET min_decryption_version = 1 WHERE id = '{id}'"
    ));
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = decrypt(old).await;
    assert_error(&r, 500, "integrity_violation");
    assert!(r.json.get("plaintext").is_none());
}

/// A row put back as it was before a change has a valid MAC: the server cannot tell it from
/// the current one, but `sovra db verify` can, since the audit log holds the change.
async fn a_replayed_row_is_found(postgres: bool) {
    let (api, db) = deployment(
        if postgres {
            "replay-pg"
        } else {
            "replay-sqlite"
        },
        postgres,
    );
    let id = create_key(&api, "replayed").await;
    let control = create_key(&api, "control").await;
    disable(&api, &control).await;
    let saved = db.exec(&format!(
        "SELECT state, revision, {} FROM keys WHERE id = '{id}'",
        if postgres {
            "encode(row_mac, 'hex')"
        } else {
            "hex(row_mac)"
        }
    ));
    let mut saved = saved.split(['|', ' ']);
    let (state, revision, mac) = (
        saved.next().unwrap().to_string(),
        saved.next().unwrap().to_string(),
        saved.next().unwrap().to_string(),
    );
    assert_eq!(state, "enabled");
    disable(&api, &id).await;
    let dir = api.server.data_dir.clone();
    assert!(api.server.stop());

    let intact = db_verify(&dir, &db, &[]);
    assert!(
        intact.status.success(),
        "{} {}",
        text(&intact.stdout),
        text(&intact.stderr)
    );
    assert!(text(&intact.stdout).contains("database intact"));

    let mac = if postgres {
        format!("decode('{mac}', 'hex')")
    } else {
        format!("X'{mac}'")
    };
    db.exec(&format!("UPDATE keys SET state = '{state}', revision = {revision}, row_mac = {mac} WHERE id = '{id}'"));
    let out = db_verify(&dir, &db, &["--output", "json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["intact"], false);
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(findings[0]["subject"], format!("key/{id}"));
    assert!(
        findings[0]["problem"]
            .as_str()
            .unwrap()
            .contains("replayed"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_row_is_found_on_sqlite() {
    a_replayed_row_is_found(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_row_is_found_on_postgres() {
    a_replayed_row_is_found(true).await;
}

/// A row written before row MACs (no MAC, revision 0) is refused, then adopted by an operator
/// with the unseal material if the audit log agrees with it; one whose owner the log
/// contradicts is not adopted, and once an adoption is recorded in the chain nothing more is.
#[tokio::test(flavor = "multi_thread")]
async fn unsigned_rows_are_refused_until_adopted() {
    let (api, db) = deployment("integrity-adopt", false);
    let legacy = create_key(&api, "legacy").await;
    let stolen = create_key(&api, "stolen").await;
    for id in [&legacy, &stolen] {
        db.exec(&format!(
            "UPDATE keys SET row_mac = NULL, revision = 0 WHERE id = '{id}'"
        ));
    }
    db.exec(&format!(
        "UPDATE keys SET owner = 'https://attacker.example#mallory' WHERE id = '{stolen}'"
    ));
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_error(&encrypt(&api, &legacy).await, 500, "integrity_violation");
    let (api, (refused, adopted)) = api.restart_after("", |dir| {
        (
            db_verify(dir, &db, &[]),
            db_verify(dir, &db, &["--adopt-unsigned"]),
        )
    });
    assert!(!refused.status.success());
    assert!(
        text(&refused.stdout).contains(&format!("ERROR: key/{legacy}: the row has no MAC")),
        "{}",
        text(&refused.stdout)
    );
    let report = text(&adopted.stdout);
    assert!(
        !adopted.status.success(),
        "the stolen row keeps it failing: {report}"
    );
    assert!(report.contains("1 unsigned rows adopted"), "{report}");
    assert!(
        report.contains(&format!(
            "ERROR: key/{stolen}: not adopted: the row names owner https://attacker.example#mallory"
        )),
        "{report}"
    );
    assert_eq!(
        db.exec(&format!("SELECT revision FROM keys WHERE id = '{legacy}'")),
        "1"
    );
    assert_eq!(
        encrypt(&api, &legacy).await.status,
        200,
        "the adopted key works again"
    );
    assert_error(&encrypt(&api, &stolen).await, 500, "integrity_violation");

    // Adoption happened once, and the chain says so: an insider who now strips a signed row's
    // MAC (and lowers its minimum decryption version) cannot have it adopted.
    db.exec(&format!(
        "UPDATE keys SET row_mac = NULL, revision = 0, min_decryption_version = 1 WHERE id = '{legacy}'"
    ));
    let (_api, again) = api.restart_after("", |dir| db_verify(dir, &db, &["--adopt-unsigned"]));
    let report = text(&again.stdout);
    assert!(!again.status.success(), "{report}");
    assert!(
        report.contains(&format!(
            "ERROR: key/{legacy}: not adopted: rows were adopted already"
        )),
        "{report}"
    );
    assert!(!report.contains("unsigned rows adopted"), "{report}");
}
