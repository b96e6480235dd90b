//! The Kafka daemon end to end against a real broker (tansu): `produce` → topic →
//! `serve` (consumer group, per-partition state, offsets with the results) → store →
//! `export`, which must equal `replay` of the same events — also across kill -9,
//! scale-out and poison messages.

mod support;

use std::io::Write;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use support::{CATCH_UP, Daemon, World, wait_for};

#[test]
fn serve_on_six_partitions_equals_replay() {
    let _serial = support::serial();
    let w = World::new("e2e", 6, None);
    let events = w.generate(30_000, 11);
    w.produce_all(&events);
    let expected = w.replay_exports(&[&events]);
    assert!(expected.lines().count() > 100);

    let d = w.serve("serve");
    wait_for("ready", Duration::from_secs(60), || {
        d.get("/readyz").filter(|r| r.0 == 200)
    });
    w.wait_for_exports(&expected, CATCH_UP);

    let status = d.status().unwrap();
    let parts = status["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 6, "{status}");
    for p in parts {
        assert_eq!(p["lag"], 0, "{p}");
        assert_eq!(p["committed_offset"], p["high_watermark"], "{p}");
    }
    assert_eq!(status["stats"]["read"].as_u64(), Some(30_000));
    let (_, metrics) = d.get("/metrics").unwrap();
    for needle in [
        "ccmetrics_kafka_partitions_assigned 6",
        "ccmetrics_kafka_consumer_lag{partition=\"5\"",
        "ccmetrics_kafka_committed_offset{",
        "ccmetrics_kafka_rebalances_total{kind=\"assign\"} 1",
        "ccmetrics_offset_gaps_total 0",
        "ccmetrics_store_commit_duration_seconds_count",
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle:?}");
    }
    d.stop();
    // The shutdown commit (open windows included) must not change the figures.
    assert_eq!(w.exports(), expected);
}

/// Also the spill's crash test: every closed contact is spilled to the store as soon
/// as it is packed (`spill_after = 0s`), so the kills land between spills, take-backs
/// and the commits that persist them; `replay` (which keeps every contact in memory)
/// must still agree.
#[test]
fn kill9_at_random_points_then_restart_equals_replay() {
    kill9_rounds("crash", 12, &[("CCMETRICS__WINDOWS__SPILL", "true")], false);
}

/// The same with the spill off but started midway: each partition starts spilling at
/// the first commit where it holds more than `spill_above` contacts. The kills land
/// before and after that commit, and a partition claimed again after it must take
/// its spill back at once: its spilled contacts are in the store, not in its
/// checkpoint, and a restart that missed them would export other figures.
#[test]
fn kill9_with_the_spill_started_midway_equals_replay() {
    kill9_rounds(
        "crash-midway",
        13,
        &[
            ("CCMETRICS__WINDOWS__SPILL", "false"),
            ("CCMETRICS__WINDOWS__SPILL_ABOVE", "100"),
        ],
        true,
    );
}

/// Four `serve` daemons killed with SIGKILL at random points of the stream (`spill`
/// settings from `env`, closed contacts spilled as soon as packed), then one left to
/// catch up: the exports must equal `replay`'s, and contacts must have been spilled.
/// `midway`: the spill starts past `spill_above`, which must have happened before the
/// last daemon, so that it claims partitions whose contacts are partly in the store.
fn kill9_rounds(name: &str, seed_events: u64, env: &[(&str, &str)], midway: bool) {
    let _serial = support::serial();
    let w = World::new(name, 6, None);
    let events = w.generate(30_000, seed_events);
    w.produce_all(&events);
    let expected = w.replay_exports(&[&events]);
    let seed = jiff::Timestamp::now().as_millisecond() as u64;
    println!("kill points seed {seed}");
    let serve = |name: &str, group: &str| {
        let mut all = vec![
            ("CCMETRICS__KAFKA__GROUP_ID", group),
            ("CCMETRICS__WINDOWS__SPILL_AFTER", "0s"),
        ];
        all.extend_from_slice(env);
        Daemon::start(&w.config, &w.path(&format!("{name}.log")), &all)
    };
    let mut x = seed | 1;
    for round in 0..4 {
        let d = serve(&format!("crash-{round}"), &format!("{}-{round}", w.group));
        // xorshift: a kill point somewhere between 300 and 6,000 further events.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let target = 300 + x % 5_700;
        wait_for(
            &format!("round {round}: the daemon to consume past {target}"),
            CATCH_UP,
            || (d.read() >= target).then_some(()),
        );
        d.kill9();
    }
    if midway {
        let started = (0..4)
            .filter_map(|r| std::fs::read_to_string(w.path(&format!("crash-{r}.log"))).ok())
            .filter(|log| log.contains("spill_above: closed contacts go to the store"))
            .count();
        assert!(
            started > 0,
            "no partition started spilling before the last daemon"
        );
    }
    let d = serve("final", &format!("{}-final", w.group));
    w.wait_for_exports(&expected, CATCH_UP);
    let spilled = d.metric("ccmetrics_spilled_contacts");
    assert!(spilled > 100.0, "only {spilled} contacts spilled");
    d.stop();
    assert_eq!(w.exports(), expected);
}

