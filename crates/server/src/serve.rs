//! Running the server: startup from a config, the TLS accept loop and its connection limits,
//! background tasks and graceful shutdown. The state lives in `state`, the router in `router`.

use crate::config::Config;
use crate::connections::{Activity, SourceSlots, source_key};
use crate::router::{app, metrics_handle};
use crate::state::AppState;
use crate::{dev, tls};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sovra_core::Kms;
use sovra_core::audit::AuditWriter;
use sovra_core::identity::Authenticator;
use sovra_core::kms::KmsConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("storage: {0}")]
    Store(#[from] sovra_core::StoreError),
    #[error("{0}")]
    Core(#[from] sovra_core::CoreError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Jwks(#[from] sovra_core::identity::JwksError),
    #[error("{0}")]
    Dev(#[from] dev::DevError),
    #[error(transparent)]
    InitToken(#[from] crate::init_token::InitTokenError),
    #[error("{0}")]
    Siem(#[from] crate::siem::SiemError),
    #[error("{0}")]
    AuditJournal(#[from] sovra_core::audit::JournalError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Options from the command line.
pub struct ServerOptions {
    pub config: Config,
    pub dev: bool,
    pub data_dir: Option<PathBuf>,
}

/// The audit writer the config asks for: through this node's journal when it is the store's
/// only writer (SQLite), else committing to the shared store. Recovers the journal first.
pub async fn audit_writer(kms: &Kms, config: &Config) -> Result<Option<AuditWriter>, ServeError> {
    if !config.audit.enabled {
        return Ok(None);
    }
    let store = kms.store().clone();
    Ok(Some(match store.audit_journal_path() {
        Some(path) => AuditWriter::start_journaled(store, &path).await?,
        None => AuditWriter::start(
            store,
            if config.audit.continue_after_rollback {
                sovra_core::audit::OnRollback::Continue
            } else {
                sovra_core::audit::OnRollback::Halt
            },
        ),
    }))
}

/// Counts a request as in flight until dropped (also when the request future is cancelled).
pub(crate) struct InFlightGuard(Arc<AtomicUsize>);

impl InFlightGuard {
    pub(crate) fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(counter)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts Sovra as configured and serves until SIGINT/SIGTERM.
pub async fn start(opts: ServerOptions) -> Result<(), ServeError> {
    // Before any key exists in this process.
    crate::hardening::harden_process().log();
    let config = opts.config;
    let data_dir = opts
        .data_dir
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("sovra-data"));
    let dev_setup = if opts.dev {
        Some(dev::prepare(&data_dir)?)
    } else {
        None
    };
    if !opts.dev && config.tls.is_none() {
        return Err(ServeError::Config(
            "tls.cert_file and tls.key_file are required outside dev mode".into(),
        ));
    }
    if !opts.dev {
        crate::private_files::create_dir(&data_dir).map_err(|e| {
            ServeError::Config(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
    }
    let database_url = match &config.database_url {
        Some(u) => u.clone(),
        None => format!("sqlite://{}", data_dir.join("sovra.db").display()),
    };
    let store = sovra_store::open(&database_url).await?;
    let kms_config = KmsConfig {
        key_cache_capacity: config.limits.key_cache_capacity,
        heavy_ops_concurrency: config.limits.heavy_ops_concurrency,
        heavy_ops_per_identity: config.limits.heavy_ops_per_identity,
        heavy_ops_queue: config.limits.heavy_ops_queue,
    };
    let kms = Arc::new(Kms::new(store, kms_config).await?);
    // Before anything visible happens (dev.env, the listener): a second server on the same
    // SQLite database stops here, on the journal's lock, and the audit chain is recovered.
    let audit = audit_writer(&kms, &config).await?;
    let start_head =
        match &audit {
            Some(_) => kms.store().audit_head().await.map_err(|e| {
                ServeError::Config(format!("cannot read the audit chain's head: {e}"))
            })?,
            None => None,
        };
    let tls_config = match (&config.tls, &dev_setup) {
        (Some(t), _) => tls::load(&t.cert_file, &t.key_file)?,
        (None, Some(d)) => tls::load(&d.cert_file, &d.key_file)?,
        (None, None) => return Err(ServeError::Config("no TLS certificate configured".into())),
    };
    if dev_setup.is_some() {
        dev::unseal(&kms, &data_dir).await?;
        kms.ensure_dev_org().await?;
    } else if kms.seal_kind() == Some(sovra_core::model::SealKind::DevFile) {
        return Err(ServeError::Config(
            "this database was initialized by a dev server (dev seal key file); it cannot run outside --dev".into(),
        ));
    }
    let auth = crate::auth::authenticator(
        &config.auth.jwt,
        dev_setup.as_ref().map(|d| d.token.clone()),
        sovra_core::clock::system(),
    )
    .await?;
    // Written before the port opens, so that whoever can reach it finds the token in place.
    let init_gate = crate::init_token::InitGate::default();
    if !opts.dev && !kms.seal_status().initialized {
        init_gate.prepare(&data_dir)?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Bind(config.listen, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(config.listen, e))?;
    if let Some(d) = &dev_setup {
        dev::write_env(&data_dir, local, d)?;
    }
    let conn_limits = ConnectionLimits::from_config(&config);
    // The metrics recorder must be installed before the forwarders register their gauges and
    // counters: a handle taken before it exists stays a no-op (the backlog gauge never showed).
    let _ = metrics_handle();
    // Audit forwarding reads the durable chain; a bad sink stops startup here.
    let sinks = crate::siem::spawn_sinks(kms.store().clone(), &config.audit.sinks, &data_dir)?;
    let (router, state) = app(kms.clone(), auth, config, audit);
    state.init_gate.adopt(init_gate);
    spawn_background(state.clone(), start_head);
    let in_flight = state.in_flight.clone();
    tracing::info!(addr = %local, dev = opts.dev, sealed = !kms.is_unsealed(), "sovra listening (TLS 1.3)");
    if dev_setup.is_some() {
        dev::print_banner(&data_dir, local);
    }
    serve(
        listener,
        tls_config,
        router,
        in_flight,
        conn_limits,
        shutdown_signal(),
    )
    .await;
    final_checkpoint(&state).await;
    for s in sinks {
        s.stop().await;
    }
    tracing::info!("shut down");
    Ok(())
}

/// Signs the chain head once more as the server stops, so the export ends on a checkpoint.
async fn final_checkpoint(state: &AppState) {
    if let Some(writer) = &state.audit
        && let Err(e) = writer.flushed().await
    {
        tracing::warn!(error = %e, "audit events still in the journal at shutdown; the next start stores them");
    }
    let mut last = 0;
    crate::audit::checkpoint(state, &mut last).await;
}

/// `start_head`: the audit chain's head before this node appended anything, checked against
/// its last signed checkpoint once the server is unsealed, before this node signs over it.
fn spawn_background(state: Arc<AppState>, start_head: Option<(u64, String)>) {
    let s = state.clone();
    tokio::spawn(async move {
        let every = Duration::from_secs(s.config.audit.checkpoint_interval_seconds);
        // Each second until the start check has passed and group commits are signed (so that
        // signing starts within a second of unsealing); then the periodic checkpoint, which
        // signs a head left by events appended while no signing key was in memory.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut next_checkpoint = tokio::time::Instant::now();
        let mut last_signed = 0;
        let mut start_checked = false;
        loop {
            tick.tick().await;
            if !start_checked {
                start_checked = crate::audit::check_chain_at_start(&s, start_head.as_ref()).await;
            }
            if start_checked {
                crate::audit::sign_group_commits(&s).await;
            }
            if tokio::time::Instant::now() >= next_checkpoint {
                next_checkpoint += every;
                crate::audit::checkpoint(&s, &mut last_signed).await;
            }
        }
    });
    let s = state.clone();
    tokio::spawn(async move {
        // Often enough for the shortest refresh interval, at most every 30 s.
        let every = s
            .auth
            .shortest_refresh()
            .unwrap_or(Duration::from_secs(30))
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            s.auth.refresh_stale().await;
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if state.kms.is_unsealed() {
                match state.kms.purge_due_keys().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(deleted = n, "destroyed keys whose deletion date passed")
                    }
                    Err(e) => tracing::warn!(error = %e, "key purge failed; will retry"),
                }
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Largest header block (HTTP/1.1 read buffer, HTTP/2 header list) a client may send. Above
/// hyper's defaults so that an oversized credential still reaches the authenticator and gets
/// the JSON `unauthenticated` error instead of a bare 431 or a stream reset; buffers grow only
/// as bytes arrive, and the header-read timeout and connection cap bound what clients can hold.
pub const MAX_HEADER_BLOCK_BYTES: usize = 2 * 1024 * 1024;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle connection asked to close (HTTP/2 GOAWAY) may take before it is dropped:
/// a client that stops reading never finishes the exchange.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Per-connection limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Request headers, and the start of the first request after the handshake.
    pub header_read_timeout: Duration,
    /// No request in progress.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Per IPv4 address or IPv6 /64; below `max_connections`.
    pub max_connections_per_source: usize,
}

impl ConnectionLimits {
    pub fn from_config(config: &Config) -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(config.limits.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(config.limits.idle_timeout_seconds),
            max_connections: config.limits.max_connections.max(1),
            max_connections_per_source: config.limits.max_connections_per_source.max(1),
        }
    }
}

/// The accept loop: TLS handshakes (bounded in time) and connections run in their own tasks.
/// A source over its cap is closed before the handshake; a connection without a request in
/// progress for too long is closed. On shutdown it stops accepting, asks every connection to
/// close, and returns once all have closed or no request is in flight any more (an idle client
/// that never answers HTTP/2's GOAWAY does not hold the process), at most [`SHUTDOWN_GRACE`]
/// later.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    in_flight: Arc<AtomicUsize>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let sources = SourceSlots::new(limits.max_connections_per_source);
    // Each connection task holds a receiver: `closed()` resolves once every one has ended.
    let (stop_connections, connection_stop) = tokio::sync::watch::channel(());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header read timeout covers each request's headers and an idle keep-alive wait.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BLOCK_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BLOCK_BYTES as u32);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting until a connection closes; clients wait in the backlog.
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            conn = listener.accept() => match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Counted from accept to close; over the cap the socket is closed before any TLS work.
        let Some(source_slot) = sources.try_acquire(source_key(peer.ip())) else {
            metrics::counter!("sovra_connections_refused_total", "reason" => "per_source_limit")
                .increment(1);
            tracing::debug!(%peer, "connection refused: its source is at max_connections_per_source");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let stop = connection_stop.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _source_slot = source_slot;
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let activity = Activity::new();
            let requests = activity.clone();
            let svc = hyper::service::service_fn(
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    // Until the handler's answer is ready; writing it counts as idle, so a
                    // client that never reads its response is closed like an idle one.
                    let busy = requests.begin();
                    let response = router.clone().oneshot(req);
                    async move {
                        let response = response.await;
                        drop(busy);
                        response
                    }
                },
            );
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            drive_connection(
                conn.as_mut(),
                |c| c.graceful_shutdown(),
                peer,
                &activity,
                limits,
                stop,
            )
            .await;
        });
    }
    drop(listener);
    let requests_done = async {
        while in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the last responses flush.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Connections closing is not enough: a request whose client hung up goes on without one
    // (to its audit event), so the drain waits for the requests themselves.
    let drained = async {
        tokio::pin!(requests_done);
        let _ = stop_connections.send(());
        drop(connection_stop);
        tokio::select! {
            _ = stop_connections.closed() => requests_done.await,
            _ = &mut requests_done => {},
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        tracing::warn!(
            in_flight = in_flight.load(Ordering::SeqCst),
            "requests still running after the shutdown grace; exiting"
        );
    }
}

/// Serves one connection until it ends, closing it gracefully at shutdown or when it has had
/// no request in progress for too long ([`Activity::idle_deadline`]); an idle connection that
/// does not finish closing within [`IDLE_CLOSE_GRACE`] is dropped.
async fn drive_connection<C, E>(
    mut conn: Pin<&mut C>,
    close_gracefully: impl Fn(Pin<&mut C>),
    peer: SocketAddr,
    activity: &Activity,
    limits: ConnectionLimits,
    mut stop: tokio::sync::watch::Receiver<()>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut stopping = false;
    let mut idle_close_deadline = None;
    loop {
        // At most an idle period away: while a request runs (requests are bounded in time),
        // and because a first request that ends moves the deadline to `idle_timeout` after it.
        let next_look = Instant::now() + limits.idle_timeout;
        let wake = activity
            .idle_deadline(limits.header_read_timeout, limits.idle_timeout)
            .map_or(next_look, |deadline| deadline.min(next_look));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                // A closed channel means the accept loop is gone: stop as well.
                let _ = changed;
                stopping = true;
                close_gracefully(conn.as_mut());
            }
            _ = tokio::time::sleep_until(wake.into()), if !stopping => {
                let idle = activity
                    .idle_deadline(limits.header_read_timeout, limits.idle_timeout)
                    .is_some_and(|deadline| deadline <= Instant::now());
                if idle {
                    metrics::counter!("sovra_connections_idle_closed_total").increment(1);
                    tracing::debug!(%peer, "closing an idle connection");
                    stopping = true;
                    idle_close_deadline = Some(Instant::now() + IDLE_CLOSE_GRACE);
                    close_gracefully(conn.as_mut());
                }
            }
            _ = sleep_until_some(idle_close_deadline) => {
                tracing::debug!(%peer, "dropping an idle connection that did not close");
                return;
            }
        }
    }
}

/// Never resolves for `None`.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs a server from a config on an already-bound listener (used by tests and benchmarks).
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    kms: Arc<Kms>,
    auth: Authenticator,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let conn_limits = ConnectionLimits::from_config(&config);
    let audit = audit_writer(&kms, &config).await?;
    let (router, state) = app(kms, auth, config, audit);
    serve(
        listener,
        tls,
        router,
        state.in_flight.clone(),
        conn_limits,
        shutdown,
    )
    .await;
    final_checkpoint(&state).await;
    Ok(())
}
