//! The mock pod over raw HTTP: login checks, token checks, Datafeed v2 ack semantics, events,
//! the control API and fault injection, as any bot's CI would use them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{ALICE, BOB, BOT, BOT_USERNAME, fixture, start_pod};

fn jwt(sub: &str, exp_from_now: i64, key: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
    let pem = std::fs::read(fixture(key)).expect("key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("pem");
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS512),
        &json!({"sub": sub, "exp": now + exp_from_now}),
        &key,
    )
    .expect("sign")
}

struct Session {
    http: reqwest::Client,
    url: String,
    session: String,
    km: String,
}

impl Session {
    async fn login(url: &str) -> Session {
        let http = reqwest::Client::new();
        let mut tokens = Vec::new();
        for path in ["/login/pubkey/authenticate", "/relay/pubkey/authenticate"] {
            let r: Value = http
                .post(format!("{url}{path}"))
                .json(&json!({"token": jwt(BOT_USERNAME, 200, "keys/bot-pkcs8.pem")}))
                .send()
                .await
                .expect("login")
                .json()
                .await
                .expect("json");
            tokens.push(r["token"].as_str().expect("token").to_owned());
        }
        Session { http, url: url.to_owned(), session: tokens[0].clone(), km: tokens[1].clone() }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("sessionToken", &self.session)
            .header("keyManagerToken", &self.km)
    }

