//! Crash points for the crash tests: with `WAGB_CRASH_AT=k` in the environment, the process
//! aborts (as a SIGKILL would stop it: no clean-up, no flush) when it passes its k-th crash
//! point. Crash points sit right after each commit (a decision, an effect's done mark), so a
//! test can stop the bot between every pair of steps and check what the restart makes of it.
//! Without the variable a crash point costs one atomic increment.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static PASSED: AtomicU64 = AtomicU64::new(0);

fn armed() -> Option<u64> {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    *AT.get_or_init(|| std::env::var("WAGB_CRASH_AT").ok().and_then(|v| v.parse().ok()))
}

/// Passes a crash point named `what`; aborts the process if it is the armed one.
pub fn reached(what: &str) {
    let n = PASSED.fetch_add(1, Ordering::SeqCst) + 1;
    if armed() == Some(n) {
        eprintln!("crash point {n} ({what}): aborting as asked by WAGB_CRASH_AT");
        std::process::abort();
    }
}
