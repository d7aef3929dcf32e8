//! Helpers of the crash-safety tests: a seeded RNG, a raw API client that keeps request ids,
//! load workers that record every acknowledged answer in a ledger, the checks of that ledger
//! and of the audit chain, a private PostgreSQL cluster, and a small tmpfs.
#![allow(dead_code)]

use crate::common::{self, Server, TempDir};
use reqwest::Method;
use serde_json::{Value, json};
use sovra_client::{b64, unb64};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Config shared by the crash tests: no rate limits (the load is the point), frequent
/// checkpoints.
pub(crate) const BASE_CFG: &str =
    "[rate_limits]\nenabled = false\n[audit]\ncheckpoint_interval_seconds = 1\n";

/// splitmix64: small, seedable and printable, so a failing run can be replayed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `SOVRA_CRASH_SEED` replays a run; otherwise a random seed, printed.
pub(crate) fn seed(test: &str) -> u64 {
    let seed = std::env::var("SOVRA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            aws_lc_rs::rand::fill(&mut b).unwrap();
            u64::from_le_bytes(b)
        });
    eprintln!("{test}: seed {seed} (SOVRA_CRASH_SEED={seed} replays it)");
    seed
}

/// One HTTP answer with what the checks need.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Value,
    pub raw: String,
    pub request_id: String,
    pub retry_after: Option<String>,
    pub elapsed: Duration,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A raw client with the dev token: answers keep their `x-request-id`, and a transport
/// failure (the server was killed) is an `Err`, not a panic.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    addr: String,
    token: String,
}

/// Longer than any request may take (request timeout plus the audit write), so a hang shows.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

impl Api {
    pub(crate) fn new(s: &Server) -> Api {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&s.cacert).unwrap()).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        Api {
            http,
            addr: s.addr.clone(),
            token: s.token.clone().expect("dev token"),
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let started = Instant::now();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.addr))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header("x-request-id").unwrap_or_default();
        let retry_after = header("retry-after");
        // A body cut off by the kill is no answer either.
        let raw = resp.text().await.map_err(|e| format!("{e:?}"))?;
        Ok(Answer {
            status,
            body: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw,
            request_id,
            retry_after,
            elapsed: started.elapsed(),
        })
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Answer, String> {
        self.call(Method::POST, path, Some(body)).await
    }
}

#[derive(Clone, Debug)]
pub(crate) struct AckedKey {
    pub key_type: String,
    /// The highest version an answer acknowledged.
    pub version: u32,
}

/// A ciphertext an encrypt or data-key answer returned, with what it must decrypt to.
#[derive(Clone)]
pub(crate) struct Sealed {
    pub key_id: String,
    pub ciphertext: String,
    pub plaintext: String,
    pub context: BTreeMap<String, String>,
    pub what: &'static str,
}

/// Everything the service acknowledged (2xx), and what went wrong.
#[derive(Clone, Default)]
pub(crate) struct Ledger {
    pub keys: BTreeMap<String, AckedKey>,
    pub key_ids: Vec<String>,
    pub sealed: Vec<Sealed>,
    /// (request id, audit action) of every acknowledged request.
    pub requests: Vec<(String, &'static str)>,
    /// 503s with a clear JSON code and Retry-After, where the test allows them.
    pub unavailable: usize,
    /// Anything else that must not happen: a 500, a hang, a 503 outside an outage.
    pub unexpected: Vec<String>,
    pub slowest: Duration,
}

impl Ledger {
    pub(crate) fn acks(&self) -> usize {
        self.requests.len()
    }
}

pub(crate) type SharedLedger = Arc<Mutex<Ledger>>;

/// Codes a request may answer with while the database is away or the disk is full.
const UNAVAILABLE_CODES: &[&str] = &["storage_unavailable", "audit_unavailable"];

/// What one answer means for the ledger.
enum Verdict {
    Ack,
    Tolerated,
    Unexpected(String),
}

fn judge(op: &str, a: &Answer, outage_ok: bool) -> Verdict {
    match a.status {
        200..=299 => Verdict::Ack,
        // Two workers rotating one key at once: one of them is told to retry.
        409 if op == "rotate" && a.code() == "conflict" => Verdict::Tolerated,
        503 if outage_ok && UNAVAILABLE_CODES.contains(&a.code()) && a.retry_after.is_some() => {
            Verdict::Tolerated
        }
        _ => Verdict::Unexpected(format!(
            "{op}: HTTP {} (retry-after {:?}): {}",
            a.status, a.retry_after, a.raw
        )),
    }
}

/// Running load: several workers sending key creations, rotations, encrypts and data-key
/// requests until halted.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<bool>,
}

