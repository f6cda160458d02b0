//! wa-groups-bot: a Symphony Messaging bot that mirrors Symphony rooms onto WhatsApp groups.
//!
//! Module map (data flows one way, see `DESIGN.md` §3):
//!
//! ```text
//! Symphony datafeed ─┐                                 ┌─> Symphony pod / agent
//!                    ├─> events ─> app (dispatcher) ─> commands ─> groups ─┤
//! WhatsApp webhook ──┘                  store: state + processed ids ──────┴─> WhatsApp Cloud API
//! ```
//!
//! - [`config`]: `bot-config.yaml` + `WAGB__…` environment overrides, validated at once.
//! - [`symphony`]: RS512 login, Datafeed v2 loop, pod/agent endpoints, MessageML/PresentationML.
//! - [`whatsapp`]: typed Meta Cloud API client (groups, invite links, join requests, messages).
//! - [`webhook`]: signed WhatsApp webhook receiver (verify, persist, then 200).
//! - [`crashpoint`]: `WAGB_CRASH_AT=k` aborts at the k-th commit (the crash tests).
//! - [`domain`]: the vocabulary every module shares: validated ids (`StreamId`, `GroupId`,
//!   `E164`…), the group aggregate as stored, what goes to WhatsApp. It imports nothing.
//! - [`dispatch`]: decides persisted events, in order per group, groups in parallel; one
//!   transaction per event; events that keep failing are set aside.
//! - [`effects`]: side effects as data, queued in the outbox and performed with retries; what
//!   came of them returns to the dispatcher as outcome events.
//! - [`events`]: the transport-neutral event vocabulary both transports produce.
//! - [`commands`]: `/wa …` parsing, the create form, and the router (checks, live reads, replies).
//! - [`groups`]: validated id newtypes and group rules.
//! - [`relay`]: the chat relay (room ↔ WhatsApp group or contacts), its formatting and windows.
//! - [`intake`]: Symphony events (datafeed and catch-up after a feed loss) into the store.
//! - [`store`]: SQLite persistence (processed event ids, inbound queue, state).
//! - [`http`]: what both HTTP clients share (error causes, `Retry-After`).
//! - [`markup`]: text and markup every side shares (segments, MessageML escaping, excerpts).
//! - [`keys`]: RSA key pairs for `keygen` and the sandbox.
//! - [`templates`]: handlebars message templates, compiled at startup.
//! - [`sandbox`]: the mock Symphony pod and the WhatsApp Cloud API simulator.
//! - [`metrics`]: the bot's counters and datafeed heartbeat, in Prometheus text format.
//! - [`monitoring`]: `GET /healthz` and `GET /metrics` on the bot's HTTP listener.
//! - [`admin`]: the admin's tools: `check-config` (with `--connect`) and `render`.
//! - [`bench`]: `wa-groups-bot bench`, the performance scenarios and their budgets.
//! - [`soak`]: `wa-groups-bot soak`, the chaos soak: a seeded population, faults and SIGKILLs,
//!   the end state checked against a model.
//! - [`app`]: wiring, task supervision, graceful shutdown; nothing imports it.

pub mod admin;
pub mod app;
pub mod bench;
pub mod commands;
pub mod config;
pub mod crashpoint;
pub mod dispatch;
pub mod domain;
pub mod effects;
pub mod events;
pub mod groups;
pub mod http;
pub mod intake;
pub mod keys;
pub mod markup;
pub mod metrics;
pub mod monitoring;
pub mod relay;
pub mod sandbox;
pub mod soak;
pub mod store;
pub mod symphony;
pub mod telemetry;
pub mod templates;
pub mod webhook;
pub mod whatsapp;
