//! The guarantees of the decision core, each against the defect it closes: a removed contact
//! never stays in the group whatever the order of approval and removal; a decision and its
//! effects commit together; one bad event is set aside while the rest flows; what the bot
//! created is recognised by its marker, never by its name; other numbers' webhooks are
//! ignored; a standard group's failed notice is reported; a dead datafeed stops the process
//! with an error.

use std::time::Duration;

use serde_json::{Value, json};
use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;

use crate::lifecycle::{JANE, JOHN, inbox_has};
use crate::support::{
    ALICE, BOT, WA_PHONE_ID, WA_SECRET, native_group, participants, pod_fault, room_named,
    sim_fault, start_bot_with_whatsapp, start_bot_with_whatsapp_config, start_pod, start_sim,
    wait_for, wait_for_message,
};

/// `/wa info`'s line for a contact, once the bot answers.
async fn info_state(pod: &MockPod, sid: &str, phone: &str) -> String {
    let before = pod.messages(sid).len();
    pod.post_message(sid, ALICE, "<messageML>/wa info</messageML>").expect("info");
    let info = wait_for("the info", Duration::from_secs(10), || {
        let found = pod
            .messages(sid)
            .into_iter()
            .skip(before)
            .find(|m| m.user == BOT && m.text.contains("WhatsApp contacts"));
        async move { found }
    })
    .await;
    let line = info.text.lines().find(|l| l.contains(&format!("+{phone}"))).map(str::to_owned);
    line.unwrap_or_else(|| panic!("no line for {phone}: {}", info.text))
}

/// Defect 1: an approval under way when the owner removes the contact. The approval goes
/// through (WhatsApp answers late), the contact arrives barred and is removed at once; the
/// room is told; `/wa info` and the simulator agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_removed_while_their_approval_is_under_way_is_removed_on_arrival() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Late approval", &[JANE, JOHN]).await;
    // The approval call hangs 2.5 s, then goes through.
    sim_fault(
        &sim,
        json!({"method": "POST", "path": "/join_requests$", "hangMs": 2500, "count": 1}),
    )
    .await;
    let served = sim.stats().faults_served;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait_for("the approval under way", Duration::from_secs(10), || {
        let n = sim.stats().faults_served;
        async move { (n > served).then_some(()) }
    })
    .await;
    pod.post_message(&sid, ALICE, &format!("<messageML>/wa remove +{JANE}</messageML>"))
        .expect("remove");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123456") && t.contains("removed"))
        .await;
    // She got in when the late approval landed, and was removed on arrival.
    wait_for_message(&pod, &sid, BOT, |t| t.contains("got into the WhatsApp group")).await;
    wait_for("Jane out of the group", Duration::from_secs(10), || {
        let p = participants(&sim, &gid);
        async move { (p == json!([])).then_some(()) }
    })
    .await;
    assert_eq!(sim.tap(JANE, &link)["result"], "refused", "barred for ever");
    assert!(info_state(&pod, &sid, JANE).await.contains("removed"));
    assert_eq!(participants(&sim, &gid), json!([]), "the simulator agrees");
    bot.stop().await;
}

/// Defect 1, the other order: the approval fails and is retried after the owner's removal:
/// the guard sees the bar and rejects the request instead; she never gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_retried_after_a_removal_rejects_the_request_instead() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let retry = "retry: {maxAttempts: 2, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 400}\n";
    let timings = wa_groups_bot::app::BotTimings::default();
    let bot = start_bot_with_whatsapp_config(&pod, &sim, dir.path(), "\"*\"", timings, retry).await;
    let (sid, gid, link) = native_group(&pod, &sim, "Retried approval", &[JANE, JOHN]).await;
    // Both calls of the first attempt hang, then answer 503: nothing was approved.
    sim_fault(
        &sim,
        json!({"method": "POST", "path": "/join_requests$", "hangMs": 1500, "status": 503, "count": 2}),
    )
    .await;
    let served = sim.stats().faults_served;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait_for("the approval under way", Duration::from_secs(10), || {
        let n = sim.stats().faults_served;
        async move { (n > served).then_some(()) }
    })
    .await;
    pod.post_message(&sid, ALICE, &format!("<messageML>/wa remove +{JANE}</messageML>"))
        .expect("remove");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123456") && t.contains("removed"))
        .await;
    wait_for("Jane's request settled", Duration::from_secs(15), || {
        let pending = sim.group(&gid).map(|g| g["pendingRequests"].clone());
        async move { (pending == Some(json!([]))).then_some(()) }
    })
    .await;
    assert_eq!(participants(&sim, &gid), json!([]), "never let in");
    assert!(info_state(&pod, &sid, JANE).await.contains("removed"));
    // John, still invited, gets in as usual.
    assert_eq!(sim.tap(JOHN, &link)["result"], "requested");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123457 joined")).await;
    assert_eq!(participants(&sim, &gid), json!([JOHN]));
    bot.stop().await;
}

