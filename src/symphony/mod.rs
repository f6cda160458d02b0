//! Symphony: RS512 login, the pod and agent endpoints the bot needs, the Datafeed v2 loop and
//! MessageML/PresentationML. One [`SymphonyClient`] holds the tokens; every call re-logs in once
//! on a 401 and retries throttling and server errors with capped backoff honouring `Retry-After`.

pub mod auth;
pub mod catchup;
pub mod datafeed;
pub mod messageml;
pub mod model;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::config::{RetryConfig, SymphonyConfig};
use crate::domain::{StreamId, UserId};
use crate::metrics::{ApiClient, Metrics};

pub use catchup::CatchUp;
pub use datafeed::DatafeedLoop;
pub use model::{AttachmentInfo, RoomInfo, RoomMember, SentMessage, UserInfo};

#[derive(Debug, thiserror::Error)]
pub enum SymphonyError {
    #[error("cannot use the bot's private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("cannot sign the login JWT: {0}")]
    Sign(String),
    #[error(
        "Symphony refused to authenticate service account {username:?} at {endpoint} ({status}): {message}; \
         check bot.username and that the public key is imported in the pod"
    )]
    LoginRejected { username: String, endpoint: String, status: u16, message: String },
    #[error("{method} {endpoint} answered {status}: {message}")]
    Http {
        method: String,
        endpoint: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{method} {endpoint} failed: {reason}")]
    Network { method: String, endpoint: String, reason: String },
    #[error("{endpoint}: unexpected response ({reason}); body: {body}")]
    Decode { endpoint: String, reason: String, body: String },
    /// Refused before calling: the request cannot be right.
    #[error("{0}")]
    Invalid(String),
}

impl SymphonyError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            SymphonyError::Http { status, .. } | SymphonyError::LoginRejected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// What the server asked us to wait, if anything.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SymphonyError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Throttling, server errors and network failures are worth retrying. The agent maps a
    /// downstream 429 to a 400 carrying `Retry-After`: that is throttling too.
    pub fn is_retryable(&self) -> bool {
        match self {
            SymphonyError::Network { .. } => true,
            SymphonyError::Http { status, retry_after, .. } => {
                *status == 429 || *status >= 500 || (*status == 400 && retry_after.is_some())
            }
            _ => false,
        }
    }
}

/// Which service a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Pod,
    Agent,
}

/// How a call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Throttling / 5xx / network per `retry` config; 401 → re-login once.
    Standard,
    /// Only the 401 → re-login step; the caller handles the rest (the datafeed loop).
    AuthOnly,
}

#[derive(Clone, Default)]
struct Tokens {
    session: String,
    key_manager: String,
}

struct Inner {
    http: reqwest::Client,
    cfg: SymphonyConfig,
    signer: auth::JwtSigner,
    tokens: Mutex<Tokens>,
}

/// The Symphony REST client. Cheap to clone.
#[derive(Clone)]
pub struct SymphonyClient {
    inner: Arc<Inner>,
    /// Failed attempts are counted here; the datafeed loop's heartbeat too.
    metrics: Metrics,
}

impl std::fmt::Debug for SymphonyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymphonyClient")
            .field("pod", &self.inner.cfg.pod_url.as_str())
            .field("agent", &self.inner.cfg.agent_url.as_str())
            .field("username", &self.inner.cfg.username)
            .finish_non_exhaustive()
    }
}

fn join(base: &url::Url, path: &str) -> String {
    format!("{}{}", base.as_str().trim_end_matches('/'), path)
}

