//! The store conformance suite: what any backend must do. Each test takes a fresh backend from
//! `backends()`; a new backend joins by being listed there.

use serde_json::json;

use super::*;
use crate::domain::{ContactState, Created, E164, GroupId, GroupKind, GroupState, Origin};

/// Every backend the suite runs against, freshly opened: SQLite in memory, and PostgreSQL (a
/// fresh database on the throwaway server) unless none can be found outside CI.
#[track_caller]
fn backends() -> Vec<(&'static str, Store)> {
    let mut all = vec![("sqlite", Store::open_in_memory().expect("sqlite in memory"))];
    let test = std::thread::current().name().unwrap_or("a store test").to_owned();
    if let Some(db) = throwaway::database(&test) {
        let store = PostgresStore::open(&db.options()).expect("postgres store");
        all.push(("postgres", Store::from_backend(Arc::new(store))));
    }
    all
}

fn origin(key: &str, event: &str) -> Origin {
    Origin { key: key.into(), event: event.into() }
}

fn phone(s: &str) -> E164 {
    E164::parse(s).expect("valid")
}

fn new_group(store: &Store, name: &str, contacts: &[E164]) -> GroupKey {
    let created = store
        .transaction(|tx| {
            tx.create_group(
                name,
                GroupKind::Native,
                UserId(1),
                &[UserId(1), UserId(2)],
                contacts,
                &origin(&format!("o-{name}"), "e1"),
                &format!("wagb-{name}"),
            )
        })
        .expect("create");
    match created {
        Created::New(key) => key,
        other => panic!("a new group: {other:?}"),
    }
}

#[test]
fn duplicate_inbound_events_are_stored_once_and_processed_once() {
    for (name, store) in backends() {
        assert!(store.enqueue_inbound(Source::WhatsApp, "k1", &json!({"a": 1})).expect("insert"));
        assert!(!store.enqueue_inbound(Source::WhatsApp, "k1", &json!({"a": 2})).expect("dup"));
        assert!(
            store.enqueue_inbound(Source::Symphony, "k1", &json!({"b": 1})).expect("other source")
        );
        let pending = store.pending_inbound(0, 10).expect("pending");
        assert_eq!(pending.len(), 2, "{name}");
        assert_eq!(pending[0].payload, json!({"a": 1}), "{name}");
        let first = pending[0].id;
        let marked = store.transaction(|tx| tx.mark_processed(first)).expect("mark");
        assert!(marked, "{name}");
        let again = store.transaction(|tx| tx.mark_processed(first)).expect("mark again");
        assert!(!again, "{name}: a second decision is refused");
        assert_eq!(store.pending_inbound(0, 10).expect("pending").len(), 1, "{name}");
        assert_eq!(store.pending_inbound(pending[1].id, 10).expect("after").len(), 0, "{name}");
        assert!(store.has_inbound(Source::WhatsApp, "k1").expect("has"), "{name}");
    }
}

#[test]
fn pending_events_can_be_read_leaving_out_those_already_held() {
    for (name, store) in backends() {
        for k in 0..7 {
            store.enqueue_inbound(Source::WhatsApp, &format!("k{k}"), &json!(k)).expect("insert");
        }
        let all: Vec<i64> =
            store.pending_inbound(0, 10).expect("pending").iter().map(|r| r.id).collect();
        let held = [all[0], all[2], all[3]];
        let ids = |rows: Vec<InboundRow>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
        // Up to `limit` rows not held, in order, from the start or after a cursor.
        let first = ids(store.pending_inbound_except(0, 2, &held).expect("page"));
        assert_eq!(first, vec![all[1], all[4]], "{name}");
        let rest = ids(store.pending_inbound_except(all[4], 10, &held).expect("rest"));
        assert_eq!(rest, vec![all[5], all[6]], "{name}");
        assert_eq!(ids(store.pending_inbound_except(0, 10, &[]).expect("none held")), all);
        assert!(store.pending_inbound_except(0, 10, &all).expect("all held").is_empty(), "{name}");
    }
}

