//! Readers for configuration values as admins write them: a user id unquoted or quoted, a port
//! or a flag from the environment (where every value is text), with errors that name what was
//! expected and what was found, and never show a secret's value.

use std::path::PathBuf;
use std::str::FromStr;

use secrecy::SecretString;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// What a value is, for an error message: `"notaport"`, `-3`, a list, a map.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
    }
}

/// Text from a string or a whole number (`8100002` and `"8100002"` are the same user id).
fn text_of(value: Value) -> Result<String, Value> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        other => Err(other),
    }
}

/// An optional string; a whole number is taken as its digits.
pub(super) fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        value => text_of(value)
            .map(Some)
            .map_err(|v| D::Error::custom(format!("expected a string, got {}", describe(&v)))),
    }
}

/// An optional path (a string).
pub(super) fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    opt_text(d).map(|t| t.map(PathBuf::from))
}

/// An optional secret: a string or a whole number. A value of another kind is refused without
/// being shown.
pub(super) fn opt_secret<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        value => text_of(value).map(|t| Some(SecretString::from(t))).map_err(|_| {
            D::Error::custom("expected a string (the value is not shown: it is a secret)")
        }),
    }
}

/// A list of strings or whole numbers (`[8100002, "bob@example.com"]`); a single one is a list
/// of one.
pub(super) fn opt_texts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                text_of(item).map_err(|v| {
                    D::Error::custom(format!(
                        "entry {}: expected a string or a number, got {}",
                        i + 1,
                        describe(&v)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        value => text_of(value).map(|t| Some(vec![t])).map_err(|v| {
            D::Error::custom(format!("expected a list of strings or numbers, got {}", describe(&v)))
        }),
    }
}

/// A number, or text that reads as one (environment values are text).
fn number<'de, D: Deserializer<'de>, T: DeserializeOwned + FromStr>(
    d: D,
    expected: &str,
) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(d)?;
    let parsed = match &value {
        Value::Null => return Ok(None),
        Value::Number(_) => serde_json::from_value::<T>(value.clone()).ok(),
        Value::String(s) => s.trim().parse::<T>().ok(),
        _ => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected {expected}, got {}", describe(&value))))
}

pub(super) fn opt_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    number(d, "a port number (0 to 65535)")
}

pub(super) fn opt_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number(d, "a whole number of milliseconds")
}

pub(super) fn opt_attempts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    number(d, "a whole number (-1 for ever)")
}

pub(super) fn opt_days<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    number(d, "a whole number of days")
}

pub(super) fn opt_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    number(d, "a whole number")
}

pub(super) fn opt_float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number(d, "a number")
}

/// `true` or `false`, also as text (`WAGB__FEATURES__NATIVEGROUPS=false`).
pub(super) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let value = Value::deserialize(d)?;
    match &value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
        _ => Err(D::Error::custom(format!("expected true or false, got {}", describe(&value)))),
    }
}
