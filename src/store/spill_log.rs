//! `replay`'s spill: settled contacts in append-only files of a scratch directory,
//! not in a database (see `engine::spill` for what is spilled and why).
//!
//! `serve` spills into the store, in the transaction of its checkpoint
//! ([`super::spill::StoreSpill`]). A replay has no checkpoint: a crashed replay starts
//! over and replaces its partition, so its spill only has to last the run. And its
//! pattern is narrow: nearly every spilled contact is written once and never read
//! again (counted over 3 M events of a 10 k-agent centre: 228,969 puts, 4,411 takes
//! by key, 1,298 by customer), then forgotten a correction horizon later. A B-tree
//! pays for that with two random-key index inserts per contact (the twenty-fourth
//! round's profile: most of the spill's cost). Here, per day of `last_ts`:
//!
//! - **bodies** are appended to the day's `.bodies` file (through a buffer);
//! - their locations go into two small in-memory tables, by contact key and by
//!   customer. A table that reaches a length ([`LogSpill::with_sizes`]) is sorted and
//!   appended to the day's index file as a **run**, of which memory keeps only a
//!   Bloom filter and the first key of every block of [`BLOCK`] entries; runs are
//!   merged, [`MERGE`] of one size into one, so a day has a few runs;
//! - a contact **taken back** is remembered by the sequence number of its newest
//!   record (`dead`): the files are never rewritten;
//! - a **day ends** with the correction horizon: its files are deleted whole.
//!
//! Look-ups are rare and local: the per-day Bloom filters answer "never spilled" for
//! most keys, as [`super::spill::StoreSpill`]'s do; a key that passes them reads, per
//! run whose filter has it, one block of the index file, then the record.
//!
//! Errors: the [`Spill`] trait cannot fail (the engine needs an answer), and a local
//! file that cannot be written or read will not heal by retrying (a full disk). The
//! first error is kept and reported by [`Spill::failure`]; `replay` checks it before
//! every write of snapshot rows and stops with it, so an answer given after the
//! error never reaches the store.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::engine::spill::{Spill, SpilledContact};
use crate::event::Millis;

use super::spill::{DayBlooms, Layer};

type Key = u128;

const DAY_MS: i64 = 86_400_000;
/// Entries per block of a run: the unit read from an index file (40 bytes each).
pub const BLOCK: usize = 64;
/// Runs of one size merged into one of the next.
pub const MERGE: usize = 8;
/// Entries a day's in-memory table holds before it becomes a run: 7/8 of a power of
/// two, the most a hash table of that many buckets holds (0.4 MiB). Tables of 64 Ki
/// entries made the memory set-up's peak 11 MiB higher; small ones cost no time
/// (a run is written once, merged a few times, and read only on a look-up).
const RUN_LEN: usize = (1 << 13) / 8 * 7;
/// Bodies buffered before they are written to the day's file.
const TAIL_BYTES: usize = 1 << 20;
/// Index bytes buffered before a write, and entries read at a time by a merge.
const WRITE_BYTES: usize = 1 << 16;
const READ_ENTRIES: usize = 1 << 11;

/// Where a record lies in its day's bodies file, and its place in the order of puts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    seq: u64,
    off: u64,
    len: u32,
}

const ENTRY_BYTES: usize = 40;

