//! The SQLite backend: one file in WAL mode, numbered migrations against `PRAGMA user_version`,
//! one connection behind a mutex (plenty for one bot instance; statements are short and
//! prepared once).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::repo::SqlTx;
use super::{InboundRow, OutboxRow, Pruned, Source, StateStore, StoreError, Tx, Watermark, now_ms};

/// Numbered migrations; the index + 1 is the schema version it leads to.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_outbox.sql"),
    include_str!("migrations/0003_groups.sql"),
    include_str!("migrations/0004_attempts.sql"),
    include_str!("migrations/0005_relay.sql"),
    include_str!("migrations/0006_health.sql"),
    include_str!("migrations/0007_origin.sql"),
    include_str!("migrations/0008_decision_core.sql"),
    include_str!("migrations/0009_symphony_watermark.sql"),
    include_str!("migrations/0010_contacts_by_bsuid.sql"),
    include_str!("migrations/0011_contact_names.sql"),
    include_str!("migrations/0012_pending_outbox_keys.sql"),
];

/// The due heads of the outbox: read from the heads' partial index, whatever the backlog.
// The queue reads have no `LIMIT ?`: SQLite compiles a statement again each time a bound value
// its plan looked at is bound, and a LIMIT's is, which made the compilation a third of these
// reads' cost. They stream in index order and stop when they have enough.
const CLAIM_SQL: &str =
    "SELECT id FROM outbox WHERE head = 1 AND next_at <= ?1 ORDER BY next_at, id";

const PENDING_SQL: &str = "SELECT id, source, dedupe_key, payload, attempts, last_error
     FROM inbound_events WHERE processed_at IS NULL AND failed_at IS NULL AND id > ?1
     ORDER BY id";

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// … and the health probe's write.
const PROBE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The SQLite store. Cheap to clone.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
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
        conn.set_prepared_statement_cache_capacity(64);
        let version: i64 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::NewerSchema { path: shown.to_owned(), found: version, known });
        }
        for (index, sql) in
            MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0))
        {
            let target = index + 1;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|source| StoreError::Migration { version: target, source })?;
            tx.execute_batch(sql)
                .and_then(|()| tx.pragma_update(None, "user_version", target as i64))
                .and_then(|()| tx.commit())
                .map_err(|source| StoreError::Migration { version: target, source })?;
        }
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    /// The connection. One a panic left locked is taken as it is: the panicking transaction
    /// was rolled back as it unwound (a caught panic must not make the store unusable).
    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        Ok(self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// How SQLite runs the outbox claim (tests: it must use the heads' index).
    #[cfg(test)]
    pub(super) fn claim_plan(&self) -> Result<String, StoreError> {
        self.plan(CLAIM_SQL, params![0])
    }

    /// How SQLite runs the lookups of a key's pending effects: queueing one (is it the head?)
    /// and finishing one (which is next?). Tests: they must use the pending keys' index.
    #[cfg(test)]
    pub(super) fn key_lookup_plans(&self) -> Result<[String; 2], StoreError> {
        Ok([
            self.plan(super::repo::QUEUE_EFFECT_SQL, params!["k", "{}", 0])?,
            self.plan(super::repo::NEXT_HEAD_SQL, params!["k"])?,
        ])
    }

    #[cfg(test)]
    fn plan(&self, sql: &str, args: impl rusqlite::Params) -> Result<String, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let rows = stmt.query_map(args, |r| r.get::<_, String>(3))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?.join("; "))
    }

    /// How many times the queue reads (the outbox claim, the pending events) were compiled
    /// again when run with each of `values` (tests: they must be prepared once).
    #[cfg(test)]
    pub(super) fn queue_reads_reprepared(&self, values: &[i64]) -> Result<i32, StoreError> {
        let conn = self.conn()?;
        let mut total = 0;
        for sql in [CLAIM_SQL, PENDING_SQL] {
            let mut stmt = conn.prepare(sql)?;
            for v in values {
                let mut rows = stmt.query(params![v])?;
                while rows.next()?.is_some() {}
            }
            total += stmt.get_status(rusqlite::StatementStatus::RePrepare);
        }
        Ok(total)
    }

    /// Runs raw SQL (tests only: to simulate what another process would do to the file).
    #[cfg(test)]
    pub(super) fn raw(&self, sql: &str) -> Result<usize, StoreError> {
        Ok(self.conn()?.execute(sql, [])?)
    }
}

