//! The mock pod's in-memory world: users, sessions, streams, messages, datafeeds, faults, and the
//! V4 events every change emits.

use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::{Value, json};

use super::{MockPodConfig, MockUser, UserKind};

/// A batch of events and its ackId.
pub(crate) type Batch = (Vec<Value>, String);

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A message's or an event's time: the clock in ms, but always after the previous one's, as a
/// pod orders its messages (so that paging by `since` never stalls on equal timestamps). One
/// clock for both, so that a room's events and messages compare as the pod ordered them.
fn next_message_ms() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = now_ms();
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    if prev < now { now } else { LAST.fetch_add(1, Ordering::SeqCst) + 1 }
}

pub(crate) fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Im,
    Room,
}

impl StreamKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StreamKind::Im => "IM",
            StreamKind::Room => "ROOM",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub user: i64,
    pub owner: bool,
    pub join_date: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct StoredMessage {
    pub message_id: String,
    pub timestamp: i64,
    pub user: i64,
    pub presentation_ml: String,
    pub data: String,
    pub text: String,
    pub attachments: Vec<StoredAttachment>,
    /// Its Elements forms, for submissions through the control API.
    pub forms: Vec<super::presentation::FormSpec>,
}

/// A file attached to a message, with its bytes.
#[derive(Debug, Clone)]
pub(crate) struct StoredAttachment {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub bytes: bytes::Bytes,
}

impl StoredAttachment {
    /// A new attachment with an id shaped like a real pod's (`internal_<pod>%2F<key>`).
    pub(crate) fn new(name: String, content_type: String, bytes: bytes::Bytes) -> Self {
        Self { id: format!("internal_14362%2F{}", random_id(24)), name, content_type, bytes }
    }

    /// `V4AttachmentInfo`, as messages and datafeed events carry it.
    pub(crate) fn v4_info(&self) -> Value {
        json!({"id": self.id, "name": self.name, "size": self.bytes.len(), "images": []})
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub id: String,
    pub kind: StreamKind,
    pub name: String,
    pub description: String,
    pub active: bool,
    pub created_by: i64,
    pub created_at: i64,
    pub members: Vec<Member>,
    pub messages: Vec<StoredMessage>,
}

impl Stream {
    pub(crate) fn member(&self, user: i64) -> Option<&Member> {
        self.members.iter().find(|m| m.user == user)
    }

    pub(crate) fn is_owner(&self, user: i64) -> bool {
        self.member(user).is_some_and(|m| m.owner)
    }
}

/// One queued event and its delivery state.
#[derive(Debug, Clone)]
pub(crate) struct QueuedEvent {
    pub event: Value,
    /// When it may be handed out (again).
    pub visible_at: Instant,
    /// The ackId of the batch it was last delivered in.
    pub batch: Option<String>,
    pub deliveries: u32,
}

#[derive(Debug)]
pub(crate) struct Feed {
    pub id: String,
    pub user: i64,
    pub created_at: i64,
    pub last_read: Instant,
    pub queue: VecDeque<QueuedEvent>,
    /// Set by the control API: the next read answers 400 and the feed is gone.
    pub expired: bool,
}

/// Counters tests can read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub session_logins: u64,
    pub key_manager_logins: u64,
    pub feeds_created: u64,
    pub feeds_deleted: u64,
    pub feed_reads: u64,
    /// Events handed out more than once (unacknowledged batches redelivered).
    pub redeliveries: u64,
    pub faults_served: u64,
    /// Events a bot (a user who logs in) never got because it had no live datafeed then: what a
    /// feed loss costs a bot that does not catch up.
    pub missed_events: u64,
    /// `GET /agent/v4/stream/{sid}/message` calls (message history reads).
    pub history_reads: u64,
}

#[derive(Debug)]
pub(crate) struct PodState {
    pub cfg: MockPodConfig,
    pub users: HashMap<i64, MockUser>,
    /// session token → user id
    pub sessions: HashMap<String, i64>,
    /// key-manager token → user id
    pub km_tokens: HashMap<String, i64>,
    /// Every session and key-manager token handed out, expired ones too (tests look for them
    /// where they must not be, such as logs).
    pub issued_tokens: Vec<String>,
    pub streams: HashMap<String, Stream>,
    pub feeds: HashMap<String, Feed>,
    pub faults: crate::sandbox::faults::Faults,
    pub stats: PodStats,
    /// The messages whose MESSAGESENT was handed out again (a reader died before acknowledging
    /// it): what may come to a bot after later messages of its room.
    pub redelivered_messages: std::collections::HashSet<String>,
    /// Told of every post and datafeed read (benchmarks).
    pub observer: Option<tokio::sync::mpsc::UnboundedSender<super::PodObservation>>,
}

