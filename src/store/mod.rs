//! Persistence: one SQLite file (WAL, numbered migrations against `PRAGMA user_version`) holding
//! the inbound event queue with its processed marks, the outbox of side effects, and the groups
//! with their advisors, contacts and the bar list (never cleared).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use crate::groups::rules::{ContactRecord, ContactState, GroupKind};
use crate::groups::{E164, GroupId, StreamId, UserId};

/// Numbered migrations; the index + 1 is the schema version it leads to.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_outbox.sql"),
    include_str!("migrations/0003_groups.sql"),
    include_str!("migrations/0004_attempts.sql"),
    include_str!("migrations/0005_relay.sql"),
    include_str!("migrations/0006_health.sql"),
    include_str!("migrations/0007_origin.sql"),
];

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
    #[error("the store lock was poisoned by a panic")]
    Poisoned,
}

/// Where an inbound event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Symphony,
    WhatsApp,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Symphony => "symphony",
            Source::WhatsApp => "whatsapp",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "symphony" => Some(Source::Symphony),
            "whatsapp" => Some(Source::WhatsApp),
            _ => None,
        }
    }
}

/// A persisted, not yet processed inbound event.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRow {
    pub id: i64,
    pub source: Source,
    pub dedupe_key: String,
    pub payload: serde_json::Value,
}

