//! The engine: pure and deterministic. It does no I/O and never reads the clock —
//! time comes in through events and [`Engine::advance_to`] — so `replay` and `serve`
//! run the same code and a replay is reproducible.
//!
//! Data flow inside: [`Engine::apply`] deduplicates and joins an event into its
//! contact, re-derives the contact's facts (`contact::derive`), and applies the
//! difference to per-window accumulators. [`Engine::flush`] hands out the windows the
//! watermark has passed as additive [`SnapshotDelta`]s for `store/` to merge.

pub mod acc;
pub mod contact;
pub mod hist;
pub mod intern;
pub mod window;

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet as StdHashSet};

/// A fast non-cryptographic hasher: keys are our own interned ids and event-id hashes,
/// and the engine is on the hot path of every event.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = StdHashSet<K, foldhash::fast::RandomState>;

use self::acc::Acc;
use self::contact::{CEvent, Ctx, Fact, Rules, Side};
use self::intern::{Interner, Sym};
use self::window::{Interval, Windower};
use crate::config::Config;
use crate::event::{Channel, Event, EventType, FIXED_SCALE, Millis, RejectReason};

/// A dimension of the snapshots; `key` is the agent / team / queue / channel name, or
/// `all` for the whole centre.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// Key of the `all` dimension.
pub const ALL_KEY: &str = "all";
/// Key used when a contact's queue, channel or an agent's team is not known.
pub const UNKNOWN_KEY: &str = "unknown";

/// Engine settings, resolved from [`Config`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub intervals: Vec<Interval>,
    pub tz: jiff::tz::TimeZone,
    pub allowed_lateness_ms: i64,
    pub correction_horizon_ms: i64,
    pub rolling_minutes: Vec<u32>,
    pub rules: Rules,
    /// Keep live views (rolling windows, totals since start). `serve` needs them for
    /// `/metrics` and the JSON API; `replay` does not and skips the work.
    pub live: bool,
}

impl EngineConfig {
    pub fn from_config(c: &Config) -> EngineConfig {
        EngineConfig {
            intervals: c.windows.intervals.clone(),
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
        }
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

/// What happened to an input message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected(RejectReason),
}

/// Input accounting, printed by `replay` and exported on `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub read: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Corrections: accepted events whose facts landed in already-flushed windows.
    pub late_applied: u64,
}

