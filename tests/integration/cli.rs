//! What the binary says about itself: `--version`, shell completions and the manual page.

use std::process::Output;
use std::time::Duration;

async fn run_bin(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"));
    cmd.args(args).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the command finishes within 30 s")
        .expect("the command runs")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn version_prints_the_name_and_the_version() {
    let out = run_bin(&["--version"]).await;
    assert_eq!(stdout(&out), format!("wa-groups-bot {}\n", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn bash_completion_completes_the_subcommands_and_their_options() {
    let out = run_bin(&["completions", "bash"]).await;
    let script = stdout(&out);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("wa-groups-bot.bash");
    std::fs::write(&file, &script).expect("write");
    // As bash would complete `wa-groups-bot che<TAB>` and `wa-groups-bot check-config --co<TAB>`.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        format!(
            "source {file}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
             COMP_POINT={point}; \
             fn=$(complete -p wa-groups-bot | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p'); \
             \"$fn\" wa-groups-bot '{last}' '{prev}'; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file = file.display(),
            words = words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            cword = words.len() - 1,
            point = line.len(),
            last = words[words.len() - 1],
            prev = words[words.len() - 2],
        )
    };
    for (line, expected) in [
        ("wa-groups-bot che", "check-config"),
        ("wa-groups-bot check-config --co", "--config"),
        ("wa-groups-bot check-config --co", "--connect"),
        ("wa-groups-bot completions f", "fish"),
    ] {
        let out = tokio::process::Command::new("bash")
            .args(["--norc", "-c", &complete(line)])
            .output()
            .await
            .expect("bash runs");
        let offered = String::from_utf8_lossy(&out.stdout);
        assert!(
            offered.lines().any(|l| l == expected),
            "`{line}<TAB>` offers {offered:?}, not {expected}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn zsh_and_fish_completions_name_every_subcommand() {
    let zsh = stdout(&run_bin(&["completions", "zsh"]).await);
    assert!(zsh.starts_with("#compdef wa-groups-bot"), "{zsh}");
    let fish = stdout(&run_bin(&["completions", "fish"]).await);
    for sub in ["run", "sandbox", "demo", "check-config", "render", "completions", "man"] {
        assert!(zsh.contains(&format!("'{sub}:")), "zsh lacks {sub}");
        assert!(fish.contains(&format!("-a \"{sub}\"")), "fish lacks {sub}:\n{fish}");
    }
    let out = run_bin(&["completions", "tcsh"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'tcsh'") && err.contains("bash"), "{err}");
}

#[tokio::test]
async fn man_prints_a_manual_page_with_every_subcommand() {
    let page = stdout(&run_bin(&["man"]).await);
    assert!(page.contains(".TH wa-groups-bot 1"), "{page}");
    assert!(page.contains("Symphony bot for WhatsApp native group chats"), "{page}");
    for sub in ["check\\-config", "sandbox", "demo", "completions", "man"] {
        assert!(page.contains(sub), "the page lacks {sub}:\n{page}");
    }
}
