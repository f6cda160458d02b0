//! Configuration: `bot-config.yaml` (BDK-compatible keys plus the bot's own sections), layered
//! with `WAGB__SECTION__KEY` environment overrides, validated with every problem reported at once.
//! Secrets are [`SecretString`]s and never print.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

mod lenient;

/// The config crate quotes the value it could not take (`invalid type: string "…", expected a
/// map`): that value can be a whole broken file, secrets and all. Said without it.
fn without_value(message: &str) -> String {
    const TYPE: &str = "invalid type: ";
    let Some(at) = message.find(TYPE) else { return message.to_owned() };
    let rest = &message[at + TYPE.len()..];
    match (rest.find(" \""), rest.rfind("\", expected")) {
        (Some(quote), Some(end)) if end > quote => {
            format!("{}{}{}", &message[..at + TYPE.len()], &rest[..quote], &rest[end + 1..])
        }
        _ => message.to_owned(),
    }
}

/// Prefix of environment overrides: `WAGB__WHATSAPP__ACCESSTOKEN`.
pub const ENV_PREFIX: &str = "WAGB";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Load(String),
    #[error("invalid configuration ({} problem{}):\n  - {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n  - "))]
    Invalid(Vec<String>),
}

// ---------------------------------------------------------------------------------------------
// Raw file shape (what the YAML says), camelCase like the BDK.
// Every multi-word key also accepts its all-lowercase spelling, because environment overrides
// reach us lowercased (`WAGB__WHATSAPP__ACCESSTOKEN` → `whatsapp.accesstoken`).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawConfig {
    #[serde(deserialize_with = "lenient::opt_text")]
    scheme: Option<String>,
    #[serde(deserialize_with = "lenient::opt_text")]
    host: Option<String>,
    #[serde(deserialize_with = "lenient::opt_port")]
    port: Option<u16>,
    #[serde(deserialize_with = "lenient::opt_text")]
    context: Option<String>,
    #[serde(alias = "connectiontimeout", deserialize_with = "lenient::opt_millis")]
    connection_timeout: Option<u64>,
    #[serde(alias = "readtimeout", deserialize_with = "lenient::opt_millis")]
    read_timeout: Option<u64>,
    pod: Option<RawClient>,
    agent: Option<RawClient>,
    #[serde(alias = "keymanager")]
    key_manager: Option<RawClient>,
    #[serde(alias = "sessionauth")]
    session_auth: Option<RawClient>,
    bot: RawBot,
    datafeed: RawDatafeed,
    retry: Option<RawRetry>,
    whatsapp: RawWhatsApp,
    features: RawFeatures,
    entitlements: RawEntitlements,
    store: RawStore,
    templates: RawTemplatesDir,
    logging: RawLogging,
    monitoring: RawMonitoring,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawClient {
    #[serde(deserialize_with = "lenient::opt_text")]
    scheme: Option<String>,
    #[serde(deserialize_with = "lenient::opt_text")]
    host: Option<String>,
    #[serde(deserialize_with = "lenient::opt_port")]
    port: Option<u16>,
    #[serde(deserialize_with = "lenient::opt_text")]
    context: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawBot {
    #[serde(deserialize_with = "lenient::opt_text")]
    username: Option<String>,
    #[serde(alias = "privatekey")]
    private_key: RawPrivateKey,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawPrivateKey {
    #[serde(deserialize_with = "lenient::opt_path")]
    path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawDatafeed {
    #[serde(deserialize_with = "lenient::opt_text")]
    version: Option<String>,
    retry: Option<RawRetry>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawRetry {
    #[serde(alias = "maxattempts", deserialize_with = "lenient::opt_attempts")]
    max_attempts: Option<i64>,
    #[serde(alias = "initialintervalmillis", deserialize_with = "lenient::opt_millis")]
    initial_interval_millis: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_float")]
    multiplier: Option<f64>,
    #[serde(alias = "maxintervalmillis", deserialize_with = "lenient::opt_millis")]
    max_interval_millis: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawWhatsApp {
    #[serde(alias = "apibaseurl", deserialize_with = "lenient::opt_text")]
    api_base_url: Option<String>,
    #[serde(alias = "apiversion", deserialize_with = "lenient::opt_text")]
    api_version: Option<String>,
    #[serde(alias = "phonenumberid", deserialize_with = "lenient::opt_text")]
    phone_number_id: Option<String>,
    #[serde(alias = "wabaid", deserialize_with = "lenient::opt_text")]
    waba_id: Option<String>,
    #[serde(alias = "accesstoken", deserialize_with = "lenient::opt_secret")]
    access_token: Option<SecretString>,
    #[serde(alias = "appsecret", deserialize_with = "lenient::opt_secret")]
    app_secret: Option<SecretString>,
    webhook: RawWebhook,
    templates: RawWaTemplates,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawWebhook {
    #[serde(deserialize_with = "lenient::opt_text")]
    listen: Option<String>,
    #[serde(deserialize_with = "lenient::opt_text")]
    path: Option<String>,
    #[serde(alias = "verifytoken", deserialize_with = "lenient::opt_secret")]
    verify_token: Option<SecretString>,
    #[serde(alias = "headerreadtimeoutmillis", deserialize_with = "lenient::opt_millis")]
    header_read_timeout_millis: Option<u64>,
    #[serde(alias = "requesttimeoutmillis", deserialize_with = "lenient::opt_millis")]
    request_timeout_millis: Option<u64>,
    #[serde(alias = "maxconnections", deserialize_with = "lenient::opt_count")]
    max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMonitoring {
    #[serde(deserialize_with = "lenient::opt_text")]
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawWaTemplates {
    invitation: Option<RawTemplateRef>,
    notice: Option<RawTemplateRef>,
    message: Option<RawTemplateRef>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct RawTemplateRef {
    #[serde(deserialize_with = "lenient::opt_text")]
    name: Option<String>,
    #[serde(deserialize_with = "lenient::opt_text")]
    language: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawFeatures {
    #[serde(alias = "nativegroups", deserialize_with = "lenient::opt_bool")]
    native_groups: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawEntitlements {
    /// User ids (numbers, quoted or not) or emails.
    #[serde(deserialize_with = "lenient::opt_texts")]
    advisors: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawStore {
    #[serde(deserialize_with = "lenient::opt_path")]
    path: Option<PathBuf>,
    /// PostgreSQL (a secret: it may carry the password).
    #[serde(deserialize_with = "lenient::opt_secret")]
    url: Option<SecretString>,
    #[serde(rename = "poolSize", alias = "poolsize", deserialize_with = "lenient::opt_count")]
    pool_size: Option<u32>,
    #[serde(
        rename = "statementTimeoutMillis",
        alias = "statementtimeoutmillis",
        deserialize_with = "lenient::opt_millis"
    )]
    statement_timeout_millis: Option<u64>,
    #[serde(
        rename = "retentionDays",
        alias = "retentiondays",
        deserialize_with = "lenient::opt_days"
    )]
    retention_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawTemplatesDir {
    #[serde(deserialize_with = "lenient::opt_path")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLogging {
    #[serde(deserialize_with = "lenient::opt_text")]
    format: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validated configuration.
// ---------------------------------------------------------------------------------------------

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub symphony: SymphonyConfig,
    pub whatsapp: WhatsAppConfig,
    pub features: FeaturesConfig,
    pub entitlements: EntitlementsConfig,
    pub store: StoreConfig,
    pub templates: TemplatesConfig,
    pub logging: LoggingConfig,
    pub monitoring: MonitoringConfig,
}

/// Where `/healthz` and `/metrics` are served (`monitoring.listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonitoringConfig {
    /// Their own listener; `None`: on the webhook's listener (`whatsapp.webhook.listen`).
    pub listen: Option<SocketAddr>,
}

/// Where and how to reach the Symphony pod, agent and key manager, and who the bot is.
#[derive(Debug, Clone)]
pub struct SymphonyConfig {
    /// `scheme://host:port[/context]` of the pod; the client appends `/pod/…` and `/login/…`.
    pub pod_url: Url,
    /// … of the agent; the client appends `/agent/…`.
    pub agent_url: Url,
    /// … of the key manager; the client appends `/relay/…`.
    pub key_manager_url: Url,
    /// … of the session-auth host (certificate auth only; kept for BDK compatibility).
    pub session_auth_url: Url,
    pub username: String,
    pub private_key_path: PathBuf,
    pub connection_timeout: Duration,
    pub read_timeout: Duration,
    pub retry: RetryConfig,
    pub datafeed: DatafeedConfig,
}

#[derive(Debug, Clone)]
pub struct DatafeedConfig {
    /// Always `v2` (validated).
    pub version: String,
    pub retry: RetryConfig,
}

/// Where the bot serves its health check (`GET`, on its HTTP listener).
pub const HEALTH_PATH: &str = "/healthz";
/// Where the bot serves its metrics (Prometheus text).
pub const METRICS_PATH: &str = "/metrics";

/// The longest `Retry-After` honoured when the policy's `max_interval` is shorter.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// BDK-style retry settings: `max_attempts < 0` means retry for ever.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    pub max_attempts: i64,
    pub initial_interval: Duration,
    pub multiplier: f64,
    pub max_interval: Duration,
}

impl RetryConfig {
    /// The BDK's global defaults: 10 attempts, 500 ms, ×2, capped at 5 min.
    pub const BDK_DEFAULT: RetryConfig = RetryConfig {
        max_attempts: 10,
        initial_interval: Duration::from_millis(500),
        multiplier: 2.0,
        max_interval: Duration::from_secs(300),
    };

    /// The wait before retry number `attempt` (0-based): initial × multiplier^attempt, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.powi(attempt.min(64) as i32);
        let millis = (self.initial_interval.as_millis() as f64 * factor)
            .min(self.max_interval.as_millis() as f64);
        Duration::from_millis(millis as u64)
    }

    /// Whether another attempt is allowed after `attempts_made` attempts.
    pub fn allows(&self, attempts_made: u32) -> bool {
        self.max_attempts < 0 || i64::from(attempts_made) < self.max_attempts
    }

    /// The wait before the next attempt after `attempts_made` (≥ 1) failed ones, or `None` when
    /// the failure is final or the attempts are used up. A server's `Retry-After` is honoured
    /// when it asks for longer than the backoff, within reason (see [`RetryConfig::honour`]:
    /// a server asking for a day must not stall a task for a day).
    pub fn next_wait(
        &self,
        attempts_made: u32,
        retryable: bool,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if !retryable || !self.allows(attempts_made) {
            return None;
        }
        self.honour(Some(self.backoff(attempts_made.saturating_sub(1))), retry_after)
    }

    /// The policy as a `backon` backoff: `max_attempts` attempts in all (for ever when
    /// negative), waits from `initial_interval` growing by `multiplier` up to `max_interval`.
    pub fn backoff_builder(&self) -> backon::ExponentialBuilder {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_interval)
            .with_factor(self.multiplier as f32)
            .with_max_delay(self.max_interval);
        if self.max_attempts < 0 {
            builder.without_max_times()
        } else {
            let retries = usize::try_from(self.max_attempts.saturating_sub(1)).unwrap_or(0);
            builder.with_max_times(retries)
        }
    }

    /// A planned wait, lengthened to a server's `Retry-After`, which is honoured up to
    /// `max_interval` or a minute, whichever is longer.
    pub fn honour(
        &self,
        planned: Option<Duration>,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let ceiling = self.max_interval.max(MAX_RETRY_AFTER);
        let asked = retry_after.unwrap_or_default().min(ceiling);
        planned.map(|wait| wait.max(asked))
    }
}

#[derive(Clone)]
pub struct WhatsAppConfig {
    pub api_base_url: Url,
    pub api_version: String,
    pub phone_number_id: String,
    /// The WhatsApp Business Account (`whatsapp.wabaId`, optional): webhooks of another WABA
    /// of the same Meta app are ignored.
    pub waba_id: Option<String>,
    pub access_token: SecretString,
    pub app_secret: SecretString,
    pub webhook: WebhookConfig,
    pub templates: WaTemplatesConfig,
}

impl std::fmt::Debug for WhatsAppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppConfig")
            .field("api_base_url", &self.api_base_url.as_str())
            .field("api_version", &self.api_version)
            .field("phone_number_id", &self.phone_number_id)
            .field("waba_id", &self.waba_id)
            .field("access_token", &"[redacted]")
            .field("app_secret", &"[redacted]")
            .field("webhook", &self.webhook)
            .field("templates", &self.templates)
            .finish()
    }
}

#[derive(Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub path: String,
    pub verify_token: SecretString,
    /// What the HTTP listener allows a client.
    pub limits: HttpLimits,
}

/// Limits of the bot's HTTP listeners: a client that sends slowly or opens many connections
/// cannot hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's headers must arrive within this (`whatsapp.webhook.headerReadTimeoutMillis`,
    /// default 10 s); the connection is closed otherwise.
    pub header_read_timeout: Duration,
    /// A request, its body read included, must be answered within this
    /// (`whatsapp.webhook.requestTimeoutMillis`, default 30 s): 408 and the connection closed.
    pub request_timeout: Duration,
    /// Connections served at once (`whatsapp.webhook.maxConnections`, default 256); more wait
    /// in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("listen", &self.listen)
            .field("path", &self.path)
            .field("verify_token", &"[redacted]")
            .field("limits", &self.limits)
            .finish()
    }
}

