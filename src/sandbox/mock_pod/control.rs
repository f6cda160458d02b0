//! The mock pod's control API under `/_sandbox/` (DESIGN.md §5.1): act as people, look at
//! streams and messages, inject faults. Errors are `{"error": "..."}` with a 4xx status.

// Handlers return ready-made error responses; boxing them would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::presentation;
use super::state::{PodState, StoredAttachment, Stream};
use crate::groups::model::to_url_safe_id;

fn fail(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn bad(message: impl Into<String>) -> Response {
    fail(StatusCode::BAD_REQUEST, message)
}

pub(crate) fn router(shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/_sandbox/ims", post(create_im))
        .route("/_sandbox/rooms", post(create_room))
        .route("/_sandbox/streams", get(list_streams))
        .route("/_sandbox/streams/{sid}", get(one_stream))
        .route("/_sandbox/streams/{sid}/messages", get(list_messages).post(post_message))
        .route("/_sandbox/streams/{sid}/attachments/{file_id}", get(attachment_bytes))
        .route("/_sandbox/streams/{sid}/actions", post(act))
        .route("/_sandbox/forms", post(submit_form))
        .route("/_sandbox/faults", post(add_fault))
        .route("/_sandbox/sessions/expire", post(expire_sessions))
        .route("/_sandbox/datafeeds/expire", post(expire_datafeeds))
        .route("/_sandbox/stats", get(stats))
        .with_state(shared)
}

/// Parses a JSON body, answering 400 `{"error"}` when it does not fit.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))
}

