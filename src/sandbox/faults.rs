//! Fault injection shared by the mock pod and the WhatsApp simulator: "the next N calls whose
//! method and path match answer status S (with `Retry-After`, in seconds or as an HTTP date),
//! or hang first, or lose their connection before the answer is complete".

use std::time::Duration;

use serde::Deserialize;

/// One armed fault.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Option<String>,
    pub path: regex::Regex,
    /// 0: no error answer (only the hang).
    pub status: u16,
    /// The Graph error code to answer with (WhatsApp simulator only).
    pub code: Option<i64>,
    pub retry_after: Option<u64>,
    /// `Retry-After` as the HTTP date `retry_after` seconds after the answer, not in seconds.
    pub retry_after_date: bool,
    pub hang: Option<Duration>,
    /// The call is carried out, then answered with the error: "it worked, but the answer was
    /// lost" (a timeout, a crash before the caller recorded the result).
    pub after: bool,
    /// The connection is closed without a complete answer: before the call is carried out
    /// (nothing sent back), or with `after`, once it was, half-way through its answer's body.
    pub drop: bool,
    pub remaining: u32,
}

/// The control APIs' body:
/// `{"method"?,"path":"regex","status"?,"code"?,"retryAfter"?,"retryAfterDate"?,"hangMs"?,"after"?,"drop"?,"count"}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultSpec {
    pub method: Option<String>,
    pub path: String,
    pub status: Option<u16>,
    pub code: Option<i64>,
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub retry_after_date: bool,
    pub hang_ms: Option<u64>,
    #[serde(default)]
    pub after: bool,
    #[serde(default)]
    pub drop: bool,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl FaultSpec {
    /// Validates the spec into an armed fault (a clear message when it makes no sense).
    pub fn arm(self) -> Result<Fault, String> {
        let path =
            regex::Regex::new(&self.path).map_err(|e| format!("path is not a valid regex: {e}"))?;
        let status = self.status.unwrap_or(0);
        if status != 0 && !(100..=599).contains(&status) {
            return Err("status must be an HTTP status".into());
        }
        if status == 0 && self.hang_ms.is_none() && !self.drop {
            return Err("give a status, a hangMs, a drop, or several".into());
        }
        if self.drop && status != 0 {
            return Err("a dropped connection has no status".into());
        }
        if self.retry_after_date && self.retry_after.is_none() {
            return Err("retryAfterDate needs retryAfter (the seconds from the answer)".into());
        }
        Ok(Fault {
            method: self.method,
            path,
            status,
            code: self.code,
            retry_after: self.retry_after,
            retry_after_date: self.retry_after_date,
            hang: self.hang_ms.map(Duration::from_millis),
            after: self.after,
            drop: self.drop,
            remaining: self.count,
        })
    }
}

impl Fault {
    /// The `Retry-After` header's value, if the fault has one: seconds, or the HTTP date that
    /// many seconds from now.
    pub fn retry_after_header(&self) -> Option<axum::http::HeaderValue> {
        let secs = self.retry_after?;
        let text = if self.retry_after_date {
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(secs))
        } else {
            secs.to_string()
        };
        axum::http::HeaderValue::from_str(&text).ok()
    }
}

/// `response` with its connection dropped half-way through the body: the status line, the
/// headers (the full `Content-Length`) and the first half of the body are sent, then the
/// connection is closed. The client sees the call fail while reading the answer.
pub async fn cut_mid_body(response: axum::response::Response) -> axum::response::Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    // At least one byte is missing, whatever the length.
    let full = bytes.len().max(2);
    let half = bytes.slice(..bytes.len() / 2);
    parts.headers.insert(axum::http::header::CONTENT_LENGTH, axum::http::HeaderValue::from(full));
    // The half is flushed before the connection goes (an error at once would make the server
    // drop what it buffered: no answer at all).
    let first = futures::stream::iter([Ok::<_, std::io::Error>(half)]);
    let then_cut = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected fault: dropped"))
    });
    axum::response::Response::from_parts(
        parts,
        axum::body::Body::from_stream(futures::StreamExt::chain(first, then_cut)),
    )
}

/// No answer at all: the connection is closed before the status line (a `200` head that no
/// complete answer follows, should the server flush it first).
pub fn dropped() -> axum::response::Response {
    let mut parts = axum::response::Response::new(axum::body::Body::empty()).into_parts().0;
    parts.headers.insert(axum::http::header::CONTENT_LENGTH, axum::http::HeaderValue::from(2));
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected fault"))];
    axum::response::Response::from_parts(
        parts,
        axum::body::Body::from_stream(futures::stream::iter(chunks)),
    )
}

/// Armed faults, consumed in the order they were added.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Vec<Fault>,
}

impl Faults {
    pub fn add(&mut self, fault: Fault) {
        self.armed.push(fault);
    }

    /// Takes one use of the first fault matching this call, if any.
    pub fn take(&mut self, method: &str, path: &str) -> Option<Fault> {
        let hit = self.armed.iter_mut().find(|f| {
            f.remaining > 0
                && f.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
                && f.path.is_match(path)
        });
        let fault = hit.map(|f| {
            f.remaining -= 1;
            f.clone()
        });
        self.armed.retain(|f| f.remaining > 0);
        fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Fault, String> {
        serde_json::from_str::<FaultSpec>(json).map_err(|e| e.to_string())?.arm()
    }

    #[test]
    fn faults_match_by_method_and_path_and_run_out() {
        let mut faults = Faults::default();
        faults
            .add(spec(r#"{"method":"get","path":"^/a$","status":503,"count":2}"#).expect("valid"));
        assert!(faults.take("POST", "/a").is_none());
        assert!(faults.take("GET", "/b").is_none());
        assert_eq!(faults.take("GET", "/a").map(|f| f.status), Some(503));
        assert_eq!(faults.take("GET", "/a").map(|f| f.status), Some(503));
        assert!(faults.take("GET", "/a").is_none());
        assert!(spec(r#"{"path":"("}"#).is_err());
        assert!(spec(r#"{"path":"x"}"#).is_err());
        assert!(spec(r#"{"path":"x","status":42}"#).is_err());
        assert!(spec(r#"{"path":"x","drop":true,"status":503}"#).is_err());
        assert!(spec(r#"{"path":"x","status":429,"retryAfterDate":true}"#).is_err());
        assert!(spec(r#"{"path":"x","drop":true,"after":true}"#).is_ok_and(|f| f.drop && f.after));
        let dated = spec(r#"{"path":"x","status":429,"retryAfter":2,"retryAfterDate":true}"#)
            .expect("valid");
        let header = dated.retry_after_header().expect("header");
        let when = httpdate::parse_http_date(header.to_str().expect("ascii")).expect("a date");
        let ahead = when.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        assert!(ahead <= Duration::from_secs(2), "{ahead:?}");
        assert_eq!(
            spec(r#"{"path":"x","hangMs":5}"#).map(|f| f.hang),
            Ok(Some(Duration::from_millis(5)))
        );
    }
}
