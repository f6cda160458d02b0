//! The product API of the mock pod: login, pod, agent and Datafeed v2 endpoints, as the official
//! specs define them (paths, bodies, status codes, `{"code","message"}` errors).

// Handlers return ready-made error responses; boxing them would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::presentation;
use super::state::StoredAttachment;
use crate::sandbox::symphony_rules::url_safe_id as to_url_safe_id;

/// A spec-shaped error: `{"code": <status>, "message": "..."}`.
pub(crate) fn error(status: u16, message: impl Into<String>) -> Response {
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status_code, Json(json!({"code": status, "message": message.into()}))).into_response()
}

pub(crate) fn router(shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/login/pubkey/authenticate", post(login_session))
        .route("/relay/pubkey/authenticate", post(login_key_manager))
        .route("/pod/v2/sessioninfo", get(session_info))
        .route("/pod/v3/users", get(users_v3))
        .route("/pod/v2/user", get(user_v2))
        .route("/pod/v3/room/create", post(room_create))
        .route("/pod/v3/room/{id}/info", get(room_info))
        .route("/pod/v3/room/{id}/update", post(room_update))
        .route("/pod/v1/room/{id}/setActive", post(room_set_active))
        .route("/pod/v2/room/{id}/membership/list", get(membership_list))
        .route("/pod/v1/room/{id}/membership/{action}", post(membership_change))
        .route("/pod/v1/im/create", post(im_create))
        .route("/pod/v2/streams/{id}/info", get(stream_info))
        .route("/pod/v1/streams/list", post(streams_list))
        .route("/pod/v1/streams/{id}/attachments", get(stream_attachments))
        .route("/agent/v1/info", get(agent_info))
        .route("/agent/v1/stream/{id}/attachment", get(attachment_download))
        .route("/agent/v4/stream/{id}/message/create", post(message_create))
        .route("/agent/v4/stream/{id}/message", get(message_list))
        .route("/agent/v5/datafeeds", get(feeds_list).post(feeds_create))
        .route("/agent/v5/datafeeds/{id}", axum::routing::delete(feeds_delete))
        .route("/agent/v5/datafeeds/{id}/read", post(feeds_read))
        .with_state(shared)
}

/// Fault injection: the next N product-API calls matching method + path answer as configured.
pub(crate) async fn inject_faults(
    State(shared): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if !path.starts_with("/_sandbox") {
        let method = request.method().as_str().to_owned();
        let latency = shared.lock().cfg.latency;
        let feed_read = path.contains("/datafeeds/") && path.ends_with("/read");
        if !latency.is_zero() && !feed_read {
            tokio::time::sleep(latency).await;
        }
        let fault = {
            let mut st = shared.lock();
            let fault = st.faults.take(&method, &path);
            if fault.is_some() {
                st.stats.faults_served += 1;
            }
            fault
        };
        if let Some(fault) = fault {
            if let Some(hang) = fault.hang {
                tokio::time::sleep(hang).await;
            }
            if fault.drop {
                if fault.after {
                    let done = next.run(request).await;
                    return crate::sandbox::faults::cut_mid_body(done).await;
                }
                return crate::sandbox::faults::dropped();
            }
            if fault.after {
                let _done = next.run(request).await;
                return error(
                    fault.status.max(500),
                    "injected fault after the call was carried out",
                );
            }
            if fault.status >= 100 {
                let mut response = error(fault.status, format!("injected fault {}", fault.status));
                if let Some(v) = fault.retry_after_header() {
                    response.headers_mut().insert("Retry-After", v);
                }
                return response;
            }
        }
    }
    next.run(request).await
}

// ----- authentication -----

