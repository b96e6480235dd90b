//! PostgreSQL goes away mid-stream: the Kafka daemon must stay up, keep its
//! uncommitted work up to its budget (then pause), retry with backoff, and end with the
//! same export as `replay`; and a shutdown while it is away must keep its deadline.
//! The same for a store whose disk fills up, on a small tmpfs of the test's own
//! (mounted as root, as CI runs), until the test frees room again: a SQLite file on it,
//! or a PostgreSQL database whose tablespace it is.
//!
//! The daemon reaches PostgreSQL through a TCP proxy of the test's own
//! (`support::proxy`); an outage cuts every proxied connection and closes the proxy's
//! port (new connections are refused), which is what the daemon sees when the server
//! stops, without stopping the machine's PostgreSQL under other tests.

mod support;

use std::time::Duration;

use support::proxy::Proxy;
use support::{CATCH_UP, Daemon, World, wait_for};

/// The test PostgreSQL server the proxy forwards to.
const UPSTREAM: &str = "127.0.0.1:5432";

/// The store URL of `url` with its host and port replaced by the proxy's.
fn proxied(proxy: &Proxy, url: &str) -> String {
    url.replace(UPSTREAM, &proxy.addr())
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
fn store_lost_mid_stream_pauses_at_the_budget_then_back_equals_replay() {
    let _serial = support::serial();
    let (rt, db) = support::pg_db();
    let proxy = Proxy::start(UPSTREAM);
    let w = World::new("outage", 6, Some(proxied(&proxy, &db.url)));
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

    let outage = proxy.cut();
    let read_before = d.read();
    wait_for("a failed commit while the store is down", CATCH_UP, || {
        (d.metric(ERRORS) >= 1.0).then_some(())
    });
    // Consumption goes on between the (bounded, backed-off) commit attempts, up to the
    // budget, then it pauses instead of holding more.
    wait_for("backpressure: consumption paused", CATCH_UP, || {
        (d.metric(PAUSED) == 1.0).then_some(())
    });
    assert!(d.alive(), "serve exited while the store was down");
    // The status is republished at least once a second: let it catch up with the
    // pause before taking the reference count.
    std::thread::sleep(Duration::from_millis(1_500));
    let paused_at = d.read();
    let held_now = held(&d);
    assert!(
        paused_at > read_before,
        "nothing was read during the outage ({read_before} before, {paused_at} at the pause)"
    );
    // It pauses when the budget is reached, not before.
    assert!(
        (BUDGET * 3 / 4..=BUDGET).contains(&held_now),
        "held {held_now} messages, budget {BUDGET}"
    );
    assert!(d.metric(PENDING) as i64 <= BUDGET);
    // Paused means paused: over a few commit intervals nothing more is read.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (d.read(), held(&d)),
        (paused_at, held_now),
        "read on while paused (read, held)"
    );
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
    let proxy = Proxy::start(UPSTREAM);
    let w = World::new("deadline", 6, Some(proxied(&proxy, &db.url)));
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
    let outage = proxy.cut();
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

/// A tmpfs of `size` mounted on a directory of the test's own (root only), unmounted
/// on drop: a disk the test can fill.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        Tmpfs::mount_with(&format!("size={size}"))
    }

    /// Owned by `user` (mode 0700), as PostgreSQL wants a tablespace's directory.
    fn mount_for(size: &str, user: &str) -> Tmpfs {
        let id = |flag: &str| {
            let out = std::process::Command::new("id")
                .args([flag, user])
                .output()
                .unwrap();
            assert!(out.status.success(), "no user {user} on this machine");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        Tmpfs::mount_with(&format!(
            "size={size},uid={},gid={},mode=0700",
            id("-u"),
            id("-g")
        ))
    }

    fn mount_with(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs for the full-disk test (it needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.path().join(name)
    }

    /// Writes `name` until the disk is full; its size.
    fn fill(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path(name)).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "filling the disk: {e}"); // ENOSPC
                    break;
                }
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon killed by a failing test may still hold a file open.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn store_disk_full_mid_stream_then_room_again_equals_replay() {
    let _serial = support::serial();
    let disk = Tmpfs::mount("64m");
    let url = format!("sqlite://{}", disk.path("kafka.db").display());
    let w = World::new("disk-full", 3, Some(url));
    disk_full_then_room_again(&w, &disk, "database or disk is full");
}

/// The same with the production store: a PostgreSQL database created in a tablespace
/// on the test's tmpfs, so that only this database's files run out of room (the
/// server's write-ahead log stays on its own disk, as it would on a server whose
/// data volume, not its log volume, filled up).
#[test]
fn postgres_disk_full_mid_stream_then_room_again_equals_replay() {
    let _serial = support::serial();
    let disk = Tmpfs::mount_for("64m", "postgres");
    let (rt, db) = support::pg_db();
    let space = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .replace("ccm_test", "ccm_space");
    let name = format!("{space}_db");
    let base = db.url.clone();
    let admin = |sql: String| {
        rt.block_on(async {
            use sqlx::{Connection, Executor};
            let mut c = sqlx::PgConnection::connect(&base).await.unwrap();
            c.execute(sql.as_str())
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
    };
    admin(format!(
        "CREATE TABLESPACE {space} LOCATION '{}'",
        disk.path("").display()
    ));
    admin(format!("CREATE DATABASE {name} TABLESPACE {space}"));
    let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let w = World::new("pg-disk-full", 3, Some(url));
    disk_full_then_room_again(&w, &disk, "No space left on device");
    admin(format!("DROP DATABASE {name} WITH (FORCE)"));
    admin(format!("DROP TABLESPACE {space}"));
    rt.block_on(db.drop_db()).unwrap();
}

/// The stream under way, the disk filled: commits fail (the log says why, `expect`)
/// and back off while `serve` stays up; room made again: commits succeed, and the
/// export ends where `replay`'s does.
fn disk_full_then_room_again(w: &World, disk: &Tmpfs, expect: &str) {
    let events = w.generate(24_000, 19);
    let expected = w.replay_exports(&[&events]);
    let mut producer = w.produce(&events, &["--rate", "2000"]);
    let mut d = w.serve("serve");
    wait_for("commits under way", CATCH_UP, || {
        (d.read() >= 4_000 && d.metric(OKS) >= 6.0).then_some(())
    });

    let filled = disk.fill("filler");
    assert!(filled > 0, "nothing written: the disk was already full");
    let errors = d.metric(ERRORS);
    // Two rounds of 3 partitions at least: the retries must fail on the full disk too
    // (and not for another reason, see the log check), then succeed once there is room.
    wait_for("commits failing on the full disk", CATCH_UP, || {
        (d.metric(ERRORS) >= errors + 6.0).then_some(())
    });
    assert!(d.alive(), "serve exited on a full disk");
    let log = std::fs::read_to_string(w.path("serve.log")).unwrap();
    assert!(
        log.contains(expect),
        "the log does not say the disk is full"
    );
    // The operator makes room.
    std::fs::remove_file(disk.path("filler")).unwrap();

    let oks = d.metric(OKS);
    wait_for("commits to succeed again", CATCH_UP, || {
        (d.metric(OKS) > oks).then_some(())
    });
    assert!(producer.wait().unwrap().success());
    w.wait_for_exports(&expected, CATCH_UP);
    assert!(d.alive());
    d.stop();
    assert_eq!(w.exports(), expected);
}
