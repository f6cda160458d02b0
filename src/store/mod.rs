//! Persistence contracts: the inbound event queue with its processed and set-aside marks, the
//! outbox of side effects, and the group state that decisions read and write. Every decision
//! runs in one [`Tx`]: the state it changes, the effects it queues and its event's processed
//! mark commit together or not at all (DESIGN.md §4). SQLite ([`SqliteStore`]) is the embedded
//! backend (one instance); PostgreSQL ([`PostgresStore`], `store.url`) is shared by several
//! instances (DESIGN.md §7). The conformance tests in `tests.rs` run against both, and are what
//! any other backend must pass; [`throwaway`] gives tests and benches a PostgreSQL.

mod postgres;
#[cfg(test)]
mod postgres_tests;
mod repo;
mod sqlite;
#[cfg(test)]
mod tests;
#[doc(hidden)]
pub mod throwaway;

use std::sync::Arc;

use crate::domain::{
    ContactRecord, ContactState, Created, E164, GroupId, GroupKey, GroupKind, GroupRecord,
    GroupState, Origin, StreamId, UserId, WaMessageRecord,
};

pub use postgres::{PgError, PostgresOptions, PostgresStore, is_postgres_url, redacted_url};
pub use sqlite::{InstanceLock, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("cannot open the store {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error(
        "the store {path} has schema version {found}, newer than this bot knows ({known}); \
         run a newer wa-groups-bot or point store.path elsewhere"
    )]
    NewerSchema { path: String, found: i64, known: i64 },
    #[error("store migration {version} failed: {source}")]
    Migration { version: usize, source: rusqlite::Error },
    #[error("store query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("store payload is not valid JSON: {0}")]
    Payload(#[from] serde_json::Error),
    #[error(
        "another wa-groups-bot instance runs on the store {path}: SQLite takes one instance; \
         several instances share a PostgreSQL store (store.url)"
    )]
    InUse { path: String },
    #[error("cannot lock the store {path}: {source}")]
    Lock { path: String, source: std::io::Error },
    #[error("the store lock was poisoned by a panic")]
    Poisoned,
    // ----- PostgreSQL (no variant shows the URL's password) -----
    #[error("store.url {at}: {reason}")]
    BadUrl { at: String, reason: String },
    #[error("cannot connect to the PostgreSQL store {at}: {reason}")]
    Connect { at: String, reason: String },
    #[error("the PostgreSQL store's CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS setup for the PostgreSQL store failed: {0}")]
    Tls(rustls::Error),
    #[error("PostgreSQL store migration {version} failed: {source}")]
    PgMigration { version: usize, source: PgError },
    /// A concurrent transaction got there first (serialization failure, deadlock, a unique
    /// key taken meanwhile): transient, try again.
    #[error("a concurrent store transaction conflicted (try again): {0}")]
    Conflict(PgError),
    /// `store.statementTimeoutMillis` ran out (or the statement was cancelled).
    #[error("a store statement took too long: {0}")]
    Timeout(PgError),
    /// The database cannot be reached now (down, restarting, pool exhausted): transient.
    #[error("the PostgreSQL store cannot be reached: {0}")]
    Unavailable(String),
    #[error("PostgreSQL store query failed: {0}")]
    Postgres(PgError),
    /// A statement of the transaction failed and the body went on: nothing was committed.
    #[error("the store transaction was rolled back: a statement in it had failed")]
    RolledBack,
    #[error("the store holds an unreadable row: {0}")]
    BadRow(String),
    #[error("the store could not run: {0}")]
    Runtime(String),
}

impl StoreError {
    /// Worth trying again: another instance's transaction got in the way, or the database is
    /// momentarily out of reach.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict(_)
                | StoreError::Timeout(_)
                | StoreError::Unavailable(_)
                | StoreError::RolledBack
        )
    }
}

/// Where an inbound event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Symphony,
    WhatsApp,
    /// The outcome of an effect the bot performed (a room was created, a send failed): decided
    /// like any other event, so that one place decides.
    Outcome,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Symphony => "symphony",
            Source::WhatsApp => "whatsapp",
            Source::Outcome => "outcome",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Source::Symphony, Source::WhatsApp, Source::Outcome]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// A persisted inbound event not processed yet (or set aside, when listed as failed).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRow {
    pub id: i64,
    pub source: Source,
    pub dedupe_key: String,
    pub payload: serde_json::Value,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Why it was set aside (failed rows only).
    pub last_error: Option<String>,
}

