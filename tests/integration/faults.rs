//! The fault matrix (`tests/FAULTS.md`): one test per fault, each driving the real bot against
//! the mock pod and the WhatsApp simulator with their fault endpoints, and checking what a user
//! would see: every command answered and every message relayed (nothing lost), each reply,
//! notice and relay once (nothing duplicated), and the right people in the WhatsApp group.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wa_groups_bot::app::Bot;
use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;

use crate::lifecycle::{JANE, JOHN};
use crate::support::{
    ALICE, BOB, BOT, native_group, participants, pod_fault, room_named, sim_fault,
    start_bot_with_whatsapp, start_bot_with_whatsapp_config, start_pod, start_sim, wa_group_named,
    wait_for, wait_for_message,
};

const HELP: &str = "<messageML>/wa help</messageML>";

/// The bot's posts in `stream` containing `needle`.
fn posts(pod: &MockPod, stream: &str, needle: &str) -> usize {
    pod.messages(stream).iter().filter(|m| m.user == BOT && m.text.contains(needle)).count()
}

/// Templates named `template` a phone received 1:1.
fn templates_to(sim: &WhatsAppSim, phone: &str, template: &str) -> usize {
    sim.inbox(phone)
        .iter()
        .filter(|m| m["template"]["name"] == template && m["groupId"].is_null())
        .count()
}

/// The WhatsApp group's messages whose text or template parameter contains `needle`.
fn group_says(sim: &WhatsAppSim, gid: &str, needle: &str) -> usize {
    sim.group(gid)
        .and_then(|g| g["messages"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|m| {
            m["text"].as_str().is_some_and(|t| t.contains(needle))
                || m["template"]["params"].as_array().is_some_and(|params| {
                    params.iter().any(|p| p.as_str().is_some_and(|p| p.contains(needle)))
                })
        })
        .count()
}

fn rooms_named(pod: &MockPod, name: &str) -> usize {
    pod.streams().iter().filter(|s| s["type"] == "ROOM" && s["name"] == name).count()
}

fn groups_named(sim: &WhatsAppSim, subject: &str) -> usize {
    sim.groups().iter().filter(|g| g["subject"] == subject).count()
}

/// Waits until the bot's outbox is empty (nothing pending), so that counts are final.
async fn settled(bot: &Bot) {
    wait_for("an empty outbox", Duration::from_secs(20), || {
        let counts = bot.store.outbox_counts().ok();
        async move { (counts.map(|c| c.0) == Some(0)).then_some(()) }
    })
    .await;
}

/// `phone` taps the link and is let in: the room says so.
async fn joins(pod: &MockPod, sim: &WhatsAppSim, sid: &str, phone: &str, link: &str) {
    assert_eq!(sim.tap(phone, link)["result"], "requested");
    wait_for_message(pod, sid, BOT, |t| t.contains(&format!("+{phone} joined"))).await;
}

/// Alice asks for help in `im` and waits for the `n`th answer.
async fn help_answered(pod: &MockPod, im: &str, n: usize) {
    pod.post_message(im, ALICE, HELP).expect("post");
    wait_for(&format!("{n} answers"), Duration::from_secs(20), || {
        let got = posts(pod, im, "WhatsApp groups: commands");
        async move { (got >= n).then_some(()) }
    })
    .await;
}

fn help_answers(pod: &MockPod, im: &str) -> usize {
    posts(pod, im, "WhatsApp groups: commands")
}

/// What a whole create left behind, once: one room, one WhatsApp group, the creator's reply and
/// the room's summary once, one invitation per contact.
fn assert_created_once(pod: &MockPod, sim: &WhatsAppSim, im: &str, name: &str, contacts: &[&str]) {
    assert_eq!(rooms_named(pod, name), 1, "one room {name}");
    assert_eq!(groups_named(sim, name), 1, "one WhatsApp group {name}");
    assert_eq!(posts(pod, im, &format!("Creating {name}")), 1, "one reply");
    let sid = pod
        .streams()
        .into_iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["streamId"].as_str().map(str::to_owned))
        .expect("room");
    assert_eq!(posts(pod, &sid, "is ready"), 1, "one summary");
    for phone in contacts {
        assert_eq!(templates_to(sim, phone, "group_invite_link"), 1, "one invitation to {phone}");
    }
}

/// Alice's `/wa create "<name>" @Bob <contacts>` in a new IM: (im, room, group id, link).
async fn create(
    pod: &MockPod,
    sim: &WhatsAppSim,
    name: &str,
    contacts: &[&str],
) -> (String, String, String, String) {
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let phones: Vec<String> = contacts.iter().map(|c| format!("+{c}")).collect();
    pod.post_message(
        &im,
        ALICE,
        &format!(
            "<messageML>/wa create \"{name}\" <mention uid=\"{BOB}\"/> {}</messageML>",
            phones.join(" ")
        ),
    )
    .expect("post");
    let room = room_named(pod, name).await;
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    wait_for_message(pod, &sid, BOT, |t| t.contains("is ready")).await;
    let group = wa_group_named(sim, name).await;
    let gid = group["id"].as_str().expect("gid").to_owned();
    for phone in contacts {
        crate::lifecycle::inbox_has(sim, phone, "group_invite_link").await;
    }
    let link = sim.group(&gid).and_then(|g| g["inviteLink"].as_str().map(str::to_owned));
    (im, sid, gid, link.expect("link"))
}

/// The room's members: the bot and Alice own it, Bob is a member.
async fn members_right(pod: &MockPod, sid: &str) {
    let want = json!([{"userId": BOT, "owner": true}, {"userId": ALICE, "owner": true}, {"userId": BOB, "owner": false}]);
    crate::support::members_are(pod, sid, want).await;
}

// ----- the pod -----

