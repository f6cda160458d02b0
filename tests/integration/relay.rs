//! The chat relay end to end: room ↔ WhatsApp group with attribution, replies mapped to the
//! right message, the 24-hour window, failed deliveries reported, standard groups fanned out.

use std::time::Duration;

use serde_json::{Value, json};
use wa_groups_bot::sandbox::mock_pod::MockPod;
use wa_groups_bot::sandbox::wa_sim::WhatsAppSim;

use crate::lifecycle::{JANE, JOHN, group_with_two_contacts, room_named};
use crate::support::{
    ALICE, BOT, WA_SECRET, start_bot_with_whatsapp, start_pod, start_sim, wait_for,
    wait_for_message,
};

/// Gives a phone its WhatsApp profile name.
async fn name_phone(sim: &WhatsAppSim, phone: &str, name: &str) {
    let resp = reqwest::Client::new()
        .put(format!("{}/_sandbox/wa/phones/{phone}", sim.url()))
        .json(&json!({"name": name}))
        .send()
        .await
        .expect("put phone");
    assert!(resp.status().is_success());
}

/// The messages the WhatsApp group received, in order.
fn group_messages(sim: &WhatsAppSim, gid: &str) -> Vec<Value> {
    sim.group(gid).and_then(|g| g["messages"].as_array().cloned()).unwrap_or_default()
}

/// What a message says: its text, or its template's first parameter.
fn said(m: &Value) -> String {
    match m["type"].as_str() {
        Some("template") => m["template"]["params"][0].as_str().unwrap_or_default().to_owned(),
        _ => m["text"].as_str().unwrap_or_default().to_owned(),
    }
}

async fn wait_group_message(sim: &WhatsAppSim, gid: &str, needle: &str) -> Value {
    wait_for(&format!("{needle:?} in the WhatsApp group"), Duration::from_secs(10), || {
        let found = group_messages(sim, gid).into_iter().find(|m| said(m).contains(needle));
        async move { found }
    })
    .await
}

