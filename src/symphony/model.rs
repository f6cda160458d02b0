//! Symphony wire DTOs (the official specs' shapes), tolerant of fields the bot does not use,
//! and the mapping of datafeed `V4Event`s to [`SymphonyEvent`]s.

use serde::Deserialize;
use serde_json::Value;

use crate::domain::{StreamId, UserId};
use crate::events::{MessageAttachment, ReceivedMessage, SymphonyEvent, SymphonyEventKind};

use super::messageml;
use super::wire::{self, Lenient};

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

pub(crate) use super::wire::EventList;

/// Maps one raw `V4Event`. Unknown types become [`SymphonyEventKind::Other`]; an event the bot
/// cannot read at all (no id) is `None`.
pub fn map_event(raw: &Value) -> Option<SymphonyEvent> {
    map_wire_event(wire::Event::deserialize(raw).ok()?)
}

/// [`map_event`] from the event's JSON text, as the datafeed's answer holds it.
pub fn map_event_json(raw: &str) -> Option<SymphonyEvent> {
    let event = match serde_json::from_str::<wire::Event>(raw) {
        Ok(event) => event,
        // Only a key given twice fails a lenient shape: read as a value tree reads it (the
        // last one counts).
        Err(_) => wire::Event::deserialize(&serde_json::from_str::<Value>(raw).ok()?).ok()?,
    };
    map_wire_event(event)
}

fn stream_of<T>(
    entry: &Lenient<T>,
    stream: impl Fn(&T) -> &Lenient<wire::Stream>,
) -> Option<StreamId> {
    let id = stream(entry.get()?).get()?.stream_id.get()?;
    Some(StreamId::new(id))
}

fn user_id(user: Option<&wire::User>) -> Option<UserId> {
    user?.user_id.get().copied().map(UserId)
}

fn membership(entry: &Lenient<wire::Membership>) -> Option<(StreamId, UserId)> {
    let m = entry.get()?;
    Some((stream_of(entry, |m| &m.stream)?, user_id(m.affected_user.get())?))
}

