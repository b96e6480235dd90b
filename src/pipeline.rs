//! The one path every message takes, in `replay` and `serve` alike:
//! bytes → decode → engine → (on flush) store. Keeping it in one place is what makes a
//! replay reproduce what the daemon computed.

use std::borrow::Cow;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::engine::checkpoint::CheckpointError;
use crate::engine::spill::SpillBatch;
use crate::engine::{Engine, EngineConfig, Outcome, SnapshotDelta, Stats};
use crate::event::{Decoder, Event, Keys, Millis, Reject, RejectReason};
use crate::store::{CheckpointWrite, Store, StoreError};

/// A rejected message on its way to a dead-letter destination.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub reason: RejectReason,
    pub detail: &'a str,
    /// The snapshot partition (input) the message came from.
    pub partition: &'a str,
    /// Position in the input (the Kafka offset), when the source has one.
    pub offset: Option<i64>,
    /// The message key, when the source has one.
    pub key: Option<&'a [u8]>,
    /// The original bytes.
    pub message: &'a [u8],
}

/// Where rejected messages are copied: a JSONL file (`replay`, `serve --dead-letter`)
/// or a Kafka topic (`source::kafka`).
pub trait DeadLetterSink: Send {
    fn send(&mut self, letter: &DeadLetter<'_>) -> std::io::Result<()>;
    /// Make everything sent so far durable (called before offsets are committed).
    fn flush(&mut self) -> std::io::Result<()>;
    /// Copies sent but not yet durable (those a commit waits for).
    fn pending(&self) -> usize {
        0
    }
}

/// Dead letters as JSON lines: `reason`, `detail`, `partition`, `offset` (when known),
/// the original `message` (lossy UTF-8) and `utf8` (whether `message` is byte-exact).
pub struct JsonlDeadLetters<W: Write + Send>(pub W);

impl<W: Write + Send> DeadLetterSink for JsonlDeadLetters<W> {
    fn send(&mut self, l: &DeadLetter<'_>) -> std::io::Result<()> {
        let mut record = serde_json::json!({
            "reason": l.reason.as_str(),
            "detail": l.detail,
            "partition": l.partition,
            "message": String::from_utf8_lossy(l.message),
            "utf8": std::str::from_utf8(l.message).is_ok(),
        });
        if let Some(o) = l.offset {
            record["offset"] = o.into();
        }
        serde_json::to_writer(&mut self.0, &record).map_err(std::io::Error::from)?;
        self.0.write_all(b"\n")
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A checkpointed commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot write dead letters before committing: {0}")]
    DeadLetters(std::io::Error),
    /// Not attempted: the store already failed with a transient error in the same
    /// commit round, and every other partition would wait for the same server.
    #[error("not attempted: the store is unreachable")]
    Deferred,
}

/// This process's ownership of a snapshot partition: the epoch it claimed and the
/// number of checkpointed commits so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub epoch: i64,
    pub seq: i64,
    /// A commit whose outcome is unknown (the error came after the statement may have
    /// reached the server): how many of the unwritten deltas it carried. Settled by
    /// reading back the stored sequence number before the next commit.
    in_doubt: Option<usize>,
}

impl Ownership {
    pub fn new(epoch: i64, seq: i64) -> Ownership {
        Ownership {
            epoch,
            seq,
            in_doubt: None,
        }
    }
}

/// Log at most this many rejected messages per interval; the rest are only counted.
const REJECT_LOG_BURST: u32 = 10;
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct Pipeline {
    pub engine: Engine,
    decoder: Decoder,
    partition: String,
    log_window: Instant,
    logged: u32,
    pub flushes: u64,
    pub rows_written: u64,
    /// Deltas taken from the engine but not yet committed (the store was unavailable).
    /// They are retried with the next write, so nothing acknowledged is dropped.
    unwritten: Vec<SnapshotDelta>,
    /// Where rejected messages are copied, when configured.
    dead_letters: Option<Box<dyn DeadLetterSink>>,
    pub dead_lettered: u64,
    /// Fixed "now" for the `future` check instead of the wall clock (tests, or replaying
    /// data recorded at a known time).
    now_override: Option<Millis>,
    /// Wall clock as last read: the clock is read again only for an event that looks
    /// future against it, so the check costs a comparison per event.
    now_cached: Millis,
    /// How many kinds of key had overflowed their `[cardinality]` limit when last
    /// looked: each new one is logged once (the count is on /metrics).
    overflow_kinds_seen: usize,
}

impl Pipeline {
    pub fn new(cfg: EngineConfig, decoder: Decoder, partition: impl Into<String>) -> Pipeline {
        Pipeline::with_engine(Engine::new(cfg), decoder, partition)
    }