/// Names of the Meta message templates registered for the business number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaTemplatesConfig {
    pub invitation: TemplateRef,
    pub notice: TemplateRef,
    /// Carries a relayed chat message when the chat's 24-hour window is closed
    /// (defaults to the notice template).
    pub message: TemplateRef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub name: String,
    pub language: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeaturesConfig {
    pub native_groups: bool,
}

/// Who may use the bot: `*` for everyone, else user ids or emails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitlementsConfig {
    pub advisors: Vec<String>,
}

/// Where the bot keeps its state: SQLite at `path` (one instance), or PostgreSQL at `url`
/// (several instances, DESIGN.md §7).
#[derive(Clone)]
pub struct StoreConfig {
    /// SQLite's file (`store.path`): used when `url` is not set.
    pub path: PathBuf,
    /// PostgreSQL (`store.url`, `WAGB__STORE__URL`): a secret, since it may carry the password.
    pub url: Option<SecretString>,
    /// Pooled PostgreSQL connections per instance (`store.poolSize`, default 8).
    pub pool_size: u32,
    /// `statement_timeout` on every PostgreSQL connection (`store.statementTimeoutMillis`,
    /// default 5000).
    pub statement_timeout: Duration,
    /// Processed events, finished outbox rows and the relayed-message map are pruned after
    /// this many days (`store.retentionDays`, default 30).
    pub retention_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplatesConfig {
    pub dir: PathBuf,
}

/// How the bot writes its log (`logging.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines; colours only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the spans it happened in.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format (text or json)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoggingConfig {
    pub format: LogFormat,
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The YAML file (optional: everything can come from the environment).
    pub file: Option<PathBuf>,
    /// Environment variables to read overrides from; `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
}