impl SymphonyClient {
    /// Reads the private key once; no network yet.
    pub fn new(cfg: &SymphonyConfig) -> Result<Self, SymphonyError> {
        let signer = auth::JwtSigner::from_file(&cfg.private_key_path, &cfg.username)?;
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connection_timeout)
            .timeout(cfg.read_timeout)
            .user_agent(concat!("wa-groups-bot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SymphonyError::Network {
                method: "-".into(),
                endpoint: "client".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                cfg: cfg.clone(),
                signer,
                tokens: Mutex::new(Tokens::default()),
            }),
            metrics: Metrics::default(),
        })
    }

    /// Counts into `metrics` (the running bot's registry) from now on.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    fn count_error(&self, method: &str, path: &str, error: &SymphonyError) {
        let status = match (error.status(), error) {
            (Some(status), _) => status.to_string(),
            (None, SymphonyError::Decode { .. }) => "decode".to_owned(),
            (None, _) => "network".to_owned(),
        };
        self.metrics.api_error(ApiClient::Symphony, method, path, &status);
    }

    /// The retry settings of ordinary calls.
    pub fn retry_config(&self) -> RetryConfig {
        self.inner.cfg.retry
    }

    /// Logs in to the pod (`sessionToken`) and the key manager (`keyManagerToken`), each with
    /// a fresh JWT. A 401 is final; throttling and server errors are retried.
    pub async fn authenticate(&self) -> Result<(), SymphonyError> {
        let mut tokens = self.inner.tokens.lock().await;
        *tokens = self.login_all().await?;
        Ok(())
    }

    /// Logs in to the pod and to the key manager separately (`check-config --connect`): both
    /// outcomes, each token kept when it was obtained, so that pod calls work after a pod login.
    pub async fn try_logins(&self) -> (Result<(), SymphonyError>, Result<(), SymphonyError>) {
        let session = self.login(&self.inner.cfg.pod_url, "/login/pubkey/authenticate").await;
        let key_manager =
            self.login(&self.inner.cfg.key_manager_url, "/relay/pubkey/authenticate").await;
        let mut tokens = self.inner.tokens.lock().await;
        let session = session.map(|t| tokens.session = t);
        let key_manager = key_manager.map(|t| tokens.key_manager = t);
        (session, key_manager)
    }

    async fn login_all(&self) -> Result<Tokens, SymphonyError> {
        let session = self.login(&self.inner.cfg.pod_url, "/login/pubkey/authenticate").await?;
        let key_manager =
            self.login(&self.inner.cfg.key_manager_url, "/relay/pubkey/authenticate").await?;
        Ok(Tokens { session, key_manager })
    }

    async fn login(&self, base: &url::Url, path: &str) -> Result<String, SymphonyError> {
        use backon::Retryable as _;
        let url = join(base, path);
        let policy = self.inner.cfg.retry;
        let once = || async {
            let outcome = self.login_once(&url, path).await;
            if let Err(e) = &outcome {
                self.count_error("POST", path, e);
            }
            outcome
        };
        once.retry(policy.backoff_builder())
            .sleep(tokio::time::sleep)
            .when(SymphonyError::is_retryable)
            .adjust(|e: &SymphonyError, planned| policy.honour(planned, e.retry_after()))
            .notify(|e: &SymphonyError, wait| {
                tracing::warn!(error = %e, ?wait, "login failed; retrying");
            })
            .await
    }

    /// One login attempt: a fresh JWT, the token back.
    async fn login_once(&self, url: &str, path: &str) -> Result<String, SymphonyError> {
        let jwt = self.inner.signer.sign()?;
        let result = self.inner.http.post(url).json(&json!({"token": jwt})).send().await;
        match result {
            Ok(resp) if resp.status().is_success() => {
                let body = resp.text().await.map_err(|e| SymphonyError::Network {
                    method: "POST".into(),
                    endpoint: path.into(),
                    reason: with_causes(&e),
                })?;
                serde_json::from_str::<model::Token>(&body).map(|t| t.token).map_err(|e| {
                    SymphonyError::Decode {
                        endpoint: path.into(),
                        reason: e.to_string(),
                        body: clip(&body),
                    }
                })
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = header_retry_after(&resp);
                let message = error_message(resp.text().await.unwrap_or_default());
                if status == 401 || status == 403 {
                    return Err(SymphonyError::LoginRejected {
                        username: self.inner.cfg.username.clone(),
                        endpoint: path.into(),
                        status,
                        message,
                    });
                }
                Err(SymphonyError::Http {
                    method: "POST".into(),
                    endpoint: path.into(),
                    status,
                    message,
                    retry_after,
                })
            }
            Err(e) => Err(SymphonyError::Network {
                method: "POST".into(),
                endpoint: path.into(),
                reason: with_causes(&e),
            }),
        }
    }

    /// Re-logs in unless another task already did since `stale` was read.
    async fn refresh(&self, stale: &str) -> Result<(), SymphonyError> {
        let mut tokens = self.inner.tokens.lock().await;
        if tokens.session == stale || tokens.session.is_empty() {
            tracing::info!("session expired; logging in again");
            *tokens = self.login_all().await?;
        }
        Ok(())
    }

    /// Performs one API call: auth headers, retries, 401 → re-login once, JSON decoding.
    /// `build` makes the request afresh for each attempt (multipart bodies cannot be cloned).
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        service: Service,
        method: Method,
        path: &str,
        retry: Retry,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Option<T>, SymphonyError> {
        let Some(body) = self.call_raw(service, method.clone(), path, retry, build).await? else {
            return Ok(None);
        };
        // The plain decoder first (half the cost); the one that names the field only to say
        // why a body does not decode.
        if let Ok(value) = T::deserialize(&mut serde_json::Deserializer::from_str(&body)) {
            return Ok(Some(value));
        }
        let mut de = serde_json::Deserializer::from_str(&body);
        serde_path_to_error::deserialize(&mut de).map(Some).map_err(|e| {
            let e = SymphonyError::Decode {
                endpoint: path.into(),
                reason: e.to_string(),
                body: clip(&body),
            };
            self.count_error(method.as_str(), path, &e);
            e
        })
    }

    /// [`Self::call`] without the decoding: the body of a success, `None` when it is empty.
    async fn call_raw(
        &self,
        service: Service,
        method: Method,
        path: &str,
        retry: Retry,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Option<String>, SymphonyError> {
        use backon::Retryable as _;
        let base = match service {
            Service::Pod => &self.inner.cfg.pod_url,
            Service::Agent => &self.inner.cfg.agent_url,
        };
        let url = join(base, path);
        let policy = self.inner.cfg.retry;
        // A 401 re-logs in once per call, whatever the attempt.
        let relogged = std::sync::atomic::AtomicBool::new(false);
        let once = || async {
            let outcome = self.call_once(service, &method, path, &url, &build, &relogged).await;
            if let Err(e) = &outcome {
                self.count_error(method.as_str(), path, e);
            }
            outcome
        };
        once.retry(policy.backoff_builder())
            .sleep(tokio::time::sleep)
            .when(|e: &SymphonyError| retry == Retry::Standard && e.is_retryable())
            .adjust(|e: &SymphonyError, planned| policy.honour(planned, e.retry_after()))
            .notify(|e: &SymphonyError, wait| {
                tracing::warn!(error = %e, ?wait, "Symphony call failed; retrying");
            })
            .await
    }

    /// One attempt of a call (and, after a 401, the same request again once re-logged in).
    async fn call_once(
        &self,
        service: Service,
        method: &Method,
        path: &str,
        url: &str,
        build: &impl Fn(RequestBuilder) -> RequestBuilder,
        relogged: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<String>, SymphonyError> {
        loop {
            let tokens = self.inner.tokens.lock().await.clone();
            let mut req = self
                .inner
                .http
                .request(method.clone(), url)
                .header("sessionToken", &tokens.session);
            if service == Service::Agent {
                req = req.header("keyManagerToken", &tokens.key_manager);
            }
            let network = |e: &reqwest::Error| SymphonyError::Network {
                method: method.to_string(),
                endpoint: path.into(),
                reason: with_causes(e),
            };
            let resp = build(req).send().await.map_err(|e| network(&e))?;
            if resp.status() == StatusCode::NO_CONTENT {
                return Ok(None);
            }
            if resp.status().is_success() {
                let body = resp.text().await.map_err(|e| network(&e))?;
                return Ok((!body.trim().is_empty()).then_some(body));
            }
            let status = resp.status().as_u16();
            let retry_after = header_retry_after(&resp);
            let message = error_message(resp.text().await.unwrap_or_default());
            if status == 401 && !relogged.swap(true, std::sync::atomic::Ordering::SeqCst) {
                self.refresh(&tokens.session).await?;
                continue;
            }
            return Err(SymphonyError::Http {
                method: method.to_string(),
                endpoint: path.into(),
                status,
                message,
                retry_after,
            });
        }
    }

    async fn required<T: DeserializeOwned>(
        &self,
        service: Service,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<T, SymphonyError> {
        self.call(service, method, path, Retry::Standard, build).await?.ok_or_else(|| {
            SymphonyError::Decode {
                endpoint: path.into(),
                reason: "empty response".into(),
                body: String::new(),
            }
        })
    }

    // ----- session and users -----

    /// `GET /pod/v2/sessioninfo`: the bot's own user.
    #[tracing::instrument(name = "symphony.session_info", skip_all)]
    pub async fn session_info(&self) -> Result<UserInfo, SymphonyError> {
        self.required(Service::Pod, Method::GET, "/pod/v2/sessioninfo", |r| r).await
    }

    async fn users(&self, key: &str, value: &str) -> Result<Vec<UserInfo>, SymphonyError> {
        let query: Vec<(&str, &str)> = vec![(key, value), ("local", "true")];
        let list: Option<model::UserList> = self
            .call(Service::Pod, Method::GET, "/pod/v3/users", Retry::Standard, |r| r.query(&query))
            .await?;
        Ok(list.map(|l| l.users).unwrap_or_default())
    }

    /// `GET /pod/v3/users?uid=`
    pub async fn user_by_id(&self, id: UserId) -> Result<Option<UserInfo>, SymphonyError> {
        Ok(self.users("uid", &id.to_string()).await?.into_iter().next())
    }

    /// `GET /pod/v3/users?uid=a,b,c`: several users in one call (unknown ids are left out).
    pub async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserInfo>, SymphonyError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.users("uid", &list.join(",")).await
    }

    /// `GET /pod/v3/users?email=`
    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserInfo>, SymphonyError> {
        Ok(self.users("email", email).await?.into_iter().next())
    }

    /// `GET /pod/v3/users?username=&local=true`
    pub async fn user_by_username(
        &self,
        username: &str,
    ) -> Result<Option<UserInfo>, SymphonyError> {
        Ok(self.users("username", username).await?.into_iter().next())
    }

    // ----- rooms, membership, IMs -----

    /// `POST /pod/v3/room/create`: a private room whose members cannot invite.
    #[tracing::instrument(name = "symphony.create_room", skip_all)]
    pub async fn create_room(
        &self,
        name: &str,
        description: &str,
    ) -> Result<RoomInfo, SymphonyError> {
        let body = json!({"name": name, "description": description, "membersCanInvite": false,
                          "discoverable": false, "public": false, "readOnly": false, "copyProtected": false,
                          "crossPod": false, "viewHistory": true});
        // Not retried here: a retry after a lost answer would make a second room. The caller
        // (the outbox) retries and first looks for a room the lost attempt created.
        let detail: model::V3RoomDetail = self
            .call(Service::Pod, Method::POST, "/pod/v3/room/create", Retry::AuthOnly, |r| {
                r.json(&body)
            })
            .await?
            .ok_or_else(|| SymphonyError::Decode {
                endpoint: "/pod/v3/room/create".into(),
                reason: "empty response".into(),
                body: String::new(),
            })?;
        Ok(detail.into())
    }

    /// `GET /pod/v3/room/{id}/info`
    #[tracing::instrument(name = "symphony.room_info", skip_all, fields(stream_id = %sid))]
    pub async fn room_info(&self, sid: &StreamId) -> Result<RoomInfo, SymphonyError> {
        let path = format!("/pod/v3/room/{sid}/info");
        let detail: model::V3RoomDetail =
            self.required(Service::Pod, Method::GET, &path, |r| r).await?;
        Ok(detail.into())
    }

    /// `POST /pod/v3/room/{id}/update` with a new name.
    #[tracing::instrument(name = "symphony.rename_room", skip_all, fields(stream_id = %sid))]
    pub async fn rename_room(&self, sid: &StreamId, name: &str) -> Result<RoomInfo, SymphonyError> {
        let path = format!("/pod/v3/room/{sid}/update");
        let body = json!({"name": name});
        let detail: model::V3RoomDetail =
            self.required(Service::Pod, Method::POST, &path, |r| r.json(&body)).await?;
        Ok(detail.into())
    }

    /// `POST /pod/v1/room/{id}/setActive?active=`
    #[tracing::instrument(name = "symphony.set_room_active", skip_all, fields(stream_id = %sid))]
    pub async fn set_room_active(&self, sid: &StreamId, active: bool) -> Result<(), SymphonyError> {
        let path = format!("/pod/v1/room/{sid}/setActive");
        let flag = if active { "true" } else { "false" };
        let _: Option<Value> = self
            .call(Service::Pod, Method::POST, &path, Retry::Standard, |r| {
                r.query(&[("active", flag)])
            })
            .await?;
        Ok(())
    }

    /// `GET /pod/v2/room/{id}/membership/list`: the live membership with owner flags.
    #[tracing::instrument(name = "symphony.room_members", skip_all, fields(stream_id = %sid))]
    pub async fn room_members(&self, sid: &StreamId) -> Result<Vec<RoomMember>, SymphonyError> {
        let path = format!("/pod/v2/room/{sid}/membership/list");
        self.required(Service::Pod, Method::GET, &path, |r| r).await
    }

    async fn membership(
        &self,
        sid: &StreamId,
        action: &str,
        user: UserId,
    ) -> Result<(), SymphonyError> {
        let path = format!("/pod/v1/room/{sid}/membership/{action}");
        let body = json!({"id": user});
        let _: Option<Value> = self
            .call(Service::Pod, Method::POST, &path, Retry::Standard, |r| r.json(&body))
            .await?;
        Ok(())
    }

    #[tracing::instrument(name = "symphony.add_member", skip_all, fields(stream_id = %sid))]
    pub async fn add_member(&self, sid: &StreamId, user: UserId) -> Result<(), SymphonyError> {
        self.membership(sid, "add", user).await
    }

    #[tracing::instrument(name = "symphony.remove_member", skip_all, fields(stream_id = %sid))]
    pub async fn remove_member(&self, sid: &StreamId, user: UserId) -> Result<(), SymphonyError> {
        self.membership(sid, "remove", user).await
    }

    #[tracing::instrument(name = "symphony.promote_owner", skip_all, fields(stream_id = %sid))]
    pub async fn promote_owner(&self, sid: &StreamId, user: UserId) -> Result<(), SymphonyError> {
        self.membership(sid, "promoteOwner", user).await
    }

    #[tracing::instrument(name = "symphony.demote_owner", skip_all, fields(stream_id = %sid))]
    pub async fn demote_owner(&self, sid: &StreamId, user: UserId) -> Result<(), SymphonyError> {
        self.membership(sid, "demoteOwner", user).await
    }

    /// `POST /pod/v1/im/create`: the IM (or existing one) with these users.
    #[tracing::instrument(name = "symphony.create_im", skip_all)]
    pub async fn create_im(&self, users: &[UserId]) -> Result<StreamId, SymphonyError> {
        let r: model::StreamRef = self
            .required(Service::Pod, Method::POST, "/pod/v1/im/create", |r| r.json(users))
            .await?;
        Ok(StreamId::new(r.id))
    }

    /// `POST /pod/v1/streams/list`: the active rooms the bot is in, as (stream, name).
    pub async fn my_rooms(&self) -> Result<Vec<(StreamId, String)>, SymphonyError> {
        let mut out = Vec::new();
        let limit = 100usize;
        loop {
            let query = [("skip", out.len().to_string()), ("limit", limit.to_string())];
            let body = json!({"streamTypes": [{"type": "ROOM"}], "includeInactiveStreams": false});
            let page: Vec<model::StreamAttributes> = self
                .call(Service::Pod, Method::POST, "/pod/v1/streams/list", Retry::Standard, |r| {
                    r.query(&query).json(&body)
                })
                .await?
                .unwrap_or_default();
            let n = page.len();
            out.extend(page.into_iter().map(|s| {
                (StreamId::new(s.id), s.room_attributes.and_then(|r| r.name).unwrap_or_default())
            }));
            if n < limit {
                return Ok(out);
            }
        }
    }

    /// `GET /pod/v1/streams/{sid}/attachments`: every attachment of the stream, oldest first.
    /// The pod answers at most `limit` (≤ 100) per call, so this pages with `since` = the last
    /// `ingestionDate` seen (inclusive: what was already listed is skipped).
    #[tracing::instrument(name = "symphony.stream_attachments", skip_all, fields(stream_id = %sid))]
    pub async fn stream_attachments(
        &self,
        sid: &StreamId,
    ) -> Result<Vec<AttachmentInfo>, SymphonyError> {
        const PAGE: usize = 100;
        let path = format!("/pod/v1/streams/{sid}/attachments");
        let mut out: Vec<AttachmentInfo> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut since: Option<i64> = None;
        loop {
            let mut query = vec![("limit", PAGE.to_string()), ("sortDir", "ASC".to_owned())];
            if let Some(t) = since {
                query.push(("since", t.to_string()));
            }
            let page: Vec<AttachmentInfo> = self
                .call(Service::Pod, Method::GET, &path, Retry::Standard, |r| r.query(&query))
                .await?
                .unwrap_or_default();
            let full = page.len() >= PAGE;
            let mut fresh = 0;
            for a in page {
                if seen.insert((a.message_id.clone(), a.file_id.clone())) {
                    since = since.max(a.ingestion_date);
                    out.push(a);
                    fresh += 1;
                }
            }
            // A short page is the last; a page with nothing new cannot move `since` on.
            if !full || fresh == 0 || since.is_none() {
                return Ok(out);
            }
        }
    }

    /// `GET /agent/v1/stream/{sid}/attachment?fileId=&messageId=`: the file's bytes (the agent
    /// answers them base64-encoded).
    #[tracing::instrument(name = "symphony.download_attachment", skip_all, fields(stream_id = %sid))]
    pub async fn download_attachment(
        &self,
        sid: &StreamId,
        message_id: &str,
        file_id: &str,
    ) -> Result<Vec<u8>, SymphonyError> {
        let path = format!("/agent/v1/stream/{sid}/attachment");
        let query = [("fileId", file_id), ("messageId", message_id)];
        let body = self
            .call_raw(Service::Agent, Method::GET, &path, Retry::Standard, |r| r.query(&query))
            .await?
            .unwrap_or_default();
        decode_attachment(&body).ok_or_else(|| SymphonyError::Decode {
            endpoint: path,
            reason: "the attachment body is not base64".into(),
            body: clip(&body),
        })
    }

    // ----- messages -----

    /// `POST /agent/v4/stream/{sid}/message/create` (multipart): sends MessageML.
    pub async fn send_message(
        &self,
        sid: &StreamId,
        message_ml: &str,
        data: Option<&Value>,
    ) -> Result<SentMessage, SymphonyError> {
        self.send_message_with_attachments(sid, message_ml, data, &[]).await
    }

    /// [`Self::send_message`] with files, one `attachment` part each (name and content type
    /// as given).
    #[tracing::instrument(name = "symphony.send_message_with_attachments", skip_all, fields(stream_id = %sid))]
    pub async fn send_message_with_attachments(
        &self,
        sid: &StreamId,
        message_ml: &str,
        data: Option<&Value>,
        attachments: &[Attachment],
    ) -> Result<SentMessage, SymphonyError> {
        for a in attachments {
            a.check()?;
        }
        let path = format!("/agent/v4/stream/{sid}/message/create");
        let data = data.map(Value::to_string);
        self.required(Service::Agent, Method::POST, &path, |r| {
            let mut form = reqwest::multipart::Form::new().text("message", message_ml.to_owned());
            if let Some(d) = &data {
                form = form.text("data", d.clone());
            }
            for a in attachments {
                form = form.part("attachment", a.part());
            }
            r.multipart(form)
        })
        .await
    }
}

/// A file to send with a message.
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name people see.
    pub name: String,
    /// A MIME type, e.g. `image/png`.
    pub content_type: String,
    pub bytes: bytes::Bytes,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The content may be confidential and large: only its size is shown.
        f.debug_struct("Attachment")
            .field("name", &self.name)
            .field("content_type", &self.content_type)
            .field("size", &self.bytes.len())
            .finish()
    }
}