impl Stats {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

#[derive(Debug, Default)]
struct Contact {
    events: Vec<CEvent>,
    facts: Vec<Fact>,
    customer: Option<Box<str>>,
    first_offer: Option<Millis>,
    last_ts: Millis,
}

type DimKey = (Dimension, Sym);

#[derive(Debug, Default)]
struct WindowAccs {
    end: Millis,
    accs: HashMap<DimKey, Acc>,
}

/// One-minute buckets of event time for rolling live views.
const MINUTE: i64 = 60_000;

pub struct Engine {
    cfg: EngineConfig,
    windower: Windower,
    syms: Interner,
    unknown: Sym,
    all: Sym,
    channels: [Sym; 5],
    seen: HashSet<u128>,
    seen_by_hour: BTreeMap<Millis, Vec<u128>>,
    contacts: HashMap<Box<str>, Contact>,
    customers: HashMap<Box<str>, Vec<Box<str>>>,
    agent_team: HashMap<Sym, Sym>,
    wrap_deadlines: BTreeMap<Millis, Vec<Box<str>>>,
    /// Accumulators updated per fact: the finest interval when the intervals nest
    /// (the usual 15m / 1h / 1d), every interval otherwise. Keyed by (interval, start).
    windows: HashMap<(u8, Millis), WindowAccs>,
    /// Coarser intervals built at flush time by merging flushed finest windows, which
    /// turns three accumulator updates per fact into one.
    coarse: HashMap<(u8, Millis), WindowAccs>,
    /// Interval indexes updated per fact, and those derived by merging (see `coarse`).
    direct: Vec<u8>,
    derived: Vec<u8>,
    minutes: BTreeMap<Millis, HashMap<DimKey, Acc>>,
    totals: HashMap<DimKey, Acc>,
    max_ts: Option<Millis>,
    /// Watermark at the last flush: facts for windows ending at or before it are late.
    flushed_to: Millis,
    last_expiry: Millis,
    stats: Stats,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let (direct, derived) = plan_intervals(&cfg.intervals);
        let mut syms = Interner::default();
        let unknown = syms.intern(UNKNOWN_KEY);
        let all = syms.intern(ALL_KEY);
        let channels = Channel::ALL.map(|c| syms.intern(c.as_str()));
        Engine {
            windower: Windower::new(cfg.tz.clone()),
            cfg,
            syms,
            unknown,
            all,
            channels,
            seen: HashSet::default(),
            seen_by_hour: BTreeMap::new(),
            contacts: HashMap::default(),
            customers: HashMap::default(),
            agent_team: HashMap::default(),
            wrap_deadlines: BTreeMap::new(),
            windows: HashMap::default(),
            coarse: HashMap::default(),
            direct,
            derived,
            minutes: BTreeMap::new(),
            totals: HashMap::default(),
            max_ts: None,
            flushed_to: Millis::MIN,
            last_expiry: Millis::MIN,
            stats: Stats::default(),
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

    pub fn open_contacts(&self) -> usize {
        self.contacts.len()
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
        let id = xxhash_rust::xxh3::xxh3_128(ev.event_id.as_bytes());
        if !self.seen.insert(id) {
            self.stats.duplicates += 1;
            return Outcome::Duplicate;
        }
        self.seen_by_hour
            .entry(ev.ts.div_euclid(3_600_000))
            .or_default()
            .push(id);
        self.stats.accepted += 1;
        if self.watermark().is_some_and(|wm| ev.ts < wm) {
            self.stats.late_applied += 1;
        }

        let agent = ev.agent_id.as_deref().map(|a| self.syms.intern(a));
        let team = ev.team.as_deref().map(|t| self.syms.intern(t));
        if let (Some(a), Some(t)) = (agent, team) {
            self.agent_team.insert(a, t);
        }
        if ev.kind == EventType::AgentState {
            self.bump_clock(ev.ts);
            return Outcome::Accepted;
        }
        let Some(contact_id) = ev.contact_id.as_deref() else {
            // Decoding guarantees contact events carry an id; count defensively anyway.
            return Outcome::Accepted;
        };
        let ce = CEvent {
            ts: ev.ts,
            kind: ev.kind,
            id_hash: id as u64,
            agent,
            team,
            queue: ev.queue.as_deref().map(|q| self.syms.intern(q)),
            channel: ev.channel,
            customer: ev.customer_id.as_deref().map(Box::from),
            to_agent: ev.to_agent_id.as_deref().map(|a| self.syms.intern(a)),
            talk_ms: ev.talk_ms,
            hold_ms: ev.hold_ms,
            wrap_ms: ev.wrap_ms,
            amount: ev.amount,
            score: ev.score,
        };
        if !self.contacts.contains_key(contact_id) {
            self.contacts
                .insert(Box::from(contact_id), Contact::default());
        }
        let Some(c) = self.contacts.get_mut(contact_id) else {
            return Outcome::Accepted;
        };
        let pos = c.events.partition_point(|x| x.sort_key() <= ce.sort_key());
        let new_offer =
            ce.kind == EventType::ContactOffered && c.first_offer.is_none_or(|t| ce.ts < t);
        if new_offer {
            c.first_offer = Some(ce.ts);
        }
        let new_customer = c.customer.is_none() && ce.customer.is_some();
        if new_customer {
            c.customer = ce.customer.clone();
        }
        c.last_ts = c.last_ts.max(ce.ts);
        c.events.insert(pos, ce);
        let customer = c.customer.clone();

        if new_customer && let Some(k) = &customer {
            self.customers
                .entry(k.clone())
                .or_default()
                .push(Box::from(contact_id));
        }
        self.bump_clock(ev.ts);
        match customer {
            // A new or earlier offer can change the FCR of the customer's other contacts.
            Some(k) if new_offer || new_customer => {
                let ids = self.customers.get(&k).cloned().unwrap_or_default();
                for id in ids {
                    self.rederive(&id);
                }
            }
            _ => self.rederive(contact_id),
        }
        self.fire_wrap_deadlines();
        Outcome::Accepted
    }

    fn bump_clock(&mut self, ts: Millis) {
        if self.max_ts.is_none_or(|m| ts > m) {
            self.max_ts = Some(ts);
        }
        self.trim_minutes();
    }

    /// Advance event time with the wall clock when the input is idle (serve only), so
    /// quiet periods still close their intervals.
    pub fn advance_to(&mut self, now: Millis) {
        self.bump_clock(now);
        self.fire_wrap_deadlines();
    }

    fn fire_wrap_deadlines(&mut self) {
        let Some(wm) = self.watermark() else { return };
        while let Some(entry) = self.wrap_deadlines.first_entry() {
            if *entry.key() > wm {
                break;
            }
            for id in entry.remove() {
                self.rederive(&id);
            }
        }
    }

    fn rederive(&mut self, contact_id: &str) {
        let Some(c) = self.contacts.get(contact_id) else {
            return;
        };
        let repeat_offers: Vec<Millis> = match &c.customer {
            Some(k) => self
                .customers
                .get(k)
                .into_iter()
                .flatten()
                .filter(|id| &***id != contact_id)
                .filter_map(|id| self.contacts.get(id).and_then(|o| o.first_offer))
                .collect(),
            None => Vec::new(),
        };
        let agent_team = |a: Sym| self.agent_team.get(&a).copied();
        let ctx = Ctx {
            rules: &self.cfg.rules,
            watermark: self.watermark().unwrap_or(Millis::MIN),
            repeat_offers: &repeat_offers,
            unknown: self.unknown,
            channels: &self.channels,
            agent_team: &agent_team,
        };
        let derived = contact::derive(&c.events, &ctx);
        if let Some(d) = derived.wrap_deadline {
            let ids = self.wrap_deadlines.entry(d).or_default();
            if !ids.iter().any(|x| &**x == contact_id) {
                ids.push(Box::from(contact_id));
            }
        }
        let Some(c) = self.contacts.get_mut(contact_id) else {
            return;
        };
        let old = std::mem::take(&mut c.facts);
        let new = derived.facts;
        // Both lists are sorted: walk them together and apply only the difference.
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) if o == n => {
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o < n => {
                    self.apply_fact(o, -1);
                    i += 1;
                }
                (Some(o), None) => {
                    self.apply_fact(o, -1);
                    i += 1;
                }
                (_, Some(n)) => {
                    self.apply_fact(n, 1);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        if let Some(c) = self.contacts.get_mut(contact_id) {
            c.facts = new;
        }
    }

    fn dims(&self, f: &Fact) -> impl Iterator<Item = DimKey> {
        let queue_side = [
            (Dimension::All, self.all),
            (Dimension::Channel, f.channel),
            (Dimension::Queue, f.queue),
        ];
        let agent_side = f
            .agent
            .map(|a| [(Dimension::Team, f.team), (Dimension::Agent, a)]);
        let (q, a) = match f.side {
            Side::Queue => (Some(queue_side), None),
            Side::Agent => (None, agent_side),
            Side::Both => (Some(queue_side), agent_side),
        };
        q.into_iter().flatten().chain(a.into_iter().flatten())
    }

    fn apply_fact(&mut self, f: &Fact, sign: i64) {
        let mut dims = [(Dimension::All, self.all); 5];
        let mut n = 0;
        for dk in self.dims(f) {
            dims[n] = dk;
            n += 1;
        }
        let dims = &dims[..n];
        for &i in &self.direct {
            let (start, end) = self.windower.window(self.cfg.intervals[i as usize], f.ts);
            let w = self
                .windows
                .entry((i, start))
                .or_insert_with(|| WindowAccs {
                    end,
                    accs: HashMap::default(),
                });
            for dk in dims {
                w.accs.entry(*dk).or_default().apply(&f.measure, sign);
            }
        }
        if !self.cfg.live {
            return;
        }
        for dk in dims {
            self.totals.entry(*dk).or_default().apply(&f.measure, sign);
        }
        let minute = f.ts.div_euclid(MINUTE) * MINUTE;
        if self
            .max_ts
            .is_some_and(|now| minute > now - self.rolling_span_ms())
        {
            let bucket = self.minutes.entry(minute).or_default();
            for dk in dims {
                bucket.entry(*dk).or_default().apply(&f.measure, sign);
            }
        }
    }

    fn rolling_span_ms(&self) -> i64 {
        i64::from(self.cfg.rolling_minutes.iter().copied().max().unwrap_or(60)) * MINUTE
    }

    fn trim_minutes(&mut self) {
        let Some(now) = self.max_ts else { return };
        let keep_from = now - self.rolling_span_ms();
        while let Some(e) = self.minutes.first_entry() {
            if *e.key() + MINUTE > keep_from {
                break;
            }
            e.remove();
        }
    }

    /// Hand out every window the watermark has passed (first flushes and corrections),
    /// and release state older than the correction horizon.
    pub fn flush(&mut self) -> Vec<SnapshotDelta> {
        let Some(wm) = self.watermark() else {
            return Vec::new();
        };
        self.fire_wrap_deadlines();
        let out = self.take_windows(|end| end <= wm);
        self.flushed_to = wm;
        self.expire(wm);
        out
    }

    /// Everything, open windows included, as if the watermark were at infinity: the
    /// end of a finite stream. Segments still waiting for a wrap complete at `ended`.
    pub fn flush_all(&mut self) -> Vec<SnapshotDelta> {
        let ids: Vec<Box<str>> = self.wrap_deadlines.values().flatten().cloned().collect();
        self.wrap_deadlines.clear();
        let saved = self.max_ts;
        self.max_ts = Some(Millis::MAX / 2);
        for id in ids {
            self.rederive(&id);
        }
        self.max_ts = saved;
        self.take_windows(|_| true)
    }

    /// Open windows' current partial values too, without completing waiting segments:
    /// for a daemon shutting down (deltas are additive, so a restart continues them).
    pub fn flush_open(&mut self) -> Vec<SnapshotDelta> {
        self.take_windows(|_| true)
    }

    fn take_windows(&mut self, ready: impl Fn(Millis) -> bool) -> Vec<SnapshotDelta> {
        let keys: Vec<(u8, Millis)> = self
            .windows
            .iter()
            .filter(|(_, w)| ready(w.end))
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for k in keys {
            let Some(w) = self.windows.remove(&k) else {
                continue;
            };
            // A finished finest window feeds the coarser intervals containing it: still
            // open ones grow, already flushed ones get a correction delta.
            for &c in &self.derived {
                let (start, end) = self.windower.window(self.cfg.intervals[c as usize], k.1);
                let cw = self.coarse.entry((c, start)).or_insert_with(|| WindowAccs {
                    end,
                    accs: HashMap::default(),
                });
                for (dk, acc) in &w.accs {
                    cw.accs.entry(*dk).or_default().merge(acc);
                }
            }
            self.emit(k, w, &mut out);
        }
        let keys: Vec<(u8, Millis)> = self
            .coarse
            .iter()
            .filter(|(_, w)| ready(w.end))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(w) = self.coarse.remove(&k) {
                self.emit(k, w, &mut out);
            }
        }
        out.sort_by(|a, b| {
            (a.interval, a.start, a.dimension, &a.key).cmp(&(
                b.interval,
                b.start,
                b.dimension,
                &b.key,
            ))
        });
        out
    }

    fn emit(&self, k: (u8, Millis), w: WindowAccs, out: &mut Vec<SnapshotDelta>) {
        let interval = self.cfg.intervals[k.0 as usize];
        for ((dimension, key), acc) in w.accs {
            if acc.is_zero() {
                continue;
            }
            out.push(SnapshotDelta {
                interval,
                start: k.1,
                end: w.end,
                dimension,
                key: self.syms.name(key).to_owned(),
                acc,
            });
        }
    }

    /// Release contacts and duplicate-detection memory that no acceptable event can
    /// reach any more (older than watermark − correction horizon). Runs at most hourly.
    fn expire(&mut self, wm: Millis) {
        if wm.saturating_sub(self.last_expiry) < 3_600_000 {
            return;
        }
        self.last_expiry = wm;
        let horizon = wm.saturating_sub(self.cfg.correction_horizon_ms);
        let dead: Vec<Box<str>> = self
            .contacts
            .iter()
            .filter(|(_, c)| c.last_ts < horizon)
            .map(|(k, _)| k.clone())
            .collect();
        for id in dead {
            if let Some(c) = self.contacts.remove(&id)
                && let Some(k) = c.customer
                && let Some(list) = self.customers.get_mut(&k)
            {
                list.retain(|x| *x != id);
                if list.is_empty() {
                    self.customers.remove(&k);
                }
            }
        }
        let hour = horizon.div_euclid(3_600_000);
        while let Some(e) = self.seen_by_hour.first_entry() {
            if *e.key() >= hour {
                break;
            }
            for id in e.remove() {
                self.seen.remove(&id);
            }
        }
    }

    /// Rolling window of the last `minutes` minutes of event time, per dimension key.
    pub fn rolling(&self, minutes: u32) -> Vec<(Dimension, String, Acc)> {
        let Some(now) = self.max_ts else {
            return Vec::new();
        };
        let from = now.div_euclid(MINUTE) * MINUTE - (i64::from(minutes) - 1) * MINUTE;
        let mut merged: HashMap<DimKey, Acc> = HashMap::default();
        for (_, bucket) in self.minutes.range(from..) {
            for (dk, acc) in bucket {
                merged.entry(*dk).or_default().merge(acc);
            }
        }
        self.named(merged)
    }

    /// Totals since the process started, per dimension key (Prometheus counters).
    pub fn totals(&self) -> Vec<(Dimension, String, Acc)> {
        self.named(self.totals.iter().map(|(k, v)| (*k, v.clone())).collect())
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

/// Which intervals get per-fact updates and which are merged from the finest at flush.
/// Merging is exact only when every interval is a whole number of finest intervals on
/// the same local grid, i.e. the finest size divides every other size.
fn plan_intervals(intervals: &[Interval]) -> (Vec<u8>, Vec<u8>) {
    let minutes = |iv: &Interval| match iv {
        Interval::Minutes(m) => *m,
        Interval::Day => 1440,
    };
    let Some((finest, fm)) = intervals
        .iter()
        .enumerate()
        .map(|(i, iv)| (i, minutes(iv)))
        .min_by_key(|x| x.1)
    else {
        return (Vec::new(), Vec::new());
    };
    if intervals.iter().all(|iv| minutes(iv) % fm == 0) {
        let derived = (0..intervals.len())
            .filter(|&i| i != finest)
            .map(|i| i as u8)
            .collect();
        (vec![finest as u8], derived)
    } else {
        ((0..intervals.len()).map(|i| i as u8).collect(), Vec::new())
    }
}

#[cfg(test)]
mod tests;