impl Load {
    /// `outage_ok`: 503 `storage_unavailable`/`audit_unavailable` with Retry-After is expected
    /// (database away, disk full) and a transport failure is a bug; otherwise only a kill may
    /// cut a request.
    pub(crate) fn start(
        api: &Api,
        ledger: &SharedLedger,
        workers: usize,
        rng: &mut Rng,
        outage_ok: bool,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for w in 0..workers {
            tasks.spawn(worker(
                api.clone(),
                ledger.clone(),
                stop.clone(),
                Rng::new(rng.next()),
                w,
                outage_ok,
            ));
        }
        Load { stop, tasks }
    }

    /// Tells the workers to stop (before a kill, so that a cut request is expected).
    pub(crate) fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Halts and waits; returns how many workers had a request cut by a kill.
    pub(crate) async fn finish(mut self) -> usize {
        self.halt();
        let mut cut = 0;
        while let Some(r) = self.tasks.join_next().await {
            cut += usize::from(r.unwrap());
        }
        cut
    }
}

/// One worker; returns whether a request of its own was cut (the server was killed under it).
async fn worker(
    api: Api,
    ledger: SharedLedger,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
    w: usize,
    outage_ok: bool,
) -> bool {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = {
            let l = ledger.lock().unwrap();
            (!l.key_ids.is_empty())
                .then(|| l.key_ids[rng.below(l.key_ids.len() as u64) as usize].clone())
        };
        let roll = rng.below(100);
        let ctx: BTreeMap<String, String> = [
            ("worker".to_string(), w.to_string()),
            ("n".to_string(), n.to_string()),
        ]
        .into();
        let (op, result) = match key {
            Some(id) if roll >= 10 => {
                if roll < 25 {
                    (
                        "rotate",
                        api.post(&format!("/api/v1/keys/{id}/rotate"), &json!({}))
                            .await,
                    )
                } else if roll < 70 {
                    let len = 1 + rng.below(64) as usize;
                    let pt: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    let body = json!({"plaintext": b64(&pt), "context": ctx});
                    let r = api.post(&format!("/api/v1/keys/{id}/encrypt"), &body).await;
                    if let Ok(a) = &r
                        && (200..300).contains(&a.status)
                    {
                        let mut l = ledger.lock().unwrap();
                        l.sealed.push(Sealed {
                            key_id: id.clone(),
                            ciphertext: a.body["ciphertext"].as_str().unwrap().to_string(),
                            plaintext: b64(&pt),
                            context: ctx.clone(),
                            what: "encrypt",
                        });
                    }
                    ("encrypt", r)
                } else {
                    let body = json!({"bits": 256, "context": ctx});
                    let r = api.post(&format!("/api/v1/keys/{id}/datakey"), &body).await;
                    if let Ok(a) = &r
                        && (200..300).contains(&a.status)
                    {
                        let mut l = ledger.lock().unwrap();
                        l.sealed.push(Sealed {
                            key_id: id.clone(),
                            ciphertext: a.body["ciphertext"].as_str().unwrap().to_string(),
                            plaintext: a.body["plaintext"].as_str().unwrap().to_string(),
                            context: ctx.clone(),
                            what: "datakey",
                        });
                    }
                    ("datakey", r)
                }
            }
            _ => {
                let key_type = if rng.below(2) == 0 {
                    "aes-256-gcm"
                } else {
                    "chacha20-poly1305"
                };
                let name = format!("crash-{}", common::uuid_like());
                let r = api
                    .post("/api/v1/keys", &json!({"name": name, "type": key_type}))
                    .await;
                if let Ok(a) = &r
                    && (200..300).contains(&a.status)
                {
                    let id = a.body["id"].as_str().unwrap().to_string();
                    assert_eq!(a.body["type"], key_type, "{}", a.raw);
                    let mut l = ledger.lock().unwrap();
                    l.keys.insert(
                        id.clone(),
                        AckedKey {
                            key_type: key_type.into(),
                            version: 1,
                        },
                    );
                    l.key_ids.push(id);
                }
                ("create", r)
            }
        };
        match result {
            Ok(a) => {
                record(&ledger, op, &a, outage_ok);
                if a.status == 503 {
                    // As a client should: wait a little before the next try.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    return true;
                }
                ledger
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("{op}: no answer: {e}"));
                if !outage_ok {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    false
}

/// Books one answer: an acknowledgement, a tolerated refusal, or a failure of the test.
fn record(ledger: &SharedLedger, op: &str, a: &Answer, outage_ok: bool) {
    let mut l = ledger.lock().unwrap();
    l.slowest = l.slowest.max(a.elapsed);
    match judge(op, a, outage_ok) {
        Verdict::Ack => {
            if op == "rotate" {
                let id = a.body["id"].as_str().unwrap().to_string();
                let v = a.body["latest_version"].as_u64().unwrap() as u32;
                let k = l.keys.get_mut(&id).expect("rotated an acknowledged key");
                k.version = k.version.max(v);
            }
            let action = match op {
                "create" => "key.create",
                "rotate" => "key.rotate",
                "encrypt" => "key.encrypt",
                _ => "key.datakey",
            };
            l.requests.push((a.request_id.clone(), action));
        }
        Verdict::Tolerated => {
            if a.status == 503 {
                l.unavailable += 1;
            }
        }
        Verdict::Unexpected(what) => l.unexpected.push(what),
    }
}

/// Every acknowledged key exists with at least its acknowledged version; every listed key
/// (acknowledged or cut by a kill) is whole: it encrypts under its latest version; every
/// acknowledged ciphertext and data key decrypts to its plaintext.
pub(crate) async fn check_ledger(api: &Api, ledger: &Ledger, when: &str) {
    let list = api
        .call(Method::GET, "/api/v1/keys", None)
        .await
        .unwrap_or_else(|e| panic!("{when}: list keys: {e}"));
    assert_eq!(list.status, 200, "{when}: list keys: {}", list.raw);
    let listed: HashMap<String, Value> = list.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap().to_string(), k.clone()))
        .collect();
    for (id, acked) in &ledger.keys {
        let k = listed
            .get(id)
            .unwrap_or_else(|| panic!("{when}: acknowledged key {id} is gone"));
        assert_eq!(k["type"], acked.key_type.as_str(), "{when}: {k}");
        assert_eq!(k["state"], "enabled", "{when}: {k}");
        let latest = k["latest_version"].as_u64().unwrap() as u32;
        assert!(
            latest >= acked.version,
            "{when}: key {id} is at version {latest}, but rotation to {} was acknowledged",
            acked.version
        );
    }
    // Nothing half-written: every key the service lists works with its latest version.
    let limit = Arc::new(tokio::sync::Semaphore::new(8));
    let mut probes = JoinSet::new();
    for (id, k) in listed {
        let api = api.clone();
        let limit = limit.clone();
        probes.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let a = api
                .post(
                    &format!("/api/v1/keys/{id}/encrypt"),
                    &json!({"plaintext": b64(b"probe")}),
                )
                .await
                .map_err(|e| format!("key {id}: encrypt: {e}"))?;
            if a.status != 200 || a.body["key_version"] != k["latest_version"] {
                return Err(format!("key {id} ({k}) does not encrypt: {}", a.raw));
            }
            Ok(())
        });
    }
    while let Some(r) = probes.join_next().await {
        if let Err(e) = r.unwrap() {
            panic!("{when}: half-written key: {e}");
        }
    }
    for chunk in ledger.sealed.chunks(500) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|s| json!({"ciphertext": s.ciphertext, "context": s.context}))
            .collect();
        let a = api
            .post("/api/v1/decrypt/batch", &json!({ "items": items }))
            .await
            .unwrap_or_else(|e| panic!("{when}: batch decrypt: {e}"));
        assert_eq!(a.status, 200, "{when}: batch decrypt: {}", a.raw);
        let results = a.body["results"].as_array().unwrap();
        assert_eq!(results.len(), chunk.len());
        for (s, r) in chunk.iter().zip(results) {
            assert_eq!(
                r["plaintext"].as_str(),
                Some(s.plaintext.as_str()),
                "{when}: an acknowledged {} under key {} does not decrypt: {r}",
                s.what,
                s.key_id
            );
            assert_eq!(r["key_id"].as_str(), Some(s.key_id.as_str()));
        }
    }
}

