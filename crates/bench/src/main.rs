//! `sovra-bench`: measures a running Sovra server over HTTPS beside two baselines from the
//! same run: raw AES-256-GCM in-process (Sovra's own envelope code, no network) and the same
//! server's trivial `/health` endpoint. Prints a Markdown table.
//!
//! Each scenario runs `--concurrency` closed-loop workers (each with its own keep-alive
//! connection) for `--seconds`, after a warm-up, and records every request's latency.
//!
//! `--flood` runs the RSA flood scenario instead (see `flood.rs`), `--hot-path` the JWT hot-path
//! scenarios (see `hotpath.rs`); `--write-idp DIR` writes a test identity provider's key and
//! JWKS for both.

mod flood;
mod hotpath;
mod probe;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The dev.env written by `sovra server --dev` (SOVRA_ADDR, SOVRA_TOKEN, SOVRA_CACERT).
    #[arg(long, required_unless_present = "write_idp")]
    env_file: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Plaintext size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Label for the table heading (e.g. "SQLite").
    #[arg(long, default_value = "")]
    label: String,
    /// Write an identity provider's key and JWKS (issuer https://bench-idp.sovra.test,
    /// audience sovra) to this directory and exit.
    #[arg(long)]
    write_idp: Option<PathBuf>,
    /// Run the RSA flood scenario: client 2 (`--concurrency` connections) encrypts while
    /// client 1 (`--flood-concurrency` connections) signs with an RSA-4096 key.
    #[arg(long)]
    flood: bool,
    /// Connections of the flooding client.
    #[arg(long, default_value_t = 64)]
    flood_concurrency: usize,
    /// The directory given to `--write-idp`: the two clients become two identities.
    #[arg(long)]
    idp: Option<PathBuf>,
    /// In the flood, client 1 waits Retry-After after a 429 instead of sending at once.
    #[arg(long)]
    honour_retry_after: bool,
    /// In the flood, client 1 creates RSA-4096 keys instead of signing, and client 2 signs
    /// with an RSA-3072 key instead of encrypting: heavy work of another identity under a
    /// key-generation flood.
    #[arg(long)]
    flood_keygen: bool,
    /// Run the hot-path scenarios with JWTs of the `--idp` identity provider.
    #[arg(long, requires = "idp")]
    hot_path: bool,
    /// Run only the closed-loop encrypt scenario (for profiling the server).
    #[arg(long)]
    encrypt_only: bool,
    /// Run only the closed-loop `/health` scenario (the baseline of `--encrypt-only`).
    #[arg(long)]
    health_only: bool,
    /// Time another identity's key id against missing ones (needs `--idp`); this many of each.
    #[arg(long, requires = "idp")]
    foreign_vs_missing: Option<usize>,
}

struct Stats {
    ops: usize,
    secs: f64,
    lat: Vec<Duration>,
}

impl Stats {
    /// The `p` quantile of the latencies, in milliseconds.
    fn p(&self, p: f64) -> f64 {
        let mut l = self.lat.clone();
        l.sort();
        if l.is_empty() {
            0.0
        } else {
            l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1e3
        }
    }

    fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {:.0} | {:.3} | {:.3} | {} |",
            self.ops as f64 / self.secs,
            self.p(0.50),
            self.p(0.99),
            self.ops
        )
    }
}

fn read_env(path: &PathBuf) -> Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// Runs `op` in a closed loop on one thread per core for `seconds`, timing each call.
fn on_every_core<F>(seconds: u64, make_op: impl Fn() -> F) -> Result<Stats>
where
    F: FnMut() -> Result<()> + Send + 'static,
{
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut op = make_op();
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op()?;
                    lat.push(t.elapsed());
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??);
    }
    Ok(Stats {
        ops: lat.len(),
        secs: started.elapsed().as_secs_f64(),
        lat,
    })
}

