//! Cloud API wire shapes (requests built with `json!`, responses parsed here), lenient where
//! Meta's docs show numbers as strings.

use serde::Deserialize;
use serde_json::Value;

use crate::domain::GroupId;
use crate::events::whatsapp::{WaError, WaUser};

pub use crate::domain::{Recipient, TemplateParam};

#[derive(Deserialize)]
pub(crate) struct RequestIdResponse {
    pub request_id: String,
}

#[derive(Deserialize)]
pub(crate) struct InviteLinkResponse {
    pub invite_link: String,
}

#[derive(Deserialize)]
pub(crate) struct SendResponse {
    #[serde(default)]
    pub messages: Vec<SentId>,
}

#[derive(Deserialize)]
pub(crate) struct SentId {
    pub id: String,
}

/// `{"id": …}` from a media upload (a string in the docs; a number is taken too).
#[derive(Deserialize)]
pub(crate) struct MediaUploadResponse {
    #[serde(default)]
    id: Value,
}

impl MediaUploadResponse {
    pub(crate) fn id(&self) -> Option<String> {
        string(Some(&self.id)).filter(|s| !s.is_empty())
    }
}

/// `GET /<MEDIA_ID>`: where and what a media file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    pub id: String,
    /// Valid for about 5 minutes, and only with the access token.
    pub url: String,
    pub mime_type: String,
    /// As Meta gives it (hex or base64).
    pub sha256: Option<String>,
    pub file_size: Option<u64>,
}

impl MediaInfo {
    pub(crate) fn from_json(v: &Value) -> Option<Self> {
        Some(MediaInfo {
            id: string(v.get("id")).unwrap_or_default(),
            url: string(v.get("url"))?,
            mime_type: string(v.get("mime_type"))?,
            sha256: string(v.get("sha256")),
            file_size: lenient_i64(v.get("file_size")).and_then(|n| u64::try_from(n).ok()),
        })
    }

    /// Whether `bytes` are the file: its `sha256` (hex or base64) when it has a readable one.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        use base64::Engine as _;
        use sha2::Digest as _;
        let Some(given) = self.sha256.as_deref().map(str::trim) else { return true };
        let expected = if given.len() == 64 {
            hex::decode(given).ok()
        } else {
            base64::engine::general_purpose::STANDARD.decode(given).ok().filter(|d| d.len() == 32)
        };
        match expected {
            Some(digest) => digest == sha2::Sha256::digest(bytes).as_slice(),
            None => true,
        }
    }
}

fn lenient_i64(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn lenient_bool(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One entry of the active-groups list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub id: GroupId,
    pub subject: Option<String>,
    pub created_at: Option<i64>,
}

/// One page of groups and the cursor of the next page, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPage {
    pub groups: Vec<GroupSummary>,
    pub next: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RawGroupList {
    #[serde(default)]
    data: Value,
    #[serde(default)]
    paging: Value,
}

impl From<RawGroupList> for GroupPage {
    fn from(raw: RawGroupList) -> Self {
        // `data.groups` per the docs; a flat `data` array is accepted too.
        let items = raw
            .data
            .get("groups")
            .and_then(Value::as_array)
            .or_else(|| raw.data.as_array())
            .cloned()
            .unwrap_or_default();
        let groups = items
            .iter()
            .filter_map(|g| {
                Some(GroupSummary {
                    id: GroupId(string(g.get("id"))?),
                    subject: string(g.get("subject")),
                    created_at: lenient_i64(g.get("created_at")),
                })
            })
            .collect();
        let next = raw
            .paging
            .get("next")
            .and_then(|_| string(raw.paging.get("cursors").and_then(|c| c.get("after"))));
        GroupPage { groups, next }
    }
}

/// `GET /<GROUP_ID>?fields=…`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: GroupId,
    pub subject: Option<String>,
    pub description: Option<String>,
    pub join_approval_mode: Option<String>,
    pub suspended: Option<bool>,
    pub creation_timestamp: Option<i64>,
    pub participants: Vec<WaUser>,
    /// Excluding the business.
    pub total_participant_count: Option<i64>,
}

impl GroupInfo {
    pub(crate) fn from_json(v: &Value) -> Self {
        let participants = v
            .get("participants")
            .and_then(|p| p.as_array().or_else(|| p.get("data").and_then(Value::as_array)))
            .map(|list| {
                list.iter()
                    .map(|p| WaUser {
                        wa_id: string(p.get("wa_id")),
                        user_id: string(p.get("user_id")),
                        username: string(p.get("username")),
                        input: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        GroupInfo {
            id: GroupId(string(v.get("id")).unwrap_or_default()),
            subject: string(v.get("subject")),
            description: string(v.get("description")),
            join_approval_mode: string(v.get("join_approval_mode")),
            suspended: lenient_bool(v.get("suspended")),
            creation_timestamp: lenient_i64(v.get("creation_timestamp")),
            participants,
            total_participant_count: lenient_i64(v.get("total_participant_count")),
        }
    }
}

/// A pending join request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JoinRequest {
    pub join_request_id: String,
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default, deserialize_with = "de_lenient_i64")]
    pub creation_timestamp: Option<i64>,
}

fn de_lenient_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(lenient_i64(v.as_ref()))
}

#[derive(Deserialize)]
pub(crate) struct RawJoinRequests {
    #[serde(default)]
    pub data: Vec<JoinRequest>,
    #[serde(default)]
    paging: Value,
}

impl RawJoinRequests {
    pub(crate) fn next_cursor(&self) -> Option<String> {
        self.paging.get("next")?;
        string(self.paging.get("cursors").and_then(|c| c.get("after")))
    }
}

/// The answer to approving or rejecting join requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequestOutcome {
    /// `approved_join_requests` or `rejected_join_requests`.
    pub done: Vec<String>,
    pub failed: Vec<(String, Vec<WaError>)>,
}

impl JoinRequestOutcome {
    pub(crate) fn from_json(v: &Value) -> Self {
        let ids = |key: &str| -> Vec<String> {
            v.get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| string(Some(x))).collect())
                .unwrap_or_default()
        };
        let mut done = ids("approved_join_requests");
        done.extend(ids("rejected_join_requests"));
        let failed = v
            .get("failed_join_requests")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|f| {
                        let errors = f
                            .get("errors")
                            .and_then(Value::as_array)
                            .map(|es| {
                                es.iter()
                                    .map(|e| WaError {
                                        code: lenient_i64(e.get("code")).unwrap_or_default(),
                                        title: string(e.get("title")),
                                        message: string(e.get("message")),
                                        details: e
                                            .get("error_data")
                                            .and_then(|d| string(d.get("details"))),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        (string(f.get("join_request_id")).unwrap_or_default(), errors)
                    })
                    .collect()
            })
            .unwrap_or_default();
        JoinRequestOutcome { done, failed }
    }
}
