//! The engine: pure and deterministic. It does no I/O and never reads the clock —
//! time comes in through events and [`Engine::advance_to`] — so `replay` and `serve`
//! run the same code and a replay is reproducible.
//!
//! Data flow inside: [`Engine::apply`] deduplicates and joins an event into its
//! contact, re-derives the contact's facts (`contact::derive`), and applies the
//! difference to per-window accumulators. [`Engine::flush`] hands out the windows the
//! watermark has passed as additive [`SnapshotDelta`]s for `store/` to merge.

pub mod acc;
mod aggregate;
pub mod checkpoint;
pub mod contact;
mod floor;
pub mod hist;
pub mod intern;
pub mod limits;
pub mod live;
mod packed;
pub mod spill;
mod table;
pub mod window;

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet as StdHashSet};
use std::num::NonZeroU128;
use std::sync::Arc;

use thin_vec::ThinVec;

/// A fast non-cryptographic hasher: keys are our own interned ids and event-id hashes,
/// and the engine is on the hot path of every event.
pub(crate) type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = StdHashSet<K, foldhash::fast::RandomState>;

use self::acc::Acc;
use self::aggregate::{Aggregator, DimKey, Helper};
use self::contact::{CEvent, Ctx, Fact, Ms, Rules};
use self::intern::{Interner, Sym, SymMap};
use self::limits::{Admission, KeyDim, KeyLimits};
use self::table::KeyTable;
use self::window::{Interval, Windower};
use crate::config::{Config, MAX_INTERVALS};
use crate::event::{Channel, Event, EventType, FIXED_SCALE, Keys, Millis, RejectReason};

/// A dimension of the snapshots; `key` is the agent / team / queue / channel name, or
/// `all` for the whole centre.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Dimension {
    All,
    Channel,
    Queue,
    Team,
    Agent,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::All,
        Dimension::Channel,
        Dimension::Queue,
        Dimension::Team,
        Dimension::Agent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::All => "all",
            Dimension::Channel => "channel",
            Dimension::Queue => "queue",
            Dimension::Team => "team",
            Dimension::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// An open contact (offered, not yet ended or abandoned) is packed after this many
/// times `pack_after_ms` without a change instead of once: see `Engine::open_queue`.
/// Four times the default three minutes covers most waits in a queue and most calls
/// (a contact-centre call lasts minutes, rarely over twelve); the memory it costs is
/// bounded by the contacts open at once, i.e. by the agents and the queues' length,
/// not by the events.
const OPEN_PACK_FACTOR: i64 = 4;

/// A real contact has tens of events; a contact_id reused by a runaway producer is
/// capped here, because every event re-derives its whole contact.
pub const MAX_EVENTS_PER_CONTACT: usize = 1000;

/// Which part of the live views to read: a large floor has tens of thousands of agent
/// and team keys but only a few centre, channel and queue keys, so the daemon reads
/// the agent part less often (see `source/kafka/consumer.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every dimension, and the agents on the floor.
    All,
    /// `all`, `channel` and `queue` rows only; no agents.
    Centre,
}

impl Scope {
    pub fn has(self, d: Dimension) -> bool {
        self == Scope::All || matches!(d, Dimension::All | Dimension::Channel | Dimension::Queue)
    }
}

/// `(dimension, key, accumulator)`.
pub type Row = (Dimension, String, Acc);

type Rows = Vec<Row>;

/// A list of live-view rows in two parts: the centre's (all, channel and queue rows,
/// captured for every publication) and the team and agent rows, behind an `Arc` so
/// that the publications splicing in the same agent capture
/// (`http::state::LiveSnapshot::splice_agents_from`) share them instead of copying
/// them. On a floor of 24,000 agents those copies were three quarters of the daemon's
/// heap allocations and its publisher thread took 3.5 times the engine's CPU
/// (docs/reliability.md, "2026-12-01, night"). Iterates as one list: the centre's
/// rows, then the agent part (team and agent rows sort after the centre's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitRows {
    centre: Rows,
    agents: Arc<Rows>,
}

impl SplitRows {
    pub fn iter(&self) -> std::iter::Chain<std::slice::Iter<'_, Row>, std::slice::Iter<'_, Row>> {
        self.centre.iter().chain(self.agents.iter())
    }

    pub fn len(&self) -> usize {
        self.centre.len() + self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.centre.is_empty() && self.agents.is_empty()
    }

    /// The all, channel and queue rows only.
    pub fn centre(&self) -> &[Row] {
        &self.centre
    }

    /// Append a row to its part (the agent part is copied first if it is shared).
    pub fn push(&mut self, row: Row) {
        if Scope::Centre.has(row.0) {
            self.centre.push(row);
        } else {
            Arc::make_mut(&mut self.agents).push(row);
        }
    }

    /// Every row by value; the agent part is moved out when this list was its only
    /// holder (always, for a fresh capture), else copied.
    pub fn into_rows(self) -> impl Iterator<Item = Row> {
        let agents = Arc::try_unwrap(self.agents).unwrap_or_else(|shared| (*shared).clone());
        self.centre.into_iter().chain(agents)
    }

    /// Share `other`'s agent part instead of this list's own.
    pub fn share_agents_of(&mut self, other: &SplitRows) {
        self.agents = Arc::clone(&other.agents);
    }

    /// Whether both lists hold the same agent part (not equal rows: the same memory).
    pub fn shares_agents_with(&self, other: &SplitRows) -> bool {
        Arc::ptr_eq(&self.agents, &other.agents)
    }
}

impl From<Rows> for SplitRows {
    /// Split a list into its parts, keeping the order within each.
    fn from(rows: Rows) -> SplitRows {
        let (centre, agents): (Rows, Rows) = rows
            .into_iter()
            .partition(|(d, _, _)| Scope::Centre.has(*d));
        SplitRows {
            centre,
            agents: Arc::new(agents),
        }
    }
}

impl<'a> IntoIterator for &'a SplitRows {
    type Item = &'a Row;
    type IntoIter = std::iter::Chain<std::slice::Iter<'a, Row>, std::slice::Iter<'a, Row>>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Key of the `all` dimension.
pub const ALL_KEY: &str = "all";
/// Key used when a contact's queue, channel or an agent's team is not known.
pub const UNKNOWN_KEY: &str = "unknown";

/// Engine settings, resolved from [`Config`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub intervals: Vec<Interval>,
    /// Per dimension, the intervals its windows are kept at (`[windows.dimensions]`),
    /// a subset of `intervals`; a dimension not listed keeps every interval.
    pub kept: BTreeMap<Dimension, Vec<Interval>>,
    pub tz: jiff::tz::TimeZone,
    pub allowed_lateness_ms: i64,
    pub correction_horizon_ms: i64,
    pub rolling_minutes: Vec<u32>,
    pub rules: Rules,
    /// Keep live views (rolling windows, totals since start). `serve` needs them for
    /// `/metrics` and the JSON API; `replay` does not and skips the work.
    pub live: bool,
    /// Event time after its last change at which a contact is packed (`[windows]
    /// pack_after`, 3 minutes by default; tests vary it to check packing changes no
    /// figure).
    pub pack_after_ms: i64,
    /// How far ahead of the wall clock an event may be stamped. The engine never reads
    /// the clock: `pipeline` applies this before `apply`.
    pub max_clock_skew_ms: i64,
    /// Distinct keys kept per dimension ([`limits`]).
    pub limits: KeyLimits,
    /// Keep latency histograms in each agent's totals since start (the `/metrics`
    /// agent histogram buckets, `[http] per_agent_buckets`). Off, an agent's totals
    /// keep counts and sums only: its histograms would gain a bin for every new
    /// distinct value for as long as the process runs (tens of KB per agent and
    /// partition after weeks), and nothing else reads them. Windows and rolling views
    /// always keep them (percentiles per agent come from the snapshots).
    pub agent_total_hists: bool,
    /// Event time a closed contact stays in memory after its last change before it is
    /// handed to the spill ([`spill`]; only when the engine has one, see
    /// [`Engine::set_spill`]).
    pub spill_after_ms: i64,
}

impl EngineConfig {
    pub fn from_config(c: &Config) -> EngineConfig {
        EngineConfig {
            intervals: c.windows.intervals.clone(),
            kept: c.windows.kept(),
            tz: c.tz(),
            allowed_lateness_ms: c.windows.allowed_lateness.ms(),
            correction_horizon_ms: c.windows.correction_horizon.ms(),
            rolling_minutes: c
                .windows
                .rolling
                .iter()
                .map(|d| (d.0.as_secs() / 60) as u32)
                .collect(),
            rules: Rules {
                sl_threshold_ms: c.metrics.service_level_threshold.ms(),
                short_abandon_ms: c.metrics.short_abandon.ms(),
                wrap_timeout_ms: c.metrics.wrap_timeout.ms(),
                fcr_window_ms: c.fcr.window.ms(),
                csat_positive_min: c.csat.positive_min * FIXED_SCALE,
            },
            live: true,
            pack_after_ms: c.windows.pack_after.ms(),
            max_clock_skew_ms: c.windows.max_clock_skew.ms(),
            limits: KeyLimits {
                agents: c.cardinality.max_agents,
                teams: c.cardinality.max_teams,
                queues: c.cardinality.max_queues,
                customers: c.cardinality.max_customers,
            },
            agent_total_hists: c.http.per_agent_buckets,
            spill_after_ms: c.windows.spill_after.ms(),
        }
    }

    /// [`EngineConfig::kept`] as bit sets over the interval indexes, per dimension
    /// (`Dimension as usize`): bit `i` keeps `intervals[i]`. The configuration allows
    /// at most [`MAX_INTERVALS`] intervals.
    pub(crate) fn kept_masks(&self) -> [u32; 5] {
        Dimension::ALL.map(|d| match self.kept.get(&d) {
            None => self.every_interval(),
            Some(ivs) => self
                .intervals
                .iter()
                .take(MAX_INTERVALS)
                .enumerate()
                .filter(|(_, iv)| ivs.contains(iv))
                .fold(0, |m, (i, _)| m | 1 << i),
        })
    }

    /// The bit set of every configured interval (what a dimension not listed in
    /// [`EngineConfig::kept`] keeps).
    pub(crate) fn every_interval(&self) -> u32 {
        (0..self.intervals.len().min(MAX_INTERVALS)).fold(0, |m, i| m | 1 << i)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig::from_config(&Config::default())
    }
}

/// Accumulated change of one snapshot row since it was last flushed.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotDelta {
    pub interval: Interval,
    pub start: Millis,
    pub end: Millis,
    pub dimension: Dimension,
    pub key: String,
    pub acc: Acc,
}

/// The contacts an engine let go of at the end of its stream
/// ([`Engine::finish_in_parts`]), to be freed wherever is cheapest.
struct Released {
    _contacts: KeyTable<Contact>,
    _customers: KeyTable<CustomerContacts>,
}

