//! Validated newtypes for the ids the product juggles, so that one can never stand in for another.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// A Symphony user id (a 64-bit number on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A Symphony stream (IM or room) id, always held in the URL-safe, unpadded base64 form that
/// the REST API returns. Standard base64 (as seen in the client and some payloads) is converted
/// on construction, so equality works whatever form an id arrived in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    pub fn new(raw: impl AsRef<str>) -> Self {
        Self(to_url_safe_id(raw.as_ref()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Converts a Symphony id in standard base64 (`+`, `/`, `=`) to the URL-safe, unpadded form.
/// Ids already URL-safe are returned unchanged.
pub fn to_url_safe_id(raw: &str) -> String {
    if raw.contains(['+', '/', '=']) {
        match STANDARD.decode(raw) {
            Ok(bytes) => URL_SAFE_NO_PAD.encode(bytes),
            Err(_) => raw.replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned(),
        }
    } else {
        raw.to_owned()
    }
}

impl From<String> for StreamId {
    fn from(raw: String) -> Self {
        Self::new(raw)
    }
}

impl From<&str> for StreamId {
    fn from(raw: &str) -> Self {
        Self::new(raw)
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> Self {
        id.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A WhatsApp group id as returned by the Cloud API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub String);

impl GroupId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A phone number in E.164 form (`+447700900123`), validated with `phonenumber`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct E164(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{token:?} is not a valid international phone number (expected E.164, e.g. +447700900123)")]
pub struct E164Error {
    pub token: String,
}

impl E164 {
    /// Parses `+447700900123`, `447700900123` (a WhatsApp id) or spaced/dashed variants.
    pub fn parse(token: &str) -> Result<Self, E164Error> {
        let err = || E164Error { token: token.to_owned() };
        let trimmed = token.trim();
        let with_plus = if trimmed.starts_with('+') {
            trimmed.to_owned()
        } else if trimmed.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            format!("+{trimmed}")
        } else {
            return Err(err());
        };
        let number = phonenumber::parse(None, &with_plus).map_err(|_| err())?;
        if !phonenumber::is_valid(&number) {
            return Err(err());
        }
        Ok(Self(number.format().mode(phonenumber::Mode::E164).to_string()))
    }

    /// `+447700900123`
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The WhatsApp id: the digits without the `+` (`447700900123`).
    pub fn wa_id(&self) -> &str {
        self.0.trim_start_matches('+')
    }

    /// For logs: keeps the country code and the last two digits only.
    pub fn masked(&self) -> String {
        let digits = self.wa_id();
        let keep_end = digits.len().saturating_sub(2);
        let head: String = digits.chars().take(2.min(keep_end)).collect();
        format!("+{head}…{}", &digits[keep_end..])
    }
}

impl TryFrom<String> for E164 {
    type Error = E164Error;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<E164> for String {
    fn from(n: E164) -> Self {
        n.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Phone numbers are personal data: Debug masks them so they stay out of logs by default.
impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_equal_in_either_base64_form() {
        let standard = StreamId::new("iWyZBIOdQQzQj0tKOLRivX///qu6LeTlhgHBg9zkBx8=");
        let url_safe = StreamId::new("iWyZBIOdQQzQj0tKOLRivX___qu6LeTlhgHBg9zkBx8");
        assert_eq!(standard, url_safe);
        assert_eq!(url_safe.as_str(), "iWyZBIOdQQzQj0tKOLRivX___qu6LeTlhgHBg9zkBx8");
    }

    #[test]
    fn e164_normalises_and_rejects() {
        let n = E164::parse("+44 7911 123456").expect("valid");
        assert_eq!(n.as_str(), "+447911123456");
        assert_eq!(n.wa_id(), "447911123456");
        assert_eq!(E164::parse("447911123456").expect("wa id"), n);
        for bad in ["", "+1", "hello", "+999999999999999", "@bob"] {
            let err = E164::parse(bad).expect_err(bad);
            assert_eq!(err.token, bad);
        }
        assert!(!format!("{n:?}").contains("123456"));
    }
}
