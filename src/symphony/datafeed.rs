//! The Datafeed v2 loop: find or create the feed, long-poll it with `ackId`, hand each batch to
//! a handler and acknowledge it (with the next read) only once the handler succeeded. A 400
//! means the feed is gone: read the one another instance of the bot set up meanwhile if there is
//! one, else delete it and create a new one; start again from `ackId ""`. A 401 is a
//! re-login (inside the client) on the same feed.
//!
//! Several instances share one feed (the pod hands each batch to one reader): they all read the
//! oldest listed datafeed, and one that created a feed at the same time as another (each after
//! finding none) settles on the oldest and deletes its own unread one, so that they do not end
//! up on different feeds, each getting every event (finos/symphony-bdk-java#782). Should they
//! still (a list call failing at that moment), the store's `(source, key)` uniqueness makes each
//! event count once. Throttling, server and network errors back
//! off exponentially (capped), honouring `Retry-After`. Each time the loop has a feed (at start
//! and after a re-creation) an optional hook catches up on what was posted while no feed was
//! read, before the first read.

use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::model::{self, Datafeed, EventList};
use super::{Retry, Service, SymphonyClient, SymphonyError};
use crate::config::RetryConfig;
use crate::events::SymphonyEvent;
use serde_json::value::RawValue;

/// Receives each non-empty batch; `Err` leaves the batch unacknowledged (it comes back later).
pub type BatchHandler =
    Box<dyn FnMut(Vec<SymphonyEvent>) -> BoxFuture<'static, Result<(), String>> + Send>;

/// Called each time the loop has a feed (at start and after every re-creation), before its
/// first read: the events missed while no feed was read (see [`super::catchup`]), handed to the
/// [`BatchHandler`] like a batch. Failures are the hook's to report: it returns what it found.
/// Called each time the loop has a feed, with whether the feed is new (created, not found):
/// what a new feed never brings (posted while none was read) comes back from it.
pub type CatchUpHook = Box<dyn FnMut(bool) -> BoxFuture<'static, Vec<SymphonyEvent>> + Send + Sync>;

/// The feed every instance agrees to read among those listed: the oldest datafeed (by
/// `createdAt`, then id; feeds without `createdAt` last).
fn shared_feed<'a>(feeds: &'a [Datafeed], avoid: Option<&str>) -> Option<&'a Datafeed> {
    feeds.iter().filter(|f| is_datafeed_id(&f.id) && Some(f.id.as_str()) != avoid).min_by(|a, b| {
        let key = |f: &'a Datafeed| (f.created_at.unwrap_or(i64::MAX), f.id.as_str());
        key(a).cmp(&key(b))
    })
}

/// Whether a feed id is a datafeed (`…_f` or `…_f_…`), not a datahose feed.
fn is_datafeed_id(id: &str) -> bool {
    let mut parts = id.split('_');
    let head = parts.next().unwrap_or_default();
    !head.is_empty()
        && !id.chars().any(char::is_whitespace)
        && parts.next() == Some("f")
        && parts.clone().count() <= 1
        && parts.all(|p| !p.is_empty())
}

pub struct DatafeedLoop {
    client: SymphonyClient,
    retry: RetryConfig,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    catch_up: Option<CatchUpHook>,
}

impl DatafeedLoop {
    /// `retry` is `datafeed.retry` (for ever by default). Reads time out after the client's read
    /// timeout, which must exceed the server's hold (~20 s on a real pod).
    pub fn new(client: SymphonyClient, retry: RetryConfig) -> Self {
        Self { client, retry, ready: None, catch_up: None }
    }

    /// `ready` fires once the feed exists: from then on no event is missed.
    pub fn on_ready(mut self, ready: tokio::sync::oneshot::Sender<()>) -> Self {
        self.ready = Some(ready);
        self
    }

    /// `hook` brings back what was missed each time the loop gets a feed.
    pub fn on_new_feed(mut self, hook: CatchUpHook) -> Self {
        self.catch_up = Some(hook);
        self
    }

    /// Runs the catch-up hook and hands what it found to `handler`, retried (per
    /// `datafeed.retry`) until it is taken: unlike a batch, nobody would deliver it again.
    async fn catch_up(
        &mut self,
        handler: &mut BatchHandler,
        cancel: &CancellationToken,
        new_feed: bool,
    ) {
        let found = match self.catch_up.as_mut() {
            Some(hook) => hook(new_feed),
            None => return,
        };
        let events = tokio::select! {
            () = cancel.cancelled() => return,
            events = found => events,
        };
        if events.is_empty() {
            return;
        }
        let count = events.len();
        let mut failures = 0u32;
        loop {
            match handler(events.clone()).await {
                Ok(()) => {
                    tracing::info!(count, "missed messages caught up");
                    return;
                }
                Err(reason) => {
                    failures += 1;
                    let Some(wait) = self.retry.next_wait(failures, true, None) else {
                        tracing::error!(%reason, count, "missed messages could not be taken; they are lost");
                        return;
                    };
                    tracing::warn!(%reason, count, ?wait, "missed messages not taken yet; retrying");
                    self.pause(cancel, wait).await;
                    if cancel.is_cancelled() {
                        return;
                    }
                }
            }
        }
    }