/// What happened to an input message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected(RejectReason),
}

/// Input accounting, printed by `replay` and exported on `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub read: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Corrections: accepted events whose facts landed in already-flushed windows.
    pub late_applied: u64,
    /// Contacts released at the correction horizon without ever ending (no
    /// `contact.ended`, no `contact.abandoned`). Checkpointed outside the `State`
    /// encoding (format 3), hence `skip` here.
    #[serde(skip)]
    pub expired: u64,
    /// Events whose agent / team / queue was folded into `__overflow__`, or whose
    /// customer was not remembered, because the dimension was at its limit.
    #[serde(skip)]
    pub overflowed: BTreeMap<KeyDim, u64>,
}

impl Stats {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Whether every count lies below [`acc::PLAUSIBLE_BOUND`], as [`acc::Acc::plausible`] asks of a
    /// restored checkpoint's accumulators: far past any real input, and room to add.
    pub fn plausible(&self) -> bool {
        [
            self.read,
            self.accepted,
            self.duplicates,
            self.late_applied,
            self.expired,
        ]
        .iter()
        .chain(self.rejected.values())
        .chain(self.overflowed.values())
        .all(|n| *n < acc::PLAUSIBLE_BOUND)
    }

    /// Add another input's counts (several partitions shown as one).
    pub fn merge(&mut self, o: &Stats) {
        self.read += o.read;
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.late_applied += o.late_applied;
        self.expired += o.expired;
        for (d, n) in &o.overflowed {
            *self.overflowed.entry(*d).or_default() += n;
        }
        for (r, n) in &o.rejected {
            *self.rejected.entry(*r).or_default() += n;
        }
    }
}

/// A contact's joined events and the facts last derived from them.
///
/// A contact nothing has touched for `pack_after_ms` of event time is *packed*: its
/// events and facts are encoded into one compact byte string (`packed`, with both
/// vectors emptied) and unpacked again when an event or a re-derivation reaches it.
/// Contacts must stay for the whole correction horizon (a late survey, QA score or
/// repeat contact can still change their facts), and almost all of them are settled:
/// packing cuts their memory about threefold without changing any figure.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Contact {
    /// `ThinVec`s (one pointer; length and capacity live with the elements): the
    /// contacts table holds this struct inline for every contact, and most are packed,
    /// with both empty. 80 bytes instead of 112 make a table slot 97 bytes instead of
    /// 129 (docs/performance.md, "Replay's memory peaks"), and the length is read
    /// from the allocation the elements are read from anyway. Encoded like a `Vec`.
    events: ThinVec<CEvent>,
    facts: ThinVec<Fact>,
    packed: Option<Box<[u8]>>,
    /// Non-zero so the option is 16 bytes, not 32: the contacts table holds this inline
    /// for every contact, and its slots were 144 bytes (docs/performance.md, "Engine
    /// memory and CPU, one more round"). Encoded as an `Option<u128>` (same bytes).
    customer: Option<NonZeroU128>,
    /// The first offer's time, [`NO_OFFER`] for none: 8 bytes where an
    /// `Option<Millis>` takes 16, which makes room for `shared` in the same slot.
    /// Encoded as an `Option<Millis>` (checkpoints unchanged).
    #[serde(with = "offer_time")]
    first_offer_ms: Millis,
    last_ts: Millis,
    /// Engine clock at the last change; matches the newest pack-queue entry for it.
    #[serde(skip)]
    touched: Millis,
    /// The customer may have other contacts held: only then does a re-derivation look
    /// the customer up for FCR repeats. Set on every contact of a customer when a
    /// second one joins (`Engine::join_customer`, and on restore); may stay set after
    /// the others leave (a look-up for nothing), never unset while they are held.
    /// 88 % of customers have one contact, and that look-up was a third of the
    /// re-derivations' own time, a cache miss each (docs/performance.md, "sixth round").
    #[serde(skip)]
    shared: bool,
    /// Listed in `Engine::stale`: its facts are out of date and are derived before
    /// anything next reads the windows (engines without live views only, see
    /// [`Engine::touch`]). Never set in a checkpoint: checkpointing settles first.
    #[serde(skip)]
    stale: bool,
    /// Has an entry in `Engine::pack_queue`: a contact is queued once, not once per
    /// change (see there). Fits in the padding the struct has anyway.
    #[serde(skip)]
    queued: bool,
    /// Known at packing time to be free to leave memory as far as its own events and
    /// facts go: finished, and no fact waiting for its agent's team. False means
    /// "decode to find out" ([`Engine::spillable`]): so it is after a restore or a
    /// load from the spill. Packed contacts never change, so the answer holds until
    /// the next unpack; without it every spill candidate was decoded (~2.5 % of the
    /// engine thread of a spilling replay, docs/performance.md, "twenty-sixth round").
    #[serde(skip)]
    spill_ok: bool,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            events: ThinVec::new(),
            facts: ThinVec::new(),
            packed: None,
            customer: None,
            first_offer_ms: NO_OFFER,
            last_ts: 0,
            touched: 0,
            shared: false,
            stale: false,
            queued: false,
            spill_ok: false,
        }
    }
}

/// [`Contact::first_offer_ms`] of a contact without an offer (never a valid event time:
/// decoding keeps those in years 2000–2099).
const NO_OFFER: Millis = Millis::MIN;

/// [`Contact::first_offer_ms`] as an option.
fn offer(t: Millis) -> Option<Millis> {
    (t != NO_OFFER).then_some(t)
}

/// [`Contact::first_offer_ms`] encoded as the `Option<Millis>` it was.
mod offer_time {
    use super::{Millis, NO_OFFER};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &Millis, s: S) -> Result<S::Ok, S::Error> {
        super::offer(*t).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        Ok(Option::<Millis>::deserialize(d)?.unwrap_or(NO_OFFER))
    }
}

/// How long `agent.state` event ids are remembered for duplicate detection (see
/// `Engine::expire`).
const AGENT_DEDUP_MS: Millis = 60 * 60_000;

/// The room a contact's event list gets when it first needs any (and an unpacked one,
/// held at its exact length, when it grows): the simulated centre's contacts have
/// about seven events, so a list grown by doubling from `ThinVec`'s 4 was copied into
/// a new allocation for most contacts (~290,000 reallocations per 1 M events, with
/// their copies and first-touch page faults on the engine's thread). A list packs
/// into exact-size bytes once settled, so the spare room lives minutes of event time
/// (docs/performance.md, "nineteenth round").
const FIRST_EVENTS: usize = 8;

/// Stale contacts from which [`Engine::settle`] applies facts on a second thread.
const SETTLE_HELPER_MIN: usize = 1024;

/// Accumulators to take from which [`Engine::flush`] takes the windows on a second
/// thread: about 5 M instructions of merging and sorting, against tens of
/// microseconds to start a thread. A daemon's commit-by-commit flushes stay inline.
const TAKE_HELPER_MIN: usize = 2048;

/// What [`Contact::pack`] encodes: the first event's time, then the events (times
/// relative to it) and the facts.
type PackedBody = (Millis, ThinVec<CEvent>, ThinVec<Fact>);

impl Contact {
    fn customer_key(&self) -> Option<CustomerKey> {
        self.customer.map(NonZeroU128::get)
    }

    fn first_offer(&self) -> Option<Millis> {
        offer(self.first_offer_ms)
    }

    /// Encode events and facts into `packed` (postcard's bytes, written by
    /// [`packed::encode`]). Times are stored relative to the first event, so
    /// variable-length integers keep them to a few bytes.
    /// `unknown` is the engine's team symbol for an agent whose team is not known yet.
    fn pack(&mut self, unknown: Sym) {
        if self.packed.is_some() {
            return;
        }
        // No agent's team is known here: a fact under `unknown` counts as waiting.
        self.spill_ok = free_to_spill(&self.events, &self.facts, unknown, |_| false);
        let base = self.events.first().map_or(0, |e| e.ts);
        // Encoded into a reused buffer, then copied once into an exact-size box: the
        // encoder growing a fresh vector cost several reallocations per contact.
        let bytes = PACK_BUF.with_borrow_mut(|buf| {
            buf.clear();
            packed::encode(base, &self.events, &self.facts, buf);
            Box::<[u8]>::from(buf.as_slice())
        });
        self.packed = Some(bytes);
        self.events = ThinVec::new();
        self.facts = ThinVec::new();
    }

    /// Whether a packed contact's bytes decode. [`Contact::unpack`] trusts them, as
    /// the engine's own; a restored checkpoint is checked contact by contact.
    fn packed_decodes(&self) -> bool {
        self.packed
            .as_ref()
            .is_none_or(|b| postcard::from_bytes::<PackedBody>(b).is_ok())
    }

    /// The events and facts of a packed contact, decoded without unpacking it.
    fn peek(&self) -> Option<(Vec<CEvent>, Vec<Fact>)> {
        let bytes = self.packed.as_ref()?;
        let (_, events, facts): (Millis, Vec<CEvent>, Vec<Fact>) =
            postcard::from_bytes(bytes).ok()?;
        // Times stay relative to the first event: the callers look at kinds and keys.
        Some((events, facts))
    }

    /// Undo [`Contact::pack`] (a no-op on an unpacked contact).
    fn unpack(&mut self) {
        let Some(bytes) = self.packed.take() else {
            return;
        };
        self.spill_ok = false;
        // The bytes are our own encoding of the same types, made by `pack`: bytes from
        // outside are checked where they enter (a checkpoint's by `restore`, refused;
        // the spill's by `load`, dropped). So a failure here is a bug of `pack` or of
        // this decoding, which the fuzzer's dev builds stop on.
        let decoded: Result<PackedBody, _> = postcard::from_bytes(&bytes);
        debug_assert!(decoded.is_ok(), "a packed contact did not decode");
        let (base, mut events, mut facts) = decoded.unwrap_or_default();
        shift_times(&mut events, &mut facts, base);
        self.events = events;
        self.facts = facts;
    }
}

