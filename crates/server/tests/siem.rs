//! Audit forwarding to SIEM sinks against real receivers on loopback: a syslog TCP (and TLS)
//! listener and an HTTPS webhook that are down, come back and go down again, and a rotated JSON
//! lines file. Events are written to a real SQLite store through the group-commit writer;
//! recording never waits for a sink, and every event arrives at least once, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sovra_core::Store;
use sovra_core::audit::{AuditEvent, AuditWriter, ExportLine};
use sovra_core::test_support::audit_event;
use sovra_server::siem::{SinkConfig, cursor_path, spawn_sink};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Generous: a shared, loaded build machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// A non-ASCII actor, which must reach every sink intact.
fn event(i: u64) -> AuditEvent {
    AuditEvent {
        actor: format!("idp#zoë{i}"),
        ..audit_event(i)
    }
}

async fn open_store(dir: &Path) -> Arc<dyn Store> {
    sovra_store::open(&format!("sqlite://{}", dir.join("sovra.db").display()))
        .await
        .unwrap()
}

/// Records events `from..=to`; each call returns once its event is durable (never waits for a
/// sink).
async fn record(writer: &AuditWriter, from: u64, to: u64) {
    let all = async {
        for i in from..=to {
            assert_eq!(writer.record(event(i)).await.unwrap(), i);
        }
    };
    tokio::time::timeout(DEADLINE, all)
        .await
        .expect("recording must not wait for a sink that is down");
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sink(toml_entry: &str) -> SinkConfig {
    #[derive(serde::Deserialize)]
    struct One {
        sink: SinkConfig,
    }
    toml::from_str::<One>(&format!("[sink]\n{toml_entry}"))
        .unwrap()
        .sink
}

/// Parses one octet-counted RFC 5424 frame off the front of `buf`: the event's seq.
fn take_frame(buf: &mut Vec<u8>) -> Option<u64> {
    let space = buf.iter().position(|b| *b == b' ')?;
    let len: usize = std::str::from_utf8(&buf[..space]).unwrap().parse().unwrap();
    if buf.len() < space + 1 + len {
        return None;
    }
    let msg = String::from_utf8(buf[space + 1..space + 1 + len].to_vec()).unwrap();
    buf.drain(..space + 1 + len);
    let parts: Vec<&str> = msg.splitn(8, ' ').collect();
    assert_eq!(parts.len(), 8, "{msg}");
    assert_eq!(
        parts[0], "<110>1",
        "facility log audit, severity informational"
    );
    assert!(parts[1].ends_with('Z') && parts[1].contains('T'), "{msg}");
    assert!(!parts[2].is_empty());
    assert_eq!(
        (parts[3], parts[5], parts[6]),
        ("sovra", "audit", "-"),
        "{msg}"
    );
    assert!(parts[7].is_ascii(), "MSG is ASCII JSON (no BOM needed)");
    let ExportLine::Event(ev) = serde_json::from_str(parts[7]).unwrap() else {
        panic!("not an event: {msg}")
    };
    assert_eq!(ev.actor, format!("idp#zoë{}", ev.seq), "non-ASCII survives");
    assert_eq!(ev.compute_hash(), ev.hash);
    Some(ev.seq)
}

/// Seqs in arrival order, duplicates dropped; panics if an event first arrives out of order.
fn first_arrivals(received: &[u64]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for s in received {
        if seen.insert(*s) {
            out.push(*s);
        }
    }
    out
}

/// A syslog receiver on `port`: every received seq is appended to `received`.
struct Receiver {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn syslog_receiver(
    port: u16,
    tls: Option<Arc<rustls::ServerConfig>>,
    received: Arc<Mutex<Vec<u64>>>,
) -> Receiver {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let tcp = tokio::select! {
                c = listener.accept() => c.unwrap().0,
                _ = &mut stopped => break,
            };
            let received = received.clone();
            let tls = tls.clone();
            conns.spawn(async move {
                let mut stream: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match tls {
                    Some(cfg) => match tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(tcp),
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(seq) = take_frame(&mut buf) {
                        received.lock().unwrap().push(seq);
                    }
                }
            });
        }
        // Closes every connection before the receiver counts as down.
        conns.shutdown().await;
    });
    Receiver { stop, task }
}

