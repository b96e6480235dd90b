//! The one path every message takes, in `replay` and `serve` alike:
//! bytes → decode → engine → (on flush) store. Keeping it in one place is what makes a
//! replay reproduce what the daemon computed.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::engine::{Engine, EngineConfig, Outcome, SnapshotDelta, Stats};
use crate::event::{Decoder, Reject, RejectReason};
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
    /// Where rejected messages are copied (JSONL), when configured.
    dead_letters: Option<Box<dyn Write + Send>>,
    pub dead_lettered: u64,
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
            dead_letters: None,
            dead_lettered: 0,
        }
    }

    /// Copy every rejected message to `w`, one JSON object per line: `reason`,
    /// `detail`, `partition`, the original `message` (lossy UTF-8) and `utf8` (whether
    /// it was valid UTF-8, i.e. whether `message` is byte-exact).
    pub fn set_dead_letters(&mut self, w: Box<dyn Write + Send>) {
        self.dead_letters = Some(w);
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

    /// Decode and apply one message. Blank lines are not messages and are skipped.
    pub fn ingest(&mut self, bytes: &[u8]) -> Option<Outcome> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let (outcome, reject) = match self.decoder.decode(bytes) {
            Ok(ev) => match self.engine.apply(ev) {
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
                        Some(Reject {
                            reason,
                            detail: detail.into(),
                        }),
                    )
                }
                other => (other, None),
            },
            Err(rej) => {
                self.engine.record_reject(rej.reason);
                (Outcome::Rejected(rej.reason), Some(rej))
            }
        };
        if let Some(rej) = reject {
            self.log_reject(&rej, bytes);
            self.dead_letter(&rej, bytes);
        }
        Some(outcome)
    }

    fn dead_letter(&mut self, rej: &Reject, bytes: &[u8]) {
        let Some(w) = &mut self.dead_letters else {
            return;
        };
        let utf8 = std::str::from_utf8(bytes).is_ok();
        let record = serde_json::json!({
            "reason": rej.reason.as_str(),
            "detail": rej.detail,
            "partition": self.partition,
            "message": String::from_utf8_lossy(bytes),
            "utf8": utf8,
        });
        let written = serde_json::to_writer(&mut *w, &record)
            .map_err(std::io::Error::from)
            .and_then(|()| w.write_all(b"\n"));
        match written {
            Ok(()) => self.dead_lettered += 1,
            Err(e) => {
                // Counting goes on; losing the copies is loud, once.
                tracing::error!(error = %e, "cannot write dead letters; no more copies will be written");
                self.dead_letters = None;
            }
        }
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
