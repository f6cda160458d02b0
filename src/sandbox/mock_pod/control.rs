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
use super::presentation::{self, FieldKind, FormSpec};
use super::state::{PodState, StoredAttachment, Stream};
use crate::sandbox::symphony_rules::url_safe_id as to_url_safe_id;

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

/// What the client sends when a person fills `form` with `given` and presses a button: fields
/// not named keep their default (the text typed in advance, the preselected people, the box as
/// it was), `null` clears one, `action` names the button (by default the first). The shape is
/// the developer docs' (`symphony-elements/available-elements/`): text as strings, people as
/// arrays of user ids, a checked box as its value and an unchecked one left out. What the
/// client would not send (an unknown field or user, a required field left empty, a text too
/// long) is refused.
fn form_values(
    form: &FormSpec,
    given: &serde_json::Map<String, Value>,
    known_user: &dyn Fn(i64) -> bool,
) -> Result<serde_json::Map<String, Value>, String> {
    let id = &form.id;
    if let Some(unknown) =
        given.keys().find(|k| *k != "action" && !form.fields.iter().any(|f| &f.name == *k))
    {
        return Err(format!("the form {id:?} has no field named {unknown:?}"));
    }
    let action = match given.get("action") {
        None | Some(Value::Null) => form.actions.first().cloned().unwrap_or_default(),
        Some(Value::String(a)) if form.actions.contains(a) => a.clone(),
        Some(other) => return Err(format!("the form {id:?} has no action button {other}")),
    };
    let mut values = serde_json::Map::new();
    values.insert("action".into(), json!(action));
    for field in &form.fields {
        let name = &field.name;
        let refused = |v: &Value| Err(format!("the field {name:?} cannot take {v}"));
        let value = match (&field.kind, given.get(name)) {
            (FieldKind::Text { initial, .. }, None) => Some(json!(initial)),
            (FieldKind::Text { .. }, Some(Value::Null)) => Some(json!("")),
            (FieldKind::Text { max_units, .. }, Some(Value::String(s))) => {
                if let Some(max) = max_units.filter(|m| s.encode_utf16().count() > *m) {
                    return Err(format!("the field {name:?} holds at most {max} characters"));
                }
                Some(json!(s))
            }
            (FieldKind::People { initial }, None) => Some(json!(initial)),
            (FieldKind::People { .. }, Some(Value::Null)) => Some(json!([])),
            (FieldKind::People { .. }, Some(Value::Array(ids))) => {
                let mut users = Vec::new();
                for v in ids {
                    match v.as_i64() {
                        Some(user) if known_user(user) => users.push(user),
                        Some(user) => return Err(format!("no user {user} to pick in {name:?}")),
                        None => return refused(v),
                    }
                }
                Some(json!(users))
            }
            (FieldKind::Checkbox { value, checked }, None) => checked.then(|| json!(value)),
            (FieldKind::Checkbox { value, .. }, Some(Value::Bool(true))) => Some(json!(value)),
            (FieldKind::Checkbox { value, .. }, Some(Value::String(s))) if s == value => {
                Some(json!(value))
            }
            (FieldKind::Checkbox { .. }, Some(Value::Bool(false) | Value::Null)) => None,
            (_, Some(other)) => return refused(other),
        };
        let empty = match &value {
            None => true,
            Some(Value::String(s)) => s.trim().is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        if field.required && empty {
            return Err(format!(
                "the field {name:?} is required: the client does not send the form without it"
            ));
        }
        // Several inputs of one name send an array (developer docs, form.md).
        match (value, values.get_mut(name)) {
            (None, _) => {}
            (Some(v), None) => {
                values.insert(name.clone(), v);
            }
            (Some(v), Some(Value::Array(list)))
                if !matches!(field.kind, FieldKind::People { .. }) =>
            {
                list.push(v)
            }
            (Some(v), Some(previous)) => *previous = json!([previous.take(), v]),
        }
    }
    Ok(values)
}

async fn submit_form(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let b: FormBody = parse_or_return!(&body);
    let message_id = to_url_safe_id(&b.message_id);
    let values = {
        let mut st = shared.lock();
        let found = st.streams.values().find_map(|s| {
            let m = s.messages.iter().find(|m| m.message_id == message_id)?;
            Some((s.id.clone(), m.user, m.forms.clone()))
        });
        let Some((sid, author, forms)) = found else {
            return fail(StatusCode::NOT_FOUND, "no message with that messageId");
        };
        if st.streams.get(&sid).is_some_and(|s| s.member(b.as_user).is_none()) {
            return fail(StatusCode::FORBIDDEN, "the user is not a member of the form's stream");
        }
        let Some(form) = forms.iter().find(|f| f.id == b.form_id) else {
            return fail(
                StatusCode::NOT_FOUND,
                format!("the message has no form with id {:?}", b.form_id),
            );
        };
        let values = match form_values(form, &b.values, &|id| st.users.contains_key(&id)) {
            Ok(values) => values,
            Err(e) => return bad(e),
        };
        let payload = json!({"stream": st.stream_payload(&sid), "formMessageId": message_id,
                             "formId": form.id, "formValues": values});
        // The submission goes to whoever sent the form (its bot), nobody else.
        st.emit_to(&[author], b.as_user, "SYMPHONYELEMENTSACTION", payload, None);
        values
    };
    shared.notify();
    Json(json!({"ok": true, "formValues": values})).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> FormSpec {
        let rendered = presentation::render(
            "<messageML><form id=\"f\">\
             <text-field name=\"name\">Desk</text-field><text-field name=\"code\" required=\"true\"/>\
             <person-selector name=\"who\" value=\"[7]\"/><textarea name=\"notes\"/>\
             <checkbox name=\"native\" value=\"on\" checked=\"true\">Native</checkbox>\
             <checkbox name=\"urgent\" value=\"yes\">Urgent</checkbox>\
             <button name=\"create\">Create</button><button name=\"cancel\">Cancel</button>\
             </form></messageML>",
            None,
            &|_| None,
        )
        .expect("valid");
        rendered.forms.into_iter().next().expect("a form")
    }

    fn given(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    fn known(id: i64) -> bool {
        [7, 8].contains(&id)
    }

    #[test]
    fn untouched_fields_send_their_defaults_as_the_client_does() {
        let sent = form_values(&form(), &given(json!({"code": "A1"})), &known).expect("sent");
        assert_eq!(
            Value::Object(sent),
            json!({"action": "create", "name": "Desk", "code": "A1", "who": [7], "notes": "",
                   "native": "on"})
        );
        let sent = form_values(
            &form(),
            &given(json!({"action": "cancel", "name": null, "code": "B", "who": [8, 7],
                          "native": false, "urgent": true})),
            &known,
        )
        .expect("sent");
        assert_eq!(
            Value::Object(sent),
            json!({"action": "cancel", "name": "", "code": "B", "who": [8, 7], "notes": "",
                   "urgent": "yes"})
        );
    }

    #[test]
    fn what_the_client_would_not_send_is_refused() {
        let cases = [
            (json!({"code": "A", "nope": "x"}), "no field named \"nope\""),
            (json!({"code": "A", "action": "delete"}), "no action button"),
            (json!({}), "\"code\" is required"),
            (json!({"code": "  "}), "\"code\" is required"),
            (json!({"code": "A", "who": [9]}), "no user 9"),
            (json!({"code": "A", "who": ["7"]}), "\"who\" cannot take \"7\""),
            (json!({"code": "A", "urgent": "no"}), "\"urgent\" cannot take \"no\""),
            (json!({"code": "A", "name": 5}), "\"name\" cannot take 5"),
            (json!({"code": "x".repeat(129)}), "at most 128 characters"),
        ];
        for (values, expected) in cases {
            let err = form_values(&form(), &given(values.clone()), &known).expect_err("refused");
            assert!(err.contains(expected), "{values}: {err}");
        }
    }
}
