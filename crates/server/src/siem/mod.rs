//! Forwarding the audit chain to a SIEM: a JSON lines file, RFC 5424 syslog over TCP (TLS
//! optional) or an HTTPS webhook.
//!
//! The durable chain in the database is the source of truth. Each sink has a forwarder task that
//! reads the events after its cursor, delivers them in sequence order, and only then advances
//! and persists the cursor (`<data_dir>/audit-sinks/<name>.cursor`). Requests only ever write the
//! database, so a sink that is down never blocks them; it falls behind (the backlog gauge shows
//! by how much) and catches up when it returns: delivery is at least once, duplicates carry the
//! same `seq`. A sink without a cursor file starts at the beginning of the chain.

use serde::Deserialize;
use sovra_core::audit::{AuditEvent, ExportLine};
use sovra_core::{Store, StoreError};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

const DEFAULT_POLL_MS: u64 = 500;
const DEFAULT_BATCH: u32 = 500;
const DEFAULT_MAX_BACKOFF_MS: u64 = 30_000;
const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
const DEFAULT_MAX_FILES: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Connect, handshake, write and HTTP request timeout: a hung SIEM must not stall the forwarder
/// forever (it is retried).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// During an outage a failure is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// One `[[audit.sinks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    File(FileSinkConfig),
    Syslog(SyslogSinkConfig),
    Webhook(WebhookSinkConfig),
}

/// JSON lines (one `{"type":"event",…}` per line), rotated at `max_bytes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub name: String,
    pub path: PathBuf,
    /// Rotate when the next line would make the file larger than this.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest … `path.<max_files>` oldest).
    #[serde(default = "default_max_files")]
    pub max_files: u32,
    pub poll_interval_ms: Option<u64>,
    pub batch_size: Option<u32>,
    pub max_backoff_ms: Option<u64>,
}

/// RFC 5424 over TCP with octet-counting framing (RFC 6587), optionally TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSinkConfig {
    pub name: String,
    /// `host:port`.
    pub address: String,
    #[serde(default)]
    pub tls: bool,
    /// PEM CA the server's certificate must chain to (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    pub poll_interval_ms: Option<u64>,
    pub batch_size: Option<u32>,
    pub max_backoff_ms: Option<u64>,
}

/// POSTs a JSON array of `{"type":"event",…}` objects per batch; any non-2xx is retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    pub name: String,
    /// An `https://` URL.
    pub url: String,
    /// PEM CA the server's certificate must chain to (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Name of the environment variable holding the `Authorization` header value (the secret
    /// itself never goes into the config file).
    pub auth_header_env: Option<String>,
    pub poll_interval_ms: Option<u64>,
    pub batch_size: Option<u32>,
    pub max_backoff_ms: Option<u64>,
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}
fn default_max_files() -> u32 {
    DEFAULT_MAX_FILES
}

#[derive(Debug, Clone, Copy)]
struct Tuning {
    poll: Duration,
    batch: u32,
    max_backoff: Duration,
}