fn encode_entry(key: Key, loc: Loc, out: &mut Vec<u8>) {
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&loc.seq.to_le_bytes());
    out.extend_from_slice(&loc.off.to_le_bytes());
    out.extend_from_slice(&loc.len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

fn decode_entry(b: &[u8]) -> (Key, Loc) {
    let word = |r: std::ops::Range<usize>| -> [u8; 8] {
        let mut w = [0; 8];
        w.copy_from_slice(&b[r]);
        w
    };
    let mut k = [0; 16];
    k.copy_from_slice(&b[0..16]);
    let mut len = [0; 4];
    len.copy_from_slice(&b[32..36]);
    (
        Key::from_le_bytes(k),
        Loc {
            seq: u64::from_le_bytes(word(16..24)),
            off: u64::from_le_bytes(word(24..32)),
            len: u32::from_le_bytes(len),
        },
    )
}

/// A sorted run in an index file: its place, and what memory keeps of it.
struct Run {
    start: u64,
    len: usize,
    /// The first key of every block.
    fences: Vec<Key>,
    bloom: Layer,
    /// Merges it went through (runs of one level are merged together).
    level: u32,
}

/// A run being written: what memory will keep of it, and bytes not written yet.
struct RunWriter {
    start: u64,
    len: usize,
    fences: Vec<Key>,
    bloom: Layer,
    bytes: Vec<u8>,
}

/// A run being read in order, a chunk at a time (a merge's input).
struct Cursor {
    next: u64,
    left: usize,
    buf: Vec<(Key, Loc)>,
    at: usize,
}

impl Cursor {
    fn next(&mut self, index: &Index) -> std::io::Result<Option<(Key, Loc)>> {
        if self.at == self.buf.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let n = self.left.min(READ_ENTRIES);
            self.buf = index.read_entries(self.next, n)?;
            self.next += (n * ENTRY_BYTES) as u64;
            self.left -= n;
            self.at = 0;
        }
        let e = self.buf.get(self.at).copied();
        self.at += 1;
        Ok(e)
    }
}

/// A file written only at its end, created by its first write.
struct AppendFile {
    path: PathBuf,
    file: Option<File>,
    /// Bytes written.
    len: u64,
}

impl AppendFile {
    fn new(path: PathBuf) -> AppendFile {
        AppendFile {
            path,
            file: None,
            len: 0,
        }
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                File::options()
                    .create_new(true)
                    .read(true)
                    .append(true)
                    .open(&self.path)?,
            ),
        };
        file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        self.file
            .as_ref()
            .ok_or_else(corrupt)?
            .read_exact_at(buf, at)
    }

    fn remove(&self) -> std::io::Result<()> {
        match self.file {
            Some(_) => std::fs::remove_file(&self.path),
            None => Ok(()),
        }
    }
}

/// Locations by key (a contact's, or a customer's: several per key), in memory and
/// in runs of one index file.
struct Index {
    file: AppendFile,
    /// Not written yet (a contact has one location, a customer usually one).
    mem: HashMap<Key, SmallVec<[Loc; 1]>>,
    mem_len: usize,
    runs: Vec<Run>,
}

impl Index {
    fn new(path: PathBuf) -> Index {
        Index {
            file: AppendFile::new(path),
            mem: HashMap::new(),
            mem_len: 0,
            runs: Vec::new(),
        }
    }

    fn insert(&mut self, key: Key, loc: Loc, run_len: usize) -> std::io::Result<()> {
        self.mem.entry(key).or_default().push(loc);
        self.mem_len += 1;
        if self.mem_len >= run_len {
            let mut entries: Vec<(Key, Loc)> = std::mem::take(&mut self.mem)
                .into_iter()
                .flat_map(|(k, locs)| locs.into_iter().map(move |l| (k, l)))
                .collect();
            self.mem_len = 0;
            entries.sort_unstable_by_key(|(k, l)| (*k, l.seq));
            self.write_run(&entries, 0)?;
            self.merge()?;
        }
        Ok(())
    }

    /// Append sorted `entries` as a run.
    fn write_run(&mut self, entries: &[(Key, Loc)], level: u32) -> std::io::Result<()> {
        let mut w = self.begin_run(entries.len());
        for &(k, l) in entries {
            self.push(&mut w, k, l)?;
        }
        self.finish_run(w, level)
    }

    fn begin_run(&self, len: usize) -> RunWriter {
        RunWriter {
            start: self.file.len,
            len: 0,
            fences: Vec::with_capacity(len.div_ceil(BLOCK)),
            bloom: Layer::new(len.max(1)),
            bytes: Vec::with_capacity(WRITE_BYTES.min(len * ENTRY_BYTES)),
        }
    }