/// In-process baseline: Sovra's envelope encryption with AES-256-GCM on every core.
fn raw_aes(seconds: u64, size: usize) -> Result<Stats> {
    let key = Arc::new(sovra_crypto::aead::AeadKey::new(
        sovra_crypto::aead::AeadAlg::Aes256Gcm,
        &[7u8; 32],
    )?);
    on_every_core(seconds, || {
        let key = key.clone();
        let pt = vec![0x5au8; size];
        let id = uuid::Uuid::new_v4();
        move || {
            let ctx = Default::default();
            let ct = sovra_crypto::envelope::seal(&key, id, 1, &pt, &ctx).context("seal")?;
            std::hint::black_box(ct);
            Ok(())
        }
    })
}

/// Waits for closed- or open-loop workers and merges their latencies.
async fn gather(
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>>>>,
) -> Result<Stats> {
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(Stats {
        ops: lat.len(),
        secs: started.elapsed().as_secs_f64(),
        lat,
    })
}

#[derive(Clone)]
enum Req {
    Get(String),
    Post(String, Value),
}

impl Req {
    /// The server's trivial endpoint: the baseline every scenario is compared with.
    fn health(addr: &str) -> Req {
        Req::Get(format!("{addr}/health"))
    }
}

async fn load(clients: &[reqwest::Client], token: &str, req: Req, seconds: u64) -> Result<Stats> {
    let req = Arc::new(Prepared::new(&req, token)?);
    // Warm-up: establish connections and caches.
    for c in clients {
        hit(c, &req).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let (c, req) = (c.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                hit(&c, &req).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    gather(started, tasks).await
}

/// One request as a scenario repeats it, encoded once: the client's own cost per request is
/// then sending fixed bytes and reading the answer, as with `wrk` or `oha`, rather than
/// serializing the same JSON again each time (which on 2 shared cores would take CPU from the
/// server, and more for large bodies than for `/health`).
struct Prepared {
    method: reqwest::Method,
    url: reqwest::Url,
    body: Option<bytes::Bytes>,
    authorization: reqwest::header::HeaderValue,
}

impl Prepared {
    fn new(req: &Req, token: &str) -> Result<Prepared> {
        let mut authorization = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
        authorization.set_sensitive(true);
        let (method, url, body) = match req {
            Req::Get(url) => (reqwest::Method::GET, url, None),
            Req::Post(url, body) => (
                reqwest::Method::POST,
                url,
                Some(bytes::Bytes::from(serde_json::to_vec(body)?)),
            ),
        };
        Ok(Prepared {
            method,
            url: url.parse()?,
            body,
            authorization,
        })
    }
}

/// Sends a prepared request and reads the whole answer; only a failure's body is parsed.
async fn hit(c: &reqwest::Client, req: &Prepared) -> Result<()> {
    let mut builder = c.request(req.method.clone(), req.url.clone());
    if let Some(body) = &req.body {
        builder = builder
            .header(reqwest::header::AUTHORIZATION, req.authorization.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
    }
    let resp = builder.send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    if body.is_empty() {
        bail!("HTTP {status} with an empty body");
    }
    Ok(())
}

/// Sends a request and parses its JSON answer (setup steps that need the answer).
async fn send(c: &reqwest::Client, token: &str, req: &Req) -> Result<Value> {
    let resp = match req {
        Req::Get(url) => c.get(url).send().await?,
        Req::Post(url, body) => c.post(url).bearer_auth(token).json(body).send().await?,
    };
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {v}");
    }
    Ok(v)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.write_idp {
        return flood::write_idp(dir);
    }
    let env = read_env(args.env_file.as_ref().context("--env-file is required")?)?;
    let addr = env.get("SOVRA_ADDR").context("SOVRA_ADDR missing")?.clone();
    let token = env
        .get("SOVRA_TOKEN")
        .context("SOVRA_TOKEN missing")?
        .clone();
    let ca = std::fs::read(env.get("SOVRA_CACERT").context("SOVRA_CACERT missing")?)?;
    let cert = reqwest::Certificate::from_pem(&ca)?;
    let connections = |n: usize| -> Result<Vec<reqwest::Client>> {
        Ok((0..n)
            .map(|_| {
                reqwest::Client::builder()
                    .tls_certs_only([cert.clone()])
                    .http1_only()
                    .pool_max_idle_per_host(1)
                    .build()
            })
            .collect::<Result<_, _>>()?)
    };
    let clients = connections(args.concurrency)?;
    if args.hot_path {
        return hotpath::run(hotpath::HotPathArgs {
            addr: &addr,
            idp: args.idp.as_deref().context("--idp is required")?,
            clients: &clients,
            seconds: args.seconds,
            size: args.size,
            label: &args.label,
        })
        .await;
    }
    if let (Some(n), Some(idp)) = (args.foreign_vs_missing, args.idp.as_deref()) {
        return probe::run(&clients[0], &addr, idp, n, &args.label).await;
    }
    if args.flood {
        return flood::run(flood::FloodArgs {
            addr: &addr,
            dev_token: &token,
            idp: args.idp.as_deref(),
            victim: &clients,
            flooders: &connections(args.flood_concurrency)?,
            seconds: args.seconds,
            size: args.size,
            label: &args.label,
            honour_retry_after: args.honour_retry_after,
            keygen: args.flood_keygen,
        })
        .await;
    }

    if args.health_only {
        let health = load(&clients, &token, Req::health(&addr), args.seconds).await?;
        println!("{}", health.row("health via HTTPS"));
        return Ok(());
    }

    // Profiling the production path: a JWT when an identity provider is given.
    let token = match (&args.idp, args.encrypt_only) {
        (Some(idp), true) => flood::mint(idp, "profiled-user")?,
        _ => token,
    };
    let key_name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let key = send(
        &clients[0],
        &token,
        &Req::Post(
            format!("{addr}/api/v1/keys"),
            json!({"name": key_name, "type": "aes-256-gcm"}),
        ),
    )
    .await?;
    let id = key["id"].as_str().context("key id")?.to_string();
    let plaintext = STANDARD.encode(vec![0x5au8; args.size]);
    let ct = send(
        &clients[0],
        &token,
        &Req::Post(
            format!("{addr}/api/v1/keys/{id}/encrypt"),
            json!({"plaintext": plaintext}),
        ),
    )
    .await?;

    if args.encrypt_only {
        let enc = load(
            &clients,
            &token,
            Req::Post(
                format!("{addr}/api/v1/keys/{id}/encrypt"),
                json!({"plaintext": plaintext}),
            ),
            args.seconds,
        )
        .await?;
        println!("{}", enc.row("encrypt via HTTPS (dev token)"));
        return Ok(());
    }
    let raw = raw_aes(args.seconds, args.size)?;
    let health = load(&clients, &token, Req::health(&addr), args.seconds).await?;
    let enc = load(
        &clients,
        &token,
        Req::Post(
            format!("{addr}/api/v1/keys/{id}/encrypt"),
            json!({"plaintext": plaintext}),
        ),
        args.seconds,
    )
    .await?;
    let dec = load(
        &clients,
        &token,
        Req::Post(
            format!("{addr}/api/v1/decrypt"),
            json!({"ciphertext": ct["ciphertext"]}),
        ),
        args.seconds,
    )
    .await?;

    println!(
        "{} {} B payload, {} workers, {} s per scenario\n",
        args.label, args.size, args.concurrency, args.seconds
    );
    println!("| scenario | ops/s | p50 ms | p99 ms | operations |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "{}",
        raw.row("baseline: raw AES-256-GCM envelope in-process")
    );
    println!(
        "{}",
        health.row("baseline: HTTPS GET /health (same server)")
    );
    println!(
        "{}",
        enc.row("encrypt via HTTPS (dev token, ownership check)")
    );
    println!(
        "{}",
        dec.row("decrypt via HTTPS (dev token, ownership check)")
    );
    println!(
        "\nencrypt reaches {:.0} % of the trivial endpoint's rate.",
        100.0 * (enc.ops as f64 / enc.secs) / (health.ops as f64 / health.secs)
    );
    Ok(())
}
