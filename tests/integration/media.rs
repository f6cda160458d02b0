//! Attachments and media over loopback: the Symphony client against the mock pod (send with
//! files, list, download), the WhatsApp client against the simulator (limits, upload, media
//! messages both ways, download), as the relay will use them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use wa_groups_bot::events::{SymphonyEvent, SymphonyEventKind, WhatsAppEvent};
use wa_groups_bot::groups::{E164, GroupId, StreamId};
use wa_groups_bot::symphony::{Attachment, DatafeedLoop, SymphonyClient, SymphonyError};
use wa_groups_bot::whatsapp::{MediaKind, OutgoingFile, Recipient, WhatsAppClient, WhatsAppError};

use crate::support::{
    self, ALICE, BOB, BOT, Receiver, WA_TOKEN, start_pod, start_receiver, start_sim, wa_config,
    wait_for,
};

const JANE: &str = "447911123456";
const JOHN: &str = "447911123457";

/// Bytes no text codec would survive: every byte value, several times.
fn binary(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

async fn symphony(pod: &wa_groups_bot::sandbox::mock_pod::MockPod) -> SymphonyClient {
    let dir = tempfile::tempdir().expect("tempdir");
    let client =
        SymphonyClient::new(&support::bot_config(pod, dir.path(), "keys/bot-pkcs8.pem").symphony)
            .expect("client");
    client.authenticate().await.expect("login");
    client
}

#[tokio::test]
async fn a_symphony_attachment_is_sent_listed_and_downloaded_byte_identical() {
    let pod = start_pod().await;
    let client = symphony(&pod).await;
    let room = StreamId::new(pod.create_room(ALICE, "Files", &[BOT]).expect("room"));

    let png = binary(70_000);
    let pdf = b"%PDF-1.4\n\xe2\xe3\xcf\xd3 binary tail \x00\x01\xff".to_vec();
    let sent = client
        .send_message_with_attachments(
            &room,
            "<messageML>Two files</messageML>",
            None,
            &[
                Attachment {
                    name: "chart.png".into(),
                    content_type: "image/png".into(),
                    bytes: png.clone().into(),
                },
                Attachment {
                    name: "terms.pdf".into(),
                    content_type: "application/pdf".into(),
                    bytes: pdf.clone().into(),
                },
            ],
        )
        .await
        .expect("sent with files");

    let listed = client.stream_attachments(&room).await.expect("listed");
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (item, (name, mime, bytes)) in listed
        .iter()
        .zip([("chart.png", "image/png", &png), ("terms.pdf", "application/pdf", &pdf)])
    {
        assert_eq!(item.message_id, sent.message_id);
        assert_eq!(
            (item.name.as_str(), item.content_type.as_deref(), item.size),
            (name, Some(mime), Some(bytes.len() as u64))
        );
        assert!(item.file_id.starts_with("internal_"), "{}", item.file_id);
        let downloaded = client
            .download_attachment(&room, &item.message_id, &item.file_id)
            .await
            .expect("downloaded");
        assert!(downloaded == *bytes, "{name} changed on the way");
    }
    // The pod kept what the bot sent.
    let posted = pod.messages(room.as_str());
    let files = &posted.last().expect("message").attachments;
    assert_eq!(
        files.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["chart.png", "terms.pdf"]
    );
    assert!(files[0].bytes == png);

    // The send is unchanged for callers without files.
    client.send_message(&room, "<messageML>plain</messageML>", None).await.expect("plain");
    assert_eq!(client.stream_attachments(&room).await.expect("listed").len(), 2);
}

#[tokio::test]
async fn a_persons_file_reaches_the_bot_by_datafeed_and_downloads() {
    let pod = start_pod().await;
    let client = symphony(&pod).await;
    let room = pod.create_room(ALICE, "Deal docs", &[BOT]).expect("room");
    let sid = StreamId::new(room.clone());

    // The bot listens to its datafeed.
    let events: Arc<Mutex<Vec<SymphonyEvent>>> = Arc::default();
    let sink = events.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let cancel = tokio_util::sync::CancellationToken::new();
    let feed = DatafeedLoop::new(client.clone(), client.retry_config()).on_ready(ready_tx);
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        feed.run(
            Box::new(move |batch| {
                sink.lock().expect("events").extend(batch);
                Box::pin(async { Ok(()) })
            }),
            stop,
        )
        .await
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx).await.expect("ready").expect("feed");

    // Alice posts a spreadsheet through the control API.
    let xlsx = binary(3_000);
    let http = reqwest::Client::new();
    let posted: Value = http
        .post(format!("{}/_sandbox/streams/{room}/messages", pod.url()))
        .json(&json!({"as": ALICE, "messageML": "<messageML>numbers</messageML>",
            "attachments": [{"name": "q3.xlsx", "contentType": "application/vnd.ms-excel",
                             "dataBase64": STANDARD.encode(&xlsx)}]}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let message_id = posted["messageId"].as_str().expect("messageId").to_owned();

    // The MESSAGESENT event carries the attachment (id, name, size).
    let file = wait_for("the MESSAGESENT event", Duration::from_secs(10), || {
        let found = events.lock().expect("events").iter().find_map(|e| match &e.kind {
            SymphonyEventKind::MessageSent(m) if m.message_id == message_id => {
                m.attachments.first().cloned()
            }
            _ => None,
        });
        async move { found }
    })
    .await;
    assert_eq!((file.name.as_str(), file.size), ("q3.xlsx", Some(3_000)));
    let bytes = client.download_attachment(&sid, &message_id, &file.id).await.expect("download");
    assert!(bytes == xlsx);

    // The control API shows it and hands out its bytes.
    let messages: Value = http
        .get(format!("{}/_sandbox/streams/{room}/messages", pod.url()))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        messages[0]["attachments"],
        json!([{"name": "q3.xlsx", "fileId": file.id, "size": 3000, "contentType": "application/vnd.ms-excel"}])
    );
    let encoded_id: String = url::form_urlencoded::byte_serialize(file.id.as_bytes()).collect();
    let raw = http
        .get(format!("{}/_sandbox/streams/{room}/attachments/{encoded_id}", pod.url()))
        .send()
        .await
        .expect("raw");
    assert_eq!(raw.headers()["content-type"], "application/vnd.ms-excel");
    assert!(raw.bytes().await.expect("bytes").as_ref() == xlsx.as_slice());

    cancel.cancel();
    task.await.expect("joined").expect("feed stopped cleanly");
}

#[tokio::test]
async fn attachment_mistakes_get_clear_errors() {
    let pod = start_pod().await;
    let client = symphony(&pod).await;
    let room = StreamId::new(pod.create_room(ALICE, "Files", &[BOT]).expect("room"));
    let sent = client
        .send_message_with_attachments(
            &room,
            "<messageML>one</messageML>",
            None,
            &[Attachment {
                name: "a.txt".into(),
                content_type: "text/plain".into(),
                bytes: b"hello".to_vec().into(),
            }],
        )
        .await
        .expect("sent");

    // An unknown file of a real message: 400; a stream the bot is not in: 403.
    let err = client
        .download_attachment(&room, &sent.message_id, "internal_14362%2Fnope")
        .await
        .expect_err("unknown file");
    assert_eq!(err.status(), Some(400), "{err}");
    let elsewhere = StreamId::new(pod.create_room(ALICE, "Private", &[BOB]).expect("room"));
    let err = client
        .download_attachment(&elsewhere, &sent.message_id, "internal_14362%2Fnope")
        .await
        .expect_err("not a member");
    assert_eq!(err.status(), Some(403), "{err}");

    // Refused before calling: no file name, or a content type that is not one.
    let before = pod.messages(room.as_str()).len();
    for (name, content_type) in [(" ", "text/plain"), ("a.txt", "not a type")] {
        let err = client
            .send_message_with_attachments(
                &room,
                "<messageML>bad</messageML>",
                None,
                &[Attachment {
                    name: name.into(),
                    content_type: content_type.into(),
                    bytes: b"x".to_vec().into(),
                }],
            )
            .await
            .expect_err("refused");
        assert!(matches!(err, SymphonyError::Invalid(_)), "{err:?}");
    }
    assert_eq!(pod.messages(room.as_str()).len(), before);

    // The control API refuses bad base64 and changes nothing.
    let r = reqwest::Client::new()
        .post(format!("{}/_sandbox/streams/{}/messages", pod.url(), room.as_str()))
        .json(&json!({"as": ALICE, "messageML": "<messageML>x</messageML>",
            "attachments": [{"name": "x.bin", "contentType": "application/pdf", "dataBase64": "***"}]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.expect("json");
    assert!(body["error"].as_str().expect("error").contains("dataBase64"), "{body}");
    assert_eq!(pod.messages(room.as_str()).len(), before);
}

// ----- WhatsApp -----

fn whatsapp(sim_url: &str, dir: &std::path::Path) -> WhatsAppClient {
    let cfg = wa_config(dir, sim_url, "v23.0");
    WhatsAppClient::new(&cfg.whatsapp, cfg.symphony.retry).expect("client")
}

fn phone(digits: &str) -> Recipient {
    Recipient::Phone(E164::parse(&format!("+{digits}")).expect("number"))
}

fn file(filename: &str, mime: &str, bytes: Vec<u8>) -> OutgoingFile {
    OutgoingFile { filename: filename.into(), mime: mime.into(), bytes: bytes.into() }
}

async fn sim_media(sim_url: &str, id: &str) -> (String, Vec<u8>) {
    let r = reqwest::get(format!("{sim_url}/_sandbox/wa/media/{id}")).await.expect("media");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let mime = r.headers()["content-type"].to_str().expect("type").to_owned();
    (mime, r.bytes().await.expect("bytes").to_vec())
}

/// Waits for the status `status` of message `wamid` and returns its error codes.
async fn status_of(rx: &Receiver, wamid: &str, status: &str) -> Vec<i64> {
    rx.wait_event(&format!("{status} status of {wamid}"), |e| match e {
        WhatsAppEvent::Status { message_id, status: s, errors, .. }
            if message_id == wamid && s == status =>
        {
            Some(errors.iter().map(|e| e.code).collect())
        }
        _ => None,
    })
    .await
}

#[tokio::test]
async fn media_breaking_a_limit_is_refused_before_any_call() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = whatsapp(&sim.url(), dir.path());
    let calls = sim.stats().api_calls;

    let err = c
        .send_file(
            &phone(JANE),
            MediaKind::Image,
            &file("big.png", "image/png", binary(5 * 1024 * 1024 + 1)),
            None,
        )
        .await
        .expect_err("too large");
    assert!(
        matches!(err, WhatsAppError::MediaTooLarge { kind: Some(MediaKind::Image), limit, .. } if limit == 5 * 1024 * 1024),
        "{err:?}"
    );
    assert!(err.to_string().contains("5 MB"), "{err}");

    let err = c
        .send_file(&phone(JANE), MediaKind::Image, &file("a.gif", "image/gif", binary(10)), None)
        .await
        .expect_err("not an image WhatsApp takes");
    assert!(
        matches!(&err, WhatsAppError::MediaTypeUnsupported { kind: Some(MediaKind::Image), mime } if mime == "image/gif"),
        "{err:?}"
    );
    assert!(err.to_string().contains("image/jpeg, image/png"), "{err}");

    let err = c.upload_media(binary(10), "application/zip", "a.zip").await.expect_err("zip");
    assert!(matches!(err, WhatsAppError::MediaTypeUnsupported { kind: None, .. }), "{err:?}");
    let err =
        c.upload_media(binary(600 * 1024), "image/webp", "s.webp").await.expect_err("sticker");
    assert!(err.to_string().contains("500 KB"), "{err}");
    let err = c
        .send_media(&phone(JANE), MediaKind::Audio, "1234567890", Some("no"), None)
        .await
        .expect_err("audio has no caption");
    assert!(matches!(err, WhatsAppError::Invalid(_)), "{err:?}");
    let err = c.download_media("../groups").await.expect_err("not an id");
    assert!(matches!(err, WhatsAppError::Invalid(_)), "{err:?}");

    assert_eq!(sim.stats().api_calls, calls, "nothing reached the API");
}

#[tokio::test]
async fn the_simulator_refuses_what_meta_refuses() {
    let sim = start_sim().await;
    let http = reqwest::Client::new();
    let upload = |mime: &str, bytes: Vec<u8>| {
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime.to_owned())
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name("f").mime_str(mime).expect("mime"),
            );
        http.post(format!("{}/v23.0/{}/media", sim.url(), support::WA_PHONE_ID))
            .bearer_auth(WA_TOKEN)
            .multipart(form)
            .send()
    };
    let r = upload("application/zip", binary(10)).await.expect("upload");
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], 100);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("Received file of type 'application/zip'")
    );
    let r = upload("image/png", binary(5 * 1024 * 1024 + 1)).await.expect("upload");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], 131053, "{body}");

    let r = http
        .get(format!("{}/v23.0/4490709327384033", sim.url()))
        .bearer_auth(WA_TOKEN)
        .send()
        .await
        .expect("get");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (body["error"]["code"].as_i64(), body["error"]["error_subcode"].as_i64()),
        (Some(100), Some(33))
    );
    let r = http.get(format!("{}/v23.0/4490709327384033", sim.url())).send().await.expect("get");
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_uploaded_image_reaches_the_phone_and_its_bytes_match() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = whatsapp(&sim.url(), dir.path());
    let png = binary(40_000);

    // Jane wrote first: her window is open.
    sim.send_as_phone(JANE, None, "send me the chart", None).expect("jane writes");
    let wamid = c
        .send_file(
            &phone(JANE),
            MediaKind::Image,
            &file("chart.png", "image/png", png.clone()),
            Some("Q3 chart"),
        )
        .await
        .expect("image sent");
    status_of(&rx, &wamid, "delivered").await;
    let inbox = sim.inbox(JANE);
    let got = inbox.iter().find(|m| m["id"] == wamid.as_str()).expect("in Jane's inbox");
    assert_eq!((got["type"].as_str(), got["text"].as_str()), (Some("image"), Some("Q3 chart")));
    assert_eq!(got["media"]["mimeType"], "image/png");
    assert_eq!(got["media"]["caption"], "Q3 chart");
    assert_eq!(got["media"]["size"], png.len());
    let media_id = got["media"]["id"].as_str().expect("media id");
    let (mime, bytes) = sim_media(&sim.url(), media_id).await;
    assert_eq!(mime, "image/png");
    assert!(bytes == png, "the phone got other bytes");

    // The business can read back what it uploaded: info, then the bytes through the URL.
    let info = c.media_info(media_id).await.expect("info");
    assert_eq!((info.mime_type.as_str(), info.file_size), ("image/png", Some(png.len() as u64)));
    assert!(info.matches(&png) && !info.matches(b"other"));
    let (downloaded, mime) = c.download_media(media_id).await.expect("download");
    assert!(downloaded == png && mime == "image/png");
    // The URL needs the token.
    let bare = reqwest::get(&info.url).await.expect("bare get");
    assert_eq!(bare.status(), reqwest::StatusCode::UNAUTHORIZED);

    // John never wrote: a media message fails like text would (131047), and he gets nothing.
    let id = c.upload_media(png.clone(), "image/png", "chart.png").await.expect("upload");
    let wamid =
        c.send_media(&phone(JOHN), MediaKind::Image, &id, None, None).await.expect("accepted");
    assert_eq!(status_of(&rx, &wamid, "failed").await, vec![131047]);
    assert!(sim.inbox(JOHN).is_empty());

    // A PDF sent as an image is accepted, then fails as Meta does (131053).
    let pdf =
        c.upload_media(b"%PDF-1.4 x".to_vec(), "application/pdf", "t.pdf").await.expect("pdf");
    let wamid =
        c.send_media(&phone(JANE), MediaKind::Image, &pdf, None, None).await.expect("accepted");
    assert_eq!(status_of(&rx, &wamid, "failed").await, vec![131053]);

    // Deleted media is gone.
    c.delete_media(&pdf).await.expect("deleted");
    let err = c.media_info(&pdf).await.expect_err("gone");
    assert_eq!(err.code(), Some(100), "{err}");
}

