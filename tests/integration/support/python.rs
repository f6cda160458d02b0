//! Python tools for interop tests (the official Symphony BDK, pywa), installed on first use into
//! a virtualenv under `target/`, so that `cargo test` alone works on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Serialises venv creation and pip runs between tests of this binary.
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

/// Returns the `python` of a venv at `target/py-venvs/<name>` that has `requirements` installed
/// (pip requirement specifiers). Installs them on first use; later calls are instant.
pub fn venv_python(name: &str, requirements: &[&str]) -> PathBuf {
    let _guard = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venvs").join(name);
    let python = root.join("bin/python");
    let stamp = root.join(".installed");
    let wanted = requirements.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return python;
    }
    if !python.exists() {
        let host_python = ["python3", "python"]
            .into_iter()
            .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
            .expect("python3 is needed for the interop tests");
        run(Command::new(host_python).args(["-m", "venv"]).arg(&root), "create the venv");
    }
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(requirements),
        "pip install",
    );
    std::fs::write(&stamp, wanted).expect("write the venv stamp");
    python
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
