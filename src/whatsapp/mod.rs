//! WhatsApp: a typed client for the Meta Cloud API Groups API and messages (Graph API, Bearer
//! token). Graph errors decode into [`WhatsAppError::Graph`], which tells throttling and server
//! trouble (retried with capped backoff honouring `Retry-After`) from permanent refusals.

pub mod media;
pub mod model;
pub mod rules;

use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::{RetryConfig, WhatsAppConfig};
use crate::domain::GroupId;
use crate::metrics::{ApiClient, Metrics};

pub use media::MediaKind;
pub use model::{
    GroupInfo, GroupPage, GroupSummary, JoinRequest, JoinRequestOutcome, MediaInfo, Recipient,
    TemplateParam,
};

/// Longest group subject / description the API accepts.
pub const MAX_SUBJECT_CHARS: usize = crate::domain::MAX_NAME_CHARS;
pub const MAX_DESCRIPTION_CHARS: usize = 2048;
/// Most participants one remove call (and one group) may hold.
pub const MAX_PARTICIPANTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum WhatsAppError {
    /// The Graph API refused: `{"error":{"message","type","code","error_subcode","fbtrace_id"}}`.
    #[error("{0}")]
    Graph(Box<GraphError>),
    #[error("{endpoint}: {reason}")]
    Network { endpoint: String, reason: String },
    #[error("{endpoint}: unexpected response ({reason}); body: {body}")]
    Decode { endpoint: String, reason: String, body: String },
    /// Refused before calling: the request breaks a documented limit.
    #[error("{0}")]
    Invalid(String),
    /// Refused before calling (or before downloading): the file is larger than WhatsApp takes.
    #[error(
        "{} is {size} bytes: WhatsApp takes at most {} ({limit} bytes)",
        .kind.map_or("the file".to_owned(), |k| format!("this {k} file")),
        media::human_size(*.limit)
    )]
    MediaTooLarge { kind: Option<MediaKind>, size: u64, limit: u64 },
    /// Refused before calling: WhatsApp does not take this type (as this kind).
    #[error(
        "WhatsApp does not take {mime:?} files{}: it takes {}",
        .kind.map(|k| format!(" as {k}")).unwrap_or_default(),
        .kind.map_or(media::UPLOAD_MIME_TYPES, |k| k.mime_types()).join(", ")
    )]
    MediaTypeUnsupported { kind: Option<MediaKind>, mime: String },
}

/// A Graph API error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{endpoint}: Graph error {code}{} ({status}): {message}", .subcode.map(|s| format!("/{s}")).unwrap_or_default())]
pub struct GraphError {
    pub endpoint: String,
    pub status: u16,
    pub code: i64,
    pub subcode: Option<i64>,
    pub kind: Option<String>,
    pub message: String,
    pub fbtrace_id: Option<String>,
    pub retry_after: Option<Duration>,
}

/// Graph codes that mean "slow down / try again later".
const THROTTLING_CODES: &[i64] = &[4, 17, 32, 613, 80007, 130429, 131056, 131208];
/// Graph codes that mean "temporary trouble on Meta's side".
const TRANSIENT_CODES: &[i64] = &[1, 2, 131000, 131016];

impl WhatsAppError {
    /// Worth retrying: network, 429, 5xx, throttling and transient Graph codes.
    pub fn is_retryable(&self) -> bool {
        match self {
            WhatsAppError::Network { .. } => true,
            WhatsAppError::Graph(g) => {
                g.status == 429
                    || g.status >= 500
                    || THROTTLING_CODES.contains(&g.code)
                    || TRANSIENT_CODES.contains(&g.code)
            }
            WhatsAppError::Decode { .. }
            | WhatsAppError::Invalid(_)
            | WhatsAppError::MediaTooLarge { .. }
            | WhatsAppError::MediaTypeUnsupported { .. } => false,
        }
    }

    /// The Graph error code, if the API answered with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            WhatsAppError::Graph(g) => Some(g.code),
            _ => None,
        }
    }

    /// 131047: free-form text outside the 24-hour customer-service window.
    pub fn is_window_closed(&self) -> bool {
        self.code() == Some(131047)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            WhatsAppError::Graph(g) => g.retry_after,
            _ => None,
        }
    }
}

