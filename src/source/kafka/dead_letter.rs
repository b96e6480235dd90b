//! Rejected messages copied to the dead-letter topic: the original bytes and key, with
//! the reason and the source position in headers (`ccmetrics.reason`,
//! `ccmetrics.detail`, `ccmetrics.source.topic`, `ccmetrics.source.partition`,
//! `ccmetrics.source.offset`; `ccmetrics.dropped` when the bytes were too large for
//! the topic and the copy went without them).
//!
//! Delivery is at least once: a partition's commit is refused until the broker has
//! acknowledged every copy it sent, so a crash can repeat a copy but never skip one.
//! A copy that librdkafka finally fails to deliver (after its own retries,
//! `message.timeout.ms`) is counted in `ccmetrics_dead_letter_failures_total`, logged,
//! and sent again (docs/reliability.md, "Dead letters the broker does not take").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::pipeline::{DeadLetter, DeadLetterSink};

/// How long a commit waits for the broker to acknowledge copies sent since the last
/// commit. A healthy broker answers in milliseconds. The wait blocks the polling
/// thread (every owned partition), so a copy is waited for once at most: if it is
/// still unacknowledged then, later commits look without waiting, and during an
/// outage a commit round costs nothing instead of this long per partition.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

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

/// Which copy a delivery report is about, and whose book to enter it in.
pub struct Ticket {
    book: Arc<Book>,
    id: u64,
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = Box<Ticket>;
    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let error = match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                None
            }
            // Purged by the producer's shutdown: not the broker's refusal. The
            // partition's commit was refused, so its next owner copies them again.
            Err((
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight,
                ),
                _,
            )) => {
                tracing::debug!("an unacknowledged dead letter dropped at shutdown");
                Some(KafkaError::Canceled)
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "a dead letter could not be delivered; it is sent again, and its partition commits only once it is delivered");
                Some(e.clone())
            }
        };
        ticket.book.settle(ticket.id, error);
    }
}

pub type DeadLetterProducer = ThreadedProducer<DeliveryCounter>;

/// One partition's delivery reports, written by librdkafka's polling thread and read
/// by the partition's commit.
#[derive(Default)]
struct Book {
    state: Mutex<BookState>,
    settled: Condvar,
}

#[derive(Default)]
struct BookState {
    in_flight: usize,
    acknowledged: Vec<u64>,
    /// Copies to send again, with why they failed.
    failed: Vec<(u64, KafkaError)>,
}

