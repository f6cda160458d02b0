//! The benchmark's smoke run (`wa-groups-bot bench --smoke`, what CI runs): every scenario
//! once at a small size through the binary. It checks that the table is printed and that
//! correctness held (every command answered once, every create complete, every relayed message
//! once and in order per group), never speed: the machine running tests is shared.

use std::time::Duration;

use crate::support::python::venv_python;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_smoke_run_prints_its_table_and_every_check_holds() {
    let python = tokio::task::spawn_blocking(|| {
        venv_python("symphony-bdk", &["symphony-bdk-python==3.0.0"])
    })
    .await
    .expect("venv");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"))
        .args(["bench", "--smoke", "--python"])
        .arg(&python)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the smoke run finishes within 10 minutes")
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench --smoke failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("| scenario"), "no table:\n{stdout}");
    for scenario in [
        "P1 /wa help burst",
        "P2 /wa create",
        "P3 memory and start",
        "P4 relay WhatsApp → room",
        "P4 relay room → WhatsApp",
        "P5 /wa help burst, PostgreSQL",
        "P5 relay WhatsApp → room, PostgreSQL",
    ] {
        assert!(stdout.contains(scenario), "no {scenario} row:\n{stdout}");
    }
    assert!(stdout.contains("Python BDK echo"), "the BDK was not measured:\n{stdout}");
    assert!(!stdout.contains("[FAILED]"), "a check failed:\n{stdout}");
    for check in [
        "every command answered once",
        "8 invitations once",
        "every message once, in order per group",
    ] {
        assert!(stdout.contains(check), "no check of {check}:\n{stdout}");
    }
}
