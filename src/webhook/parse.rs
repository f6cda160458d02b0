//! Meta's webhook envelope (`object`, `entry[].changes[].field/value`) → [`WhatsAppEvent`]s, each
//! with a key that recognises a redelivery. Tolerant: unknown fields are ignored, unknown change
//! types become `Other`, timestamps may be strings or numbers.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::GroupId;
use crate::events::whatsapp::{
    FailedParticipant, SettingOutcome, WaContact, WaError, WaUser, WhatsAppEvent,
};

/// A parsed event and its deduplication key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    pub key: String,
    pub event: WhatsAppEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("not a WhatsApp Business Account webhook (object = {0:?})")]
    WrongObject(String),
    #[error("the webhook has no entry[] array")]
    NoEntries,
}

fn s(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(x) => Some(x.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn ts(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::String(x) => x.trim().parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn arr<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn errors(v: &Value) -> Vec<WaError> {
    arr(v, "errors")
        .map(|e| WaError {
            code: e.get("code").and_then(Value::as_i64).unwrap_or_default(),
            title: s(e, "title"),
            message: s(e, "message"),
            details: e.get("error_data").and_then(|d| s(d, "details")),
        })
        .collect()
}

fn user(v: &Value) -> WaUser {
    WaUser {
        wa_id: s(v, "wa_id"),
        user_id: s(v, "user_id"),
        username: s(v, "username"),
        input: s(v, "input"),
    }
}

/// A stable hash of a JSON value (serde_json maps are ordered, so equal content hashes equally).
fn digest(v: &Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))[..32].to_owned()
}

/// A setting of a `group_settings_update`: the docs' `{text, update_successful, errors}`, or the
/// v23 spec's flat string (the new value; it succeeded unless the item carries errors).
fn setting(v: Option<&Value>, item_failed: bool) -> Option<SettingOutcome> {
    let v = v?;
    if let Value::String(text) = v {
        return Some(SettingOutcome {
            text: Some(text.clone()),
            successful: !item_failed,
            errors: Vec::new(),
        });
    }
    Some(SettingOutcome {
        text: s(v, "text"),
        successful: v.get("update_successful").and_then(Value::as_bool).unwrap_or(false),
        errors: errors(v),
    })
}

fn group_item(field: &str, g: &Value) -> WhatsAppEvent {
    let kind = s(g, "type");
    let group_id = s(g, "group_id").map(GroupId);
    let request_id = s(g, "request_id");
    let other = || WhatsAppEvent::Other { field: field.to_owned(), kind: kind.clone() };
    let Some(group) = group_id else {
        return match kind.as_deref() {
            Some("group_create") => WhatsAppEvent::GroupCreateFailed {
                request_id,
                subject: s(g, "subject"),
                errors: errors(g),
            },
            _ => other(),
        };
    };
    match kind.as_deref() {
        Some("group_create") if g.get("errors").is_some() => WhatsAppEvent::GroupCreateFailed {
            request_id,
            subject: s(g, "subject"),
            errors: errors(g),
        },
        Some("group_create") => WhatsAppEvent::GroupCreated {
            request_id,
            group_id: group,
            subject: s(g, "subject"),
            invite_link: s(g, "invite_link"),
            join_approval_mode: s(g, "join_approval_mode"),
        },
        Some("group_delete") => {
            WhatsAppEvent::GroupDeleted { request_id, group_id: group, errors: errors(g) }
        }
        // The v23 spec's names are accepted beside the documented ones.
        Some("group_participants_add" | "group_add_participants") => {
            WhatsAppEvent::ParticipantsAdded {
                group_id: group,
                reason: s(g, "reason"),
                participants: arr(g, "added_participants").map(user).collect(),
            }
        }
        Some("group_participants_remove" | "group_remove_participants") => {
            WhatsAppEvent::ParticipantsRemoved {
                group_id: group,
                request_id,
                initiated_by: s(g, "initiated_by"),
                removed: arr(g, "removed_participants").map(user).collect(),
                failed: arr(g, "failed_participants")
                    .map(|f| FailedParticipant { input: s(f, "input"), errors: errors(f) })
                    .collect(),
                errors: errors(g),
            }
        }
        Some("group_join_request_created") => match s(g, "join_request_id") {
            Some(join_request_id) => WhatsAppEvent::JoinRequestCreated {
                group_id: group,
                join_request_id,
                user: user(g),
                reason: s(g, "reason"),
            },
            None => other(),
        },
        Some("group_join_request_revoked") => match s(g, "join_request_id") {
            Some(join_request_id) => WhatsAppEvent::JoinRequestRevoked {
                group_id: group,
                join_request_id,
                user: user(g),
            },
            None => other(),
        },
        Some("group_settings_update") => WhatsAppEvent::SettingsUpdated {
            group_id: group,
            request_id,
            subject: setting(
                g.get("group_subject").or_else(|| g.get("subject")),
                !errors(g).is_empty(),
            ),
            description: setting(
                g.get("group_description").or_else(|| g.get("description")),
                !errors(g).is_empty(),
            ),
            errors: errors(g),
        },
        Some("group_suspend") => WhatsAppEvent::GroupSuspended { group_id: group },
        Some("group_suspend_cleared") => WhatsAppEvent::GroupSuspendCleared { group_id: group },
        _ => other(),
    }
}

fn message(m: &Value, contacts: &[Value]) -> Option<WhatsAppEvent> {
    let id = s(m, "id")?;
    let from =
        WaUser { wa_id: s(m, "from"), user_id: s(m, "from_user_id"), username: None, input: None };
    // The sender's profile: the contact whose wa_id or user_id matches, else the only one.
    let contact = contacts
        .iter()
        .find(|c| {
            (from.wa_id.is_some() && s(c, "wa_id") == from.wa_id)
                || (from.user_id.is_some() && s(c, "user_id") == from.user_id)
        })
        .or(if contacts.len() == 1 { contacts.first() } else { None });
    let profile_name = contact.and_then(|c| c.get("profile")).and_then(|p| s(p, "name"));
    let username = contact.and_then(|c| c.get("profile")).and_then(|p| s(p, "username"));
    let kind = s(m, "type").unwrap_or_else(|| "unknown".into());
    let body = m.get(&kind);
    Some(WhatsAppEvent::Message {
        id,
        from: WaUser { username, ..from },
        profile_name,
        group_id: s(m, "group_id").map(GroupId),
        context_id: m.get("context").and_then(|c| s(c, "id")),
        timestamp: ts(m, "timestamp"),
        text: if kind == "text" { body.and_then(|b| s(b, "body")) } else { None },
        media_id: body.and_then(|b| s(b, "id")),
        caption: body.and_then(|b| s(b, "caption")),
        mime_type: body.and_then(|b| s(b, "mime_type")),
        filename: body.and_then(|b| s(b, "filename")),
        kind,
        errors: errors(m),
    })
}

fn status(st: &Value, contacts: &[Value]) -> Option<WhatsAppEvent> {
    let mut participant_id =
        s(st, "recipient_participant_id").or_else(|| s(st, "participant_recipient_id"));
    let participant_user = s(st, "recipient_participant_user_id");
    let mut recipient_id = s(st, "recipient_id");
    let mut recipient_type = s(st, "recipient_type");
    // The v23 spec's shape of a group status: `group_id` beside `recipient_id` = the participant.
    if let Some(group) = s(st, "group_id") {
        if recipient_id.as_deref() != Some(group.as_str()) {
            participant_id = participant_id.or(recipient_id.take());
        }
        recipient_id = Some(group);
        recipient_type = Some("group".to_owned());
    }
    Some(WhatsAppEvent::Status {
        message_id: s(st, "id")?,
        status: s(st, "status")?,
        recipient_id,
        recipient_type,
        participant: (participant_id.is_some() || participant_user.is_some()).then_some(WaUser {
            wa_id: participant_id,
            user_id: participant_user,
            username: None,
            input: None,
        }),
        timestamp: ts(st, "timestamp"),
        errors: errors(st),
        contact: status_contact(st, contacts),
    })
}

/// The recipient's profile in a status's `contacts`: the one whose number is the recipient's,
/// else the only one.
fn status_contact(st: &Value, contacts: &[Value]) -> Option<WaContact> {
    let recipient = s(st, "recipient_id");
    let c = contacts
        .iter()
        .find(|c| recipient.is_some() && s(c, "wa_id") == recipient)
        .or(if contacts.len() == 1 { contacts.first() } else { None })?;
    let profile = c.get("profile");
    Some(WaContact {
        user: WaUser {
            wa_id: s(c, "wa_id"),
            user_id: s(c, "user_id"),
            username: profile.and_then(|p| s(p, "username")),
            input: None,
        },
        name: profile.and_then(|p| s(p, "name")),
    })
}

/// Whose webhooks the bot takes: one Meta app can serve several numbers (and WABAs); the
/// others' changes are acknowledged and ignored.
#[derive(Debug, Clone, Default)]
pub struct Ours<'a> {
    /// `metadata.phone_number_id` of the changes to keep (empty: keep all).
    pub phone_number_id: &'a str,
    /// `entry[].id` (the WABA) to keep, when configured.
    pub waba_id: Option<&'a str>,
}

