//! The executor's recorder: what performed effects leave (their done marks, the outcomes and
//! message-map rows that go with them) committed; on SQLite together, in one transaction for
//! all the records ready at the same moment (group commit: a commit's log write is most of its
//! cost), on PostgreSQL each in its own on a blocking thread, side by side.

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
            return answered(
                tokio::task::spawn_blocking(move || store.transaction(|tx| write(tx))).await,
            );
        }
        let queue = self.queue.get_or_init(|| {
            let (queue, pending) = mpsc::unbounded_channel();
            tokio::spawn(run(store.clone(), pending));
            queue
        });
        let (reply, answer) = oneshot::channel();
        queue.send(Pending { write, reply }).map_err(|_| RecordError::Lost)?;
        answered(answer.await)
    }
}

/// What the committing thread answered; no answer (it panicked, or stopped) is a lost record.
fn answered<E>(answer: Result<Result<(), StoreError>, E>) -> Result<(), RecordError> {
    match answer {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RecordError::Store(e)),
        Err(_) => Err(RecordError::Lost),
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
        // On this async task, as the dispatcher's decisions: a hand-off to a blocking thread
        // and back cost more than the commit (only another process writing the file, such as
        // `wa-groups-bot events retry`, makes SQLite wait here). A panic drops the batch's
        // replies: each caller hears its record was lost, and the recorder goes on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit(&store, batch)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Source;

    /// A record that stores outcome `key`, or stores it and then fails (the store refusing it).
    fn record(key: &'static str, fails: bool) -> Write {
        Arc::new(move |tx| {
            tx.enqueue_inbound(Source::Outcome, key, &serde_json::json!({ "key": key }))?;
            if fails {
                return Err(StoreError::Poisoned);
            }
            Ok(())
        })
    }

    fn stored(store: &Store) -> Vec<String> {
        let rows = store.pending_inbound(0, 100).expect("read");
        rows.iter().map(|r| r.dedupe_key.clone()).collect()
    }

    #[test]
    fn a_record_the_store_refuses_leaves_the_others_of_its_batch_committed() {
        let store = Store::open_in_memory().expect("store");
        let mut answers = Vec::new();
        let batch = [("a", false), ("b", true), ("c", false)]
            .into_iter()
            .map(|(key, fails)| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                Pending { write: record(key, fails), reply }
            })
            .collect();
        commit(&store, batch);
        let results: Vec<bool> = answers
            .into_iter()
            .map(|mut a| a.try_recv().expect("every record is answered").is_ok())
            .collect();
        assert_eq!(results, [true, false, true], "only the refused record hears it failed");
        assert_eq!(stored(&store), ["a", "c"], "the refused record's writes are rolled back");
    }

    #[tokio::test]
    async fn a_record_that_panics_is_lost_and_the_recorder_goes_on() {
        let store = Store::open_in_memory().expect("store");
        let recorder = Recorder::default();
        let panics: Write = Arc::new(|tx| {
            tx.enqueue_inbound(Source::Outcome, "boom", &serde_json::json!({}))?;
            panic!("a bug in a record")
        });
        let lost = recorder.write(&store, panics).await;
        assert!(matches!(lost, Err(RecordError::Lost)), "{lost:?}");
        recorder.write(&store, record("after", false)).await.expect("the next record");
        assert_eq!(stored(&store), ["after"], "the panicking record's write is rolled back");
    }

    #[tokio::test]
    async fn records_handed_in_together_are_committed_and_answered_each() {
        let store = Store::open_in_memory().expect("store");
        let recorder = Recorder::default();
        let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];
        let writes =
            keys.iter().enumerate().map(|(i, key)| recorder.write(&store, record(key, i == 5)));
        let results: Vec<bool> = futures::future::join_all(writes)
            .await
            .iter()
            .map(|r| match r {
                Ok(()) => true,
                Err(RecordError::Store(StoreError::Poisoned)) => false,
                Err(e) => panic!("unexpected {e:?}"),
            })
            .collect();
        assert_eq!(results, [true, true, true, true, true, false, true, true]);
        let mut expected: Vec<&str> = keys.to_vec();
        expected.remove(5);
        assert_eq!(stored(&store), expected);
    }
}
