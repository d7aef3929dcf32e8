//! Group commit of audit events: into the store directly (several nodes on one database), or
//! through this node's journal (a single node on SQLite).

use super::{AuditEvent, AuditJournal, Checkpoint, GENESIS, HeadSigner, JournalError};
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

/// Group commit: one durable write serves many requests, and a request is answered only after
/// its event is durable. Two ways to be durable:
/// - [`AuditWriter::start`]: requests hand their events to one writer task, which appends
///   everything queued in one store transaction per batch, the database assigning sequence
///   numbers, so several nodes can share one chain (PostgreSQL).
/// - [`AuditWriter::start_journaled`]: each request seals its event onto the chain and
///   serializes it into the open frame of this node's [`AuditJournal`] itself; a journal thread
///   writes the frame with one `fdatasync`, wakes the frame's requests, and a store task
///   stores the events in large batches. For a store only this node writes (SQLite), where a
///   durable database commit per batch capped audited requests.
#[derive(Clone)]
pub struct AuditWriter {
    route: Route,
    progress: Arc<Progress>,
}

#[derive(Clone)]
enum Route {
    Store(tokio::sync::mpsc::Sender<Pending>),
    Journal(Arc<StagingHandle>),
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
    /// Set when the writer stopped appending because the chain was rolled back under it.
    halted: std::sync::OnceLock<String>,
    /// Signs the head of each group commit, once installed ([`AuditWriter::sign_heads_with`]).
    signer: std::sync::RwLock<Option<Arc<dyn HeadSigner>>>,
}

/// What a node does when the database's audit chain no longer holds the last event it
/// appended. Either way it first appends an alarm event naming both heads, and logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRollback {
    /// Stop appending: every later audited request fails until an operator has looked.
    Halt,
    /// Continue from the database's head: an operator said a failover lost data.
    Continue,
}

impl Progress {
    fn new(head: Option<(u64, String)>) -> Arc<Progress> {
        let seq = head.as_ref().map_or(0, |h| h.0);
        Arc::new(Progress {
            durable: AtomicU64::new(seq),
            stored: tokio::sync::watch::Sender::new(seq),
            last_stored: Mutex::new(None),
            store_now: tokio::sync::Notify::new(),
            halted: std::sync::OnceLock::new(),
            signer: std::sync::RwLock::new(None),
        })
    }

    /// A signature over the head a group commit leaves, if a signer is installed and can sign.
    fn sign_head(&self, seq: u64, head: &str) -> Option<Checkpoint> {
        let signer = self.signer.read().ok()?.clone()?;
        signer.sign_head(seq, head)
    }

    fn stored_up_to(&self, seq: u64, hash: &str) {
        if let Ok(mut l) = self.last_stored.lock() {
            *l = Some((seq, hash.to_string()));
        }
        self.stored.send_replace(seq);
    }
}