impl Attachment {
    fn check(&self) -> Result<(), SymphonyError> {
        if self.name.trim().is_empty() {
            return Err(SymphonyError::Invalid("an attachment needs a file name".into()));
        }
        if reqwest::multipart::Part::bytes(Vec::new()).mime_str(&self.content_type).is_err() {
            return Err(SymphonyError::Invalid(format!(
                "attachment {:?}: {:?} is not a MIME type",
                self.name, self.content_type
            )));
        }
        Ok(())
    }

    /// The multipart part (made afresh for each attempt; the bytes are shared, not copied).
    fn part(&self) -> reqwest::multipart::Part {
        let make = || {
            reqwest::multipart::Part::stream_with_length(
                reqwest::Body::from(self.bytes.clone()),
                self.bytes.len() as u64,
            )
            .file_name(self.name.clone())
        };
        // `check` validated the type, so the fallback is never taken.
        make().mime_str(&self.content_type).unwrap_or_else(|_| make())
    }
}

/// The agent's attachment body: base64 (padded or not, possibly wrapped or JSON-quoted).
fn decode_attachment(body: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let compact: String = body.trim().trim_matches('"').split_ascii_whitespace().collect();
    STANDARD.decode(&compact).or_else(|_| STANDARD_NO_PAD.decode(&compact)).ok()
}

