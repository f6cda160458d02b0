//! The admin's tools over a running bot: its `/healthz` and `/metrics`.

use std::time::Duration;

use serde_json::Value;

use crate::support::{self, ALICE, BOT, start_pod, start_sim, wait_for, wait_for_message};

/// The value of one sample line of a `/metrics` text (`series` = name with its labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let resp = http.get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_bot_reports_its_health_and_counts_what_it_does() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = support::start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let base = format!("http://{}", bot.http_addr);
    assert_eq!(bot.webhook_addr, Some(bot.http_addr), "one listener");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http");

    let (status, body) = get(&http, &format!("{base}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["datafeed"]["ok"], true, "{health}");
    assert_eq!(health["store"]["ok"], true, "{health}");

    let (status, before) = get(&http, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(before.contains("# TYPE wagb_commands_total counter"), "{before}");
    assert_eq!(sample(&before, "wagb_commands_total{command=\"help\"}"), None);
    let whatsapp_events = "wagb_inbound_events_total{source=\"whatsapp\"}";
    assert_eq!(sample(&before, whatsapp_events), Some(0.0), "{before}");

    // An advisor asks for help; a contact writes to the business (a signed webhook).
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, |t| t.contains("/wa rename")).await;
    sim.send_as_phone("447911123456", None, "Hello", None).expect("phone writes");
    let after = wait_for("the counters to move", Duration::from_secs(15), || {
        let http = http.clone();
        let url = format!("{base}/metrics");
        async move {
            let (_, text) = get(&http, &url).await;
            let moved = sample(&text, "wagb_commands_total{command=\"help\"}") == Some(1.0)
                && sample(&text, whatsapp_events).is_some_and(|n| n >= 1.0);
            moved.then_some(text)
        }
    })
    .await;
    assert!(
        sample(&after, "wagb_inbound_events_total{source=\"symphony\"}").is_some_and(|n| n >= 1.0)
    );
    assert!(sample(&after, "wagb_datafeed_reads_total").is_some_and(|n| n >= 1.0), "{after}");
    assert!(sample(&after, "wagb_outbox_effects{state=\"pending\"}").is_some(), "{after}");
    assert_eq!(sample(&after, "wagb_outbox_effects{state=\"failed\"}"), Some(0.0), "{after}");

    // The datafeed stops being read: its reads fail for a while (about 15 s of backoffs).
    pod.inject_fault(Some("POST"), r"^/agent/v5/datafeeds/[^/]+/read$", 503, None, 40)
        .expect("fault");
    let unhealthy =
        wait_for("/healthz to say the datafeed is down", Duration::from_secs(15), || {
            let http = http.clone();
            let url = format!("{base}/healthz");
            async move {
                let (status, body) = get(&http, &url).await;
                (status == 503).then_some(body)
            }
        })
        .await;
    let health: Value = serde_json::from_str(&unhealthy).expect("json");
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert_eq!(health["datafeed"]["ok"], false, "{health}");
    assert_eq!(health["store"]["ok"], true, "{health}");
    assert!(
        health["problems"][0].as_str().is_some_and(|p| p.starts_with("datafeed: no read answered")),
        "{health}"
    );
    let (_, text) = get(&http, &format!("{base}/metrics")).await;
    let errors = "wagb_api_errors_total{client=\"symphony\",endpoint=\"POST /agent/v5/datafeeds/{id}/read\",status=\"503\"}";
    assert!(sample(&text, errors).is_some_and(|n| n >= 1.0), "{text}");
    // The faults run out: the loop reads again and the bot is healthy again.
    wait_for("/healthz to recover", Duration::from_secs(40), || {
        let http = http.clone();
        let url = format!("{base}/healthz");
        async move { (get(&http, &url).await.0 == 200).then_some(()) }
    })
    .await;

    // Another process holds the store's write lock: the store cannot take writes.
    let locker = rusqlite::Connection::open(dir.path().join("bot.db")).expect("open the store");
    locker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let (status, body) = get(&http, &format!("{base}/healthz")).await;
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["store"]["ok"], false, "{health}");
    assert!(health["store"]["error"].as_str().is_some_and(|e| e.contains("locked")), "{health}");
    locker.execute_batch("ROLLBACK").expect("release");
    let (status, body) = get(&http, &format!("{base}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_app_secret_the_listener_serves_only_health_and_metrics() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = support::start_bot(&pod, dir.path()).await;
    assert_eq!(bot.webhook_addr, None);
    let base = format!("http://{}", bot.http_addr);
    let http = reqwest::Client::new();
    assert_eq!(get(&http, &format!("{base}/healthz")).await.0, 200);
    let (status, metrics) = get(&http, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("# TYPE wagb_inbound_events_total counter"), "{metrics}");
    let hook = http.post(format!("{base}/whatsapp/webhook")).body("{}").send().await.expect("post");
    assert_eq!(hook.status().as_u16(), 404, "no webhook receiver without an app secret");
    bot.stop().await;
}
