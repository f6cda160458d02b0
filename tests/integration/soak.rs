//! The chaos soak in CI: `wa-groups-bot soak --seconds 60 --groups 10 --seed 1` through the
//! binary (the bot a separate process, SIGKILLed and restarted, faults on both mocks), which
//! must end with zero violations and print its counts.

use std::time::Duration;

/// The number printed after `label` in the soak's report.
fn count(report: &str, label: &str) -> Option<u64> {
    report
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_chaos_soak_ends_without_a_violation() {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"))
        .args(["soak", "--seconds", "60", "--groups", "10", "--seed", "1"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the soak finishes within 10 minutes")
        .expect("the soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the soak found violations:\n{stdout}\n{stderr}");
    assert_eq!(count(&stdout, "violations"), Some(0), "{stdout}");
    for (label, at_least) in [
        ("command /wa create", 10),
        ("commands (all)", 20),
        ("messages room → WhatsApp", 10),
        ("messages WhatsApp → room", 10),
        ("joins", 10),
        ("faults (all)", 10),
        ("SIGKILLs of the bot", 1),
    ] {
        let n = count(&stdout, label);
        assert!(
            n.is_some_and(|n| n >= at_least),
            "{label}: {n:?} (at least {at_least}):\n{stdout}"
        );
    }
    eprintln!("{stdout}");
}
