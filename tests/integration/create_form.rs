//! The `/wa create` form end to end: `/wa create` alone answers with the Elements form; a person
//! submits it through the mock pod as the client would, and the bot creates exactly what the
//! command would, or shows the form again with every problem and what was typed.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wa_groups_bot::commands::form::CREATE_FORM_ID;
use wa_groups_bot::sandbox::mock_pod::{MockPod, PostedMessage};
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;

use crate::lifecycle::{JANE, JOHN, inbox_has, room_named, wa_group_named};
use crate::support::{
    ALICE, BOB, BOT, members_are, start_bot_with_whatsapp, start_pod, start_sim, wait_for,
    wait_for_message,
};

/// The `n`-th create form (from 1) the bot posted in `stream`.
async fn nth_form(pod: &MockPod, stream: &str, n: usize) -> PostedMessage {
    let marker = format!("<form id=\"{CREATE_FORM_ID}\">");
    wait_for("the create form", Duration::from_secs(10), || {
        let found = pod
            .messages(stream)
            .into_iter()
            .filter(|m| m.user == BOT && m.presentation_ml.contains(&marker))
            .nth(n - 1);
        async move { found }
    })
    .await
}

/// `as` submits the form of `message` with `values`, through the mock pod's control API.
async fn submit(pod: &MockPod, as_user: i64, message: &PostedMessage, values: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/_sandbox/forms", pod.url()))
        .json(&json!({"as": as_user, "messageId": message.message_id, "formId": CREATE_FORM_ID,
                      "values": values}))
        .send()
        .await
        .expect("submit");
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Alice opens the form in an IM with the bot; returns (IM, form message).
async fn open_form(pod: &MockPod) -> (String, PostedMessage) {
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, "<messageML>/wa create</messageML>").expect("post");
    let form = nth_form(pod, &im, 1).await;
    (im, form)
}

