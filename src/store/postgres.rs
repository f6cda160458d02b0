//! The PostgreSQL backend, for several bot instances on one database (DESIGN.md §7): a pooled
//! `tokio-postgres` client (TLS through rustls) driven by the store's own small runtime, the
//! same SQL semantics as the SQLite store, numbered migrations run once under an advisory lock.
//!
//! The store traits are synchronous and are called from anywhere (the bot's tokio workers,
//! current-thread test runtimes, plain threads): each call is spawned onto the store's runtime
//! and its answer awaited on a std channel, never with `block_on` on the caller's runtime. A
//! transaction holds one pooled connection for its whole closure; each call inside it is one
//! round trip on that connection, with statements prepared once per connection.

use std::cell::Cell;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::{
    Claim, GroupRepo, InboundRow, OutboxRow, Pruned, QueuedEffect, Source, StateStore, StoreError,
    Tx, Watermark, now_ms,
};
use crate::domain::{
    ContactRecord, ContactState, Created, E164, GroupId, GroupKey, GroupKind, GroupRecord,
    GroupState, Origin, StreamId, UserId, WaMessageRecord,
};

/// Numbered migrations; the index + 1 is the schema version it leads to.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/pg/0001_init.sql"),
    include_str!("migrations/pg/0002_key_claims.sql"),
    include_str!("migrations/pg/0003_outbox_leases.sql"),
];

/// The advisory lock key that serialises migrations across instances ("wagb-mig" in ASCII).
const MIGRATION_LOCK: i64 = 0x7761_6762_2d6d_6967;

/// How long a caller waits for a free pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an outbox head handed to this instance stays its own: other instances skip it
/// until then (a dead instance's heads are performed by another one after this).
const OUTBOX_LEASE: Duration = Duration::from_secs(30);
/// How long one call may wait for its answer, whatever happens (the pool's wait and the
/// statement timeout are far shorter; this catches a connection that hangs).
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// Rows deleted per statement when pruning.
const PRUNE_SLICE: u64 = 5_000;
/// How long the health probe may take, connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach the database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/db?sslmode=require` (libpq's URL form). A
    /// `sslrootcert=<file>` parameter names the PEM CA certificates to trust instead of the
    /// system's (a managed database's own CA).
    pub url: SecretString,
    /// Pooled connections per instance.
    pub pool_size: usize,
    /// `statement_timeout` set on every connection.
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redacted_url(self.url.expose_secret()))
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl PostgresOptions {
    /// Options with the defaults (8 connections, 5 s statement timeout).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            pool_size: 8,
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// A PostgreSQL URL as it may be shown: the password and the query (which may carry one too,
/// `password=`) left out. Works on text that does not parse as a URL as well.
pub fn redacted_url(url: &str) -> String {
    let url = url.trim();
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    // Everything up to the last `@` is the user and password, whatever characters the
    // password has (even unencoded ones, `/` or `@`).
    match rest.rsplit_once('@') {
        Some((userinfo, host_and_path)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host_and_path}"),
            None => format!("{scheme}://{userinfo}@{host_and_path}"),
        },
        None => format!("{scheme}://{rest}"),
    }
}

/// Whether `url` names a PostgreSQL server (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// A SQL parameter the store's runtime can own.
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

macro_rules! params {
    ($($p:expr),* $(,)?) => { vec![$(Box::new($p) as Param),*] };
}

/// The PostgreSQL store. Each handle is one instance's view: its own runtime and pool.
pub struct PostgresStore {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    /// Where it is, for messages (no password).
    at: String,
    /// This handle's identity in claims and leases: random, so each instance (each start) is
    /// its own owner.
    owner: String,
    /// How long a head handed out by `due_outbox` stays this instance's.
    outbox_lease: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("at", &self.at).finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropped anywhere, inside another runtime too: never block here.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Splits `sslrootcert=` (ours to read) from the parameters tokio-postgres understands.
fn split_url(url: &str) -> (String, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut root = None;
    let mut kept = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key == "sslrootcert" {
            root = Some(PathBuf::from(value.as_ref()));
        } else {
            kept.append_pair(&key, &value);
        }
    }
    let kept = kept.finish();
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{kept}") };
    (url, root)
}

/// The TLS setup: the platform's trusted roots, or only the CA file the URL names.
fn tls(
    root: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use rustls_platform_verifier::BuilderVerifierExt;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(StoreError::Tls)?;
    let config = match root {
        Some(path) => {
            let shown = path.display().to_string();
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| StoreError::CaFile { path: shown.clone(), reason: e.to_string() })?;
            for cert in certs {
                let cert = cert.map_err(|e| StoreError::CaFile {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                roots.add(cert).map_err(StoreError::Tls)?;
            }
            if roots.is_empty() {
                return Err(StoreError::CaFile {
                    path: shown,
                    reason: "no certificate in it".into(),
                });
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder.with_platform_verifier().map_err(StoreError::Tls)?.with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A PostgreSQL error, shown with what the server said (tokio-postgres alone says "db error").
#[derive(Debug)]
pub struct PgError(pub tokio_postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(db) = self.0.as_db_error() {
            write!(f, "{} {}: {}", db.severity(), db.code().code(), db.message())?;
            if let Some(detail) = db.detail() {
                write!(f, " ({detail})")?;
            }
            return Ok(());
        }
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(&self.0);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A duration in ms as a SQL parameter.
fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// What a PostgreSQL error means for the caller.
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            return StoreError::Conflict(PgError(e));
        }
        if *code == SqlState::QUERY_CANCELED {
            return StoreError::Timeout(PgError(e));
        }
        if code.code().starts_with("08")
            || code.code().starts_with("57P")
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            return StoreError::Unavailable(PgError(e).to_string());
        }
        return StoreError::Postgres(PgError(e));
    }
    if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        return StoreError::Unavailable(PgError(e).to_string());
    }
    StoreError::Postgres(PgError(e))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        pg_error(e)
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => match pg_error(e) {
            // Could not connect at all.
            StoreError::Postgres(e) => StoreError::Unavailable(e.to_string()),
            other => other,
        },
        PoolError::Timeout(_) => {
            StoreError::Unavailable("no connection could be had in time".into())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Runs one statement on a connection: prepared once per connection, then executed.
async fn execute_on(
    c: &deadpool_postgres::ClientWrapper,
    sql: &str,
    params: &[Param],
) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    Ok(c.execute(&statement, &refs).await?)
}

async fn query_on(
    c: &deadpool_postgres::ClientWrapper,
    sql: &str,
    params: &[Param],
) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    Ok(c.query(&statement, &refs).await?)
}

/// Brings the schema up to date, once across instances: under a transaction-scoped advisory
/// lock, so a second instance starting meanwhile waits, then finds nothing to do. Returns the
/// schema version.
async fn migrate(c: &mut deadpool_postgres::ClientWrapper, at: &str) -> Result<i64, StoreError> {
    let known = MIGRATIONS.len() as i64;
    let tx = c.transaction().await?;
    // Waiting for another instance's migration, or building an index on a large table, may
    // take longer than statements usually may.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let version: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
        .await?
        .try_get(0)?;
    if version > known {
        return Err(StoreError::NewerSchema { path: at.to_owned(), found: version, known });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        let target = index + 1;
        let failed = |e| StoreError::PgMigration { version: target, source: PgError(e) };
        tx.batch_execute(sql).await.map_err(failed)?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&(target as i64)])
            .await
            .map_err(failed)?;
    }
    tx.commit().await?;
    Ok(known)
}

