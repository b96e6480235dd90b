//! The engine's spill in the store: settled contacts of one partition as rows of
//! `spilled_contacts`, written in the partition's fenced commit transaction beside
//! the checkpoint (see `engine::spill` for what is spilled and why).
//!
//! The engine asks synchronously ("is this contact spilled?") and must get a complete
//! answer, so this keeps, in front of the table:
//! - the changes not committed yet (`pending`), and those of the commit in flight
//!   (`in_flight`): reads see them first, newest first;
//! - a Bloom filter per day of `last_ts` over the keys (and one over the customers)
//!   put in the table, rebuilt from the table when a partition is claimed: most
//!   events belong to a contact that was never spilled (a new one), and the filter
//!   answers "no" for them without a round trip. A day's filter is dropped when the
//!   correction horizon passes the day, so it stays as bounded as the table;
//! - what [`Spill::prefetch`] read of the table for the next events (`known`), kept
//!   true as our own commits land (the table changes only through them): `replay`
//!   names a decoded batch's contacts and customers at once, so the look-ups of 4 096
//!   events cost two round trips instead of one each.
//!
//! Reads block the calling thread (the Kafka polling thread, or `replay`'s engine
//! thread) on the async store. A read that fails is retried with a backoff until it
//! succeeds: without the contact the event cannot be applied, and dropping it would
//! lose data; meanwhile consumption stalls, as it does when commits fail.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::spill::{Spill, SpillBatch, SpilledContact};
use crate::event::Millis;

use super::{Store, StoreError};

type Key = u128;

/// Changes of one batch: per contact the newest (a put, or `None`: taken back).
#[derive(Clone, Default)]
struct Ops {
    ops: std::collections::HashMap<Key, Option<SpilledContact>>,
    /// Contacts put in this batch by customer (the puts' customer index).
    customers: std::collections::HashMap<Key, Vec<Key>>,
    expire_before: Option<Millis>,
}

impl Ops {
    fn put(&mut self, c: SpilledContact) {
        if let Some(k) = c.customer {
            let list = self.customers.entry(k).or_default();
            if !list.contains(&c.key) {
                list.push(c.key);
            }
        }
        self.ops.insert(c.key, Some(c));
    }

    fn delete(&mut self, key: Key) {
        self.ops.insert(key, None);
    }

    /// The batch to write; the ops stay (they answer reads until the commit is done).
    fn batch(&self) -> SpillBatch {
        let mut b = SpillBatch {
            expire_before: self.expire_before,
            ..SpillBatch::default()
        };
        for (k, op) in &self.ops {
            match op {
                Some(c) => b.puts.push(c.clone()),
                None => b.deletes.push(*k),
            }
        }
        b
    }

    /// `newer` applied on top of `self` (a failed commit's ops under later ones).
    fn under(mut self, newer: Ops) -> Ops {
        for (k, op) in newer.ops {
            match op {
                Some(c) => self.put(c),
                None => self.delete(k),
            }
        }
        self.expire_before = self.expire_before.max(newer.expire_before);
        self
    }
}

/// The [`Spill`] of one partition in a [`Store`].
pub struct StoreSpill {
    store: Store,
    rt: tokio::runtime::Handle,
    partition: String,
    pending: Ops,
    /// Prepared batches not finished yet, oldest first (`serve` has at most one;
    /// `replay`'s writer task one queued and one being written).
    in_flight: std::collections::VecDeque<Ops>,
    keys: DayBlooms,
    customers: DayBlooms,
    /// Contacts held per day of `last_ts` (for [`Spill::len`]: a metric).
    held: BTreeMap<i64, i64>,
    /// Nothing with `last_ts` before this is returned (expired, maybe not deleted yet).
    horizon: Millis,
    /// Committed rows read by the last [`Spill::prefetch`]: per key its row, or `None`
    /// when the table has none; updated by every batch that commits after the read.
    known: std::collections::HashMap<Key, Option<SpilledContact>>,
    /// Per customer read by it, the keys of its rows (each one in `known`).
    known_customers: std::collections::HashMap<Key, Vec<Key>>,
    /// Store reads made (look-ups that the filters, the overlay and `known` could
    /// not answer, and prefetches).
    pub round_trips: u64,
}

const DAY_MS: i64 = 86_400_000;

