//! The simulator's Graph API: Groups API management calls and `/messages`, under any version
//! prefix, answering with Meta's shapes and `{"error":{…}}` bodies.

// Handlers return ready-made error responses; boxing them would only add noise.
#![allow(clippy::result_large_err)]

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Shared;
use super::media_rules::{self as media, Kind as MediaKind};
use super::state::{
    Delivered, Group, JoinRequest, MEDIA_URL_TTL, Media, MediaRef, SimState, WINDOW, now_secs,
    random, wamid,
};

/// A Graph error: `{"error":{"message","type","code","error_subcode"?,"fbtrace_id"}}`.
pub(crate) fn graph_error(status: u16, code: i64, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({"error": {"message": format!("(#{code}) {message}"), "type": "OAuthException", "code": code,
                                "error_data": {"messaging_product": "whatsapp", "details": message},
                                "fbtrace_id": random(9)}});
    (status, Json(body)).into_response()
}

/// The answer to an asynchronous management call: its outcome arrives by webhook with this
/// `request_id` (the spec's `success` is kept for clients that read it).
fn operation(request_id: &str) -> Response {
    Json(json!({"messaging_product": "whatsapp", "request_id": request_id, "success": true}))
        .into_response()
}

fn invalid(message: &str) -> Response {
    graph_error(400, 100, &format!("Invalid parameter: {message}"))
}

/// A Graph error with an `error_subcode` (e.g. 100/33 for an object that does not exist).
fn graph_error_sub(status: u16, code: i64, subcode: i64, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({"error": {"message": message, "type": "GraphMethodException", "code": code,
                                "error_subcode": subcode, "fbtrace_id": random(9)}});
    (status, Json(body)).into_response()
}

/// What Graph answers for an id that names nothing (here: digits that are no media id).
fn no_such_object(method: &str, id: &str) -> Response {
    graph_error_sub(
        400,
        100,
        33,
        &format!(
            "Unsupported {method} request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
        ),
    )
}

/// Graph's answer to a path it does not know (`2500`, unknown path components) or a method a
/// node does not support (`100`/`33`).
pub(crate) fn unsupported_request(method: &str, path: &str) -> Response {
    let mut parts = path.trim_matches('/').split('/');
    let _version = parts.next();
    let id = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let known_edge = matches!(
        rest.as_slice(),
        [] | ["groups" | "media" | "messages" | "invite_link" | "join_requests" | "participants"]
    );
    if id.is_empty() || !known_edge {
        let unknown = if rest.is_empty() { String::new() } else { format!("/{}", rest.join("/")) };
        return graph_error_plain(400, 2500, &format!("Unknown path components: {unknown}"));
    }
    no_such_object(&method.to_ascii_lowercase(), id)
}

/// Largest Graph request: a 100 MB document upload and its multipart framing.
const MAX_BODY_BYTES: usize = 110 * 1024 * 1024;

pub(crate) fn router(shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/{ver}/{id}", get(group_info).post(group_update).delete(group_delete))
        .route("/{ver}/{id}/groups", post(group_create).get(group_list))
        .route("/{ver}/{id}/media", post(media_upload))
        .route("/{ver}/{id}/messages", post(send_message))
        .route("/{ver}/{id}/invite_link", get(link_get).post(link_reset))
        .route(
            "/{ver}/{id}/join_requests",
            get(requests_list).post(requests_approve).delete(requests_reject),
        )
        .route("/{ver}/{id}/participants", axum::routing::delete(participants_remove))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route("/whatsapp_business/attachments/", get(media_download))
        .with_state(shared)
}

/// Bearer check, version check and injected faults, before any Graph handler.
async fn guard(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().as_str().to_owned();
    let version_ok = path.split('/').nth(1).is_some_and(|v| {
        v.strip_prefix('v').and_then(|r| r.split_once('.')).is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && a.chars().chain(b.chars()).all(|c| c.is_ascii_digit())
        })
    });
    if !version_ok {
        return graph_error(
            400,
            2500,
            "Unknown path components: the path must start with a Graph version like /v23.0",
        );
    }
    let latency = shared.lock().cfg.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = {
        let mut st = shared.lock();
        st.stats.api_calls += 1;
        let fault = st.faults.take(&method, &path);
        if fault.is_some() {
            st.stats.faults_served += 1;
        }
        fault
    };
    let expected = format!("Bearer {}", shared.lock().cfg.access_token);
    let authorized = request.headers().get("authorization").and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    if let Some(f) = fault {
        if let Some(h) = f.hang {
            tokio::time::sleep(h).await;
        }
        if f.drop && authorized {
            if f.after {
                let done = next.run(request).await;
                return crate::sandbox::faults::cut_mid_body(done).await;
            }
            return crate::sandbox::faults::dropped();
        }
        if f.after && authorized {
            let _done = next.run(request).await;
            let status = f.status.max(500);
            return graph_error(
                status,
                f.code.unwrap_or(1),
                "injected fault after the call was carried out",
            );
        }
        if f.status >= 100 {
            let default_code = if f.status == 429 { 130429 } else { 1 };
            let mut r = graph_error(f.status, f.code.unwrap_or(default_code), "injected fault");
            if let Some(v) = f.retry_after_header() {
                r.headers_mut().insert("Retry-After", v);
            }
            return r;
        }
    }
    if !authorized {
        return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token");
    }
    next.run(request).await
}

