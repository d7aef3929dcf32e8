//! The RSA flood scenario: client 1 floods RSA-4096 signatures over many connections while
//! client 2 encrypts with AES; client 2's throughput and latency are measured alone and under
//! the flood. With `keygen`, client 1 floods RSA-4096 key creations instead and client 2 signs
//! with an RSA-3072 key (heavy work of another identity during a generation flood). With `--idp` the two clients are two identities of a test identity provider
//! (so per-identity rate limits apply to the flooder only); without it both use the dev token.

use crate::{Req, Stats, load, send};
use anyhow::{Context, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) const ISSUER: &str = "https://bench-idp.sovra.test";
pub(crate) const AUDIENCE: &str = "sovra";
const KID: &str = "bench-1";

/// Writes a fresh Ed25519 identity-provider key (`idp.pk8`) and its JWKS (`jwks.json`) to
/// `dir`, for the server's `[[auth.jwt]]` issuer.
pub(crate) fn write_idp(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("key parse failed"))?;
    let jwks = json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": KID, "alg": "EdDSA", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref()),
    }]});
    std::fs::write(dir.join("idp.pk8"), pkcs8.as_ref())?;
    std::fs::write(dir.join("jwks.json"), jwks.to_string())?;
    Ok(())
}

/// A token for `sub` (organization `bench`), valid for an hour.
pub(crate) fn mint(dir: &Path, sub: &str) -> Result<String> {
    let der = std::fs::read(dir.join("idp.pk8")).context("idp.pk8 (run --write-idp first)")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(KID.into());
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "org": "bench",
                        "iat": now, "exp": now + 3600});
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ed_der(&der),
    )?)
}

/// Outcomes of the flooder's requests.
#[derive(Default)]
struct FloodCount {
    ok: usize,
    limited: usize,
    /// Other HTTP statuses (e.g. 503 when the server sheds load), by status.
    refused: BTreeMap<u16, usize>,
    /// Transport errors (connection reset, timeout).
    errors: usize,
}

impl FloodCount {
    fn add(&mut self, o: FloodCount) {
        self.ok += o.ok;
        self.limited += o.limited;
        self.errors += o.errors;
        for (k, v) in o.refused {
            *self.refused.entry(k).or_default() += v;
        }
    }
}

pub(crate) struct FloodArgs<'a> {
    pub(crate) addr: &'a str,
    pub(crate) dev_token: &'a str,
    pub(crate) idp: Option<&'a Path>,
    pub(crate) victim: &'a [reqwest::Client],
    pub(crate) flooders: &'a [reqwest::Client],
    pub(crate) seconds: u64,
    pub(crate) size: usize,
    pub(crate) label: &'a str,
    /// Whether client 1 waits Retry-After after a 429 (a well-behaved heavy client) instead
    /// of sending again at once (a hostile one).
    pub(crate) honour_retry_after: bool,
    /// Client 1 creates RSA-4096 keys and client 2 signs with RSA-3072.
    pub(crate) keygen: bool,
}

