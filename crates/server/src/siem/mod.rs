//! Forwarding the audit chain to a SIEM: a JSON lines file, RFC 5424 syslog over TCP (TLS
//! optional) or an HTTPS webhook.
//!
//! The durable chain in the database is the source of truth. Each sink has a forwarder task that
//! reads the events after its cursor, delivers them in sequence order with every signed head
//! (checkpoint line) among them, so that what a SIEM keeps verifies with `sovra audit verify`
//! and catches a rolled-back log, and only then advances and persists the cursor (`<data_dir>/audit-sinks/<name>.cursor`). Requests only ever write the
//! database, so a sink that is down never blocks them; it falls behind (the backlog gauge shows
//! by how much) and catches up when it returns: delivery is at least once, duplicates carry the
//! same `seq`. A sink without a cursor file starts at the beginning of the chain.
//!
//! This module is the forwarder and its public surface; the configuration, the cursor file and
//! each sink kind live in their own submodules.

mod config;
mod cursor;
mod file;
mod syslog;
mod webhook;

pub use config::{
    FileSinkConfig, SinkConfig, SinkConfigError, SyslogSinkConfig, WebhookSinkConfig,
    validate_sinks,
};
pub use cursor::cursor_path;

use config::Tuning;
use cursor::{read_cursor, write_cursor};
use file::FileSink;
use sovra_core::audit::{AuditEvent, Checkpoint, ExportLine};
use sovra_core::{Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use syslog::SyslogSink;
use tokio::sync::Notify;
use webhook::WebhookSink;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Connect, handshake, write and HTTP request timeout: a hung SIEM must not stall the forwarder
/// forever (it is retried).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// During an outage a failure is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

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
        SinkConfig::File(c) => Sink::File(FileSink::open(c).map_err(|e| setup(e.to_string()))?),
        SinkConfig::Syslog(c) => Sink::Syslog(SyslogSink::new(c).map_err(setup)?),
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
    // The last signed head forwarded. A head may be stored just after the events it signs (a
    // node stores its batch, then the batch's signature): it is forwarded once it appears,
    // after the events delivered meanwhile.
    let mut heads_cursor = shared.cursor.load(Ordering::SeqCst);
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
            let mut events = if head > cursor {
                store.audit_events(cursor + 1, tuning.batch).await?
            } else {
                Vec::new()
            };
            events.retain(|e| e.seq > cursor);
            let last = events.last().map_or(cursor, |e| e.seq);
            let heads = if last > heads_cursor {
                store.audit_checkpoints(heads_cursor + 1, last).await?
            } else {
                Vec::new()
            };
            if events.is_empty() && heads.is_empty() {
                return Ok::<_, DeliveryError>(None);
            }
            let last_head = heads.last().map(|cp| cp.seq);
            sink.deliver(&export_lines(events.iter(), heads.into_iter()))
                .await?;
            if let Some(h) = last_head {
                heads_cursor = h;
            }
            Ok(Some((last, events.len() as u64, head)))
        };
        match attempt.await {
            Ok(None) => pause(&shared, tuning.poll).await,
            Ok(Some((last, 0, _))) if last == cursor => {}
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
    File(FileSink),
    Syslog(SyslogSink),
    Webhook(WebhookSink),
}

impl Sink {
    async fn deliver(&mut self, lines: &[ExportLine]) -> Result<(), DeliveryError> {
        match self {
            Sink::File(f) => f.deliver(lines).await,
            Sink::Syslog(s) => s.deliver(lines).await,
            Sink::Webhook(w) => w.deliver(lines).await,
        }
    }
}

/// Events in sequence order, each signed head right after the event it signs (one signing an
/// event delivered earlier comes first).
fn export_lines<'a>(
    events: impl Iterator<Item = &'a AuditEvent>,
    heads: impl Iterator<Item = Checkpoint>,
) -> Vec<ExportLine> {
    let mut heads = heads.peekable();
    let mut lines = Vec::new();
    for e in events {
        while let Some(cp) = heads.next_if(|cp| cp.seq < e.seq) {
            lines.push(ExportLine::Checkpoint(cp));
        }
        lines.push(ExportLine::Event(Box::new(e.clone())));
    }
    lines.extend(heads.map(ExportLine::Checkpoint));
    lines
}

/// A line as `sovra audit export` writes it (`{"type":"event",…}`, `{"type":"checkpoint",…}`).
fn export_line(line: &ExportLine) -> String {
    serde_json::to_string(line)
        .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"message\":\"{e}\"}}"))
}