impl SinkConfig {
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::File(c) => &c.name,
            SinkConfig::Syslog(c) => &c.name,
            SinkConfig::Webhook(c) => &c.name,
        }
    }

    fn tuning(&self) -> Tuning {
        let (poll, batch, backoff) = match self {
            SinkConfig::File(c) => (c.poll_interval_ms, c.batch_size, c.max_backoff_ms),
            SinkConfig::Syslog(c) => (c.poll_interval_ms, c.batch_size, c.max_backoff_ms),
            SinkConfig::Webhook(c) => (c.poll_interval_ms, c.batch_size, c.max_backoff_ms),
        };
        Tuning {
            poll: Duration::from_millis(poll.unwrap_or(DEFAULT_POLL_MS)),
            batch: batch.unwrap_or(DEFAULT_BATCH),
            max_backoff: Duration::from_millis(backoff.unwrap_or(DEFAULT_MAX_BACKOFF_MS)),
        }
    }

    /// Checks one entry on its own (names are checked together by [`validate_sinks`]).
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        let name = self.name();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(SinkConfigError::BadName(name.to_string()));
        }
        let bad = |problem: String| {
            Err(SinkConfigError::Invalid {
                name: name.to_string(),
                problem,
            })
        };
        let t = self.tuning();
        if t.batch == 0 || t.batch > 10_000 {
            return bad("batch_size must be between 1 and 10000".into());
        }
        if t.poll < Duration::from_millis(10) {
            return bad("poll_interval_ms must be at least 10".into());
        }
        if t.max_backoff < FIRST_BACKOFF {
            return bad(format!(
                "max_backoff_ms must be at least {}",
                FIRST_BACKOFF.as_millis()
            ));
        }
        match self {
            SinkConfig::File(c) => {
                if c.path.as_os_str().is_empty() {
                    return bad("path must not be empty".into());
                }
                if c.max_bytes < 4096 {
                    return bad("max_bytes must be at least 4096".into());
                }
                if c.max_files == 0 {
                    return bad("max_files must be at least 1".into());
                }
            }
            SinkConfig::Syslog(c) => {
                if let Err(problem) = split_address(&c.address) {
                    return bad(problem);
                }
                if c.ca_file.is_some() && !c.tls {
                    return bad("ca_file needs tls = true".into());
                }
            }
            SinkConfig::Webhook(c) => {
                let url = match reqwest::Url::parse(&c.url) {
                    Ok(u) => u,
                    Err(e) => return bad(format!("url is not a valid URL: {e}")),
                };
                if url.scheme() != "https" {
                    return bad(format!(
                        "url must be https:// (got {}://); audit events must not travel in clear text",
                        url.scheme()
                    ));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return bad(
                        "url must not carry credentials; put the Authorization value in the environment variable named by auth_header_env".into(),
                    );
                }
                if let Some(env) = &c.auth_header_env
                    && (env.is_empty() || env.contains('='))
                {
                    return bad("auth_header_env must be the name of an environment variable (not its value)".into());
                }
            }
        }
        Ok(())
    }
}

/// Checks every sink and that names are unique (each name owns a cursor file).
pub fn validate_sinks(sinks: &[SinkConfig]) -> Result<(), SinkConfigError> {
    let mut seen = HashSet::new();
    for s in sinks {
        s.validate()?;
        if !seen.insert(s.name()) {
            return Err(SinkConfigError::DuplicateName(s.name().to_string()));
        }
    }
    Ok(())
}

/// `host:port` or `[v6]:port` → (host, port).
fn split_address(address: &str) -> Result<(String, u16), String> {
    let msg = || format!("address {address:?} must be host:port");
    let (host, port) = address.rsplit_once(':').ok_or_else(msg)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| msg())?;
    if host.is_empty() || port == 0 {
        return Err(msg());
    }
    Ok((host.to_string(), port))
}

#[derive(Debug, thiserror::Error)]
pub enum SinkConfigError {
    #[error(
        "audit sink name {0:?} must be 1 to 64 characters of letters, digits, '-' and '_' (it names the cursor file)"
    )]
    BadName(String),
    #[error("two audit sinks are named {0:?}; names must be unique")]
    DuplicateName(String),
    #[error("audit sink {name}: {problem}")]
    Invalid { name: String, problem: String },
}

/// Why a sink could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SiemError {
    #[error(transparent)]
    Config(#[from] SinkConfigError),
    #[error("audit sink {name}: {message}")]
    Setup { name: String, message: String },
    #[error("audit sink {name}: cursor file {path}: {message}")]
    Cursor {
        name: String,
        path: String,
        message: String,
    },
}

/// Why one delivery attempt failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("sending to {addr} failed: {source}")]
    Send {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {}s ({stage})", IO_TIMEOUT.as_secs())]
    Timeout { addr: String, stage: &'static str },
    #[error("POST {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("POST {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("writing {path} failed: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} has mode {mode:03o}; audit files must not be accessible to group or others (chmod 600 it)"
    )]
    FileMode { path: String, mode: u32 },
    #[error("reading the audit chain failed: {0}")]
    Store(#[from] StoreError),
}

