//! The admin's tools: `check-config` (every problem of the configuration, the key file and the
//! templates at once; with `--connect`, one login to the pod and one Graph API call) and
//! `render` (a template preview), and `events failed` (the events set aside). Reports never
//! show a secret.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;

use crate::config::{Config, ConfigError, ConfigSource};
use crate::symphony::SymphonyClient;
use crate::templates::{TemplateError, Templates};
use crate::whatsapp::WhatsAppClient;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Works, but probably not what the admin wants.
    Warning,
    Problem,
}

/// One line of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub outcome: Outcome,
    pub text: String,
}

/// What `check-config` found, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
}

impl CheckReport {
    fn push(&mut self, outcome: Outcome, text: impl Into<String>) {
        self.findings.push(Finding { outcome, text: text.into() });
    }

    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| f.outcome == Outcome::Problem).count()
    }

    pub fn passed(&self) -> bool {
        self.problems() == 0
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let tag = match finding.outcome {
                Outcome::Ok => "ok     ",
                Outcome::Warning => "warning",
                Outcome::Problem => "PROBLEM",
            };
            writeln!(f, "{tag}  {}", finding.text)?;
        }
        match self.problems() {
            0 => write!(f, "configuration OK"),
            1 => write!(f, "1 problem"),
            n => write!(f, "{n} problems"),
        }
    }
}

/// `check-config`: [`check_config`], then with `connect` [`check_connect`] (when the
/// configuration is valid enough to connect with).
pub async fn check(source: &ConfigSource, connect: bool) -> CheckReport {
    let (mut report, config) = check_config(source);
    match (config, connect) {
        (Some(config), true) => check_connect(&config, &mut report).await,
        (None, true) => report.push(Outcome::Warning, "--connect skipped: fix the problems first"),
        (_, false) => {}
    }
    report
}

/// The checks that need no network: the configuration (with its environment overrides), the
/// key file, and every template rendered on its sample data. Returns the configuration when it
/// is valid, for [`check_connect`].
pub fn check_config(source: &ConfigSource) -> (CheckReport, Option<Config>) {
    let mut report = CheckReport::default();
    if let Some(file) = &source.file {
        report.push(Outcome::Ok, format!("reading {}", file.display()));
    }
    let checked = Config::check(source);
    let config = match checked.config {
        Ok(config) => {
            report.push(
                Outcome::Ok,
                format!(
                    "configuration valid: pod {}, agent {}, key manager {}, service account {:?}",
                    config.symphony.pod_url,
                    config.symphony.agent_url,
                    config.symphony.key_manager_url,
                    config.symphony.username
                ),
            );
            report.push(
                Outcome::Ok,
                format!(
                    "private key {} is an RSA key in PEM",
                    config.symphony.private_key_path.display()
                ),
            );
            report.push(Outcome::Ok, store_line(&config.store));
            warnings(&config, &mut report);
            Some(config)
        }
        Err(ConfigError::Invalid(problems)) => {
            for p in problems {
                report.push(Outcome::Problem, p);
            }
            None
        }
        Err(e @ ConfigError::Load(_)) => {
            report.push(Outcome::Problem, e.to_string());
            None
        }
    };
    match &checked.templates_dir {
        Some(dir) => {
            let problems = Templates::check_dir(dir);
            if problems.is_empty() {
                report.push(
                    Outcome::Ok,
                    format!(
                        "templates in {}: all {} compile and render their sample data",
                        dir.display(),
                        Templates::names().count()
                    ),
                );
            }
            for p in problems {
                report.push(Outcome::Problem, p.to_string());
            }
        }
        None => report
            .push(Outcome::Problem, "templates not checked: the configuration could not be read"),
    }
    (report, config)
}

/// Which store the bot will use (the URL without its password).
fn store_line(store: &crate::config::StoreConfig) -> String {
    match &store.url {
        Some(url) => format!(
            "store: PostgreSQL at {} (several instances; pool of {}, statement timeout {} ms)",
            crate::store::redacted_url(url.expose_secret()),
            store.pool_size,
            store.statement_timeout.as_millis()
        ),
        None => format!("store: SQLite at {} (one instance)", store.path.display()),
    }
}

