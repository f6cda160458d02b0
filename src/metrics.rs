//! Runtime metrics: the bot's counters, the datafeed heartbeat `/healthz` reads, and their
//! Prometheus text exposition for `/metrics`. One small registry per running bot (cheap to
//! clone), so that several bots in one process (the tests) count apart.
//!
//! Label values are bounded: sources, directions and command names are fixed sets, template
//! names come from the configuration, and API endpoints are normalised (every id becomes `{id}`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The counter families, in the order `/metrics` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    InboundEvents,
    InboundDuplicates,
    Commands,
    NoticesSent,
    RelayedMessages,
    OutboxRetries,
    ApiErrors,
    DatafeedReads,
    EventsSetAside,
}

impl Family {
    const ALL: [Family; 9] = [
        Family::InboundEvents,
        Family::InboundDuplicates,
        Family::Commands,
        Family::NoticesSent,
        Family::RelayedMessages,
        Family::OutboxRetries,
        Family::ApiErrors,
        Family::DatafeedReads,
        Family::EventsSetAside,
    ];

    fn name(self) -> &'static str {
        match self {
            Family::InboundEvents => "wagb_inbound_events_total",
            Family::InboundDuplicates => "wagb_inbound_duplicates_total",
            Family::Commands => "wagb_commands_total",
            Family::NoticesSent => "wagb_whatsapp_notices_sent_total",
            Family::RelayedMessages => "wagb_relayed_messages_total",
            Family::OutboxRetries => "wagb_outbox_retries_total",
            Family::ApiErrors => "wagb_api_errors_total",
            Family::DatafeedReads => "wagb_datafeed_reads_total",
            Family::EventsSetAside => "wagb_events_set_aside_total",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Family::InboundEvents => {
                "Events received and persisted, by source (symphony: datafeed, whatsapp: webhooks)."
            }
            Family::InboundDuplicates => "Redelivered events recognised and dropped, by source.",
            Family::Commands => "/wa commands received, by command (invalid: not understood).",
            Family::NoticesSent => {
                "WhatsApp template messages sent (notices, invitations, confirmations), by template."
            }
            Family::RelayedMessages => {
                "Chat messages relayed, by direction (to_whatsapp, to_symphony)."
            }
            Family::OutboxRetries => "Outbox effects that failed and were scheduled again.",
            Family::ApiErrors => {
                "Failed API call attempts (retries included), by client, endpoint and status."
            }
            Family::DatafeedReads => "Datafeed reads answered (events or an empty long poll).",
            Family::EventsSetAside => {
                "Inbound events that kept failing and were set aside (dead letter), by source."
            }
        }
    }

    fn labels(self) -> &'static [&'static str] {
        match self {
            Family::InboundEvents | Family::InboundDuplicates | Family::EventsSetAside => {
                &["source"]
            }
            Family::Commands => &["command"],
            Family::NoticesSent => &["template"],
            Family::RelayedMessages => &["direction"],
            Family::OutboxRetries | Family::DatafeedReads => &[],
            Family::ApiErrors => &["client", "endpoint", "status"],
        }
    }

    /// Label values shown at 0 before anything happened, so that rates start from the start.
    fn seeded(self) -> &'static [&'static str] {
        match self {
            Family::InboundEvents | Family::InboundDuplicates => &["symphony", "whatsapp"],
            Family::EventsSetAside => &["outcome", "symphony", "whatsapp"],
            Family::RelayedMessages => &["to_symphony", "to_whatsapp"],
            Family::OutboxRetries | Family::DatafeedReads => &[""],
            _ => &[],
        }
    }
}

/// Where an inbound event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Symphony,
    WhatsApp,
}

impl EventSource {
    fn as_str(self) -> &'static str {
        match self {
            EventSource::Symphony => "symphony",
            EventSource::WhatsApp => "whatsapp",
        }
    }
}

/// Which way a chat message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayDirection {
    ToWhatsApp,
    ToSymphony,
}

/// Which API a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiClient {
    Symphony,
    WhatsApp,
}

/// The bot's metrics. Cheap to clone; every clone counts into the same registry.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Registry>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Registry {
    counters: Mutex<BTreeMap<(Family, Vec<String>), u64>>,
    /// Monotonic origin of `datafeed_alive_ms`.
    started: Instant,
    /// Milliseconds after `started` of the datafeed loop's last sign of life; `u64::MAX`: never.
    datafeed_alive_ms: AtomicU64,
    /// Long-lived tasks and how they stand.
    tasks: Mutex<BTreeMap<&'static str, TaskState>>,
}