    /// The next entry of the run `w` (in key order).
    fn push(&mut self, w: &mut RunWriter, k: Key, l: Loc) -> std::io::Result<()> {
        if w.len.is_multiple_of(BLOCK) {
            w.fences.push(k);
        }
        w.bloom.insert(k);
        encode_entry(k, l, &mut w.bytes);
        w.len += 1;
        if w.bytes.len() >= WRITE_BYTES {
            self.append(&mut w.bytes)?;
        }
        Ok(())
    }

    fn finish_run(&mut self, mut w: RunWriter, level: u32) -> std::io::Result<()> {
        self.append(&mut w.bytes)?;
        self.runs.push(Run {
            start: w.start,
            len: w.len,
            fences: w.fences,
            bloom: w.bloom,
            level,
        });
        Ok(())
    }

    /// `bytes` to the end of the file, then cleared.
    fn append(&mut self, bytes: &mut Vec<u8>) -> std::io::Result<()> {
        self.file.append(bytes)?;
        bytes.clear();
        Ok(())
    }

    /// Merge [`MERGE`] runs of one level into one of the next, as long as there are:
    /// a streaming merge of the sorted runs, a chunk of each in memory at a time. The
    /// merged runs' bytes stay in the file, unreferenced: it is deleted with its day,
    /// and an entry is written about 1 + log_MERGE(day's entries / run length) times.
    fn merge(&mut self) -> std::io::Result<()> {
        loop {
            let Some(level) = self.runs.last().map(|r| r.level) else {
                return Ok(());
            };
            if self.runs.iter().filter(|r| r.level == level).count() < MERGE {
                return Ok(());
            }
            let (merged, kept): (Vec<Run>, Vec<Run>) = std::mem::take(&mut self.runs)
                .into_iter()
                .partition(|r| r.level == level);
            self.runs = kept;
            let mut cursors: Vec<Cursor> = merged
                .iter()
                .map(|r| Cursor {
                    next: r.start,
                    left: r.len,
                    buf: Vec::new(),
                    at: 0,
                })
                .collect();
            let mut heads: Vec<Option<(Key, Loc)>> = Vec::with_capacity(cursors.len());
            for c in &mut cursors {
                heads.push(c.next(self)?);
            }
            let mut w = self.begin_run(merged.iter().map(|r| r.len).sum());
            // MERGE inputs: a linear scan for the smallest head is as quick as a heap.
            while let Some(i) = (0..heads.len())
                .filter(|&i| heads[i].is_some())
                .min_by_key(|&i| heads[i].map(|(k, l)| (k, l.seq)))
            {
                if let Some((k, l)) = heads[i] {
                    self.push(&mut w, k, l)?;
                }
                heads[i] = cursors[i].next(self)?;
            }
            self.finish_run(w, level + 1)?;
        }
    }

    fn read_entries(&self, start: u64, n: usize) -> std::io::Result<Vec<(Key, Loc)>> {
        let mut bytes = vec![0; n * ENTRY_BYTES];
        self.file.read_exact_at(&mut bytes, start)?;
        Ok(bytes.chunks_exact(ENTRY_BYTES).map(decode_entry).collect())
    }

    /// Every location of `key`, in no particular order.
    fn get(&self, key: Key, out: &mut Vec<Loc>) -> std::io::Result<()> {
        if let Some(locs) = self.mem.get(&key) {
            out.extend_from_slice(locs);
        }
        for run in &self.runs {
            if !run.bloom.contains(key) {
                continue;
            }
            // Blocks that may hold `key`: from the last one starting below it (its
            // entries run up to the next fence) to the last one starting at it.
            let first = run.fences.partition_point(|f| *f < key).saturating_sub(1);
            let end = run.fences.partition_point(|f| *f <= key).max(first + 1);
            let from = first * BLOCK;
            let to = (end * BLOCK).min(run.len);
            let entries = self.read_entries(run.start + (from * ENTRY_BYTES) as u64, to - from)?;
            out.extend(
                entries
                    .into_iter()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, l)| l),
            );
        }
        Ok(())
    }
}

