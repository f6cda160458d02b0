//! The bot as separate processes ([`crate::support::instances`]): an instance SIGKILLed while
//! chat is relayed, then restarted on the same port and store, loses nothing and repeats
//! nothing. With one instance on SQLite until the PostgreSQL store is in.

use std::time::Duration;

use serde_json::Value;
use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;

use crate::lifecycle::{JANE, group_with_two_contacts};
use crate::support::instances::{InstanceOptions, Instances};
use crate::support::{ALICE, BOT, start_pod, start_sim, wait_for};

/// What the WhatsApp group's messages say (texts, or templates' first parameter), in order.
pub(crate) fn group_said(sim: &WhatsAppSim, gid: &str) -> Vec<String> {
    sim.group(gid)
        .and_then(|g| g["messages"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m: &Value| match m["type"].as_str() {
            Some("template") => m["template"]["params"][0].as_str().unwrap_or_default().to_owned(),
            _ => m["text"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

fn in_group(sim: &WhatsAppSim, gid: &str, needle: &str) -> usize {
    group_said(sim, gid).iter().filter(|t| t.contains(needle)).count()
}

fn in_room(pod: &MockPod, sid: &str, needle: &str) -> usize {
    pod.messages(sid).iter().filter(|m| m.user == BOT && m.text.contains(needle)).count()
}

/// Alice writes `room_text` in the room and Jane `wa_text` in the group; waits until both are
/// relayed.
async fn chat(
    pod: &MockPod,
    sim: &WhatsAppSim,
    sid: &str,
    gid: &str,
    room_text: &str,
    wa_text: &str,
) {
    pod.post_message(sid, ALICE, &format!("<messageML>{room_text}</messageML>")).expect("post");
    sim.send_as_phone(JANE, Some(gid), wa_text, None).expect("Jane writes");
    wait_relayed(pod, sim, sid, gid, room_text, wa_text).await;
}

async fn wait_relayed(
    pod: &MockPod,
    sim: &WhatsAppSim,
    sid: &str,
    gid: &str,
    room_text: &str,
    wa_text: &str,
) {
    wait_for(&format!("{room_text:?} and {wa_text:?} relayed"), Duration::from_secs(30), || {
        let done = in_group(sim, gid, room_text) > 0 && in_room(pod, sid, wa_text) > 0;
        async move { done.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_and_restarted_relays_on_and_loses_nothing() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let mut bots = Instances::start(&pod, &sim, InstanceOptions::new(1)).await;
    let (sid, gid) = group_with_two_contacts(&pod, &sim).await;
    chat(&pod, &sim, &sid, &gid, "room says one", "jane says one").await;

    // Killed with nothing in flight; both sides write while it is down.
    bots.wait_outbox_empty(0).await;
    bots.kill(0).await;
    assert!(!bots.is_running(0));
    let down = bots.base_url(0).trim_start_matches("http://").to_owned();
    assert!(tokio::net::TcpStream::connect(&down).await.is_err(), "its port refuses");
    pod.post_message(&sid, ALICE, "<messageML>room says while down</messageML>").expect("post");
    sim.send_as_phone(JANE, Some(&gid), "jane says while down", None).expect("Jane writes");

    // Restarted: what was written meanwhile comes through (the datafeed kept it, the simulator
    // retried the webhook), then the chat goes on.
    bots.restart(0).await;
    wait_relayed(&pod, &sim, &sid, &gid, "room says while down", "jane says while down").await;
    chat(&pod, &sim, &sid, &gid, "room says two", "jane says two").await;
    bots.wait_outbox_empty(0).await;

    for text in ["room says one", "room says while down", "room says two"] {
        assert_eq!(
            in_group(&sim, &gid, text),
            1,
            "{text:?} in the group: {:?}",
            group_said(&sim, &gid)
        );
    }
    for text in ["jane says one", "jane says while down", "jane says two"] {
        assert_eq!(in_room(&pod, &sid, text), 1, "{text:?} in the room");
    }
    bots.stop_all().await;
}

/// A counter's value in a `/metrics` text (0 when absent).
fn counter(metrics: &str, series: &str) -> u64 {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0)
}

/// Each instance's `series` counter.
async fn per_instance(bots: &Instances, series: &str) -> Vec<u64> {
    let mut counts = Vec::new();
    for i in 0..bots.count() {
        counts.push(counter(&bots.metrics(i).await.unwrap_or_default(), series));
    }
    counts
}

fn answers(pod: &MockPod, im: &str) -> usize {
    pod.messages(im)
        .iter()
        .filter(|m| m.user == BOT && m.text.starts_with("WhatsApp groups: commands"))
        .count()
}

/// Alice asks `/wa help` `n` times, each once the previous one is answered.
async fn ask_help(pod: &MockPod, im: &str, n: usize) {
    for _ in 0..n {
        let before = answers(pod, im);
        pod.post_message(im, ALICE, "<messageML>/wa help</messageML>").expect("post");
        wait_for("the answer", Duration::from_secs(30), || {
            let n = answers(pod, im);
            async move { (n > before).then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_feed_and_the_webhooks_and_one_takes_all_when_the_other_dies() {
    // Commands and 1:1 messages need no shared state: each instance on its own SQLite file.
    let pod = start_pod().await;
    let sim = start_sim().await;
    let mut bots = Instances::start(&pod, &sim, InstanceOptions::new(2)).await;
    // Started together, both may find no feed and create one: they then settle on the older.
    assert_eq!(pod.datafeeds().len(), 1, "one feed for both: {:?}", pod.stats());
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let helps = "wagb_commands_total{command=\"help\"}";
    let webhooks = "wagb_inbound_events_total{source=\"whatsapp\"}";

    ask_help(&pod, &im, 20).await;
    let phones: Vec<String> = (0..10).map(|k| format!("4479112000{k:02}")).collect();
    for phone in &phones {
        sim.send_as_phone(phone, None, "hello", None).expect("write");
    }
    wait_for("the webhooks taken", Duration::from_secs(30), || {
        let stats = sim.stats();
        async move { (stats.webhooks_delivered >= 10).then_some(()) }
    })
    .await;
    let commands = per_instance(&bots, helps).await;
    assert_eq!(commands.iter().sum::<u64>(), 20, "each command handled once: {commands:?}");
    assert!(commands.iter().all(|n| *n > 0), "both read the feed: {commands:?}");
    let received = per_instance(&bots, webhooks).await;
    assert!(received.iter().all(|n| *n > 0), "both take webhooks: {received:?}");

    // The second instance dies: the first takes every command and every webhook.
    bots.wait_outbox_empty(1).await;
    bots.kill(1).await;
    let delivered_before = sim.stats().webhooks_delivered;
    ask_help(&pod, &im, 5).await;
    for phone in &phones {
        sim.send_as_phone(phone, None, "still there?", None).expect("write");
    }
    wait_for("the webhooks taken by the survivor", Duration::from_secs(30), || {
        let stats = sim.stats();
        async move { (stats.webhooks_delivered >= delivered_before + 10).then_some(()) }
    })
    .await;
    assert_eq!(per_instance(&bots, helps).await[0], commands[0] + 5);
    assert!(per_instance(&bots, webhooks).await[0] >= received[0] + 10);
    assert!(sim.stats().webhooks_refused > 0, "the dead instance's turns were skipped");
    bots.wait_outbox_empty(0).await;
    assert_eq!(answers(&pod, &im), 25, "every command answered once");
    bots.stop_all().await;
}
