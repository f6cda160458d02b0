//! The WhatsApp client, the webhook receiver and the simulator, together over loopback.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wa_groups_bot::events::WhatsAppEvent;
use wa_groups_bot::groups::{E164, GroupId};
use wa_groups_bot::store::Source;
use wa_groups_bot::whatsapp::{Recipient, TemplateParam, WhatsAppClient, WhatsAppError};

use crate::support::{
    Receiver, WA_SECRET, WA_VERIFY, start_receiver, start_sim, wa_config, wait_for,
};

const JANE: &str = "447911123456";
const JOHN: &str = "447911123457";

fn client(sim_url: &str, dir: &std::path::Path, version: &str) -> WhatsAppClient {
    let cfg = wa_config(dir, sim_url, version);
    WhatsAppClient::new(&cfg.whatsapp, cfg.symphony.retry).expect("client")
}

async fn control(url: &str, path: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .expect("control")
        .json()
        .await
        .expect("json")
}

/// Creates a group through the client and waits for its `group_create` webhook.
async fn create(
    c: &WhatsAppClient,
    rx: &Receiver,
    subject: &str,
    approval: bool,
) -> (GroupId, String) {
    let request_id =
        c.create_group(subject, "Alice Ng, Bob Smith", approval).await.expect("create");
    rx.wait_event("group_create", |e| match e {
        WhatsAppEvent::GroupCreated {
            request_id: Some(r),
            group_id,
            invite_link: Some(link),
            ..
        } if *r == request_id => Some((group_id.clone(), link.clone())),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn every_client_call_works_against_the_simulator() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v25.0");

    let (group, link) = create(&c, &rx, "Deal team", true).await;
    assert!(link.starts_with("https://chat.whatsapp.com/"), "{link}");
    assert_eq!(c.invite_link(&group).await.expect("link"), link);
    let info = c.group_info(&group).await.expect("info");
    assert_eq!(
        (info.subject.as_deref(), info.join_approval_mode.as_deref()),
        (Some("Deal team"), Some("approval_required"))
    );
    assert_eq!(info.total_participant_count, Some(0));

    // Jane taps the link: a join request the business approves; John's is rejected.
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    assert_eq!(sim.tap(JOHN, &link)["result"], "requested");
    let requests = c.join_requests(&group).await.expect("requests");
    assert_eq!(requests.len(), 2);
    let id_of = |phone: &str| {
        requests
            .iter()
            .find(|r| r.wa_id.as_deref() == Some(phone))
            .expect("request")
            .join_request_id
            .clone()
    };
    let approved = c.approve_join_requests(&group, &[id_of(JANE)]).await.expect("approve");
    assert_eq!(approved.done, vec![id_of(JANE)]);
    let rejected = c.reject_join_requests(&group, &[id_of(JOHN)]).await.expect("reject");
    assert_eq!(rejected.done, vec![id_of(JOHN)]);
    let unknown =
        c.approve_join_requests(&group, &["nope".to_owned()]).await.expect("partial answer");
    assert_eq!(
        unknown.failed.first().map(|(id, e)| (id.as_str(), e[0].code)),
        Some(("nope", 131213))
    );
    rx.wait_event("Jane added", |e| match e {
        WhatsAppEvent::ParticipantsAdded { participants, .. }
            if participants[0].wa_id.as_deref() == Some(JANE) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(sim.group(group.as_str()).expect("group")["participants"], json!([JANE]));

    // Messages: Jane writes in the group (window opens), the business answers; templates 1:1.
    sim.send_as_phone(JANE, Some(group.as_str()), "Morning", None).expect("jane writes");
    let wamid = c
        .send_text(&Recipient::Group(group.clone()), "*Alice Ng*: hello")
        .await
        .expect("group text");
    assert!(wamid.starts_with("wamid."));
    let john = E164::parse(&format!("+{JOHN}")).expect("number");
    c.send_template(
        &Recipient::Phone(john.clone()),
        "group_invite_link",
        "en_US",
        &[TemplateParam::Text("Deal team".into()), TemplateParam::GroupId(group.clone())],
    )
    .await
    .expect("template");
    let inbox = sim.inbox(JOHN);
    assert_eq!(inbox[0]["template"]["name"], "group_invite_link");
    assert_eq!(inbox[0]["template"]["params"], json!(["Deal team", link]));
    assert!(
        sim.inbox(JANE)
            .iter()
            .any(|m| m["text"] == "*Alice Ng*: hello" && m["groupId"] == group.as_str())
    );

    // Rename, list, remove, reset the link, delete.
    c.update_group(&group, Some("Deal team (FX)"), Some("Alice Ng")).await.expect("update");
    rx.wait_event("settings update", |e| match e {
        WhatsAppEvent::SettingsUpdated { subject: Some(s), .. }
            if s.text.as_deref() == Some("Deal team (FX)") && s.successful =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    let (second, _) = create(&c, &rx, "Second", false).await;
    let first_page = c.list_groups(1, None).await.expect("page 1");
    assert_eq!(first_page.groups.len(), 1);
    assert!(first_page.next.is_some());
    let all = c.all_groups().await.expect("all groups");
    assert_eq!(
        all.iter().map(|g| g.id.clone()).collect::<Vec<_>>(),
        vec![group.clone(), second.clone()]
    );
    assert_eq!(all[0].subject.as_deref(), Some("Deal team (FX)"));

    c.remove_participants(&group, &[JANE.to_owned()]).await.expect("remove");
    rx.wait_event("Jane removed", |e| match e {
        WhatsAppEvent::ParticipantsRemoved { initiated_by: Some(by), removed, .. }
            if by == "business" && removed[0].input.as_deref() == Some(JANE) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    let new_link = c.reset_invite_link(&group).await.expect("reset");
    assert_ne!(new_link, link);
    c.delete_group(&second).await.expect("delete");
    rx.wait_event("group deleted", |e| match e {
        WhatsAppEvent::GroupDeleted { group_id, .. } if *group_id == second => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(c.all_groups().await.expect("all").len(), 1);
    let gone = c.group_info(&second).await.expect_err("deleted");
    assert_eq!(gone.code(), Some(131041));
}

#[tokio::test]
async fn the_simulator_enforces_meta_s_limits() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v23.0");

    // Client-side checks refuse before calling.
    assert!(matches!(
        c.create_group(&"x".repeat(129), "", true).await,
        Err(WhatsAppError::Invalid(_))
    ));
    assert!(matches!(
        c.create_group("ok", &"d".repeat(2049), true).await,
        Err(WhatsAppError::Invalid(_))
    ));
    assert!(matches!(
        c.remove_participants(&GroupId("g".into()), &vec!["1".to_owned(); 9]).await,
        Err(WhatsAppError::Invalid(_))
    ));
    // The simulator checks too (a client that does not).
    let raw = reqwest::Client::new()
        .post(format!("{}/v23.0/{}/groups", sim.url(), crate::support::WA_PHONE_ID))
        .bearer_auth(crate::support::WA_TOKEN)
        .json(&json!({"messaging_product": "whatsapp", "subject": "x".repeat(129)}))
        .send()
        .await
        .expect("raw");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let body: Value = raw.json().await.expect("json");
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["type"], "OAuthException");
    assert!(body["error"]["fbtrace_id"].is_string());
    // Wrong token → 401 / 190.
    let bad = reqwest::Client::new()
        .get(format!("{}/v23.0/{}/groups", sim.url(), crate::support::WA_PHONE_ID))
        .bearer_auth("nope")
        .send()
        .await
        .expect("raw");
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(bad.json::<Value>().await.expect("json")["error"]["code"], 190);

    // 8 participants at most.
    let (group, link) = create(&c, &rx, "Full house", false).await;
    for i in 0..8 {
        assert_eq!(sim.tap(&format!("4479111000{i:02}"), &link)["result"], "joined");
    }
    let ninth = sim.tap("447911100099", &link);
    assert_eq!(ninth["result"], "refused");
    assert_eq!(
        sim.group(group.as_str()).expect("group")["participants"].as_array().map(Vec::len),
        Some(8)
    );

    // A removed participant cannot come back by link; a leaver can.
    c.remove_participants(&group, &["447911100000".to_owned()]).await.expect("remove");
    let refused = sim.tap("447911100000", &link);
    assert_eq!(refused["result"], "refused");
    assert!(refused["reason"].as_str().is_some_and(|r| r.contains("removed")), "{refused}");
    control(
        &sim.url(),
        "/_sandbox/wa/phones/447911100001/leave",
        json!({"groupId": group.as_str()}),
    )
    .await;
    assert_eq!(sim.tap("447911100001", &link)["result"], "joined");

    // One live link: a reset kills the old one.
    let new_link = c.reset_invite_link(&group).await.expect("reset");
    assert_eq!(sim.tap("447911100099", &link)["result"], "refused");
    c.remove_participants(&group, &["447911100002".to_owned()]).await.expect("make room");
    assert_eq!(sim.tap("447911100099", &new_link)["result"], "joined");

    // Free-form text needs the group's 24-hour window; templates are always allowed.
    let closed = c
        .send_text(&Recipient::Group(group.clone()), "hello?")
        .await
        .expect("accepted, fails later");
    let failure = rx
        .wait_event("the failed status", |e| match e {
            WhatsAppEvent::Status { message_id, status, errors, .. }
                if *message_id == closed && status == "failed" =>
            {
                Some(errors[0].code)
            }
            _ => None,
        })
        .await;
    assert_eq!(failure, 131047);
    assert!(!sim.inbox("447911100003").iter().any(|m| m["text"] == "hello?"));
    c.send_template(
        &Recipient::Group(group.clone()),
        "group_update",
        "en_US",
        &[TemplateParam::Text("renamed".into())],
    )
    .await
    .expect("template");
    assert!(sim.inbox("447911100003").iter().any(|m| m["template"]["name"] == "group_update"));
    sim.send_as_phone("447911100003", Some(group.as_str()), "I'm here", None).expect("writes");
    let open = c.send_text(&Recipient::Group(group.clone()), "hello!").await.expect("sent");
    rx.wait_event("the sent status", |e| match e {
        WhatsAppEvent::Status { message_id, status, .. }
            if *message_id == open && status == "sent" =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    assert!(sim.inbox("447911100004").iter().any(|m| m["text"] == "hello!"));
}

#[tokio::test]
async fn throttling_is_retried_after_retry_after_and_permanent_errors_are_not() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v23.0");
    control(&sim.url(), "/_sandbox/wa/faults", json!({"path": "/groups$", "method": "GET", "status": 429, "code": 130429, "retryAfter": 1, "count": 1})).await;
    let started = Instant::now();
    c.list_groups(10, None).await.expect("retried");
    assert!(started.elapsed() >= Duration::from_secs(1), "waited {:?}", started.elapsed());
    control(
        &sim.url(),
        "/_sandbox/wa/faults",
        json!({"path": "/groups$", "status": 503, "count": 2}),
    )
    .await;
    c.list_groups(10, None).await.expect("through two 503s");
    control(
        &sim.url(),
        "/_sandbox/wa/faults",
        json!({"path": "/groups$", "status": 400, "code": 131215, "count": 1}),
    )
    .await;
    let err = c.list_groups(10, None).await.expect_err("permanent");
    assert_eq!(err.code(), Some(131215));
    assert!(!err.is_retryable());
    assert_eq!(sim.stats().faults_served, 4);
}

#[tokio::test]
async fn the_receiver_answers_the_verification_handshake() {
    let rx = start_receiver().await;
    let http = reqwest::Client::new();
    let ok = http
        .get(&rx.url)
        .query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", WA_VERIFY),
            ("hub.challenge", "1158201444"),
        ])
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.expect("body"), "1158201444");
    let wrong = http
        .get(&rx.url)
        .query(&[("hub.mode", "subscribe"), ("hub.verify_token", "guess"), ("hub.challenge", "1")])
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn only_correctly_signed_webhooks_are_stored() {
    let rx = start_receiver().await;
    let http = reqwest::Client::new();
    let body = std::fs::read(crate::support::fixture("webhooks/group_join_request_created.json"))
        .expect("fixture");
    let good = wa_groups_bot::webhook::signature(WA_SECRET, &body);
    let post = |sig: Option<String>, body: Vec<u8>| {
        let mut r = http.post(&rx.url).header("content-type", "application/json").body(body);
        if let Some(s) = sig {
            r = r.header("x-hub-signature-256", s);
        }
        r.send()
    };
    assert_eq!(post(None, body.clone()).await.expect("post").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        post(Some(wa_groups_bot::webhook::signature("wrong", &body)), body.clone())
            .await
            .expect("post")
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        post(Some(good.clone()), tampered).await.expect("post").status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(rx.store.count_inbound(Source::WhatsApp).expect("count"), 0, "nothing stored");
    let junk = b"{not json".to_vec();
    assert_eq!(
        post(Some(wa_groups_bot::webhook::signature(WA_SECRET, &junk)), junk)
            .await
            .expect("post")
            .status(),
        StatusCode::BAD_REQUEST
    );
    let huge = vec![b' '; wa_groups_bot::webhook::MAX_BODY_BYTES + 1];
    assert_eq!(
        post(Some(wa_groups_bot::webhook::signature(WA_SECRET, &huge)), huge)
            .await
            .expect("post")
            .status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(rx.store.count_inbound(Source::WhatsApp).expect("count"), 0);

    assert_eq!(
        post(Some(good.clone()), body.clone()).await.expect("post").status(),
        StatusCode::OK
    );
    assert_eq!(
        post(Some(good), body).await.expect("post").status(),
        StatusCode::OK,
        "a duplicate is acknowledged"
    );
    let events = rx.events();
    assert_eq!(events.len(), 1, "and stored once: {events:?}");
    assert!(
        matches!(&events[0], WhatsAppEvent::JoinRequestCreated { user, .. } if user.wa_id.as_deref() == Some(JANE))
    );
}

#[tokio::test]
async fn duplicated_and_failed_deliveries_are_processed_once() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v23.0");
    control(&sim.url(), "/_sandbox/wa/webhooks/faults", json!({"duplicate": 1})).await;
    let (group, link) = create(&c, &rx, "Dup", false).await;
    control(&sim.url(), "/_sandbox/wa/webhooks/faults", json!({"failFirst": 1})).await;
    assert_eq!(sim.tap(JANE, &link)["result"], "joined");
    rx.wait_event("Jane joined", |e| {
        matches!(e, WhatsAppEvent::ParticipantsAdded { .. }).then_some(())
    })
    .await;
    wait_for("both retries", Duration::from_secs(10), || {
        let s = sim.stats();
        async move { (s.webhook_attempts >= 4 && s.webhooks_delivered >= 3).then_some(()) }
    })
    .await;
    let creates = rx
        .events()
        .iter()
        .filter(|e| matches!(e, WhatsAppEvent::GroupCreated { group_id, .. } if *group_id == group))
        .count();
    let joins =
        rx.events().iter().filter(|e| matches!(e, WhatsAppEvent::ParticipantsAdded { .. })).count();
    assert_eq!((creates, joins), (1, 1), "each event stored once despite 2 deliveries each");
}

#[tokio::test]
async fn a_receiver_that_fails_gets_the_webhook_again() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v23.0");
    // Nobody listens at first: the group_create webhook waits and is retried.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_url = format!("http://{}/hook", dead.local_addr().expect("addr"));
    drop(dead);
    sim.set_webhook_url(&dead_url);
    let request_id = c.create_group("Late", "", true).await.expect("create");
    wait_for("failed attempts", Duration::from_secs(5), || {
        let n = sim.stats().webhook_attempts;
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    rx.wait_event("the retried group_create", |e| match e {
        WhatsAppEvent::GroupCreated { request_id: Some(r), .. } if *r == request_id => Some(()),
        _ => None,
    })
    .await;
    // Counted once the receiver has answered, a moment after it recorded the event.
    let delivered = wait_for("the delivery counted", Duration::from_secs(5), || {
        let n = sim.stats().webhooks_delivered;
        async move { (n >= 1).then_some(n) }
    })
    .await;
    assert_eq!(delivered, 1);
}

#[tokio::test]
async fn cancelled_requests_and_reordered_deliveries_reach_the_receiver() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v23.0");
    let (group, link) = create(&c, &rx, "Reorder", true).await;

    // Jane asks to join, then withdraws: created then revoked, and nothing pending any more.
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    let cancelled = control(
        &sim.url(),
        &format!("/_sandbox/wa/phones/{JANE}/cancel"),
        json!({"groupId": group.as_str()}),
    )
    .await;
    assert_eq!(cancelled["ok"], true, "{cancelled}");
    rx.wait_event("revoked", |e| {
        matches!(e, WhatsAppEvent::JoinRequestRevoked { .. }).then_some(())
    })
    .await;
    assert!(c.join_requests(&group).await.expect("requests").is_empty());
    let again = control(
        &sim.url(),
        &format!("/_sandbox/wa/phones/{JANE}/cancel"),
        json!({"groupId": group.as_str()}),
    )
    .await;
    assert!(again["error"].is_string(), "nothing left to cancel: {again}");

    // Reorder: the next webhook is held back and delivered after the one that follows it.
    control(&sim.url(), "/_sandbox/wa/webhooks/faults", json!({"reorder": true})).await;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    assert_eq!(sim.tap(JOHN, &link)["result"], "requested");
    wait_for("both requests", Duration::from_secs(10), || {
        let n = rx
            .events()
            .iter()
            .filter(|e| matches!(e, WhatsAppEvent::JoinRequestCreated { .. }))
            .count();
        async move { (n == 3).then_some(()) }
    })
    .await;
    let order: Vec<String> = rx
        .events()
        .iter()
        .filter_map(|e| match e {
            WhatsAppEvent::JoinRequestCreated { user, .. } => user.wa_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        vec![JANE.to_owned(), JOHN.to_owned(), JANE.to_owned()],
        "the second pair arrived swapped"
    );
}

/// A group (auto-approve) that `phones` joined by its link, each having written once.
async fn joined_group(
    c: &WhatsAppClient,
    sim: &wa_groups_bot::sandbox::wa_sim::WhatsAppSim,
    rx: &Receiver,
    subject: &str,
    phones: &[&str],
) -> GroupId {
    let (group, link) = create(c, rx, subject, false).await;
    for p in phones {
        assert_eq!(sim.tap(p, &link)["result"], "joined");
        sim.send_as_phone(p, Some(group.as_str()), "hello", None).expect("writes");
    }
    group
}

fn graph_code(e: &WhatsAppError) -> Option<(u16, i64)> {
    match e {
        WhatsAppError::Graph(g) => Some((g.status, g.code)),
        _ => None,
    }
}

#[tokio::test]
async fn a_suspended_group_refuses_sends_until_the_suspension_is_lifted() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v23.0");
    let group = joined_group(&c, &sim, &rx, "Moderated", &[JANE]).await;
    let to = Recipient::Group(group.clone());

    let answer =
        control(&sim.url(), &format!("/_sandbox/wa/groups/{group}/suspend"), json!({})).await;
    assert_eq!(answer, json!({"id": group.as_str(), "suspended": true}));
    rx.wait_event("group_suspend", |e| match e {
        WhatsAppEvent::GroupSuspended { group_id } if *group_id == group => Some(()),
        _ => None,
    })
    .await;
    let refused = c.send_text(&to, "anyone there?").await.expect_err("suspended");
    assert_eq!(graph_code(&refused), Some((403, 131207)), "{refused}");
    assert_eq!(c.group_info(&group).await.expect("info").suspended, Some(true));

    let answer = control(
        &sim.url(),
        &format!("/_sandbox/wa/groups/{group}/suspend"),
        json!({"suspended": false}),
    )
    .await;
    assert_eq!(answer["suspended"], false);
    rx.wait_event("group_suspend_cleared", |e| match e {
        WhatsAppEvent::GroupSuspendCleared { group_id } if *group_id == group => Some(()),
        _ => None,
    })
    .await;
    assert!(c.send_text(&to, "back again").await.expect("sent").starts_with("wamid."));
    assert_eq!(sim.inbox(JANE).last().map(|m| m["text"].clone()), Some(json!("back again")));

    let r = reqwest::Client::new()
        .post(format!("{}/_sandbox/wa/groups/nope/suspend", sim.url()))
        .json(&json!({}))
        .send()
        .await
        .expect("control");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.json::<Value>().await.expect("json")["error"].is_string());
}

#[tokio::test]
async fn a_username_user_is_known_by_user_id_until_a_one_to_one_exchange() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v23.0");
    let made: Value = reqwest::Client::new()
        .put(format!("{}/_sandbox/wa/phones/{JOHN}", sim.url()))
        .json(&json!({"name": "John", "username": "john.doe"}))
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("json");
    let bsuid = made["userId"].as_str().expect("user id").to_owned();
    assert_eq!(made["username"], "john.doe");

    let group = joined_group(&c, &sim, &rx, "Usernames", &[JOHN]).await;
    let added = rx
        .wait_event("John added", |e| match e {
            WhatsAppEvent::ParticipantsAdded { group_id, participants, .. }
                if *group_id == group =>
            {
                Some(participants[0].clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(
        (added.wa_id, added.user_id.as_deref(), added.username.as_deref()),
        (None, Some(bsuid.as_str()), Some("john.doe"))
    );
    let from = rx
        .wait_event("John's group message", |e| match e {
            WhatsAppEvent::Message { from, group_id: Some(g), .. } if *g == group => {
                Some(from.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!((from.wa_id, from.user_id), (None, Some(bsuid.clone())));
    let info = c.group_info(&group).await.expect("info");
    assert_eq!(info.participants.len(), 1);
    assert_eq!(
        (info.participants[0].wa_id.as_ref(), info.participants[0].user_id.as_deref()),
        (None, Some(bsuid.as_str()))
    );
    // The business's group message: the delivered status names John by user id only.
    let wamid = c.send_text(&Recipient::Group(group.clone()), "hi John").await.expect("sent");
    let participant = rx
        .wait_event("delivered", |e| match e {
            WhatsAppEvent::Status { message_id, status, participant: Some(p), .. }
                if *message_id == wamid && status == "delivered" =>
            {
                Some(p.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!((participant.wa_id, participant.user_id), (None, Some(bsuid.clone())));

    // John writes to the business 1:1: from now on his number shows.
    sim.send_as_phone(JOHN, None, "it's me", None).expect("1:1");
    let direct = rx
        .wait_event("John's 1:1 message", |e| match e {
            WhatsAppEvent::Message { from, group_id: None, .. } => Some(from.clone()),
            _ => None,
        })
        .await;
    assert_eq!(direct.wa_id.as_deref(), Some(JOHN));
    let info = c.group_info(&group).await.expect("info");
    assert_eq!(info.participants[0].wa_id.as_deref(), Some(JOHN));

    // Removed by user id: the removal names him so, and he cannot come back.
    c.remove_participants(&group, std::slice::from_ref(&bsuid)).await.expect("remove");
    assert_eq!(sim.group(group.as_str()).expect("group")["removed"], json!([JOHN]));
}

#[tokio::test]
async fn rejecting_join_requests_of_which_one_fails_is_a_partial_success() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v23.0");
    let (group, link) = create(&c, &rx, "Partial", true).await;
    assert_eq!(sim.tap(JANE, &link)["result"], "requested");
    let requests = c.join_requests(&group).await.expect("requests");
    let jane = requests[0].join_request_id.clone();
    let outcome =
        c.reject_join_requests(&group, &[jane.clone(), "nope".to_owned()]).await.expect("206");
    assert_eq!(outcome.done, vec![jane]);
    assert_eq!(
        outcome.failed.first().map(|(id, e)| (id.as_str(), e[0].code)),
        Some(("nope", 131213))
    );
    assert_eq!(sim.group(group.as_str()).expect("group")["pendingRequests"], json!([]));
    // On the wire: 206, the failed ids and a 131201.
    let r = reqwest::Client::new()
        .delete(format!("{}/v23.0/{group}/join_requests", sim.url()))
        .bearer_auth(crate::support::WA_TOKEN)
        .json(&json!({"messaging_product": "whatsapp", "join_requests": ["gone"]}))
        .send()
        .await
        .expect("reject");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["rejected_join_requests"], json!([]));
    assert_eq!(body["failed_join_requests"][0]["join_request_id"], "gone");
    assert_eq!(body["errors"][0]["code"], 131201);
}

#[tokio::test]
async fn graph_answers_what_it_does_not_serve_with_graph_errors() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = client(&sim.url(), dir.path(), "v23.0");
    let (group, _) = create(&c, &rx, "Shapes", true).await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String| {
        http.request(method, format!("{}{path}", sim.url()))
            .bearer_auth(crate::support::WA_TOKEN)
            .json(&json!({"messaging_product": "whatsapp"}))
            .send()
    };
    let graph = |v: &Value| {
        let e = &v["error"];
        e["message"].is_string()
            && e["type"].is_string()
            && e["code"].is_i64()
            && e["fbtrace_id"].is_string()
    };
    // An edge Graph does not have; adding participants (in the spec, not in the docs); a
    // second-level path.
    for (method, path, code) in [
        (reqwest::Method::GET, format!("/v23.0/{group}/nothing"), 2500),
        (reqwest::Method::POST, format!("/v23.0/{group}/participants"), 100),
        (reqwest::Method::PUT, format!("/v23.0/{group}"), 100),
        (reqwest::Method::GET, "/v23.0/a/b/c".to_owned(), 2500),
    ] {
        let r = call(method.clone(), path.clone()).await.expect("call");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method} {path}");
        let body: Value = r.json().await.expect("json");
        assert!(graph(&body), "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
    }
    // Every node answers `id`; an unknown field is Graph's (#100).
    let r = call(reqwest::Method::GET, format!("/v23.0/{group}?fields=id,subject"))
        .await
        .expect("info");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (body["id"].as_str(), body["subject"].as_str()),
        (Some(group.as_str()), Some("Shapes"))
    );
    let r =
        call(reqwest::Method::GET, format!("/v23.0/{group}?fields=colour")).await.expect("info");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.expect("json");
    assert!(graph(&body) && body["error"]["code"] == 100, "{body}");
    // A template without the spec's language policy is refused; the client sends it.
    let r = http
        .post(format!("{}/v23.0/{}/messages", sim.url(), crate::support::WA_PHONE_ID))
        .bearer_auth(crate::support::WA_TOKEN)
        .json(&json!({"messaging_product": "whatsapp", "to": JANE, "type": "template",
                      "template": {"name": "hello_world", "language": {"code": "en_US"}}}))
        .send()
        .await
        .expect("template");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let jane = E164::parse(&format!("+{JANE}")).expect("number");
    c.send_template(&Recipient::Phone(jane), "hello_world", "en_US", &[]).await.expect("sent");
    assert_eq!(sim.inbox(JANE)[0]["template"]["name"], "hello_world");
    // The control API keeps its {"error"} shape.
    let r = http.get(format!("{}/_sandbox/wa/nothing", sim.url())).send().await.expect("call");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.json::<Value>().await.expect("json")["error"].is_string());
}

/// The texts of the 1:1 messages a receiver stored, in arrival order.
fn texts_received(rx: &Receiver) -> Vec<String> {
    rx.events()
        .into_iter()
        .filter_map(|e| match e {
            WhatsAppEvent::Message { text, .. } => text,
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn webhooks_spread_over_several_urls_and_skip_one_that_refuses_connections() {
    // A failed delivery would wait a minute before its retry: a refused connection must not
    // count as one (the next URL is tried at once), or the waits below time out.
    let mut cfg = wa_groups_bot::sandbox::wa_sim::WhatsAppSimConfig::new(
        crate::support::WA_TOKEN,
        WA_SECRET,
        crate::support::WA_PHONE_ID,
    );
    cfg.webhook_retry_initial = Duration::from_secs(60);
    let sim = wa_groups_bot::sandbox::wa_sim::WhatsAppSim::start(cfg).await.expect("sim");
    let rxs = [start_receiver().await, start_receiver().await, start_receiver().await];
    sim.set_webhook_urls(&rxs.iter().map(|r| r.url.as_str()).collect::<Vec<_>>());
    let delivered = |rxs: &[Receiver]| rxs.iter().map(texts_received).collect::<Vec<_>>();
    let all_in = |rxs: &[Receiver], n: usize| {
        let total: usize = delivered(rxs).iter().map(Vec::len).sum();
        async move { (total >= n).then_some(()) }
    };

    // Three receivers up: round-robin, each gets every third delivery, in order.
    let first: Vec<String> = (0..30).map(|i| format!("first {i}")).collect();
    for text in &first {
        sim.send_as_phone(JANE, None, text, None).expect("send");
    }
    wait_for("30 deliveries", Duration::from_secs(10), || all_in(&rxs, 30)).await;
    let got = delivered(&rxs);
    for (k, texts) in got.iter().enumerate() {
        let expected: Vec<String> = first.iter().skip(k).step_by(3).cloned().collect();
        assert_eq!(texts, &expected, "receiver {k}");
    }

    // The second receiver's instance is gone: its listener refuses connections.
    rxs[1].cancel.cancel();
    let gone = rxs[1].url.trim_start_matches("http://").split('/').next().expect("addr").to_owned();
    wait_for("the listener to close", Duration::from_secs(10), || {
        let gone = gone.clone();
        async move { tokio::net::TcpStream::connect(gone).await.is_err().then_some(()) }
    })
    .await;
    let second: Vec<String> = (0..30).map(|i| format!("second {i}")).collect();
    for text in &second {
        sim.send_as_phone(JANE, None, text, None).expect("send");
    }
    wait_for("30 more deliveries", Duration::from_secs(10), || all_in(&rxs, 60)).await;
    let got = delivered(&rxs);
    assert_eq!(got[1].len(), 10, "nothing more reached the closed receiver");
    let shares: Vec<usize> = [0, 2].iter().map(|k| got[*k].len() - 10).collect();
    assert_eq!(shares, vec![15, 15], "its share goes to the others, evenly");
    let mut everything: Vec<String> = got.concat();
    everything.sort();
    let mut sent: Vec<String> = first.iter().chain(&second).cloned().collect();
    sent.sort();
    assert_eq!(everything, sent, "every webhook delivered once, none lost");
    // The simulator counts a delivery once the receiver has answered it, which can be a moment
    // after the receiver recorded the text.
    let stats = wait_for("the simulator to count the deliveries", Duration::from_secs(10), || {
        let stats = sim.stats();
        async move { (stats.webhooks_delivered >= 60).then_some(stats) }
    })
    .await;
    assert!(stats.webhooks_refused >= 1, "{stats:?}");
    assert_eq!(stats.webhooks_delivered, 60, "{stats:?}");
}

#[tokio::test]
async fn the_simulator_command_takes_several_webhook_urls() {
    use tokio::io::AsyncBufReadExt as _;
    let rxs = [start_receiver().await, start_receiver().await];
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-groups-bot"))
        .args(["whatsapp-sim", "--listen", "127.0.0.1:0"])
        .args(["--webhook-url", &rxs[0].url, "--webhook-url", &rxs[1].url])
        .args(["--access-token", crate::support::WA_TOKEN])
        .env("WAGB_SIM_APP_SECRET", WA_SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start whatsapp-sim");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("WhatsApp simulator listening on ") {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("whatsapp-sim prints its URL");
    for text in ["one", "two", "three", "four"] {
        let sent = control(
            &url,
            &format!("/_sandbox/wa/phones/{JANE}/messages"),
            json!({"to": "business", "text": text}),
        )
        .await;
        assert!(sent["id"].is_string(), "{sent}");
    }
    wait_for("both receivers served in turn", Duration::from_secs(10), || {
        let got: Vec<Vec<String>> = rxs.iter().map(texts_received).collect();
        async move { (got == [vec!["one", "three"], vec!["two", "four"]]).then_some(()) }
    })
    .await;
}