#[test]
fn a_decision_that_fails_leaves_no_state_no_effects_and_its_event_pending() {
    for (name, store) in backends() {
        store.enqueue_inbound(Source::Symphony, "e1", &json!(1)).expect("insert");
        let id = store.pending_inbound(0, 1).expect("pending")[0].id;
        let failed: Result<(), StoreError> = store.transaction(|tx| {
            tx.mark_processed(id)?;
            tx.create_group(
                "Half",
                GroupKind::Native,
                UserId(1),
                &[],
                &[],
                &origin("o1", "e1"),
                "wagb-half",
            )?;
            tx.queue_effects(&[("stream:s".into(), json!({"n": 1}))])?;
            Err(StoreError::Poisoned) // a later step of the same decision fails
        });
        assert!(failed.is_err(), "{name}");
        assert_eq!(
            store.pending_inbound(0, 10).expect("pending").len(),
            1,
            "{name}: still pending"
        );
        assert!(store.due_outbox(10, &[]).expect("due").is_empty(), "{name}: no effect queued");
        let again = store
            .transaction(|tx| {
                tx.create_group(
                    "Half",
                    GroupKind::Native,
                    UserId(1),
                    &[],
                    &[],
                    &origin("o1", "e1"),
                    "wagb-half",
                )
            })
            .expect("create");
        assert!(matches!(again, Created::New(_)), "{name}: the group was never made: {again:?}");
    }
}

#[test]
fn a_transaction_that_panics_is_rolled_back_and_the_store_goes_on() {
    for (name, store) in backends() {
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = store.transaction(|tx| -> Result<(), StoreError> {
                tx.enqueue_inbound(Source::Outcome, "written-then-panicked", &json!({}))?;
                panic!("a bug in a decision")
            });
        }));
        assert!(panicked.is_err(), "{name}");
        store
            .transaction(|tx| tx.enqueue_inbound(Source::Outcome, "next", &json!({})).map(|_| ()))
            .unwrap_or_else(|e| panic!("{name}: the store after a panic: {e}"));
        let keys: Vec<String> = store
            .pending_inbound(0, 10)
            .expect("pending")
            .into_iter()
            .map(|r| r.dedupe_key)
            .collect();
        assert_eq!(keys, ["next"], "{name}: the panicking transaction is rolled back");
    }
}

#[test]
fn effects_run_in_order_per_key_and_a_given_up_effect_lets_the_next_one_run() {
    for (name, store) in backends() {
        store
            .transaction(|tx| {
                tx.queue_effects(&[
                    ("room-a".to_owned(), json!({"n": 1})),
                    ("room-a".to_owned(), json!({"n": 2})),
                    ("room-b".to_owned(), json!({"n": 3})),
                ])
            })
            .expect("queue");
        let n =
            |rows: &[OutboxRow]| rows.iter().map(|r| r.effect["n"].as_i64()).collect::<Vec<_>>();
        let due = store.due_outbox(10, &[]).expect("due");
        assert_eq!(n(&due), vec![Some(1), Some(3)], "{name}: one per key");
        assert_eq!(
            n(&store.due_outbox(10, &[due[0].id]).expect("due")),
            vec![Some(3)],
            "{name}: busy skipped"
        );
        store.outbox_retry(due[0].id, std::time::Duration::from_secs(60), "503").expect("retry");
        let later = store.due_outbox(10, &[]).expect("due");
        assert_eq!(n(&later), vec![Some(3)], "{name}: room-a waits for its first");
        assert!(store.next_outbox_due().expect("next").is_some(), "{name}");
        store.transaction(|tx| tx.finish_effect(later[0].id, None)).expect("done");
        assert_eq!(store.outbox_counts().expect("counts"), (2, 0), "{name}");
        store.transaction(|tx| tx.finish_effect(due[0].id, Some("400"))).expect("given up");
        let after = store.due_outbox(10, &[]).expect("due");
        assert_eq!(n(&after), vec![Some(2)], "{name}: after a give-up the next one runs");
        assert_eq!(store.outbox_counts().expect("counts"), (1, 1), "{name}");
        // A key with nothing pending: a new effect is due at once.
        store.transaction(|tx| tx.queue_effects(&[("room-b".into(), json!({"n": 4}))])).expect("q");
        assert_eq!(n(&store.due_outbox(10, &[]).expect("due")), vec![Some(2), Some(4)], "{name}");
    }
}