/// Exports the audit log with the CLI, verifies it with `sovra audit verify` and the audit
/// public key, and checks it: sequence 1..n without gap or repeat, signed to the end, and an
/// event with outcome success for every acknowledged request.
pub(crate) fn check_audit(s: &Server, dir: &Path, ledger: &Ledger) {
    let pem = common::ok(s, &["audit", "public-key"], None).stdout;
    let tag = common::uuid_like();
    let pem_file = dir.join(format!("audit-{tag}.pem"));
    let export_file = dir.join(format!("export-{tag}.jsonl"));
    std::fs::write(&pem_file, &pem).unwrap();
    common::ok(
        s,
        &["audit", "export", "--out", export_file.to_str().unwrap()],
        None,
    );
    let out = Command::new(common::sovra_bin())
        .args(["audit", "verify"])
        .arg(&export_file)
        .arg("--public-key")
        .arg(&pem_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sovra audit verify: {}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    let text = std::fs::read_to_string(&export_file).unwrap();
    let der = unb64(
        &common::text(&pem)
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    )
    .unwrap();
    let report = sovra_core::audit::verify_export(&text, &der)
        .unwrap_or_else(|e| panic!("audit chain broken: {e}"));
    assert_eq!(report.first_seq, 1);
    let mut seqs = Vec::new();
    let mut by_request: HashMap<String, (String, String, u64)> = HashMap::new();
    for line in text.lines() {
        match serde_json::from_str::<sovra_core::audit::ExportLine>(line).unwrap() {
            sovra_core::audit::ExportLine::Event(e) => {
                seqs.push(e.seq);
                let prior = by_request.insert(e.request_id.clone(), (e.action, e.outcome, e.seq));
                assert!(prior.is_none(), "request {} has two events", e.request_id);
            }
            // Requests outside the org (the anonymous public-key fetch): links only.
            sovra_core::audit::ExportLine::Redacted(r) => seqs.push(r.seq),
            sovra_core::audit::ExportLine::Checkpoint(_) => {}
        }
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "the chain has a gap or a fork"
    );
    // The last graceful stop signed the head, so every acknowledged request is under a signature.
    let signed = report.last_checkpoint_seq.expect("a signed checkpoint");
    for (rid, action) in &ledger.requests {
        let (got, outcome, seq) = by_request
            .get(rid)
            .unwrap_or_else(|| panic!("acknowledged {action} (request {rid}) has no audit event"));
        assert_eq!(
            (got.as_str(), outcome.as_str()),
            (*action, "success"),
            "{rid}"
        );
        assert!(
            *seq <= signed,
            "event {seq} of {rid} is after the last checkpoint {signed}"
        );
    }
    eprintln!(
        "audit: {} events, signed through {signed}, {} acknowledged requests matched",
        seqs.len(),
        ledger.requests.len()
    );
}

/// Starts a dev server without holding up the async workers' threads.
pub(crate) fn restart(dir: &Path, cfg: &str) -> Server {
    tokio::task::block_in_place(|| Server::start_dev(dir, cfg))
}

/// A PostgreSQL cluster of the test's own (so it can be stopped without touching the shared
/// one), on a free loopback port, trust auth. Stopped on drop.
pub(crate) struct PrivatePg {
    data: PathBuf,
    bin: PathBuf,
    log: PathBuf,
    pub port: u16,
    _dir: TempDir,
}

fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are needed")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL version with pg_ctl").1
}

