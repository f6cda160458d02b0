//! Headless Chromium for browser tests, driven over the Chrome DevTools Protocol through
//! `--remote-debugging-pipe` (JSON messages ending in NUL, read by Chromium on fd 3 and written
//! on fd 4): no WebSocket client and no browser download. Chromium is Debian's `chromium`
//! package, installed on first use when the tests run as root (as `.ci/run` does).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// The Chromium binary: `$CHROMIUM`, else the first of the usual names on `PATH`; installed
/// with apt when missing and the tests run as root. Panics with how to install it otherwise: a
/// browser test never passes without a browser.
pub fn chromium() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND.get_or_init(find_or_install).clone().unwrap_or_else(|why| panic!("{why}"))
}

fn on_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
        .into_iter()
        .find_map(on_path_named)
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(p) = on_path() {
        return Ok(p);
    }
    let how = "The console test needs headless Chromium. Install Debian's package: \
               `sudo apt-get install -y chromium` (or set CHROMIUM to a Chromium or Chrome \
               binary); `.ci/run` installs it when missing.";
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || on_path_named("apt-get").is_none() {
        return Err(format!("{how} (not installed, and not root here to install it)"));
    }
    eprintln!("installing chromium with apt-get (first run only)…");
    for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "chromium"][..]] {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("{how} (apt-get could not start: {e})"))?;
        if !out.status.success() {
            return Err(format!(
                "{how} (apt-get {} failed: {})",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    on_path().ok_or_else(|| format!("{how} (apt-get installed it, but it is not on PATH)"))
}

fn on_path_named(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A running headless Chromium.
pub struct Browser {
    child: tokio::process::Child,
    to_browser: mpsc::UnboundedSender<String>,
    pending: Pending,
    next_id: AtomicU64,
    _profile: tempfile::TempDir,
}

/// One tab, attached over a flat CDP session.
pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and a `width`×`height` window.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let binary = chromium();
        let profile = tempfile::tempdir().expect("profile dir");
        // The shell hands our stdin to Chromium as fd 3 (it reads commands there) and our
        // stdout as fd 4 (it writes answers there).
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--hide-scrollbars",
                "--mute-audio",
                "--remote-debugging-pipe",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut stdin = child.stdin.take().expect("chromium's fd 3");
        let stdout = child.stdout.take().expect("chromium's fd 4");
        let (to_browser, mut outgoing) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                let mut bytes = message.into_bytes();
                bytes.push(0);
                if stdin.write_all(&bytes).await.is_err() || stdin.flush().await.is_err() {
                    return;
                }
            }
        });
        let pending: Pending = Arc::default();
        let answers = pending.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                let Ok(message) = serde_json::from_slice::<Value>(&buf) else { continue };
                // Answers carry the command's id; events (no id) are not needed here.
                if let Some(id) = message.get("id").and_then(Value::as_u64) {
                    let waiter = answers.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(message);
                    }
                }
            }
        });
        let browser =
            Browser { child, to_browser, pending, next_id: AtomicU64::new(1), _profile: profile };
        // The pipe is up once the browser answers.
        browser.call(None, "Browser.getVersion", json!({})).await;
        browser
    }

    /// Sends one CDP command (to a page when `session` is given) and returns its `result`.
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.to_browser.send(message.to_string()).expect("chromium's pipe is open");
        let answer = tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .unwrap_or_else(|_| panic!("chromium did not answer {method} within 60 s"))
            .unwrap_or_else(|_| panic!("chromium exited before answering {method}"));
        if let Some(error) = answer.get("error") {
            panic!("chromium refused {method}: {error}");
        }
        answer["result"].clone()
    }

    /// Opens `url` in a new tab of `width`×`height` CSS pixels.
    pub async fn open(&self, url: &str, width: u32, height: u32) -> Page<'_> {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"})).await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self
            .call(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true}))
            .await;
        let session = attached["sessionId"].as_str().expect("sessionId").to_owned();
        let page = Page { browser: self, session };
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page.call("Page.navigate", json!({"url": url})).await;
        page
    }

    /// Closes the browser and waits for it to exit.
    pub async fn close(mut self) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.to_browser.send(json!({"id": id, "method": "Browser.close"}).to_string());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

impl Page<'_> {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Evaluates a JavaScript expression in the page (promises awaited) and returns its value.
    /// A thrown exception fails the test with its description.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("the page threw evaluating {expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it gives a truthy value (returned), or fails the test with
    /// `what` after `timeout`. Exceptions count as not yet (the page may still be loading).
    pub async fn wait_for(&self, what: &str, timeout: Duration, expression: &str) -> Value {
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (_) {{ return null; }} }})()"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.eval(&guarded).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                let shown = self.eval("document.body ? document.body.innerText : ''").await;
                panic!("timed out after {timeout:?} waiting for {what}; the page shows:\n{shown}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG screenshot of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let data = shot["data"].as_str().expect("screenshot data");
        let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data)
            .expect("base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot folder");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

/// A JavaScript string literal of `text`.
pub fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}