/// How a long-lived task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Running,
    /// It ended (the reason); the bot exits when a task it needs ends.
    Stopped(String),
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            tasks: Mutex::default(),
            counters: Mutex::default(),
            started: Instant::now(),
            datafeed_alive_ms: AtomicU64::new(u64::MAX),
        }
    }
}

/// Gauges read at scrape time from elsewhere (the store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxDepth {
    /// Effects waiting to be performed (retries included).
    pub pending: u64,
    /// Effects given up on.
    pub failed: u64,
    /// Inbound events set aside (dead letter), waiting for an administrator.
    pub events_set_aside: u64,
}

impl Metrics {
    fn add(&self, family: Family, labels: &[&str]) {
        debug_assert_eq!(labels.len(), family.labels().len(), "{}", family.name());
        let key = (family, labels.iter().map(|l| (*l).to_owned()).collect());
        let mut counters = self.0.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.entry(key).or_insert(0) += 1;
    }

    /// An event was received and persisted (`new`), or recognised as a redelivery.
    pub fn inbound_event(&self, source: EventSource, new: bool) {
        let family = if new { Family::InboundEvents } else { Family::InboundDuplicates };
        self.add(family, &[source.as_str()]);
    }

    /// A `/wa` command was received (`invalid` for one that was not understood).
    pub fn command(&self, name: &'static str) {
        self.add(Family::Commands, &[name]);
    }

    /// A WhatsApp template message was sent (its Meta template name, from the configuration).
    pub fn notice_sent(&self, template: &str) {
        self.add(Family::NoticesSent, &[template]);
    }

    pub fn relayed(&self, direction: RelayDirection) {
        let label = match direction {
            RelayDirection::ToWhatsApp => "to_whatsapp",
            RelayDirection::ToSymphony => "to_symphony",
        };
        self.add(Family::RelayedMessages, &[label]);
    }

    /// An inbound event kept failing and was set aside (`source`: symphony, whatsapp, outcome).
    pub fn event_set_aside(&self, source: &'static str) {
        self.add(Family::EventsSetAside, &[source]);
    }

    /// A long-lived task's state, as `/healthz` reports it.
    pub fn task_state(&self, task: &'static str, state: TaskState) {
        self.0.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(task, state);
    }

    /// Every long-lived task's state, by name.
    pub fn task_states(&self) -> BTreeMap<&'static str, TaskState> {
        self.0.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An outbox effect failed and was scheduled again.
    pub fn outbox_retry(&self) {
        self.add(Family::OutboxRetries, &[]);
    }

    /// A call attempt failed: `status` is the HTTP status, or `network` / `decode`. The path is
    /// normalised ([`normalise_endpoint`]) so that ids never become labels.
    pub fn api_error(&self, client: ApiClient, method: &str, path: &str, status: &str) {
        let client = match client {
            ApiClient::Symphony => "symphony",
            ApiClient::WhatsApp => "whatsapp",
        };
        let endpoint = format!("{method} {}", normalise_endpoint(path));
        self.add(Family::ApiErrors, &[client, &endpoint, status]);
    }

    /// The datafeed loop has its feed (found or created): it is alive from now.
    pub fn datafeed_ready(&self) {
        self.touch_datafeed();
    }

    /// A datafeed read was answered (events or an empty long poll).
    pub fn datafeed_read(&self) {
        self.touch_datafeed();
        self.add(Family::DatafeedReads, &[]);
    }