#[test]
fn claiming_the_next_effect_does_not_read_the_backlog_behind_it() {
    // 2,000 effects behind 2 heads: a claim returns the heads, and the query plan uses the
    // heads' index (no scan of the outbox).
    let sqlite = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let store = Store::from_backend(sqlite.clone());
    let effects: Vec<QueuedEffect> =
        (0..2_000).map(|i| (format!("k{}", i % 2), json!({"n": i}))).collect();
    store.transaction(|tx| tx.queue_effects(&effects)).expect("queue");
    let due = store.due_outbox(10, &[]).expect("due");
    assert_eq!(
        due.iter().map(|r| r.effect["n"].as_i64()).collect::<Vec<_>>(),
        vec![Some(0), Some(1)]
    );
    let plan = sqlite.claim_plan().expect("plan");
    assert!(plan.contains("outbox_due_heads"), "the heads' index: {plan}");
    assert!(!plan.contains("SCAN outbox"), "no scan of the outbox: {plan}");
}

#[test]
fn a_keys_pending_effects_are_found_through_the_index_of_pending_effects_alone() {
    // Whether a key has a head yet, and which effect is next once one is done: both search the
    // index that holds pending effects only (a done mark takes an effect out of it), never the
    // outbox's done effects, however many of those there are.
    let sqlite = Arc::new(SqliteStore::open_in_memory().expect("store"));
    for plan in sqlite.key_lookup_plans().expect("plans") {
        assert!(plan.contains("USING INDEX outbox_by_key (order_key=?)"), "{plan}");
        assert!(!plan.contains("SCAN"), "{plan}");
    }
}

#[test]
fn the_queue_reads_are_compiled_once_whatever_values_they_are_given() {
    // The dispatcher and the executor read their queues thousands of times a second under a
    // burst, each time with a new cursor or clock: none of those reads may compile its query
    // again (SQLite does when a plan depended on a bound value).
    let sqlite = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let store = Store::from_backend(sqlite.clone());
    let effects: Vec<QueuedEffect> = (0..20).map(|i| (format!("k{i}"), json!({"n": i}))).collect();
    store.transaction(|tx| tx.queue_effects(&effects)).expect("queue");
    for i in 0..20 {
        store
            .enqueue_inbound(Source::WhatsApp, &format!("e{i}"), &json!({"n": i}))
            .expect("insert");
    }
    let values: Vec<i64> = (1..=10).collect();
    assert_eq!(sqlite.queue_reads_reprepared(&values).expect("reads"), 0);
}

#[test]
fn set_aside_events_are_listed_retried_and_never_handed_out_meanwhile() {
    for (name, store) in backends() {
        store.enqueue_inbound(Source::WhatsApp, "bad", &json!({"x": 1})).expect("insert");
        store.enqueue_inbound(Source::WhatsApp, "good", &json!({"x": 2})).expect("insert");
        let bad = store.pending_inbound(0, 1).expect("pending")[0].id;
        store.inbound_failed(bad, "template error", false).expect("attempt");
        assert_eq!(store.pending_inbound(0, 10).expect("pending")[0].attempts, 1, "{name}");
        store.inbound_failed(bad, "template error", true).expect("set aside");
        let pending = store.pending_inbound(0, 10).expect("pending");
        assert_eq!(pending.len(), 1, "{name}: only the good one");
        let failed = store.failed_inbound(10).expect("failed");
        assert_eq!(
            (failed.len(), failed[0].attempts, failed[0].last_error.as_deref()),
            (1, 2, Some("template error")),
            "{name}"
        );
        assert_eq!(store.count_failed_inbound().expect("count"), 1, "{name}");
        assert_eq!(store.retry_inbound(Some(bad)).expect("retry"), 1, "{name}");
        assert_eq!(store.pending_inbound(0, 10).expect("pending").len(), 2, "{name}: back");
        assert_eq!(store.count_failed_inbound().expect("count"), 0, "{name}");
    }
}

