//! Fidelity of the WhatsApp simulator: pywa (a real third-party Cloud API client with the Groups
//! API, pinned 4.5.0 from PyPI) makes every Groups call it offers against it: create, list, read,
//! update settings (multipart), invite link get/reset, join requests list/approve/reject (a
//! partial rejection: 206), remove participants (by phone and by BSUID), send to the group, pin
//! and unpin a message, and delete; the webhooks that follow reach the bot's own receiver.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use wa_groups_bot::events::WhatsAppEvent;

use crate::support::{WA_PHONE_ID, WA_TOKEN, python::venv_python, start_receiver, start_sim};

const PYWA: &str = "pywa==4.5.0";
const ANN: &str = "447911123456";
const BEN: &str = "447911123457";
const CAT: &str = "447911123458";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pywa_manages_a_group_on_the_simulator() {
    let python = tokio::task::spawn_blocking(|| venv_python("pywa", &[PYWA])).await.expect("venv");
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pywa/groups.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args([sim.url(), WA_TOKEN.to_owned(), WA_PHONE_ID.to_owned(), sim.url()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("pywa finished in time")
        .expect("pywa ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pywa failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: HashMap<String, Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_str()?.to_owned(), v["value"].clone())))
        .collect();

    let request_id = steps["created"].as_str().expect("request id").to_owned();
    let group = steps["group"].as_str().expect("group id").to_owned();
    let cat_bsuid = steps["cat"].as_str().expect("cat's user id").to_owned();
    // The request id pywa got back is the one the group_create webhook carries.
    let created = rx
        .wait_event("group_create", |e| match e {
            WhatsAppEvent::GroupCreated { request_id: Some(r), group_id, invite_link, .. }
                if *r == request_id =>
            {
                Some((group_id.clone(), invite_link.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(created.0.as_str(), group);
    assert_eq!(steps["link"].as_str(), created.1.as_deref());

    // get_groups: the simulator answers the spec's `data.groups`, which pywa 4.5 reads as a flat
    // `data` list; its own API layer shows the group, its typed result cannot be built.
    assert_eq!(steps["list_raw"], json!([group]));
    assert_eq!(steps["list"], json!({"error": "TypeError"}), "pywa now parses data.groups?");

    // Three phones tap; the username user is known by BSUID only.
    assert_eq!(steps["tapped"], json!(["requested", "requested", "requested"]));
    assert_eq!(
        steps["requests"],
        json!([
            {"wa_id": ANN, "bsuid": format!("ZZ.{ANN}0000")},
            {"wa_id": BEN, "bsuid": format!("ZZ.{BEN}0000")},
            {"wa_id": null, "bsuid": cat_bsuid},
        ])
    );
    let cat_request = rx
        .wait_event("cat's join request", |e| match e {
            WhatsAppEvent::JoinRequestCreated { user, .. }
                if user.user_id == Some(cat_bsuid.clone()) =>
            {
                Some(user.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!((cat_request.wa_id, cat_request.username.as_deref()), (None, Some("cat.doe")));

    assert_eq!(steps["approved"], json!({"status": 200, "participants": [ANN, CAT]}));
    // One of the two rejections names no request: 206, and the real one is gone.
    assert_eq!(steps["rejected"]["status"], 206);
    assert!(steps["rejected"]["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(steps["rejected"]["pending"], json!([]));

    assert_eq!(
        steps["details"],
        json!({"id": group, "subject": "pywa team", "description": "made by pywa",
               "mode": "approval_required", "suspended": false, "count": 2,
               "participants": [[ANN, format!("ZZ.{ANN}0000")], [null, cat_bsuid]]})
    );

    // update_group_settings always sends multipart; the webhook answers its request id.
    assert_eq!(steps["settings"]["type"], "multipart/form-data");
    assert_eq!(steps["settings"]["status"], 200);
    let settings_request = steps["settings"]["request_id"].as_str().expect("request id").to_owned();
    let (subject, description) = rx
        .wait_event("group_settings_update", |e| match e {
            WhatsAppEvent::SettingsUpdated {
                request_id: Some(r), subject, description, ..
            } if *r == settings_request => Some((subject.clone(), description.clone())),
            _ => None,
        })
        .await;
    assert_eq!(
        subject.and_then(|s| s.successful.then_some(s.text)).flatten().as_deref(),
        Some("pywa team (renamed)")
    );
    assert_eq!(description.and_then(|d| d.text).as_deref(), Some("renamed by pywa"));
    assert_eq!(steps["renamed"], "pywa team (renamed)");
    assert!(sim.group(&group).expect("group")["picture"].is_string());

    assert!(steps["sent"].as_str().is_some_and(|id| id.starts_with("wamid.")));
    // Pin and unpin the business's message; a message of no group cannot be pinned.
    assert_eq!(steps["pin"], json!({"pinned": true, "after_unpin": [], "refused": 100}));
    assert_eq!(steps["reset"], json!({"changed": true, "old_link": "refused", "current": true}));

    // Removed by phone number and by BSUID; both are barred from the link.
    let removal = steps["removed"]["request_id"].as_str().expect("request id").to_owned();
    assert_eq!(steps["removed"]["participants"], json!([]));
    assert_eq!(steps["removed"]["removed"], json!([ANN, CAT]));
    let removed = rx
        .wait_event("group_participants_remove", |e| match e {
            WhatsAppEvent::ParticipantsRemoved { request_id: Some(r), removed, .. }
                if *r == removal =>
            {
                Some(removed.iter().filter_map(|u| u.input.clone()).collect::<Vec<_>>())
            }
            _ => None,
        })
        .await;
    assert_eq!(removed, vec![ANN.to_owned(), cat_bsuid.clone()]);
    assert_eq!(steps["inbox"], json!(["hello group, from pywa"]));

    let deletion = steps["deleted"]["request_id"].as_str().expect("request id").to_owned();
    assert_eq!(steps["deleted"]["active"], false);
    rx.wait_event("group_delete", |e| match e {
        WhatsAppEvent::GroupDeleted { request_id: Some(r), errors, .. } if *r == deletion => {
            errors.is_empty().then_some(())
        }
        _ => None,
    })
    .await;

    // Every Groups call pywa offers reached the simulator, and only the partial rejection was
    // not a 200.
    let calls: Vec<(String, String, u64)> = steps["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| {
            let path = c["path"].as_str().unwrap_or_default().replace(&group, "{group}");
            (
                c["method"].as_str().unwrap_or_default().to_owned(),
                path,
                c["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for call in [
        ("POST", "106540352242922/groups"),
        ("GET", "106540352242922/groups"),
        ("GET", "{group}"),
        ("POST", "{group}"),
        ("DELETE", "{group}"),
        ("GET", "{group}/invite_link"),
        ("POST", "{group}/invite_link"),
        ("GET", "{group}/join_requests"),
        ("POST", "{group}/join_requests"),
        ("DELETE", "{group}/join_requests"),
        ("DELETE", "{group}/participants"),
        ("POST", "106540352242922/messages"),
    ] {
        assert!(
            calls.iter().any(|(m, p, _)| (m.as_str(), p.as_str()) == call),
            "{call:?} in {calls:?}"
        );
    }
    let not_ok: Vec<_> = calls.iter().filter(|c| c.2 != 200).collect();
    assert_eq!(
        not_ok,
        vec![
            &("DELETE".to_owned(), "{group}/join_requests".to_owned(), 206),
            &("POST".to_owned(), "106540352242922/messages".to_owned(), 400),
        ]
    );
    let sim_group = sim.group(&group).expect("group");
    assert_eq!(
        sim_group["messages"]
            .as_array()
            .map(|m| m.iter().map(|x| x["text"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("hi from the phone"), json!("hello group, from pywa")])
    );
}