/// Defects 2 and 3: a template that fails at runtime makes `/wa remove` fail half-way. Nothing
/// of it is kept (the contact stays joined, no notice), the event is set aside and reported,
/// another group's chat keeps flowing; once the template is fixed and the event retried, the
/// whole removal happens, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_set_aside_whole_and_the_rest_flows_until_it_is_retried() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let templates = dir.path().join("templates");
    copy_dir(&crate::support::fixture("../../templates"), &templates);
    // Strict mode: a variable the bot does not pass fails when rendered, not when loaded.
    std::fs::write(templates.join("whatsapp/contact_removed.hbs"), "{{phone}} left {{oops}}")
        .expect("break the template");
    let extra = format!("templates: {{dir: {}}}\n", templates.display());
    let timings = wa_groups_bot::app::BotTimings {
        dispatch: wa_groups_bot::dispatch::DispatchPolicy { max_attempts: 3, ..Default::default() },
        ..Default::default()
    };
    let bot =
        start_bot_with_whatsapp_templates(&pod, &sim, dir.path(), timings, &extra, &templates)
            .await;
    let (sid, gid, link) = native_group(&pod, &sim, "Poisoned", &[JANE]).await;
    let (other, ogid, olink) = native_group(&pod, &sim, "Healthy", &[JOHN]).await;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123456 joined")).await;
    assert_eq!(sim.tap(JOHN, &olink)["result"], "requested");
    wait_for_message(&pod, &other, BOT, |t| t.contains("+447911123457 joined")).await;

    pod.post_message(&sid, ALICE, &format!("<messageML>/wa remove +{JANE}</messageML>"))
        .expect("remove");
    let report = wait_for_message(&pod, &sid, BOT, |t| t.contains("set aside")).await;
    assert!(report.text.contains("oops"), "the reason is said: {}", report.text);
    assert_eq!(bot.store.count_failed_inbound().expect("count"), 1);
    // Nothing of the half-made decision: she is still in, and still shown joined.
    assert_eq!(participants(&sim, &gid), json!([JANE]));
    assert!(info_state(&pod, &sid, JANE).await.contains("joined"));
    // The other group is not held up.
    pod.post_message(&other, ALICE, "<messageML>still flowing</messageML>").expect("post");
    wait_for("the other group's message", Duration::from_secs(10), || {
        let found =
            sim.group(&ogid).is_some_and(|g| g["messages"].to_string().contains("still flowing"));
        async move { found.then_some(()) }
    })
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", bot.http_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("wagb_events_set_aside 1"), "{metrics}");
    assert!(metrics.contains("wagb_events_set_aside_total{source=\"symphony\"} 1"), "{metrics}");
    bot.stop().await;

    // The admin fixes the template, restarts, and retries the event.
    std::fs::write(templates.join("whatsapp/contact_removed.hbs"), "{{phone}} was removed")
        .expect("fix the template");
    let timings = wa_groups_bot::app::BotTimings::default();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"))
            .args(args)
            .arg("--config")
            .arg(dir.path().join("bot-config.yaml"))
            .output()
            .expect("run the binary");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = cli(&["events", "failed"]);
    assert!(
        listed.contains("symphony/messageSent") && listed.contains("oops"),
        "the set-aside event is listed: {listed}"
    );
    let bot =
        start_bot_with_whatsapp_templates(&pod, &sim, dir.path(), timings, &extra, &templates)
            .await;
    assert!(cli(&["events", "retry", "--all"]).contains("1 event(s) put back"));
    wait_for("Jane removed", Duration::from_secs(15), || {
        let p = participants(&sim, &gid);
        async move { (p == json!([])).then_some(()) }
    })
    .await;
    wait_for("one removal notice", Duration::from_secs(10), || {
        let notices = sim.group(&gid).map(|g| {
            g["messages"]
                .as_array()
                .map(|m| m.iter().filter(|m| m.to_string().contains("was removed")).count())
        });
        async move { (notices == Some(Some(1))).then_some(()) }
    })
    .await;
    assert!(info_state(&pod, &sid, JANE).await.contains("removed"));
    assert_eq!(bot.store.count_failed_inbound().expect("count"), 0);
    bot.stop().await;
}