/// The Cloud API client. Cheap to clone.
#[derive(Clone)]
pub struct WhatsAppClient {
    http: reqwest::Client,
    /// `<apiBaseUrl>/<apiVersion>`
    base: String,
    phone_number_id: String,
    token: SecretString,
    retry: RetryConfig,
    /// Failed attempts are counted here.
    metrics: Metrics,
}

impl std::fmt::Debug for WhatsAppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppClient")
            .field("base", &self.base)
            .field("phone_number_id", &self.phone_number_id)
            .finish_non_exhaustive()
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

impl WhatsAppClient {
    pub fn new(cfg: &WhatsAppConfig, retry: RetryConfig) -> Result<Self, WhatsAppError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("wa-groups-bot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WhatsAppError::Network {
                endpoint: "client".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            base: format!(
                "{}/{}",
                cfg.api_base_url.as_str().trim_end_matches('/'),
                cfg.api_version
            ),
            phone_number_id: cfg.phone_number_id.clone(),
            token: cfg.access_token.clone(),
            retry,
            metrics: Metrics::default(),
        })
    }

    /// One Graph call with retries. `build` adds the body/query afresh for each attempt.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<T, WhatsAppError> {
        self.call_with(method, path, true, build).await
    }

    /// [`Self::call`]; `retries = false` makes one attempt (for calls that create something:
    /// their caller retries after looking for what a lost attempt created).
    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        retries: bool,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<T, WhatsAppError> {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let endpoint = format!("{method} /{}", path.trim_start_matches('/'));
        self.with_retries(retries, || async {
            let req =
                self.http.request(method.clone(), &url).bearer_auth(self.token.expose_secret());
            let resp = build(req).send().await.map_err(|e| WhatsAppError::Network {
                endpoint: endpoint.clone(),
                reason: crate::http::with_causes(&e),
            })?;
            let status = resp.status().as_u16();
            let retry_after = header_retry_after(&resp);
            let body = match resp.text().await {
                Ok(body) => body,
                // A success whose answer was cut (the connection dropped mid-body): the call may
                // have been carried out, but what it answered is unknown. A network failure
                // (retried), never a refusal, nor an empty success.
                Err(e) if (200..300).contains(&status) => {
                    return Err(WhatsAppError::Network {
                        endpoint: endpoint.clone(),
                        reason: format!(
                            "the answer ({status}) was cut: {}",
                            crate::http::with_causes(&e)
                        ),
                    });
                }
                Err(_) => String::new(),
            };
            if !(200..300).contains(&status) {
                return Err(graph_error(&endpoint, status, &body, retry_after));
            }
            let text = if body.trim().is_empty() { "{}" } else { &body };
            // The plain decoder first (half the cost); the one that names the field only to
            // say why a body does not decode.
            if let Ok(value) = T::deserialize(&mut serde_json::Deserializer::from_str(text)) {
                return Ok(value);
            }
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de).map_err(|e| WhatsAppError::Decode {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
                body: body.chars().take(500).collect(),
            })
        })
        .await
    }

    /// Counts a failed attempt by its endpoint (`METHOD /path`, ids normalised away).
    fn count_error(&self, error: &WhatsAppError) {
        let (endpoint, status) = match error {
            WhatsAppError::Graph(g) => (&g.endpoint, g.status.to_string()),
            WhatsAppError::Network { endpoint, .. } => (endpoint, "network".to_owned()),
            WhatsAppError::Decode { endpoint, .. } => (endpoint, "decode".to_owned()),
            // Refused before calling: not an API error.
            _ => return,
        };
        let (method, path) = endpoint.split_once(' ').unwrap_or(("-", endpoint));
        self.metrics.api_error(ApiClient::WhatsApp, method, path, &status);
    }

    /// Counts into `metrics` (the running bot's registry) from now on.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry policy gives up.
    async fn with_retries<T, Fut>(
        &self,
        retries: bool,
        attempt: impl Fn() -> Fut,
    ) -> Result<T, WhatsAppError>
    where
        Fut: Future<Output = Result<T, WhatsAppError>>,
    {
        use backon::Retryable as _;
        let policy = self.retry;
        let counted = || async {
            let outcome = attempt().await;
            if let Err(e) = &outcome {
                self.count_error(e);
            }
            outcome
        };
        counted
            .retry(policy.backoff_builder())
            .sleep(tokio::time::sleep)
            .when(|e: &WhatsAppError| retries && e.is_retryable())
            .adjust(|e: &WhatsAppError, planned| policy.honour(planned, e.retry_after()))
            .notify(|e: &WhatsAppError, wait| {
                tracing::warn!(error = %e, ?wait, "WhatsApp call failed; retrying");
            })
            .await
    }

    /// The business phone number (`GET /<PHONE_NUMBER_ID>?fields=display_phone_number`).
    #[tracing::instrument(name = "whatsapp.business_number", skip_all)]
    pub async fn business_number(&self) -> Result<crate::domain::BusinessNumber, WhatsAppError> {
        let raw: Value = self
            .call(Method::GET, &self.phone_number_id, |r| {
                r.query(&[("fields", "display_phone_number,verified_name")])
            })
            .await?;
        let shown = raw.get("display_phone_number").and_then(Value::as_str).unwrap_or_default();
        Ok(crate::domain::BusinessNumber::shown(shown))
    }

    // ----- groups -----

    /// `POST /<PHONE_NUMBER_ID>/groups` → the `request_id` the `group_create` webhook will carry.
    #[tracing::instrument(name = "whatsapp.create_group", skip_all)]
    pub async fn create_group(
        &self,
        subject: &str,
        description: &str,
        approval_required: bool,
    ) -> Result<String, WhatsAppError> {
        let subject = subject.trim();
        if subject.is_empty() || chars(subject) > MAX_SUBJECT_CHARS {
            return Err(WhatsAppError::Invalid(format!(
                "a group subject has 1 to {MAX_SUBJECT_CHARS} characters"
            )));
        }
        if chars(description) > MAX_DESCRIPTION_CHARS {
            return Err(WhatsAppError::Invalid(format!(
                "a group description has at most {MAX_DESCRIPTION_CHARS} characters"
            )));
        }
        let mode = if approval_required { "approval_required" } else { "auto_approve" };
        let body = json!({"messaging_product": "whatsapp", "subject": subject, "description": description, "join_approval_mode": mode});
        let r: model::RequestIdResponse = self
            .call_with(Method::POST, &format!("{}/groups", self.phone_number_id), false, |r| {
                r.json(&body)
            })
            .await?;
        Ok(r.request_id)
    }

    /// `GET /<PHONE_NUMBER_ID>/groups?limit=&after=`: one page of active groups.
    pub async fn list_groups(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> Result<GroupPage, WhatsAppError> {
        let mut query = vec![("limit", limit.clamp(1, 1024).to_string())];
        if let Some(a) = after {
            query.push(("after", a.to_owned()));
        }
        let raw: model::RawGroupList = self
            .call(Method::GET, &format!("{}/groups", self.phone_number_id), |r| r.query(&query))
            .await?;
        Ok(raw.into())
    }

    /// Every active group, following the `after` cursors.
    pub async fn all_groups(&self) -> Result<Vec<GroupSummary>, WhatsAppError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list_groups(100, after.as_deref()).await?;
            let more = page.next.is_some() && !page.groups.is_empty();
            out.extend(page.groups);
            if !more {
                return Ok(out);
            }
            after = page.next;
        }
    }

    /// `GET /<GROUP_ID>?fields=…`
    #[tracing::instrument(name = "whatsapp.group_info", skip_all, fields(group_id = %group))]
    pub async fn group_info(&self, group: &GroupId) -> Result<GroupInfo, WhatsAppError> {
        let fields = "subject,description,participants,join_approval_mode,suspended,creation_timestamp,total_participant_count";
        let raw: Value =
            self.call(Method::GET, group.as_str(), |r| r.query(&[("fields", fields)])).await?;
        Ok(GroupInfo::from_json(&raw))
    }

    /// `POST /<GROUP_ID>` with a new subject and/or description (outcome by webhook).
    #[tracing::instrument(name = "whatsapp.update_group", skip_all, fields(group_id = %group))]
    pub async fn update_group(
        &self,
        group: &GroupId,
        subject: Option<&str>,
        description: Option<&str>,
    ) -> Result<(), WhatsAppError> {
        let mut body = json!({"messaging_product": "whatsapp"});
        if let Some(s) = subject {
            let s = s.trim();
            if s.is_empty() || chars(s) > MAX_SUBJECT_CHARS {
                return Err(WhatsAppError::Invalid(format!(
                    "a group subject has 1 to {MAX_SUBJECT_CHARS} characters"
                )));
            }
            body["subject"] = json!(s);
        }
        if let Some(d) = description {
            if chars(d) > MAX_DESCRIPTION_CHARS {
                return Err(WhatsAppError::Invalid(format!(
                    "a group description has at most {MAX_DESCRIPTION_CHARS} characters"
                )));
            }
            body["description"] = json!(d);
        }
        let _: Value = self.call(Method::POST, group.as_str(), |r| r.json(&body)).await?;
        Ok(())
    }

    /// `DELETE /<GROUP_ID>`
    #[tracing::instrument(name = "whatsapp.delete_group", skip_all, fields(group_id = %group))]
    pub async fn delete_group(&self, group: &GroupId) -> Result<(), WhatsAppError> {
        let _: Value = self.call(Method::DELETE, group.as_str(), |r| r).await?;
        Ok(())
    }

    /// `GET /<GROUP_ID>/invite_link`: the current link.
    #[tracing::instrument(name = "whatsapp.invite_link", skip_all, fields(group_id = %group))]
    pub async fn invite_link(&self, group: &GroupId) -> Result<String, WhatsAppError> {
        let r: model::InviteLinkResponse =
            self.call(Method::GET, &format!("{group}/invite_link"), |r| r).await?;
        Ok(r.invite_link)
    }

    /// `POST /<GROUP_ID>/invite_link`: a new link; every earlier one stops working.
    #[tracing::instrument(name = "whatsapp.reset_invite_link", skip_all, fields(group_id = %group))]
    pub async fn reset_invite_link(&self, group: &GroupId) -> Result<String, WhatsAppError> {
        let body = json!({"messaging_product": "whatsapp"});
        let r: model::InviteLinkResponse =
            self.call(Method::POST, &format!("{group}/invite_link"), |r| r.json(&body)).await?;
        Ok(r.invite_link)
    }

    /// `GET /<GROUP_ID>/join_requests`: pending requests (all pages).
    #[tracing::instrument(name = "whatsapp.join_requests", skip_all, fields(group_id = %group))]
    pub async fn join_requests(&self, group: &GroupId) -> Result<Vec<JoinRequest>, WhatsAppError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let query: Vec<(&str, String)> = after.iter().map(|a| ("after", a.clone())).collect();
            let raw: model::RawJoinRequests = self
                .call(Method::GET, &format!("{group}/join_requests"), |r| r.query(&query))
                .await?;
            let next = raw.next_cursor();
            let empty = raw.data.is_empty();
            out.extend(raw.data);
            match next {
                Some(n) if !empty => after = Some(n),
                _ => return Ok(out),
            }
        }
    }

    async fn join_request_action(
        &self,
        group: &GroupId,
        ids: &[String],
        method: Method,
    ) -> Result<JoinRequestOutcome, WhatsAppError> {
        if ids.is_empty() {
            return Err(WhatsAppError::Invalid("no join request ids".into()));
        }
        let body = json!({"messaging_product": "whatsapp", "join_requests": ids});
        let raw: Value =
            self.call(method, &format!("{group}/join_requests"), |r| r.json(&body)).await?;
        Ok(JoinRequestOutcome::from_json(&raw))
    }

    /// `POST /<GROUP_ID>/join_requests`: approve.
    #[tracing::instrument(name = "whatsapp.approve_join_requests", skip_all, fields(group_id = %group))]
    pub async fn approve_join_requests(
        &self,
        group: &GroupId,
        ids: &[String],
    ) -> Result<JoinRequestOutcome, WhatsAppError> {
        self.join_request_action(group, ids, Method::POST).await
    }

    /// `DELETE /<GROUP_ID>/join_requests`: reject.
    #[tracing::instrument(name = "whatsapp.reject_join_requests", skip_all, fields(group_id = %group))]
    pub async fn reject_join_requests(
        &self,
        group: &GroupId,
        ids: &[String],
    ) -> Result<JoinRequestOutcome, WhatsAppError> {
        self.join_request_action(group, ids, Method::DELETE).await
    }

    /// `DELETE /<GROUP_ID>/participants`: 1 to 8 users (phone digits, wa_id or BSUID).
    #[tracing::instrument(name = "whatsapp.remove_participants", skip_all, fields(group_id = %group))]
    pub async fn remove_participants(
        &self,
        group: &GroupId,
        users: &[String],
    ) -> Result<(), WhatsAppError> {
        if users.is_empty() || users.len() > MAX_PARTICIPANTS {
            return Err(WhatsAppError::Invalid(format!(
                "remove 1 to {MAX_PARTICIPANTS} participants per call"
            )));
        }
        let participants: Vec<Value> = users.iter().map(|u| json!({"user": u})).collect();
        let body = json!({"messaging_product": "whatsapp", "participants": participants});
        let _: Value =
            self.call(Method::DELETE, &format!("{group}/participants"), |r| r.json(&body)).await?;
        Ok(())
    }

    // ----- messages -----

    #[tracing::instrument(
        name = "whatsapp.send",
        skip_all,
        fields(group_id = group_of(to), kind = content["type"].as_str())
    )]
    async fn send(&self, to: &Recipient, content: Value) -> Result<String, WhatsAppError> {
        let (recipient_type, to) = match to {
            Recipient::Phone(n) => ("individual", n.wa_id().to_owned()),
            Recipient::Group(g) => ("group", g.as_str().to_owned()),
        };
        let mut body =
            json!({"messaging_product": "whatsapp", "recipient_type": recipient_type, "to": to});
        if let (Value::Object(b), Value::Object(c)) = (&mut body, content) {
            b.extend(c);
        }
        let r: model::SendResponse = self
            .call(Method::POST, &format!("{}/messages", self.phone_number_id), |r| r.json(&body))
            .await?;
        r.messages.into_iter().next().map(|m| m.id).ok_or_else(|| WhatsAppError::Decode {
            endpoint: "POST /messages".into(),
            reason: "no message id".into(),
            body: String::new(),
        })
    }

    /// A text message (inside the customer-service window). Returns the `wamid`.
    pub async fn send_text(&self, to: &Recipient, body: &str) -> Result<String, WhatsAppError> {
        if body.trim().is_empty() || chars(body) > 4096 {
            return Err(WhatsAppError::Invalid("a text message has 1 to 4096 characters".into()));
        }
        self.send(to, json!({"type": "text", "text": {"preview_url": true, "body": body}})).await
    }

    /// A template message with body parameters (allowed outside the window). Returns the `wamid`.
    pub async fn send_template(
        &self,
        to: &Recipient,
        name: &str,
        language: &str,
        params: &[TemplateParam],
    ) -> Result<String, WhatsAppError> {
        let parameters: Vec<Value> = params
            .iter()
            .map(|p| match p {
                TemplateParam::Text(t) => json!({"type": "text", "text": t}),
                TemplateParam::GroupId(g) => json!({"type": "group_id", "group_id": g.as_str()}),
            })
            .collect();
        let mut template =
            json!({"name": name, "language": {"policy": "deterministic", "code": language}});
        if !parameters.is_empty() {
            template["components"] = json!([{"type": "body", "parameters": parameters}]);
        }
        self.send(to, json!({"type": "template", "template": template})).await
    }

    // ----- media -----

    /// `POST /<PHONE_NUMBER_ID>/media` (multipart `file`, `type`, `messaging_product`): the
    /// media id to send the file by. Types and sizes the endpoint refuses are refused here
    /// first.
    #[tracing::instrument(name = "whatsapp.upload_media", skip_all, fields(mime = mime))]
    pub async fn upload_media(
        &self,
        bytes: impl Into<bytes::Bytes>,
        mime: &str,
        filename: &str,
    ) -> Result<String, WhatsAppError> {
        let bytes: bytes::Bytes = bytes.into();
        let mime = media::essence(mime);
        let size = bytes.len() as u64;
        if size == 0 {
            return Err(WhatsAppError::Invalid("an empty file cannot be uploaded".into()));
        }
        let limit = media::upload_limit(&mime)
            .ok_or(WhatsAppError::MediaTypeUnsupported { kind: None, mime: mime.clone() })?;
        if size > limit {
            return Err(WhatsAppError::MediaTooLarge {
                kind: MediaKind::for_mime(&mime),
                size,
                limit,
            });
        }
        let filename = if filename.trim().is_empty() { "file" } else { filename.trim() };
        let r: model::MediaUploadResponse = self
            .call(Method::POST, &format!("{}/media", self.phone_number_id), |r| {
                let file = reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::from(bytes.clone()),
                    size,
                )
                .file_name(filename.to_owned());
                // `essence` made a well-formed type; a part without one is still a valid upload.
                let file = match file.mime_str(&mime) {
                    Ok(part) => part,
                    Err(_) => reqwest::multipart::Part::stream_with_length(
                        reqwest::Body::from(bytes.clone()),
                        size,
                    )
                    .file_name(filename.to_owned()),
                };
                r.multipart(
                    reqwest::multipart::Form::new()
                        .text("messaging_product", "whatsapp")
                        .text("type", mime.clone())
                        .part("file", file),
                )
            })
            .await?;
        r.id().ok_or_else(|| WhatsAppError::Decode {
            endpoint: "POST /media".into(),
            reason: "no media id".into(),
            body: String::new(),
        })
    }

    /// `GET /<MEDIA_ID>`: where to download the file (for about 5 minutes), its type, size and
    /// hash.
    #[tracing::instrument(name = "whatsapp.media_info", skip_all, fields(media_id = media_id))]
    pub async fn media_info(&self, media_id: &str) -> Result<MediaInfo, WhatsAppError> {
        media::check_media_id(media_id)?;
        let raw: Value = self.call(Method::GET, media_id, |r| r).await?;
        MediaInfo::from_json(&raw).ok_or_else(|| WhatsAppError::Decode {
            endpoint: format!("GET /{media_id}"),
            reason: "no url or mime_type".into(),
            body: raw.to_string().chars().take(500).collect(),
        })
    }

    /// A media file's bytes and MIME type: [`Self::media_info`], then the URL fetched with the
    /// Bearer token. Files over [`media::MAX_DOWNLOAD_BYTES`] are refused, before the download
    /// when the size is announced; a file that does not match its `sha256` is an error.
    #[tracing::instrument(name = "whatsapp.download_media", skip_all, fields(media_id = media_id))]
    pub async fn download_media(&self, media_id: &str) -> Result<(Vec<u8>, String), WhatsAppError> {
        let info = self.media_info(media_id).await?;
        let limit = media::MAX_DOWNLOAD_BYTES;
        let too_large = |size| WhatsAppError::MediaTooLarge {
            kind: MediaKind::for_mime(&info.mime_type),
            size,
            limit,
        };
        if let Some(size) = info.file_size.filter(|s| *s > limit) {
            return Err(too_large(size));
        }
        let endpoint = "GET <media url>".to_owned();
        let bytes = self
            .with_retries(true, || async {
                let mut resp = self
                    .http
                    .get(&info.url)
                    .bearer_auth(self.token.expose_secret())
                    .send()
                    .await
                    .map_err(|e| WhatsAppError::Network {
                        endpoint: endpoint.clone(),
                        reason: e.to_string(),
                    })?;
                let status = resp.status().as_u16();
                if !(200..300).contains(&status) {
                    let retry_after = header_retry_after(&resp);
                    let body = resp.text().await.unwrap_or_default();
                    return Err(graph_error(&endpoint, status, &body, retry_after));
                }
                if let Some(size) = resp.content_length().filter(|s| *s > limit) {
                    return Err(too_large(size));
                }
                let mut out = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| WhatsAppError::Network {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })? {
                    out.extend_from_slice(&chunk);
                    if out.len() as u64 > limit {
                        return Err(too_large(out.len() as u64));
                    }
                }
                Ok(out)
            })
            .await?;
        if !info.matches(&bytes) {
            return Err(WhatsAppError::Decode {
                endpoint,
                reason: format!(
                    "the downloaded file ({} bytes) does not match its sha256",
                    bytes.len()
                ),
                body: String::new(),
            });
        }
        Ok((bytes, info.mime_type))
    }

    /// `DELETE /<MEDIA_ID>`
    #[tracing::instrument(name = "whatsapp.delete_media", skip_all, fields(media_id = media_id))]
    pub async fn delete_media(&self, media_id: &str) -> Result<(), WhatsAppError> {
        media::check_media_id(media_id)?;
        let _: Value = self.call(Method::DELETE, media_id, |r| r).await?;
        Ok(())
    }

    /// A media message by media id (inside the customer-service window). A caption goes with
    /// images, videos and documents; a file name with documents. Returns the `wamid`.
    pub async fn send_media(
        &self,
        to: &Recipient,
        kind: MediaKind,
        media_id: &str,
        caption: Option<&str>,
        filename: Option<&str>,
    ) -> Result<String, WhatsAppError> {
        media::check_media_id(media_id)?;
        let caption = caption.filter(|c| !c.trim().is_empty());
        let filename = filename.filter(|f| !f.trim().is_empty());
        let mut object = json!({"id": media_id});
        if let Some(c) = caption {
            if !kind.takes_caption() {
                return Err(WhatsAppError::Invalid(format!("a {kind} message has no caption")));
            }
            if chars(c) > media::MAX_CAPTION_CHARS {
                return Err(WhatsAppError::Invalid(format!(
                    "a caption has at most {} characters",
                    media::MAX_CAPTION_CHARS
                )));
            }
            object["caption"] = json!(c);
        }
        if let Some(f) = filename {
            if kind != MediaKind::Document {
                return Err(WhatsAppError::Invalid(format!(
                    "only a document has a file name, not a {kind}"
                )));
            }
            object["filename"] = json!(f);
        }
        self.send(to, json!({"type": kind.as_str(), kind.as_str(): object})).await
    }

    /// Checks a file against `kind`'s rules, uploads it and sends it: the whole way of a file
    /// to WhatsApp. Nothing is called when the file breaks a rule. Returns the `wamid`.
    #[tracing::instrument(name = "whatsapp.send_file", skip_all)]
    pub async fn send_file(
        &self,
        to: &Recipient,
        kind: MediaKind,
        file: &OutgoingFile,
        caption: Option<&str>,
    ) -> Result<String, WhatsAppError> {
        media::check(kind, &file.mime, file.bytes.len() as u64)?;
        if caption.is_some_and(|c| !c.trim().is_empty()) && !kind.takes_caption() {
            return Err(WhatsAppError::Invalid(format!("a {kind} message has no caption")));
        }
        let id = self.upload_media(file.bytes.clone(), &file.mime, &file.filename).await?;
        let filename = (kind == MediaKind::Document).then_some(file.filename.as_str());
        self.send_media(to, kind, &id, caption, filename).await
    }
}