    fn touch_datafeed(&self) {
        let ms = self.0.started.elapsed().as_millis().min(u128::from(u64::MAX - 1)) as u64;
        self.0.datafeed_alive_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the datafeed loop's last sign of life; `None` if it never showed one.
    pub fn datafeed_silence(&self) -> Option<Duration> {
        let at = self.0.datafeed_alive_ms.load(Ordering::Relaxed);
        (at != u64::MAX).then(|| self.0.started.elapsed().saturating_sub(Duration::from_millis(at)))
    }

    /// The current value of a counter (tests; `labels` in the family's label order).
    pub fn counter(&self, name: &str, labels: &[&str]) -> u64 {
        let Some(family) = Family::ALL.into_iter().find(|f| f.name() == name) else { return 0 };
        let key = (family, labels.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>());
        self.0.counters.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied().unwrap_or(0)
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4). `outbox` is left out
    /// when the store could not be read.
    pub fn render(&self, outbox: Option<OutboxDepth>) -> String {
        let counters = self.0.counters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = String::new();
        for family in Family::ALL {
            let name = family.name();
            let _ = writeln!(out, "# HELP {name} {}", family.help());
            let _ = writeln!(out, "# TYPE {name} counter");
            let mut samples: BTreeMap<Vec<String>, u64> = family
                .seeded()
                .iter()
                .map(|v| (if v.is_empty() { Vec::new() } else { vec![(*v).to_owned()] }, 0))
                .collect();
            for ((f, labels), value) in &counters {
                if *f == family {
                    samples.insert(labels.clone(), *value);
                }
            }
            for (values, value) in samples {
                let _ = writeln!(out, "{name}{} {value}", label_set(family.labels(), &values));
            }
        }
        if let Some(depth) = outbox {
            let name = "wagb_outbox_effects";
            let _ = writeln!(
                out,
                "# HELP {name} Outbox effects by state (pending: waiting or retrying; failed: given up)."
            );
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{state=\"pending\"}} {}", depth.pending);
            let _ = writeln!(out, "{name}{{state=\"failed\"}} {}", depth.failed);
            let name = "wagb_events_set_aside";
            let _ = writeln!(
                out,
                "# HELP {name} Inbound events set aside after failing, waiting for `events retry`."
            );
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", depth.events_set_aside);
        }
        if let Some(silence) = self.datafeed_silence() {
            let name = "wagb_datafeed_last_read_age_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Seconds since the datafeed loop last read its feed (or set it up)."
            );
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {:.3}", silence.as_secs_f64());
        }
        let name = "wagb_build_info";
        let _ = writeln!(out, "# HELP {name} The running version of wa-groups-bot.");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        out
    }
}

/// `{a="x",b="y"}`, or nothing without labels. Values are escaped as the format requires.
fn label_set(names: &[&str], values: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let v = v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n");
            format!("{n}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", pairs.join(","))
}

/// The words of the API paths the clients call. Any other segment is an id, shown as `{id}`:
/// stream ids, user ids, feed ids, group ids, phone number ids, media ids.
const PATH_WORDS: &[&str] = &[
    // Symphony
    "pod",
    "agent",
    "login",
    "relay",
    "pubkey",
    "authenticate",
    "sessioninfo",
    "users",
    "room",
    "create",
    "info",
    "update",
    "setActive",
    "membership",
    "list",
    "add",
    "remove",
    "promoteOwner",
    "demoteOwner",
    "im",
    "streams",
    "stream",
    "attachments",
    "attachment",
    "message",
    "datafeeds",
    "read",
    // WhatsApp Cloud API
    "groups",
    "invite_link",
    "join_requests",
    "participants",
    "messages",
    "media",
];

