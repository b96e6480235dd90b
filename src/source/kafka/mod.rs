//! The Kafka source: the production shape of `serve`, and the producer behind
//! `ccmetrics produce`.
//!
//! - [`consumer`]: the consumer-group member. One OS thread polls librdkafka; the
//!   rebalance callback claims, restores, checkpoints and releases partitions.
//! - [`partition`]: what one assigned partition owns (its own engine, offsets, store
//!   ownership) and how it commits.
//! - [`dead_letter`]: rejected messages copied to a dead-letter topic.
//! - [`producer`]: publishing events with the keys the consumer relies on.
//!
//! # Semantics (see ARCHITECTURE.md, invariants)
//!
//! State is per Kafka partition and offsets live with the results: a commit writes
//! the partition's snapshot deltas, its engine checkpoint and its next offset in one
//! fenced store transaction. Kafka's own committed offsets are written afterwards for
//! lag tools only and are never read back.

pub mod consumer;
pub mod dead_letter;
pub mod partition;
pub mod producer;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;

/// The snapshot partition (store key) of a Kafka topic partition.
pub fn partition_name(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}:{partition}")
}

/// The settings every client (consumer, dead-letter producer, `produce`) shares:
/// bootstrap servers and the pass-through properties.
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", k.brokers.trim());
    for (name, value) in k.librdkafka_properties() {
        c.set(name, value);
    }
    c
}

/// The consumer's settings: offsets are ours (stored with the results), so librdkafka
/// neither commits nor stores them by itself.
pub fn consumer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(k);
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "partition.assignment.strategy",
            k.assignment_strategy.as_str(),
        );
    // librdkafka lets the broker hold a fetch up to 500 ms waiting for data; some
    // brokers (tansu) always do. Live figures are the point of `serve`, so wait at most
    // 100 ms (measured: event -> /metrics p50 0.8 s -> 0.4 s, docs/performance.md).
    if c.get("fetch.wait.max.ms").is_none() {
        c.set("fetch.wait.max.ms", "100");
    }
    // Statistics carry each partition's high watermark (for the lag gauge) without
    // a broker round trip per partition.
    if c.get("statistics.interval.ms").is_none() {
        c.set("statistics.interval.ms", "1000");
    }
    c
}

/// How often one kind of Kafka client error is logged while it repeats.
const CLIENT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Which repeats of a message kind to log: the first, then one per interval.
struct RateLimit {
    /// By kind: when it was last logged, and how many came since.
    seen: BTreeMap<String, (Instant, u64)>,
    interval: Duration,
}

impl RateLimit {
    const fn every(interval: Duration) -> RateLimit {
        RateLimit {
            seen: BTreeMap::new(),
            interval,
        }
    }

    /// `Some(n)` when this one is to be logged, with `n` not logged since the last;
    /// `None` when it is one of them.
    fn admit(&mut self, kind: &str, now: Instant) -> Option<u64> {
        match self.seen.get_mut(kind) {
            Some((last, n)) if now.duration_since(*last) < self.interval => {
                *n += 1;
                None
            }
            Some((last, n)) => {
                *last = now;
                Some(std::mem::take(n))
            }
            None => {
                self.seen.insert(kind.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

static CLIENT_ERRORS: Mutex<RateLimit> = Mutex::new(RateLimit::every(CLIENT_ERROR_LOG_INTERVAL));

/// Logs a Kafka client error (from librdkafka's error callback or a poll), at most once
/// per kind (librdkafka's code) every 30 s, with the count of the ones not logged since.
///
/// Why: librdkafka retries connection trouble by itself and reports each failed attempt,
/// once through the error callback of every client (consumer, dead-letter producer) and
/// again as a poll error: with the broker away, several lines a second that say one
/// thing. `ccmetrics_kafka_broker_connections_up` says it on `/metrics`; the log says it when it
/// starts and then twice a minute. librdkafka's own log lines (`librdkafka: FAIL …`,
/// the address and the cause) are left as they are: it rate-limits them itself.
pub fn log_client_error(client: &str, error: &KafkaError, reason: &str) {
    let kind = error
        .rdkafka_error_code()
        .map_or_else(|| error.to_string(), |c| format!("{c:?}"));
    let admitted = CLIENT_ERRORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(&kind, Instant::now());
    if let Some(suppressed) = admitted {
        tracing::warn!(client, error = %error, reason, suppressed, "kafka client error (librdkafka retries; repeats of this kind are logged every 30 s)");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::RateLimit;

    #[test]
    fn a_repeated_error_is_logged_once_per_interval_with_the_count_since() {
        let mut r = RateLimit::every(Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(r.admit("AllBrokersDown", at(0)), Some(0));
        assert_eq!(r.admit("AllBrokersDown", at(1)), None);
        assert_eq!(r.admit("AllBrokersDown", at(29)), None);
        // Another kind is not held back by the first.
        assert_eq!(r.admit("BrokerTransportFailure", at(2)), Some(0));
        assert_eq!(r.admit("AllBrokersDown", at(30)), Some(2));
        assert_eq!(r.admit("AllBrokersDown", at(31)), None);
        assert_eq!(r.admit("AllBrokersDown", at(90)), Some(1));
        assert_eq!(r.admit("BrokerTransportFailure", at(90)), Some(0));
    }
}
