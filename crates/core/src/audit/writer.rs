//! Group commit of audit events: into the store directly (several nodes on one database), or
//! through this node's journal (a single node on SQLite).

use super::{AuditEvent, AuditJournal, GENESIS, JournalError};
use crate::store::{Store, StoreError};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An event queued for the writer, with the channel its request waits on.
type Pending = (
    AuditEvent,
    tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
);

/// Group commit: requests hand their event to one writer task, which makes everything queued
/// durable at once and then answers each waiter with its sequence number. A request is
/// answered only after its event is durable, and one commit serves many requests.
///
/// Two ways to be durable:
/// - [`AuditWriter::start`]: a store transaction per batch, the database assigning sequence
///   numbers, so several nodes can share one chain (PostgreSQL).
/// - [`AuditWriter::start_journaled`]: this node seals the batch into the chain itself, appends
///   it to its [`AuditJournal`] with one `fdatasync`, answers, and a second task stores the
///   events in large batches. For a store only this node writes (SQLite), where a durable
///   database commit per batch capped audited requests.
#[derive(Clone)]
pub struct AuditWriter {
    tx: tokio::sync::mpsc::Sender<Pending>,
    progress: Arc<Progress>,
}

/// What is durable and what is in the store.
struct Progress {
    /// Highest sequence number made durable (journaled or committed).
    durable: AtomicU64,
    /// Highest sequence number in the store, and the store's last appended event.
    stored: tokio::sync::watch::Sender<u64>,
    last_stored: Mutex<Option<(u64, String)>>,
    /// Wakes the store task from its gathering pause: the journal wants to be emptied.
    store_now: tokio::sync::Notify,
}

impl Progress {
    fn new(head: Option<(u64, String)>) -> Arc<Progress> {
        let seq = head.as_ref().map_or(0, |h| h.0);
        Arc::new(Progress {
            durable: AtomicU64::new(seq),
            stored: tokio::sync::watch::Sender::new(seq),
            last_stored: Mutex::new(None),
            store_now: tokio::sync::Notify::new(),
        })
    }

    fn stored_up_to(&self, last: &AuditEvent) {
        if let Ok(mut l) = self.last_stored.lock() {
            *l = Some((last.seq, last.hash.clone()));
        }
        self.stored.send_replace(last.seq);
    }
}

/// Most events in one durable write.
const MAX_BATCH: usize = 512;
/// Most events in one store transaction of the journaled writer.
const MAX_STORE_BATCH: usize = 8192;
/// How long the journaled writer lets durable events gather before storing them.
const STORE_GATHER: Duration = Duration::from_millis(25);
/// Journaled events not yet stored before the writer waits: bounds memory and the journal when
/// the store is slow or failing (requests then wait, and time out, rather than pile up).
const STORE_BACKLOG_EVENTS: usize = 65_536;
/// The journal is emptied once it is larger than this and everything in it is stored: half of
/// what a new journal is given, so appends stay in preallocated blocks while the store catches
/// up.
const JOURNAL_CLEAR_BYTES: u64 = super::journal::PREALLOCATED_BYTES / 2;
/// How long a batch waits for room in the store backlog before its requests fail.
const BACKLOG_WAIT: Duration = Duration::from_secs(5);
/// How long the journal writer waits for the store to take everything journaled, so that it
/// can empty a large journal. The store skips its gathering pause then, so this is about one
/// small transaction; a store that takes longer is retried only once it has made progress.
const CLEAR_WAIT: Duration = Duration::from_millis(50);
/// Least time between the starts of two journal syncs. Under load a sync costs far more CPU
/// (page writeback, the disk's queue, two thread wake-ups) than the events it carries, so
/// letting a batch gather this long after a recent sync carries more events per sync; an idle
/// writer syncs at once, so a lone request is not delayed. Like PostgreSQL's `commit_delay`.
const SYNC_SPACING: Duration = Duration::from_micros(500);
/// How long an audit read waits for durable events to reach the store.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

