//! The simulator's world: groups, phones and their inboxes, customer-service windows, and the
//! webhook items every change produces.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use rand::RngCore;
use serde_json::{Value, json};

use super::WhatsAppSimConfig;

/// A customer-service window lasts 24 hours from the contact's last message.
pub(crate) const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A username user's number is shown to a business it exchanged a 1:1 message with this recently.
pub(crate) const NUMBER_SHOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// A media download URL works for 5 minutes.
pub(crate) const MEDIA_URL_TTL: Duration = Duration::from_secs(5 * 60);

pub(crate) fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(crate) fn random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

pub(crate) fn wamid() -> String {
    let mut buf = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut buf);
    format!("wamid.{}", STANDARD_NO_PAD.encode(buf))
}

#[derive(Debug, Clone)]
pub(crate) struct JoinRequest {
    pub id: String,
    pub phone: String,
    pub created: i64,
}

/// A message as the group or a phone saw it.
#[derive(Debug, Clone)]
pub(crate) struct Delivered {
    pub id: String,
    /// `business` or the sender's phone.
    pub from: String,
    pub group_id: Option<String>,
    pub kind: String,
    pub text: String,
    pub template: Option<Value>,
    pub context_id: Option<String>,
    pub timestamp: i64,
    /// The file of a media message.
    pub media: Option<MediaRef>,
}

impl Delivered {
    /// Tells the observer, if any, that the business sent this to `chat`.
    pub(crate) fn observed(&self, state: &SimState, chat: &str) {
        if let Some(observer) = &state.observer {
            let text = match &self.template {
                Some(t) => t["params"][0].as_str().unwrap_or_default().to_owned(),
                None => self.text.clone(),
            };
            let _ = observer.send(super::SentObservation {
                chat: chat.to_owned(),
                kind: self.kind.clone(),
                text,
                at: Instant::now(),
            });
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({"id": self.id, "from": self.from, "type": self.kind, "text": self.text, "timestamp": self.timestamp});
        if let Some(g) = &self.group_id {
            v["groupId"] = json!(g);
        }
        if let Some(t) = &self.template {
            v["template"] = t.clone();
        }
        if let Some(c) = &self.context_id {
            v["contextId"] = json!(c);
        }
        if let Some(m) = &self.media {
            v["media"] = m.to_json();
        }
        v
    }
}

/// A stored media file: uploaded by the business or sent by a phone.
#[derive(Debug, Clone)]
pub(crate) struct Media {
    pub id: String,
    pub mime_type: String,
    pub filename: Option<String>,
    pub bytes: bytes::Bytes,
}

impl Media {
    /// A new file under a fresh Graph-like id (digits).
    pub(crate) fn new(mime_type: String, filename: Option<String>, bytes: bytes::Bytes) -> Self {
        let mut rng = rand::thread_rng();
        let id = format!(
            "{}{}",
            rng.next_u32() % 9 + 1,
            (0..15).map(|_| char::from(b'0' + (rng.next_u32() % 10) as u8)).collect::<String>()
        );
        Self { id, mime_type, filename, bytes }
    }

    fn digest(&self) -> Vec<u8> {
        use sha2::Digest as _;
        sha2::Sha256::digest(&self.bytes).to_vec()
    }

    /// As `GET /<MEDIA_ID>` gives it: hex.
    pub(crate) fn sha256_hex(&self) -> String {
        hex::encode(self.digest())
    }

    /// As webhooks give it: base64.
    pub(crate) fn sha256_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.digest())
    }
}

/// The file of a delivered media message, as the control API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MediaRef {
    pub id: String,
    pub mime_type: String,
    pub filename: Option<String>,
    pub caption: Option<String>,
    pub size: usize,
}

