//! The consumer-group member behind `serve` when `[kafka] brokers` is set.
//!
//! One OS thread owns the librdkafka consumer and polls it; the rebalance callback
//! runs inside `poll` on that same thread. So messages, rebalances and the engine side
//! of commits are strictly sequential per process. The store side of a periodic commit
//! runs on a committer task: the polling thread prepares each partition's commit
//! (deltas + checkpoint bytes + next offset, taken at one instant) and goes on
//! consuming while the transaction runs, so a slow store never stalls the live
//! figures. A partition has at most one commit in flight; rebalances and shutdown wait
//! for it before they commit synchronously (`Handle::block_on`).
//!
//! Partition lifecycle:
//! - **assign**: claim the snapshot partition in the store (bumping its owner epoch
//!   fences out the previous owner), restore the engine from the claimed checkpoint,
//!   and hand librdkafka the stored offset in the assignment itself (no second assign,
//!   no seek race). A partition never committed starts at the beginning of the log.
//! - **every `commit_interval`** (a commit round): per partition, idle watermark
//!   advance, then deltas + checkpoint + next offset in one fenced transaction, on the
//!   committer task; then Kafka's committed offset, for lag tools only. The next round
//!   starts `commit_interval` after the last one completed (longer while it fails).
//! - **revoke**: one last commit per revoked partition (bounded), then release. When
//!   the assignment was *lost* (session timeout), nothing is written: another member
//!   may already own the partition, and the fence would refuse the write anyway.
//! - **shutdown**: every partition commits its open windows too, then the consumer
//!   leaves the group; `Err(Uncommitted)` when one could not (the caller bounds all of
//!   it by `[serve] shutdown_timeout`).
//! - **backpressure**: with `[kafka] max_pending_events` messages read but not
//!   committed (the store is away), every owned partition is paused until commits
//!   bring that to half; polling goes on meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, Statistics, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::dead_letter::{DeadLetterProducer, DeliveryCounter, KafkaDeadLetters};
use super::partition::{Part, Position};
use crate::config::{AssignmentStrategy, Config};
use crate::engine::spill::Spill;
use crate::engine::{EngineConfig, Scope};
use crate::event::Decoder;
use crate::http::{AGENTS_EVERY, AppState, LiveSnapshot, PartitionStatus};
use crate::pipeline::{CommitDone, CommitError, CommitJob};
use crate::store::spill::StoreSpill;
use crate::store::{Store, StoreError};

/// How often a partition's commit held by its dead letters is logged.
const HELD_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// How long one revoked partition may retry its last commit before it is released
/// anyway (its next owner re-reads whatever was not committed).
const REVOKE_COMMIT_BUDGET: Duration = Duration::from_secs(10);
/// The live view is republished this often while input flows (event → /metrics
/// latency is at most this plus the scrape).
const PUBLISH_EVERY: Duration = Duration::from_millis(150);
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// After a failed commit round the next one waits twice as long as the last, up to
/// this: a store that is down costs one bounded attempt (the pool's acquire timeout)
/// per backoff step instead of stalling consumption on every `commit_interval`.
const MAX_COMMIT_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("cannot create the Kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("cannot register Kafka metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Fatal(String),
    #[error(
        "not every partition committed at shutdown; their next owner re-reads the uncommitted input"
    )]
    Uncommitted,
}

/// Operational metrics of the Kafka source (registered in the `/metrics` registry).
pub struct KafkaMetrics {
    lag: IntGaugeVec,
    position: IntGaugeVec,
    committed: IntGaugeVec,
    assigned: IntGauge,
    rebalances: IntCounterVec,
    gaps: IntCounter,
    commits: IntCounterVec,
    commit_seconds: Histogram,
    /// Time the polling thread spends away from consuming, by task.
    busy_seconds: HistogramVec,
    dead_letters: IntGauge,
    dead_letter_failures: IntGauge,
    dead_letters_pending: IntGauge,
    paused: IntGauge,
    pending: IntGauge,
    connections_up: IntGauge,
}