impl AuditWriter {
    /// Starts the writer task on the current runtime, committing each batch to the store.
    pub fn start(store: Arc<dyn Store>) -> AuditWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Pending>(8192);
        let progress = Progress::new(None);
        let shared = progress.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let batch = gather(first, &mut rx);
                let (events, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match append_with_retry(store.as_ref(), events).await {
                    Ok(stored) => {
                        if let Some(ev) = stored.last() {
                            shared.durable.fetch_max(ev.seq, Ordering::SeqCst);
                            shared.stored_up_to(ev);
                        }
                        for (ev, w) in stored.iter().zip(waiters) {
                            let _ = w.send(Ok(ev.seq));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit append failed; the requests fail with it");
                        fail(waiters);
                    }
                }
            }
        });
        AuditWriter { tx, progress }
    }

    /// Opens this node's journal at `path`, stores the events it holds that the store lacks
    /// (those of requests answered before a crash), and starts the journaled writer. Only one
    /// process may write the store's chain this way; the journal's lock refuses a second.
    pub async fn start_journaled(
        store: Arc<dyn Store>,
        path: &Path,
    ) -> Result<AuditWriter, JournalError> {
        let (mut journal, recovered) = AuditJournal::open(path)?;
        let store_err = |e: StoreError| JournalError::Store {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mismatch = |reason: String| JournalError::Mismatch {
            path: path.to_path_buf(),
            reason,
        };
        let head = store.audit_head().await.map_err(store_err)?;
        let head_seq = head.as_ref().map_or(0, |h| h.0);
        // Events the database already has must be the very same ones, or this journal belongs
        // to another chain and nothing in it may be dropped.
        if let Some(last_known) = recovered.iter().rev().find(|e| e.seq <= head_seq)
            && !stored_matches(store.as_ref(), last_known)
                .await
                .map_err(store_err)?
        {
            return Err(mismatch(format!(
                "its event {} differs from the stored one",
                last_known.seq
            )));
        }
        let missing: Vec<AuditEvent> = recovered.into_iter().filter(|e| e.seq > head_seq).collect();
        if !missing.is_empty() {
            for chunk in missing.chunks(MAX_STORE_BATCH) {
                store
                    .insert_sealed_audit(chunk)
                    .await
                    .map_err(|e| match e {
                        StoreError::Conflict(c) => mismatch(c),
                        other => store_err(other),
                    })?;
            }
            tracing::info!(
                events = missing.len(),
                "audit events recovered from the journal into the store"
            );
        }
        let head = store.audit_head().await.map_err(store_err)?;
        journal.clear().map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        })?;

        let (tx, rx) = tokio::sync::mpsc::channel::<Pending>(8192);
        let (to_store, from_writer) = tokio::sync::mpsc::unbounded_channel();
        let backlog = Arc::new(tokio::sync::Semaphore::new(STORE_BACKLOG_EVENTS));
        let progress = Progress::new(head.clone());
        if let Some((seq, hash)) = &head
            && let Ok(mut l) = progress.last_stored.lock()
        {
            *l = Some((*seq, hash.clone()));
        }
        let shared = progress.clone();
        std::thread::Builder::new()
            .name("sovra-audit-journal".into())
            .spawn(move || journal_batches(rx, journal, head, (to_store, backlog), shared))
            .map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        tokio::spawn(store_batches(store, from_writer, progress.clone()));
        Ok(AuditWriter { tx, progress })
    }

    /// Appends one event and returns its sequence number once it is durable.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send((event, done))
            .await
            .map_err(|_| StoreError::Unavailable("audit writer stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("audit writer stopped".into()))?
    }

    /// Waits until every event durable now is also in the store, so a read of the store sees
    /// the events of requests already answered.
    pub async fn flushed(&self) -> Result<(), StoreError> {
        let target = self.progress.durable.load(Ordering::SeqCst);
        let mut stored = self.progress.stored.subscribe();
        match tokio::time::timeout(FLUSH_WAIT, stored.wait_for(|s| *s >= target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable("audit writer stopped".into())),
            Err(_) => Err(StoreError::Unavailable(
                "audit events are durable but not yet in the database".into(),
            )),
        }
    }

    /// The sequence and hash of the last event this writer put in the store, as computed in
    /// this process. Checkpoints sign this rather than a head read back from the database, so
    /// a row altered in the database is never signed over.
    pub fn last_appended(&self) -> Option<(u64, String)> {
        self.progress
            .last_stored
            .lock()
            .ok()
            .and_then(|l| l.clone())
    }
}