impl StoreSpill {
    /// The spill of `partition` as committed: scans its rows to build the filters
    /// (a progress line per million rows). Call from outside the runtime's worker
    /// threads, like every method of the [`Spill`] trait.
    pub fn open(
        store: Store,
        rt: tokio::runtime::Handle,
        partition: &str,
    ) -> Result<StoreSpill, StoreError> {
        let mut s = StoreSpill {
            store,
            rt,
            partition: partition.to_owned(),
            pending: Ops::default(),
            in_flight: std::collections::VecDeque::new(),
            keys: DayBlooms::default(),
            customers: DayBlooms::default(),
            held: BTreeMap::new(),
            horizon: Millis::MIN,
            known: Default::default(),
            known_customers: Default::default(),
            round_trips: 0,
        };
        let started = std::time::Instant::now();
        let (keys, customers, held) = (&mut s.keys, &mut s.customers, &mut s.held);
        let mut rows = 0u64;
        let n = block_on(
            &s.rt,
            s.store.spill_scan(partition, |key, customer, last_ts| {
                let day = last_ts.div_euclid(DAY_MS);
                keys.insert(day, key);
                if let Some(k) = customer {
                    customers.insert(day, k);
                }
                *held.entry(day).or_default() += 1;
                rows += 1;
                if rows.is_multiple_of(1_000_000) {
                    tracing::info!(partition, rows, "reading spilled contacts");
                }
            }),
        )?;
        if n > 0 {
            tracing::info!(
                partition,
                rows = n,
                took_ms = started.elapsed().as_millis() as u64,
                "spilled contacts indexed"
            );
        }
        Ok(s)
    }