#[test]
fn sigterm_mid_stream_commits_within_the_deadline_and_a_restart_equals_replay() {
    let _serial = support::serial();
    let w = World::new("sigterm", 6, None);
    let events = w.generate(30_000, 16);
    let expected = w.replay_exports(&[&events]);
    // Producing while the daemon consumes, so the signal lands mid-stream.
    let mut producer = w.produce(&events, &["--rate", "3000"]);
    let deadline = Duration::from_secs(10);
    let d = Daemon::start(
        &w.config,
        &w.path("first.log"),
        &[("CCMETRICS__SERVE__SHUTDOWN_TIMEOUT", "10s")],
    );
    wait_for("consumption under way", CATCH_UP, || {
        (d.read() >= 5_000).then_some(())
    });
    let read = d.read();
    let (status, took) = d.terminate(deadline + Duration::from_secs(20));
    // Exit 0 means every partition committed (else it exits 1); within the deadline.
    assert!(
        status.success(),
        "serve exited with {status}; see first.log"
    );
    assert!(
        took < deadline,
        "shutdown took {took:?}, deadline {deadline:?}"
    );
    assert!(
        read < 30_000,
        "the stream had already ended: not mid-stream"
    );
    let log = std::fs::read_to_string(w.path("first.log")).unwrap();
    assert!(
        log.contains("shutting down: committing every partition"),
        "{log}"
    );

    // The member left the group on its way out, so a restart in the same group takes
    // over at once and ends where replay does: nothing lost, nothing counted twice.
    let d = w.serve("second");
    assert!(producer.wait().unwrap().success());
    w.wait_for_exports(&expected, CATCH_UP);
    d.stop();
    assert_eq!(w.exports(), expected);
}

/// A partition's checkpoint damaged in the store (one byte flipped, as a bad disk or
/// a hand edit would) stops the daemon assigned that partition with an error that
/// names the partition and the damage: no panic, and no engine continued from other
/// figures. Once the damaged partition is started afresh (its checkpoint and rows
/// deleted, as the error advises), a restart ends where replay does.
#[test]
fn a_checkpoint_damaged_in_the_store_stops_serve_with_an_error() {
    on_sqlite("damaged", checkpoint_damaged);
}

/// The same against PostgreSQL, the production store.
#[test]
fn a_checkpoint_damaged_in_postgres_stops_serve_with_an_error() {
    on_postgres("damaged-pg", checkpoint_damaged);
}