#[tokio::test]
async fn a_document_reaches_a_group_with_its_file_name() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = whatsapp(&sim.url(), dir.path());
    let request = c.create_group("Deal team", "", false).await.expect("create");
    let (group, link) = rx
        .wait_event("group_create", |e| match e {
            WhatsAppEvent::GroupCreated {
                request_id: Some(r),
                group_id,
                invite_link: Some(l),
                ..
            } if *r == request => Some((group_id.clone(), l.clone())),
            _ => None,
        })
        .await;
    assert_eq!(sim.tap(JANE, &link)["result"], "joined");
    assert_eq!(sim.tap(JOHN, &link)["result"], "joined");
    sim.send_as_phone(JANE, Some(group.as_str()), "terms please", None).expect("window");

    let terms = binary(9_000);
    let wamid = c
        .send_file(
            &Recipient::Group(group.clone()),
            MediaKind::Document,
            &file("terms.pdf", "application/pdf", terms.clone()),
            Some("Final terms"),
        )
        .await
        .expect("document sent");
    let g = sim.group(group.as_str()).expect("group");
    let sent = g["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["id"] == wamid.as_str())
        .expect("in the group");
    assert_eq!(sent["type"], "document");
    assert_eq!(sent["media"]["filename"], "terms.pdf");
    assert_eq!(sent["media"]["caption"], "Final terms");
    for p in [JANE, JOHN] {
        let got = sim.inbox(p).into_iter().find(|m| m["id"] == wamid.as_str()).expect("delivered");
        assert_eq!(got["groupId"], group.as_str());
        let (_, bytes) = sim_media(&sim.url(), got["media"]["id"].as_str().expect("id")).await;
        assert!(bytes == terms);
    }
    // Group messages and group ids are still told apart from media ids.
    assert!(c.group_info(&GroupId(group.0.clone())).await.is_ok());

    // Jane posts a photo in the group: John sees it, the bot is told with the group id.
    let photo = binary(1_500);
    let r = reqwest::Client::new()
        .post(format!("{}/_sandbox/wa/phones/{JANE}/messages", sim.url()))
        .json(&json!({"to": group.as_str(), "media": {"type": "image", "mimeType": "image/jpeg",
            "caption": "whiteboard", "dataBase64": STANDARD.encode(&photo)}}))
        .send()
        .await
        .expect("write");
    let wamid = r.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let media_id = rx
        .wait_event("Jane's photo", |e| match e {
            WhatsAppEvent::Message {
                id, group_id: Some(g), media_id: Some(m), mime_type, ..
            } if *id == wamid && *g == group && mime_type.as_deref() == Some("image/jpeg") => {
                Some(m.clone())
            }
            _ => None,
        })
        .await;
    let seen = sim.inbox(JOHN).into_iter().find(|m| m["id"] == wamid.as_str()).expect("John");
    assert_eq!(
        (seen["type"].as_str(), seen["media"]["id"].as_str()),
        (Some("image"), Some(media_id.as_str()))
    );
    assert!(c.download_media(&media_id).await.expect("download").0 == photo);
}

