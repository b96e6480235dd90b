//! The contacts table: held contacts by their 128-bit key, with look-ups the caller
//! can announce ahead.
//!
//! Why not a `HashMap`: at 10 k agents the table holds ~300,000 contacts (tens of
//! MB), so finding a contact is a cache miss for its slot and another for its
//! events, at every event and again when the put-off derivations and the pack queue
//! walk their lists (docs/performance.md, "tenth round": 20 % of the engine's time).
//! A `HashMap` gives no way to ask memory for a slot before the look-up that needs it.
//! Here an index of 8-byte entries (open addressing, linear probing, at most half
//! full) points into a dense slab of `(key, value)`; [`KeyTable::prefetch`] issues
//! the loads of a look-up the caller will make soon, in stages, so that by the time
//! the look-up runs its lines are in cache: `replay` knows the next events of its
//! decoded batch, and `settle` and the pack queue know their lists.
//!
//! The slab is allocated in chunks of [`SLAB_CHUNK`] entries that never move: a `Vec`
//! slab was copied whole at every reallocation (tens to hundreds of MB on a long
//! replay), its old copy alive beside the new one until given back, and the copying
//! with its first touches of the new pages was ~3 % of `parse_bench engine`'s samples
//! (docs/performance.md, "twenty-sixth round").
//!
//! Removal moves the slab's last entry into the hole (the slab stays dense: iteration
//! is a walk over the chunks) and shifts the index's probe run back (no tombstones, so heavy
//! removal never makes the table grow: with the spill taking contacts and customers
//! out at every flush, a `HashMap`'s tombstones made it double, old and new table
//! alive at once, unless it was rebuilt every so often).
//!
//! Keys are hashes already (xxh3 of the contact id); they are mixed once more so that
//! keys that are not (tests use small numbers) still spread.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

type Key = u128;

/// An index entry: `slot` into the slab (`EMPTY` for none) and 32 bits of the key's
/// hash, so that a probe compares slab keys only on a likely match.
#[derive(Clone, Copy, Debug)]
struct Entry {
    tag: u32,
    slot: u32,
}

/// Where a key's value sat in the slab when it was looked up: a hint for the next
/// look-up of the same key, checked before it is used ([`KeyTable::at_mut`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot(usize);

const EMPTY: u32 = u32::MAX;
const VACANT: Entry = Entry {
    tag: 0,
    slot: EMPTY,
};
/// Index length of the first allocation (entries).
const MIN_INDEX: usize = 16;

#[derive(Clone, Debug)]
pub(crate) struct KeyTable<V> {
    /// Length 0 or a power of two, at most half full.
    index: Vec<Entry>,
    slab: Slab<(Key, V)>,
}

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable {
            index: Vec::new(),
            slab: Slab::default(),
        }
    }
}

/// Entries in each slab chunk after the first (the first grows to it as a `Vec`
/// does, so a small table stays small): 4,096 contacts are 384 KiB.
const CHUNK_SHIFT: u32 = 12;
pub(crate) const SLAB_CHUNK: usize = 1 << CHUNK_SHIFT;

/// A vector in chunks of [`SLAB_CHUNK`] entries: entry `i` is entry `i % SLAB_CHUNK`
/// of chunk `i / SLAB_CHUNK`. Every chunk but the last is full, and the last is not
/// empty; so at most one chunk's room is unused, plus `spare`.
#[derive(Clone, Debug)]
struct Slab<T> {
    chunks: Vec<Vec<T>>,
    /// Follows from the chunks, but is read at every insert and removal: kept rather
    /// than computed from the last chunk each time.
    len: usize,
    /// The last chunk emptied by removals, kept for the next growth, so that a table
    /// going back and forth across a chunk's boundary does not allocate every time.
    spare: Option<Vec<T>>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
            spare: None,
        }
    }
}

impl<T> Slab<T> {
    fn with_capacity(n: usize) -> Self {
        let mut s = Slab::default();
        if n > 0 {
            s.chunks.push(Vec::with_capacity(n.min(SLAB_CHUNK)));
        }
        s
    }

    fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries it has room for without allocating.
    fn capacity(&self) -> usize {
        let last = self.chunks.last().map_or(0, |c| c.capacity() - c.len());
        self.len + last + self.spare.as_ref().map_or(0, Vec::capacity)
    }

    fn push(&mut self, v: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < SLAB_CHUNK => {
                if c.len() == c.capacity() {
                    // The first chunk grows by doubling, but never past a chunk.
                    c.reserve_exact(c.len().max(4).min(SLAB_CHUNK - c.len()));
                }
                c.push(v);
            }
            _ => {
                let first = self.chunks.is_empty();
                let mut c = self
                    .spare
                    .take()
                    .unwrap_or_else(|| Vec::with_capacity(if first { 4 } else { SLAB_CHUNK }));
                c.push(v);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    /// Remove entry `i`, moving the last entry into its place.
    fn swap_remove(&mut self, i: usize) -> T {
        assert!(i < self.len, "slab index {i} out of {}", self.len);
        let Some(chunk) = self.chunks.last_mut() else {
            unreachable!("a slab with entries has a last chunk");
        };
        let Some(last) = chunk.pop() else {
            unreachable!("the last chunk is never empty");
        };
        if chunk.is_empty() {
            self.spare = self.chunks.pop();
        }
        self.len -= 1;
        if i == self.len {
            last
        } else {
            std::mem::replace(&mut self[i], last)
        }
    }

    /// Give back room no longer needed: the spare chunk, and the first chunk's room
    /// past a quarter more than it holds when it is the only one.
    fn shrink(&mut self) {
        self.spare = None;
        if let [only] = self.chunks.as_mut_slice()
            && only.capacity() > 2 * only.len() + MIN_INDEX
        {
            only.shrink_to(only.len() + only.len() / 4);
        }
    }

    /// Entry `i`, `None` past the end.
    #[inline]
    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(i >> CHUNK_SHIFT)?
            .get_mut(i & (SLAB_CHUNK - 1))
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }
}

impl<T> std::ops::Index<usize> for Slab<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> CHUNK_SHIFT][i & (SLAB_CHUNK - 1)]
    }
}

impl<T> std::ops::IndexMut<usize> for Slab<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> CHUNK_SHIFT][i & (SLAB_CHUNK - 1)]
    }
}