impl PodState {
    pub(crate) fn new(cfg: MockPodConfig) -> Self {
        let users = cfg.users.iter().map(|u| (u.id, u.clone())).collect();
        Self {
            cfg,
            users,
            sessions: HashMap::new(),
            km_tokens: HashMap::new(),
            issued_tokens: Vec::new(),
            streams: HashMap::new(),
            feeds: HashMap::new(),
            faults: Default::default(),
            stats: PodStats::default(),
            redelivered_messages: std::collections::HashSet::new(),
            observer: None,
        }
    }

    pub(crate) fn new_token() -> String {
        // Deliberately not a JWT: BDKs then use classic key-manager auth (no SKD).
        random_hex(32)
    }

    pub(crate) fn v4_user(&self, id: i64) -> Value {
        match self.users.get(&id) {
            Some(u) => {
                let (first, last) = u.display_name.split_once(' ').unwrap_or((&u.display_name, ""));
                json!({"userId": id, "firstName": first, "lastName": last,
                       "displayName": u.display_name, "email": u.email, "username": u.username})
            }
            None => json!({"userId": id}),
        }
    }

    pub(crate) fn user_v2(&self, u: &MockUser) -> Value {
        let (first, last) = u.display_name.split_once(' ').unwrap_or((&u.display_name, ""));
        json!({
            "id": u.id, "emailAddress": u.email, "firstName": first, "lastName": last,
            "displayName": u.display_name, "title": "", "company": "Sandbox", "username": u.username,
            "location": "", "accountType": match u.kind { UserKind::Bot => "SYSTEM", UserKind::Normal => "NORMAL" },
            "avatars": [], "roles": ["INDIVIDUAL"],
        })
    }

    pub(crate) fn display_name(&self, id: i64) -> Option<String> {
        self.users.get(&id).map(|u| u.display_name.clone())
    }

    fn v4_stream(&self, s: &Stream) -> Value {
        let mut v = json!({"streamId": s.id, "streamType": s.kind.as_str(), "external": false, "crossPod": false});
        if s.kind == StreamKind::Room {
            v["roomName"] = json!(s.name);
        }
        v
    }

    /// Queues a V4 event for every feed of every member of `stream` (and `extra` users).
    pub(crate) fn emit(
        &mut self,
        stream: &str,
        initiator: i64,
        kind: &str,
        payload: Value,
        message_id: Option<&str>,
        extra: &[i64],
    ) {
        let Some(s) = self.streams.get(stream) else { return };
        let mut recipients: Vec<i64> = s.members.iter().map(|m| m.user).collect();
        for e in extra {
            if !recipients.contains(e) {
                recipients.push(*e);
            }
        }
        self.emit_to(&recipients, initiator, kind, payload, message_id);
    }

    /// Queues a V4 event for every feed of `recipients` only.
    pub(crate) fn emit_to(
        &mut self,
        recipients: &[i64],
        initiator: i64,
        kind: &str,
        payload: Value,
        message_id: Option<&str>,
    ) {
        let key = payload_key(kind);
        // A MESSAGESENT carries its message's timestamp: the event is the message's ingestion.
        let timestamp = payload
            .get("message")
            .and_then(|m| m.get("timestamp"))
            .and_then(Value::as_i64)
            .unwrap_or_else(next_message_ms);
        let mut event = json!({
            "id": random_id(9),
            "timestamp": timestamp,
            "type": kind,
            "initiator": {"user": self.v4_user(initiator)},
            "payload": {key: payload},
        });
        if let Some(mid) = message_id {
            event["messageId"] = json!(mid);
        }
        let now = Instant::now();
        let missed = recipients
            .iter()
            .filter(|r| self.users.get(r).is_some_and(|u| u.kind == UserKind::Bot))
            .filter(|r| !self.feeds.values().any(|f| f.user == **r && !f.expired))
            .count();
        self.stats.missed_events += missed as u64;
        for feed in self.feeds.values_mut() {
            if recipients.contains(&feed.user) && !feed.expired {
                feed.queue.push_back(QueuedEvent {
                    event: event.clone(),
                    visible_at: now,
                    batch: None,
                    deliveries: 0,
                });
            }
        }
    }

    pub(crate) fn stream_payload(&self, stream: &str) -> Value {
        self.streams.get(stream).map(|s| self.v4_stream(s)).unwrap_or(Value::Null)
    }

    // ----- operations (each emits what a real pod emits) -----