/// Pod 5xx on every step of a create (room, members, owners, messages): each retried, nothing
/// made twice, everyone answered once; then a contact joins and is confirmed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_5xx_on_every_create_step_is_retried_and_nothing_is_made_twice() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    for (path, status) in [
        ("^/pod/v3/room/create$", 503),
        ("/membership/add$", 502),
        ("/membership/promoteOwner$", 500),
        ("/message/create$", 503),
        ("^/pod/v3/users$", 503),
    ] {
        pod_fault(&pod, json!({"path": path, "status": status, "count": 2})).await;
    }
    let (im, sid, _gid, link) = create(&pod, &sim, "Five hundred", &[JANE]).await;
    members_right(&pod, &sid).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    settled(&bot).await;
    assert!(pod.stats().faults_served >= 8, "the faults were met: {:?}", pod.stats());
    assert_created_once(&pod, &sim, &im, "Five hundred", &[JANE]);
    assert_eq!(posts(&pod, &sid, "+447911123456 joined"), 1);
    assert_eq!(templates_to(&sim, JANE, "group_update"), 1, "one confirmation");
    bot.stop().await;
}

/// A 429 with `Retry-After` (`date`: as an HTTP date) on the reply: the bot waits as asked
/// (its own backoff is 50 ms), then answers once.
async fn pod_429_is_waited_out(date: bool) {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    help_answered(&pod, &im, 1).await;
    // An HTTP date has whole seconds: 2 s from the answer is at least 1 s away.
    let wait = if date { 2 } else { 1 };
    pod_fault(
        &pod,
        json!({"path": "/message/create$", "status": 429, "retryAfter": wait, "retryAfterDate": date, "count": 1}),
    )
    .await;
    let started = Instant::now();
    help_answered(&pod, &im, 2).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "Retry-After honoured: only {waited:?}");
    assert_eq!(pod.stats().faults_served, 1);
    settled(&bot).await;
    assert_eq!(help_answers(&pod, &im), 2, "answered once each");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_429_with_retry_after_in_seconds_is_waited_out() {
    pod_429_is_waited_out(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_429_with_retry_after_as_an_http_date_is_waited_out() {
    pod_429_is_waited_out(true).await;
}

/// The sessions expire in the middle of a create (while the WhatsApp group is being made): the
/// next pod calls get 401, the bot logs in again, on the same datafeed, and finishes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expiring_mid_create_is_renewed_and_the_create_finishes_once() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let logins = pod.stats().session_logins;
    sim_fault(&sim, json!({"method": "POST", "path": "/groups$", "hangMs": 800, "count": 1})).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(
        &im,
        ALICE,
        &format!("<messageML>/wa create \"Renewed\" <mention uid=\"{BOB}\"/> +{JANE}</messageML>"),
    )
    .expect("post");
    wait_for("the WhatsApp create under way", Duration::from_secs(10), || {
        let n = sim.stats().faults_served;
        async move { (n >= 1).then_some(()) }
    })
    .await;
    pod.expire_sessions();
    let sid = room_named(&pod, "Renewed").await["streamId"].as_str().expect("sid").to_owned();
    wait_for_message(&pod, &sid, BOT, |t| t.contains("is ready")).await;
    crate::lifecycle::inbox_has(&sim, JANE, "group_invite_link").await;
    members_right(&pod, &sid).await;
    let link = sim.groups()[0]["inviteLink"].as_str().expect("link").to_owned();
    joins(&pod, &sim, &sid, JANE, &link).await;
    help_answered(&pod, &im, 1).await;
    settled(&bot).await;
    let stats = pod.stats();
    assert!(stats.session_logins > logins, "logged in again: {stats:?}");
    assert_eq!(stats.feeds_created, 1, "the same datafeed");
    assert_created_once(&pod, &sim, &im, "Renewed", &[JANE]);
    assert_eq!(posts(&pod, &sid, "+447911123456 joined"), 1);
    bot.stop().await;
}

// ----- the datafeed -----

/// A datafeed read that hangs past `readTimeout` (1.5 s here; the pod holds an empty read
/// 0.3 s): the bot gives up on it and reads again; the command posted meanwhile is answered,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datafeed_read_hanging_past_read_timeout_is_abandoned_and_nothing_is_lost() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp_config(
        &pod,
        &sim,
        dir.path(),
        "\"*\"",
        Default::default(),
        "readTimeout: 1500\n",
    )
    .await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    help_answered(&pod, &im, 1).await;
    let served = pod.stats().faults_served;
    pod.inject_hang("/agent/v5/datafeeds/.*/read$", Duration::from_secs(4), 1).expect("hang");
    wait_for("the hanging read", Duration::from_secs(10), || {
        let n = pod.stats().faults_served;
        async move { (n > served).then_some(()) }
    })
    .await;
    let hung = Instant::now();
    pod.post_message(&im, ALICE, HELP).expect("post during the hang");
    wait_for("the second answer", Duration::from_secs(20), || {
        let n = help_answers(&pod, &im);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    // Past the hung read's own end (4 s after it came), and past the redelivery of anything
    // it handed out then (1 s): it brings nothing twice.
    help_answered(&pod, &im, 3).await;
    wait_for("the hung read over", Duration::from_secs(10), || {
        let over = hung.elapsed() >= Duration::from_millis(5500);
        async move { over.then_some(()) }
    })
    .await;
    help_answered(&pod, &im, 4).await;
    settled(&bot).await;
    assert_eq!(help_answers(&pod, &im), 4, "{:?}", pod.messages(&im));
    assert_eq!(pod.stats().feeds_created, 1, "the same feed");
    bot.stop().await;
}

/// A datafeed read's answer cut half-way (the batch was handed out, the bot never got it
/// whole): the batch is not acknowledged, comes back, and is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datafeed_answer_dropped_mid_response_comes_back_and_is_handled_once() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    help_answered(&pod, &im, 1).await;
    // Every read is cut until the command was handed out in one of them.
    pod_fault(
        &pod,
        json!({"path": "/agent/v5/datafeeds/.*/read$", "drop": true, "after": true, "count": 3}),
    )
    .await;
    help_answered(&pod, &im, 2).await;
    assert!(pod.stats().faults_served >= 1);
    help_answered(&pod, &im, 3).await;
    settled(&bot).await;
    assert_eq!(help_answers(&pod, &im), 3, "{:?}", pod.messages(&im));
    bot.stop().await;
}