/// An effect as the outbox stores it: its order key and its JSON.
pub type QueuedEffect = (String, serde_json::Value);

/// A side effect waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub order_key: String,
    pub effect: serde_json::Value,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What the store prunes after `store.retentionDays`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub effects: u64,
    pub messages: u64,
}

/// The group state a decision reads and writes. Implemented on a transaction: nothing written
/// here is visible to others before the decision commits, with its effects.
pub trait GroupRepo {
    /// Records a new group with its advisors (the creator an owner), its invited contacts and
    /// its marker `reference`, unless a group of the same origin exists: then says which, and
    /// whether the same event asked (a replay) or another one (a resubmission).
    #[allow(clippy::too_many_arguments)]
    fn create_group(
        &self,
        name: &str,
        kind: GroupKind,
        creator: UserId,
        advisors: &[UserId],
        contacts: &[E164],
        origin: &Origin,
        reference: &str,
    ) -> Result<Created, StoreError>;
    fn group(&self, key: GroupKey) -> Result<Option<GroupRecord>, StoreError>;
    fn group_by_stream(&self, stream: &StreamId) -> Result<Option<GroupRecord>, StoreError>;
    fn group_by_wa(&self, group: &GroupId) -> Result<Option<GroupRecord>, StoreError>;
    fn group_by_request(&self, request_id: &str) -> Result<Option<GroupRecord>, StoreError>;
    /// The Symphony room of a group is known (only if none was recorded: returns whether set).
    fn set_group_stream(&self, key: GroupKey, stream: &StreamId) -> Result<bool, StoreError>;
    /// The WhatsApp create call was made: wait for its `group_create` webhook. Only a group
    /// still creating moves on (returns whether it did).
    fn set_group_request(&self, key: GroupKey, request_id: &str) -> Result<bool, StoreError>;
    /// The WhatsApp group exists: its id and invite link are known and the group is active.
    /// Only a group without a WhatsApp group yet, still being created, takes it (returns
    /// whether it did): a late or second answer changes nothing.
    fn set_group_created(
        &self,
        key: GroupKey,
        group: &GroupId,
        invite_link: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// A new invite link (after a reset); the group's state is left alone.
    fn set_invite_link(&self, key: GroupKey, invite_link: &str) -> Result<(), StoreError>;
    fn set_group_state(&self, key: GroupKey, state: GroupState) -> Result<(), StoreError>;
    fn rename_group(&self, key: GroupKey, name: &str) -> Result<(), StoreError>;
    /// Advisors and their owner flags, as last recorded.
    fn advisors(&self, key: GroupKey) -> Result<Vec<(UserId, bool)>, StoreError>;
    /// Records an advisor's presence and owner flag; `None` removes them.
    fn set_advisor(
        &self,
        key: GroupKey,
        user: UserId,
        owner: Option<bool>,
    ) -> Result<(), StoreError>;
    /// Contacts with their state and bar flag.
    fn contacts(&self, key: GroupKey) -> Result<Vec<ContactRecord>, StoreError>;
    /// Sets (or adds) a contact's state. Removing bars them, in the same transaction; a barred
    /// contact's state never leaves `Removed`.
    fn set_contact_state(
        &self,
        key: GroupKey,
        phone: &E164,
        state: ContactState,
    ) -> Result<(), StoreError>;
    /// Keeps a contact's business-scoped user id once a webhook showed it.
    fn set_contact_bsuid(&self, key: GroupKey, phone: &E164, bsuid: &str)
    -> Result<(), StoreError>;
    /// What WhatsApp showed of a contact (their user id, their profile name), kept in every
    /// group where that number is a contact; `None` keeps what is known.
    fn set_contact_profile(
        &self,
        phone: &E164,
        bsuid: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), StoreError>;
    /// The contact's pending join request (`None` once it is settled).
    fn set_join_request(
        &self,
        key: GroupKey,
        phone: &E164,
        request_id: Option<&str>,
    ) -> Result<(), StoreError>;
    fn join_request(&self, key: GroupKey, phone: &E164) -> Result<Option<String>, StoreError>;
    /// The phone of the contact WhatsApp knows by this business-scoped user id, once seen
    /// (username users come without their number).
    fn phone_of_bsuid(&self, bsuid: &str) -> Result<Option<E164>, StoreError>;
    /// Native groups whose WhatsApp create call has not been recorded yet.
    fn groups_awaiting_request(&self) -> Result<u64, StoreError>;
    /// Groups still waiting for their `group_create` webhook, created before `before_ms`.
    fn groups_awaiting_webhook(&self, before_ms: i64) -> Result<Vec<GroupRecord>, StoreError>;
    fn is_barred(&self, key: GroupKey, phone: &E164) -> Result<bool, StoreError>;
    /// Whether membership changes of a room (adds, removals, promotions, demotions) are still
    /// queued in the outbox.
    fn membership_pending(&self, stream: &StreamId) -> Result<bool, StoreError>;
    /// When a contact was barred from a group (ms since the epoch), if they were.
    fn barred_at(&self, key: GroupKey, phone: &E164) -> Result<Option<i64>, StoreError>;
    /// Records that the room (`room = true`) or WhatsApp group of a group is about to be asked
    /// for; returns whether an earlier attempt was already made.
    fn mark_create_attempt(&self, key: GroupKey, room: bool) -> Result<bool, StoreError>;

    // ----- the chat relay -----
    /// Records a WhatsApp message sent or received (a second record of the same id is ignored).
    fn record_wa_message(&self, message: &WaMessageRecord) -> Result<(), StoreError>;
    fn wa_message(&self, wa_message_id: &str) -> Result<Option<WaMessageRecord>, StoreError>;
    /// The Symphony message that carries a received WhatsApp message, once posted.
    fn set_wa_message_symphony(
        &self,
        wa_message_id: &str,
        symphony_message_id: &str,
    ) -> Result<(), StoreError>;
    /// Marks a sent message as resent through the template; false if it already was.
    fn claim_template_fallback(&self, wa_message_id: &str) -> Result<bool, StoreError>;
    /// The group whose room last sent a 1:1 message to this contact.
    fn last_group_messaging(&self, phone: &E164) -> Result<Option<GroupKey>, StoreError>;
    /// Groups where this phone is a contact (not removed), most recently changed first.
    fn groups_of_contact(&self, phone: &E164) -> Result<Vec<GroupKey>, StoreError>;
    /// A contact wrote in `chat` (a group id or a phone) at `at_ms`.
    fn open_window(&self, chat: &str, at_ms: i64) -> Result<(), StoreError>;
    /// When a contact last wrote in `chat`, if ever.
    fn last_inbound(&self, chat: &str) -> Result<Option<i64>, StoreError>;
}

/// One transaction: group state plus the queue operations that must commit with it.
pub trait Tx: GroupRepo {
    /// Queues effects in the outbox, in order per key.
    fn queue_effects(&self, effects: &[QueuedEffect]) -> Result<(), StoreError>;
    /// Marks an inbound event processed (it will not be handed out again); false if it already
    /// was (another decision got there first: the caller must not commit a second one).
    fn mark_processed(&self, inbound_id: i64) -> Result<bool, StoreError>;
    /// Persists an inbound event (an outcome) unless one with the same source and key exists.
    fn enqueue_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::Value,
    ) -> Result<bool, StoreError>;
    /// [`enqueue_inbound`](Self::enqueue_inbound) answering the new event's id (`None`: a
    /// redelivery, nothing stored), the payload as JSON text already (serialised straight from
    /// the event, without a value tree in between).
    fn insert_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::value::RawValue,
    ) -> Result<Option<i64>, StoreError>;
    /// Whether an event waits to be decided (neither processed nor set aside).
    fn has_undecided(&self) -> Result<bool, StoreError>;
    /// Runs `f` inside a savepoint of this transaction: what it wrote is kept when it answers
    /// `true`, undone (the rest of the transaction kept) when `false`.
    fn savepoint(&self, f: &mut dyn FnMut() -> bool) -> Result<bool, StoreError>;
    /// Marks an outbox effect done (or given up, with `error`); the next effect of its key
    /// becomes due.
    fn finish_effect(&self, id: i64, error: Option<&str>) -> Result<(), StoreError>;
    /// [`StateStore::advance_symphony_watermark`] in this transaction: a datafeed batch and the
    /// watermark it moves commit together.
    fn advance_symphony_watermark(&self, at_ms: i64) -> Result<(), StoreError>;
    /// Fencing: confirms that this instance still holds `claim` and extends it by `ttl`, inside
    /// the decision's transaction (a takeover waits for it to commit). `false` when the claim
    /// was lost (it expired and another instance took the key): the caller must roll back.
    /// A store no other instance shares holds every claim.
    fn hold_claim(&self, claim: &Claim, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let _ = (claim, ttl);
        Ok(true)
    }
}