/// Defect 4: the room and the WhatsApp group a lost answer made are recognised by their marker.
/// A room of the same name (the very room the command was typed in) and a WhatsApp group of
/// the same subject exist: neither is adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_adopt_what_carries_the_marker_never_a_namesake() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    // Alice's own room "Namesake", with the bot in it: the command is typed there.
    let typed_in = pod.create_room(ALICE, "Namesake", &[ALICE, BOT]).expect("room");
    // A WhatsApp group of the same subject, made by someone else with this number.
    let decoy = reqwest::Client::new()
        .post(format!("{}/v23.0/{WA_PHONE_ID}/groups", sim.url()))
        .bearer_auth(crate::support::WA_TOKEN)
        .json(&json!({"messaging_product": "whatsapp", "subject": "Namesake", "description": "not the bot's", "join_approval_mode": "approval_required"}))
        .send()
        .await
        .expect("decoy group");
    assert!(decoy.status().is_success());
    wait_for_group_count(&sim, "Namesake", 1).await;
    // Both create calls are carried out, and their answers lost.
    pod_fault(
        &pod,
        json!({"method": "POST", "path": "^/pod/v3/room/create$", "status": 503, "after": true, "count": 1}),
    )
    .await;
    sim_fault(
        &sim,
        json!({"method": "POST", "path": "/groups$", "status": 503, "after": true, "count": 1}),
    )
    .await;
    pod.post_message(
        &typed_in,
        ALICE,
        &format!("<messageML>/wa create \"Namesake\" +{JANE}</messageML>"),
    )
    .expect("post");
    let invitation = inbox_has(&sim, JANE, "group_invite_link").await;
    let rooms: Vec<Value> = pod
        .streams()
        .into_iter()
        .filter(|s| s["type"] == "ROOM" && s["name"] == "Namesake")
        .collect();
    assert_eq!(rooms.len(), 2, "Alice's room and the one the lost answer made: {rooms:?}");
    let made = rooms.iter().find(|r| r["streamId"] != typed_in.as_str()).expect("the bot's room");
    let made = made["streamId"].as_str().expect("sid").to_owned();
    wait_for_message(&pod, &made, BOT, |t| t.contains("is ready")).await;
    assert!(
        !pod.messages(&typed_in).iter().any(|m| m.text.contains("is ready")),
        "the room the command was typed in is not the group's"
    );
    wait_for_group_count(&sim, "Namesake", 2).await;
    let groups: Vec<Value> =
        sim.groups().into_iter().filter(|g| g["subject"] == "Namesake").collect();
    let ours = groups
        .iter()
        .find(|g| g["description"].as_str().is_some_and(|d| d.contains("ref wagb-")))
        .expect("the bot's group carries its marker");
    assert_eq!(invitation["template"]["params"], json!([ours["inviteLink"]]));
    assert_eq!(sim.inbox(JANE).len(), 1, "one invitation");
    bot.stop().await;
}

async fn wait_for_group_count(sim: &WhatsAppSim, subject: &str, n: usize) {
    wait_for("the WhatsApp groups", Duration::from_secs(10), || {
        let count = sim.groups().iter().filter(|g| g["subject"] == subject).count();
        async move { (count == n).then_some(()) }
    })
    .await;
}

