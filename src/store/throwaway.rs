//! A throwaway PostgreSQL for tests and benches: `WAGB_TEST_POSTGRES_URL` when set, otherwise a
//! cluster made from the machine's PostgreSQL binaries (`initdb`, `pg_ctl`) in a temp dir, on a
//! free loopback port, run as the `postgres` user when the tests run as root (PostgreSQL refuses
//! root). One cluster per test process; each caller gets its own fresh database.
//!
//! When no PostgreSQL can be found, [`database`] fails with a clear message under `CI=true`
//! and otherwise says loudly that the test is skipped and returns `None`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Why a throwaway PostgreSQL could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ThrowawayError {
    #[error(
        "no PostgreSQL found: neither WAGB_TEST_POSTGRES_URL nor initdb/pg_ctl (on PATH or in \
         /usr/lib/postgresql/*/bin); install Debian's `postgresql` package"
    )]
    NotFound,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the test database could not be made: {0}")]
    Database(String),
    #[error("this PostgreSQL (WAGB_TEST_POSTGRES_URL) is not ours to restart")]
    NotOurs,
}

/// A PostgreSQL server for tests: ours (a cluster in a temp dir) or the one given.
pub struct Server {
    /// `postgres://user@host:port` (and any password), without a database.
    base: url::Url,
    cluster: Option<Cluster>,
    counter: AtomicU64,
    /// A TLS cluster's CA certificate.
    ca: Option<PathBuf>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("at", &super::redacted_url(self.base.as_str()))
            .field("ours", &self.cluster.is_some())
            .finish()
    }
}

/// A cluster this process started.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Holds the watchdog's stdin: when this process ends, however it ends, the pipe closes and
    /// the watchdog stops the cluster and removes its dir.
    watchdog: Mutex<Option<Child>>,
    /// Serialises stop/start.
    control: Mutex<()>,
    /// More server options (TLS).
    extra: String,
}

/// A fresh database on the shared test server.
#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    url: String,
}

impl Database {
    /// Its URL (`sslmode=disable` on our own loopback cluster).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Store options for it with the defaults and a small pool.
    pub fn options(&self) -> super::PostgresOptions {
        let mut o = super::PostgresOptions::new(self.url.clone());
        o.pool_size = 4;
        o
    }
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// The process's test server, started on first use.
pub fn server() -> Result<&'static Server, String> {
    SERVER.get_or_init(|| Server::start().map_err(|e| e.to_string())).as_ref().map_err(Clone::clone)
}

/// A fresh database for one test, or `None` (with a loud line on stderr) when no PostgreSQL
/// can be found outside CI. Under `CI=true` a missing PostgreSQL fails the test.
pub fn database(test: &str) -> Option<Database> {
    match server().and_then(|s| s.fresh_database().map_err(|e| e.to_string())) {
        Ok(db) => Some(db),
        Err(reason) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL test {test} cannot run under CI=true: {reason}");
            }
            eprintln!(
                "\n*** SKIPPED the PostgreSQL part of {test}: {reason} ***\n\
                 *** (set WAGB_TEST_POSTGRES_URL or install PostgreSQL; under CI=true this fails) ***\n"
            );
            None
        }
    }
}