    async fn list(&self) -> Result<Vec<Datafeed>, SymphonyError> {
        Ok(self
            .client
            .call(Service::Agent, Method::GET, "/agent/v5/datafeeds", Retry::Standard, |r| r)
            .await?
            .unwrap_or_default())
    }

    async fn create(&self) -> Result<String, SymphonyError> {
        let feed: Datafeed = self
            .client
            .call(Service::Agent, Method::POST, "/agent/v5/datafeeds", Retry::Standard, |r| {
                r.json(&json!({}))
            })
            .await?
            .ok_or_else(|| SymphonyError::Decode {
                endpoint: "/agent/v5/datafeeds".into(),
                reason: "empty response".into(),
                body: String::new(),
            })?;
        tracing::info!(feed = %feed.id, "datafeed created");
        Ok(feed.id)
    }

    async fn delete(&self, id: &str) {
        let path = format!("/agent/v5/datafeeds/{id}");
        let deleted: Result<Option<serde_json::Value>, _> =
            self.client.call(Service::Agent, Method::DELETE, &path, Retry::AuthOnly, |r| r).await;
        if let Err(e) = deleted {
            tracing::debug!(error = %e, "deleting the old datafeed failed (ignored)");
        }
    }

    /// The feed all instances read, and whether it was created now (by this instance or, at
    /// the same moment, by another).
    async fn find_or_create(&self) -> Result<(String, bool), SymphonyError> {
        match shared_feed(&self.list().await?, None) {
            Some(feed) => {
                tracing::info!(feed = %feed.id, "reusing datafeed");
                Ok((feed.id.clone(), false))
            }
            None => Ok((self.create_shared(None).await?, true)),
        }
    }

    /// After a 400 on `gone`: the feed another instance set up meanwhile (one that got the 400
    /// first), if one is listed; else `gone` is deleted (as the BDKs do: should it still serve
    /// other instances, they then move too) and a new feed created.
    async fn replace(&self, gone: &str) -> Result<String, SymphonyError> {
        if let Some(feed) = shared_feed(&self.list().await?, Some(gone)) {
            tracing::info!(feed = %feed.id, "reading the datafeed another instance set up");
            return Ok(feed.id.clone());
        }
        self.delete(gone).await;
        self.create_shared(Some(gone)).await
    }

