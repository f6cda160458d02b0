//! The Symphony side's way into the inbound queue: datafeed batches and the catch-up after a
//! feed loss are persisted alike, a message under its message id (`msg:<id>`) whichever way it
//! came, so that a message both bring is handled once; and the watermark (the latest event's pod
//! timestamp) the next catch-up starts from moves forward with each batch.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::domain::UserId;
use crate::events::{InboundEvent, SymphonyEvent};
use crate::metrics::{EventSource, Metrics};
use crate::store::{Source, Store, StoreError};
use crate::symphony::catchup::{self, CatchUp};
use crate::symphony::datafeed::{BatchHandler, CatchUpHook};

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode the event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How long a datafeed batch is persisted again while the store fails, before it is left
/// unacknowledged (and the agent hands it out again).
const PERSIST_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(20);
const PERSIST_RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Persists each batch (new events are counted, redeliveries recognised; the messages `bot`
/// sent itself are left out), advances the watermark, then wakes the dispatcher. An error
/// leaves the batch unacknowledged.
pub fn batch_handler(
    store: Store,
    metrics: Metrics,
    wake: Arc<Notify>,
    bot: UserId,
) -> BatchHandler {
    Box::new(move |events: Vec<SymphonyEvent>| {
        let (store, metrics, wake) = (store.clone(), metrics.clone(), wake.clone());
        Box::pin(async move {
            // The batch is kept and persisted again while the store fails for a moment (a
            // database restarting): left unacknowledged, it would come back only after the
            // agent's visibility timeout, after later batches other instances took meanwhile.
            let events = Arc::new(events);
            let deadline = std::time::Instant::now() + PERSIST_RETRY_FOR;
            loop {
                let (store, metrics, batch) = (store.clone(), metrics.clone(), events.clone());
                // Off the async workers: a locked store makes SQLite wait (up to 5 s).
                let persisted =
                    tokio::task::spawn_blocking(move || persist(&store, &metrics, &batch, bot))
                        .await
                        .map_err(|e| e.to_string())?;
                match persisted {
                    Ok(()) => break,
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::warn!(error = %e, "a datafeed batch could not be persisted yet; trying again");
                        tokio::time::sleep(PERSIST_RETRY_EVERY).await;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            crate::crashpoint::reached("a datafeed batch persisted");
            wake.notify_one();
            Ok(())
        })
    })
}

/// Enqueues the events and records the latest timestamp, in one transaction (one commit a
/// batch). The bot's own messages are not enqueued: they are never reacted to, and every reply
/// would otherwise cost an event stored and decided (half the work of a burst of commands);
/// they still move the watermark.
pub fn persist(
    store: &Store,
    metrics: &Metrics,
    events: &[SymphonyEvent],
    bot: UserId,
) -> Result<(), IntakeError> {
    let mut latest = None;
    let mut kept = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for event in events {
        if event.timestamp > 0 {
            latest = latest.max(Some(event.timestamp));
        }
        if event.is_own_message(bot) {
            continue;
        }
        payloads.push(serde_json::to_value(InboundEvent::Symphony(event.clone()))?);
        kept.push(event);
    }
    if kept.is_empty() && latest.is_none() {
        return Ok(());
    }
    tracing::trace!(kept = kept.len(), "a commit");
    let fresh = store.transaction(|tx| -> Result<Vec<bool>, StoreError> {
        let fresh = kept
            .iter()
            .zip(&payloads)
            .map(|(event, payload)| {
                tx.enqueue_inbound(Source::Symphony, &event.dedupe_key(), payload)
            })
            .collect::<Result<_, _>>()?;
        if let Some(at) = latest {
            tx.advance_symphony_watermark(at)?;
        }
        Ok(fresh)
    })?;
    for new in fresh {
        metrics.inbound_event(EventSource::Symphony, new);
    }
    Ok(())
}

/// The catch-up the datafeed loop runs each time it has a feed: the messages posted since the
/// watermark (see [`catchup::start_of`]). Nothing before the first event the store ever recorded:
/// a fresh bot does not answer yesterday's commands (its watermark starts with its first feed).
pub fn catch_up_hook(store: Store, catch_up: CatchUp) -> CatchUpHook {
    let catch_up = Arc::new(catch_up);
    Box::new(move |new_feed| {
        let (store, catch_up) = (store.clone(), catch_up.clone());
        Box::pin(async move {
            let mut events = missed_messages(&store, &catch_up).await;
            if new_feed {
                events.extend(room_changes(&store, &catch_up).await);
            }
            events
        })
    })
}

/// The messages posted since the watermark.
async fn missed_messages(store: &Store, catch_up: &CatchUp) -> Vec<SymphonyEvent> {
    let mark = match store.symphony_watermark() {
        Ok(Some(mark)) => mark,
        Ok(None) => {
            // A fresh bot answers nothing from before its first feed, but everything after:
            // the watermark starts now, so a feed lost before the first event still loses
            // nothing.
            tracing::info!("no Symphony event received yet: nothing to catch up on");
            if let Err(e) = store.advance_symphony_watermark(now_ms()) {
                tracing::error!(error = %e, "cannot start the watermark");
            }
            return Vec::new();
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the watermark: no catch-up");
            return Vec::new();
        }
    };
    let since = catchup::start_of(mark.latest_ms, mark.first_ms, now_ms());
    match catch_up.messages_since(since).await {
        Ok(found) => {
            for (stream, error) in &found.failed {
                tracing::error!(%stream, %error, "cannot read a stream's recent messages: those missed there are lost");
            }
            tracing::info!(
                since,
                streams = found.streams,
                messages = found.events.len(),
                "caught up on the messages posted while no datafeed was read"
            );
            found.events
        }
        Err(e) => {
            tracing::error!(error = %e, "catch-up failed: messages posted while no datafeed was read are lost");
            Vec::new()
        }
    }
}

/// The room changes a new feed never brings (made while no feed was read, by people or by the
/// bot itself: a rename, an advisor added, removed, promoted or demoted), as the events the
/// datafeed would have given: each group's room as the pod shows it now against the store.
/// Deciding them is idempotent (a change the store already knows announces nothing). Rooms
/// of groups not yet active (their creation adds the members) or with membership changes still
/// queued are left to the datafeed.
async fn room_changes(store: &Store, catch_up: &CatchUp) -> Vec<SymphonyEvent> {
    use crate::domain::GroupState;
    use crate::events::SymphonyEventKind as Kind;
    let (rooms, failed) = match catch_up.rooms_now().await {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the rooms: changes made while no datafeed was read are not seen");
            return Vec::new();
        }
    };
    for (stream, error) in &failed {
        tracing::error!(%stream, %error, "cannot read a room: changes made to it while no datafeed was read are not seen");
    }
    let bot = catch_up.bot_user();
    let mut changes: Vec<Kind> = Vec::new();
    for room in rooms {
        let stream = room.stream.clone();
        let known = store.read(|r| {
            let Some(g) = r.group_by_stream(&stream)? else { return Ok(None) };
            if g.state != GroupState::Active || r.membership_pending(&stream)? {
                return Ok(None);
            }
            Ok(Some((g.name, r.advisors(g.key)?)))
        });
        let (name, advisors) = match known {
            Ok(Some(k)) => k,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot read a group: its room is not compared");
                continue;
            }
        };
        if room.name != name {
            changes
                .push(Kind::RoomUpdated { stream: stream.clone(), name: Some(room.name.clone()) });
        }
        let before: std::collections::HashMap<_, _> = advisors.into_iter().collect();
        let now: std::collections::HashMap<_, _> =
            room.members.iter().filter(|m| m.user != bot).map(|m| (m.user, m.owner)).collect();
        let mut users: Vec<_> = now.keys().chain(before.keys()).copied().collect();
        users.sort();
        users.dedup();
        for user in users {
            let stream = stream.clone();
            match (before.get(&user), now.get(&user)) {
                (None, Some(owner)) => {
                    changes.push(Kind::UserJoinedRoom { stream: stream.clone(), user });
                    if *owner {
                        changes.push(Kind::MemberPromotedToOwner { stream, user });
                    }
                }
                (Some(_), None) => changes.push(Kind::UserLeftRoom { stream, user }),
                (Some(false), Some(true)) => {
                    changes.push(Kind::MemberPromotedToOwner { stream, user })
                }
                (Some(true), Some(false)) => {
                    changes.push(Kind::MemberDemotedFromOwner { stream, user })
                }
                _ => {}
            }
        }
    }
    if changes.is_empty() {
        return Vec::new();
    }
    let mut ids: Vec<_> = changes.iter().filter_map(changed_user).collect();
    ids.sort();
    ids.dedup();
    let names = catch_up.names(&ids).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the names of changed members; notices name their ids");
        Default::default()
    });
    let at = now_ms();
    tracing::info!(changes = changes.len(), "room changes made while no datafeed was read");
    changes
        .into_iter()
        .enumerate()
        .map(|(i, kind)| SymphonyEvent {
            id: format!("caught-up:{at}:{i}"),
            timestamp: at,
            initiator: None,
            affected_name: changed_user(&kind).and_then(|u| names.get(&u).cloned()),
            kind,
        })
        .collect()
}

