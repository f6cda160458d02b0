//! The Symphony client and the bot's datafeed handling, against the mock pod over loopback.

use std::time::{Duration, Instant};

use wa_groups_bot::groups::{StreamId, UserId};
use wa_groups_bot::symphony::{SymphonyClient, SymphonyError};

use crate::support::{self, ALICE, BOB, BOT, start_bot, start_pod, wait_for, wait_for_message};

fn is_help(text: &str) -> bool {
    text.starts_with("WhatsApp groups: commands")
}

fn replies(pod: &wa_groups_bot::sandbox::mock_pod::MockPod, im: &str) -> usize {
    pod.messages(im).iter().filter(|m| m.user == BOT).count()
}

#[tokio::test]
async fn login_with_the_right_key_gives_the_bots_session() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    for key in ["keys/bot-pkcs8.pem", "keys/bot-pkcs1.pem"] {
        let client = SymphonyClient::new(&support::bot_config(&pod, dir.path(), key).symphony)
            .expect("client");
        client.authenticate().await.expect("login");
        let me = client.session_info().await.expect("session info");
        assert_eq!(me.id, UserId(BOT));
        assert_eq!(me.account_type.as_deref(), Some("SYSTEM"));
    }
    let stats = pod.stats();
    assert_eq!((stats.session_logins, stats.key_manager_logins), (2, 2));
}

#[tokio::test]
async fn a_wrong_key_is_a_clear_final_error() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = SymphonyClient::new(
        &support::bot_config(&pod, dir.path(), "keys/other-pkcs8.pem").symphony,
    )
    .expect("client");
    let err = client.authenticate().await.expect_err("wrong key");
    assert!(matches!(err, SymphonyError::LoginRejected { status: 401, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("wa-test-bot") && text.contains("public key"), "{text}");
    assert_eq!(pod.stats().session_logins, 0);
}

#[tokio::test]
async fn a_429_waits_for_retry_after_and_5xx_are_retried() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client =
        SymphonyClient::new(&support::bot_config(&pod, dir.path(), "keys/bot-pkcs8.pem").symphony)
            .expect("client");
    client.authenticate().await.expect("login");

    pod.inject_fault(Some("GET"), "^/pod/v2/sessioninfo$", 429, Some(1), 1).expect("fault");
    let started = Instant::now();
    client.session_info().await.expect("retried after Retry-After");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "waited only {waited:?}; configured backoff is 50 ms"
    );

    pod.inject_fault(None, "^/pod/v2/sessioninfo$", 503, None, 2).expect("fault");
    client.session_info().await.expect("retried through two 503s");
    assert_eq!(pod.stats().faults_served, 3);

    // More failures than maxAttempts (4): the error surfaces, typed.
    pod.inject_fault(None, "^/pod/v2/sessioninfo$", 502, None, 10).expect("fault");
    let err = client.session_info().await.expect_err("gives up");
    assert_eq!(err.status(), Some(502));
    assert!(err.is_retryable());
}