    /// Creates a feed, then settles on the one all instances read: another instance may have
    /// created one at the same time, each after finding none. The oldest wins; a newer one of
    /// ours is deleted before anything is read from it (what it alone received, posted between
    /// the two creations, the catch-up brings back).
    async fn create_shared(&self, avoid: Option<&str>) -> Result<String, SymphonyError> {
        let mine = self.create().await?;
        let listed = match self.list().await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, feed = %mine, "cannot list datafeeds after creating one; reading ours");
                return Ok(mine);
            }
        };
        match shared_feed(&listed, avoid) {
            Some(oldest) if oldest.id != mine => {
                tracing::info!(feed = %oldest.id, ours = %mine, "another instance created a datafeed first; reading it and deleting ours");
                self.delete(&mine).await;
                Ok(oldest.id.clone())
            }
            _ => Ok(mine),
        }
    }

    async fn read(
        &self,
        feed: &str,
        ack_id: &str,
    ) -> Result<(Vec<Box<RawValue>>, Option<String>), SymphonyError> {
        let path = format!("/agent/v5/datafeeds/{feed}/read");
        let body = json!({"ackId": ack_id});
        let list: Option<EventList> = self
            .client
            .call(Service::Agent, Method::POST, &path, Retry::AuthOnly, |r| r.json(&body))
            .await?;
        let list = list.ok_or_else(|| SymphonyError::Decode {
            endpoint: path.clone(),
            reason: "empty response".into(),
            body: String::new(),
        })?;
        Ok((list.events.unwrap_or_default(), list.ack_id))
    }

    /// Runs until `cancel` fires (then returns `Ok`) or an error that retrying cannot fix.
    /// Everything it logs, and what the handler logs, is in a `datafeed` span with the feed id.
    #[tracing::instrument(name = "datafeed", skip_all, fields(feed = tracing::field::Empty))]
    pub async fn run(
        mut self,
        mut handler: BatchHandler,
        cancel: CancellationToken,
    ) -> Result<(), SymphonyError> {
        let (mut feed, created) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = self.with_retries(&cancel, || self.find_or_create()) => match r? { Some(f) => f, None => return Ok(()) },
        };
        tracing::Span::current().record("feed", feed.as_str());
        // The heartbeat `/healthz` reads: set up, then every answered read.
        self.client.metrics.datafeed_ready();
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        // A restart may follow an outage (the feed then expired) or a crash in a catch-up.
        self.catch_up(&mut handler, &cancel, created).await;
        let mut ack_id = String::new();
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                r = self.read(&feed, &ack_id) => r,
            };
            match result {
                Ok((raw, next_ack)) => {
                    failures = 0;
                    self.client.metrics.datafeed_read();
                    // No `ackId` in the answer: the last one stays in force (what was read may
                    // come again; handling is idempotent).
                    if raw.is_empty() {
                        if let Some(next) = next_ack {
                            ack_id = next;
                        }
                        continue;
                    }
                    match hand_over(&mut handler, &feed, &raw).await {
                        Ok(()) => {
                            if let Some(next) = next_ack {
                                ack_id = next;
                            }
                        }
                        // Not acknowledged: the pod hands the batch out again later.
                        Err(()) => self.pause(&cancel, self.retry.backoff(0)).await,
                    }
                }
                Err(e) if e.status() == Some(400) && e.retry_after().is_none() => {
                    tracing::warn!(error = %e, "datafeed gone; finding or creating another");
                    let gone = feed.clone();
                    feed = match self.with_retries(&cancel, || self.replace(&gone)).await? {
                        Some(f) => f,
                        None => return Ok(()),
                    };
                    tracing::Span::current().record("feed", feed.as_str());
                    ack_id.clear();
                    // What was posted between the old feed's end and the new one's start.
                    self.catch_up(&mut handler, &cancel, true).await;
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    let Some(wait) = self.retry.next_wait(failures, true, e.retry_after()) else {
                        return Err(e);
                    };
                    tracing::warn!(error = %e, ?wait, "datafeed read failed; backing off");
                    self.pause(&cancel, wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn pause(&self, cancel: &CancellationToken, wait: Duration) {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    /// Retries a set-up step (list/create) per `datafeed.retry`; `None` when cancelled.
    async fn with_retries<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        mut step: F,
    ) -> Result<Option<T>, SymphonyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SymphonyError>>,
    {
        let mut failures = 0u32;
        loop {
            match step().await {
                Ok(v) => return Ok(Some(v)),
                Err(e)
                    if let Some(wait) =
                        self.retry.next_wait(failures + 1, e.is_retryable(), e.retry_after()) =>
                {
                    failures += 1;
                    tracing::warn!(error = %e, ?wait, "datafeed set-up failed; retrying");
                    self.pause(cancel, wait).await;
                    if cancel.is_cancelled() {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Maps one batch's events and hands them to `handler`, in a `datafeed_batch` span (so that
/// what the handler logs says which feed and batch it came from); `Err` when the handler failed
/// and the batch must not be acknowledged.
#[tracing::instrument(name = "datafeed_batch", skip_all, fields(feed = %feed, events = raw.len()))]
async fn hand_over(
    handler: &mut BatchHandler,
    feed: &str,
    raw: &[Box<RawValue>],
) -> Result<(), ()> {
    let events: Vec<SymphonyEvent> = raw
        .iter()
        .filter_map(|e| {
            let mapped = model::map_event_json(e.get());
            if mapped.is_none() {
                tracing::warn!(event = %e.get(), "unreadable datafeed event skipped");
            }
            mapped
        })
        .collect();
    let count = events.len();
    match handler(events).await {
        Ok(()) => {
            tracing::debug!(count, "datafeed batch handed over");
            Ok(())
        }
        Err(reason) => {
            tracing::warn!(%reason, count, "datafeed batch not processed; it will be redelivered");
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instance_picks_the_oldest_datafeed_of_a_list_in_any_order() {
        let feed = |id: &str, created_at: Option<i64>| Datafeed { id: id.into(), created_at };
        let listed = vec![
            feed("ccc_f", Some(20)),
            feed("ddd_p_1", Some(1)),
            feed("bbb_f", Some(10)),
            feed("aaa_f", Some(10)),
            feed("000_f", None),
        ];
        let mut reversed = listed.clone();
        reversed.reverse();
        for list in [&listed, &reversed] {
            assert_eq!(shared_feed(list, None).map(|f| f.id.as_str()), Some("aaa_f"));
            assert_eq!(shared_feed(list, Some("aaa_f")).map(|f| f.id.as_str()), Some("bbb_f"));
        }
        assert!(shared_feed(&[feed("ddd_p_1", Some(1))], None).is_none(), "no datahose feed");
        let undated = [feed("b_f", None), feed("a_f", None)];
        assert_eq!(shared_feed(&undated, None).map(|f| f.id.as_str()), Some("a_f"));
    }

    #[test]
    fn datafeed_ids_are_told_from_datahose_ids() {
        for ok in ["371f465fb97b5d1027d20a5e7085863a_f", "e766c498eece0d113f035270ad6c3c63_f_f8001"]
        {
            assert!(is_datafeed_id(ok), "{ok}");
        }
        for bad in
            ["d25098517ec62f1fc65cd111667a8386_p_be940", "abc", "_f", "a_f_", "a b_f", "a_f_x_y"]
        {
            assert!(!is_datafeed_id(bad), "{bad}");
        }
    }
}
