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

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