/// The group a message goes to, for the log (a phone number is not logged).
fn group_of(to: &Recipient) -> Option<&str> {
    match to {
        Recipient::Group(g) => Some(g.as_str()),
        Recipient::Phone(_) => None,
    }
}

/// A file on its way to WhatsApp.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingFile {
    pub filename: String,
    pub mime: String,
    pub bytes: bytes::Bytes,
}

impl std::fmt::Debug for OutgoingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The content may be confidential and large: only its size is shown.
        f.debug_struct("OutgoingFile")
            .field("filename", &self.filename)
            .field("mime", &self.mime)
            .field("size", &self.bytes.len())
            .finish()
    }
}

fn header_retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::http::parse_retry_after)
}

fn graph_error(
    endpoint: &str,
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
) -> WhatsAppError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    WhatsAppError::Graph(Box::new(GraphError {
        endpoint: endpoint.to_owned(),
        status,
        code: err.and_then(|e| e.get("code")).and_then(Value::as_i64).unwrap_or(i64::from(status)),
        subcode: err.and_then(|e| e.get("error_subcode")).and_then(Value::as_i64),
        kind: err.and_then(|e| e.get("type")).and_then(Value::as_str).map(str::to_owned),
        message: err
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| body.chars().take(300).collect()),
        fbtrace_id: err
            .and_then(|e| e.get("fbtrace_id"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        retry_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_errors_decode_and_classify() {
        let body = r#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,"error_subcode":2494010,"fbtrace_id":"AbCd"}}"#;
        let e = graph_error("POST /x/messages", 400, body, None);
        assert_eq!(e.code(), Some(131047));
        assert!(e.is_window_closed() && !e.is_retryable());
        assert!(e.to_string().contains("131047/2494010"), "{e}");
        for (status, code) in
            [(429, 130429), (400, 131056), (500, 1), (503, 0), (429, 131208), (400, 80007)]
        {
            let body =
                format!(r#"{{"error":{{"message":"x","type":"OAuthException","code":{code}}}}}"#);
            assert!(graph_error("e", status, &body, None).is_retryable(), "{status}/{code}");
        }
        for (status, code) in [(400, 100), (400, 131204), (401, 190), (403, 131207)] {
            let body =
                format!(r#"{{"error":{{"message":"x","type":"OAuthException","code":{code}}}}}"#);
            assert!(!graph_error("e", status, &body, None).is_retryable(), "{status}/{code}");
        }
        let html = graph_error("e", 502, "<html>bad gateway</html>", None);
        assert!(html.is_retryable() && html.to_string().contains("bad gateway"));
    }
}
