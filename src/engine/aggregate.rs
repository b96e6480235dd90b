//! Window accumulators: where facts become per-(interval, window, dimension, key)
//! counts, sums and histograms, and where flushed windows become snapshot deltas.
//!
//! Separate from the contact store so the engine can update windows while it holds a
//! contact (and so each concern stays small).

use std::collections::BTreeMap;

use super::acc::Acc;
use super::contact::{Fact, Side};
use super::intern::{Interner, Sym};
use super::window::{Interval, Windower};
use super::{Dimension, HashMap, SnapshotDelta};
use crate::event::Millis;

pub(super) type DimKey = (Dimension, Sym);

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct WindowAccs {
    end: Millis,
    accs: HashMap<DimKey, Acc>,
}

/// One-minute buckets of event time for rolling live views.
pub(super) const MINUTE: i64 = 60_000;

pub(super) struct Aggregator {
    intervals: Vec<Interval>,
    windower: Windower,
    all: Sym,
    /// Accumulators updated per fact: the finest interval when the intervals nest
    /// (the usual 15m / 1h / 1d), every interval otherwise. Keyed by (interval, start).
    windows: HashMap<(u8, Millis), WindowAccs>,
    /// Coarser intervals built at flush time by merging flushed finest windows, which
    /// turns three accumulator updates per fact into one.
    coarse: HashMap<(u8, Millis), WindowAccs>,
    /// Interval indexes updated per fact, and those derived by merging (see `coarse`).
    direct: Vec<u8>,
    derived: Vec<u8>,
    /// Live views (serve): one-minute buckets and totals since start.
    live: bool,
    rolling_span_ms: i64,
    minutes: BTreeMap<Millis, HashMap<DimKey, Acc>>,
    /// One running sum per rolling window: the buckets from its start on, kept up to
    /// date per fact and as the clock moves, so reading a rolling window copies one
    /// map instead of merging up to an hour of minute buckets per key (which made
    /// every live publish cost O(minutes × keys)).
    rolling: Vec<RollingSum>,
    totals: HashMap<DimKey, Acc>,
    /// `EngineConfig::agent_total_hists`.
    agent_total_hists: bool,
}

struct RollingSum {
    minutes: u32,
    /// First minute bucket inside the window at the current clock.
    from: Millis,
    /// Sum of the buckets from `from` on; keys whose sum is zero are removed.
    sum: HashMap<DimKey, Acc>,
}

/// First minute bucket of a `minutes`-minute rolling window ending at `now`.
pub(super) fn rolling_start(now: Millis, minutes: u32) -> Millis {
    now.div_euclid(MINUTE) * MINUTE - (i64::from(minutes) - 1) * MINUTE
}

impl Aggregator {
    pub(super) fn new(
        intervals: Vec<Interval>,
        windower: Windower,
        all: Sym,
        live: bool,
        rolling_minutes: &[u32],
        agent_total_hists: bool,
    ) -> Self {
        let (direct, derived) = plan_intervals(&intervals);
        Aggregator {
            intervals,
            windower,
            all,
            windows: HashMap::default(),
            coarse: HashMap::default(),
            direct,
            derived,
            live,
            rolling_span_ms: i64::from(rolling_minutes.iter().copied().max().unwrap_or(60))
                * MINUTE,
            minutes: BTreeMap::new(),
            rolling: rolling_minutes
                .iter()
                .map(|&minutes| RollingSum {
                    minutes,
                    from: Millis::MIN,
                    sum: HashMap::default(),
                })
                .collect(),
            totals: HashMap::default(),
            agent_total_hists,
        }
    }