impl PostgresStore {
    /// Connects (a pool of `pool_size`) and checks the URL, TLS and credentials with a first
    /// connection; the schema is left as it is (see [`PostgresStore::open`]).
    pub fn connect(options: &PostgresOptions) -> Result<Self, StoreError> {
        let raw = options.url.expose_secret();
        let at = redacted_url(raw);
        if !is_postgres_url(raw) {
            return Err(StoreError::BadUrl {
                at,
                reason: "not a postgres:// or postgresql:// URL".into(),
            });
        }
        let (url, root) = split_url(raw);
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| {
            // The parser's message names the option, never its value.
            StoreError::BadUrl { at: at.clone(), reason: PgError(e).to_string() }
        })?;
        let timeout_ms = options.statement_timeout.as_millis();
        let mut session = format!("-c statement_timeout={timeout_ms}");
        if let Some(given) = config.get_options() {
            session = format!("{given} {session}");
        }
        config.options(&session);
        if config.get_application_name().is_none() {
            config.application_name("wa-groups-bot");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database that vanishes without closing its connections (a failover, a network cut)
        // is noticed within about a minute, not the system's two hours.
        let given = |key: &str| url.contains(&format!("{key}="));
        if !given("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if !given("keepalives_interval") {
            config.keepalives_interval(Duration::from_secs(10));
        }
        if !given("keepalives_retries") {
            config.keepalives_retries(3);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        // libpq's connect_timeout covers the whole connection (TCP, TLS, authentication);
        // tokio-postgres's only the TCP part: the pool bounds the rest.
        let establish = config.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT);
        let tls = tls(root.as_deref())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wagb-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Runtime(e.to_string()))?;
        let handle = runtime.handle().clone();
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(establish))
            .recycle_timeout(Some(establish))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Runtime(e.to_string()))?;
        let owner = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let store =
            Self { runtime: Some(runtime), handle, pool, at, owner, outbox_lease: OUTBOX_LEASE };
        // A first connection: the URL, TLS and credentials are checked here.
        let pool = store.pool.clone();
        store
            .run(async move {
                let _first = pool.get().await.map_err(pool_error)?;
                Ok(())
            })
            .map_err(|e| store.connect_error(e))?;
        Ok(store)
    }

    /// Connects (see [`PostgresStore::connect`]) and brings the schema up to date, once across
    /// instances (under an advisory lock: a second instance starting meanwhile waits, then finds
    /// nothing to do).
    pub fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let store = Self::connect(options)?;
        let pool = store.pool.clone();
        let shown = store.at.clone();
        // Without the call timeout: another instance may be migrating a large table.
        store
            .run_within(None, async move {
                let mut c = pool.get().await.map_err(pool_error)?;
                migrate(&mut c, &shown).await
            })
            .map_err(|e| store.connect_error(e))?;
        Ok(store)
    }

    fn connect_error(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Unavailable(reason) => StoreError::Connect { at: self.at.clone(), reason },
            other => other,
        }
    }

    /// The schema version the database is at (0 before the first start), without migrating
    /// (`check-config --connect`).
    pub fn schema_version_unmigrated(&self) -> Result<i64, StoreError> {
        let exists =
            self.query("SELECT to_regclass('schema_migrations') IS NOT NULL", params![])?;
        match exists.first().map(|r| r.try_get::<_, bool>(0)).transpose()? {
            Some(true) => self.schema_version(),
            _ => Ok(0),
        }
    }

    /// The server's version (`SHOW server_version`).
    pub fn server_version(&self) -> Result<String, StoreError> {
        let rows = self.query("SELECT current_setting('server_version')", params![])?;
        Ok(rows.first().map(|r| r.try_get::<_, String>(0)).transpose()?.unwrap_or_default())
    }

    /// Another outbox lease than the default 30 s (tests).
    #[doc(hidden)]
    pub fn with_outbox_lease(mut self, lease: Duration) -> Self {
        self.outbox_lease = lease;
        self
    }

    /// This handle's owner id in claims.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Where the store is (no password).
    pub fn location(&self) -> &str {
        &self.at
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let rows =
            self.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", params![])?;
        Ok(rows.first().map(|r| r.try_get::<_, i64>(0)).transpose()?.unwrap_or(0))
    }

    /// The schema version this build knows.
    pub fn known_schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// Runs `work` on the store's runtime and waits for its answer on this thread, at most
    /// [`CALL_TIMEOUT`]: a connection that hangs (a database gone without a word) never holds
    /// a caller for ever.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.run_within(Some(CALL_TIMEOUT), work)
    }

    fn run_within<T: Send + 'static>(
        &self,
        limit: Option<Duration>,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let answer = match limit {
                Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(format!(
                        "no answer from the database within {} s",
                        limit.as_secs()
                    )))
                }),
                None => work.await,
            };
            let _ = tx.send(answer);
        });
        rx.recv().map_err(|_| StoreError::Runtime("the store's runtime stopped".into()))?
    }

    fn execute(&self, sql: &str, params: Vec<Param>) -> Result<u64, StoreError> {
        let pool = self.pool.clone();
        let sql = sql.to_owned();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            execute_on(&c, &sql, &params).await
        })
    }

    pub(super) fn query(&self, sql: &str, params: Vec<Param>) -> Result<Vec<Row>, StoreError> {
        let pool = self.pool.clone();
        let sql = sql.to_owned();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            query_on(&c, &sql, &params).await
        })
    }

    pub(super) fn count(&self, sql: &str, params: Vec<Param>) -> Result<u64, StoreError> {
        let rows = self.query(sql, params)?;
        let n: i64 = match rows.first() {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn run_transaction(
        &self,
        begin: &'static str,
        body: &mut dyn FnMut(&dyn Tx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        // The connection is checked out, and the transaction begun, with its first statement
        // (one round trip for both); a body that runs no statement costs nothing.
        let tx = PgTx {
            store: self,
            begin,
            conn: std::cell::RefCell::new(None),
            failed: Cell::new(false),
        };
        let outcome = body(&tx);
        let statement_failed = tx.failed.get();
        match outcome {
            Ok(true) if !statement_failed => tx.finish("COMMIT"),
            Ok(true) => {
                tx.finish("ROLLBACK")?;
                Err(StoreError::RolledBack)
            }
            Ok(false) => tx.finish("ROLLBACK"),
            Err(e) => {
                // The body's error is what the caller needs; a failed rollback only discards
                // the connection.
                let _ = tx.finish("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Runs raw SQL (tests: what another process or an administrator would do).
    #[doc(hidden)]
    pub fn raw(&self, sql: &str) -> Result<u64, StoreError> {
        let pool = self.pool.clone();
        let sql = sql.to_owned();
        self.run(async move {
            let c = pool.get().await.map_err(pool_error)?;
            Ok(c.execute(sql.as_str(), &[]).await?)
        })
    }

    /// The session's `statement_timeout` as the server reports it (tests).
    #[doc(hidden)]
    pub fn session_setting(&self, name: &str) -> Result<String, StoreError> {
        let rows = self.query("SELECT current_setting($1)", params![name.to_owned()])?;
        Ok(rows.first().map(|r| r.try_get::<_, String>(0)).transpose()?.unwrap_or_default())
    }
}

/// One transaction on one pooled connection. A connection whose transaction was not ended
/// cleanly (a panic in the body, a failed rollback) is detached from the pool and closed, so
/// that no open transaction is ever handed to someone else.
struct PgTx<'s> {
    store: &'s PostgresStore,
    /// How the transaction begins (sent with its first statement).
    begin: &'static str,
    /// The connection, once the first statement ran.
    conn: std::cell::RefCell<Option<Held>>,
    /// A statement failed: PostgreSQL aborted the transaction, so it cannot commit.
    failed: Cell<bool>,
}

type Held = Arc<tokio::sync::Mutex<Object>>;

/// What a statement answered.
enum Answer {
    Affected(u64),
    Rows(Vec<Row>),
}

impl PgTx<'_> {
    /// Runs one statement in the transaction.
    fn call(&self, sql: &str, params: Vec<Param>, rows: bool) -> Result<Answer, StoreError> {
        let mut answers = self.pipeline(vec![(sql.to_owned(), params, rows)])?;
        answers.pop().ok_or_else(|| StoreError::BadRow("no answer".into()))
    }

    /// Runs statements in the transaction, in order, in one round trip (pipelined): on its
    /// connection, or (the first ones) checking a connection out and beginning the transaction
    /// in the same round trip. The first failure is returned (PostgreSQL then refuses the rest
    /// of the transaction).
    fn pipeline(
        &self,
        statements: Vec<(String, Vec<Param>, bool)>,
    ) -> Result<Vec<Answer>, StoreError> {
        async fn all(
            c: &deadpool_postgres::ClientWrapper,
            begin: Option<&'static str>,
            statements: &[(String, Vec<Param>, bool)],
        ) -> Result<Vec<Answer>, StoreError> {
            // Prepared first (once per connection; usually cached already): the requests below
            // are then sent in order, each as it is first polled, and run in that order.
            let mut prepared = Vec::with_capacity(statements.len());
            for (sql, _, _) in statements {
                prepared.push(c.prepare_cached(sql).await?);
            }
            // In chunks that `join_all` polls in order (it does up to 30 futures itself).
            let mut begin = begin;
            let mut out = Vec::with_capacity(statements.len());
            for (chunk, prepared) in statements.chunks(30).zip(prepared.chunks(30)) {
                let began = async {
                    match begin.take() {
                        Some(begin) => c.batch_execute(begin).await.map_err(StoreError::from),
                        None => Ok(()),
                    }
                };
                let answers = futures::future::join_all(chunk.iter().zip(prepared).map(
                    |((_, params, rows), statement)| async move {
                        let refs: Vec<&(dyn ToSql + Sync)> =
                            params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
                        Ok::<_, StoreError>(match rows {
                            true => Answer::Rows(c.query(statement, &refs).await?),
                            false => Answer::Affected(c.execute(statement, &refs).await?),
                        })
                    },
                ));
                let (began, answers) = tokio::join!(began, answers);
                began?;
                for answer in answers {
                    out.push(answer?);
                }
            }
            Ok(out)
        }
        let held = self.conn.borrow().clone();
        let result = match held {
            Some(conn) => self.store.run(async move {
                let c = conn.lock().await;
                all(&c, None, &statements).await
            }),
            None => {
                let (pool, begin) = (self.store.pool.clone(), self.begin);
                let first = self.store.run(async move {
                    let c = pool.get().await.map_err(pool_error)?;
                    // BEGIN is sent first, the statements right behind it.
                    let answers = all(&c, Some(begin), &statements).await;
                    Ok((c, answers))
                });
                match first {
                    Err(e) => Err(e),
                    Ok((c, answers)) => {
                        *self.conn.borrow_mut() = Some(Arc::new(tokio::sync::Mutex::new(c)));
                        answers
                    }
                }
            }
        };
        if result.is_err() {
            self.failed.set(true);
        }
        result
    }

    fn execute(&self, sql: &str, params: Vec<Param>) -> Result<u64, StoreError> {
        match self.call(sql, params, false)? {
            Answer::Affected(n) => Ok(n),
            Answer::Rows(rows) => Ok(rows.len() as u64),
        }
    }

    fn query(&self, sql: &str, params: Vec<Param>) -> Result<Vec<Row>, StoreError> {
        match self.call(sql, params, true)? {
            Answer::Rows(rows) => Ok(rows),
            Answer::Affected(_) => Ok(Vec::new()),
        }
    }

    fn query_opt(&self, sql: &str, params: Vec<Param>) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Commits or rolls back, then hands the connection back to the pool.
    fn finish(self, end: &'static str) -> Result<(), StoreError> {
        let Some(conn) = self.conn.borrow_mut().take() else { return Ok(()) };
        self.store.run(async move {
            let ended = {
                let c = conn.lock().await;
                c.batch_execute(end).await
            };
            match (ended, Arc::try_unwrap(conn)) {
                (Ok(()), _back_to_the_pool) => Ok(()),
                (Err(e), Ok(conn)) => {
                    // Its state is unknown: closed, never handed out again.
                    drop(Object::take(conn.into_inner()));
                    Err(e.into())
                }
                (Err(e), Err(_)) => Err(e.into()),
            }
        })
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        // Still holding the connection: the transaction was never ended (a panic). Close it.
        if let Some(conn) = self.conn.get_mut().take()
            && let Ok(conn) = Arc::try_unwrap(conn)
        {
            drop(Object::take(conn.into_inner()));
        }
    }
}

const INSERT_INBOUND: &str = "INSERT INTO inbound_events (source, dedupe_key, payload, received_at)
     VALUES ($1, $2, $3, $4) ON CONFLICT (source, dedupe_key) DO NOTHING";

fn inbound_params(source: Source, dedupe_key: &str, payload: String) -> Vec<Param> {
    params![source.as_str().to_owned(), dedupe_key.to_owned(), payload, now_ms()]
}

fn inbound_rows(rows: Vec<Row>) -> Result<Vec<InboundRow>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let source: String = row.try_get(1)?;
        let Some(source) = Source::parse(&source) else {
            tracing::warn!(id, source, "skipping inbound event of unknown source");
            continue;
        };
        let payload: String = row.try_get(3)?;
        let attempts: i64 = row.try_get(4)?;
        out.push(InboundRow {
            id,
            source,
            dedupe_key: row.try_get(2)?,
            payload: serde_json::from_str(&payload)?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            last_error: row.try_get(5)?,
        });
    }
    Ok(out)
}

/// Leases the due heads of the outbox to this instance, earliest first: heads another
/// instance leased until later are left alone, and so are heads another instance is leasing
/// right now (`SKIP LOCKED`); this instance's busy heads are not handed out again.
const CLAIM_SQL: &str = "WITH due AS (
         SELECT id FROM outbox
         WHERE head AND next_at <= $1 AND NOT (id = ANY($3))
           AND (lease_until IS NULL OR lease_until < clock_timestamp() OR lease_owner = $4)
         ORDER BY next_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
     UPDATE outbox o SET lease_owner = $4,
                         lease_until = clock_timestamp() + $5::FLOAT8 * INTERVAL '1 millisecond'
     FROM due WHERE o.id = due.id
     RETURNING o.id, o.order_key, o.effect, o.attempts, o.next_at";

/// Serialises the writers of one order key (queueing and finishing effects) until commit, so
/// that each key always has exactly one head, whichever instances write it.
const LOCK_ORDER_KEY: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))";

