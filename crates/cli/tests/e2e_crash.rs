//! Crash safety of the real `sovra` binary: SIGKILL at random moments under concurrent load
//! (SQLite and PostgreSQL), a PostgreSQL crash and restart under load, and a full disk. After
//! each event, everything the service acknowledged is still there and usable, nothing
//! half-written shows, and the audit chain verifies without gap or fork.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod crash;

use common::{Server, TempDir};
use crash::{Api, BASE_CFG, Ledger, Load, PrivatePg, Rng, SharedLedger, Tmpfs};
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KILLS: usize = 20;
const WORKERS: usize = 4;

fn snapshot(ledger: &SharedLedger) -> Ledger {
    ledger.lock().unwrap().clone()
}

fn assert_nothing_unexpected(ledger: &SharedLedger) {
    let l = ledger.lock().unwrap();
    assert!(
        l.unexpected.is_empty(),
        "{} unexpected answers, first ones: {:#?}",
        l.unexpected.len(),
        &l.unexpected[..l.unexpected.len().min(10)]
    );
}

/// Load, SIGKILL after 100–600 ms, restart, check every acknowledged answer; `KILLS` times.
/// Then a graceful stop, and the audit chain of all runs verifies.
async fn kill_under_load(test: &str, dir: &Path, cfg: &str) {
    let mut rng = Rng::new(crash::seed(test));
    let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::default()));
    let mut server = Server::start_dev(dir, cfg);
    let mut cut_cycles = 0;
    for cycle in 0..KILLS {
        let load = Load::start(&Api::new(&server), &ledger, WORKERS, &mut rng, false);
        let delay = 100 + rng.below(501);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        load.halt();
        server.child.kill().expect("SIGKILL");
        server.child.wait().unwrap();
        if load.finish().await > 0 {
            cut_cycles += 1;
        }
        assert_nothing_unexpected(&ledger);
        // Starts again on the same data, with no repair step.
        server = crash::restart(dir, cfg);
        let acked = snapshot(&ledger);
        crash::check_ledger(
            &Api::new(&server),
            &acked,
            &format!("after kill {} (at {delay} ms)", cycle + 1),
        )
        .await;
    }
    let acked = snapshot(&ledger);
    eprintln!(
        "{test}: {KILLS} kills ({cut_cycles} cut requests in flight), {} keys, {} ciphertexts, \
         {} acknowledged requests",
        acked.keys.len(),
        acked.sealed.len(),
        acked.acks()
    );
    assert!(
        cut_cycles >= KILLS / 2,
        "only {cut_cycles} of {KILLS} kills hit requests in flight: not under load"
    );
    assert!(!acked.keys.is_empty() && acked.sealed.len() >= KILLS);
    assert!(acked.keys.values().any(|k| k.version > 1), "no rotation");
    assert!(acked.sealed.iter().any(|s| s.what == "datakey"));

    assert!(server.stop(), "graceful stop");
    let server = crash::restart(dir, cfg);
    crash::check_ledger(&Api::new(&server), &acked, "after the last restart").await;
    tokio::task::block_in_place(|| crash::check_audit(&server, dir, &acked));
    assert!(server.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_on_sqlite_loses_nothing_acknowledged() {
    let dir = TempDir::new("crash-sqlite");
    kill_under_load("sqlite", dir.path(), BASE_CFG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_on_postgres_loses_nothing_acknowledged() {
    let url = common::fresh_pg_database();
    let dir = TempDir::new("crash-pg");
    let cfg = format!("database_url = \"{url}\"\n{BASE_CFG}");
    kill_under_load("postgres", dir.path(), &cfg).await;
}

/// One encrypt on a known key, answered or not.
async fn probe(api: &Api, key: &str) -> Result<crash::Answer, String> {
    api.post(
        &format!("/api/v1/keys/{key}/encrypt"),
        &json!({"plaintext": sovra_client::b64(b"probe")}),
    )
    .await
}

/// Polls until a write (key creation) succeeds again; returns how long that took.
async fn wait_for_recovery(api: &Api, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let a = api
            .post(
                "/api/v1/keys",
                &json!({"name": format!("recovered-{}", common::uuid_like()), "type": "aes-256-gcm"}),
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer while recovering: {e}"));
        match a.status {
            200..=299 => return started.elapsed(),
            503 => assert!(
                a.retry_after.is_some(),
                "{what}: 503 without Retry-After: {}",
                a.raw
            ),
            s => panic!("{what}: HTTP {s} while recovering: {}", a.raw),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: the service did not recover by itself: {}",
            a.raw
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts a 503 is the clear JSON error a client can act on.
fn assert_clear_503(a: &crash::Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {}", a.raw);
    let code = a.body["error"]["code"].as_str().unwrap_or_default();
    assert!(
        ["storage_unavailable", "audit_unavailable"].contains(&code),
        "{what}: code {code}: {}",
        a.raw
    );
    assert!(a.retry_after.is_some(), "{what}: no Retry-After: {}", a.raw);
    assert!(
        a.body["error"]["request_id"].as_str() == Some(a.request_id.as_str()),
        "{what}: {}",
        a.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crash_under_load_answers_503_and_recovers_by_itself() {
    let mut rng = Rng::new(crash::seed("postgres restart"));
    let pg = tokio::task::block_in_place(PrivatePg::start);
    let dir = TempDir::new("crash-pg-restart");
    let cfg = format!(
        "database_url = \"{}\"\n[limits]\nrequest_timeout_seconds = 10\n{BASE_CFG}",
        pg.url()
    );
    let server = crash::restart(dir.path(), &cfg);
    let api = Api::new(&server);
    let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::default()));
    let load = Load::start(&api, &ledger, WORKERS, &mut rng, true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = snapshot(&ledger);
    assert!(
        before.acks() > 0 && before.unavailable == 0,
        "load before the crash"
    );
    let key = before.key_ids[0].clone();

    assert!(tokio::task::block_in_place(|| pg.stop_immediate()));
    // While the database is away: clear 503s within the request timeout, never a 500 or a hang.
    let down = Instant::now();
    let mut answered_503 = 0;
    while down.elapsed() < Duration::from_secs(4) || answered_503 == 0 {
        let a = probe(&api, &key)
            .await
            .unwrap_or_else(|e| panic!("no answer while the database is down: {e}"));
        assert_clear_503(&a, "database down");
        answered_503 += 1;
        assert!(down.elapsed() < Duration::from_secs(60));
    }

    tokio::task::block_in_place(|| pg.start_again());
    let took = wait_for_recovery(&api, "after the PostgreSQL restart").await;
    eprintln!("recovered {took:?} after PostgreSQL came back; {answered_503} probes got 503");
    // Load goes on after the recovery, then stops.
    let acks_at_recovery = snapshot(&ledger).acks();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(load.finish().await, 0);
    assert_nothing_unexpected(&ledger);
    let acked = snapshot(&ledger);
    assert!(acked.unavailable > 0, "the load saw the outage");
    assert!(acked.acks() > acks_at_recovery, "the load succeeds again");
    assert!(
        acked.slowest <= Duration::from_secs(10 + 6),
        "an answer took {:?}: beyond the request timeout and the database wait",
        acked.slowest
    );
    // The same process, without a restart, has everything it acknowledged.
    crash::check_ledger(&api, &acked, "after the PostgreSQL restart").await;

    assert!(server.stop(), "graceful stop");
    let server = crash::restart(dir.path(), &cfg);
    crash::check_ledger(&Api::new(&server), &acked, "after a server restart").await;
    tokio::task::block_in_place(|| crash::check_audit(&server, dir.path(), &acked));
    assert!(server.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_answers_503_corrupts_nothing_and_recovers() {
    let mut rng = Rng::new(crash::seed("full disk"));
    let dir = TempDir::new("crash-disk");
    // Declared before the server, so the server is gone before the unmount.
    let disk = Tmpfs::mount(&dir.path().join("db"), 32);
    let data = dir.path().join("data");
    let cfg = format!(
        "database_url = \"sqlite://{}/sovra.db\"\n{BASE_CFG}",
        disk.path.display()
    );
    let server = crash::restart(&data, &cfg);
    let api = Api::new(&server);
    let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::default()));
    let load = Load::start(&api, &ledger, WORKERS, &mut rng, false);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    load.finish().await;
    assert_nothing_unexpected(&ledger);
    let before = snapshot(&ledger);
    crash::check_ledger(&api, &before, "before the disk fills").await;

    let filler = crash::fill_disk(&disk.path);
    // Writes fail with clear 503s (a write that still fits is acknowledged and must last).
    let load = Load::start(&api, &ledger, WORKERS, &mut rng, true);
    let full = Instant::now();
    while snapshot(&ledger).unavailable < 20 {
        assert!(
            full.elapsed() < Duration::from_secs(60),
            "the disk is full but no request failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(load.finish().await, 0);
    assert_nothing_unexpected(&ledger);
    // Reads of existing keys: answered, or a clear 503 (each answer needs a durable audit event).
    let a = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/keys/{}", before.key_ids[0]),
            None,
        )
        .await
        .expect("an answer on a full disk");
    if a.status != 200 {
        assert_clear_503(&a, "read on a full disk");
    }
    std::fs::remove_file(&filler).unwrap();
    let took = wait_for_recovery(&api, "after space returned").await;
    eprintln!("writes work again {took:?} after space returned");
    let load = Load::start(&api, &ledger, WORKERS, &mut rng, false);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    load.finish().await;
    assert_nothing_unexpected(&ledger);
    let acked = snapshot(&ledger);
    crash::check_ledger(&api, &acked, "after space returned").await;

    assert!(server.stop(), "graceful stop");
    let server = crash::restart(&data, &cfg);
    crash::check_ledger(&Api::new(&server), &acked, "after a restart").await;
    tokio::task::block_in_place(|| crash::check_audit(&server, &data, &acked));
    assert!(server.stop());
}