/// One day of `last_ts`: its bodies and their two indexes.
struct Day {
    /// Records up to its length; those after it are in `tail`.
    bodies: AppendFile,
    tail: Vec<u8>,
    keys: Index,
    customers: Index,
    /// Contacts held (put and not taken back).
    held: i64,
}

impl Day {
    fn new(dir: &Path, day: i64) -> Day {
        Day {
            bodies: AppendFile::new(dir.join(format!("day{day}.bodies"))),
            tail: Vec::new(),
            keys: Index::new(dir.join(format!("day{day}.keys"))),
            customers: Index::new(dir.join(format!("day{day}.customers"))),
            held: 0,
        }
    }

    fn append(&mut self, c: &SpilledContact, seq: u64, tail_bytes: usize) -> std::io::Result<Loc> {
        let off = self.bodies.len + self.tail.len() as u64;
        encode_record(c, &mut self.tail);
        let len = (self.bodies.len + self.tail.len() as u64 - off) as u32;
        if self.tail.len() >= tail_bytes {
            self.bodies.append(&self.tail)?;
            self.tail.clear();
        }
        Ok(Loc { seq, off, len })
    }

    fn read(&self, loc: Loc) -> std::io::Result<SpilledContact> {
        let len = loc.len as usize;
        if loc.off >= self.bodies.len {
            let at = (loc.off - self.bodies.len) as usize;
            return decode_record(self.tail.get(at..at + len).ok_or_else(corrupt)?);
        }
        let mut bytes = vec![0; len];
        self.bodies.read_exact_at(&mut bytes, loc.off)?;
        decode_record(&bytes)
    }

    fn remove_files(&self) -> std::io::Result<()> {
        self.bodies.remove()?;
        self.keys.file.remove()?;
        self.customers.file.remove()
    }
}

fn corrupt() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "a spilled contact's record is not where its index says",
    )
}

/// key, customer (0: none; keys are hashes of ids, never 0), first offer (flag and
/// value), last event time, body length, body.
fn encode_record(c: &SpilledContact, out: &mut Vec<u8>) {
    out.extend_from_slice(&c.key.to_le_bytes());
    out.extend_from_slice(&c.customer.unwrap_or(0).to_le_bytes());
    out.push(u8::from(c.first_offer.is_some()));
    out.extend_from_slice(&c.first_offer.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&c.last_ts.to_le_bytes());
    out.extend_from_slice(&(c.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&c.body);
}

const RECORD_HEAD: usize = 16 + 16 + 1 + 8 + 8 + 4;

fn decode_record(b: &[u8]) -> std::io::Result<SpilledContact> {
    if b.len() < RECORD_HEAD {
        return Err(corrupt());
    }
    let u128_at = |at: usize| {
        let mut w = [0; 16];
        w.copy_from_slice(&b[at..at + 16]);
        u128::from_le_bytes(w)
    };
    let i64_at = |at: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&b[at..at + 8]);
        i64::from_le_bytes(w)
    };
    let mut len = [0; 4];
    len.copy_from_slice(&b[49..53]);
    let len = u32::from_le_bytes(len) as usize;
    if b.len() != RECORD_HEAD + len {
        return Err(corrupt());
    }
    let customer = u128_at(16);
    Ok(SpilledContact {
        key: u128_at(0),
        customer: (customer != 0).then_some(customer),
        first_offer: (b[32] != 0).then(|| i64_at(33)),
        last_ts: i64_at(41),
        body: Arc::from(&b[RECORD_HEAD..]),
    })
}

/// Keep the first error (later ones follow from it).
fn fail(slot: &mut Option<std::io::Error>, dir: &Path, e: std::io::Error) {
    if slot.is_none() {
        tracing::error!(dir = %dir.display(), error = %e, "the contact spill's files failed");
        *slot = Some(e);
    }
}