/// Runs `test` on a two-partition world whose store is a SQLite file.
fn on_sqlite(name: &str, test: fn(&World, &StoreSql<'_>)) {
    let _serial = support::serial();
    let w = World::new(name, 2, None);
    let db_path = w.store_url.trim_start_matches("sqlite://").to_owned();
    test(&w, &StoreSql::Sqlite(db_path));
}

/// Runs `test` on a two-partition world whose store is a fresh PostgreSQL database.
fn on_postgres(name: &str, test: fn(&World, &StoreSql<'_>)) {
    let _serial = support::serial();
    let (rt, db) = support::pg_db();
    let w = World::new(name, 2, Some(db.url.clone()));
    let pool = rt.block_on(sqlx::PgPool::connect(&db.url)).unwrap();
    test(&w, &StoreSql::Postgres(&rt, pool));
}

/// A test's hand on the store's rows: SQLite through rusqlite, PostgreSQL through
/// sqlx on the test's runtime.
enum StoreSql<'a> {
    Sqlite(String),
    Postgres(&'a tokio::runtime::Runtime, sqlx::PgPool),
}

impl StoreSql<'_> {
    fn checkpoint(&self, partition: &str) -> Vec<u8> {
        const SQL: &str = r#"SELECT state FROM checkpoints WHERE "partition" = "#;
        match self {
            StoreSql::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .query_row(&format!("{SQL}?1"), [partition], |r| r.get(0))
                .unwrap(),
            StoreSql::Postgres(rt, pool) => rt
                .block_on(
                    sqlx::query_scalar(&format!("{SQL}$1"))
                        .bind(partition)
                        .fetch_one(pool),
                )
                .unwrap(),
        }
    }

    fn set_checkpoint(&self, partition: &str, state: &[u8]) {
        const SQL: &str = r#"UPDATE checkpoints SET state = "#;
        match self {
            StoreSql::Sqlite(path) => {
                let n = rusqlite::Connection::open(path)
                    .unwrap()
                    .execute(
                        &format!(r#"{SQL}?1 WHERE "partition" = ?2"#),
                        rusqlite::params![state, partition],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            }
            StoreSql::Postgres(rt, pool) => {
                let done = rt
                    .block_on(
                        sqlx::query(&format!(r#"{SQL}$1 WHERE "partition" = $2"#))
                            .bind(state)
                            .bind(partition)
                            .execute(pool),
                    )
                    .unwrap();
                assert_eq!(done.rows_affected(), 1);
            }
        }
    }

    /// Overwrites every spilled contact's body with bytes that do not decode: the
    /// rows changed.
    fn damage_spilled(&self) -> u64 {
        match self {
            StoreSql::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .execute("UPDATE spilled_contacts SET body = x'ffffffff'", [])
                .unwrap() as u64,
            StoreSql::Postgres(rt, pool) => rt
                .block_on(
                    sqlx::query(r"UPDATE spilled_contacts SET body = '\xffffffff'::bytea")
                        .execute(pool),
                )
                .unwrap()
                .rows_affected(),
        }
    }

    /// Deletes the partition's checkpoint, snapshot and spilled-contact rows: the
    /// partition starts afresh, from the beginning of its topic.
    fn start_afresh(&self, partition: &str) {
        for table in ["checkpoints", "snapshots", "spilled_contacts"] {
            let sql = format!(r#"DELETE FROM {table} WHERE "partition" = "#);
            match self {
                StoreSql::Sqlite(path) => {
                    rusqlite::Connection::open(path)
                        .unwrap()
                        .execute(&format!("{sql}?1"), [partition])
                        .unwrap();
                }
                StoreSql::Postgres(rt, pool) => {
                    rt.block_on(
                        sqlx::query(&format!("{sql}$1"))
                            .bind(partition)
                            .execute(pool),
                    )
                    .unwrap();
                }
            }
        }
    }
}

fn checkpoint_damaged(w: &World, sql: &StoreSql<'_>) {
    let events = w.generate(4_000, 23);
    let expected = w.replay_exports(&[&events]);
    w.produce_all(&events);
    let d = w.serve("first");
    w.wait_for_exports(&expected, CATCH_UP);
    d.stop();

    let partition = format!("kafka:{}:0", w.topic);
    let mut state = sql.checkpoint(&partition);
    let middle = state.len() / 2;
    state[middle] ^= 0x04;
    sql.set_checkpoint(&partition, &state);

    let mut d = w.serve("second");
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "serve went on from a damaged checkpoint");
    let log = std::fs::read_to_string(w.path("second.log")).unwrap();
    assert!(
        log.contains(&format!("cannot restore partition {partition}")),
        "{log}"
    );
    assert!(log.contains("checkpoint is damaged"), "{log}");
    assert!(log.contains("checksum does not match"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(d);

    // Started afresh as the error advises: the next run reads the partition again
    // from the beginning of the topic.
    sql.start_afresh(&partition);
    let d = w.serve("third");
    w.wait_for_exports(&expected, CATCH_UP);
    d.stop();
    assert_eq!(w.exports(), expected);
}

/// Spilled contacts damaged in the store (their bodies overwritten): a daemon that
/// reads one back has lost that contact's events, and must stop at the partition's
/// next commit, naming the damage, rather than store figures without them.
#[test]
fn a_spilled_contact_damaged_in_the_store_stops_serve_at_its_next_commit() {
    on_sqlite("spill-damaged", spilled_contact_damaged);
}

/// The same against PostgreSQL.
#[test]
fn a_spilled_contact_damaged_in_postgres_stops_serve_at_its_next_commit() {
    on_postgres("spill-damaged-pg", spilled_contact_damaged);
}

fn spilled_contact_damaged(w: &World, sql: &StoreSql<'_>) {
    let events = w.generate(8_000, 29);
    // Two halves: contacts of the first are spilled (closed contacts go to the store
    // at once), and the second's events reach some of them again.
    let all = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = all.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let write = |name: &str, part: &[&str]| {
        let path = w.path(name);
        std::fs::write(&path, part.join("\n") + "\n").unwrap();
        path
    };
    let (first, second) = (write("first.jsonl", first), write("second.jsonl", second));
    let env = [
        ("CCMETRICS__WINDOWS__SPILL", "true"),
        ("CCMETRICS__WINDOWS__SPILL_AFTER", "0s"),
    ];
    w.produce_all(&first);
    let d = Daemon::start(&w.config, &w.path("first.log"), &env);
    let half = lines.len() as u64 / 2;
    wait_for(
        "the first half consumed and contacts spilled",
        CATCH_UP,
        || (d.read() >= half && d.metric("ccmetrics_spilled_contacts") > 50.0).then_some(()),
    );
    d.stop();

    let damaged = sql.damage_spilled();
    assert!(damaged > 50, "only {damaged} spilled contacts in the store");

    w.produce_all(&second);
    let mut d = Daemon::start(&w.config, &w.path("second.log"), &env);
    let status = d.wait_exit(CATCH_UP);
    assert!(
        !status.success(),
        "serve went on without a damaged contact's events"
    );
    let log = std::fs::read_to_string(w.path("second.log")).unwrap();
    assert!(
        log.contains(&format!("cannot commit partition kafka:{}:", w.topic)),
        "{log}"
    );
    assert!(
        log.contains("a contact read back from the spill is damaged"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn scale_out_stop_one_and_add_one_equals_replay() {
    let _serial = support::serial();
    let (_rt, db) = support::pg_db();
    let w = World::new("scale", 6, Some(db.url.clone()));
    let events = w.generate(40_000, 13);
    let expected = w.replay_exports(&[&events]);
    // Producing while the group consumes, so the kill and the join happen mid-stream.
    let mut producer = w.produce(&events, &["--rate", "4000"]);
    let a = w.serve("a");
    let b = w.serve("b");
    let c = w.serve("c");
    wait_for("all three instances to own partitions", CATCH_UP, || {
        [&a, &b, &c]
            .iter()
            .all(|d| d.get("/readyz").is_some_and(|r| r.0 == 200))
            .then_some(())
    });
    wait_for("consumption under way", CATCH_UP, || {
        (a.read() + b.read() + c.read() >= 8_000).then_some(())
    });
    // Leaves the group (a kill -9 would leave a dead member tansu 0.6 never evicts;
    // the kill -9 recovery itself is the test above).
    b.stop();
    wait_for("a and c to take over b's partitions", CATCH_UP, || {
        (a.partitions_owned() + c.partitions_owned() == 6).then_some(())
    });
    let d = w.serve("d");
    wait_for("the new instance to own partitions", CATCH_UP, || {
        d.get("/readyz").filter(|r| r.0 == 200)
    });
    let st = producer.wait().unwrap();
    assert!(st.success());
    w.wait_for_exports(&expected, CATCH_UP);
    // Stopped one at a time, each once the others own every partition again, as an
    // operator scaling in would: a member SIGTERMed in the middle of the rebalance
    // the previous stop started exited 1 once in CI (2026-12-02, under load; not
    // reproduced in four runs since) and is a case of its own, not this test's.
    let mut left = vec![a, c, d];
    while let Some(daemon) = left.pop() {
        daemon.stop();
        if left.is_empty() {
            break;
        }
        wait_for("the others to own every partition again", CATCH_UP, || {
            let owned: usize = left.iter().map(Daemon::partitions_owned).sum();
            (owned == 6).then_some(())
        });
    }
    assert_eq!(w.exports(), expected);
    _rt.block_on(db.drop_db()).unwrap();
}

/// Messages no decoder takes: not JSON, wrong shape, unknown type, 70 KB, a bad time.
fn poison() -> Vec<Vec<u8>> {
    vec![
        b"this is not json".to_vec(),
        b"{\"event_id\":\"x1\"}".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{\"event_id\":\"x2\",\"type\":\"contact.teleported\",\"ts\":1793577600000,\"contact_id\":\"c\"}".to_vec(),
        format!("{{\"event_id\":\"x3\",\"pad\":\"{}\"}}", "z".repeat(70_000)).into_bytes(),
        b"{\"event_id\":\"x4\",\"type\":\"contact.offered\",\"ts\":\"yesterday\",\"contact_id\":\"c9\"}".to_vec(),
    ]
}

/// `good`'s lines with a bad one after every 700.
fn mixed_with(w: &World, good: &std::path::Path, bad: &[Vec<u8>]) -> std::path::PathBuf {
    let mixed = w.path("mixed.jsonl");
    let mut f = std::fs::File::create(&mixed).unwrap();
    let text = std::fs::read_to_string(good).unwrap();
    let mut bad_iter = bad.iter();
    for (i, line) in text.lines().enumerate() {
        writeln!(f, "{line}").unwrap();
        if i % 700 == 699
            && let Some(b) = bad_iter.next()
        {
            f.write_all(b).unwrap();
            f.write_all(b"\n").unwrap();
        }
    }
    assert!(bad_iter.next().is_none(), "every bad line placed");
    mixed
}

/// Read `topic` until it holds at least `n` messages: (payload, reason header).
fn dead_letters(w: &World, topic: &str, n: usize) -> Vec<(Vec<u8>, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &w.broker.addr)
        .set("group.id", support::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut letters: Vec<(Vec<u8>, String)> = Vec::new();
    wait_for("every dead letter", CATCH_UP, || {
        while let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let reason = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "ccmetrics.reason"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            letters.push((m.payload().unwrap_or_default().to_vec(), reason));
        }
        (letters.len() >= n).then_some(())
    });
    letters
}

/// Every bad message is among the letters, with a reason.
fn assert_dead_lettered(letters: &[(Vec<u8>, String)], bad: &[Vec<u8>]) {
    for b in bad {
        let (_, reason) = letters.iter().find(|(p, _)| p == b).unwrap_or_else(|| {
            panic!(
                "{:?} not dead-lettered",
                String::from_utf8_lossy(&b[..b.len().min(60)])
            )
        });
        assert!(!reason.is_empty());
    }
}

#[test]
fn poison_messages_are_counted_and_dead_lettered() {
    let _serial = support::serial();
    let w = World::new("poison", 3, None);
    let good = w.generate(5_000, 14);
    let bad = poison();
    let mixed = mixed_with(&w, &good, &bad);
    w.produce_all(&mixed);
    let expected = w.replay_exports(&[&good]);

    let d = w.serve("serve");
    w.wait_for_exports(&expected, CATCH_UP);
    let status = d.status().unwrap();
    assert_eq!(
        status["stats"]["rejected_total"].as_u64(),
        Some(bad.len() as u64),
        "{status}"
    );
    assert_eq!(
        status["stats"]["rejected"]["oversize"].as_u64(),
        Some(1),
        "{status}"
    );

    // Every bad message is in the dead-letter topic, byte for byte, with its reason.
    let letters = dead_letters(&w, &w.dead_letter_topic, bad.len());
    assert_eq!(letters.len(), bad.len());
    assert_dead_lettered(&letters, &bad);
    d.stop();
}

/// A world whose input mixes good events with [`poison`], and whose daemon names a
/// dead-letter topic that does not exist yet (tansu, like many clusters, creates no
/// topic on first use), with librdkafka giving a copy up after 2 s.
struct LateTopic {
    w: World,
    bad: Vec<Vec<u8>>,
    expected: String,
    topic: String,
}

impl LateTopic {
    fn new(name: &str, seed: u64) -> LateTopic {
        let w = World::new(name, 2, None);
        let good = w.generate(5_000, seed);
        let bad = poison();
        let mixed = mixed_with(&w, &good, &bad);
        w.produce_all(&mixed);
        let expected = w.replay_exports(&[&good]);
        let topic = format!("{}-late", w.dead_letter_topic);
        LateTopic {
            w,
            bad,
            expected,
            topic,
        }
    }

    fn serve(&self, log: &str, extra: &[(&str, &str)]) -> Daemon {
        let mut env = vec![
            ("CCMETRICS__KAFKA__DEAD_LETTER_TOPIC", self.topic.as_str()),
            ("CCMETRICS_RDKAFKA_MESSAGE_TIMEOUT_MS", "2000"),
        ];
        env.extend_from_slice(extra);
        Daemon::start(&self.w.config, &self.w.path(log), &env)
    }

    /// Every message read, and at least one copy given up by librdkafka.
    fn wait_for_a_copy_given_up(&self, d: &Daemon) {
        wait_for("every message read", CATCH_UP, || {
            (d.read() >= (5_000 + self.bad.len()) as u64).then_some(())
        });
        wait_for("a dead letter given up by librdkafka", CATCH_UP, || {
            (d.metric("ccmetrics_dead_letter_failures_total") >= 1.0).then_some(())
        });
    }

    /// Once the topic exists: the figures end where `replay` puts them, nothing is
    /// pending, and every bad message is in the topic (at least once: a copy given up
    /// may have landed too).
    fn create_topic_and_wait_for_every_copy(&self, d: &Daemon) {
        support::create_topic(&self.w.broker.addr, &self.topic, 1);
        self.w.wait_for_exports(&self.expected, CATCH_UP);
        wait_for("no dead letter pending", CATCH_UP, || {
            (d.metric("ccmetrics_dead_letters_pending") == 0.0).then_some(())
        });
        let letters = dead_letters(&self.w, &self.topic, self.bad.len());
        assert_dead_lettered(&letters, &self.bad);
    }
}

/// The dead-letter topic missing: librdkafka gives each copy up after
/// `message.timeout.ms`. The copies are sent again, the partitions that rejected them
/// do not commit past them, and once the topic exists every copy lands and the figures
/// catch up. Before, the commit went ahead once librdkafka had given a copy up, and
/// the copy was lost.
#[test]
fn dead_letters_the_broker_refuses_hold_their_partitions_commit_until_it_takes_them() {
    let _serial = support::serial();
    let t = LateTopic::new("dlq-late", 15);
    let d = t.serve("serve.log", &[]);
    t.wait_for_a_copy_given_up(&d);
    // Everything is read, but what follows a rejected message is not committed: the
    // status names the partitions that wait.
    assert!(d.metric("ccmetrics_dead_letters_pending") >= 1.0);
    let status = d.status().unwrap();
    let waiting: u64 = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["dead_letters_pending"].as_u64().unwrap())
        .sum();
    assert_eq!(waiting as f64, d.metric("ccmetrics_dead_letters_pending"));
    assert_ne!(
        t.w.exports(),
        t.expected,
        "committed past an undelivered dead letter"
    );
    t.create_topic_and_wait_for_every_copy(&d);
    d.stop();
}

/// Stopped while copies of rejected messages are unacknowledged (the dead-letter topic
/// missing): the partitions that hold them cannot make their last commit, so `serve`
/// exits 1 at its shutdown deadline instead of committing past them. A restart, with
/// the topic there, re-reads from the committed offsets and copies them again: every
/// copy lands, and the figures end where `replay` puts them (nothing counted twice).
#[test]
fn sigterm_with_dead_letters_unacknowledged_exits_1_and_a_restart_copies_them_again() {
    let _serial = support::serial();
    let t = LateTopic::new("dlq-stop", 17);
    let d = t.serve("first.log", &[("CCMETRICS__SERVE__SHUTDOWN_TIMEOUT", "3s")]);
    t.wait_for_a_copy_given_up(&d);
    let (status, took) = d.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "see first.log");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_ne!(
        t.w.exports(),
        t.expected,
        "committed past an undelivered dead letter"
    );

    let d = t.serve("second.log", &[]);
    t.create_topic_and_wait_for_every_copy(&d);
    d.stop();
    assert_eq!(t.w.exports(), t.expected);
}
