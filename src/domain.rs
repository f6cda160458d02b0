//! The domain vocabulary every module shares, importing nothing of the crate: validated ids
//! (so that one can never stand in for another), the group aggregate as stored, and what goes
//! to WhatsApp.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// A Symphony user id (a 64-bit number on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A Symphony stream (IM or room) id, always held in the URL-safe, unpadded base64 form that
/// the REST API returns. Standard base64 (as seen in the client and some payloads) is converted
/// on construction, so equality works whatever form an id arrived in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    pub fn new(raw: impl AsRef<str>) -> Self {
        Self(to_url_safe_id(raw.as_ref()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Converts a Symphony id in standard base64 (`+`, `/`, `=`) to the URL-safe, unpadded form.
/// Ids already URL-safe are returned unchanged.
pub fn to_url_safe_id(raw: &str) -> String {
    if raw.contains(['+', '/', '=']) {
        match STANDARD.decode(raw) {
            Ok(bytes) => URL_SAFE_NO_PAD.encode(bytes),
            Err(_) => raw.replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned(),
        }
    } else {
        raw.to_owned()
    }
}

impl From<String> for StreamId {
    fn from(raw: String) -> Self {
        Self::new(raw)
    }
}

impl From<&str> for StreamId {
    fn from(raw: &str) -> Self {
        Self::new(raw)
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> Self {
        id.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A WhatsApp group id as returned by the Cloud API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub String);

impl GroupId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A phone number in E.164 form (`+447700900123`), validated with `phonenumber`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct E164(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{token:?} is not a valid international phone number (expected E.164, e.g. +447700900123)")]
pub struct E164Error {
    pub token: String,
}

/// phonenumber compiles its metadata's patterns on first use into a cache of 100 compiled
/// regexes, which the numbers of a dozen countries overflow (a region has ~10 patterns): every
/// parse then compiles again (68% of the command parser's time under its fuzz target, measured
/// with perf). 1,000 holds the patterns of ~80 regions, compiled once each.
fn enlarge_phone_pattern_cache() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let cache = phonenumber::metadata::DATABASE.cache();
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        *cache = regex_cache::RegexCache::new(1_000);
    });
}

impl E164 {
    /// Parses `+447700900123`, `447700900123` (a WhatsApp id) or spaced/dashed variants.
    pub fn parse(token: &str) -> Result<Self, E164Error> {
        enlarge_phone_pattern_cache();
        let err = || E164Error { token: token.to_owned() };
        let trimmed = token.trim();
        let with_plus = if trimmed.starts_with('+') {
            trimmed.to_owned()
        } else if trimmed.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            format!("+{trimmed}")
        } else {
            return Err(err());
        };
        let number = phonenumber::parse(None, &with_plus).map_err(|_| err())?;
        if !phonenumber::is_valid(&number) {
            return Err(err());
        }
        Ok(Self(number.format().mode(phonenumber::Mode::E164).to_string()))
    }

    /// `+447700900123`
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number as people write it: `+44 7911 123456`.
    pub fn international(&self) -> String {
        phonenumber::parse(None, &self.0)
            .map(|n| n.format().mode(phonenumber::Mode::International).to_string())
            .unwrap_or_else(|_| self.0.clone())
    }

    /// The WhatsApp id: the digits without the `+` (`447700900123`).
    pub fn wa_id(&self) -> &str {
        self.0.trim_start_matches('+')
    }

    /// For logs: keeps the country code and the last two digits only.
    pub fn masked(&self) -> String {
        let digits = self.wa_id();
        let keep_end = digits.len().saturating_sub(2);
        let head: String = digits.chars().take(2.min(keep_end)).collect();
        format!("+{head}…{}", &digits[keep_end..])
    }
}

/// The bot's own business number as the Graph API shows it, parsed the first time it is asked
/// for: the first parse of any number loads phonenumber's metadata (~8 MiB, ~45 ms of CPU),
/// which a bot that has read no phone number yet need not hold, nor spend while it starts.
#[derive(Debug, Clone, Default)]
pub struct BusinessNumber {
    digits: Option<String>,
    parsed: std::sync::OnceLock<Option<E164>>,
}

impl BusinessNumber {
    /// From `display_phone_number` (e.g. `+1 555-0100`).
    pub fn shown(display: &str) -> Self {
        let digits: String = display.chars().filter(char::is_ascii_digit).collect();
        Self { digits: Some(digits), parsed: std::sync::OnceLock::new() }
    }

    /// The number, when Graph showed a valid one.
    pub fn get(&self) -> Option<&E164> {
        let parse = || self.digits.as_deref().and_then(|d| E164::parse(d).ok());
        self.parsed.get_or_init(parse).as_ref()
    }
}

impl TryFrom<String> for E164 {
    type Error = E164Error;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<E164> for String {
    fn from(n: E164) -> Self {
        n.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Phone numbers are personal data: Debug masks them so they stay out of logs by default.
impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.masked())
    }
}

// ----- the group aggregate: what the store keeps of a group -----

/// What a WhatsApp group made of a Symphony room is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GroupKind {
    /// A real WhatsApp group (Groups API), ≤ 8 contacts.
    Native,
    /// A WhatsApp Connect standard group: 1:1 messages fanned out to each contact.
    Standard,
}

/// Where a contact stands in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContactState {
    Invited,
    Requested,
    Joined,
    Left,
    Removed,
}

impl ContactState {
    pub const ALL: [ContactState; 5] = [
        ContactState::Invited,
        ContactState::Requested,
        ContactState::Joined,
        ContactState::Left,
        ContactState::Removed,
    ];