/// Journaled batches on their way to the store, each with its room in the backlog.
type ToStore =
    tokio::sync::mpsc::UnboundedSender<(Vec<AuditEvent>, tokio::sync::OwnedSemaphorePermit)>;

/// The first pending event and everything queued behind it, up to [`MAX_BATCH`].
fn gather(first: Pending, rx: &mut tokio::sync::mpsc::Receiver<Pending>) -> Vec<Pending> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    batch
}

fn fail(waiters: Vec<tokio::sync::oneshot::Sender<Result<u64, StoreError>>>) {
    for w in waiters {
        let _ = w.send(Err(StoreError::Unavailable("audit log unavailable".into())));
    }
}

/// The journaled writer's first part, a thread of its own: seals each batch onto the chain,
/// makes it durable in the journal, answers its requests, and passes it on to be stored. A
/// thread rather than a task, so that a batch costs no hand-off to the blocking pool and back
/// for its write and `fdatasync`. If it panics, its queue closes and audited requests fail
/// (503).
fn journal_batches(
    mut rx: tokio::sync::mpsc::Receiver<Pending>,
    mut journal: AuditJournal,
    head: Option<(u64, String)>,
    (to_store, backlog): (ToStore, Arc<tokio::sync::Semaphore>),
    progress: Arc<Progress>,
) {
    let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_string()));
    // The store's progress when a wait to empty the journal last timed out: no new wait until
    // the store has moved on, so a failing store does not slow every batch.
    let mut gave_up_at = u64::MAX;
    let mut last_sync: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        if let Some(rest) = last_sync.and_then(|t| SYNC_SPACING.checked_sub(t.elapsed())) {
            std::thread::sleep(rest);
        }
        last_sync = Some(std::time::Instant::now());
        let batch = gather(first, &mut rx);
        // Room in the store backlog first, so that what is journaled can always be passed on.
        // None means the store has been failing for a while: fail these requests (503) now
        // rather than let them, and every retry, wait without end.
        let Some(room) = backlog_room(&backlog, batch.len()) else {
            tracing::error!("audit events are not reaching the database; failing requests");
            fail(batch.into_iter().map(|(_, w)| w).collect());
            continue;
        };
        // Empty a large journal once the store has everything in it. Under steady load the
        // store is always a gathering pause behind, so it is told to store now and waited for
        // (briefly: one small transaction).
        if journal.len() > JOURNAL_CLEAR_BYTES {
            let stored_now = *progress.stored.borrow();
            if stored_now != gave_up_at {
                progress.store_now.notify_one();
                if stored_at_least(&progress, seq, CLEAR_WAIT) {
                    if let Err(e) = journal.clear() {
                        tracing::warn!(error = %e, "audit journal could not be emptied; it keeps growing");
                    }
                } else {
                    gave_up_at = *progress.stored.borrow();
                }
            }
        }
        let (events, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let sealed = super::seal_chain(events, seq, &prev);
        if let Err(e) = journal.append(&sealed) {
            tracing::error!(error = %e, "audit journal write failed; the requests fail with it");
            fail(waiters);
            continue;
        }
        if let Some(last) = sealed.last() {
            (seq, prev) = (last.seq, last.hash.clone());
        }
        progress.durable.store(seq, Ordering::SeqCst);
        for (ev, w) in sealed.iter().zip(waiters) {
            let _ = w.send(Ok(ev.seq));
        }
        if to_store.send((sealed, room)).is_err() {
            return;
        }
    }
}

/// Whether the store holds every event up to `seq`, waiting up to `wait` for it.
fn stored_at_least(progress: &Progress, seq: u64, wait: Duration) -> bool {
    poll_for(wait, Duration::from_micros(200), || {
        (*progress.stored.borrow() >= seq).then_some(())
    })
    .is_some()
}