// ----- lost answers and dropped connections on each create step -----

/// One create with `fault` (or an array of faults) armed on the pod (`on_pod`) or the
/// simulator: one room, one
/// WhatsApp group, each reply and invitation once, the room's members right, and the contact
/// let in once.
async fn create_despite(on_pod: bool, fault: Value, name: &str) {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let faults = fault.as_array().cloned().unwrap_or_else(|| vec![fault.clone()]);
    for f in &faults {
        if on_pod {
            pod_fault(&pod, f.clone()).await;
        } else {
            sim_fault(&sim, f.clone()).await;
        }
    }
    let (im, sid, gid, link) = create(&pod, &sim, name, &[JANE, JOHN]).await;
    members_right(&pod, &sid).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    settled(&bot).await;
    let served = if on_pod { pod.stats().faults_served } else { sim.stats().faults_served };
    assert_eq!(served as usize, faults.len(), "{fault}: the faults were met");
    assert_created_once(&pod, &sim, &im, name, &[JANE, JOHN]);
    assert_eq!(participants(&sim, &gid), json!([JANE]), "{fault}");
    assert_eq!(posts(&pod, &sid, "+447911123456 joined"), 1, "{fault}");
    bot.stop().await;
}

fn lost(method: &str, path: &str) -> Value {
    json!({"method": method, "path": path, "status": 503, "after": true, "count": 1})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_the_room_create_makes_one_room() {
    create_despite(true, lost("POST", "^/pod/v3/room/create$"), "Lost room").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_adding_a_member_adds_them_once() {
    create_despite(true, lost("POST", "/membership/add$"), "Lost member").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_promoting_the_creator_promotes_once() {
    create_despite(true, lost("POST", "/membership/promoteOwner$"), "Lost owner").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_the_whatsapp_group_create_makes_one_group() {
    create_despite(false, lost("POST", "/groups$"), "Lost group").await;
}

/// The invite link comes with the `group_create` webhook; it is read (`GET invite_link`) when
/// a lost create answer makes the bot adopt the group: both answers lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_to_the_group_create_and_its_invite_link_read_keep_one_link() {
    create_despite(
        false,
        json!([lost("POST", "/groups$"), lost("GET", "/invite_link$")]),
        "Lost link",
    )
    .await;
}

/// The last create step, the invitations: WhatsApp took the invitation and its answer was
/// lost. Graph's messages call has no idempotency key, so the send is retried and the contact
/// may get it twice (at least once to the APIs); the room and the group are not repeated,
/// and the contact gets in once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_an_invitation_neither_loses_nor_repeats_the_group() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    sim_fault(&sim, lost("POST", "/messages$")).await;
    let (im, sid, gid, link) = create(&pod, &sim, "Lost invitation", &[JANE]).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    settled(&bot).await;
    assert_eq!(sim.stats().faults_served, 1);
    assert_eq!(rooms_named(&pod, "Lost invitation"), 1);
    assert_eq!(groups_named(&sim, "Lost invitation"), 1);
    assert_eq!(posts(&pod, &im, "Creating Lost invitation"), 1);
    // The invitation was sent, its answer lost: sent again (Graph has no idempotency key).
    let invitations = templates_to(&sim, JANE, "group_invite_link");
    assert!((1..=2).contains(&invitations), "at least once, at most twice: {invitations}");
    assert_eq!(participants(&sim, &gid), json!([JANE]));
    assert_eq!(posts(&pod, &sid, "+447911123456 joined"), 1);
    bot.stop().await;
}

/// Connections dropped mid-response on the create calls: the room's and the WhatsApp group's
/// answers cut half-way after they were made (adopted by marker, never made twice), and the
/// invitation's connection dropped before WhatsApp had it (sent, once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_mid_response_on_create_calls_make_everything_once() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    pod_fault(
        &pod,
        json!({"method": "POST", "path": "^/pod/v3/room/create$", "drop": true, "after": true}),
    )
    .await;
    sim_fault(&sim, json!({"method": "POST", "path": "/groups$", "drop": true, "after": true}))
        .await;
    sim_fault(&sim, json!({"method": "POST", "path": "/messages$", "drop": true})).await;
    let (im, sid, gid, link) = create(&pod, &sim, "Dropped", &[JANE]).await;
    members_right(&pod, &sid).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    settled(&bot).await;
    assert_eq!((pod.stats().faults_served, sim.stats().faults_served), (1, 2));
    assert_created_once(&pod, &sim, &im, "Dropped", &[JANE]);
    assert_eq!(participants(&sim, &gid), json!([JANE]));
    bot.stop().await;
}

// ----- the Graph API -----