impl Config {
    /// Loads `path` with `WAGB__…` overrides from the process environment, then validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_from(&ConfigSource { file: Some(path.to_owned()), env: None })
    }

    /// Loads from an explicit source (tests inject the environment here).
    pub fn load_from(source: &ConfigSource) -> Result<Config, ConfigError> {
        let read = read_raw(source)?;
        validate(read.raw, &read.base, read.type_problems)
    }

    /// [`Config::load_from`] for `check-config`: also says where the templates are, so that
    /// they are checked even when the rest of the configuration is not valid.
    pub fn check(source: &ConfigSource) -> ConfigCheck {
        match read_raw(source) {
            Ok(read) => {
                let templates_dir = templates_dir(read.raw.templates.dir.clone(), &read.base);
                ConfigCheck {
                    config: validate(read.raw, &read.base, read.type_problems),
                    templates_dir: Some(templates_dir),
                }
            }
            Err(e) => ConfigCheck { config: Err(e), templates_dir: None },
        }
    }
}

/// What [`Config::check`] found.
#[derive(Debug)]
pub struct ConfigCheck {
    pub config: Result<Config, ConfigError>,
    /// `templates.dir` resolved, when the file could be read at all.
    pub templates_dir: Option<PathBuf>,
}

/// `templates.dir` (default `./templates`), relative to the config file's folder.
fn templates_dir(raw: Option<PathBuf>, base: &Path) -> PathBuf {
    let dir = raw.unwrap_or_else(|| PathBuf::from("./templates"));
    if dir.is_relative() { base.join(dir) } else { dir }
}

/// A key whose value has the wrong type, found while reading.
#[derive(Debug)]
struct TypeProblem {
    /// The key as written (`whatsapp.webhook.listen`).
    path: String,
    text: String,
}

/// The file and the environment merged into the raw shape.
struct RawRead {
    raw: RawConfig,
    /// The folder relative paths are relative to.
    base: PathBuf,
    /// Every key of the wrong type; each is left out of `raw` (as if unset).
    type_problems: Vec<TypeProblem>,
}

/// Keys whose values are secrets (compared in lowercase, as the environment spells them): an
/// error about them never shows the value.
fn is_secret_key(path: &str) -> bool {
    let path = path.to_ascii_lowercase();
    let last = path.rsplit('.').next().unwrap_or_default();
    ["accesstoken", "appsecret", "verifytoken"].contains(&last)
        || path == "store.url"
        || path == "bot.privatekey"
        || path.starts_with("bot.privatekey.")
}

/// The problem of a key of the wrong type, in the admin's words; a secret's value is not shown.
fn type_problem(path: &str, error: &serde_json::Error) -> String {
    let message = error.to_string();
    // Serde's own wording (`invalid type: integer `5`, expected struct RawWhatsApp`) becomes
    // "expected a section (a map of keys), got integer 5".
    let message =
        match message.strip_prefix("invalid type: ").and_then(|m| m.split_once(", expected ")) {
            Some((got, expected)) => {
                let section = expected.starts_with("struct ");
                let expected = if section { "a section (a map of keys)" } else { expected };
                let got = if section && got.starts_with("string ") {
                    // A section written as one string may hold its secrets (`whatsapp:
                    // "appSecret: …"`): its text is not repeated.
                    "a string (not shown: a section can hold secrets)".to_owned()
                } else {
                    got.replace('`', "")
                };
                format!("expected {expected}, got {got}")
            }
            None => message,
        };
    if is_secret_key(path) && !message.contains("(the value is not shown") {
        let expected = message
            .strip_prefix("expected ")
            .and_then(|m| m.split(", got").next())
            .unwrap_or("another type");
        return format!("{path}: expected {expected} (the value is not shown: it may be a secret)");
    }
    format!("{path}: {message}")
}