/// Mix of the key's halves (a multiply-xorshift): the position's bits and the tag's
/// come from different parts of the product.
fn hash(k: Key) -> u64 {
    let x = (k as u64) ^ ((k >> 64) as u64).rotate_left(32);
    let x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

fn tag(h: u64) -> u32 {
    (h >> 32) as u32
}

/// Ask the memory for the cache line at `p` without waiting for it.
#[inline(always)]
pub(crate) fn prefetch_line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never dereferences in the language's sense,
    // cannot fault on any address and changes no memory. SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl<V> KeyTable<V> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        let mut t = KeyTable {
            index: Vec::new(),
            slab: Slab::with_capacity(n),
        };
        t.rebuild_index(n);
        t
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    /// Entries the slab has room for without growing.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Bytes allocated (slab and index).
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.slab.capacity() * size_of::<(Key, V)>() + self.index.len() * size_of::<Entry>()
    }

    fn mask(&self) -> usize {
        self.index.len().wrapping_sub(1)
    }

    /// Walk `h`'s probe run from its home position: the first index position whose
    /// entry `hit` accepts, or none once an empty entry ends the run.
    #[inline]
    fn probe(&self, h: u64, hit: impl Fn(Entry) -> bool) -> Option<usize> {
        if self.index.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut pos = h as usize & mask;
        loop {
            let e = self.index[pos];
            if e.slot == EMPTY {
                return None;
            }
            if hit(e) {
                return Some(pos);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Index position of `k`'s entry. Inlined with `probe` into `get`, `get_mut` and
    /// the other look-ups: as a call of its own, its prologue and epilogue were a
    /// fifth of a look-up's instructions (callgrind: `parse_bench engine` 1.6 % fewer,
    /// docs/performance.md, "thirty-sixth round").
    #[inline]
    fn find(&self, k: Key) -> Option<usize> {
        let h = hash(k);
        self.probe(h, |e| e.tag == tag(h) && self.slab[e.slot as usize].0 == k)
    }

    #[inline]
    pub(crate) fn get(&self, k: &Key) -> Option<&V> {
        self.find(*k)
            .map(|pos| &self.slab[self.index[pos].slot as usize].1)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, k: &Key) -> Option<&mut V> {
        let pos = self.find(*k)?;
        Some(&mut self.slab[self.index[pos].slot as usize].1)
    }

    /// [`KeyTable::get_mut`], with the value's slot: a later look-up of the same key
    /// can start there ([`KeyTable::at_mut`], [`KeyTable::at_or_default`]).
    #[inline]
    pub(crate) fn get_mut_slot(&mut self, k: &Key) -> Option<(Slot, &mut V)> {
        let pos = self.find(*k)?;
        let slot = self.index[pos].slot as usize;
        Some((Slot(slot), &mut self.slab[slot].1))
    }

    /// The value of `k`, looked for at `hint` first. A hint is only that: a removal
    /// since it was taken may have moved another key into its slot, which the key
    /// comparison tells, and then `k` is looked up as by [`KeyTable::get_mut`]. An
    /// event looks its contact up three times (is it a duplicate, insert the event,
    /// list it for derivation); the slot makes the second and third a comparison
    /// instead of a probe (docs/performance.md, "thirty-ninth round").
    #[inline]
    pub(crate) fn at_mut(&mut self, k: &Key, hint: Option<Slot>) -> Option<&mut V> {
        let slot = match hint {
            Some(Slot(s)) if self.slab.get_mut(s).is_some_and(|e| e.0 == *k) => s,
            _ => self.index[self.find(*k)?].slot as usize,
        };
        Some(&mut self.slab[slot].1)
    }

    pub(crate) fn contains_key(&self, k: &Key) -> bool {
        self.find(*k).is_some()
    }

    /// The value of `k`, inserted by `make` when absent.
    pub(crate) fn get_or_insert_with(&mut self, k: Key, make: impl FnOnce() -> V) -> &mut V {
        let slot = match self.find(k) {
            Some(pos) => self.index[pos].slot as usize,
            None => self.push_new(k, make()),
        };
        &mut self.slab[slot].1
    }

    /// Insert or replace; the value replaced.
    pub(crate) fn insert(&mut self, k: Key, v: V) -> Option<V> {
        match self.find(k) {
            Some(pos) => {
                let slot = self.index[pos].slot as usize;
                Some(std::mem::replace(&mut self.slab[slot].1, v))
            }
            None => {
                self.push_new(k, v);
                None
            }
        }
    }

    /// Append a key known to be absent; its slab slot.
    fn push_new(&mut self, k: Key, v: V) -> usize {
        if (self.slab.len() + 1) * 2 > self.index.len() {
            self.rebuild_index((self.slab.len() + 1) * 2);
        }
        let slot = self.slab.len();
        self.slab.push((k, v));
        self.place(k, slot);
        slot
    }

    /// Put `slot` (holding `k`) into the index, which has room.
    fn place(&mut self, k: Key, slot: usize) {
        let h = hash(k);
        let mask = self.mask();
        let mut pos = h as usize & mask;
        while self.index[pos].slot != EMPTY {
            pos = (pos + 1) & mask;
        }
        // A slab of 2^32 entries (≥ 400 GB of contacts) cannot be allocated, so the
        // slot fits (and is never EMPTY).
        self.index[pos] = Entry {
            tag: tag(h),
            slot: slot as u32,
        };
    }

    /// A fresh index for at least `want` entries' room (a power of two ≥ twice the
    /// slab's length), every slab entry placed.
    fn rebuild_index(&mut self, want: usize) {
        let n = want
            .max(self.slab.len() * 2)
            .max(MIN_INDEX)
            .next_power_of_two();
        self.index = vec![VACANT; n];
        for slot in 0..self.slab.len() {
            self.place(self.slab[slot].0, slot);
        }
    }

    pub(crate) fn remove(&mut self, k: &Key) -> Option<V> {
        let pos = self.find(*k)?;
        let slot = self.index[pos].slot as usize;
        self.unlink(pos);
        let last = self.slab.len() - 1;
        if slot != last {
            // The last entry moves into the hole: repoint its index entry.
            let moved = self.slab[last].0;
            if let Some(mp) = self.find(moved) {
                self.index[mp].slot = slot as u32;
            }
        }
        Some(self.slab.swap_remove(slot).1)
    }

    /// Empty index position `pos` and shift the rest of its probe run back, so that
    /// every entry stays reachable from its home position (no tombstones).
    fn unlink(&mut self, mut pos: usize) {
        let mask = self.mask();
        let mut next = (pos + 1) & mask;
        loop {
            let e = self.index[next];
            if e.slot == EMPTY {
                break;
            }
            let home = hash(self.slab[e.slot as usize].0) as usize & mask;
            // `e` may move to `pos` when `pos` lies on its probe path, i.e. its home
            // is not in the cyclic range (pos, next].
            if (next.wrapping_sub(home) & mask) >= (next.wrapping_sub(pos) & mask) {
                self.index[pos] = e;
                pos = next;
            }
            next = (next + 1) & mask;
        }
        self.index[pos] = VACANT;
    }

    /// Release room the table no longer needs after many removals (the index stays at
    /// most half and at least an eighth full; the slab keeps at most one chunk's room
    /// unused). Called at flushes. The slab needs no room made ahead of growth: a new
    /// chunk copies nothing.
    pub(crate) fn compact(&mut self) {
        let len = self.slab.len();
        self.slab.shrink();
        if self.index.len() > (len * 8).max(MIN_INDEX) {
            self.rebuild_index(len * 2);
        }
    }

    /// Announce a look-up of `k` coming soon: `stage` 0 fetches its index line, stage
    /// 1 (a little later, once that line is in) its slab entry. Neither waits for
    /// memory; a caller that wants what the value points to reads the value after
    /// stage 1 has had time (see `Engine::look_ahead`).
    #[inline]
    pub(crate) fn prefetch(&self, k: Key, stage: u8) {
        if self.index.is_empty() {
            return;
        }
        let h = hash(k);
        if stage == 0 {
            prefetch_line(&self.index[h as usize & self.mask()]);
            return;
        }
        // The first tag match, without reading the slab (that is what is fetched).
        if let Some(pos) = self.probe(h, |e| e.tag == tag(h)) {
            let p = &self.slab[self.index[pos].slot as usize];
            // A slab entry spans two or three cache lines; the key and the value's
            // head are what a look-up reads.
            prefetch_line(p);
            prefetch_line((p as *const (Key, V)).cast::<u8>().wrapping_add(64));
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.slab.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&Key, &mut V)> {
        self.slab.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.slab.iter().map(|(_, v)| v)
    }
}

impl<V: Default> KeyTable<V> {
    pub(crate) fn get_or_default(&mut self, k: Key) -> &mut V {
        self.get_or_insert_with(k, V::default)
    }

    /// [`KeyTable::get_or_default`] looked for at `hint` first (see
    /// [`KeyTable::at_mut`]), with the value's slot.
    #[inline]
    pub(crate) fn at_or_default(&mut self, k: Key, hint: Option<Slot>) -> (Slot, &mut V) {
        let slot = match hint {
            Some(Slot(s)) if self.slab.get_mut(s).is_some_and(|e| e.0 == k) => s,
            _ => match self.find(k) {
                Some(pos) => self.index[pos].slot as usize,
                None => self.push_new(k, V::default()),
            },
        };
        (Slot(slot), &mut self.slab[slot].1)
    }
}

/// For tests, like a map's index: panics when absent.
#[cfg(test)]
impl<V> std::ops::Index<&Key> for KeyTable<V> {
    type Output = V;
    fn index(&self, k: &Key) -> &V {
        self.get(k).expect("key in table")
    }
}

impl<V> FromIterator<(Key, V)> for KeyTable<V> {
    fn from_iter<I: IntoIterator<Item = (Key, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut t = KeyTable::with_capacity(iter.size_hint().0);
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

impl<V> IntoIterator for KeyTable<V> {
    type Item = (Key, V);
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<(Key, V)>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.slab.chunks.into_iter().flatten()
    }
}

/// Encoded as a map (the same bytes a `HashMap<u128, V>` gave: checkpoints unchanged).
impl<V: Serialize> Serialize for KeyTable<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.slab.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for KeyTable<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V_<V> {
            type Value = KeyTable<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of 128-bit keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                // The hint comes from the input: capped, so a corrupt length cannot
                // ask for a huge allocation before the entries run out.
                let mut t = KeyTable::with_capacity(a.size_hint().unwrap_or(0).min(1 << 20));
                while let Some((k, v)) = a.next_entry()? {
                    t.insert(k, v);
                }
                Ok(t)
            }
        }
        d.deserialize_map(V_(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128, u32),
        Remove(u128),
        Get(u128),
        /// Set through `at_or_default`, with the slot `at` of the hints (a stale one
        /// as often as not: taken for another key, or before removals moved it).
        Set(u128, u32, usize),
        Compact,
    }

    /// Keys from a small range (so operations hit the same keys and probe runs
    /// collide), sometimes spread over the full width.
    fn key() -> impl Strategy<Value = u128> {
        prop_oneof![0u128..64, any::<u128>(), (0u128..8).prop_map(|k| k << 64)]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => key().prop_map(Op::Remove),
            2 => key().prop_map(Op::Get),
            2 => (key(), any::<u32>(), 0usize..8).prop_map(|(k, v, at)| Op::Set(k, v, at)),
            1 => Just(Op::Compact),
        ]
    }

    fn check_invariants(t: &KeyTable<u32>) {
        assert!(t.index.is_empty() || t.index.len().is_power_of_two());
        assert!(t.slab.len() * 2 <= t.index.len() || t.slab.is_empty());
        let listed: Vec<u32> = t
            .index
            .iter()
            .filter(|e| e.slot != EMPTY)
            .map(|e| e.slot)
            .collect();
        assert_eq!(listed.len(), t.slab.len(), "one index entry per slab entry");
        for (slot, (k, _)) in t.slab.iter().enumerate() {
            let pos = t.find(*k).expect("every slab key is found");
            assert_eq!(t.index[pos].slot as usize, slot);
        }
    }

    proptest! {
        // 256 cases, or `PROPTEST_CASES` when set (a longer hunt for rare draws).
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
        ))]
        /// The table answers every operation as a `HashMap` does.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 0..400)) {
            let mut t: KeyTable<u32> = KeyTable::default();
            let mut m: HashMap<u128, u32> = HashMap::new();
            // Slots of earlier look-ups, of any key: hints, right or wrong.
            let mut hints: Vec<Slot> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(t.insert(k, v), m.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(t.remove(&k), m.remove(&k)),
                    Op::Get(k) => {
                        prop_assert_eq!(t.get(&k), m.get(&k));
                        prop_assert_eq!(t.contains_key(&k), m.contains_key(&k));
                        t.prefetch(k, 0);
                        t.prefetch(k, 1);
                        let slot = t.get_mut_slot(&k).map(|(s, v)| (s, *v));
                        prop_assert_eq!(slot.map(|(_, v)| v), m.get(&k).copied());
                        for &hint in &hints {
                            prop_assert_eq!(t.at_mut(&k, Some(hint)).copied(), m.get(&k).copied());
                        }
                        hints.extend(slot.map(|(s, _)| s));
                    }
                    Op::Set(k, v, at) => {
                        let hint = hints.get(at).copied();
                        let (slot, value) = t.at_or_default(k, hint);
                        *value = v;
                        m.insert(k, v);
                        prop_assert_eq!(t.at_mut(&k, Some(slot)).copied(), Some(v));
                        hints.push(slot);
                    }
                    Op::Compact => t.compact(),
                }
                prop_assert_eq!(t.len(), m.len());
            }
            check_invariants(&t);
            let mut got: Vec<(u128, u32)> = t.iter().map(|(k, v)| (*k, *v)).collect();
            let mut want: Vec<(u128, u32)> = m.into_iter().collect();
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn heavy_removal_shrinks_instead_of_growing() {
        let mut t: KeyTable<u64> = KeyTable::default();
        for round in 0..20u128 {
            for k in 0..10_000u128 {
                t.insert(round * 1_000_000 + k, 1);
            }
            for k in 0..9_000u128 {
                assert_eq!(t.remove(&(round * 1_000_000 + k)), Some(1));
            }
            t.compact();
        }
        assert_eq!(t.len(), 20 * 1_000);
        check_invariants_u64(&t);
        // Index at most 8 entries per held key after compaction; slab room at most one
        // chunk's.
        t.compact();
        assert!(t.index.len() <= 8 * t.len(), "index {}", t.index.len());
        assert!(
            t.capacity() <= t.len() + SLAB_CHUNK,
            "slab {}",
            t.capacity()
        );
        assert!(t.capacity() >= t.len(), "slab {}", t.capacity());
    }

    /// Entries never move when the slab grows (a chunk is never reallocated once
    /// full), a small table stays small, and a table going back and forth across a
    /// chunk's boundary reuses its spare chunk.
    #[test]
    fn the_slab_grows_by_chunks_without_moving_entries() {
        let mut t: KeyTable<u64> = KeyTable::default();
        for k in 0..10u128 {
            t.insert(k, 0);
        }
        assert!(t.capacity() < 64, "a small table took {}", t.capacity());
        let n = 3 * SLAB_CHUNK as u128 + 5;
        for k in 10..n {
            t.insert(k, k as u64);
        }
        // The first chunk grew as a vector while it was the only one; from the second
        // chunk on, nothing moves.
        let second = &t.slab[SLAB_CHUNK] as *const (u128, u64);
        for k in n..n + 5 * SLAB_CHUNK as u128 {
            t.insert(k, k as u64);
        }
        assert_eq!(&t.slab[SLAB_CHUNK] as *const (u128, u64), second);
        assert_eq!(t.slab.chunks.len(), t.len().div_ceil(SLAB_CHUNK));
        assert!(
            t.slab.chunks[..t.slab.chunks.len() - 1]
                .iter()
                .all(|c| c.len() == SLAB_CHUNK && c.capacity() == SLAB_CHUNK)
        );
        check_invariants_u64(&t);
        // Across a boundary: the emptied chunk is kept and taken again.
        let len = t.len() as u128;
        let boundary = (t.len() / SLAB_CHUNK * SLAB_CHUNK) as u128;
        for k in (boundary..len).rev() {
            assert_eq!(t.remove(&k), Some(k as u64));
        }
        assert_eq!(t.len() % SLAB_CHUNK, 0);
        let spare = t.slab.spare.as_ref().map(|c| c.as_ptr());
        assert!(spare.is_some(), "the emptied chunk is kept");
        t.insert(len + 1, 1);
        assert_eq!(t.slab.chunks.last().map(|c| c.as_ptr()), spare);
        assert!(t.slab.spare.is_none());
        check_invariants_u64(&t);
    }

    fn check_invariants_u64(t: &KeyTable<u64>) {
        for (slot, (k, _)) in t.slab.iter().enumerate() {
            let pos = t.find(*k).expect("found");
            assert_eq!(t.index[pos].slot as usize, slot);
        }
    }

    #[test]
    fn encodes_like_a_hash_map() {
        let pairs = [(1u128, 10u32), (u128::MAX, 20), (1 << 70, 30)];
        let t: KeyTable<u32> = pairs.into_iter().collect();
        let bytes = postcard::to_allocvec(&t).unwrap();
        // A map of one entry encodes identically either way (order aside).
        let one: KeyTable<u32> = [(7u128, 3u32)].into_iter().collect();
        let m: HashMap<u128, u32> = [(7u128, 3u32)].into_iter().collect();
        assert_eq!(
            postcard::to_allocvec(&one).unwrap(),
            postcard::to_allocvec(&m).unwrap()
        );
        let back: KeyTable<u32> = postcard::from_bytes(&bytes).unwrap();
        let as_map: HashMap<u128, u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        for (k, v) in pairs {
            assert_eq!(back.get(&k), Some(&v));
            assert_eq!(as_map.get(&k), Some(&v));
        }
    }
}