thread_local! {
    /// [`Contact::pack`]'s encoding buffer (kept between calls; engines are per thread).
    static PACK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Move every event and fact time by `by` (wrapping: packing stores times relative
/// to the first event, see `packed`, and unpacking adds it back).
fn shift_times(events: &mut [CEvent], facts: &mut [Fact], by: Millis) {
    for e in events {
        e.ts = e.ts.wrapping_add(by);
    }
    for f in facts {
        f.ts = f.ts.wrapping_add(by);
    }
}

/// Contacts and customers are keyed by a 128-bit hash of their id: a fixed-size key
/// (no pointer chase, no string compare on the hot path) whose collision probability
/// is negligible (~1e-26 for a billion ids).
type ContactKey = u128;
type CustomerKey = u128;

/// A customer's contacts held: almost always one, kept inline so the FCR look-up of
/// a contact's customer costs no second pointer chase (checkpointed like a `Vec`).
type CustomerContacts = smallvec::SmallVec<[ContactKey; 1]>;

/// How many items ahead of its handling a contact is announced to the contacts
/// table, per prefetch stage ([`Engine::look_ahead`]): far (index line), mid (slot),
/// near (the head of its events, facts or packed bytes), nearest (the rest of its
/// events and facts). Each stage reads only what the one before asked for, so the
/// items between them must outlast a cache miss (~0.1 µs) even when they are cheap:
/// a duplicate, an agent state, a pack-queue entry whose contact changed since are
/// tens of nanoseconds, and at leads of 6/4/2 the near stage waited for the slot in
/// `pack_settled` (`perf annotate`). The lines in flight (~6 per item) stay far
/// inside the L1 cache.
pub const LOOK_AHEAD: [usize; 4] = [16, 10, 5, 2];

/// Prefetch the cache lines of `v`'s elements after its first line (which holds the
/// header and was prefetched a stage before), at most 16 lines.
fn prefetch_rest<T>(v: &ThinVec<T>) {
    let bytes = size_of_val(v.as_slice());
    let head = heap_of(v);
    for off in (64..(bytes + 16).min(17 * 64)).step_by(64) {
        table::prefetch_line(head.wrapping_add(off));
    }
}

/// Address of a `ThinVec`'s allocation (its header, then its elements) without reading
/// it: reading the length is the cache miss a prefetch is for.
fn heap_of<T>(v: &ThinVec<T>) -> *const u8 {
    const { assert!(size_of::<ThinVec<T>>() == size_of::<*const u8>()) };
    // SAFETY: `ThinVec` is `#[repr(C)]` with its header pointer as its only
    // non-zero-sized field (first; the assertion above checks it is the whole
    // struct), so its bytes are that pointer. The pointer is only prefetched.
    unsafe { *(v as *const ThinVec<T>).cast::<*const u8>() }
}

#[cfg(test)]
fn key_of(id: &str) -> u128 {
    crate::event::hash_id(id)
}

/// A customer key as a contact holds it (see [`Contact::customer`]).
fn held(k: Option<CustomerKey>) -> Option<NonZeroU128> {
    k.and_then(NonZeroU128::new)
}

pub struct Engine {
    cfg: EngineConfig,
    /// Shared with a flush's take thread while it runs ([`Engine::flush`]): it reads
    /// the names, and nothing interns meanwhile. Were anything to, `Arc::make_mut`
    /// would copy the interner rather than change the one being read.
    syms: Arc<Interner>,
    unknown: Sym,
    channels: [Sym; 5],
    /// Ids of accepted `agent.state` events by hour of event time, for duplicate
    /// detection (contact events are checked against their contact's events). One set
    /// per hour rather than one set plus a list per hour: each id is stored once (the
    /// set and the list were 18 MB of a 10 k-agent replay's heap) and an hour leaves
    /// as one drop. A look-up probes every hour held, so hours before the dedup window
    /// go as soon as a new hour starts ([`Engine::forget_agent_ids`]): a few sets,
    /// however scattered the events' times.
    seen_by_hour: BTreeMap<Millis, HashSet<u128>>,
    contacts: KeyTable<Contact>,
    /// Contacts to pack once `pack_after_ms` has passed since their last change, each
    /// listed once ([`Contact::queued`]) with the clock when it was listed. An entry
    /// that comes due for a contact changed since is listed again at that change. One
    /// entry per change (as before) made `pack_settled` look up ~6 stale entries per
    /// contact, a cache miss each, and the queue held one entry per event of the
    /// last `pack_after_ms` (docs/performance.md, "ninth round"). Mostly in clock
    /// order: an entry listed again may sit behind later ones, which delays its
    /// packing by less than `pack_after_ms` and changes no figure.
    pack_queue: std::collections::VecDeque<(Millis, ContactKey)>,
    /// Contacts that came due in `pack_queue` still open (offered, not yet ended or
    /// abandoned: waiting in a queue, or in a long call), listed by the clock of
    /// their last change until [`OPEN_PACK_FACTOR`] × `pack_after_ms` has passed.
    /// Their next event is all but certain, and packed, each such event unpacked them
    /// and packed them again (about 4,000 and 3,000 instructions): in the 1 M event
    /// set, two thirds of the unpacks an event caused were a contact routed or ended
    /// after more than `pack_after_ms` (docs/performance.md, "thirty-seventh round").
    /// One that ends meanwhile waits for its entry here (it is not listed twice):
    /// packed at most that long after it was listed. Mostly in clock order, as
    /// `pack_queue`.
    open_queue: std::collections::VecDeque<(Millis, ContactKey)>,
    /// Where closed, settled contacts go ([`spill`]); none: all stay in memory.
    spill: Option<Box<dyn spill::Spill>>,
    /// Set when a contact read back from the spill did not decode: its events are
    /// lost to this engine, so no figure derived from now on may be stored
    /// ([`Engine::damage`]; [`Engine::checkpoint`] and [`Engine::finish_in_parts`]
    /// refuse). Not checkpointed: no checkpoint is taken after it.
    damaged: Option<String>,
    /// Packed contacts by the clock of their last change, spilled once
    /// `spill_after_ms` has passed (stale entries skipped, as in `pack_queue`).
    spill_queue: std::collections::VecDeque<(Millis, ContactKey)>,
    customers: KeyTable<CustomerContacts>,
    /// Each agent's latest team, read by every event that names both and by every
    /// derivation. Held densely by symbol: as a `HashMap` its probe was about 5 % of
    /// the engine thread's samples (docs/performance.md, "forty-fourth round").
    agent_team: SymMap<Sym>,
    /// Contacts with facts attributed to team `unknown` because their agent's team was
    /// not known yet; re-derived when it becomes known, so the result does not depend
    /// on whether the agent's other events arrived first.
    awaiting_team: HashMap<Sym, Vec<ContactKey>>,
    /// Contacts waiting for a wrap, by the watermark at which they complete without
    /// one. Exact: a contact is listed once, at the deadline of its latest derivation
    /// (`wrap_of` says which), and moves or leaves when a wrap or another end changes it.
    /// Stale entries used to stay and fire anyway, re-deriving (and unpacking, and
    /// packing again) every wrapped contact ten minutes after its end for nothing:
    /// a tenth of the engine thread's time in `replay` (docs/performance.md).
    wrap_deadlines: BTreeMap<Millis, Vec<ContactKey>>,
    /// Each listed contact's entry in `wrap_deadlines`. Not checkpointed: rebuilt from
    /// it on restore (`index_wrap_deadlines`). A contact a checkpoint written before
    /// this lists twice (stale entries) keeps the later entry here; its other ones
    /// fire and re-derive it as they always did.
    wrap_of: HashMap<ContactKey, Millis>,
    /// Scratch list derivations write into (see `contact::derive_into`), kept for its
    /// allocation; empty between calls in meaning, not in capacity.
    fact_buf: ThinVec<Fact>,
    /// Contacts whose derivation [`Engine::touch`] put off, each once (its `stale`
    /// flag); derived by [`Engine::settle`] before the windows are next read.
    stale: Vec<ContactKey>,
    /// While a large [`Engine::settle`] runs: the thread the windows are lent to,
    /// which applies the derived facts while this thread derives the next contacts.
    helper: Option<Helper>,
    /// [`SETTLE_HELPER_MIN`]; tests set it to 1 (always) or `usize::MAX` (never).
    settle_helper_min: usize,
    /// Settles whose facts were applied on a helper thread.
    settles_helped: u64,
    /// [`TAKE_HELPER_MIN`]; tests set it as `settle_helper_min`.
    take_helper_min: usize,
    /// Flushes whose windows were taken on a second thread.
    takes_helped: u64,
    agg: Aggregator,
    /// Who waits and what agents do now (live views only).
    floor: live::Floor,
    windower: Windower,
    /// The finest configured interval: occupancy and the trend are kept per interval of
    /// this size.
    finest: Interval,
    max_ts: Option<Millis>,
    last_expiry: Millis,
    stats: Stats,
    admission: Admission,
}

/// [`Engine::contact_memory`]: bytes are the allocations' requested sizes, without
/// the allocator's rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContactMemory {
    pub held: usize,
    /// The contacts hash table: capacity × (key + contact inline + control byte).
    pub table_bytes: usize,
    pub packed: usize,
    pub packed_bytes: usize,
    pub unpacked_events: usize,
    pub unpacked_event_bytes: usize,
    pub unpacked_fact_bytes: usize,
    /// Contacts started and never ended or abandoned: held until the correction
    /// horizon expires them, and never spilled.
    pub unfinished: usize,
    /// Finished contacts kept in memory because their customer has an unfinished one
    /// (a customer is spilled whole: the invariant in [`spill`]).
    pub held_by_customer: usize,
}

/// One queue's waiting contacts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QueueWaiting {
    pub queue: String,
    pub waiting: usize,
    /// Offer time of the longest-waiting contact, UTC ms.
    pub oldest_since: Millis,
}

/// One agent on the floor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentView {
    pub agent: String,
    pub team: String,
    pub state: crate::event::AgentState,
    /// When the current state began, UTC ms.
    pub since: Millis,
    /// Milliseconds per state (order of `AgentState::ALL`) in the current interval of
    /// the finest configured interval, up to "now".
    pub interval_ms: [i64; 5],
}