#[tokio::test]
async fn a_phones_document_reaches_the_receiver_and_downloads_byte_identical() {
    let sim = start_sim().await;
    let rx = start_receiver().await;
    sim.set_webhook_url(&rx.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = whatsapp(&sim.url(), dir.path());
    let pdf = binary(250_000);

    let http = reqwest::Client::new();
    let write = |body: Value| {
        http.post(format!("{}/_sandbox/wa/phones/{JANE}/messages", sim.url())).json(&body).send()
    };
    let r = write(
        json!({"to": "business", "media": {"type": "document", "mimeType": "application/pdf",
        "filename": "signed.pdf", "caption": "Signed", "dataBase64": STANDARD.encode(&pdf)}}),
    )
    .await
    .expect("write");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let wamid = r.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();

    let (media_id, mime, filename, caption) = rx
        .wait_event("the document webhook", |e| match e {
            WhatsAppEvent::Message {
                id,
                kind,
                media_id: Some(m),
                mime_type,
                filename,
                caption,
                ..
            } if *id == wamid && kind == "document" => {
                Some((m.clone(), mime_type.clone(), filename.clone(), caption.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(
        (mime.as_deref(), filename.as_deref(), caption.as_deref()),
        (Some("application/pdf"), Some("signed.pdf"), Some("Signed"))
    );
    let (bytes, mime) = c.download_media(&media_id).await.expect("download");
    assert!(bytes == pdf, "the downloaded file differs");
    assert_eq!(mime, "application/pdf");

    // Mistakes in the control call are explained and change nothing.
    let before = rx.events().len();
    for (body, says) in [
        (
            json!({"to": "business", "media": {"type": "gif", "mimeType": "image/gif", "dataBase64": "AA=="}}),
            "media.type",
        ),
        (
            json!({"to": "business", "media": {"type": "audio", "mimeType": "audio/ogg", "caption": "x", "dataBase64": "AA=="}}),
            "caption",
        ),
        (
            json!({"to": "business", "media": {"type": "image", "mimeType": "image/png", "dataBase64": "***"}}),
            "dataBase64",
        ),
        (
            json!({"to": "business", "text": "both", "media": {"type": "image", "mimeType": "image/png", "dataBase64": "AA=="}}),
            "not both",
        ),
    ] {
        let r = write(body).await.expect("write");
        assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
        let e: Value = r.json().await.expect("json");
        assert!(e["error"].as_str().expect("error").contains(says), "{e}");
    }
    // Webhooks go out in order: once a later message has arrived, nothing else came before it.
    let later = sim.send_as_phone(JANE, None, "later", None).expect("later");
    rx.wait_event("the later message", |e| match e {
        WhatsAppEvent::Message { id, .. } if *id == later => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(rx.events().len(), before + 1);
}
