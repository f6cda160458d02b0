//! The Symphony side's way into the inbound queue: datafeed batches and the catch-up after a
//! feed loss are persisted alike, a message under its message id (`msg:<id>`) whichever way it
//! came, so that a message both bring is handled once; and the watermark (the latest event's pod
//! timestamp) the next catch-up starts from moves forward with each batch.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::dispatch::{DecideOnReceipt, Event};
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

/// Where the intake finds the dispatcher, once it runs, to decide events on receipt.
pub type OnReceipt = Arc<OnceLock<Arc<dyn DecideOnReceipt>>>;

/// Persists each batch (new events are counted, redeliveries recognised; the messages `bot`
/// sent itself are left out), advances the watermark, then wakes the dispatcher. An error
/// leaves the batch unacknowledged. Once `on_receipt` is set, events are decided in the
/// transaction that stores them when nothing waits before them (see [`persist`]).
pub fn batch_handler(
    store: Store,
    metrics: Metrics,
    wake: Arc<Notify>,
    bot: UserId,
    on_receipt: OnReceipt,
) -> BatchHandler {
    Box::new(move |events: Vec<SymphonyEvent>| {
        let (store, metrics, wake) = (store.clone(), metrics.clone(), wake.clone());
        let on_receipt = on_receipt.clone();
        Box::pin(async move {
            // The batch is kept and persisted again while the store fails for a moment (a
            // database restarting): left unacknowledged, it would come back only after the
            // agent's visibility timeout, after later batches other instances took meanwhile.
            let events = Arc::new(events);
            let deadline = std::time::Instant::now() + PERSIST_RETRY_FOR;
            loop {
                let (store, metrics, batch) = (store.clone(), metrics.clone(), events.clone());
                let on_receipt = on_receipt.get().cloned();
                // Off the async workers: a locked store makes SQLite wait (up to 5 s).
                let persisted = tokio::task::spawn_blocking(move || {
                    persist(&store, &metrics, &batch, bot, on_receipt.as_deref())
                })
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
///
/// With `on_receipt`, while no event waits undecided in the store (none queued, none being
/// decided, none backing off), each new event is decided in this same transaction, in order,
/// until one is left to the queue: that one and every event after it wait there, so a key's
/// events are still decided in the order they came.
pub fn persist(
    store: &Store,
    metrics: &Metrics,
    events: &[SymphonyEvent],
    bot: UserId,
    on_receipt: Option<&dyn DecideOnReceipt>,
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
        let inbound = InboundEvent::Symphony(event.clone());
        payloads.push(serde_json::value::to_raw_value(&inbound)?);
        kept.push((event.dedupe_key(), Event::Inbound(inbound)));
    }
    if kept.is_empty() && latest.is_none() {
        return Ok(());
    }
    tracing::trace!(kept = kept.len(), "a commit");
    let (fresh, decided) = store.transaction(|tx| -> Result<_, StoreError> {
        let mut on_receipt = match on_receipt {
            Some(decider) if !tx.has_undecided()? => Some(decider),
            _ => None,
        };
        let mut fresh = Vec::with_capacity(kept.len());
        let mut decided = Vec::new();
        for ((key, event), payload) in kept.iter().zip(&payloads) {
            let id = tx.insert_inbound(Source::Symphony, key, payload)?;
            fresh.push(id.is_some());
            let (Some(id), Some(decider)) = (id, on_receipt) else { continue };
            match decider.decide_on_receipt(tx, id, key, event)? {
                Some(d) => decided.push(d),
                None => on_receipt = None, // it waits in the queue: so do the ones after it
            }
        }
        if let Some(at) = latest {
            tx.advance_symphony_watermark(at)?;
        }
        Ok((fresh, decided))
    })?;
    for new in fresh {
        metrics.inbound_event(EventSource::Symphony, new);
    }
    if let Some(decider) = on_receipt {
        decider.committed(&decided);
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
        said(id, sender, at, "hello")
    }

    fn said(id: &str, sender: i64, at: i64, text: &str) -> SymphonyEvent {
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
                text: text.into(),
                mentions: Vec::new(),
                presentation_ml: format!("<div>{text}</div>"),
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
        persist(&store, &Metrics::default(), &batch, bot, None).expect("persisted");
        let queued = store.pending_inbound(0, 10).expect("queue");
        assert_eq!(queued.len(), 1, "only the person's message: {queued:?}");
        assert_eq!(queued[0].dedupe_key, "msg:m1");
        assert_eq!(store.symphony_watermark().expect("mark").map(|m| m.latest_ms), Some(2_000));
    }

    /// Decides a message on receipt by queueing its text as an effect, except "live" (left to
    /// the queue) and "boom" (the store fails); counts what it is told after the commits.
    #[derive(Default)]
    struct Echo {
        committed: std::sync::Mutex<usize>,
    }

    impl DecideOnReceipt for Echo {
        fn decide_on_receipt(
            &self,
            tx: &dyn crate::store::Tx,
            id: i64,
            _dedupe_key: &str,
            event: &Event,
        ) -> Result<Option<crate::dispatch::Decided>, StoreError> {
            let Event::Inbound(InboundEvent::Symphony(SymphonyEvent {
                kind: SymphonyEventKind::MessageSent(m),
                ..
            })) = event
            else {
                return Ok(None);
            };
            match m.text.as_str() {
                "live" => Ok(None),
                "boom" => Err(StoreError::Poisoned),
                text => {
                    assert!(tx.mark_processed(id)?);
                    tx.queue_effects(&[("k".into(), serde_json::json!(text))])?;
                    Ok(Some(crate::dispatch::Decided { queued: true, command: None }))
                }
            }
        }

        fn committed(&self, decided: &[crate::dispatch::Decided]) {
            *self.committed.lock().expect("count") += decided.len();
        }
    }

    fn pending(store: &Store) -> Vec<String> {
        let rows = store.pending_inbound(0, 100).expect("queue");
        rows.into_iter().map(|r| r.dedupe_key).collect()
    }

    fn queued(store: &Store) -> Vec<serde_json::Value> {
        let mut effects = Vec::new();
        loop {
            let due = store.due_outbox(1, &[]).expect("due");
            let Some(row) = due.into_iter().next() else { return effects };
            store.transaction(|tx| tx.finish_effect(row.id, None)).expect("done");
            effects.push(row.effect);
        }
    }

    #[test]
    fn events_are_decided_on_receipt_until_one_is_left_to_the_queue_and_the_rest_wait_behind_it() {
        let store = Store::open_in_memory().expect("store");
        let echo = Echo::default();
        let batch = [said("m1", 7, 1, "one"), said("m2", 7, 2, "live"), said("m3", 7, 3, "three")];
        persist(&store, &Metrics::default(), &batch, UserId(9001), Some(&echo)).expect("stored");
        assert_eq!(queued(&store), [serde_json::json!("one")], "m1 decided in its commit");
        assert_eq!(pending(&store), ["msg:m2", "msg:m3"], "m3 waits behind m2, in the queue");
        assert_eq!(*echo.committed.lock().expect("count"), 1);

        // While m2 and m3 wait, a later batch waits too, even what could be decided at once.
        persist(
            &store,
            &Metrics::default(),
            &[said("m4", 7, 4, "four")],
            UserId(9001),
            Some(&echo),
        )
        .expect("stored");
        assert_eq!(pending(&store), ["msg:m2", "msg:m3", "msg:m4"]);
        assert!(queued(&store).is_empty());

        // The queue decided them: events are decided on receipt again.
        for row in store.pending_inbound(0, 10).expect("queue") {
            store.transaction(|tx| tx.mark_processed(row.id)).expect("decided");
        }
        let again = [said("m4", 7, 4, "four"), said("m5", 7, 5, "five")];
        persist(&store, &Metrics::default(), &again, UserId(9001), Some(&echo)).expect("stored");
        assert_eq!(queued(&store), [serde_json::json!("five")], "m4 is a redelivery: not again");
        assert!(pending(&store).is_empty());
        assert_eq!(*echo.committed.lock().expect("count"), 2);
    }

    #[test]
    fn a_store_failure_while_deciding_on_receipt_stores_nothing_of_the_batch() {
        let store = Store::open_in_memory().expect("store");
        let echo = Echo::default();
        let batch = [said("m1", 7, 1_000, "one"), said("m2", 7, 2_000, "boom")];
        let failed = persist(&store, &Metrics::default(), &batch, UserId(9001), Some(&echo));
        assert!(failed.is_err(), "the batch is not acknowledged: it comes again");
        assert!(pending(&store).is_empty() && queued(&store).is_empty(), "nothing of m1 either");
        assert_eq!(store.symphony_watermark().expect("mark"), None, "nor the watermark");
        assert_eq!(*echo.committed.lock().expect("count"), 0, "nothing told as decided");
    }
}