/// Most events in one store transaction of the store-committing writer.
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
    pub fn start(store: Arc<dyn Store>, on_rollback: OnRollback) -> AuditWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Pending>(8192);
        let progress = Progress::new(None);
        let shared = progress.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let batch = gather(first, &mut rx);
                let (events, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                if shared.halted.get().is_some() {
                    fail(waiters);
                    continue;
                }
                let appended = match append_with_retry(store.as_ref(), &events).await {
                    Err(alarm @ StoreError::AuditRollback { .. }) => {
                        raise_rollback_alarm(store.as_ref(), &alarm).await;
                        match on_rollback {
                            OnRollback::Continue => {
                                append_with_retry(store.as_ref(), &events).await
                            }
                            OnRollback::Halt => {
                                let _ = shared.halted.set(alarm.to_string());
                                Err(alarm)
                            }
                        }
                    }
                    other => other,
                };
                match appended {
                    Ok(stored) => {
                        if let Some(ev) = stored.last() {
                            shared.durable.fetch_max(ev.seq, Ordering::SeqCst);
                            shared.stored_up_to(ev.seq, &ev.hash);
                        }
                        // The batch's head is signed before its requests are answered, so no
                        // answered request's event lies beyond a signature.
                        let signed = match stored
                            .last()
                            .and_then(|ev| shared.sign_head(ev.seq, &ev.hash))
                        {
                            Some(cp) => store.add_audit_checkpoint(&cp).await,
                            None => Ok(()),
                        };
                        if let Err(e) = signed {
                            tracing::error!(error = %e, "the audit batch's signed head could not be stored; its requests fail");
                            fail(waiters);
                            continue;
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
        AuditWriter {
            route: Route::Store(tx),
            progress,
        }
    }

    /// Opens this node's journal at `path`, stores the events and signed heads it holds that the
    /// store lacks (those of requests answered before a crash), and starts the journaled writer. Only one
    /// process may write the store's chain this way; the journal's lock refuses a second.
    pub async fn start_journaled(
        store: Arc<dyn Store>,
        path: &Path,
    ) -> Result<AuditWriter, JournalError> {
        let (mut journal, recovered) = AuditJournal::open(path)?;
        let (recovered, recovered_heads) = (recovered.events, recovered.checkpoints);
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
        // A head goes into the append-only checkpoints only if the deployment's audit key
        // signed it: a crafted journal must not take a sequence's place with a forgery.
        let public_key = match store.get_audit_keys().await.map_err(store_err)? {
            Some(keys) => keys.public_key,
            None => Vec::new(),
        };
        let recovered_heads: Vec<Checkpoint> = recovered_heads
            .into_iter()
            .filter(|cp| {
                let valid = cp.verifies(&public_key);
                if !valid {
                    tracing::error!(
                        seq = cp.seq,
                        "a signed head in the audit journal does not verify; not stored"
                    );
                }
                valid
            })
            .collect();
        if !missing.is_empty() {
            for chunk in missing.chunks(MAX_STORE_BATCH) {
                let (first, last) = (chunk[0].seq, chunk[chunk.len() - 1].seq);
                let heads: Vec<Checkpoint> = recovered_heads
                    .iter()
                    .filter(|cp| (first..=last).contains(&cp.seq))
                    .cloned()
                    .collect();
                store
                    .insert_sealed_audit(chunk, &heads)
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

        let staging = Arc::new(Staging::new(head.clone()));
        let (to_store, from_writer) = tokio::sync::mpsc::unbounded_channel();
        let backlog = Arc::new(tokio::sync::Semaphore::new(STORE_BACKLOG_EVENTS));
        let progress = Progress::new(head.clone());
        if let Some((seq, hash)) = &head
            && let Ok(mut l) = progress.last_stored.lock()
        {
            *l = Some((*seq, hash.clone()));
        }
        let shared = progress.clone();
        let frames = staging.clone();
        std::thread::Builder::new()
            .name("sovra-audit-journal".into())
            .spawn(move || journal_frames(frames, journal, head, (to_store, backlog), shared))
            .map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        tokio::spawn(store_batches(store, from_writer, progress.clone()));
        Ok(AuditWriter {
            route: Route::Journal(Arc::new(StagingHandle(staging))),
            progress,
        })
    }

    /// Appends one event and returns its sequence number once it is durable.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, StoreError> {
        let stopped = || StoreError::Unavailable("audit writer stopped".into());
        match &self.route {
            Route::Store(tx) => {
                let (done, wait) = tokio::sync::oneshot::channel();
                tx.send((event, done)).await.map_err(|_| stopped())?;
                wait.await.map_err(|_| stopped())?
            }
            Route::Journal(handle) => handle.0.record(event).await,
        }
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

    /// Why the writer stopped appending, if it did (a rolled-back chain under
    /// [`OnRollback::Halt`]): readiness and metrics report it.
    pub fn halted(&self) -> Option<&str> {
        self.progress.halted.get().map(String::as_str)
    }

    /// The sequence and hash of the last event this writer put in the store, as computed in
    /// this process. Checkpoints sign this rather than a head read back from the database, so
    /// a row altered in the database is never signed over.
    /// From now on, signs the chain head each group commit leaves (one signature per batch:
    /// per store transaction, or per journal frame, written with it) before the batch's
    /// requests are answered. Install it only once the chain found at start has been checked,
    /// so that a rewritten chain is never signed as whole.
    pub fn sign_heads_with(&self, signer: Arc<dyn HeadSigner>) {
        if let Ok(mut slot) = self.progress.signer.write() {
            *slot = Some(signer);
        }
    }

    /// Whether group commits are being signed.
    pub fn signs_heads(&self) -> bool {
        self.progress.signer.read().is_ok_and(|s| s.is_some())
    }

    pub fn last_appended(&self) -> Option<(u64, String)> {
        self.progress
            .last_stored
            .lock()
            .ok()
            .and_then(|l| l.clone())
    }
}

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

/// Most events in one journal frame; requests wait for the next frame once it is full. Also
/// bounds how many requests one failed write fails (this frame and the one filling behind it).
const MAX_FRAME_EVENTS: usize = 1024;
/// Most payload bytes in one journal frame: a few frames fit the journal's preallocation.
const MAX_FRAME_BYTES: usize = 1 << 20;

/// The journal frame that requests are filling, shared by the requests and the journal thread.
struct Staging {
    open: Mutex<OpenFrame>,
    /// Wakes the journal thread when an event enters a frame it is not already writing.
    staged: std::sync::Condvar,
    /// Wakes requests that found the open frame full, once the journal thread takes it.
    room: tokio::sync::Notify,
}

/// The open frame, and the chain as its events extend it.
struct OpenFrame {
    /// Sequence number and hash of the last event sealed (the durable head when the frame is
    /// empty).
    seq: u64,
    head: String,
    /// A buffer from [`super::journal::new_frame`]: `[` and the sealed events' JSON, separated by
    /// commas, behind the frame header's room.
    frame: Vec<u8>,
    /// The frame's events, for the store once the frame is durable.
    sealed: Vec<AuditEvent>,
    /// How the frame's write ends, for its requests.
    done: Arc<FrameDone>,
    /// The journal thread waits on `staged` and must be woken.
    thread_idle: bool,
    /// No writer is left (or the journal thread ended): no more events are taken.
    closed: bool,
}

impl OpenFrame {
    /// Empties the frame without writing it; returns its outcome, for the caller to fail.
    fn discard(&mut self) -> Arc<FrameDone> {
        self.frame.truncate(super::journal::FRAME_PAYLOAD_START);
        self.sealed.clear();
        std::mem::take(&mut self.done)
    }
}

/// The outcome of one frame's durable write, awaited by the requests whose events it carries.
#[derive(Default)]
struct FrameDone {
    durable: std::sync::OnceLock<bool>,
    notify: tokio::sync::Notify,
}

impl FrameDone {
    fn finish(&self, durable: bool) {
        let _ = self.durable.set(durable);
        self.notify.notify_waiters();
    }

    async fn wait(&self) -> bool {
        // Created before the check, so a `finish` between the check and the await still wakes
        // it (`notify_waiters` reaches every `Notified` created before it).
        let notified = self.notify.notified();
        if let Some(durable) = self.durable.get() {
            return *durable;
        }
        notified.await;
        self.durable.get().copied().unwrap_or(false)
    }
}

/// A frame taken from the staging area by the journal thread.
struct TakenFrame {
    frame: Vec<u8>,
    sealed: Vec<AuditEvent>,
    /// The chain head after the frame.
    last: (u64, String),
    done: FrameOutcome,
}

/// A taken frame's outcome: failed if it is dropped unfinished (the journal thread panicked
/// while writing it), so that its requests fail (503) rather than wait for ever.
struct FrameOutcome(Arc<FrameDone>);

impl Drop for FrameOutcome {
    fn drop(&mut self) {
        // No effect once the frame was finished: its outcome is set only once.
        self.0.finish(false);
    }
}

/// Closes the staging area when the last [`AuditWriter`] using it is dropped, so that the
/// journal thread writes what is staged and ends.
struct StagingHandle(Arc<Staging>);

impl Drop for StagingHandle {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Staging {
    fn new(head: Option<(u64, String)>) -> Staging {
        let (seq, head) = head.unwrap_or((0, GENESIS.to_string()));
        Staging {
            open: Mutex::new(OpenFrame {
                seq,
                head,
                frame: super::journal::new_frame(),
                sealed: Vec::new(),
                done: Arc::default(),
                thread_idle: false,
                closed: false,
            }),
            staged: std::sync::Condvar::new(),
            room: tokio::sync::Notify::new(),
        }
    }

    /// The open frame. A panic while it was held may have left it half-written: then no event
    /// is taken any more and the frame's requests fail, rather than a broken frame be synced.
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenFrame> {
        self.open.lock().unwrap_or_else(|poisoned| {
            let mut open = poisoned.into_inner();
            if !open.closed {
                open.closed = true;
                open.discard().finish(false);
            }
            open
        })
    }

    /// Seals `event` onto the chain into the open frame and waits until that frame is durable.
    /// The sealing and serializing happen here, on the request's own thread, so that the
    /// journal thread only writes and syncs.
    async fn record(&self, mut event: AuditEvent) -> Result<u64, StoreError> {
        // The event's own digest needs no lock; only linking it to the previous event does.
        let digest = event.body_digest();
        let (seq, done, wake) = loop {
            let room = self.room.notified();
            {
                let mut guard = self.lock();
                let open = &mut *guard;
                if open.closed {
                    return Err(StoreError::Unavailable("audit writer stopped".into()));
                }
                let full = open.sealed.len() >= MAX_FRAME_EVENTS
                    || open.frame.len() - super::journal::FRAME_PAYLOAD_START >= MAX_FRAME_BYTES;
                if !full {
                    let seq = open.seq + 1;
                    event.link_after(seq, open.head.clone(), &digest);
                    let mark = open.frame.len();
                    open.frame
                        .push(if open.sealed.is_empty() { b'[' } else { b',' });
                    if let Err(e) = serde_json::to_writer(&mut open.frame, &event) {
                        // Cannot happen for these field types; leave the frame as it was.
                        open.frame.truncate(mark);
                        tracing::error!(error = %e, "audit event could not be serialized");
                        return Err(StoreError::Unavailable("audit log unavailable".into()));
                    }
                    open.seq = seq;
                    open.head.clone_from(&event.hash);
                    open.sealed.push(event);
                    break (
                        seq,
                        open.done.clone(),
                        std::mem::take(&mut open.thread_idle),
                    );
                }
            }
            room.await;
        };
        if wake {
            self.staged.notify_one();
        }
        if done.wait().await {
            Ok(seq)
        } else {
            Err(StoreError::Unavailable("audit log unavailable".into()))
        }
    }

    /// Waits (blocking: the journal thread's own) until events are staged; `None` once the
    /// staging area is closed and empty.
    fn wait_for_events(&self) -> Option<()> {
        let mut open = self.lock();
        while open.sealed.is_empty() {
            if open.closed {
                return None;
            }
            open.thread_idle = true;
            open = self.staged.wait(open).unwrap_or_else(|e| e.into_inner());
        }
        open.thread_idle = false;
        Some(())
    }

    /// Takes the open frame (closed with `]`), leaving `spare` (emptied) to be filled next.
    /// `events_hint` sizes the next frame's event list (the last frame's count), so that it is
    /// not regrown under the lock.
    fn take(&self, mut spare: Vec<u8>, events_hint: usize) -> TakenFrame {
        spare.truncate(super::journal::FRAME_PAYLOAD_START);
        let done = Arc::default();
        let sealed = Vec::with_capacity(events_hint.clamp(16, MAX_FRAME_EVENTS));
        let mut open = self.lock();
        let mut taken = TakenFrame {
            frame: std::mem::replace(&mut open.frame, spare),
            sealed: std::mem::replace(&mut open.sealed, sealed),
            last: (open.seq, open.head.clone()),
            done: FrameOutcome(std::mem::replace(&mut open.done, done)),
        };
        drop(open);
        self.room.notify_waiters();
        taken.frame.push(b']');
        taken
    }

    /// A frame could not be made durable: it fails, and so does the open frame, whose events
    /// were sealed after it; the chain goes on from the durable head.
    fn rewind(&self, failed: &FrameDone, durable_head: &(u64, String)) {
        let done = {
            let mut open = self.lock();
            (open.seq, open.head) = durable_head.clone();
            open.discard()
        };
        self.room.notify_waiters();
        failed.finish(false);
        done.finish(false);
    }

    /// No more events are taken; the journal thread writes what is staged, then ends.
    fn close(&self) {
        self.lock().closed = true;
        self.staged.notify_one();
        self.room.notify_waiters();
    }
}

/// Closes the staging area if the journal thread ends (a panic included), failing the open
/// frame, so that requests fail (503) rather than wait for a thread that is gone.
struct JournalThreadExit(Arc<Staging>);

impl Drop for JournalThreadExit {
    fn drop(&mut self) {
        let done = {
            let mut open = self.0.lock();
            open.closed = true;
            open.discard()
        };
        done.finish(false);
        self.0.room.notify_waiters();
    }
}

/// Journaled batches on their way to the store, each with its room in the backlog.
type ToStore = tokio::sync::mpsc::UnboundedSender<JournaledBatch>;

/// A journaled frame's events and signed head, with their room in the store backlog.
type JournaledBatch = (
    Vec<AuditEvent>,
    Option<Checkpoint>,
    tokio::sync::OwnedSemaphorePermit,
);

/// The journaled writer's first part, a thread of its own: writes each frame the requests
/// filled to the journal with one `fdatasync`, wakes its requests, and passes its events on to
/// be stored. A thread rather than a task, so that a frame costs no hand-off to the blocking
/// pool and back for its write and `fdatasync`.
fn journal_frames(
    staging: Arc<Staging>,
    mut journal: AuditJournal,
    head: Option<(u64, String)>,
    (to_store, backlog): (ToStore, Arc<tokio::sync::Semaphore>),
    progress: Arc<Progress>,
) {
    let _exit = JournalThreadExit(staging.clone());
    let mut durable = head.unwrap_or((0, GENESIS.to_string()));
    // The store's progress when a wait to empty the journal last timed out: no new wait until
    // the store has moved on, so a failing store does not slow every frame.
    let mut gave_up_at = u64::MAX;
    let mut last_sync: Option<std::time::Instant> = None;
    // Two frame buffers take turns: requests fill one while the other is written.
    let mut spare = super::journal::new_frame();
    let mut events_hint = 0;
    while staging.wait_for_events().is_some() {
        if let Some(rest) = last_sync.and_then(|t| SYNC_SPACING.checked_sub(t.elapsed())) {
            std::thread::sleep(rest);
        }
        last_sync = Some(std::time::Instant::now());
        let mut taken = staging.take(spare, events_hint);
        events_hint = taken.sealed.len();
        // The frame's head is signed and written with it, in its one sync.
        let signed_head = progress.sign_head(taken.last.0, &taken.last.1);
        if let Some(cp) = &signed_head {
            append_signed_head(&mut taken.frame, cp);
        }
        // Room in the store backlog first, so that what is journaled can always be passed on.
        // None means the store has been failing for a while: fail these requests (503) now
        // rather than let them, and every retry, wait without end.
        let room = backlog_room(&backlog, taken.sealed.len());
        // Empty a large journal once the store has everything in it. Under steady load the
        // store is always a gathering pause behind, so it is told to store now and waited for
        // (briefly: one small transaction).
        if room.is_some() && journal.len() > JOURNAL_CLEAR_BYTES {
            let stored_now = *progress.stored.borrow();
            if stored_now != gave_up_at {
                progress.store_now.notify_one();
                if stored_at_least(&progress, durable.0, CLEAR_WAIT) {
                    if let Err(e) = journal.clear() {
                        tracing::warn!(error = %e, "audit journal could not be emptied; it keeps growing");
                    }
                } else {
                    gave_up_at = *progress.stored.borrow();
                }
            }
        }
        let written = match room {
            None => {
                tracing::error!("audit events are not reaching the database; failing requests");
                None
            }
            Some(room) => match journal.append_frame(&mut taken.frame) {
                Ok(()) => Some(room),
                Err(e) => {
                    tracing::error!(error = %e, "audit journal write failed; the requests fail with it");
                    None
                }
            },
        };
        spare = taken.frame;
        let Some(room) = written else {
            staging.rewind(&taken.done.0, &durable);
            continue;
        };
        durable = taken.last;
        progress.durable.store(durable.0, Ordering::SeqCst);
        taken.done.0.finish(true);
        if to_store.send((taken.sealed, signed_head, room)).is_err() {
            return;
        }
    }
}

/// Adds a signed head as the last item of a taken frame's payload (`[events…]` becomes
/// `[events…,checkpoint]`; docs/formats.md, section 5).
pub(crate) fn append_signed_head(frame: &mut Vec<u8>, cp: &Checkpoint) {
    let closed = frame.pop();
    debug_assert_eq!(closed, Some(b']'));
    frame.push(b',');
    let mark = frame.len();
    if serde_json::to_writer(&mut *frame, cp).is_err() {
        // Cannot happen for these field types; the frame goes without its signature.
        frame.truncate(mark - 1);
    }
    frame.push(b']');
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

/// The journaled writer's second task: stores journaled frames in order, several at once,
/// retrying until the store takes them (they are safe in the journal meanwhile).
async fn store_batches(
    store: Arc<dyn Store>,
    mut from_writer: tokio::sync::mpsc::UnboundedReceiver<JournaledBatch>,
    progress: Arc<Progress>,
) {
    // One buffer for the whole life of the task (about 3 MB): a batch of thousands of events
    // is megabytes, and growing a fresh one for each commit reallocated and copied it.
    let mut batch: Vec<AuditEvent> = Vec::with_capacity(MAX_STORE_BATCH + MAX_FRAME_EVENTS);
    let mut heads: Vec<Checkpoint> = Vec::new();
    while let Some((mut first, head, mut room)) = from_writer.recv().await {
        // Let batches gather: a store commit costs about the same for one event as for
        // thousands, and the events are already durable in the journal. Cut short when the
        // journal writer wants to empty the journal.
        let _ = tokio::time::timeout(STORE_GATHER, progress.store_now.notified()).await;
        batch.clear();
        batch.append(&mut first);
        heads.clear();
        heads.extend(head);
        while batch.len() < MAX_STORE_BATCH {
            match from_writer.try_recv() {
                Ok((mut more, more_head, more_room)) => {
                    batch.append(&mut more);
                    heads.extend(more_head);
                    room.merge(more_room);
                }
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(10);
        loop {
            match store.insert_sealed_audit(&batch, &heads).await {
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
                                // The stored part's signed heads may be lost with its answer;
                                // they are in the journal, and later heads cover them.
                                heads.retain(|cp| cp.seq > head);
                                if batch.is_empty() {
                                    progress.stored_up_to(done.seq, &done.hash);
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
            progress.stored_up_to(last.seq, &last.hash);
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
/// Logs a rolled-back chain and appends an event that names both heads, continuing the head
/// the database holds (the only chain left to write to).
async fn raise_rollback_alarm(store: &dyn Store, alarm: &StoreError) {
    tracing::error!(alarm = %alarm, "AUDIT CHAIN ROLLED BACK: events this node appended are gone from the database");
    store.accept_audit_rollback();
    let event = AuditEvent::node_alarm(
        "audit.rollback_detected",
        alarm.to_string(),
        crate::clock::system().now().as_millis(),
    );
    if let Err(e) = append_with_retry(store, &[event]).await {
        tracing::error!(error = %e, "the rollback alarm event could not be appended");
    }
}

async fn append_with_retry(
    store: &dyn Store,
    events: &[AuditEvent],
) -> Result<Vec<AuditEvent>, StoreError> {
    let mut attempt = 0;
    loop {
        match store.append_audit(events.to_vec()).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests wait on their frame's outcome: they must learn it whether it is set before or
    /// after they start waiting, and a frame dropped unfinished (the journal thread panicked
    /// while writing it) must fail them rather than leave them waiting.
    #[tokio::test]
    async fn a_frames_requests_learn_its_outcome_and_an_abandoned_frame_fails_them() {
        let durable = FrameOutcome(Arc::default());
        let before = tokio::spawn({
            let done = durable.0.clone();
            async move { done.wait().await }
        });
        tokio::task::yield_now().await;
        durable.0.finish(true);
        let after = durable.0.clone();
        drop(durable);
        assert!(
            before.await.unwrap(),
            "woken with the outcome set meanwhile"
        );
        assert!(
            after.wait().await,
            "a finished frame stays durable when dropped"
        );

        let abandoned = FrameOutcome(Arc::default());
        let waiter = tokio::spawn({
            let done = abandoned.0.clone();
            async move { done.wait().await }
        });
        tokio::task::yield_now().await;
        drop(abandoned);
        let outcome = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("an abandoned frame wakes its requests");
        assert!(!outcome.unwrap(), "and fails them");
    }
}