#[tokio::test]
async fn pod_calls_create_rooms_manage_members_and_send_messages() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client =
        SymphonyClient::new(&support::bot_config(&pod, dir.path(), "keys/bot-pkcs8.pem").symphony)
            .expect("client");
    client.authenticate().await.expect("login");

    let room = client.create_room("Deal team", "Alice, Bob").await.expect("room");
    assert_eq!(room.name, "Deal team");
    assert!(room.active);
    client.add_member(&room.stream, UserId(ALICE)).await.expect("add");
    client.add_member(&room.stream, UserId(BOB)).await.expect("add");
    client.promote_owner(&room.stream, UserId(ALICE)).await.expect("promote");
    client.remove_member(&room.stream, UserId(BOB)).await.expect("remove");
    let members = client.room_members(&room.stream).await.expect("members");
    let owners: Vec<i64> = members.iter().filter(|m| m.owner).map(|m| m.user.0).collect();
    assert_eq!(owners, vec![BOT, ALICE]);
    assert!(!members.iter().any(|m| m.user == UserId(BOB)));
    client.demote_owner(&room.stream, UserId(ALICE)).await.expect("demote");
    assert!(
        !client
            .room_members(&room.stream)
            .await
            .expect("members")
            .iter()
            .any(|m| m.user == UserId(ALICE) && m.owner)
    );

    let renamed = client.rename_room(&room.stream, "Deal team (FX)").await.expect("rename");
    assert_eq!(client.room_info(&room.stream).await.expect("info").name, renamed.name);

    let sent = client
        .send_message(
            &room.stream,
            &format!("<messageML>Hi <mention uid=\"{ALICE}\"/></messageML>"),
            None,
        )
        .await
        .expect("send");
    let stored = pod.messages(room.stream.as_str());
    assert_eq!(
        stored.last().map(|m| (m.message_id.clone(), m.text.clone())),
        Some((sent.message_id, "Hi @Alice Ng".into()))
    );
    let bad = client
        .send_message(&room.stream, "<messageML>unclosed", None)
        .await
        .expect_err("bad MessageML");
    assert_eq!(bad.status(), Some(400));

    client.set_room_active(&room.stream, false).await.expect("deactivate");
    assert!(!client.room_info(&room.stream).await.expect("info").active);

    let im = client.create_im(&[UserId(ALICE)]).await.expect("im");
    assert_eq!(
        client.create_im(&[UserId(ALICE)]).await.expect("same im"),
        im,
        "an existing IM is returned"
    );
    assert!(client.stream_attachments(&im).await.expect("attachments").is_empty());
    let alice = client.user_by_id(UserId(ALICE)).await.expect("lookup").expect("alice");
    assert_eq!(alice.display_name.as_deref(), Some("Alice Ng"));
    assert_eq!(
        client.user_by_email("bob@example.com").await.expect("lookup").map(|u| u.id),
        Some(UserId(BOB))
    );
    assert_eq!(
        client.user_by_username("alice").await.expect("lookup").map(|u| u.id),
        Some(UserId(ALICE))
    );
    assert_eq!(client.user_by_id(UserId(4242)).await.expect("lookup"), None);
    // Standard base64 stream ids (as some payloads carry them) reach the same stream.
    let standard = im.as_str().replace('-', "+").replace('_', "/");
    assert_eq!(StreamId::new(standard), im);
}

#[tokio::test]
async fn the_bot_answers_help_in_an_im_and_never_itself() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");

    // The bot's own "/wa help" comes back through its datafeed: it must not answer it.
    pod.post_message(&im, BOT, "<messageML>/wa help</messageML>").expect("post");
    pod.post_message(
        &im,
        ALICE,
        &format!("<messageML><mention uid=\"{BOT}\"/> /wa help</messageML>"),
    )
    .expect("post");
    wait_for_message(&pod, &im, BOT, is_help).await;
    pod.post_message(&im, ALICE, "<messageML>/wa rename</messageML>").expect("post");
    let usage = wait_for_message(&pod, &im, BOT, |t| t.contains("Usage: /wa rename")).await;
    assert!(usage.text.contains("the new name is missing"), "{}", usage.text);
    pod.post_message(&im, ALICE, "<messageML>just chatting</messageML>").expect("post");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for("the second help", Duration::from_secs(10), || {
        let n = pod.messages(&im).iter().filter(|m| m.user == BOT && is_help(&m.text)).count();
        async move { (n == 2).then_some(()) }
    })
    .await;
    // Own "/wa help" (1) + help + usage + help: nothing else, in particular no answer to itself.
    let texts: Vec<(i64, bool)> =
        pod.messages(&im).iter().map(|m| (m.user, is_help(&m.text))).collect();
    assert_eq!(
        texts,
        vec![
            (BOT, false),
            (ALICE, false),
            (BOT, true),
            (ALICE, false),
            (BOT, false),
            (ALICE, false),
            (ALICE, false),
            (BOT, true)
        ]
    );
    bot.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_renewed_without_losing_the_feed() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.expire_sessions();
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, is_help).await;
    let stats = pod.stats();
    assert_eq!(stats.feeds_created, 1, "the datafeed survives a re-login");
    assert!(stats.session_logins >= 2 && stats.key_manager_logins >= 2, "{stats:?}");
    bot.stop().await;
}

#[tokio::test]
async fn an_expired_feed_is_recreated_and_events_keep_coming() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    wait_for("the first feed", Duration::from_secs(5), || {
        let n = pod.stats().feeds_created;
        async move { (n == 1).then_some(()) }
    })
    .await;
    pod.expire_datafeeds();
    wait_for("a new feed", Duration::from_secs(5), || {
        let n = pod.stats().feeds_created;
        async move { (n == 2).then_some(()) }
    })
    .await;
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, is_help).await;
    bot.stop().await;
}

