//! The one path every message takes, in `replay` and `serve` alike:
//! bytes → decode → engine → (on flush) store. Keeping it in one place is what makes a
//! replay reproduce what the daemon computed.

use std::time::{Duration, Instant};

use crate::engine::{Engine, EngineConfig, Outcome, SnapshotDelta, Stats};
use crate::event::{Decoder, Reject};
use crate::store::{Store, StoreError};

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
}

impl Pipeline {
    pub fn new(cfg: EngineConfig, decoder: Decoder, partition: impl Into<String>) -> Pipeline {
        Pipeline {
            engine: Engine::new(cfg),
            decoder,
            partition: partition.into(),
            log_window: Instant::now(),
            logged: 0,
            flushes: 0,
            rows_written: 0,
            unwritten: Vec::new(),
        }
    }

    pub fn partition(&self) -> &str {
        &self.partition
    }

    pub fn stats(&self) -> &Stats {
        self.engine.stats()
    }

    /// Decode and apply one message. Blank lines are not messages and are skipped.
    pub fn ingest(&mut self, bytes: &[u8]) -> Option<Outcome> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let outcome = match self.decoder.decode(bytes) {
            Ok(ev) => self.engine.apply(ev),
            Err(rej) => {
                self.engine.record_reject(rej.reason);
                self.log_reject(&rej, bytes);
                Outcome::Rejected(rej.reason)
            }
        };
        if let Outcome::Rejected(r @ crate::event::RejectReason::TooLate) = outcome {
            self.log_reject(
                &Reject {
                    reason: r,
                    detail: "older than watermark - correction_horizon".into(),
                },
                bytes,
            );
        }
        Some(outcome)
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

    /// Flush the windows the watermark has passed.
    pub async fn flush(&mut self, store: &Store) -> Result<(), StoreError> {
        let deltas = self.engine.flush();
        self.write(store, deltas).await
    }
}
