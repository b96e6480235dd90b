//! Files read and decoded ahead on threads of their own, for `replay`.
//!
//! Decoding (JSON parse and validation) is about a third of a replay's CPU time and
//! needs nothing from the engine, so a reader thread reads the files in order and
//! splits them into batches of records, and decoder threads decode the batches while
//! the caller's thread applies the previous ones: on two cores the engine no longer
//! waits for the parser. The decoded events borrow their strings from the batch's
//! bytes (no copy per field); [`Batch`] keeps the bytes and the events borrowing them
//! together.
//!
//! Order is preserved exactly (one reader, batches dealt to the decoders in turn and
//! taken back in the same turn, bounded FIFO channels), so a replay's result is the
//! same as decoding in line, with any number of decoders.

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

/// Reads `paths` in order on a thread of its own and decodes them on [`decoders`]
/// more, handing the batches out in input order. Blank lines are skipped (they are
/// not messages). The first error (a file that cannot be opened or read) ends the
/// stream after everything before it.
///
/// The reader deals its batches to the decoders in turn (batch `k` to decoder
/// `k mod n`) and [`Ahead`] takes them back in the same turn, so the order needs no
/// reordering buffer. Why several decoders: with one, `replay` on two cores left a
/// third of a core idle between flushes. The engine's thread used about 60 % of its
/// core while the one decoder used all of the other, and the engine waited for it
/// (docs/performance.md, "forty-third round"). A second decoder takes the rest of the
/// engine's core.
///
/// Ordering holds without a deadlock. Batch `k` is dealt before batch `k + 1`, and
/// when [`Ahead`] waits for batch `k` it has taken every batch before it, so decoder
/// `k mod n`'s queue has room for it.
pub struct Ahead {
    /// Each decoder's decoded batches, in the order dealt.
    rx: Vec<Receiver<Result<Item, SourceError>>>,
    /// The decoder whose queue holds the next item.
    next: usize,
    /// Applied batches going back to the reader thread (see [`Ahead::recycle`]).
    back: Sender<Batch>,
    threads: Vec<JoinHandle<()>>,
}

/// What the reader deals to a decoder: the next item, still to decode.
enum Job {
    File(PathBuf),
    Records(Records),
    Failed(SourceError),
}

/// Decoders for a machine with `cores` cores: one per core (the engine's thread
/// shares a core with one of them), at most [`MAX_DECODERS`].
pub fn decoders(cores: usize) -> usize {
    cores.clamp(1, MAX_DECODERS)
}

/// Decoding is three to four times cheaper per event than the engine's work, so more
/// decoders than this would wait for the engine.
const MAX_DECODERS: usize = 4;

impl Ahead {
    /// [`Ahead::with_decoders`] with [`decoders`] for this machine's cores.
    pub fn spawn(paths: Vec<PathBuf>, decoder: Decoder) -> std::io::Result<Ahead> {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Ahead::with_decoders(paths, decoder, decoders(cores))
    }

    /// Read `paths` on one thread and decode them on `n` (at least one).
    pub fn with_decoders(
        paths: Vec<PathBuf>,
        decoder: Decoder,
        n: usize,
    ) -> std::io::Result<Ahead> {
        let n = n.max(1);
        // The batches decoded ahead, shared among the decoders: as many in flight as
        // with one decoder.
        let queue = AHEAD.div_ceil(n);
        let (mut jobs, mut rx, mut threads) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let (job_tx, job_rx) = sync_channel::<Job>(1);
            let (tx, out) = sync_channel(queue);
            let decoder = decoder.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("decode-{i}"))
                .spawn(move || decode_all(&job_rx, &decoder, &tx));
            match spawned {
                Ok(t) => threads.push(t),
                // The decoders already started end when their job queues close.
                Err(e) => return Err(e),
            }
            jobs.push(job_tx);
            rx.push(out);
        }
        let (back, back_rx) = channel();
        let mut turn = 0;
        let deal = move |job: Job| {
            let sent = jobs[turn].send(job).is_ok();
            turn = (turn + 1) % jobs.len();
            sent
        };
        let reader = std::thread::Builder::new()
            .name("read".into())
            .spawn(move || read_all(&paths, deal, &back_rx))?;
        threads.push(reader);
        Ok(Ahead {
            rx,
            next: 0,
            back,
            threads,
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
        let rx = self.rx.get(self.next)?;
        match rx.recv() {
            Ok(item) => {
                self.next = (self.next + 1) % self.rx.len();
                Some(item)
            }
            Err(_) => {
                // The reader finished, or a thread panicked; nothing more will come, as
                // the next item would have come from this decoder. The other queues are
                // closed so that no thread waits on a full one. A panic (a bug) ends
                // the stream with an error, never as if the input had ended there.
                self.rx.clear();
                let mut stopped = None;
                for t in self.threads.drain(..) {
                    let thread = t.thread().name().unwrap_or("reader").to_owned();
                    if t.join().is_err() {
                        stopped.get_or_insert(SourceError::Stopped { thread });
                    }
                }
                stopped.map(Err)
            }
        }
    }
}

