//! Fidelity of the WhatsApp simulator: pywa (a real third-party Cloud API client with the Groups
//! API, pinned 4.5.0 from PyPI) creates a group, reads its invite link, approves a join request,
//! sends a group message and removes a participant against it.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use wa_groups_bot::events::WhatsAppEvent;

use crate::support::{WA_PHONE_ID, WA_TOKEN, python::venv_python, start_receiver, start_sim};

const PYWA: &str = "pywa==4.5.0";
const PHONE: &str = "447911123456";

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
    assert_eq!(steps["tapped"], "requested");
    assert_eq!(steps["requests"].as_array().map(Vec::len), Some(1));
    assert_eq!(steps["approved"], json!([PHONE]));
    assert!(steps["sent"].as_str().is_some_and(|id| id.starts_with("wamid.")));
    assert_eq!(steps["removed"], json!({"participants": [], "removed": [PHONE]}));
    assert_eq!(steps["inbox"], json!(["hello group, from pywa"]));
    let sim_group = sim.group(&group).expect("group");
    assert_eq!(
        sim_group["messages"]
            .as_array()
            .map(|m| m.iter().map(|x| x["text"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("hi from the phone"), json!("hello group, from pywa")])
    );
}