    pub(crate) fn create_im(
        &mut self,
        creator: i64,
        mut members: Vec<i64>,
    ) -> Result<String, String> {
        if !members.contains(&creator) {
            members.push(creator);
        }
        members.sort_unstable();
        members.dedup();
        for m in &members {
            if !self.users.contains_key(m) {
                return Err(format!("unknown user {m}"));
            }
        }
        if let Some(existing) = self.streams.values().find(|s| {
            s.kind == StreamKind::Im && {
                let mut ids: Vec<i64> = s.members.iter().map(|m| m.user).collect();
                ids.sort_unstable();
                ids == members
            }
        }) {
            return Ok(existing.id.clone());
        }
        let id = random_id(24);
        let now = now_ms();
        self.streams.insert(
            id.clone(),
            Stream {
                id: id.clone(),
                kind: StreamKind::Im,
                name: String::new(),
                description: String::new(),
                active: true,
                created_by: creator,
                created_at: now,
                members: members
                    .iter()
                    .map(|&user| Member { user, owner: false, join_date: now })
                    .collect(),
                messages: Vec::new(),
            },
        );
        let mut stream = self.stream_payload(&id);
        stream["members"] = json!(members.iter().map(|m| json!({"userId": m})).collect::<Vec<_>>());
        self.emit(&id, creator, "INSTANTMESSAGECREATED", json!({"stream": stream}), None, &[]);
        Ok(id)
    }

    pub(crate) fn create_room(
        &mut self,
        creator: i64,
        name: &str,
        description: &str,
    ) -> Result<String, String> {
        if name.trim().is_empty() {
            return Err("The room name is required".into());
        }
        let id = random_id(24);
        let now = now_ms();
        self.streams.insert(
            id.clone(),
            Stream {
                id: id.clone(),
                kind: StreamKind::Room,
                name: name.to_owned(),
                description: description.to_owned(),
                active: true,
                created_by: creator,
                created_at: now,
                members: vec![Member { user: creator, owner: true, join_date: now }],
                messages: Vec::new(),
            },
        );
        let props = self.room_properties(&id);
        let stream = self.stream_payload(&id);
        self.emit(
            &id,
            creator,
            "ROOMCREATED",
            json!({"stream": stream, "roomProperties": props}),
            None,
            &[],
        );
        Ok(id)
    }

    pub(crate) fn room_properties(&self, id: &str) -> Value {
        let Some(s) = self.streams.get(id) else { return Value::Null };
        json!({
            "name": s.name, "description": s.description, "creatorUser": self.v4_user(s.created_by),
            "createdDate": s.created_at, "external": false, "crossPod": false, "public": false,
            "copyProtected": false, "readOnly": false, "discoverable": false, "membersCanInvite": false,
            "keywords": [], "canViewHistory": true,
        })
    }

    pub(crate) fn v3_room_detail(&self, id: &str) -> Option<Value> {
        let s = self.streams.get(id).filter(|s| s.kind == StreamKind::Room)?;
        Some(json!({
            "roomAttributes": {
                "name": s.name, "keywords": [], "description": s.description, "membersCanInvite": false,
                "discoverable": false, "readOnly": false, "copyProtected": false, "crossPod": false,
                "viewHistory": true, "multiLateralRoom": false, "public": false, "groupChat": false,
            },
            "roomSystemInfo": {"id": s.id, "creationDate": s.created_at, "createdByUserId": s.created_by, "active": s.active},
            "groups": [],
        }))
    }

    pub(crate) fn rename_room(
        &mut self,
        actor: i64,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
    ) -> Result<(), String> {
        let s = self.streams.get_mut(id).ok_or("no such room")?;
        if let Some(n) = name {
            if n.trim().is_empty() {
                return Err("The room name cannot be empty".into());
            }
            s.name = n.to_owned();
        }
        if let Some(d) = description {
            s.description = d.to_owned();
        }
        let props = self.room_properties(id);
        let stream = self.stream_payload(id);
        self.emit(
            id,
            actor,
            "ROOMUPDATED",
            json!({"stream": stream, "newRoomProperties": props}),
            None,
            &[],
        );
        Ok(())
    }

    pub(crate) fn set_active(&mut self, actor: i64, id: &str, active: bool) -> Result<(), String> {
        let s = self.streams.get_mut(id).ok_or("no such room")?;
        if s.active == active {
            return Ok(());
        }
        s.active = active;
        let stream = json!({"streamId": id, "streamType": "ROOM"});
        let (kind, ()) = if active { ("ROOMREACTIVATED", ()) } else { ("ROOMDEACTIVATED", ()) };
        self.emit(id, actor, kind, json!({"stream": stream}), None, &[]);
        Ok(())
    }

