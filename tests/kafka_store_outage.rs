//! PostgreSQL goes away mid-stream: the Kafka daemon must stay up, keep its
//! uncommitted work up to its budget (then pause), retry with backoff, and end with the
//! same export as `replay`; and a shutdown while it is away must keep its deadline.
//!
//! The daemon reaches PostgreSQL through a TCP proxy of the test's own; an outage cuts
//! every proxied connection and closes the proxy's port (new connections are refused),
//! which is what the daemon sees when the server stops, without stopping the machine's
//! PostgreSQL under other tests.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{CATCH_UP, Daemon, World, wait_for};

/// The test PostgreSQL server the proxy forwards to.
const UPSTREAM: &str = "127.0.0.1:5432";

/// A TCP proxy to [`UPSTREAM`] on a fixed local port that can be cut and restored.
struct PgProxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl PgProxy {
    fn start() -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = PgProxy {
            port,
            up: Arc::new(AtomicBool::new(true)),
            conns: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (up, conns, stop) = (p.up.clone(), p.conns.clone(), p.stop.clone());
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            while !stop.load(Ordering::Acquire) {
                match (&listener, up.load(Ordering::Acquire)) {
                    // Down: no listener, so connecting is refused.
                    (Some(_), false) => listener = None,
                    (None, true) => {
                        // std sets SO_REUSEADDR, so the port can be bound again at once.
                        listener = TcpListener::bind(("127.0.0.1", port)).ok();
                    }
                    _ => {}
                }
                let Some(l) = &listener else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                l.set_nonblocking(true).unwrap();
                match l.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(UPSTREAM) else {
                            continue;
                        };
                        let mut c = conns.lock().unwrap();
                        c.push(client.try_clone().unwrap());
                        c.push(server.try_clone().unwrap());
                        drop(c);
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => {}
                }
            }
        });
        p
    }

    /// The store URL of `url` with its host and port replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        url.replace(UPSTREAM, &format!("127.0.0.1:{}", self.port))
    }

    /// The outage: every proxied connection cut, new ones refused.
    fn cut(&self) -> Outage<'_> {
        self.up.store(false, Ordering::Release);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        let addr = format!("127.0.0.1:{}", self.port);
        wait_for(
            "the proxy to refuse connections",
            Duration::from_secs(10),
            || TcpStream::connect(&addr).is_err().then_some(()),
        );
        Outage(self)
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Copy one direction until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Ends the outage when dropped (also when the test fails).
struct Outage<'a>(&'a PgProxy);

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        self.0.up.store(true, Ordering::Release);
        let addr = format!("127.0.0.1:{}", self.0.port);
        wait_for("the proxy to accept again", Duration::from_secs(10), || {
            TcpStream::connect(&addr).ok().map(|_| ())
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
fn store_lost_mid_stream_pauses_at_the_budget_then_back_equals_replay() {
    let _serial = support::serial();
    let (rt, db) = support::pg_db();
    let proxy = PgProxy::start();
    let w = World::new("outage", 6, Some(proxy.url(&db.url)));
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
    let proxy = PgProxy::start();
    let w = World::new("deadline", 6, Some(proxy.url(&db.url)));
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
