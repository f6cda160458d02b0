//! The group lifecycle end to end: `/wa create` in Symphony makes the room and the WhatsApp
//! group, invites each contact personally, lets in only the invited, and confirms on both sides.

use std::time::Duration;

use serde_json::Value;
use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;

use crate::support::{
    ALICE, BOB, BOT, start_bot_with_whatsapp, start_pod, start_sim, wait_for, wait_for_message,
};

const JANE: &str = "447911123456";
const JOHN: &str = "447911123457";
const EVE: &str = "447911123499";

async fn room_named(pod: &MockPod, name: &str) -> Value {
    wait_for("the room", Duration::from_secs(10), || {
        let found = pod.streams().into_iter().find(|s| s["type"] == "ROOM" && s["name"] == name);
        async move { found }
    })
    .await
}

async fn wa_group_named(sim: &WhatsAppSim, subject: &str) -> Value {
    wait_for("the WhatsApp group", Duration::from_secs(10), || {
        let found = sim.groups().into_iter().find(|g| g["subject"] == subject);
        async move { found }
    })
    .await
}

async fn inbox_has(sim: &WhatsAppSim, phone: &str, template: &str) -> Value {
    wait_for("a template in the inbox", Duration::from_secs(10), || {
        let found = sim.inbox(phone).into_iter().find(|m| m["template"]["name"] == template);
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_group_is_created_and_only_invited_contacts_get_in() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(
        &im,
        ALICE,
        &format!("<messageML>/wa create \"Deal team\" <mention uid=\"{BOB}\"/> +{JANE} +{JOHN}</messageML>"),
    )
    .expect("post");
    wait_for_message(&pod, &im, BOT, |t| t.starts_with("Creating Deal team")).await;

    // The room: the bot and Alice own it, Bob is a member.
    let room = room_named(&pod, "Deal team").await;
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    wait_for("the room's members", Duration::from_secs(10), || {
        let members = pod.streams().into_iter().find(|s| s["streamId"] == sid.as_str()).map(|s| s["members"].clone());
        let want = serde_json::json!([{"userId": BOT, "owner": true}, {"userId": ALICE, "owner": true}, {"userId": BOB, "owner": false}]);
        async move { (members == Some(want)).then_some(()) }
    })
    .await;

    // The WhatsApp group: approval required, the Symphony members in the description.
    let group = wa_group_named(&sim, "Deal team").await;
    let gid = group["id"].as_str().expect("group id").to_owned();
    assert_eq!(group["joinApprovalMode"], "approval_required");
    let description = group["description"].as_str().unwrap_or_default();
    assert!(description.contains("Alice Ng") && description.contains("Bob Smith"), "{description}");

    // Each contact gets their own invitation carrying the link; the room gets the summary.
    let link = group["inviteLink"].as_str().expect("link").to_owned();
    for phone in [JANE, JOHN] {
        let invitation = inbox_has(&sim, phone, "group_invite_link").await;
        assert_eq!(invitation["template"]["params"], serde_json::json!([link]));
    }
    let summary = wait_for_message(&pod, &sid, BOT, |t| t.contains("is ready")).await;
    assert!(
        summary.text.contains("+447911123456") && summary.text.contains("+447911123457"),
        "{}",
        summary.text
    );

    // A forwarded link: Eve asks to join, is rejected, and the room is told.
    assert_eq!(sim.tap(EVE, &link)["result"], "requested");
    let rejected = wait_for_message(&pod, &sid, BOT, |t| t.contains("rejected")).await;
    assert!(
        rejected.text.contains("+447911123499") && rejected.text.contains("not invited"),
        "{}",
        rejected.text
    );
    wait_for("Eve's request gone", Duration::from_secs(10), || {
        let pending = sim.group(&gid).map(|g| g["pendingRequests"].clone());
        async move { (pending == Some(serde_json::json!([]))).then_some(()) }
    })
    .await;

    // Jane asks: approved, joined, confirmed in the room and to her.
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123456 joined")).await;
    let confirmation = inbox_has(&sim, JANE, "group_update").await;
    assert!(
        confirmation["template"]["params"][0].as_str().is_some_and(|p| p.contains("Deal team")),
        "{confirmation}"
    );

    // John, the last invitee: once he is in, the link is reset and the old one is dead.
    assert_eq!(sim.tap(JOHN, &link)["result"], "requested");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123457 joined")).await;
    wait_for("the link reset", Duration::from_secs(10), || {
        let current = sim.group(&gid).and_then(|g| g["inviteLink"].as_str().map(str::to_owned));
        let old = link.clone();
        async move { current.filter(|c| *c != old).map(|_| ()) }
    })
    .await;
    assert_eq!(sim.tap(EVE, &link)["result"], "refused");
    let members = sim.group(&gid).expect("group")["participants"].clone();
    assert_eq!(members, serde_json::json!([JANE, JOHN]));
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_contacts_make_a_standard_group_and_say_why() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let numbers: Vec<String> = (10..19).map(|i| format!("+4479111234{i}")).collect();
    pod.post_message(
        &im,
        ALICE,
        &format!("<messageML>/wa create \"Big desk\" {}</messageML>", numbers.join(" ")),
    )
    .expect("post");
    let reply = wait_for_message(&pod, &im, BOT, |t| t.starts_with("Creating Big desk")).await;
    assert!(
        reply.text.contains("more than 8 WhatsApp contacts (9): created as a standard group"),
        "{}",
        reply.text
    );
    let room = room_named(&pod, "Big desk").await;
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    let ready = wait_for_message(&pod, &sid, BOT, |t| t.contains("standard WhatsApp group")).await;
    assert!(ready.text.contains("+447911123418"), "{}", ready.text);
    assert!(sim.groups().is_empty(), "no native WhatsApp group for a standard group");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisor_who_is_not_entitled_is_refused() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), &format!("\"{BOB}\"")).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, &format!("<messageML>/wa create \"Nope\" +{JANE}</messageML>"))
        .expect("post");
    let reply = wait_for_message(&pod, &im, BOT, |t| t.contains("not entitled")).await;
    assert!(reply.text.contains("Usage"), "{}", reply.text);
    assert!(!pod.streams().iter().any(|s| s["name"] == "Nope"));
    bot.stop().await;
}