/// An API path with every id replaced by `{id}` (a query string is dropped):
/// `/pod/v3/room/abc_-1/info` → `/pod/v3/room/{id}/info`, `/1065403/groups` → `/{id}/groups`.
/// A target that is not a path (a media download URL) is shown as `{url}`.
pub fn normalise_endpoint(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return "{url}".to_owned();
    }
    let is_version = |s: &str| {
        s.strip_prefix('v').is_some_and(|rest| {
            !rest.is_empty()
                && rest.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    path.split('/')
        .map(|segment| {
            if segment.is_empty() || is_version(segment) || PATH_WORDS.contains(&segment) {
                segment
            } else {
                "{id}"
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_become_labels() {
        for (raw, expected) in [
            ("/pod/v3/room/lRwCZlDbxWLd6BBSFj4Kv3___oW3lE2sdA/info", "/pod/v3/room/{id}/info"),
            (
                "/pod/v1/room/abc-_x/membership/promoteOwner",
                "/pod/v1/room/{id}/membership/promoteOwner",
            ),
            (
                "/agent/v5/datafeeds/371f465fb97b5d1027d20a5e7085863a_f/read",
                "/agent/v5/datafeeds/{id}/read",
            ),
            ("/agent/v4/stream/xyz/message/create", "/agent/v4/stream/{id}/message/create"),
            ("/pod/v3/users?uid=9001&local=true", "/pod/v3/users"),
            ("/login/pubkey/authenticate", "/login/pubkey/authenticate"),
            ("/106540352242922/groups", "/{id}/groups"),
            ("/120363045678901234", "/{id}"),
            ("/120363045678901234/invite_link", "/{id}/invite_link"),
            ("/media-id-123", "/{id}"),
            ("/v23.0/106540352242922/messages", "/v23.0/{id}/messages"),
            ("<media url>", "{url}"),
        ] {
            assert_eq!(normalise_endpoint(raw), expected, "{raw}");
        }
    }

    /// Every sample line: `name{labels} value` with a known family, and HELP/TYPE before it.
    fn check_exposition(text: &str) {
        let mut typed = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(kind != "counter" || name.ends_with("_total"), "{line}");
                typed.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let name = series.split('{').next().expect("name");
            assert!(typed.contains_key(name), "{name} has no TYPE line before it:\n{text}");
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "bad metric name {name}"
            );
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
    }

    #[test]
    fn the_text_format_has_help_type_and_escaped_labels() {
        let m = Metrics::default();
        let fresh = m.render(None);
        check_exposition(&fresh);
        assert!(fresh.contains("wagb_inbound_events_total{source=\"whatsapp\"} 0\n"), "{fresh}");
        assert!(fresh.contains("wagb_outbox_retries_total 0\n"), "{fresh}");
        assert!(!fresh.contains("wagb_outbox_effects"), "no gauge without the store: {fresh}");
        assert!(!fresh.contains("wagb_datafeed_last_read_age_seconds"), "{fresh}");

        m.inbound_event(EventSource::WhatsApp, true);
        m.inbound_event(EventSource::WhatsApp, true);
        m.inbound_event(EventSource::WhatsApp, false);
        m.command("help");
        m.notice_sent("group \"update\"\\n");
        m.relayed(RelayDirection::ToWhatsApp);
        m.outbox_retry();
        m.api_error(ApiClient::WhatsApp, "POST", "/106540352242922/messages", "503");
        m.api_error(ApiClient::WhatsApp, "POST", "/999/messages", "503");
        m.datafeed_read();
        let text = m.render(Some(OutboxDepth { pending: 3, failed: 1, events_set_aside: 2 }));
        check_exposition(&text);
        for expected in [
            "# HELP wagb_commands_total ",
            "# TYPE wagb_commands_total counter\n",
            "wagb_inbound_events_total{source=\"whatsapp\"} 2\n",
            "wagb_inbound_events_total{source=\"symphony\"} 0\n",
            "wagb_inbound_duplicates_total{source=\"whatsapp\"} 1\n",
            "wagb_commands_total{command=\"help\"} 1\n",
            "wagb_whatsapp_notices_sent_total{template=\"group \\\"update\\\"\\\\n\"} 1\n",
            "wagb_relayed_messages_total{direction=\"to_whatsapp\"} 1\n",
            "wagb_relayed_messages_total{direction=\"to_symphony\"} 0\n",
            "wagb_outbox_retries_total 1\n",
            "wagb_api_errors_total{client=\"whatsapp\",endpoint=\"POST /{id}/messages\",status=\"503\"} 2\n",
            "wagb_datafeed_reads_total 1\n",
            "# TYPE wagb_outbox_effects gauge\n",
            "wagb_outbox_effects{state=\"pending\"} 3\n",
            "wagb_outbox_effects{state=\"failed\"} 1\n",
            "# TYPE wagb_datafeed_last_read_age_seconds gauge\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(m.counter("wagb_commands_total", &["help"]), 1);
    }

    #[test]
    fn the_datafeed_heartbeat_starts_fresh_and_is_shared_by_clones() {
        let m = Metrics::default();
        assert_eq!(m.datafeed_silence(), None, "never alive yet");
        m.datafeed_ready();
        let silence = m.datafeed_silence().expect("alive");
        assert!(silence < Duration::from_secs(1), "{silence:?}");
        assert_eq!(m.counter("wagb_datafeed_reads_total", &[]), 0, "ready is not a read");
        let clone = m.clone();
        clone.datafeed_read();
        assert_eq!(m.counter("wagb_datafeed_reads_total", &[]), 1, "clones share the registry");
    }
}