/// The one bot instance a SQLite store may have: held (an exclusive lock on `<store>.lock`,
/// which the system lets go when the process ends, however it ends) while the bot runs.
/// Admin commands (`events`, `check-config`) open the store without it.
#[derive(Debug)]
pub struct InstanceLock {
    _file: std::fs::File,
}

impl InstanceLock {
    /// Takes the lock, or says that another instance runs on this store.
    pub fn acquire(store: &Path) -> Result<Self, StoreError> {
        let mut name = store.as_os_str().to_owned();
        name.push(".lock");
        let path = std::path::PathBuf::from(name);
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Lock { path: shown.clone(), source })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(StoreError::InUse { path: store.display().to_string() })
            }
            Err(std::fs::TryLockError::Error(source)) => {
                Err(StoreError::Lock { path: shown, source })
            }
        }
    }
}

/// Inserts an inbound event unless its `(source, key)` is known.
pub(super) fn insert_inbound(
    conn: &Connection,
    source: Source,
    dedupe_key: &str,
    text: &str,
) -> Result<bool, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO inbound_events (source, dedupe_key, payload, received_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![source.as_str(), dedupe_key, text, now_ms()])?;
    Ok(inserted == 1)
}

/// The rows `stmt` gives, `limit` at most (the query stops there).
fn inbound_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    args: impl rusqlite::Params,
    limit: usize,
) -> Result<Vec<InboundRow>, StoreError> {
    let rows = stmt.query_map(args, |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        if out.len() >= limit {
            break;
        }
        let (id, source, dedupe_key, payload, attempts, last_error) = row?;
        let Some(source) = Source::parse(&source) else {
            tracing::warn!(id, source, "skipping inbound event of unknown source");
            continue;
        };
        out.push(InboundRow {
            id,
            source,
            dedupe_key,
            payload: serde_json::from_str(&payload)?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            last_error,
        });
    }
    Ok(out)
}