/// Removes the value at `path` (a key of a map, an entry of a list); whether it was there.
fn remove_at(value: &mut serde_json::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else { return false };
    let mut current = value;
    for segment in parents {
        let next = match (segment, current) {
            (Segment::Map { key }, serde_json::Value::Object(map)) => map.get_mut(key.as_str()),
            (Segment::Seq { index }, serde_json::Value::Array(list)) => list.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        current = next;
    }
    match (last, current) {
        (Segment::Map { key }, serde_json::Value::Object(map)) => {
            map.remove(key.as_str()).is_some()
        }
        (Segment::Seq { index }, serde_json::Value::Array(list)) if *index < list.len() => {
            list.remove(*index);
            true
        }
        _ => false,
    }
}

/// Deserializes `merged` into the raw shape, reporting every key of the wrong type: each one
/// found is reported, left out, and the rest read again (so they come in the keys' order:
/// alphabetical within each section).
fn deserialize_every_key(
    mut merged: serde_json::Value,
) -> Result<(RawConfig, Vec<TypeProblem>), ConfigError> {
    let mut problems: Vec<TypeProblem> = Vec::new();
    loop {
        match serde_path_to_error::deserialize::<_, RawConfig>(&merged) {
            Ok(raw) => return Ok((raw, problems)),
            Err(e) => {
                let path = e.path().to_string();
                problems.push(TypeProblem { text: type_problem(&path, e.inner()), path });
                // A value that cannot be left out (the whole document is not a map), or a
                // runaway: say what is known.
                if problems.len() > 1_000 || !remove_at(&mut merged, e.path()) {
                    return Err(ConfigError::Invalid(
                        problems.into_iter().map(|p| p.text).collect(),
                    ));
                }
            }
        }
    }
}

/// The file and the environment merged into the raw shape.
/// Keys the config crate would read as paths into lists (`templates[2469135780]`): it makes the
/// list that long, and one such key asks for hundreds of gigabytes (found by the config fuzz
/// target). No key of ours has brackets; each one found is a problem.
fn bracketed_keys(source: &ConfigSource) -> Vec<String> {
    fn walk(node: &yaml_rust2::Yaml, at: &str, found: &mut Vec<String>) {
        match node {
            yaml_rust2::Yaml::Hash(map) => {
                for (key, value) in map {
                    let name = key.as_str().map(str::to_owned).unwrap_or_default();
                    let path = if at.is_empty() { name.clone() } else { format!("{at}.{name}") };
                    if name.contains(['[', ']']) {
                        found.push(format!("{path}: a key cannot hold `[` or `]`"));
                    }
                    walk(value, &path, found);
                }
            }
            yaml_rust2::Yaml::Array(items) => {
                for item in items {
                    walk(item, at, found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    // A file that cannot be read or parsed is reported by the config crate, as before.
    if let Some(text) = source.file.as_ref().and_then(|f| std::fs::read_to_string(f).ok())
        && let Ok(docs) = yaml_rust2::YamlLoader::load_from_str(&text)
    {
        for doc in &docs {
            walk(doc, "", &mut found);
        }
    }
    let env: Vec<String> = match &source.env {
        Some(env) => env.keys().cloned().collect(),
        None => std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect(),
    };
    for name in env {
        if name.to_ascii_uppercase().starts_with(ENV_PREFIX) && name.contains(['[', ']']) {
            found.push(format!("environment variable {name}: a name cannot hold `[` or `]`"));
        }
    }
    found
}

fn read_raw(source: &ConfigSource) -> Result<RawRead, ConfigError> {
    let mut builder = config::Config::builder();
    let bracketed = bracketed_keys(source);
    if !bracketed.is_empty() {
        return Err(ConfigError::Invalid(bracketed));
    }
    if let Some(file) = &source.file {
        if !file.exists() {
            return Err(ConfigError::Load(format!(
                "configuration file {} does not exist",
                file.display()
            )));
        }
        builder = builder.add_source(
            config::File::from(file.as_path()).format(config::FileFormat::Yaml).required(true),
        );
    }
    let file_only = builder
        .build_cloned()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| ConfigError::Load(without_value(&e.to_string())))?;
    // Environment values stay text (a numeric secret keeps its leading zeros); each key's
    // reader takes the number or flag it needs from the text.
    let mut env_only = config::Config::builder()
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(source.env.clone()),
        )
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| {
            ConfigError::Load(format!("environment overrides: {}", without_value(&e.to_string())))
        })?;
    // Lists come comma-separated: WAGB__ENTITLEMENTS__ADVISORS=8100002,bob@example.com
    if let Some(advisors) = env_only.pointer_mut("/entitlements/advisors")
        && let Some(text) = advisors.as_str()
    {
        *advisors = text.split(',').map(|a| serde_json::Value::from(a.trim())).collect();
    }
    let mut merged = file_only;
    if merged.is_null() {
        merged = serde_json::Value::Object(Default::default());
    }
    merge_case_insensitive(&mut merged, env_only);
    let (raw, type_problems) = deserialize_every_key(merged)?;
    // Relative paths are relative to the config file's folder, like the BDK's.
    let base =
        source.file.as_ref().and_then(|f| f.parent()).map(Path::to_path_buf).unwrap_or_default();
    Ok(RawRead { raw, base, type_problems })
}

/// Merges `overrides` (lowercase keys from the environment) into `target` (file keys in
/// camelCase), matching keys case-insensitively so that an override replaces the file's value
/// instead of sitting beside it.
fn merge_case_insensitive(target: &mut serde_json::Value, overrides: serde_json::Value) {
    use serde_json::Value;
    match (target, overrides) {
        (Value::Object(target), Value::Object(overrides)) => {
            for (key, value) in overrides {
                let existing = target.keys().find(|k| k.eq_ignore_ascii_case(&key)).cloned();
                match existing {
                    Some(existing) => {
                        if let Some(slot) = target.get_mut(&existing) {
                            merge_case_insensitive(slot, value);
                        }
                    }
                    None => {
                        target.insert(key, value);
                    }
                }
            }
        }
        (target, overrides) => *target = overrides,
    }
}

fn resolve_client(
    problems: &mut Vec<String>,
    what: &str,
    root: &RawClient,
    own: Option<&RawClient>,
) -> Url {
    let own = own.cloned().unwrap_or_default();
    let scheme = own.scheme.or_else(|| root.scheme.clone()).unwrap_or_else(|| "https".into());
    let host = own.host.or_else(|| root.host.clone());
    let port = own.port.or(root.port).unwrap_or(443);
    let context = own.context.or_else(|| root.context.clone()).unwrap_or_default();
    let fallback = || Url::parse("https://invalid.invalid").unwrap_or_else(|_| unreachable!());
    if scheme != "http" && scheme != "https" {
        problems.push(format!("{what}: scheme must be http or https, not {scheme:?}"));
        return fallback();
    }
    let Some(host) = host.filter(|h| !h.trim().is_empty()) else {
        problems.push(format!("{what}: no host (set `host` or `{what}.host`)"));
        return fallback();
    };
    let context = context.trim_matches('/');
    let text = if context.is_empty() {
        format!("{scheme}://{host}:{port}")
    } else {
        format!("{scheme}://{host}:{port}/{context}")
    };
    match Url::parse(&text) {
        Ok(url) if url.host_str().is_some() => url,
        _ => {
            problems.push(format!("{what}: {text:?} is not a valid URL"));
            fallback()
        }
    }
}

fn resolve_retry(
    problems: &mut Vec<String>,
    what: &str,
    raw: Option<RawRetry>,
    infinite: bool,
) -> RetryConfig {
    let d = RetryConfig::BDK_DEFAULT;
    let raw = raw.unwrap_or_default();
    let multiplier = raw.multiplier.unwrap_or(d.multiplier);
    let retry = RetryConfig {
        max_attempts: raw.max_attempts.unwrap_or(if infinite { -1 } else { d.max_attempts }),
        initial_interval: raw
            .initial_interval_millis
            .map_or(d.initial_interval, Duration::from_millis),
        // As the BDK: a multiplier below 1 falls back to 2.
        multiplier: if multiplier < 1.0 { 2.0 } else { multiplier },
        max_interval: raw.max_interval_millis.map_or(d.max_interval, Duration::from_millis),
    };
    if retry.max_attempts == 0 {
        problems.push(format!(
            "{what}.maxAttempts: 0 would never try; use a positive number or -1 for ever"
        ));
    }
    if retry.initial_interval > retry.max_interval {
        problems.push(format!("{what}: initialIntervalMillis is larger than maxIntervalMillis"));
    }
    retry
}

fn secret_or_empty(s: Option<SecretString>) -> SecretString {
    s.unwrap_or_else(|| SecretString::from(String::new()))
}

/// Checks every value and resolves defaults; `type_problems` (keys of the wrong type, left out of
/// `raw`) come first, and a key reported there is not reported again as missing.
fn validate(
    raw: RawConfig,
    base: &Path,
    type_problems: Vec<TypeProblem>,
) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let root = RawClient {
        scheme: raw.scheme.clone(),
        host: raw.host.clone(),
        port: raw.port,
        context: raw.context.clone(),
    };
    let pod_url = resolve_client(&mut problems, "pod", &root, raw.pod.as_ref());
    let agent_url = resolve_client(&mut problems, "agent", &root, raw.agent.as_ref());
    let key_manager_url =
        resolve_client(&mut problems, "keyManager", &root, raw.key_manager.as_ref());
    let session_auth_url =
        resolve_client(&mut problems, "sessionAuth", &root, raw.session_auth.as_ref());

    let username = raw.bot.username.unwrap_or_default();
    if username.trim().is_empty() {
        problems.push("bot.username: missing (the bot's service-account username)".into());
    }
    let private_key_path = match raw.bot.private_key.path {
        Some(p) if !p.as_os_str().is_empty() => {
            let p = if p.is_relative() { base.join(p) } else { p };
            match std::fs::read(&p) {
                Ok(pem) => {
                    if jsonwebtoken::EncodingKey::from_rsa_pem(&pem).is_err() {
                        problems.push(format!(
                            "bot.privateKey.path: {} is not an RSA private key in PEM (PKCS#1 or PKCS#8)",
                            p.display()
                        ));
                    }
                }
                Err(e) => {
                    problems.push(format!("bot.privateKey.path: cannot read {}: {e}", p.display()))
                }
            }
            p
        }
        _ => {
            problems
                .push("bot.privateKey.path: missing (path to the bot's RSA private key)".into());
            PathBuf::new()
        }
    };
    let version = raw.datafeed.version.unwrap_or_else(|| "v2".into());
    if version != "v2" {
        problems.push(format!("datafeed.version: only v2 is supported, not {version:?}"));
    }
    let retry = resolve_retry(&mut problems, "retry", raw.retry, false);
    let datafeed_retry = resolve_retry(&mut problems, "datafeed.retry", raw.datafeed.retry, true);
    let connection_timeout = Duration::from_millis(raw.connection_timeout.unwrap_or(15_000));
    let read_timeout = Duration::from_millis(raw.read_timeout.unwrap_or(60_000));

    let wa = raw.whatsapp;
    let api_base_text = wa.api_base_url.unwrap_or_else(|| "https://graph.facebook.com".into());
    let api_base_url = match Url::parse(&api_base_text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        _ => {
            problems.push(format!("whatsapp.apiBaseUrl: {api_base_text:?} is not an http(s) URL"));
            Url::parse("https://graph.facebook.com").unwrap_or_else(|_| unreachable!())
        }
    };
    let api_version = wa.api_version.unwrap_or_else(|| "v23.0".into());
    let version_ok =
        api_version.strip_prefix('v').and_then(|v| v.split_once('.')).is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && (a.to_owned() + b).chars().all(|c| c.is_ascii_digit())
        });
    if !version_ok {
        problems.push(format!(
            "whatsapp.apiVersion: {api_version:?} is not a Graph version like v23.0"
        ));
    }
    let phone_number_id = wa.phone_number_id.unwrap_or_default();
    if !phone_number_id.is_empty() && !phone_number_id.chars().all(|c| c.is_ascii_digit()) {
        problems.push(format!(
            "whatsapp.phoneNumberId: {phone_number_id:?} must be the numeric phone number id"
        ));
    }
    let listen_text = wa.webhook.listen.unwrap_or_else(|| "0.0.0.0:8443".into());
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        problems.push(format!(
            "whatsapp.webhook.listen: {listen_text:?} is not HOST:PORT (e.g. 0.0.0.0:8443)"
        ));
        SocketAddr::from(([0, 0, 0, 0], 8443))
    });
    let path = wa.webhook.path.unwrap_or_else(|| "/whatsapp/webhook".into());
    if !path.starts_with('/') {
        problems.push(format!("whatsapp.webhook.path: {path:?} must start with /"));
    }
    let monitoring_listen = raw.monitoring.listen.filter(|l| !l.trim().is_empty()).and_then(|l| {
        l.trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                problems.push(format!(
                    "monitoring.listen: {l:?} is not HOST:PORT (e.g. 127.0.0.1:9090)"
                ))
            })
            .ok()
    });
    if monitoring_listen.is_none() && [HEALTH_PATH, METRICS_PATH].contains(&path.as_str()) {
        problems.push(format!(
            "whatsapp.webhook.path: {path:?} is taken by the monitoring endpoint on the same port"
        ));
    }
    if monitoring_listen.is_some_and(|m| m == listen && m.port() != 0) {
        problems.push(format!(
            "monitoring.listen: {listen} is the webhook's address (leave it out to serve both there)"
        ));
    }
    let defaults = HttpLimits::default();
    let positive_millis =
        |problems: &mut Vec<String>, key: &str, v: Option<u64>, d: Duration| match v {
            Some(0) => {
                problems.push(format!("whatsapp.webhook.{key}: must be more than 0"));
                d
            }
            Some(ms) => Duration::from_millis(ms),
            None => d,
        };
    let limits = HttpLimits {
        header_read_timeout: positive_millis(
            &mut problems,
            "headerReadTimeoutMillis",
            wa.webhook.header_read_timeout_millis,
            defaults.header_read_timeout,
        ),
        request_timeout: positive_millis(
            &mut problems,
            "requestTimeoutMillis",
            wa.webhook.request_timeout_millis,
            defaults.request_timeout,
        ),
        max_connections: match wa.webhook.max_connections {
            Some(0) => {
                problems.push("whatsapp.webhook.maxConnections: must be at least 1".into());
                defaults.max_connections
            }
            Some(n) => n as usize,
            None => defaults.max_connections,
        },
    };
    let template_ref =
        |problems: &mut Vec<String>, what: &str, raw: Option<RawTemplateRef>, default: &str| {
            let raw = raw.unwrap_or_default();
            let t = TemplateRef {
                name: raw.name.unwrap_or_else(|| default.into()),
                language: raw.language.unwrap_or_else(|| "en_US".into()),
            };
            if t.name.trim().is_empty() {
                problems.push(format!("whatsapp.templates.{what}.name: empty"));
            }
            if t.language.trim().is_empty() {
                problems.push(format!("whatsapp.templates.{what}.language: empty"));
            }
            t
        };
    let templates_wa = WaTemplatesConfig {
        invitation: template_ref(
            &mut problems,
            "invitation",
            wa.templates.invitation,
            "group_invite_link",
        ),
        notice: template_ref(&mut problems, "notice", wa.templates.notice.clone(), "group_update"),
        message: template_ref(
            &mut problems,
            "message",
            wa.templates.message.or(wa.templates.notice),
            "group_update",
        ),
    };
    let advisors = raw.entitlements.advisors.unwrap_or_else(|| vec!["*".into()]);
    if advisors.iter().any(|a| a.trim().is_empty()) {
        problems.push("entitlements.advisors: contains an empty entry".into());
    }
    let store_path = raw.store.path.unwrap_or_else(|| PathBuf::from("./data/wa-groups-bot.db"));
    if store_path.as_os_str().is_empty() {
        problems.push("store.path: empty".into());
    }
    let store_path = if store_path.is_relative() { base.join(store_path) } else { store_path };
    let retention_days = raw.store.retention_days.unwrap_or(30);
    if retention_days == 0 {
        problems.push("store.retentionDays: must be at least 1".into());
    }
    let store_url = raw.store.url.filter(|u| !u.expose_secret().trim().is_empty());
    if let Some(url) = &store_url {
        let lower = url.expose_secret().trim_start().to_ascii_lowercase();
        if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
            // The value is not shown: it may carry a password.
            problems.push(
                "store.url: not a PostgreSQL URL (postgres://user@host:5432/db or \
                 postgresql://…; the value is not shown: it may carry a password)"
                    .into(),
            );
        }
    }
    let pool_size = raw.store.pool_size.unwrap_or(8);
    if pool_size == 0 {
        problems.push("store.poolSize: must be at least 1".into());
    }
    let statement_timeout_ms = raw.store.statement_timeout_millis.unwrap_or(5_000);
    if statement_timeout_ms == 0 {
        problems.push("store.statementTimeoutMillis: must be at least 1".into());
    }
    let templates_dir = templates_dir(raw.templates.dir, base);
    let log_format = match raw.logging.format.as_deref().map(str::parse::<LogFormat>) {
        None => LogFormat::default(),
        Some(Ok(format)) => format,
        Some(Err(e)) => {
            problems.push(format!("logging.format: {e}"));
            LogFormat::default()
        }
    };

    if !problems.is_empty() || !type_problems.is_empty() {
        let reported = |p: &String| {
            let p = p.to_ascii_lowercase();
            type_problems.iter().any(|t| {
                let key = t.path.to_ascii_lowercase();
                // The key itself, or a key inside a section of the wrong type.
                p.starts_with(&format!("{key}:")) || p.starts_with(&format!("{key}."))
            })
        };
        problems.retain(|p| !reported(p));
        let mut all: Vec<String> = type_problems.iter().map(|t| t.text.clone()).collect();
        all.extend(problems);
        return Err(ConfigError::Invalid(all));
    }
    Ok(Config {
        symphony: SymphonyConfig {
            pod_url,
            agent_url,
            key_manager_url,
            session_auth_url,
            username,
            private_key_path,
            connection_timeout,
            read_timeout,
            retry,
            datafeed: DatafeedConfig { version, retry: datafeed_retry },
        },
        whatsapp: WhatsAppConfig {
            api_base_url,
            api_version,
            phone_number_id,
            waba_id: wa.waba_id.filter(|w| !w.trim().is_empty()),
            access_token: secret_or_empty(wa.access_token),
            app_secret: secret_or_empty(wa.app_secret),
            webhook: WebhookConfig {
                listen,
                path,
                verify_token: secret_or_empty(wa.webhook.verify_token),
                limits,
            },
            templates: templates_wa,
        },
        features: FeaturesConfig { native_groups: raw.features.native_groups.unwrap_or(true) },
        entitlements: EntitlementsConfig { advisors },
        store: StoreConfig {
            path: store_path,
            url: store_url,
            pool_size,
            statement_timeout: Duration::from_millis(statement_timeout_ms),
            retention_days,
        },
        templates: TemplatesConfig { dir: templates_dir },
        logging: LoggingConfig { format: log_format },
        monitoring: MonitoringConfig { listen: monitoring_listen },
    })
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("path", &self.path)
            .field("url", &self.url.as_ref().map(|_| "[redacted]"))
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