fn json_body(body: &Bytes) -> Result<Value, Response> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|_| invalid("the body is not JSON"))
}

macro_rules! body_or_return {
    ($body:expr) => {
        match json_body(&$body) {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

fn check_product(body: &Value) -> Result<(), Response> {
    match body.get("messaging_product").and_then(Value::as_str) {
        Some("whatsapp") => Ok(()),
        _ => Err(invalid("messaging_product must be \"whatsapp\"")),
    }
}

fn group_mut<'a>(st: &'a mut SimState, id: &str) -> Result<&'a mut Group, Response> {
    st.groups.get_mut(id).filter(|g| g.active).ok_or_else(|| {
        graph_error(400, 131041, "Group does not exist or the business is not a member")
    })
}

// ----- groups -----

async fn group_create(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body = body_or_return!(body);
    if let Err(r) = check_product(&body) {
        return r;
    }
    let mut st = shared.lock();
    if id != st.cfg.phone_number_id {
        return graph_error(400, 100, "Unsupported post request: unknown phone number id");
    }
    let subject = body.get("subject").and_then(Value::as_str).unwrap_or_default().trim().to_owned();
    if subject.is_empty() || subject.chars().count() > 128 {
        return invalid("subject must have 1 to 128 characters");
    }
    let description =
        body.get("description").and_then(Value::as_str).unwrap_or_default().to_owned();
    if description.chars().count() > 2048 {
        return invalid("description must have at most 2048 characters");
    }
    let approval_required = match body.get("join_approval_mode").and_then(Value::as_str) {
        None | Some("auto_approve") => false,
        Some("approval_required") => true,
        Some(_) => return invalid("join_approval_mode must be auto_approve or approval_required"),
    };
    let group_id = format!("{}ZD", random(30).replace(['-', '_'], "A"));
    let request_id = random(18);
    let group = Group {
        id: group_id.clone(),
        subject: subject.clone(),
        description,
        approval_required,
        created: now_secs(),
        participants: Vec::new(),
        pending: Vec::new(),
        removed: Vec::new(),
        invite_code: random(16),
        active: true,
        suspended: false,
        picture: None,
        pinned: Vec::new(),
        window_until: None,
        messages: Vec::new(),
    };
    let item = st.group_item(&group_id, "group_create", json!({
        "request_id": request_id, "subject": subject, "invite_link": group.invite_link(),
        "join_approval_mode": if approval_required { "approval_required" } else { "auto_approve" },
    }));
    st.groups.insert(group_id.clone(), group);
    st.group_order.push(group_id);
    let value = st.value(json!({"groups": [item]}));
    drop(st);
    shared.emit("group_lifecycle_update", value);
    Json(json!({"messaging_product": "whatsapp", "request_id": request_id})).into_response()
}

async fn group_list(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let st = shared.lock();
    if id != st.cfg.phone_number_id {
        return graph_error(400, 100, "Unsupported get request: unknown phone number id");
    }
    let limit: usize = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 25,
        Some(Ok(l)) if (1..=1024).contains(&l) => l,
        Some(_) => return invalid("limit must be between 1 and 1024"),
    };
    let active: Vec<&Group> =
        st.group_order.iter().filter_map(|id| st.groups.get(id)).filter(|g| g.active).collect();
    let decode = |c: &str| -> Option<usize> {
        String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, c).ok()?,
        )
        .ok()?
        .parse()
        .ok()
    };
    let start = match q.get("after") {
        Some(c) => match decode(c) {
            Some(i) => i + 1,
            None => return graph_error(400, 131059, "Invalid cursor"),
        },
        None => 0,
    };
    let page: Vec<Value> = active
        .iter()
        .skip(start)
        .take(limit)
        .map(|g| json!({"id": g.id, "subject": g.subject, "created_at": g.created}))
        .collect();
    let cursor = |i: usize| {
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, i.to_string())
    };
    let last = start + page.len();
    let mut paging =
        json!({"cursors": {"before": cursor(start), "after": cursor(last.saturating_sub(1))}});
    if last < active.len() {
        paging["next"] = json!(format!(
            "/{}/groups?limit={limit}&after={}",
            st.cfg.phone_number_id,
            cursor(last - 1)
        ));
    }
    if start > 0 {
        paging["previous"] = json!(format!(
            "/{}/groups?limit={limit}&before={}",
            st.cfg.phone_number_id,
            cursor(start)
        ));
    }
    Json(json!({"data": {"groups": page}, "paging": paging})).into_response()
}