/// Graph 5xx and 429 (`Retry-After`, in seconds and as a date) on relayed messages and a
/// rename: each retried, each message once and in order, one notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_5xx_and_429_are_retried_and_each_message_arrives_once_in_order() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Graph trouble", &[JANE]).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    sim.send_as_phone(JANE, Some(&gid), "window open", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("window open")).await;
    for fault in [
        json!({"method": "POST", "path": "/messages$", "status": 503, "code": 2, "count": 2}),
        json!({"method": "POST", "path": "/messages$", "status": 500, "count": 1}),
        json!({"method": "POST", "path": format!("/{}$", regex::escape(&gid)), "status": 502, "count": 2}),
    ] {
        sim_fault(&sim, fault).await;
    }
    for text in ["one", "two", "three"] {
        pod.post_message(&sid, ALICE, &format!("<messageML>{text}</messageML>")).expect("post");
    }
    pod.post_message(&sid, ALICE, "<messageML>/wa rename \"Graph mended\"</messageML>")
        .expect("rename");
    wait_for("the rename", Duration::from_secs(20), || {
        let subject = sim.group(&gid).map(|g| g["subject"].clone());
        async move { (subject == Some(json!("Graph mended"))).then_some(()) }
    })
    .await;
    // 429 with `Retry-After` in seconds, then as an HTTP date (whole seconds: 2 s from the
    // answer is at least 1 s away); the bot's own backoff is 50 ms.
    for (text, fault) in [
        (
            "four",
            json!({"method": "POST", "path": "/messages$", "status": 429, "code": 130429, "retryAfter": 1, "count": 1}),
        ),
        (
            "five",
            json!({"method": "POST", "path": "/messages$", "status": 429, "code": 130429, "retryAfter": 2, "retryAfterDate": true, "count": 1}),
        ),
    ] {
        settled(&bot).await;
        sim_fault(&sim, fault).await;
        let started = Instant::now();
        pod.post_message(&sid, ALICE, &format!("<messageML>{text}</messageML>")).expect("post");
        wait_for("the message", Duration::from_secs(20), || {
            let n = group_says(&sim, &gid, &format!("*Alice Ng*: {text}"));
            async move { (n >= 1).then_some(()) }
        })
        .await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(1), "Retry-After honoured: only {waited:?}");
    }
    settled(&bot).await;
    assert_eq!(sim.stats().faults_served, 7);
    let relayed: Vec<String> = sim.group(&gid).expect("group")["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .filter(|t| t.starts_with("*Alice Ng*: "))
        .collect();
    let want: Vec<String> = ["one", "two", "three", "four", "five"]
        .iter()
        .map(|t| format!("*Alice Ng*: {t}"))
        .collect();
    assert_eq!(relayed, want);
    assert_eq!(group_says(&sim, &gid, "now called \"Graph mended\""), 1, "one notice");
    bot.stop().await;
}

/// Graph answers 131047 (the window closed) to a relayed text: it goes again as the template,
/// once, and nothing is reported as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_131047_answer_sends_the_message_as_the_template_once() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Window", &[JANE]).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    sim.send_as_phone(JANE, Some(&gid), "window open", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("window open")).await;
    sim_fault(
        &sim,
        json!({"method": "POST", "path": "/messages$", "status": 400, "code": 131047, "count": 1}),
    )
    .await;
    pod.post_message(&sid, ALICE, "<messageML>after hours</messageML>").expect("post");
    wait_for("the template", Duration::from_secs(10), || {
        let n = group_says(&sim, &gid, "after hours");
        async move { (n >= 1).then_some(()) }
    })
    .await;
    settled(&bot).await;
    assert_eq!(sim.stats().faults_served, 1);
    let sent: Vec<Value> = sim.group(&gid).expect("group")["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m.to_string().contains("after hours"))
        .cloned()
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["type"], "template", "{sent:?}");
    assert_eq!(posts(&pod, &sid, "Could not"), 0, "nothing lost to report");
    bot.stop().await;
}

/// Graph answers 100 (a bad parameter) to every send: the first is reported in the room, once,
/// and never tried again; the next message goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_parameter_is_reported_once_and_never_retried() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Bad parameter", &[JANE]).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    sim.send_as_phone(JANE, Some(&gid), "window open", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("window open")).await;
    let before = sim.stats().faults_served;
    sim_fault(
        &sim,
        json!({"method": "POST", "path": "/messages$", "status": 400, "code": 100, "count": 1}),
    )
    .await;
    pod.post_message(&sid, ALICE, "<messageML>refused</messageML>").expect("post");
    let report = wait_for_message(&pod, &sid, BOT, |t| t.contains("Could not")).await;
    assert!(report.text.contains("refused") && report.text.contains("100"), "{}", report.text);
    pod.post_message(&sid, ALICE, "<messageML>accepted</messageML>").expect("post");
    wait_for("the next message", Duration::from_secs(10), || {
        let n = group_says(&sim, &gid, "*Alice Ng*: accepted");
        async move { (n >= 1).then_some(()) }
    })
    .await;
    settled(&bot).await;
    assert_eq!(sim.stats().faults_served - before, 1, "one attempt");
    assert_eq!(group_says(&sim, &gid, "refused"), 0);
    assert_eq!(posts(&pod, &sid, "Could not"), 1, "reported once");
    bot.stop().await;
}

// ----- webhooks -----

/// Every webhook delivered twice: each decided once (one approval, one confirmation each way,
/// each message relayed once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_webhooks_are_decided_once() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    crate::support::wa_control(&sim, "/_sandbox/wa/webhooks/faults", json!({"duplicate": 1000}))
        .await;
    let (im, sid, gid, link) = create(&pod, &sim, "Twice", &[JANE, JOHN]).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    joins(&pod, &sim, &sid, JOHN, &link).await;
    for text in ["first", "second"] {
        sim.send_as_phone(JANE, Some(&gid), text, None).expect("write");
    }
    wait_for_message(&pod, &sid, BOT, |t| t.contains("second")).await;
    settled(&bot).await;
    assert!(sim.stats().webhooks_delivered >= 10, "{:?}", sim.stats());
    assert_created_once(&pod, &sim, &im, "Twice", &[JANE, JOHN]);
    for needle in ["+447911123456 joined", "+447911123457 joined", "first", "second"] {
        assert_eq!(posts(&pod, &sid, needle), 1, "{needle} once");
    }
    for phone in [JANE, JOHN] {
        assert_eq!(templates_to(&sim, phone, "group_update"), 1, "one confirmation to {phone}");
    }
    assert_eq!(participants(&sim, &gid), json!([JANE, JOHN]));
    bot.stop().await;
}

