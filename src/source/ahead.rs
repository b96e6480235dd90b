//! Files read and decoded ahead on a thread of their own, for `replay`.
//!
//! Decoding (JSON parse and validation) is about a third of a replay's CPU time and
//! needs nothing from the engine, so a reader thread reads the files in order, splits
//! them into records and decodes them in batches while the caller's thread applies
//! the previous batch: on two cores the engine no longer waits for the parser. The
//! decoded events borrow their strings from the batch's bytes (no copy per field);
//! [`Batch`] keeps the bytes and the events borrowing them together.
//!
//! Order is preserved exactly (one reader, one bounded FIFO channel), so a replay's
//! result is the same as decoding in line.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use super::file::{self, SourceError};
use crate::event::{Decoder, Event, Keys, Reject};

/// Records per batch: large enough that the channel (and the spill's prefetch, a few
/// statements per batch) costs nothing per event, small enough that the batches in
/// flight stay small. A batch is its raw bytes (~170 per record) plus the decoded
/// events (~320 bytes each): about 1 MiB at 2048 records.
const BATCH_RECORDS: usize = 2048;
/// Batches decoded ahead of the consumer: at most `AHEAD` + 2 exist (queued, one being
/// decoded, one being applied), ~1.2 MiB each with the events' keys. Decoding is 3 to 4
/// times faster than the engine, but on two cores it shares a core with SQLite's worker
/// and the snapshot writer, which run in bursts right after each flush: with 2 batches
/// queued (7 ms of engine work) the engine then waited for the decoder 140–180 ms per
/// million events, with 16 (55 ms) 20–65 ms; `replay` of 1 M events, two runs of 11
/// alternated pairs: wall 0.94 and 0.91 (docs/performance.md, "fourteenth round").
/// 8 since the seventeenth round, when the batches grew by their events' `Keys`: on an
/// Intel Xeon host 8 against 16 gave `replay` wall 0.994 (default) and 1.003 (the
/// DuckDB comparison's windows), 15 pairs each, noise, and the 10 k-agent memory
/// set-up's peak 234.8 → 225.1 MiB (7 pairs); on the AMD EPYC host 16 against 8 was
/// noise too (like for like 0.999, default 1.003, 21 pairs each; "eighteenth round").
const AHEAD: usize = 8;