/// The spill of one `replay` run in the files of `dir` (module docs).
pub struct LogSpill {
    dir: PathBuf,
    days: BTreeMap<i64, Day>,
    /// Contacts taken back: the sequence number of the newest record each had then,
    /// and that record's day (the entry goes when the day does: older records of the
    /// key are in that day or earlier ones, since `last_ts` only grows).
    dead: HashMap<Key, (u64, i64)>,
    keys: DayBlooms,
    customers: DayBlooms,
    seq: u64,
    horizon: Millis,
    run_len: usize,
    tail_bytes: usize,
    error: Option<std::io::Error>,
}

impl LogSpill {
    /// A spill writing into `dir` (which must exist; files are created as needed,
    /// and deleted as their day passes the correction horizon).
    pub fn new(dir: &Path) -> LogSpill {
        LogSpill {
            dir: dir.to_path_buf(),
            days: BTreeMap::new(),
            dead: HashMap::new(),
            keys: DayBlooms::default(),
            customers: DayBlooms::default(),
            seq: 0,
            horizon: Millis::MIN,
            run_len: RUN_LEN,
            tail_bytes: TAIL_BYTES,
            error: None,
        }
    }

    /// The in-memory tables' length before they become runs, and the bodies buffered
    /// before a write (tests use small ones, to reach every path with few contacts).
    pub fn with_sizes(mut self, run_len: usize, tail_bytes: usize) -> LogSpill {
        self.run_len = run_len.max(1);
        self.tail_bytes = tail_bytes;
        self
    }

    fn fail(&mut self, e: std::io::Error) {
        fail(&mut self.error, &self.dir, e);
    }

    /// The newest record of `key` (its day and location), dead or not.
    fn newest(&mut self, key: Key) -> Option<(i64, Loc)> {
        let mut best: Option<(i64, Loc)> = None;
        let mut locs = Vec::new();
        for (&day, d) in &self.days {
            locs.clear();
            if let Err(e) = d.keys.get(key, &mut locs) {
                fail(&mut self.error, &self.dir, e);
                return None;
            }
            for &l in &locs {
                if best.is_none_or(|(_, b)| l.seq > b.seq) {
                    best = Some((day, l));
                }
            }
        }
        best
    }

