//! Cardinality limits: how many distinct agents, teams and queues one engine keeps.
//!
//! Names are interned for good (a fact carries `Sym`s), so a stream of millions of
//! distinct ids would grow the interner, the windows and the totals without bound.
//! Past a dimension's limit a new name is folded into [`OVERFLOW_KEY`] and the event
//! counted; names admitted before keep their own key. Customers are limited in the
//! engine itself (they are released with the correction horizon).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::intern::{Interner, Sym};

/// The key new names of a full dimension are counted under.
pub const OVERFLOW_KEY: &str = "__overflow__";

/// A kind of key that is limited: the `kind` label of
/// `ccmetrics_keys_overflowed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyDim {
    Agent,
    Team,
    Queue,
    Customer,
}

impl KeyDim {
    pub const ALL: [KeyDim; 4] = [KeyDim::Agent, KeyDim::Team, KeyDim::Queue, KeyDim::Customer];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyDim::Agent => "agent",
            KeyDim::Team => "team",
            KeyDim::Queue => "queue",
            KeyDim::Customer => "customer",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Per-dimension limits (`[cardinality]` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLimits {
    pub agents: usize,
    pub teams: usize,
    pub queues: usize,
    pub customers: usize,
}

impl Default for KeyLimits {
    fn default() -> Self {
        let c = crate::config::CardinalityConfig::default();
        KeyLimits {
            agents: c.max_agents,
            teams: c.max_teams,
            queues: c.max_queues,
            customers: c.max_customers,
        }
    }
}

impl KeyLimits {
    pub fn of(&self, d: KeyDim) -> usize {
        match d {
            KeyDim::Agent => self.agents,
            KeyDim::Team => self.teams,
            KeyDim::Queue => self.queues,
            KeyDim::Customer => self.customers,
        }
    }
}

/// Which names are admitted in which dimension. A name can be an agent and a queue at
/// once, so admission is one bit per dimension, indexed by `Sym` (dense ids: a vector,
/// not a map, on the hot path).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Admission {
    bits: Vec<u8>,
    admitted: [usize; 3],
}

impl Admission {
    /// The symbol `name` (whose [`crate::event::hash_id`] is `hash`, computed by the
    /// caller with the event's other keys) counts under in dimension `d` (not
    /// `Customer`), and whether it was folded into [`OVERFLOW_KEY`].
    ///
    /// Inlined for the known key, the case of nearly every call (2.4 per event): as
    /// a call, its prologue and epilogue were about a fifth of its instructions
    /// (docs/performance.md, "thirty-seventh round"). A new key takes the call.
    #[inline]
    pub fn admit(
        &mut self,
        syms: &mut Arc<Interner>,
        limits: &KeyLimits,
        d: KeyDim,
        name: &str,
        hash: u128,
    ) -> (Sym, bool) {
        if let Some(s) = syms.get_hashed(hash)
            && self.has(s, d)
        {
            return (s, false);
        }
        self.admit_new(syms, limits, d, name, hash)
    }

    /// [`Admission::admit`] of a key not yet admitted in `d`.
    #[inline(never)]
    fn admit_new(
        &mut self,
        syms: &mut Arc<Interner>,
        limits: &KeyLimits,
        d: KeyDim,
        name: &str,
        hash: u128,
    ) -> (Sym, bool) {
        let slot = d as usize;
        if self.admitted.get(slot).copied().unwrap_or(usize::MAX) >= limits.of(d) {
            return (Arc::make_mut(syms).intern(OVERFLOW_KEY), true);
        }
        let s = Arc::make_mut(syms).intern_hashed(name, hash);
        let i = s.index();
        if self.bits.len() <= i {
            self.bits.resize(i + 1, 0);
        }
        self.bits[i] |= d.bit();
        self.admitted[slot] += 1;
        (s, false)
    }

    #[inline]
    fn has(&self, s: Sym, d: KeyDim) -> bool {
        self.bits.get(s.index()).is_some_and(|b| b & d.bit() != 0)
    }
}
