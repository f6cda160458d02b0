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
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    context: Option<String>,
    #[serde(alias = "connectiontimeout")]
    connection_timeout: Option<u64>,
    #[serde(alias = "readtimeout")]
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
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawClient {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    context: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawBot {
    username: Option<String>,
    #[serde(alias = "privatekey")]
    private_key: RawPrivateKey,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawPrivateKey {
    path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawDatafeed {
    version: Option<String>,
    retry: Option<RawRetry>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawRetry {
    #[serde(alias = "maxattempts")]
    max_attempts: Option<i64>,
    #[serde(alias = "initialintervalmillis")]
    initial_interval_millis: Option<u64>,
    multiplier: Option<f64>,
    #[serde(alias = "maxintervalmillis")]
    max_interval_millis: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawWhatsApp {
    #[serde(alias = "apibaseurl")]
    api_base_url: Option<String>,
    #[serde(alias = "apiversion")]
    api_version: Option<String>,
    #[serde(alias = "phonenumberid")]
    phone_number_id: Option<String>,
    #[serde(alias = "wabaid")]
    waba_id: Option<String>,
    #[serde(alias = "accesstoken")]
    access_token: Option<SecretString>,
    #[serde(alias = "appsecret")]
    app_secret: Option<SecretString>,
    webhook: RawWebhook,
    templates: RawWaTemplates,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawWebhook {
    listen: Option<String>,
    path: Option<String>,
    #[serde(alias = "verifytoken")]
    verify_token: Option<SecretString>,
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
    name: Option<String>,
    language: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawFeatures {
    #[serde(alias = "nativegroups")]
    native_groups: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawEntitlements {
    advisors: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawStore {
    path: Option<PathBuf>,
    #[serde(rename = "retentionDays")]
    retention_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawTemplatesDir {
    dir: Option<PathBuf>,
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
    /// when it asks for longer than the backoff.
    pub fn next_wait(
        &self,
        attempts_made: u32,
        retryable: bool,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if !retryable || !self.allows(attempts_made) {
            return None;
        }
        Some(self.backoff(attempts_made.saturating_sub(1)).max(retry_after.unwrap_or_default()))
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
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("listen", &self.listen)
            .field("path", &self.path)
            .field("verify_token", &"[redacted]")
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Processed events, finished outbox rows and the relayed-message map are pruned after
    /// this many days (`store.retentionDays`, default 30).
    pub retention_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplatesConfig {
    pub dir: PathBuf,
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
        let (raw, base) = read_raw(source)?;
        validate(raw, &base)
    }

    /// [`Config::load_from`] for `check-config`: also says where the templates are, so that
    /// they are checked even when the rest of the configuration is not valid.
    pub fn check(source: &ConfigSource) -> ConfigCheck {
        match read_raw(source) {
            Ok((raw, base)) => {
                let templates_dir = templates_dir(raw.templates.dir.clone(), &base);
                ConfigCheck { config: validate(raw, &base), templates_dir: Some(templates_dir) }
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

/// The file and the environment merged into the raw shape, with the folder relative paths are
/// relative to.
fn read_raw(source: &ConfigSource) -> Result<(RawConfig, PathBuf), ConfigError> {
    let mut builder = config::Config::builder();
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
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    let env_only = config::Config::builder()
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("entitlements.advisors")
                .source(source.env.clone()),
        )
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| ConfigError::Load(format!("environment overrides: {e}")))?;
    let mut merged = file_only;
    if merged.is_null() {
        merged = serde_json::Value::Object(Default::default());
    }
    merge_case_insensitive(&mut merged, env_only);
    let raw: RawConfig = serde_path_to_error::deserialize(merged)
        .map_err(|e| ConfigError::Invalid(vec![format!("{}: {}", e.path(), e.inner())]))?;
    // Relative paths are relative to the config file's folder, like the BDK's.
    let base =
        source.file.as_ref().and_then(|f| f.parent()).map(Path::to_path_buf).unwrap_or_default();
    Ok((raw, base))
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

fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
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
    if [crate::monitoring::HEALTH_PATH, crate::monitoring::METRICS_PATH].contains(&path.as_str()) {
        problems.push(format!(
            "whatsapp.webhook.path: {path:?} is taken by the monitoring endpoint on the same port"
        ));
    }
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
    let templates_dir = templates_dir(raw.templates.dir, base);

    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
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
            },
            templates: templates_wa,
        },
        features: FeaturesConfig { native_groups: raw.features.native_groups.unwrap_or(true) },
        entitlements: EntitlementsConfig { advisors },
        store: StoreConfig { path: store_path, retention_days },
        templates: TemplatesConfig { dir: templates_dir },
    })
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
        assert_eq!(r.next_wait(1, false, None), None, "final failures are not retried");
        assert_eq!(r.next_wait(3, true, None), None, "attempts used up");
    }
}