/// Progress of one forwarder, for tests and the operator (the same numbers go to the metrics).
#[derive(Debug)]
struct Shared {
    name: String,
    cursor: AtomicU64,
    backlog: AtomicU64,
    delivered: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: AtomicBool,
    wake: Notify,
}

/// A running forwarder. Dropping it leaves the task running; [`SinkHandle::stop`] ends it after
/// the delivery in progress (its cursor persisted).
#[derive(Debug)]
pub struct SinkHandle {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl SinkHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Highest sequence delivered (0: none).
    pub fn cursor(&self) -> u64 {
        self.shared.cursor.load(Ordering::SeqCst)
    }
    /// Events in the chain not yet delivered, as of the forwarder's last look at the head.
    pub fn backlog(&self) -> u64 {
        self.shared.backlog.load(Ordering::SeqCst)
    }
    /// Events delivered since this forwarder started (re-deliveries count again).
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::SeqCst)
    }
    /// Failed delivery attempts since this forwarder started.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::SeqCst)
    }
    /// The most recent failure, cleared by the next success.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or(None)
    }
    /// Stops the forwarder after the delivery in progress and waits for it.
    pub async fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let _ = self.task.await;
    }
}

/// The cursor file of a sink.
pub fn cursor_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("audit-sinks").join(format!("{name}.cursor"))
}

/// Validates the sinks and starts one forwarder per sink on the current runtime.
pub fn spawn_sinks(
    store: Arc<dyn Store>,
    sinks: &[SinkConfig],
    data_dir: &Path,
) -> Result<Vec<SinkHandle>, SiemError> {
    validate_sinks(sinks)?;
    // Build all before starting any, so a bad sink stops startup without half-started tasks.
    let built = sinks
        .iter()
        .map(|c| prepare(c, data_dir))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(built.into_iter().map(|p| p.start(store.clone())).collect())
}

/// Starts one forwarder (validated on its own; [`spawn_sinks`] also checks names are unique).
pub fn spawn_sink(
    store: Arc<dyn Store>,
    config: &SinkConfig,
    data_dir: &Path,
) -> Result<SinkHandle, SiemError> {
    config.validate()?;
    Ok(prepare(config, data_dir)?.start(store))
}

struct Prepared {
    name: String,
    sink: Sink,
    cursor: u64,
    cursor_file: PathBuf,
    tuning: Tuning,
}

fn prepare(config: &SinkConfig, data_dir: &Path) -> Result<Prepared, SiemError> {
    let name = config.name().to_string();
    let setup = |message: String| SiemError::Setup {
        name: name.clone(),
        message,
    };
    let sink = match config {
        SinkConfig::File(c) => {
            let mut state = FileState {
                path: c.path.clone(),
                max_bytes: c.max_bytes,
                max_files: c.max_files,
                file: None,
                size: 0,
            };
            // Open now so a bad path or a too-open file stops startup instead of retrying.
            state.open().map_err(|e| setup(e.to_string()))?;
            Sink::File(Arc::new(Mutex::new(state)))
        }
        SinkConfig::Syslog(c) => {
            let (host, _) = split_address(&c.address).map_err(setup)?;
            let tls = if c.tls {
                let server_name = rustls_pki_types::ServerName::try_from(host)
                    .map_err(|e| setup(format!("address host: {e}")))?;
                Some((
                    syslog_tls(c.ca_file.as_deref()).map_err(setup)?,
                    server_name,
                ))
            } else {
                None
            };
            Sink::Syslog(SyslogSink {
                addr: c.address.clone(),
                tls,
                conn: None,
                hostname: hostname(),
                procid: std::process::id().to_string(),
                last_batch: Vec::new(),
                resend: Vec::new(),
            })
        }
        SinkConfig::Webhook(c) => Sink::Webhook(WebhookSink::new(c).map_err(setup)?),
    };
    let cursor_file = cursor_path(data_dir, &name);
    let cursor = read_cursor(&cursor_file).map_err(|message| SiemError::Cursor {
        name: name.clone(),
        path: cursor_file.display().to_string(),
        message,
    })?;
    Ok(Prepared {
        name,
        sink,
        cursor,
        cursor_file,
        tuning: config.tuning(),
    })
}