/// A decoder's thread: decode each job's records, in the order dealt.
fn decode_all(jobs: &Receiver<Job>, decoder: &Decoder, tx: &SyncSender<Result<Item, SourceError>>) {
    for job in jobs {
        let item = match job {
            Job::File(path) => Ok(Item::File(path)),
            Job::Records(records) => Ok(Item::Batch(Batch::new(records, |r| {
                Decoded::of(r, decoder)
            }))),
            Job::Failed(e) => Err(e),
        };
        if tx.send(item).is_err() {
            return;
        }
    }
}

/// The reader's thread: split `paths` into batches of records and `deal` them out
/// (false: nobody takes them any more).
fn read_all(paths: &[PathBuf], mut deal: impl FnMut(Job) -> bool, back: &Receiver<Batch>) {
    // Buffers of batches handed back, their events freed (here, on this thread).
    let mut spare: Vec<Records> = Vec::new();
    for path in paths {
        if !deal(Job::File(path.clone())) {
            return;
        }
        let mut reader = match file::open_lines(path) {
            Ok(r) => r,
            Err(e) => {
                deal(Job::Failed(e));
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
                    deal(Job::Failed(SourceError::read(path, e)));
                    return;
                }
            };
            if !records.ranges.is_empty() && !deal(Job::Records(records)) {
                return;
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
        let mut batches: Vec<Batch> = Vec::new();
        read_all(
            &[a],
            |job| {
                match job {
                    Job::Records(r) => batches.push(Batch::new(r, |r| Decoded::of(r, &decoder))),
                    Job::File(_) => {}
                    Job::Failed(e) => panic!("{e}"),
                }
                true
            },
            &back_rx,
        );
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

    /// Any number of decoders hands out the same items in the same order as one:
    /// every record of several files, each file announced before its batches, and a
    /// read error last, after everything before it.
    #[test]
    fn several_decoders_keep_the_input_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for (f, n) in [(0, 3 * BATCH_RECORDS + 7), (1, 5), (2, BATCH_RECORDS)] {
            let p = dir.path().join(format!("{f}.jsonl"));
            let text: String = (0..n)
                .map(|i| {
                    format!(
                        "{{\"event_id\":\"f{f}-{i}\",\"type\":\"agent.state\",\"ts\":1795392000000,\"agent_id\":\"x\",\"state\":\"available\"}}\n"
                    )
                })
                .collect();
            std::fs::write(&p, text).unwrap();
            paths.push(p);
        }
        paths.push(dir.path().join("missing.jsonl"));
        let run = |n: usize| {
            let mut seen = Vec::new();
            let mut ahead = Ahead::with_decoders(paths.clone(), Decoder::default(), n).unwrap();
            while let Some(item) = ahead.next() {
                match item {
                    Ok(Item::File(p)) => {
                        seen.push(format!("file {}", p.file_name().unwrap().display()))
                    }
                    Ok(Item::Batch(b)) => {
                        b.with_dependent(|_, decoded| {
                            for (i, d) in decoded.iter().enumerate() {
                                let ev = d.as_ref().unwrap();
                                assert_eq!(decoded.keys[i], Keys::of(ev));
                                seen.push(ev.event_id.to_string());
                            }
                        });
                        // Recycled or dropped, the order is the same.
                        if seen.len() % 2 == 0 {
                            ahead.recycle(b);
                        }
                    }
                    Err(e) => {
                        seen.push(format!("error {}", e.to_string().contains("missing.jsonl")))
                    }
                }
            }
            seen
        };
        let one = run(1);
        assert_eq!(one.len(), 4 * BATCH_RECORDS + 12 + 4 + 1);
        assert_eq!(one[0], "file 0.jsonl");
        assert_eq!(one[1], "f0-0");
        assert_eq!(one.last().unwrap(), "error true");
        for n in [2, 3, 5] {
            assert_eq!(run(n), one, "{n} decoders");
        }
    }

    /// A thread that panics ends the stream with an error after what it delivered,
    /// never as if the input had ended there.
    #[test]
    fn a_panicking_thread_ends_the_stream_with_an_error() {
        let (tx, rx) = sync_channel(4);
        let (back, _back_rx) = channel();
        let thread = std::thread::Builder::new()
            .name("decode-0".into())
            .spawn(move || {
                tx.send(Ok(Item::File(PathBuf::from("a.jsonl")))).unwrap();
                panic!("a decoder's bug");
            })
            .unwrap();
        let mut ahead = Ahead {
            rx: vec![rx],
            next: 0,
            back,
            threads: vec![thread],
        };
        assert!(matches!(ahead.next(), Some(Ok(Item::File(_)))));
        match ahead.next() {
            Some(Err(SourceError::Stopped { thread })) => assert_eq!(thread, "decode-0"),
            other => panic!(
                "expected the stop as an error, got {:?}",
                other.map(|r| r.is_ok())
            ),
        }
        assert!(ahead.next().is_none());
    }
}
