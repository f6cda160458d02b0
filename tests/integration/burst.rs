//! A burst: 500 messages each way across 20 native groups, while the mock pod and the
//! simulator throw 429s and 5xx at the bot. Everything arrives, once, in order per group.

use std::time::Duration;

use serde_json::json;

use crate::lifecycle::wa_group_named;
use crate::support::{ALICE, BOT, start_bot_with_whatsapp_config, start_pod, start_sim, wait_for};

const GROUPS: usize = 20;
const PER_GROUP: usize = 25;

fn phone(g: usize) -> String {
    format!("4479111300{g:02}")
}

/// The indices `i` of the `{tag}{g:02}-{i:02}` markers in `texts`, in order.
fn indices<'a>(texts: impl Iterator<Item = &'a str>, tag: char, g: usize) -> Vec<usize> {
    let marker = format!("{tag}{g:02}-");
    texts
        .filter_map(|t| {
            let at = t.find(&marker)? + marker.len();
            t.get(at..at + 2)?.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_messages_each_way_arrive_complete_in_order_and_once_despite_faults() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Retries never give up here: a burst under faults must lose nothing.
    let bot = start_bot_with_whatsapp_config(
        &pod,
        &sim,
        dir.path(),
        "\"*\"",
        wa_groups_bot::app::BotTimings::default(),
        "retry: {maxAttempts: -1, initialIntervalMillis: 50, multiplier: 2, maxIntervalMillis: 500}\n",
    )
    .await;

    // 20 native groups, one contact each, all joined.
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    for g in 0..GROUPS {
        pod.post_message(
            &im,
            ALICE,
            &format!("<messageML>/wa create \"Burst {g:02}\" +{}</messageML>", phone(g)),
        )
        .expect("create");
    }
    let mut rooms = Vec::new();
    let mut groups = Vec::new();
    for g in 0..GROUPS {
        let group = wa_group_named(&sim, &format!("Burst {g:02}")).await;
        let gid = group["id"].as_str().expect("gid").to_owned();
        let link = group["inviteLink"].as_str().expect("link").to_owned();
        assert_eq!(sim.tap(&phone(g), &link)["result"], "requested");
        groups.push(gid);
    }
    for (g, gid) in groups.iter().enumerate() {
        let gid = gid.clone();
        let p = phone(g);
        wait_for("the contact in the group", Duration::from_secs(20), || {
            let joined = sim.group(&gid).is_some_and(|x| x["participants"] == json!([p]));
            async move { joined.then_some(()) }
        })
        .await;
        let sid = pod
            .streams()
            .into_iter()
            .find(|s| s["name"] == format!("Burst {g:02}"))
            .and_then(|s| s["streamId"].as_str().map(str::to_owned))
            .expect("room");
        rooms.push(sid);
    }

    // Faults on both sides for the burst.
    let message_create = "/agent/v4/stream/.*/message/create";
    pod.inject_fault(Some("POST"), message_create, 429, Some(1), 10).expect("fault");
    pod.inject_fault(Some("POST"), message_create, 503, None, 15).expect("fault");
    pod.inject_fault(None, "/agent/v5/datafeeds", 503, None, 3).expect("fault");
    let http = reqwest::Client::new();
    for fault in [
        json!({"method": "POST", "path": "/messages$", "status": 429, "code": 130429, "count": 15}),
        json!({"method": "POST", "path": "/messages$", "status": 500, "code": 1, "count": 15}),
    ] {
        let r = http.post(format!("{}/_sandbox/wa/faults", sim.url())).json(&fault).send().await;
        assert!(r.expect("fault").status().is_success());
    }
    let r = http
        .post(format!("{}/_sandbox/wa/webhooks/faults", sim.url()))
        .json(&json!({"failFirst": 5}))
        .send()
        .await;
    assert!(r.expect("webhook fault").status().is_success());

    for i in 0..PER_GROUP {
        for g in 0..GROUPS {
            pod.post_message(&rooms[g], ALICE, &format!("<messageML>r{g:02}-{i:02}</messageML>"))
                .expect("advisor writes");
            sim.send_as_phone(&phone(g), Some(&groups[g]), &format!("w{g:02}-{i:02}"), None)
                .expect("contact writes");
        }
    }

    let all: Vec<usize> = (0..PER_GROUP).collect();
    for g in 0..GROUPS {
        let gid = groups[g].clone();
        let on_whatsapp =
            wait_for("every message in the WhatsApp group", Duration::from_secs(120), || {
                let texts: Vec<String> = sim
                    .group(&gid)
                    .and_then(|x| x["messages"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .map(|m| match m["type"].as_str() {
                        Some("template") => {
                            m["template"]["params"][0].as_str().unwrap_or_default().to_owned()
                        }
                        _ => m["text"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect();
                let got = indices(texts.iter().map(String::as_str), 'r', g);
                async move { (got.len() >= PER_GROUP).then_some(got) }
            })
            .await;
        assert_eq!(on_whatsapp, all, "group {g}: complete, in order, once");
        let sid = rooms[g].clone();
        let in_room = wait_for("every message in the room", Duration::from_secs(120), || {
            let texts: Vec<String> =
                pod.messages(&sid).into_iter().filter(|m| m.user == BOT).map(|m| m.text).collect();
            let got = indices(texts.iter().map(String::as_str), 'w', g);
            async move { (got.len() >= PER_GROUP).then_some(got) }
        })
        .await;
        assert_eq!(in_room, all, "room {g}: complete, in order, once");
    }
    // The faults did happen.
    let (pod_stats, sim_stats) = (pod.stats(), sim.stats());
    assert_eq!(pod_stats.faults_served, 28, "{pod_stats:?}");
    assert_eq!(sim_stats.faults_served, 30, "{sim_stats:?}");
    assert!(sim_stats.webhook_attempts > sim_stats.webhooks_delivered, "{sim_stats:?}");
    bot.stop().await;
}
