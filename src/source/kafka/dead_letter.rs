//! Rejected messages copied to the dead-letter topic: the original bytes and key, with
//! the reason and the source position in headers (`ccmetrics.reason`,
//! `ccmetrics.detail`, `ccmetrics.source.topic`, `ccmetrics.source.partition`,
//! `ccmetrics.source.offset`).
//!
//! Delivery is at least once: copies are flushed before the partition's offset is
//! committed, so a crash can repeat a copy but never skip one. A copy that librdkafka
//! finally fails to deliver (after its own retries, `message.timeout.ms`) is counted
//! in `ccmetrics_dead_letter_failures_total` and logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::pipeline::{DeadLetter, DeadLetterSink};

/// How long a commit waits for dead letters to be acknowledged by the broker.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts delivery outcomes (called on librdkafka's polling thread).
#[derive(Default)]
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {
    fn error(&self, error: KafkaError, reason: &str) {
        super::log_client_error("dead-letter producer", &error, reason);
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "a message could not be delivered");
            }
        }
    }
}

pub type DeadLetterProducer = ThreadedProducer<DeliveryCounter>;

/// One partition's handle on the shared dead-letter producer.
pub struct KafkaDeadLetters {
    pub producer: Arc<DeadLetterProducer>,
    pub topic: String,
    /// The consumed topic (the partition and offset come with each letter).
    pub source_topic: String,
    pub source_partition: i32,
}

impl DeadLetterSink for KafkaDeadLetters {
    fn send(&mut self, l: &DeadLetter<'_>) -> std::io::Result<()> {
        let partition = self.source_partition.to_string();
        let offset = l.offset.map(|o| o.to_string()).unwrap_or_default();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ccmetrics.reason",
                value: Some(l.reason.as_str()),
            })
            .insert(Header {
                key: "ccmetrics.detail",
                value: Some(l.detail),
            })
            .insert(Header {
                key: "ccmetrics.source.topic",
                value: Some(&self.source_topic),
            })
            .insert(Header {
                key: "ccmetrics.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "ccmetrics.source.offset",
                value: Some(&offset),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
            .payload(l.message)
            .headers(headers);
        if let Some(k) = l.key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                // The local queue is full: wait for deliveries to make room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(std::io::Error::other(e)),
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(std::io::Error::other)
    }
}