#[tokio::test]
async fn datafeed_errors_back_off_and_recover() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.inject_fault(None, "/agent/v5/datafeeds/.*/read$", 503, None, 2).expect("fault");
    pod.inject_fault(None, "/agent/v5/datafeeds/.*/read$", 429, Some(1), 1).expect("fault");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, is_help).await;
    assert_eq!(pod.stats().faults_served, 3);
    assert_eq!(pod.stats().feeds_created, 1, "5xx and 429 keep the same feed");
    bot.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_batch_is_redelivered_after_a_crash_and_processed_once() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    wait_for("the feed", Duration::from_secs(5), || {
        let n = pod.stats().feed_reads;
        async move { (n >= 1).then_some(()) }
    })
    .await;
    // The read that would acknowledge the next batch hangs: the bot "crashes" before the ack.
    pod.inject_hang("/agent/v5/datafeeds/.*/read$", Duration::from_secs(30), 1).expect("hang");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, is_help).await;
    first.stop().await;

    // A new process on the same store and feed: the batch comes back, and is not answered twice.
    let second = start_bot(&pod, dir.path()).await;
    wait_for("the redelivery", Duration::from_secs(10), || {
        let n = pod.stats().redeliveries;
        async move { (n >= 1).then_some(()) }
    })
    .await;
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for("the second answer", Duration::from_secs(10), || {
        let n = replies(&pod, &im);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    assert_eq!(replies(&pod, &im), 2, "{:?}", pod.messages(&im));
    assert_eq!(pod.stats().feeds_created, 1, "the restarted bot reuses the feed");
    second.stop().await;
}

#[tokio::test]
async fn a_reply_that_keeps_failing_is_retried_from_the_outbox() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    // Six 503s: more than the client's own 4 attempts, so the outbox must try again later.
    pod.inject_fault(None, "/message/create$", 503, None, 6).expect("fault");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, is_help).await;
    assert_eq!(pod.stats().faults_served, 6);
    wait_for("an empty outbox", Duration::from_secs(5), || {
        let counts = bot.store.outbox_counts().ok();
        async move { (counts == Some((0, 0))).then_some(()) }
    })
    .await;

    // A permanent refusal is given up (recorded as failed), and the next command still works.
    pod.inject_fault(None, "/message/create$", 403, None, 1).expect("fault");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for("the failed effect", Duration::from_secs(5), || {
        let counts = bot.store.outbox_counts().ok();
        async move { (counts == Some((0, 1))).then_some(()) }
    })
    .await;
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for("the third answer", Duration::from_secs(10), || {
        let n = pod.messages(&im).iter().filter(|m| m.user == BOT).count();
        async move { (n == 2).then_some(()) }
    })
    .await;
    bot.stop().await;
}

#[tokio::test]
async fn a_reply_pending_at_a_crash_is_sent_after_the_restart_once() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_bot(&pod, dir.path()).await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.inject_hang("/message/create$", Duration::from_secs(30), 1).expect("hang");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for("the reply to be under way", Duration::from_secs(10), || {
        let counts = first.store.outbox_counts().ok();
        async move { (counts == Some((1, 0))).then_some(()) }
    })
    .await;
    first.stop().await;
    assert_eq!(replies(&pod, &im), 0, "the hung reply never landed");

    let second = start_bot(&pod, dir.path()).await;
    wait_for_message(&pod, &im, BOT, is_help).await;
    wait_for("an empty outbox", Duration::from_secs(5), || {
        let counts = second.store.outbox_counts().ok();
        async move { (counts == Some((0, 0))).then_some(()) }
    })
    .await;
    assert_eq!(replies(&pod, &im), 1);
    second.stop().await;
}

#[tokio::test]
async fn one_slow_stream_does_not_hold_up_the_others() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot(&pod, dir.path()).await;
    let slow = pod.create_im(&[ALICE, BOT]).expect("im");
    let fast = pod.create_im(&[BOB, BOT]).expect("im");
    pod.inject_hang(
        &format!("/agent/v4/stream/{slow}/message/create$"),
        Duration::from_secs(20),
        1,
    )
    .expect("hang");
    pod.post_message(&slow, ALICE, "<messageML>/wa help</messageML>").expect("post");
    pod.post_message(&fast, BOB, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &fast, BOT, is_help).await;
    assert_eq!(replies(&pod, &slow), 0, "the slow stream's reply is still under way");
    bot.stop().await;
}