impl StateStore for PostgresStore {
    fn enqueue_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let payload = serde_json::to_string(payload)?;
        Ok(self.execute(INSERT_INBOUND, inbound_params(source, dedupe_key, payload))? == 1)
    }

    fn pending_inbound(&self, after: i64, limit: usize) -> Result<Vec<InboundRow>, StoreError> {
        inbound_rows(self.query(
            "SELECT id, source, dedupe_key, payload, attempts, last_error FROM inbound_events
             WHERE processed_at IS NULL AND failed_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
            params![after, limit as i64],
        )?)
    }

    fn pending_inbound_except(
        &self,
        after: i64,
        limit: usize,
        skip: &[i64],
    ) -> Result<Vec<InboundRow>, StoreError> {
        // `NOT IN (subquery)` is hashed: the held ids are looked up, not scanned, per row.
        inbound_rows(self.query(
            "SELECT id, source, dedupe_key, payload, attempts, last_error FROM inbound_events
             WHERE processed_at IS NULL AND failed_at IS NULL AND id > $1
               AND id NOT IN (SELECT unnest($3::BIGINT[]))
             ORDER BY id LIMIT $2",
            params![after, limit as i64, skip.to_vec()],
        )?)
    }

    fn has_inbound(&self, source: Source, dedupe_key: &str) -> Result<bool, StoreError> {
        Ok(!self
            .query(
                "SELECT 1 FROM inbound_events WHERE source = $1 AND dedupe_key = $2",
                params![source.as_str().to_owned(), dedupe_key.to_owned()],
            )?
            .is_empty())
    }

    fn count_inbound(&self, source: Source) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM inbound_events WHERE source = $1",
            params![source.as_str().to_owned()],
        )
    }

    fn inbound_failed(&self, id: i64, error: &str, set_aside: bool) -> Result<(), StoreError> {
        self.execute(
            "UPDATE inbound_events SET attempts = attempts + 1, last_error = $2,
                    failed_at = CASE WHEN $3 THEN $4::BIGINT ELSE failed_at END
             WHERE id = $1 AND processed_at IS NULL",
            params![id, error.to_owned(), set_aside, now_ms()],
        )?;
        Ok(())
    }

    fn failed_inbound(&self, limit: usize) -> Result<Vec<InboundRow>, StoreError> {
        inbound_rows(self.query(
            "SELECT id, source, dedupe_key, payload, attempts, last_error FROM inbound_events
             WHERE failed_at IS NOT NULL ORDER BY id LIMIT $1",
            params![limit as i64],
        )?)
    }

    fn retry_inbound(&self, id: Option<i64>) -> Result<u64, StoreError> {
        match id {
            Some(id) => self.execute(
                "UPDATE inbound_events SET failed_at = NULL, attempts = 0
                 WHERE id = $1 AND failed_at IS NOT NULL",
                params![id],
            ),
            None => self.execute(
                "UPDATE inbound_events SET failed_at = NULL, attempts = 0 WHERE failed_at IS NOT NULL",
                params![],
            ),
        }
    }

    fn count_failed_inbound(&self) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM inbound_events WHERE failed_at IS NOT NULL", params![])
    }

    fn due_outbox(&self, limit: usize, busy: &[i64]) -> Result<Vec<OutboxRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self.query(
            CLAIM_SQL,
            params![
                now_ms(),
                limit as i64,
                busy.to_vec(),
                self.owner.clone(),
                millis(self.outbox_lease)
            ],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let effect: String = row.try_get(2)?;
            let attempts: i64 = row.try_get(3)?;
            let next_at: i64 = row.try_get(4)?;
            out.push((
                next_at,
                OutboxRow {
                    id: row.try_get(0)?,
                    order_key: row.try_get(1)?,
                    effect: serde_json::from_str(&effect)?,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                },
            ));
        }
        out.sort_by_key(|(next_at, row)| (*next_at, row.id));
        Ok(out.into_iter().map(|(_, row)| row).collect())
    }

    fn next_outbox_due(&self) -> Result<Option<i64>, StoreError> {
        // A leased head (this instance's busy ones too) is due again when its lease ends.
        let rows = self.query(
            "SELECT MIN(CASE WHEN lease_until > clock_timestamp()
                             THEN GREATEST(next_at,
                                           (EXTRACT(EPOCH FROM lease_until) * 1000)::BIGINT)
                             ELSE next_at END)
             FROM outbox WHERE head",
            params![],
        )?;
        Ok(rows.first().map(|r| r.try_get::<_, Option<i64>>(0)).transpose()?.flatten())
    }

    fn outbox_retry(&self, id: i64, after: Duration, error: &str) -> Result<(), StoreError> {
        // Given back: whichever instance finds it due next performs it.
        let after = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        self.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = $2, last_error = $3,
                               lease_owner = NULL, lease_until = NULL
             WHERE id = $1",
            params![id, now_ms().saturating_add(after), error.to_owned()],
        )?;
        Ok(())
    }

    fn outbox_counts(&self) -> Result<(u64, u64), StoreError> {
        let rows = self.query(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE done_at IS NULL AND failed_at IS NULL),
                    (SELECT COUNT(*) FROM outbox WHERE failed_at IS NOT NULL)",
            params![],
        )?;
        let Some(row) = rows.first() else { return Ok((0, 0)) };
        let (pending, failed): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok((u64::try_from(pending).unwrap_or(0), u64::try_from(failed).unwrap_or(0)))
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        // A health probe must answer quickly, whatever holds the database up.
        let pool = self.pool.clone();
        self.run(async move {
            let probe = async {
                let c = pool.get().await.map_err(pool_error)?;
                execute_on(
                    &c,
                    "INSERT INTO health_probe (id, probed_at) VALUES (1, $1)
                     ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
                    &[Box::new(now_ms()) as Param],
                )
                .await
            };
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(done) => done.map(|_| ()),
                Err(_) => Err(StoreError::Unavailable(format!(
                    "the write probe took longer than {} s",
                    PROBE_TIMEOUT.as_secs()
                ))),
            }
        })
    }

    fn prune(&self, before_ms: i64) -> Result<Pruned, StoreError> {
        // In slices, each its own statement: a large backlog never runs into the statement
        // timeout, and other instances' work goes on between slices.
        let slices = |table: &str, finished: &str| -> Result<u64, StoreError> {
            let sql = format!(
                "WITH gone AS (DELETE FROM {table} WHERE ctid IN
                     (SELECT ctid FROM {table} WHERE {finished} LIMIT {PRUNE_SLICE})
                     RETURNING 1)
                 SELECT COUNT(*) FROM gone"
            );
            let mut total = 0;
            loop {
                let n = self.count(&sql, params![before_ms])?;
                total += n;
                if n < PRUNE_SLICE {
                    return Ok(total);
                }
            }
        };
        Ok(Pruned {
            events: slices("inbound_events", "processed_at IS NOT NULL AND processed_at < $1")?,
            effects: slices(
                "outbox",
                "(done_at IS NOT NULL AND done_at < $1) OR (failed_at IS NOT NULL AND failed_at < $1)",
            )?,
            messages: slices("wa_messages", "created_at < $1")?,
        })
    }

    fn transaction(
        &self,
        body: &mut dyn FnMut(&dyn Tx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.run_transaction("BEGIN", body)
    }

    fn read_transaction(
        &self,
        body: &mut dyn FnMut(&dyn Tx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        // One snapshot for the whole read; nothing is locked.
        self.run_transaction("BEGIN ISOLATION LEVEL REPEATABLE READ", body)
    }

    fn shared(&self) -> bool {
        true
    }

    fn claim_key(&self, key: &str, ttl: Duration) -> Result<Option<Claim>, StoreError> {
        // Taken when free or expired (a new token), renewed when ours (the same token). Another
        // instance's transaction holding the claim row (a decision in progress, fenced by
        // `hold_claim`) makes this wait for its commit, then see the extended expiry.
        let rows = self.query(
            "INSERT INTO key_claims (key, owner, token, expires_at)
             VALUES ($1, $2, nextval('key_claim_tokens'),
                     clock_timestamp() + $3::FLOAT8 * INTERVAL '1 millisecond')
             ON CONFLICT (key) DO UPDATE SET
                 token = CASE WHEN key_claims.owner = excluded.owner
                              THEN key_claims.token ELSE excluded.token END,
                 owner = excluded.owner,
                 expires_at = excluded.expires_at
             WHERE key_claims.owner = excluded.owner OR key_claims.expires_at < clock_timestamp()
             RETURNING token",
            params![key.to_owned(), self.owner.clone(), millis(ttl)],
        )?;
        match rows.first() {
            Some(row) => Ok(Some(Claim { key: key.to_owned(), token: row.try_get(0)? })),
            None => Ok(None),
        }
    }

    fn release_key(&self, claim: &Claim) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM key_claims WHERE key = $1 AND owner = $2 AND token = $3",
            params![claim.key.clone(), self.owner.clone(), claim.token],
        )?;
        Ok(())
    }

    fn symphony_watermark(&self) -> Result<Option<Watermark>, StoreError> {
        let rows = self
            .query("SELECT latest_ms, first_ms FROM symphony_watermark WHERE id = 1", params![])?;
        match rows.first() {
            Some(r) => Ok(Some(Watermark { latest_ms: r.try_get(0)?, first_ms: r.try_get(1)? })),
            None => Ok(None),
        }
    }

    fn advance_symphony_watermark(&self, at_ms: i64) -> Result<(), StoreError> {
        self.execute(ADVANCE_WATERMARK, params![at_ms])?;
        Ok(())
    }
}