    /// The lowercase name (`invited`, `joined`, …), as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ContactState::Invited => "invited",
            ContactState::Requested => "requested",
            ContactState::Joined => "joined",
            ContactState::Left => "left",
            ContactState::Removed => "removed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// A contact of a group as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRecord {
    pub phone: E164,
    pub state: ContactState,
    /// Removed by an owner: barred from this group for ever.
    pub barred: bool,
    /// The business-scoped user id WhatsApp gave this contact, once seen (username users are
    /// known by it alone).
    pub bsuid: Option<String>,
    /// Their WhatsApp profile name, once a webhook showed it.
    pub name: Option<String>,
}

impl ContactRecord {
    /// How people are told who the contact is: `Dana Reyes (+44 7911 123456)` once their
    /// profile name is known, else the number.
    pub fn shown(&self) -> String {
        match self.display_name() {
            Some(name) => format!("{name} ({})", self.phone.international()),
            None => self.phone.as_str().to_owned(),
        }
    }

    /// Their profile name, unless it is empty or just their number again.
    pub fn display_name(&self) -> Option<&str> {
        let name = self.name.as_deref().map(str::trim).filter(|n| !n.is_empty())?;
        (E164::parse(name).ok().as_ref() != Some(&self.phone)).then_some(name)
    }
}

/// A group's row id in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
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
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Creating => "creating",
            GroupState::AwaitingGroup => "awaitingGroup",
            GroupState::Active => "active",
            GroupState::Failed => "failed",
            GroupState::Closed => "closed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
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
    /// The group's own marker, on the room (a keyword) and the WhatsApp group (its
    /// description): what a lost answer is recognised by.
    pub reference: Option<String>,
}

/// What asked for a group: `key` is unique per group (the command's event id, or the create
/// form's message), `event` the datafeed event that carried the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub key: String,
    pub event: String,
}

/// The outcome of creating a group in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New(GroupKey),
    /// The same event again (its first handling stopped before its effects were queued).
    Replay(GroupKey),
    /// Another request of the same origin (a form submitted twice).
    Again(GroupKey),
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

// ----- what goes to WhatsApp -----

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "camelCase")]
pub enum Recipient {
    /// `recipient_type: individual`
    Phone(E164),
    /// `recipient_type: group`
    Group(GroupId),
}

impl Recipient {
    /// The chat a message goes to, as the customer-service window is tracked: the group id, or
    /// the phone in E.164.
    pub fn chat(&self) -> &str {
        match self {
            Recipient::Phone(p) => p.as_str(),
            Recipient::Group(g) => g.as_str(),
        }
    }

    /// The contact of a 1:1 message.
    pub fn phone(&self) -> Option<&E164> {
        match self {
            Recipient::Phone(p) => Some(p),
            Recipient::Group(_) => None,
        }
    }

    /// How people are told who a message went to.
    pub fn shown(&self) -> String {
        match self {
            Recipient::Phone(p) => p.as_str().to_owned(),
            Recipient::Group(_) => "the WhatsApp group".to_owned(),
        }
    }
}

/// A template body parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "camelCase")]
pub enum TemplateParam {
    Text(String),
    /// `{"type":"group_id","group_id":…}`: WhatsApp puts the group's invite link there.
    GroupId(GroupId),
}

/// Longest room name, WhatsApp subject and group name (WhatsApp's subject limit).
pub const MAX_NAME_CHARS: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_equal_in_either_base64_form() {
        let standard = StreamId::new("iWyZBIOdQQzQj0tKOLRivX///qu6LeTlhgHBg9zkBx8=");
        let url_safe = StreamId::new("iWyZBIOdQQzQj0tKOLRivX___qu6LeTlhgHBg9zkBx8");
        assert_eq!(standard, url_safe);
        assert_eq!(url_safe.as_str(), "iWyZBIOdQQzQj0tKOLRivX___qu6LeTlhgHBg9zkBx8");
    }

    #[test]
    fn contacts_are_shown_by_name_and_number_once_the_name_is_known() {
        let phone = E164::parse("+447911123456").expect("phone");
        let mut c = ContactRecord {
            phone: phone.clone(),
            state: ContactState::Joined,
            barred: false,
            bsuid: None,
            name: None,
        };
        assert_eq!(c.shown(), "+447911123456");
        c.name = Some("+447911123456".into());
        assert_eq!(c.shown(), "+447911123456", "a name that is the number adds nothing");
        c.name = Some("Dana Reyes".into());
        assert_eq!(c.shown(), "Dana Reyes (+44 7911 123456)");
    }

    #[test]
    fn e164_normalises_and_rejects() {
        let n = E164::parse("+44 7911 123456").expect("valid");
        assert_eq!(n.as_str(), "+447911123456");
        assert_eq!(n.wa_id(), "447911123456");
        assert_eq!(E164::parse("447911123456").expect("wa id"), n);
        for bad in ["", "+1", "hello", "+999999999999999", "@bob"] {
            let err = E164::parse(bad).expect_err(bad);
            assert_eq!(err.token, bad);
        }
        assert!(!format!("{n:?}").contains("123456"));
    }

    #[test]
    fn the_business_number_is_the_valid_number_graph_shows_or_none() {
        let shown = BusinessNumber::shown("+44 7911 123456");
        assert_eq!(shown.get().map(E164::as_str), Some("+447911123456"));
        assert_eq!(shown.get().map(E164::as_str), Some("+447911123456"), "asked again");
        assert_eq!(BusinessNumber::shown("12").get(), None, "not a valid number");
        assert_eq!(BusinessNumber::shown("").get(), None, "Graph showed none");
        assert_eq!(BusinessNumber::default().get(), None, "not read");
    }
}
