//! PostgreSQL goes away mid-stream: the Kafka daemon must stay up, keep its
//! uncommitted work, retry with backoff, and end with the same export as `replay`.
//!
//! A test binary of its own because it stops the machine's PostgreSQL server: cargo
//! runs test binaries one after another, so no other PostgreSQL test runs meanwhile.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{CATCH_UP, Daemon, World, wait_for};

/// The local PostgreSQL clusters, as `pg_ctlcluster` names them (version, "main").
fn clusters() -> Vec<String> {
    let versions = std::fs::read_dir("/etc/postgresql")
        .expect("this test stops and starts the local PostgreSQL with pg_ctlcluster; /etc/postgresql is missing");
    versions
        .filter_map(|v| Some(v.ok()?.file_name().to_string_lossy().into_owned()))
        .collect()
}

fn pg_ctl(action: &str) {
    for v in clusters() {
        let out = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &v, "main", action])
            .args(if action == "stop" {
                &["-m", "fast"][..]
            } else {
                &[]
            })
            .output()
            .expect("running pg_ctlcluster");
        assert!(
            out.status.success(),
            "pg_ctlcluster {v} main {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn pg_ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Stops PostgreSQL; starts it again when dropped, even when the test fails, so the
/// test binaries after this one find it running.
struct Outage;

impl Outage {
    fn begin() -> Outage {
        pg_ctl("stop");
        wait_for("PostgreSQL to stop", Duration::from_secs(30), || {
            (!pg_ready()).then_some(())
        });
        Outage
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !pg_ready() {
            pg_ctl("start");
        }
        wait_for("PostgreSQL to start", Duration::from_secs(60), || {
            pg_ready().then_some(())
        });
    }
}

const ERRORS: &str = "ccmetrics_store_commits_total{result=\"error\"}";
const OKS: &str = "ccmetrics_store_commits_total{result=\"ok\"}";
const PAUSED: &str = "ccmetrics_kafka_consumer_paused";
const PENDING: &str = "ccmetrics_kafka_pending_events";
/// The backpressure budget of these tests (`[kafka] max_pending_events`).
const BUDGET: i64 = 6_000;

/// Messages read but not committed, over the partitions in `/api/v1/status`.
fn held(d: &Daemon) -> i64 {
    let status = d.status().unwrap();
    status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["next_offset"].as_i64().unwrap_or(0) - p["committed_offset"].as_i64().unwrap_or(0)
        })
        .sum()
}

#[test]
fn postgres_stopped_mid_stream_pauses_at_the_budget_then_back_equals_replay() {
    let _serial = support::serial();
    let (rt, db) = support::pg_db();
    let w = World::new("outage", 6, Some(db.url.clone()));
    let events = w.generate(30_000, 15);
    let expected = w.replay_exports(&[&events]);
    // Still producing while the store is away, so the daemon has input to hold.
    let mut producer = w.produce(&events, &["--rate", "2500"]);
    let budget = BUDGET.to_string();
    let mut d = Daemon::start(
        &w.config,
        &w.path("serve.log"),
        &[("CCMETRICS__KAFKA__MAX_PENDING_EVENTS", budget.as_str())],
    );
    wait_for("commits under way", CATCH_UP, || {
        (d.read() >= 5_000 && d.metric(OKS) >= 6.0).then_some(())
    });

    let outage = Outage::begin();
    let read_before = d.read();
    wait_for("a failed commit while the store is down", CATCH_UP, || {
        (d.metric(ERRORS) >= 1.0).then_some(())
    });
    // Consumption goes on between the (bounded, backed-off) commit attempts ...
    wait_for("consumption to go on without the store", CATCH_UP, || {
        (d.read() >= read_before + 2_000).then_some(())
    });
    assert!(d.alive(), "serve exited while the store was down");
    // ... up to the budget, then it pauses instead of holding more.
    wait_for("backpressure: consumption paused", CATCH_UP, || {
        (d.metric(PAUSED) == 1.0).then_some(())
    });
    let paused_at = d.read();
    let held_now = held(&d);
    assert!(
        (2_000..=BUDGET).contains(&held_now),
        "held {held_now} messages, budget {BUDGET}"
    );
    assert!(d.metric(PENDING) as i64 <= BUDGET);
    // Paused means paused: over a few commit intervals nothing more is read.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.read(), paused_at, "read on while paused");
    assert!(held(&d) <= BUDGET);
    assert_eq!(d.metric(PAUSED), 1.0);
    drop(outage);

    let oks = d.metric(OKS);
    wait_for("commits to succeed again", CATCH_UP, || {
        (d.metric(OKS) > oks).then_some(())
    });
    wait_for("consumption to resume", CATCH_UP, || {
        (d.metric(PAUSED) == 0.0 && d.read() > paused_at).then_some(())
    });
    assert!(producer.wait().unwrap().success());
    w.wait_for_exports(&expected, CATCH_UP);
    assert!(d.alive());
    d.stop();
    assert_eq!(w.exports(), expected);
    rt.block_on(db.drop_db()).unwrap();
}

#[test]
fn sigterm_while_the_store_is_down_exits_1_at_the_deadline_and_loses_nothing() {
    let _serial = support::serial();
    let (rt, db) = support::pg_db();
    let w = World::new("deadline", 6, Some(db.url.clone()));
    let events = w.generate(10_000, 17);
    let expected = w.replay_exports(&[&events]);
    w.produce_all(&events);
    let d = Daemon::start(
        &w.config,
        &w.path("first.log"),
        &[("CCMETRICS__SERVE__SHUTDOWN_TIMEOUT", "3s")],
    );
    wait_for("commits under way", CATCH_UP, || {
        (d.read() >= 2_000 && d.metric(OKS) >= 6.0).then_some(())
    });
    let outage = Outage::begin();
    // The final commits cannot reach the store: each waits for the pool's acquire
    // timeout (10 s), longer than the 3 s deadline.
    let (status, took) = d.terminate(Duration::from_secs(30));
    assert!(
        !status.success(),
        "serve exited 0 without its final commits"
    );
    assert!(
        took < Duration::from_secs(3) + Duration::from_secs(3),
        "shutdown took {took:?} with a 3 s deadline"
    );
    let log = std::fs::read_to_string(w.path("first.log")).unwrap();
    assert!(log.contains("shutdown deadline passed"), "{log}");
    drop(outage);

    // What it had not committed is re-read by the next owner (a new group: the
    // stopped member never left, and tansu 0.6 never evicts it).
    let d = w.serve_in_group("second", &format!("{}-second", w.group));
    w.wait_for_exports(&expected, CATCH_UP);
    d.stop();
    assert_eq!(w.exports(), expected);
    rt.block_on(db.drop_db()).unwrap();
}