const GROUP_COLUMNS: &str = "id, stream_id, wa_group_id, create_request_id, name, kind, state, creator, created_at, invite_link, ref";

fn kind_str(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::Native => "native",
        GroupKind::Standard => "standard",
    }
}

fn group_row(r: &Row) -> Result<GroupRecord, StoreError> {
    let kind: String = r.try_get(5)?;
    let state: String = r.try_get(6)?;
    Ok(GroupRecord {
        key: GroupKey(r.try_get(0)?),
        stream: r.try_get::<_, Option<String>>(1)?.map(StreamId::new),
        wa_group: r.try_get::<_, Option<String>>(2)?.map(GroupId),
        create_request_id: r.try_get(3)?,
        name: r.try_get(4)?,
        kind: match kind.as_str() {
            "native" => GroupKind::Native,
            "standard" => GroupKind::Standard,
            other => return Err(StoreError::BadRow(format!("bad kind {other:?}"))),
        },
        state: GroupState::parse(&state)
            .ok_or_else(|| StoreError::BadRow(format!("bad state {state:?}")))?,
        creator: UserId(r.try_get(7)?),
        created_at: r.try_get(8)?,
        invite_link: r.try_get(9)?,
        reference: r.try_get(10)?,
    })
}

impl PgTx<'_> {
    fn group_where(&self, clause: &str, value: Param) -> Result<Option<GroupRecord>, StoreError> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM groups WHERE {clause} = $1");
        self.query_opt(&sql, vec![value])?.as_ref().map(group_row).transpose()
    }
}