#[tokio::test]
async fn a_room_with_120_attachments_is_fully_listed() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client =
        SymphonyClient::new(&support::bot_config(&pod, dir.path(), "keys/bot-pkcs8.pem").symphony)
            .expect("client");
    client.authenticate().await.expect("login");
    // 40 messages of 3 files: more than one page of 100, pages ending inside a message.
    let sid = crate::mock_pod::room_with_attachments(&pod.url(), 40, 3).await;
    let listed = client.stream_attachments(&StreamId::new(sid)).await.expect("attachments");
    let names: Vec<String> = listed.iter().map(|a| a.name.clone()).collect();
    let expected: Vec<String> =
        (0..40).flat_map(|m| (0..3).map(move |a| format!("f{m}-{a}.txt"))).collect();
    assert_eq!(names, expected);
}

/// A proxy in front of the pod that drops `ackId` from every datafeed read answer (the spec
/// makes it optional). Returns its port.
async fn without_ack_ids(pod_url: String) -> u16 {
    use axum::body::Bytes;
    use axum::extract::{Request, State};
    use axum::response::{IntoResponse, Response};
    async fn forward(State(target): State<String>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let body: Bytes = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let mut out = reqwest::Client::new()
            .request(parts.method.clone(), format!("{target}{path}"))
            .body(body);
        for (name, value) in &parts.headers {
            if name != "host" && name != "content-length" {
                out = out.header(name, value);
            }
        }
        let Ok(answer) = out.send().await else {
            return axum::http::StatusCode::BAD_GATEWAY.into_response();
        };
        let status = answer.status();
        let kind = answer.headers().get("content-type").cloned();
        let mut bytes = answer.bytes().await.unwrap_or_default().to_vec();
        if parts.uri.path().ends_with("/read")
            && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(o) = v.as_object_mut()
        {
            o.remove("ackId");
            bytes = v.to_string().into_bytes();
        }
        let mut r = (status, bytes).into_response();
        if let Some(k) = kind {
            r.headers_mut().insert("content-type", k);
        }
        r
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().fallback(forward).with_state(pod_url);
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test]
async fn a_datafeed_answer_without_ack_id_is_read_not_an_error() {
    let pod = start_pod().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = without_ack_ids(pod.url()).await;
    let config = support::bot_config(&pod, dir.path(), "keys/bot-pkcs8.pem");
    let file = dir.path().join("bot-config.yaml");
    let yaml = std::fs::read_to_string(&file).expect("config");
    let yaml = yaml.replace(&format!("port: {}\n", pod.addr().port()), &format!("port: {port}\n"));
    std::fs::write(&file, yaml).expect("write config");
    drop(config);
    let config = wa_groups_bot::config::Config::load_from(&wa_groups_bot::config::ConfigSource {
        file: Some(file),
        env: Some(Default::default()),
    })
    .expect("config");
    let bot = wa_groups_bot::app::Bot::start(
        config,
        wa_groups_bot::templates::Templates::embedded().expect("templates"),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("bot starts");
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, "<messageML>/wa help</messageML>").expect("post");
    wait_for_message(&pod, &im, BOT, is_help).await;
    // Never acknowledged, the batch comes back (and the bot reads on after it); it still
    // answers once.
    let reads = wait_for("a redelivery", Duration::from_secs(10), || {
        let st = pod.stats();
        async move { (st.redeliveries > 0).then_some(st.feed_reads) }
    })
    .await;
    wait_for("two more reads", Duration::from_secs(10), || {
        let n = pod.stats().feed_reads;
        async move { (n >= reads + 2).then_some(()) }
    })
    .await;
    assert_eq!(replies(&pod, &im), 1);
    bot.stop().await;
}

/// One bot instance's datafeed loop, with its own login: the ids of the messages it is handed.
struct Instance {
    got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    cancel: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), SymphonyError>>,
}

