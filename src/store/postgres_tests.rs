//! What only the PostgreSQL backend must show: several instances (store handles) on one
//! database at once, migrations raced by two starts, the statement timeout, a database restart,
//! and a URL's password kept out of every message. The shared conformance suite is `tests.rs`.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::json;

use super::throwaway::{self, Database};
use super::*;
use crate::domain::{ContactState, Created, E164, GroupKind, Origin, StreamId, UserId};

const PATIENCE: Duration = Duration::from_secs(30);

fn db(test: &str) -> Option<Database> {
    throwaway::database(test)
}

fn open(db: &Database) -> PostgresStore {
    PostgresStore::open(&db.options()).expect("postgres store")
}

/// Waits until `check` holds, or fails after `PATIENCE`.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_instances_receiving_the_same_events_count_each_once() {
    let Some(db) = db("two_instances_receiving_the_same_events_count_each_once") else { return };
    let stores = [Arc::new(open(&db)), Arc::new(open(&db))];
    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = stores
        .iter()
        .map(|store| {
            let (store, start) = (store.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..100)
                    .filter(|i| {
                        store
                            .enqueue_inbound(Source::Symphony, &format!("ev-{i}"), &json!({"i": i}))
                            .expect("enqueue")
                    })
                    .count()
            })
        })
        .collect();
    let inserted: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(inserted, 100, "each event inserted by exactly one instance");
    assert_eq!(stores[0].count_inbound(Source::Symphony).expect("count"), 100);
    assert_eq!(stores[1].pending_inbound(0, 1_000).expect("pending").len(), 100);
}

#[test]
fn two_instances_marking_the_same_event_processed_one_wins() {
    let Some(db) = db("two_instances_marking_the_same_event_processed_one_wins") else { return };
    let (a, b) = (Arc::new(open(&db)), Arc::new(open(&db)));
    a.enqueue_inbound(Source::WhatsApp, "k", &json!(1)).expect("enqueue");
    let id = a.pending_inbound(0, 1).expect("pending")[0].id;

    // A marks it and holds its transaction open; B tries meanwhile and must wait for A.
    let (marked_tx, marked_rx) = std::sync::mpsc::channel();
    let (commit_tx, commit_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let a = a.clone();
        std::thread::spawn(move || {
            Store::from_backend(a)
                .transaction(|tx| {
                    let won = tx.mark_processed(id)?;
                    let _ = marked_tx.send(won);
                    let _ = commit_rx.recv_timeout(PATIENCE);
                    Ok::<_, StoreError>(won)
                })
                .expect("a's transaction")
        })
    };
    assert!(marked_rx.recv_timeout(PATIENCE).expect("a marked"), "a marks first");
    let other = {
        let b = b.clone();
        std::thread::spawn(move || {
            Store::from_backend(b).transaction(|tx| tx.mark_processed(id)).expect("b's transaction")
        })
    };
    // B is blocked on A's row lock (not merely slow).
    wait_until("b to wait for a's row lock", || {
        a.count(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            vec![],
        )
        .expect("activity")
            == 1
    });
    assert!(!other.is_finished(), "b decided while a held the event");
    commit_tx.send(()).expect("commit");
    assert!(holder.join().expect("a"), "a won");
    assert!(!other.join().expect("b"), "b sees it processed once a commits");
    assert!(a.pending_inbound(0, 10).expect("pending").is_empty());
}

#[test]
fn two_instances_starting_at_once_migrate_once() {
    let Some(db) = db("two_instances_starting_at_once_migrate_once") else { return };
    let start = Arc::new(Barrier::new(3));
    let opens: Vec<_> = (0..3)
        .map(|_| {
            let (db, start) = (db.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                PostgresStore::open(&db.options())
            })
        })
        .collect();
    let stores: Vec<PostgresStore> =
        opens.into_iter().map(|t| t.join().expect("thread").expect("open")).collect();
    let known = PostgresStore::known_schema_version();
    assert_eq!(stores[0].schema_version().expect("version"), known);
    assert_eq!(
        stores[1].count("SELECT COUNT(*) FROM schema_migrations", vec![]).expect("count"),
        u64::try_from(known).expect("positive"),
        "each migration applied exactly once"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let Some(db) = db("a_newer_schema_is_refused") else { return };
    let store = open(&db);
    store.raw("INSERT INTO schema_migrations (version) VALUES (99)").expect("bump");
    drop(store);
    let err = PostgresStore::open(&db.options()).expect_err("newer schema");
    assert!(matches!(err, StoreError::NewerSchema { found: 99, .. }), "{err}");
    assert!(err.to_string().contains(&db.name), "names the database: {err}");
}