fn changed_user(kind: &crate::events::SymphonyEventKind) -> Option<UserId> {
    use crate::events::SymphonyEventKind as Kind;
    match kind {
        Kind::UserJoinedRoom { user, .. }
        | Kind::UserLeftRoom { user, .. }
        | Kind::MemberPromotedToOwner { user, .. }
        | Kind::MemberDemotedFromOwner { user, .. } => Some(*user),
        _ => None,
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StreamId;
    use crate::events::{ReceivedMessage, SymphonyEventKind};

    fn message(id: &str, sender: i64, at: i64) -> SymphonyEvent {
        SymphonyEvent {
            id: format!("ev-{id}"),
            timestamp: at,
            initiator: Some(UserId(sender)),
            affected_name: None,
            kind: SymphonyEventKind::MessageSent(ReceivedMessage {
                message_id: id.into(),
                stream: StreamId::from("im-1"),
                stream_type: Some("IM".into()),
                sender: UserId(sender),
                sender_name: None,
                sender_email: None,
                text: "hello".into(),
                mentions: Vec::new(),
                presentation_ml: "<div>hello</div>".into(),
                data: None,
                attachments: Vec::new(),
            }),
        }
    }

    #[test]
    fn the_bots_own_messages_are_not_queued_but_move_the_watermark() {
        let store = Store::open_in_memory().expect("store");
        let bot = UserId(9001);
        let batch = [message("m1", 7, 1_000), message("m2", 9001, 2_000)];
        persist(&store, &Metrics::default(), &batch, bot).expect("persisted");
        let queued = store.pending_inbound(0, 10).expect("queue");
        assert_eq!(queued.len(), 1, "only the person's message: {queued:?}");
        assert_eq!(queued[0].dedupe_key, "msg:m1");
        assert_eq!(store.symphony_watermark().expect("mark").map(|m| m.latest_ms), Some(2_000));
    }
}