/// This instance's claim on deciding one key's events (DESIGN.md §7): while it holds it, no
/// other instance decides them. `token` grows with every takeover, so a holder that stalled past
/// its claim's expiry is told apart from the instance that took the key over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub token: i64,
}

/// A backend: the queues, and transactions over the group state.
pub trait StateStore: Send + Sync {
    /// Persists an inbound event. Returns `false` (and stores nothing) when an event with the
    /// same source and key was already received: a redelivery.
    fn enqueue_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::Value,
    ) -> Result<bool, StoreError>;
    /// Unprocessed, not set-aside events with an id above `after`, in arrival order.
    fn pending_inbound(&self, after: i64, limit: usize) -> Result<Vec<InboundRow>, StoreError>;
    /// [`pending_inbound`](Self::pending_inbound) leaving out the events in `skip` (those an
    /// instance already holds): with a shared store each pass reads the queue from its start,
    /// and what is already held need not be read again. Up to `limit` rows not skipped.
    fn pending_inbound_except(
        &self,
        after: i64,
        limit: usize,
        skip: &[i64],
    ) -> Result<Vec<InboundRow>, StoreError> {
        let skip: std::collections::HashSet<i64> = skip.iter().copied().collect();
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let page = self.pending_inbound(cursor, limit.max(1))?;
            let full = page.len() >= limit.max(1);
            for row in page {
                cursor = row.id;
                if !skip.contains(&row.id) {
                    out.push(row);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }
    /// Whether an event with this key was ever received (processed or not).
    fn has_inbound(&self, source: Source, dedupe_key: &str) -> Result<bool, StoreError>;
    /// How many events were received from a source (tests and metrics).
    fn count_inbound(&self, source: Source) -> Result<u64, StoreError>;
    /// Counts a failed attempt at an event; with `set_aside`, it is set aside (dead letter):
    /// kept, not handed out again until retried.
    fn inbound_failed(&self, id: i64, error: &str, set_aside: bool) -> Result<(), StoreError>;
    /// The events set aside, oldest first.
    fn failed_inbound(&self, limit: usize) -> Result<Vec<InboundRow>, StoreError>;
    /// Puts a set-aside event back in the queue (`None`: all of them). Returns how many.
    fn retry_inbound(&self, id: Option<i64>) -> Result<u64, StoreError>;
    /// How many events are set aside.
    fn count_failed_inbound(&self) -> Result<u64, StoreError>;
    /// Due outbox heads (at most one effect per order key: the first not yet done), earliest
    /// first, skipping `busy` ids (already being performed).
    fn due_outbox(&self, limit: usize, busy: &[i64]) -> Result<Vec<OutboxRow>, StoreError>;
    /// The earliest time (ms since the epoch) an outbox head becomes due, if any.
    fn next_outbox_due(&self) -> Result<Option<i64>, StoreError>;
    /// Records a failed attempt and when to try again.
    fn outbox_retry(
        &self,
        id: i64,
        after: std::time::Duration,
        error: &str,
    ) -> Result<(), StoreError>;
    /// (pending, failed) effects: the outbox depth and what was given up on.
    fn outbox_counts(&self) -> Result<(u64, u64), StoreError>;
    /// A cheap committed write (`/healthz`): fails when the store cannot take writes now.
    fn probe_write(&self) -> Result<(), StoreError>;
    /// Deletes processed events, finished effects and relayed-message records older than
    /// `before_ms` (set-aside events and pending work are kept).
    fn prune(&self, before_ms: i64) -> Result<Pruned, StoreError>;
    /// Runs `body` in one transaction; commits when it returns `Ok(true)`, rolls back otherwise.
    fn transaction(
        &self,
        body: &mut dyn FnMut(&dyn Tx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError>;

    /// Runs `body` in a transaction meant for reading: a consistent view, without waiting for
    /// (or taking) the write lock first. What it writes anyway still commits.
    fn read_transaction(
        &self,
        body: &mut dyn FnMut(&dyn Tx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.transaction(body)
    }

    // ----- coordination between instances (DESIGN.md §7) -----
    /// Whether other instances may share this store (PostgreSQL). A store no other instance
    /// shares (SQLite: one instance) grants every claim without asking.
    fn shared(&self) -> bool {
        false
    }
    /// Takes the claim on deciding `key`'s events for `ttl` (or renews it, when this instance
    /// holds it already); `None` while another live instance holds it.
    fn claim_key(&self, key: &str, ttl: std::time::Duration) -> Result<Option<Claim>, StoreError> {
        let _ = ttl;
        Ok(Some(Claim { key: key.to_owned(), token: 0 }))
    }
    /// Gives a claim up (when its key has nothing left to decide here); a claim taken over
    /// meanwhile is left to its new holder.
    fn release_key(&self, claim: &Claim) -> Result<(), StoreError> {
        let _ = claim;
        Ok(())
    }

    // ----- [feed-catchup] the Symphony watermark (catch-up after a datafeed loss) -----
    /// The pod timestamps of the latest and the first Symphony event persisted, if any.
    fn symphony_watermark(&self) -> Result<Option<Watermark>, StoreError>;
    /// Symphony events up to `at_ms` (pod time) are persisted; the watermark never goes back.
    fn advance_symphony_watermark(&self, at_ms: i64) -> Result<(), StoreError>;
}

/// How far the Symphony side has been received, in pod time (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The latest event persisted.
    pub latest_ms: i64,
    /// The first event ever recorded: messages before it were stored under other keys.
    pub first_ms: i64,
}

/// A shared handle on the store (cheap to clone).
#[derive(Clone)]
pub struct Store(Arc<dyn StateStore>);

impl Store {
    /// Opens (creating if needed) the SQLite store file and brings its schema up to date.
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Self(Arc::new(SqliteStore::open(path)?)))
    }

    /// Opens the store the configuration names: PostgreSQL when `store.url` is set (several
    /// instances), else the SQLite file at `store.path`. Brings the schema up to date.
    pub fn open_config(config: &crate::config::StoreConfig) -> Result<Self, StoreError> {
        match &config.url {
            Some(url) => Ok(Self(Arc::new(PostgresStore::open(&PostgresOptions {
                url: url.clone(),
                pool_size: usize::try_from(config.pool_size).unwrap_or(8),
                statement_timeout: config.statement_timeout,
            })?))),
            None => Self::open(&config.path),
        }
    }

    /// A private in-memory SQLite store (tests, dry runs).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self(Arc::new(SqliteStore::open_in_memory()?)))
    }

    /// Any other implementation.
    pub fn from_backend(backend: Arc<dyn StateStore>) -> Self {
        Self(backend)
    }

    /// Runs `body` in one transaction: committed if it returns `Ok`, rolled back on `Err` (which
    /// is returned as it was).
    pub fn transaction<T, E: From<StoreError>>(
        &self,
        body: impl FnOnce(&dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut body = Some(body);
        let mut outcome: Option<Result<T, E>> = None;
        self.0.transaction(&mut |tx| {
            let Some(body) = body.take() else { return Ok(false) };
            let result = body(tx);
            let commit = result.is_ok();
            outcome = Some(result);
            Ok(commit)
        })?;
        outcome.unwrap_or_else(|| Err(StoreError::Poisoned.into()))
    }

    /// A read of the group state (a transaction that changes nothing).
    pub fn read<T>(
        &self,
        body: impl FnOnce(&dyn GroupRepo) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut body = Some(body);
        let mut outcome: Option<Result<T, StoreError>> = None;
        self.0.read_transaction(&mut |tx| {
            let Some(body) = body.take() else { return Ok(false) };
            let result = body(tx);
            let commit = result.is_ok();
            outcome = Some(result);
            Ok(commit)
        })?;
        outcome.unwrap_or(Err(StoreError::Poisoned))
    }
}

impl std::ops::Deref for Store {
    type Target = dyn StateStore;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