macro_rules! parse_or_return {
    ($body:expr) => {
        match parse($body) {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

pub(crate) fn stream_json(s: &Stream) -> Value {
    json!({
        "streamId": s.id,
        "type": s.kind.as_str(),
        "name": s.name,
        "active": s.active,
        "members": s.members.iter().map(|m| json!({"userId": m.user, "owner": m.owner})).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
struct ImBody {
    members: Vec<i64>,
}

async fn create_im(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let b: ImBody = parse_or_return!(&body);
    let Some(&first) = b.members.first() else { return bad("members must name at least one user") };
    let result = shared.lock().create_im(first, b.members);
    shared.notify();
    match result {
        Ok(id) => Json(json!({"streamId": id})).into_response(),
        Err(e) => bad(e),
    }
}

#[derive(Deserialize)]
struct RoomBody {
    #[serde(rename = "as")]
    as_user: i64,
    name: String,
    #[serde(default)]
    members: Vec<i64>,
}

async fn create_room(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let b: RoomBody = parse_or_return!(&body);
    let result = {
        let mut st = shared.lock();
        if !st.users.contains_key(&b.as_user) {
            return bad(format!("unknown user {}", b.as_user));
        }
        st.create_room(b.as_user, &b.name, "").and_then(|id| {
            for m in b.members.iter().filter(|m| **m != b.as_user) {
                st.membership(b.as_user, &id, "add", *m)?;
            }
            Ok(id)
        })
    };
    shared.notify();
    match result {
        Ok(id) => Json(json!({"streamId": id})).into_response(),
        Err(e) => bad(e),
    }
}

async fn list_streams(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let member = q.get("member").and_then(|m| m.parse::<i64>().ok());
    let st = shared.lock();
    let mut streams: Vec<&Stream> =
        st.streams.values().filter(|s| member.is_none_or(|m| s.member(m).is_some())).collect();
    streams.sort_by_key(|s| s.created_at);
    Json(streams.into_iter().map(stream_json).collect::<Vec<_>>()).into_response()
}

async fn one_stream(State(shared): State<Shared>, Path(sid): Path<String>) -> Response {
    let st = shared.lock();
    match st.streams.get(&to_url_safe_id(&sid)) {
        Some(s) => Json(stream_json(s)).into_response(),
        None => fail(StatusCode::NOT_FOUND, "no such stream"),
    }
}

#[derive(Deserialize)]
struct MessageBody {
    #[serde(rename = "as")]
    as_user: i64,
    #[serde(rename = "messageML")]
    message_ml: String,
    #[serde(default)]
    attachments: Vec<AttachmentBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentBody {
    name: String,
    content_type: String,
    data_base64: String,
}

impl AttachmentBody {
    fn decode(self) -> Result<StoredAttachment, String> {
        if self.name.trim().is_empty() {
            return Err("an attachment needs a name".into());
        }
        if self.content_type.trim().is_empty() {
            return Err(format!("attachment {:?}: contentType is required", self.name));
        }
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &self.data_base64)
                .map_err(|e| format!("attachment {:?}: dataBase64 is not base64: {e}", self.name))?;
        Ok(StoredAttachment::new(self.name, self.content_type, bytes.into()))
    }
}

/// `{"name","fileId","size","contentType"}`, as the control API shows an attachment.
pub(crate) fn attachment_json(a: &StoredAttachment) -> Value {
    json!({"name": a.name, "fileId": a.id, "size": a.bytes.len(), "contentType": a.content_type})
}

async fn post_message(
    State(shared): State<Shared>,
    Path(sid): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let b: MessageBody = parse_or_return!(&body);
    let sid = to_url_safe_id(&sid);
    let attachments = match b.attachments.into_iter().map(AttachmentBody::decode).collect() {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let result = {
        let mut st = shared.lock();
        if !st.streams.contains_key(&sid) {
            return fail(StatusCode::NOT_FOUND, "no such stream");
        }
        let names: HashMap<i64, String> =
            st.users.iter().map(|(id, u)| (*id, u.display_name.clone())).collect();
        match presentation::render(&b.message_ml, None, &presentation::names(&names)) {
            Ok(rendered) => st
                .post(b.as_user, &sid, rendered, attachments)
                .map_err(|e| (StatusCode::FORBIDDEN, e)),
            Err(e) => Err((StatusCode::BAD_REQUEST, e)),
        }
    };
    shared.notify();
    match result {
        Ok(v4) => Json(json!({"messageId": v4["messageId"]})).into_response(),
        Err((status, e)) => fail(status, e),
    }
}

async fn list_messages(State(shared): State<Shared>, Path(sid): Path<String>) -> Response {
    let st = shared.lock();
    let Some(s) = st.streams.get(&to_url_safe_id(&sid)) else {
        return fail(StatusCode::NOT_FOUND, "no such stream");
    };
    let messages: Vec<Value> = s
        .messages
        .iter()
        .map(|m| {
            json!({
                "messageId": m.message_id, "timestamp": m.timestamp,
                "user": {"userId": m.user, "displayName": st.display_name(m.user).unwrap_or_default()},
                "message": m.presentation_ml, "text": m.text, "data": m.data,
                "attachments": m.attachments.iter().map(attachment_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(messages).into_response()
}

/// The raw bytes of an attachment, with its content type.
async fn attachment_bytes(
    State(shared): State<Shared>,
    Path((sid, file_id)): Path<(String, String)>,
) -> Response {
    let st = shared.lock();
    let Some(s) = st.streams.get(&to_url_safe_id(&sid)) else {
        return fail(StatusCode::NOT_FOUND, "no such stream");
    };
    // Ids hold an encoded `/` (`%2F`): accept them with it encoded once or decoded.
    let found = s
        .messages
        .iter()
        .flat_map(|m| &m.attachments)
        .find(|a| a.id == file_id || a.id.replace("%2F", "/") == file_id);
    match found {
        Some(a) => ([(axum::http::header::CONTENT_TYPE, a.content_type.clone())], a.bytes.clone())
            .into_response(),
        None => fail(StatusCode::NOT_FOUND, "no attachment with that fileId in this stream"),
    }
}

#[derive(Deserialize)]
struct ActionBody {
    #[serde(rename = "as")]
    as_user: i64,
    action: String,
    name: Option<String>,
    #[serde(rename = "userId")]
    user_id: Option<i64>,
}

fn act_on(st: &mut PodState, sid: &str, b: &ActionBody) -> Result<(), (StatusCode, String)> {
    let s = st.streams.get(sid).ok_or((StatusCode::NOT_FOUND, "no such stream".to_owned()))?;
    if s.kind != super::state::StreamKind::Room {
        return Err((StatusCode::BAD_REQUEST, "not a room".into()));
    }
    if !s.is_owner(b.as_user) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("user {} is not an owner of this room", b.as_user),
        ));
    }
    let need_user = || b.user_id.ok_or((StatusCode::BAD_REQUEST, "userId is required".to_owned()));
    let r = match b.action.as_str() {
        "rename" => {
            let name = b
                .name
                .as_deref()
                .ok_or((StatusCode::BAD_REQUEST, "name is required".to_owned()))?;
            st.rename_room(b.as_user, sid, Some(name), None)
        }
        "addMember" => st.membership(b.as_user, sid, "add", need_user()?).map(|_| ()),
        "removeMember" => st.membership(b.as_user, sid, "remove", need_user()?).map(|_| ()),
        "promote" => st.membership(b.as_user, sid, "promoteOwner", need_user()?).map(|_| ()),
        "demote" => st.membership(b.as_user, sid, "demoteOwner", need_user()?).map(|_| ()),
        "deactivate" => st.set_active(b.as_user, sid, false),
        other => return Err((StatusCode::BAD_REQUEST, format!("unknown action {other:?}"))),
    };
    r.map_err(|e| (StatusCode::BAD_REQUEST, e))
}

async fn act(
    State(shared): State<Shared>,
    Path(sid): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let b: ActionBody = parse_or_return!(&body);
    let result = act_on(&mut shared.lock(), &to_url_safe_id(&sid), &b);
    shared.notify();
    match result {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err((status, e)) => fail(status, e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FormBody {
    #[serde(rename = "as")]
    as_user: i64,
    message_id: String,
    form_id: String,
    #[serde(default)]
    values: serde_json::Map<String, Value>,
}

async fn submit_form(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let b: FormBody = parse_or_return!(&body);
    {
        let mut st = shared.lock();
        let found = st
            .streams
            .values()
            .find(|s| s.messages.iter().any(|m| m.message_id == b.message_id))
            .map(|s| s.id.clone());
        let Some(sid) = found else {
            return fail(StatusCode::NOT_FOUND, "no message with that messageId");
        };
        if st.streams.get(&sid).is_some_and(|s| s.member(b.as_user).is_none()) {
            return fail(StatusCode::FORBIDDEN, "the user is not a member of the form's stream");
        }
        let stream = st.stream_payload(&sid);
        let payload = json!({"stream": stream, "formMessageId": b.message_id, "formId": b.form_id, "formValues": b.values});
        // Elements actions go to the bot(s) of the stream only, like the real pod.
        st.emit(&sid, b.as_user, "SYMPHONYELEMENTSACTION", payload, None, &[]);
    }
    shared.notify();
    Json(json!({"ok": true})).into_response()
}

async fn add_fault(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let spec: crate::sandbox::faults::FaultSpec = parse_or_return!(&body);
    match spec.arm() {
        Ok(fault) => {
            shared.lock().faults.add(fault);
            Json(json!({"ok": true})).into_response()
        }
        Err(e) => bad(e),
    }
}

async fn expire_sessions(State(shared): State<Shared>) -> Response {
    let mut st = shared.lock();
    st.sessions.clear();
    st.km_tokens.clear();
    Json(json!({"ok": true})).into_response()
}

async fn expire_datafeeds(State(shared): State<Shared>) -> Response {
    let mut st = shared.lock();
    for f in st.feeds.values_mut() {
        f.expired = true;
    }
    Json(json!({"ok": true})).into_response()
}

async fn stats(State(shared): State<Shared>) -> Response {
    Json(shared.lock().stats.clone()).into_response()
}