    /// A pipeline continuing with `engine` (e.g. restored from a checkpoint).
    pub fn with_engine(engine: Engine, decoder: Decoder, partition: impl Into<String>) -> Pipeline {
        Pipeline {
            engine,
            decoder,
            partition: partition.into(),
            log_window: Instant::now(),
            logged: 0,
            flushes: 0,
            rows_written: 0,
            unwritten: Vec::new(),
            dead_letters: None,
            dead_lettered: 0,
            now_override: None,
            now_cached: Millis::MIN,
            overflow_kinds_seen: 0,
        }
    }

    /// Judge `future` events against `now` (UTC ms) instead of the wall clock.
    pub fn set_now(&mut self, now: Option<Millis>) {
        self.now_override = now;
    }

    /// Whether `ts` is more than `max_clock_skew` ahead of "now".
    fn is_future(&mut self, ts: Millis) -> bool {
        let skew = self.engine.config().max_clock_skew_ms;
        if let Some(now) = self.now_override {
            return ts > now.saturating_add(skew);
        }
        if ts <= self.now_cached.saturating_add(skew) {
            return false;
        }
        self.now_cached = jiff::Timestamp::now().as_millisecond();
        ts > self.now_cached.saturating_add(skew)
    }

    /// Copy every rejected message to `sink`.
    pub fn set_dead_letters(&mut self, sink: Box<dyn DeadLetterSink>) {
        self.dead_letters = Some(sink);
    }