impl Book {
    fn lock(&self) -> MutexGuard<'_, BookState> {
        // A panic elsewhere cannot leave the counts half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, id: u64, error: Option<KafkaError>) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        match error {
            None => s.acknowledged.push(id),
            Some(e) => s.failed.push((id, e)),
        }
        drop(s);
        self.settled.notify_all();
    }

    /// Wait until nothing is in flight or `deadline`, then take the reports.
    fn take(&self, deadline: Option<Instant>) -> BookState {
        let mut s = self.lock();
        if let Some(deadline) = deadline {
            let wait = deadline.saturating_duration_since(Instant::now());
            s = match self
                .settled
                .wait_timeout_while(s, wait, |s| s.in_flight > 0)
            {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        BookState {
            in_flight: s.in_flight,
            acknowledged: std::mem::take(&mut s.acknowledged),
            failed: std::mem::take(&mut s.failed),
        }
    }
}

/// A copy as sent, kept until the broker acknowledges it (to send it again).
struct Copy {
    message: Vec<u8>,
    key: Option<Vec<u8>>,
    reason: &'static str,
    detail: String,
    offset: String,
    /// The original bytes could never be delivered (too large for the topic): the
    /// copy goes without them, saying so in `ccmetrics.dropped`.
    dropped: Option<String>,
}

/// Errors no retry can cure: the message itself is refused.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// One partition's handle on the shared dead-letter producer.
///
/// Every copy is kept until the broker acknowledges it. One that librdkafka finally
/// fails to deliver (after its retries, `message.timeout.ms`: the broker away that
/// long, or the topic missing) is sent again, and the partition's commit is refused
/// while any copy is unacknowledged: the offset of a rejected message is never
/// committed before its copy is safe, however long the broker is away.
pub struct KafkaDeadLetters {
    producer: Arc<DeadLetterProducer>,
    topic: String,
    /// The consumed topic (the partition and offset come with each letter).
    source_topic: String,
    source_partition: String,
    book: Arc<Book>,
    copies: BTreeMap<u64, Copy>,
    next_id: u64,
    /// Copies up to this id have been waited for once.
    waited_for: u64,
}

impl KafkaDeadLetters {
    pub fn new(
        producer: Arc<DeadLetterProducer>,
        topic: String,
        source_topic: String,
        source_partition: i32,
    ) -> KafkaDeadLetters {
        KafkaDeadLetters {
            producer,
            topic,
            source_topic,
            source_partition: source_partition.to_string(),
            book: Arc::default(),
            copies: BTreeMap::new(),
            next_id: 0,
            waited_for: 0,
        }
    }

    /// Hand one copy to librdkafka (waiting while its local queue is full); one it
    /// refuses at once is reported as a failed delivery, to be sent again.
    fn enqueue(&mut self, id: u64, copy: &Copy) {
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "ccmetrics.reason",
                value: Some(copy.reason),
            })
            .insert(Header {
                key: "ccmetrics.detail",
                value: Some(&copy.detail),
            })
            .insert(Header {
                key: "ccmetrics.source.topic",
                value: Some(&self.source_topic),
            })
            .insert(Header {
                key: "ccmetrics.source.partition",
                value: Some(&self.source_partition),
            })
            .insert(Header {
                key: "ccmetrics.source.offset",
                value: Some(&copy.offset),
            });
        if let Some(why) = &copy.dropped {
            headers = headers.insert(Header {
                key: "ccmetrics.dropped",
                value: Some(why),
            });
        }
        let payload: &[u8] = if copy.dropped.is_some() {
            &[]
        } else {
            &copy.message
        };
        let ticket = Box::new(Ticket {
            book: self.book.clone(),
            id,
        });
        let mut record: BaseRecord<'_, [u8], [u8], Box<Ticket>> =
            BaseRecord::with_opaque_to(&self.topic, ticket)
                .payload(payload)
                .headers(headers);
        if let Some(k) = &copy.key {
            record = record.key(&k[..]);
        }
        // Counted before librdkafka can report on it.
        self.book.lock().in_flight += 1;
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                // The local queue is full: wait for deliveries to make room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, "a dead letter could not be queued; it is sent again, and its partition commits only once it is delivered");
                    self.producer
                        .context()
                        .failed
                        .fetch_add(1, Ordering::Relaxed);
                    self.book.settle(id, Some(e));
                    return;
                }
            }
        }
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    fn send(&mut self, l: &DeadLetter<'_>) -> std::io::Result<()> {
        let copy = Copy {
            message: l.message.to_vec(),
            key: l.key.map(<[u8]>::to_vec),
            reason: l.reason.as_str(),
            detail: l.detail.to_owned(),
            offset: l.offset.map(|o| o.to_string()).unwrap_or_default(),
            dropped: None,
        };
        self.next_id += 1;
        let id = self.next_id;
        self.enqueue(id, &copy);
        self.copies.insert(id, copy);
        Ok(())
    }

    fn pending(&self) -> usize {
        self.copies.len()
    }

    /// Ok once every copy sent so far is acknowledged by the broker; copies that
    /// failed are sent again, and the error says how many are still unacknowledged.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.copies.is_empty() {
            return Ok(());
        }
        let fresh = self.next_id > self.waited_for;
        self.waited_for = self.next_id;
        let report = self.book.take(fresh.then(|| Instant::now() + FLUSH_WAIT));
        for id in &report.acknowledged {
            self.copies.remove(id);
        }
        let mut last_error = None;
        for (id, e) in report.failed {
            let Some(mut copy) = self.copies.remove(&id) else {
                continue;
            };
            if permanent(&e) {
                if copy.dropped.is_some() {
                    // Even without its bytes: nothing left to send.
                    tracing::error!(error = %e, offset = %copy.offset, "a dead letter cannot be delivered even without the message; dropped");
                    continue;
                }
                tracing::warn!(error = %e, offset = %copy.offset, bytes = copy.message.len(), "a dead letter is too large for its topic; sent without the message");
                copy.dropped = Some(format!("{} bytes: {e}", copy.message.len()));
                copy.message = Vec::new();
            }
            last_error = Some(e);
            self.next_id += 1;
            let again = self.next_id;
            // Not waited for: the broker just refused it.
            self.waited_for = self.next_id;
            self.enqueue(again, &copy);
            self.copies.insert(again, copy);
        }
        if self.copies.is_empty() {
            return Ok(());
        }
        let cause = last_error
            .map(|e| format!(" (last delivery error: {e}; sent again)"))
            .unwrap_or_default();
        Err(std::io::Error::other(format!(
            "{} dead letters to {:?} not yet acknowledged by the broker{cause}; the partition commits once they are",
            self.copies.len(),
            self.topic
        )))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::event::RejectReason;

    fn letter(message: &[u8], offset: i64) -> DeadLetter<'_> {
        DeadLetter {
            reason: RejectReason::InvalidJson,
            detail: "not JSON",
            partition: "events/0",
            offset: Some(offset),
            key: Some(b"k"),
            message,
        }
    }

    /// A reader of the mock cluster's `dlq` topic from its start.
    fn reader(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    ) -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["dlq"]).unwrap();
        consumer
    }

    fn header(m: &impl Message, name: &str) -> Option<String> {
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Until `f` is true or `secs` pass (then panics naming `what`).
    fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker away longer than `message.timeout.ms`: librdkafka gives the copy
    /// up, the sink sends it again and refuses the commit until the broker has it.
    /// Before, the flush found librdkafka's queue empty and the commit went ahead
    /// without the copy.
    #[test]
    fn a_copy_the_broker_never_took_is_sent_again_and_holds_the_commit() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("dlq", 1, 1).unwrap();
        let producer: DeadLetterProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "1000")
            .create_with_context(DeliveryCounter::default())
            .unwrap();
        let producer = Arc::new(producer);
        let mut sink = KafkaDeadLetters::new(producer.clone(), "dlq".into(), "events".into(), 0);
        let ctx = producer.context();

        sink.send(&letter(b"first", 10)).unwrap();
        sink.flush().unwrap();
        assert_eq!(ctx.delivered.load(Ordering::Relaxed), 1);
        assert_eq!(sink.pending(), 0);

        cluster.broker_down(1).unwrap();
        sink.send(&letter(b"second", 11)).unwrap();
        assert_eq!(sink.pending(), 1);
        wait_until("librdkafka to give the copy up", 30, || {
            ctx.failed.load(Ordering::Relaxed) >= 1
        });
        let e = sink.flush().unwrap_err().to_string();
        assert!(e.contains("1 dead letters"), "{e}");
        assert!(e.contains("sent again"), "{e}");
        assert_eq!(sink.pending(), 1);
        // Waited for once already: later refusals do not block the polling thread.
        let t = Instant::now();
        assert!(sink.flush().is_err());
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

        cluster.broker_up(1).unwrap();
        wait_until("the commit to be allowed", 60, || sink.flush().is_ok());
        assert_eq!(sink.pending(), 0);

        // Both copies are in the topic, with their source offsets.
        let consumer = reader(&cluster);
        let mut seen = Vec::new();
        wait_until("both copies in the topic", 30, || {
            while let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let offset = header(&m, "ccmetrics.source.offset");
                seen.push((m.payload().unwrap_or_default().to_vec(), offset));
            }
            seen.len() >= 2
        });
        assert!(
            seen.contains(&(b"first".to_vec(), Some("10".into()))),
            "{seen:?}"
        );
        assert!(
            seen.contains(&(b"second".to_vec(), Some("11".into()))),
            "{seen:?}"
        );
    }

    /// A message too large for the topic is never accepted, however often it is sent:
    /// the copy goes without its bytes, saying so, instead of holding the partition's
    /// commit for good.
    #[test]
    fn a_copy_too_large_for_the_topic_goes_without_the_message() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("dlq", 1, 1).unwrap();
        let producer: DeadLetterProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("message.max.bytes", "1000")
            .create_with_context(DeliveryCounter::default())
            .unwrap();
        let producer = Arc::new(producer);
        let mut sink = KafkaDeadLetters::new(producer.clone(), "dlq".into(), "events".into(), 0);
        let big = vec![b'z'; 5_000];
        sink.send(&letter(&big, 42)).unwrap();
        wait_until("the commit to be allowed", 30, || sink.flush().is_ok());
        assert_eq!(sink.pending(), 0);
        assert_eq!(producer.context().failed.load(Ordering::Relaxed), 1);

        let consumer = reader(&cluster);
        let mut got = None;
        wait_until("the copy in the topic", 30, || {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                got = Some((
                    m.payload().map(<[u8]>::len),
                    header(&m, "ccmetrics.dropped"),
                    header(&m, "ccmetrics.source.offset"),
                ));
            }
            got.is_some()
        });
        let (len, dropped, offset) = got.unwrap();
        assert_eq!(len.unwrap_or(0), 0);
        let dropped = dropped.unwrap();
        assert!(dropped.starts_with("5000 bytes: "), "{dropped}");
        assert_eq!(offset.as_deref(), Some("42"));
    }
}
