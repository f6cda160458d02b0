//! The README's first command: `wa-groups-bot sandbox` on a fresh data folder brings up the mock
//! pod, the WhatsApp simulator, the bot (which answers `/wa help` and stores WhatsApp webhooks)
//! and the web console, whose URL it prints.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::wait_for;

/// Four consecutive free loopback ports (the sandbox uses port to port+3).
fn free_ports() -> u16 {
    for _ in 0..50 {
        let Ok(first) = std::net::TcpListener::bind("127.0.0.1:0") else { continue };
        let Ok(addr) = first.local_addr() else { continue };
        let base = addr.port();
        if base > 65_000 {
            continue;
        }
        let rest: Vec<_> =
            (1..4).map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i))).collect();
        if rest.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("no four consecutive free ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_command_runs_the_whole_thing_on_a_fresh_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("sandbox");
    let port = free_ports();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"))
        .args(["sandbox", "--data"])
        .arg(&data)
        .args(["--port", &port.to_string()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the sandbox");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = String::new();
    let im = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            printed.push_str(&line);
            printed.push('\n');
            if let Some(rest) = line.split("/_sandbox/streams/").nth(1)
                && let Some(sid) = rest.split('/').next()
            {
                return Some(sid.to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("the sandbox printed no IM to try:\n{printed}"));
    assert!(data.join("bot-private.pem").exists() && data.join("bot-private.pub.pem").exists());
    let console = format!("http://127.0.0.1:{}/", port + 3);
    assert!(printed.contains(&format!("console: {console}")), "no console URL in:\n{printed}");

    let pod = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let page = http.get(&console).send().await.expect("the console answers");
    assert_eq!(page.status(), 200);
    let page = page.text().await.expect("page");
    assert!(page.contains("<script src=\"/console.js\">"), "{page}");
    // The console reaches the pod's control API through its own origin.
    let alice_streams: Value = http
        .get(format!("{console}pod/_sandbox/streams?member=10002"))
        .send()
        .await
        .expect("proxied")
        .json()
        .await
        .expect("json");
    assert_eq!(alice_streams[0]["streamId"], im.as_str());
    http.post(format!("{pod}/_sandbox/streams/{im}/messages"))
        .json(&json!({"as": 10002, "messageML": "<messageML>/wa help</messageML>"}))
        .send()
        .await
        .expect("alice writes");
    wait_for("the bot's help", Duration::from_secs(20), || {
        let http = http.clone();
        let url = format!("{pod}/_sandbox/streams/{im}/messages");
        async move {
            let messages: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            let answered = messages.as_array()?.iter().any(|m| {
                m["user"]["userId"] == 10001
                    && m["text"].as_str().is_some_and(|t| t.contains("/wa rename"))
            });
            answered.then_some(())
        }
    })
    .await;

    let sim = format!("http://127.0.0.1:{}", port + 1);
    let sent: Value = http
        .post(format!("{sim}/_sandbox/wa/phones/447911123456/messages"))
        .json(&json!({"to": "business", "text": "Hello from WhatsApp"}))
        .send()
        .await
        .expect("phone writes")
        .json()
        .await
        .expect("json");
    assert!(sent["id"].as_str().is_some_and(|id| id.starts_with("wamid.")));
    let db = data.join("bot.db");
    wait_for("the webhook in the bot's store", Duration::from_secs(20), || {
        let found = wa_groups_bot::store::Store::open(&db)
            .ok()
            .and_then(|s| s.count_inbound(wa_groups_bot::store::Source::WhatsApp).ok())
            .filter(|n| *n >= 1);
        async move { found }
    })
    .await;
    let _ = child.kill().await;
}