    /// Flush the dead-letter output (call before exiting).
    pub fn finish(&mut self) -> std::io::Result<()> {
        match &mut self.dead_letters {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    pub fn partition(&self) -> &str {
        &self.partition
    }

    pub fn stats(&self) -> &Stats {
        self.engine.stats()
    }

    /// Decode and apply one line of a file or stream. Blank lines are not messages
    /// and are skipped.
    pub fn ingest(&mut self, bytes: &[u8]) -> Option<Outcome> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(self.ingest_message(bytes, None, None))
    }

    /// Decode and apply one message of a record-oriented source (every message
    /// counts, an empty one is rejected); `offset` and `key` go into dead letters.
    pub fn ingest_message(
        &mut self,
        bytes: &[u8],
        offset: Option<i64>,
        key: Option<&[u8]>,
    ) -> Outcome {
        let decoded = self.decoder.decode(bytes);
        let keys = Keys::of_decoded(&decoded);
        self.ingest_decoded(bytes, &decoded, &keys, offset, key)
    }

    /// Apply a message decoded elsewhere (by `source::ahead`'s decoder threads, with
    /// this pipeline's decoder settings, and its [`Keys`] beside it); `bytes` are its
    /// raw form for dead letters.
    pub fn ingest_decoded(
        &mut self,
        bytes: &[u8],
        decoded: &Result<Event<'_>, Reject>,
        keys: &Keys,
        offset: Option<i64>,
        key: Option<&[u8]>,
    ) -> Outcome {
        // By reference: `replay` applies the events where its decoder threads decoded
        // them, and moving each (~320 bytes) out of the batch and down into the engine
        // was 4 % of the engine thread's time.
        let (outcome, reject): (Outcome, Option<Cow<'_, Reject>>) = match decoded {
            Ok(ev) if self.is_future(ev.ts) => {
                self.engine.record_reject(RejectReason::Future);
                let show = |ms: Millis| {
                    jiff::Timestamp::from_millisecond(ms)
                        .map(|t| t.to_string())
                        .unwrap_or_else(|_| ms.to_string())
                };
                let detail = format!(
                    "`ts` {} is more than max_clock_skew ({} ms) ahead of {} {}",
                    show(ev.ts),
                    self.engine.config().max_clock_skew_ms,
                    if self.now_override.is_some() {
                        "--now"
                    } else {
                        "the wall clock"
                    },
                    show(self.now_override.unwrap_or(self.now_cached)),
                );
                (
                    Outcome::Rejected(RejectReason::Future),
                    Some(Cow::Owned(Reject {
                        reason: RejectReason::Future,
                        detail,
                    })),
                )
            }
            Ok(ev) => match self.engine.apply_keyed(ev, keys) {
                Outcome::Rejected(reason) => {
                    let detail = match reason {
                        RejectReason::TooLate => "older than watermark - correction_horizon",
                        RejectReason::ContactOverflow => {
                            "the contact already holds the maximum number of events"
                        }
                        _ => "rejected by the engine",
                    };
                    (
                        Outcome::Rejected(reason),
                        Some(Cow::Owned(Reject {
                            reason,
                            detail: detail.into(),
                        })),
                    )
                }
                other => (other, None),
            },
            Err(rej) => {
                self.engine.record_reject(rej.reason);
                (Outcome::Rejected(rej.reason), Some(Cow::Borrowed(rej)))
            }
        };
        if let Some(rej) = reject {
            self.log_reject(&rej, bytes);
            self.dead_letter(&rej, bytes, offset, key);
        }
        if self.engine.stats().overflowed.len() != self.overflow_kinds_seen {
            self.log_overflow();
        }
        outcome
    }

    fn dead_letter(&mut self, rej: &Reject, bytes: &[u8], offset: Option<i64>, key: Option<&[u8]>) {
        let Some(w) = &mut self.dead_letters else {
            return;
        };
        let letter = DeadLetter {
            reason: rej.reason,
            detail: &rej.detail,
            partition: &self.partition,
            offset,
            key,
            message: bytes,
        };
        match w.send(&letter) {
            Ok(()) => self.dead_lettered += 1,
            Err(e) => {
                // Counting goes on; losing the copies is loud, once.
                tracing::error!(error = %e, "cannot write dead letters; no more copies will be written");
                self.dead_letters = None;
            }
        }
    }

    /// A kind of key reached its `[cardinality]` limit (rare: once per kind and
    /// partition, so not rate-limited further).
    fn log_overflow(&mut self) {
        let overflowed = &self.engine.stats().overflowed;
        let kinds: Vec<&str> = overflowed.keys().map(|k| k.as_str()).collect();
        tracing::warn!(
            partition = %self.partition,
            kinds = %kinds.join(","),
            "a [cardinality] limit was reached: new keys of these kinds are counted under \"__overflow__\" (customers: not remembered); see ccmetrics_keys_overflowed_total"
        );
        self.overflow_kinds_seen = overflowed.len();
    }

    fn log_reject(&mut self, rej: &Reject, bytes: &[u8]) {
        if self.log_window.elapsed() > REJECT_LOG_INTERVAL {
            if self.logged > REJECT_LOG_BURST {
                tracing::warn!(
                    suppressed = self.logged - REJECT_LOG_BURST,
                    "rejected messages not logged individually"
                );
            }
            self.log_window = Instant::now();
            self.logged = 0;
        }
        self.logged += 1;
        if self.logged <= REJECT_LOG_BURST {
            let sample = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
            tracing::warn!(reason = rej.reason.as_str(), detail = %rej.detail, message = %sample, "event rejected");
        }
    }

    /// Write deltas (plus any earlier unwritten ones) to the store in one transaction.
    /// On failure they are kept for the next attempt.
    pub async fn write(
        &mut self,
        store: &Store,
        deltas: Vec<SnapshotDelta>,
    ) -> Result<(), StoreError> {
        self.unwritten.extend(deltas);
        if self.unwritten.is_empty() {
            return Ok(());
        }
        store.apply_deltas(&self.partition, &self.unwritten).await?;
        self.flushes += 1;
        self.rows_written += self.unwritten.len() as u64;
        self.unwritten.clear();
        Ok(())
    }

    /// Deltas waiting for the store.
    pub fn unwritten(&self) -> usize {
        self.unwritten.len()
    }

    /// Dead letters sent and not yet durable: the next commit waits for them.
    pub fn dead_letters_pending(&self) -> usize {
        self.dead_letters.as_ref().map_or(0, |w| w.pending())
    }

    /// Flush the windows the watermark has passed.
    pub async fn flush(&mut self, store: &Store) -> Result<(), StoreError> {
        let deltas = self.engine.flush();
        self.write(store, deltas).await
    }

    /// The checkpointed write of a partition owner: `deltas` plus any earlier
    /// unwritten ones, the engine's state and `next_offset`, in one fenced store
    /// transaction. Dead letters are flushed first, so a committed offset never skips
    /// a rejected message's copy.
    ///
    /// A failed commit keeps the deltas (the next call carries them again with a newer
    /// state). When the failure left it unknown whether the transaction landed (the
    /// connection dropped during COMMIT), the next call first reads the stored
    /// sequence number back: landed means those deltas are dropped, not written twice.
    ///
    /// This is [`Pipeline::prepare_commit`], [`CommitJob::run`] and
    /// [`Pipeline::finish_commit`] in a row; the Kafka daemon runs the middle step on a
    /// committer task so that the store round trip does not stall consumption.
    pub async fn commit(
        &mut self,
        store: &Store,
        own: &mut Ownership,
        deltas: Vec<SnapshotDelta>,
        next_offset: i64,
    ) -> Result<(), CommitError> {
        let job = self.prepare_commit(own, deltas, next_offset)?;
        let done = job.run(store).await;
        self.finish_commit(own, done)
    }

    /// The part of a commit that needs the engine: take `deltas` (plus any earlier
    /// unwritten ones) and the engine's state as of now, after making the dead letters
    /// durable. Until the job's [`CommitDone`] comes back through
    /// [`Pipeline::finish_commit`], no other commit may be prepared for this pipeline
    /// (the job carries the ownership's next sequence number).
    pub fn prepare_commit(
        &mut self,
        own: &Ownership,
        deltas: Vec<SnapshotDelta>,
        next_offset: i64,
    ) -> Result<CommitJob, CommitError> {
        self.unwritten.extend(deltas);
        if let Some(w) = &mut self.dead_letters {
            w.flush().map_err(CommitError::DeadLetters)?;
        }
        let state = self.engine.checkpoint()?;
        // Taken at the same instant as the state: every contact is in exactly one of
        // the two once the transaction lands.
        let spill = self.engine.spill_mut().and_then(|s| s.prepare());
        Ok(CommitJob {
            partition: self.partition.clone(),
            deltas: std::mem::take(&mut self.unwritten),
            state,
            spill,
            next_offset,
            own: *own,
        })
    }

    /// Take a commit's outcome back: the ownership moves on, and on failure the job's
    /// deltas go back in front of anything taken since, for the next attempt.
    pub fn finish_commit(
        &mut self,
        own: &mut Ownership,
        done: CommitDone,
    ) -> Result<(), CommitError> {
        *own = done.own;
        if let Some(s) = self.engine.spill_mut() {
            s.finish(done.result.is_ok());
        }
        match done.result {
            Ok(rows) => {
                self.flushes += 1;
                self.rows_written += rows as u64;
                Ok(())
            }
            Err(e) => {
                let mut deltas = done.deltas;
                deltas.append(&mut self.unwritten);
                self.unwritten = deltas;
                Err(e)
            }
        }
    }
}

/// A commit prepared by [`Pipeline::prepare_commit`]: everything the store transaction
/// needs, owned, so it can run on another task while the pipeline keeps ingesting.
pub struct CommitJob {
    partition: String,
    deltas: Vec<SnapshotDelta>,
    state: Vec<u8>,
    /// The engine's spill changes, written with the state.
    spill: Option<SpillBatch>,
    next_offset: i64,
    own: Ownership,
}

/// What became of a [`CommitJob`]; hand it to [`Pipeline::finish_commit`].
pub struct CommitDone {
    pub next_offset: i64,
    own: Ownership,
    /// Rows written, or why nothing was.
    pub result: Result<usize, CommitError>,
    /// The deltas still to write (empty after a success).
    deltas: Vec<SnapshotDelta>,
}

impl CommitDone {
    /// The owner epoch the commit was made under.
    pub fn epoch(&self) -> i64 {
        self.own.epoch
    }
}

impl CommitJob {
    /// Run the fenced store transaction (settling an earlier commit in doubt first).
    pub async fn run(mut self, store: &Store) -> CommitDone {
        let result = self.write(store).await;
        CommitDone {
            next_offset: self.next_offset,
            own: self.own,
            result,
            deltas: self.deltas,
        }
    }