/// What the bot keeps: the inbound queue, the outbox, the groups. SQLite ([`SqliteStore`]) is
/// the embedded default; a PostgreSQL store for several bot instances implements the same trait
/// (claiming outbox work with `FOR UPDATE SKIP LOCKED`, DESIGN.md §7).
pub trait StateStore: Send + Sync {
    /// Persists an inbound event. Returns `false` (and stores nothing) when an event with the
    /// same source and key was already received: a redelivery.
    fn enqueue_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::Value,
    ) -> Result<bool, StoreError>;
    /// The oldest unprocessed events, in arrival order.
    fn pending_inbound(&self, limit: usize) -> Result<Vec<InboundRow>, StoreError>;
    /// Marks an inbound event processed: it will not be handed out again.
    fn mark_processed(&self, id: i64) -> Result<(), StoreError>;
    /// Whether an event with this key was ever received (processed or not).
    fn has_inbound(&self, source: Source, dedupe_key: &str) -> Result<bool, StoreError>;
    /// How many events were received from a source (tests and metrics).
    fn count_inbound(&self, source: Source) -> Result<u64, StoreError>;
    /// Marks an inbound event processed and queues its side effects, in one transaction: either
    /// both happen or neither does. `effects` are `(order key, effect)` pairs.
    fn complete_inbound(
        &self,
        inbound_id: i64,
        effects: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError>;
    /// Effects due now, oldest first, at most one per order key (the first not yet done), so
    /// that effects of one key run in order.
    fn due_outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError>;
    /// The earliest time (ms since the epoch) an undone effect becomes due, if any.
    fn next_outbox_due(&self) -> Result<Option<i64>, StoreError>;
    fn outbox_done(&self, id: i64) -> Result<(), StoreError>;
    /// Marks an effect done and queues what follows from it, in one transaction.
    fn outbox_done_with(
        &self,
        id: i64,
        follow_ups: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError>;
    /// Records a failed attempt and when to try again.
    fn outbox_retry(
        &self,
        id: i64,
        after: std::time::Duration,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Gives up on an effect for good and queues its report, in one transaction.
    fn outbox_failed_with(
        &self,
        id: i64,
        error: &str,
        reports: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError>;
    /// Gives up on an effect for good (the failure is reported elsewhere).
    fn outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError>;
    /// (pending, failed) effects: the outbox depth and what was given up on.
    fn outbox_counts(&self) -> Result<(u64, u64), StoreError>;
    /// A cheap committed write (`/healthz`): fails when the store cannot take writes now.
    fn probe_write(&self) -> Result<(), StoreError>;
    /// Records a new group with its advisors (the creator an owner) and invited contacts,
    /// unless a group of the same origin exists: then says which, and whether the same event
    /// asked (a replay) or another one (a resubmission).
    fn create_group(
        &self,
        name: &str,
        kind: GroupKind,
        creator: UserId,
        advisors: &[UserId],
        contacts: &[E164],
        origin: &Origin,
    ) -> Result<Created, StoreError>;
    fn group(&self, key: GroupKey) -> Result<Option<GroupRecord>, StoreError>;
    fn group_by_stream(&self, stream: &StreamId) -> Result<Option<GroupRecord>, StoreError>;
    fn group_by_wa(&self, group: &GroupId) -> Result<Option<GroupRecord>, StoreError>;
    fn group_by_request(&self, request_id: &str) -> Result<Option<GroupRecord>, StoreError>;
    /// The Symphony room of a group is known.
    fn set_group_stream(&self, key: GroupKey, stream: &StreamId) -> Result<(), StoreError>;
    /// The WhatsApp create call was made: wait for its `group_create` webhook.
    fn set_group_request(&self, key: GroupKey, request_id: &str) -> Result<(), StoreError>;
    /// The WhatsApp group exists: its id and invite link are known.
    fn set_group_created(
        &self,
        key: GroupKey,
        group: &GroupId,
        invite_link: Option<&str>,
    ) -> Result<(), StoreError>;
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
    /// Sets (or adds) a contact's state. Removing bars them, in the same transaction.
    fn set_contact_state(
        &self,
        key: GroupKey,
        phone: &E164,
        state: ContactState,
    ) -> Result<(), StoreError>;
    /// Keeps a contact's business-scoped user id once a webhook showed it.
    fn set_contact_bsuid(&self, key: GroupKey, phone: &E164, bsuid: &str)
    -> Result<(), StoreError>;
    /// Groups still waiting for their `group_create` webhook, created longer than `age` ago.
    fn groups_awaiting_webhook(
        &self,
        age: std::time::Duration,
    ) -> Result<Vec<GroupRecord>, StoreError>;
    /// Queues effects not caused by an inbound event (the reconciler's).
    fn queue_effects(&self, effects: &[(String, serde_json::Value)]) -> Result<(), StoreError>;
    /// Records that the room (`room = true`) or WhatsApp group of a group is about to be asked
    /// for; returns whether an earlier attempt was already made.
    fn mark_create_attempt(&self, key: GroupKey, room: bool) -> Result<bool, StoreError>;
    /// Native groups whose WhatsApp create call has not been recorded yet.
    fn groups_awaiting_request(&self) -> Result<u64, StoreError>;
    fn is_barred(&self, key: GroupKey, phone: &E164) -> Result<bool, StoreError>;

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

/// A shared handle on the store (cheap to clone).
#[derive(Clone)]
pub struct Store(Arc<dyn StateStore>);

impl Store {
    /// Opens (creating if needed) the SQLite store file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self(Arc::new(SqliteStore::open(path)?)))
    }

    /// A private in-memory SQLite store (tests, dry runs).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self(Arc::new(SqliteStore::open_in_memory()?)))
    }

    /// Any other implementation.
    pub fn from_backend(backend: Arc<dyn StateStore>) -> Self {
        Self(backend)
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

/// The SQLite store. Cheap to clone; one connection behind a mutex (WAL mode), which is plenty
/// for one bot instance. Calls are short, so async callers may call them directly.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// … and the health probe's write.
const PROBE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) the store file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let conn = Connection::open(path)
            .map_err(|source| StoreError::Open { path: shown.clone(), source })?;
        Self::init(conn, &shown)
    }

    /// A private in-memory store (tests, dry runs).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()
            .map_err(|source| StoreError::Open { path: ":memory:".into(), source })?;
        Self::init(conn, ":memory:")
    }

    fn init(mut conn: Connection, shown: &str) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open { path: shown.to_owned(), source };
        // A corrupt file fails here, with the path in the message.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let version: i64 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::NewerSchema { path: shown.to_owned(), found: version, known });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let target = index + 1;
            let tx = conn
                .transaction()
                .map_err(|source| StoreError::Migration { version: target, source })?;
            tx.execute_batch(sql)
                .and_then(|()| tx.pragma_update(None, "user_version", target as i64))
                .and_then(|()| tx.commit())
                .map_err(|source| StoreError::Migration { version: target, source })?;
        }
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    fn group_where(
        &self,
        clause: &str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM groups WHERE {clause} = ?1");
        Ok(self.conn()?.query_row(&sql, [value], group_row).optional()?)
    }
}