async fn group_info(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut st = shared.lock();
    if let Some(m) = st.media.get(&id).cloned() {
        return media_info(&mut st, &m, &q, &headers);
    }
    if id.chars().all(|c| c.is_ascii_digit()) && id != st.cfg.phone_number_id {
        return no_such_object("get", &id);
    }
    if id == st.cfg.phone_number_id {
        // The business phone number itself.
        let digits = st.cfg.business_phone.clone();
        let shown = format!("+{digits}");
        return Json(json!({"id": id, "display_phone_number": shown, "verified_name": "wa-groups-bot sandbox",
                           "quality_rating": "GREEN", "code_verification_status": "VERIFIED"}))
        .into_response();
    }
    let g = match group_mut(&mut st, &id) {
        Ok(g) => g.clone(),
        Err(r) => return r,
    };
    // Every Graph node answers `id` (and this one `messaging_product`), asked for or not.
    let mut v = json!({"id": g.id, "messaging_product": "whatsapp"});
    for field in q
        .get("fields")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        let value = match field {
            "id" => json!(g.id),
            "messaging_product" => json!("whatsapp"),
            "subject" => json!(g.subject),
            "description" => json!(g.description),
            "join_approval_mode" => {
                json!(if g.approval_required { "approval_required" } else { "auto_approve" })
            }
            "suspended" => json!(g.suspended),
            "creation_timestamp" => json!(g.created),
            "total_participant_count" => json!(g.participants.len()),
            "participants" => {
                json!(g.participants.iter().map(|p| st.user(p, json!({}))).collect::<Vec<_>>())
            }
            other => {
                return graph_error_plain(
                    400,
                    100,
                    &format!(
                        "(#100) Tried accessing nonexisting field ({other}) on node type (Group)"
                    ),
                );
            }
        };
        v[field] = value;
    }
    Json(v).into_response()
}

/// What `POST /<GROUP_ID>` asks to change, read from JSON or from multipart form fields (the
/// spec allows both; a profile picture comes as the `file` part, or `profile_picture_file`).
#[derive(Default)]
struct SettingsUpdate {
    product: Option<String>,
    subject: Option<String>,
    description: Option<String>,
    picture: Option<(Option<String>, Bytes)>,
}

async fn read_settings(request: Request) -> Result<SettingsUpdate, Response> {
    use axum::extract::FromRequest as _;
    let multipart = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"));
    if !multipart {
        let body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| invalid("the body cannot be read"))?;
        let body = json_body(&body)?;
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        if body.get("profile_picture_file").is_some() {
            return Err(invalid(
                "profile_picture_file: upload the picture as multipart/form-data (part file)",
            ));
        }
        return Ok(SettingsUpdate {
            product: text("messaging_product"),
            subject: text("subject"),
            description: text("description"),
            picture: None,
        });
    }
    let mut form = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| invalid(&format!("the body is not valid multipart: {e}")))?;
    let mut out = SettingsUpdate::default();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(invalid(&format!("the body is not valid multipart: {e}"))),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let part_type = field.content_type().map(str::to_owned);
        let bytes = field
            .bytes()
            .await
            .map_err(|e| invalid(&format!("the body is not valid multipart: {e}")))?;
        let text = || String::from_utf8_lossy(&bytes).into_owned();
        match name.as_str() {
            "messaging_product" => out.product = Some(text()),
            "subject" => out.subject = Some(text()),
            "description" => out.description = Some(text()),
            "file" | "profile_picture_file" => out.picture = Some((part_type, bytes)),
            _ => {}
        }
    }
    Ok(out)
}

/// Checks a group picture as Meta does: JPEG, at most 5 MB, square, at least 192 px a side.
fn check_picture(part_type: Option<&str>, bytes: &[u8]) -> Result<(), Response> {
    let declared = part_type.map(media::essence);
    let size = media::jpeg_size(bytes);
    if declared.as_deref().is_some_and(|t| t != "image/jpeg") || size.is_none() {
        return Err(invalid("file: the group picture must be a JPEG image"));
    }
    if bytes.len() as u64 > media::PICTURE_MAX_BYTES {
        return Err(invalid("file: the group picture may have at most 5 MB"));
    }
    match size {
        Some((w, h)) if w != h => {
            Err(graph_error(400, 131209, "Aspect ratio of the picture is not square"))
        }
        Some((w, _)) if w < media::PICTURE_MIN_SIDE => Err(graph_error(
            400,
            131210,
            "The picture is too small: it must be at least 192 x 192 pixels",
        )),
        _ => Ok(()),
    }
}

