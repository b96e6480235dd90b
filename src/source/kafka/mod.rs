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

use rdkafka::ClientConfig;

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
