//! The bot's log as an operator collects it: `logging.format: json` (here through
//! `WAGB__LOGGING__FORMAT`) writes one JSON object per line to stderr, each event carrying the
//! fields of the spans it happened in (the stream a failed call was for).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{ALICE, BOT, BOT_USERNAME, fixture, start_pod, wait_for, wait_for_message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_log_is_one_object_per_line_with_the_stream_of_each_event() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bot-config.yaml");
    std::fs::write(
        &config,
        format!(
            "scheme: http\nhost: 127.0.0.1\nport: {port}\n\
             bot: {{username: {BOT_USERNAME}, privateKey: {{path: {key}}}}}\n\
             retry: {{initialIntervalMillis: 50, maxIntervalMillis: 200}}\n\
             whatsapp: {{webhook: {{listen: \"127.0.0.1:0\"}}}}\n\
             store: {{path: {store}}}\ntemplates: {{dir: {templates}}}\n",
            port = pod.url().rsplit(':').next().expect("port"),
            key = fixture("keys/bot-pkcs8.pem").display(),
            store = dir.path().join("bot.db").display(),
            templates =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates").display(),
        ),
    )
    .expect("write config");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("WAGB")) {
        cmd.env_remove(key);
    }
    let mut child = cmd
        .args(["run", "--config"])
        .arg(&config)
        .env("WAGB__LOGGING__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the bot starts");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                lines.lock().expect("lines").push(line);
            }
        })
    };
    let logged = |what: &'static str| {
        let lines = lines.clone();
        move || {
            let found = lines.lock().expect("lines").iter().any(|l| l.contains(what));
            async move { found.then_some(()) }
        }
    };
    wait_for("the datafeed", Duration::from_secs(30), logged("datafeed created")).await;

    // An advisor asks for help; the agent refuses the bot's first answer once.
    pod.inject_fault(Some("POST"), r"^/agent/v4/stream/[^/]+/message/create$", 503, None, 1)
        .expect("fault");
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, |t| t.contains("/wa rename")).await;
    wait_for("the retry logged", Duration::from_secs(10), logged("Symphony call failed")).await;
    child.kill().await.expect("stop the bot");
    reader.await.expect("stderr read to its end");

    let lines = lines.lock().expect("lines").clone();
    let all = lines.join("\n");
    assert!(!all.contains('\x1b'), "escape codes in a JSON log:\n{all}");
    let events: Vec<Value> = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for event in &events {
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "an event without timestamp or level: {event}"
        );
    }
    let created = events
        .iter()
        .find(|e| e["message"] == "datafeed created")
        .unwrap_or_else(|| panic!("no datafeed event in:\n{all}"));
    assert!(created["feed"].is_string(), "{created}");
    assert_eq!(created["span"]["name"], "datafeed", "{created}");
    let retry = events
        .iter()
        .find(|e| e["message"] == "Symphony call failed; retrying")
        .unwrap_or_else(|| panic!("no retry event in:\n{all}"));
    assert_eq!(retry["level"], "WARN", "{retry}");
    let spans = retry["spans"].as_array().unwrap_or_else(|| panic!("no spans: {retry}"));
    let send = spans
        .iter()
        .find(|s| s["name"] == "symphony.send_message_with_attachments")
        .unwrap_or_else(|| panic!("not in the send's span: {retry}"));
    assert_eq!(send["stream_id"], im.as_str(), "{retry}");
}
