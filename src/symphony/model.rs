//! Symphony wire DTOs (the official specs' shapes), tolerant of fields the bot does not use,
//! and the mapping of datafeed `V4Event`s to [`SymphonyEvent`]s.

use serde::Deserialize;
use serde_json::Value;

use crate::domain::{StreamId, UserId};
use crate::events::{MessageAttachment, ReceivedMessage, SymphonyEvent, SymphonyEventKind};

use super::messageml;

/// `Token` from the login API.
#[derive(Deserialize)]
pub(crate) struct Token {
    pub token: String,
}

/// `UserV2` (session info, user lookups).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub id: UserId,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub email_address: Option<String>,
    #[serde(default)]
    pub account_type: Option<String>,
}

/// `V2UserList`.
#[derive(Deserialize)]
pub(crate) struct UserList {
    #[serde(default)]
    pub users: Vec<UserInfo>,
}

/// `V3RoomDetail`, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub stream: StreamId,
    pub name: String,
    pub description: String,
    pub active: bool,
    pub created_by: Option<UserId>,
    pub creation_date: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct V3RoomDetail {
    room_attributes: RoomAttributes,
    room_system_info: RoomSystemInfo,
}

#[derive(Deserialize)]
struct RoomAttributes {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomSystemInfo {
    id: String,
    #[serde(default)]
    creation_date: Option<i64>,
    #[serde(default)]
    created_by_user_id: Option<i64>,
    #[serde(default)]
    active: Option<bool>,
}

impl From<V3RoomDetail> for RoomInfo {
    fn from(d: V3RoomDetail) -> Self {
        RoomInfo {
            stream: StreamId::new(d.room_system_info.id),
            name: d.room_attributes.name,
            description: d.room_attributes.description,
            active: d.room_system_info.active.unwrap_or(true),
            created_by: d.room_system_info.created_by_user_id.map(UserId),
            creation_date: d.room_system_info.creation_date,
        }
    }
}

/// One entry of `MembershipList`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RoomMember {
    #[serde(rename = "id")]
    pub user: UserId,
    #[serde(default)]
    pub owner: bool,
}

/// `{"id": "<stream id>"}` from IM create.
#[derive(Deserialize)]
pub(crate) struct StreamRef {
    pub id: String,
}

/// `StreamAttributes` (stream list), reduced.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamAttributes {
    pub id: String,
    #[serde(default)]
    pub stream_type: Option<StreamType>,
    #[serde(default)]
    pub room_attributes: Option<RoomNameOnly>,
}

/// `StreamType`: `{"type": "IM" | "MIM" | "ROOM" | "POST"}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StreamType {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RoomNameOnly {
    #[serde(default)]
    pub name: Option<String>,
}

pub use crate::events::symphony::AttachmentInfo;

/// The part of `V4Message` the bot needs back after sending.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentMessage {
    pub message_id: String,
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// `V5Datafeed`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Datafeed {
    pub id: String,
    /// Deprecated in the spec but still sent: orders feeds the same way for every instance.
    #[serde(default)]
    pub created_at: Option<i64>,
}

/// `V5EventList`: events stay raw JSON here so that one odd event never loses a batch.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventList {
    #[serde(default)]
    pub events: Option<Vec<Value>>,
    /// Optional in the spec: a read may answer without one (then the last one stays in force).
    #[serde(default)]
    pub ack_id: Option<String>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn user_at(v: &Value, path: &[&str]) -> Option<UserId> {
    path.iter().try_fold(v, |v, k| v.get(k))?.get("userId")?.as_i64().map(UserId)
}