/// Moves the watermark to `$1` unless it is past it already.
const ADVANCE_WATERMARK: &str =
    "INSERT INTO symphony_watermark (id, latest_ms, first_ms) VALUES (1, $1, $1)
     ON CONFLICT (id) DO UPDATE
     SET latest_ms = GREATEST(symphony_watermark.latest_ms, excluded.latest_ms)";

impl Tx for PgTx<'_> {
    fn advance_symphony_watermark(&self, at_ms: i64) -> Result<(), StoreError> {
        self.execute(ADVANCE_WATERMARK, params![at_ms])?;
        Ok(())
    }

    fn queue_effects(&self, effects: &[QueuedEffect]) -> Result<(), StoreError> {
        if effects.is_empty() {
            return Ok(());
        }
        // The keys' locks first (sorted: two transactions take them in the same order), then
        // the effects, all in one round trip.
        let keys: std::collections::BTreeSet<&str> =
            effects.iter().map(|(key, _)| key.as_str()).collect();
        let mut statements: Vec<(String, Vec<Param>, bool)> = keys
            .into_iter()
            .map(|key| (LOCK_ORDER_KEY.to_owned(), params![key.to_owned()], true))
            .collect();
        let now = now_ms();
        for (key, effect) in effects {
            statements.push((
                "INSERT INTO outbox (order_key, effect, next_at, created_at, head)
                 VALUES ($1, $2, $3, $3, NOT EXISTS (SELECT 1 FROM outbox WHERE order_key = $1
                                                     AND done_at IS NULL AND failed_at IS NULL))"
                    .to_owned(),
                params![key.clone(), serde_json::to_string(effect)?, now],
                false,
            ));
        }
        self.pipeline(statements)?;
        Ok(())
    }

    fn mark_processed(&self, inbound_id: i64) -> Result<bool, StoreError> {
        // Another instance marking it meanwhile: this one waits for its commit, then finds it
        // processed (0 rows).
        let changed = self.execute(
            "UPDATE inbound_events SET processed_at = $2, failed_at = NULL
             WHERE id = $1 AND processed_at IS NULL",
            params![inbound_id, now_ms()],
        )?;
        Ok(changed == 1)
    }

    fn enqueue_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let payload = serde_json::to_string(payload)?;
        Ok(self.execute(INSERT_INBOUND, inbound_params(source, dedupe_key, payload))? == 1)
    }

    fn insert_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::value::RawValue,
    ) -> Result<Option<i64>, StoreError> {
        let sql = format!("{INSERT_INBOUND} RETURNING id");
        let params = inbound_params(source, dedupe_key, payload.get().to_owned());
        let row = self.query_opt(&sql, params)?;
        Ok(row.map(|r| r.try_get::<_, i64>(0)).transpose()?)
    }

    fn has_undecided(&self) -> Result<bool, StoreError> {
        let row = self.query_opt(
            "SELECT 1 FROM inbound_events WHERE processed_at IS NULL AND failed_at IS NULL
             LIMIT 1",
            Vec::new(),
        )?;
        Ok(row.is_some())
    }

    fn savepoint(&self, f: &mut dyn FnMut() -> bool) -> Result<bool, StoreError> {
        self.execute("SAVEPOINT within", Vec::new())?;
        let keep = f();
        if !keep {
            self.execute("ROLLBACK TO SAVEPOINT within", Vec::new())?;
        }
        self.execute("RELEASE SAVEPOINT within", Vec::new())?;
        Ok(keep)
    }

    fn hold_claim(&self, claim: &Claim, ttl: Duration) -> Result<bool, StoreError> {
        // The row stays locked until this transaction ends: a takeover waits for the commit.
        let held = self.execute(
            "UPDATE key_claims SET expires_at = clock_timestamp() + $4::FLOAT8 * INTERVAL '1 millisecond'
             WHERE key = $1 AND owner = $2 AND token = $3",
            params![claim.key.clone(), self.store.owner.clone(), claim.token, millis(ttl)],
        )?;
        Ok(held == 1)
    }

    fn finish_effect(&self, id: i64, error: Option<&str>) -> Result<(), StoreError> {
        // One round trip: the key's lock, the effect finished, the key's next effect its head.
        let now = now_ms();
        let finish = match error {
            None => (
                "UPDATE outbox SET done_at = $2, head = FALSE, last_error = NULL,
                                   lease_owner = NULL, lease_until = NULL
                 WHERE id = $1"
                    .to_owned(),
                params![id, now],
                false,
            ),
            Some(error) => (
                "UPDATE outbox SET attempts = attempts + 1, failed_at = $2, head = FALSE,
                        last_error = $3, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1"
                    .to_owned(),
                params![id, now, error.to_owned()],
                false,
            ),
        };
        self.pipeline(vec![
            (
                "SELECT pg_advisory_xact_lock(hashtextextended(order_key, 7)) FROM outbox
                 WHERE id = $1"
                    .to_owned(),
                params![id],
                true,
            ),
            finish,
            (
                "UPDATE outbox SET head = TRUE WHERE id = (SELECT MIN(id) FROM outbox
                 WHERE order_key = (SELECT order_key FROM outbox WHERE id = $1)
                   AND done_at IS NULL AND failed_at IS NULL)"
                    .to_owned(),
                params![id],
                false,
            ),
        ])?;
        Ok(())
    }
}