/// Defect 5: a webhook for another phone number of the same Meta app is acknowledged and
/// ignored, even when it carries a message from one of this bot's contacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_for_another_phone_number_are_ignored() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, _gid, link) = native_group(&pod, &sim, "Ours only", &[JANE]).await;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123456 joined")).await;
    let url = format!("http://{}/whatsapp/webhook", bot.webhook_addr.expect("webhook"));
    let body = |phone_number_id: &str, id: &str, text: &str| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages",
            "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
                "contacts": [{"profile": {"name": "Jane"}, "wa_id": JANE}],
                "messages": [{"from": JANE, "id": id, "timestamp": "1750000000", "type": "text", "text": {"body": text}}]}}]}]})
        .to_string()
    };
    let post = |body: String| {
        let url = url.clone();
        async move {
            let signature = wa_groups_bot::webhook::signature(WA_SECRET, body.as_bytes());
            reqwest::Client::new()
                .post(url)
                .header("x-hub-signature-256", signature)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("webhook")
                .status()
        }
    };
    let stored = |key: &str| {
        bot.store.has_inbound(wa_groups_bot::store::Source::WhatsApp, key).expect("read")
    };
    assert_eq!(post(body("999999999999999", "wamid.FOREIGN", "for another number")).await, 200);
    assert!(!stored("message:wamid.FOREIGN"), "acknowledged, nothing stored");
    assert_eq!(post(body(WA_PHONE_ID, "wamid.OURS", "for this bot")).await, 200);
    wait_for_message(&pod, &sid, BOT, |t| t.contains("for this bot")).await;
    assert!(stored("message:wamid.OURS"));
    assert!(!pod.messages(&sid).iter().any(|m| m.text.contains("for another number")));
    bot.stop().await;
}

/// Defect 6: a standard group's notice that WhatsApp refuses for good is said in the room
/// (its outbox order is a phone, not a WhatsApp group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_groups_failed_notice_is_reported_in_its_room() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(
        &im,
        ALICE,
        &format!("<messageML>/wa create \"Std\" +{JANE} --standard</messageML>"),
    )
    .expect("post");
    let room = room_named(&pod, "Std").await;
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    wait_for_message(&pod, &sid, BOT, |t| t.contains("standard")).await;
    // The next message to WhatsApp is refused for good (100: invalid parameter).
    sim_fault(
        &sim,
        json!({"method": "POST", "path": "/messages$", "status": 400, "code": 100, "count": 1}),
    )
    .await;
    pod.post_message(&sid, ALICE, "<messageML>/wa rename \"Std two\"</messageML>").expect("rename");
    let report = wait_for_message(&pod, &sid, BOT, |t| {
        t.contains("Could not") && t.contains("+447911123456")
    })
    .await;
    assert!(report.text.contains("send a WhatsApp message"), "{}", report.text);
    bot.stop().await;
}

/// Defect 7: when the datafeed loop gives up, the bot stops with an error (so the process
/// exits non-zero and is restarted), and `/healthz` said which task stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datafeed_that_gives_up_stops_the_bot_with_an_error() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let health = format!("http://{}/healthz", bot.http_addr);
    let before: Value = reqwest::get(&health).await.expect("health").json().await.expect("json");
    assert_eq!(before["tasks"]["datafeed"]["state"], "running", "{before}");
    // The agent refuses the feed for good.
    pod_fault(&pod, json!({"method": "POST", "path": "/read$", "status": 403, "count": 1000}))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(20), bot.wait())
        .await
        .expect("the bot stops on its own");
    let err = ended.expect_err("an error, not a clean stop");
    assert!(err.to_string().contains("datafeed"), "{err}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// The bot with its templates loaded from `templates` (an admin's folder).
async fn start_bot_with_whatsapp_templates(
    pod: &MockPod,
    sim: &WhatsAppSim,
    dir: &std::path::Path,
    timings: wa_groups_bot::app::BotTimings,
    extra: &str,
    templates: &std::path::Path,
) -> wa_groups_bot::app::Bot {
    crate::support::start_bot_with_whatsapp_loaded(pod, sim, dir, "\"*\"", timings, extra, || {
        wa_groups_bot::templates::Templates::load(templates).expect("templates load")
    })
    .await
}

/// A group WhatsApp suspends: the room is told, a message written meanwhile is reported as not
/// delivered (131207), and the room hears when the suspension is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_group_is_reported_in_its_room() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Moderated", &[JANE]).await;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123456 joined")).await;
    let suspend = |on: bool| {
        let url = format!("{}/_sandbox/wa/groups/{gid}/suspend", sim.url());
        async move {
            let answer = reqwest::Client::new()
                .post(url)
                .json(&json!({"suspended": on}))
                .send()
                .await
                .expect("suspend");
            assert!(answer.status().is_success());
        }
    };
    suspend(true).await;
    wait_for_message(&pod, &sid, BOT, |t| t.contains("WhatsApp suspended")).await;
    pod.post_message(&sid, ALICE, "<messageML>while suspended</messageML>").expect("post");
    let report = wait_for_message(&pod, &sid, BOT, |t| {
        t.contains("while suspended") && (t.contains("131207") || t.contains("Could not"))
    })
    .await;
    assert!(report.text.contains("131207"), "Meta's code is named: {}", report.text);
    suspend(false).await;
    wait_for_message(&pod, &sid, BOT, |t| t.contains("lifted the suspension")).await;
    bot.stop().await;
}

