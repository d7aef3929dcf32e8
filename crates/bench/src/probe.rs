//! Foreign and missing key ids, side by side: identity B asks to encrypt under identity A's key
//! (foreign) and under an id no key has (missing), alternating, one request at a time, and the
//! two latency distributions are printed together. Where they differ, response time tells an
//! outsider which key ids exist (issue 20, item 10).

use crate::{Stats, flood::mint};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) async fn run(
    c: &reqwest::Client,
    addr: &str,
    idp: &Path,
    requests: usize,
    label: &str,
) -> Result<()> {
    let owner = mint(idp, "probe-owner")?;
    let prober = mint(idp, "probe-prober")?;
    let created: serde_json::Value = c
        .post(format!("{addr}/api/v1/keys"))
        .bearer_auth(&owner)
        .json(&json!({"name": format!("probe-{}", uuid::Uuid::new_v4()), "type": "aes-256-gcm"}))
        .send()
        .await?
        .json()
        .await?;
    let foreign = created["id"].as_str().context("key id")?.to_string();
    let body = json!({"plaintext": "aGk="});
    // The owner uses the key, so that it is cached as it would be in production.
    let used = c
        .post(format!("{addr}/api/v1/keys/{foreign}/encrypt"))
        .bearer_auth(&owner)
        .json(&body)
        .send()
        .await?;
    if !used.status().is_success() {
        bail!("owner's encrypt: HTTP {}", used.status());
    }
    let mut lat = [Vec::with_capacity(requests), Vec::with_capacity(requests)];
    let started = Instant::now();
    for i in 0..requests * 2 {
        let id = if i % 2 == 0 {
            foreign.clone()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        let t = Instant::now();
        let r = c
            .post(format!("{addr}/api/v1/keys/{id}/encrypt"))
            .bearer_auth(&prober)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let _ = r.bytes().await?;
        lat[i % 2].push(t.elapsed());
        if status.as_u16() != 404 {
            bail!("expected 404 for another identity's or a missing key, got {status}");
        }
    }
    let secs = started.elapsed().as_secs_f64() / 2.0;
    let [foreign_lat, missing_lat] = lat;
    let stats = |lat: Vec<Duration>| Stats {
        ops: lat.len(),
        secs,
        lat,
    };
    let (f, m) = (stats(foreign_lat), stats(missing_lat));
    println!(
        "{label} identity B encrypts under identity A's key and under missing ids, alternating, one at a time\n"
    );
    println!("| key id | p50 ms | p90 ms | p99 ms | max ms | requests |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, s) in [("another identity's key", &f), ("missing", &m)] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            s.p(0.50),
            s.p(0.90),
            s.p(0.99),
            s.p(1.0),
            s.ops
        );
    }
    Ok(())
}
