//! One assigned Kafka partition: its own pipeline (engine, decoder, dead letters), its
//! ownership of the matching snapshot partition in the store, and its offsets.

use std::time::Instant;

use crate::engine::spill::Spill;
use crate::engine::{Engine, EngineConfig};
use crate::event::Decoder;
use crate::pipeline::{CommitDone, CommitError, CommitJob, Ownership, Pipeline};
use crate::store::{Claim, Store};

/// What one assigned partition owns.
pub struct Part {
    pub topic: String,
    pub partition: i32,
    pub pipe: Pipeline,
    pub own: Ownership,
    /// Next offset to process; `None` until the first message when the partition has
    /// no stored offset (it starts at the beginning of the log).
    pub next_offset: Option<i64>,
    /// The next offset as of the last successful store commit.
    pub committed_offset: Option<i64>,
    /// The first offset processed since the assignment (for [`Part::pending`] before
    /// the first commit of a partition that had no stored offset).
    pub first_offset: Option<i64>,
    /// Right after a seek: the first message tells whether the broker skipped offsets.
    pub seeked: bool,
    pub last_input: Instant,
    /// Input or clock movement since the last commit.
    pub dirty: bool,
    /// A prepared commit has not come back yet: no other may be prepared (it would
    /// carry the same sequence number) until [`Part::finish`] has taken its outcome.
    pub in_flight: bool,
    /// The store's spill, not yet given to the engine, and past how many contacts
    /// held it is (`[windows] spill_above` with `spill = false`): set at the first
    /// commit where the engine holds more, so the contacts it spills from then on go
    /// out in that commit's transaction with its checkpoint.
    pub spill_later: Option<(usize, Box<dyn Spill>)>,
}

/// How a partition's messages relate to its offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// The next message: process it.
    Next,
    /// Offsets were skipped (`missing` of them): process it, count the gap.
    Gap { missing: i64 },
    /// Already processed (a stale prefetch after a seek): skip it.
    Stale,
}

impl Part {
    /// A partition continuing from `claim` (restored engine and stored offset).
    pub fn restore(
        topic: &str,
        partition: i32,
        claim: &Claim,
        cfg: EngineConfig,
        decoder: Decoder,
    ) -> Result<Part, crate::engine::checkpoint::CheckpointError> {
        let engine = match &claim.state {
            Some(bytes) => Engine::restore(cfg, bytes)?,
            None => Engine::new(cfg),
        };
        let name = super::partition_name(topic, partition);
        Ok(Part {
            topic: topic.to_owned(),
            partition,
            pipe: Pipeline::with_engine(engine, decoder, name),
            own: Ownership::new(claim.epoch, claim.seq),
            next_offset: claim.next_offset,
            committed_offset: claim.next_offset,
            first_offset: None,
            seeked: true,
            last_input: Instant::now(),
            dirty: false,
            in_flight: false,
            spill_later: None,
        })
    }

    pub fn name(&self) -> &str {
        self.pipe.partition()
    }

    /// Where a message at `offset` stands; advances the expected offset.
    pub fn position(&mut self, offset: i64) -> Position {
        let seeked = std::mem::replace(&mut self.seeked, false);
        let pos = match self.next_offset {
            Some(next) if offset < next => return Position::Stale,
            Some(next) if offset > next => Position::Gap {
                missing: offset - next,
            },
            // Right after a seek, or from the beginning of the log: nothing to compare.
            _ => Position::Next,
        };
        // Compacted and transactional topics legitimately skip offsets; a gap right
        // after a seek is what a broker losing part of a batch looks like. Both are
        // counted; only the seek case is worth a warning.
        if seeked && let Position::Gap { missing } = pos {
            tracing::warn!(partition = %self.name(), offset, missing, "first message after the seek is not at the stored offset");
        }
        self.next_offset = Some(offset + 1);
        self.first_offset.get_or_insert(offset);
        pos
    }

    /// Messages read but not yet committed to the store: what a restart would re-read,
    /// and what the backpressure budget counts.
    pub fn pending(&self) -> u64 {
        let Some(next) = self.next_offset else {
            return 0;
        };
        let from = self.committed_offset.or(self.first_offset).unwrap_or(next);
        u64::try_from(next - from).unwrap_or(0)
    }

    /// Commit the partition: the windows its watermark has passed (or, when
    /// `open` is set, every open window's current value — shutdown), its engine state
    /// and its next offset, in one fenced transaction. Nothing to do before the first
    /// message of a partition without a stored offset.
    pub async fn commit(&mut self, store: &Store, open: bool) -> Result<bool, CommitError> {
        let Some(job) = self.prepare(open)? else {
            return Ok(false);
        };
        let done = job.run(store).await;
        self.finish(done).map(|()| true)
    }

    /// The engine side of [`Part::commit`], for a commit run elsewhere: `None` when
    /// there is nothing to commit or a commit is already in flight.
    pub fn prepare(&mut self, open: bool) -> Result<Option<CommitJob>, CommitError> {
        let Some(next) = self.next_offset else {
            return Ok(None);
        };
        if self.in_flight || (!self.dirty && self.pipe.unwritten() == 0 && !open) {
            return Ok(None);
        }
        if let Some((limit, _)) = &self.spill_later
            && self.pipe.engine.open_contacts() > *limit
            && let Some((limit, spill)) = self.spill_later.take()
        {
            tracing::info!(
                partition = %self.name(),
                contacts_held = self.pipe.engine.open_contacts(),
                limit,
                "more contacts held than [windows] spill_above: closed contacts go to the store from now on"
            );
            self.pipe.engine.set_spill(spill);
        }
        let deltas = if open {
            self.pipe.engine.flush_open()
        } else {
            self.pipe.engine.flush()
        };
        let job = self.pipe.prepare_commit(&self.own, deltas, next)?;
        self.dirty = false;
        self.in_flight = true;
        Ok(Some(job))
    }

    /// Take back the outcome of a prepared commit.
    pub fn finish(&mut self, done: CommitDone) -> Result<(), CommitError> {
        self.in_flight = false;
        let next = done.next_offset;
        match self.pipe.finish_commit(&mut self.own, done) {
            Ok(()) => {
                self.committed_offset = Some(next);
                Ok(())
            }
            Err(e) => {
                // The checkpoint and offset did not land either: commit them next time
                // even when no new input arrives.
                self.dirty = true;
                Err(e)
            }
        }
    }

    /// Offsets not yet processed, given the partition's high watermark.
    pub fn lag(&self, high: i64) -> i64 {
        (high - self.next_offset.unwrap_or(0)).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(next: Option<i64>) -> Part {
        let claim = Claim {
            epoch: 1,
            seq: 0,
            next_offset: next,
            state: None,
        };
        Part::restore("t", 0, &claim, EngineConfig::default(), Decoder::default()).unwrap()
    }

    #[test]
    fn positions() {
        let mut p = part(Some(10));
        assert_eq!(p.position(9), Position::Stale);
        assert_eq!(p.position(12), Position::Gap { missing: 2 });
        assert_eq!(p.position(13), Position::Next);
        assert_eq!(p.position(13), Position::Stale);
        assert_eq!(p.next_offset, Some(14));
        assert_eq!(p.lag(20), 6);
        assert_eq!(p.pending(), 4);
        let mut fresh = part(None);
        assert_eq!(fresh.pending(), 0);
        assert_eq!(fresh.position(5), Position::Next);
        assert_eq!(fresh.position(6), Position::Next);
        assert_eq!(fresh.pending(), 2);
        assert_eq!(fresh.name(), "kafka:t:0");
    }
}
