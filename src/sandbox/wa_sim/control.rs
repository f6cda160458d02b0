//! The simulator's control API under `/_sandbox/wa/` (DESIGN.md §5.1): simulated phones (inbox,
//! tap a link, cancel, write, leave), a look at the groups, and fault injection.

// Handlers return ready-made error responses; boxing them would only add noise.
#![allow(clippy::result_large_err)]

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::graph::{request_to_join, window_from_now};
use super::media_rules::{self as media, Kind as MediaKind};
use super::state::{Delivered, Media, MediaRef, SimState, now_secs, wamid};

fn fail(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn bad(message: impl Into<String>) -> Response {
    fail(StatusCode::BAD_REQUEST, message)
}

pub(crate) fn router(shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/_sandbox/wa/phones", get(phones))
        .route("/_sandbox/wa/phones/{phone}", put(set_phone).get(one_phone))
        .route("/_sandbox/wa/phones/{phone}/inbox", get(inbox))
        .route("/_sandbox/wa/phones/{phone}/tap", post(tap_link))
        .route("/_sandbox/wa/phones/{phone}/cancel", post(cancel))
        .route("/_sandbox/wa/phones/{phone}/messages", post(write))
        .route("/_sandbox/wa/phones/{phone}/leave", post(leave))
        .route("/_sandbox/wa/groups", get(groups))
        .route("/_sandbox/wa/groups/{id}", get(group))
        .route("/_sandbox/wa/groups/{id}/suspend", post(suspend_group))
        .route("/_sandbox/wa/media/{id}", get(media_bytes))
        .route("/_sandbox/wa/faults", post(faults))
        .route("/_sandbox/wa/webhooks/faults", post(webhook_faults))
        .route("/_sandbox/wa/stats", get(stats))
        // A phone's file arrives base64-encoded in JSON.
        .layer(axum::extract::DefaultBodyLimit::max(140 * 1024 * 1024))
        .with_state(shared)
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

/// Phones are WhatsApp ids: digits only (a leading `+` is tolerated).
fn phone_id(raw: &str) -> Result<String, Response> {
    let p = raw.trim_start_matches('+');
    if p.len() >= 8 && p.len() <= 15 && p.chars().all(|c| c.is_ascii_digit()) {
        Ok(p.to_owned())
    } else {
        Err(bad(format!("{raw:?} is not a WhatsApp id (E.164 digits without +)")))
    }
}

macro_rules! try_or {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

#[derive(Deserialize)]
struct PhoneBody {
    name: Option<String>,
    /// A WhatsApp username: the business then sees the phone by `user_id` (and `username`) only,
    /// without `wa_id`, until the two exchange a 1:1 message.
    username: Option<String>,
    /// Forget the last 1:1 exchange (as if it were over 30 days old): a username user's number
    /// is hidden from the business again.
    #[serde(default, rename = "hideNumber")]
    hide_number: bool,
}

async fn set_phone(
    State(shared): State<Shared>,
    Path(phone): Path<String>,
    body: Bytes,
) -> Response {
    let phone = try_or!(phone_id(&phone));
    let b: PhoneBody = try_or!(parse(&body).map_err(bad));
    if let Some(u) = &b.username
        && (u.len() < 3
            || u.len() > 35
            || !u.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_')))
    {
        return bad("username: 3 to 35 letters, digits, '.' or '_'");
    }
    let mut st = shared.lock();
    let p = st.phone(&phone);
    p.name = b.name;
    p.username = b.username;
    if b.hide_number {
        p.last_exchange = None;
    }
    Json(json!({"phone": phone, "userId": SimState::bsuid(&phone), "username": p.username}))
        .into_response()
}

/// Every phone the simulator knows (named or used), by number.
async fn phones(State(shared): State<Shared>) -> Response {
    let st = shared.lock();
    let mut all: Vec<(&String, &super::state::Phone)> = st.phones.iter().collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    let list: Vec<Value> =
        all.into_iter().map(|(phone, p)| json!({"phone": phone, "name": p.name, "userId": SimState::bsuid(phone), "username": p.username})).collect();
    Json(list).into_response()
}

/// One phone: its profile name and what it wrote to the business.
async fn one_phone(State(shared): State<Shared>, Path(phone): Path<String>) -> Response {
    let phone = try_or!(phone_id(&phone));
    let st = shared.lock();
    let (name, sent): (Option<String>, Vec<Value>) = st
        .phones
        .get(&phone)
        .map(|p| (p.name.clone(), p.sent.iter().map(Delivered::to_json).collect()))
        .unwrap_or_default();
    Json(json!({"phone": phone, "name": name, "sent": sent})).into_response()
}

async fn inbox(State(shared): State<Shared>, Path(phone): Path<String>) -> Response {
    let phone = try_or!(phone_id(&phone));
    let st = shared.lock();
    let items: Vec<Value> = st
        .phones
        .get(&phone)
        .map(|p| p.inbox.iter().map(Delivered::to_json).collect())
        .unwrap_or_default();
    Json(items).into_response()
}

/// Taps an invite link as `phone`; the answer says what the phone sees.
pub(crate) fn tap(shared: &Shared, phone: &str, link: &str) -> Value {
    let mut st = shared.lock();
    let Some(gid) = st.find_by_link(link).map(|g| g.id.clone()) else {
        return json!({"result": "refused", "reason": "This invite link is not valid (it was reset, or the group was deleted)"});
    };
    let item;
    let field = "group_participants_update";
    {
        let Some(g) = st.groups.get_mut(&gid) else {
            return json!({"result": "refused", "reason": "no such group"});
        };
        if g.removed.iter().any(|p| p == phone) {
            return json!({"result": "refused", "reason": "You can't join this group because you were removed by an admin"});
        }
        if g.participants.iter().any(|p| p == phone) {
            return json!({"result": "joined"});
        }
        if g.approval_required {
            let (req, new) = request_to_join(g, phone);
            if !new {
                return json!({"result": "requested"});
            }
            item = (req, true);
        } else {
            if g.participants.len() >= 8 {
                return json!({"result": "refused", "reason": "This group is full"});
            }
            g.participants.push(phone.to_owned());
            item = (
                super::state::JoinRequest {
                    id: String::new(),
                    phone: phone.to_owned(),
                    created: now_secs(),
                },
                false,
            );
        }
    }
    let (req, is_request) = item;
    let webhook = if is_request {
        st.group_item(
            &gid,
            "group_join_request_created",
            st.user(phone, json!({"reason": "admin_approval", "join_request_id": req.id})),
        )
    } else {
        st.group_item(
            &gid,
            "group_participants_add",
            json!({"reason": "invite_link",
            "added_participants": [st.user(phone, json!({}))]}),
        )
    };
    let value = st.value(json!({"groups": [webhook]}));
    drop(st);
    shared.emit(field, value);
    json!({"result": if is_request { "requested" } else { "joined" }})
}

#[derive(Deserialize)]
struct TapBody {
    link: String,
}

async fn tap_link(
    State(shared): State<Shared>,
    Path(phone): Path<String>,
    body: Bytes,
) -> Response {
    let phone = try_or!(phone_id(&phone));
    let b: TapBody = try_or!(parse(&body).map_err(bad));
    Json(tap(&shared, &phone, &b.link)).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupBody {
    group_id: String,
}

async fn cancel(State(shared): State<Shared>, Path(phone): Path<String>, body: Bytes) -> Response {
    let phone = try_or!(phone_id(&phone));
    let b: GroupBody = try_or!(parse(&body).map_err(bad));
    let mut st = shared.lock();
    let Some(g) = st.groups.get_mut(&b.group_id) else {
        return fail(StatusCode::NOT_FOUND, "no such group");
    };
    let Some(pos) = g.pending.iter().position(|r| r.phone == phone) else {
        return bad("this phone has no pending join request in that group");
    };
    let req = g.pending.remove(pos);
    let item = st.group_item(
        &b.group_id,
        "group_join_request_revoked",
        st.user(&phone, json!({"join_request_id": req.id})),
    );
    let value = st.value(json!({"groups": [item]}));
    drop(st);
    shared.emit("group_participants_update", value);
    Json(json!({"ok": true})).into_response()
}

/// A file a phone sends.
pub(crate) struct PhoneMedia {
    pub kind: MediaKind,
    pub mime_type: String,
    pub filename: Option<String>,
    pub caption: Option<String>,
    pub bytes: Bytes,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaBody {
    #[serde(rename = "type")]
    kind: String,
    mime_type: String,
    filename: Option<String>,
    data_base64: String,
    caption: Option<String>,
}

impl MediaBody {
    fn decode(self) -> Result<PhoneMedia, String> {
        let kind = MediaKind::parse(&self.kind).ok_or_else(|| {
            format!(
                "media.type must be image, document, audio, video or sticker, not {:?}",
                self.kind
            )
        })?;
        if self.mime_type.trim().is_empty() {
            return Err("media.mimeType is required".into());
        }
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            self.data_base64.trim(),
        )
        .map_err(|e| format!("media.dataBase64 is not base64: {e}"))?;
        if bytes.is_empty() {
            return Err("media.dataBase64 is empty".into());
        }
        let caption = self.caption.filter(|c| !c.trim().is_empty());
        if caption.is_some() && !kind.takes_caption() {
            return Err(format!("a {kind} has no caption"));
        }
        if self.filename.is_some() && kind != MediaKind::Document {
            return Err(format!("only a document has a file name, not a {kind}"));
        }
        // A document always has a name on WhatsApp.
        let filename = match kind {
            MediaKind::Document => Some(self.filename.unwrap_or_else(|| "document".into())),
            _ => None,
        };
        Ok(PhoneMedia {
            kind,
            mime_type: media::essence(&self.mime_type),
            filename,
            caption,
            bytes: bytes.into(),
        })
    }
}

/// A phone writes to the business (`to = "business"`) or to a group it is in: text, or a file
/// (stored like an upload, announced by the webhook with its media object).
pub(crate) fn phone_message(
    shared: &Shared,
    phone: &str,
    to: &str,
    text: &str,
    context: Option<&str>,
    file: Option<PhoneMedia>,
) -> Result<String, String> {
    if file.is_none() && text.trim().is_empty() {
        return Err("text is empty".into());
    }
    if file.is_some() && !text.is_empty() {
        return Err("give text or media, not both (a media message has a caption)".into());
    }
    let mut st = shared.lock();
    if to != "business" {
        let member = st
            .groups
            .get(to)
            .filter(|g| g.active)
            .map(|g| g.participants.iter().any(|p| p == phone));
        match member {
            None => return Err("no such group".into()),
            Some(false) => return Err("this phone is not a participant of that group".into()),
            Some(true) => {}
        }
    }
    let id = wamid();
    let mut profile = json!({"name": st.profile_name(phone)});
    if let Some(u) = st.phones.get(phone).and_then(|p| p.username.clone()) {
        profile["username"] = json!(u);
    }
    if to == "business" {
        // Writing to the business shows the number from now on (Meta's 30-day rule).
        st.phone(phone).last_exchange = Some(std::time::Instant::now());
    }
    let mut message = json!({"from_user_id": SimState::bsuid(phone), "id": id,
        "timestamp": now_secs().to_string(), "type": "text", "text": {"body": text}});
    let mut media_ref = None;
    if let Some(f) = file {
        let kind = f.kind.as_str();
        let stored = Media::new(f.mime_type, f.filename.clone(), f.bytes);
        // The media object exactly as Meta's webhooks carry it for this kind.
        let mut object = json!({"mime_type": stored.mime_type, "sha256": stored.sha256_base64(), "id": stored.id});
        if let Some(c) = &f.caption {
            object["caption"] = json!(c);
        }
        if let Some(n) = &f.filename {
            object["filename"] = json!(n);
        }
        match f.kind {
            MediaKind::Audio => object["voice"] = json!(false),
            MediaKind::Sticker => object["animated"] = json!(false),
            _ => {}
        }
        message = json!({"from_user_id": SimState::bsuid(phone), "id": id,
            "timestamp": now_secs().to_string(), "type": kind, kind: object});
        media_ref = Some((f.kind, MediaRef::of(&stored, f.caption, None)));
        st.media.insert(stored.id.clone(), stored);
    }
    if st.number_shown(phone) {
        message["from"] = json!(phone);
    }
    if let Some(c) = context {
        message["context"] = json!({"from": st.cfg.business_phone, "id": c});
    }
    // What the phone wrote, as its own chat (1:1) or the group keeps it.
    let written = Delivered {
        id: id.clone(),
        from: phone.to_owned(),
        group_id: (to != "business").then(|| to.to_owned()),
        kind: media_ref.as_ref().map_or("text", |(k, _)| k.as_str()).to_owned(),
        text: media_ref
            .as_ref()
            .map_or(text.to_owned(), |(_, m)| m.caption.clone().unwrap_or_default()),
        template: None,
        context_id: context.map(str::to_owned),
        timestamp: now_secs(),
        media: media_ref.map(|(_, m)| m),
    };
    if to == "business" {
        let sender = st.phone(phone);
        sender.window_until = window_from_now();
        sender.sent.push(written);
    } else {
        let Some(g) = st.groups.get_mut(to).filter(|g| g.active) else {
            return Err("no such group".into());
        };
        if !g.participants.iter().any(|p| p == phone) {
            return Err("this phone is not a participant of that group".into());
        }
        g.window_until = window_from_now();
        g.messages.push(written);
        let others: Vec<String> = g.participants.iter().filter(|p| *p != phone).cloned().collect();
        let copy = g.messages.last().cloned();
        for p in others {
            if let Some(m) = copy.clone() {
                st.phone(&p).inbox.push(m);
            }
        }
        message["group_id"] = json!(to);
    }
    let value = st.value(json!({
        "contacts": [st.user(phone, json!({"profile": profile}))],
        "messages": [message],
    }));
    drop(st);
    shared.emit("messages", value);
    Ok(id)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WriteBody {
    to: String,
    #[serde(default)]
    text: String,
    context_id: Option<String>,
    media: Option<MediaBody>,
}

async fn write(State(shared): State<Shared>, Path(phone): Path<String>, body: Bytes) -> Response {
    let phone = try_or!(phone_id(&phone));
    let b: WriteBody = try_or!(parse(&body).map_err(bad));
    let file = match b.media.map(MediaBody::decode).transpose() {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    match phone_message(&shared, &phone, &b.to, &b.text, b.context_id.as_deref(), file) {
        Ok(id) => Json(json!({"id": id})).into_response(),
        Err(e) => bad(e),
    }
}

async fn leave(State(shared): State<Shared>, Path(phone): Path<String>, body: Bytes) -> Response {
    let phone = try_or!(phone_id(&phone));
    let b: GroupBody = try_or!(parse(&body).map_err(bad));
    let mut st = shared.lock();
    let Some(g) = st.groups.get_mut(&b.group_id).filter(|g| g.active) else {
        return fail(StatusCode::NOT_FOUND, "no such group");
    };
    let Some(pos) = g.participants.iter().position(|p| *p == phone) else {
        return bad("this phone is not in that group");
    };
    // Leaving is not being removed: a leaver may come back through a link.
    g.participants.remove(pos);
    let item = st.group_item(
        &b.group_id,
        "group_participants_remove",
        json!({"initiated_by": "participant",
        "removed_participants": [st.user(&phone, json!({}))]}),
    );
    let value = st.value(json!({"groups": [item]}));
    drop(st);
    shared.emit("group_participants_update", value);
    Json(json!({"ok": true})).into_response()
}

async fn groups(State(shared): State<Shared>) -> Response {
    let st = shared.lock();
    let all: Vec<Value> = st
        .group_order
        .iter()
        .filter_map(|id| st.groups.get(id))
        .map(super::state::Group::to_json)
        .collect();
    Json(all).into_response()
}

/// WhatsApp's moderation suspends a group or lifts the suspension: `group_status_update`
/// (`group_suspend` / `group_suspend_cleared`) goes out when the state changes; sends to a
/// suspended group fail with 131207. `false` when there is no such active group.
pub(crate) fn suspend(shared: &Shared, group: &str, suspended: bool) -> bool {
    let mut st = shared.lock();
    let Some(g) = st.groups.get_mut(group).filter(|g| g.active) else {
        return false;
    };
    if g.suspended == suspended {
        return true;
    }
    g.suspended = suspended;
    let kind = if suspended { "group_suspend" } else { "group_suspend_cleared" };
    let item = st.group_item(group, kind, json!({}));
    let value = st.value(json!({"groups": [item]}));
    drop(st);
    shared.emit("group_status_update", value);
    true
}

#[derive(Deserialize)]
struct SuspendBody {
    #[serde(default = "yes")]
    suspended: bool,
}

fn yes() -> bool {
    true
}

async fn suspend_group(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let b: SuspendBody = if body.is_empty() {
        SuspendBody { suspended: true }
    } else {
        try_or!(parse(&body).map_err(bad))
    };
    if suspend(&shared, &id, b.suspended) {
        Json(json!({"id": id, "suspended": b.suspended})).into_response()
    } else {
        fail(StatusCode::NOT_FOUND, "no such active group")
    }
}

async fn group(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    match shared.lock().groups.get(&id) {
        Some(g) => Json(g.to_json()).into_response(),
        None => fail(StatusCode::NOT_FOUND, "no such group"),
    }
}

/// The raw bytes of a stored media file (uploaded or sent by a phone), with its type.
async fn media_bytes(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    match shared.lock().media.get(&id) {
        Some(m) => ([(axum::http::header::CONTENT_TYPE, m.mime_type.clone())], m.bytes.clone())
            .into_response(),
        None => fail(StatusCode::NOT_FOUND, "no media with that id"),
    }
}

async fn faults(State(shared): State<Shared>, body: Bytes) -> Response {
    let spec: crate::sandbox::faults::FaultSpec = try_or!(parse(&body).map_err(bad));
    match spec.arm() {
        Ok(fault) => {
            shared.lock().faults.add(fault);
            Json(json!({"ok": true})).into_response()
        }
        Err(e) => bad(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryFaultBody {
    duplicate: Option<u32>,
    reorder: Option<bool>,
    fail_first: Option<u32>,
}

async fn webhook_faults(State(shared): State<Shared>, body: Bytes) -> Response {
    let b: DeliveryFaultBody = try_or!(parse(&body).map_err(bad));
    let mut st = shared.lock();
    let f = &mut st.delivery_faults;
    f.duplicate += b.duplicate.unwrap_or(0);
    f.reorder |= b.reorder.unwrap_or(false);
    f.fail_first += b.fail_first.unwrap_or(0);
    Json(json!({"ok": true})).into_response()
}

async fn stats(State(shared): State<Shared>) -> Response {
    Json(shared.lock().stats.clone()).into_response()
}