impl KafkaMetrics {
    pub fn register(r: &prometheus::Registry) -> Result<KafkaMetrics, prometheus::Error> {
        let m = KafkaMetrics {
            lag: IntGaugeVec::new(
                Opts::new(
                    "ccmetrics_kafka_consumer_lag",
                    "Offsets not yet processed: high watermark - next offset",
                ),
                &["topic", "partition"],
            )?,
            position: IntGaugeVec::new(
                Opts::new(
                    "ccmetrics_kafka_position",
                    "Next offset to process: every message before it is in the live figures",
                ),
                &["topic", "partition"],
            )?,
            committed: IntGaugeVec::new(
                Opts::new(
                    "ccmetrics_kafka_committed_offset",
                    "Next offset stored with the results (where a restart resumes)",
                ),
                &["topic", "partition"],
            )?,
            assigned: IntGauge::new(
                "ccmetrics_kafka_partitions_assigned",
                "Partitions this instance owns",
            )?,
            rebalances: IntCounterVec::new(
                Opts::new(
                    "ccmetrics_kafka_rebalances_total",
                    "Rebalance callbacks by kind: assign, revoke, lost, error",
                ),
                &["kind"],
            )?,
            gaps: IntCounter::new(
                "ccmetrics_offset_gaps_total",
                "Times the next message was not at the expected offset (skipped offsets)",
            )?,
            commits: IntCounterVec::new(
                Opts::new(
                    "ccmetrics_store_commits_total",
                    "Partition commits (deltas + checkpoint + offset) by result: ok, error, fenced",
                ),
                &["result"],
            )?,
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "ccmetrics_store_commit_duration_seconds",
                    "Duration of one partition commit",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            busy_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "ccmetrics_kafka_poll_thread_busy_seconds",
                    "Time spent publishing live figures and preparing commits, by task: publish \
                     (capture of the partitions' views) and prepare (flush + checkpoint of a commit \
                     round) on the polling thread, instead of consuming; merge (of the views, then \
                     publish) on the publisher thread",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
                &["task"],
            )?,
            dead_letters: IntGauge::new(
                "ccmetrics_dead_letters_total",
                "Rejected messages delivered to the dead-letter topic",
            )?,
            dead_letter_failures: IntGauge::new(
                "ccmetrics_dead_letter_failures_total",
                "Dead-letter deliveries that finally failed (after librdkafka's retries, \
                 message.timeout.ms); each copy is sent again",
            )?,
            dead_letters_pending: IntGauge::new(
                "ccmetrics_dead_letters_pending",
                "Dead letters sent and not yet acknowledged by the broker; the partitions that \
                 rejected them do not commit until they are",
            )?,
            paused: IntGauge::new(
                "ccmetrics_kafka_consumer_paused",
                "1 while consumption is paused because [kafka] max_pending_events are read but not committed (backpressure), else 0",
            )?,
            pending: IntGauge::new(
                "ccmetrics_kafka_pending_events",
                "Messages read but not yet committed to the store, over the owned partitions",
            )?,
            connections_up: IntGauge::new(
                "ccmetrics_kafka_broker_connections_up",
                "The consumer's working connections to brokers (librdkafka state UP: the \
                 bootstrap addresses, the brokers by node id, the group coordinator), as of its \
                 last statistics (every second); 0 while no broker can be reached, when the lag \
                 and the live figures stand still",
            )?,
        };
        r.register(Box::new(m.lag.clone()))?;
        r.register(Box::new(m.position.clone()))?;
        r.register(Box::new(m.committed.clone()))?;
        r.register(Box::new(m.assigned.clone()))?;
        r.register(Box::new(m.rebalances.clone()))?;
        r.register(Box::new(m.gaps.clone()))?;
        r.register(Box::new(m.commits.clone()))?;
        r.register(Box::new(m.commit_seconds.clone()))?;
        r.register(Box::new(m.busy_seconds.clone()))?;
        r.register(Box::new(m.dead_letters.clone()))?;
        r.register(Box::new(m.dead_letter_failures.clone()))?;
        r.register(Box::new(m.dead_letters_pending.clone()))?;
        r.register(Box::new(m.paused.clone()))?;
        r.register(Box::new(m.pending.clone()))?;
        r.register(Box::new(m.connections_up.clone()))?;
        for kind in ["assign", "revoke", "lost", "error"] {
            m.rebalances.with_label_values(&[kind]);
        }
        for result in ["ok", "error", "fenced"] {
            m.commits.with_label_values(&[result]);
        }
        for task in ["publish", "merge", "prepare"] {
            m.busy_seconds.with_label_values(&[task]);
        }
        Ok(m)
    }
}

/// Everything the polling thread and the rebalance callback share.
pub struct Shared {
    /// Commits held by dead letters, logged per partition at most every 30 s.
    held_logs: Mutex<super::RateLimit>,
    rt: Handle,
    store: Store,
    owner: String,
    engine_cfg: EngineConfig,
    /// Spill settled contacts to the store from the start (`[windows] spill`).
    spill: bool,
    /// Otherwise, past how many contacts a partition starts spilling
    /// (`[windows] spill_above`), if ever.
    spill_above: Option<usize>,
    decoder: Decoder,
    dead_letters: Option<(Arc<DeadLetterProducer>, String)>,
    idle: Duration,
    cooperative: bool,
    parts: Mutex<BTreeMap<(String, i32), Part>>,
    high: Mutex<HashMap<(String, i32), i64>>,
    /// Prepared commits to the committer task, and their outcomes back.
    jobs: mpsc::UnboundedSender<Job>,
    finished: Mutex<std::sync::mpsc::Receiver<Finished>>,
    round: Mutex<Round>,
    /// Offsets stored with results since Kafka's committed offsets were last updated.
    kafka_offsets: Mutex<Vec<(String, i32, i64)>>,
    metrics: KafkaMetrics,
    state: Arc<AppState>,
    stop: Arc<AtomicBool>,
    fatal: Mutex<Option<String>>,
}

type PartKey = (String, i32);

/// A prepared commit on its way to the committer task.
struct Job {
    round: u64,
    key: PartKey,
    job: CommitJob,
}

/// A commit's outcome on its way back to the polling thread.
struct Finished {
    round: u64,
    key: PartKey,
    done: CommitDone,
    took: Duration,
}

/// The commit round in flight (at most one at a time).
#[derive(Debug, Default)]
struct Round {
    id: u64,
    /// Commits sent and not back yet.
    outstanding: usize,
    /// No commit of the round has failed so far.
    ok: bool,
    /// Set when the round completes (all commits back): whether all of them worked.
    /// Taken by the polling loop to schedule the next round.
    completed: Option<bool>,
}

/// The store side of periodic commits, one at a time in the order they were
/// prepared. After a transient store error (connection refused or lost) the rest of
/// that round is handed back unattempted: every other partition would wait for the
/// same unreachable server (one pool acquire timeout each).
async fn committer(
    store: Store,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    finished: std::sync::mpsc::Sender<Finished>,
) {
    let mut failed_round = None;
    while let Some(Job { round, key, job }) = jobs.recv().await {
        let started = Instant::now();
        let done = if failed_round == Some(round) {
            job.skip(CommitError::Deferred)
        } else {
            job.run(&store).await
        };
        if let Err(CommitError::Store(e)) = &done.result
            && e.is_transient()
        {
            failed_round = Some(round);
        }
        let took = started.elapsed();
        if finished
            .send(Finished {
                round,
                key,
                done,
                took,
            })
            .is_err()
        {
            break; // the polling thread is gone
        }
    }
}

