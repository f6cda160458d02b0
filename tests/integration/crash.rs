//! Crash tests: the bot binary is aborted at its k-th crash point (right after a commit: an
//! event decided, an effect done, a batch or webhook persisted) for every k of a scenario —
//! create a native group, a contact joins, one invitee and then the joined contact are removed
//! — and restarted. Whatever k, the end is the same: one room, one WhatsApp group, one
//! invitation per contact, one confirmation, one notice per removal, nobody barred inside.

use std::time::Duration;

use serde_json::Value;
use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;

use crate::lifecycle::{JANE, JOHN};
use crate::support::{ALICE, BOT, process, start_pod, start_sim};

/// The bot as a process, restarted (without the crash point) whenever it has died.
struct Runner {
    config: std::path::PathBuf,
    child: tokio::process::Child,
    crashed: bool,
}

impl Runner {
    fn spawn(config: &std::path::Path, crash_at: Option<u64>) -> tokio::process::Child {
        let k = crash_at.map(|k| k.to_string());
        let env: Vec<(&str, &str)> = k.iter().map(|k| ("WAGB_CRASH_AT", k.as_str())).collect();
        process::spawn(config, &[], &env)
    }

    /// Restarts the bot if it died.
    fn ensure_running(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            self.crashed = true;
            self.child = Self::spawn(&self.config, None);
        }
    }

    async fn wait<T>(&mut self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.ensure_running();
            if let Some(v) = check() {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn bot_messages(pod: &MockPod, stream: &str, needle: &str) -> usize {
    pod.messages(stream).iter().filter(|m| m.user == BOT && m.text.contains(needle)).count()
}

/// Templates a phone received 1:1 (not as a group member).
fn templates_to(sim: &WhatsAppSim, phone: &str, name: &str) -> usize {
    sim.inbox(phone)
        .iter()
        .filter(|m| m["template"]["name"] == name && m["groupId"].is_null())
        .count()
}

/// One run of the scenario with the bot aborted at crash point `k`. Returns whether it
/// crashed, and how many messages went twice.
async fn scenario(k: u64) -> (bool, usize) {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = process::free_port();
    let config = process::write_config(&pod, &sim, dir.path(), port, &dir.path().join("bot.db"));
    let mut bot =
        Runner { child: Runner::spawn(&config, Some(k)), config: config.clone(), crashed: false };
    // Up: healthy (its feed is read), then it answers /wa help in an IM.
    let health = format!("http://127.0.0.1:{port}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        bot.ensure_running();
        let up = reqwest::get(&health).await.is_ok_and(|r| r.status().is_success());
        if up {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let log = std::fs::read_to_string(dir.path().join("bot.log")).unwrap_or_default();
            panic!("the bot never became healthy:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("help");
    bot.wait("the help", || (bot_messages(&pod, &im, "/wa create") > 0).then_some(())).await;

    pod.post_message(
        &im,
        ALICE,
        &format!("<messageML>/wa create \"Crash\" +{JANE} +{JOHN}</messageML>"),
    )
    .expect("create");
    let sid = bot
        .wait("the room", || {
            pod.streams()
                .into_iter()
                .find(|s| s["type"] == "ROOM" && s["name"] == "Crash")
                .and_then(|s| s["streamId"].as_str().map(str::to_owned))
        })
        .await;
    bot.wait("the summary", || (bot_messages(&pod, &sid, "is ready") > 0).then_some(())).await;
    let (gid, link) = bot
        .wait("the invitations", || {
            let g = sim.groups().into_iter().find(|g| g["subject"] == "Crash")?;
            let both = [JANE, JOHN].iter().all(|p| templates_to(&sim, p, "group_invite_link") > 0);
            both.then(|| {
                (g["id"].as_str().map(str::to_owned), g["inviteLink"].as_str().map(str::to_owned))
            })
        })
        .await;
    let (gid, link) = (gid.expect("gid"), link.expect("link"));

    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    bot.wait("Jane confirmed", || {
        (bot_messages(&pod, &sid, "+447911123456 joined") > 0
            && templates_to(&sim, JANE, "group_update") > 0)
            .then_some(())
    })
    .await;

    pod.post_message(&sid, ALICE, &format!("<messageML>/wa remove +{JOHN}</messageML>"))
        .expect("remove John");
    bot.wait("John removed", || {
        (bot_messages(&pod, &sid, "+447911123457 was removed") > 0).then_some(())
    })
    .await;
    pod.post_message(&sid, ALICE, &format!("<messageML>/wa remove +{JANE}</messageML>"))
        .expect("remove Jane");
    bot.wait("Jane removed", || {
        let out = sim.group(&gid).is_some_and(|g| g["participants"] == serde_json::json!([]));
        (out && bot_messages(&pod, &sid, "+447911123456 was removed") > 0).then_some(())
    })
    .await;
    // Let anything still queued run out before counting (a duplicate would show up now).
    bot.wait("a quiet outbox", || {
        let g = sim.group(&gid)?;
        let notices = notices(&g);
        (notices.len() >= 2).then_some(())
    })
    .await;
    // Then until the bot's outbox is empty (its /metrics), so that the counts are final.
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        bot.ensure_running();
        let text = match reqwest::get(&metrics).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains("wagb_outbox_effects{state=\"pending\"} 0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the outbox never emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let label = format!("crash point {k}");
    // Decisions are made once, so what the bot creates is made once (a lost answer is
    // recognised by its marker). Messages being sent at the very moment of the kill (up to one
    // per order key, several keys at once) may go twice (at-least-once to the APIs): every
    // message arrives, at most one extra time.
    let rooms =
        pod.streams().iter().filter(|s| s["type"] == "ROOM" && s["name"] == "Crash").count();
    assert_eq!(rooms, 1, "{label}: one room");
    let groups = sim.groups().iter().filter(|g| g["subject"] == "Crash").count();
    assert_eq!(groups, 1, "{label}: one WhatsApp group");
    let mut repeats = 0;
    let mut once = |n: usize, what: &str| {
        assert!((1..=2).contains(&n), "{label}: {what} sent {n} times");
        repeats += n - 1;
    };
    for phone in [JANE, JOHN] {
        once(templates_to(&sim, phone, "group_invite_link"), "an invitation");
    }
    once(templates_to(&sim, JANE, "group_update"), "Jane's confirmation");
    once(bot_messages(&pod, &sid, "is ready"), "the summary");
    once(bot_messages(&pod, &sid, "+447911123456 joined"), "the join post");
    for phone in ["+447911123456", "+447911123457"] {
        once(bot_messages(&pod, &sid, &format!("{phone} was removed")), "a removal post");
    }
    let g = sim.group(&gid).expect("group");
    for phone in ["+447911123456", "+447911123457"] {
        let n = notices(&g).iter().filter(|n| n.contains(phone)).count();
        once(n, "a removal notice");
    }
    assert_eq!(g["participants"], serde_json::json!([]), "{label}: nobody barred inside");
    // John, removed before he joined, asks again: rejected, and the room is told.
    let tapped = sim.tap(JOHN, &link)["result"].clone();
    assert!(tapped == "requested" || tapped == "refused", "{label}: {tapped}");
    bot.wait("John's request rejected", || {
        let g = sim.group(&gid)?;
        (g["pendingRequests"] == serde_json::json!([])
            && (tapped == "refused" || bot_messages(&pod, &sid, "+447911123457 was rejected") > 0))
            .then_some(())
    })
    .await;
    assert_eq!(sim.group(&gid).expect("group")["participants"], serde_json::json!([]), "{label}");
    let _ = bot.child.kill().await;
    (bot.crashed, repeats)
}

/// The WhatsApp group's removal notices.
fn notices(group: &Value) -> Vec<String> {
    group["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(ToString::to_string)
                .filter(|t| t.contains("removed") && t.contains("+4479111234"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_killed_at_any_commit_ends_the_same() {
    // Every crash point until a run passes them all (the scenario then ran uncrashed).
    let stride: u64 =
        std::env::var("WAGB_CRASH_STRIDE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut k = 1;
    let (mut crashed_runs, mut repeated_runs) = (0, 0);
    loop {
        let (crashed, repeats) = scenario(k).await;
        if !crashed {
            assert_eq!(repeats, 0, "without a kill nothing repeats");
            break;
        }
        crashed_runs += 1;
        repeated_runs += usize::from(repeats > 0);
        k += stride;
        assert!(k < 400, "the scenario never ran without reaching the crash point");
    }
    assert!(crashed_runs * stride >= 40, "the scenario has crash points to test: {crashed_runs}");
    eprintln!(
        "crash test: {crashed_runs} runs aborted at a commit, each ended the same; \
         {repeated_runs} repeated a message in flight at the kill"
    );
}