    /// Give the job back unattempted, failed with `err` (its deltas are kept).
    pub fn skip(self, err: CommitError) -> CommitDone {
        CommitDone {
            next_offset: self.next_offset,
            own: self.own,
            result: Err(err),
            deltas: self.deltas,
        }
    }

    async fn write(&mut self, store: &Store) -> Result<usize, CommitError> {
        let own = &mut self.own;
        if let Some(n) = own.in_doubt {
            let landed = match store.committed(&self.partition).await? {
                Some((epoch, _)) if epoch != own.epoch => {
                    return Err(StoreError::Fenced {
                        partition: self.partition.clone(),
                        epoch: own.epoch,
                    }
                    .into());
                }
                Some((_, seq)) => seq == own.seq + 1,
                None => false,
            };
            if landed {
                tracing::info!(partition = %self.partition, seq = own.seq + 1, "an earlier commit reported as failed did land");
                self.deltas.drain(..n.min(self.deltas.len()));
                own.seq += 1;
            }
            own.in_doubt = None;
        }
        let cp = CheckpointWrite {
            epoch: own.epoch,
            seq: own.seq + 1,
            next_offset: self.next_offset,
            state: &self.state,
            spill: self.spill.as_ref(),
        };
        match store.commit(&self.partition, &self.deltas, &cp).await {
            Ok(_) => {
                own.seq += 1;
                let rows = self.deltas.len();
                self.deltas.clear();
                Ok(rows)
            }
            Err(e @ StoreError::Fenced { .. }) => Err(e.into()),
            Err(e) => {
                own.in_doubt = Some(self.deltas.len());
                Err(e.into())
            }
        }
    }
}
