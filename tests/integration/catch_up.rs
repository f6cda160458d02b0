//! Nothing lost across a feed loss: what is posted while the bot has no datafeed is read back
//! from the message history once a new feed exists, and handled once even when the datafeed
//! brings it too. Against the mock pod over loopback.

use std::time::Duration;

use wa_groups_bot::app::Bot;
use wa_groups_bot::groups::UserId;
use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::symphony::{CatchUp, SymphonyClient};

use crate::support::{self, ALICE, BOB, BOT, start_bot, start_pod, wait_for};

const HELP: &str = "<messageML>/wa help</messageML>";

fn is_help(text: &str) -> bool {
    text.starts_with("WhatsApp groups: commands")
}

fn answers(pod: &MockPod, im: &str) -> usize {
    pod.messages(im).iter().filter(|m| m.user == BOT && is_help(&m.text)).count()
}

async fn wait_answers(pod: &MockPod, im: &str, n: usize) {
    wait_for(&format!("{n} answers"), Duration::from_secs(15), || {
        let got = answers(pod, im);
        async move { (got >= n).then_some(()) }
    })
    .await;
}

/// Alice asks for help and the bot answers: the bot has handled an event (a fresh bot catches
/// up on nothing), and the answer is the `n`th.
async fn ask_and_wait(pod: &MockPod, im: &str, n: usize) {
    pod.post_message(im, ALICE, HELP).expect("post");
    wait_answers(pod, im, n).await;
}

/// `wagb_inbound_duplicates_total{source="symphony"}` on the bot's `/metrics`.
async fn symphony_duplicates(bot: &Bot) -> u64 {
    let url = format!("http://{}/metrics", bot.http_addr);
    let text = reqwest::get(&url).await.expect("metrics").text().await.expect("body");
    text.lines()
        .find_map(|l| l.strip_prefix("wagb_inbound_duplicates_total{source=\"symphony\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The feed expires, and what Alice posts before the bot has a new one reaches no feed: the
/// bot's next feed creation is held until she has posted.
async fn post_between_feeds(pod: &MockPod, im: &str) {
    let served = pod.stats().faults_served;
    pod.inject_hang("^/agent/v5/datafeeds$", Duration::from_secs(2), 1).expect("hang");
    pod.expire_datafeeds();
    wait_for("the bot creating a new feed", Duration::from_secs(10), || {
        let n = pod.stats().faults_served;
        async move { (n > served).then_some(()) }
    })
    .await;
    let missed = pod.stats().missed_events;
    pod.post_message(im, ALICE, HELP).expect("post");
    assert_eq!(pod.stats().missed_events, missed + 1, "the message reached no feed of the bot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_posted_while_the_feed_is_gone_is_answered_once_on_the_new_feed() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    ask_and_wait(&pod, &im, 1).await;

    post_between_feeds(&pod, &im).await;
    wait_answers(&pod, &im, 2).await;
    assert_eq!(pod.stats().feeds_created, 2);
    assert!(pod.stats().history_reads >= 1);

    // The new feed works, and the caught-up command was answered once: a duplicate would have
    // been answered before this later one.
    ask_and_wait(&pod, &im, 3).await;
    assert_eq!(answers(&pod, &im), 3, "{:?}", pod.messages(&im));
    bot.stop().await;
}

/// Found by the chaos soak (seed 31): a fresh bot whose feed was lost before it received any
/// event caught up on nothing, so a `/wa create` posted in that gap was never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_posted_while_a_fresh_bots_first_feed_is_gone_is_answered() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    // No event yet; the feed is lost and the first command reaches no feed.
    post_between_feeds(&pod, &im).await;
    wait_answers(&pod, &im, 1).await;
    ask_and_wait(&pod, &im, 2).await;
    assert_eq!(answers(&pod, &im), 2, "{:?}", pod.messages(&im));
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_both_the_datafeed_and_the_catch_up_bring_is_answered_once() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    ask_and_wait(&pod, &im, 1).await;
    let before = symphony_duplicates(&bot).await;

    // The catch-up after the new feed reads a little before the last event seen: Alice's
    // command, already delivered by the datafeed, comes again and is recognised.
    pod.expire_datafeeds();
    wait_for("the catch-up recognising the command", Duration::from_secs(10), || {
        let bot = &bot;
        async move { (symphony_duplicates(bot).await > before).then_some(()) }
    })
    .await;
    assert_eq!(pod.stats().feeds_created, 2);
    ask_and_wait(&pod, &im, 2).await;
    assert_eq!(answers(&pod, &im), 2, "{:?}", pod.messages(&im));
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_posted_while_the_bot_was_down_and_its_feed_expired_is_answered_once() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    ask_and_wait(&pod, &im, 1).await;
    first.stop().await;

    // A long outage: the feed is gone by the time Alice asks, and by the restart.
    pod.expire_datafeeds();
    let missed = pod.stats().missed_events;
    pod.post_message(&im, ALICE, HELP).expect("post");
    assert_eq!(pod.stats().missed_events, missed + 1);

    let second = start_bot(&pod, dir.path()).await;
    wait_answers(&pod, &im, 2).await;
    ask_and_wait(&pod, &im, 3).await;
    assert_eq!(answers(&pod, &im), 3, "{:?}", pod.messages(&im));
    second.stop().await;
}

#[tokio::test]
async fn the_catch_up_pages_through_streams_and_long_histories() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client =
        SymphonyClient::new(&support::bot_config(&pod, dir.path(), "keys/bot-pkcs8.pem").symphony)
            .expect("client");
    client.authenticate().await.expect("login");
    // More streams than a page of the stream list (100), only two with messages: an IM, and a
    // room with a long history (more than two pages of 500; messages often share a millisecond);
    // and a room without the bot.
    for i in 0..101 {
        pod.create_room(ALICE, &format!("Quiet {i}"), &[BOT]).expect("room");
    }
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let room = pod.create_room(ALICE, "Desk", &[BOT, BOB]).expect("room");
    let elsewhere = pod.create_room(ALICE, "Elsewhere", &[BOB]).expect("room");
    for i in 0..1_203 {
        pod.post_message(
            &room,
            if i % 2 == 0 { ALICE } else { BOB },
            &format!("<messageML>m{i}</messageML>"),
        )
        .expect("post");
    }
    pod.post_message(&room, BOT, "<messageML>the bot's own</messageML>").expect("post");
    pod.post_message(&im, ALICE, HELP).expect("post");
    pod.post_message(&elsewhere, ALICE, "<messageML>not for the bot</messageML>").expect("post");

    let found = CatchUp::new(client, UserId(BOT)).messages_since(0).await.expect("catch-up");
    assert!(found.failed.is_empty(), "{:?}", found.failed);
    assert_eq!(found.streams, 103, "the quiet rooms, the IM and the desk");
    let texts: Vec<String> = found
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            wa_groups_bot::events::SymphonyEventKind::MessageSent(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(texts.len(), 1_204, "every message once, the bot's own left out");
    let mut keys: Vec<String> = found.events.iter().map(|e| e.dedupe_key()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 1_204);
    assert!(found.events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp), "oldest first");
    assert!(texts.contains(&"m0".to_owned()) && texts.contains(&"m1202".to_owned()));
    assert!(texts.contains(&"/wa help".to_owned()));
}