/// A contact with a WhatsApp username whose number WhatsApp no longer shows (no 1:1 exchange
/// for 30 days): known by the user id seen when they joined, their messages reach the room
/// attributed to them, their leave is shown, and a removal still reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_only_contact_is_known_by_their_user_id() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Usernames", &[JANE, JOHN]).await;
    for phone in [JANE, JOHN] {
        assert_eq!(sim.tap(phone, &link)["result"], "requested");
    }
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123456 joined")).await;
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123457 joined")).await;
    // Both take a username, and the business no longer sees their numbers.
    for (phone, name, username) in [(JANE, "Dana Reyes", "dana.reyes"), (JOHN, "John B", "john_b")]
    {
        let answer = reqwest::Client::new()
            .put(format!("{}/_sandbox/wa/phones/{phone}", sim.url()))
            .json(&json!({"name": name, "username": username, "hideNumber": true}))
            .send()
            .await
            .expect("username");
        assert!(answer.status().is_success());
    }
    sim.send_as_phone(JANE, Some(&gid), "hello from a username", None).expect("Jane writes");
    let relayed = wait_for_message(&pod, &sid, BOT, |t| t.contains("hello from a username")).await;
    assert!(
        relayed.text.contains("Dana Reyes") && relayed.text.contains("+447911123456"),
        "attributed to Jane, number included: {}",
        relayed.text
    );
    let left = reqwest::Client::new()
        .post(format!("{}/_sandbox/wa/phones/{JOHN}/leave", sim.url()))
        .json(&json!({"groupId": gid}))
        .send()
        .await
        .expect("leave");
    assert!(left.status().is_success());
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123457") && t.contains("left")).await;
    pod.post_message(&sid, ALICE, &format!("<messageML>/wa remove +{JANE}</messageML>"))
        .expect("remove");
    wait_for("Jane removed", Duration::from_secs(10), || {
        let p = participants(&sim, &gid);
        async move { (p == json!([])).then_some(()) }
    })
    .await;
    assert!(info_state(&pod, &sid, JOHN).await.contains("left"));
    bot.stop().await;
}

/// Confirmations name the contact as a person would, once WhatsApp showed their profile name
/// (with the delivery of their invitation): "Dana Reyes (+44 7911 123456) joined".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmations_name_the_contact() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    sim.set_phone_name(JANE, "Dana Reyes");
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, _gid, link) = native_group(&pod, &sim, "Named", &[JANE, JOHN]).await;
    // The invitation's delivery shows her profile; then she joins.
    wait_for("Dana's profile known", Duration::from_secs(10), || {
        let known = bot
            .store
            .read(|r| {
                let key = r.group_by_stream(&wa_groups_bot::groups::StreamId::new(&sid))?;
                Ok(key.map(|g| r.contacts(g.key)).transpose()?.unwrap_or_default())
            })
            .ok()
            .is_some_and(|c| c.iter().any(|c| c.name.as_deref() == Some("Dana Reyes")));
        async move { known.then_some(()) }
    })
    .await;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("Dana Reyes (+44 7911 123456) joined")).await;
    assert!(info_state(&pod, &sid, JANE).await.contains("Dana Reyes"));
    pod.post_message(&sid, ALICE, &format!("<messageML>/wa remove +{JANE}</messageML>"))
        .expect("remove");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("Dana Reyes (+44 7911 123456) was removed"))
        .await;
    bot.stop().await;
}