#[test]
fn the_statement_timeout_is_set_on_every_connection() {
    let Some(db) = db("the_statement_timeout_is_set_on_every_connection") else { return };
    let mut options = db.options();
    options.statement_timeout = Duration::from_millis(300);
    let store = PostgresStore::open(&options).expect("open");
    assert_eq!(store.session_setting("statement_timeout").expect("setting"), "300ms");
    let started = Instant::now();
    let err = store.raw("SELECT pg_sleep(3)").expect_err("cancelled");
    assert!(matches!(err, StoreError::Timeout(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(2), "cancelled at 300 ms");
}

#[test]
fn the_bar_list_cannot_be_cleared_on_postgres() {
    let Some(db) = db("the_bar_list_cannot_be_cleared_on_postgres") else { return };
    let store = Arc::new(open(&db));
    let john = E164::parse("+447911123457").expect("phone");
    Store::from_backend(store.clone())
        .transaction(|tx| {
            let created = tx.create_group(
                "Bars",
                GroupKind::Native,
                UserId(1),
                &[],
                std::slice::from_ref(&john),
                &Origin { key: "o".into(), event: "e".into() },
                "wagb-bars",
            )?;
            let Created::New(key) = created else { panic!("new: {created:?}") };
            tx.set_contact_state(key, &john, ContactState::Removed)
        })
        .expect("bar");
    for sql in ["DELETE FROM bars", "TRUNCATE bars CASCADE"] {
        let err = store.raw(sql).expect_err("bars are for ever");
        assert!(err.to_string().contains("never cleared"), "{sql}: {err}");
    }
}

#[test]
fn a_transaction_that_went_on_after_a_failed_statement_commits_nothing() {
    let Some(db) = db("a_transaction_that_went_on_after_a_failed_statement_commits_nothing") else {
        return;
    };
    let store = Store::from_backend(Arc::new(open(&db)));
    let stream = StreamId::new("room-1");
    let mk = |name: &str, tx: &dyn Tx| {
        tx.create_group(
            name,
            GroupKind::Native,
            UserId(1),
            &[],
            &[],
            &Origin { key: format!("o-{name}"), event: "e".into() },
            &format!("wagb-{name}"),
        )
    };
    let first = store.transaction(|tx| mk("A", tx)).expect("a");
    let Created::New(a) = first else { panic!("{first:?}") };
    store.transaction(|tx| tx.set_group_stream(a, &stream)).expect("stream");
    let outcome: Result<(), StoreError> = store.transaction(|tx| {
        tx.enqueue_inbound(Source::Outcome, "o1", &json!(1))?;
        let created = mk("B", tx)?;
        let Created::New(b) = created else { panic!("{created:?}") };
        // The same room for a second group: a unique key, refused; the body goes on anyway.
        let refused = tx.set_group_stream(b, &stream);
        assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
        Ok(())
    });
    assert!(matches!(outcome, Err(StoreError::RolledBack)), "{outcome:?}");
    assert!(!store.has_inbound(Source::Outcome, "o1").expect("has"), "nothing committed");
}

#[test]
fn the_password_never_shows_in_debug_or_errors() {
    let secret = "s3cr3t-Pw-7731";
    // A URL that parses but reaches nothing (a closed loopback port).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let cases = [
        format!("postgres://wagb:{secret}@127.0.0.1:{port}/wagb?sslmode=disable"),
        format!("postgresql://wagb@127.0.0.1:{port}/wagb?password={secret}&sslmode=disable"),
        format!("postgres://wagb:{secret}@127.0.0.1:notaport/wagb"),
        format!("postgres://wagb:{secret}@127.0.0.1:{port}/wagb?sslmode=sometimes"),
        format!("mysql://wagb:{secret}@127.0.0.1/wagb"),
        format!("postgres://wagb:{secret}@127.0.0.1:{port}/wagb?sslrootcert=/nonexistent/ca.pem"),
    ];
    // Unencoded characters a URL does not allow there: still not shown.
    assert_eq!(
        redacted_url(&format!("postgres://wagb:{secret}/x@y@127.0.0.1:{port}/wagb?password=z")),
        format!("postgres://wagb:***@127.0.0.1:{port}/wagb")
    );
    for url in cases {
        let options = PostgresOptions::new(url.clone());
        assert_eq!(options.url.expose_secret(), url);
        let debug = format!("{options:?}");
        assert!(!debug.contains(secret), "Debug shows the password: {debug}");
        let err = PostgresStore::open(&options).expect_err("cannot open");
        let (shown, debug) = (err.to_string(), format!("{err:?}"));
        assert!(!shown.contains(secret), "{url}: the error shows the password: {shown}");
        assert!(!debug.contains(secret), "{url}: the error's Debug shows it: {debug}");
        assert!(
            shown.contains("127.0.0.1") || shown.contains("/nonexistent/ca.pem"),
            "{url}: the error says where: {shown}"
        );
        eprintln!("{shown}");
    }
    // And once connected, the store's own Debug.
    if let Some(db) = db("the_password_never_shows_in_debug_or_errors") {
        let mut url = url::Url::parse(db.url()).expect("url");
        if url.password().is_none() {
            url.set_password(Some(secret)).expect("password"); // trust auth ignores it
        }
        let store = PostgresStore::open(&PostgresOptions::new(url.to_string())).expect("open");
        let debug = format!("{store:?}");
        assert!(!debug.contains(secret) && debug.contains("***"), "{debug}");
    }
}

#[test]
fn the_store_comes_back_after_the_database_restarts_and_the_probe_fails_fast_while_down() {
    // A cluster of its own: restarting the shared one would disturb the other tests.
    let Some(server) = throwaway::own_server("the_store_comes_back_after_the_database_restarts")
    else {
        return;
    };
    let db = server.fresh_database().expect("database");
    let store = open(&db);
    store.enqueue_inbound(Source::Symphony, "before", &json!(1)).expect("enqueue");
    store.probe_write().expect("healthy");

    server.stop().expect("stop");
    let started = Instant::now();
    let err = store.probe_write().expect_err("down");
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "the probe answers within seconds");

    server.start_again().expect("start");
    // Pooled connections died with the server: the pool makes new ones.
    let mut last = None;
    let started = Instant::now();
    while let Err(e) = store.probe_write() {
        assert!(started.elapsed() < PATIENCE, "the store never came back: {e}\n{}", server.log());
        last = Some(e);
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("came back after {:?} (last error: {last:?})", started.elapsed());
    assert!(store.enqueue_inbound(Source::Symphony, "after", &json!(2)).expect("enqueue"));
    assert_eq!(store.count_inbound(Source::Symphony).expect("count"), 2, "nothing lost");

    server.restart().expect("restart");
    wait_until("the store to work after a restart", || {
        store.has_inbound(Source::Symphony, "before").is_ok()
    });
}

#[test]
fn the_outbox_keeps_one_head_per_key_while_two_instances_queue_and_finish() {
    let Some(db) = db("the_outbox_keeps_one_head_per_key_while_two_instances_queue_and_finish")
    else {
        return;
    };
    let (producer, consumer) = (Arc::new(open(&db)), Arc::new(open(&db)));
    const N: i64 = 60;
    let queueing = {
        let producer = Store::from_backend(producer.clone());
        std::thread::spawn(move || {
            for n in 0..N {
                producer
                    .transaction(|tx| tx.queue_effects(&[("room-a".into(), json!({"n": n}))]))
                    .expect("queue");
            }
        })
    };
    // The other instance performs heads as they come, finishing each (the next becomes head).
    let consumer_store = Store::from_backend(consumer.clone());
    let mut performed = Vec::new();
    let started = Instant::now();
    while performed.len() < N as usize {
        assert!(started.elapsed() < PATIENCE, "stuck after {performed:?}");
        let heads: i64 = consumer
            .count("SELECT COUNT(*) FROM outbox WHERE head AND order_key = 'room-a'", vec![])
            .expect("heads")
            .try_into()
            .expect("small");
        assert!(heads <= 1, "two heads for one key");
        let due = consumer.due_outbox(10, &[]).expect("due");
        for row in due {
            performed.push(row.effect["n"].as_i64().expect("n"));
            consumer_store.transaction(|tx| tx.finish_effect(row.id, None)).expect("finish");
        }
        if performed.len() < N as usize && queueing.is_finished() {
            // All queued: whatever is left must be due right away.
            let (pending, _) = consumer.outbox_counts().expect("counts");
            if pending > 0 {
                assert!(
                    !consumer.due_outbox(1, &[]).expect("due").is_empty(),
                    "a key lost its head"
                );
            }
        }
    }
    queueing.join().expect("queueing");
    assert_eq!(performed, (0..N).collect::<Vec<_>>(), "in order, each once");
}

#[test]
fn one_instance_at_a_time_holds_a_key_and_a_stalled_holder_is_fenced() {
    let Some(db) = db("one_instance_at_a_time_holds_a_key_and_a_stalled_holder_is_fenced") else {
        return;
    };
    let (a, b) = (Arc::new(open(&db)), Arc::new(open(&db)));
    assert!(a.shared() && a.owner() != b.owner());
    let long = Duration::from_secs(60);
    let first = a.claim_key("group:1", long).expect("claim").expect("free: a takes it");
    assert_eq!(b.claim_key("group:1", long).expect("claim"), None, "a holds it");
    assert_eq!(a.claim_key("group:1", long).expect("renew"), Some(first.clone()), "renewed");
    assert!(b.claim_key("group:2", long).expect("claim").is_some(), "other keys are free");

    // A lets it go: B takes it, with a new token.
    a.release_key(&first).expect("release");
    let by_b = b.claim_key("group:1", Duration::from_millis(200)).expect("claim").expect("b");
    assert!(by_b.token > first.token);

    // B stalls past its claim's expiry; A takes the key over; B's late decision is refused.
    let taken = {
        let started = Instant::now();
        loop {
            if let Some(claim) = a.claim_key("group:1", long).expect("claim") {
                break claim;
            }
            assert!(started.elapsed() < PATIENCE, "the expired claim was never taken over");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(taken.token > by_b.token, "a takeover has a new token");
    let b_store = Store::from_backend(b.clone());
    b.enqueue_inbound(Source::Symphony, "late", &json!(1)).expect("enqueue");
    let id = b.pending_inbound(0, 1).expect("pending")[0].id;
    let late: Result<bool, StoreError> = b_store.transaction(|tx| {
        if !tx.hold_claim(&by_b, long)? {
            return Err(StoreError::BadRow("fenced".into())); // the dispatcher rolls back so
        }
        tx.mark_processed(id)
    });
    assert!(late.is_err(), "the stalled holder is fenced");
    assert_eq!(b.pending_inbound(0, 1).expect("pending").len(), 1, "its write was refused");
    // Its release leaves A's claim alone.
    b.release_key(&by_b).expect("release");
    assert_eq!(b.claim_key("group:1", long).expect("claim"), None, "a still holds it");
    let a_store = Store::from_backend(a.clone());
    assert!(a_store.transaction(|tx| tx.hold_claim(&taken, long)).expect("hold"));
}

#[test]
fn a_takeover_waits_for_the_holders_decision_to_commit() {
    let Some(db) = db("a_takeover_waits_for_the_holders_decision_to_commit") else { return };
    let (a, b) = (Arc::new(open(&db)), Arc::new(open(&db)));
    let short = Duration::from_millis(300);
    let claim = a.claim_key("group:9", short).expect("claim").expect("free");
    // A's decision holds the claim (extending it) and is still running when the old expiry
    // passes; B's takeover must wait for A's commit, then see the extended claim.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (commit_tx, commit_rx) = std::sync::mpsc::channel::<()>();
    let decision = {
        let a = a.clone();
        std::thread::spawn(move || {
            Store::from_backend(a)
                .transaction(|tx| {
                    let held = tx.hold_claim(&claim, Duration::from_secs(60))?;
                    let _ = held_tx.send(held);
                    let _ = commit_rx.recv_timeout(PATIENCE);
                    Ok::<_, StoreError>(held)
                })
                .expect("decision")
        })
    };
    assert!(held_rx.recv_timeout(PATIENCE).expect("held"), "a holds its claim");
    // Past the claim's original expiry: without the row lock B would take the key now.
    let started = Instant::now();
    let takeover = {
        let b = b.clone();
        std::thread::spawn(move || {
            std::thread::sleep(short.saturating_sub(started.elapsed()) + Duration::from_millis(50));
            b.claim_key("group:9", Duration::from_secs(60)).expect("claim")
        })
    };
    wait_until("b's takeover to wait for a's decision", || {
        a.count(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            vec![],
        )
        .expect("activity")
            == 1
    });
    commit_tx.send(()).expect("commit");
    assert!(decision.join().expect("decision"));
    assert_eq!(takeover.join().expect("takeover"), None, "a's extended claim stands");
}

#[test]
fn tls_with_sslmode_require_is_verified_against_the_ca_given() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "the TLS test needs the openssl command under CI=true"
        );
        eprintln!("\n*** SKIPPED the PostgreSQL TLS test: no openssl command ***\n");
        return;
    }
    let server = match throwaway::Server::start_tls() {
        Ok(server) => server,
        Err(throwaway::ThrowawayError::NotFound)
            if !std::env::var("CI").is_ok_and(|v| v == "true") =>
        {
            eprintln!("\n*** SKIPPED the PostgreSQL TLS test: no PostgreSQL found ***\n");
            return;
        }
        Err(e) => panic!("a TLS cluster: {e}"),
    };
    let db = server.fresh_database().expect("database");
    let ca = server.ca_file().expect("ca").display().to_string();
    let port = url::Url::parse(db.url()).expect("url").port().expect("port");
    let at =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/{}?{query}", db.name);

    // Verified against the CA the URL names, by name and by address: TLS in use.
    for host in ["localhost", "127.0.0.1"] {
        let url = at(host, &format!("sslmode=require&sslrootcert={ca}"));
        let store = PostgresStore::open(&PostgresOptions::new(url)).expect("TLS store");
        let rows = store
            .query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", vec![])
            .expect("ssl");
        assert!(rows[0].get::<_, bool>(0), "{host}: the connection is encrypted");
        store.enqueue_inbound(Source::Symphony, host, &json!(1)).expect("works");
    }
    // Without the CA (the system's roots only) the server's certificate is refused.
    let err = PostgresStore::open(&PostgresOptions::new(at("localhost", "sslmode=require")))
        .expect_err("an unknown issuer");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    assert!(text.to_lowercase().contains("certificate"), "says why: {text}");
    eprintln!("{text}");
    // This server takes no plain connection.
    let err = PostgresStore::open(&PostgresOptions::new(at("127.0.0.1", "sslmode=disable")))
        .expect_err("plain refused");
    assert!(err.to_string().contains("no pg_hba.conf entry"), "{err}");
}