async fn group_update(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let update = match read_settings(request).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if update.product.as_deref() != Some("whatsapp") {
        return invalid("messaging_product must be \"whatsapp\"");
    }
    let subject = update.subject.map(|s| s.trim().to_owned());
    let description = update.description;
    if subject.as_ref().is_some_and(|s| s.is_empty() || s.chars().count() > 128) {
        return invalid("subject must have 1 to 128 characters");
    }
    if description.as_ref().is_some_and(|d| d.chars().count() > 2048) {
        return invalid("description must have at most 2048 characters");
    }
    if let Some((part_type, bytes)) = &update.picture
        && let Err(r) = check_picture(part_type.as_deref(), bytes)
    {
        return r;
    }
    if subject.is_none() && description.is_none() && update.picture.is_none() {
        return invalid("nothing to update: give subject, description and/or a picture");
    }
    let mut st = shared.lock();
    let g = match group_mut(&mut st, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let request_id = random(18);
    let mut extra = json!({"request_id": request_id});
    if let Some(s) = subject {
        g.subject = s.clone();
        extra["group_subject"] = json!({"text": s, "update_successful": true});
    }
    if let Some(d) = description {
        g.description = d.clone();
        extra["group_description"] = json!({"text": d, "update_successful": true});
    }
    if let Some((_, bytes)) = update.picture {
        let picture = Media::new("image/jpeg".into(), None, bytes);
        extra["profile_picture"] = json!({"mime_type": "image/jpeg", "sha256": picture.sha256_base64(), "update_successful": true});
        g.picture = Some(picture.sha256_base64());
    }
    let item = st.group_item(&id, "group_settings_update", extra);
    let value = st.value(json!({"groups": [item]}));
    drop(st);
    shared.emit("group_settings_update", value);
    operation(&request_id)
}

async fn group_delete(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut st = shared.lock();
    if st.media.contains_key(&id) {
        if let Err(r) = owned_by_business(&st, &q) {
            return r;
        }
        st.media.remove(&id);
        st.media_urls.retain(|_, (mid, _)| *mid != id);
        return Json(json!({"success": true})).into_response();
    }
    if id.chars().all(|c| c.is_ascii_digit()) {
        return no_such_object("delete", &id);
    }
    let g = match group_mut(&mut st, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    g.active = false;
    g.participants.clear();
    g.pending.clear();
    let request_id = random(18);
    let item = st.group_item(&id, "group_delete", json!({"request_id": request_id}));
    let value = st.value(json!({"groups": [item]}));
    drop(st);
    shared.emit("group_lifecycle_update", value);
    operation(&request_id)
}

async fn link_get(State(shared): State<Shared>, Path((_, id)): Path<(String, String)>) -> Response {
    let mut st = shared.lock();
    match group_mut(&mut st, &id) {
        Ok(g) => Json(json!({"messaging_product": "whatsapp", "invite_link": g.invite_link()}))
            .into_response(),
        Err(r) => r,
    }
}

async fn link_reset(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body = body_or_return!(body);
    if let Err(r) = check_product(&body) {
        return r;
    }
    let mut st = shared.lock();
    match group_mut(&mut st, &id) {
        Ok(g) => {
            g.invite_code = random(16);
            Json(json!({"messaging_product": "whatsapp", "invite_link": g.invite_link()}))
                .into_response()
        }
        Err(r) => r,
    }
}

// ----- join requests and participants -----

async fn requests_list(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    let mut st = shared.lock();
    let pending = match group_mut(&mut st, &id) {
        Ok(g) => g.pending.clone(),
        Err(r) => return r,
    };
    let data: Vec<Value> = pending
        .iter()
        .map(|r| {
            st.user(&r.phone, json!({"join_request_id": r.id, "creation_timestamp": r.created}))
        })
        .collect();
    Json(json!({"data": data, "paging": {"cursors": {"before": "", "after": ""}}})).into_response()
}

fn request_ids(body: &Value) -> Result<Vec<String>, Response> {
    check_product(body)?;
    let ids: Vec<String> = body
        .get("join_requests")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if ids.is_empty() {
        return Err(invalid("join_requests must list at least one join request id"));
    }
    Ok(ids)
}

fn failed(id: &str, code: i64, title: &str) -> Value {
    json!({"join_request_id": id, "errors": [{"code": code, "title": title, "message": title}]})
}

async fn requests_approve(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body = body_or_return!(body);
    let ids = match request_ids(&body) {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    let mut st = shared.lock();
    let g = match group_mut(&mut st, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let mut approved = Vec::new();
    let mut failures = Vec::new();
    let mut added = Vec::new();
    for rid in &ids {
        let Some(pos) = g.pending.iter().position(|r| &r.id == rid) else {
            failures.push(failed(rid, 131213, "Join request does not exist"));
            continue;
        };
        if g.participants.len() >= 8 {
            failures.push(failed(rid, 131204, "Participant overlimit"));
            continue;
        }
        let req = g.pending.remove(pos);
        g.participants.push(req.phone.clone());
        approved.push(rid.clone());
        added.push(req.phone);
    }
    let items: Vec<Value> = added
        .iter()
        .map(|p| {
            st.group_item(
                &id,
                "group_participants_add",
                json!({"reason": "invite_link", "added_participants": [st.user(p, json!({
                    "input": if st.number_shown(p) { p.clone() } else { SimState::bsuid(p) },
                }))]}),
            )
        })
        .collect();
    let value = st.value(json!({"groups": items}));
    drop(st);
    if !added.is_empty() {
        shared.emit("group_participants_update", value);
    }
    let mut out = json!({"messaging_product": "whatsapp", "request_id": random(18), "approved_join_requests": approved});
    let status = if failures.is_empty() {
        StatusCode::OK
    } else {
        out["failed_join_requests"] = json!(failures);
        out["errors"] = json!([{"code": 131201, "title": "Request partially succeeded", "message": "Not all join requests were approved"}]);
        StatusCode::PARTIAL_CONTENT
    };
    (status, Json(out)).into_response()
}

async fn requests_reject(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body = body_or_return!(body);
    let ids = match request_ids(&body) {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    let mut st = shared.lock();
    let g = match group_mut(&mut st, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let mut rejected = Vec::new();
    let mut failures = Vec::new();
    for rid in &ids {
        match g.pending.iter().position(|r| &r.id == rid) {
            Some(pos) => {
                g.pending.remove(pos);
                rejected.push(rid.clone());
            }
            None => failures.push(failed(rid, 131213, "Join request does not exist")),
        }
    }
    let mut out = json!({"messaging_product": "whatsapp", "request_id": random(18), "rejected_join_requests": rejected});
    // As for approvals: a partial success is a 206 with the failed ids and a 131201.
    let status = if failures.is_empty() {
        StatusCode::OK
    } else {
        out["failed_join_requests"] = json!(failures);
        out["errors"] = json!([{"code": 131201, "title": "Request partially succeeded", "message": "Not all join requests were rejected"}]);
        StatusCode::PARTIAL_CONTENT
    };
    (status, Json(out)).into_response()
}

async fn participants_remove(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body = body_or_return!(body);
    if let Err(r) = check_product(&body) {
        return r;
    }
    let entries: Vec<String> = body
        .get("participants")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("user").or_else(|| p.get("user_id")).and_then(Value::as_str))
                .map(|s| s.trim_start_matches('+').to_owned())
                .collect()
        })
        .unwrap_or_default();
    if entries.is_empty() {
        return invalid("participants must list 1 to 8 users");
    }
    if entries.len() > 8 {
        return graph_error(
            400,
            131204,
            "Participant overlimit: at most 8 participants per request",
        );
    }
    let mut dedup = entries.clone();
    dedup.sort();
    dedup.dedup();
    if dedup.len() != entries.len() {
        return graph_error(400, 131202, "Duplicate participant in the request");
    }
    let mut st = shared.lock();
    let g = match group_mut(&mut st, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    for user in &entries {
        let phone = SimState::phone_of(user);
        match g.participants.iter().position(|p| *p == phone) {
            Some(pos) => {
                g.participants.remove(pos);
                if !g.removed.contains(&phone) {
                    g.removed.push(phone);
                }
                removed.push(json!({"input": user}));
            }
            None => failures.push(json!({"input": user, "errors": [{"code": 131212, "title": "Participant not in group", "message": "The participant is not in the group"}]})),
        }
    }
    let request_id = random(18);
    let mut extra = json!({"request_id": request_id, "initiated_by": "business", "removed_participants": removed});
    if !failures.is_empty() {
        extra["failed_participants"] = json!(failures);
        extra["errors"] = json!([{"code": 131201, "title": "Not All Participants Remove Succeeded", "message": "Failed to remove some participants from the group"}]);
    }
    let item = st.group_item(&id, "group_participants_remove", extra);
    let value = st.value(json!({"groups": [item]}));
    drop(st);
    shared.emit("group_participants_update", value);
    operation(&request_id)
}

// ----- media -----

/// The optional `phone_number_id` of media calls must name this business.
fn owned_by_business(
    st: &SimState,
    q: &std::collections::HashMap<String, String>,
) -> Result<(), Response> {
    match q.get("phone_number_id") {
        Some(p) if *p != st.cfg.phone_number_id => {
            Err(invalid("phone_number_id: the media does not belong to this phone number"))
        }
        _ => Ok(()),
    }
}

/// `GET /<MEDIA_ID>`: a download URL valid for 5 minutes, and what the file is.
fn media_info(
    st: &mut SimState,
    m: &Media,
    q: &std::collections::HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    if let Err(r) = owned_by_business(st, q) {
        return r;
    }
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    let hash = random(24);
    let expires = now_secs() + MEDIA_URL_TTL.as_secs() as i64;
    if let Some(until) = Instant::now().checked_add(MEDIA_URL_TTL) {
        st.media_urls.insert(hash.clone(), (m.id.clone(), until));
    }
    st.media_urls.retain(|_, (_, until)| *until > Instant::now());
    let url = format!(
        "http://{host}/whatsapp_business/attachments/?mid={}&ext={expires}&hash={hash}",
        m.id
    );
    Json(json!({"messaging_product": "whatsapp", "url": url, "mime_type": m.mime_type,
                "sha256": m.sha256_hex(), "file_size": m.bytes.len().to_string(), "id": m.id}))
    .into_response()
}

/// `POST /<PHONE_NUMBER_ID>/media`: multipart `messaging_product`, `file` (with its type) and
/// `type`. Types outside Meta's list and files over their kind's limit are refused.
async fn media_upload(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => return invalid(&format!("the body must be multipart/form-data: {e}")),
    };
    let mut product = None;
    let mut declared = None;
    let mut file = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return invalid(&format!("the body is not valid multipart: {e}")),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let filename = field.file_name().map(str::to_owned);
        let part_type = field.content_type().map(str::to_owned);
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return invalid(&format!("the body is not valid multipart: {e}")),
        };
        match name.as_str() {
            "messaging_product" => product = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "type" => declared = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "file" => file = Some((filename, part_type, bytes)),
            _ => {}
        }
    }
    if product.as_deref() != Some("whatsapp") {
        return invalid("messaging_product must be \"whatsapp\"");
    }
    let Some((filename, part_type, bytes)) = file else {
        return invalid("file is required");
    };
    // Meta goes by the file part's type; `type` stands in when the part has none.
    let mime = media::essence(part_type.as_deref().or(declared.as_deref()).unwrap_or_default());
    let Some(limit) = media::upload_limit(&mime) else {
        return graph_error_plain(
            400,
            100,
            &format!(
                "(#100) Param file must be a file with one of the following types: {}. Received file of type '{mime}'.",
                media::UPLOAD_MIME_TYPES.join(", ")
            ),
        );
    };
    if bytes.is_empty() {
        return invalid("file is empty");
    }
    if bytes.len() as u64 > limit {
        return graph_error(
            400,
            131053,
            &format!(
                "Media upload error: a {mime} file may have at most {} ({limit} bytes); this one has {} bytes",
                media::human_size(limit),
                bytes.len()
            ),
        );
    }
    let mut st = shared.lock();
    if id != st.cfg.phone_number_id {
        return graph_error(400, 100, "Unsupported post request: unknown phone number id");
    }
    let m = Media::new(mime, filename, bytes);
    let media_id = m.id.clone();
    st.media.insert(media_id.clone(), m);
    Json(json!({"id": media_id})).into_response()
}

/// A Graph error whose message is given whole.
fn graph_error_plain(status: u16, code: i64, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({"error": {"message": message, "type": "OAuthException", "code": code,
                                "fbtrace_id": random(9)}});
    (status, Json(body)).into_response()
}

/// `GET <url from GET /<MEDIA_ID>>`: the file itself, with the Bearer token, while the URL is
/// valid.
async fn media_download(
    State(shared): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut st = shared.lock();
    st.stats.api_calls += 1;
    if let Some(f) = st.faults.take("GET", "/whatsapp_business/attachments/") {
        st.stats.faults_served += 1;
        if f.status >= 100 {
            return graph_error(f.status, f.code.unwrap_or(1), "injected fault");
        }
    }
    let expected = format!("Bearer {}", st.cfg.access_token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token");
    }
    let hash = q.get("hash").map(String::as_str).unwrap_or_default();
    let valid = st
        .media_urls
        .get(hash)
        .filter(|(mid, until)| Some(mid) == q.get("mid") && *until > Instant::now())
        .map(|(mid, _)| mid.clone());
    let Some(m) = valid.and_then(|mid| st.media.get(&mid)) else {
        return graph_error(
            404,
            100,
            "The media URL is invalid or expired: retrieve a new one with GET /<MEDIA_ID>",
        );
    };
    ([(axum::http::header::CONTENT_TYPE, m.mime_type.clone())], m.bytes.clone()).into_response()
}

// ----- messages -----

/// Renders a template as the phone would see it: name, language and body parameters (a
/// `group_id` parameter becomes the group's invite link, as WhatsApp does on delivery).
fn render_template(st: &SimState, t: &Value) -> Result<(Value, String), Response> {
    let name = t
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("template.name is required"))?;
    let language = t
        .get("language")
        .and_then(|l| l.get("code"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("template.language.code is required"))?;
    // The v23.0 spec's LanguageObject requires `policy`, whose only value is `deterministic`.
    if t.get("language").and_then(|l| l.get("policy")).and_then(Value::as_str)
        != Some("deterministic")
    {
        return Err(invalid("template.language.policy is required and must be \"deterministic\""));
    }
    let mut params = Vec::new();
    for c in t.get("components").and_then(Value::as_array).into_iter().flatten() {
        for p in c.get("parameters").and_then(Value::as_array).into_iter().flatten() {
            let text = match p.get("type").and_then(Value::as_str) {
                Some("text") => {
                    p.get("text").and_then(Value::as_str).unwrap_or_default().to_owned()
                }
                Some("group_id") => {
                    let gid = p.get("group_id").and_then(Value::as_str).unwrap_or_default();
                    match st.groups.get(gid).filter(|g| g.active) {
                        Some(g) => g.invite_link(),
                        None => {
                            return Err(graph_error(
                                400,
                                131041,
                                "Group in the template parameter does not exist",
                            ));
                        }
                    }
                }
                Some(other) => format!("[{other}]"),
                None => return Err(invalid("template parameter type is required")),
            };
            params.push(text);
        }
    }
    let text = if params.is_empty() {
        format!("[{name}]")
    } else {
        format!("[{name}] {}", params.join(" | "))
    };
    Ok((json!({"name": name, "language": language, "params": params}), text))
}

async fn send_message(
    State(shared): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = body_or_return!(body);
    if let Err(r) = check_product(&body) {
        return r;
    }
    let mut st = shared.lock();
    if id != st.cfg.phone_number_id {
        return graph_error(400, 100, "Unsupported post request: unknown phone number id");
    }
    let to = body
        .get("to")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim_start_matches('+')
        .to_owned();
    if to.is_empty() {
        return invalid("to is required");
    }
    let recipient_type = body.get("recipient_type").and_then(Value::as_str).unwrap_or("individual");
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("text").to_owned();
    if kind == "pin" {
        return match pin(&mut st, recipient_type, &to, body.get("pin")) {
            Ok(()) => Json(json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": wamid()}]})).into_response(),
            Err(r) => r,
        };
    }
    let mut media_ref = None;
    // A media file that does not fit its kind is accepted, then fails (131053) by webhook.
    let mut media_failure = None;
    let (template, text) = match kind.as_str() {
        "text" => match body.get("text").and_then(|t| t.get("body")).and_then(Value::as_str) {
            Some(b) if !b.trim().is_empty() => (None, b.to_owned()),
            _ => return invalid("text.body is required"),
        },
        "template" => match body.get("template").map(|t| render_template(&st, t)) {
            Some(Ok((t, text))) => (Some(t), text),
            Some(Err(r)) => return r,
            None => return invalid("template is required"),
        },
        name => match MediaKind::parse(name) {
            Some(k) => match media_object(&st, k, body.get(name)) {
                Ok((r, failure)) => {
                    let caption = r.caption.clone().unwrap_or_default();
                    media_ref = Some(r);
                    media_failure = failure;
                    (None, caption)
                }
                Err(r) => return r,
            },
            None => return graph_error(400, 131051, &format!("Unsupported message type {name}")),
        },
    };
    let id = wamid();
    let business = st.cfg.business_phone.clone();
    let delivered = Delivered {
        id: id.clone(),
        from: business,
        group_id: None,
        kind: kind.clone(),
        text,
        template,
        context_id: None,
        timestamp: now_secs(),
        media: media_ref,
    };
    let mut statuses = Vec::new();
    let status = |s: &str,
                  recipient: &str,
                  rtype: &str,
                  participant: Option<(&str, bool)>,
                  errors: Option<Value>| {
        let mut v = json!({"id": id, "status": s, "timestamp": now_secs().to_string(), "recipient_id": recipient, "recipient_type": rtype});
        if let Some((p, shown)) = participant {
            if shown {
                v["recipient_participant_id"] = json!(p);
            }
            v["recipient_participant_user_id"] = json!(SimState::bsuid(p));
        }
        if let Some(e) = errors {
            v["errors"] = e;
        }
        v
    };
    let window_closed = || {
        json!([{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
        "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."}}])
    };
    let media_failed = |details: &str| {
        json!([{"code": 131053, "title": "Media upload error", "message": "Media upload error",
        "error_data": {"details": details}}])
    };
    // Free-form messages (text and media) need an open window; templates do not.
    let free_form = kind != "template";
    match recipient_type {
        "group" => {
            let g = match st.groups.get(&to).filter(|g| g.active) {
                Some(g) => g.clone(),
                None => {
                    return graph_error(
                        400,
                        131041,
                        "Group does not exist or the business is not a member",
                    );
                }
            };
            if g.suspended {
                return graph_error(403, 131207, "Group suspended");
            }
            if g.participants.is_empty() {
                return graph_error(400, 131020, "Cannot send messages to single member groups");
            }
            if free_form && !g.window_open() {
                statuses.push(status("failed", &to, "group", None, Some(window_closed())));
            } else if let Some(details) = &media_failure {
                statuses.push(status("failed", &to, "group", None, Some(media_failed(details))));
            } else {
                let msg = Delivered { group_id: Some(to.clone()), ..delivered };
                msg.observed(&st, &to);
                if let Some(gm) = st.groups.get_mut(&to) {
                    gm.messages.push(msg.clone());
                }
                statuses.push(status("sent", &to, "group", None, None));
                for p in &g.participants {
                    st.phone(p).inbox.push(msg.clone());
                    let shown = st.number_shown(p);
                    statuses.push(status("delivered", &to, "group", Some((p, shown)), None));
                }
            }
        }
        "individual" => {
            if !to.chars().all(|c| c.is_ascii_digit()) || to.len() < 8 {
                return invalid("to must be a phone number");
            }
            let open =
                st.phones.get(&to).and_then(|p| p.window_until).is_some_and(|t| t > Instant::now());
            if free_form && !open {
                statuses.push(status("failed", &to, "individual", None, Some(window_closed())));
            } else if let Some(details) = &media_failure {
                statuses.push(status(
                    "failed",
                    &to,
                    "individual",
                    None,
                    Some(media_failed(details)),
                ));
            } else {
                delivered.observed(&st, &to);
                let phone = st.phone(&to);
                phone.inbox.push(delivered);
                phone.last_exchange = Some(Instant::now());
                statuses.push(status("sent", &to, "individual", None, None));
                statuses.push(status("delivered", &to, "individual", None, None));
            }
        }
        other => {
            return invalid(&format!("recipient_type must be individual or group, not {other}"));
        }
    }
    // Delivered and read statuses of a 1:1 message carry the recipient's profile (Meta's
    // `contacts`, only on those two).
    let values: Vec<Value> = statuses
        .into_iter()
        .map(|s| {
            let individual = s["recipient_type"] == "individual"
                && matches!(s["status"].as_str(), Some("delivered" | "read"));
            match s["recipient_id"].as_str().map(str::to_owned) {
                Some(to) if individual => {
                    let profile = json!({"profile": {"name": st.profile_name(&to)}});
                    let contact = st.user(&to, profile);
                    st.value(json!({"statuses": [s], "contacts": [contact]}))
                }
                _ => st.value(json!({"statuses": [s]})),
            }
        })
        .collect();
    drop(st);
    for v in values {
        shared.emit("messages", v);
    }
    Json(json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": id}]})).into_response()
}

/// At most this many messages are pinned in a group at once.
const MAX_PINNED: usize = 3;

/// `type: "pin"` (groups only, Meta's groups-messaging docs): `pin: {type: "pin", message_id,
/// expiration_days: 1..30}` pins a message of the group, `{type: "unpin", message_id}` unpins it.
fn pin(
    st: &mut SimState,
    recipient_type: &str,
    to: &str,
    pin: Option<&Value>,
) -> Result<(), Response> {
    if recipient_type != "group" {
        return Err(invalid("pin: only messages in groups can be pinned (recipient_type group)"));
    }
    let pin = pin.ok_or_else(|| invalid("pin is required"))?;
    let message_id = pin
        .get("message_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("pin.message_id is required"))?
        .to_owned();
    let g = group_mut(st, to)?;
    if g.suspended {
        return Err(graph_error(403, 131207, "Group suspended"));
    }
    let now = now_secs();
    g.pinned.retain(|(_, until)| *until > now);
    match pin.get("type").and_then(Value::as_str) {
        Some("pin") => {
            let days = pin
                .get("expiration_days")
                .and_then(Value::as_i64)
                .filter(|d| (1..=30).contains(d))
                .ok_or_else(|| invalid("pin.expiration_days must be 1 to 30"))?;
            if !g.messages.iter().any(|m| m.id == message_id) {
                return Err(invalid(&format!(
                    "pin.message_id: {message_id} is not a message of this group"
                )));
            }
            g.pinned.retain(|(id, _)| *id != message_id);
            if g.pinned.len() >= MAX_PINNED {
                return Err(invalid("pin: a group has at most 3 pinned messages; unpin one first"));
            }
            g.pinned.push((message_id, now + days * 24 * 3600));
            Ok(())
        }
        Some("unpin") => {
            let before = g.pinned.len();
            g.pinned.retain(|(id, _)| *id != message_id);
            if g.pinned.len() == before {
                return Err(invalid(&format!("pin.message_id: {message_id} is not pinned")));
            }
            Ok(())
        }
        _ => Err(invalid("pin.type must be pin or unpin")),
    }
}

/// Reads the `image`/`document`/… object of a media message: sent by `id` (the simulator
/// fetches no `link`), a caption only where the kind takes one, a file name only on documents.
/// Also says why delivery will fail when the file does not fit the kind (type or size).
fn media_object(
    st: &SimState,
    kind: MediaKind,
    object: Option<&Value>,
) -> Result<(MediaRef, Option<String>), Response> {
    let name = kind.as_str();
    let object = object.ok_or_else(|| invalid(&format!("{name} is required")))?;
    if object.get("link").is_some() && object.get("id").is_none() {
        return Err(invalid(&format!(
            "{name}.link: the simulator sends media by id only (upload it first)"
        )));
    }
    let id = object
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&format!("{name}.id is required")))?;
    let m = st
        .media
        .get(id)
        .ok_or_else(|| invalid(&format!("{name}.id: {id} is not a media id of this business")))?;
    let caption = object.get("caption").and_then(Value::as_str).map(str::to_owned);
    if caption.is_some() && !kind.takes_caption() {
        return Err(invalid(&format!("{name}.caption: a {name} message has no caption")));
    }
    if caption.as_ref().is_some_and(|c| c.chars().count() > media::MAX_CAPTION_CHARS) {
        return Err(invalid(&format!(
            "{name}.caption has at most {} characters",
            media::MAX_CAPTION_CHARS
        )));
    }
    let filename = object.get("filename").and_then(Value::as_str).map(str::to_owned);
    if filename.is_some() && kind != MediaKind::Document {
        return Err(invalid(&format!("{name}.filename: only a document has a file name")));
    }
    let failure = if !kind.accepts(&m.mime_type) {
        Some(format!("A {name} cannot be a {} file", m.mime_type))
    } else if m.bytes.len() as u64 > kind.max_bytes() {
        Some(format!(
            "A {name} may have at most {}; this file has {} bytes",
            media::human_size(kind.max_bytes()),
            m.bytes.len()
        ))
    } else {
        None
    };
    Ok((MediaRef::of(m, caption, filename), failure))
}

/// Opens (or refreshes) a 24-hour window.
pub(crate) fn window_from_now() -> Option<Instant> {
    Instant::now().checked_add(WINDOW)
}

/// Creates a join request for `phone` (or returns the pending one).
pub(crate) fn request_to_join(g: &mut Group, phone: &str) -> (JoinRequest, bool) {
    if let Some(r) = g.pending.iter().find(|r| r.phone == phone) {
        return (r.clone(), false);
    }
    let r = JoinRequest { id: random(18), phone: phone.to_owned(), created: now_secs() };
    g.pending.push(r.clone());
    (r, true)
}