#[test]
fn pruning_keeps_pending_work_and_set_aside_events() {
    for (name, store) in backends() {
        for key in ["done", "pending", "aside"] {
            store.enqueue_inbound(Source::Symphony, key, &json!(key)).expect("insert");
        }
        let rows = store.pending_inbound(0, 10).expect("pending");
        store.transaction(|tx| tx.mark_processed(rows[0].id)).expect("processed");
        store.inbound_failed(rows[2].id, "bad", true).expect("aside");
        store
            .transaction(|tx| tx.queue_effects(&[("a".into(), json!(1)), ("b".into(), json!(2))]))
            .expect("queue");
        let due = store.due_outbox(10, &[]).expect("due");
        store.transaction(|tx| tx.finish_effect(due[0].id, None)).expect("done");
        let pruned = store.prune(now_ms() + 1_000).expect("prune");
        assert_eq!((pruned.events, pruned.effects), (1, 1), "{name}");
        assert_eq!(store.pending_inbound(0, 10).expect("pending").len(), 1, "{name}");
        assert_eq!(store.failed_inbound(10).expect("failed").len(), 1, "{name}");
        assert_eq!(store.outbox_counts().expect("counts"), (1, 0), "{name}");
        assert!(!store.has_inbound(Source::Symphony, "done").expect("has"), "{name}: pruned");
    }
}

