//! Group commit of audit events into the store.

use super::AuditEvent;
use crate::store::{Store, StoreError};
use std::sync::{Arc, Mutex};

/// An event queued for the writer, with the channel its request waits on.
type Pending = (
    AuditEvent,
    tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
);

/// Group commit: requests hand their event to one writer task, which appends everything queued
/// in one transaction and then answers each waiter with its sequence number. A request is
/// answered only after its event is durable, and one commit serves many requests.
#[derive(Clone)]
pub struct AuditWriter {
    tx: tokio::sync::mpsc::Sender<Pending>,
    last: Arc<Mutex<Option<(u64, String)>>>,
}

/// Most events in one commit.
const MAX_BATCH: usize = 512;

impl AuditWriter {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<dyn Store>) -> AuditWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Pending>(8192);
        let last = Arc::new(Mutex::new(None));
        let last_w = last.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let (events, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match append_with_retry(store.as_ref(), events).await {
                    Ok(stored) => {
                        if let Some(ev) = stored.last()
                            && let Ok(mut l) = last_w.lock()
                        {
                            *l = Some((ev.seq, ev.hash.clone()));
                        }
                        for (ev, w) in stored.iter().zip(waiters) {
                            let _ = w.send(Ok(ev.seq));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit append failed; the requests fail with it");
                        for w in waiters {
                            let _ = w
                                .send(Err(StoreError::Unavailable("audit log unavailable".into())));
                        }
                    }
                }
            }
        });
        AuditWriter { tx, last }
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

    /// The sequence and hash of the last event this writer appended, as computed in this
    /// process. Checkpoints sign this rather than a head read back from the database, so a
    /// row altered in the database is never signed over.
    pub fn last_appended(&self) -> Option<(u64, String)> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
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