/// A cluster of the test's own (one it may stop, restart or start again without disturbing the
/// other tests, which share [`server`]), or `None` as [`database`] says: a loud skip line
/// outside CI, a failure under `CI=true`. `WAGB_TEST_POSTGRES_URL` names a server that is not
/// ours to restart: the test is skipped (loudly).
pub fn own_server(test: &str) -> Option<Server> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if std::env::var("WAGB_TEST_POSTGRES_URL").is_ok_and(|u| !u.trim().is_empty()) {
        eprintln!(
            "\n*** SKIPPED {test}: it needs a PostgreSQL cluster of its own to restart, and \
             WAGB_TEST_POSTGRES_URL names another ***\n"
        );
        return None;
    }
    match Server::start_cluster(false) {
        Ok(server) => Some(server),
        Err(e) if in_ci => panic!("PostgreSQL test {test} cannot run under CI=true: {e}"),
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED the PostgreSQL part of {test}: {e} ***\n\
                 *** (install PostgreSQL; under CI=true this fails) ***\n"
            );
            None
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: PATH first, then Debian's versioned dirs
/// (newest first).
pub fn find_binaries() -> Option<PathBuf> {
    let has = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has(&dir) {
                // Resolve a symlink farm (/usr/local/bin → /usr/lib/postgresql/15/bin).
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| has(d));
                return Some(real.unwrap_or(dir));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// A command for one of the cluster's binaries, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        command_as(&self.bin.join(program), self.as_postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start(&self) -> Result<(), ThrowawayError> {
        // fsync off: a stop -m immediate (a crash of the server, not of the machine) keeps
        // every commit, since the OS still has the writes.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off \
             -c full_page_writes=off -c shared_buffers=64MB {}",
            self.port,
            self.dir.display(),
            self.extra
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            return Err(ThrowawayError::Command {
                what: "pg_ctl start".into(),
                detail: format!("{}\n{log}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(())
    }

    fn stop(&self) -> Result<(), ThrowawayError> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(ThrowawayError::Command {
                what: "pg_ctl stop".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }
}

fn command_as(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
        if let Ok(mut watchdog) = self.watchdog.lock()
            && let Some(mut child) = watchdog.take()
        {
            drop(child.stdin.take());
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    /// The given server (`WAGB_TEST_POSTGRES_URL`) or a new cluster of our own.
    pub fn start() -> Result<Self, ThrowawayError> {
        if let Ok(url) = std::env::var("WAGB_TEST_POSTGRES_URL")
            && !url.trim().is_empty()
        {
            let base = url::Url::parse(url.trim())
                .map_err(|e| ThrowawayError::Database(format!("WAGB_TEST_POSTGRES_URL: {e}")))?;
            return Ok(Self { base, cluster: None, counter: AtomicU64::new(0), ca: None });
        }
        Self::start_cluster(false)
    }

    /// A cluster of our own that takes TLS connections only (`hostssl`), with a certificate
    /// for `localhost` and 127.0.0.1 signed by a CA of its own ([`Server::ca_file`]); made
    /// with the `openssl` command.
    pub fn start_tls() -> Result<Self, ThrowawayError> {
        Self::start_cluster(true)
    }

    /// The CA file that signed a TLS cluster's certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    fn start_cluster(tls: bool) -> Result<Self, ThrowawayError> {
        let bin = find_binaries().ok_or(ThrowawayError::NotFound)?;
        let as_postgres = running_as_root();
        // Run as `postgres`, the cluster needs a dir that user can reach: /tmp, whatever TMPDIR
        // says (it may be under root's home).
        let temp = if as_postgres { PathBuf::from("/tmp") } else { std::env::temp_dir() };
        let dir = temp.join(format!("wagb-pg-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let (extra, ca) = if tls {
            make_certificates(&dir)?;
            (
                format!(
                    "-c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                    dir.display()
                ),
                Some(dir.join("ca.crt")),
            )
        } else {
            (String::new(), None)
        };
        if as_postgres {
            let out = Command::new("chown").arg("-R").arg("postgres:").arg(&dir).output()?;
            if !out.status.success() {
                return Err(ThrowawayError::Command {
                    what: format!("chown postgres {}", dir.display()),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
        }
        let out = command_as(&bin.join("initdb"), as_postgres)
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ThrowawayError::Command {
                what: "initdb".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        // The watchdog: stops the cluster and removes its dir once our end of its stdin closes
        // (this process exited, even by SIGKILL).
        let script = format!(
            "cat >/dev/null; '{}' -D '{}' -m immediate stop >/dev/null 2>&1; rm -rf '{}'",
            bin.join("pg_ctl").display(),
            dir.join("data").display(),
            dir.display()
        );
        let watchdog = if as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--", "sh", "-c", &script])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?
        } else {
            Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?
        };
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            as_postgres,
            watchdog: Mutex::new(Some(watchdog)),
            control: Mutex::new(()),
            extra,
        };
        // A free port may be taken between looking and binding: try a few.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start() {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        let base = url::Url::parse(&format!("postgres://postgres@127.0.0.1:{}", cluster.port))
            .map_err(|e| ThrowawayError::Database(e.to_string()))?;
        if tls {
            // TLS only over TCP: a plain connection is refused.
            let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n";
            std::fs::write(cluster.data().join("pg_hba.conf"), hba)?;
            let out = cluster
                .command("pg_ctl")
                .arg("-D")
                .arg(cluster.data())
                .arg("reload")
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                return Err(ThrowawayError::Command {
                    what: "pg_ctl reload".into(),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
        }
        Ok(Self { base, cluster: Some(cluster), counter: AtomicU64::new(0), ca })
    }

    /// The URL of database `name` on this server.
    pub fn url_of(&self, name: &str) -> String {
        let mut url = self.base.clone();
        url.set_path(&format!("/{name}"));
        if self.cluster.is_some() {
            url.set_query(Some("sslmode=disable"));
        }
        url.to_string()
    }

    /// A new, empty database.
    pub fn fresh_database(&self) -> Result<Database, ThrowawayError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("wagb_test_{}_{}_{n}", std::process::id(), rand::random::<u16>());
        let admin = match &self.cluster {
            // Over the cluster's unix socket: plain, whatever TCP demands.
            Some(c) => {
                format!("host={} port={} user=postgres dbname=postgres", c.dir.display(), c.port)
            }
            None => self.base.to_string(),
        };
        let sql = format!("CREATE DATABASE {name}");
        // On a thread of its own: the caller may be inside a runtime.
        std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                let driver = tokio::spawn(conn);
                client.batch_execute(&sql).await.map_err(|e| e.to_string())?;
                drop(client);
                let _ = driver.await;
                Ok(())
            })
        })
        .join()
        .map_err(|_| ThrowawayError::Database("the setup thread panicked".into()))?
        .map_err(ThrowawayError::Database)?;
        let url = self.url_of(&name);
        Ok(Database { name, url })
    }

    /// Stops the cluster (immediate: like a crash) and starts it again on the same port. On the
    /// shared [`server`] this disturbs every test running meanwhile: a test that restarts the
    /// database takes a cluster of its own ([`own_server`]).
    pub fn restart(&self) -> Result<(), ThrowawayError> {
        let cluster = self.cluster.as_ref().ok_or(ThrowawayError::NotOurs)?;
        let _serial = cluster.control.lock().map_err(|_| ThrowawayError::NotOurs)?;
        cluster.stop()?;
        cluster.start()
    }

    /// Stops the cluster until [`Server::start_again`] (tests of a database that is down).
    pub fn stop(&self) -> Result<(), ThrowawayError> {
        let cluster = self.cluster.as_ref().ok_or(ThrowawayError::NotOurs)?;
        let _serial = cluster.control.lock().map_err(|_| ThrowawayError::NotOurs)?;
        cluster.stop()
    }

    /// Starts a stopped cluster again.
    pub fn start_again(&self) -> Result<(), ThrowawayError> {
        let cluster = self.cluster.as_ref().ok_or(ThrowawayError::NotOurs)?;
        let _serial = cluster.control.lock().map_err(|_| ThrowawayError::NotOurs)?;
        cluster.start()
    }

    /// Whether this process started the server (and so may restart it).
    pub fn is_ours(&self) -> bool {
        self.cluster.is_some()
    }

    /// The server's log so far (ours only), for a failing test's message.
    pub fn log(&self) -> String {
        self.cluster
            .as_ref()
            .and_then(|c| std::fs::read_to_string(c.dir.join("server.log")).ok())
            .unwrap_or_default()
    }
}

/// A CA and a server certificate it signs (for `localhost` and 127.0.0.1), in `dir`.
fn make_certificates(dir: &Path) -> Result<(), ThrowawayError> {
    let run = |what: &str, args: &[&str]| -> Result<(), ThrowawayError> {
        let out =
            Command::new("openssl").args(args).current_dir(dir).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(ThrowawayError::Command {
                what: format!("openssl {what}"),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    run(
        "CA",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=wagb test CA",
        ],
    )?;
    run(
        "server key",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    run(
        "server certificate",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )?;
    // PostgreSQL refuses a key others can read.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