/// Room for `events` in the store backlog, waiting up to [`BACKLOG_WAIT`] for it; `None` when
/// the store did not make room in time (the backlog is full only when the store is failing or
/// far behind).
fn backlog_room(
    backlog: &Arc<tokio::sync::Semaphore>,
    events: usize,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let events = u32::try_from(events).ok()?;
    poll_for(BACKLOG_WAIT, Duration::from_millis(1), || {
        backlog.clone().try_acquire_many_owned(events).ok()
    })
}

/// Tries `attempt` until it gives a result or `wait` has passed, sleeping `step` in between.
/// The journal thread waits this way: it runs outside the runtime.
fn poll_for<T>(
    wait: Duration,
    step: Duration,
    mut attempt: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(done) = attempt() {
            return Some(done);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(step);
    }
}

/// The journaled writer's second task: stores journaled batches in order, several at once,
/// retrying until the store takes them (they are safe in the journal meanwhile).
async fn store_batches(
    store: Arc<dyn Store>,
    mut from_writer: tokio::sync::mpsc::UnboundedReceiver<(
        Vec<AuditEvent>,
        tokio::sync::OwnedSemaphorePermit,
    )>,
    progress: Arc<Progress>,
) {
    // One buffer for the whole life of the task (about 3 MB): a batch of thousands of events
    // is megabytes, and growing a fresh one for each commit reallocated and copied it.
    let mut batch: Vec<AuditEvent> = Vec::with_capacity(MAX_STORE_BATCH + MAX_BATCH);
    while let Some((mut first, mut room)) = from_writer.recv().await {
        // Let batches gather: a store commit costs about the same for one event as for
        // thousands, and the events are already durable in the journal. Cut short when the
        // journal writer wants to empty the journal.
        let _ = tokio::time::timeout(STORE_GATHER, progress.store_now.notified()).await;
        batch.clear();
        batch.append(&mut first);
        while batch.len() < MAX_STORE_BATCH {
            match from_writer.try_recv() {
                Ok((mut more, more_room)) => {
                    batch.append(&mut more);
                    room.merge(more_room);
                }
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(10);
        loop {
            match store.insert_sealed_audit(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "storing journaled audit events failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                    // A commit whose answer was lost may have stored part of this already; drop
                    // only events the store holds identically (anything else is a second writer
                    // on this database, and nothing may be dropped then).
                    if let Ok(Some((head, _))) = store.audit_head().await
                        && let Some(last_known) = batch.iter().rev().find(|e| e.seq <= head)
                    {
                        match stored_matches(store.as_ref(), last_known).await {
                            Ok(true) => {
                                let done = last_known.clone();
                                batch.retain(|e| e.seq > head);
                                if batch.is_empty() {
                                    progress.stored_up_to(&done);
                                    break;
                                }
                            }
                            Ok(false) => {
                                tracing::error!(
                                    seq = last_known.seq,
                                    "the database's audit chain differs from this node's journal (a second writer?); audit writes stop"
                                );
                                return;
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        drop(room);
        if let Some(last) = batch.last() {
            progress.stored_up_to(last);
        }
    }
}

/// Whether the store holds exactly this event (same sequence number, same hash).
async fn stored_matches(store: &dyn Store, ev: &AuditEvent) -> Result<bool, StoreError> {
    let stored = store.audit_events(ev.seq, 1).await?;
    Ok(stored
        .first()
        .is_some_and(|s| s.seq == ev.seq && s.hash == ev.hash))
}

/// Another node appending at the same moment makes the commit conflict; retry on the new head.
async fn append_with_retry(
    store: &dyn Store,
    events: Vec<AuditEvent>,
) -> Result<Vec<AuditEvent>, StoreError> {
    let mut attempt = 0;
    loop {
        match store.append_audit(events.clone()).await {
            Err(StoreError::Conflict(_)) if attempt < 50 => {
                attempt += 1;
                // Jitter, so two nodes that collided do not collide again in lockstep.
                let jitter = u64::from(sovra_crypto::rng::random_vec(1).map_or(0, |b| b[0]) % 8);
                tokio::time::sleep(std::time::Duration::from_millis(attempt.min(10) + jitter))
                    .await;
            }
            other => return other,
        }
    }
}