/// What runs but is probably not meant.
fn warnings(config: &Config, report: &mut CheckReport) {
    let wa = &config.whatsapp;
    if !wa.is_configured() {
        report.push(
            Outcome::Warning,
            "whatsapp.phoneNumberId / whatsapp.accessToken not set \
             (WAGB__WHATSAPP__ACCESSTOKEN): WhatsApp groups cannot be created",
        );
    }
    if wa.app_secret.expose_secret().is_empty() {
        report.push(
            Outcome::Warning,
            format!(
                "whatsapp.appSecret not set (WAGB__WHATSAPP__APPSECRET): the webhook receiver is \
                 off; {} serves only /healthz and /metrics",
                wa.webhook.listen
            ),
        );
    } else if wa.webhook.verify_token.expose_secret().is_empty() {
        report.push(
            Outcome::Warning,
            "whatsapp.webhook.verifyToken not set: Meta's webhook verification will be refused",
        );
    }
}

/// `--connect`: logs in to the pod and the key manager, reads `sessioninfo`, and reads the
/// business phone number from the Graph API, each once (no retries: a check reports what it
/// sees), adding each outcome to `report`.
pub async fn check_connect(config: &Config, report: &mut CheckReport) {
    let mut symphony_cfg = config.symphony.clone();
    symphony_cfg.retry.max_attempts = 1;
    match SymphonyClient::new(&symphony_cfg) {
        Err(e) => report.push(Outcome::Problem, format!("Symphony: {e}")),
        Ok(client) => {
            let (session, key_manager) = client.try_logins().await;
            let pod = &symphony_cfg.pod_url;
            match &session {
                Ok(()) => report.push(Outcome::Ok, format!("pod login at {pod}: session token")),
                Err(e) => report.push(Outcome::Problem, format!("pod login at {pod}: {e}")),
            }
            let km = &symphony_cfg.key_manager_url;
            match key_manager {
                Ok(()) => report
                    .push(Outcome::Ok, format!("key manager login at {km}: key manager token")),
                Err(e) => report.push(Outcome::Problem, format!("key manager login at {km}: {e}")),
            }
            if session.is_ok() {
                match client.session_info().await {
                    Ok(me) => report.push(
                        Outcome::Ok,
                        format!(
                            "sessioninfo: signed in as {:?} (user {}, username {:?})",
                            me.display_name.as_deref().unwrap_or("?"),
                            me.id,
                            me.username.as_deref().unwrap_or("?"),
                        ),
                    ),
                    Err(e) => report.push(Outcome::Problem, format!("sessioninfo: {e}")),
                }
            }
        }
    }
    check_store(config, report);
    let wa = &config.whatsapp;
    if !wa.is_configured() {
        report.push(
            Outcome::Problem,
            "Graph API not called: whatsapp.phoneNumberId and whatsapp.accessToken must be set",
        );
        return;
    }
    let mut once = config.symphony.retry;
    once.max_attempts = 1;
    let graph = format!("{}{}", wa.api_base_url, wa.api_version);
    match WhatsAppClient::new(wa, once) {
        Err(e) => report.push(Outcome::Problem, format!("Graph API: {e}")),
        Ok(client) => match client.business_number().await.map(|n| n.get().cloned()) {
            Ok(Some(number)) => report.push(
                Outcome::Ok,
                format!(
                    "Graph API at {graph}: phone number id {} is the business number {number}",
                    wa.phone_number_id
                ),
            ),
            Ok(None) => report.push(
                Outcome::Warning,
                format!(
                    "Graph API at {graph}: phone number id {} answered, but without a valid \
                     display_phone_number (the bot's own number will not be refused as a contact)",
                    wa.phone_number_id
                ),
            ),
            Err(e) => report.push(Outcome::Problem, format!("Graph API at {graph}: {e}")),
        },
    }
}