    /// add | remove | promote | demote
    pub(crate) fn membership(
        &mut self,
        actor: i64,
        id: &str,
        action: &str,
        user: i64,
    ) -> Result<&'static str, String> {
        if !self.users.contains_key(&user) {
            return Err(format!("unknown user {user}"));
        }
        let s = self.streams.get_mut(id).ok_or("no such room")?;
        if s.kind != StreamKind::Room {
            return Err("not a room".into());
        }
        if !s.active {
            return Err("The room is inactive: membership is locked".into());
        }
        let affected = |st: &PodState| st.v4_user(user);
        match action {
            "add" => {
                if s.member(user).is_some() {
                    return Ok("Member added");
                }
                s.members.push(Member { user, owner: false, join_date: now_ms() });
                let payload =
                    json!({"stream": self.stream_payload(id), "affectedUser": affected(self)});
                self.emit(id, actor, "USERJOINEDROOM", payload, None, &[]);
                Ok("Member added")
            }
            "remove" => {
                if s.member(user).is_none() {
                    return Ok("Member removed");
                }
                let payload =
                    json!({"stream": self.stream_payload(id), "affectedUser": affected(self)});
                // The leaver is told too.
                self.emit(id, actor, "USERLEFTROOM", payload, None, &[]);
                if let Some(s) = self.streams.get_mut(id) {
                    s.members.retain(|m| m.user != user);
                }
                Ok("Member removed")
            }
            "promoteOwner" | "demoteOwner" => {
                let promote = action == "promoteOwner";
                let member = s
                    .members
                    .iter_mut()
                    .find(|m| m.user == user)
                    .ok_or("the user is not a member of the room")?;
                if member.owner == promote {
                    return Ok(if promote { "Member promoted to owner" } else { "Owner demoted" });
                }
                member.owner = promote;
                let payload =
                    json!({"stream": self.stream_payload(id), "affectedUser": affected(self)});
                let kind = if promote {
                    "ROOMMEMBERPROMOTEDTOOWNER"
                } else {
                    "ROOMMEMBERDEMOTEDFROMOWNER"
                };
                self.emit(id, actor, kind, payload, None, &[]);
                Ok(if promote { "Member promoted to owner" } else { "Owner demoted" })
            }
            other => Err(format!("unknown membership action {other}")),
        }
    }

    /// Posts a message (already rendered) and emits MESSAGESENT. Returns the V4Message.
    pub(crate) fn post(
        &mut self,
        sender: i64,
        id: &str,
        rendered: super::presentation::Rendered,
        attachments: Vec<StoredAttachment>,
    ) -> Result<Value, String> {
        let s = self.streams.get(id).ok_or("no such stream")?;
        if s.member(sender).is_none() {
            return Err("the sender is not a member of this stream".into());
        }
        if !s.active {
            return Err("the stream is inactive".into());
        }
        let message_id = random_id(24);
        let stored = StoredMessage {
            message_id: message_id.clone(),
            timestamp: next_message_ms(),
            user: sender,
            presentation_ml: rendered.presentation_ml,
            data: rendered.data.to_string(),
            text: rendered.text,
            attachments,
            forms: rendered.forms,
        };
        let v4 = self.v4_message(id, &stored);
        if let Some(observer) = &self.observer {
            let _ = observer.send(super::PodObservation::Posted {
                stream: id.to_owned(),
                user: sender,
                text: stored.text.clone(),
                at: Instant::now(),
            });
        }
        if let Some(s) = self.streams.get_mut(id) {
            s.messages.push(stored);
        }
        self.emit(
            id,
            sender,
            "MESSAGESENT",
            json!({"message": v4.clone()}),
            Some(&message_id),
            &[],
        );
        Ok(v4)
    }

    pub(crate) fn v4_message(&self, stream: &str, m: &StoredMessage) -> Value {
        json!({
            "messageId": m.message_id, "timestamp": m.timestamp, "message": m.presentation_ml,
            "data": m.data,
            "attachments": m.attachments.iter().map(StoredAttachment::v4_info).collect::<Vec<_>>(),
            "user": self.v4_user(m.user),
            "stream": {"streamId": stream, "streamType": self.streams.get(stream).map_or("ROOM", |s| s.kind.as_str())},
            "externalRecipients": false, "userAgent": "wa-groups-bot-mock-pod",
            "originalFormat": "com.symphony.messageml.v2",
        })
    }

    // ----- datafeeds -----

    pub(crate) fn create_feed(&mut self, user: i64) -> Result<Value, (u16, String)> {
        self.expire_idle_feeds();
        let count = self.feeds.values().filter(|f| f.user == user).count();
        if count >= 20 {
            return Err((
                403,
                "Too many feeds created: a service account may have 20 active feeds".into(),
            ));
        }
        let id = format!("{}_f", random_hex(16));
        let created_at = now_ms();
        self.feeds.insert(
            id.clone(),
            Feed {
                id: id.clone(),
                user,
                created_at,
                last_read: Instant::now(),
                queue: VecDeque::new(),
                expired: false,
            },
        );
        self.stats.feeds_created += 1;
        Ok(json!({"id": id, "createdAt": created_at, "type": "fanout"}))
    }

    pub(crate) fn list_feeds(&mut self, user: i64) -> Value {
        self.expire_idle_feeds();
        let mut feeds: Vec<&Feed> =
            self.feeds.values().filter(|f| f.user == user && !f.expired).collect();
        // Oldest first, ties by id: every reader sees the same order.
        feeds.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Value::Array(
            feeds
                .iter()
                .map(|f| json!({"id": f.id, "createdAt": f.created_at, "type": "fanout"}))
                .collect(),
        )
    }

    fn expire_idle_feeds(&mut self) {
        let ttl = self.cfg.feed_expiry;
        self.feeds.retain(|_, f| f.last_read.elapsed() < ttl);
    }

    /// One non-blocking read attempt: acknowledges `ack_id`'s batch, then takes visible events.
    /// `Ok(None)`: nothing to hand out yet (the caller waits and retries). Several readers of
    /// one feed (a bot's instances) share it as on a real agent: what one read takes is in
    /// flight, hidden from every reader, until a read carrying its ackId (from any reader)
    /// deletes it or the redelivery delay makes it visible again, to any reader.
    pub(crate) fn try_read(
        &mut self,
        user: i64,
        feed_id: &str,
        ack_id: &str,
        ack_done: &mut bool,
    ) -> Result<Option<Batch>, (u16, String)> {
        self.expire_idle_feeds();
        let gone = || (400, "The feed does not exist or has expired: create a new feed".to_owned());
        let feed = self.feeds.get_mut(feed_id).ok_or_else(gone)?;
        if feed.user != user {
            return Err(gone());
        }
        if feed.expired {
            self.feeds.remove(feed_id);
            return Err(gone());
        }
        feed.last_read = Instant::now();
        if !*ack_done {
            *ack_done = true;
            if !ack_id.is_empty() {
                feed.queue.retain(|e| e.batch.as_deref() != Some(ack_id));
            }
        }
        let now = Instant::now();
        let batch_id = random_id(18);
        let delay = self.cfg.redelivery_delay;
        let mut events = Vec::new();
        let mut redelivered = 0;
        for e in feed.queue.iter_mut().filter(|e| e.visible_at <= now).take(100) {
            if e.deliveries > 0 {
                redelivered += 1;
                if let Some(id) = e.event.get("messageId").and_then(Value::as_str) {
                    self.redelivered_messages.insert(id.to_owned());
                }
            }
            e.deliveries += 1;
            e.batch = Some(batch_id.clone());
            e.visible_at = now + delay;
            events.push(e.event.clone());
        }
        self.stats.redeliveries += redelivered;
        if events.is_empty() { Ok(None) } else { Ok(Some((events, batch_id))) }
    }

    /// When the next queued event of a feed becomes visible (for the long poll).
    pub(crate) fn next_visible(&self, feed_id: &str) -> Option<Instant> {
        self.feeds.get(feed_id)?.queue.iter().map(|e| e.visible_at).min()
    }
}

fn payload_key(kind: &str) -> &'static str {
    match kind {
        "MESSAGESENT" => "messageSent",
        "INSTANTMESSAGECREATED" => "instantMessageCreated",
        "ROOMCREATED" => "roomCreated",
        "ROOMUPDATED" => "roomUpdated",
        "ROOMDEACTIVATED" => "roomDeactivated",
        "ROOMREACTIVATED" => "roomReactivated",
        "USERJOINEDROOM" => "userJoinedRoom",
        "USERLEFTROOM" => "userLeftRoom",
        "ROOMMEMBERPROMOTEDTOOWNER" => "roomMemberPromotedToOwner",
        "ROOMMEMBERDEMOTEDFROMOWNER" => "roomMemberDemotedFromOwner",
        "SYMPHONYELEMENTSACTION" => "symphonyElementsAction",
        _ => "unknown",
    }
}