impl Prepared {
    fn start(self, store: Arc<dyn Store>) -> SinkHandle {
        let shared = Arc::new(Shared {
            name: self.name,
            cursor: AtomicU64::new(self.cursor),
            backlog: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let task = tokio::spawn(forward(
            self.sink,
            store,
            shared.clone(),
            self.cursor_file,
            self.tuning,
        ));
        SinkHandle { shared, task }
    }
}

fn read_cursor(path: &Path) -> Result<u64, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            "does not hold a sequence number (delete it to re-send the whole chain)".to_string()
        }),
        // A new sink starts at the beginning of the chain.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// Temp file, fsync, rename, fsync the directory: a crash leaves the old or the new cursor.
fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let tmp = path.with_extension("cursor.tmp");
    let mut f = private_file_options().truncate(true).open(&tmp)?;
    f.write_all(format!("{seq}\n").as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir);
    Ok(())
}

fn private_file_options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

fn sync_dir(dir: &Path) {
    // Makes a rename durable; not possible on every platform, hence best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Logs the first failure of an outage, then at most every [`WARN_EVERY`].
struct WarnLimiter {
    failures: u64,
    last: Option<Instant>,
}

impl WarnLimiter {
    fn failed(&mut self, sink: &str, error: &dyn std::fmt::Display) {
        self.failures += 1;
        if self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last = Some(Instant::now());
            tracing::warn!(
                sink,
                error = %error,
                failures = self.failures,
                "audit sink delivery failed; retrying with backoff (events wait in the database)"
            );
        }
    }

    fn recovered(&mut self, sink: &str) {
        if self.failures > 0 {
            tracing::info!(
                sink,
                failures = self.failures,
                "audit sink delivering again"
            );
        }
        self.failures = 0;
        self.last = None;
    }
}

/// Waits `d`, or less if the forwarder is asked to stop.
async fn pause(shared: &Shared, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shared.wake.notified() => {}
    }
}