/// initdb and pg_ctl refuse root: they run as `postgres`.
fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("runuser {tool}: {e}"))
}

impl PrivatePg {
    pub(crate) fn start() -> PrivatePg {
        let dir = TempDir::new("pg");
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "chown to postgres");
        let data = dir.path().join("data");
        let bin = pg_bin_dir();
        let out = as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            common::text(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePg {
            log: dir.path().join("pg.log"),
            data,
            bin,
            port,
            _dir: dir,
        };
        pg.start_again();
        pg
    }

    pub(crate) fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.display()
        );
        let out = as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                self.log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            common::text(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Stops at once, like a crash: no checkpoint, recovery from the WAL at the next start.
    pub(crate) fn stop_immediate(&self) -> bool {
        as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .status
        .success()
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

/// A small tmpfs mounted for the test (root only); unmounted on drop.
pub(crate) struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(path: &Path, size_mb: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount must be installed");
        assert!(
            out.status.success(),
            "the full-disk test mounts a {size_mb} MiB tmpfs and must run as root (CI does): \
             mount failed: {}",
            common::text(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Fills the filesystem of `dir` until a write fails with ENOSPC; returns the filler file.
pub(crate) fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    for size in [1 << 20, 4096, 1] {
        let chunk = vec![0xa5u8; size];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(28), "filling the disk: {e}");
                break;
            }
        }
    }
    path
}