impl GroupRepo for PgTx<'_> {
    fn create_group(
        &self,
        name: &str,
        kind: GroupKind,
        creator: UserId,
        advisors: &[UserId],
        contacts: &[E164],
        origin: &Origin,
        reference: &str,
    ) -> Result<Created, StoreError> {
        let now = now_ms();
        let earlier = self.query_opt(
            "SELECT id, origin_event FROM groups WHERE origin = $1",
            params![origin.key.clone()],
        )?;
        if let Some(row) = earlier {
            let id: i64 = row.try_get(0)?;
            let event: Option<String> = row.try_get(1)?;
            return Ok(if event.as_deref() == Some(origin.event.as_str()) {
                Created::Replay(GroupKey(id))
            } else {
                Created::Again(GroupKey(id))
            });
        }
        let row = self
            .query_opt(
                "INSERT INTO groups (name, kind, state, creator, created_at, origin, origin_event, ref)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                params![
                    name.to_owned(),
                    kind_str(kind).to_owned(),
                    GroupState::Creating.as_str().to_owned(),
                    creator.0,
                    now,
                    origin.key.clone(),
                    origin.event.clone(),
                    reference.to_owned()
                ],
            )?
            .ok_or_else(|| StoreError::BadRow("no id returned for a new group".into()))?;
        let key = GroupKey(row.try_get(0)?);
        self.execute(
            "INSERT INTO group_advisors (group_id, user_id, owner) VALUES ($1, $2, TRUE)",
            params![key.0, creator.0],
        )?;
        for a in advisors.iter().filter(|a| **a != creator) {
            self.execute(
                "INSERT INTO group_advisors (group_id, user_id, owner) VALUES ($1, $2, FALSE)
                 ON CONFLICT DO NOTHING",
                params![key.0, a.0],
            )?;
        }
        for c in contacts {
            self.execute(
                "INSERT INTO group_contacts (group_id, phone, state, updated_at)
                 VALUES ($1, $2, 'invited', $3) ON CONFLICT DO NOTHING",
                params![key.0, c.as_str().to_owned(), now],
            )?;
        }
        Ok(Created::New(key))
    }

    fn group(&self, key: GroupKey) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("id", Box::new(key.0))
    }

    fn group_by_stream(&self, stream: &StreamId) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("stream_id", Box::new(stream.as_str().to_owned()))
    }

    fn group_by_wa(&self, group: &GroupId) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("wa_group_id", Box::new(group.as_str().to_owned()))
    }

    fn group_by_request(&self, request_id: &str) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("create_request_id", Box::new(request_id.to_owned()))
    }

    fn set_group_stream(&self, key: GroupKey, stream: &StreamId) -> Result<bool, StoreError> {
        let changed = self.execute(
            "UPDATE groups SET stream_id = $2 WHERE id = $1 AND stream_id IS NULL",
            params![key.0, stream.as_str().to_owned()],
        )?;
        Ok(changed == 1)
    }

    fn set_group_request(&self, key: GroupKey, request_id: &str) -> Result<bool, StoreError> {
        let changed = self.execute(
            "UPDATE groups SET create_request_id = $2, state = $3
             WHERE id = $1 AND state = $4 AND wa_group_id IS NULL",
            params![
                key.0,
                request_id.to_owned(),
                GroupState::AwaitingGroup.as_str().to_owned(),
                GroupState::Creating.as_str().to_owned()
            ],
        )?;
        Ok(changed == 1)
    }

    fn set_group_created(
        &self,
        key: GroupKey,
        group: &GroupId,
        invite_link: Option<&str>,
    ) -> Result<bool, StoreError> {
        let changed = self.execute(
            "UPDATE groups SET wa_group_id = $2, invite_link = $3, state = $4
             WHERE id = $1 AND wa_group_id IS NULL AND state IN ($5, $6)",
            params![
                key.0,
                group.as_str().to_owned(),
                invite_link.map(str::to_owned),
                GroupState::Active.as_str().to_owned(),
                GroupState::Creating.as_str().to_owned(),
                GroupState::AwaitingGroup.as_str().to_owned()
            ],
        )?;
        Ok(changed == 1)
    }

    fn set_invite_link(&self, key: GroupKey, invite_link: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE groups SET invite_link = $2 WHERE id = $1",
            params![key.0, invite_link.to_owned()],
        )?;
        Ok(())
    }

    fn set_group_state(&self, key: GroupKey, state: GroupState) -> Result<(), StoreError> {
        self.execute(
            "UPDATE groups SET state = $2 WHERE id = $1",
            params![key.0, state.as_str().to_owned()],
        )?;
        Ok(())
    }

    fn rename_group(&self, key: GroupKey, name: &str) -> Result<(), StoreError> {
        self.execute("UPDATE groups SET name = $2 WHERE id = $1", params![key.0, name.to_owned()])?;
        Ok(())
    }

    fn advisors(&self, key: GroupKey) -> Result<Vec<(UserId, bool)>, StoreError> {
        let rows = self.query(
            "SELECT user_id, owner FROM group_advisors WHERE group_id = $1 ORDER BY seq",
            params![key.0],
        )?;
        rows.iter().map(|r| Ok((UserId(r.try_get(0)?), r.try_get::<_, bool>(1)?))).collect()
    }

    fn set_advisor(
        &self,
        key: GroupKey,
        user: UserId,
        owner: Option<bool>,
    ) -> Result<(), StoreError> {
        match owner {
            Some(owner) => self.execute(
                "INSERT INTO group_advisors (group_id, user_id, owner) VALUES ($1, $2, $3)
                 ON CONFLICT (group_id, user_id) DO UPDATE SET owner = excluded.owner",
                params![key.0, user.0, owner],
            )?,
            None => self.execute(
                "DELETE FROM group_advisors WHERE group_id = $1 AND user_id = $2",
                params![key.0, user.0],
            )?,
        };
        Ok(())
    }

    fn contacts(&self, key: GroupKey) -> Result<Vec<ContactRecord>, StoreError> {
        let rows = self.query(
            "SELECT c.phone, c.state,
                    EXISTS (SELECT 1 FROM bars b WHERE b.group_id = c.group_id AND b.phone = c.phone),
                    c.bsuid, c.name
             FROM group_contacts c WHERE c.group_id = $1 ORDER BY c.seq",
            params![key.0],
        )?;
        let mut out = Vec::new();
        for r in rows {
            let phone: String = r.try_get(0)?;
            let state: String = r.try_get(1)?;
            let barred: bool = r.try_get(2)?;
            let (Ok(phone), Some(state)) = (E164::parse(&phone), ContactState::parse(&state))
            else {
                tracing::warn!(group = key.0, "skipping an unreadable contact row");
                continue;
            };
            // A barred contact is removed, whatever was written later.
            let state = if barred { ContactState::Removed } else { state };
            out.push(ContactRecord {
                phone,
                state,
                barred,
                bsuid: r.try_get(3)?,
                name: r.try_get(4)?,
            });
        }
        Ok(out)
    }

    fn set_contact_state(
        &self,
        key: GroupKey,
        phone: &E164,
        state: ContactState,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let barred = self.is_barred(key, phone)?;
        let state = if barred { ContactState::Removed } else { state };
        self.execute(
            "INSERT INTO group_contacts (group_id, phone, state, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (group_id, phone)
             DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            params![key.0, phone.as_str().to_owned(), state.as_str().to_owned(), now],
        )?;
        if state == ContactState::Removed {
            self.execute(
                "INSERT INTO bars (group_id, phone, barred_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                params![key.0, phone.as_str().to_owned(), now],
            )?;
        }
        Ok(())
    }

    fn set_contact_bsuid(
        &self,
        key: GroupKey,
        phone: &E164,
        bsuid: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE group_contacts SET bsuid = $3 WHERE group_id = $1 AND phone = $2",
            params![key.0, phone.as_str().to_owned(), bsuid.to_owned()],
        )?;
        Ok(())
    }

    fn set_contact_profile(
        &self,
        phone: &E164,
        bsuid: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE group_contacts SET bsuid = COALESCE($2, bsuid), name = COALESCE($3, name)
             WHERE phone = $1",
            params![phone.as_str().to_owned(), bsuid.map(str::to_owned), name.map(str::to_owned)],
        )?;
        Ok(())
    }

    fn set_join_request(
        &self,
        key: GroupKey,
        phone: &E164,
        request_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE group_contacts SET join_request_id = $3 WHERE group_id = $1 AND phone = $2",
            params![key.0, phone.as_str().to_owned(), request_id.map(str::to_owned)],
        )?;
        Ok(())
    }

    fn join_request(&self, key: GroupKey, phone: &E164) -> Result<Option<String>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT join_request_id FROM group_contacts WHERE group_id = $1 AND phone = $2",
                params![key.0, phone.as_str().to_owned()],
            )?
            .map(|r| r.try_get::<_, Option<String>>(0))
            .transpose()?
            .flatten())
    }

    fn phone_of_bsuid(&self, bsuid: &str) -> Result<Option<E164>, StoreError> {
        let phone: Option<String> = self
            .query_opt(
                "SELECT phone FROM group_contacts WHERE bsuid = $1 LIMIT 1",
                params![bsuid.to_owned()],
            )?
            .map(|r| r.try_get(0))
            .transpose()?;
        Ok(phone.and_then(|p| E164::parse(&p).ok()))
    }

    fn groups_awaiting_request(&self) -> Result<u64, StoreError> {
        let row = self.query_opt(
            "SELECT COUNT(*) FROM groups
             WHERE kind = 'native' AND state = 'creating' AND create_request_id IS NULL",
            params![],
        )?;
        let n: i64 = row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn groups_awaiting_webhook(&self, before_ms: i64) -> Result<Vec<GroupRecord>, StoreError> {
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM groups
             WHERE state = 'awaitingGroup' AND created_at <= $1 ORDER BY id"
        );
        self.query(&sql, params![before_ms])?.iter().map(group_row).collect()
    }

    fn is_barred(&self, key: GroupKey, phone: &E164) -> Result<bool, StoreError> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM bars WHERE group_id = $1 AND phone = $2",
                params![key.0, phone.as_str().to_owned()],
            )?
            .is_some())
    }

    fn membership_pending(&self, stream: &StreamId) -> Result<bool, StoreError> {
        // Order keys `member:<stream>:<user>` (see `effects::OrderKey`), found by their prefix
        // (`starts_with`: no collation, no LIKE wildcards in stream ids).
        let prefix = format!("member:{stream}:");
        Ok(self
            .query_opt(
                "SELECT 1 FROM outbox WHERE starts_with(order_key, $1)
                 AND done_at IS NULL AND failed_at IS NULL LIMIT 1",
                params![prefix],
            )?
            .is_some())
    }

    fn barred_at(&self, key: GroupKey, phone: &E164) -> Result<Option<i64>, StoreError> {
        self.query_opt(
            "SELECT barred_at FROM bars WHERE group_id = $1 AND phone = $2",
            params![key.0, phone.as_str().to_owned()],
        )?
        .map(|row| row.try_get::<_, i64>(0))
        .transpose()
        .map_err(StoreError::from)
    }

    fn mark_create_attempt(&self, key: GroupKey, room: bool) -> Result<bool, StoreError> {
        let column = if room { "room_attempted" } else { "wa_attempted" };
        let before = self
            .query_opt(
                &format!("SELECT {column} FROM groups WHERE id = $1 FOR UPDATE"),
                params![key.0],
            )?
            .ok_or_else(|| StoreError::BadRow(format!("no group {}", key.0)))?;
        let before: bool = before.try_get(0)?;
        self.execute(&format!("UPDATE groups SET {column} = TRUE WHERE id = $1"), params![key.0])?;
        Ok(before)
    }

    fn record_wa_message(&self, m: &WaMessageRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO wa_messages (wa_message_id, group_id, direction, phone,
                 symphony_message_id, author, excerpt, kind, body, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            params![
                m.wa_message_id.clone(),
                m.group.0,
                if m.inbound { "in" } else { "out" }.to_owned(),
                m.phone.as_ref().map(|p| p.as_str().to_owned()),
                m.symphony_message_id.clone(),
                m.author.clone(),
                m.excerpt.clone(),
                m.kind.clone(),
                m.body.clone(),
                now_ms()
            ],
        )?;
        Ok(())
    }

    fn wa_message(&self, wa_message_id: &str) -> Result<Option<WaMessageRecord>, StoreError> {
        let row = self.query_opt(
            "SELECT wa_message_id, group_id, direction, phone, symphony_message_id, author,
                    excerpt, kind, body
             FROM wa_messages WHERE wa_message_id = $1",
            params![wa_message_id.to_owned()],
        )?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(WaMessageRecord {
            wa_message_id: r.try_get(0)?,
            group: GroupKey(r.try_get(1)?),
            inbound: r.try_get::<_, String>(2)? == "in",
            phone: r.try_get::<_, Option<String>>(3)?.and_then(|p| E164::parse(&p).ok()),
            symphony_message_id: r.try_get(4)?,
            author: r.try_get(5)?,
            excerpt: r.try_get(6)?,
            kind: r.try_get(7)?,
            body: r.try_get(8)?,
        }))
    }

    fn set_wa_message_symphony(
        &self,
        wa_message_id: &str,
        symphony_message_id: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE wa_messages SET symphony_message_id = $2 WHERE wa_message_id = $1",
            params![wa_message_id.to_owned(), symphony_message_id.to_owned()],
        )?;
        Ok(())
    }

    fn claim_template_fallback(&self, wa_message_id: &str) -> Result<bool, StoreError> {
        let changed = self.execute(
            "UPDATE wa_messages SET fallback_sent = TRUE
             WHERE wa_message_id = $1 AND NOT fallback_sent",
            params![wa_message_id.to_owned()],
        )?;
        Ok(changed == 1)
    }

    fn last_group_messaging(&self, phone: &E164) -> Result<Option<GroupKey>, StoreError> {
        let row = self.query_opt(
            "SELECT group_id FROM wa_messages WHERE phone = $1 AND direction = 'out'
             ORDER BY created_at DESC, seq DESC LIMIT 1",
            params![phone.as_str().to_owned()],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.map(GroupKey))
    }

    fn groups_of_contact(&self, phone: &E164) -> Result<Vec<GroupKey>, StoreError> {
        let rows = self.query(
            "SELECT c.group_id FROM group_contacts c JOIN groups g ON g.id = c.group_id
             WHERE c.phone = $1 AND c.state <> 'removed' AND g.state = 'active'
             ORDER BY c.updated_at DESC, c.group_id DESC",
            params![phone.as_str().to_owned()],
        )?;
        rows.iter().map(|r| Ok(GroupKey(r.try_get(0)?))).collect()
    }

    fn open_window(&self, chat: &str, at_ms: i64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO wa_windows (chat, last_inbound_at) VALUES ($1, $2)
             ON CONFLICT (chat) DO UPDATE
             SET last_inbound_at = GREATEST(wa_windows.last_inbound_at, excluded.last_inbound_at)",
            params![chat.to_owned(), at_ms],
        )?;
        Ok(())
    }

    fn last_inbound(&self, chat: &str) -> Result<Option<i64>, StoreError> {
        let row = self.query_opt(
            "SELECT last_inbound_at FROM wa_windows WHERE chat = $1",
            params![chat.to_owned()],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
}