    async fn read(&self, feed: &str, ack: &str) -> (StatusCode, Value) {
        let r = self
            .req(reqwest::Method::POST, &format!("/agent/v5/datafeeds/{feed}/read"))
            .json(&json!({"ackId": ack}))
            .send()
            .await
            .expect("read");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn create_feed(&self) -> String {
        let r = self
            .req(reqwest::Method::POST, "/agent/v5/datafeeds")
            .json(&json!({}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.expect("json");
        let id = v["id"].as_str().expect("id").to_owned();
        assert!(id.ends_with("_f") && v["type"] == "fanout", "{v}");
        id
    }
}

async fn control(url: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .expect("control");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn login_verifies_signature_user_and_expiry() {
    let pod = start_pod().await;
    let http = reqwest::Client::new();
    let cases = [
        (jwt(BOT_USERNAME, 200, "keys/bot-pkcs8.pem"), StatusCode::OK, "good key"),
        (jwt(BOT_USERNAME, 200, "keys/other-pkcs8.pem"), StatusCode::UNAUTHORIZED, "wrong key"),
        (jwt("nobody", 200, "keys/bot-pkcs8.pem"), StatusCode::UNAUTHORIZED, "unknown user"),
        (
            jwt(BOT_USERNAME, 600, "keys/bot-pkcs8.pem"),
            StatusCode::UNAUTHORIZED,
            "exp more than 5 min ahead",
        ),
        (jwt(BOT_USERNAME, -60, "keys/bot-pkcs8.pem"), StatusCode::UNAUTHORIZED, "expired"),
        ("not.a.jwt".to_owned(), StatusCode::UNAUTHORIZED, "garbage"),
    ];
    for (token, expected, what) in cases {
        for path in ["/login/pubkey/authenticate", "/relay/pubkey/authenticate"] {
            let r = http
                .post(format!("{}{path}", pod.url()))
                .json(&json!({"token": token}))
                .send()
                .await
                .expect("login");
            assert_eq!(r.status(), expected, "{what} at {path}");
            let body: Value = r.json().await.expect("json body");
            if expected == StatusCode::OK {
                assert!(body["token"].is_string() && body["name"].is_string(), "{body}");
            } else {
                assert_eq!(body["code"], 401, "{what}: {body}");
                assert!(body["message"].is_string(), "{body}");
            }
        }
    }
    // A user without a registered key cannot log in.
    let r = http
        .post(format!("{}/login/pubkey/authenticate", pod.url()))
        .json(&json!({"token": jwt("alice", 200, "keys/bot-pkcs8.pem")}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn calls_need_valid_tokens() {
    let pod = start_pod().await;
    let s = Session::login(&pod.url()).await;
    let r = s.req(reqwest::Method::GET, "/pod/v2/sessioninfo").send().await.expect("call");
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.expect("json");
    assert_eq!((me["id"].as_i64(), me["accountType"].as_str()), (Some(BOT), Some("SYSTEM")));
    let r = reqwest::get(format!("{}/pod/v2/sessioninfo", pod.url())).await.expect("call");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Agent calls need the key-manager token too.
    let r = s
        .http
        .get(format!("{}/agent/v1/info", pod.url()))
        .header("sessionToken", &s.session)
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = control(&pod.url(), "/_sandbox/sessions/expire", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let r = s.req(reqwest::Method::GET, "/pod/v2/sessioninfo").send().await.expect("call");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn datafeed_acks_batches_and_redelivers_unacknowledged_ones() {
    let pod = start_pod().await;
    let s = Session::login(&pod.url()).await;
    let feed = s.create_feed().await;
    let listed: Value = s
        .req(reqwest::Method::GET, "/agent/v5/datafeeds")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed[0]["id"], feed.as_str());

    // Idle: the read is held, then answers an empty batch with a new ackId.
    let started = Instant::now();
    let (status, idle) = s.read(&feed, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(250), "held {:?}", started.elapsed());
    assert_eq!(idle["events"], json!([]));
    assert!(idle["ackId"].as_str().is_some_and(|a| !a.is_empty()));

    // A person creates an IM with the bot and writes: INSTANTMESSAGECREATED, then MESSAGESENT.
    let (_, im) = control(&pod.url(), "/_sandbox/ims", json!({"members": [ALICE, BOT]})).await;
    let sid = im["streamId"].as_str().expect("sid").to_owned();
    let (status, posted) = control(
        &pod.url(),
        &format!("/_sandbox/streams/{sid}/messages"),
        json!({"as": ALICE, "messageML": format!("<messageML>hi <mention uid=\"{BOT}\"/></messageML>")}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{posted}");
    let (_, batch) = s.read(&feed, idle["ackId"].as_str().expect("ack")).await;
    let events = batch["events"].as_array().expect("events").clone();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
    assert_eq!(types, vec!["INSTANTMESSAGECREATED", "MESSAGESENT"]);
    let msg = &events[1];
    assert_eq!(msg["initiator"]["user"]["userId"], ALICE);
    assert_eq!(msg["payload"]["messageSent"]["message"]["messageId"], posted["messageId"]);
    let pml = msg["payload"]["messageSent"]["message"]["message"].as_str().expect("pml");
    assert!(
        pml.starts_with(
            "<div data-format=\"PresentationML\" data-version=\"2.0\">hi <span class=\"entity\""
        ),
        "{pml}"
    );
    let data: Value = serde_json::from_str(
        msg["payload"]["messageSent"]["message"]["data"].as_str().expect("data"),
    )
    .expect("json");
    let entity = data.as_object().and_then(|o| o.values().next()).expect("one entity");
    assert_eq!(entity["type"], "com.symphony.user.mention");
    assert_eq!(entity["id"][0]["value"], BOT.to_string());

    // Not acknowledged (old ackId again): nothing new at once, the same batch after the delay.
    let sent_at = Instant::now();
    let mut redelivered = s.read(&feed, idle["ackId"].as_str().expect("ack")).await.1;
    assert_eq!(redelivered["events"], json!([]), "hidden until the visibility delay");
    for _ in 0..10 {
        if redelivered["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        redelivered = s.read(&feed, redelivered["ackId"].as_str().expect("ack")).await.1;
    }
    assert!(
        sent_at.elapsed() >= Duration::from_millis(600),
        "came back after {:?}",
        sent_at.elapsed()
    );
    let ids = |v: &Value| {
        v["events"]
            .as_array()
            .map(|e| e.iter().map(|x| x["id"].clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(ids(&redelivered), ids(&batch), "the unacknowledged batch comes back");
    assert!(pod.stats().redeliveries >= 2);
    // Acknowledged: gone for good.
    let (_, after_ack) = s.read(&feed, redelivered["ackId"].as_str().expect("ack")).await;
    assert_eq!(after_ack["events"], json!([]));
    let (_, later) = s.read(&feed, after_ack["ackId"].as_str().expect("ack")).await;
    assert_eq!(later["events"], json!([]));
}

#[tokio::test]
async fn an_expired_or_deleted_feed_answers_400() {
    let pod = start_pod().await;
    let s = Session::login(&pod.url()).await;
    let feed = s.create_feed().await;
    let (status, _) = control(&pod.url(), "/_sandbox/datafeeds/expire", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.read(&feed, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 400);
    let feed = s.create_feed().await;
    let r = s
        .req(reqwest::Method::DELETE, &format!("/agent/v5/datafeeds/{feed}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.read(&feed, "").await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn room_events_reach_members_with_their_initiator() {
    let pod = start_pod().await;
    let s = Session::login(&pod.url()).await;
    let feed = s.create_feed().await;
    let (status, room) = control(
        &pod.url(),
        "/_sandbox/rooms",
        json!({"as": ALICE, "name": "Deal team", "members": [BOT]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sid = room["streamId"].as_str().expect("sid").to_owned();
    let url = pod.url();
    let actions = format!("/_sandbox/streams/{sid}/actions");
    let act = |body: Value| control(&url, &actions, body);
    assert_eq!(
        act(json!({"as": ALICE, "action": "rename", "name": "Deal team (FX)"})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        act(json!({"as": ALICE, "action": "addMember", "userId": BOB})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        act(json!({"as": ALICE, "action": "promote", "userId": BOB})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        act(json!({"as": BOB, "action": "demote", "userId": ALICE})).await.0,
        StatusCode::OK
    );
    // Alice is no longer an owner: the client would refuse her, and so does the control API.
    let (status, refused) =
        act(json!({"as": ALICE, "action": "removeMember", "userId": BOB})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("not an owner")), "{refused}");
    assert_eq!(
        act(json!({"as": BOB, "action": "removeMember", "userId": ALICE})).await.0,
        StatusCode::OK
    );
    assert_eq!(act(json!({"as": BOB, "action": "deactivate"})).await.0, StatusCode::OK);
    assert_eq!(act(json!({"as": BOB, "action": "fly"})).await.0, StatusCode::BAD_REQUEST);

    let (_, batch) = s.read(&feed, "").await;
    let summary: Vec<(String, i64, Option<i64>)> = batch["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let t = e["type"].as_str().unwrap_or_default().to_owned();
            let payload = e["payload"]
                .as_object()
                .and_then(|p| p.values().next())
                .cloned()
                .unwrap_or(Value::Null);
            (
                t,
                e["initiator"]["user"]["userId"].as_i64().unwrap_or_default(),
                payload["affectedUser"]["userId"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("USERJOINEDROOM".into(), ALICE, Some(BOT)),
            ("ROOMUPDATED".into(), ALICE, None),
            ("USERJOINEDROOM".into(), ALICE, Some(BOB)),
            ("ROOMMEMBERPROMOTEDTOOWNER".into(), ALICE, Some(BOB)),
            ("ROOMMEMBERDEMOTEDFROMOWNER".into(), BOB, Some(ALICE)),
            ("USERLEFTROOM".into(), BOB, Some(ALICE)),
            ("ROOMDEACTIVATED".into(), BOB, None),
        ]
    );
    let stream: Value = reqwest::get(format!("{}/_sandbox/streams/{sid}", pod.url()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(stream["name"], "Deal team (FX)");
    assert_eq!(stream["active"], false);
    assert_eq!(
        stream["members"],
        json!([{"userId": BOT, "owner": false}, {"userId": BOB, "owner": true}])
    );
}

#[tokio::test]
async fn injected_faults_answer_with_status_and_retry_after_then_stop() {
    let pod = start_pod().await;
    let s = Session::login(&pod.url()).await;
    let (status, _) = control(
        &pod.url(),
        "/_sandbox/faults",
        json!({"path": "^/pod/v2/sessioninfo$", "status": 429, "retryAfter": 7, "count": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        let r = s.req(reqwest::Method::GET, "/pod/v2/sessioninfo").send().await.expect("call");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    }
    let r = s.req(reqwest::Method::GET, "/pod/v2/sessioninfo").send().await.expect("call");
    assert_eq!(r.status(), StatusCode::OK);
    let (status, err) =
        control(&pod.url(), "/_sandbox/faults", json!({"path": "(", "status": 500})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].is_string());
    let (status, err) = control(
        &pod.url(),
        "/_sandbox/streams/nope/messages",
        json!({"as": ALICE, "messageML": "<messageML>x</messageML>"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
}

#[tokio::test]
async fn a_users_file_defines_who_can_log_in() {
    use wa_groups_bot::sandbox::mock_pod::{MockPod, MockPodConfig, UserKind, load_users};
    let users = load_users(&fixture("mock-pod/users.yaml")).expect("users file");
    assert_eq!(users.len(), 3);
    assert_eq!((users[0].id, users[0].kind), (BOT, UserKind::Bot));
    assert!(users[0].public_key_pem.is_some() && users[1].public_key_pem.is_none());
    let pod = MockPod::start(MockPodConfig::new(users)).await.expect("pod");
    let s = Session::login(&pod.url()).await;
    let me: Value = s
        .req(reqwest::Method::GET, "/pod/v2/sessioninfo")
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert_eq!(me["displayName"], "WA Test Bot");

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("users.yaml");
    std::fs::write(
        &bad,
        "- {id: 1, username: x, displayName: X, email: x@x, type: BOT, publicKey: missing.pem}\n",
    )
    .expect("write");
    let err = load_users(&bad).expect_err("missing key file");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    std::fs::write(&bad, "- {id: 1, username: x, type: ROBOT}\n").expect("write");
    assert!(load_users(&bad).is_err());
}

#[tokio::test]
async fn a_feed_nobody_reads_expires() {
    use wa_groups_bot::sandbox::mock_pod::{MockPod, MockPodConfig};
    let mut cfg = MockPodConfig::new(crate::support::pod_users());
    cfg.feed_expiry = Duration::from_millis(300);
    let pod = MockPod::start(cfg).await.expect("pod");
    let s = Session::login(&pod.url()).await;
    let feed = s.create_feed().await;
    let started = Instant::now();
    crate::support::wait_for("the feed to expire", Duration::from_secs(5), || {
        let req = s.req(reqwest::Method::GET, "/agent/v5/datafeeds");
        async move {
            let listed: Value = req.send().await.ok()?.json().await.ok()?;
            listed.as_array()?.is_empty().then_some(())
        }
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "expired after {:?}",
        started.elapsed()
    );
    assert_eq!(s.read(&feed, "").await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_form_the_bot_sends_is_rendered_and_its_submission_reaches_the_bot() {
    let pod = start_pod().await;
    let s = Session::login(&pod.url()).await;
    let feed = s.create_feed().await;
    let (_, im) = control(&pod.url(), "/_sandbox/ims", json!({"members": [ALICE, BOT]})).await;
    let sid = im["streamId"].as_str().expect("sid").to_owned();
    let send = |message_ml: String| {
        s.req(reqwest::Method::POST, &format!("/agent/v4/stream/{sid}/message/create"))
            .multipart(reqwest::multipart::Form::new().text("message", message_ml))
            .send()
    };

    // A form without an action button is refused as the agent refuses it.
    let r = send("<messageML><form id=\"f\"><text-field name=\"x\"/></form></messageML>".into())
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("at least one action button")),
        "{body}"
    );

    let form = format!(
        "<messageML><form id=\"order\"><text-field name=\"item\" label=\"Item\">Bonds</text-field>\
         <person-selector name=\"who\" value=\"[{BOB}]\"/><textarea name=\"note\"/>\
         <checkbox name=\"urgent\" value=\"yes\" checked=\"true\">Urgent</checkbox>\
         <checkbox name=\"signed\" value=\"yes\">Signed</checkbox>\
         <button name=\"send\" type=\"action\">Send</button></form></messageML>"
    );
    let r = send(form).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let sent: Value = r.json().await.expect("json");
    let message_id = sent["messageId"].as_str().expect("id").to_owned();
    let pml = sent["message"].as_str().expect("PresentationML");
    assert!(pml.contains("<form id=\"order\"><div class=\"textfield-group\""), "{pml}");
    assert!(
        pml.contains(&format!(
            "<div class=\"person-selector\" data-name=\"who\" data-value=\"[{BOB}]\"></div>"
        )),
        "{pml}"
    );

    // Submissions the client could not make are refused, and nothing is sent.
    let url = pod.url();
    let submit = |body: Value| control(&url, "/_sandbox/forms", body);
    let refusals = [
        (json!({"as": ALICE, "messageId": "nope", "formId": "order"}), StatusCode::NOT_FOUND),
        (json!({"as": ALICE, "messageId": message_id, "formId": "other"}), StatusCode::NOT_FOUND),
        (
            json!({"as": ALICE, "messageId": message_id, "formId": "order", "values": {"x": "1"}}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"as": BOB, "messageId": message_id, "formId": "order"}), StatusCode::FORBIDDEN),
    ];
    for (body, status) in refusals {
        let (got, answer) = submit(body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }

    // Alice fills the note, unchecks "urgent", checks "signed" and sends.
    let (status, answer) = submit(json!({"as": ALICE, "messageId": message_id, "formId": "order",
        "values": {"note": "asap", "urgent": false, "signed": true}}))
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let mut ack = String::new();
    let mut action = None;
    for _ in 0..20 {
        let (_, batch) = s.read(&feed, &ack).await;
        ack = batch["ackId"].as_str().expect("ackId").to_owned();
        let events = batch["events"].as_array().cloned().unwrap_or_default();
        action = events.into_iter().find(|e| e["type"] == "SYMPHONYELEMENTSACTION");
        if action.is_some() {
            break;
        }
    }
    let action = action.expect("the submission reaches the bot's feed");
    assert_eq!(action["initiator"]["user"]["userId"], ALICE);
    let payload = &action["payload"]["symphonyElementsAction"];
    assert_eq!(payload["stream"]["streamId"], sid.as_str());
    assert_eq!(payload["stream"]["streamType"], "IM");
    assert_eq!(payload["formMessageId"], message_id.as_str());
    assert_eq!(payload["formId"], "order");
    // The docs' shape: the button's name, text as typed (defaults when untouched), people as
    // numbers, an unchecked box left out.
    assert_eq!(
        payload["formValues"],
        json!({"action": "send", "item": "Bonds", "who": [BOB], "note": "asap", "signed": "yes"})
    );
}

/// A room (Alice's, the bot in it) whose `messages` messages carry `per_message` attachments each,
/// posted through the control API. Returns the stream id.
pub(crate) async fn room_with_attachments(
    url: &str,
    messages: usize,
    per_message: usize,
) -> String {
    let (status, room) = control(
        url,
        "/_sandbox/rooms",
        json!({"as": ALICE, "name": "Files", "members": [ALICE, BOT]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{room}");
    let sid = room["streamId"].as_str().expect("stream").to_owned();
    for m in 0..messages {
        let attachments: Vec<Value> = (0..per_message)
            .map(|a| json!({"name": format!("f{m}-{a}.txt"), "contentType": "text/plain", "dataBase64": "aGk="}))
            .collect();
        let (status, v) = control(
            url,
            &format!("/_sandbox/streams/{sid}/messages"),
            json!({"as": ALICE, "messageML": format!("<messageML>file {m}</messageML>"), "attachments": attachments}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    sid
}

#[tokio::test]
async fn stream_attachments_page_as_the_spec_says() {
    let pod = start_pod().await;
    let s = Session::login(&pod.url()).await;
    let sid = room_with_attachments(&pod.url(), 40, 3).await;
    let list = |query: &'static str| {
        let r = s.req(reqwest::Method::GET, &format!("/pod/v1/streams/{sid}/attachments{query}"));
        async move {
            let r = r.send().await.expect("list");
            (r.status(), r.json::<Value>().await.expect("json"))
        }
    };
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|a| a["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // 50 by default, at most 100, oldest first.
    let (status, page) = list("").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&page).len(), 50);
    assert_eq!(names(&page)[0], "f0-0.txt");
    let (_, page) = list("?limit=100").await;
    assert_eq!(names(&page).len(), 100);
    assert_eq!(names(&page)[99], "f33-0.txt");
    // Newest first on request.
    let (_, page) = list("?limit=2&sortDir=DESC").await;
    assert_eq!(names(&page), vec!["f39-2.txt", "f39-1.txt"]);
    // `since` / `to` (inclusive) select by ingestion date: messages get distinct timestamps.
    let all: Vec<Value> = page_all(&s, &sid).await;
    let stamps: Vec<i64> = all.iter().map(|a| a["ingestionDate"].as_i64().expect("date")).collect();
    assert!(stamps.windows(4).all(|w| w[0] < w[3]), "{stamps:?}");
    let since = stamps[99];
    let r = s
        .req(reqwest::Method::GET, &format!("/pod/v1/streams/{sid}/attachments?since={since}"))
        .send()
        .await
        .expect("since");
    let rest: Value = r.json().await.expect("json");
    assert_eq!(names(&rest).first().map(String::as_str), Some("f33-0.txt"));
    assert_eq!(names(&rest).len(), 21);
    // Refusals are the spec's {code, message}.
    for bad in ["?limit=0", "?limit=101", "?limit=x", "?sortDir=UP", "?since=yesterday"] {
        let (status, body) = list(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["code"], 400, "{bad}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {body}");
    }
}

/// Every attachment of a stream through raw paging (limit 100, `since` = last date seen).
async fn page_all(s: &Session, sid: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut since = 0i64;
    loop {
        let r = s
            .req(
                reqwest::Method::GET,
                &format!("/pod/v1/streams/{sid}/attachments?limit=100&since={since}"),
            )
            .send()
            .await
            .expect("page");
        let page: Vec<Value> = r.json().await.expect("json");
        let n = page.len();
        for a in page {
            if !out.iter().any(|o| o["fileId"] == a["fileId"]) {
                since = since.max(a["ingestionDate"].as_i64().unwrap_or(0));
                out.push(a);
            }
        }
        if n < 100 {
            return out;
        }
    }
}

#[tokio::test]
async fn every_pod_refusal_is_code_and_message() {
    let pod = start_pod().await;
    let s = Session::login(&pod.url()).await;
    let http = reqwest::Client::new();
    let check = |what: &'static str, status: StatusCode, body: Value, want: u16| {
        assert_eq!(status.as_u16(), want, "{what}: {body}");
        assert_eq!(body["code"], want, "{what}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
        assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{what}: {body}");
    };
    // No token, an unknown path, a method a path does not take.
    let r = http.get(format!("{}/pod/v2/sessioninfo", pod.url())).send().await.expect("call");
    check("no token", r.status(), r.json().await.expect("json"), 401);
    let r = s.req(reqwest::Method::GET, "/pod/v9/nothing").send().await.expect("call");
    check("unknown path", r.status(), r.json().await.expect("json"), 404);
    let r = s.req(reqwest::Method::DELETE, "/pod/v2/sessioninfo").send().await.expect("call");
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert!(
        status.is_client_error() && body["code"] == status.as_u16() && body["message"].is_string(),
        "{status} {body}"
    );
    // A message that is not multipart.
    let im = pod.create_im(&[BOT, ALICE]).expect("im");
    let r = s
        .req(reqwest::Method::POST, &format!("/agent/v4/stream/{im}/message/create"))
        .json(&json!({"message": "<messageML>hi</messageML>"}))
        .send()
        .await
        .expect("call");
    check("not multipart", r.status(), r.json().await.expect("json"), 400);
    // The control API keeps its own {"error"} shape.
    let r = http.get(format!("{}/_sandbox/nothing", pod.url())).send().await.expect("call");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.expect("json");
    assert!(body["error"].is_string(), "{body}");
}

// ----- several readers on one feed (several bot instances, DESIGN.md §7) -----

/// A mock pod holding idle reads 300 ms and handing unacknowledged batches out again after
/// `redelivery`.
async fn pod_redelivering_after(redelivery: Duration) -> wa_groups_bot::sandbox::mock_pod::MockPod {
    use wa_groups_bot::sandbox::mock_pod::{MockPod, MockPodConfig};
    let mut cfg = MockPodConfig::new(crate::support::pod_users());
    cfg.datafeed_hold = Duration::from_millis(300);
    cfg.redelivery_delay = redelivery;
    MockPod::start(cfg).await.expect("pod")
}

/// The ids of a batch's events.
fn event_ids(batch: &Value) -> Vec<String> {
    batch["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|x| x["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn ack_of(batch: &Value) -> String {
    batch["ackId"].as_str().expect("every answer has an ackId").to_owned()
}

impl Session {
    async fn list_feeds(&self) -> Vec<String> {
        let listed: Value = self
            .req(reqwest::Method::GET, "/agent/v5/datafeeds")
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        listed
            .as_array()
            .expect("a list")
            .iter()
            .map(|f| f["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// Reads until a batch with events comes (acknowledging the empty ones), or `timeout`.
    async fn read_until_events(&self, feed: &str, ack: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut ack = ack.to_owned();
        loop {
            let (status, batch) = self.read(feed, &ack).await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            if !event_ids(&batch).is_empty() {
                return batch;
            }
            assert!(Instant::now() < deadline, "no events within {timeout:?}");
            ack = ack_of(&batch);
        }
    }

    /// Every event id read during `period` (each batch acknowledged by the next read).
    async fn read_for(&self, feed: &str, ack: &str, period: Duration) -> Vec<String> {
        let until = Instant::now() + period;
        let mut ack = ack.to_owned();
        let mut seen = Vec::new();
        while Instant::now() < until {
            let (status, batch) = self.read(feed, &ack).await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            seen.extend(event_ids(&batch));
            ack = ack_of(&batch);
        }
        seen
    }
}

async fn post_as_alice(pod_url: &str, sid: &str, text: &str) -> String {
    let (status, posted) = control(
        pod_url,
        &format!("/_sandbox/streams/{sid}/messages"),
        json!({"as": ALICE, "messageML": format!("<messageML>{text}</messageML>")}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{posted}");
    posted["messageId"].as_str().expect("messageId").to_owned()
}

async fn im_with_bot(pod_url: &str) -> String {
    let (status, im) = control(pod_url, "/_sandbox/ims", json!({"members": [ALICE, BOT]})).await;
    assert_eq!(status, StatusCode::OK, "{im}");
    im["streamId"].as_str().expect("sid").to_owned()
}

#[tokio::test]
async fn two_readers_of_one_feed_get_disjoint_batches_and_together_every_event() {
    // No redelivery within the test: an event read twice would be the pod's mistake.
    let pod = pod_redelivering_after(Duration::from_secs(60)).await;
    let url = pod.url();
    let a = Session::login(&url).await;
    let b = Session::login(&url).await;
    let feed = a.create_feed().await;
    assert_eq!(b.list_feeds().await, vec![feed.clone()], "the second instance finds the feed");

    // A batch in flight (read by A, not yet acknowledged) is not handed to B.
    let sid = im_with_bot(&url).await;
    let (_, first) = a.read(&feed, "").await;
    assert_eq!(event_ids(&first).len(), 1, "{first}");
    post_as_alice(&url, &sid, "one").await;
    let (_, second) = b.read(&feed, "").await;
    assert_eq!(event_ids(&second).len(), 1, "B gets only what A does not hold: {second}");
    assert_ne!(event_ids(&first), event_ids(&second));

    // Both long-poll at once (each acknowledging its batches) while Alice writes 40 messages.
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(char, Value)>>> = Default::default();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for (name, session, ack) in [('a', a, ack_of(&first)), ('b', b, ack_of(&second))] {
        let (seen, done, feed) = (seen.clone(), done.clone(), feed.clone());
        readers.push(tokio::spawn(async move {
            let mut ack = ack;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, batch) = session.read(&feed, &ack).await;
                assert_eq!(status, StatusCode::OK, "{batch}");
                let events = batch["events"].as_array().cloned().unwrap_or_default();
                seen.lock().expect("lock").extend(events.into_iter().map(|e| (name, e)));
                ack = ack_of(&batch);
            }
        }));
    }
    let message_ids = |seen: &[(char, Value)]| -> std::collections::BTreeSet<String> {
        seen.iter()
            .filter_map(|(_, e)| e["payload"]["messageSent"]["message"]["messageId"].as_str())
            .map(str::to_owned)
            .collect()
    };
    // In bursts of four, each once the previous one is read: both readers are then waiting.
    let mut posted = std::collections::BTreeSet::new();
    for burst in 0..10 {
        for i in 0..4 {
            posted.insert(post_as_alice(&url, &sid, &format!("m{burst}.{i}")).await);
        }
        crate::support::wait_for(
            "the burst read by one reader or the other",
            Duration::from_secs(15),
            || {
                let complete = posted.is_subset(&message_ids(&seen.lock().expect("lock")));
                async move { complete.then_some(()) }
            },
        )
        .await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        r.await.expect("reader");
    }
    let seen = seen.lock().expect("lock").clone();
    let ids: Vec<&str> = seen.iter().filter_map(|(_, e)| e["id"].as_str()).collect();
    let distinct: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "an event went to both readers (or twice)");
    assert_eq!(message_ids(&seen), posted, "exactly the messages posted");
    for reader in ['a', 'b'] {
        let n = seen.iter().filter(|(r, _)| *r == reader).count();
        assert!(n > 0, "reader {reader} got none of the 40: the feed was not shared");
    }
    assert_eq!(pod.stats().redeliveries, 0);
}

#[tokio::test]
async fn a_batch_whose_reader_dies_goes_to_the_other_reader_after_the_delay() {
    let delay = Duration::from_millis(700);
    let pod = pod_redelivering_after(delay).await;
    let url = pod.url();
    let a = Session::login(&url).await;
    let b = Session::login(&url).await;
    let feed = a.create_feed().await;
    let sid = im_with_bot(&url).await;
    post_as_alice(&url, &sid, "hello").await;

    // A reads the batch and dies without acknowledging it.
    let read_at = Instant::now();
    let (_, taken) = a.read(&feed, "").await;
    let taken_ids = event_ids(&taken);
    assert_eq!(taken_ids.len(), 2, "{taken}");
    drop(a);

    // B: nothing while the batch is in flight, then the same events once the delay is over.
    let (_, early) = b.read(&feed, "").await;
    assert_eq!(event_ids(&early), Vec::<String>::new(), "handed out while still in flight");
    let again = b.read_until_events(&feed, &ack_of(&early), Duration::from_secs(10)).await;
    assert!(read_at.elapsed() >= delay, "came back after {:?}", read_at.elapsed());
    assert_eq!(event_ids(&again), taken_ids, "the dead reader's batch, whole");
    assert_eq!(pod.stats().redeliveries, 2);

    // B acknowledges it: it never comes again, to anyone.
    let c = Session::login(&url).await;
    let ack = ack_of(&again);
    let (later_b, later_c) =
        tokio::join!(b.read_for(&feed, &ack, delay * 3), c.read_for(&feed, "", delay * 3));
    assert!(later_b.is_empty() && later_c.is_empty(), "{later_b:?} {later_c:?}");
}

#[tokio::test]
async fn an_acknowledged_batch_never_comes_again_to_any_reader() {
    let delay = Duration::from_millis(400);
    let pod = pod_redelivering_after(delay).await;
    let url = pod.url();
    let a = Session::login(&url).await;
    let b = Session::login(&url).await;
    let feed = a.create_feed().await;
    let sid = im_with_bot(&url).await;
    post_as_alice(&url, &sid, "hello").await;
    let (_, batch) = a.read(&feed, "").await;
    let acked = event_ids(&batch);
    assert_eq!(acked.len(), 2, "{batch}");

    // A's next read acknowledges it; both readers then poll for three redelivery delays, while
    // a new message comes in.
    let ack = ack_of(&batch);
    let (seen_a, seen_b, new_id) = tokio::join!(
        a.read_for(&feed, &ack, delay * 3),
        b.read_for(&feed, "", delay * 3),
        post_as_alice(&url, &sid, "again")
    );
    let all: Vec<&String> = seen_a.iter().chain(&seen_b).collect();
    assert!(all.iter().all(|id| !acked.contains(id)), "an acknowledged event came back: {all:?}");
    assert_eq!(all.len(), 1, "only the new message, once: {all:?} ({new_id})");
    assert_eq!(pod.stats().redeliveries, 0);
}

#[tokio::test]
async fn the_mock_pod_command_takes_the_redelivery_delay() {
    use tokio::io::AsyncBufReadExt as _;
    let users = fixture("mock-pod/users.yaml");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"))
        .args(["mock-pod", "--listen", "127.0.0.1:0", "--datafeed-hold", "1"])
        .args(["--datafeed-redeliver-ms", "300", "--users"])
        .arg(&users)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start mock-pod");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("mock pod listening on ") {
                return Some(url.trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("mock-pod prints its URL");
    let s = Session::login(&url).await;
    let feed = s.create_feed().await;
    let sid = im_with_bot(&url).await;
    post_as_alice(&url, &sid, "hello").await;
    let read_at = Instant::now();
    let (_, batch) = s.read(&feed, "").await;
    assert_eq!(event_ids(&batch).len(), 2, "{batch}");
    // Never acknowledged (the first ackId again each time): back after 300 ms, not 30 s.
    let again = s.read_until_events(&feed, "", Duration::from_secs(10)).await;
    assert!(read_at.elapsed() >= Duration::from_millis(300), "{:?}", read_at.elapsed());
    assert_eq!(event_ids(&again), event_ids(&batch));
}
