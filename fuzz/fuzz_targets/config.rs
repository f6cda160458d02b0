//! The configuration loader: a `bot-config.yaml` plus `WAGB__…` environment overrides, loaded
//! and validated as `run` and `check-config` do. The input is the YAML, then optionally a line
//! `#env` followed by `NAME=value` lines. Properties: no panic; an error never shows a secret
//! given in the environment.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use wa_groups_bot::config::{Config, ConfigSource};

static DIR: std::sync::OnceLock<Option<tempfile::TempDir>> = std::sync::OnceLock::new();

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    // Key paths are read from the disk: keep away from devices that never end.
    if text.contains("dev") || text.contains("proc") || text.contains("sys") {
        return;
    }
    let (yaml, env_lines) = text.split_once("\n#env\n").unwrap_or((text, ""));
    let env: HashMap<String, String> = env_lines
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // One directory for the whole run (in memory when /dev/shm exists): making and removing
    // one per input was most of the target's time.
    let Some(dir) = DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.ok()
    }) else {
        return;
    };
    let file = dir.path().join("bot-config.yaml");
    if std::fs::write(&file, yaml).is_err() {
        return;
    }
    let source = ConfigSource { file: Some(file), env: Some(env.clone()) };
    let check = Config::check(&source);
    if let Err(e) = &check.config {
        let shown = e.to_string();
        for (name, value) in &env {
            let lower = name.to_ascii_lowercase();
            let secret = ["accesstoken", "appsecret", "verifytoken", "store__url"]
                .iter()
                .any(|s| lower.ends_with(s));
            // A non-secret value (of the environment or the file), or a variable's name (its
            // own too), may itself contain the secret's text, and is rightly shown.
            let inside_another = env.iter().any(|(other, v)| {
                (other != name && v.contains(value.trim())) || other.contains(value.trim())
            }) || yaml.contains(value.trim());
            if secret && value.trim().len() >= 6 && !inside_another {
                assert!(!shown.contains(value.trim()), "{name}'s value is shown: {shown}");
            }
        }
    }
});