/// The raw records of one batch, back to back.
pub struct Records {
    bytes: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl Records {
    /// The raw bytes of record `i` (for dead letters and reject logs).
    pub fn record(&self, i: usize) -> &[u8] {
        self.ranges.get(i).map_or(&[], |r| &self.bytes[r.clone()])
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// One decoded record per raw record (`decoded[i]` is record `i`), borrowing from them,
/// and each event's [`Keys`] (`decoded.keys[i]`; the default for a reject). The keys are
/// hashed here, on the reader thread, once per event: the engine reads them at every
/// look-ahead stage and when it applies the event.
pub struct Decoded<'a> {
    events: Vec<Result<Event<'a>, Reject>>,
    pub keys: Vec<Keys>,
}

impl<'a> Decoded<'a> {
    fn of(records: &'a Records, decoder: &Decoder) -> Decoded<'a> {
        let events: Vec<_> = records
            .ranges
            .iter()
            .map(|range| decoder.decode(&records.bytes[range.clone()]))
            .collect();
        let keys = events.iter().map(Keys::of_decoded).collect();
        Decoded { events, keys }
    }
}

impl<'a> std::ops::Deref for Decoded<'a> {
    type Target = [Result<Event<'a>, Reject>];

    fn deref(&self) -> &Self::Target {
        &self.events
    }
}

self_cell::self_cell!(
    /// A batch of records and their decoding.
    pub struct Batch {
        owner: Records,
        #[covariant]
        dependent: Decoded,
    }
);

/// What the reader thread sends, in input order.
pub enum Item {
    /// The next file starts (for progress display).
    File(PathBuf),
    Batch(Batch),
}

/// Reads and decodes `paths` in order on a new thread. Blank lines are skipped (they
/// are not messages). The first error (a file that cannot be opened or read) ends the
/// stream after everything before it.
pub struct Ahead {
    rx: Receiver<Result<Item, SourceError>>,
    /// Applied batches going back to the reader thread (see [`Ahead::recycle`]).
    back: Sender<Batch>,
    thread: Option<JoinHandle<()>>,
}

impl Ahead {
    pub fn spawn(paths: Vec<PathBuf>, decoder: Decoder) -> std::io::Result<Ahead> {
        let (tx, rx) = sync_channel(AHEAD);
        let (back, back_rx) = channel();
        let thread = std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || read_all(&paths, &decoder, &tx, &back_rx))?;
        Ok(Ahead {
            rx,
            back,
            thread: Some(thread),
        })
    }

    /// Hand an applied batch back to the reader thread, which frees its events and
    /// reads the next records into its buffers. Freeing 2,048 decoded events and
    /// allocating half a MiB of record bytes per batch sat on the engine's thread
    /// (the critical path of a replay on two cores; docs/performance.md). Dropping a
    /// batch instead is fine too: the reader then allocates new buffers.
    pub fn recycle(&self, batch: Batch) {
        // The reader has stopped when this fails; the batch is simply dropped here.
        let _ = self.back.send(batch);
    }
}

impl Iterator for Ahead {
    type Item = Result<Item, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(item) => Some(item),
            Err(_) => {
                // The reader finished (or panicked: its batches so far were delivered
                // and the panic was printed); nothing more will come.
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                None
            }
        }
    }
}

fn read_all(
    paths: &[PathBuf],
    decoder: &Decoder,
    tx: &SyncSender<Result<Item, SourceError>>,
    back: &Receiver<Batch>,
) {
    // Buffers of batches handed back, their events freed (here, on this thread).
    let mut spare: Vec<Records> = Vec::new();
    for path in paths {
        if tx.send(Ok(Item::File(path.clone()))).is_err() {
            return;
        }
        let mut reader = match file::open_lines(path) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        loop {
            spare.extend(back.try_iter().map(Batch::into_owner));
            let mut records = match spare.pop() {
                Some(mut r) => {
                    r.bytes.clear();
                    r.ranges.clear();
                    r
                }
                None => Records {
                    bytes: Vec::with_capacity(BATCH_RECORDS * 256),
                    ranges: Vec::with_capacity(BATCH_RECORDS),
                },
            };
            let eof = match file::read_records(
                &mut reader,
                &mut records.bytes,
                &mut records.ranges,
                BATCH_RECORDS,
            ) {
                Ok(more) => !more,
                Err(e) => {
                    let _ = tx.send(Err(SourceError::read(path, e)));
                    return;
                }
            };
            if !records.ranges.is_empty() {
                let batch = Batch::new(records, |r| Decoded::of(r, decoder));
                if tx.send(Ok(Item::Batch(batch))).is_err() {
                    return;
                }
            }
            if eof {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_order_skip_blanks_and_report_open_errors() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let mut text = String::new();
        for i in 0..(BATCH_RECORDS + 10) {
            text.push_str(&format!(
                r#"{{"event_id":"e{i}","type":"agent.state","ts":1795392000000,"agent_id":"x","state":"available"}}"#
            ));
            text.push_str(if i % 100 == 0 { "\n\n" } else { "\n" });
        }
        text.push_str("not json\n");
        std::fs::write(&a, text).unwrap();
        let missing = dir.path().join("missing.jsonl");
        let mut ids = Vec::new();
        let mut bad = 0;
        let mut files = 0;
        let mut error = None;
        for item in Ahead::spawn(vec![a, missing.clone()], Decoder::default()).unwrap() {
            match item {
                Ok(Item::File(_)) => files += 1,
                Ok(Item::Batch(b)) => b.with_dependent(|records, decoded| {
                    for (i, d) in decoded.iter().enumerate() {
                        match d {
                            Ok(ev) => {
                                assert!(records.record(i).starts_with(b"{"));
                                assert_eq!(decoded.keys[i], Keys::of(ev), "record {i}'s keys");
                                ids.push(ev.event_id.to_string());
                            }
                            Err(_) => {
                                assert_eq!(decoded.keys[i], Keys::default());
                                bad += 1
                            }
                        }
                    }
                }),
                Err(e) => error = Some(e.to_string()),
            }
        }
        assert_eq!(files, 2);
        assert_eq!(bad, 1);
        let want: Vec<String> = (0..(BATCH_RECORDS + 10)).map(|i| format!("e{i}")).collect();
        assert_eq!(ids, want);
        assert!(error.unwrap().contains("missing.jsonl"));
    }

    /// A batch handed back is read into again: its buffer holds the next records, each
    /// its own line, whole, with nothing of what it held before.
    #[test]
    fn recycled_batches_hold_only_their_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let n = 2 * BATCH_RECORDS + 5;
        let lines: Vec<String> = (0..n)
            .map(|i| {
                // Lengths vary, so a stale range or byte would show.
                let pad = "x".repeat(i % 37);
                format!(
                    r#"{{"event_id":"e{i}","type":"agent.state","ts":1795392000000,"agent_id":"a{pad}","state":"available"}}"#
                )
            })
            .collect();
        std::fs::write(&a, lines.join("\n")).unwrap();
        // A full batch of other, longer records, handed back before reading starts.
        let mut used = Records {
            bytes: Vec::new(),
            ranges: Vec::new(),
        };
        for _ in 0..BATCH_RECORDS {
            let start = used.bytes.len();
            used.bytes.extend_from_slice(&[b'z'; 300]);
            used.ranges.push(start..used.bytes.len());
        }
        let used_at = used.bytes.as_ptr();
        let decoder = Decoder::default();
        let used = Batch::new(used, |r| Decoded::of(r, &decoder));
        let (back_tx, back_rx) = channel();
        back_tx.send(used).unwrap();
        let (tx, rx) = sync_channel(8);
        read_all(&[a], &decoder, &tx, &back_rx);
        drop(tx);
        let batches: Vec<Batch> = rx
            .iter()
            .filter_map(|item| match item.unwrap() {
                Item::Batch(b) => Some(b),
                Item::File(_) => None,
            })
            .collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(
            batches[0].borrow_owner().bytes.as_ptr(),
            used_at,
            "the first batch is read into the buffer handed back"
        );
        let mut seen = Vec::new();
        for b in &batches {
            b.with_dependent(|records, decoded| {
                assert_eq!(records.len(), decoded.len());
                assert_eq!(decoded.keys.len(), decoded.len());
                for (i, d) in decoded.iter().enumerate() {
                    let raw = std::str::from_utf8(records.record(i)).unwrap();
                    assert_eq!(raw, lines[seen.len()]);
                    seen.push(d.as_ref().unwrap().event_id.to_string());
                }
            });
        }
        let want: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
        assert_eq!(seen, want);
    }
}