/// Maps one raw `V4Event`. Unknown types become [`SymphonyEventKind::Other`]; an event the bot
/// cannot read at all (no id) is `None`.
pub fn map_event(raw: &Value) -> Option<SymphonyEvent> {
    let id = raw.get("id")?.as_str()?.to_owned();
    let kind_name = raw.get("type").and_then(Value::as_str).unwrap_or_default();
    // A message's own timestamp (its ingestion by the pod) is the one the message history gives
    // too: events of one room are ordered by it whichever way they came (datafeed, catch-up).
    let timestamp = raw
        .pointer("/payload/messageSent/message/timestamp")
        .or_else(|| raw.get("timestamp"))
        .and_then(Value::as_i64)
        .unwrap_or_default();
    let initiator = user_at(raw, &["initiator", "user"]);
    let p = raw.get("payload").unwrap_or(&Value::Null);
    let stream_of = |key: &str| str_at(p, &[key, "stream", "streamId"]).map(StreamId::new);
    let other = || SymphonyEventKind::Other { event_type: kind_name.to_owned() };
    let affected = |key: &str| user_at(p, &[key, "affectedUser"]);
    let kind = match kind_name {
        "MESSAGESENT" => {
            let m = p.get("messageSent").and_then(|m| m.get("message"));
            match m.and_then(|m| map_message(m, initiator)) {
                Some(msg) => SymphonyEventKind::MessageSent(msg),
                None => other(),
            }
        }
        "INSTANTMESSAGECREATED" => match stream_of("instantMessageCreated") {
            Some(stream) => SymphonyEventKind::InstantMessageCreated { stream },
            None => other(),
        },
        "ROOMCREATED" => match stream_of("roomCreated") {
            Some(stream) => SymphonyEventKind::RoomCreated {
                stream,
                name: str_at(p, &["roomCreated", "roomProperties", "name"]).map(str::to_owned),
            },
            None => other(),
        },
        "ROOMUPDATED" => match stream_of("roomUpdated") {
            Some(stream) => SymphonyEventKind::RoomUpdated {
                stream,
                name: str_at(p, &["roomUpdated", "newRoomProperties", "name"])
                    .or_else(|| str_at(p, &["roomUpdated", "stream", "roomName"]))
                    .map(str::to_owned),
            },
            None => other(),
        },
        "ROOMDEACTIVATED" => stream_of("roomDeactivated")
            .map_or_else(other, |stream| SymphonyEventKind::RoomDeactivated { stream }),
        "ROOMREACTIVATED" => stream_of("roomReactivated")
            .map_or_else(other, |stream| SymphonyEventKind::RoomReactivated { stream }),
        "USERJOINEDROOM" => match (stream_of("userJoinedRoom"), affected("userJoinedRoom")) {
            (Some(stream), Some(user)) => SymphonyEventKind::UserJoinedRoom { stream, user },
            _ => other(),
        },
        "USERLEFTROOM" => match (stream_of("userLeftRoom"), affected("userLeftRoom")) {
            (Some(stream), Some(user)) => SymphonyEventKind::UserLeftRoom { stream, user },
            _ => other(),
        },
        "ROOMMEMBERPROMOTEDTOOWNER" => {
            match (stream_of("roomMemberPromotedToOwner"), affected("roomMemberPromotedToOwner")) {
                (Some(stream), Some(user)) => {
                    SymphonyEventKind::MemberPromotedToOwner { stream, user }
                }
                _ => other(),
            }
        }
        "ROOMMEMBERDEMOTEDFROMOWNER" => {
            match (stream_of("roomMemberDemotedFromOwner"), affected("roomMemberDemotedFromOwner"))
            {
                (Some(stream), Some(user)) => {
                    SymphonyEventKind::MemberDemotedFromOwner { stream, user }
                }
                _ => other(),
            }
        }
        "SYMPHONYELEMENTSACTION" => {
            let a = p.get("symphonyElementsAction").cloned().unwrap_or(Value::Null);
            match (
                str_at(&a, &["stream", "streamId"]),
                a.get("formMessageId").and_then(Value::as_str),
            ) {
                (Some(stream), Some(form_message_id)) => SymphonyEventKind::ElementsAction {
                    stream: StreamId::new(stream),
                    form_message_id: form_message_id.to_owned(),
                    form_id: a.get("formId").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    values: a.get("formValues").cloned().unwrap_or(Value::Null),
                    initiator_email: str_at(raw, &["initiator", "user", "email"])
                        .map(str::to_owned),
                },
                _ => other(),
            }
        }
        _ => other(),
    };
    let affected_name = p
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|v| v.get("affectedUser"))
        .and_then(|u| u.get("displayName"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some(SymphonyEvent { id, timestamp, initiator, affected_name, kind })
}

/// Maps one `V4Message` (a datafeed MESSAGESENT's or one of the message history's).
pub(crate) fn map_message(m: &Value, initiator: Option<UserId>) -> Option<ReceivedMessage> {
    let presentation_ml = m.get("message")?.as_str()?.to_owned();
    let data = m.get("data").and_then(Value::as_str).map(str::to_owned);
    let parsed = messageml::parse(&presentation_ml, data.as_deref()).ok();
    Some(ReceivedMessage {
        message_id: m.get("messageId")?.as_str()?.to_owned(),
        stream: StreamId::new(str_at(m, &["stream", "streamId"])?),
        stream_type: str_at(m, &["stream", "streamType"]).map(str::to_owned),
        sender: m
            .get("user")
            .and_then(|u| u.get("userId"))
            .and_then(Value::as_i64)
            .map(UserId)
            .or(initiator)?,
        sender_name: str_at(m, &["user", "displayName"]).map(str::to_owned),
        sender_email: str_at(m, &["user", "email"]).map(str::to_owned),
        text: parsed.as_ref().map(|p| p.text.clone()).unwrap_or_default(),
        mentions: parsed.map(|p| p.mentions).unwrap_or_default(),
        presentation_ml,
        data,
        attachments: m
            .get("attachments")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some(MessageAttachment {
                    id: a.get("id")?.as_str()?.to_owned(),
                    name: a.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    size: a.get("size").and_then(Value::as_u64),
                })
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_read_response_maps_to_events() {
        let raw: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/symphony/datafeed-read.json"))
                .expect("fixture");
        let events: Vec<SymphonyEvent> =
            raw["events"].as_array().expect("events").iter().filter_map(map_event).collect();
        assert_eq!(events.len(), 4);
        let SymphonyEventKind::MessageSent(m) = &events[0].kind else { panic!("{:?}", events[0]) };
        assert_eq!(m.sender, UserId(349026222342678));
        assert_eq!(m.text, "@Group Bot /group add @Bob Smith");
        assert_eq!(m.mentions, vec![UserId(349026222344902), UserId(349026222339001)]);
        assert_eq!(m.stream_type.as_deref(), Some("ROOM"));
        assert_eq!(
            events[1].kind,
            SymphonyEventKind::UserJoinedRoom {
                stream: StreamId::new("tVtJmEGmV4q6Xx3dW2qN0n___nK9Zq1hdA"),
                user: UserId(349026222339001)
            }
        );
        assert_eq!(events[1].initiator, Some(UserId(349026222344902)));
        assert!(
            matches!(&events[2].kind, SymphonyEventKind::RoomUpdated { name: Some(n), .. } if n == "Desk EMEA (FX)")
        );
        assert!(matches!(events[3].kind, SymphonyEventKind::InstantMessageCreated { .. }));
    }

    #[test]
    fn a_message_is_timed_by_its_own_timestamp_as_the_history_gives_it() {
        // The event's timestamp and its message's can differ; the catch-up only sees the
        // message's, and a room's events are ordered by it whichever way they came.
        let raw = serde_json::json!({"id": "e1", "type": "MESSAGESENT", "timestamp": 1_000_050_i64,
            "payload": {"messageSent": {"message": {
            "messageId": "m1", "timestamp": 1_000_000_i64,
            "message": "<div data-format=\"PresentationML\" data-version=\"2.0\">hi</div>",
            "user": {"userId": 7}, "stream": {"streamId": "s1", "streamType": "ROOM"}}}}});
        assert_eq!(map_event(&raw).expect("mapped").timestamp, 1_000_000);
        let other = serde_json::json!({"id": "e2", "type": "ROOMUPDATED", "timestamp": 1_000_050_i64,
            "payload": {"roomUpdated": {"stream": {"streamId": "s1"}}}});
        assert_eq!(map_event(&other).expect("mapped").timestamp, 1_000_050);
    }

    #[test]
    fn a_message_with_files_lists_its_attachments() {
        let raw = serde_json::json!({"id": "e1", "type": "MESSAGESENT", "payload": {"messageSent": {"message": {
            "messageId": "m1", "message": "<div data-format=\"PresentationML\" data-version=\"2.0\">see</div>",
            "user": {"userId": 7}, "stream": {"streamId": "s1", "streamType": "ROOM"},
            "attachments": [{"id": "internal_1%2Fa", "name": "a.pdf", "size": 12, "images": []},
                            {"name": "no id"}]}}}});
        let SymphonyEventKind::MessageSent(m) = map_event(&raw).expect("mapped").kind else {
            panic!("not a message")
        };
        assert_eq!(
            m.attachments,
            vec![MessageAttachment {
                id: "internal_1%2Fa".into(),
                name: "a.pdf".into(),
                size: Some(12)
            }]
        );
    }

    #[test]
    fn an_elements_submission_maps_with_its_submitter() {
        // The shape of the developer docs' checkbox example (symphony-elements/checkbox.md).
        let raw = serde_json::json!({
            "id": "3dtVXF", "messageId": "amKuCXE9wjfEFX7qQPzanX___oyR5rbWbQ",
            "timestamp": 1595280017705_i64, "type": "SYMPHONYELEMENTSACTION",
            "initiator": {"user": {"userId": 344147139494862_i64, "displayName": "Reed Feldman",
                                   "email": "reed.feldman@symphony.com"}},
            "payload": {"symphonyElementsAction": {
                "stream": {"streamId": "IEj12WoWsfTkiqOBkATdUn___pFXhN9OdA", "streamType": "IM"},
                "formMessageId": "BFawdKkxmV0ZQmSuIzgfTX___oyR5yO2bQ", "formId": "form_id",
                "formValues": {"action": "example-button", "id1": "value01"}}}
        });
        let e = map_event(&raw).expect("mapped");
        assert_eq!(e.initiator, Some(UserId(344147139494862)));
        assert_eq!(
            e.kind,
            SymphonyEventKind::ElementsAction {
                stream: StreamId::new("IEj12WoWsfTkiqOBkATdUn___pFXhN9OdA"),
                form_message_id: "BFawdKkxmV0ZQmSuIzgfTX___oyR5yO2bQ".into(),
                form_id: "form_id".into(),
                values: serde_json::json!({"action": "example-button", "id1": "value01"}),
                initiator_email: Some("reed.feldman@symphony.com".into()),
            }
        );
    }

    #[test]
    fn unknown_types_are_kept_as_other() {
        let raw = serde_json::json!({"id": "x", "type": "CONNECTIONREQUESTED", "payload": {}});
        let e = map_event(&raw).expect("mapped");
        assert_eq!(e.kind, SymphonyEventKind::Other { event_type: "CONNECTIONREQUESTED".into() });
        assert!(map_event(&serde_json::json!({"type": "MESSAGESENT"})).is_none());
    }
}