impl MediaRef {
    pub(crate) fn of(media: &Media, caption: Option<String>, filename: Option<String>) -> Self {
        MediaRef {
            id: media.id.clone(),
            mime_type: media.mime_type.clone(),
            filename: filename.or_else(|| media.filename.clone()),
            caption,
            size: media.bytes.len(),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({"id": self.id, "mimeType": self.mime_type, "size": self.size});
        if let Some(f) = &self.filename {
            v["filename"] = json!(f);
        }
        if let Some(c) = &self.caption {
            v["caption"] = json!(c);
        }
        v
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub id: String,
    pub subject: String,
    pub description: String,
    pub approval_required: bool,
    pub created: i64,
    pub participants: Vec<String>,
    pub pending: Vec<JoinRequest>,
    /// Removed by the business: can never come back by link.
    pub removed: Vec<String>,
    pub invite_code: String,
    pub active: bool,
    pub suspended: bool,
    /// The sha256 (base64) of the group picture set by the business.
    pub picture: Option<String>,
    /// Pinned messages: (message id, pinned until, unix seconds).
    pub pinned: Vec<(String, i64)>,
    /// The group's customer-service window, opened by any participant's message.
    pub window_until: Option<Instant>,
    pub messages: Vec<Delivered>,
}

impl Group {
    pub(crate) fn invite_link(&self) -> String {
        format!("https://chat.whatsapp.com/{}", self.invite_code)
    }

    pub(crate) fn window_open(&self) -> bool {
        self.window_until.is_some_and(|t| t > Instant::now())
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "subject": self.subject,
            "description": self.description,
            "joinApprovalMode": if self.approval_required { "approval_required" } else { "auto_approve" },
            "participants": self.participants,
            "pendingRequests": self.pending.iter().map(|r| r.phone.clone()).collect::<Vec<_>>(),
            "removed": self.removed,
            "inviteLink": if self.active { json!(self.invite_link()) } else { Value::Null },
            "active": self.active,
            "suspended": self.suspended,
            "picture": self.picture,
            "pinned": self.pinned.iter().filter(|(_, until)| *until > now_secs()).map(|(id, _)| id.clone()).collect::<Vec<_>>(),
            "messages": self.messages.iter().map(|m| {
                let mut v = json!({"id": m.id, "from": m.from, "type": m.kind, "text": m.text});
                if let Some(t) = &m.template { v["template"] = t.clone(); }
                if let Some(media) = &m.media { v["media"] = media.to_json(); }
                v
            }).collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Phone {
    pub name: Option<String>,
    /// A WhatsApp username: Meta then omits the phone number (`wa_id`, `from`, …) from what the
    /// business sees, unless the two exchanged a 1:1 message in the last 30 days.
    pub username: Option<String>,
    /// The last 1:1 message between the business and this phone (either way).
    pub last_exchange: Option<Instant>,
    pub inbox: Vec<Delivered>,
    /// What the phone wrote to the business (its own side of the 1:1 chat).
    pub sent: Vec<Delivered>,
    /// The 1:1 window with the business, opened by the phone's own message.
    pub window_until: Option<Instant>,
}

/// Delivery faults applied to the next webhooks.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeliveryFaults {
    pub duplicate: u32,
    pub reorder: bool,
    pub fail_first: u32,
}

/// Counters tests can read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    /// Webhook POSTs made (retries and duplicates included).
    pub webhook_attempts: u64,
    /// Webhooks the receiver answered 200 to.
    pub webhooks_delivered: u64,
    /// Attempts whose URL refused the connection (then the next URL is tried at once).
    pub webhooks_refused: u64,
    pub api_calls: u64,
    pub faults_served: u64,
}

#[derive(Debug)]
pub(crate) struct SimState {
    pub cfg: WhatsAppSimConfig,
    pub groups: HashMap<String, Group>,
    pub group_order: Vec<String>,
    pub phones: HashMap<String, Phone>,
    /// Media files by id.
    pub media: HashMap<String, Media>,
    /// Download URLs handed out: `hash` → (media id, valid until).
    pub media_urls: HashMap<String, (String, Instant)>,
    pub faults: crate::sandbox::faults::Faults,
    pub delivery_faults: DeliveryFaults,
    pub stats: SimStats,
    /// Told of every message the business sends (benchmarks).
    pub observer: Option<tokio::sync::mpsc::UnboundedSender<super::SentObservation>>,
}

impl SimState {
    pub(crate) fn new(cfg: WhatsAppSimConfig) -> Self {
        Self {
            cfg,
            groups: HashMap::new(),
            group_order: Vec::new(),
            phones: HashMap::new(),
            media: HashMap::new(),
            media_urls: HashMap::new(),
            faults: Default::default(),
            delivery_faults: DeliveryFaults::default(),
            stats: SimStats::default(),
            observer: None,
        }
    }

    pub(crate) fn phone(&mut self, phone: &str) -> &mut Phone {
        self.phones.entry(phone.to_owned()).or_default()
    }

    pub(crate) fn profile_name(&self, phone: &str) -> String {
        self.phones.get(phone).and_then(|p| p.name.clone()).unwrap_or_else(|| format!("+{phone}"))
    }

    /// A BSUID-like id, stable per phone.
    pub(crate) fn bsuid(phone: &str) -> String {
        format!("ZZ.{phone}0000")
    }

    /// Whether the business may see this phone's number (Meta's username rule).
    pub(crate) fn number_shown(&self, phone: &str) -> bool {
        match self.phones.get(phone) {
            Some(p) if p.username.is_some() => {
                p.last_exchange.is_some_and(|t| t.elapsed() < NUMBER_SHOWN_FOR)
            }
            _ => true,
        }
    }

    /// How the business sees a user: `wa_id` (when the number is shown), `user_id` (the BSUID)
    /// and `username` (when set), plus `extra` fields.
    pub(crate) fn user(&self, phone: &str, extra: Value) -> Value {
        let mut v = json!({"user_id": Self::bsuid(phone)});
        if self.number_shown(phone) {
            v["wa_id"] = json!(phone);
        }
        if let Some(u) = self.phones.get(phone).and_then(|p| p.username.clone()) {
            v["username"] = json!(u);
        }
        if let (Value::Object(v), Value::Object(e)) = (&mut v, extra) {
            v.extend(e);
        }
        v
    }

    /// The phone a BSUID, a phone number or a `+`-number names.
    pub(crate) fn phone_of(user: &str) -> String {
        let user = user.trim_start_matches('+');
        user.strip_prefix("ZZ.").and_then(|b| b.strip_suffix("0000")).unwrap_or(user).to_owned()
    }

    pub(crate) fn metadata(&self) -> Value {
        json!({"display_phone_number": self.cfg.business_phone, "phone_number_id": self.cfg.phone_number_id})
    }

    /// A `value` of the given webhook field.
    pub(crate) fn value(&self, extra: Value) -> Value {
        let mut v = json!({"messaging_product": "whatsapp", "metadata": self.metadata()});
        if let (Value::Object(v), Value::Object(e)) = (&mut v, extra) {
            v.extend(e);
        }
        v
    }

    pub(crate) fn group_item(&self, group: &str, kind: &str, extra: Value) -> Value {
        let mut g = json!({"timestamp": now_secs().to_string(), "group_id": group, "type": kind});
        if let (Value::Object(g), Value::Object(e)) = (&mut g, extra) {
            g.extend(e);
        }
        g
    }

    pub(crate) fn find_by_link(&self, link: &str) -> Option<&Group> {
        let code = link.trim().trim_end_matches('/').rsplit('/').next()?;
        self.groups.values().find(|g| g.active && g.invite_code == code)
    }
}
