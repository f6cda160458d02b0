//! Keeps a sandbox world (the mock pod's, the simulator's) in a JSON file: loaded at start,
//! saved whenever it changed (checked every second) and once more at shutdown, so that
//! `wa-groups-bot sandbox` survives a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a saved sandbox state: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot save {path}: {reason}")]
    Write { path: String, reason: String },
}

/// The saved JSON at `path`, or `None` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Value>, PersistError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PersistError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| PersistError::Invalid {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Writes `value` to `path` atomically: a crash mid-write leaves the previous file whole.
pub fn save(path: &Path, value: &Value) -> Result<(), PersistError> {
    let err = |e: std::io::Error| PersistError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let text = serde_json::to_vec_pretty(value).map_err(|e| PersistError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Saves `snapshot()` to `path` every `every` when it changed, and once more when `cancel`
/// fires. The task ends after that last save.
pub fn autosave(
    path: PathBuf,
    every: Duration,
    snapshot: impl Fn() -> Value + Send + 'static,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = load(&path).ok().flatten();
        loop {
            let stopping = tokio::select! {
                () = cancel.cancelled() => true,
                () = tokio::time::sleep(every) => false,
            };
            let now = snapshot();
            if last.as_ref() != Some(&now) {
                match save(&path, &now) {
                    Ok(()) => last = Some(now),
                    Err(e) => tracing::warn!(error = %e, "sandbox state not saved; will try again"),
                }
            }
            if stopping {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_loads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pod.json");
        assert!(load(&path).expect("no file is fine").is_none());
        let state = serde_json::json!({"version": 1, "streams": [{"id": "a"}]});
        save(&path, &state).expect("saved");
        assert_eq!(load(&path).expect("loads"), Some(state));
        assert!(!dir.path().join("pod.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sim.json");
        std::fs::write(&path, "{not json").expect("write");
        let err = load(&path).expect_err("corrupt");
        assert!(err.to_string().contains("sim.json"), "{err}");
    }

    #[tokio::test]
    async fn autosave_writes_changes_and_a_last_time_at_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let value = std::sync::Arc::new(std::sync::Mutex::new(serde_json::json!({"n": 1})));
        let source = value.clone();
        let cancel = CancellationToken::new();
        let task = autosave(
            path.clone(),
            Duration::from_secs(3600),
            move || source.lock().expect("lock").clone(),
            cancel.clone(),
        );
        *value.lock().expect("lock") = serde_json::json!({"n": 2});
        cancel.cancel();
        task.await.expect("task");
        assert_eq!(load(&path).expect("loads"), Some(serde_json::json!({"n": 2})));
    }
}
