//! Fault injection shared by the mock pod and the WhatsApp simulator: "the next N calls whose
//! method and path match answer status S (with `Retry-After`), or hang first".

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
    pub hang: Option<Duration>,
    /// The call is carried out, then answered with the error: "it worked, but the answer was
    /// lost" (a timeout, a crash before the caller recorded the result).
    pub after: bool,
    pub remaining: u32,
}

/// The control APIs' body: `{"method"?,"path":"regex","status"?,"code"?,"retryAfter"?,"hangMs"?,"count"}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultSpec {
    pub method: Option<String>,
    pub path: String,
    pub status: Option<u16>,
    pub code: Option<i64>,
    pub retry_after: Option<u64>,
    pub hang_ms: Option<u64>,
    #[serde(default)]
    pub after: bool,
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
        if status == 0 && self.hang_ms.is_none() {
            return Err("give a status, a hangMs, or both".into());
        }
        Ok(Fault {
            method: self.method,
            path,
            status,
            code: self.code,
            retry_after: self.retry_after,
            hang: self.hang_ms.map(Duration::from_millis),
            after: self.after,
            remaining: self.count,
        })
    }
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
        assert_eq!(
            spec(r#"{"path":"x","hangMs":5}"#).map(|f| f.hang),
            Ok(Some(Duration::from_millis(5)))
        );
    }
}
