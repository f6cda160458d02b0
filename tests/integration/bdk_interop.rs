//! Fidelity of the mock pod: an unmodified bot built on the official Symphony Python BDK
//! (symphony-bdk-python 3.0.0 from PyPI) logs in, runs its Datafeed v2 loop, receives a message
//! typed through the control API and replies.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{
    self, ALICE, BOT, BOT_USERNAME, fixture, python::venv_python, wait_for, wait_for_message,
};

const BDK: &str = "symphony-bdk-python==3.0.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_bdk_logs_in_reads_the_datafeed_and_replies() {
    let python =
        tokio::task::spawn_blocking(|| venv_python("symphony-bdk", &[BDK])).await.expect("venv");
    let mut cfg = wa_groups_bot::sandbox::mock_pod::MockPodConfig::new(support::pod_users());
    cfg.datafeed_hold = Duration::from_secs(2);
    let pod = wa_groups_bot::sandbox::mock_pod::MockPod::start(cfg).await.expect("pod");

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bdk-config.yaml");
    std::fs::write(
        &config,
        format!(
            "scheme: http\nhost: 127.0.0.1\nport: {}\nbot:\n  username: {BOT_USERNAME}\n  privateKey:\n    path: {}\n\
             datafeed:\n  version: v2\n",
            pod.addr().port(),
            fixture("keys/bot-pkcs8.pem").display()
        ),
    )
    .expect("write BDK config");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bdk/echo_bot.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the BDK bot");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines_rx.recv().await {
            seen.push(line.clone());
            if line == "READY" {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        let _ = child.kill().await;
        panic!("the BDK bot did not start: {seen:?}\n{}", errors.await.unwrap_or_default());
    }
    assert!(seen.contains(&format!("LOGGED_IN {BOT}")), "{seen:?}");
    // The BDK creates its feed right after READY: wait for it so the message is not missed.
    wait_for("the BDK's datafeed", Duration::from_secs(20), || {
        let n = pod.stats().feeds_created;
        async move { (n >= 1).then_some(()) }
    })
    .await;

    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, "<messageML>hello <b>BDK</b></messageML>").expect("post");
    let reply = wait_for_message(&pod, &im, BOT, |t| t.starts_with("echo:")).await;
    assert_eq!(reply.text, "echo: hello BDK");

    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let stderr_text = errors.await.unwrap_or_default();
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "BDK bot exit: {status:?}\n{stderr_text}");
    let stats = pod.stats();
    assert!(stats.session_logins >= 1 && stats.key_manager_logins >= 1, "{stats:?}");
}
