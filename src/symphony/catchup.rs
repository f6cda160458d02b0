//! Catch-up after a datafeed loss: the messages posted in the bot's IMs and rooms while no feed
//! was read come back from the message history, as the same MESSAGESENT events the datafeed
//! gives. Streams come from `POST /pod/v1/streams/list` (paged by `skip`/`limit`), messages from
//! `GET /agent/v4/stream/{sid}/message?since=` (paged by `since` + `skip`, as the spec says: the
//! timestamp of the last message seen and how many with that timestamp were already seen).
//! The official BDKs lose these messages; the inbound queue's per-message key makes a message
//! the datafeed delivers as well count once.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::model::{self, StreamAttributes};
use super::{Retry, Service, SymphonyClient, SymphonyError};
use crate::domain::{StreamId, UserId};
use crate::events::symphony::message_key;
use crate::events::{SymphonyEvent, SymphonyEventKind};

/// How far before the watermark the history is read again: the datafeed does not promise order,
/// so a message a little older than the latest event seen may still have been in flight.
pub const OVERLAP: Duration = Duration::from_secs(60);
/// The oldest message a catch-up brings back: after a longer outage, older commands and chat are
/// stale rather than missed.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Streams listed per call (the spec's default is 50).
const STREAMS_PAGE: usize = 100;
/// Messages read per call (the spec's maximum is 500).
const MESSAGES_PAGE: usize = 500;
/// Streams read at the same time.
const PARALLEL_STREAMS: usize = 4;
/// A stream whose history does not end after this many pages is left there (a server ignoring
/// `skip` would otherwise loop for ever).
const MAX_PAGES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("cannot list the bot's streams: {0}")]
    Streams(#[source] SymphonyError),
}

/// Where a catch-up starts (pod time, ms): a little before the latest event persisted
/// ([`OVERLAP`]), never before the first event the store recorded, nor more than [`MAX_AGE`]
/// before `now_ms`.
pub fn start_of(latest_ms: i64, first_ms: i64, now_ms: i64) -> i64 {
    let overlap = OVERLAP.as_millis() as i64;
    let max_age = MAX_AGE.as_millis() as i64;
    (latest_ms - overlap).max(first_ms).max(now_ms - max_age)
}

/// What a catch-up found.
#[derive(Debug, Default)]
pub struct CaughtUp {
    /// Messages of others, oldest first, as MESSAGESENT events keyed by message id.
    pub events: Vec<SymphonyEvent>,
    /// Streams read.
    pub streams: usize,
    /// Streams whose history could not be read (after the client's retries).
    pub failed: Vec<(StreamId, SymphonyError)>,
}

/// A room of the bot as the pod shows it now: its name and members (changes made while no
/// datafeed was read are found by comparing this with the store).
#[derive(Debug, Clone)]
pub struct RoomNow {
    pub stream: StreamId,
    pub name: String,
    pub members: Vec<super::RoomMember>,
}

/// Reads the bot's streams' recent history.
#[derive(Debug, Clone)]
pub struct CatchUp {
    client: SymphonyClient,
    bot_user: UserId,
}

impl CatchUp {
    pub fn new(client: SymphonyClient, bot_user: UserId) -> Self {
        Self { client, bot_user }
    }

    /// The bot's own user id.
    pub fn bot_user(&self) -> UserId {
        self.bot_user
    }

