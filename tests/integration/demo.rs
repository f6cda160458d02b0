//! `wa-groups-bot demo`: the seed scenario played against a fresh sandbox, with a transcript;
//! it exits 0 only if every step behaved, and names the step that did not otherwise.

use std::time::Duration;

use wa_groups_bot::sandbox::demo::{self, Cast};

use crate::support::{start_pod, start_sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_command_plays_every_step_and_prints_both_sides() {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"))
            .arg("demo")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo ends within two minutes")
    .expect("the demo runs");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}\n{}", String::from_utf8_lossy(&out.stderr));
    for seen in [
        "[Symphony] bot: Creating Deal team",
        "received the invitation: https://chat.whatsapp.com/",
        "[Symphony] bot: +447911123458 joined the WhatsApp group.",
        "[Symphony] bot: Dana Reyes (+447911123456): Hello from WhatsApp!",
        "[WhatsApp] group: *Alice Ng*: Welcome, everyone",
        "[WhatsApp] group notice: The group is now called \"Deal team (EMEA)\".",
        "[WhatsApp] group notice: Bob Smith is now an owner of the group.",
        "+447911123458 was removed from the WhatsApp group",
        "Farah Khan taps the group's link: refused",
        "created as a standard group",
        "Every step behaved.",
    ] {
        assert!(transcript.contains(seen), "missing {seen:?} in:\n{transcript}");
    }
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