fn map_wire_event(event: wire::Event) -> Option<SymphonyEvent> {
    let id = event.id.0?;
    let kind_name = event.kind.0.unwrap_or_default();
    let user = event.initiator.0.and_then(|i| i.user.0);
    let initiator = user_id(user.as_ref());
    let p = event.payload.0.unwrap_or_default();
    let message = p.message_sent.get().and_then(|m| m.message.get());
    // A message's own timestamp (its ingestion by the pod) is the one the message history gives
    // too: events of one room are ordered by it whichever way they came (datafeed, catch-up).
    let timestamp = message
        .and_then(|m| m.timestamp.get())
        .or(event.timestamp.get())
        .copied()
        .unwrap_or_default();
    let other = || SymphonyEventKind::Other { event_type: kind_name.clone() };
    let kind = match kind_name.as_str() {
        "MESSAGESENT" => {
            let message = p.message_sent.0.and_then(|m| m.message.0);
            match message.and_then(|m| map_wire_message(m, initiator)) {
                Some(msg) => SymphonyEventKind::MessageSent(msg),
                None => other(),
            }
        }
        "INSTANTMESSAGECREATED" => stream_of(&p.instant_message_created, |e| &e.stream)
            .map_or_else(other, |stream| SymphonyEventKind::InstantMessageCreated { stream }),
        "ROOMCREATED" => match stream_of(&p.room_created, |e| &e.stream) {
            Some(stream) => SymphonyEventKind::RoomCreated {
                stream,
                name: p.room_created.get().and_then(|e| e.room_properties.get()?.name.0.clone()),
            },
            None => other(),
        },
        "ROOMUPDATED" => match stream_of(&p.room_updated, |e| &e.stream) {
            Some(stream) => SymphonyEventKind::RoomUpdated {
                stream,
                name: p.room_updated.get().and_then(|e| {
                    e.new_room_properties
                        .get()
                        .and_then(|r| r.name.0.clone())
                        .or_else(|| e.stream.get()?.room_name.0.clone())
                }),
            },
            None => other(),
        },
        "ROOMDEACTIVATED" => stream_of(&p.room_deactivated, |e| &e.stream)
            .map_or_else(other, |stream| SymphonyEventKind::RoomDeactivated { stream }),
        "ROOMREACTIVATED" => stream_of(&p.room_reactivated, |e| &e.stream)
            .map_or_else(other, |stream| SymphonyEventKind::RoomReactivated { stream }),
        "USERJOINEDROOM" => membership(&p.user_joined_room).map_or_else(other, |(stream, user)| {
            SymphonyEventKind::UserJoinedRoom { stream, user }
        }),
        "USERLEFTROOM" => membership(&p.user_left_room)
            .map_or_else(other, |(stream, user)| SymphonyEventKind::UserLeftRoom { stream, user }),
        "ROOMMEMBERPROMOTEDTOOWNER" => {
            membership(&p.room_member_promoted_to_owner).map_or_else(other, |(stream, user)| {
                SymphonyEventKind::MemberPromotedToOwner { stream, user }
            })
        }
        "ROOMMEMBERDEMOTEDFROMOWNER" => {
            membership(&p.room_member_demoted_from_owner).map_or_else(other, |(stream, user)| {
                SymphonyEventKind::MemberDemotedFromOwner { stream, user }
            })
        }
        "SYMPHONYELEMENTSACTION" => {
            let stream = stream_of(&p.symphony_elements_action, |a| &a.stream);
            match (stream, p.symphony_elements_action.0) {
                (Some(stream), Some(a)) => match a.form_message_id.0 {
                    Some(form_message_id) => SymphonyEventKind::ElementsAction {
                        stream,
                        form_message_id,
                        form_id: a.form_id.0.unwrap_or_default(),
                        values: a.form_values.0.unwrap_or(Value::Null),
                        initiator_email: user.as_ref().and_then(|u| u.email.0.clone()),
                    },
                    None => other(),
                },
                _ => other(),
            }
        }
        _ => other(),
    };
    // The user a membership event is about, by name (the payload has the one entry).
    let affected_name = [
        &p.room_member_demoted_from_owner,
        &p.room_member_promoted_to_owner,
        &p.user_joined_room,
        &p.user_left_room,
    ]
    .into_iter()
    .find_map(|m| m.get())
    .and_then(|m| m.affected_user.get()?.display_name.0.clone());
    Some(SymphonyEvent { id, timestamp, initiator, affected_name, kind })
}

/// Maps one `V4Message` (one of the message history's).
pub(crate) fn map_message(m: &Value, initiator: Option<UserId>) -> Option<ReceivedMessage> {
    map_wire_message(wire::Message::deserialize(m).ok()?, initiator)
}

