//! The dispatcher: takes persisted inbound events and decides them, in order per key (a group,
//! a stream, a WhatsApp chat), keys in parallel. Each decision commits in one transaction with
//! its state changes, its effects and the event's processed mark. An event that keeps failing
//! is retried with capped backoff, then set aside (kept, counted, reported in its room, listed
//! and retried by `wa-groups-bot events`): it never holds up another key. On a store of its
//! own, while nothing waits in the queue, a Symphony event that needs no live read is decided
//! in the very transaction that stores it ([`DecideOnReceipt`], used by the intake).

pub mod decide;

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::commands::router::LiveReads;
use crate::effects::to_outbox;
use crate::metrics::Metrics;
use crate::store::{Claim, InboundRow, Store};

pub use decide::{DecideError, Decider, Event, Prepared, Route};

/// Decisions committed together at most (group commit).
const MAX_BATCH: usize = 64;

/// An event read live and ready to be decided, waiting for the committer.
struct Job {
    row: Arc<InboundRow>,
    event: Arc<Event>,
    prepared: Prepared,
    claim: Claim,
    /// Whether effects were queued, or why it was not decided.
    reply: oneshot::Sender<Result<bool, DecideError>>,
}

/// Decides an event inside the transaction that stores it, when nothing can come before it:
/// the intake's way past the queue (see [`Dispatcher::decide_on_receipt`]).
pub trait DecideOnReceipt: Send + Sync {
    /// Decides the event just stored as `id` in `tx`, when it needs no live read; `None` (and
    /// nothing written) leaves it to the queue. Only called while no event waits undecided.
    /// An error is the transaction's: it must not commit.
    fn decide_on_receipt(
        &self,
        tx: &dyn crate::store::Tx,
        id: i64,
        dedupe_key: &str,
        event: &Event,
    ) -> Result<Option<Decided>, crate::store::StoreError>;
    /// Once the transaction committed: the decisions are counted, their effects performed.
    fn committed(&self, decided: &[Decided]);
}

/// An event decided on receipt, to be told once its transaction commits.
#[derive(Debug, Clone, Copy)]
pub struct Decided {
    /// Effects were queued.
    pub queued: bool,
    /// The command it was, if any.
    pub command: Option<&'static str>,
}

/// How the dispatcher retries and how much it does at once.
#[derive(Debug, Clone, Copy)]
pub struct DispatchPolicy {
    /// Failed attempts after which an event is set aside.
    pub max_attempts: u32,
    /// The first wait after a failure; doubled each time, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// How long an event that came before what it refers to is tried again.
    pub not_yet_for: Duration,
    /// Events decided at once (of different keys).
    pub parallel: usize,
    /// How often the queue is read again from its start (events put back by an administrator).
    pub rescan_every: Duration,
    /// … when other instances share the store: events they received, events of keys they held,
    /// and events whose ids committed out of order are found this soon.
    pub shared_rescan_every: Duration,
    /// How long a claim on a key lasts without a decision renewing it: what a dead instance's
    /// keys wait before another instance takes them.
    pub claim_ttl: Duration,
    /// With other instances: how long a Symphony event waits before it is decided, so that an
    /// earlier one of its room that another instance read at the same moment is decided first
    /// (longer than `shared_rescan_every`: the holder of the room's key finds it by then).
    pub shared_hold_back: Duration,
    /// With other instances: how long after this instance last failed to reach the store a
    /// Symphony event waits before it is decided. Every instance holds the batches it read
    /// while the store was away and stores them when it comes back, each at its own moment:
    /// this lets an earlier batch another instance is still storing go first.
    pub shared_hold_after_outage: Duration,
}

impl Default for DispatchPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            not_yet_for: Duration::from_secs(60),
            parallel: 16,
            rescan_every: Duration::from_secs(10),
            shared_rescan_every: Duration::from_millis(100),
            claim_ttl: Duration::from_secs(15),
            shared_hold_back: Duration::from_millis(250),
            shared_hold_after_outage: Duration::from_secs(3),
        }
    }
}