/// `--connect` with `store.url`: connects to PostgreSQL once (URL, TLS, credentials) and reports
/// the schema version, without migrating anything (the bot does that when it starts).
fn check_store(config: &Config, report: &mut CheckReport) {
    use crate::store::{PostgresOptions, PostgresStore};
    let Some(url) = &config.store.url else { return };
    let options = PostgresOptions {
        url: url.clone(),
        pool_size: 1,
        statement_timeout: config.store.statement_timeout,
    };
    let store = match PostgresStore::connect(&options) {
        Ok(store) => store,
        Err(e) => return report.push(Outcome::Problem, format!("PostgreSQL store: {e}")),
    };
    let at = store.location().to_owned();
    let server = store.server_version().unwrap_or_else(|_| "?".into());
    let known = PostgresStore::known_schema_version();
    match store.schema_version_unmigrated() {
        Err(e) => report.push(Outcome::Problem, format!("PostgreSQL store at {at}: {e}")),
        Ok(0) => report.push(
            Outcome::Ok,
            format!(
                "PostgreSQL store at {at} (server {server}): connected; no schema yet (the first \
                 instance to start creates it, version {known})"
            ),
        ),
        Ok(found) if found > known => report.push(
            Outcome::Problem,
            format!(
                "PostgreSQL store at {at} (server {server}): schema version {found}, newer than \
                 this bot knows ({known}): run a newer wa-groups-bot"
            ),
        ),
        Ok(found) if found < known => report.push(
            Outcome::Ok,
            format!(
                "PostgreSQL store at {at} (server {server}): connected, schema version {found} \
                 (this bot migrates it to {known} when it starts)"
            ),
        ),
        Ok(found) => report.push(
            Outcome::Ok,
            format!(
                "PostgreSQL store at {at} (server {server}): connected, schema version {found}"
            ),
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read the data file {path}: {source}")]
    ReadData { path: PathBuf, source: std::io::Error },
    #[error("the data file {path} is not JSON: {reason}")]
    BadJson { path: PathBuf, reason: String },
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// `render <template> --data file.json`: the template of `templates_dir` rendered with the
/// file's JSON, in strict mode as the bot renders it.
pub fn render_preview(
    templates_dir: &Path,
    name: &str,
    data_file: &Path,
) -> Result<String, RenderError> {
    let text = std::fs::read_to_string(data_file)
        .map_err(|source| RenderError::ReadData { path: data_file.to_owned(), source })?;
    let data: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| RenderError::BadJson { path: data_file.to_owned(), reason: e.to_string() })?;
    Ok(Templates::preview(templates_dir, name, &data)?)
}

/// The set-aside events as a table: id, source, attempts, what it is, why it failed. Message
/// texts stay out (they can be confidential): the event's kind is shown.
pub fn failed_events(store: &crate::store::Store) -> Result<String, crate::store::StoreError> {
    let rows = store.failed_inbound(1_000)?;
    if rows.is_empty() {
        return Ok("No event is set aside.\n".to_owned());
    }
    let mut out =
        format!("{:>8}  {:<9}  {:>8}  {:<28}  reason\n", "id", "source", "attempts", "event");
    for row in rows {
        let kind = event_kind(&row.payload);
        let reason = row.last_error.unwrap_or_default().replace('\n', " ");
        out.push_str(&format!(
            "{:>8}  {:<9}  {:>8}  {:<28}  {reason}\n",
            row.id,
            row.source.as_str(),
            row.attempts,
            kind
        ));
    }
    out.push_str("Put one back with `wa-groups-bot events retry ID`, or all with `--all`.\n");
    Ok(out)
}

/// What a stored event is (`symphony/messageSent`, `whatsapp/participantsAdded`, `outcome/failed`).
fn event_kind(payload: &serde_json::Value) -> String {
    let inner = payload.get("event").unwrap_or(payload);
    let source = payload.get("source").and_then(|s| s.as_str());
    let kind = inner
        .get("kind")
        .and_then(|k| k.get("type"))
        .or_else(|| inner.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("?");
    match source {
        Some(s) => format!("{s}/{kind}"),
        None => format!("outcome/{kind}"),
    }
}