/// The consumer's working connections to brokers: every entry of librdkafka's but its
/// internal one (node id -1, source "internal"), which is no connection.
///
/// Why connections and not brokers: which entries are connected depends on what the
/// consumer needs. librdkafka connects only to the brokers leading its partitions
/// (`enable.sparse.connections`), holds the group coordinator on a connection of its
/// own (a "logical" entry), and may ask for metadata on a bootstrap address (node id
/// -1). A member with no partitions can be healthy with every by-node-id entry idle,
/// so counting those alone would say "unreachable" of it; with every connection
/// counted, 0 means what the alert needs: nothing of the cluster answers.
fn connections_up(s: &Statistics) -> i64 {
    let up = s
        .brokers
        .values()
        .filter(|b| b.source != "internal" && b.state == "UP")
        .count();
    i64::try_from(up).unwrap_or(i64::MAX)
}

/// The consumer context: routes librdkafka's callbacks to [`Shared`].
pub struct Ctx(Arc<Shared>);

impl ClientContext for Ctx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::log_client_error("consumer", &error, reason);
    }

    fn stats(&self, s: Statistics) {
        let up = connections_up(&s);
        self.0.metrics.connections_up.set(up);
        // The floor says its figures stand still; the time of the first statistics
        // without a broker (within a second of the cut) is when it started.
        let state = &self.0.state;
        if up > 0 {
            state.set_input_down(None);
        } else if state.input_down_since().is_none() {
            state.set_input_down(Some(now_ms()));
        }
        let mut high = lock(&self.0.high);
        for (topic, t) in s.topics {
            for (p, ps) in t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; -1001 an unknown offset.
                if p >= 0 && ps.hi_offset >= 0 {
                    high.insert((topic.clone(), p), ps.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let sh = &self.0;
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                sh.metrics.rebalances.with_label_values(&["assign"]).inc();
                sh.assign(tpl);
                if sh.cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let kind = if lost { "lost" } else { "revoke" };
                sh.metrics.rebalances.with_label_values(&[kind]).inc();
                sh.revoke(tpl, lost);
                if sh.cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                sh.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::error!(error = ?other, "rebalance error; releasing every partition unwritten");
                sh.revoke(tpl, true);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot apply the new assignment");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would already have ended the consumer thread;
    // the data itself stays consistent, so recover it rather than propagate.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn fail(&self, msg: String) {
        tracing::error!("{msg}");
        lock(&self.fatal).get_or_insert(msg);
        self.stop.store(true, Ordering::Release);
    }

    /// Claim and restore every newly assigned partition and put its stored offset into
    /// the assignment.
    fn assign(&self, tpl: &mut TopicPartitionList) {
        self.state.set_ready(false);
        let wanted: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        for (topic, p) in wanted {
            let name = super::partition_name(&topic, p);
            let Some(claim) = self.retry(&name, "claim", || self.store.claim(&name, &self.owner))
            else {
                return; // stopping
            };
            let mut part = match Part::restore(
                &topic,
                p,
                &claim,
                self.engine_cfg.clone(),
                self.decoder.clone(),
            ) {
                Ok(part) => part,
                Err(e) => {
                    self.fail(format!("cannot restore partition {name}: {e}"));
                    return;
                }
            };
            // The spill as committed with the claimed checkpoint (its filters are built
            // from the partition's rows). Read whatever the settings: a partition that
            // spilled under an earlier owner or configuration has some of its contacts
            // in the store, not in its checkpoint, and they must be found there.
            let Some(spill) = self.retry(&name, "read spilled contacts", || {
                let (store, rt, name) = (self.store.clone(), self.rt.clone(), name.clone());
                async move {
                    tokio::task::spawn_blocking(move || StoreSpill::open(store, rt, &name))
                        .await
                        .unwrap_or_else(|e| {
                            Err(StoreError::Corrupt {
                                what: format!("spill reader stopped: {e}"),
                            })
                        })
                }
            }) else {
                return; // stopping
            };
            let held = spill.len();
            if self.spill || held > 0 {
                // Spilling from the start, or it started under an earlier owner:
                // from the first event on.
                if !self.spill && self.spill_above.is_none() {
                    tracing::warn!(partition = %name, spilled = held, "the partition has contacts spilled to the store under earlier settings; it goes on spilling although [windows] spill_above is never");
                }
                part.pipe.engine.set_spill(Box::new(spill));
            } else if let Some(limit) = self.spill_above {
                // Not spilling yet: the spill waits for the partition to hold more
                // than the limit (`Part::prepare`).
                part.spill_later = Some((limit, Box::new(spill)));
            }
            let offset = claim.next_offset.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(&topic, p, offset) {
                self.fail(format!("cannot set the start offset of {name}: {e}"));
                return;
            }
            if let Some((producer, dlq)) = &self.dead_letters {
                part.pipe.set_dead_letters(Box::new(KafkaDeadLetters::new(
                    producer.clone(),
                    dlq.clone(),
                    topic.clone(),
                    p,
                )));
            }
            tracing::info!(partition = %name, epoch = claim.epoch, offset = ?claim.next_offset, restored = claim.state.is_some(), "partition assigned");
            lock(&self.parts).insert((topic, p), part);
        }
        let n = lock(&self.parts).len();
        self.metrics.assigned.set(n as i64);
        self.state.set_ready(n > 0);
    }

    /// Retry a store call with backoff until it works or the daemon stops.
    fn retry<T, F, Fut>(&self, name: &str, what: &str, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.rt.block_on(f()) {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::warn!(partition = %name, error = %e, "store {what} failed; retrying in {delay:?}");
                    if self.stopping() {
                        return None;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Release revoked partitions: a last commit each (unless the assignment was lost).
    fn revoke(&self, tpl: &TopicPartitionList, lost: bool) {
        self.state.set_ready(false);
        if !lost {
            // A commit in flight carries the sequence number the last commit needs.
            self.collect(Some(Instant::now() + REVOKE_COMMIT_BUDGET));
        }
        for e in tpl.elements() {
            let key = (e.topic().to_owned(), e.partition());
            let Some(mut part) = lock(&self.parts).remove(&key) else {
                continue;
            };
            self.forget_labels(&part);
            if lost {
                tracing::warn!(partition = %part.name(), "partition lost; its uncommitted work is dropped (the next owner re-reads it)");
                continue;
            }
            if part.in_flight {
                // Its commit may still land; a second one with the same sequence number
                // must not race it. The next owner's claim fences out whichever is late.
                tracing::warn!(partition = %part.name(), "releasing a partition whose commit is still in flight; the next owner re-reads what it did not commit");
                continue;
            }
            let started = Instant::now();
            loop {
                match self.commit_part(&mut part, false) {
                    Ok(_) => break,
                    Err(CommitError::Store(StoreError::Fenced { .. })) => break,
                    Err(_) if started.elapsed() < REVOKE_COMMIT_BUDGET && !self.stopping() => {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => {
                        tracing::warn!(partition = %part.name(), error = %e, "releasing a partition without its last commit; the next owner re-reads it");
                        break;
                    }
                }
            }
            tracing::info!(partition = %part.name(), "partition released");
        }
        self.metrics.assigned.set(lock(&self.parts).len() as i64);
    }

    fn forget_labels(&self, part: &Part) {
        let p = part.partition.to_string();
        let _ = self.metrics.lag.remove_label_values(&[&part.topic, &p]);
        let _ = self
            .metrics
            .position
            .remove_label_values(&[&part.topic, &p]);
        let _ = self
            .metrics
            .committed
            .remove_label_values(&[&part.topic, &p]);
    }

    /// One partition's commit, synchronously (rebalance and shutdown), with metrics
    /// and logging.
    fn commit_part(&self, part: &mut Part, open: bool) -> Result<bool, CommitError> {
        let started = Instant::now();
        let r = self.rt.block_on(part.commit(&self.store, open));
        if !matches!(r, Ok(false)) {
            self.record(part, r.as_ref().map(|_| ()), started.elapsed());
        }
        r
    }

    /// Metrics and logging of one partition commit's outcome.
    fn record(&self, part: &Part, r: Result<(), &CommitError>, took: Duration) {
        match r {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["ok"]).inc();
                self.metrics.commit_seconds.observe(took.as_secs_f64());
                if let Some(o) = part.committed_offset {
                    self.metrics
                        .committed
                        .with_label_values(&[&part.topic, &part.partition.to_string()])
                        .set(o);
                    lock(&self.kafka_offsets).push((part.topic.clone(), part.partition, o));
                }
            }
            Err(CommitError::Store(StoreError::Fenced { .. })) => {
                self.metrics.commits.with_label_values(&["fenced"]).inc();
            }
            // Not attempted: the failure that caused it was counted and logged.
            Err(CommitError::Deferred) => {}
            // Refused at every round while the copies are away (a missing topic can
            // last hours): the first, then every 30 s with the count since.
            Err(e @ CommitError::DeadLetters(_)) => {
                self.metrics.commits.with_label_values(&["error"]).inc();
                let name = part.name();
                let admitted = lock(&self.held_logs).admit(name, Instant::now());
                if let Some(suppressed) = admitted {
                    tracing::warn!(partition = %name, error = %e, suppressed, "partition commit waits for its dead letters (repeats logged every 30 s)");
                }
            }
            Err(e) => {
                self.metrics.commits.with_label_values(&["error"]).inc();
                tracing::error!(partition = %part.name(), error = %e, pending = part.pipe.unwritten(), "partition commit failed; will retry");
            }
        }
    }

    /// Start a commit round: per partition the idle advance, then its commit prepared
    /// here and handed to the committer task. Does nothing while a round is in flight.
    fn start_round(&self) {
        let idle_ms = i64::try_from(self.idle.as_millis()).unwrap_or(i64::MAX);
        let high = lock(&self.high).clone();
        let mut parts = lock(&self.parts);
        let mut round = lock(&self.round);
        if round.outstanding > 0 {
            return;
        }
        round.id += 1;
        round.ok = true;
        round.completed = None;
        for (key, part) in parts.iter_mut() {
            self.idle_advance(key, part, &high, idle_ms);
            match part.prepare(false) {
                Ok(Some(job)) => {
                    let job = Job {
                        round: round.id,
                        key: key.clone(),
                        job,
                    };
                    if self.jobs.send(job).is_err() {
                        drop((parts, round));
                        self.fail("the store committer task stopped".into());
                        return;
                    }
                    round.outstanding += 1;
                }
                Ok(None) => {}
                // A checkpoint that cannot be taken (a contact read back from the
                // spill damaged) will not heal by retrying: the daemon stops, naming it.
                Err(e @ CommitError::Checkpoint(_)) => {
                    let msg = format!("cannot commit partition {}: {e}", part.name());
                    drop((parts, round));
                    self.fail(msg);
                    return;
                }
                Err(e) => {
                    // Copies of rejected messages not yet acknowledged hold back only
                    // their own partition: the store is fine, so the others' commits
                    // keep their pace instead of backing off.
                    if !matches!(e, CommitError::DeadLetters(_)) {
                        round.ok = false;
                    }
                    self.record(part, Err(&e), Duration::ZERO);
                }
            }
        }
        if round.outstanding == 0 {
            round.completed = Some(round.ok);
        }
    }

    /// The idle wall-clock advance of one partition.
    fn idle_advance(
        &self,
        key: &PartKey,
        part: &mut Part,
        high: &HashMap<PartKey, i64>,
        idle_ms: i64,
    ) {
        // Quiet means caught up: a partition with a known backlog is not idle, it is
        // waiting for the broker, and moving its clock would make the backlog late.
        let caught_up = high.get(key).is_none_or(|h| part.lag(*h) == 0);
        if caught_up && part.last_input.elapsed() >= self.idle {
            let before = part.pipe.engine.clock();
            part.pipe.engine.advance_to(now_ms() - idle_ms);
            part.dirty |= part.pipe.engine.clock() != before;
        }
    }

    /// Take back the commits the committer has finished; with a deadline, wait for
    /// the round in flight to complete (or the deadline to pass).
    fn collect(&self, deadline: Option<Instant>) {
        let rx = lock(&self.finished);
        loop {
            let msg = match deadline {
                None => rx
                    .try_recv()
                    .map_err(|e| e == std::sync::mpsc::TryRecvError::Disconnected),
                Some(d) => {
                    if lock(&self.round).outstanding == 0 {
                        return;
                    }
                    let left = d.saturating_duration_since(Instant::now());
                    rx.recv_timeout(left)
                        .map_err(|e| e == std::sync::mpsc::RecvTimeoutError::Disconnected)
                }
            };
            let f = match msg {
                Ok(f) => f,
                Err(false) => return, // nothing yet / deadline passed
                Err(true) => {
                    drop(rx);
                    self.fail("the store committer task stopped".into());
                    return;
                }
            };
            let ok = self.take_back(f.key, f.done, f.took);
            let mut round = lock(&self.round);
            if f.round == round.id && round.outstanding > 0 {
                round.outstanding -= 1;
                round.ok &= ok;
                if round.outstanding == 0 {
                    round.completed = Some(round.ok);
                }
            }
        }
    }

    /// Hand a finished commit back to its partition; false when it failed. A fenced
    /// partition (another instance claimed it: this one is a zombie) is dropped.
    fn take_back(&self, key: PartKey, done: CommitDone, took: Duration) -> bool {
        let mut parts = lock(&self.parts);
        let Some(part) = parts.get_mut(&key) else {
            // Released meanwhile (lost, or revoked after a bounded wait): whatever this
            // commit did, the fence keeps the next owner's rows safe.
            return true;
        };
        if !part.in_flight || part.own.epoch != done.epoch() {
            // A commit of an earlier ownership of this partition (released, then
            // assigned again): the new claim fenced it, and it must not touch the
            // new ownership's sequence numbers.
            return true;
        }
        let r = part.finish(done);
        self.record(part, r.as_ref().copied(), took);
        match r {
            Ok(()) => true,
            Err(CommitError::Store(StoreError::Fenced { .. })) => {
                tracing::warn!(partition = %part.name(), "another instance owns this partition now; dropping it");
                if let Some(part) = parts.remove(&key) {
                    self.forget_labels(&part);
                }
                self.metrics.assigned.set(parts.len() as i64);
                false
            }
            Err(_) => false,
        }
    }

    /// Update Kafka's committed offsets (for lag tools only: never read back).
    fn commit_kafka_offsets(&self, consumer: &BaseConsumer<Ctx>) {
        let pending = std::mem::take(&mut *lock(&self.kafka_offsets));
        if pending.is_empty() {
            return;
        }
        let owned = lock(&self.parts);
        let mut offsets = TopicPartitionList::new();
        for (topic, p, o) in pending {
            // Only partitions still owned: the new owner reports its own.
            if owned.contains_key(&(topic.clone(), p)) {
                let _ = offsets.add_partition_offset(&topic, p, Offset::Offset(o));
            }
        }
        drop(owned);
        if offsets.count() > 0
            && let Err(e) = consumer.commit(&offsets, CommitMode::Async)
        {
            tracing::debug!(error = %e, "cannot commit offsets to Kafka (lag monitoring only)");
        }
    }

    /// The final commit of every owned partition, synchronously (shutdown), open
    /// windows included when `open` is set. Returns false when one failed; a transient
    /// store error ends it at once, as in the committer.
    fn commit_all_now(&self, open: bool) -> bool {
        let mut all_ok = true;
        let idle_ms = i64::try_from(self.idle.as_millis()).unwrap_or(i64::MAX);
        let high = lock(&self.high).clone();
        let mut parts = lock(&self.parts);
        for (key, part) in parts.iter_mut() {
            self.idle_advance(key, part, &high, idle_ms);
            if part.in_flight {
                tracing::warn!(partition = %part.name(), "a commit is still in flight; no final commit (the next owner re-reads what it did not commit)");
                all_ok = false;
                continue;
            }
            match self.commit_part(part, open) {
                Ok(_) => {}
                Err(CommitError::Store(e)) if e.is_transient() => {
                    all_ok = false;
                    break;
                }
                Err(_) => all_ok = false,
            }
        }
        all_ok
    }

    /// Messages read but not committed, over every owned partition.
    fn pending_events(&self) -> u64 {
        lock(&self.parts).values().map(Part::pending).sum()
    }

    fn ingest(&self, m: &BorrowedMessage<'_>) {
        let mut parts = lock(&self.parts);
        let Some(part) = parts.get_mut(&(m.topic().to_owned(), m.partition())) else {
            return; // a message of a partition released in this very poll
        };
        match part.position(m.offset()) {
            Position::Stale => return,
            Position::Gap { .. } => self.metrics.gaps.inc(),
            Position::Next => {}
        }
        part.pipe
            .ingest_message(m.payload().unwrap_or_default(), Some(m.offset()), m.key());
        part.last_input = Instant::now();
        part.dirty = true;
    }

    fn busy(&self, task: &str, since: Instant) {
        self.metrics
            .busy_seconds
            .with_label_values(&[task])
            .observe(since.elapsed().as_secs_f64());
    }

    /// Capture every partition's live view (needs the engines, so it runs on the
    /// polling thread); merging them and publishing happen on the publisher thread.
    fn capture(&self, scope: Scope) -> Publication {
        let high = lock(&self.high).clone();
        let parts = lock(&self.parts);
        let mut views = Vec::with_capacity(parts.len());
        let mut positions = Vec::with_capacity(parts.len());
        let mut dead_letters_pending = 0;
        for (key, part) in parts.iter() {
            let engine = &part.pipe.engine;
            let mut v = LiveSnapshot::capture_of(engine, part.pipe.flushes, None, scope);
            if let Some(next) = part.next_offset {
                positions.push((part.topic.clone(), part.partition.to_string(), next));
            }
            let hw = high.get(key).copied();
            let lag = hw.map(|h| part.lag(h));
            if let Some(l) = lag {
                self.metrics
                    .lag
                    .with_label_values(&[&part.topic, &part.partition.to_string()])
                    .set(l);
            }
            v.partitions.push(PartitionStatus {
                partition: part.name().to_owned(),
                next_offset: part.next_offset,
                committed_offset: part.committed_offset,
                high_watermark: hw,
                lag,
                epoch: part.own.epoch,
                unwritten: part.pipe.unwritten(),
                dead_letters_pending: part.pipe.dead_letters_pending(),
                watermark: engine.watermark(),
            });
            dead_letters_pending += part.pipe.dead_letters_pending();
            views.push(v);
        }
        drop(parts);
        if let Some((producer, _)) = &self.dead_letters {
            let ctx = producer.context();
            self.metrics
                .dead_letters
                .set(ctx.delivered.load(Ordering::Relaxed) as i64);
            self.metrics
                .dead_letter_failures
                .set(ctx.failed.load(Ordering::Relaxed) as i64);
            // The owned partitions' copies: a released partition's are its next
            // owner's to send again.
            self.metrics
                .dead_letters_pending
                .set(i64::try_from(dead_letters_pending).unwrap_or(i64::MAX));
        }
        Publication {
            views,
            positions,
            scope,
        }
    }
}

/// Live views of every owned partition at one instant, with the positions they
/// include.
struct Publication {
    views: Vec<LiveSnapshot>,
    positions: Vec<(String, String, i64)>,
    /// [`Scope::Centre`] publications take the agent part from the last full one.
    scope: Scope,
}

/// The publisher thread: merges the partitions' views (thousands of keys each on a
/// large floor) and publishes them, so the polling thread only pays for the capture.
/// At most one publication waits; the polling thread skips a capture while one does.
fn publisher(
    rx: std::sync::mpsc::Receiver<Publication>,
    state: Arc<AppState>,
    position: IntGaugeVec,
    busy: HistogramVec,
) {
    let mut last_full: Option<Arc<LiveSnapshot>> = None;
    while let Ok(p) = rx.recv() {
        let t = Instant::now();
        let mut snap = LiveSnapshot::merge(p.views);
        match (p.scope, &last_full) {
            (Scope::All, _) => {
                let full = Arc::new(snap);
                last_full = Some(full.clone());
                state.publish_arc(full);
            }
            (Scope::Centre, Some(full)) => {
                snap.splice_agents_from(full);
                state.publish(snap);
            }
            (Scope::Centre, None) => state.publish(snap),
        }
        // After the publish: a scrape that sees a position sees its figures too.
        for (topic, partition, next) in p.positions {
            position.with_label_values(&[&topic, &partition]).set(next);
        }
        busy.with_label_values(&["merge"])
            .observe(t.elapsed().as_secs_f64());
    }
}

/// A running Kafka source: call [`KafkaSource::run`] on a thread of its own.
pub struct KafkaSource {
    shared: Arc<Shared>,
    consumer: BaseConsumer<Ctx>,
    commit_every: Duration,
    publish_tx: std::sync::mpsc::SyncSender<Publication>,
    publisher: std::thread::JoinHandle<()>,
    max_pending: u64,
    /// How long shutdown may wait for the commit round in flight.
    shutdown_budget: Duration,
}

/// Backpressure state of the polling loop: the partitions it paused, and the
/// assignment generation they were paused in.
struct Paused {
    parts: std::collections::BTreeSet<PartKey>,
    generation: u64,
    /// The assign counter (looked up once: the check runs on every poll).
    assigns: IntCounter,
}

impl KafkaSource {
    /// Connect and subscribe. Must be called from within the tokio runtime whose
    /// handle the store uses.
    pub fn new(
        cfg: &Config,
        store: Store,
        state: Arc<AppState>,
        stop: Arc<AtomicBool>,
    ) -> Result<KafkaSource, KafkaSourceError> {
        let k = &cfg.kafka;
        let dead_letters = if k.dead_letter_topic.trim().is_empty() {
            None
        } else {
            let mut pc = super::client_config(k);
            // Copies of bad input must not be lost or duplicated by producer retries.
            pc.set("enable.idempotence", "true");
            let producer: DeadLetterProducer = pc.create_with_context(DeliveryCounter::default())?;
            Some((Arc::new(producer), k.dead_letter_topic.clone()))
        };
        let metrics = KafkaMetrics::register(state.registry())?;
        let (jobs, job_rx) = mpsc::unbounded_channel();
        let (finished_tx, finished) = std::sync::mpsc::channel();
        tokio::spawn(committer(store.clone(), job_rx, finished_tx));
        let shared = Arc::new(Shared {
            rt: Handle::current(),
            store,
            owner: k.owner(),
            engine_cfg: EngineConfig::from_config(cfg),
            spill: cfg.windows.spill,
            spill_above: cfg
                .windows
                .spill_limit(None, crate::config::SERVE_SPILL_ABOVE),
            decoder: cfg.decoder(),
            dead_letters,
            idle: cfg.windows.idle_timeout.0,
            cooperative: k.assignment_strategy == AssignmentStrategy::CooperativeSticky,
            parts: Mutex::new(BTreeMap::new()),
            high: Mutex::new(HashMap::new()),
            jobs,
            finished: Mutex::new(finished),
            round: Mutex::new(Round::default()),
            kafka_offsets: Mutex::new(Vec::new()),
            metrics,
            state,
            stop,
            fatal: Mutex::new(None),
            held_logs: Mutex::new(super::RateLimit::every(HELD_LOG_INTERVAL)),
        });
        let consumer: BaseConsumer<Ctx> =
            super::consumer_config(k).create_with_context(Ctx(shared.clone()))?;
        let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(brokers = %k.brokers, topics = ?k.topics, group = %k.group_id, owner = %shared.owner, "kafka consumer subscribed");
        let (publish_tx, publish_rx) = std::sync::mpsc::sync_channel(1);
        let publisher = {
            let state = shared.state.clone();
            let position = shared.metrics.position.clone();
            let busy = shared.metrics.busy_seconds.clone();
            std::thread::Builder::new()
                .name("publish".into())
                .spawn(move || publisher(publish_rx, state, position, busy))
                .map_err(|e| {
                    KafkaSourceError::Fatal(format!("cannot start the publisher thread: {e}"))
                })?
        };
        Ok(KafkaSource {
            shared,
            consumer,
            commit_every: k.commit_interval.0,
            publish_tx,
            publisher,
            max_pending: k.max_pending_events,
            shutdown_budget: cfg.serve.shutdown_timeout.0,
        })
    }

    /// Consume until the stop flag is set; then commit every partition (open windows
    /// included) and leave the group. Blocking: run it on a thread of its own, not on
    /// a runtime worker.
    pub fn run(self) -> Result<(), KafkaSourceError> {
        let sh = &self.shared;
        let mut last_commit = Instant::now();
        let mut commit_wait = self.commit_every;
        let mut last_publish = Instant::now();
        // Long ago: the first publication is a full one.
        let mut last_full = Instant::now()
            .checked_sub(AGENTS_EVERY)
            .unwrap_or_else(Instant::now);
        let mut fresh = false;
        let mut paused = Paused {
            parts: Default::default(),
            generation: 0,
            assigns: sh.metrics.rebalances.with_label_values(&["assign"]),
        };
        while !sh.stopping() {
            match self.consumer.poll(POLL_TIMEOUT) {
                Some(Ok(m)) => {
                    sh.ingest(&m);
                    fresh = true;
                }
                Some(Err(e)) => log_poll_error(&e),
                None => {}
            }
            sh.collect(None);
            self.backpressure(&mut paused);
            let completed = lock(&sh.round).completed.take();
            if let Some(ok) = completed {
                commit_wait = if ok {
                    self.commit_every
                } else {
                    let next = (commit_wait * 2).min(MAX_COMMIT_BACKOFF);
                    tracing::warn!("store commits failing; next attempt in {next:?}");
                    next
                };
                last_commit = Instant::now();
                fresh = true;
                sh.commit_kafka_offsets(&self.consumer);
            }
            let idle_round = lock(&sh.round).outstanding == 0;
            if idle_round && last_commit.elapsed() >= commit_wait {
                let t = Instant::now();
                sh.start_round();
                sh.busy("prepare", t);
                // Not counted from here: the next round waits for this one to complete.
                last_commit = Instant::now();
            }
            if last_publish.elapsed() >= PUBLISH_EVERY
                && (fresh || last_publish.elapsed() >= Duration::from_secs(1))
            {
                let t = Instant::now();
                // A publication still waiting means the publisher is behind: skip this
                // capture rather than queue a stale one (the next loop tries again).
                // The agent part (tens of thousands of keys on a large floor) is
                // captured every AGENTS_EVERY; the centre, channels and queues (what
                // alerts read) on every publish.
                let scope = if last_full.elapsed() >= AGENTS_EVERY {
                    Scope::All
                } else {
                    Scope::Centre
                };
                let sent = match self.publish_tx.try_send(sh.capture(scope)) {
                    Ok(()) => true,
                    Err(std::sync::mpsc::TrySendError::Full(_)) => false,
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                        sh.fail("the publisher thread stopped".into());
                        false
                    }
                };
                sh.busy("publish", t);
                if sent {
                    last_publish = Instant::now();
                    fresh = false;
                    if scope == Scope::All {
                        last_full = last_publish;
                    }
                }
            }
        }
        if let Some(msg) = lock(&sh.fatal).clone() {
            return Err(KafkaSourceError::Fatal(msg));
        }
        tracing::info!("stopping: committing every partition, open windows included");
        sh.state.set_ready(false);
        sh.collect(Some(Instant::now() + self.shutdown_budget));
        let all_committed = sh.commit_all_now(true);
        let released = std::mem::take(&mut *lock(&sh.parts));
        for part in released.values() {
            sh.forget_labels(part);
        }
        // The last publication (nothing owned any more) goes out before we return.
        let _ = self.publish_tx.send(sh.capture(Scope::All));
        drop(self.publish_tx);
        if self.publisher.join().is_err() {
            tracing::error!("the publisher thread panicked");
        }
        self.consumer.unsubscribe();
        // Dropping the consumer leaves the group (the revoke callback finds nothing).
        drop(self.consumer);
        if all_committed {
            Ok(())
        } else {
            Err(KafkaSourceError::Uncommitted)
        }
    }

    /// Backpressure: past `max_pending_events` read-but-uncommitted messages (the
    /// store is down or slow) pause every owned partition, so memory stops growing;
    /// resume once commits have brought it to half the budget. Polling goes on while
    /// paused (rebalances, heartbeats, commit outcomes).
    fn backpressure(&self, paused: &mut Paused) {
        let sh = &self.shared;
        let pending = sh.pending_events();
        sh.metrics
            .pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        let generation = paused.assigns.get();
        if generation != paused.generation {
            // A new assignment: whether librdkafka kept a partition's pause across it
            // is not ours to rely on. Resume them all (harmless when not paused); the
            // check below pauses again if still over budget.
            paused.generation = generation;
            if !paused.parts.is_empty() {
                paused.parts.clear();
                let owned: Vec<PartKey> = lock(&sh.parts).keys().cloned().collect();
                if let Err(e) = self.consumer.resume(&tpl(&owned)) {
                    tracing::warn!(error = %e, "cannot resume partitions after a rebalance");
                }
            }
        }
        if pending >= self.max_pending {
            let owned: Vec<PartKey> = lock(&sh.parts).keys().cloned().collect();
            paused.parts.retain(|k| owned.contains(k));
            let more: Vec<PartKey> = owned
                .into_iter()
                .filter(|k| !paused.parts.contains(k))
                .collect();
            if !more.is_empty() {
                match self.consumer.pause(&tpl(&more)) {
                    Ok(()) => {
                        if paused.parts.is_empty() {
                            tracing::warn!(
                                pending,
                                max_pending_events = self.max_pending,
                                "backpressure: pausing consumption until the store takes commits again"
                            );
                        }
                        paused.parts.extend(more);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot pause partitions"),
                }
            }
        } else if !paused.parts.is_empty() && pending <= self.max_pending / 2 {
            let keys: Vec<PartKey> = std::mem::take(&mut paused.parts).into_iter().collect();
            match self.consumer.resume(&tpl(&keys)) {
                Ok(()) => tracing::info!(pending, "backpressure released: consuming again"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resume partitions; retrying");
                    paused.parts.extend(keys);
                }
            }
        }
        sh.metrics.paused.set(i64::from(!paused.parts.is_empty()));
    }
}

fn tpl(keys: &[PartKey]) -> TopicPartitionList {
    let mut l = TopicPartitionList::new();
    for (topic, p) in keys {
        l.add_partition(topic, *p);
    }
    l
}

fn log_poll_error(e: &rdkafka::error::KafkaError) {
    // Broker connection trouble is retried by librdkafka itself: logged (rate-limited)
    // rather than failing.
    super::log_client_error("consumer", e, "poll");
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::{Broker, Statistics};

    use super::connections_up;

    fn broker(nodeid: i32, source: &str, state: &str) -> Broker {
        Broker {
            nodeid,
            source: source.into(),
            state: state.into(),
            ..Broker::default()
        }
    }

    /// What librdkafka lists for a consumer of a 3-broker cluster: the bootstrap
    /// address, its internal broker (always "UP", never a connection), the coordinator
    /// as a logical broker, and the brokers learned from the metadata, of which only
    /// the ones it needs are connected.
    #[test]
    fn connections_up_counts_every_connection_and_nothing_else() {
        let mut s = Statistics::default();
        for (name, b) in [
            ("127.0.0.1:9092/bootstrap", broker(-1, "configured", "INIT")),
            (":0/internal", broker(-1, "internal", "UP")),
            ("GroupCoordinator", broker(1, "logical", "UP")),
            ("b1:9092/1", broker(1, "learned", "UP")),
            ("b2:9092/2", broker(2, "learned", "INIT")),
            ("b3:9092/3", broker(3, "learned", "INIT")),
        ] {
            s.brokers.insert(name.into(), b);
        }
        assert_eq!(connections_up(&s), 2);
        // A member without partitions: only its coordinator connection is up. It
        // reaches the cluster.
        s.brokers.get_mut("b1:9092/1").unwrap().state = "INIT".into();
        assert_eq!(connections_up(&s), 1);
        // Every connection cut: librdkafka is trying again.
        s.brokers.get_mut("GroupCoordinator").unwrap().state = "CONNECT".into();
        assert_eq!(connections_up(&s), 0);
        assert_eq!(connections_up(&Statistics::default()), 0);
    }
}
