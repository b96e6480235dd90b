//! The Kafka broker goes away mid-stream, or is away when the daemon starts: `serve`
//! must stay up, say so on `/metrics` (`ccmetrics_kafka_broker_connections_up` 0), pick up where
//! it was once the broker is back, and end with the same export as `replay`.
//!
//! Every client (daemon, producer) reaches the broker through a TCP proxy of the
//! test's own (`support::proxy`): the broker advertises the proxy's address, so the
//! connections librdkafka opens after the bootstrap go through it too. An outage cuts
//! every proxied connection and refuses new ones, which is what the clients see when
//! the broker stops or the network between them fails; the broker itself keeps its
//! topics (tansu's test storage is in memory, so a real restart would lose them).

mod support;

use std::time::Duration;

use support::{CATCH_UP, World, wait_for};

const CONNECTIONS_UP: &str = "ccmetrics_kafka_broker_connections_up";
const READY: &str = "ccmetrics_ready";
const LOST: &str = "ccmetrics_kafka_rebalances_total{kind=\"lost\"}";
const ASSIGNS: &str = "ccmetrics_kafka_rebalances_total{kind=\"assign\"}";
/// The tests' `session.timeout.ms` (tests/support, the world's config).
const SESSION: Duration = Duration::from_secs(6);

/// A blip: shorter than the tests' `session.timeout.ms` (6 s), so the consumer keeps
/// its group session and its partitions.
#[test]
fn broker_away_for_a_moment_mid_stream_then_back_equals_replay() {
    broker_away_mid_stream("broker-blip", Duration::from_secs(3), 31);
}

/// Longer than the group session: librdkafka declares the partitions lost, and the
/// daemon must rejoin and take them back from the store.
#[test]
fn broker_away_past_the_session_mid_stream_then_back_equals_replay() {
    broker_away_mid_stream("broker-outage", Duration::from_secs(10), 32);
}

fn broker_away_mid_stream(name: &str, outage_for: Duration, seed: u64) {
    let _serial = support::serial();
    let (w, proxy) = World::behind_proxy(name, 3);
    let events = w.generate(24_000, seed);
    let expected = w.replay_exports(&[&events]);
    // Still producing while the broker is away: the producer's messages wait in its
    // queue and go out when it is back (librdkafka retries; idempotent, so none twice).
    let producer = w.produce(&events, &["--rate", "2000"]);
    let mut d = w.serve("serve");
    wait_for("reading under way", CATCH_UP, || {
        (d.read() >= 4_000 && d.metric(CONNECTIONS_UP) >= 1.0).then_some(())
    });

    let outage = proxy.cut();
    wait_for("the broker reported down", Duration::from_secs(30), || {
        (d.metric(CONNECTIONS_UP) == 0.0).then_some(())
    });
    // The fault's length, not a wait for a condition. The daemon is checked all along.
    let start = std::time::Instant::now();
    while start.elapsed() < outage_for {
        assert!(d.alive(), "serve exited while the broker was away");
        assert_eq!(
            d.metric(CONNECTIONS_UP),
            0.0,
            "a broker seen up during the outage"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Past the group session librdkafka declares the partitions lost, and the daemon
    // lets them go unwritten (what it committed is in the store); within it they stay.
    let session_ran_out = outage_for > SESSION;
    assert_eq!(
        d.metric(LOST) >= 1.0,
        session_ran_out,
        "partitions lost after an outage of {outage_for:?}"
    );
    let assigns = d.metric(ASSIGNS);
    drop(outage);

    wait_for("the broker reported up again", CATCH_UP, || {
        (d.metric(CONNECTIONS_UP) >= 1.0).then_some(())
    });
    if session_ran_out {
        // It rejoins and takes its partitions back from the store.
        wait_for("the partitions assigned again", CATCH_UP, || {
            (d.metric(ASSIGNS) > assigns && d.partitions_owned() == 3).then_some(())
        });
    }
    let out = producer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "produce failed across the outage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.wait_for_exports(&expected, CATCH_UP);
    assert!(d.alive());
    d.stop();
    assert_eq!(w.exports(), expected);
}

#[test]
fn serve_started_while_the_broker_is_away_waits_then_catches_up() {
    let _serial = support::serial();
    let (w, proxy) = World::behind_proxy("broker-away-at-start", 3);
    let events = w.generate(6_000, 32);
    let expected = w.replay_exports(&[&events]);
    w.produce_all(&events);

    let outage = proxy.cut();
    let mut d = w.serve("serve");
    // Up and answering, but not ready: no partitions, no broker.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert!(d.alive(), "serve exited while the broker was away");
        assert_eq!(d.metric(CONNECTIONS_UP), 0.0);
        assert_eq!(d.metric(READY), 0.0, "ready without a broker");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(d.read(), 0);
    drop(outage);

    wait_for("the broker reported up", CATCH_UP, || {
        (d.metric(CONNECTIONS_UP) >= 1.0).then_some(())
    });
    w.wait_for_exports(&expected, CATCH_UP);
    assert_eq!(d.metric(READY), 1.0);
    d.stop();
    assert_eq!(w.exports(), expected);
}