    /// The record at `loc` of `day`, if it is live: not taken back since, and not
    /// before the horizon.
    fn live(&mut self, key: Key, day: i64, loc: Loc) -> Option<SpilledContact> {
        if self.dead.get(&key).is_some_and(|&(seq, _)| seq >= loc.seq) {
            return None;
        }
        let read = self.days.get(&day)?.read(loc);
        match read {
            Ok(c) if c.key == key && c.last_ts >= self.horizon => Some(c),
            Ok(_) => None,
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// The record at `loc` whatever its state (to learn its key).
    fn any_record(&mut self, day: i64, loc: Loc) -> Option<SpilledContact> {
        let read = self.days.get(&day)?.read(loc);
        match read {
            Ok(c) => Some(c),
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// `key`'s record at `loc` of `day` leaves the spill.
    fn kill(&mut self, key: Key, day: i64, loc: Loc) {
        self.dead.insert(key, (loc.seq, day));
        if let Some(d) = self.days.get_mut(&day) {
            d.held -= 1;
        }
    }
}

impl Spill for LogSpill {
    fn put(&mut self, c: SpilledContact) {
        let day = c.last_ts.div_euclid(DAY_MS);
        self.seq += 1;
        let seq = self.seq;
        let (dir, run_len, tail_bytes) = (&self.dir, self.run_len, self.tail_bytes);
        let d = self.days.entry(day).or_insert_with(|| Day::new(dir, day));
        let written = d.append(&c, seq, tail_bytes).and_then(|loc| {
            d.keys.insert(c.key, loc, run_len)?;
            if let Some(k) = c.customer {
                d.customers.insert(k, loc, run_len)?;
            }
            Ok(())
        });
        d.held += 1;
        if let Err(e) = written {
            self.fail(e);
        }
        self.keys.insert(day, c.key);
        if let Some(k) = c.customer {
            self.customers.insert(day, k);
        }
    }

    fn take(&mut self, key: Key) -> Option<SpilledContact> {
        if !self.keys.contains(key) {
            return None;
        }
        let (day, loc) = self.newest(key)?;
        let c = self.live(key, day, loc)?;
        self.kill(key, day, loc);
        Some(c)
    }

    fn take_customer(&mut self, customer: Key) -> Vec<SpilledContact> {
        if !self.customers.contains(customer) {
            return Vec::new();
        }
        let mut found: Vec<(i64, Loc)> = Vec::new();
        let mut locs = Vec::new();
        for (&day, d) in &self.days {
            locs.clear();
            if let Err(e) = d.customers.get(customer, &mut locs) {
                fail(&mut self.error, &self.dir, e);
                return Vec::new();
            }
            found.extend(locs.iter().map(|&l| (day, l)));
        }
        // Newest first: a contact put twice under this customer counts once.
        found.sort_unstable_by_key(|(_, l)| std::cmp::Reverse(l.seq));
        let mut out: Vec<SpilledContact> = Vec::new();
        for (day, loc) in found {
            let Some(c) = self.any_record(day, loc) else {
                continue;
            };
            if c.customer != Some(customer) || out.iter().any(|o| o.key == c.key) {
                continue;
            }
            // Only the contact's newest record counts (a later one may name another
            // customer), and only while it is held.
            if self.newest(c.key) != Some((day, loc)) {
                continue;
            }
            if let Some(c) = self.live(c.key, day, loc) {
                self.kill(c.key, day, loc);
                out.push(c);
            }
        }
        out
    }

    fn expire(&mut self, before: Millis) {
        if before <= self.horizon {
            return;
        }
        self.horizon = before;
        let first = before.div_euclid(DAY_MS);
        let kept = self.days.split_off(&first);
        for d in std::mem::replace(&mut self.days, kept).into_values() {
            if let Err(e) = d.remove_files() {
                self.fail(e);
            }
        }
        self.keys.drop_before(first);
        self.customers.drop_before(first);
        self.dead.retain(|_, &mut (_, day)| day >= first);
    }

    /// Counted per day: contacts before the horizon count until their day is dropped.
    fn len(&self) -> usize {
        self.days.values().map(|d| d.held).sum::<i64>().max(0) as usize
    }

    fn failure(&mut self) -> Option<std::io::Error> {
        self.error.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::spill::MemSpill;
    use proptest::prelude::*;

    fn contact(key: u128, customer: Option<u128>, last_ts: Millis, tag: u8) -> SpilledContact {
        SpilledContact {
            key,
            customer,
            first_offer: (!key.is_multiple_of(3)).then_some(last_ts - 5),
            last_ts,
            body: vec![tag; (key % 300) as usize].into(),
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u128, Option<u128>, i64),
        Take(u128),
        TakeCustomer(u128),
        Expire(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few keys and customers, so that keys are put again, taken, and found in
        // several runs and days.
        let key = 1..60u128;
        let customer = prop::option::of(1000..1010u128);
        let hours = 0..120i64;
        prop_oneof![
            6 => (key.clone(), customer, hours.clone()).prop_map(|(k, c, h)| Op::Put(k, c, h)),
            3 => key.prop_map(Op::Take),
            2 => (1000..1010u128).prop_map(Op::TakeCustomer),
            1 => hours.prop_map(Op::Expire),
        ]
    }

    fn sorted(mut v: Vec<SpilledContact>) -> Vec<SpilledContact> {
        v.sort_unstable_by_key(|c| c.key);
        v
    }

    proptest! {
        /// The log spill answers every sequence of operations as the map does, with
        /// runs and merges of a few entries (the engine only puts a contact it
        /// holds, i.e. one not spilled: a put replaces nothing).
        #[test]
        fn log_spill_answers_as_the_map_does(ops in prop::collection::vec(op(), 1..400)) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = LogSpill::new(dir.path()).with_sizes(3, 500);
            let mut mem = MemSpill::default();
            let (mut ts, mut horizon) = (0i64, 0i64);
            for (i, o) in ops.into_iter().enumerate() {
                match o {
                    Op::Put(k, c, h) => {
                        if mem.holds(k) {
                            continue;
                        }
                        // Time only goes on, and the engine no longer holds a contact
                        // the horizon has passed.
                        ts = ts.max(h * 3_600_000).max(horizon);
                        let c = contact(k, c, ts + k as i64, i as u8);
                        log.put(c.clone());
                        mem.put(c);
                    }
                    Op::Take(k) => prop_assert_eq!(log.take(k), mem.take(k)),
                    Op::TakeCustomer(c) => prop_assert_eq!(
                        sorted(log.take_customer(c)),
                        sorted(mem.take_customer(c))
                    ),
                    Op::Expire(h) => {
                        horizon = horizon.max(h * 3_600_000);
                        log.expire(h * 3_600_000);
                        mem.expire(h * 3_600_000);
                    }
                }
                // A metric: contacts before the horizon count until their whole
                // day has passed it (as `StoreSpill`'s).
                prop_assert!(log.len() >= mem.len());
            }
            prop_assert!(log.failure().is_none());
        }
    }

    #[test]
    fn runs_are_merged_and_days_deleted_with_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogSpill::new(dir.path()).with_sizes(4, 2_000);
        let day = DAY_MS;
        for k in 1..=200u128 {
            log.put(contact(k, Some(10_000 + k % 7), (k as i64 % 2) * day, 1));
        }
        let d0 = &log.days[&0];
        assert!(
            d0.keys.runs.iter().any(|r| r.level >= 1),
            "runs of one size were merged"
        );
        assert!(d0.keys.runs.len() < 100 / 4, "{} runs", d0.keys.runs.len());
        assert_eq!(log.len(), 200);
        assert_eq!(log.take(2).map(|c| c.key), Some(2));
        assert_eq!(log.take(2), None, "taken once");
        let mine = log.take_customer(10_003);
        assert!(
            mine.iter().all(|c| c.customer == Some(10_003)) && mine.len() >= 28,
            "{} contacts of customer 10 003",
            mine.len()
        );
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), 6, "bodies, keys and customers of two days");
        log.expire(day);
        assert_eq!(files(), 3, "day 0's files deleted");
        assert_eq!(log.take(4), None, "day 0 (even keys) forgotten");
        assert_eq!(log.take(5).map(|c| c.key), Some(5));
        assert!(log.failure().is_none());
    }

    /// A put replaces an earlier spill of the same key (the trait's contract), even
    /// under another customer: the older record is not returned with its customer.
    #[test]
    fn a_contact_spilled_again_answers_for_its_new_customer_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogSpill::new(dir.path()).with_sizes(2, 0);
        log.put(contact(7, Some(100), 10, 1));
        log.put(contact(8, Some(100), 10, 1));
        log.put(contact(7, Some(200), 20, 2));
        let a = log.take_customer(100);
        assert_eq!(a.iter().map(|c| c.key).collect::<Vec<_>>(), [8]);
        assert_eq!(log.take_customer(200), vec![contact(7, Some(200), 20, 2)]);
        assert_eq!(log.take(7), None);
        assert!(log.failure().is_none());
    }

    #[test]
    fn a_failing_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogSpill::new(&dir.path().join("missing")).with_sizes(2, 0);
        for k in 1..=4u128 {
            log.put(contact(k, None, 0, 1));
        }
        let e = log.failure().expect("the index file cannot be created");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