/// The live floor at one instant ([`Engine::floor`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FloorView {
    pub waiting: Vec<QueueWaiting>,
    /// Shared, not copied, by the live publications that splice in the same capture
    /// of the agents (`http::state::LiveSnapshot::splice_agents_from`).
    pub agents: Arc<Vec<AgentView>>,
    /// Start of the interval `interval_ms` covers, UTC ms.
    pub interval_start: Option<Millis>,
    /// Start of "today" (the day of `now` in the configured time zone), UTC ms.
    pub day_start: Option<Millis>,
    /// Today's figures per dimension key (empty when nothing happened today yet).
    pub today: SplitRows,
    /// Today per finest interval, for the centre and each queue: `(start, dim, key, acc)`.
    pub trend: Vec<(Millis, Dimension, String, Acc)>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let mut syms = Interner::default();
        let unknown = syms.intern(UNKNOWN_KEY);
        let all = syms.intern(ALL_KEY);
        let channels = Channel::ALL.map(|c| syms.intern(c.as_str()));
        let cfg_tz = cfg.tz.clone();
        let finest = finest_of(&cfg.intervals);
        let agg = Aggregator::new(
            cfg.intervals.clone(),
            cfg.kept_masks(),
            Windower::new(cfg.tz.clone()),
            all,
            cfg.live,
            &cfg.rolling_minutes,
            cfg.agent_total_hists,
        );
        Engine {
            cfg,
            syms: Arc::new(syms),
            unknown,
            channels,
            seen_by_hour: BTreeMap::new(),
            contacts: KeyTable::default(),
            pack_queue: std::collections::VecDeque::new(),
            open_queue: std::collections::VecDeque::new(),
            spill: None,
            damaged: None,
            spill_queue: std::collections::VecDeque::new(),
            customers: KeyTable::default(),
            agent_team: SymMap::default(),
            awaiting_team: HashMap::default(),
            wrap_deadlines: BTreeMap::new(),
            wrap_of: HashMap::default(),
            fact_buf: ThinVec::new(),
            stale: Vec::new(),
            helper: None,
            settle_helper_min: SETTLE_HELPER_MIN,
            settles_helped: 0,
            take_helper_min: TAKE_HELPER_MIN,
            takes_helped: 0,
            agg,
            floor: live::Floor::default(),
            windower: Windower::new(cfg_tz),
            finest,
            max_ts: None,
            last_expiry: Millis::MIN,
            stats: Stats::default(),
            admission: Admission::default(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Event-time watermark: max event time seen − allowed lateness.
    pub fn watermark(&self) -> Option<Millis> {
        self.max_ts
            .map(|t| t.saturating_sub(self.cfg.allowed_lateness_ms))
    }

    /// The engine's notion of "now": the latest event time (or wall-clock advance).
    pub fn clock(&self) -> Option<Millis> {
        self.max_ts
    }

    /// `agent.state` event ids held for duplicate detection.
    pub fn agent_state_ids(&self) -> usize {
        self.seen_by_hour.values().map(HashSet::len).sum()
    }

    pub fn open_contacts(&self) -> usize {
        self.contacts.len()
    }

    /// What the held contacts take, by part (a walk over every contact: for
    /// benchmarks and diagnostics, not the hot path).
    pub fn contact_memory(&self) -> ContactMemory {
        let mut m = ContactMemory {
            held: self.contacts.len(),
            table_bytes: self.contacts.allocated_bytes(),
            ..ContactMemory::default()
        };
        // Customers with an unfinished contact, and the finished contacts' customers
        // (each contact decoded once).
        let mut blocked: HashSet<CustomerKey> = HashSet::default();
        let mut finished: Vec<CustomerKey> = Vec::new();
        for c in self.contacts.values() {
            if never_finished(c) {
                m.unfinished += 1;
                blocked.extend(c.customer_key());
            } else {
                finished.extend(c.customer_key());
            }
        }
        m.held_by_customer = finished.iter().filter(|k| blocked.contains(k)).count();
        for c in self.contacts.values() {
            match &c.packed {
                Some(b) => {
                    m.packed += 1;
                    m.packed_bytes += b.len();
                }
                None => {
                    // A `ThinVec`'s length and capacity sit in front of its elements.
                    let heap = |cap: usize, size: usize| match cap {
                        0 => 0,
                        _ => cap * size + 2 * std::mem::size_of::<usize>(),
                    };
                    m.unpacked_event_bytes += heap(c.events.capacity(), size_of::<CEvent>());
                    m.unpacked_fact_bytes += heap(c.facts.capacity(), size_of::<Fact>());
                    m.unpacked_events += c.events.len();
                }
            }
        }
        m
    }

    pub fn key_name(&self, s: Sym) -> &str {
        self.syms.name(s)
    }

    /// Count an input message that failed to decode.
    pub fn record_reject(&mut self, reason: RejectReason) {
        self.stats.read += 1;
        *self.stats.rejected.entry(reason).or_default() += 1;
    }

    /// Apply one decoded event.
    pub fn apply(&mut self, ev: Event) -> Outcome {
        self.apply_ref(&ev)
    }

    /// [`Engine::apply`] of an event the caller keeps (`replay` applies events in the
    /// batch they were decoded into, without moving them).
    pub fn apply_ref(&mut self, ev: &Event) -> Outcome {
        self.apply_keyed(ev, &Keys::of(ev))
    }

    /// [`Engine::apply_ref`] with the event's keys computed beforehand (`replay`'s
    /// decoder threads compute them; [`Engine::look_ahead`] reads them too).
    /// `keys` must be `Keys::of(ev)`.
    pub fn apply_keyed(&mut self, ev: &Event, keys: &Keys) -> Outcome {
        debug_assert_eq!(*keys, Keys::of(ev), "keys of another event");
        self.stats.read += 1;
        if let Some(wm) = self.watermark()
            && ev.ts < wm.saturating_sub(self.cfg.correction_horizon_ms)
        {
            *self
                .stats
                .rejected
                .entry(RejectReason::TooLate)
                .or_default() += 1;
            return Outcome::Rejected(RejectReason::TooLate);
        }
        let id = keys.id;
        // Duplicates: contact events are checked against their contact's own events
        // (no global id set to keep for the whole correction horizon); agent states,
        // which have no contact, against a set that expires with the horizon.
        let contact_key = keys.contact();
        if let Some(ck) = contact_key
            && self.spill.is_some()
        {
            self.ensure_loaded(ck);
        }
        // One look-up of a known contact answers all three: was it packed, is this a
        // duplicate, is it full.
        let (mut was_packed, mut duplicate, mut full) = (false, false, false);
        // Where the contact sits: the event's later look-ups of it start there.
        let mut slot = None;
        if let Some((at, c)) = contact_key.and_then(|ck| self.contacts.get_mut_slot(&ck)) {
            slot = Some(at);
            was_packed = c.packed.is_some();
            c.unpack();
            duplicate = c.events.iter().any(|e| e.id_hash == id as u64);
            full = c.events.len() >= MAX_EVENTS_PER_CONTACT;
        }
        if contact_key.is_none() {
            duplicate = self.seen_by_hour.values().any(|ids| ids.contains(&id));
        }
        if duplicate {
            self.list_turned_away(contact_key, was_packed);
            self.stats.duplicates += 1;
            return Outcome::Duplicate;
        }
        if full {
            *self
                .stats
                .rejected
                .entry(RejectReason::ContactOverflow)
                .or_default() += 1;
            self.list_turned_away(contact_key, was_packed);
            return Outcome::Rejected(RejectReason::ContactOverflow);
        }
        if contact_key.is_none() {
            let hour = ev.ts.div_euclid(3_600_000);
            if !self.seen_by_hour.contains_key(&hour) {
                self.forget_agent_ids();
            }
            self.seen_by_hour.entry(hour).or_default().insert(id);
        }
        self.stats.accepted += 1;
        if self.watermark().is_some_and(|wm| ev.ts < wm) {
            self.stats.late_applied += 1;
        }

        let (agent, team) = self.agent_and_team(ev, keys);
        if let (Some(a), Some(t)) = (agent, team) {
            match self.agent_team.get(a) {
                Some(known) if known == t => {}
                Some(_) => {
                    // A contact derived before this event keeps the team it was derived
                    // with until something else re-derives it: put-off derivations
                    // happen now, under the team they were due under.
                    self.settle();
                    self.agent_team.insert(a, t);
                }
                None => {
                    self.agent_team.insert(a, t);
                    if let Some(waiting) = self.awaiting_team.remove(&a) {
                        for ck in waiting {
                            self.touch(ck);
                        }
                    }
                }
            }
        }
        if ev.kind == EventType::AgentState {
            if self.cfg.live
                && let (Some(a), Some(state)) = (agent, ev.state)
            {
                let finest = self.finest;
                self.floor
                    .agent_state(a, state, ev.ts, (&mut self.windower, finest));
            }
            self.bump_clock(ev.ts);
            self.expire_due();
            return Outcome::Accepted;
        }
        let Some(ck) = contact_key else {
            // Decoding guarantees contact events carry an id; count defensively anyway.
            return Outcome::Accepted;
        };
        let ce = self.contact_event(ev, keys, agent, team);
        let mut event_customer = keys.customer();
        if let Some(k) = event_customer
            && self.spill.is_some()
            && self.contacts.get(&ck).is_none_or(|c| c.customer.is_none())
        {
            // This contact is about to join customer `k`: its spilled contacts come
            // back first, so FCR sees all of them (the invariant in `spill`).
            self.load_customer(k);
        }
        if let Some(k) = event_customer
            && self.customers.len() >= self.cfg.limits.customers
            && !self.customers.contains_key(&k)
            && self.contacts.get(&ck).is_none_or(|c| c.customer.is_none())
        {
            // Not remembered: this contact's FCR is judged as if it had no customer.
            event_customer = None;
            *self.stats.overflowed.entry(KeyDim::Customer).or_default() += 1;
        }
        let (slot, c) = self.contacts.at_or_default(ck, slot);
        let pos = c.events.partition_point(|x| x.sort_key() <= ce.sort_key());
        let new_offer =
            ce.kind == EventType::ContactOffered && c.first_offer().is_none_or(|t| ce.ts < t);
        if new_offer {
            c.first_offer_ms = ce.ts;
        }
        let new_customer = c.customer.is_none() && event_customer.is_some();
        if new_customer {
            c.customer = held(event_customer);
        }
        c.last_ts = c.last_ts.max(ce.ts);
        // The clock this event is about to set: the pack queue stays in clock order.
        let now = self.max_ts.map_or(ce.ts, |m| m.max(ce.ts));
        // Room for a typical contact's events at once (see `FIRST_EVENTS`).
        if c.events.len() == c.events.capacity() && c.events.len() < FIRST_EVENTS {
            c.events.reserve_exact(FIRST_EVENTS - c.events.len());
        }
        c.events.insert(pos, ce);
        let customer = c.customer_key();
        enqueue(&mut self.pack_queue, c, ck, now);
        if self.cfg.live {
            let w = live::waiting_of(&c.events);
            self.floor.set_waiting(ck, w);
        }

        if new_customer && let Some(k) = customer {
            self.join_customer(k, ck);
        }
        self.bump_clock(ev.ts);
        match customer {
            // A new or earlier offer can change the FCR of the customer's other contacts.
            Some(k) if new_offer || new_customer => {
                let ids = self.customers.get(&k).cloned().unwrap_or_default();
                for id in ids {
                    self.touch(id);
                }
            }
            _ => self.touch_at(ck, Some(slot)),
        }
        self.fire_wrap_deadlines();
        self.expire_due();
        Outcome::Accepted
    }

    /// The symbols event `ev`'s agent and team count under.
    fn agent_and_team(&mut self, ev: &Event, keys: &Keys) -> (Option<Sym>, Option<Sym>) {
        let agent = ev
            .agent_id
            .as_deref()
            .map(|a| self.key(KeyDim::Agent, a, keys.agent));
        let team = ev
            .team
            .as_deref()
            .map(|t| self.key(KeyDim::Team, t, keys.team));
        (agent, team)
    }

    /// Contact event `ev` as a contact holds it, its agent and team already interned
    /// (the rest is interned here).
    fn contact_event(
        &mut self,
        ev: &Event,
        keys: &Keys,
        agent: Option<Sym>,
        team: Option<Sym>,
    ) -> CEvent {
        let duration = |d: Option<u64>| d.map(|v| Ms::new(u32::try_from(v).unwrap_or(u32::MAX)));
        CEvent {
            ts: ev.ts,
            kind: ev.kind,
            id_hash: keys.id as u64,
            agent,
            team,
            queue: ev
                .queue
                .as_deref()
                .map(|q| self.key(KeyDim::Queue, q, keys.queue)),
            channel: ev.channel,
            to_agent: ev
                .to_agent_id
                .as_deref()
                .map(|a| self.key(KeyDim::Agent, a, crate::event::hash_id(a))),
            talk_ms: duration(ev.talk_ms),
            hold_ms: duration(ev.hold_ms),
            wrap_ms: duration(ev.wrap_ms),
            value: ev.amount.or(ev.score).unwrap_or(0),
        }
    }

    /// The symbol a name (whose [`crate::event::hash_id`] is `hash`) counts under in a
    /// limited dimension (`__overflow__` once the dimension is full).
    fn key(&mut self, d: KeyDim, name: &str, hash: u128) -> Sym {
        let (s, folded) = self
            .admission
            .admit(&mut self.syms, &self.cfg.limits, d, name, hash);
        if folded {
            *self.stats.overflowed.entry(d).or_default() += 1;
        }
        s
    }

    fn bump_clock(&mut self, ts: Millis) {
        if self.max_ts.is_none_or(|m| ts > m) {
            self.max_ts = Some(ts);
            self.agg.trim(ts);
        }
    }

    /// Advance event time with the wall clock when the input is idle (serve only), so
    /// quiet periods still close their intervals.
    pub fn advance_to(&mut self, now: Millis) {
        self.bump_clock(now);
        self.fire_wrap_deadlines();
        self.expire_due();
    }

    /// Release what the correction horizon has passed as event time moves, not only at
    /// [`Engine::flush`]: `serve` flushes a partition only when it prepares a store
    /// commit, and while commits lag (a slow store, large checkpoints) contacts past the
    /// horizon piled up, which made the checkpoints and so the commits bigger still
    /// (docs/reliability.md, "Soak"). [`Engine::expire`] itself decides whether a scan
    /// is due, so this costs a comparison per event.
    fn expire_due(&mut self) {
        if let Some(wm) = self.watermark() {
            self.expire(wm);
        }
    }

    fn fire_wrap_deadlines(&mut self) {
        let Some(wm) = self.watermark() else { return };
        while let Some(entry) = self.wrap_deadlines.first_entry() {
            let d = *entry.key();
            if d > wm {
                break;
            }
            for id in entry.remove() {
                if self.wrap_of.get(&id) == Some(&d) {
                    self.wrap_of.remove(&id);
                }
                self.touch(id);
            }
        }
    }

    /// Rebuild `wrap_of` from `wrap_deadlines` (after a restore).
    pub(super) fn index_wrap_deadlines(&mut self) {
        self.wrap_of = self
            .wrap_deadlines
            .iter()
            .flat_map(|(d, ids)| ids.iter().map(move |id| (*id, *d)))
            .collect();
    }

    /// Contact `ck` changed (an event, its customer's offers, its agent's team, its
    /// wrap deadline): derive it again, now in an engine with live views, which read
    /// the windows at any moment; otherwise once, before the windows are next read
    /// ([`Engine::settle`]).
    ///
    /// Putting it off gives the same windows at every read: a contact's facts are a
    /// function of its events, its customer's other offers, the agent → team map and
    /// which wrap deadlines the watermark has passed, so deriving it late gives what
    /// its last derivation now would have given, as long as nothing it read has
    /// changed in between in a way a derivation now would not see. Events and offers
    /// mark it again; the team map only grows (a new agent's contacts are re-derived
    /// either way) except when an agent changes team, which settles first; a passed
    /// deadline is what a late derivation reads anyway; contacts leave (expiry, the
    /// spill) only after a settle. What it saves: a contact's events arrive spread
    /// over minutes among thousands of others', and each re-derived it and moved its
    /// facts in and out of the windows (add the new, retract the old): in `replay`
    /// that was most of the engine's work per event (docs/performance.md, "seventh
    /// round").
    fn touch(&mut self, ck: ContactKey) {
        self.touch_at(ck, None);
    }

    /// [`Engine::touch`] of a contact last seen in `hint` ([`KeyTable::at_mut`]).
    fn touch_at(&mut self, ck: ContactKey, hint: Option<table::Slot>) {
        if self.cfg.live {
            self.rederive(ck, true);
            return;
        }
        if self.spill.is_some() && !self.ensure_loaded(ck) {
            return;
        }
        let now = self.max_ts;
        let Some(c) = self.contacts.at_mut(&ck, hint) else {
            return;
        };
        // What the derivation would have done to the pack queue now.
        if let Some(now) = now {
            enqueue(&mut self.pack_queue, c, ck, now);
        }
        if !c.stale {
            c.stale = true;
            self.stale.push(ck);
        }
    }

    /// A packed contact that was unpacked only to turn an event away (a duplicate, or
    /// one past [`MAX_EVENTS_PER_CONTACT`]) stays unpacked and is listed for packing
    /// like a changed contact, so that every unpacked contact is listed. Packing it
    /// again at once made each further event for it cost a decode and an encode of its
    /// whole list: a runaway contact at its cap, sent more events, took about 1 ms a
    /// turned-away event in a dev build (the fuzzer's slow inputs, docs/reliability.md,
    /// "Fuzzing"). Now a burst of them costs one decode, and one encode `pack_after_ms`
    /// of event time after the last.
    fn list_turned_away(&mut self, ck: Option<ContactKey>, was_packed: bool) {
        let Some(ck) = ck.filter(|_| was_packed) else {
            return;
        };
        let Some(c) = self.contacts.get_mut(&ck) else {
            return;
        };
        match self.max_ts {
            Some(now) => enqueue(&mut self.pack_queue, c, ck, now),
            // Not reached: a held contact came with an accepted event, which set the
            // clock (checkpoints keep it). Packing again keeps the invariant anyway.
            None => c.pack(self.unknown),
        }
    }

    /// Derive every contact [`Engine::touch`] put off. Called before anything reads the
    /// windows or lets contacts go (flushes, expiry, checkpoints) and before an agent's
    /// team changes.
    fn settle(&mut self) {
        if self.stale.is_empty() {
            return;
        }
        let mut stale = std::mem::take(&mut self.stale);
        // Applying the facts to the windows is about half of a derivation's work, and
        // a flush's settle (a quarter of the engine's thread in `replay`) otherwise
        // runs while the second core waits: the reader has filled its batches ahead,
        // and the writer has written the previous flush. Small settles (an expiry's,
        // a team change's) stay inline: a thread costs tens of microseconds. (With
        // live views nothing is put off, so nothing is settled here.)
        if stale.len() >= self.settle_helper_min {
            self.helper = self.agg.lend();
            self.settles_helped += u64::from(self.helper.is_some());
        }
        for i in 0..stale.len() {
            self.look_ahead_keys(|d| stale.get(i + d).copied(), true);
            let ck = stale[i];
            if let Some(c) = self.contacts.get_mut(&ck) {
                c.stale = false;
                // The pack queue has the contact's entry from `touch` already.
                self.rederive(ck, false);
            }
        }
        if let Some(helper) = self.helper.take() {
            self.agg.give_back(helper);
        }
        // Kept for its allocation.
        stale.clear();
        self.stale = stale;
    }

    /// Derive contact `ck`'s facts and apply the difference to the windows. `queue`:
    /// queue it for packing at the current clock (a put-off derivation was queued when
    /// it was put off).
    fn rederive(&mut self, ck: ContactKey, queue: bool) {
        if self.spill.is_some() && !self.ensure_loaded(ck) {
            return;
        }
        let Some(c) = self.contacts.get(&ck) else {
            return;
        };
        // Inline for the usual handful: this runs for every event of a contact.
        let siblings = match c.customer_key() {
            Some(k) if c.shared => self.customers.get(&k),
            _ => None,
        };
        let repeat_offers: smallvec::SmallVec<[Millis; 4]> = match siblings {
            Some(ids) => ids
                .iter()
                .filter(|id| **id != ck)
                .filter_map(|id| self.contacts.get(id).and_then(Contact::first_offer))
                .collect(),
            None => smallvec::SmallVec::new(),
        };
        let watermark = self.watermark().unwrap_or(Millis::MIN);
        let clock = self.max_ts;
        // Disjoint borrows: the contact (mutable) and the aggregator (mutable) at once.
        let Engine {
            contacts,
            agent_team: teams,
            awaiting_team,
            cfg,
            agg,
            wrap_deadlines,
            wrap_of,
            unknown,
            channels,
            floor,
            windower,
            finest,
            pack_queue,
            fact_buf,
            helper,
            ..
        } = self;
        let Some(c) = contacts.get_mut(&ck) else {
            return;
        };
        c.unpack();
        let agent_team = |a: Sym| teams.get(a);
        let ctx = Ctx {
            rules: &cfg.rules,
            watermark,
            repeat_offers: &repeat_offers,
            unknown: *unknown,
            channels,
            agent_team: &agent_team,
        };
        let derived = contact::derive_into(&c.events, &ctx, std::mem::take(fact_buf));
        let listed = wrap_of.get(&ck).copied();
        if listed != derived.wrap_deadline {
            if let Some(old) = listed
                && let std::collections::btree_map::Entry::Occupied(mut e) =
                    wrap_deadlines.entry(old)
            {
                e.get_mut().retain(|id| *id != ck);
                if e.get().is_empty() {
                    e.remove();
                }
            }
            match derived.wrap_deadline {
                Some(d) => {
                    wrap_deadlines.entry(d).or_default().push(ck);
                    wrap_of.insert(ck, d);
                }
                None => {
                    wrap_of.remove(&ck);
                }
            }
        }
        for f in &derived.facts {
            if let Some(a) = f.agent
                && f.team == *unknown
                && !teams.contains_key(a)
            {
                let waiting = awaiting_team.entry(a).or_default();
                if !waiting.contains(&ck) {
                    waiting.push(ck);
                }
            }
        }
        if queue && let Some(now) = clock {
            enqueue(pack_queue, c, ck, now);
        }
        // The contact keeps an exact-size copy; the scratch list keeps its capacity for
        // the next derivation. Reusing the replaced facts as the scratch instead
        // (as before) started every new contact's derivation from an empty list,
        // grown by doubling (a reallocation or two per derivation), and left the kept
        // lists up to half empty.
        let mut exact = ThinVec::with_capacity(derived.facts.len());
        exact.extend_from_slice(&derived.facts);
        *fact_buf = derived.facts;
        let old = std::mem::replace(&mut c.facts, exact);
        let new = &c.facts;
        let live = cfg.live;
        let finest = *finest;
        let mut apply = |f: &Fact, sign: i64| {
            match helper {
                Some(h) => {
                    h.apply(f, sign);
                    agg.apply_live(f, sign, clock);
                }
                None => agg.apply(f, sign, clock),
            }
            if live {
                let (dims, n) = agg.dims(f);
                let day = windower.window(Interval::Day, f.ts).0;
                let interval = windower.window(finest, f.ts).0;
                floor.apply_today(f, sign, &dims[..n], day, interval);
            }
        };
        // Both lists are sorted: walk them together and apply only the difference.
        let (mut i, mut j) = (0, 0);
        loop {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) if o == n => {
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o < n => {
                    apply(o, -1);
                    i += 1;
                }
                (Some(o), None) => {
                    apply(o, -1);
                    i += 1;
                }
                (_, Some(n)) => {
                    apply(n, 1);
                    j += 1;
                }
                (None, None) => break,
            }
        }
    }

    /// Hand out every window the watermark has passed (first flushes and corrections),
    /// and release state older than the correction horizon.
    pub fn flush(&mut self) -> Vec<SnapshotDelta> {
        let Some(wm) = self.watermark() else {
            return Vec::new();
        };
        self.fire_wrap_deadlines();
        self.settle();
        // From here on nothing changes a window: expiry settles nothing (all settled
        // above), packing and spilling move contacts' events, not facts. So a large
        // take (merging finished windows into coarser ones, sorting the deltas: about a
        // tenth of the engine's thread in `replay`) runs on a second thread meanwhile,
        // which otherwise waits through a flush (the reader has filled its batches
        // ahead; the writer has written the previous flush). The same windows give
        // the same deltas on either thread (docs/performance.md, "thirty-eighth round").
        self.order_names();
        if self.agg.ready_accs(wm) < self.take_helper_min {
            self.release_settled(wm);
            return self.agg.take(|end| end <= wm, &self.syms);
        }
        let mut job = self.agg.lend_take(wm);
        let syms = Arc::clone(&self.syms);
        // The deltas are built in this thread's arena, in the memory packing has just
        // freed, as inline (`alloc::thread_arena`).
        let arena = crate::alloc::thread_arena();
        let helped = std::thread::scope(|s| {
            // Borrowed, not moved, into the thread: were it not to start, the windows
            // are still here to take inline.
            let worker = std::thread::Builder::new()
                .name("take".into())
                .spawn_scoped(s, || {
                    crate::alloc::use_arena(arena);
                    job.run(&syms)
                });
            if let Err(e) = &worker {
                tracing::debug!(error = %e, "no thread to take windows on; taken inline");
            }
            self.release_settled(wm);
            worker.ok().map(|w| match w.join() {
                Ok(deltas) => deltas,
                // A bug, as it would be inline: resumed here.
                Err(panic) => std::panic::resume_unwind(panic),
            })
        });
        let deltas = match helped {
            Some(deltas) => {
                self.takes_helped += 1;
                deltas
            }
            None => job.run(&syms),
        };
        drop(syms);
        self.agg.take_back(job);
        deltas
    }

    /// A flush's work on the contacts: let go of those past the correction horizon,
    /// pack and spill the settled ones, and fit the tables to what is left (none of
    /// these steps changes a window). Inline, it runs before the windows are taken: a
    /// rebuild holds two tables for a moment, which beside an hour boundary's deltas
    /// was a peak of a replay. Beside a take on the second thread the two may overlap;
    /// measured, `replay`'s peak did not grow (191.8 → 188.1 MiB, with the take thread
    /// in the engine's arena: docs/performance.md, "thirty-eighth round").
    fn release_settled(&mut self, wm: Millis) {
        self.expire(wm);
        self.pack_settled();
        self.spill_settled();
        self.compact_contacts();
    }

    /// Fit the contacts and customers tables to what they hold: room released after
    /// many removals, headroom made for growth ([`KeyTable::compact`]).
    fn compact_contacts(&mut self) {
        self.contacts.compact();
        self.customers.compact();
    }

    /// Pack the contacts nothing has changed for `pack_after_ms` of event time, or for
    /// [`OPEN_PACK_FACTOR`] times that while still open (`open_queue`).
    fn pack_settled(&mut self) {
        let Some(now) = self.max_ts else { return };
        let due = now.saturating_sub(self.cfg.pack_after_ms);
        let due_open = now.saturating_sub(self.cfg.pack_after_ms.saturating_mul(OPEN_PACK_FACTOR));
        while let Some(&(t, ck)) = self.pack_queue.front() {
            if t > due {
                break;
            }
            self.pack_queue.pop_front();
            let queue = &self.pack_queue;
            self.look_ahead_keys(|d| queue.get(d - 1).map(|e| e.1), true);
            self.pack_or_relist(ck, due, due_open);
        }
        while let Some(&(t, ck)) = self.open_queue.front() {
            if t > due_open {
                break;
            }
            self.open_queue.pop_front();
            self.pack_or_relist(ck, due, due_open);
        }
    }

    /// An entry for contact `ck` came due in `pack_queue` (by `due`) or `open_queue`
    /// (by `due_open`): pack the contact, or list it again where its last change and
    /// its state say.
    fn pack_or_relist(&mut self, ck: ContactKey, due: Millis, due_open: Millis) {
        // Gone, or an entry left from before it was dropped and held again.
        let Some(c) = self.contacts.get_mut(&ck).filter(|c| c.queued) else {
            return;
        };
        if c.touched > due {
            // Changed since it was listed: due at its last change.
            self.pack_queue.push_back((c.touched, ck));
        } else if c.touched > due_open && never_finished_events(&c.events) {
            self.open_queue.push_back((c.touched, ck));
        } else {
            c.queued = false;
            c.pack(self.unknown);
            if self.spill.is_some() {
                self.spill_queue.push_back((c.touched, ck));
            }
        }
    }

    /// Hand to the spill the closed contacts nothing has changed for
    /// `spill_after_ms`, a customer's contacts together (the invariant in [`spill`]).
    fn spill_settled(&mut self) {
        let Some(now) = self.max_ts else { return };
        if self.spill.is_none() {
            return;
        }
        let due = now.saturating_sub(self.cfg.spill_after_ms);
        while let Some(&(t, ck)) = self.spill_queue.front() {
            if t > due {
                break;
            }
            self.spill_queue.pop_front();
            let Some(c) = self.contacts.get(&ck) else {
                continue;
            };
            if c.touched != t {
                continue;
            }
            let customer = c.customer_key();
            let group: CustomerContacts = match customer.and_then(|k| self.customers.get(&k)) {
                Some(list) => list.clone(),
                None => smallvec::smallvec![ck],
            };
            // A sibling changed later keeps the group: its own entry comes later and
            // spills them all then.
            if !group.iter().all(|k| self.spillable(k, due)) {
                continue;
            }
            if let Some(k) = customer {
                self.customers.remove(&k);
            }
            for k in group {
                let Some(c) = self.contacts.remove(&k) else {
                    continue;
                };
                let first_offer = c.first_offer();
                let Some(body) = c.packed else {
                    continue; // `spillable` checked it is packed
                };
                if let Some(sp) = self.spill.as_mut() {
                    sp.put(spill::SpilledContact {
                        key: k,
                        customer: c.customer.map(NonZeroU128::get),
                        first_offer,
                        last_ts: c.last_ts,
                        body: body.into(),
                    });
                }
            }
        }
    }

    /// May contact `ck` leave memory: packed, unchanged since `due`, closed (a contact
    /// that never finished stays to be counted `expired` and shown waiting), and with
    /// no fact waiting for its agent's team (`awaiting_team` refers to it by key).
    fn spillable(&self, ck: &ContactKey, due: Millis) -> bool {
        let Some(c) = self.contacts.get(ck) else {
            return false;
        };
        if c.packed.is_none() || c.touched > due || self.floor.waiting.contains_key(ck) {
            return false;
        }
        c.spill_ok || self.free_to_spill_decoded(c)
    }

    /// [`Engine::spillable`]'s check of a packed contact's own events and facts, by
    /// decoding them: for contacts not known free at packing ([`Contact::spill_ok`]).
    fn free_to_spill_decoded(&self, c: &Contact) -> bool {
        let Some((events, facts)) = c.peek() else {
            return false;
        };
        free_to_spill(&events, &facts, self.unknown, |a| {
            self.agent_team.contains_key(a)
        })
    }

    /// Make contact `ck` held in memory if it was spilled, with its customer's other
    /// spilled contacts. True when it is in memory (false: never seen, or expired).
    fn ensure_loaded(&mut self, ck: ContactKey) -> bool {
        if self.contacts.contains_key(&ck) {
            return true;
        }
        let Some(sp) = self.spill.as_mut() else {
            return false;
        };
        let Some(c) = sp.take(ck) else {
            return false;
        };
        let siblings = c.customer.map(|k| sp.take_customer(k)).unwrap_or_default();
        self.load(c);
        for s in siblings {
            self.load(s);
        }
        true
    }

    /// Take customer `k`'s spilled contacts back into memory (none held in memory:
    /// the invariant says they are then all in the spill, or there are none).
    fn load_customer(&mut self, k: CustomerKey) {
        if self.customers.contains_key(&k) {
            return;
        }
        let Some(sp) = self.spill.as_mut() else {
            return;
        };
        for s in sp.take_customer(k) {
            self.load(s);
        }
    }

    /// A spilled contact back in memory, packed; queued to be packed (a no-op) and
    /// spilled again if nothing changes it.
    fn load(&mut self, s: spill::SpilledContact) {
        let now = self.max_ts.unwrap_or(s.last_ts);
        let mut c = Contact {
            packed: Some(Box::from(&s.body[..])),
            customer: held(s.customer),
            first_offer_ms: s.first_offer.unwrap_or(NO_OFFER),
            last_ts: s.last_ts,
            touched: now,
            queued: true,
            ..Contact::default()
        };
        // The spill's bytes come from a store or a file, where they can be damaged;
        // `unpack` trusts them. A contact read back rarely (a few thousand per million
        // events), so each is checked.
        if !c.packed_decodes() {
            if self.damaged.is_none() {
                let what = format!(
                    "the packed events of spilled contact {:032x} do not decode",
                    s.key
                );
                tracing::error!("{what}: no figure derived from now on is stored");
                self.damaged = Some(what);
            }
            // Held empty: its figures are not stored any more, and `unpack` only
            // ever sees bytes `pack` wrote.
            c.packed = None;
        }
        self.contacts.insert(s.key, c);
        if let Some(k) = s.customer {
            self.join_customer(k, s.key);
        }
        self.pack_queue.push_back((now, s.key));
    }

    /// List contact `ck` (held) under customer `k`; once the customer has more than
    /// one, every one of its contacts is marked [`Contact::shared`].
    fn join_customer(&mut self, k: CustomerKey, ck: ContactKey) {
        let list = self.customers.get_or_default(k);
        if !list.contains(&ck) {
            list.push(ck);
        }
        mark_shared(&mut self.contacts, list);
    }

    /// Mark the contacts of every customer with more than one (after a restore:
    /// the mark is not checkpointed).
    pub(super) fn mark_shared_customers(&mut self) {
        for list in self.customers.values() {
            mark_shared(&mut self.contacts, list);
        }
    }

    /// Spill closed, settled contacts into `spill` from now on ([`spill`]). The
    /// spill must hold what this engine spilled before its checkpoint was taken (a
    /// store that commits both together); contacts packed now are queued for it.
    pub fn set_spill(&mut self, spill: Box<dyn spill::Spill>) {
        self.spill = Some(spill);
        let now = self.max_ts.unwrap_or(Millis::MIN);
        let mut packed: Vec<ContactKey> = Vec::new();
        for (ck, c) in self.contacts.iter_mut() {
            // A listed contact goes to the spill queue when its entry comes due.
            if c.packed.is_some() && !c.queued {
                c.touched = now;
                c.queued = true;
                packed.push(*ck);
            }
        }
        // Behind anything queued at the same clock: the queue stays in clock order.
        self.pack_queue
            .extend(packed.into_iter().map(|ck| (now, ck)));
    }

    /// The spill, for the caller that persists it (`None` without one).
    pub fn spill_mut(&mut self) -> Option<&mut (dyn spill::Spill + 'static)> {
        self.spill.as_deref_mut()
    }

    /// Remove the spill (to hand it to an engine restored from this one's checkpoint).
    pub fn take_spill(&mut self) -> Option<Box<dyn spill::Spill>> {
        self.spill.take()
    }

    /// Tell the spill which contacts and customers the events whose keys are `upcoming`
    /// (about to be applied, in any order) will look up, so that it can fetch them
    /// together: one round trip per batch instead of one per event (for a store-backed
    /// spill fed in batches; `replay`'s local files need no prefetch and it does not
    /// call this). Only those not in memory are named; without a spill this does
    /// nothing.
    pub fn prefetch<'a>(&mut self, upcoming: impl IntoIterator<Item = &'a Keys>) {
        let Some(sp) = self.spill.as_mut() else {
            return;
        };
        let (mut keys, mut customers) = (Vec::new(), Vec::new());
        for ev in upcoming {
            if let Some(ck) = ev.contact()
                && !self.contacts.contains_key(&ck)
            {
                keys.push(ck);
            }
            if let Some(k) = ev.customer()
                && !self.customers.contains_key(&k)
            {
                customers.push(k);
            }
        }
        keys.sort_unstable();
        keys.dedup();
        customers.sort_unstable();
        customers.dedup();
        sp.prefetch(&keys, &customers);
    }

    /// Tell the contacts table that the events whose keys are `upcoming(d)` (`d`
    /// events after the one applied next) are coming, so their contacts' slots and
    /// events are in cache by the time they are applied ([`LOOK_AHEAD`]). The caller
    /// holds the events' keys in a batch anyway (`replay`'s decoded batches); this only
    /// issues prefetches.
    pub fn look_ahead<'a>(&self, upcoming: impl Fn(usize) -> Option<&'a Keys>) {
        self.look_ahead_keys(|d| upcoming(d).and_then(Keys::contact), false);
        // An offer names its customer, whose contacts list the contact joins.
        let [far, mid, ..] = LOOK_AHEAD;
        for (d, stage) in [(far, 0), (mid, 1)] {
            let Some(keys) = upcoming(d) else { continue };
            if let Some(k) = keys.customer() {
                self.customers.prefetch(k, stage);
            }
            // Its agent's symbol: 10 k agents' entries are not all in cache. (Teams
            // and queues are few: theirs stay in.)
            if keys.agent != 0 {
                self.syms.prefetch(keys.agent, stage);
            }
        }
    }

    /// One prefetch stage per [`LOOK_AHEAD`] distance for a walk over contacts about
    /// to handle `key(0)`: the index line of the contact furthest ahead, then its
    /// slot, then the head of its events (with `facts` its facts too) or packed bytes,
    /// then the rest of its events and facts. Each stage reads only lines an earlier
    /// stage fetched.
    fn look_ahead_keys(&self, key: impl Fn(usize) -> Option<ContactKey>, facts: bool) {
        let [far, mid, near, nearest] = LOOK_AHEAD;
        if let Some(k) = key(far) {
            self.contacts.prefetch(k, 0);
        }
        if let Some(k) = key(mid) {
            self.contacts.prefetch(k, 1);
        }
        if let Some(c) = key(near).and_then(|k| self.contacts.get(&k)) {
            table::prefetch_line(heap_of(&c.events));
            if facts {
                table::prefetch_line(heap_of(&c.facts));
            }
            // A packed contact is unpacked from its bytes first.
            if let Some(p) = c.packed.as_deref() {
                table::prefetch_line(p.as_ptr());
            }
        }
        // The lists' headers are in by now: the rest of their elements (a contact's
        // events are ~6 × 72 bytes, and the duplicate check walks them all).
        if let Some(c) = key(nearest).and_then(|k| self.contacts.get(&k)) {
            prefetch_rest(&c.events);
            if facts {
                prefetch_rest(&c.facts);
            }
        }
    }

    /// Why this engine's figures can no longer be stored, if they cannot: a contact
    /// read back from the spill was damaged (its events lost to the engine).
    pub fn damage(&self) -> Option<&str> {
        self.damaged.as_deref()
    }

    /// Why the figures derived since the last check cannot be trusted, if they
    /// cannot: the spill failed (its answers since are unknown), or a contact read
    /// back from it was damaged (its events lost). Nothing derived since may be
    /// stored. A spill failure is reported once; the damage every time.
    pub fn spill_trouble(&mut self) -> Option<std::io::Error> {
        if let Some(e) = self.spill.as_mut().and_then(|s| s.failure()) {
            return Some(e);
        }
        self.damaged
            .as_ref()
            .map(|what| std::io::Error::new(std::io::ErrorKind::InvalidData, what.clone()))
    }

    /// Contacts held in the spill.
    pub fn contacts_spilled(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.len())
    }

    /// Queue every unpacked contact for packing (after a restore: the queue itself is
    /// not checkpointed).
    fn queue_unpacked(&mut self) {
        let now = self.max_ts.unwrap_or(Millis::MIN);
        for (ck, c) in self.contacts.iter_mut() {
            if c.packed.is_none() {
                c.touched = now;
                c.queued = true;
                self.pack_queue.push_back((now, *ck));
            }
        }
    }

    /// Settles whose facts were applied on a second thread (see [`Engine::settle`]).
    pub fn settles_helped(&self) -> u64 {
        self.settles_helped
    }

    /// Flushes whose windows were taken on a second thread (see [`Engine::flush`]).
    pub fn takes_helped(&self) -> u64 {
        self.takes_helped
    }

    /// Both helper thresholds: 1 (always) or `usize::MAX` (never), in tests.
    #[cfg(test)]
    fn set_helper_min(&mut self, min: usize) {
        self.settle_helper_min = min;
        self.take_helper_min = min;
    }

    /// Contacts held packed (settled) and unpacked (recently changed).
    pub fn contacts_packed(&self) -> usize {
        self.contacts
            .values()
            .filter(|c| c.packed.is_some())
            .count()
    }

    /// Everything, open windows included, as if the watermark were at infinity: the
    /// end of a finite stream. Segments still waiting for a wrap complete at `ended`.
    pub fn flush_all(&mut self) -> Vec<SnapshotDelta> {
        self.settle();
        self.complete_waiting_wraps();
        self.take_every_window()
    }

    /// Derive every contact still waiting for a wrap as if its deadline had passed
    /// (the stream is over, or the caller wants final figures now).
    fn complete_waiting_wraps(&mut self) {
        let ids: Vec<ContactKey> = self.wrap_deadlines.values().flatten().copied().collect();
        self.wrap_deadlines.clear();
        self.wrap_of.clear();
        let saved = self.max_ts;
        self.max_ts = Some(Millis::MAX / 2);
        for &id in &ids {
            self.rederive(id, true);
        }
        self.max_ts = saved;
        // Those re-derivations listed their contacts at the artificial clock: list
        // them at the real one instead, so the queue stays in order and they can be
        // packed (and spilled) if the engine goes on.
        let limit = saved.unwrap_or(Millis::MIN);
        let mut relist = Vec::new();
        self.pack_queue.retain(|&(t, k)| {
            let keep = t <= limit;
            if !keep {
                relist.push(k);
            }
            keep
        });
        for id in ids {
            if let Some(c) = self.contacts.get_mut(&id) {
                c.touched = c.touched.min(limit);
            }
        }
        // Still listed (`queued`), now at the real clock.
        self.pack_queue
            .extend(relist.into_iter().map(|k| (limit, k)));
    }

    /// [`Engine::flush_all`] for a stream that is over (`replay` at the end of its
    /// input): once the waiting wraps are derived, the contacts, the spill and
    /// everything else kept to join later events are released, and only then are the
    /// final deltas built; the stats stay. The final write is the largest of a replay
    /// (every open window, the day's included): built beside a full contact store, it
    /// was the peak of a 10 k-agent replay's memory, where now it reuses the contacts'
    /// memory (same thread, same allocator arena). The engine takes no more events
    /// afterwards.
    pub fn finish(&mut self) -> Vec<SnapshotDelta> {
        self.settle();
        self.complete_waiting_wraps();
        drop(self.release_contacts());
        self.take_every_window()
    }

    /// [`Engine::finish`], its deltas handed out in parts of whole windows of at least
    /// `rows` deltas each (the last part may be smaller), each sorted by key, so that
    /// the caller writes one part while the next is built: `replay`'s last write then
    /// runs beside the work of taking the windows. Together the parts are exactly
    /// `finish`'s deltas. The contacts are released on a thread of their own (on the
    /// caller's when none can be started) while the parts are built.
    ///
    /// Fails when the spill has failed ([`spill::Spill::failure`]), before any part:
    /// the last derivations may have read from it.
    pub fn finish_in_parts(
        &mut self,
        rows: usize,
    ) -> Result<impl Iterator<Item = Vec<SnapshotDelta>> + '_, std::io::Error> {
        self.settle();
        self.complete_waiting_wraps();
        if let Some(e) = self.spill_trouble() {
            return Err(e);
        }
        let released = self.release_contacts();
        // Freeing ~150,000 contacts' lists takes a core ~10 ms that the last write
        // would wait for; a thread that cannot be started frees them here.
        if let Err(e) = std::thread::Builder::new()
            .name("release".into())
            .spawn(move || drop(released))
        {
            tracing::debug!(error = %e, "no thread to release the contacts on; released inline");
        }
        self.order_names();
        Ok(self.agg.take_all_in_parts(&self.syms, rows))
    }

    /// Take every contact and what indexes them out of the engine, for the end of a
    /// finite stream: nothing reads them once the windows are taken.
    fn release_contacts(&mut self) -> Released {
        self.pack_queue = std::collections::VecDeque::new();
        self.open_queue = std::collections::VecDeque::new();
        self.spill_queue = std::collections::VecDeque::new();
        self.awaiting_team = HashMap::default();
        self.wrap_deadlines = BTreeMap::new();
        self.wrap_of = HashMap::default();
        self.seen_by_hour = BTreeMap::new();
        self.spill = None;
        Released {
            _contacts: std::mem::take(&mut self.contacts),
            _customers: std::mem::take(&mut self.customers),
        }
    }

    /// Open windows' current partial values too, without completing waiting segments:
    /// for a daemon shutting down (deltas are additive, so a restart continues them).
    pub fn flush_open(&mut self) -> Vec<SnapshotDelta> {
        self.settle();
        self.take_every_window()
    }

    /// Every window, open ones included, as deltas in key order.
    fn take_every_window(&mut self) -> Vec<SnapshotDelta> {
        self.order_names();
        self.agg.take(|_| true, &self.syms)
    }

    /// Bring the interner's name order up to date before windows are taken: a take
    /// emits each window's keys in name order, by their places in it
    /// ([`Interner::order_names`]). Skipped while a take thread still shares the
    /// interner (none does between flushes); the take then orders by the names.
    fn order_names(&mut self) {
        if let Some(syms) = Arc::get_mut(&mut self.syms) {
            syms.order_names();
        }
    }

    /// Release contacts and duplicate-detection memory that no acceptable event can
    /// reach any more (older than watermark − correction horizon). Runs at most hourly,
    /// and for a short horizon every eighth of it: the scan visits every contact, and
    /// between scans up to one period's contacts are held beyond the horizon, so a
    /// fixed hour would let a 5-minute horizon hold 13 times its worth. Called as event
    /// time moves ([`Engine::expire_due`]) and at every flush; the period gates both.
    ///
    /// The check is inlined, the scan is not: this runs at every event, and as a call
    /// the check cost more than itself (docs/performance.md, "thirty-seventh round").
    #[inline]
    fn expire(&mut self, wm: Millis) {
        let every = (self.cfg.correction_horizon_ms / 8).clamp(1_000, 3_600_000);
        if wm.saturating_sub(self.last_expiry) < every {
            return;
        }
        self.expire_now(wm);
    }

    /// [`Engine::expire`]'s scan, due.
    #[inline(never)]
    fn expire_now(&mut self, wm: Millis) {
        self.last_expiry = wm;
        // Put-off derivations first, while every contact they may read (a customer's
        // other contacts) is still held, as it was when they were put off.
        self.settle();
        let horizon = wm.saturating_sub(self.cfg.correction_horizon_ms);
        let dead: Vec<ContactKey> = self
            .contacts
            .iter()
            .filter(|(_, c)| c.last_ts < horizon)
            .map(|(k, _)| *k)
            .collect();
        for id in dead {
            self.floor.forget_contact(&id);
            // Unpacked to look at its events (once, as it leaves).
            let removed = self.contacts.remove(&id).map(|mut c| {
                c.unpack();
                c
            });
            if removed.as_ref().is_some_and(never_finished) {
                self.stats.expired += 1;
            }
            if let Some(c) = removed
                && let Some(k) = c.customer_key()
                && let Some(list) = self.customers.get_mut(&k)
            {
                list.retain(|x| *x != id);
                if list.is_empty() {
                    self.customers.remove(&k);
                }
            }
        }
        let contacts = &self.contacts;
        self.awaiting_team.retain(|_, waiting| {
            waiting.retain(|ck| contacts.contains_key(ck));
            !waiting.is_empty()
        });
        if let Some(sp) = self.spill.as_mut() {
            sp.expire(horizon);
        }
        // Agent-state ids are kept for an hour, not the horizon: applying an agent state
        // again changes nothing once the agent has moved on (the floor ignores a state
        // older than the current one, and the same one again is a no-op), so the ids
        // only keep the duplicate count exact, and a week of them (a state change per
        // agent every few minutes) would outweigh everything else held.
        self.forget_agent_ids();
    }

    /// Drop the `agent.state` ids of the hours before the dedup window (an hour, or
    /// the correction horizon when shorter, before the watermark).
    fn forget_agent_ids(&mut self) {
        let Some(wm) = self.watermark() else { return };
        let dedup_from = wm.saturating_sub(self.cfg.correction_horizon_ms.min(AGENT_DEDUP_MS));
        let hour = dedup_from.div_euclid(3_600_000);
        if self
            .seen_by_hour
            .first_key_value()
            .is_some_and(|(h, _)| *h < hour)
        {
            self.seen_by_hour = self.seen_by_hour.split_off(&hour);
        }
    }

    /// Rolling window of the last `minutes` minutes of event time, per dimension key.
    pub fn rolling(&self, minutes: u32) -> Vec<(Dimension, String, Acc)> {
        self.rolling_of(minutes, Scope::All)
    }

    /// [`Engine::rolling`] for the dimensions of `scope` only.
    pub fn rolling_of(&self, minutes: u32, scope: Scope) -> Vec<(Dimension, String, Acc)> {
        let Some(now) = self.max_ts else {
            return Vec::new();
        };
        self.named(self.agg.rolling(now, minutes, |d| scope.has(d)))
    }

    /// Who waits per queue and what every agent does, as of `now` (UTC ms; the caller
    /// decides whether that is the engine clock or the wall clock). Live views only.
    pub fn floor(&self, now: Millis) -> FloorView {
        self.floor_of(now, Scope::All)
    }

    /// [`Engine::floor`] for `scope`: without agents (and their team / agent rows of
    /// today) for [`Scope::Centre`].
    pub fn floor_of(&self, now: Millis, scope: Scope) -> FloorView {
        let mut per_queue: BTreeMap<&str, (usize, Millis)> = BTreeMap::new();
        for w in self.floor.waiting.values() {
            let q = w.queue.map_or(UNKNOWN_KEY, |s| self.syms.name(s));
            let e = per_queue.entry(q).or_insert((0, w.since));
            e.0 += 1;
            e.1 = e.1.min(w.since);
        }
        let mut windower = self.windower.clone();
        let finest = self.finest;
        let listed = if scope.has(Dimension::Agent) {
            self.floor.agents_at(now, &mut windower, finest)
        } else {
            Vec::new()
        };
        let mut agents: Vec<AgentView> = listed
            .into_iter()
            .map(|(a, st, ms)| AgentView {
                agent: self.syms.name(a).to_owned(),
                team: self
                    .agent_team
                    .get(a)
                    .map_or(UNKNOWN_KEY, |t| self.syms.name(t))
                    .to_owned(),
                state: st.state,
                since: st.since,
                interval_ms: ms,
            })
            .collect();
        agents.sort_by(|a, b| a.agent.cmp(&b.agent));
        let day_start = windower.window(Interval::Day, now).0;
        let (mut today, mut trend) = (SplitRows::default(), Vec::new());
        if let Some(t) = self.floor.today.as_ref().filter(|t| t.day == day_start) {
            today = self
                .named(
                    t.accs
                        .iter()
                        .filter(|((d, _), _)| scope.has(*d))
                        .map(|(k, a)| (*k, a.clone()))
                        .collect(),
                )
                .into();
            for (start, accs) in &t.intervals {
                for ((d, k), a) in accs {
                    trend.push((*start, *d, self.syms.name(*k).to_owned(), a.clone()));
                }
            }
            trend.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        }
        FloorView {
            day_start: Some(day_start),
            today,
            trend,
            waiting: per_queue
                .into_iter()
                .map(|(q, (n, oldest))| QueueWaiting {
                    queue: q.to_owned(),
                    waiting: n,
                    oldest_since: oldest,
                })
                .collect(),
            agents: Arc::new(agents),
            interval_start: Some(windower.window(finest, now).0),
        }
    }

    /// Totals since the process started, per dimension key (Prometheus counters).
    pub fn totals(&self) -> Vec<(Dimension, String, Acc)> {
        self.totals_of(Scope::All)
    }

    /// [`Engine::totals`] for the dimensions of `scope` only.
    pub fn totals_of(&self, scope: Scope) -> Vec<(Dimension, String, Acc)> {
        self.named(
            self.agg
                .totals()
                .iter()
                .filter(|((d, _), _)| scope.has(*d))
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        )
    }

    fn named(&self, m: HashMap<DimKey, Acc>) -> Vec<(Dimension, String, Acc)> {
        let mut v: Vec<_> = m
            .into_iter()
            .map(|((d, k), a)| (d, self.syms.name(k).to_owned(), a))
            .collect();
        v.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        v
    }
}