impl StateStore for SqliteStore {
    fn enqueue_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let text = serde_json::to_string(payload)?;
        insert_inbound(&*self.conn()?, source, dedupe_key, &text)
    }

    fn pending_inbound(&self, after: i64, limit: usize) -> Result<Vec<InboundRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(PENDING_SQL)?;
        inbound_rows(&mut stmt, params![after], limit)
    }

    fn has_inbound(&self, source: Source, dedupe_key: &str) -> Result<bool, StoreError> {
        let found = self
            .conn()?
            .prepare_cached("SELECT 1 FROM inbound_events WHERE source = ?1 AND dedupe_key = ?2")?
            .query_row(params![source.as_str(), dedupe_key], |_| Ok(()))
            .optional()?;
        Ok(found.is_some())
    }

    fn count_inbound(&self, source: Source) -> Result<u64, StoreError> {
        let n: i64 = self.conn()?.query_row(
            "SELECT COUNT(*) FROM inbound_events WHERE source = ?1",
            params![source.as_str()],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn inbound_failed(&self, id: i64, error: &str, set_aside: bool) -> Result<(), StoreError> {
        self.conn()?
            .prepare_cached(
                "UPDATE inbound_events SET attempts = attempts + 1, last_error = ?2,
                        failed_at = CASE WHEN ?3 THEN ?4 ELSE failed_at END
                 WHERE id = ?1 AND processed_at IS NULL",
            )?
            .execute(params![id, error, set_aside, now_ms()])?;
        Ok(())
    }

    fn failed_inbound(&self, limit: usize) -> Result<Vec<InboundRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, source, dedupe_key, payload, attempts, last_error FROM inbound_events
             WHERE failed_at IS NOT NULL ORDER BY id LIMIT ?1",
        )?;
        inbound_rows(&mut stmt, params![limit as i64], limit)
    }

    fn retry_inbound(&self, id: Option<i64>) -> Result<u64, StoreError> {
        let conn = self.conn()?;
        let changed = match id {
            Some(id) => conn.execute(
                "UPDATE inbound_events SET failed_at = NULL, attempts = 0
                 WHERE id = ?1 AND failed_at IS NOT NULL",
                [id],
            )?,
            None => conn.execute(
                "UPDATE inbound_events SET failed_at = NULL, attempts = 0 WHERE failed_at IS NOT NULL",
                [],
            )?,
        };
        Ok(changed as u64)
    }

    fn count_failed_inbound(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn()?.query_row(
            "SELECT COUNT(*) FROM inbound_events WHERE failed_at IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn due_outbox(&self, limit: usize, busy: &[i64]) -> Result<Vec<OutboxRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let conn = self.conn()?;
        // The heads first, without their effects: the busy heads (being performed) are still
        // heads, and reading their JSON only to skip it was most of this query's cost.
        let mut heads = Vec::with_capacity(limit);
        {
            let mut stmt = conn.prepare_cached(CLAIM_SQL)?;
            let mut rows = stmt.query(params![now_ms()])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                if busy.contains(&id) {
                    continue;
                }
                heads.push(id);
                if heads.len() == limit {
                    break;
                }
            }
        }
        let mut stmt =
            conn.prepare_cached("SELECT order_key, effect, attempts FROM outbox WHERE id = ?1")?;
        let mut out = Vec::with_capacity(heads.len());
        for id in heads {
            let (order_key, effect, attempts) = stmt.query_row([id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })?;
            out.push(OutboxRow {
                id,
                order_key,
                effect: serde_json::from_str(&effect)?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            });
        }
        Ok(out)
    }

    fn next_outbox_due(&self) -> Result<Option<i64>, StoreError> {
        let next: Option<i64> = self
            .conn()?
            .prepare_cached("SELECT MIN(next_at) FROM outbox WHERE head = 1")?
            .query_row([], |r| r.get(0))?;
        Ok(next)
    }

    fn outbox_retry(
        &self,
        id: i64,
        after: std::time::Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        let after = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        self.conn()?
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE id = ?1",
            )?
            .execute(params![id, now_ms().saturating_add(after), error])?;
        Ok(())
    }

    fn outbox_counts(&self) -> Result<(u64, u64), StoreError> {
        let conn = self.conn()?;
        let pending: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM outbox WHERE done_at IS NULL AND failed_at IS NULL",
            )?
            .query_row([], |r| r.get(0))?;
        let failed: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM outbox WHERE failed_at IS NOT NULL")?
            .query_row([], |r| r.get(0))?;
        Ok((u64::try_from(pending).unwrap_or(0), u64::try_from(failed).unwrap_or(0)))
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

    fn prune(&self, before_ms: i64) -> Result<Pruned, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let events = tx.execute(
            "DELETE FROM inbound_events WHERE processed_at IS NOT NULL AND processed_at < ?1",
            [before_ms],
        )?;
        let effects = tx.execute(
            "DELETE FROM outbox WHERE (done_at IS NOT NULL AND done_at < ?1)
                                   OR (failed_at IS NOT NULL AND failed_at < ?1)",
            [before_ms],
        )?;
        let messages = tx.execute("DELETE FROM wa_messages WHERE created_at < ?1", [before_ms])?;
        tx.commit()?;
        Ok(Pruned { events: events as u64, effects: effects as u64, messages: messages as u64 })
    }

    fn transaction(
        &self,
        body: &mut dyn FnMut(&dyn Tx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if body(&SqlTx(&tx))? {
            tx.commit()?;
        }
        Ok(())
    }

    fn read_transaction(
        &self,
        body: &mut dyn FnMut(&dyn Tx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        if body(&SqlTx(&tx))? {
            tx.commit()?;
        }
        Ok(())
    }

    // [feed-catchup]
    fn symphony_watermark(&self) -> Result<Option<Watermark>, StoreError> {
        let found = self
            .conn()?
            .query_row("SELECT latest_ms, first_ms FROM symphony_watermark WHERE id = 1", [], |r| {
                Ok(Watermark { latest_ms: r.get(0)?, first_ms: r.get(1)? })
            })
            .optional()?;
        Ok(found)
    }

    fn advance_symphony_watermark(&self, at_ms: i64) -> Result<(), StoreError> {
        advance_watermark(&*self.conn()?, at_ms)
    }
}

/// Moves the watermark to `at_ms` unless it is past it already.
pub(super) fn advance_watermark(conn: &Connection, at_ms: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO symphony_watermark (id, latest_ms, first_ms) VALUES (1, ?1, ?1)
         ON CONFLICT (id) DO UPDATE SET latest_ms = MAX(latest_ms, excluded.latest_ms)",
    )?
    .execute([at_ms])?;
    Ok(())
}
