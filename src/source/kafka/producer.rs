//! Publishing events with the keys the consumer relies on (`ccmetrics produce`).
//!
//! **Keying contract.** A contact's events and a customer's repeat contacts must land
//! in one partition: each partition has its own engine, so a contact split across
//! partitions would be joined twice, and FCR (which looks for the same customer's next
//! contact) is only exact when a customer's contacts share a partition. So every
//! contact event is keyed by its contact's `customer_id` — also the events that do not
//! carry it themselves (only `contact.offered` must), looked up from the contact —
//! falling back to `contact_id` when the customer is unknown; `agent.state` events are
//! keyed by `agent_id`. Messages that do not decode are sent without a key (they are
//! dead-lettered by the consumer wherever they land).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::config::KafkaConfig;
use crate::event::Decoder;

/// Remembers each contact's customer so every event of the contact gets its key.
#[derive(Default)]
pub struct Keyer {
    customer_of: HashMap<String, String>,
}

impl Keyer {
    /// Record the contact → customer pair a message carries, if any (first pass over a
    /// file, so events before their contact's `contact.offered` are keyed right too).
    pub fn learn(&mut self, decoder: &Decoder, bytes: &[u8]) {
        if let Ok(ev) = decoder.decode(bytes)
            && let (Some(contact), Some(customer)) = (ev.contact_id, ev.customer_id)
        {
            self.customer_of
                .entry(contact.into_owned())
                .or_insert_with(|| customer.into_owned());
        }
    }

    /// The partitioning key of a message (see the module docs); learns as it goes.
    pub fn key(&mut self, decoder: &Decoder, bytes: &[u8]) -> Option<String> {
        let ev = decoder.decode(bytes).ok()?;
        match (ev.contact_id, ev.customer_id, ev.agent_id) {
            (Some(contact), Some(customer), _) => Some(
                self.customer_of
                    .entry(contact.into_owned())
                    .or_insert_with(|| customer.into_owned())
                    .clone(),
            ),
            (Some(contact), None, _) => Some(
                self.customer_of
                    .get(contact.as_ref())
                    .cloned()
                    .unwrap_or_else(|| contact.into_owned()),
            ),
            (None, _, Some(agent)) => Some(agent.into_owned()),
            (None, _, None) => None,
        }
    }
}

/// Counts delivery outcomes (called on librdkafka's polling thread).
#[derive(Default)]
pub struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {
    fn error(&self, error: KafkaError, reason: &str) {
        super::log_client_error("producer", &error, reason);
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

/// A producer to one topic that counts deliveries.
pub struct Publisher {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    sent: u64,
}

/// What a [`Publisher`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishReport {
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
}

impl Publisher {
    /// `extra` properties go over the configured ones (e.g. `batch.num.messages=1`).
    pub fn new(
        k: &KafkaConfig,
        topic: &str,
        extra: &[(String, String)],
    ) -> Result<Publisher, KafkaError> {
        let mut c = super::client_config(k);
        // No duplicates from producer retries, in order per partition.
        c.set("enable.idempotence", "true");
        for (name, value) in extra {
            c.set(name, value);
        }
        Ok(Publisher {
            producer: c.create_with_context(DeliveryCounter::default())?,
            topic: topic.to_owned(),
            sent: 0,
        })
    }

    pub fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Wait (up to `timeout`) until every message is delivered or failed.
    pub fn finish(self, timeout: Duration) -> Result<PublishReport, KafkaError> {
        self.producer.flush(timeout)?;
        let ctx = self.producer.context();
        Ok(PublishReport {
            sent: self.sent,
            delivered: ctx.delivered.load(Ordering::Relaxed),
            failed: ctx.failed.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_events_are_keyed_by_their_customer() {
        let d = Decoder::default();
        let offered = br#"{"event_id":"e1","type":"contact.offered","ts":1793577600000,"contact_id":"c1","channel":"voice","queue":"q","customer_id":"cust-9"}"#;
        let answered = br#"{"event_id":"e2","type":"contact.answered","ts":1793577601000,"contact_id":"c1","channel":"voice","queue":"q","agent_id":"a1","team":"t"}"#;
        let other = br#"{"event_id":"e3","type":"contact.answered","ts":1793577601000,"contact_id":"c2","channel":"voice","queue":"q","agent_id":"a1","team":"t"}"#;
        let state = br#"{"event_id":"e4","type":"agent.state","ts":1793577601000,"agent_id":"a1","team":"t","state":"available"}"#;
        // Answered before offered in the file: the first pass learns the customer.
        let mut k = Keyer::default();
        k.learn(&d, answered);
        k.learn(&d, offered);
        assert_eq!(k.key(&d, answered).as_deref(), Some("cust-9"));
        assert_eq!(k.key(&d, offered).as_deref(), Some("cust-9"));
        assert_eq!(k.key(&d, other).as_deref(), Some("c2"));
        assert_eq!(k.key(&d, state).as_deref(), Some("a1"));
        assert_eq!(k.key(&d, b"not json"), None);
    }
}