    /// The messages posted since `since_ms` (pod time) by others in the active IMs, MIMs and
    /// rooms the bot is in. A stream that cannot be read is reported in
    /// [`CaughtUp::failed`]; the others are still read.
    pub async fn messages_since(&self, since_ms: i64) -> Result<CaughtUp, CatchUpError> {
        let streams = self.streams().await.map_err(CatchUpError::Streams)?;
        let count = streams.len();
        let mut reads = futures::stream::iter(streams)
            .map(|(sid, kind)| async move {
                let read = self.history(&sid, kind.as_deref(), since_ms).await;
                (sid, read)
            })
            .buffer_unordered(PARALLEL_STREAMS);
        let mut out = CaughtUp { streams: count, ..CaughtUp::default() };
        while let Some((sid, read)) = reads.next().await {
            // A long catch-up is the datafeed loop at work: keep `/healthz` from calling it dead.
            self.client.metrics.datafeed_ready();
            match read {
                Ok(events) => out.events.extend(events),
                Err(e) => out.failed.push((sid, e)),
            }
        }
        out.events.retain(|e| match &e.kind {
            SymphonyEventKind::MessageSent(m) => m.sender != self.bot_user,
            _ => false,
        });
        out.events.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The active rooms the bot is in, as they are now (`GET /pod/v3/room/{id}/info` and
    /// `GET /pod/v2/room/{id}/membership/list` each). A room that cannot be read is reported
    /// apart; the others are still read.
    pub async fn rooms_now(
        &self,
    ) -> Result<(Vec<RoomNow>, Vec<(StreamId, SymphonyError)>), CatchUpError> {
        let streams = self.streams().await.map_err(CatchUpError::Streams)?;
        let rooms = streams.into_iter().filter(|(_, kind)| kind.as_deref() == Some("ROOM"));
        let mut reads = futures::stream::iter(rooms)
            .map(|(sid, _)| async move {
                let read = async {
                    let info = self.client.room_info(&sid).await?;
                    let members = self.client.room_members(&sid).await?;
                    Ok::<_, SymphonyError>(RoomNow {
                        stream: sid.clone(),
                        name: info.name,
                        members,
                    })
                }
                .await;
                (sid, read)
            })
            .buffer_unordered(PARALLEL_STREAMS);
        let (mut found, mut failed) = (Vec::new(), Vec::new());
        while let Some((sid, read)) = reads.next().await {
            self.client.metrics.datafeed_ready();
            match read {
                Ok(room) => found.push(room),
                Err(e) => failed.push((sid, e)),
            }
        }
        Ok((found, failed))
    }

    /// Display names of users (one call; unknown users are left out).
    pub async fn names(
        &self,
        ids: &[UserId],
    ) -> Result<std::collections::HashMap<UserId, String>, SymphonyError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        Ok(self
            .client
            .users_by_ids(ids)
            .await?
            .into_iter()
            .filter_map(|u| u.display_name.map(|n| (u.id, n)))
            .collect())
    }

    /// `POST /pod/v1/streams/list`: the active IMs, MIMs and rooms the bot is in, with their
    /// type.
    async fn streams(&self) -> Result<Vec<(StreamId, Option<String>)>, SymphonyError> {
        let body = json!({
            "streamTypes": [{"type": "IM"}, {"type": "MIM"}, {"type": "ROOM"}],
            "includeInactiveStreams": false,
        });
        let mut out = Vec::new();
        loop {
            let query = [("skip", out.len()), ("limit", STREAMS_PAGE)];
            let page: Vec<StreamAttributes> = self
                .client
                .call(Service::Pod, Method::POST, "/pod/v1/streams/list", Retry::Standard, |r| {
                    r.query(&query).json(&body)
                })
                .await?
                .unwrap_or_default();
            let n = page.len();
            out.extend(
                page.into_iter().map(|s| (StreamId::new(s.id), s.stream_type.and_then(|t| t.kind))),
            );
            if n < STREAMS_PAGE {
                return Ok(out);
            }
        }
    }

    /// `GET /agent/v4/stream/{sid}/message?since=&skip=&limit=`, page after page.
    async fn history(
        &self,
        sid: &StreamId,
        kind: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<SymphonyEvent>, SymphonyError> {
        let path = format!("/agent/v4/stream/{sid}/message");
        let mut since = since_ms;
        let mut skip = 0usize;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let mut query =
                vec![("since", since.to_string()), ("limit", MESSAGES_PAGE.to_string())];
            if skip > 0 {
                query.push(("skip", skip.to_string()));
            }
            let page: Vec<Value> = self
                .client
                .call(Service::Agent, Method::GET, &path, Retry::Standard, |r| r.query(&query))
                .await?
                .unwrap_or_default();
            let mut fresh = 0;
            for raw in &page {
                match message_event(raw, sid, kind) {
                    Some(event) if seen.insert(event.id.clone()) => {
                        fresh += 1;
                        out.push(event);
                    }
                    Some(_) => {}
                    None => {
                        tracing::warn!(stream = %sid, message = %raw, "unreadable message skipped")
                    }
                }
            }
            let Some(last) =
                page.iter().filter_map(|m| m.get("timestamp").and_then(Value::as_i64)).max()
            else {
                return Ok(out);
            };
            if page.len() < MESSAGES_PAGE || fresh == 0 {
                return Ok(out);
            }
            // The next page: from the last timestamp seen, skipping the messages with that
            // timestamp already seen.
            let at_last = page
                .iter()
                .filter(|m| m.get("timestamp").and_then(Value::as_i64) == Some(last))
                .count();
            skip = if last == since { skip + at_last } else { at_last };
            since = last;
        }
        tracing::warn!(stream = %sid, pages = MAX_PAGES, "message history does not end; the rest is left");
        Ok(out)
    }
}

/// One `V4Message` of the history as the MESSAGESENT event the datafeed would have given (its
/// id is the message's key: the history has no event ids). The stream is the one read when the
/// message does not say.
fn message_event(raw: &Value, sid: &StreamId, kind: Option<&str>) -> Option<SymphonyEvent> {
    let mut raw = raw.clone();
    if raw.pointer("/stream/streamId").and_then(Value::as_str).is_none() {
        raw["stream"] = json!({"streamId": sid.as_str(), "streamType": kind});
    }
    let message = model::map_message(&raw, None)?;
    Some(SymphonyEvent {
        id: message_key(&message.message_id),
        timestamp: raw.get("timestamp").and_then(Value::as_i64).unwrap_or_default(),
        initiator: Some(message.sender),
        affected_name: None,
        kind: SymphonyEventKind::MessageSent(message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_starts_before_the_watermark_within_bounds() {
        let day = MAX_AGE.as_millis() as i64;
        let overlap = OVERLAP.as_millis() as i64;
        let now = 10 * day;
        assert_eq!(start_of(now - 1_000, 0, now), now - 1_000 - overlap);
        assert_eq!(start_of(now - 1_000, now - 5_000, now), now - 5_000, "not before the first");
        assert_eq!(start_of(now - 3 * day, 0, now), now - day, "not older than a day");
    }

    #[test]
    fn a_history_message_maps_like_the_datafeeds() {
        let raw = json!({
            "messageId": "q2KsXnCwN1u0pYI3eXcXpX___nJbXU7ibQ", "timestamp": 1732440000123_i64,
            "message": "<div data-format=\"PresentationML\" data-version=\"2.0\"><p>/wa help</p></div>",
            "user": {"userId": 349026222342678_i64, "displayName": "Alice Ng"},
            "stream": {"streamId": "usnBKBkH_BVrGOiVpaupEH___okFfE7QdA", "streamType": "IM"},
        });
        let sid = StreamId::new("other");
        let event = message_event(&raw, &sid, Some("ROOM")).expect("mapped");
        assert_eq!(event.id, "msg:q2KsXnCwN1u0pYI3eXcXpX___nJbXU7ibQ");
        assert_eq!(event.dedupe_key(), event.id);
        assert_eq!(event.timestamp, 1732440000123);
        assert_eq!(event.initiator, Some(UserId(349026222342678)));
        let SymphonyEventKind::MessageSent(m) = &event.kind else { panic!("{event:?}") };
        assert_eq!(m.text, "/wa help");
        assert_eq!(m.stream, StreamId::new("usnBKBkH_BVrGOiVpaupEH___okFfE7QdA"));
        assert_eq!(m.stream_type.as_deref(), Some("IM"));

        // The same message from the datafeed (standard base64 id) has the same key.
        let feed = json!({"id": "Lk3x9Q", "type": "MESSAGESENT", "timestamp": 1732440000123_i64,
            "payload": {"messageSent": {"message": raw.clone()}}});
        let mut standard = feed.clone();
        standard["payload"]["messageSent"]["message"]["messageId"] =
            json!("q2KsXnCwN1u0pYI3eXcXpX///nJbXU7ibQ==");
        for raw_event in [feed, standard] {
            let from_feed = model::map_event(&raw_event).expect("mapped");
            assert_eq!(from_feed.dedupe_key(), event.id);
        }
    }

    #[test]
    fn a_history_message_without_its_stream_takes_the_one_read() {
        let raw = json!({"messageId": "m1", "timestamp": 5,
            "message": "<div data-format=\"PresentationML\" data-version=\"2.0\">hi</div>",
            "user": {"userId": 7}});
        let event = message_event(&raw, &StreamId::new("s1"), Some("ROOM")).expect("mapped");
        let SymphonyEventKind::MessageSent(m) = &event.kind else { panic!("{event:?}") };
        assert_eq!((m.stream.as_str(), m.stream_type.as_deref()), ("s1", Some("ROOM")));
        assert!(message_event(&json!({"messageId": "m2"}), &StreamId::new("s1"), None).is_none());
    }
}