#[test]
fn groups_contacts_and_the_bar_list() {
    for (name, store) in backends() {
        let (jane, john) = (phone("+447911123456"), phone("+447911123457"));
        let key = new_group(&store, "Deal", &[jane.clone(), john.clone()]);
        // The same request again never makes a second group.
        let again = |event: &str| {
            store.transaction(|tx| {
                tx.create_group(
                    "Deal",
                    GroupKind::Native,
                    UserId(1),
                    &[],
                    &[],
                    &origin("o-Deal", event),
                    "wagb-x",
                )
            })
        };
        assert_eq!(again("e1").expect("replay"), Created::Replay(key), "{name}");
        assert_eq!(again("e2").expect("again"), Created::Again(key), "{name}");
        let g = store.read(|r| r.group(key)).expect("read").expect("group");
        assert_eq!(
            (g.name.as_str(), g.kind, g.state, g.creator, g.reference.as_deref()),
            ("Deal", GroupKind::Native, GroupState::Creating, UserId(1), Some("wagb-Deal")),
            "{name}"
        );
        assert_eq!(
            store.read(|r| r.advisors(key)).expect("advisors"),
            vec![(UserId(1), true), (UserId(2), false)],
            "{name}"
        );

        let stream = StreamId::new("room1");
        store
            .transaction(|tx| {
                assert!(tx.set_group_stream(key, &stream)?);
                assert!(!tx.set_group_stream(key, &StreamId::new("room2"))?, "set once");
                assert!(tx.set_group_request(key, "req-1")?);
                assert!(!tx.set_group_request(key, "req-2")?, "only while creating");
                Ok::<_, StoreError>(())
            })
            .expect("stream and request");
        let wa = GroupId("wa-1".into());
        let took = store
            .transaction(|tx| tx.set_group_created(key, &wa, Some("https://chat.whatsapp.com/x")))
            .expect("created");
        assert!(took, "{name}");
        let second = store
            .transaction(|tx| tx.set_group_created(key, &GroupId("wa-2".into()), None))
            .expect("second");
        assert!(!second, "{name}: a second WhatsApp group is never taken");
        store
            .transaction(|tx| tx.set_invite_link(key, "https://chat.whatsapp.com/y"))
            .expect("link");
        let g = store.read(|r| r.group_by_wa(&wa)).expect("read").expect("group");
        assert_eq!(
            (g.state, g.stream, g.invite_link.as_deref()),
            (GroupState::Active, Some(stream.clone()), Some("https://chat.whatsapp.com/y")),
            "{name}"
        );

        store
            .transaction(|tx| {
                tx.set_contact_state(key, &jane, ContactState::Joined)?;
                tx.set_contact_state(key, &john, ContactState::Removed)?;
                tx.set_join_request(key, &jane, Some("jr-1"))?;
                tx.set_contact_bsuid(key, &jane, "US.1")
            })
            .expect("states");
        assert_eq!(store.read(|r| r.join_request(key, &jane)).expect("jr"), Some("jr-1".into()));
        assert!(store.read(|r| r.is_barred(key, &john)).expect("barred"), "{name}");
        assert!(!store.read(|r| r.is_barred(key, &jane)).expect("not barred"), "{name}");
        let barred_at = store.read(|r| r.barred_at(key, &john)).expect("barred at");
        assert!(barred_at.is_some_and(|at| at > 0), "{name}: {barred_at:?}");
        assert_eq!(store.read(|r| r.barred_at(key, &jane)).expect("not barred"), None, "{name}");
        // Joined or invited again by mistake: still barred, and still shown removed.
        store
            .transaction(|tx| tx.set_contact_state(key, &john, ContactState::Joined))
            .expect("state");
        let contacts = store.read(|r| r.contacts(key)).expect("contacts");
        assert_eq!(
            contacts
                .iter()
                .map(|c| (c.phone.as_str(), c.state, c.barred, c.bsuid.as_deref()))
                .collect::<Vec<_>>(),
            vec![
                ("+447911123456", ContactState::Joined, false, Some("US.1")),
                ("+447911123457", ContactState::Removed, true, None),
            ],
            "{name}"
        );
        store
            .transaction(|tx| {
                tx.set_advisor(key, UserId(2), Some(true))?;
                tx.set_advisor(key, UserId(1), None)
            })
            .expect("advisors");
        assert_eq!(store.read(|r| r.advisors(key)).expect("advisors"), vec![(UserId(2), true)]);
    }
}

#[test]
fn the_bar_list_cannot_be_cleared() {
    let sqlite = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let store = Store::from_backend(sqlite.clone());
    let john = phone("+447911123457");
    let key = new_group(&store, "Bars", std::slice::from_ref(&john));
    store.transaction(|tx| tx.set_contact_state(key, &john, ContactState::Removed)).expect("bar");
    let store = sqlite;
    let err = store.raw("DELETE FROM bars").expect_err("bars are for ever");
    assert!(err.to_string().contains("never cleared"), "{err}");
}

#[test]
fn the_write_probe_fails_quickly_while_another_connection_holds_the_write_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bot.db");
    let store = SqliteStore::open(&path).expect("store");
    store.probe_write().expect("writable");
    let other = rusqlite::Connection::open(&path).expect("second connection");
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let started = std::time::Instant::now();
    let err = store.probe_write().expect_err("locked");
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "the probe waits 1 s, not 5");
    other.execute_batch("ROLLBACK").expect("unlock");
    store.probe_write().expect("writable again");
}

#[test]
fn a_newer_schema_is_refused_and_a_reopen_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/dir/bot.db");
    let store = SqliteStore::open(&path).expect("open creates dirs");
    store.enqueue_inbound(Source::Symphony, "e1", &json!(1)).expect("insert");
    drop(store);
    let again = SqliteStore::open(&path).expect("reopen");
    assert_eq!(again.count_inbound(Source::Symphony).expect("count"), 1);
    again.raw("PRAGMA user_version = 99").expect("bump");
    drop(again);
    let err = SqliteStore::open(&path).expect_err("newer schema");
    assert!(matches!(err, StoreError::NewerSchema { found: 99, .. }), "{err}");
}