async fn forward(
    mut sink: Sink,
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    cursor_file: PathBuf,
    tuning: Tuning,
) {
    let name = shared.name.clone();
    let backlog_gauge = metrics::gauge!("sovra_audit_sink_backlog", "sink" => name.clone());
    let delivered_total =
        metrics::counter!("sovra_audit_sink_delivered_total", "sink" => name.clone());
    let failures_total =
        metrics::counter!("sovra_audit_sink_failures_total", "sink" => name.clone());
    let mut backoff = FIRST_BACKOFF;
    let mut warn = WarnLimiter {
        failures: 0,
        last: None,
    };
    let mut warned_ahead = false;
    let mut cursor_warn = WarnLimiter {
        failures: 0,
        last: None,
    };
    while !shared.stop.load(Ordering::SeqCst) {
        let cursor = shared.cursor.load(Ordering::SeqCst);
        let attempt = async {
            let head = store.audit_head().await?.map(|(s, _)| s).unwrap_or(0);
            shared
                .backlog
                .store(head.saturating_sub(cursor), Ordering::SeqCst);
            backlog_gauge.set(head.saturating_sub(cursor) as f64);
            if head < cursor && !warned_ahead {
                warned_ahead = true;
                tracing::warn!(sink = %name, cursor, head, "audit sink cursor is past the chain head (was the database replaced?); waiting for the chain to reach it");
            }
            if head <= cursor {
                return Ok::<_, DeliveryError>(None);
            }
            let mut events = store.audit_events(cursor + 1, tuning.batch).await?;
            events.retain(|e| e.seq > cursor);
            let Some(last) = events.last().map(|e| e.seq) else {
                return Ok(None);
            };
            sink.deliver(&events).await?;
            Ok(Some((last, events.len() as u64, head)))
        };
        match attempt.await {
            Ok(None) => pause(&shared, tuning.poll).await,
            Ok(Some((last, n, head))) => {
                shared.cursor.store(last, Ordering::SeqCst);
                shared.delivered.fetch_add(n, Ordering::SeqCst);
                delivered_total.increment(n);
                let backlog = head.saturating_sub(last);
                shared.backlog.store(backlog, Ordering::SeqCst);
                backlog_gauge.set(backlog as f64);
                if let Ok(mut e) = shared.last_error.lock() {
                    *e = None;
                }
                warn.recovered(&name);
                backoff = FIRST_BACKOFF;
                let file = cursor_file.clone();
                let saved = tokio::task::spawn_blocking(move || write_cursor(&file, last)).await;
                match saved {
                    Ok(Ok(())) => cursor_warn.recovered(&name),
                    // Delivery stays correct (the cursor is kept in memory); after a restart the
                    // events since the last saved cursor are sent again.
                    Ok(Err(e)) => cursor_warn.failed(
                        &name,
                        &format!("cannot save cursor {}: {e}", cursor_file.display()),
                    ),
                    Err(e) => cursor_warn.failed(&name, &e),
                }
            }
            Err(e) => {
                shared.failures.fetch_add(1, Ordering::SeqCst);
                failures_total.increment(1);
                if let Ok(mut slot) = shared.last_error.lock() {
                    *slot = Some(e.to_string());
                }
                warn.failed(&name, &e);
                pause(&shared, backoff).await;
                backoff = (backoff * 2).min(tuning.max_backoff);
            }
        }
    }
}

enum Sink {
    File(Arc<Mutex<FileState>>),
    Syslog(SyslogSink),
    Webhook(WebhookSink),
}

impl Sink {
    async fn deliver(&mut self, events: &[AuditEvent]) -> Result<(), DeliveryError> {
        match self {
            Sink::File(state) => {
                let lines = events.iter().map(export_line).collect::<Vec<_>>();
                let state = state.clone();
                tokio::task::spawn_blocking(move || {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    s.write(&lines)
                })
                .await
                .map_err(|e| DeliveryError::File {
                    path: "audit file".into(),
                    source: std::io::Error::other(e.to_string()),
                })?
            }
            Sink::Syslog(s) => s.deliver(events).await,
            Sink::Webhook(w) => w.deliver(events).await,
        }
    }
}

/// The event as one export line (`{"type":"event",…}`), the same as `sovra audit export`.
fn export_line(event: &AuditEvent) -> String {
    serde_json::to_string(&ExportLine::Event(Box::new(event.clone())))
        .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"message\":\"{e}\"}}"))
}

// ---------------------------------------------------------------------------------------------
// File

struct FileState {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: Option<std::fs::File>,
    size: u64,
}

