//! The executor's recorder: what performed effects leave (their done marks, the outcomes and
//! message-map rows that go with them) committed off the async workers; on SQLite together, in
//! one transaction for all the records ready at the same moment (group commit: a commit's log
//! write is most of its cost), on PostgreSQL each in its own, side by side.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, StoreError, Tx};

/// Records committed together at most.
const MAX_BATCH: usize = 64;

/// One effect's record: run inside the batch's transaction, again alone if the batch fails.
pub type Write = Arc<dyn Fn(&dyn Tx) -> Result<(), StoreError> + Send + Sync>;

struct Pending {
    write: Write,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Hands records to one committing task, started on first use.
#[derive(Default)]
pub struct Recorder {
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
}

/// Why a record was not committed.
#[derive(Debug)]
pub enum RecordError {
    /// The store refused it (tried again by the caller).
    Store(StoreError),
    /// The record panicked, or the recorder stopped with the runtime.
    Lost,
}

impl Recorder {
    /// Commits `write` with whatever other records are ready; returns once it is committed.
    pub async fn write(&self, store: &Store, write: Write) -> Result<(), RecordError> {
        if store.shared() {
            // PostgreSQL: a transaction is round trips, not a log write, and the pool runs
            // several at once: each record in its own, side by side.
            let store = store.clone();
            return match tokio::task::spawn_blocking(move || store.transaction(|tx| write(tx)))
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(RecordError::Store(e)),
                Err(_) => Err(RecordError::Lost),
            };
        }
        let queue = self.queue.get_or_init(|| {
            let (queue, pending) = mpsc::unbounded_channel();
            tokio::spawn(run(store.clone(), pending));
            queue
        });
        let (reply, answer) = oneshot::channel();
        queue.send(Pending { write, reply }).map_err(|_| RecordError::Lost)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RecordError::Store(e)),
            Err(_) => Err(RecordError::Lost),
        }
    }
}

async fn run(store: Store, mut pending: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = pending.recv().await {
        // The effects finishing at the same moment get to hand in their records first.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let store = store.clone();
        // Off the async workers: a locked store makes SQLite wait (up to 5 s). A panic drops
        // the batch's replies: each caller hears its record was lost.
        let _ = tokio::task::spawn_blocking(move || commit(&store, batch)).await;
    }
}

/// The batch in one transaction; if that fails, each record alone (one failing record never
/// holds up another).
fn commit(store: &Store, batch: Vec<Pending>) {
    tracing::trace!(records = batch.len(), "a commit");
    if batch.len() > 1 {
        let together = store.transaction(|tx| batch.iter().try_for_each(|p| (p.write)(tx)));
        if together.is_ok() {
            for p in batch {
                let _ = p.reply.send(Ok(()));
            }
            return;
        }
    }
    for p in batch {
        let alone = store.transaction(|tx| (p.write)(tx));
        let _ = p.reply.send(alone);
    }
}
