//! The simulator's groups and phones as a JSON document and back: what the sandbox saves to
//! survive a restart. Open customer-service windows are kept as their closing time; faults,
//! counters and webhooks not yet delivered are not kept.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::state::{Delivered, Group, JoinRequest, Media, MediaRef, Phone, SimState, now_secs};

/// Bumped when the document changes shape; an unknown version is refused, not guessed at.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    version: u32,
    /// Oldest first.
    groups: Vec<SavedGroup>,
    /// By WhatsApp id.
    phones: std::collections::BTreeMap<String, SavedPhone>,
    /// Uploaded and received files, by media id.
    #[serde(default)]
    media: std::collections::BTreeMap<String, SavedMedia>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedMedia {
    mime_type: String,
    filename: Option<String>,
    data_base64: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedGroup {
    id: String,
    subject: String,
    description: String,
    approval_required: bool,
    created: i64,
    participants: Vec<String>,
    pending: Vec<SavedRequest>,
    removed: Vec<String>,
    invite_code: String,
    active: bool,
    suspended: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    picture: Option<String>,
    /// Pinned messages and until when (unix seconds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pinned: Vec<(String, i64)>,
    /// Unix seconds when the open window closes.
    window_until: Option<i64>,
    messages: Vec<SavedMessage>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedRequest {
    id: String,
    phone: String,
    created: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedPhone {
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    /// When the last 1:1 message was exchanged (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_exchange: Option<i64>,
    inbox: Vec<SavedMessage>,
    #[serde(default)]
    sent: Vec<SavedMessage>,
    window_until: Option<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedMessage {
    id: String,
    from: String,
    group_id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    text: String,
    template: Option<Value>,
    context_id: Option<String>,
    timestamp: i64,
    #[serde(default)]
    media: Option<MediaRef>,
}

/// An open window's end as Unix seconds (`None`: closed).
fn window_to_unix(until: Option<Instant>) -> Option<i64> {
    let left = until?.checked_duration_since(Instant::now())?;
    // Rounded up: a window with a moment left is still open after a restart.
    Some(now_secs() + left.as_secs_f64().ceil() as i64)
}

fn window_from_unix(until: Option<i64>) -> Option<Instant> {
    let left = until? - now_secs();
    (left > 0).then(|| Instant::now().checked_add(Duration::from_secs(left as u64))).flatten()
}

fn save_message(m: &Delivered) -> SavedMessage {
    SavedMessage {
        id: m.id.clone(),
        from: m.from.clone(),
        group_id: m.group_id.clone(),
        kind: m.kind.clone(),
        text: m.text.clone(),
        template: m.template.clone(),
        context_id: m.context_id.clone(),
        timestamp: m.timestamp,
        media: m.media.clone(),
    }
}

fn load_message(m: SavedMessage) -> Delivered {
    Delivered {
        id: m.id,
        from: m.from,
        group_id: m.group_id,
        kind: m.kind,
        text: m.text,
        template: m.template,
        context_id: m.context_id,
        timestamp: m.timestamp,
        media: m.media,
    }
}

/// The simulator's groups and phones.
pub(crate) fn export(st: &SimState) -> Value {
    let groups = st
        .group_order
        .iter()
        .filter_map(|id| st.groups.get(id))
        .map(|g| SavedGroup {
            id: g.id.clone(),
            subject: g.subject.clone(),
            description: g.description.clone(),
            approval_required: g.approval_required,
            created: g.created,
            participants: g.participants.clone(),
            pending: g
                .pending
                .iter()
                .map(|r| SavedRequest {
                    id: r.id.clone(),
                    phone: r.phone.clone(),
                    created: r.created,
                })
                .collect(),
            removed: g.removed.clone(),
            invite_code: g.invite_code.clone(),
            active: g.active,
            suspended: g.suspended,
            picture: g.picture.clone(),
            pinned: g.pinned.clone(),
            window_until: window_to_unix(g.window_until),
            messages: g.messages.iter().map(save_message).collect(),
        })
        .collect();
    let phones = st
        .phones
        .iter()
        .map(|(number, p)| {
            let saved = SavedPhone {
                name: p.name.clone(),
                username: p.username.clone(),
                last_exchange: p.last_exchange.map(|t| now_secs() - t.elapsed().as_secs() as i64),
                inbox: p.inbox.iter().map(save_message).collect(),
                sent: p.sent.iter().map(save_message).collect(),
                window_until: window_to_unix(p.window_until),
            };
            (number.clone(), saved)
        })
        .collect();
    let media = st
        .media
        .iter()
        .map(|(id, m)| {
            let saved = SavedMedia {
                mime_type: m.mime_type.clone(),
                filename: m.filename.clone(),
                data_base64: STANDARD.encode(&m.bytes),
            };
            (id.clone(), saved)
        })
        .collect();
    serde_json::to_value(Snapshot { version: VERSION, groups, phones, media })
        .unwrap_or(Value::Null)
}

/// Replaces the simulator's groups and phones with those of an [`export`]; on a bad document
/// nothing changes.
pub(crate) fn import(st: &mut SimState, document: &Value) -> Result<(), String> {
    let snapshot: Snapshot = serde_json::from_value(document.clone())
        .map_err(|e| format!("not a WhatsApp simulator state: {e}"))?;
    if snapshot.version != VERSION {
        return Err(format!(
            "WhatsApp simulator state version {} is not {VERSION}, the one this build reads",
            snapshot.version
        ));
    }
    let mut order = Vec::new();
    let mut groups = std::collections::HashMap::new();
    for g in snapshot.groups {
        order.push(g.id.clone());
        let group = Group {
            id: g.id.clone(),
            subject: g.subject,
            description: g.description,
            approval_required: g.approval_required,
            created: g.created,
            participants: g.participants,
            pending: g
                .pending
                .into_iter()
                .map(|r| JoinRequest { id: r.id, phone: r.phone, created: r.created })
                .collect(),
            removed: g.removed,
            invite_code: g.invite_code,
            active: g.active,
            suspended: g.suspended,
            picture: g.picture,
            pinned: g.pinned,
            window_until: window_from_unix(g.window_until),
            messages: g.messages.into_iter().map(load_message).collect(),
        };
        groups.insert(g.id, group);
    }
    let phones = snapshot
        .phones
        .into_iter()
        .map(|(number, p)| {
            let phone = Phone {
                name: p.name,
                username: p.username,
                last_exchange: p.last_exchange.and_then(|at| {
                    let ago = u64::try_from(now_secs() - at).unwrap_or(0);
                    Instant::now().checked_sub(Duration::from_secs(ago))
                }),
                inbox: p.inbox.into_iter().map(load_message).collect(),
                sent: p.sent.into_iter().map(load_message).collect(),
                window_until: window_from_unix(p.window_until),
            };
            (number, phone)
        })
        .collect();
    let mut media = std::collections::HashMap::new();
    for (id, m) in snapshot.media {
        let bytes =
            STANDARD.decode(m.data_base64.as_bytes()).map_err(|e| format!("media {id}: {e}"))?;
        let file = Media {
            id: id.clone(),
            mime_type: m.mime_type,
            filename: m.filename,
            bytes: bytes.into(),
        };
        media.insert(id, file);
    }
    st.groups = groups;
    st.group_order = order;
    st.phones = phones;
    st.media = media;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::wa_sim::WhatsAppSimConfig;

    fn sim() -> SimState {
        SimState::new(WhatsAppSimConfig::new("t", "s", "1"))
    }

    fn message(id: &str, from: &str, group: Option<&str>) -> Delivered {
        Delivered {
            id: id.into(),
            from: from.into(),
            group_id: group.map(str::to_owned),
            kind: "text".into(),
            text: format!("text of {id}"),
            template: None,
            context_id: Some("wamid.x".into()),
            timestamp: 1_700_000_000,
            media: None,
        }
    }

    #[test]
    fn groups_phones_and_open_windows_survive_export_and_import() {
        let mut before = sim();
        let open = Instant::now().checked_add(Duration::from_secs(3600));
        for (id, subject) in [("g2", "Second"), ("g1", "First")] {
            before.groups.insert(
                id.into(),
                Group {
                    id: id.into(),
                    subject: subject.into(),
                    description: "d".into(),
                    approval_required: true,
                    created: 5,
                    participants: vec!["447911123456".into()],
                    pending: vec![JoinRequest {
                        id: "r".into(),
                        phone: "447911123457".into(),
                        created: 6,
                    }],
                    removed: vec!["447911123458".into()],
                    invite_code: format!("code{id}"),
                    active: true,
                    suspended: false,
                    picture: None,
                    pinned: Vec::new(),
                    window_until: open,
                    messages: vec![message("m1", "447911123456", Some(id))],
                },
            );
            before.group_order.push(id.into());
        }
        let phone = before.phone("447911123456");
        phone.name = Some("Dana".into());
        phone.inbox.push(message("m2", "business", None));
        phone.sent.push(message("m3", "447911123456", None));
        let file = Media {
            id: "1234567890".into(),
            mime_type: "image/png".into(),
            filename: Some("chart.png".into()),
            bytes: bytes::Bytes::from_static(b"\x89PNG not really"),
        };
        let mut photo = message("m4", "447911123456", None);
        photo.kind = "image".into();
        photo.media = Some(MediaRef::of(&file, Some("chart".into()), None));
        before.phone("447911123457").inbox.push(photo);
        before.media.insert(file.id.clone(), file);
        let saved = export(&before);

        let mut after = sim();
        import(&mut after, &saved).expect("import");
        // Window ends are whole seconds: compared apart, within a second.
        let windows = |v: &mut Value| -> Vec<i64> {
            let groups = v["groups"].as_array_mut().map(|g| g.iter_mut()).into_iter().flatten();
            groups.map(|g| g["windowUntil"].take().as_i64().unwrap_or(0)).collect()
        };
        let (mut again, mut saved) = (export(&after), saved);
        for (a, b) in windows(&mut again).into_iter().zip(windows(&mut saved)) {
            assert!((a - b).abs() <= 1 && a > 0, "{a} vs {b}");
        }
        assert_eq!(again, saved);
        assert_eq!(after.group_order, vec!["g2".to_owned(), "g1".to_owned()]);
        assert_eq!(after.media["1234567890"].bytes.as_ref(), b"\x89PNG not really");
        assert_eq!(saved["phones"]["447911123457"]["inbox"][0]["media"]["filename"], "chart.png");
        assert!(after.groups["g1"].window_open());
        assert_eq!(
            after.find_by_link("https://chat.whatsapp.com/codeg2").map(|g| g.id.as_str()),
            Some("g2")
        );
        assert_eq!(after.profile_name("447911123456"), "Dana");
        assert_eq!(after.phones["447911123456"].sent[0].text, "text of m3");
        assert!(after.phones["447911123456"].window_until.is_none());
    }

    #[test]
    fn a_bad_document_changes_nothing() {
        let mut st = sim();
        st.phone("447911123456").name = Some("Dana".into());
        for bad in [
            serde_json::json!({"version": 2, "groups": [], "phones": {}}),
            serde_json::json!({"version": 1, "groups": {}, "phones": {}}),
        ] {
            assert!(import(&mut st, &bad).is_err(), "{bad}");
            assert_eq!(st.profile_name("447911123456"), "Dana");
        }
    }
}