impl DispatchPolicy {
    /// The wait before the `tries`-th look at an event that came too early: 10 ms, doubled,
    /// up to the second backoff.
    fn not_yet_wait(&self, tries: u32) -> Duration {
        let factor = 2u32.saturating_pow(tries.saturating_sub(1).min(16));
        Duration::from_millis(10).saturating_mul(factor).min(self.backoff(2))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.first_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// An event waiting in its key's queue.
#[derive(Clone)]
struct Queued {
    row: Arc<InboundRow>,
    /// The row decoded (`None`: undecodable, said again when it is decided).
    event: Option<Arc<Event>>,
    route: Route,
    /// A Symphony event's pod timestamp: with several instances, a key's Symphony events are
    /// decided in this order (each instance persists what its own datafeed reads, so a room's
    /// messages can be stored in another order than they were posted).
    posted_at: Option<i64>,
    /// When this instance took it from the store.
    seen: Instant,
    /// Being decided (it stays first).
    started: bool,
}

/// The per-key queues: events waiting behind the one being decided.
#[derive(Default)]
struct Queues {
    by_key: HashMap<String, VecDeque<Queued>>,
    /// Keys another instance holds, and until when this one leaves them alone (their events
    /// stay in the store; a rescan after that finds them).
    refused: HashMap<String, Instant>,
    /// Events passed over because another instance held their key: their key, and until when
    /// it is left alone. Each pass reads the queue from its start; these are passed over again
    /// without being decoded and routed (a store read each) while their key stays refused.
    passed: HashMap<i64, (String, Instant)>,
    /// Ids taken from the store and not finished yet.
    taken: HashSet<i64>,
}

/// Decides inbound events.
pub struct Dispatcher<L> {
    pub store: Store,
    pub decider: Decider<L>,
    /// Woken when effects are queued.
    pub effects: Arc<Notify>,
    pub metrics: Metrics,
    pub policy: DispatchPolicy,
    queues: Mutex<Queues>,
    permits: Semaphore,
    /// Events ready to be decided, to the committer (group commit).
    jobs: mpsc::Sender<Job>,
    /// The committer's end, until [`Dispatcher::run`] starts it.
    committer: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Whether other instances share the store.
    shared: bool,
    /// When this instance last failed to reach the store.
    store_trouble: Mutex<Option<Instant>>,
}

impl<L: LiveReads + 'static> Dispatcher<L> {
    pub fn new(
        store: Store,
        decider: Decider<L>,
        effects: Arc<Notify>,
        metrics: Metrics,
        policy: DispatchPolicy,
    ) -> Self {
        let permits = Semaphore::new(policy.parallel.max(1));
        let (jobs, committer) = mpsc::channel(MAX_BATCH * 4);
        let shared = store.shared();
        Self {
            store,
            decider,
            effects,
            metrics,
            policy,
            queues: Mutex::default(),
            permits,
            jobs,
            committer: Mutex::new(Some(committer)),
            shared,
            store_trouble: Mutex::new(None),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store_failed(&self) {
        *self.store_trouble.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// How long a Symphony event seen at `seen` still waits (with other instances on the
    /// store): until `shared_hold_back` after it was seen, and `shared_hold_after_outage` after
    /// this instance last failed to reach the store.
    fn hold(&self, seen: Instant) -> Duration {
        let trouble = *self.store_trouble.lock().unwrap_or_else(|e| e.into_inner());
        let after_outage = trouble.map_or(Duration::ZERO, |at| {
            self.policy.shared_hold_after_outage.saturating_sub(at.elapsed())
        });
        self.policy.shared_hold_back.saturating_sub(seen.elapsed()).max(after_outage)
    }

    /// Runs until cancelled, woken by `wake` when events are persisted.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, cancel: CancellationToken) {
        let mut workers: JoinSet<()> = JoinSet::new();
        let committer = self.committer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _committer = committer.map(|jobs| {
            let me = self.clone();
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(me.commit_loop(jobs)))
        });
        let mut cursor = 0i64;
        let mut last_scan = Instant::now();
        let rescan_every = if self.store.shared() {
            self.policy.rescan_every.min(self.policy.shared_rescan_every)
        } else {
            self.policy.rescan_every
        };
        // Keys passed over in this pass of the queue (another instance holds them): their later
        // events are passed over too, so that a key never starts on an event ahead of an
        // earlier one of its own.
        let mut passed_over: HashSet<String> = HashSet::new();
        let mut more = false;
        loop {
            if !more && (self.shared || last_scan.elapsed() >= rescan_every) {
                // Events an administrator put back are below the cursor; with other instances
                // on the store, so can be events whose ids committed out of order: every pass
                // then reads the queue from its start, so that a key's events are seen together,
                // earliest first.
                cursor = 0;
                last_scan = Instant::now();
            }
            if !more {
                passed_over.clear();
            }
            let page = if self.shared {
                let held: Vec<i64> = self.queues().taken.iter().copied().collect();
                self.store.pending_inbound_except(cursor, 500, &held)
            } else {
                self.store.pending_inbound(cursor, 500)
            };
            match page {
                Ok(rows) => {
                    more = rows.len() == 500;
                    // One page in one go: a key's events of the page are queued together, in
                    // their order, before any of them starts (yielding in between let a room's
                    // later message start ahead of an earlier one with several instances).
                    for row in rows {
                        cursor = cursor.max(row.id);
                        self.take(row, &mut workers, &mut passed_over);
                    }
                }
                Err(e) => {
                    more = false;
                    self.store_failed();
                    tracing::error!(error = %e, "the inbound queue cannot be read; retrying");
                    // Not again at once: woken workers failing fast would make this spin.
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
            if more {
                continue; // the rest of this pass
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    // An event being decided is rolled back or committed whole; the rest waits
                    // in the store for the next start.
                    workers.abort_all();
                    return;
                }
                () = wake.notified() => {}
                () = tokio::time::sleep(rescan_every) => {}
                Some(done) = workers.join_next(), if !workers.is_empty() => {
                    if let Err(e) = done && e.is_panic() {
                        // Events are decided under catch_unwind: a panic here is the
                        // dispatcher's own, and its key's queue is lost from memory (the events
                        // stay in the store and are picked up on the next scan).
                        tracing::error!("a dispatcher worker panicked");
                        *self.queues() = Queues::default();
                        cursor = 0;
                    }
                }
            }
        }
    }

    /// Queues a row behind its key, starting the key's worker if it has none. With other
    /// instances on the store, a Symphony event goes before the key's not-started Symphony
    /// events posted after it.
    fn take(
        self: &Arc<Self>,
        row: InboundRow,
        workers: &mut JoinSet<()>,
        passed_over: &mut HashSet<String>,
    ) {
        {
            let mut q = self.queues();
            if q.taken.contains(&row.id) {
                return; // already queued or being decided (and its route read from the store then)
            }
            if let Some((key, until)) = q.passed.get(&row.id) {
                if *until > Instant::now() {
                    passed_over.insert(key.clone());
                    return;
                }
                q.passed.remove(&row.id);
            }
        }
        let decoded = Event::decode(&row);
        let route = match &decoded {
            Ok(event) => self.decider.route(&self.store, event),
            Err(_) => Route { key: format!("event:{}", row.id), stream: None, what: "an event" },
        };
        let posted_at = match &decoded {
            Ok(Event::Inbound(crate::events::InboundEvent::Symphony(e))) if self.shared => {
                Some(e.timestamp)
            }
            _ => None,
        };
        let event = decoded.ok().map(Arc::new);
        let mut q = self.queues();
        let refused_until = q.refused.get(&route.key).copied().filter(|u| *u > Instant::now());
        if passed_over.contains(&route.key) || refused_until.is_some() {
            // Another instance holds the key: asked again after a while, not at once.
            if let Some(until) = refused_until {
                q.passed.insert(row.id, (route.key.clone(), until));
            }
            passed_over.insert(route.key);
            return;
        }
        if !q.taken.insert(row.id) {
            return; // already queued or being decided
        }
        let key = route.key.clone();
        let start = !q.by_key.contains_key(&key);
        let queue = q.by_key.entry(key.clone()).or_default();
        let item = Queued {
            row: Arc::new(row),
            event,
            route,
            posted_at,
            seen: Instant::now(),
            started: false,
        };
        let at = posted_at.and_then(|t| {
            queue.iter().position(|e| !e.started && e.posted_at.is_some_and(|other| other > t))
        });
        match at {
            Some(at) => queue.insert(at, item),
            None => queue.push_back(item),
        }
        drop(q);
        if start {
            let me = self.clone();
            workers.spawn(async move { me.work(key).await });
        }
    }

    /// Decides a key's events one after the other until its queue is empty, holding the key's
    /// claim meanwhile (other instances leave the key alone).
    async fn work(self: Arc<Self>, key: String) {
        let claim = match self.store.claim_key(&key, self.policy.claim_ttl) {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                tracing::debug!(%key, "another instance decides this key now; left to it");
                let until = Instant::now() + self.policy.shared_rescan_every * 2;
                let mut q = self.queues();
                let now = Instant::now();
                q.refused.retain(|_, at| *at > now);
                q.passed.retain(|_, (_, at)| *at > now);
                q.refused.insert(key.clone(), until);
                drop(q);
                return self.drop_key(&key);
            }
            Err(e) => {
                self.store_failed();
                tracing::warn!(%key, error = %e, "the key could not be claimed; tried again soon");
                return self.drop_key(&key);
            }
        };
        loop {
            let next = {
                let mut q = self.queues();
                let Some(events) = q.by_key.get_mut(&key) else { break };
                match events.front_mut() {
                    Some(next) => {
                        // A Symphony event waits a moment, so that an earlier one another
                        // instance is storing right now goes first.
                        let wait =
                            next.posted_at.map(|_| self.hold(next.seen)).filter(|w| !w.is_zero());
                        if wait.is_none() {
                            next.started = true;
                        }
                        (next.row.clone(), next.event.clone(), next.route.clone(), wait)
                    }
                    None => {
                        q.by_key.remove(&key);
                        break;
                    }
                }
            };
            let (row, event, route, wait) = next;
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
                continue;
            }
            if !self.handle(&row, event.as_ref(), &route, &claim).await {
                tracing::warn!(%key, "the key's claim was lost (this instance stalled); left to its new holder");
                return self.drop_key(&key);
            }
            let mut q = self.queues();
            q.taken.remove(&row.id);
            if let Some(events) = q.by_key.get_mut(&key) {
                events.pop_front();
            }
        }
        if let Err(e) = self.store.release_key(&claim) {
            tracing::warn!(%key, error = %e, "the key's claim could not be given up; it expires");
        }
    }

    /// Forgets a key's queued events: they stay pending in the store, for whichever instance
    /// holds the key (a later scan finds them again).
    fn drop_key(&self, key: &str) {
        let mut q = self.queues();
        if let Some(events) = q.by_key.remove(key) {
            for event in events {
                q.taken.remove(&event.row.id);
            }
        }
    }

    /// Decides one event: retried until it commits, or set aside. `false` when the key's
    /// claim was lost: the event is left undecided, to the key's new holder.
    #[tracing::instrument(skip_all, fields(event = row.id, key = %route.key, source = row.source.as_str()))]
    async fn handle(
        &self,
        row: &Arc<InboundRow>,
        event: Option<&Arc<Event>>,
        route: &Route,
        claim: &Claim,
    ) -> bool {
        let started = Instant::now();
        let mut attempts = row.attempts;
        let mut not_yet = 0u32;
        loop {
            let result = {
                let Ok(_permit) = self.permits.acquire().await else { return true };
                AssertUnwindSafe(self.decide_once(row, event, claim))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(DecideError::Permanent("deciding it panicked".into())))
            };
            let wait = match result {
                Ok(queued) => {
                    if queued {
                        self.effects.notify_one();
                    }
                    return true;
                }
                Err(DecideError::Fenced) => return false,
                Err(DecideError::NotYet(reason)) => {
                    if started.elapsed() >= self.policy.not_yet_for {
                        let reason = format!("what it refers to never appeared ({reason})");
                        self.set_aside(row, route, attempts + 1, &reason);
                        return true;
                    }
                    tracing::debug!(%reason, "not yet: tried again shortly");
                    // What it waits for is usually an outcome a moment away (a webhook that
                    // outran the answer recording it): look again soon, then less often.
                    not_yet = not_yet.saturating_add(1);
                    self.policy.not_yet_wait(not_yet)
                }
                Err(DecideError::Transient(reason)) => {
                    attempts += 1;
                    if attempts >= self.policy.max_attempts {
                        self.set_aside(row, route, attempts, &reason);
                        return true;
                    }
                    tracing::warn!(%reason, attempts, "event handling failed; will retry");
                    if let Err(e) = self.store.inbound_failed(row.id, &reason, false) {
                        tracing::warn!(error = %e, "the attempt could not be counted");
                    }
                    self.policy.backoff(attempts)
                }
                Err(DecideError::Permanent(reason)) => {
                    self.set_aside(row, route, attempts + 1, &reason);
                    return true;
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: read live, then decide and commit (with whatever other decisions are
    /// ready at the same moment). `Ok(true)` when effects were queued.
    async fn decide_once(
        &self,
        row: &Arc<InboundRow>,
        event: Option<&Arc<Event>>,
        claim: &Claim,
    ) -> Result<bool, DecideError> {
        let event = match event {
            Some(event) => event.clone(),
            None => Arc::new(Event::decode(row)?),
        };
        let prepared = self.decider.prepare(&self.store, &event).await?;
        let (reply, answer) = oneshot::channel();
        let job = Job { row: row.clone(), event, prepared, claim: claim.clone(), reply };
        let stopping = || DecideError::Transient("the dispatcher is stopping".into());
        self.jobs.send(job).await.map_err(|_| stopping())?;
        let queued = answer.await.map_err(|_| stopping())??;
        crate::crashpoint::reached("an event decided");
        Ok(queued)
    }

    /// The committer: decides the events that are ready in one transaction (group commit:
    /// one commit for many decisions under load, at once for one alone).
    async fn commit_loop(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.recv().await {
            // Under load, the workers that are ready get to hand in their decisions first:
            // one commit then carries many (a commit's log write is most of its cost).
            tokio::task::yield_now().await;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Decides `batch` in one transaction; if any of them fails, none of that transaction is
    /// kept and each is decided in a transaction of its own (so that one failing event never
    /// holds up or undoes another).
    fn commit(&self, batch: Vec<Job>) {
        tracing::trace!(decisions = batch.len(), "a commit");
        if batch.len() > 1 {
            let together = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.store.transaction(|tx| -> Result<Vec<bool>, DecideError> {
                    batch.iter().map(|job| self.decide_in(tx, job, job.prepared.clone())).collect()
                })
            }));
            if let Ok(Ok(queued)) = together {
                for (job, queued) in batch.into_iter().zip(queued) {
                    self.decided(job, Ok(queued));
                }
                return;
            }
        }
        for job in batch {
            let prepared = job.prepared.clone();
            let alone = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.store.transaction(|tx| self.decide_in(tx, &job, prepared))
            }))
            .unwrap_or_else(|_| Err(DecideError::Permanent("deciding it panicked".into())));
            self.decided(job, alone);
        }
    }

    /// Tells a job's worker how its decision went; a command committed is counted.
    fn decided(&self, job: Job, result: Result<bool, DecideError>) {
        tracing::debug!(event = job.row.id, key = %job.claim.key, token = job.claim.token, ok = result.is_ok(), "decided");
        // `Ok(false)`: marked processed before (nothing decided now) — a command always answers.
        self.count_command(matches!(result, Ok(true)), job.prepared.command_name());
        let _ = job.reply.send(result);
    }

    /// A command whose decision committed with effects queued (its answer) is counted.
    fn count_command(&self, queued: bool, command: Option<&'static str>) {
        if queued && let Some(command) = command {
            self.metrics.command(command);
        }
    }

    /// One decision inside a transaction: the claim held, the event marked processed, its
    /// state written and its effects queued.
    fn decide_in(
        &self,
        tx: &dyn crate::store::Tx,
        job: &Job,
        prepared: Prepared,
    ) -> Result<bool, DecideError> {
        // First, so that a takeover of the key waits for this decision to commit.
        if !tx.hold_claim(&job.claim, self.policy.claim_ttl)? {
            return Err(DecideError::Fenced);
        }
        // `None`: decided already.
        let row = &job.row;
        Ok(self.write_decision(tx, row.id, &row.dedupe_key, &job.event, prepared)?.unwrap_or(false))
    }

    /// The event marked processed, its state written and its effects queued, in `tx`; whether
    /// effects were queued, or `None` when it was processed already (nothing written).
    fn write_decision(
        &self,
        tx: &dyn crate::store::Tx,
        id: i64,
        dedupe_key: &str,
        event: &Event,
        prepared: Prepared,
    ) -> Result<Option<bool>, DecideError> {
        if !tx.mark_processed(id)? {
            return Ok(None);
        }
        let effects = self.decider.decide(tx, dedupe_key, event, prepared)?;
        tx.queue_effects(&to_outbox(&effects)?)?;
        Ok(Some(!effects.is_empty()))
    }

    /// Sets an event aside: kept for an administrator, counted, and said in its room.
    fn set_aside(&self, row: &InboundRow, route: &Route, attempts: u32, reason: &str) {
        tracing::error!(%reason, attempts, "an event is set aside");
        self.metrics.event_set_aside(row.source.as_str());
        if let Err(e) = self.store.inbound_failed(row.id, reason, true) {
            tracing::error!(error = %e, "the event could not be set aside; it stays pending");
            return;
        }
        let Some(stream) = &route.stream else { return };
        let report = crate::groups::service::post(
            &self.decider.templates,
            stream,
            "symphony/event_failed",
            &serde_json::json!({"what": route.what, "attempts": attempts, "reason": reason}),
        );
        let queued = match report {
            Ok(effect) => self.store.transaction(|tx| {
                tx.queue_effects(
                    &to_outbox(std::slice::from_ref(&effect)).map_err(DecideError::from)?,
                )
                .map_err(DecideError::from)
            }),
            Err(e) => Err(e.into()),
        };
        match queued {
            Ok(()) => self.effects.notify_one(),
            Err(e) => {
                tracing::error!(error = %e, "the room could not be told of a set-aside event")
            }
        }
    }
}

impl<L: LiveReads + 'static> DecideOnReceipt for Dispatcher<L> {
    /// With the store to itself (no other instance) and no event waiting before it, an event is
    /// decided in the transaction that stores it — the same decision the queue would make,
    /// without a second commit and the queue's round trip. One that needs a live read, or
    /// whose decision fails or panics, is undone to the savepoint and left to the queue (which
    /// retries it, or sets it aside, as ever).
    fn decide_on_receipt(
        &self,
        tx: &dyn crate::store::Tx,
        id: i64,
        dedupe_key: &str,
        event: &Event,
    ) -> Result<Option<Decided>, crate::store::StoreError> {
        if self.shared {
            return Ok(None); // the key may be another instance's: claimed first, by the queue
        }
        let mut decided = None;
        let mut decide = || -> Result<Option<Decided>, DecideError> {
            let Some(prepared) = self.decider.prepare_offline(tx, event)? else {
                return Ok(None);
            };
            let command = prepared.command_name();
            let queued = self.write_decision(tx, id, dedupe_key, event, prepared)?;
            Ok(queued.map(|queued| Decided { queued, command }))
        };
        tx.savepoint(&mut || {
            match std::panic::catch_unwind(AssertUnwindSafe(&mut decide)) {
                Ok(Ok(Some(d))) => {
                    tracing::debug!(event = id, queued = d.queued, "decided on receipt");
                    decided = Some(d);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(event = id, error = %e, "not decided on receipt"),
                Err(_) => tracing::debug!(event = id, "deciding it on receipt panicked"),
            }
            decided.is_some()
        })?;
        Ok(decided)
    }

    fn committed(&self, decided: &[Decided]) {
        let mut queued = false;
        for d in decided {
            crate::crashpoint::reached("an event decided");
            self.count_command(d.queued, d.command);
            queued |= d.queued;
        }
        if queued {
            self.effects.notify_one();
        }
    }
}