impl Ours<'_> {
    fn entry(&self, entry: &Value) -> bool {
        match (self.waba_id, s(entry, "id")) {
            (Some(ours), Some(id)) => ours == id,
            _ => true,
        }
    }

    fn change(&self, value: &Value) -> bool {
        let id = value.get("metadata").and_then(|m| s(m, "phone_number_id"));
        match id {
            Some(id) => self.phone_number_id.is_empty() || id == self.phone_number_id,
            None => true, // changes without metadata (account-level) are not a number's
        }
    }
}

/// Parses a webhook body (already authenticated) into keyed events.
pub fn parse(body: &[u8]) -> Result<Vec<Keyed>, ParseError> {
    parse_ours(body, &Ours::default())
}

/// [`parse`], keeping only the changes of our number (and WABA).
pub fn parse_ours(body: &[u8], ours: &Ours<'_>) -> Result<Vec<Keyed>, ParseError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let object = s(&root, "object").unwrap_or_default();
    if object != "whatsapp_business_account" {
        return Err(ParseError::WrongObject(object));
    }
    let entries = root.get("entry").and_then(Value::as_array).ok_or(ParseError::NoEntries)?;
    let mut out = Vec::new();
    for entry in entries {
        if !ours.entry(entry) {
            tracing::info!("webhook entry of another WhatsApp Business Account ignored");
            continue;
        }
        for change in arr(entry, "changes") {
            let field = s(change, "field").unwrap_or_default();
            let value = change.get("value").cloned().unwrap_or(Value::Null);
            if !ours.change(&value) {
                tracing::info!(%field, "webhook change for another phone number ignored");
                continue;
            }
            let mut produced = false;
            for g in arr(&value, "groups") {
                produced = true;
                out.push(Keyed {
                    key: format!("{field}:{}", digest(g)),
                    event: group_item(&field, g),
                });
            }
            let contacts: Vec<Value> = arr(&value, "contacts").cloned().collect();
            for m in arr(&value, "messages") {
                produced = true;
                match message(m, &contacts) {
                    Some(event) => {
                        let key = match &event {
                            WhatsAppEvent::Message { id, .. } => format!("message:{id}"),
                            _ => format!("message:{}", digest(m)),
                        };
                        out.push(Keyed { key, event });
                    }
                    None => tracing::warn!("webhook message without an id skipped"),
                }
            }
            for st in arr(&value, "statuses") {
                produced = true;
                match status(st, &contacts) {
                    Some(event) => out.push(Keyed { key: format!("status:{}", digest(st)), event }),
                    None => tracing::warn!("webhook status without id/status skipped"),
                }
            }
            if !produced {
                tracing::info!(%field, "webhook change of a kind the bot does not use");
                out.push(Keyed {
                    key: format!("{field}:{}", digest(change)),
                    event: WhatsAppEvent::Other { field: field.clone(), kind: None },
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD";

    fn one(name: &str) -> WhatsAppEvent {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/webhooks")
            .join(name);
        let body = std::fs::read(&path).expect("fixture");
        let mut events = parse(&body).expect("parses");
        assert_eq!(events.len(), 1, "{name}");
        events.remove(0).event
    }

    fn g() -> GroupId {
        GroupId(G.into())
    }

    fn jane() -> WaUser {
        WaUser {
            wa_id: Some("447911123456".into()),
            user_id: Some("GB.13491208655302741918".into()),
            username: None,
            input: None,
        }
    }

    #[test]
    fn every_group_webhook_type_parses() {
        assert_eq!(
            one("group_create.json"),
            WhatsAppEvent::GroupCreated {
                request_id: Some("6f8d2a4b-req-0001".into()),
                group_id: g(),
                subject: Some("Q3 review".into()),
                invite_link: Some("https://chat.whatsapp.com/LINKID0001".into()),
                join_approval_mode: Some("approval_required".into()),
            }
        );
        assert!(matches!(one("group_create_failed.json"),
            WhatsAppEvent::GroupCreateFailed { request_id: Some(r), errors, .. } if r == "6f8d2a4b-req-0002" && errors[0].code == 131214));
        assert_eq!(
            one("group_delete.json"),
            WhatsAppEvent::GroupDeleted {
                request_id: Some("6f8d2a4b-req-0003".into()),
                group_id: g(),
                errors: vec![]
            }
        );
        assert_eq!(
            one("group_participants_add.json"),
            WhatsAppEvent::ParticipantsAdded {
                group_id: g(),
                reason: Some("invite_link".into()),
                participants: vec![WaUser { input: Some("447911123456".into()), ..jane() }],
            }
        );
        assert_eq!(
            one("group_join_request_created.json"),
            WhatsAppEvent::JoinRequestCreated {
                group_id: g(),
                join_request_id: "MTIzNDU2Nzg5MDEyMzQ1Njc4".into(),
                user: jane(),
                reason: Some("admin_approval".into())
            }
        );
        assert_eq!(
            one("group_join_request_revoked.json"),
            WhatsAppEvent::JoinRequestRevoked {
                group_id: g(),
                join_request_id: "MTIzNDU2Nzg5MDEyMzQ1Njc4".into(),
                user: jane()
            }
        );
        let WhatsAppEvent::ParticipantsRemoved {
            initiated_by,
            removed,
            failed,
            errors,
            request_id,
            ..
        } = one("group_participants_remove_business.json")
        else {
            panic!()
        };
        assert_eq!(
            (initiated_by.as_deref(), request_id.as_deref()),
            (Some("business"), Some("6f8d2a4b-req-0004"))
        );
        assert_eq!(removed[0].input.as_deref(), Some("447911123456"));
        assert_eq!(
            (failed[0].input.as_deref(), failed[0].errors[0].code),
            (Some("447911123457"), 131212)
        );
        assert_eq!(errors[0].code, 131201);
        let WhatsAppEvent::ParticipantsRemoved { initiated_by, removed, .. } =
            one("group_participants_remove_left.json")
        else {
            panic!()
        };
        assert_eq!(initiated_by.as_deref(), Some("participant"));
        assert_eq!(removed[0].user_id.as_deref(), Some("GB.55501208655302741999"));
        let WhatsAppEvent::SettingsUpdated { subject, description, .. } =
            one("group_settings_update.json")
        else {
            panic!()
        };
        assert_eq!(
            subject.map(|s| (s.text, s.successful)),
            Some((Some("Q3 review (FX)".into()), true))
        );
        assert_eq!(description.map(|d| (d.successful, d.errors.len())), Some((false, 1)));
        // The v23 spec's flat shape: the new values, successful.
        let WhatsAppEvent::SettingsUpdated { group_id, request_id, subject, description, errors } =
            one("group_settings_update_flat.json")
        else {
            panic!()
        };
        assert_eq!((group_id, request_id.as_deref()), (g(), Some("6f8d2a4b-req-0009")));
        assert_eq!(
            subject.map(|s| (s.text, s.successful)),
            Some((Some("Q3 review (FX)".into()), true))
        );
        assert_eq!(
            description.map(|d| (d.text, d.successful)),
            Some((Some("Symphony: Ann, Bob".into()), true))
        );
        assert!(errors.is_empty());
        assert_eq!(one("group_suspend.json"), WhatsAppEvent::GroupSuspended { group_id: g() });
        assert_eq!(
            one("group_suspend_cleared.json"),
            WhatsAppEvent::GroupSuspendCleared { group_id: g() }
        );
    }

    #[test]
    fn messages_and_statuses_parse() {
        let WhatsAppEvent::Message {
            from,
            profile_name,
            group_id,
            context_id,
            text,
            timestamp,
            kind,
            ..
        } = one("group_message.json")
        else {
            panic!()
        };
        assert_eq!(from, jane());
        assert_eq!(profile_name.as_deref(), Some("Jane Doe"));
        assert_eq!(group_id, Some(g()));
        assert_eq!(
            context_id.as_deref(),
            Some("wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA")
        );
        assert_eq!(
            (text.as_deref(), timestamp, kind.as_str()),
            (Some("Morning all"), Some(1750270100), "text")
        );
        let WhatsAppEvent::Message { group_id, timestamp, text, .. } = one("direct_message.json")
        else {
            panic!()
        };
        assert_eq!(
            (group_id, timestamp, text.as_deref()),
            (None, Some(1750270200), Some("Hi, got the invite"))
        );
        let WhatsAppEvent::Message { kind, text, media_id, caption, mime_type, filename, .. } =
            one("group_document_message.json")
        else {
            panic!()
        };
        assert_eq!((kind.as_str(), text), ("document", None));
        assert_eq!(
            (media_id.as_deref(), caption.as_deref(), mime_type.as_deref(), filename.as_deref()),
            (
                Some("1003383421387256"),
                Some("Signed copy"),
                Some("application/pdf"),
                Some("receipt.pdf")
            )
        );
        let WhatsAppEvent::Status { status, errors, recipient_type, .. } =
            one("status_failed.json")
        else {
            panic!()
        };
        assert_eq!(
            (status.as_str(), recipient_type.as_deref(), errors[0].code),
            ("failed", Some("group"), 131047)
        );
        let WhatsAppEvent::Status { participant, .. } = one("status_read_group.json") else {
            panic!()
        };
        assert_eq!(participant, Some(jane()));
        // The v23 spec's shape: `group_id`, and `recipient_id` is the participant.
        let WhatsAppEvent::Status { recipient_id, recipient_type, participant, status, .. } =
            one("status_delivered_group_spec.json")
        else {
            panic!()
        };
        assert_eq!(status, "delivered");
        assert_eq!(recipient_id.as_deref(), Some(G));
        assert_eq!(recipient_type.as_deref(), Some("group"));
        assert_eq!(participant.and_then(|p| p.wa_id).as_deref(), Some("447911123456"));
    }

    #[test]
    fn unknown_changes_are_kept_and_bad_bodies_refused() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"account_update","value":{"event":"X","extra":1}}]}]}"#;
        let events = parse(body).expect("parses");
        assert_eq!(
            events[0].event,
            WhatsAppEvent::Other { field: "account_update".into(), kind: None }
        );
        assert!(matches!(parse(b"{"), Err(ParseError::NotJson(_))));
        assert!(matches!(
            parse(br#"{"object":"page","entry":[]}"#),
            Err(ParseError::WrongObject(_))
        ));
        assert!(matches!(
            parse(br#"{"object":"whatsapp_business_account"}"#),
            Err(ParseError::NoEntries)
        ));
    }

    #[test]
    fn the_same_content_gives_the_same_key() {
        let body = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/webhooks/group_create.json"),
        )
        .expect("fixture");
        let a = parse(&body).expect("a");
        let reencoded = serde_json::to_vec(&serde_json::from_slice::<Value>(&body).expect("json"))
            .expect("bytes");
        assert_eq!(a[0].key, parse(&reencoded).expect("b")[0].key);
        let msg = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/webhooks/group_message.json"),
        )
        .expect("fixture");
        assert_eq!(
            parse(&msg).expect("m")[0].key,
            "message:wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
        );
    }

    #[test]
    fn changes_of_another_number_or_waba_are_ignored() {
        let body = br#"{"object":"whatsapp_business_account","entry":[
            {"id":"W1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"111"},
              "messages":[{"id":"wamid.A","from":"447911123456","type":"text","text":{"body":"ours"}}]}}]},
            {"id":"W1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"222"},
              "messages":[{"id":"wamid.B","from":"447911123456","type":"text","text":{"body":"not ours"}}]}}]},
            {"id":"W2","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"111"},
              "messages":[{"id":"wamid.C","from":"447911123456","type":"text","text":{"body":"other waba"}}]}}]}]}"#;
        let keys = |ours: Ours<'_>| -> Vec<String> {
            parse_ours(body, &ours).expect("parsed").into_iter().map(|k| k.key).collect()
        };
        assert_eq!(keys(Ours::default()).len(), 3, "without a configured number, all are kept");
        assert_eq!(
            keys(Ours { phone_number_id: "111", waba_id: None }),
            vec!["message:wamid.A", "message:wamid.C"]
        );
        assert_eq!(
            keys(Ours { phone_number_id: "111", waba_id: Some("W1") }),
            vec!["message:wamid.A"]
        );
    }
}