fn map_wire_message(m: wire::Message, initiator: Option<UserId>) -> Option<ReceivedMessage> {
    let presentation_ml = m.message.0?;
    let data = m.data.0;
    let stream = m.stream.0?;
    let user = m.user.0;
    let parsed = messageml::parse(&presentation_ml, data.as_deref()).ok();
    Some(ReceivedMessage {
        message_id: m.message_id.0?,
        stream: StreamId::new(stream.stream_id.0?),
        stream_type: stream.stream_type.0,
        sender: user_id(user.as_ref()).or(initiator)?,
        sender_name: user.as_ref().and_then(|u| u.display_name.0.clone()),
        sender_email: user.and_then(|u| u.email.0),
        text: parsed.as_ref().map(|p| p.text.clone()).unwrap_or_default(),
        mentions: parsed.map(|p| p.mentions).unwrap_or_default(),
        presentation_ml,
        data,
        attachments: m
            .attachments
            .0
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| {
                Some(MessageAttachment {
                    id: a.id.0?,
                    name: a.name.0.unwrap_or_default(),
                    size: a.size.0,
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

    /// The datafeed's text and the value tree (history, tests) read an event alike.
    fn mapped_both_ways(raw: &str) -> Option<SymphonyEvent> {
        let value: Value = serde_json::from_str(raw).expect("JSON");
        let from_text = map_event_json(raw);
        assert_eq!(from_text, map_event(&value), "{raw}");
        from_text
    }

    #[test]
    fn a_field_of_another_type_is_as_absent_and_the_event_still_maps() {
        let message = |user: &str, extra: &str| {
            format!(
                r#"{{"id": "e1", "type": "MESSAGESENT", "timestamp": 5, "initiator": {{"user": {{"userId": 7}}}},
                "payload": {{"messageSent": {{"message": {{"messageId": "m1",
                "message": "<div data-format=\"PresentationML\" data-version=\"2.0\">hi</div>",
                "user": {user}, "stream": {{"streamId": "s1", "streamType": 3}}{extra}}}}}}}}}"#
            )
        };
        // A sender id of another type: the initiator is the sender, as the value tree read it.
        let odd = mapped_both_ways(&message(r#"{"userId": "7", "displayName": ["x"]}"#, ""));
        let Some(SymphonyEvent { kind: SymphonyEventKind::MessageSent(m), timestamp, .. }) = odd
        else {
            panic!("not mapped")
        };
        assert_eq!((m.sender, m.sender_name, m.stream_type, timestamp), (UserId(7), None, None, 5));
        assert_eq!(m.text, "hi");
        // Attachments: a list of another type is none, an item without an id is left out.
        let files =
            r#", "attachments": [{"id": "a1", "name": "x.pdf", "size": -1}, {"name": "no id"}, 4]"#;
        let Some(SymphonyEvent { kind: SymphonyEventKind::MessageSent(m), .. }) =
            mapped_both_ways(&message(r#"{"userId": 9}"#, files))
        else {
            panic!("not mapped")
        };
        assert_eq!(
            m.attachments,
            vec![MessageAttachment { id: "a1".into(), name: "x.pdf".into(), size: None }]
        );
        assert_eq!(m.sender, UserId(9));
        for unreadable in [
            r#"{"id": 5, "type": "ROOMUPDATED"}"#,
            r#"{"type": "MESSAGESENT", "payload": {}}"#,
            r#"[{"id": "e1"}]"#,
            r#""e1""#,
        ] {
            assert_eq!(mapped_both_ways(unreadable), None, "{unreadable}");
        }
        // A payload entry of another type: the event is kept, as one of a type the bot skips.
        let other = mapped_both_ways(
            r#"{"id": "e2", "type": "USERJOINEDROOM", "payload": {"userJoinedRoom": []}, "timestamp": 1.5}"#,
        );
        assert!(
            matches!(&other, Some(SymphonyEvent { kind: SymphonyEventKind::Other { event_type }, timestamp: 0, .. }) if event_type == "USERJOINEDROOM"),
            "{other:?}"
        );
    }

    #[test]
    fn a_key_given_twice_counts_once_as_the_value_tree_reads_it() {
        let raw = r#"{"id": "e1", "id": "e2", "type": "ROOMDEACTIVATED",
            "payload": {"roomDeactivated": {"stream": {"streamId": "s1"}}}}"#;
        let event = mapped_both_ways(raw).expect("mapped");
        assert_eq!(event.id, "e2", "the last one counts");
        assert_eq!(event.kind, SymphonyEventKind::RoomDeactivated { stream: StreamId::new("s1") });
    }

    #[test]
    fn a_membership_event_names_its_affected_user() {
        let raw = r#"{"id": "e1", "type": "ROOMMEMBERPROMOTEDTOOWNER", "initiator": {"user": {"userId": 1}},
            "payload": {"roomMemberPromotedToOwner": {"stream": {"streamId": "s1"},
            "affectedUser": {"userId": 2, "displayName": "Bob Smith", "firstName": "Bob"}}}}"#;
        let event = mapped_both_ways(raw).expect("mapped");
        assert_eq!(event.affected_name.as_deref(), Some("Bob Smith"));
        assert_eq!(
            event.kind,
            SymphonyEventKind::MemberPromotedToOwner {
                stream: StreamId::new("s1"),
                user: UserId(2)
            }
        );
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