#[test]
fn an_outbox_head_goes_to_one_instance_until_its_lease_ends() {
    let Some(db) = db("an_outbox_head_goes_to_one_instance_until_its_lease_ends") else { return };
    // Long enough that a loaded machine checks B before it ends.
    let a = Arc::new(open(&db).with_outbox_lease(Duration::from_secs(2)));
    let b = Arc::new(open(&db));
    let a_store = Store::from_backend(a.clone());
    a_store
        .transaction(|tx| {
            tx.queue_effects(&[
                ("room-a".into(), json!({"n": 1})),
                ("room-a".into(), json!({"n": 2})),
                ("room-b".into(), json!({"n": 3})),
                ("room-c".into(), json!({"n": 4})),
            ])
        })
        .expect("queue");
    let n = |rows: &[OutboxRow]| rows.iter().map(|r| r.effect["n"].as_i64()).collect::<Vec<_>>();

    // Both ask at once: each head goes to exactly one of them.
    let leased = Instant::now();
    let start = Arc::new(Barrier::new(2));
    let asks: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|store| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                store.due_outbox(2, &[]).expect("due")
            })
        })
        .collect();
    let got: Vec<Vec<OutboxRow>> = asks.into_iter().map(|t| t.join().expect("ask")).collect();
    let mut all: Vec<_> = got.iter().flat_map(|rows| n(rows)).collect();
    all.sort();
    assert_eq!(all, vec![Some(1), Some(3), Some(4)], "every head once, to one instance: {got:?}");
    assert!(b.due_outbox(10, &[]).expect("due").iter().all(|r| got[1].contains(r)));

    // B performs its heads; A's heads wait for A (B is told when they may be due again).
    let b_store = Store::from_backend(b.clone());
    for row in &got[1] {
        b_store.transaction(|tx| tx.finish_effect(row.id, None)).expect("finish");
    }
    // (Only while they do: under a loaded machine's pauses they may have ended already.)
    if !got[0].is_empty() && leased.elapsed() < Duration::from_millis(1_500) {
        assert!(b.due_outbox(10, &[]).expect("due").is_empty(), "a's leases stand");
        let next = b.next_outbox_due().expect("next").expect("some");
        assert!(next > now_ms(), "due when a's lease ends, not now");
    }
    // A dies (never finishes): once its leases end, B performs them.
    let started = Instant::now();
    let mut taken_over = Vec::new();
    while taken_over.len() < got[0].len() {
        assert!(started.elapsed() < PATIENCE, "a's heads never came back");
        taken_over.extend(b.due_outbox(10, &[]).expect("due"));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(n(&taken_over), n(&got[0]), "the dead instance's heads, to the live one");
    // A retried effect is given back to whoever finds it due.
    let retried = &taken_over[0];
    b.outbox_retry(retried.id, Duration::ZERO, "503").expect("retry");
    assert_eq!(n(&a.due_outbox(10, &[]).expect("due")), n(std::slice::from_ref(retried)));
}

