//! The mock pod's streams, members and messages as a JSON document and back: what the sandbox
//! saves to survive a restart. Sessions, datafeeds and faults are not kept (a bot logs in and
//! creates its feed again).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::state::{Member, PodState, StoredAttachment, StoredMessage, Stream, StreamKind};

/// Bumped when the document changes shape; an unknown version is refused, not guessed at.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    version: u32,
    streams: Vec<SavedStream>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedStream {
    id: String,
    /// `IM` or `ROOM`.
    #[serde(rename = "type")]
    kind: String,
    name: String,
    description: String,
    active: bool,
    created_by: i64,
    created_at: i64,
    members: Vec<SavedMember>,
    messages: Vec<SavedMessage>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedMember {
    user_id: i64,
    owner: bool,
    join_date: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedMessage {
    message_id: String,
    timestamp: i64,
    user_id: i64,
    #[serde(rename = "presentationML")]
    presentation_ml: String,
    data: String,
    text: String,
    #[serde(default)]
    attachments: Vec<SavedAttachment>,
    /// Its Elements forms, so that a form posted before a restart can be submitted after it.
    #[serde(default)]
    forms: Vec<super::presentation::FormSpec>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedAttachment {
    id: String,
    name: String,
    content_type: String,
    data_base64: String,
}

/// The pod's streams, oldest first.
pub(crate) fn export(st: &PodState) -> Value {
    let mut streams: Vec<&Stream> = st.streams.values().collect();
    streams.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    let snapshot = Snapshot {
        version: VERSION,
        streams: streams
            .into_iter()
            .map(|s| SavedStream {
                id: s.id.clone(),
                kind: s.kind.as_str().to_owned(),
                name: s.name.clone(),
                description: s.description.clone(),
                active: s.active,
                created_by: s.created_by,
                created_at: s.created_at,
                members: s
                    .members
                    .iter()
                    .map(|m| SavedMember {
                        user_id: m.user,
                        owner: m.owner,
                        join_date: m.join_date,
                    })
                    .collect(),
                messages: s
                    .messages
                    .iter()
                    .map(|m| SavedMessage {
                        message_id: m.message_id.clone(),
                        timestamp: m.timestamp,
                        user_id: m.user,
                        presentation_ml: m.presentation_ml.clone(),
                        data: m.data.clone(),
                        text: m.text.clone(),
                        attachments: m
                            .attachments
                            .iter()
                            .map(|a| SavedAttachment {
                                id: a.id.clone(),
                                name: a.name.clone(),
                                content_type: a.content_type.clone(),
                                data_base64: STANDARD.encode(&a.bytes),
                            })
                            .collect(),
                        forms: m.forms.clone(),
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_value(snapshot).unwrap_or(Value::Null)
}

/// Replaces the pod's streams with those of an [`export`]; on a bad document nothing changes.
pub(crate) fn import(st: &mut PodState, document: &Value) -> Result<(), String> {
    let snapshot: Snapshot = serde_json::from_value(document.clone())
        .map_err(|e| format!("not a mock pod state: {e}"))?;
    if snapshot.version != VERSION {
        return Err(format!(
            "mock pod state version {} is not {VERSION}, the one this build reads",
            snapshot.version
        ));
    }
    let mut streams = std::collections::HashMap::new();
    for s in snapshot.streams {
        let kind = match s.kind.as_str() {
            "IM" => StreamKind::Im,
            "ROOM" => StreamKind::Room,
            other => return Err(format!("stream {}: unknown type {other:?}", s.id)),
        };
        let stream = Stream {
            id: s.id.clone(),
            kind,
            name: s.name,
            description: s.description,
            active: s.active,
            created_by: s.created_by,
            created_at: s.created_at,
            members: s
                .members
                .into_iter()
                .map(|m| Member { user: m.user_id, owner: m.owner, join_date: m.join_date })
                .collect(),
            messages: s
                .messages
                .into_iter()
                .map(|m| -> Result<StoredMessage, String> {
                    Ok(StoredMessage {
                        message_id: m.message_id,
                        timestamp: m.timestamp,
                        user: m.user_id,
                        presentation_ml: m.presentation_ml,
                        data: m.data,
                        text: m.text,
                        attachments: m
                            .attachments
                            .into_iter()
                            .map(|a| {
                                let bytes = STANDARD
                                    .decode(a.data_base64.as_bytes())
                                    .map_err(|e| format!("attachment {}: {e}", a.id))?;
                                Ok(StoredAttachment {
                                    id: a.id,
                                    name: a.name,
                                    content_type: a.content_type,
                                    bytes: bytes.into(),
                                })
                            })
                            .collect::<Result<_, String>>()?,
                        forms: m.forms,
                    })
                })
                .collect::<Result<_, String>>()?,
        };
        streams.insert(s.id, stream);
    }
    st.streams = streams;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::mock_pod::{MockPodConfig, MockUser, UserKind};

    fn pod() -> PodState {
        let user = |id: i64, name: &str| MockUser {
            id,
            username: name.to_lowercase(),
            display_name: name.into(),
            email: format!("{id}@example.com"),
            kind: UserKind::Normal,
            public_key_pem: None,
        };
        PodState::new(MockPodConfig::new(vec![user(1, "Ann"), user(2, "Ben")]))
    }

    #[test]
    fn streams_members_and_messages_survive_export_and_import() {
        let mut before = pod();
        let im = before.create_im(1, vec![1, 2]).expect("im");
        let room = before.create_room(1, "Desk", "about").expect("room");
        before.membership(1, &room, "add", 2).expect("add");
        before.membership(1, &room, "promoteOwner", 2).expect("promote");
        let names = |id: i64| (id == 2).then(|| "Ben".to_owned());
        let hello = super::super::presentation::render(
            "<messageML>Hi <mention uid=\"2\"/> &amp; all</messageML>",
            None,
            &names,
        )
        .expect("render");
        before.post(1, &room, hello, Vec::new()).expect("post");
        before.set_active(1, &im, false).expect("deactivate");
        let saved = export(&before);

        let mut after = pod();
        import(&mut after, &saved).expect("import");
        assert_eq!(export(&after), saved);
        let r = &after.streams[&room];
        assert_eq!((r.name.as_str(), r.kind, r.active), ("Desk", StreamKind::Room, true));
        assert!(r.is_owner(2));
        assert_eq!(r.messages[0].text, "Hi @Ben & all");
        assert!(!after.streams[&im].active);
        // An IM between the same people is found again, not made twice.
        assert_eq!(after.create_im(2, vec![1]).expect("im"), im);
    }

    #[test]
    fn a_bad_document_changes_nothing() {
        let mut st = pod();
        let room = st.create_room(1, "Keep", "").expect("room");
        for bad in [
            serde_json::json!({"version": 99, "streams": []}),
            serde_json::json!({"streams": "nope"}),
            serde_json::json!({"version": 1, "streams": [{"id": "x", "type": "CHANNEL", "name": "",
                "description": "", "active": true, "createdBy": 1, "createdAt": 0,
                "members": [], "messages": []}]}),
        ] {
            assert!(import(&mut st, &bad).is_err(), "{bad}");
            assert!(st.streams.contains_key(&room));
        }
    }
}