async fn wait_inbox(sim: &WhatsAppSim, phone: &str, needle: &str) -> Value {
    wait_for(&format!("{needle:?} in {phone}'s inbox"), Duration::from_secs(10), || {
        let found = sim.inbox(phone).into_iter().find(|m| said(m).contains(needle));
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_goes_both_ways_with_attribution_and_replies_point_at_the_right_message() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    name_phone(&sim, JANE, "Jane Doe").await;
    name_phone(&sim, JOHN, "John Roe").await;
    let (sid, gid) = group_with_two_contacts(&pod, &sim).await;

    // Nobody has written in the group yet: the window is closed, so the advisor's message goes
    // as the template carrying the text, formatted for WhatsApp and signed.
    pod.post_message(&sid, ALICE, "<messageML>Hello <b>team</b>, see <i>the deck</i></messageML>")
        .expect("post");
    let first = wait_group_message(&sim, &gid, "Hello").await;
    assert_eq!(first["type"], "template", "{first}");
    assert_eq!(said(&first), "*Alice Ng*: Hello *team*, see _the deck_");

    // Jane writes: the room shows it from the bot, attributed to her name and number, escaped.
    let jane_id = sim
        .send_as_phone(JANE, Some(&gid), "Hi all <b>not bold</b> & *ready* ${x}", None)
        .expect("jane writes");
    let shown =
        wait_for_message(&pod, &sid, BOT, |t| t.contains("Jane Doe") && t.contains("Hi all")).await;
    assert!(shown.text.contains("+447911123456"), "{}", shown.text);
    assert!(shown.text.contains("Hi all <b>not bold</b> & ready ${x}"), "{}", shown.text);
    assert!(shown.presentation_ml.contains("<b>ready</b>"), "{}", shown.presentation_ml);

    // The window is open now: the next advisor message is free text.
    pod.post_message(&sid, ALICE, "<messageML>Thanks Jane</messageML>").expect("post");
    let thanks = wait_group_message(&sim, &gid, "Thanks Jane").await;
    assert_eq!(thanks["type"], "text", "{thanks}");
    assert_eq!(said(&thanks), "*Alice Ng*: Thanks Jane");

    // John replies to Alice's message, then to Jane's: each reply names the right message.
    let thanks_id = thanks["id"].as_str().expect("id").to_owned();
    sim.send_as_phone(JOHN, Some(&gid), "Agreed", Some(&thanks_id)).expect("reply");
    let reply = wait_for_message(&pod, &sid, BOT, |t| t.contains("Agreed")).await;
    assert!(reply.text.contains("in reply to Alice Ng: \"Thanks Jane\""), "{}", reply.text);
    assert!(reply.text.contains("John Roe"), "{}", reply.text);
    sim.send_as_phone(JOHN, Some(&gid), "Me too", Some(&jane_id)).expect("reply");
    let reply = wait_for_message(&pod, &sid, BOT, |t| t.contains("Me too")).await;
    assert!(reply.text.contains("in reply to Jane Doe: \"Hi all"), "{}", reply.text);

    // Commands and the bot's own messages are never relayed.
    pod.post_message(&sid, ALICE, "<messageML>/wa info</messageML>").expect("post");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("WhatsApp contacts")).await;
    pod.post_message(&sid, ALICE, "<messageML>after the command</messageML>").expect("post");
    wait_group_message(&sim, &gid, "after the command").await;
    let relayed: Vec<String> = group_messages(&sim, &gid)
        .iter()
        .filter(|m| m["from"] != JANE && m["from"] != JOHN && said(m).starts_with('*'))
        .map(said)
        .collect();
    assert_eq!(
        relayed,
        vec![
            "*Alice Ng*: Hello *team*, see _the deck_",
            "*Alice Ng*: Thanks Jane",
            "*Alice Ng*: after the command"
        ]
    );
    bot.stop().await;
}

/// Sends the bot's webhook receiver a signed `statuses` webhook, as Meta would.
async fn post_status(bot_hook: &str, status: Value) {
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000", "phone_number_id": crate::support::WA_PHONE_ID},
        "statuses": [status]}}]}]})
    .to_string();
    let resp = reqwest::Client::new()
        .post(bot_hook)
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            wa_groups_bot::webhook::signature(WA_SECRET, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("post webhook");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_window_turns_text_into_the_template_and_failures_are_reported() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let hook = format!("http://{}/whatsapp/webhook", bot.webhook_addr.expect("hook"));
    let (sid, gid) = group_with_two_contacts(&pod, &sim).await;

    // Outside the window a long text goes as several templates (a parameter holds 1024
    // characters at most), nothing cut.
    let long = (0..300).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    pod.post_message(&sid, ALICE, &format!("<messageML>{long}</messageML>")).expect("post");
    wait_group_message(&sim, &gid, "w299").await;
    let parts: Vec<String> = group_messages(&sim, &gid)
        .iter()
        .filter(|m| {
            let numbered = |w: &str| w.strip_prefix('w').is_some_and(|n| n.parse::<u32>().is_ok());
            m["type"] == "template" && said(m).split(' ').any(numbered)
        })
        .map(said)
        .collect();
    assert!(parts.len() >= 2 && parts.iter().all(|p| p.chars().count() <= 1024), "{parts:?}");
    assert_eq!(parts.join(" "), format!("*Alice Ng*: {long}"));

    // The bot believes the window open (a contact wrote 23 h ago by its clock), WhatsApp says
    // it has closed: the free text fails with 131047 and goes again as the template, once.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    bot.store.transaction(|tx| tx.open_window(&gid, now - 23 * 3_600_000)).expect("window");
    pod.post_message(&sid, ALICE, "<messageML>Quarterly numbers are out</messageML>")
        .expect("post");
    let resent = wait_group_message(&sim, &gid, "Quarterly numbers").await;
    assert_eq!(resent["type"], "template", "{resent}");
    assert_eq!(
        group_messages(&sim, &gid).iter().filter(|m| said(m).contains("Quarterly")).count(),
        1
    );

    // Meta reports a relayed message undeliverable: the room hears which message and why.
    let wamid = resent["id"].as_str().expect("id").to_owned();
    post_status(
        &hook,
        json!({"id": wamid, "status": "failed", "timestamp": "1700000000", "recipient_id": gid, "recipient_type": "group",
               "recipient_participant_id": JOHN,
               "errors": [{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable"}]}),
    )
    .await;
    let report = wait_for_message(&pod, &sid, BOT, |t| t.contains("Not delivered")).await;
    assert!(
        report.text.contains("+447911123457")
            && report.text.contains("Alice Ng's message \"Quarterly numbers are out\"")
            && report.text.contains("Message undeliverable (131026)"),
        "{}",
        report.text
    );

    // A send refused outright (after retries) is reported against its message too.
    let resp = reqwest::Client::new()
        .post(format!("{}/_sandbox/wa/faults", sim.url()))
        .json(&json!({"method": "POST", "path": "/messages$", "status": 400, "code": 131009, "count": 10}))
        .send()
        .await
        .expect("fault");
    assert!(resp.status().is_success());
    pod.post_message(&sid, ALICE, "<messageML>This one bounces</messageML>").expect("post");
    let report = wait_for_message(&pod, &sid, BOT, |t| t.contains("This one bounces")).await;
    assert!(report.text.contains("Could not relay Alice Ng's message"), "{}", report.text);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_groups_fan_out_and_private_replies_find_their_room() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    name_phone(&sim, JANE, "Jane Doe").await;
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    let create = |name: &str, phones: &str| {
        pod.post_message(
            &im,
            ALICE,
            &format!("<messageML>/wa create \"{name}\" {phones} --standard</messageML>"),
        )
        .expect("post")
    };
    create("Rates desk", &format!("+{JANE} +{JOHN}"));
    let rates = stream_of(&pod, "Rates desk").await;
    wait_for_message(&pod, &rates, BOT, |t| t.contains("standard WhatsApp group")).await;

    // Each contact gets the message 1:1, with the group's name and the sender.
    pod.post_message(&rates, ALICE, "<messageML>Morning all</messageML>").expect("post");
    let to_jane = wait_inbox(&sim, JANE, "Morning all").await;
    assert_eq!(said(&to_jane), "[Rates desk] *Alice Ng*: Morning all");
    assert_eq!(to_jane["type"], "template", "no window yet: {to_jane}");
    wait_inbox(&sim, JOHN, "[Rates desk] *Alice Ng*: Morning all").await;
    assert!(sim.groups().is_empty(), "a standard group has no WhatsApp group");

    // Jane answers 1:1 without quoting: the room that last wrote to her gets it.
    sim.send_as_phone(JANE, None, "Morning!", None).expect("write");
    let got = wait_for_message(&pod, &rates, BOT, |t| t.contains("Morning!")).await;
    assert!(got.text.contains("Jane Doe") && got.text.contains("privately"), "{}", got.text);

    // A second standard group with Jane writes to her later.
    create("FX desk", &format!("+{JANE}"));
    let fx = stream_of(&pod, "FX desk").await;
    wait_for_message(&pod, &fx, BOT, |t| t.contains("standard WhatsApp group")).await;
    pod.post_message(&fx, ALICE, "<messageML>EURUSD at 1.09</messageML>").expect("post");
    let fx_msg = wait_inbox(&sim, JANE, "EURUSD").await;
    assert_eq!(fx_msg["type"], "text", "Jane wrote within 24 h: {fx_msg}");

    // Replying to the Rates desk message routes there by context; an unquoted one goes to the
    // room that wrote last (FX desk).
    let rates_id = to_jane["id"].as_str().expect("id").to_owned();
    sim.send_as_phone(JANE, None, "About rates: yes", Some(&rates_id)).expect("write");
    let got = wait_for_message(&pod, &rates, BOT, |t| t.contains("About rates")).await;
    assert!(got.text.contains("in reply to Alice Ng: \"Morning all\""), "{}", got.text);
    sim.send_as_phone(JANE, None, "And FX: fine", None).expect("write");
    wait_for_message(&pod, &fx, BOT, |t| t.contains("And FX: fine")).await;
    assert!(!pod.messages(&rates).iter().any(|m| m.text.contains("And FX")));
    assert!(!pod.messages(&fx).iter().any(|m| m.text.contains("About rates")));

    // Changes are announced 1:1 to each contact of a standard group, prefixed with its name;
    // the creation itself announced nothing.
    pod.post_message(&rates, ALICE, "<messageML>/wa rename \"Rates EU\"</messageML>")
        .expect("post");
    let renamed = wait_inbox(&sim, JOHN, "now called \"Rates EU\"").await;
    assert_eq!(renamed["type"], "template");
    assert!(said(&renamed).starts_with("[Rates EU] "), "{renamed}");
    wait_inbox(&sim, JANE, "now called \"Rates EU\"").await;
    pod.post_message(&rates, ALICE, &format!("<messageML>/wa remove +{JOHN}</messageML>"))
        .expect("post");
    wait_inbox(&sim, JANE, "+447911123457").await;
    let john_notices: Vec<String> = sim.inbox(JOHN).iter().map(said).collect();
    assert!(
        !john_notices.iter().any(|n| n.contains("owner") || n.contains("+447911123457")),
        "{john_notices:?}"
    );
    // John is out: he no longer gets the chat, and what he writes stays out of the room.
    pod.post_message(&rates, ALICE, "<messageML>Only for Jane now</messageML>").expect("post");
    wait_inbox(&sim, JANE, "Only for Jane now").await;
    sim.send_as_phone(JOHN, None, "Let me back in", None).expect("write");
    sim.send_as_phone(JANE, None, "Got it", Some(&rates_id)).expect("write");
    wait_for_message(&pod, &rates, BOT, |t| t.contains("Got it")).await;
    assert!(!sim.inbox(JOHN).iter().any(|m| said(m).contains("Only for Jane")));
    assert!(!pod.messages(&rates).iter().any(|m| m.text.contains("Let me back in")));
    bot.stop().await;
}

async fn stream_of(pod: &MockPod, name: &str) -> String {
    room_named(pod, name).await["streamId"].as_str().expect("sid").to_owned()
}

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8).collect()
}

async fn sim_media(sim: &WhatsAppSim, id: &str) -> Vec<u8> {
    let r = reqwest::get(format!("{}/_sandbox/wa/media/{id}", sim.url())).await.expect("media");
    assert!(r.status().is_success());
    r.bytes().await.expect("bytes").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_both_ways_and_a_closed_window_is_said() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    name_phone(&sim, JANE, "Jane Doe").await;
    let (sid, gid) = group_with_two_contacts(&pod, &sim).await;
    let http = reqwest::Client::new();
    let chart = bytes(4_000);
    let post_chart = |text: &str| {
        http.post(format!("{}/_sandbox/streams/{sid}/messages", pod.url()))
            .json(&json!({"as": ALICE, "messageML": format!("<messageML>{text}</messageML>"),
                "attachments": [{"name": "chart.png", "contentType": "image/png",
                                 "dataBase64": STANDARD.encode(&chart)}]}))
            .send()
    };

    // Nobody wrote yet: WhatsApp takes no file, so the group hears a file was shared and the
    // room is told why the file itself did not go.
    assert!(post_chart("first chart").await.expect("post").status().is_success());
    wait_group_message(&sim, &gid, "shared a file in Symphony: chart.png").await;
    let told = wait_for_message(&pod, &sid, BOT, |t| t.contains("chart.png was not sent")).await;
    assert!(told.text.contains("24 hours"), "{}", told.text);
    wait_group_message(&sim, &gid, "first chart").await;

    // Jane writes: the window opens, and the next file goes as an image with its author.
    sim.send_as_phone(JANE, Some(&gid), "send it again please", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("send it again")).await;
    assert!(post_chart("the chart").await.expect("post").status().is_success());
    let image = wait_for("the image in the group", Duration::from_secs(10), || {
        let found = group_messages(&sim, &gid).into_iter().find(|m| m["type"] == "image");
        async move { found }
    })
    .await;
    assert_eq!(image["media"]["caption"], "*Alice Ng*", "{image}");
    assert_eq!(image["media"]["mimeType"], "image/png", "{image}");
    assert!(sim_media(&sim, image["media"]["id"].as_str().expect("id")).await == chart);
    wait_group_message(&sim, &gid, "*Alice Ng*: the chart").await;

    // Jane sends a document: it lands in the room as an attachment, byte for byte.
    let terms = bytes(9_000);
    let r = http
        .post(format!("{}/_sandbox/wa/phones/{JANE}/messages", sim.url()))
        .json(&json!({"to": gid, "media": {"type": "document", "mimeType": "application/pdf",
            "filename": "terms.pdf", "caption": "Final terms", "dataBase64": STANDARD.encode(&terms)}}))
        .send()
        .await
        .expect("write");
    assert!(r.status().is_success());
    let posted = wait_for_message(&pod, &sid, BOT, |t| t.contains("Final terms")).await;
    assert!(posted.text.contains("Jane Doe"), "{}", posted.text);
    let file = posted.attachments.first().expect("an attachment").clone();
    assert_eq!(file.name, "terms.pdf");
    let encoded: String = url::form_urlencoded::byte_serialize(file.file_id.as_bytes()).collect();
    let raw = http
        .get(format!("{}/_sandbox/streams/{sid}/attachments/{encoded}", pod.url()))
        .send()
        .await
        .expect("raw");
    assert_eq!(raw.headers()["content-type"], "application/pdf");
    assert!(raw.bytes().await.expect("bytes").as_ref() == terms.as_slice());

    // And a photo: WhatsApp gives it no file name, Symphony gets one from its type.
    let photo = bytes(2_500);
    let r = http
        .post(format!("{}/_sandbox/wa/phones/{JANE}/messages", sim.url()))
        .json(&json!({"to": gid, "media": {"type": "image", "mimeType": "image/jpeg",
            "caption": "the whiteboard", "dataBase64": STANDARD.encode(&photo)}}))
        .send()
        .await
        .expect("write");
    assert!(r.status().is_success());
    let posted = wait_for_message(&pod, &sid, BOT, |t| t.contains("the whiteboard")).await;
    let file = posted.attachments.first().expect("the photo").clone();
    assert!(
        file.name.starts_with("whatsapp-image.") && file.content_type == "image/jpeg",
        "{file:?}"
    );
    assert!(file.bytes == photo);

    // `/wa info` lists the room's files with their size, sender and date, and names people.
    pod.post_message(&sid, ALICE, "<messageML>/wa info</messageML>").expect("post");
    let info = wait_for_message(&pod, &sid, BOT, |t| t.contains("Attachments:")).await;
    assert!(info.text.contains("chart.png (3.9 KB), from Alice Ng, 20"), "{}", info.text);
    assert!(info.text.contains("terms.pdf (8.8 KB), from WA Test Bot"), "{}", info.text);
    assert!(info.text.contains("whatsapp-image."), "{}", info.text);
    assert!(
        info.text.contains("Owners: Alice Ng") && info.text.contains("Bob Smith"),
        "{}",
        info.text
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_beyond_a_sides_limits_are_said_in_the_room() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid) = group_with_two_contacts(&pod, &sim).await;
    sim.send_as_phone(JANE, Some(&gid), "window open", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("window open")).await;
    let http = reqwest::Client::new();

    // WhatsApp takes images up to 5 MB: a 6 MB one is refused before any upload, and said.
    let big = bytes(6 * 1024 * 1024);
    let r = http
        .post(format!("{}/_sandbox/streams/{sid}/messages", pod.url()))
        .json(&json!({"as": ALICE, "messageML": "<messageML>huge</messageML>",
            "attachments": [{"name": "big.png", "contentType": "image/png", "dataBase64": STANDARD.encode(&big)}]}))
        .send()
        .await
        .expect("post");
    assert!(r.status().is_success());
    let said_ = wait_for_message(&pod, &sid, BOT, |t| t.contains("big.png")).await;
    assert!(
        said_.text.contains("Could not send Alice Ng's file \"big.png\" to the WhatsApp group")
            && said_.text.contains("5 MB"),
        "{}",
        said_.text
    );
    wait_group_message(&sim, &gid, "*Alice Ng*: huge").await;
    assert!(!group_messages(&sim, &gid).iter().any(|m| m["type"] == "image"));

    // Symphony refuses a file from WhatsApp: the message still comes, saying why.
    pod.inject_fault(Some("POST"), "/agent/v4/stream/.*/message/create", 400, None, 1)
        .expect("fault");
    let r = http
        .post(format!("{}/_sandbox/wa/phones/{JANE}/messages", sim.url()))
        .json(&json!({"to": gid, "media": {"type": "document", "mimeType": "application/pdf",
            "filename": "blocked.pdf", "caption": "policy test", "dataBase64": STANDARD.encode(bytes(100))}}))
        .send()
        .await
        .expect("write");
    assert!(r.status().is_success());
    let posted = wait_for_message(&pod, &sid, BOT, |t| t.contains("policy test")).await;
    assert!(
        posted.text.contains("the file is not attached: Symphony refused it"),
        "{}",
        posted.text
    );
    assert!(posted.attachments.is_empty());
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_when_the_bot_stops_arrive_once_after_the_restart() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid) = group_with_two_contacts(&pod, &sim).await;
    sim.send_as_phone(JANE, Some(&gid), "hello", None).expect("write");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("hello")).await;

    // WhatsApp is down; three messages are taken in, their sends fail, and the bot stops.
    let r = reqwest::Client::new()
        .post(format!("{}/_sandbox/wa/faults", sim.url()))
        .json(
            &json!({"method": "POST", "path": "/messages$", "status": 503, "code": 2, "count": 3}),
        )
        .send()
        .await
        .expect("fault");
    assert!(r.status().is_success());
    for text in ["one", "two", "three"] {
        pod.post_message(&sid, ALICE, &format!("<messageML>{text}</messageML>")).expect("post");
    }
    wait_for("a failed send", Duration::from_secs(10), || {
        let failed = sim.stats().faults_served >= 1;
        async move { failed.then_some(()) }
    })
    .await;
    bot.stop().await;

    // A new bot on the same store finishes the work: each message once, in order.
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    wait_group_message(&sim, &gid, "*Alice Ng*: three").await;
    let relayed: Vec<String> = group_messages(&sim, &gid)
        .iter()
        .map(said)
        .filter(|t| t.starts_with("*Alice Ng*: "))
        .collect();
    assert_eq!(relayed, vec!["*Alice Ng*: one", "*Alice Ng*: two", "*Alice Ng*: three"]);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_whatsapp_could_not_deliver_is_said_in_the_room() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let hook = format!("http://{}/whatsapp/webhook", bot.webhook_addr.expect("hook"));
    let im = pod.create_im(&[ALICE, BOT]).expect("im");
    pod.post_message(&im, ALICE, &format!("<messageML>/wa create \"Ops\" +{JOHN}</messageML>"))
        .expect("post");
    let sid = stream_of(&pod, "Ops").await;
    let invitation = wait_for("the invitation", Duration::from_secs(10), || {
        let found = sim.inbox(JOHN).into_iter().find(|m| m["type"] == "template");
        async move { found }
    })
    .await;
    post_status(
        &hook,
        json!({"id": invitation["id"], "status": "failed", "timestamp": "1700000000", "recipient_id": JOHN,
               "recipient_type": "individual",
               "errors": [{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable"}]}),
    )
    .await;
    let report = wait_for_message(&pod, &sid, BOT, |t| t.contains("Not delivered")).await;
    assert!(
        report.text.contains("+447911123457")
            && report.text.contains("invitation to Ops")
            && report.text.contains("(131026)"),
        "{}",
        report.text
    );
    bot.stop().await;
}

/// Found by the chaos soak (seed 21): a contact wrote in the group, the bot was down, and the
/// message's webhook (retried by WhatsApp) came after the owner's `/wa remove` of that contact
/// had been decided (the datafeed kept the command meanwhile): the message was dropped as "a
/// message from a removed contact", although only a participant can write in the group. A
/// message written before the removal reaches the room, whenever its webhook comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_before_a_removal_reaches_the_room_when_its_webhook_comes_after() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, gid) = group_with_two_contacts(&pod, &sim).await;
    let hook = format!("http://{}/whatsapp/webhook", bot.webhook_addr.expect("webhook"));
    // Webhooks are held back (the receiver unreachable): John's message waits in WhatsApp.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    sim.set_webhook_url(&format!("http://{}/nowhere", dead.local_addr().expect("addr")));
    drop(dead);
    sim.send_as_phone(JOHN, Some(&gid), "written while still in the group", None)
        .expect("john writes");
    pod.post_message(&sid, ALICE, &format!("<messageML>/wa remove +{JOHN}</messageML>"))
        .expect("remove John");
    wait_for_message(&pod, &sid, BOT, |t| t.contains("+447911123457") && t.contains("was removed"))
        .await;
    wait_for("John out of the WhatsApp group", Duration::from_secs(10), || {
        let out = sim.group(&gid).is_some_and(|g| {
            !g["participants"].as_array().is_some_and(|p| p.iter().any(|x| x == JOHN))
        });
        async move { out.then_some(()) }
    })
    .await;
    // WhatsApp delivers again: the message he wrote while a participant is relayed.
    sim.set_webhook_url(&hook);
    wait_for_message(&pod, &sid, BOT, |t| t.contains("written while still in the group")).await;
}

/// A room's commands are answered in the order they were written, whichever way each is
/// decided: `/wa info`, which reads the room's files live (slowly here), then `/wa help`, which
/// the datafeed brings while that read is still out. The help needs no live read and could be
/// decided the moment it is stored, ahead of the info: it waits behind it instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_behind_one_still_being_decided_is_answered_after_it() {
    let pod = start_pod().await;
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = start_bot_with_whatsapp(&pod, &sim, dir.path(), "\"*\"").await;
    let (sid, _gid) = group_with_two_contacts(&pod, &sim).await;
    let answers_before = pod.messages(&sid).iter().filter(|m| m.user == BOT).count();
    pod.inject_hang("/pod/v1/streams/.*/attachments$", Duration::from_millis(1500), 1)
        .expect("hang");
    pod.post_message(&sid, ALICE, "<messageML>/wa info</messageML>").expect("info");
    pod.post_message(&sid, ALICE, "<messageML>/wa help</messageML>").expect("help");
    let answers = || -> Vec<String> {
        let mine = pod.messages(&sid).into_iter().filter(|m| m.user == BOT);
        mine.skip(answers_before).map(|m| m.text).collect()
    };
    wait_for("both answered", Duration::from_secs(10), || {
        let both = answers().len() >= 2;
        async move { both.then_some(()) }
    })
    .await;
    let answers = answers();
    assert_eq!(answers.len(), 2, "one answer each: {answers:?}");
    assert!(answers[0].contains("WhatsApp contacts"), "the info first: {answers:?}");
    assert!(answers[1].contains("list the commands"), "then the help: {answers:?}");
    bot.stop().await;
}