/// Webhooks reordered: two join requests, then two messages, each pair delivered swapped. Both
/// contacts let in once; both messages posted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_webhooks_are_each_decided_once() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Swapped", &[JANE, JOHN]).await;
    crate::support::wa_control(&sim, "/_sandbox/wa/webhooks/faults", json!({"reorder": true}))
        .await;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    assert_eq!(sim.tap(JOHN, &link)["result"], "requested");
    for phone in ["+447911123456", "+447911123457"] {
        wait_for_message(&pod, &sid, BOT, |t| t.contains(&format!("{phone} joined"))).await;
    }
    crate::support::wa_control(&sim, "/_sandbox/wa/webhooks/faults", json!({"reorder": true}))
        .await;
    sim.send_as_phone(JANE, Some(&gid), "early", None).expect("write");
    sim.send_as_phone(JOHN, Some(&gid), "late", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("early")).await;
    wait_for_message(&pod, &sid, BOT, |t| t.contains("late")).await;
    settled(&bot).await;
    for needle in ["+447911123456 joined", "+447911123457 joined", "early", "late"] {
        assert_eq!(posts(&pod, &sid, needle), 1, "{needle} once");
    }
    let mut inside: Vec<Value> = participants(&sim, &gid).as_array().cloned().unwrap_or_default();
    inside.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    assert_eq!(inside, vec![json!(JANE), json!(JOHN)]);
    bot.stop().await;
}

/// A join request delayed (webhooks held while the owner removes the contact): when it arrives
/// late, for a contact removed meanwhile, it is rejected, never approved; the other contact
/// gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_join_request_of_a_contact_removed_meanwhile_is_rejected() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let hook = format!("http://{}/whatsapp/webhook", bot.webhook_addr.expect("webhook"));
    let (sid, gid, link) = native_group(&pod, &sim, "Late", &[JANE, JOHN]).await;
    // Webhooks go nowhere for now: Meta keeps them and retries.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    sim.set_webhook_url(&format!("http://{}/nowhere", dead.local_addr().expect("addr")));
    drop(dead);
    let attempts = sim.stats().webhook_attempts;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait_for("a failed delivery", Duration::from_secs(10), || {
        let n = sim.stats().webhook_attempts;
        async move { (n > attempts).then_some(()) }
    })
    .await;
    pod.post_message(&sid, ALICE, &format!("<messageML>/wa remove +{JANE}</messageML>"))
        .expect("remove");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123456") && t.contains("removed"))
        .await;
    // The held join request now arrives, late.
    sim.set_webhook_url(&hook);
    wait_for("Jane's request settled", Duration::from_secs(20), || {
        let pending = sim.group(&gid).map(|g| g["pendingRequests"].clone());
        async move { (pending == Some(json!([]))).then_some(()) }
    })
    .await;
    joins(&pod, &sim, &sid, JOHN, &link).await;
    settled(&bot).await;
    assert_eq!(participants(&sim, &gid), json!([JOHN]), "Jane never let in");
    assert_eq!(posts(&pod, &sid, "+447911123456 joined"), 0);
    assert_eq!(templates_to(&sim, JANE, "group_update"), 0, "no confirmation to Jane");
    assert_eq!(sim.tap(JANE, &link)["result"], "refused", "barred for ever");
    bot.stop().await;
}

/// A webhook the bot persisted is delivered again after the bot restarted (Meta never got the
/// 200): the new process recognises it; the contact is let in and confirmed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_redelivered_after_a_restart_is_decided_once() {
    let pod = start_pod().await;
    let mut cfg = wa_groups_bot::sandbox::wa_sim::WhatsAppSimConfig::new(
        crate::support::WA_TOKEN,
        crate::support::WA_SECRET,
        crate::support::WA_PHONE_ID,
    );
    // Retries come 2 s later: time for the restart in between.
    cfg.webhook_retry_initial = Duration::from_secs(2);
    let sim = WhatsAppSim::start(cfg).await.expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Again", &[JANE]).await;
    // Jane's join request reaches the bot, which persists and approves it; the simulator acts
    // as if the 200 never came and delivers it again later.
    crate::support::wa_control(&sim, "/_sandbox/wa/webhooks/faults", json!({"failFirst": 1})).await;
    let delivered = sim.stats().webhooks_delivered;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    wait_for("Jane approved by the first process", Duration::from_secs(10), || {
        let p = participants(&sim, &gid);
        async move { (p == json!([JANE])).then_some(()) }
    })
    .await;
    first.stop().await;
    let second = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123456 joined")).await;
    wait_for("the redelivery", Duration::from_secs(20), || {
        let n = sim.stats().webhooks_delivered;
        async move { (n >= delivered + 2).then_some(()) }
    })
    .await;
    settled(&second).await;
    assert_eq!(posts(&pod, &sid, "+447911123456 joined"), 1);
    assert_eq!(posts(&pod, &sid, "rejected"), 0);
    assert_eq!(templates_to(&sim, JANE, "group_update"), 1, "one confirmation");
    assert_eq!(participants(&sim, &gid), json!([JANE]));
    second.stop().await;
}

/// The answer to a relayed message cut half-way after WhatsApp took it: the send is a network
/// failure (retried: the message arrives, at most once more, as any send whose answer is lost),
/// never a refusal reported as "Could not relay".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_answer_is_cut_mid_response_is_retried_not_reported_as_refused() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Cut", &[JANE]).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    sim.send_as_phone(JANE, Some(&gid), "window open", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("window open")).await;
    settled(&bot).await;
    sim_fault(&sim, json!({"method": "POST", "path": "/messages$", "drop": true, "after": true}))
        .await;
    pod.post_message(&sid, ALICE, "<messageML>cut short</messageML>").expect("post");
    pod.post_message(&sid, ALICE, "<messageML>next</messageML>").expect("post");
    wait_for("the next message", Duration::from_secs(10), || {
        let n = group_says(&sim, &gid, "*Alice Ng*: next");
        async move { (n >= 1).then_some(()) }
    })
    .await;
    settled(&bot).await;
    assert_eq!(sim.stats().faults_served, 1);
    let copies = group_says(&sim, &gid, "*Alice Ng*: cut short");
    assert!((1..=2).contains(&copies), "delivered, at most once more: {copies}");
    assert_eq!(posts(&pod, &sid, "Could not"), 0, "a delivered message is not reported lost");
    assert_eq!(group_says(&sim, &gid, "*Alice Ng*: next"), 1);
    bot.stop().await;
}

