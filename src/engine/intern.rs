//! Interned dimension keys (agents, teams, queues, channels): a fact carries four
//! `u32`s instead of four strings, and equal keys hash once.

use std::num::NonZeroU32;

use super::table::KeyTable;
use crate::event::hash_id;

/// Non-zero so `Option<Sym>` is 4 bytes: contacts hold several per event.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Sym(NonZeroU32);

impl Sym {
    /// Dense index from 0, for per-symbol vectors.
    pub fn index(self) -> usize {
        self.0.get() as usize - 1
    }

    /// The number inside, as serde writes it (`engine::packed` writes it by hand).
    pub(crate) fn raw(self) -> u32 {
        self.0.get()
    }

    #[cfg(test)]
    pub(crate) fn from_raw(n: NonZeroU32) -> Sym {
        Sym(n)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Interner {
    /// Keyed by the name's 128-bit hash ([`crate::event::hash_id`], as contacts,
    /// customers and event ids are), not by the name: a look-up compares 16 bytes held
    /// in the table instead of following the boxed name to compare it (every event
    /// looks up its agent, team and queue here; the comparison's `memcmp` and the
    /// boxed name's cache miss were ~4 % of a replay's samples, docs/performance.md,
    /// "seventeenth round"). foldhash over the hash, not SipHash (SipHash made the
    /// look-ups 3 % of the engine's time, perf, 2026-12-02). In a [`KeyTable`], not a
    /// `HashMap`, so that a look-up can be announced ahead ([`Interner::prefetch`]):
    /// at 10 k agents the look-up's miss on the table was two thirds of `admit`'s
    /// samples, 3 % of the engine's; announced, `parse_bench engine` took 0.979 of the
    /// time (docs/performance.md, "twenty-first round").
    ids: KeyTable<Sym>,
    names: Vec<Box<str>>,
    /// Symbol indexes in their names' byte order, for the names interned when
    /// [`Interner::order_names`] last ran, and each one's place in that order by
    /// symbol index: a window's keys are emitted in name order, and sorting them by
    /// one integer each, not by their names, took a tenth of a flush's take
    /// (docs/performance.md, "forty-second round").
    sorted: Vec<u32>,
    rank: Vec<u32>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Sym {
        self.intern_hashed(s, hash_id(s))
    }

    /// [`Interner::intern`] of a name whose hash the caller has (`h` must be
    /// `hash_id(s)`).
    pub fn intern_hashed(&mut self, s: &str, h: u128) -> Sym {
        debug_assert_eq!(h, hash_id(s), "hash of another name");
        if let Some(&id) = self.ids.get(&h) {
            return id;
        }
        // More than 4 billion distinct keys cannot be held in memory anyway.
        let n = u32::try_from(self.names.len() + 1).unwrap_or(u32::MAX);
        let id = Sym(NonZeroU32::new(n).unwrap_or(NonZeroU32::MAX));
        self.names.push(s.into());
        self.ids.insert(h, id);
        id
    }

    pub fn get(&self, s: &str) -> Option<Sym> {
        self.get_hashed(hash_id(s))
    }

    /// [`Interner::get`] by the name's [`hash_id`].
    #[inline]
    pub fn get_hashed(&self, h: u128) -> Option<Sym> {
        self.ids.get(&h).copied()
    }

    /// Announce a look-up of the name hashed `h` ([`KeyTable::prefetch`]'s stages).
    #[inline]
    pub(crate) fn prefetch(&self, h: u128, stage: u8) {
        self.ids.prefetch(h, stage);
    }

    pub fn name(&self, id: Sym) -> &str {
        self.names
            .get(id.0.get() as usize - 1)
            .map(|s| &**s)
            .unwrap_or("")
    }

    /// Every interned name, in id order (for a checkpoint).
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    /// Rebuild an interner from [`Interner::names`]: the same ids in the same order.
    pub fn from_names(names: Vec<Box<str>>) -> Interner {
        let mut i = Interner::default();
        for n in names {
            i.intern(&n);
        }
        i
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Bring [`Interner::name_rank`] up to date: the names interned since the last
    /// call are sorted and merged into the order (nothing to do when there are none,
    /// which is every call once a centre's keys have all been seen).
    pub fn order_names(&mut self) {
        let (old, n) = (self.sorted.len(), self.names.len());
        if old == n {
            return;
        }
        let names = &self.names;
        let name = |i: u32| names.get(i as usize).map_or("", |s| &**s);
        // More than 4 billion names cannot be interned (`intern_hashed`).
        let mut new: Vec<u32> = (old..n).map(|i| i as u32).collect();
        new.sort_unstable_by(|&a, &b| name(a).cmp(name(b)));
        let mut merged = Vec::with_capacity(n);
        let (mut a, mut b) = (self.sorted.iter().peekable(), new.iter().peekable());
        while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
            // Names are distinct: never equal.
            if name(x) < name(y) {
                merged.push(x);
                a.next();
            } else {
                merged.push(y);
                b.next();
            }
        }
        merged.extend(a);
        merged.extend(b);
        self.rank.resize(n, 0);
        for (place, &i) in merged.iter().enumerate() {
            if let Some(r) = self.rank.get_mut(i as usize) {
                *r = place as u32;
            }
        }
        self.sorted = merged;
    }

    /// The place of `id`'s name in byte order among the names interned when
    /// [`Interner::order_names`] last ran; `None` for a name interned since.
    #[inline]
    pub fn name_rank(&self, id: Sym) -> Option<u32> {
        self.rank.get(id.index()).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A map from symbols to `Copy` values, held densely by symbol index: a look-up is one
/// indexed load, without hashing or probing. For maps that every event reads and whose
/// keys are most of the symbols of a dimension (the agent → team map: a `HashMap`
/// look-up there was about 5 % of the engine thread's samples in a replay,
/// docs/performance.md, "forty-fourth round"). Memory: one slot per symbol interned
/// (4 bytes for an `Option<Sym>`), whichever dimension it belongs to.
#[derive(Clone, Debug)]
pub struct SymMap<V> {
    slots: Vec<Option<V>>,
    len: usize,
}

impl<V> Default for SymMap<V> {
    fn default() -> Self {
        SymMap {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<V: Copy> SymMap<V> {
    #[inline]
    pub fn get(&self, k: Sym) -> Option<V> {
        self.slots.get(k.index()).copied().flatten()
    }

    #[inline]
    pub fn contains_key(&self, k: Sym) -> bool {
        self.get(k).is_some()
    }

    /// Set `k`'s value; the previous one, if any.
    pub fn insert(&mut self, k: Sym, v: V) -> Option<V> {
        let i = k.index();
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        let old = self.slots[i].replace(v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every (key, value), in symbol order.
    pub fn iter(&self) -> impl Iterator<Item = (Sym, V)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, v)| {
            // Slots exist only up to the largest symbol inserted, a `u32`.
            let k = Sym(NonZeroU32::new(u32::try_from(i + 1).ok()?)?);
            v.map(|v| (k, v))
        })
    }
}

impl<V: Copy> FromIterator<(Sym, V)> for SymMap<V> {
    fn from_iter<I: IntoIterator<Item = (Sym, V)>>(iter: I) -> Self {
        let mut m = SymMap::default();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// However names arrive and however often the order is brought up to date,
        /// the places are the names' byte order, and a name interned since has none.
        #[test]
        fn places_are_the_names_byte_order(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    // Long shared prefixes (past 16 bytes), short names, non-ASCII.
                    prop_oneof![
                        "agent-[0-9]{1,5}",
                        "a-very-long-shared-prefix-[a-c]{0,3}",
                        "[a-zé€]{0,4}",
                    ],
                    0..40,
                ),
                1..6,
            ),
        ) {
            let mut syms = Interner::default();
            for batch in &batches {
                for name in batch {
                    syms.intern(name);
                }
                syms.order_names();
                let mut by_name: Vec<(&str, Sym)> = syms
                    .names()
                    .iter()
                    .map(|n| (&**n, syms.get(n).unwrap()))
                    .collect();
                by_name.sort();
                for (place, (_, sym)) in by_name.iter().enumerate() {
                    prop_assert_eq!(syms.name_rank(*sym), Some(place as u32));
                }
            }
            let late = syms.intern("\u{10ffff} interned after the order");
            if syms.len() > syms.sorted.len() {
                prop_assert_eq!(syms.name_rank(late), None);
            }
        }
    }

    proptest! {
        /// A `SymMap` answers every look-up as a `HashMap` given the same inserts does,
        /// and lists the same entries.
        #[test]
        fn sym_map_behaves_like_a_map(
            ops in proptest::collection::vec((1u32..300, 0u32..5), 0..200),
            probes in proptest::collection::vec(1u32..400, 0..50),
        ) {
            let sym = |n: u32| Sym(NonZeroU32::new(n).unwrap());
            let mut dense = SymMap::default();
            let mut map = std::collections::HashMap::new();
            for (k, v) in ops {
                prop_assert_eq!(dense.insert(sym(k), v), map.insert(sym(k), v));
                prop_assert_eq!(dense.len(), map.len());
            }
            for k in probes {
                prop_assert_eq!(dense.get(sym(k)), map.get(&sym(k)).copied());
                prop_assert_eq!(dense.contains_key(sym(k)), map.contains_key(&sym(k)));
            }
            let mut listed: Vec<_> = map.into_iter().collect();
            listed.sort();
            prop_assert_eq!(dense.iter().collect::<Vec<_>>(), listed.clone());
            prop_assert_eq!(listed.into_iter().collect::<SymMap<_>>().iter().collect::<Vec<_>>(), dense.iter().collect::<Vec<_>>());
        }
    }
}