#[test]
fn a_body_that_panics_leaves_no_open_transaction_in_the_pool() {
    let Some(db) = db("a_body_that_panics_leaves_no_open_transaction_in_the_pool") else { return };
    let mut options = db.options();
    options.pool_size = 1; // the next call gets the same slot
    let store = Arc::new(PostgresStore::open(&options).expect("open"));
    let shared = Store::from_backend(store.clone());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _: Result<(), StoreError> = shared.transaction(|tx| {
            tx.enqueue_inbound(Source::Outcome, "half", &json!(1))?;
            panic!("a bug in a decision");
        });
    }));
    assert!(panicked.is_err());
    // The next call gets a clean connection: what it writes commits on its own.
    assert!(store.enqueue_inbound(Source::Outcome, "next", &json!(2)).expect("enqueue"));
    let other = open(&db);
    assert!(other.has_inbound(Source::Outcome, "next").expect("has"), "committed");
    assert!(!other.has_inbound(Source::Outcome, "half").expect("has"), "rolled back");
    // A transaction with no statement costs nothing and commits nothing.
    shared.transaction(|_| Ok::<_, StoreError>(())).expect("empty");
}

#[test]
fn pruning_a_backlog_larger_than_a_slice_takes_it_all() {
    let Some(db) = db("pruning_a_backlog_larger_than_a_slice_takes_it_all") else { return };
    let store = open(&db);
    store
        .raw(
            "INSERT INTO inbound_events (source, dedupe_key, payload, received_at, processed_at)
             SELECT 'symphony', 'old-' || i, '1', 1, 1 FROM generate_series(1, 12001) i",
        )
        .expect("old events");
    store.enqueue_inbound(Source::Symphony, "pending", &json!(1)).expect("pending");
    let pruned = store.prune(now_ms()).expect("prune");
    assert_eq!(pruned.events, 12_001, "all of it, in slices");
    assert_eq!(store.count_inbound(Source::Symphony).expect("count"), 1, "pending work kept");
}

#[test]
fn a_server_that_never_answers_fails_the_open_within_the_connect_timeout() {
    // Accepts connections and says nothing (a database gone silent behind a load balancer).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for _ in 0..2 {
            if let Ok((socket, _)) = listener.accept() {
                kept.push(socket);
            }
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let started = Instant::now();
    let url = format!("postgres://wagb@127.0.0.1:{port}/wagb?sslmode=disable&connect_timeout=1");
    let err = PostgresStore::open(&PostgresOptions::new(url)).expect_err("no answer");
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    drop(held);
}