impl StateStore for SqliteStore {
    fn enqueue_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let text = serde_json::to_string(payload)?;
        let inserted = self.conn()?.execute(
            "INSERT OR IGNORE INTO inbound_events (source, dedupe_key, payload, received_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![source.as_str(), dedupe_key, text, now_ms()],
        )?;
        Ok(inserted == 1)
    }

    fn pending_inbound(&self, limit: usize) -> Result<Vec<InboundRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, source, dedupe_key, payload FROM inbound_events
             WHERE processed_at IS NULL ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, source, dedupe_key, payload) = row?;
            let Some(source) = Source::parse(&source) else {
                tracing::warn!(id, source, "skipping inbound event of unknown source");
                continue;
            };
            out.push(InboundRow {
                id,
                source,
                dedupe_key,
                payload: serde_json::from_str(&payload)?,
            });
        }
        Ok(out)
    }

    fn mark_processed(&self, id: i64) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE inbound_events SET processed_at = ?2 WHERE id = ?1 AND processed_at IS NULL",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    fn has_inbound(&self, source: Source, dedupe_key: &str) -> Result<bool, StoreError> {
        let found = self
            .conn()?
            .query_row(
                "SELECT 1 FROM inbound_events WHERE source = ?1 AND dedupe_key = ?2",
                params![source.as_str(), dedupe_key],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    fn count_inbound(&self, source: Source) -> Result<u64, StoreError> {
        let n: i64 = self.conn()?.query_row(
            "SELECT COUNT(*) FROM inbound_events WHERE source = ?1",
            params![source.as_str()],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn complete_inbound(
        &self,
        inbound_id: i64,
        effects: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let now = now_ms();
        queue_effects(&tx, effects, now)?;
        tx.execute(
            "UPDATE inbound_events SET processed_at = ?2 WHERE id = ?1 AND processed_at IS NULL",
            params![inbound_id, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn due_outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT o.id, o.order_key, o.effect, o.attempts FROM outbox o
             WHERE o.done_at IS NULL AND o.failed_at IS NULL AND o.next_at <= ?1
               AND o.id = (SELECT MIN(id) FROM outbox p
                           WHERE p.order_key = o.order_key AND p.done_at IS NULL AND p.failed_at IS NULL)
             ORDER BY o.id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now_ms(), limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, order_key, effect, attempts) = row?;
            out.push(OutboxRow {
                id,
                order_key,
                effect: serde_json::from_str(&effect)?,
                attempts: attempts as u32,
            });
        }
        Ok(out)
    }

    fn next_outbox_due(&self) -> Result<Option<i64>, StoreError> {
        let next: Option<i64> = self.conn()?.query_row(
            "SELECT MIN(next_at) FROM outbox WHERE done_at IS NULL AND failed_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(next)
    }

    fn outbox_done(&self, id: i64) -> Result<(), StoreError> {
        self.outbox_done_with(id, &[])
    }

    fn outbox_done_with(
        &self,
        id: i64,
        follow_ups: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let now = now_ms();
        queue_effects(&tx, follow_ups, now)?;
        tx.execute(
            "UPDATE outbox SET done_at = ?2, last_error = NULL WHERE id = ?1",
            params![id, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn outbox_retry(
        &self,
        id: i64,
        after: std::time::Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, now_ms() + after.as_millis() as i64, error],
        )?;
        Ok(())
    }

    fn outbox_failed_with(
        &self,
        id: i64,
        error: &str,
        reports: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let now = now_ms();
        queue_effects(&tx, reports, now)?;
        tx.execute(
            "UPDATE outbox SET attempts = attempts + 1, failed_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, now, error],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn outbox_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE outbox SET attempts = attempts + 1, failed_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, now_ms(), error],
        )?;
        Ok(())
    }

    fn outbox_counts(&self) -> Result<(u64, u64), StoreError> {
        let (pending, failed): (i64, i64) = self.conn()?.query_row(
            "SELECT COALESCE(SUM(done_at IS NULL AND failed_at IS NULL), 0), COALESCE(SUM(failed_at IS NOT NULL), 0) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((pending as u64, failed as u64))
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        let conn = self.conn()?;
        // A health probe must answer quickly: wait for another writer's lock 1 s, not the 5 s
        // the bot's own work waits.
        conn.busy_timeout(PROBE_BUSY_TIMEOUT)?;
        let written = conn.execute(
            "INSERT INTO health_probe (id, probed_at) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
            params![now_ms()],
        );
        conn.busy_timeout(BUSY_TIMEOUT)?;
        written?;
        Ok(())
    }

    fn create_group(
        &self,
        name: &str,
        kind: GroupKind,
        creator: UserId,
        advisors: &[UserId],
        contacts: &[E164],
        origin: &Origin,
    ) -> Result<Created, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let now = now_ms();
        let earlier: Option<(i64, Option<String>)> = tx
            .query_row(
                "SELECT id, origin_event FROM groups WHERE origin = ?1",
                [&origin.key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, event)) = earlier {
            return Ok(if event.as_deref() == Some(origin.event.as_str()) {
                Created::Replay(GroupKey(id))
            } else {
                Created::Again(GroupKey(id))
            });
        }
        tx.execute(
            "INSERT INTO groups (name, kind, state, creator, created_at, origin, origin_event)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                name,
                kind_str(kind),
                GroupState::Creating.as_str(),
                creator.0,
                now,
                origin.key,
                origin.event
            ],
        )?;
        let key = GroupKey(tx.last_insert_rowid());
        tx.execute(
            "INSERT INTO group_advisors (group_id, user_id, owner) VALUES (?1, ?2, 1)",
            params![key.0, creator.0],
        )?;
        for a in advisors.iter().filter(|a| **a != creator) {
            tx.execute(
                "INSERT OR IGNORE INTO group_advisors (group_id, user_id, owner) VALUES (?1, ?2, 0)",
                params![key.0, a.0],
            )?;
        }
        for c in contacts {
            tx.execute(
                "INSERT OR IGNORE INTO group_contacts (group_id, phone, state, updated_at) VALUES (?1, ?2, 'invited', ?3)",
                params![key.0, c.as_str(), now],
            )?;
        }
        tx.commit()?;
        Ok(Created::New(key))
    }

    fn group(&self, key: GroupKey) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("id", &key.0)
    }

    fn group_by_stream(&self, stream: &StreamId) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("stream_id", &stream.as_str())
    }

    fn group_by_wa(&self, group: &GroupId) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("wa_group_id", &group.as_str())
    }

    fn group_by_request(&self, request_id: &str) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("create_request_id", &request_id)
    }

    fn set_group_stream(&self, key: GroupKey, stream: &StreamId) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE groups SET stream_id = ?2 WHERE id = ?1",
            params![key.0, stream.as_str()],
        )?;
        Ok(())
    }

    fn set_group_request(&self, key: GroupKey, request_id: &str) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE groups SET create_request_id = ?2, state = ?3 WHERE id = ?1",
            params![key.0, request_id, GroupState::AwaitingGroup.as_str()],
        )?;
        Ok(())
    }

    fn set_group_created(
        &self,
        key: GroupKey,
        group: &GroupId,
        invite_link: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE groups SET wa_group_id = ?2, invite_link = ?3, state = ?4 WHERE id = ?1",
            params![key.0, group.as_str(), invite_link, GroupState::Active.as_str()],
        )?;
        Ok(())
    }

    fn set_group_state(&self, key: GroupKey, state: GroupState) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE groups SET state = ?2 WHERE id = ?1",
            params![key.0, state.as_str()],
        )?;
        Ok(())
    }

    fn rename_group(&self, key: GroupKey, name: &str) -> Result<(), StoreError> {
        self.conn()?.execute("UPDATE groups SET name = ?2 WHERE id = ?1", params![key.0, name])?;
        Ok(())
    }

    fn advisors(&self, key: GroupKey) -> Result<Vec<(UserId, bool)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT user_id, owner FROM group_advisors WHERE group_id = ?1 ORDER BY rowid",
        )?;
        let rows =
            stmt.query_map([key.0], |r| Ok((UserId(r.get(0)?), r.get::<_, i64>(1)? != 0)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_advisor(
        &self,
        key: GroupKey,
        user: UserId,
        owner: Option<bool>,
    ) -> Result<(), StoreError> {
        let conn = self.conn()?;
        match owner {
            Some(owner) => conn.execute(
                "INSERT INTO group_advisors (group_id, user_id, owner) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_id, user_id) DO UPDATE SET owner = excluded.owner",
                params![key.0, user.0, owner],
            )?,
            None => conn.execute(
                "DELETE FROM group_advisors WHERE group_id = ?1 AND user_id = ?2",
                params![key.0, user.0],
            )?,
        };
        Ok(())
    }

    fn contacts(&self, key: GroupKey) -> Result<Vec<ContactRecord>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT c.phone, c.state, EXISTS (SELECT 1 FROM bars b WHERE b.group_id = c.group_id AND b.phone = c.phone)
             FROM group_contacts c WHERE c.group_id = ?1 ORDER BY c.rowid",
        )?;
        let rows = stmt.query_map([key.0], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (phone, state, barred) = row?;
            let (Ok(phone), Some(state)) = (E164::parse(&phone), ContactState::parse(&state))
            else {
                tracing::warn!(group = key.0, "skipping an unreadable contact row");
                continue;
            };
            out.push(ContactRecord { phone, state, barred });
        }
        Ok(out)
    }

    fn set_contact_state(
        &self,
        key: GroupKey,
        phone: &E164,
        state: ContactState,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO group_contacts (group_id, phone, state, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_id, phone) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            params![key.0, phone.as_str(), state.as_str(), now],
        )?;
        if state == ContactState::Removed {
            tx.execute(
                "INSERT OR IGNORE INTO bars (group_id, phone, barred_at) VALUES (?1, ?2, ?3)",
                params![key.0, phone.as_str(), now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn set_contact_bsuid(
        &self,
        key: GroupKey,
        phone: &E164,
        bsuid: &str,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE group_contacts SET bsuid = ?3 WHERE group_id = ?1 AND phone = ?2",
            params![key.0, phone.as_str(), bsuid],
        )?;
        Ok(())
    }

    fn groups_awaiting_webhook(
        &self,
        age: std::time::Duration,
    ) -> Result<Vec<GroupRecord>, StoreError> {
        let conn = self.conn()?;
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM groups WHERE state = 'awaitingGroup' AND created_at <= ?1 ORDER BY id"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([now_ms() - age.as_millis() as i64], group_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn queue_effects(&self, effects: &[(String, serde_json::Value)]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        queue_effects(&tx, effects, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    fn mark_create_attempt(&self, key: GroupKey, room: bool) -> Result<bool, StoreError> {
        let column = if room { "room_attempted" } else { "wa_attempted" };
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let before: i64 =
            tx.query_row(&format!("SELECT {column} FROM groups WHERE id = ?1"), [key.0], |r| {
                r.get(0)
            })?;
        tx.execute(&format!("UPDATE groups SET {column} = 1 WHERE id = ?1"), [key.0])?;
        tx.commit()?;
        Ok(before != 0)
    }

    fn groups_awaiting_request(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn()?.query_row(
            "SELECT COUNT(*) FROM groups WHERE kind = 'native' AND state = 'creating' AND create_request_id IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn is_barred(&self, key: GroupKey, phone: &E164) -> Result<bool, StoreError> {
        let found = self
            .conn()?
            .query_row(
                "SELECT 1 FROM bars WHERE group_id = ?1 AND phone = ?2",
                params![key.0, phone.as_str()],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    fn record_wa_message(&self, m: &WaMessageRecord) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT OR IGNORE INTO wa_messages (wa_message_id, group_id, direction, phone, symphony_message_id, author, excerpt, kind, body, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                m.wa_message_id,
                m.group.0,
                if m.inbound { "in" } else { "out" },
                m.phone.as_ref().map(E164::as_str),
                m.symphony_message_id,
                m.author,
                m.excerpt,
                m.kind,
                m.body,
                now_ms()
            ],
        )?;
        Ok(())
    }

    fn wa_message(&self, wa_message_id: &str) -> Result<Option<WaMessageRecord>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .query_row(
                "SELECT wa_message_id, group_id, direction, phone, symphony_message_id, author, excerpt, kind, body
                 FROM wa_messages WHERE wa_message_id = ?1",
                [wa_message_id],
                |r| {
                    Ok(WaMessageRecord {
                        wa_message_id: r.get(0)?,
                        group: GroupKey(r.get(1)?),
                        inbound: r.get::<_, String>(2)? == "in",
                        phone: r.get::<_, Option<String>>(3)?.and_then(|p| E164::parse(&p).ok()),
                        symphony_message_id: r.get(4)?,
                        author: r.get(5)?,
                        excerpt: r.get(6)?,
                        kind: r.get(7)?,
                        body: r.get(8)?,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    fn set_wa_message_symphony(
        &self,
        wa_message_id: &str,
        symphony_message_id: &str,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE wa_messages SET symphony_message_id = ?2 WHERE wa_message_id = ?1",
            params![wa_message_id, symphony_message_id],
        )?;
        Ok(())
    }

    fn claim_template_fallback(&self, wa_message_id: &str) -> Result<bool, StoreError> {
        let changed = self.conn()?.execute(
            "UPDATE wa_messages SET fallback_sent = 1 WHERE wa_message_id = ?1 AND fallback_sent = 0",
            [wa_message_id],
        )?;
        Ok(changed == 1)
    }

    fn last_group_messaging(&self, phone: &E164) -> Result<Option<GroupKey>, StoreError> {
        let found = self
            .conn()?
            .query_row(
                "SELECT group_id FROM wa_messages WHERE phone = ?1 AND direction = 'out'
                 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                [phone.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.map(GroupKey))
    }

    fn groups_of_contact(&self, phone: &E164) -> Result<Vec<GroupKey>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT c.group_id FROM group_contacts c JOIN groups g ON g.id = c.group_id
             WHERE c.phone = ?1 AND c.state <> 'removed' AND g.state = 'active'
             ORDER BY c.updated_at DESC, c.group_id DESC",
        )?;
        let rows = stmt.query_map([phone.as_str()], |r| r.get(0).map(GroupKey))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn open_window(&self, chat: &str, at_ms: i64) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO wa_windows (chat, last_inbound_at) VALUES (?1, ?2)
             ON CONFLICT (chat) DO UPDATE SET last_inbound_at = MAX(last_inbound_at, excluded.last_inbound_at)",
            params![chat, at_ms],
        )?;
        Ok(())
    }

    fn last_inbound(&self, chat: &str) -> Result<Option<i64>, StoreError> {
        let found = self
            .conn()?
            .query_row("SELECT last_inbound_at FROM wa_windows WHERE chat = ?1", [chat], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(found)
    }
}

/// A WhatsApp message the bot relayed (`inbound == false`) or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaMessageRecord {
    pub wa_message_id: String,
    pub group: GroupKey,
    pub inbound: bool,
    /// The contact: the recipient of a 1:1 message, the sender of a received one.
    pub phone: Option<E164>,
    pub symphony_message_id: Option<String>,
    /// Who wrote it, as shown to people.
    pub author: String,
    /// The start of its text.
    pub excerpt: String,
    /// `text`, `template` or `media` (received: WhatsApp's message type).
    pub kind: String,
    /// What was sent (outbound), to resend it as a template if the window turns out closed.
    pub body: Option<String>,
}

/// Inserts effects into the outbox inside a caller's transaction.
fn queue_effects(
    tx: &rusqlite::Transaction<'_>,
    effects: &[(String, serde_json::Value)],
    now: i64,
) -> Result<(), StoreError> {
    for (key, effect) in effects {
        tx.execute(
            "INSERT INTO outbox (order_key, effect, next_at, created_at) VALUES (?1, ?2, ?3, ?3)",
            params![key, serde_json::to_string(effect)?, now],
        )?;
    }
    Ok(())
}

/// A side effect waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub order_key: String,
    pub effect: serde_json::Value,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What asked for a group: `key` is unique per group (the command's event id, or the create
/// form's message), `event` the datafeed event that carried the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub key: String,
    pub event: String,
}

/// The outcome of [`StateStore::create_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New(GroupKey),
    /// The same event again (its first handling stopped before its effects were queued).
    Replay(GroupKey),
    /// Another request of the same origin (a form submitted twice).
    Again(GroupKey),
}

/// A group's row id in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupKey(pub i64);

/// Where a group's creation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Creating,
    AwaitingGroup,
    Active,
    Failed,
    Closed,
}

impl GroupState {
    fn as_str(self) -> &'static str {
        match self {
            GroupState::Creating => "creating",
            GroupState::AwaitingGroup => "awaitingGroup",
            GroupState::Active => "active",
            GroupState::Failed => "failed",
            GroupState::Closed => "closed",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [
            GroupState::Creating,
            GroupState::AwaitingGroup,
            GroupState::Active,
            GroupState::Failed,
            GroupState::Closed,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

fn kind_str(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::Native => "native",
        GroupKind::Standard => "standard",
    }
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub key: GroupKey,
    pub stream: Option<StreamId>,
    pub wa_group: Option<GroupId>,
    pub create_request_id: Option<String>,
    pub name: String,
    pub kind: GroupKind,
    pub state: GroupState,
    pub creator: UserId,
    pub created_at: i64,
    pub invite_link: Option<String>,
}

const GROUP_COLUMNS: &str = "id, stream_id, wa_group_id, create_request_id, name, kind, state, creator, created_at, invite_link";

fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRecord> {
    let kind: String = r.get(5)?;
    let state: String = r.get(6)?;
    let bad = |what: &str, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad {what} {v:?}").into(),
        )
    };
    Ok(GroupRecord {
        key: GroupKey(r.get(0)?),
        stream: r.get::<_, Option<String>>(1)?.map(StreamId::new),
        wa_group: r.get::<_, Option<String>>(2)?.map(GroupId),
        create_request_id: r.get(3)?,
        name: r.get(4)?,
        kind: match kind.as_str() {
            "native" => GroupKind::Native,
            "standard" => GroupKind::Standard,
            other => return Err(bad("kind", other)),
        },
        state: GroupState::parse(&state).ok_or_else(|| bad("state", &state))?,
        creator: UserId(r.get(7)?),
        created_at: r.get(8)?,
        invite_link: r.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicate_inbound_events_are_stored_once_and_processed_once() {
        let store = SqliteStore::open_in_memory().expect("store");
        assert!(store.enqueue_inbound(Source::WhatsApp, "k1", &json!({"a": 1})).expect("insert"));
        assert!(!store.enqueue_inbound(Source::WhatsApp, "k1", &json!({"a": 2})).expect("dup"));
        assert!(
            store.enqueue_inbound(Source::Symphony, "k1", &json!({"b": 1})).expect("other source")
        );
        let pending = store.pending_inbound(10).expect("pending");
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].payload, json!({"a": 1}));
        store.mark_processed(pending[0].id).expect("mark");
        assert_eq!(store.pending_inbound(10).expect("pending").len(), 1);
        assert!(store.has_inbound(Source::WhatsApp, "k1").expect("has"));
    }

    #[test]
    fn the_write_probe_fails_quickly_while_another_connection_holds_the_write_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bot.db");
        let store = SqliteStore::open(&path).expect("store");
        store.probe_write().expect("writable");
        let other = Connection::open(&path).expect("second connection");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let started = std::time::Instant::now();
        let err = store.probe_write().expect_err("locked");
        assert!(err.to_string().contains("locked"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(4),
            "the probe waits 1 s, not 5"
        );
        other.execute_batch("ROLLBACK").expect("unlock");
        store.probe_write().expect("writable again");
    }

    #[test]
    fn effects_are_queued_with_the_processed_mark_and_run_in_order_per_key() {
        let store = SqliteStore::open_in_memory().expect("store");
        assert!(store.enqueue_inbound(Source::Symphony, "e1", &json!(1)).expect("insert"));
        let id = store.pending_inbound(1).expect("pending")[0].id;
        let effects = vec![
            ("room-a".to_owned(), json!({"n": 1})),
            ("room-a".to_owned(), json!({"n": 2})),
            ("room-b".to_owned(), json!({"n": 3})),
        ];
        store.complete_inbound(id, &effects).expect("complete");
        assert!(store.pending_inbound(10).expect("pending").is_empty());
        let due = store.due_outbox(10).expect("due");
        assert_eq!(
            due.iter().map(|r| r.effect["n"].as_i64()).collect::<Vec<_>>(),
            vec![Some(1), Some(3)],
            "one per key"
        );
        store.outbox_retry(due[0].id, std::time::Duration::from_secs(60), "503").expect("retry");
        let due = store.due_outbox(10).expect("due");
        assert_eq!(
            due.iter().map(|r| r.effect["n"].as_i64()).collect::<Vec<_>>(),
            vec![Some(3)],
            "room-a waits for its first"
        );
        assert!(store.next_outbox_due().expect("next").is_some());
        store.outbox_done(due[0].id).expect("done");
        assert_eq!(store.outbox_counts().expect("counts"), (2, 0));
        let first = store
            .conn()
            .expect("conn")
            .query_row(
                "SELECT id FROM outbox WHERE order_key = 'room-a' ORDER BY id LIMIT 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .expect("id");
        store.outbox_failed(first, "400").expect("failed");
        assert_eq!(
            store.due_outbox(10).expect("due")[0].effect["n"],
            2,
            "after a give-up the next one runs"
        );
        assert_eq!(store.outbox_counts().expect("counts"), (1, 1));
    }

    #[test]
    fn groups_contacts_and_the_bar_list() {
        let store = SqliteStore::open_in_memory().expect("store");
        let n = |s: &str| E164::parse(s).expect("valid");
        let (jane, john) = (n("+447911123456"), n("+447911123457"));
        let key = store
            .create_group(
                "Deal team",
                GroupKind::Native,
                UserId(1),
                &[UserId(1), UserId(2)],
                &[jane.clone(), john.clone()],
                &Origin { key: "form:m1".into(), event: "e1".into() },
            )
            .expect("create");
        let Created::New(key) = key else { panic!("a new group: {key:?}") };
        // The same request again never makes a second group.
        let again = |event: &str| {
            store.create_group(
                "Deal team",
                GroupKind::Native,
                UserId(1),
                &[],
                &[],
                &Origin { key: "form:m1".into(), event: event.into() },
            )
        };
        assert_eq!(again("e1").expect("replay"), Created::Replay(key));
        assert_eq!(again("e2").expect("again"), Created::Again(key));
        let g = store.group(key).expect("read").expect("group");
        assert_eq!(
            (g.name.as_str(), g.kind, g.state, g.creator),
            ("Deal team", GroupKind::Native, GroupState::Creating, UserId(1))
        );
        assert_eq!(
            store.advisors(key).expect("advisors"),
            vec![(UserId(1), true), (UserId(2), false)]
        );

        let stream = StreamId::new("room1");
        store.set_group_stream(key, &stream).expect("stream");
        store.set_group_request(key, "req-1").expect("request");
        assert_eq!(
            store.group_by_request("req-1").expect("read").map(|g| g.state),
            Some(GroupState::AwaitingGroup)
        );
        let wa = GroupId("wa-1".into());
        store.set_group_created(key, &wa, Some("https://chat.whatsapp.com/x")).expect("created");
        let g = store.group_by_wa(&wa).expect("read").expect("group");
        assert_eq!(
            (g.state, g.stream, g.invite_link.as_deref()),
            (GroupState::Active, Some(stream), Some("https://chat.whatsapp.com/x"))
        );

        store.set_contact_state(key, &jane, ContactState::Joined).expect("joined");
        store.set_contact_state(key, &john, ContactState::Removed).expect("removed");
        assert!(
            store.is_barred(key, &john).expect("barred")
                && !store.is_barred(key, &jane).expect("not barred")
        );
        // Invited again by mistake: still barred.
        store.set_contact_state(key, &john, ContactState::Invited).expect("state");
        let contacts = store.contacts(key).expect("contacts");
        assert_eq!(
            contacts.iter().map(|c| (c.phone.as_str(), c.state, c.barred)).collect::<Vec<_>>(),
            vec![
                ("+447911123456", ContactState::Joined, false),
                ("+447911123457", ContactState::Invited, true),
            ]
        );
        let err = store
            .conn()
            .expect("conn")
            .execute("DELETE FROM bars", [])
            .expect_err("bars are for ever");
        assert!(err.to_string().contains("never cleared"), "{err}");
        store.set_advisor(key, UserId(2), Some(true)).expect("promote");
        store.set_advisor(key, UserId(1), None).expect("remove");
        assert_eq!(store.advisors(key).expect("advisors"), vec![(UserId(2), true)]);
    }

    #[test]
    fn a_newer_schema_is_refused_and_a_reopen_keeps_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/dir/bot.db");
        let store = SqliteStore::open(&path).expect("open creates dirs");
        store.enqueue_inbound(Source::Symphony, "e1", &json!(1)).expect("insert");
        drop(store);
        let again = SqliteStore::open(&path).expect("reopen");
        assert_eq!(again.count_inbound(Source::Symphony).expect("count"), 1);
        again.conn().expect("conn").pragma_update(None, "user_version", 99).expect("bump");
        drop(again);
        let err = SqliteStore::open(&path).expect_err("newer schema");
        assert!(matches!(err, StoreError::NewerSchema { found: 99, .. }), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bot.db");
        std::fs::write(&path, b"this is not a sqlite database at all, not even close......")
            .expect("write");
        let err = SqliteStore::open(&path).expect_err("corrupt");
        assert!(err.to_string().contains("bot.db"), "{err}");
    }
}