/// The receiver goes down: listener and connections closed when this returns.
async fn stop_receiver(r: Receiver) {
    let _ = r.stop.send(());
    r.task.await.unwrap();
}

fn received_up_to(received: &Arc<Mutex<Vec<u64>>>, n: u64) -> bool {
    first_arrivals(&received.lock().unwrap()) == (1..=n).collect::<Vec<_>>()
}

fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static H: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    H.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap()
    })
}

async fn syslog_survives_a_receiver_that_is_down_and_comes_back(tls: bool) {
    let metrics = prometheus();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let writer = AuditWriter::start(store.clone(), sovra_core::audit::OnRollback::Halt);
    let port = free_port();
    let name = if tls { "syslog-tls" } else { "syslog-tcp" };
    let server_tls = if tls {
        let (cert, key) = sovra_server::tls::self_signed().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &cert).unwrap();
        Some(sovra_server::tls::server_config(cert.as_bytes(), key.as_bytes()).unwrap())
    } else {
        None
    };
    let tls_lines = if tls {
        format!(
            "tls = true\nca_file = {:?}\n",
            dir.path().join("ca.pem").display().to_string()
        )
    } else {
        String::new()
    };
    let config = sink(&format!(
        "kind = \"syslog\"\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\n{tls_lines}\
         poll_interval_ms = 50\nbatch_size = 7\nmax_backoff_ms = 500"
    ));
    let handle = spawn_sink(store.clone(), &config, dir.path()).unwrap();

    // Nothing listens: recording goes on, the backlog grows and the cause is clear.
    record(&writer, 1, 20).await;
    wait_until("backlog of 20 with a failure", || {
        handle.backlog() == 20 && handle.failures() > 0
    })
    .await;
    let err = handle.last_error().unwrap();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.to_lowercase().contains("refused"),
        "{err}"
    );
    assert!(
        metrics
            .render()
            .contains(&format!("sovra_audit_sink_backlog{{sink=\"{name}\"}} 20")),
        "{}",
        metrics.render()
    );

    // The receiver starts: everything arrives, in order, and the backlog drains.
    let received = Arc::new(Mutex::new(Vec::new()));
    let rx = syslog_receiver(port, server_tls.clone(), received.clone()).await;
    wait_until("events 1..=20", || received_up_to(&received, 20)).await;
    wait_until("backlog 0", || {
        handle.backlog() == 0 && handle.cursor() == 20
    })
    .await;
    assert!(handle.last_error().is_none());

    // It goes down again while more events are written, then comes back.
    stop_receiver(rx).await;
    let failures = handle.failures();
    record(&writer, 21, 35).await;
    wait_until("backlog of 15 while down", || {
        handle.backlog() == 15 && handle.failures() > failures
    })
    .await;
    let rx = syslog_receiver(port, server_tls, received.clone()).await;
    wait_until("events 1..=35", || received_up_to(&received, 35)).await;
    wait_until("backlog 0 again", || handle.backlog() == 0).await;
    assert!(
        metrics
            .render()
            .contains(&format!("sovra_audit_sink_backlog{{sink=\"{name}\"}} 0")),
    );
    handle.stop().await;
    stop_receiver(rx).await;
    assert_eq!(
        std::fs::read_to_string(cursor_path(dir.path(), name))
            .unwrap()
            .trim(),
        "35"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_delivers_every_event_after_outages() {
    syslog_survives_a_receiver_that_is_down_and_comes_back(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tls_delivers_every_event_after_outages() {
    syslog_survives_a_receiver_that_is_down_and_comes_back(true).await;
}

// ---------------------------------------------------------------------------------------------
// Webhook

#[derive(Clone, Default)]
struct Hook {
    accept: Arc<AtomicBool>,
    answered_503: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u64>>>,
    auth: Arc<Mutex<Vec<String>>>,
}

async fn ingest(
    axum::extract::State(hook): axum::extract::State<Hook>,
    headers: axum::http::HeaderMap,
    axum::Json(lines): axum::Json<Vec<ExportLine>>,
) -> axum::http::StatusCode {
    hook.auth.lock().unwrap().push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
    );
    if !hook.accept.load(Ordering::SeqCst) {
        hook.answered_503.fetch_add(1, Ordering::SeqCst);
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    let mut r = hook.received.lock().unwrap();
    for l in lines {
        let ExportLine::Event(ev) = l else {
            panic!("webhook got a non-event")
        };
        assert_eq!(ev.compute_hash(), ev.hash);
        r.push(ev.seq);
    }
    axum::http::StatusCode::NO_CONTENT
}

/// Set for test processes by `.cargo/config.toml` (`[env]`): setting it here would need
/// `unsafe` (`std::env::set_var`).
const TOKEN_VAR: &str = "SOVRA_TEST_SIEM_WEBHOOK_AUTH";
const TOKEN: &str = "Bearer s3cr3t-webhook-token";

#[test]
fn webhook_delivers_every_event_after_503s_and_sends_the_auth_header() {
    assert_eq!(
        std::env::var(TOKEN_VAR).as_deref(),
        Ok(TOKEN),
        "{TOKEN_VAR} comes from .cargo/config.toml [env]"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(webhook_case());
}

async fn webhook_case() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let writer = AuditWriter::start(store.clone(), sovra_core::audit::OnRollback::Halt);
    let (cert, key) = sovra_server::tls::self_signed().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let port = free_port();
    let config = sink(&format!(
        "kind = \"webhook\"\nname = \"hook\"\nurl = \"https://127.0.0.1:{port}/ingest?tenant=1\"\n\
         ca_file = {:?}\nauth_header_env = \"{TOKEN_VAR}\"\n\
         poll_interval_ms = 50\nbatch_size = 4\nmax_backoff_ms = 400",
        ca.display().to_string()
    ));
    let handle = spawn_sink(store.clone(), &config, dir.path()).unwrap();
    assert!(!format!("{handle:?}").contains("s3cr3t"));

    // Down: nothing listens.
    record(&writer, 1, 10).await;
    wait_until("backlog 10 while down", || {
        handle.backlog() == 10 && handle.failures() > 0
    })
    .await;
    let err = handle.last_error().unwrap();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("s3cr3t") && !err.contains("tenant"), "{err}");

    // Up, but answering 503: still a failure, nothing is lost.
    let hook = Hook::default();
    let router = axum::Router::new()
        .route("/ingest", axum::routing::post(ingest))
        .with_state(hook.clone());
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let tls = sovra_server::tls::server_config(cert.as_bytes(), key.as_bytes()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sovra_server::serve::serve(
        listener,
        tls,
        router,
        Arc::new(AtomicUsize::new(0)),
        sovra_server::serve::ConnectionLimits {
            max_connections: 16,
            max_connections_per_source: 8,
            ..sovra_server::serve::ConnectionLimits::from_config(&Default::default())
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    wait_until("503 answers", || {
        hook.answered_503.load(Ordering::SeqCst) >= 2
    })
    .await;
    wait_until("the 503 as the error", || {
        handle.last_error().is_some_and(|e| e.contains("503"))
    })
    .await;
    assert_eq!(handle.backlog(), 10);

    // Accepting: every event arrives in order, with the Authorization header from the env.
    hook.accept.store(true, Ordering::SeqCst);
    record(&writer, 11, 15).await;
    wait_until("events 1..=15", || received_up_to(&hook.received, 15)).await;
    wait_until("backlog 0", || handle.backlog() == 0).await;
    assert!(hook.auth.lock().unwrap().iter().all(|a| a == TOKEN));
    handle.stop().await;
    let _ = stop_tx.send(());
    server.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// File

fn file_seqs(path: &Path, max_bytes: u64) -> Vec<u64> {
    // Oldest first: path.N … path.1, then path.
    let mut files = Vec::new();
    for i in (1..100).rev() {
        let p = std::path::PathBuf::from(format!("{}.{i}", path.display()));
        if p.exists() {
            files.push(p);
        }
    }
    files.push(path.to_path_buf());
    let mut seqs = Vec::new();
    for f in files {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", f.display());
        assert!(meta.len() <= max_bytes, "{} exceeds max_bytes", f.display());
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let ExportLine::Event(ev) = serde_json::from_str(line).unwrap() else {
                panic!("{line}")
            };
            seqs.push(ev.seq);
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_rotates_keeps_every_event_once_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let writer = AuditWriter::start(store.clone(), sovra_core::audit::OnRollback::Halt);
    let path = dir.path().join("siem").join("audit.jsonl");
    let max_bytes = 4096;
    let config = sink(&format!(
        "kind = \"file\"\nname = \"local\"\npath = {:?}\nmax_bytes = {max_bytes}\nmax_files = 50\n\
         poll_interval_ms = 50\nbatch_size = 9",
        path.display().to_string()
    ));
    let handle = spawn_sink(store.clone(), &config, dir.path()).unwrap();
    record(&writer, 1, 40).await;
    wait_until("cursor 40", || handle.cursor() == 40).await;
    handle.stop().await;
    assert!(
        std::path::PathBuf::from(format!("{}.2", path.display())).exists(),
        "40 events of ~450 bytes rotate a 4 KiB file several times"
    );
    assert_eq!(file_seqs(&path, max_bytes), (1..=40).collect::<Vec<_>>());
    let cursor = cursor_path(dir.path(), "local");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cursor).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Written while the forwarder is stopped; a new forwarder resumes from the cursor.
    record(&writer, 41, 55).await;
    let handle = spawn_sink(store.clone(), &config, dir.path()).unwrap();
    wait_until("cursor 55", || handle.cursor() == 55).await;
    assert_eq!(handle.delivered(), 15, "only the new events are delivered");
    handle.stop().await;
    assert_eq!(file_seqs(&path, max_bytes), (1..=55).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_refuses_an_existing_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = sink(&format!(
        "kind = \"file\"\nname = \"local\"\npath = {:?}",
        path.display().to_string()
    ));
    let err = spawn_sink(store, &config, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mode 644") && err.contains("chmod 600"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Config

fn config_error(toml: &str) -> String {
    sovra_server::Config::parse(toml).unwrap_err()
}

#[test]
fn bad_sink_configs_are_refused_with_clear_errors() {
    let e = config_error(
        "[[audit.sinks]]\nkind = \"syslog\"\nname = \"a\"\naddress = \"h:514\"\nadress = \"x\"",
    );
    assert!(e.contains("unknown field") && e.contains("adress"), "{e}");
    let e = config_error("[[audit.sinks]]\nkind = \"kafka\"\nname = \"a\"");
    assert!(e.contains("kafka"), "{e}");
    let e = config_error(
        "[[audit.sinks]]\nkind = \"webhook\"\nname = \"a\"\nurl = \"http://siem.example/in\"",
    );
    assert!(e.contains("https://"), "{e}");
    let e = config_error(
        "[[audit.sinks]]\nkind = \"webhook\"\nname = \"a\"\nurl = \"https://u:p@siem.example/in\"",
    );
    assert!(e.contains("credentials"), "{e}");
    let e = config_error(
        "[[audit.sinks]]\nkind = \"file\"\nname = \"a\"\npath = \"x.jsonl\"\n\
         [[audit.sinks]]\nkind = \"syslog\"\nname = \"a\"\naddress = \"h:514\"",
    );
    assert!(e.contains("two audit sinks are named \"a\""), "{e}");
    let e = config_error("[[audit.sinks]]\nkind = \"syslog\"\nname = \"a\"\naddress = \"\"");
    assert!(e.contains("audit sink a") && e.contains("host:port"), "{e}");
    let e = config_error("[[audit.sinks]]\nkind = \"syslog\"\nname = \"../x\"\naddress = \"h:1\"");
    assert!(e.contains("name"), "{e}");
    let e = config_error(
        "[[audit.sinks]]\nkind = \"syslog\"\nname = \"a\"\naddress = \"h:1\"\nca_file = \"ca.pem\"",
    );
    assert!(e.contains("tls = true"), "{e}");

    let ok = sovra_server::Config::parse(
        "[[audit.sinks]]\nkind = \"syslog\"\nname = \"siem\"\naddress = \"siem.example:6514\"\ntls = true\n\
         [[audit.sinks]]\nkind = \"file\"\nname = \"local\"\npath = \"audit.jsonl\"",
    )
    .unwrap();
    assert_eq!(ok.audit.sinks.len(), 2);
}

#[tokio::test]
async fn a_webhook_whose_secret_variable_is_missing_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let config = sink(
        "kind = \"webhook\"\nname = \"hook\"\nurl = \"https://127.0.0.1:1/in\"\n\
         auth_header_env = \"SOVRA_TEST_SIEM_UNSET_VARIABLE\"",
    );
    let err = spawn_sink(store, &config, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SOVRA_TEST_SIEM_UNSET_VARIABLE") && err.contains("not set"),
        "{err}"
    );
}
