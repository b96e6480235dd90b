//! PostgreSQL goes away mid-stream: the Kafka daemon must stay up, keep its
//! uncommitted work, retry with backoff, and end with the same export as `replay`.
//!
//! A test binary of its own because it stops the machine's PostgreSQL server: cargo
//! runs test binaries one after another, so no other PostgreSQL test runs meanwhile.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{CATCH_UP, World, wait_for};

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

#[test]
fn postgres_stopped_mid_stream_then_back_equals_replay() {
    let _serial = support::serial();
    let (rt, db) = support::pg_db();
    let w = World::new("outage", 6, Some(db.url.clone()));
    let events = w.generate(30_000, 15);
    let expected = w.replay_exports(&[&events]);
    // Still producing while the store is away, so the daemon has input to hold.
    let mut producer = w.produce(&events, &["--rate", "2500"]);
    let mut d = w.serve("serve");
    wait_for("commits under way", CATCH_UP, || {
        (d.read() >= 5_000 && d.metric(OKS) >= 6.0).then_some(())
    });

    let outage = Outage::begin();
    let read_before = d.read();
    wait_for("a failed commit while the store is down", CATCH_UP, || {
        (d.metric(ERRORS) >= 1.0).then_some(())
    });
    // Consumption goes on between the (bounded, backed-off) commit attempts.
    wait_for("consumption to go on without the store", CATCH_UP, || {
        (d.read() >= read_before + 2_000).then_some(())
    });
    assert!(d.alive(), "serve exited while the store was down");
    // Read but not committed: held in memory until the store is back.
    let status = d.status().unwrap();
    let held: i64 = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["next_offset"].as_i64().unwrap_or(0) - p["committed_offset"].as_i64().unwrap_or(0)
        })
        .sum();
    assert!(
        held >= 2_000,
        "input read during the outage is not held: {status}"
    );
    drop(outage);

    let oks = d.metric(OKS);
    wait_for("commits to succeed again", CATCH_UP, || {
        (d.metric(OKS) > oks).then_some(())
    });
    assert!(producer.wait().unwrap().success());
    w.wait_for_exports(&expected, CATCH_UP);
    assert!(d.alive());
    d.stop();
    assert_eq!(w.exports(), expected);
    rt.block_on(db.drop_db()).unwrap();
}