    /// Add (`sign` = 1) or retract (−1) a fact. `now` is the engine clock, which decides
    /// whether the fact is still inside the rolling span.
    pub(super) fn apply(&mut self, f: &Fact, sign: i64, now: Option<Millis>) {
        let (dims, n) = self.dims(f);
        let dims = &dims[..n];
        for &i in &self.direct {
            let (start, end) = self.windower.window(self.intervals[i as usize], f.ts);
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
        if !self.live {
            return;
        }
        for dk in dims {
            let acc = self.totals.entry(*dk).or_default();
            if dk.0 == Dimension::Agent && !self.agent_total_hists {
                acc.apply_counts(&f.measure, sign);
            } else {
                acc.apply(&f.measure, sign);
            }
        }
        let minute = f.ts.div_euclid(MINUTE) * MINUTE;
        if now.is_some_and(|now| minute > now - self.rolling_span_ms) {
            let bucket = self.minutes.entry(minute).or_default();
            for dk in dims {
                bucket.entry(*dk).or_default().apply(&f.measure, sign);
            }
            for r in self.rolling.iter_mut().filter(|r| minute >= r.from) {
                for dk in dims {
                    let acc = r.sum.entry(*dk).or_default();
                    acc.apply(&f.measure, sign);
                    if acc.is_zero() {
                        r.sum.remove(dk);
                    }
                }
            }
        }
    }

    /// The dimension keys a fact counts under: queue-side facts under all, channel and
    /// queue; agent-side facts under team and agent.
    pub(super) fn dims(&self, f: &Fact) -> ([DimKey; 5], usize) {
        let mut dims = [(Dimension::All, self.all); 5];
        let mut n = 0;
        if f.side != Side::Agent {
            dims[..3].copy_from_slice(&[
                (Dimension::All, self.all),
                (Dimension::Channel, f.channel),
                (Dimension::Queue, f.queue),
            ]);
            n = 3;
        }
        if let (true, Some(a)) = (f.side != Side::Queue, f.agent) {
            dims[n] = (Dimension::Team, f.team);
            dims[n + 1] = (Dimension::Agent, a);
            n += 2;
        }
        (dims, n)
    }

    /// Drop minute buckets that left the rolling span.
    pub(super) fn trim(&mut self, now: Millis) {
        // Buckets leaving a rolling window come out of its running sum first (before
        // the span's oldest are dropped below).
        for r in &mut self.rolling {
            let from = rolling_start(now, r.minutes);
            if from <= r.from {
                continue;
            }
            for (_, bucket) in self.minutes.range(r.from..from) {
                for (dk, acc) in bucket {
                    if let Some(s) = r.sum.get_mut(dk) {
                        s.unmerge(acc);
                        if s.is_zero() {
                            r.sum.remove(dk);
                        }
                    }
                }
            }
            r.from = from;
        }
        let keep_from = now - self.rolling_span_ms;
        while let Some(e) = self.minutes.first_entry() {
            if *e.key() + MINUTE > keep_from {
                break;
            }
            e.remove();
        }
    }

    /// Take the windows whose end is `ready`, as deltas sorted by key.
    pub(super) fn take(
        &mut self,
        ready: impl Fn(Millis) -> bool,
        syms: &Interner,
    ) -> Vec<SnapshotDelta> {
        let finest: Vec<_> = self.windows.extract_if(|_, w| ready(w.end)).collect();
        for (k, w) in &finest {
            // A finished finest window feeds the coarser intervals containing it: still
            // open ones grow, already flushed ones get a correction delta.
            for &c in &self.derived {
                let (start, end) = self.windower.window(self.intervals[c as usize], k.1);
                let cw = self.coarse.entry((c, start)).or_insert_with(|| WindowAccs {
                    end,
                    accs: HashMap::default(),
                });
                for (dk, acc) in &w.accs {
                    cw.accs.entry(*dk).or_default().merge(acc);
                }
            }
        }
        let coarse: Vec<_> = self.coarse.extract_if(|_, w| ready(w.end)).collect();
        // Sized exactly: grown by doubling, the vector of an hour's boundary (tens of
        // thousands of deltas of ~350 bytes) was up to half empty, and copied at
        // every growth.
        let rows = finest
            .iter()
            .chain(&coarse)
            .map(|(_, w)| w.accs.len())
            .sum();
        let mut out = Vec::with_capacity(rows);
        for (k, w) in finest.into_iter().chain(coarse) {
            self.emit(k, w, syms, &mut out);
        }
        // Unstable (in place, no scratch copy of the deltas) gives the stable order:
        // no two deltas of one take share (interval, start, dimension, key).
        out.sort_unstable_by(|a, b| {
            (a.interval, a.start, a.dimension, &a.key).cmp(&(
                b.interval,
                b.start,
                b.dimension,
                &b.key,
            ))
        });
        out
    }

    fn emit(&self, k: (u8, Millis), w: WindowAccs, syms: &Interner, out: &mut Vec<SnapshotDelta>) {
        let interval = self.intervals[k.0 as usize];
        for ((dimension, key), acc) in w.accs {
            if acc.is_zero() {
                continue;
            }
            out.push(SnapshotDelta {
                interval,
                start: k.1,
                end: w.end,
                dimension,
                key: syms.name(key).to_owned(),
                acc,
            });
        }
    }

    /// Merged minute buckets from `from` (inclusive) on.
    /// The `minutes`-minute rolling window at clock `now`: its running sum when it is
    /// a configured window, else merged from the minute buckets.
    /// Only the keys of dimensions `keep` accepts are read (and copied).
    pub(super) fn rolling(
        &self,
        now: Millis,
        minutes: u32,
        keep: impl Fn(Dimension) -> bool,
    ) -> HashMap<DimKey, Acc> {
        let from = rolling_start(now, minutes);
        match self
            .rolling
            .iter()
            .find(|r| r.minutes == minutes && r.from == from)
        {
            Some(r) => r
                .sum
                .iter()
                .filter(|((d, _), _)| keep(*d))
                .map(|(k, a)| (*k, a.clone()))
                .collect(),
            None => {
                let mut m = self.rolling_from(from);
                m.retain(|(d, _), a| keep(*d) && !a.is_zero());
                m
            }
        }
    }

    /// Recompute the running sums from the minute buckets (after a restore: they are
    /// derived state and not checkpointed).
    pub(super) fn rebuild_rolling(&mut self, now: Option<Millis>) {
        for i in 0..self.rolling.len() {
            let minutes = self.rolling[i].minutes;
            let from = now.map_or(Millis::MIN, |n| rolling_start(n, minutes));
            let mut sum = self.rolling_from(from);
            sum.retain(|_, a| !a.is_zero());
            self.rolling[i].from = from;
            self.rolling[i].sum = sum;
        }
    }

    pub(super) fn rolling_from(&self, from: Millis) -> HashMap<DimKey, Acc> {
        let mut merged: HashMap<DimKey, Acc> = HashMap::default();
        for (_, bucket) in self.minutes.range(from..) {
            for (dk, acc) in bucket {
                merged.entry(*dk).or_default().merge(acc);
            }
        }
        merged
    }

    pub(super) fn totals(&self) -> &HashMap<DimKey, Acc> {
        &self.totals
    }

    /// Move the accumulated (non-config) state out, for a checkpoint; put it back
    /// with [`Aggregator::put_state`].
    pub(super) fn take_state(&mut self) -> AggState {
        AggState {
            windows: std::mem::take(&mut self.windows),
            coarse: std::mem::take(&mut self.coarse),
            minutes: std::mem::take(&mut self.minutes),
            totals: std::mem::take(&mut self.totals),
        }
    }

    pub(super) fn put_state(&mut self, s: AggState) {
        self.windows = s.windows;
        self.coarse = s.coarse;
        self.minutes = s.minutes;
        self.totals = s.totals;
    }
}

/// The accumulators of an [`Aggregator`]: what a checkpoint must carry. Interval
/// indexes refer to the configured interval list, which the checkpoint records.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(super) struct AggState {
    windows: HashMap<(u8, Millis), WindowAccs>,
    coarse: HashMap<(u8, Millis), WindowAccs>,
    minutes: BTreeMap<Millis, HashMap<DimKey, Acc>>,
    totals: HashMap<DimKey, Acc>,
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