use crate::http::{parse_retry_after, with_causes};

fn header_retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
}

/// The `message` of a `{"code","message"}` error body, else the body itself (clipped).
fn error_message(body: String) -> String {
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| clip(&body))
}

fn clip(body: &str) -> String {
    const MAX: usize = 500;
    if body.len() <= MAX {
        body.to_owned()
    } else {
        let cut = (0..=MAX).rev().find(|i| body.is_char_boundary(*i)).unwrap_or(0);
        format!("{}…", &body[..cut])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).expect("date");
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn which_errors_are_retried() {
        let http = |status, retry_after| SymphonyError::Http {
            method: "GET".into(),
            endpoint: "/x".into(),
            status,
            message: String::new(),
            retry_after,
        };
        assert!(http(429, None).is_retryable());
        assert!(http(503, None).is_retryable());
        assert!(http(400, Some(Duration::from_secs(1))).is_retryable(), "agent-mapped 429");
        assert!(!http(400, None).is_retryable());
        assert!(!http(403, None).is_retryable());
    }

    #[test]
    fn attachment_bodies_are_base64_in_any_common_wrapping() {
        assert_eq!(decode_attachment("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_attachment("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(decode_attachment("\"aGVs\nbG8=\"\n"), Some(b"hello".to_vec()));
        assert_eq!(decode_attachment("<html>oops</html>"), None);
    }
}