impl StoreConfig {
    /// Whether several instances share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.url.is_some()
    }
}

impl WhatsAppConfig {
    /// Whether the WhatsApp side has what it needs to call the Cloud API.
    pub fn is_configured(&self) -> bool {
        !self.phone_number_id.is_empty() && !self.access_token.expose_secret().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_PKCS8: &str = include_str!("../tests/fixtures/keys/bot-pkcs8.pem");

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn load(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file = write(dir, "bot-config.yaml", yaml);
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::load_from(&ConfigSource { file: Some(file), env: Some(env) })
    }

    /// Found by fuzzing: a file that is one string, not a mapping, was quoted whole in the
    /// error — secrets and all.
    #[test]
    fn a_file_that_is_not_a_mapping_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(dir.path(), "sc~~~~~APPSECRET=s3cr3t-value-42 WAGB9\n", &[])
            .expect_err("not a mapping");
        let said = err.to_string();
        assert!(said.contains("invalid type: string, expected a map"), "{said}");
        assert!(!said.contains("s3cr3t-value-42"), "the file's text is shown: {said}");
    }

    #[test]
    fn bdk_keys_resolve_with_per_component_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", KEY_PKCS8);
        let cfg = load(
            dir.path(),
            "host: pod.example.com\nport: 8443\nagent: {host: agent.example.com, port: 9443, scheme: http}\n\
             keyManager: {host: km.example.com}\nbot: {username: wa-bot, privateKey: {path: bot.pem}}\n",
            &[],
        )
        .expect("valid");
        assert_eq!(cfg.symphony.pod_url.as_str(), "https://pod.example.com:8443/");
        assert_eq!(cfg.symphony.agent_url.as_str(), "http://agent.example.com:9443/");
        assert_eq!(cfg.symphony.key_manager_url.as_str(), "https://km.example.com:8443/");
        assert_eq!(cfg.symphony.private_key_path, dir.path().join("bot.pem"));
        assert_eq!(cfg.symphony.retry, RetryConfig::BDK_DEFAULT);
        assert_eq!(cfg.symphony.datafeed.retry.max_attempts, -1);
        assert!(cfg.features.native_groups);
        assert_eq!(cfg.entitlements.advisors, vec!["*".to_owned()]);
    }

    #[test]
    fn environment_overrides_win_and_secrets_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", KEY_PKCS8);
        let cfg = load(
            dir.path(),
            "host: pod.example.com\nbot: {username: wa-bot, privateKey: {path: bot.pem}}\n\
             whatsapp: {accessToken: from-file, phoneNumberId: \"123\"}\nfeatures: {nativeGroups: true}\n",
            &[
                ("WAGB__WHATSAPP__ACCESSTOKEN", "s3cret-token"),
                ("WAGB__WHATSAPP__APPSECRET", "app-s3cret"),
                ("WAGB__FEATURES__NATIVEGROUPS", "false"),
                ("WAGB__ENTITLEMENTS__ADVISORS", "1001,bob@example.com"),
                ("WAGB__WHATSAPP__WEBHOOK__LISTEN", "127.0.0.1:9000"),
            ],
        )
        .expect("valid");
        assert_eq!(cfg.whatsapp.access_token.expose_secret(), "s3cret-token");
        assert_eq!(cfg.whatsapp.app_secret.expose_secret(), "app-s3cret");
        assert!(!cfg.features.native_groups);
        assert_eq!(
            cfg.entitlements.advisors,
            vec!["1001".to_owned(), "bob@example.com".to_owned()]
        );
        assert_eq!(cfg.whatsapp.webhook.listen, "127.0.0.1:9000".parse().expect("addr"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("from-file"), "{shown}");
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(
            dir.path(),
            "scheme: ftp\nbot: {privateKey: {path: missing.pem}}\ndatafeed: {version: v1}\n\
             whatsapp: {apiBaseUrl: 'not a url', apiVersion: '23', webhook: {listen: nowhere, path: hook}}\n",
            &[],
        )
        .expect_err("invalid");
        let ConfigError::Invalid(problems) = &err else { panic!("{err}") };
        let text = err.to_string();
        for expected in [
            "scheme must be http or https",
            "bot.username: missing",
            "cannot read",
            "datafeed.version: only v2",
            "whatsapp.apiBaseUrl",
            "whatsapp.apiVersion",
            "whatsapp.webhook.listen",
            "whatsapp.webhook.path",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(problems.len() >= 8, "{text}");
    }

    #[test]
    fn the_webhook_path_cannot_hide_the_monitoring_endpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", KEY_PKCS8);
        let err = load(
            dir.path(),
            "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\nwhatsapp: {webhook: {path: /metrics}}\n",
            &[],
        )
        .expect_err("invalid");
        assert!(
            err.to_string().contains("\"/metrics\" is taken by the monitoring endpoint"),
            "{err}"
        );
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", "-----BEGIN NOTHING-----\n");
        let err =
            load(dir.path(), "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\n", &[])
                .expect_err("invalid");
        assert!(err.to_string().contains("is not an RSA private key"), "{err}");
    }

    #[test]
    fn advisors_are_user_ids_quoted_or_not_or_emails() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", KEY_PKCS8);
        let base = "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\n";
        let cfg = load(
            dir.path(),
            &format!("{base}entitlements:\n  advisors: [8100002, \"8100003\", bob@example.com]\n"),
            &[],
        )
        .expect("numbers are user ids");
        assert_eq!(cfg.entitlements.advisors, ["8100002", "8100003", "bob@example.com"]);
        // One user id alone in the environment is a list of one.
        let cfg =
            load(dir.path(), base, &[("WAGB__ENTITLEMENTS__ADVISORS", "8100002")]).expect("one id");
        assert_eq!(cfg.entitlements.advisors, ["8100002"]);
        let err = load(dir.path(), &format!("{base}entitlements: {{advisors: [1, [2]]}}\n"), &[])
            .expect_err("a list in the list");
        assert!(
            err.to_string().contains(
                "entitlements.advisors: entry 2: expected a string or a number, got a list"
            ),
            "{err}"
        );
    }

    #[test]
    fn every_badly_typed_key_is_reported_with_the_missing_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = "host: pod.example.com\nport: notaport\nreadTimeout: soon\n\
                    features: {nativeGroups: maybe}\nbot: {}\n";
        let file = write(dir.path(), "bot-config.yaml", yaml);
        let checked = Config::check(&ConfigSource { file: Some(file), env: Some(HashMap::new()) });
        let err = checked.config.expect_err("invalid");
        let ConfigError::Invalid(problems) = &err else { panic!("{err}") };
        assert_eq!(
            problems,
            &[
                "features.nativeGroups: expected true or false, got \"maybe\"",
                "port: expected a port number (0 to 65535), got \"notaport\"",
                "readTimeout: expected a whole number of milliseconds, got \"soon\"",
                "bot.username: missing (the bot's service-account username)",
                "bot.privateKey.path: missing (path to the bot's RSA private key)",
            ],
            "{err}"
        );
        assert!(err.to_string().starts_with("invalid configuration (5 problems)"), "{err}");
        assert_eq!(checked.templates_dir, Some(dir.path().join("./templates")), "still checked");
    }

    #[test]
    fn a_key_of_the_wrong_type_is_not_also_reported_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", KEY_PKCS8);
        let err = load(
            dir.path(),
            "host: h\nbot: {username: [a, b], privateKey: {path: bot.pem}}\nwhatsapp: 5\n",
            &[("WAGB__PORT", "70000")],
        )
        .expect_err("invalid");
        let ConfigError::Invalid(problems) = &err else { panic!("{err}") };
        assert_eq!(
            problems,
            &[
                "bot.username: expected a string, got a list",
                "port: expected a port number (0 to 65535), got \"70000\"",
                "whatsapp: expected a section (a map of keys), got integer 5",
            ],
            "{err}"
        );
    }

    #[test]
    fn numbers_flags_and_secrets_come_from_the_environment_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", KEY_PKCS8);
        let cfg = load(
            dir.path(),
            "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\n",
            &[
                ("WAGB__PORT", "8443"),
                ("WAGB__READTIMEOUT", "90000"),
                ("WAGB__FEATURES__NATIVEGROUPS", "FALSE"),
                ("WAGB__WHATSAPP__PHONENUMBERID", "106540352242922"),
                ("WAGB__WHATSAPP__APPSECRET", "0012345"),
                ("WAGB__WHATSAPP__WEBHOOK__VERIFYTOKEN", "777"),
                ("WAGB__RETRY__MULTIPLIER", "1.5"),
            ],
        )
        .expect("valid");
        assert_eq!(cfg.symphony.pod_url.as_str(), "https://h:8443/");
        assert_eq!(cfg.symphony.read_timeout, Duration::from_secs(90));
        assert!(!cfg.features.native_groups);
        assert_eq!(cfg.whatsapp.phone_number_id, "106540352242922");
        assert_eq!(cfg.whatsapp.app_secret.expose_secret(), "0012345", "leading zeros kept");
        assert_eq!(cfg.whatsapp.webhook.verify_token.expose_secret(), "777");
        assert_eq!(cfg.symphony.retry.multiplier, 1.5);
    }

    #[test]
    fn a_key_with_a_list_index_is_refused_before_it_is_read() {
        // Found by the config fuzz target: the config crate read `templates[2469135780]` as an
        // index and made a list that long (an allocation of 237 GB: the process aborted).
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(
            dir.path(),
            "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\n\
             templates[2469135780]: .\nwhatsapp: {webhook: {\"a[1]\": x}}\n",
            &[("WAGB__STORE[99999999999]", "1")],
        )
        .expect_err("invalid");
        let ConfigError::Invalid(problems) = &err else { panic!("{err}") };
        assert_eq!(
            problems,
            &[
                "templates[2469135780]: a key cannot hold `[` or `]`",
                "whatsapp.webhook.a[1]: a key cannot hold `[` or `]`",
                "environment variable WAGB__STORE[99999999999]: a name cannot hold `[` or `]`",
            ],
            "{err}"
        );
    }

    #[test]
    fn a_section_written_as_one_string_is_refused_without_its_text() {
        // Found by the config fuzz target: the section's text was quoted, and it can be where a
        // secret was written in the wrong shape.
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(
            dir.path(),
            "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\n\
             whatsapp: \"appSecret: s3cret-app\"\n",
            &[],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("whatsapp: expected a section (a map of keys), got a string (not shown"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "the text is shown:\n{text}");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_reported_without_its_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(
            dir.path(),
            "host: h\nbot: {username: b, privateKey: \"-----BEGIN PRIVATE KEY----- MIIEs3cret\"}\n\
             whatsapp:\n  accessToken: 424242.4242\n  appSecret: {value: s3cret-app}\n  \
             webhook: {verifyToken: [s3cret-verify]}\n",
            &[],
        )
        .expect_err("invalid");
        let text = err.to_string();
        for key in [
            "bot.privateKey: expected a section (a map of keys) (the value is not shown",
            "whatsapp.accessToken: expected a string (the value is not shown",
            "whatsapp.appSecret: expected a string (the value is not shown",
            "whatsapp.webhook.verifyToken: expected a string (the value is not shown",
        ] {
            assert!(text.contains(key), "missing {key:?} in:\n{text}");
        }
        for secret in ["s3cret", "424242", "4242"] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
    }

    #[test]
    fn the_log_format_is_text_or_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", KEY_PKCS8);
        let base = "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\n";
        assert_eq!(load(dir.path(), base, &[]).expect("valid").logging.format, LogFormat::Text);
        let cfg =
            load(dir.path(), &format!("{base}logging: {{format: json}}\n"), &[]).expect("valid");
        assert_eq!(cfg.logging.format, LogFormat::Json);
        let cfg = load(dir.path(), base, &[("WAGB__LOGGING__FORMAT", "JSON")]).expect("valid");
        assert_eq!(cfg.logging.format, LogFormat::Json);
        let err = load(dir.path(), &format!("{base}logging: {{format: xml}}\n"), &[])
            .expect_err("invalid");
        assert!(
            err.to_string().contains("logging.format: \"xml\" is not a log format (text or json)"),
            "{err}"
        );
    }

    #[test]
    fn the_store_is_sqlite_by_default_and_postgresql_with_a_url_whose_password_never_prints() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", KEY_PKCS8);
        let yaml = "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\n";
        let cfg = load(dir.path(), yaml, &[]).expect("valid");
        assert!(!cfg.store.is_shared() && cfg.store.url.is_none(), "SQLite by default");
        assert_eq!(cfg.store.path, dir.path().join("./data/wa-groups-bot.db"));
        assert_eq!(
            (cfg.store.pool_size, cfg.store.statement_timeout),
            (8, Duration::from_millis(5_000)),
            "defaults"
        );
        let url = "postgres://wagb:pa55-Word-9@db.internal:5432/wagb?sslmode=require";
        let cfg = load(
            dir.path(),
            yaml,
            &[
                ("WAGB__STORE__URL", url),
                ("WAGB__STORE__POOLSIZE", "3"),
                ("WAGB__STORE__STATEMENTTIMEOUTMILLIS", "1500"),
            ],
        )
        .expect("valid");
        assert!(cfg.store.is_shared());
        assert_eq!(cfg.store.url.as_ref().map(|u| u.expose_secret().to_owned()), Some(url.into()));
        assert_eq!(
            (cfg.store.pool_size, cfg.store.statement_timeout),
            (3, Duration::from_millis(1_500))
        );
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("pa55-Word-9"), "the password in Debug: {debug}");
        // The same keys from the file.
        let cfg = load(
            dir.path(),
            &format!("{yaml}store: {{url: \"{url}\", poolSize: 2, statementTimeoutMillis: 700}}\n"),
            &[],
        )
        .expect("valid");
        assert_eq!(
            (cfg.store.pool_size, cfg.store.statement_timeout),
            (2, Duration::from_millis(700))
        );
    }

    #[test]
    fn bad_store_settings_are_all_reported_without_the_url() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bot.pem", KEY_PKCS8);
        let err = load(
            dir.path(),
            "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\n\
             store: {poolSize: 0, statementTimeoutMillis: soon}\n",
            &[("WAGB__STORE__URL", "mysql://wagb:pa55-Word-9@db/wagb")],
        )
        .expect_err("invalid");
        let text = err.to_string();
        for problem in [
            "store.url: not a PostgreSQL URL",
            "store.poolSize: must be at least 1",
            "store.statementTimeoutMillis: expected a whole number of milliseconds",
        ] {
            assert!(text.contains(problem), "missing {problem:?} in:\n{text}");
        }
        assert!(!text.contains("pa55-Word-9"), "the password shown:\n{text}");
        // A URL of the wrong type: not shown either.
        let err = load(
            dir.path(),
            "host: h\nbot: {username: b, privateKey: {path: bot.pem}}\nstore: {url: [pa55-Word-9]}\n",
            &[],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("store.url: expected a string"), "{text}");
        assert!(!text.contains("pa55-Word-9"), "the password shown:\n{text}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let r = RetryConfig {
            max_attempts: 3,
            initial_interval: Duration::from_millis(100),
            multiplier: 2.0,
            max_interval: Duration::from_millis(350),
        };
        assert_eq!(r.backoff(0), Duration::from_millis(100));
        assert_eq!(r.backoff(1), Duration::from_millis(200));
        assert_eq!(r.backoff(2), Duration::from_millis(350));
        assert!(r.allows(2) && !r.allows(3));
        assert_eq!(r.next_wait(1, true, None), Some(Duration::from_millis(100)));
        assert_eq!(
            r.next_wait(2, true, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2)),
            "Retry-After wins"
        );
        assert_eq!(
            r.next_wait(2, true, Some(Duration::from_secs(86_400))),
            Some(Duration::from_secs(60)),
            "a day is not waited"
        );
        assert_eq!(r.next_wait(1, false, None), None, "final failures are not retried");
        assert_eq!(r.next_wait(3, true, None), None, "attempts used up");
    }
}
