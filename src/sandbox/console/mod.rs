//! The sandbox's web console: plain HTML/CSS/JS (no build step) to act as any advisor in
//! Symphony and as any contact's phone on WhatsApp, served on its own port with the two control
//! APIs proxied under the same origin.
//!
//! The console is a client of the control APIs only (`/_sandbox/…` on the mock pod,
//! `/_sandbox/wa/…` on the simulator): the browser calls `/pod/_sandbox/…` and
//! `/wa/_sandbox/wa/…` here and this router forwards them. A proxy rather than CORS on the
//! control APIs: those stay closed to scripts of other origins (any page open in the browser
//! could otherwise drive the sandbox), and the console needs no knowledge of their ports.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

const INDEX_HTML: &str = include_str!("index.html");
const CONSOLE_CSS: &str = include_str!("console.css");
const CONSOLE_JS: &str = include_str!("console.js");

/// Largest request body forwarded to a control API.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot serve the console: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot build the console's HTTP client: {0}")]
    Client(String),
}

/// A Symphony user the console can act as (or show by name).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryUser {
    pub user_id: i64,
    pub name: String,
}

/// A WhatsApp contact the console offers as a phone to play.
#[derive(Debug, Clone, Serialize)]
pub struct DirectoryContact {
    /// WhatsApp id: E.164 digits without `+`.
    pub phone: String,
    pub name: String,
}

/// The seeded people, served to the page as `/directory.json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    pub bot: DirectoryUser,
    pub advisors: Vec<DirectoryUser>,
    pub contacts: Vec<DirectoryContact>,
    /// The business number (WhatsApp id), shown as the sender of the bot's WhatsApp messages.
    pub business_phone: String,
}

/// Where the console sends the control calls, and whom it offers to play.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// The mock pod's origin, `http://127.0.0.1:PORT`.
    pub pod_url: String,
    /// The WhatsApp simulator's origin.
    pub sim_url: String,
    pub directory: Directory,
}

#[derive(Clone)]
struct ConsoleState {
    cfg: std::sync::Arc<ConsoleConfig>,
    http: reqwest::Client,
}

/// A running console.
pub struct Console {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Console {
    /// Serves the console on `listener` until `cancel` fires.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        cfg: ConsoleConfig,
        cancel: CancellationToken,
    ) -> Result<Console, ConsoleError> {
        let addr = listener.local_addr()?;
        let app = router(cfg)?;
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = served.await {
                tracing::error!(error = %e, "the sandbox console stopped");
            }
        });
        tracing::info!(%addr, "sandbox console listening");
        Ok(Console { addr, cancel, task })
    }

    /// `http://127.0.0.1:PORT/`: open it in a browser.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// The console's routes: the page, its assets, the directory and the two proxies.
pub fn router(cfg: ConsoleConfig) -> Result<Router, ConsoleError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ConsoleError::Client(e.to_string()))?;
    let state = ConsoleState { cfg: std::sync::Arc::new(cfg), http };
    Ok(Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/console.css", get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }))
        .route("/console.js", get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }))
        .route("/directory.json", get(directory))
        .route("/pod/_sandbox/{*rest}", any(to_pod))
        .route("/wa/_sandbox/wa/{*rest}", any(to_sim))
        .with_state(state))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    // The assets are compiled in: a reload always gets this build's, never a cached older one.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-store")], body)
        .into_response()
}

async fn directory(State(state): State<ConsoleState>) -> Response {
    axum::Json(state.cfg.directory.clone()).into_response()
}

async fn to_pod(
    State(state): State<ConsoleState>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = upstream(&state.cfg.pod_url, "/_sandbox/", &rest, query.as_deref());
    forward(&state.http, method, url, &headers, body).await
}

async fn to_sim(
    State(state): State<ConsoleState>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = upstream(&state.cfg.sim_url, "/_sandbox/wa/", &rest, query.as_deref());
    forward(&state.http, method, url, &headers, body).await
}

/// The control API URL a console path stands for (`None`: the origin is not a URL). `rest`
/// comes percent-decoded from the router: it is encoded again segment by segment, so an id
/// holding `?` or `#` stays one path segment.
fn upstream(origin: &str, prefix: &str, rest: &str, query: Option<&str>) -> Option<String> {
    let mut url = url::Url::parse(origin).ok()?;
    url.path_segments_mut()
        .ok()?
        .clear()
        .extend(prefix.split('/').filter(|s| !s.is_empty()))
        .extend(rest.split('/'));
    url.set_query(query.filter(|q| !q.is_empty()));
    Some(url.into())
}

/// Sends one control call on and hands its answer back as it came; a control API that cannot
/// be reached is a 502 `{"error"}`, the control APIs' own error shape.
async fn forward(
    http: &reqwest::Client,
    method: Method,
    url: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Some(url) = url else {
        return error(StatusCode::BAD_GATEWAY, "the control API's address is not a URL");
    };
    if body.len() > MAX_BODY {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large");
    }
    let mut request = http.request(method, &url);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    if !body.is_empty() {
        request = request.body(body);
    }
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_GATEWAY, &format!("control API unreachable: {e}")),
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    match answer.bytes().await {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            let ct = content_type.unwrap_or(HeaderValue::from_static("application/json"));
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
            response
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, &format!("control API answer lost: {e}")),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::upstream;

    #[test]
    fn console_paths_map_to_the_control_apis() {
        assert_eq!(
            upstream("http://127.0.0.1:1", "/_sandbox/", "streams", Some("member=7")).as_deref(),
            Some("http://127.0.0.1:1/_sandbox/streams?member=7")
        );
        assert_eq!(
            upstream("http://h:2/", "/_sandbox/wa/", "phones/447911123456/inbox", None).as_deref(),
            Some("http://h:2/_sandbox/wa/phones/447911123456/inbox")
        );
        // A decoded `?` or `#` in an id must not become a query or a fragment.
        assert_eq!(
            upstream("http://h", "/_sandbox/", "streams/a?b#c d/messages", Some("")).as_deref(),
            Some("http://h/_sandbox/streams/a%3Fb%23c%20d/messages")
        );
        assert_eq!(upstream("not a url", "/_sandbox/", "streams", None), None);
    }
}