    /// Run a store read until it answers (see the module docs).
    fn read<T, F, Fut>(&mut self, what: &str, mut f: F) -> T
    where
        F: FnMut(Store, String, Millis) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.round_trips += 1;
        let mut backoff = Duration::from_millis(100);
        loop {
            let store = self.store.clone();
            match block_on(&self.rt, f(store, self.partition.clone(), self.horizon)) {
                Ok(v) => return v,
                Err(e) => {
                    tracing::warn!(partition = %self.partition, error = %e, what,
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot read a spilled contact; consumption waits");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The newest uncommitted change of `key`: `Some(Some(c))` put, `Some(None)`
    /// taken back, `None` no change since the last commit.
    fn overlay(&self, key: Key) -> Option<Option<&SpilledContact>> {
        if let Some(op) = self.pending.ops.get(&key) {
            return Some(op.as_ref());
        }
        self.in_flight
            .iter()
            .rev()
            .find_map(|f| f.ops.get(&key))
            .map(|op| op.as_ref())
    }

    fn count(&mut self, last_ts: Millis, by: i64) {
        *self.held.entry(last_ts.div_euclid(DAY_MS)).or_default() += by;
    }

    /// The committed rows of `customer` as far as `known` tells (`None`: not read).
    fn known_rows_of(&self, customer: Key) -> Option<Vec<SpilledContact>> {
        let keys = self.known_customers.get(&customer)?;
        Some(
            keys.iter()
                .filter_map(|k| self.known.get(k).cloned().flatten())
                .filter(|c| c.customer == Some(customer))
                .collect(),
        )
    }

    /// A committed batch's changes into `known`, so it stays what the table holds.
    /// Batches commit in order; a read may have seen a later batch already, and an
    /// earlier one learnt after it can make `known` stale for a key that the later
    /// batch changed, but that batch is still in flight then and its change answers
    /// first, until it is learnt in turn.
    fn learn(&mut self, ops: &Ops) {
        if self.known.is_empty() {
            return;
        }
        for (k, op) in &ops.ops {
            if let Some(c) = op
                && let Some(list) = c.customer.and_then(|cu| self.known_customers.get_mut(&cu))
            {
                if !list.contains(k) {
                    list.push(*k);
                }
                self.known.insert(*k, Some(c.clone()));
            } else if let Some(slot) = self.known.get_mut(k) {
                *slot = op.clone();
            }
        }
    }
}

impl Spill for StoreSpill {
    fn put(&mut self, c: SpilledContact) {
        let day = c.last_ts.div_euclid(DAY_MS);
        self.keys.insert(day, c.key);
        if let Some(k) = c.customer {
            self.customers.insert(day, k);
        }
        self.count(c.last_ts, 1);
        self.pending.put(c);
    }

    fn take(&mut self, key: Key) -> Option<SpilledContact> {
        let horizon = self.horizon;
        let found = match self.overlay(key) {
            Some(op) => op.filter(|c| c.last_ts >= horizon).cloned(),
            None => match self.known.get(&key) {
                Some(row) => row.as_ref().filter(|c| c.last_ts >= horizon).cloned(),
                None if !self.keys.contains(key) => None,
                None => self.read("contact", |store, partition, horizon| async move {
                    store.spill_get(&partition, key, horizon).await
                }),
            },
        };
        let c = found?;
        self.count(c.last_ts, -1);
        self.pending.delete(key);
        Some(c)
    }

    fn take_customer(&mut self, customer: Key) -> Vec<SpilledContact> {
        if !self.customers.contains(customer) {
            return Vec::new();
        }
        // Committed rows, then the in-flight and pending changes on top.
        let committed = match self.known_rows_of(customer) {
            Some(rows) => rows,
            None => self.read("customer", |store, partition, horizon| async move {
                store.spill_customer(&partition, customer, horizon).await
            }),
        };
        let mut found: std::collections::HashMap<Key, Option<SpilledContact>> =
            committed.into_iter().map(|c| (c.key, Some(c))).collect();
        for ops in self.in_flight.iter().chain(std::iter::once(&self.pending)) {
            // Oldest first: a later batch's op wins.
            // A key changed in this batch: its op decides (taken back, or put anew,
            // possibly under another customer).
            let keys: Vec<Key> = found
                .keys()
                .copied()
                .chain(ops.customers.get(&customer).into_iter().flatten().copied())
                .collect();
            for k in keys {
                if let Some(op) = ops.ops.get(&k) {
                    found.insert(k, op.clone());
                }
            }
        }
        let out: Vec<SpilledContact> = found
            .into_values()
            .flatten()
            .filter(|c| c.customer == Some(customer) && c.last_ts >= self.horizon)
            .collect();
        for c in &out {
            self.count(c.last_ts, -1);
            self.pending.delete(c.key);
        }
        out
    }

    fn expire(&mut self, before: Millis) {
        if before <= self.horizon {
            return;
        }
        self.horizon = before;
        self.pending.expire_before = Some(before);
        // A day's filter and count go once the whole day is before the horizon.
        let day = before.div_euclid(DAY_MS);
        self.keys.drop_before(day);
        self.customers.drop_before(day);
        self.held = self.held.split_off(&day);
    }

    fn len(&self) -> usize {
        self.held.values().sum::<i64>().max(0) as usize
    }

    fn prepare(&mut self) -> Option<SpillBatch> {
        let ops = std::mem::take(&mut self.pending);
        let batch = ops.batch();
        self.in_flight.push_back(ops);
        Some(batch)
    }

    /// Batches finish in the order they were prepared. A failed one goes back under
    /// everything changed since (with more than one in flight, the later ones carry
    /// on; rewriting a change later is harmless: upserts and deletes are idempotent).
    fn finish(&mut self, committed: bool) {
        let Some(ops) = self.in_flight.pop_front() else {
            return;
        };
        if committed {
            self.learn(&ops);
        } else {
            // The later batches stay in flight (they answer reads and are finished
            // in turn); their changes are copied over the failed one's so that
            // rewriting it cannot undo them.
            let later = self
                .in_flight
                .iter()
                .cloned()
                .fold(Ops::default(), Ops::under);
            self.pending = ops.under(later).under(std::mem::take(&mut self.pending));
        }
    }

    /// Reads the committed rows of the named contacts the filters do not rule out
    /// (and of their customers, which come back with them), then of the named
    /// customers: a statement per 64 keys. What was read before is forgotten, so
    /// `known` holds one batch's worth.
    fn prefetch(&mut self, keys: &[Key], customers: &[Key]) {
        self.known.clear();
        self.known_customers.clear();
        // Contacts changed since the last commit answer from the overlay, but their
        // customers' committed rows come back with them.
        let changed: Vec<Key> = keys
            .iter()
            .filter_map(|&k| self.overlay(k).flatten().and_then(|c| c.customer))
            .collect();
        let keys: Vec<Key> = keys
            .iter()
            .copied()
            .filter(|&k| self.overlay(k).is_none() && self.keys.contains(k))
            .collect();
        let rows = if keys.is_empty() {
            Vec::new()
        } else {
            self.read("contacts", |store, partition, horizon| {
                let keys = keys.clone();
                async move {
                    store
                        .spill_select_many(&partition, &keys, false, horizon)
                        .await
                }
            })
        };
        let mut customers: Vec<Key> = customers
            .iter()
            .copied()
            .chain(rows.iter().filter_map(|c| c.customer))
            .chain(changed)
            .filter(|&k| self.customers.contains(k))
            .collect();
        customers.sort_unstable();
        customers.dedup();
        self.known.extend(keys.iter().map(|&k| (k, None)));
        self.known
            .extend(rows.into_iter().map(|c| (c.key, Some(c))));
        if customers.is_empty() {
            return;
        }
        let rows = self.read("customers", |store, partition, horizon| {
            let customers = customers.clone();
            async move {
                store
                    .spill_select_many(&partition, &customers, true, horizon)
                    .await
            }
        });
        self.known_customers
            .extend(customers.iter().map(|&k| (k, Vec::new())));
        for c in rows {
            if let Some(list) = c.customer.and_then(|k| self.known_customers.get_mut(&k)) {
                list.push(c.key);
            }
            self.known.insert(c.key, Some(c));
        }
    }
}

/// Wait for `f` on `rt` from synchronous code: directly on a thread outside the
/// runtime, through `block_in_place` on one inside it (`replay` runs the engine in
/// the runtime's `block_on`).
fn block_on<F: Future>(rt: &tokio::runtime::Handle, f: F) -> F::Output {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(|| rt.block_on(f))
    } else {
        rt.block_on(f)
    }
}

/// Bloom filters over keys that are already uniform 128-bit hashes (xxh3 of the id),
/// one per day of `last_ts`, so that a day's can be dropped with the day. Each day's
/// grows by adding a layer of twice the capacity when the last is full (the number
/// of contacts a day is not known in advance); a key is "maybe held" when any layer
/// of any day has all its bits. Hand-written rather than a crate: the keys need no
/// hashing, and dropping by day is the point.
#[derive(Default)]
pub(super) struct DayBlooms {
    days: BTreeMap<i64, Vec<Layer>>,
}

/// Bits set per key: with 10 bits per key, about a 1 % false-positive rate per layer.
const PROBES: u64 = 7;
const FIRST_CAPACITY: usize = 1 << 14;

pub(super) struct Layer {
    bits: Vec<u64>,
    capacity: usize,
    len: usize,
}

/// Bits of a block: a key's probes all fall in one block of 512 bits (a cache line),
/// so a look-up costs one memory access per layer, not seven.
const BLOCK_WORDS: usize = 8;

impl Layer {
    pub(super) fn new(capacity: usize) -> Layer {
        // 10 bits per key, rounded up to a power of two of blocks for masking.
        let bits = (capacity * 10).next_power_of_two().max(64 * BLOCK_WORDS);
        Layer {
            bits: vec![0; bits / 64],
            capacity,
            len: 0,
        }
    }

    /// Bit positions of `key`: its block from the high half, the bits in the block
    /// from the low half (double hashing).
    fn positions(&self, key: Key) -> impl Iterator<Item = usize> + use<> {
        let blocks = (self.bits.len() / BLOCK_WORDS) as u64;
        let base = (((key >> 64) as u64) & (blocks - 1)) as usize * BLOCK_WORDS * 64;
        let (h1, h2) = (key as u64, ((key as u64) >> 32) | 1);
        (0..PROBES).map(move |i| {
            base + (h1.wrapping_add(i.wrapping_mul(h2)) & (BLOCK_WORDS as u64 * 64 - 1)) as usize
        })
    }

    pub(super) fn insert(&mut self, key: Key) {
        for p in self.positions(key) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.len += 1;
    }

    pub(super) fn contains(&self, key: Key) -> bool {
        self.positions(key)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

impl DayBlooms {
    pub(super) fn insert(&mut self, day: i64, key: Key) {
        if let Some(l) = self
            .days
            .get_mut(&day)
            .and_then(|ls| ls.last_mut())
            .filter(|l| l.len < l.capacity)
        {
            l.insert(key);
            return;
        }
        // A new day starts at the size the day before reached, so a day usually needs
        // one layer (each layer is one more memory access per look-up).
        let capacity = match self.days.get(&day).and_then(|ls| ls.last()) {
            Some(full) => full.capacity * 2,
            None => self
                .days
                .range(..day)
                .next_back()
                .map_or(FIRST_CAPACITY, |(_, ls)| {
                    ls.iter().map(|l| l.len).sum::<usize>().max(FIRST_CAPACITY)
                }),
        };
        let mut l = Layer::new(capacity);
        l.insert(key);
        self.days.entry(day).or_default().push(l);
    }

    pub(super) fn contains(&self, key: Key) -> bool {
        self.days.values().flatten().any(|l| l.contains(key))
    }

    pub(super) fn drop_before(&mut self, day: i64) {
        self.days = self.days.split_off(&day);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut b = DayBlooms::default();
        let key = |i: u64| xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes());
        for i in 0..200_000u64 {
            b.insert((i / 50_000) as i64, key(i));
        }
        assert!((0..200_000u64).all(|i| b.contains(key(i))));
        let fp = (1_000_000..1_100_000u64)
            .filter(|&i| b.contains(key(i)))
            .count();
        // 4 days x up to 3 layers at ~1 % each.
        assert!(fp < 8_000, "{fp} false positives in 100 000");
        b.drop_before(2);
        assert!(
            !(0..100_000u64).all(|i| b.contains(key(i))),
            "days 0, 1 dropped"
        );
        assert!((100_000..200_000u64).all(|i| b.contains(key(i))));
    }
}