impl FileState {
    fn err(&self, source: std::io::Error) -> DeliveryError {
        DeliveryError::File {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn open(&mut self) -> Result<(), DeliveryError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| self.err(e))?;
        }
        let file = private_file_options()
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        let meta = file.metadata().map_err(|e| self.err(e))?;
        // A pre-existing file others can read is refused, not silently fixed: someone may
        // already have read it, and the operator should know.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(DeliveryError::FileMode {
                    path: self.path.display().to_string(),
                    mode,
                });
            }
        }
        self.size = meta.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> Result<(), DeliveryError> {
        self.file = None;
        let ignore_missing = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        ignore_missing(std::fs::remove_file(self.rotated(self.max_files)))
            .map_err(|e| self.err(e))?;
        for i in (1..self.max_files).rev() {
            ignore_missing(std::fs::rename(self.rotated(i), self.rotated(i + 1)))
                .map_err(|e| self.err(e))?;
        }
        std::fs::rename(&self.path, self.rotated(1)).map_err(|e| self.err(e))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            });
        }
        self.open()
    }

    /// Appends and fsyncs `buf`; on failure cuts the file back so a retry does not leave a torn
    /// line behind.
    fn append(&mut self, buf: &[u8]) -> Result<(), DeliveryError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(f) = self.file.as_mut() else {
            return Err(self.err(std::io::Error::other("not open")));
        };
        let res = f.write_all(buf).and_then(|_| f.sync_data());
        match res {
            Ok(()) => {
                self.size += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = f.set_len(self.size);
                self.file = None;
                Err(self.err(e))
            }
        }
    }

    fn write(&mut self, lines: &[String]) -> Result<(), DeliveryError> {
        if self.file.is_none() {
            self.open()?;
        }
        let mut buf = Vec::new();
        for line in lines {
            let len = (line.len() + 1) as u64;
            let pending = self.size + buf.len() as u64;
            if pending > 0 && pending + len > self.max_bytes {
                self.append(&buf)?;
                buf.clear();
                self.rotate()?;
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        self.append(&buf)
    }
}

// ---------------------------------------------------------------------------------------------
// Syslog

trait Conn: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Conn for T {}

struct SyslogSink {
    addr: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    conn: Option<Box<dyn Conn>>,
    hostname: String,
    procid: String,
    /// The frames of the last batch written: TCP syslog has no acknowledgements, so when the
    /// connection turns out closed they are sent again on the next one.
    last_batch: Vec<u8>,
    /// Frames to send before the next batch.
    resend: Vec<u8>,
}

fn syslog_tls(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match ca_file {
        Some(path) => {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject;
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("ca_file {} holds no certificate", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| format!("system trust store: {e}"))?
                .with_no_client_auth()
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The system's host name as RFC 5424 allows it (printable ASCII, no spaces), or `-`.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if clean.is_empty() { "-".into() } else { clean }
}

/// RFC 3339 UTC with milliseconds, as RFC 5424's TIMESTAMP.
fn rfc5424_time(time_ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(time_ms as i128 * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "-".into(),
    }
}

/// JSON with every non-ASCII character escaped: RFC 5424 requires a BOM before a UTF-8 MSG,
/// which many collectors mishandle; pure ASCII needs none and is the same JSON value.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// `<110>`: facility log audit (13) × 8 + severity informational (6).
const SYSLOG_PRI: u32 = 13 * 8 + 6;

impl SyslogSink {
    fn frame(&self, event: &AuditEvent, out: &mut Vec<u8>) {
        let msg = format!(
            "<{SYSLOG_PRI}>1 {} {} sovra {} audit - {}",
            rfc5424_time(event.time_ms),
            self.hostname,
            self.procid,
            ascii_json(&export_line(event))
        );
        // RFC 6587 octet counting: "<length> <message>".
        out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
        out.extend_from_slice(msg.as_bytes());
    }

    async fn connect(&self) -> Result<Box<dyn Conn>, DeliveryError> {
        let addr = self.addr.clone();
        let tcp = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| DeliveryError::Timeout {
                addr: addr.clone(),
                stage: "connect",
            })?
            .map_err(|source| DeliveryError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, server_name)) => {
                let tls =
                    tokio::time::timeout(IO_TIMEOUT, connector.connect(server_name.clone(), tcp))
                        .await
                        .map_err(|_| DeliveryError::Timeout {
                            addr: addr.clone(),
                            stage: "TLS handshake",
                        })?
                        .map_err(|source| DeliveryError::Tls { addr, source })?;
                Ok(Box::new(tls))
            }
        }
    }

    async fn deliver(&mut self, events: &[AuditEvent]) -> Result<(), DeliveryError> {
        let mut batch = Vec::new();
        for e in events {
            self.frame(e, &mut batch);
        }
        if let Some(conn) = self.conn.as_mut()
            && !still_open(conn.as_mut()).await
        {
            // The receiver went away since the last batch; it may not have read all of it.
            self.conn = None;
            self.resend = std::mem::take(&mut self.last_batch);
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let mut payload = self.resend.clone();
        payload.extend_from_slice(&batch);
        let addr = self.addr.clone();
        let conn = self.conn.as_mut().expect("connected above");
        let sent = tokio::time::timeout(IO_TIMEOUT, async {
            conn.write_all(&payload).await?;
            conn.flush().await
        })
        .await;
        let result = match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(DeliveryError::Send { addr, source }),
            Err(_) => Err(DeliveryError::Timeout {
                addr,
                stage: "write",
            }),
        };
        match result {
            Ok(()) => {
                self.resend.clear();
                self.last_batch = batch;
                Ok(())
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// Whether the receiver has not closed the connection: a read that would block means open; end
/// of stream or an error means closed. Anything the receiver sent is discarded.
async fn still_open(conn: &mut dyn Conn) -> bool {
    let mut buf = [0u8; 512];
    loop {
        // A zero timeout polls the read exactly once.
        match tokio::time::timeout(Duration::ZERO, conn.read(&mut buf)).await {
            Err(_) => return true,
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(_)) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook

struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL without query (it may carry a token), for errors and logs.
    shown: String,
    /// Marked sensitive: never printed by Debug.
    auth: Option<reqwest::header::HeaderValue>,
}

impl WebhookSink {
    fn new(c: &WebhookSinkConfig) -> Result<WebhookSink, String> {
        let url = reqwest::Url::parse(&c.url).map_err(|e| format!("url: {e}"))?;
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        let auth = match &c.auth_header_env {
            None => None,
            Some(var) => {
                let value = std::env::var(var).map_err(|_| {
                    format!("environment variable {var} (auth_header_env) is not set")
                })?;
                let mut v = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                    format!("environment variable {var} does not hold a valid header value")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let mut b = reqwest::Client::builder()
            .timeout(IO_TIMEOUT)
            .https_only(true)
            // A redirect would carry the Authorization header elsewhere; treat it as a failure.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            b = b.tls_certs_only([cert]);
        }
        let client = b.build().map_err(|e| e.to_string())?;
        Ok(WebhookSink {
            client,
            url,
            shown: shown.to_string(),
            auth,
        })
    }

    async fn deliver(&mut self, events: &[AuditEvent]) -> Result<(), DeliveryError> {
        let body: Vec<ExportLine> = events
            .iter()
            .map(|e| ExportLine::Event(Box::new(e.clone())))
            .collect();
        let body = serde_json::to_vec(&body).map_err(|e| DeliveryError::Request {
            url: self.shown.clone(),
            message: e.to_string(),
        })?;
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(auth) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let resp = req.send().await.map_err(|e| DeliveryError::Request {
            url: self.shown.clone(),
            message: error_chain(&e.without_url()),
        })?;
        if !resp.status().is_success() {
            return Err(DeliveryError::Status {
                url: self.shown.clone(),
                status: resp.status().as_u16(),
            });
        }
        Ok(())
    }
}

/// An error and its causes ("error sending request: … : Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_timestamps_have_milliseconds_in_utc() {
        assert_eq!(rfc5424_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn non_ascii_is_escaped_to_the_same_json_value() {
        let v = serde_json::json!({"actor": "zoë 🔑"});
        let escaped = ascii_json(&v.to_string());
        assert!(escaped.is_ascii(), "{escaped}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&escaped).unwrap(),
            v
        );
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(
            split_address("siem.example:6514").unwrap(),
            ("siem.example".into(), 6514)
        );
        assert_eq!(split_address("[::1]:514").unwrap(), ("::1".into(), 514));
        for bad in ["", "host", ":514", "host:", "host:0", "host:99999"] {
            assert!(split_address(bad).is_err(), "{bad:?} accepted");
        }
    }
}