#[test]
fn a_corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bot.db");
    std::fs::write(&path, b"this is not a sqlite database at all, not even close......")
        .expect("write");
    let err = SqliteStore::open(&path).expect_err("corrupt");
    assert!(err.to_string().contains("bot.db"), "{err}");
}

// [feed-catchup]
#[test]
fn the_symphony_watermark_only_moves_forward_and_keeps_its_start() {
    for (name, store) in backends() {
        assert_eq!(store.symphony_watermark().expect("read"), None, "{name}");
        store.advance_symphony_watermark(1_000).expect("first");
        store.advance_symphony_watermark(3_000).expect("later");
        store.advance_symphony_watermark(2_000).expect("out of order");
        assert_eq!(
            store.symphony_watermark().expect("read"),
            Some(Watermark { latest_ms: 3_000, first_ms: 1_000 }),
            "{name}"
        );
    }
}

#[test]
fn a_key_claimed_by_this_instance_is_held_renewed_and_given_up() {
    for (name, store) in backends() {
        let ttl = std::time::Duration::from_secs(30);
        let claim = store.claim_key("group:1", ttl).expect("claim").expect("free");
        assert_eq!(claim.key, "group:1", "{name}");
        let renewed = store.claim_key("group:1", ttl).expect("renew").expect("ours");
        assert_eq!(renewed, claim, "{name}: renewing keeps the token");
        assert!(store.transaction(|tx| tx.hold_claim(&claim, ttl)).expect("hold"), "{name}");
        store.release_key(&claim).expect("release");
        assert!(store.claim_key("group:1", ttl).expect("again").is_some(), "{name}: free again");
    }
}

/// `n` as the JSON text an event's payload is inserted as.
fn raw(n: i64) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(&n).expect("a number serialises")
}

#[test]
fn a_savepoint_keeps_or_undoes_its_writes_and_the_transaction_goes_on() {
    for (name, store) in backends() {
        let (first, second) = store
            .transaction(|tx| -> Result<_, StoreError> {
                let first = tx.insert_inbound(Source::Symphony, "e1", &raw(1))?;
                assert!(tx.has_undecided()?, "{name}: e1 waits");
                let kept = tx.savepoint(&mut || {
                    let id = first.expect("e1 is new");
                    tx.mark_processed(id).expect("mark");
                    tx.queue_effects(&[("stream:s".into(), json!({"n": 1}))]).expect("queue");
                    true
                })?;
                assert!(kept, "{name}");
                assert!(!tx.has_undecided()?, "{name}: e1 decided");
                let second = tx.insert_inbound(Source::Symphony, "e2", &raw(2))?;
                let undone = tx.savepoint(&mut || {
                    tx.mark_processed(second.expect("e2 is new")).expect("mark");
                    tx.queue_effects(&[("stream:s".into(), json!({"n": 2}))]).expect("queue");
                    false
                })?;
                assert!(!undone, "{name}");
                assert_eq!(tx.insert_inbound(Source::Symphony, "e2", &raw(2))?, None, "{name}");
                Ok((first, second))
            })
            .expect("committed");
        assert!(first.is_some() && second.is_some() && first != second, "{name}");
        let pending = store.pending_inbound(0, 10).expect("pending");
        let keys: Vec<&str> = pending.iter().map(|r| r.dedupe_key.as_str()).collect();
        assert_eq!(keys, ["e2"], "{name}: e1 decided, e2's decision undone");
        assert_eq!(Some(pending[0].id), second, "{name}: the id answered is the row's");
        let due = store.due_outbox(10, &[]).expect("due");
        let effects: Vec<&serde_json::Value> = due.iter().map(|r| &r.effect).collect();
        assert_eq!(effects, [&json!({"n": 1})], "{name}: only the kept decision's effect");
    }
}