impl Instance {
    async fn start(pod: &wa_groups_bot::sandbox::mock_pod::MockPod) -> Instance {
        use wa_groups_bot::events::SymphonyEventKind;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = support::bot_config(pod, dir.path(), "keys/bot-pkcs8.pem");
        let client = SymphonyClient::new(&cfg.symphony).expect("client");
        client.authenticate().await.expect("login");
        let got: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let sink = got.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let cancel = tokio_util::sync::CancellationToken::new();
        let feed = wa_groups_bot::symphony::datafeed::DatafeedLoop::new(
            client.clone(),
            client.retry_config(),
        )
        .on_ready(ready_tx);
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            feed.run(
                Box::new(move |batch| {
                    sink.lock().expect("lock").extend(batch.into_iter().filter_map(
                        |e| match e.kind {
                            SymphonyEventKind::MessageSent(m) => Some(m.message_id),
                            _ => None,
                        },
                    ));
                    Box::pin(async { Ok(()) })
                }),
                stop,
            )
            .await
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("the feed within 10 s")
            .expect("the loop set up a feed");
        Instance { got, cancel, task }
    }

    fn got(&self) -> Vec<String> {
        self.got.lock().expect("lock").clone()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("loop task").expect("the loop ends cleanly");
    }
}

/// Alice posts `n` messages in `im`, one at a time (each once an instance has it, so that both
/// readers are waiting); each must reach exactly one of `instances`, and each instance some of
/// them (they share one feed; on two feeds, each would get every message).
async fn each_message_to_one_instance(
    pod: &wa_groups_bot::sandbox::mock_pod::MockPod,
    im: &str,
    n: usize,
    instances: &[&Instance],
) {
    let before: Vec<usize> = instances.iter().map(|i| i.got().len()).collect();
    let new_ids = || -> Vec<Vec<String>> {
        instances.iter().zip(&before).map(|(i, b)| i.got()[*b..].to_vec()).collect()
    };
    for k in 0..n {
        let id =
            pod.post_message(im, ALICE, &format!("<messageML>m{k}</messageML>")).expect("post");
        wait_for("the message handed to an instance", Duration::from_secs(15), || {
            let got = new_ids().concat().contains(&id);
            async move { got.then_some(()) }
        })
        .await;
    }
    let per_instance = new_ids();
    let all: Vec<String> = per_instance.concat();
    let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), distinct.len(), "a message reached two instances (or one twice)");
    assert_eq!(all.len(), n, "{per_instance:?}");
    for (k, got) in per_instance.iter().enumerate() {
        assert!(!got.is_empty(), "instance {k} got none of the {n}: the feed is not shared");
    }
}

#[tokio::test]
async fn two_instances_read_one_feed_and_each_message_reaches_one_of_them() {
    let pod = start_pod().await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let a = Instance::start(&pod).await;
    let b = Instance::start(&pod).await;
    assert_eq!(pod.stats().feeds_created, 1, "the second instance reuses the first one's feed");
    each_message_to_one_instance(&pod, &im, 30, &[&a, &b]).await;
    assert_eq!(pod.datafeeds().len(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn after_their_feed_is_lost_two_instances_settle_on_one_new_feed() {
    let pod = start_pod().await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let a = Instance::start(&pod).await;
    let b = Instance::start(&pod).await;
    each_message_to_one_instance(&pod, &im, 10, &[&a, &b]).await;

    // The feed is lost; a message (lost with it) wakes both readers at once: both get the 400
    // together, and both look for a new feed at the same moment.
    pod.expire_datafeeds();
    pod.post_message(&im, ALICE, "<messageML>into the void</messageML>").expect("post");
    wait_for("a new feed", Duration::from_secs(10), || {
        let created = pod.stats().feeds_created;
        async move { (created >= 2).then_some(()) }
    })
    .await;
    each_message_to_one_instance(&pod, &im, 30, &[&a, &b]).await;
    assert_eq!(pod.datafeeds().len(), 1, "one feed left: {:?}", pod.datafeeds());
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_instance_that_finds_its_feed_lost_reads_the_one_another_instance_made() {
    let pod = start_pod().await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let a = Instance::start(&pod).await;
    let b = Instance::start(&pod).await;
    // No wake-up: each reader meets the 400 at the end of its own long poll, mostly one after
    // the other; the later one then finds the feed the earlier one created.
    pod.expire_datafeeds();
    wait_for("a new feed", Duration::from_secs(10), || {
        let created = pod.stats().feeds_created;
        async move { (created >= 2).then_some(()) }
    })
    .await;
    each_message_to_one_instance(&pod, &im, 30, &[&a, &b]).await;
    assert_eq!(pod.datafeeds().len(), 1, "one feed left: {:?}", pod.datafeeds());
    a.stop().await;
    b.stop().await;
}