// ----- the store -----

/// `/healthz`: its status and body.
async fn health(bot: &Bot) -> (u16, Value) {
    let answer =
        reqwest::get(format!("http://{}/healthz", bot.monitoring_addr)).await.expect("healthz");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// The store locked by another process (`BEGIN EXCLUSIVE` on the file) for 8 s, while a relayed
/// message is being sent: the bot takes no event meanwhile (webhooks answered 500 and retried
/// by Meta, the datafeed batch left unacknowledged), `/healthz` says the store is not
/// writable, and when the lock goes everything is handled, once: the message sent during the
/// lock is not sent again, the command posted and the contact's message written meanwhile are
/// answered and relayed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_stops_the_intake_says_so_and_resumes_without_loss_or_repeats() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Locked", &[JANE]).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    sim.send_as_phone(JANE, Some(&gid), "window open", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("window open")).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    help_answered(&pod, &im, 1).await;
    settled(&bot).await;
    assert_eq!(health(&bot).await.0, 200);

    // A relayed message is being sent (WhatsApp takes 1.5 s) when the store gets locked.
    sim_fault(&sim, json!({"method": "POST", "path": "/messages$", "hangMs": 1500, "count": 1}))
        .await;
    pod.post_message(&sid, ALICE, "<messageML>in flight</messageML>").expect("post");
    wait_for("the send under way", Duration::from_secs(10), || {
        let n = sim.stats().faults_served;
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let lock = rusqlite::Connection::open(dir.path().join("bot.db")).expect("second connection");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock the store");
    let locked = Instant::now();
    let delivered = sim.stats().webhooks_delivered;
    pod.post_message(&im, ALICE, HELP).expect("a command during the lock");
    sim.send_as_phone(JANE, Some(&gid), "written during the lock", None).expect("write");
    let (status, body) = wait_for("/healthz to say so", Duration::from_secs(20), || {
        let bot = &bot;
        async move {
            let (status, body) = health(bot).await;
            (status != 200).then_some((status, body))
        }
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["problems"].to_string().contains("store: not writable"), "{body}");
    wait_for("the lock held 8 s", Duration::from_secs(20), || {
        let over = locked.elapsed() >= Duration::from_secs(8);
        async move { over.then_some(()) }
    })
    .await;
    assert_eq!(help_answers(&pod, &im), 1, "no event taken while the store is locked");
    assert_eq!(posts(&pod, &sid, "written during the lock"), 0);
    assert_eq!(sim.stats().webhooks_delivered, delivered, "webhooks refused, Meta retries");
    lock.execute_batch("ROLLBACK").expect("unlock");

    wait_for("the command answered", Duration::from_secs(20), || {
        let n = help_answers(&pod, &im);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    wait_for_message(&pod, &sid, BOT, |t| t.contains("written during the lock")).await;
    wait_for("/healthz ok again", Duration::from_secs(20), || {
        let bot = &bot;
        async move { (health(bot).await.0 == 200).then_some(()) }
    })
    .await;
    pod.post_message(&sid, ALICE, "<messageML>after</messageML>").expect("post");
    wait_for("the next message", Duration::from_secs(10), || {
        let n = group_says(&sim, &gid, "*Alice Ng*: after");
        async move { (n >= 1).then_some(()) }
    })
    .await;
    settled(&bot).await;
    assert_eq!(group_says(&sim, &gid, "*Alice Ng*: in flight"), 1, "sent once, not again");
    assert_eq!(help_answers(&pod, &im), 2, "answered once");
    assert_eq!(posts(&pod, &sid, "written during the lock"), 1, "relayed once");
    assert_eq!(bot.store.count_failed_inbound().expect("count"), 0, "nothing set aside");
    bot.stop().await;
}

// ----- the process killed -----

/// SIGKILL in the middle of a 50-contact join burst (seven native groups, a native group has 8
/// contacts at most), with two strangers tapping forwarded links meanwhile: after the restart
/// everyone invited is in their group, nobody else is, every request is settled; each decision
/// was made once (a post or confirmation in flight at the kill may go once more: at least
/// once to the APIs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_50_contact_join_burst_lets_in_everyone_invited_and_nobody_else() {
    use crate::support::instances::{InstanceOptions, Instances};
    let pod = start_pod().await;
    let sim = start_sim().await;
    let mut bot = Instances::start(&pod, &sim, InstanceOptions::new(1)).await;

    let phones: Vec<String> = (0..50).map(|i| format!("4479111240{i:02}")).collect();
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let batches: Vec<&[String]> = phones.chunks(8).collect();
    for (n, batch) in batches.iter().enumerate() {
        let numbers: Vec<String> = batch.iter().map(|p| format!("+{p}")).collect();
        pod.post_message(
            &im,
            ALICE,
            &format!("<messageML>/wa create \"Burst {n}\" {}</messageML>", numbers.join(" ")),
        )
        .expect("create");
    }
    // (room, group id, link, contacts) of each group, once every invitation is out.
    let mut groups = Vec::new();
    for (n, batch) in batches.iter().enumerate() {
        let name = format!("Burst {n}");
        let sid = wait_for("the room", Duration::from_secs(30), || {
            let found = pod
                .streams()
                .into_iter()
                .find(|s| s["type"] == "ROOM" && s["name"] == name.as_str())
                .and_then(|s| s["streamId"].as_str().map(str::to_owned));
            async move { found }
        })
        .await;
        wait_for("the summary", Duration::from_secs(30), || {
            let ready = posts(&pod, &sid, "is ready") > 0;
            async move { ready.then_some(()) }
        })
        .await;
        let (gid, link) =
            wait_for("the group and its invitations", Duration::from_secs(30), || {
                let group = sim.groups().into_iter().find(|g| g["subject"] == name.as_str());
                let invited = batch.iter().all(|p| templates_to(&sim, p, "group_invite_link") > 0);
                let found = group.filter(|_| invited).and_then(|g| {
                    Some((g["id"].as_str()?.to_owned(), g["inviteLink"].as_str()?.to_owned()))
                });
                async move { found }
            })
            .await;
        groups.push((sid, gid, link, batch.to_vec()));
    }

    // The burst: everyone taps at once, and two strangers with forwarded links.
    let strangers = ["447911124098", "447911124099"];
    for (i, (_, _, link, contacts)) in groups.iter().enumerate() {
        for phone in contacts {
            assert_eq!(sim.tap(phone, link)["result"], "requested");
        }
        if let Some(stranger) = strangers.get(i) {
            assert_eq!(sim.tap(stranger, link)["result"], "requested");
        }
    }
    let inside = |sim: &WhatsAppSim| -> usize {
        sim.groups().iter().map(|g| g["participants"].as_array().map_or(0, Vec::len)).sum()
    };
    wait_for("a part of the burst let in", Duration::from_secs(30), || {
        let n = inside(&sim);
        async move { (n >= 10).then_some(()) }
    })
    .await;
    bot.kill(0).await;
    let at_kill = inside(&sim);
    bot.restart(0).await;

    wait_for("everyone invited let in", Duration::from_secs(60), || {
        let all = groups.iter().all(|(_, gid, _, contacts)| {
            sim.group(gid).is_some_and(|g| {
                g["participants"].as_array().map_or(0, Vec::len) == contacts.len()
                    && g["pendingRequests"] == json!([])
            })
        });
        async move { all.then_some(()) }
    })
    .await;
    // Webhooks Meta retried while the bot was down arrive with its backoff (up to 5 s apart).
    let joined_posts = |sid: &str, phone: &str| -> usize {
        // "+44… joined", or "Name (+44 7911 …) joined" once WhatsApp showed the profile.
        let spaced = wa_groups_bot::groups::E164::parse(phone).expect("phone").international();
        pod.messages(sid)
            .iter()
            .filter(|m| m.user == BOT && m.text.contains("joined"))
            .filter(|m| m.text.contains(&format!("+{phone} ")) || m.text.contains(&spaced))
            .count()
    };
    wait_for("every join said and confirmed", Duration::from_secs(60), || {
        let all = groups.iter().all(|(sid, _, _, contacts)| {
            contacts.iter().all(|phone| {
                joined_posts(sid, phone) > 0 && templates_to(&sim, phone, "group_update") > 0
            })
        });
        async move { all.then_some(()) }
    })
    .await;
    bot.wait_outbox_empty(0).await;
    let mut repeats = 0;
    for (sid, gid, _, contacts) in &groups {
        let g = sim.group(gid).expect("group");
        let mut inside: Vec<String> = g["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect();
        inside.sort();
        let mut want = contacts.clone();
        want.sort();
        assert_eq!(inside, want, "the invited and only them in {gid}");
        for phone in contacts {
            let joined = joined_posts(sid, phone);
            let confirmed = templates_to(&sim, phone, "group_update");
            assert!(
                (1..=2).contains(&joined),
                "{phone}: joined posted {joined} times: {:?}",
                pod.messages(sid).iter().map(|m| m.text.clone()).collect::<Vec<_>>()
            );
            assert!((1..=2).contains(&confirmed), "{phone}: confirmed {confirmed} times");
            repeats += joined + confirmed - 2;
        }
    }
    for stranger in strangers {
        assert!(
            sim.groups().iter().all(|g| !g["participants"].to_string().contains(stranger)),
            "{stranger} let in"
        );
    }
    let rejected: Vec<String> = groups
        .iter()
        .flat_map(|(sid, ..)| pod.messages(sid))
        .filter(|m| m.user == BOT && m.text.contains("rejected"))
        .map(|m| m.text)
        .collect();
    for stranger in strangers {
        let spaced = wa_groups_bot::groups::E164::parse(stranger).expect("phone").international();
        let n = rejected.iter().filter(|t| t.contains(stranger) || t.contains(&spaced)).count();
        assert!((1..=2).contains(&n), "{stranger}'s rejection said {n} times: {rejected:?}");
    }
    assert!(rejected.len() <= 2 * strangers.len(), "only strangers are rejected: {rejected:?}");
    eprintln!("join burst: {at_kill} of 50 in at the kill; {repeats} post(s) in flight repeated");
    assert!(repeats <= 16, "only what was in flight at the kill repeats: {repeats}");
    bot.stop_all().await;
}

/// The store's disk full (SQLITE_FULL): the bot runs in a mount namespace of its own
/// (`unshare -rm`) with its store on an 8 MB tmpfs, which the test fills through
/// `/proc/<pid>/root` while a reader holds a snapshot (so SQLite must grow its WAL, not reuse
/// it). The bot takes no event meanwhile (webhooks refused and retried by Meta, the datafeed
/// batch left unacknowledged), `/healthz` says the store is not writable, and once space is
/// freed everything is handled, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_intake_says_so_and_resumes_without_loss_or_repeats() {
    use crate::support::process;
    use std::io::Write as _;
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).expect("store dir");
    let port = process::free_port();
    let config = process::write_config(&pod, &sim, dir.path(), port, &store_dir.join("bot.db"));
    let script = "mount -t tmpfs -o size=8m tmpfs \"$1\" && shift && exec \"$@\"";
    let shown = store_dir.display().to_string();
    let mut child =
        process::spawn(&config, &["unshare", "-rm", "sh", "-c", script, "sh", &shown], &[]);
    process::healthy(port, &config).await;
    let pid = child.id().expect("pid");
    // The store as the bot sees it, on its tmpfs.
    let seen = std::path::PathBuf::from(format!("/proc/{pid}/root"))
        .join(store_dir.strip_prefix("/").expect("absolute"));
    assert!(seen.join("bot.db").exists(), "the store is on the bot's tmpfs");
    assert!(!store_dir.join("bot.db").exists(), "not on the test's file system");

    let (sid, gid, link) = native_group(&pod, &sim, "Full", &[JANE]).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    sim.send_as_phone(JANE, Some(&gid), "window open", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("window open")).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    help_answered(&pod, &im, 1).await;
    wait_for("a quiet outbox", Duration::from_secs(20), || async move {
        process::outbox_empty(port).await.then_some(())
    })
    .await;

    // Fill the disk: a reader pins the WAL, a file takes every free byte.
    let reader = rusqlite::Connection::open(seen.join("bot.db")).expect("reader");
    reader.execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;").expect("snapshot");
    let filler = seen.join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.flush();
    drop(file);
    let health = format!("http://127.0.0.1:{port}/healthz");
    let body: Value = wait_for("/healthz to say so", Duration::from_secs(20), || {
        let health = health.clone();
        async move {
            let answer = reqwest::get(&health).await.ok()?;
            (answer.status().as_u16() == 503).then_some(())?;
            answer.json().await.ok()
        }
    })
    .await;
    let problems = body["problems"].to_string();
    assert!(problems.contains("store: not writable"), "{body}");
    assert!(problems.contains("full"), "the reason is said: {body}");
    let (delivered, attempts) = (sim.stats().webhooks_delivered, sim.stats().webhook_attempts);
    pod.post_message(&im, ALICE, HELP).expect("a command while full");
    sim.send_as_phone(JANE, Some(&gid), "written while full", None).expect("write");
    wait_for("webhooks refused", Duration::from_secs(20), || {
        let n = sim.stats().webhook_attempts;
        async move { (n >= attempts + 2).then_some(()) }
    })
    .await;
    assert_eq!(sim.stats().webhooks_delivered, delivered, "refused while full: Meta retries");
    assert_eq!(help_answers(&pod, &im), 1, "no event taken while the disk is full");
    assert_eq!(posts(&pod, &sid, "written while full"), 0);

    // Space again.
    std::fs::remove_file(&filler).expect("free the space");
    reader.execute_batch("ROLLBACK").expect("end the snapshot");
    drop(reader);
    wait_for("the command answered", Duration::from_secs(30), || {
        let n = help_answers(&pod, &im);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    wait_for_message(&pod, &sid, BOT, |t| t.contains("written while full")).await;
    process::healthy(port, &config).await;
    pod.post_message(&sid, ALICE, "<messageML>after</messageML>").expect("post");
    wait_for("the next message", Duration::from_secs(10), || {
        let n = group_says(&sim, &gid, "*Alice Ng*: after");
        async move { (n >= 1).then_some(()) }
    })
    .await;
    wait_for("a quiet outbox", Duration::from_secs(20), || async move {
        process::outbox_empty(port).await.then_some(())
    })
    .await;
    assert_eq!(help_answers(&pod, &im), 2, "answered once");
    assert_eq!(posts(&pod, &sid, "written while full"), 1, "relayed once");
    assert_eq!(group_says(&sim, &gid, "*Alice Ng*: after"), 1);
    assert_eq!(participants(&sim, &gid), json!([JANE]));
    let _ = child.kill().await;
}

/// The store locked while a command is being decided (its live read of the room's owners is
/// under way, then its commit waits for the lock): with a single attempt allowed before an
/// event is set aside, the command is still carried out, once, when the lock goes, and is
/// not set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_locked_while_a_command_is_decided_does_not_set_the_command_aside() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let timings = wa_groups_bot::app::BotTimings {
        dispatch: wa_groups_bot::dispatch::DispatchPolicy {
            max_attempts: 1,
            first_backoff: Duration::from_millis(50),
            rescan_every: Duration::from_millis(500),
            ..Default::default()
        },
        ..Default::default()
    };
    let bot = start_bot_with_whatsapp_config(&pod, &sim, dir.path(), "\"*\"", timings, "").await;
    let (sid, gid, link) = native_group(&pod, &sim, "Decided", &[JANE]).await;
    joins(&pod, &sim, &sid, JANE, &link).await;
    settled(&bot).await;
    // The owners' check hangs 1 s; the store is locked meanwhile, for 8 s: the decision's
    // commit waits 5 s and fails; the lock goes while what follows is under way.
    pod_fault(&pod, json!({"path": "/membership/list$", "hangMs": 1000, "count": 1})).await;
    let served = pod.stats().faults_served;
    pod.post_message(&sid, ALICE, "<messageML>/wa rename \"Decided later\"</messageML>")
        .expect("rename");
    wait_for("the owners' check under way", Duration::from_secs(10), || {
        let n = pod.stats().faults_served;
        async move { (n > served).then_some(()) }
    })
    .await;
    let lock = rusqlite::Connection::open(dir.path().join("bot.db")).expect("second connection");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock the store");
    let locked = Instant::now();
    wait_for("the lock held 8 s", Duration::from_secs(20), || {
        let over = locked.elapsed() >= Duration::from_secs(8);
        async move { over.then_some(()) }
    })
    .await;
    lock.execute_batch("ROLLBACK").expect("unlock");
    wait_for("the rename", Duration::from_secs(20), || {
        let subject = sim.group(&gid).map(|g| g["subject"].clone());
        async move { (subject == Some(json!("Decided later"))).then_some(()) }
    })
    .await;
    settled(&bot).await;
    assert_eq!(bot.store.count_failed_inbound().expect("count"), 0, "nothing set aside");
    assert_eq!(posts(&pod, &sid, "could not handle"), 0);
    assert_eq!(group_says(&sim, &gid, "now called \"Decided later\""), 1, "one notice");
    bot.stop().await;
}