async fn invitation(sim: &WhatsAppSim, phone: &str) -> Value {
    inbox_has(sim, phone, "group_invite_link").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_creates_the_room_and_group_the_command_would() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (im, form) = open_form(&pod).await;

    // The form: name, advisors, numbers, the native checkbox checked, a Create button.
    let pml = &form.presentation_ml;
    for part in [
        "<input type=\"text\" name=\"name\" placeholder=\"Deal team\"",
        "<div class=\"person-selector\" data-name=\"advisors\"",
        "<textarea name=\"contacts\"",
        "<input type=\"checkbox\" name=\"native\" checked=\"true\" value=\"on\"",
        "<button type=\"action\" name=\"create\">Create</button>",
    ] {
        assert!(pml.contains(part), "{part} in {pml}");
    }
    assert!(form.text.contains("Create as native WhatsApp group"), "{}", form.text);

    let sent = submit(
        &pod,
        ALICE,
        &form,
        json!({"name": "Deal team", "advisors": [BOB], "contacts": format!("+{JANE}\n+{JOHN}")}),
    )
    .await;
    assert_eq!(sent["formValues"]["native"], "on", "the box stays checked: {sent}");
    wait_for_message(&pod, &im, BOT, |t| t.starts_with("Creating Deal team")).await;

    // As the command: the bot and Alice own the room, Bob is a member.
    let room = room_named(&pod, "Deal team").await;
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    members_are(
        &pod,
        &sid,
        json!([{"userId": BOT, "owner": true}, {"userId": ALICE, "owner": true}, {"userId": BOB, "owner": false}]),
    )
    .await;
    let group = wa_group_named(&sim, "Deal team").await;
    assert_eq!(group["joinApprovalMode"], "approval_required");
    let link = group["inviteLink"].as_str().expect("link").to_owned();
    for phone in [JANE, JOHN] {
        assert_eq!(invitation(&sim, phone).await["template"]["params"], json!([link]));
    }
    let summary = wait_for_message(&pod, &sid, BOT, |t| t.contains("is ready")).await;
    assert!(
        summary.text.contains(&format!("+{JANE}")) && summary.text.contains(&format!("+{JOHN}")),
        "{}",
        summary.text
    );

    // The same form submitted again (a double click, a refreshed page) makes no second group.
    submit(&pod, ALICE, &form, json!({"name": "Deal team", "contacts": format!("+{JANE}")})).await;
    let refused = wait_for_message(&pod, &im, BOT, |t| t.contains("already created")).await;
    assert!(refused.text.contains("This form already created Deal team"), "{}", refused.text);
    assert_eq!(pod.streams().iter().filter(|s| s["name"] == "Deal team").count(), 1);
    assert_eq!(sim.groups().iter().filter(|g| g["subject"] == "Deal team").count(), 1);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_bring_the_form_back_with_every_problem_and_create_nothing() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (im, form) = open_form(&pod).await;
    let typed = format!("+{JANE}\nnot-a-number");
    submit(&pod, ALICE, &form, json!({"name": "  ", "advisors": [BOB], "contacts": typed})).await;

    // The form again: both problems listed, what was typed kept.
    let again = nth_form(&pod, &im, 2).await;
    for problem in ["the name is empty", "not a valid WhatsApp number", "\"not-a-number\""] {
        assert!(again.text.contains(problem), "{problem} in {}", again.text);
    }
    let pml = &again.presentation_ml;
    assert!(pml.contains(&format!(">{typed}</textarea>")), "{pml}");
    assert!(pml.contains(&format!("data-value=\"[{BOB}]\"")), "{pml}");
    assert!(pml.contains("name=\"native\" checked=\"true\""), "{pml}");
    // It was decided together with the form: nothing was created.
    assert!(!pod.streams().iter().any(|s| s["type"] == "ROOM"), "{:?}", pod.streams());
    assert!(sim.groups().is_empty());

    // Corrected in the returned form (Bob still preselected there), it creates the group.
    submit(&pod, ALICE, &again, json!({"name": "Desk two", "contacts": format!("+{JANE}")})).await;
    let room = room_named(&pod, "Desk two").await;
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    members_are(
        &pod,
        &sid,
        json!([{"userId": BOT, "owner": true}, {"userId": ALICE, "owner": true}, {"userId": BOB, "owner": false}]),
    )
    .await;
    wa_group_named(&sim, "Desk two").await;
    invitation(&sim, JANE).await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_box_unchecked_makes_a_standard_group() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (im, form) = open_form(&pod).await;
    submit(
        &pod,
        ALICE,
        &form,
        json!({"name": "Std desk", "contacts": format!("+{JANE}"), "native": false}),
    )
    .await;
    let reply = wait_for_message(&pod, &im, BOT, |t| t.starts_with("Creating Std desk")).await;
    assert!(!reply.text.contains("and its WhatsApp group"), "{}", reply.text);
    assert!(reply.text.contains("created as a standard group"), "{}", reply.text);
    let room = room_named(&pod, "Std desk").await;
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    let ready = wait_for_message(&pod, &sid, BOT, |t| t.contains("standard WhatsApp group")).await;
    assert!(ready.text.contains(&format!("+{JANE}")), "{}", ready.text);
    assert!(sim.groups().is_empty(), "no native WhatsApp group for a standard group");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_who_is_not_entitled_is_refused() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), &format!("\"{BOB}\"")).await;
    let (im, form) = open_form(&pod).await;
    submit(&pod, ALICE, &form, json!({"name": "Nope", "contacts": format!("+{JANE}")})).await;
    wait_for_message(&pod, &im, BOT, |t| t.contains("not entitled")).await;
    assert!(!pod.streams().iter().any(|s| s["name"] == "Nope"));
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_redelivered_after_a_restart_creates_one_group() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (im, form) = open_form(&pod).await;
    // The read that would acknowledge the submission hangs: the bot stops before the ack. The
    // form's own echo must be read and acknowledged first (two more reads begun), else the
    // hang falls on that acknowledgement, the bot reads past it once its read times out, and
    // acknowledges the submission after all (seen under CI's load).
    let reads = pod.stats().feed_reads;
    wait_for("the bot reading past the form", Duration::from_secs(10), || {
        let n = pod.stats().feed_reads;
        async move { (n >= reads + 2).then_some(()) }
    })
    .await;
    pod.inject_hang("/agent/v5/datafeeds/.*/read$", Duration::from_secs(30), 1).expect("hang");
    submit(&pod, ALICE, &form, json!({"name": "Once", "contacts": format!("+{JANE}")})).await;
    wait_for_message(&pod, &im, BOT, |t| t.starts_with("Creating Once")).await;
    first.stop().await;

    // Restarted on the same store and feed: the submission comes back and is not acted on.
    let second = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    wait_for("the redelivery", Duration::from_secs(10), || {
        let n = pod.stats().redeliveries;
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let room = room_named(&pod, "Once").await;
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    wait_for_message(&pod, &sid, BOT, |t| t.contains("is ready")).await;
    // Events are handled in order: once this answer is there, the redelivery was handled too.
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, |t| t.starts_with("WhatsApp groups: commands")).await;
    let creating = pod.messages(&im).iter().filter(|m| m.text.starts_with("Creating")).count();
    assert_eq!(creating, 1, "{:?}", pod.messages(&im));
    assert_eq!(pod.streams().iter().filter(|s| s["name"] == "Once").count(), 1);
    assert_eq!(sim.groups().iter().filter(|g| g["subject"] == "Once").count(), 1);
    second.stop().await;
}
