//! `wa-groups-bot demo`: the seed scenario played against a fresh sandbox, with a transcript;
//! it exits 0 only if every step behaved, and names the step that did not otherwise.

use std::time::Duration;

use wa_groups_bot::sandbox::demo::{self, Cast};

use crate::support::{start_pod, start_sim};

/// Runs `wa-groups-bot demo` with `args`, its stdout and stderr piped (not a terminal).
async fn run_demo(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"))
            .arg("demo")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            // An admin's shell asking for logs everywhere: the demo still keeps its stdout
            // for the transcript.
            .env("RUST_LOG", "info")
            .env_remove("WAGB__LOGGING__FORMAT")
            .env_remove("NO_COLOR")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo ends within two minutes")
    .expect("the demo runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A log line as the text format writes it: `2026-…Z  INFO …`.
fn is_log_line(line: &str) -> bool {
    ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
        .iter()
        .any(|level| line.split_whitespace().nth(1) == Some(level))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_command_plays_every_step_and_prints_both_sides() {
    let (status, transcript, stderr) = run_demo(&[]).await;
    assert!(status.success(), "{transcript}\n{stderr}");
    for seen in [
        "[Symphony] bot: Creating Deal team",
        "received the invitation: https://chat.whatsapp.com/",
        "[Symphony] bot: Farah Khan (+44 7911 123458) joined the WhatsApp group.",
        "[Symphony] bot: Dana Reyes (+447911123456): Hello from WhatsApp!",
        "[WhatsApp] group: *Alice Ng*: Welcome, everyone",
        "[WhatsApp] group notice: The group is now called \"Deal team (EMEA)\".",
        "[WhatsApp] group notice: Bob Smith is now an owner of the group.",
        "Farah Khan (+44 7911 123458) was removed from the WhatsApp group",
        "Farah Khan taps the group's link: refused",
        "created as a standard group",
        "Every step behaved.",
    ] {
        assert!(transcript.contains(seen), "missing {seen:?} in:\n{transcript}");
    }
    assert!(!transcript.lines().any(is_log_line), "a log line in the transcript:\n{transcript}");
    // Without --logs, only warnings and errors: no INFO line anywhere.
    assert!(!stderr.lines().any(|l| l.contains(" INFO ")), "INFO logs without --logs:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_the_bots_log_on_request_apart_and_uncoloured() {
    let (status, transcript, stderr) = run_demo(&["--logs"]).await;
    assert!(status.success(), "{transcript}\n{stderr}");
    assert!(transcript.trim_end().ends_with("Every step behaved."), "{transcript}");
    assert!(!transcript.lines().any(is_log_line), "a log line in the transcript:\n{transcript}");
    assert!(
        stderr.lines().any(|l| is_log_line(l) && l.contains(" INFO ")),
        "no INFO logs with --logs:\n{stderr}"
    );
    // stderr is a pipe, not a terminal: no colour codes.
    assert!(!stderr.contains('\x1b'), "escape codes in a piped log:\n{stderr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bot_the_demo_fails_at_its_first_step() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let cast = Cast {
        bot: crate::support::BOT,
        creator: (crate::support::ALICE, "Alice Ng".into()),
        advisor: (crate::support::BOB, "Bob Smith".into()),
        contacts: (0..4).map(|i| (format!("44791112345{i}"), format!("Contact {i}"))).collect(),
    };
    let mut transcript = Vec::new();
    let err = demo::run(&pod.url(), &sim.url(), &cast, Duration::from_millis(500), &mut transcript)
        .await
        .expect_err("nobody answers");
    assert!(
        err.to_string().contains("create a native group")
            && err.to_string().contains("Creating Deal team"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&transcript).contains("/wa create \"Deal team\""));
}