pub(crate) async fn run(a: FloodArgs<'_>) -> Result<()> {
    let (victim_token, flooder_token, who) = match a.idp {
        Some(dir) => (
            mint(dir, "client-2-aes")?,
            mint(dir, "client-1-rsa-flooder")?,
            "two identities (JWTs of one issuer)",
        ),
        None => (
            a.dev_token.to_string(),
            a.dev_token.to_string(),
            "one identity (the dev token) for both",
        ),
    };
    let addr = a.addr;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let victim_type = if a.keygen { "rsa-3072" } else { "aes-256-gcm" };
    let victim_key = send(
        &a.victim[0],
        &victim_token,
        &Req::Post(
            format!("{addr}/api/v1/keys"),
            json!({"name": format!("flood-victim-{suffix}"), "type": victim_type}),
        ),
    )
    .await?;
    let rsa = send(
        &a.flooders[0],
        &flooder_token,
        &Req::Post(
            format!("{addr}/api/v1/keys"),
            json!({"name": format!("flood-rsa-{suffix}"), "type": "rsa-4096"}),
        ),
    )
    .await?;
    let victim_id = victim_key["id"].as_str().context("victim key id")?;
    let rsa_id = rsa["id"].as_str().context("rsa key id")?;
    let (victim_op, victim_what) = if a.keygen {
        (
            Req::Post(
                format!("{addr}/api/v1/keys/{victim_id}/sign"),
                json!({"message": STANDARD.encode(vec![0x5au8; a.size])}),
            ),
            format!("RSA-3072 sign of {} B", a.size),
        )
    } else {
        (
            Req::Post(
                format!("{addr}/api/v1/keys/{victim_id}/encrypt"),
                json!({"plaintext": STANDARD.encode(vec![0x5au8; a.size])}),
            ),
            format!("AES-256-GCM encrypt of {} B", a.size),
        )
    };

    let alone = load(a.victim, &victim_token, victim_op.clone(), a.seconds).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (flood_url, flood_what) = if a.keygen {
        (format!("{addr}/api/v1/keys"), "RSA-4096 key creation")
    } else {
        (format!("{addr}/api/v1/keys/{rsa_id}/sign"), "RSA-4096 sign")
    };
    let keygen = a.keygen;
    let flood_started = Instant::now();
    let mut flood = Vec::new();
    for c in a.flooders {
        let (c, stop, url, token, honour) = (
            c.clone(),
            stop.clone(),
            flood_url.clone(),
            flooder_token.clone(),
            a.honour_retry_after,
        );
        flood.push(tokio::spawn(async move {
            let mut n = FloodCount::default();
            let sign_body = json!({"message": STANDARD.encode(b"flood")});
            while !stop.load(Ordering::Relaxed) {
                let body = if keygen {
                    json!({"name": uuid::Uuid::new_v4().to_string(), "type": "rsa-4096"})
                } else {
                    sign_body.clone()
                };
                match c.post(&url).bearer_auth(&token).json(&body).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let wait = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                            .unwrap_or(1);
                        let _ = r.bytes().await;
                        match status {
                            200 | 201 => n.ok += 1,
                            429 => {
                                n.limited += 1;
                                if honour {
                                    sleep_unless_stopped(&stop, Duration::from_secs(wait)).await;
                                }
                            }
                            s => *n.refused.entry(s).or_default() += 1,
                        }
                    }
                    Err(_) => {
                        n.errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            n
        }));
    }
    // Let the flood reach its steady state before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flooded = load(a.victim, &victim_token, victim_op, a.seconds).await;
    stop.store(true, Ordering::Relaxed);
    let mut count = FloodCount::default();
    for t in flood {
        count.add(t.await?);
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let flooded = flooded?;

    println!(
        "{} client 2: {victim_what} over {} connections; client 1: {flood_what} \
         over {} connections, {}; {who}; {} s per phase\n",
        a.label,
        a.victim.len(),
        a.flooders.len(),
        if a.honour_retry_after {
            "waiting Retry-After after a 429"
        } else {
            "sending again at once after a 429"
        },
        a.seconds
    );
    println!("| client 2 ({victim_what}) | ops/s | p50 ms | p99 ms | operations |");
    println!("|---|---:|---:|---:|---:|");
    println!("{}", alone.row("alone"));
    println!(
        "{}",
        flooded.row(&format!("while client 1 floods {flood_what}s"))
    );
    println!("\n{}", summary(&alone, &flooded));
    let refused: Vec<String> = count
        .refused
        .iter()
        .map(|(s, n)| format!("{n} × HTTP {s}"))
        .collect();
    println!(
        "client 1 over {flood_secs:.1} s: {} done ({:.0}/s), {} × 429 rate limited, \
         {} refused otherwise{}, {} transport errors.",
        count.ok,
        count.ok as f64 / flood_secs,
        count.limited,
        count.refused.values().sum::<usize>(),
        if refused.is_empty() {
            String::new()
        } else {
            format!(" ({})", refused.join(", "))
        },
        count.errors
    );
    Ok(())
}

async fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn summary(alone: &Stats, flooded: &Stats) -> String {
    let rate = |s: &Stats| s.ops as f64 / s.secs;
    format!(
        "Under the flood client 2 keeps {:.0} % of its throughput; its p99 goes from {:.2} ms \
         to {:.2} ms.",
        100.0 * rate(flooded) / rate(alone),
        alone.p(0.99),
        flooded.p(0.99)
    )
}