#[derive(Deserialize)]
struct AuthenticateRequest {
    token: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

fn verify_jwt(shared: &Shared, jwt: &str) -> Result<i64, String> {
    let header = jsonwebtoken::decode_header(jwt)
        .map_err(|e| format!("malformed authentication token: {e}"))?;
    if header.alg != jsonwebtoken::Algorithm::RS512 {
        return Err(format!("the token must be signed with RS512, not {:?}", header.alg));
    }
    // Read `sub` first to find whose key to verify with; the signature is checked right after.
    let claims_part = jwt.split('.').nth(1).ok_or("malformed authentication token")?;
    let claims_json = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        claims_part.trim_end_matches('='),
    )
    .map_err(|_| "malformed authentication token".to_owned())?;
    let unverified: Claims = serde_json::from_slice(&claims_json).map_err(|e| {
        format!("malformed authentication token (claims sub and exp are required): {e}")
    })?;
    let (user_id, pem) = {
        let st = shared.lock();
        let user = st
            .users
            .values()
            .find(|u| u.username == unverified.sub)
            .ok_or_else(|| format!("invalid user {:?}", unverified.sub))?;
        let pem = user
            .public_key_pem
            .clone()
            .ok_or("the user's public key is not imported in the pod")?;
        (user.id, pem)
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS512);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let verified = jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
        .map_err(|e| format!("invalid token signature or expiry: {e}"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if verified.claims.exp > now + 300 {
        return Err("the token expiration must be within 5 minutes from now".into());
    }
    Ok(user_id)
}

async fn login(shared: Shared, body: &[u8], key_manager: bool) -> Response {
    let Ok(req) = serde_json::from_slice::<AuthenticateRequest>(body) else {
        return error(400, "the body must be {\"token\": \"<signed JWT>\"}");
    };
    match verify_jwt(&shared, &req.token) {
        Ok(user) => {
            let token = super::state::PodState::new_token();
            let mut st = shared.lock();
            st.issued_tokens.push(token.clone());
            let name = if key_manager {
                st.km_tokens.insert(token.clone(), user);
                st.stats.key_manager_logins += 1;
                "keyManagerToken"
            } else {
                st.sessions.insert(token.clone(), user);
                st.stats.session_logins += 1;
                "sessionToken"
            };
            Json(json!({"name": name, "token": token})).into_response()
        }
        Err(reason) => error(401, reason),
    }
}

async fn login_session(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    login(shared, &body, false).await
}

async fn login_key_manager(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    login(shared, &body, true).await
}

/// The caller of a pod call (`sessionToken`), or of an agent call (`sessionToken` +
/// `keyManagerToken`).
fn caller(shared: &Shared, headers: &HeaderMap, agent: bool) -> Result<i64, Response> {
    let st = shared.lock();
    let session = headers.get("sessionToken").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let user = *st.sessions.get(session).ok_or_else(|| error(401, "Invalid session"))?;
    if agent {
        let km = headers.get("keyManagerToken").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if st.km_tokens.get(km) != Some(&user) {
            return Err(error(401, "Invalid key manager token"));
        }
    }
    Ok(user)
}

macro_rules! caller {
    ($shared:expr, $headers:expr, $agent:expr) => {
        match caller(&$shared, &$headers, $agent) {
            Ok(user) => user,
            Err(response) => return response,
        }
    };
}

// ----- pod: session and users -----

async fn session_info(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let user = caller!(shared, headers, false);
    let st = shared.lock();
    match st.users.get(&user) {
        Some(u) => Json(st.user_v2(u)).into_response(),
        None => error(404, "no such user"),
    }
}

async fn users_v3(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = caller!(shared, headers, false);
    let st = shared.lock();
    let lists = ["uid", "email", "username"].iter().filter(|k| q.contains_key(**k)).count();
    if lists != 1 {
        return error(400, "give exactly one of uid, email or username");
    }
    let mut found = Vec::new();
    let mut errors = Vec::new();
    if let Some(uids) = q.get("uid") {
        for raw in uids.split(',') {
            match raw.trim().parse::<i64>() {
                Ok(id) => found.extend(st.users.get(&id)),
                Err(_) => errors.push(json!({"error": "invalid.format", "id": raw})),
            }
        }
    } else if let Some(emails) = q.get("email") {
        for raw in emails.split(',') {
            if !raw.contains('@') {
                errors.push(json!({"error": "invalid.format", "email": raw}));
            }
            found.extend(st.users.values().filter(|u| u.email.eq_ignore_ascii_case(raw.trim())));
        }
    } else if let Some(names) = q.get("username") {
        if q.get("local").map(String::as_str) != Some("true") {
            return error(400, "username lookups need local=true");
        }
        for raw in names.split(',') {
            found.extend(st.users.values().filter(|u| u.username == raw.trim()));
        }
    }
    if found.is_empty() && errors.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let users: Vec<Value> = found.iter().map(|u| st.user_v2(u)).collect();
    Json(json!({"users": users, "errors": errors})).into_response()
}

async fn user_v2(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = caller!(shared, headers, false);
    let st = shared.lock();
    let user = if let Some(uid) = q.get("uid") {
        uid.parse::<i64>().ok().and_then(|id| st.users.get(&id))
    } else if let Some(email) = q.get("email") {
        st.users.values().find(|u| u.email.eq_ignore_ascii_case(email))
    } else if let Some(name) = q.get("username") {
        st.users.values().find(|u| &u.username == name)
    } else {
        return error(400, "give uid, email or username");
    };
    match user {
        Some(u) => Json(st.user_v2(u)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

// ----- pod: rooms, membership, IMs, streams -----

#[derive(Deserialize)]
struct RoomAttributes {
    name: Option<String>,
    description: Option<String>,
}

async fn room_create(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let user = caller!(shared, headers, false);
    let Ok(attrs) = serde_json::from_slice::<RoomAttributes>(&body) else {
        return error(400, "invalid V3RoomAttributes body");
    };
    let mut st = shared.lock();
    let result = st.create_room(
        user,
        attrs.name.as_deref().unwrap_or_default(),
        attrs.description.as_deref().unwrap_or_default(),
    );
    let response = match result {
        Ok(id) => Json(st.v3_room_detail(&id).unwrap_or(Value::Null)).into_response(),
        Err(reason) => error(400, reason),
    };
    drop(st);
    shared.notify();
    response
}

fn room_for<'a>(
    st: &'a super::state::PodState,
    id: &str,
    user: i64,
) -> Result<&'a super::state::Stream, Response> {
    let s = st
        .streams
        .get(id)
        .filter(|s| s.kind == super::state::StreamKind::Room)
        .ok_or_else(|| error(404, "Room not found"))?;
    if s.member(user).is_none() {
        return Err(error(403, "The user is not a member of this room"));
    }
    Ok(s)
}

async fn room_info(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let user = caller!(shared, headers, false);
    let id = to_url_safe_id(&id);
    let st = shared.lock();
    if let Err(r) = room_for(&st, &id, user) {
        return r;
    }
    Json(st.v3_room_detail(&id).unwrap_or(Value::Null)).into_response()
}

async fn room_update(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let user = caller!(shared, headers, false);
    let id = to_url_safe_id(&id);
    let Ok(attrs) = serde_json::from_slice::<RoomAttributes>(&body) else {
        return error(400, "invalid V3RoomAttributes body");
    };
    let mut st = shared.lock();
    match room_for(&st, &id, user) {
        Err(r) => return r,
        Ok(s) if !s.is_owner(user) => return error(403, "Only room owners may update the room"),
        Ok(_) => {}
    }
    let response =
        match st.rename_room(user, &id, attrs.name.as_deref(), attrs.description.as_deref()) {
            Ok(()) => Json(st.v3_room_detail(&id).unwrap_or(Value::Null)).into_response(),
            Err(reason) => error(400, reason),
        };
    drop(st);
    shared.notify();
    response
}

async fn room_set_active(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = caller!(shared, headers, false);
    let id = to_url_safe_id(&id);
    let active = match q.get("active").map(String::as_str) {
        Some("true") => true,
        Some("false") => false,
        _ => return error(400, "active=true|false is required"),
    };
    let mut st = shared.lock();
    match room_for(&st, &id, user) {
        Err(r) => return r,
        Ok(s) if !s.is_owner(user) => {
            return error(403, "Only room owners may (de)activate the room");
        }
        Ok(_) => {}
    }
    let response = match st.set_active(user, &id, active) {
        Ok(()) => {
            let detail = st.v3_room_detail(&id).unwrap_or(Value::Null);
            Json(json!({
                "roomAttributes": {"name": detail["roomAttributes"]["name"], "description": detail["roomAttributes"]["description"],
                                   "membersCanInvite": false, "discoverable": false},
                "roomSystemInfo": detail["roomSystemInfo"],
                "immutableRoomAttributes": {"readOnly": false, "copyProtected": false, "public": false},
            }))
            .into_response()
        }
        Err(reason) => error(400, reason),
    };
    drop(st);
    shared.notify();
    response
}

async fn membership_list(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let user = caller!(shared, headers, false);
    let id = to_url_safe_id(&id);
    let st = shared.lock();
    match room_for(&st, &id, user) {
        Err(r) => r,
        Ok(s) => Json(
            s.members
                .iter()
                .map(|m| json!({"id": m.user, "owner": m.owner, "joinDate": m.join_date}))
                .collect::<Vec<_>>(),
        )
        .into_response(),
    }
}

#[derive(Deserialize)]
struct UserIdBody {
    id: i64,
}

async fn membership_change(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let user = caller!(shared, headers, false);
    let id = to_url_safe_id(&id);
    if !matches!(action.as_str(), "add" | "remove" | "promoteOwner" | "demoteOwner") {
        return error(404, "Not found");
    }
    let Ok(target) = serde_json::from_slice::<UserIdBody>(&body) else {
        return error(400, "the body must be {\"id\": <userId>}");
    };
    let mut st = shared.lock();
    match room_for(&st, &id, user) {
        Err(r) => return r,
        Ok(s) if !s.is_owner(user) => {
            return error(403, "Only room owners may change the membership");
        }
        Ok(_) => {}
    }
    let response = match st.membership(user, &id, &action, target.id) {
        Ok(message) => Json(json!({"format": "TEXT", "message": message})).into_response(),
        Err(reason) => error(400, reason),
    };
    drop(st);
    shared.notify();
    response
}

async fn im_create(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let user = caller!(shared, headers, false);
    let Ok(members) = serde_json::from_slice::<Vec<i64>>(&body) else {
        return error(400, "the body must be a JSON array of user ids");
    };
    let mut st = shared.lock();
    let response = match st.create_im(user, members) {
        Ok(id) => Json(json!({"id": id})).into_response(),
        Err(reason) => error(400, reason),
    };
    drop(st);
    shared.notify();
    response
}

async fn stream_info(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let user = caller!(shared, headers, false);
    let id = to_url_safe_id(&id);
    let st = shared.lock();
    let Some(s) = st.streams.get(&id).filter(|s| s.member(user).is_some()) else {
        return error(404, "Stream not found");
    };
    let mut v = json!({
        "id": s.id, "crossPod": false, "origin": "INTERNAL", "active": s.active,
        "lastMessageDate": s.messages.last().map_or(s.created_at, |m| m.timestamp),
        "streamType": {"type": s.kind.as_str()},
    });
    if s.kind == super::state::StreamKind::Room {
        v["roomAttributes"] = json!({"name": s.name});
    } else {
        v["streamAttributes"] =
            json!({"members": s.members.iter().map(|m| m.user).collect::<Vec<_>>()});
    }
    Json(v).into_response()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StreamFilter {
    #[serde(default)]
    stream_types: Vec<StreamTypeBody>,
    #[serde(default)]
    include_inactive_streams: bool,
}

#[derive(Deserialize)]
struct StreamTypeBody {
    #[serde(rename = "type")]
    kind: String,
}

/// `POST /pod/v1/streams/list`: the caller's streams (`StreamAttributes`), oldest first.
async fn streams_list(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let user = caller!(shared, headers, false);
    let filter: StreamFilter = if body.is_empty() {
        StreamFilter::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(f) => f,
            Err(_) => return error(400, "invalid StreamFilter body"),
        }
    };
    let skip: usize = q.get("skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let limit: usize = q.get("limit").and_then(|s| s.parse().ok()).unwrap_or(50).min(1000);
    let st = shared.lock();
    let mut streams: Vec<&super::state::Stream> = st
        .streams
        .values()
        .filter(|s| s.member(user).is_some())
        .filter(|s| filter.include_inactive_streams || s.active)
        .filter(|s| {
            filter.stream_types.is_empty()
                || filter.stream_types.iter().any(|t| t.kind == s.kind.as_str())
        })
        .collect();
    streams.sort_by_key(|s| s.created_at);
    let items: Vec<Value> = streams
        .into_iter()
        .skip(skip)
        .take(limit)
        .map(|s| {
            let mut v = json!({"id": s.id, "crossPod": false, "active": s.active, "streamType": {"type": s.kind.as_str()}});
            if s.kind == super::state::StreamKind::Room {
                v["roomAttributes"] = json!({"name": s.name});
            } else {
                v["streamAttributes"] = json!({"members": s.members.iter().map(|m| m.user).collect::<Vec<_>>()});
            }
            v
        })
        .collect();
    Json(items).into_response()
}

/// `GET /pod/v1/streams/{sid}/attachments?since&to&limit&sortDir`: at most `limit` (default 50,
/// 1 to 100) attachments ingested between `since` and `to` (inclusive, ms), oldest first unless
/// `sortDir=DESC`. A caller pages by asking again from the last `ingestionDate` it got.
async fn stream_attachments(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = caller!(shared, headers, false);
    let id = to_url_safe_id(&id);
    let number = |name: &str| -> Result<Option<i64>, Response> {
        q.get(name)
            .map(|v| v.trim().parse::<i64>())
            .transpose()
            .map_err(|_| error(400, format!("{name} must be an integer")))
    };
    let (since, to, limit) = match (number("since"), number("to"), number("limit")) {
        (Ok(since), Ok(to), Ok(limit)) => (since, to, limit),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let limit = match limit {
        None => 50,
        Some(l @ 1..=100) => l as usize,
        Some(_) => return error(400, "limit must be a positive integer not exceeding 100"),
    };
    let descending = match q.get("sortDir").map(|d| d.to_ascii_uppercase()) {
        None => false,
        Some(d) if d == "ASC" => false,
        Some(d) if d == "DESC" => true,
        Some(_) => return error(400, "sortDir must be ASC or DESC"),
    };
    let st = shared.lock();
    let Some(s) = st.streams.get(&id).filter(|s| s.member(user).is_some()) else {
        return error(404, "Stream not found");
    };
    let in_range = |t: i64| since.is_none_or(|f| t >= f) && to.is_none_or(|l| t <= l);
    let mut items: Vec<Value> = s
        .messages
        .iter()
        .filter(|m| in_range(m.timestamp))
        .flat_map(|m| {
            m.attachments.iter().map(move |a| {
                json!({"messageId": m.message_id, "ingestionDate": m.timestamp, "userId": m.user,
                       "fileId": a.id, "name": a.name, "size": a.bytes.len(),
                       "content-type": a.content_type, "previews": []})
            })
        })
        .collect();
    if descending {
        items.reverse();
    }
    items.truncate(limit);
    Json(items).into_response()
}

/// The pod's answer to a path or method it does not serve, in the spec's `{code, message}`.
pub(crate) async fn unsupported(method: Method, uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/_sandbox/") {
        let body = json!({"error": format!("the control API has no {method} {}", uri.path())});
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    error(404, format!("no such endpoint: {method} {}", uri.path()))
}

// ----- agent -----

async fn agent_info(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let _ = caller!(shared, headers, true);
    Json(json!({
        "ipAddress": "127.0.0.1", "hostname": "localhost", "serverFqdn": "localhost",
        "version": "Agent-24.6.0-mock", "url": "http://127.0.0.1", "onPrem": true, "mt": false,
        "commitId": "mock",
    }))
    .into_response()
}

/// `GET /agent/v1/stream/{sid}/attachment?fileId=&messageId=`: the file, base64-encoded. The
/// spec knows 400, 401, 403 and 500 here: a stream the caller is not in is 403, an unknown
/// message or file 400.
async fn attachment_download(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = caller!(shared, headers, true);
    let id = to_url_safe_id(&id);
    let (Some(file_id), Some(message_id)) = (q.get("fileId"), q.get("messageId")) else {
        return error(400, "fileId and messageId are required");
    };
    let st = shared.lock();
    let Some(s) = st.streams.get(&id).filter(|s| s.member(user).is_some()) else {
        return error(403, "The user is not a member of the stream");
    };
    let message_id = to_url_safe_id(message_id);
    let Some(m) = s.messages.iter().find(|m| m.message_id == message_id) else {
        return error(400, "The message does not exist in this stream");
    };
    let Some(a) = m.attachments.iter().find(|a| a.id == *file_id) else {
        return error(400, "The message has no attachment with this fileId");
    };
    let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &a.bytes);
    ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

async fn message_create(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let user = caller!(shared, headers, true);
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => return error(400, format!("the body must be multipart/form-data: {e}")),
    };
    let id = to_url_safe_id(&id);
    let mut message = None;
    let mut data = None;
    let mut attachments = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return error(400, format!("invalid multipart body: {e}")),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return error(400, format!("invalid multipart body: {e}")),
        };
        match name.as_str() {
            "message" => message = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "data" => data = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "attachment" => attachments.push(StoredAttachment::new(
                file_name.unwrap_or_else(|| "attachment".into()),
                content_type.unwrap_or_else(|| "application/octet-stream".into()),
                bytes,
            )),
            _ => {}
        }
    }
    let Some(message) = message else {
        return error(400, "the message part is required");
    };
    let mut st = shared.lock();
    if !st.streams.contains_key(&id) {
        return error(404, "Stream not found");
    }
    let names: HashMap<i64, String> =
        st.users.iter().map(|(id, u)| (*id, u.display_name.clone())).collect();
    let rendered =
        match presentation::render(&message, data.as_deref(), &presentation::names(&names)) {
            Ok(r) => r,
            Err(reason) => return error(400, reason),
        };
    let response = match st.post(user, &id, rendered, attachments) {
        Ok(v4) => Json(v4).into_response(),
        Err(reason) => error(403, reason),
    };
    drop(st);
    shared.notify();
    response
}

/// `GET /agent/v4/stream/{sid}/message?since=&until=&skip=&limit=`: the stream's messages with
/// `since <= timestamp <= until`, oldest first, after skipping `skip` of them, at most `limit`
/// (default 50, at most 500); 204 when there are none. `since` is required (400 without it); a
/// stream the caller is not in is 403 (the spec knows 400, 401, 403 and 500 here).
async fn message_list(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = caller!(shared, headers, true);
    let id = to_url_safe_id(&id);
    let number = |name: &str| -> Result<Option<i64>, Response> {
        match q.get(name) {
            None => Ok(None),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Some)
                .ok_or_else(|| error(400, format!("{name} must be a non-negative integer"))),
        }
    };
    let (since, until, skip, limit) =
        match (number("since"), number("until"), number("skip"), number("limit")) {
            (Ok(Some(since)), Ok(until), Ok(skip), Ok(limit)) => (since, until, skip, limit),
            (Ok(None), ..) => return error(400, "since is required"),
            (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) | (.., Err(r)) => return r,
        };
    // "If no value is provided, 50 is the default. The maximum supported value is 500."
    let limit = match limit {
        None | Some(0) => 50,
        Some(n) => n.min(500) as usize,
    };
    let mut st = shared.lock();
    st.stats.history_reads += 1;
    let Some(s) = st.streams.get(&id).filter(|s| s.member(user).is_some()) else {
        return error(403, "The user is not a member of the stream");
    };
    let mut messages: Vec<&super::state::StoredMessage> = s
        .messages
        .iter()
        .filter(|m| m.timestamp >= since && until.is_none_or(|u| m.timestamp <= u))
        .collect();
    messages.sort_by_key(|m| m.timestamp);
    let page: Vec<Value> = messages
        .into_iter()
        .skip(skip.unwrap_or(0) as usize)
        .take(limit)
        .map(|m| st.v4_message(&id, m))
        .collect();
    if page.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    Json(page).into_response()
}

// ----- datafeed v2 -----

async fn feeds_list(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let user = caller!(shared, headers, true);
    let feeds = shared.lock().list_feeds(user);
    Json(feeds).into_response()
}

async fn feeds_create(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let user = caller!(shared, headers, true);
    let result = shared.lock().create_feed(user);
    match result {
        Ok(feed) => (StatusCode::CREATED, Json(feed)).into_response(),
        Err((status, reason)) => error(status, reason),
    }
}

async fn feeds_delete(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let user = caller!(shared, headers, true);
    let mut st = shared.lock();
    match st.feeds.get(&id) {
        Some(f) if f.user == user => {
            st.feeds.remove(&id);
            st.stats.feeds_deleted += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(400, "The feed does not exist"),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AckIdBody {
    #[serde(default)]
    ack_id: Option<String>,
}

async fn feeds_read(
    State(shared): State<Shared>,
    headers: HeaderMap,
    method: Method,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let _ = method;
    let user = caller!(shared, headers, true);
    let ack = if body.is_empty() {
        AckIdBody::default()
    } else {
        match serde_json::from_slice::<AckIdBody>(&body) {
            Ok(a) => a,
            Err(_) => return error(400, "invalid AckId body"),
        }
    };
    let ack_id = ack.ack_id.unwrap_or_default();
    let hold = {
        let mut st = shared.lock();
        st.stats.feed_reads += 1;
        if let Some(observer) = &st.observer {
            let at = Instant::now();
            let _ = observer.send(super::PodObservation::FeedRead { user, at });
        }
        st.cfg.datafeed_hold
    };
    let deadline = Instant::now() + hold;
    let mut ack_done = false;
    loop {
        // Register for wake-ups before looking, so an event queued in between is not missed.
        let notified = shared.events.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (result, next_visible) = {
            let mut st = shared.lock();
            let r = st.try_read(user, &id, &ack_id, &mut ack_done);
            (r, st.next_visible(&id))
        };
        match result {
            Err((status, reason)) => return error(status, reason),
            Ok(Some((events, ack))) => {
                return Json(json!({"events": events, "ackId": ack})).into_response();
            }
            Ok(None) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Json(json!({"events": [], "ackId": super::state::random_id(18)}))
                .into_response();
        }
        let wake_at = next_visible.filter(|t| *t > now).map_or(deadline, |t| t.min(deadline));
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(wake_at.saturating_duration_since(now).max(Duration::from_millis(5))) => {}
        }
    }
}