/// Contact `ck` changed at clock `now`: it packs `pack_after_ms` after its last
/// change, through its pack-queue entry (one made now unless it is listed already).
fn enqueue(
    queue: &mut std::collections::VecDeque<(Millis, ContactKey)>,
    c: &mut Contact,
    ck: ContactKey,
    now: Millis,
) {
    c.touched = now;
    if !c.queued {
        c.queued = true;
        queue.push_back((now, ck));
    }
}

/// Mark [`Contact::shared`] the held contacts of a customer listing `ids`, if it lists
/// more than one.
fn mark_shared(contacts: &mut KeyTable<Contact>, ids: &[ContactKey]) {
    if ids.len() > 1 {
        for id in ids {
            if let Some(c) = contacts.get_mut(id) {
                c.shared = true;
            }
        }
    }
}

/// A contact that started (offered, routed, answered or first response) but has
/// neither ended nor been abandoned: released at the horizon, it counts as `expired`.
/// Contacts holding only late follow-ups (a survey, a QA score) did not start here.
/// Packed or not (a packed one is decoded without being unpacked).
fn never_finished(c: &Contact) -> bool {
    match c.peek() {
        Some((events, _)) => never_finished_events(&events),
        None => never_finished_events(&c.events),
    }
}

/// Whether a contact's own events and facts let it leave memory: every handling
/// finished, and no fact waits for its agent's team (a fact under team `unknown`
/// whose agent's team `team_known` does not know yet).
fn free_to_spill(
    events: &[CEvent],
    facts: &[Fact],
    unknown: Sym,
    team_known: impl Fn(Sym) -> bool,
) -> bool {
    !never_finished_events(events)
        && !facts
            .iter()
            .any(|f| f.team == unknown && f.agent.is_some_and(|a| !team_known(a)))
}

fn never_finished_events(events: &[CEvent]) -> bool {
    let mut started = false;
    for e in events {
        match e.kind {
            EventType::ContactEnded | EventType::ContactAbandoned => return false,
            EventType::ContactOffered
            | EventType::ContactRouted
            | EventType::ContactAnswered
            | EventType::ContactFirstResponse => started = true,
            _ => {}
        }
    }
    started
}

fn finest_of(intervals: &[Interval]) -> Interval {
    intervals
        .iter()
        .copied()
        .min_by_key(|i| i.nominal_ms())
        .unwrap_or(Interval::Minutes(15))
}

#[cfg(test)]
mod robust_tests;
#[cfg(test)]
mod tests;
