//! Attachments and media over loopback: the Symphony client against the mock pod (send with
//! files, list, download), the WhatsApp client against the simulator (limits, upload, media
//! messages both ways, download), as the relay will use them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use wa_groups_bot::events::{SymphonyEvent, SymphonyEventKind};
use wa_groups_bot::groups::StreamId;
use wa_groups_bot::symphony::{Attachment, DatafeedLoop, SymphonyClient, SymphonyError};

use crate::support::{self, ALICE, BOB, BOT, start_pod, wait_for};

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
