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
    /// Per dimension, the interval indexes updated per fact and those derived by
    /// merging (see `coarse`).
    plan: Plan,
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
    /// `kept[d]`: bit `i` set when dimension `d` (`Dimension as usize`) keeps
    /// `intervals[i]` (`[windows.dimensions]`; every bit by default).
    pub(super) fn new(
        intervals: Vec<Interval>,
        kept: [u32; 5],
        windower: Windower,
        all: Sym,
        live: bool,
        rolling_minutes: &[u32],
        agent_total_hists: bool,
    ) -> Self {
        let plan = Plan::new(&intervals, kept);
        Aggregator {
            intervals,
            windower,
            all,
            windows: HashMap::default(),
            coarse: HashMap::default(),
            plan,
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
        apply_direct(
            &mut self.windows,
            &mut self.windower,
            &self.intervals,
            &self.plan,
            dims,
            f,
            sign,
        );
        self.apply_live_to(dims, f, sign, now);
    }

    /// The live views' part of [`Aggregator::apply`] alone: what stays on the engine's
    /// thread while the windows are lent to a [`Helper`].
    pub(super) fn apply_live(&mut self, f: &Fact, sign: i64, now: Option<Millis>) {
        if self.live {
            let (dims, n) = self.dims(f);
            self.apply_live_to(&dims[..n], f, sign, now);
        }
    }

    /// The live part for the fact's dimension keys `dims` ([`Aggregator::dims`]).
    fn apply_live_to(&mut self, dims: &[DimKey], f: &Fact, sign: i64, now: Option<Millis>) {
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
        dims_of(self.all, f)
    }

    /// Lend the windows updated per fact to a helper thread, which applies the facts
    /// given to the [`Helper`] in the order given, while the caller goes on deriving
    /// (the windows are then empty here: nothing may read them, or apply to them but
    /// through the helper, until [`Aggregator::give_back`]). `None` when no thread
    /// could be started; the caller applies as usual.
    pub(super) fn lend(&mut self) -> Option<Helper> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(Fact, i64)>>(HELPER_QUEUE);
        let (spare_tx, spare_rx) = std::sync::mpsc::channel();
        // The windows go over only once the thread runs: a failed spawn would drop
        // its closure, and whatever the closure owned, with it.
        let (lent_tx, lent_rx) = std::sync::mpsc::sync_channel::<Lent>(1);
        // Accumulators of windows the facts open are allocated in the engine thread's
        // arena, as inline (`alloc::thread_arena`).
        let arena = crate::alloc::thread_arena();
        let spawned = std::thread::Builder::new()
            .name("settle".into())
            .spawn(move || {
                crate::alloc::use_arena(arena);
                let mut lent = lent_rx.recv().ok()?;
                for mut batch in rx {
                    for (f, sign) in &batch {
                        lent.apply(f, *sign);
                    }
                    batch.clear();
                    // The engine may be done with its batches already: then dropped.
                    let _ = spare_tx.send(batch);
                }
                Some(lent)
            });
        let worker = match spawned {
            Ok(worker) => worker,
            Err(e) => {
                tracing::debug!(error = %e, "no thread to apply facts on; applied inline");
                return None;
            }
        };
        let lent = Lent {
            windows: std::mem::take(&mut self.windows),
            windower: self.windower.clone(),
            intervals: self.intervals.clone(),
            plan: self.plan.clone(),
            all: self.all,
        };
        if let Err(back) = lent_tx.send(lent) {
            // The thread ended before taking them (it cannot, but the windows must
            // never be lost): keep them here and apply inline.
            self.windows = back.0.windows;
            let _ = worker.join();
            return None;
        }
        Some(Helper {
            batch: Vec::with_capacity(HELPER_BATCH),
            tx: Some(tx),
            spare: spare_rx,
            worker: Some(worker),
        })
    }

    /// Take the windows back from `helper` once it has applied every fact given to it.
    /// A panic on the helper's thread (a bug, as it would be inline) is resumed here.
    pub(super) fn give_back(&mut self, mut helper: Helper) {
        helper.send();
        // Closing the queue ends the thread's loop.
        helper.tx = None;
        let Some(worker) = helper.worker.take() else {
            return;
        };
        match worker.join() {
            Ok(Some(lent)) => {
                // Nothing applies to the windows meanwhile; were anything to, it is
                // added to the windows coming back rather than lost (accumulators add).
                let early = std::mem::replace(&mut self.windows, lent.windows);
                debug_assert!(early.is_empty(), "windows applied to while lent");
                merge_windows(&mut self.windows, early);
            }
            Ok(None) => unreachable!("the windows are sent before the helper is returned"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Drop minute buckets that left the rolling span.
    pub(super) fn trim(&mut self, now: Millis) {
        // Without live views there are no buckets or running sums (`apply_live_to`
        // fills them only when live), and this runs at every event that moves the
        // clock: returning here saves walking the empty structures each time.
        if !self.live {
            return;
        }
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
        take_windows(
            finest,
            &mut self.coarse,
            &Layout {
                intervals: &self.intervals,
                plan: &self.plan,
            },
            &mut self.windower,
            ready,
            syms,
        )
    }

    /// Accumulators in the windows updated per fact that end by `until`: the size of
    /// what [`Aggregator::take`] of them would merge and emit.
    pub(super) fn ready_accs(&self, until: Millis) -> usize {
        self.windows
            .values()
            .filter(|w| w.end <= until)
            .map(|w| w.accs.len())
            .sum()
    }

    /// [`Aggregator::take`] of the windows ending by `until`, handed out as a job that
    /// can run on another thread: the windows updated per fact that end by then, and
    /// every coarser window (they are fed from those). Until [`Aggregator::take_back`]
    /// nothing may take, apply to, or read the windows here.
    pub(super) fn lend_take(&mut self, until: Millis) -> TakeJob {
        TakeJob {
            finest: self.windows.extract_if(|_, w| w.end <= until).collect(),
            coarse: std::mem::take(&mut self.coarse),
            intervals: self.intervals.clone(),
            plan: self.plan.clone(),
            windower: self.windower.clone(),
            until,
        }
    }

    /// The coarser windows back from a [`TakeJob`] that has run.
    pub(super) fn take_back(&mut self, job: TakeJob) {
        debug_assert!(job.finest.is_empty(), "a take job given back before it ran");
        // Nothing feeds coarser windows meanwhile; were anything to, it is added to the
        // windows coming back rather than lost (accumulators add).
        let early = std::mem::replace(&mut self.coarse, job.coarse);
        debug_assert!(early.is_empty(), "coarser windows fed while lent");
        merge_windows(&mut self.coarse, early);
    }

    /// Every window, as [`Aggregator::take`] with every window ready takes them, handed
    /// out in parts of whole windows of at least `rows` deltas each (the last part may
    /// be smaller), each part sorted by key: the caller writes one part while the next
    /// is built. The finest windows come first, earliest first, each fed to its coarser
    /// windows as it goes; then the coarser windows, complete by then.
    pub(super) fn take_all_in_parts<'a>(
        &'a mut self,
        syms: &'a Interner,
        rows: usize,
    ) -> TakeParts<'a> {
        let finest = latest_first(self.windows.drain());
        TakeParts {
            agg: self,
            syms,
            rows: rows.max(1),
            finest,
            coarse: None,
        }
    }

    /// [`feed_coarse`] of this aggregator's coarser windows.
    fn feed_coarse(&mut self, k: (u8, Millis), w: &WindowAccs) {
        let layout = Layout {
            intervals: &self.intervals,
            plan: &self.plan,
        };
        feed_coarse(&mut self.coarse, &layout, &mut self.windower, k, w);
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

/// Facts handed to a [`Helper`]'s thread at a time, and batches queued to it at most.
/// A batch is ~230 KB of facts; the queue lets the deriving thread run ahead of the
/// applying one by a few batches, no more.
const HELPER_BATCH: usize = 4096;
const HELPER_QUEUE: usize = 4;

/// The windows updated per fact with what applying a fact to them needs, owned by a
/// helper's thread while lent ([`Aggregator::lend`]).
struct Lent {
    windows: HashMap<(u8, Millis), WindowAccs>,
    windower: Windower,
    intervals: Vec<Interval>,
    plan: Plan,
    all: Sym,
}

impl Lent {
    fn apply(&mut self, f: &Fact, sign: i64) {
        let (dims, n) = dims_of(self.all, f);
        apply_direct(
            &mut self.windows,
            &mut self.windower,
            &self.intervals,
            &self.plan,
            &dims[..n],
            f,
            sign,
        );
    }
}

/// Applies facts to lent windows on a second thread, in the order given: each
/// accumulator sees the same additions and retractions in the same order as inline,
/// so the windows come back exactly as inline application would have left them.
pub(super) struct Helper {
    batch: Vec<(Fact, i64)>,
    /// `None` once closed ([`Aggregator::give_back`]).
    tx: Option<std::sync::mpsc::SyncSender<Vec<(Fact, i64)>>>,
    /// Emptied batches coming back, to be filled again.
    spare: std::sync::mpsc::Receiver<Vec<(Fact, i64)>>,
    worker: Option<std::thread::JoinHandle<Option<Lent>>>,
}

impl Helper {
    /// Add (`sign` = 1) or retract (−1) a fact, as [`Aggregator::apply`] does to the
    /// windows (the live part is the caller's: [`Aggregator::apply_live`]).
    pub(super) fn apply(&mut self, f: &Fact, sign: i64) {
        self.batch.push((*f, sign));
        if self.batch.len() >= HELPER_BATCH {
            self.send();
        }
    }

    fn send(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(HELPER_BATCH));
        let full = std::mem::replace(&mut self.batch, next);
        if let Some(tx) = &self.tx {
            // Fails only when the thread has ended, i.e. panicked: `give_back`'s join
            // resumes that panic, so nothing is lost silently.
            let _ = tx.send(full);
        }
    }
}

/// A window of accumulators with its key, `(interval index, start)`.
type Window = ((u8, Millis), WindowAccs);

/// [`Aggregator::take_all_in_parts`]'s parts, one per `next`.
pub(super) struct TakeParts<'a> {
    agg: &'a mut Aggregator,
    syms: &'a Interner,
    rows: usize,
    /// The finest windows still to hand out, the next one last.
    finest: Vec<Window>,
    /// The coarser windows still to hand out, the next one last: taken once every
    /// finest window has fed them.
    coarse: Option<Vec<Window>>,
}

impl Iterator for TakeParts<'_> {
    type Item = Vec<SnapshotDelta>;

    fn next(&mut self) -> Option<Vec<SnapshotDelta>> {
        // The part's windows, then their deltas in key order; `n` counts the deltas
        // they will give, as the rows emitted so far did before.
        let (mut part, mut n) = (Vec::new(), 0);
        while n < self.rows {
            let (k, w) = match self.finest.pop() {
                Some((k, w)) => {
                    self.agg.feed_coarse(k, &w);
                    (k, w)
                }
                None => {
                    let coarse = self
                        .coarse
                        .get_or_insert_with(|| latest_first(self.agg.coarse.drain()));
                    match coarse.pop() {
                        Some(window) => window,
                        None => break,
                    }
                }
            };
            n += w.accs.values().filter(|acc| !acc.is_zero()).count();
            part.push((k, w));
        }
        let mut out = Vec::with_capacity(n);
        emit_in_order(&self.agg.intervals, &mut part, self.syms, &mut out);
        if out.is_empty() {
            return None;
        }
        Some(out)
    }
}

/// Windows to be popped from the end: earliest first, and the same order in every run.
fn latest_first(windows: impl Iterator<Item = Window>) -> Vec<Window> {
    let mut v: Vec<_> = windows.collect();
    v.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
    v
}

/// What taking windows reads of an aggregator besides the windows.
struct Layout<'a> {
    intervals: &'a [Interval],
    plan: &'a Plan,
}

/// [`Aggregator::take`]'s work once the ready windows updated per fact are out:
/// feed them to the coarser windows (`coarse`), take the coarser windows that are
/// `ready` too, and emit them all as deltas in key order. One body for the inline
/// take and a [`TakeJob`].
fn take_windows(
    finest: Vec<Window>,
    coarse: &mut HashMap<(u8, Millis), WindowAccs>,
    layout: &Layout<'_>,
    windower: &mut Windower,
    ready: impl Fn(Millis) -> bool,
    syms: &Interner,
) -> Vec<SnapshotDelta> {
    for (k, w) in &finest {
        feed_coarse(coarse, layout, windower, *k, w);
    }
    let ready_coarse: Vec<_> = coarse.extract_if(|_, w| ready(w.end)).collect();
    // Sized exactly: grown by doubling, the vector of an hour's boundary (tens of
    // thousands of deltas of ~350 bytes) was up to half empty, and copied at
    // every growth.
    let rows = finest
        .iter()
        .chain(&ready_coarse)
        .map(|(_, w)| w.accs.len())
        .sum();
    let mut out = Vec::with_capacity(rows);
    let mut windows: Vec<Window> = finest.into_iter().chain(ready_coarse).collect();
    emit_in_order(layout.intervals, &mut windows, syms, &mut out);
    out
}

/// A finished finest window feeds the coarser intervals containing it: still open
/// ones grow, already flushed ones get a correction delta.
fn feed_coarse(
    coarse: &mut HashMap<(u8, Millis), WindowAccs>,
    layout: &Layout<'_>,
    windower: &mut Windower,
    k: (u8, Millis),
    w: &WindowAccs,
) {
    let plan = layout.plan;
    // Each dimension feeds the coarser intervals it keeps (a window holds only the
    // dimensions updated per fact at its interval, whose finest it is).
    for &c in &plan.derived_any {
        let bit = 1u32 << c;
        let feeds = |dk: &DimKey| plan.derived[dk.0 as usize] & bit != 0;
        if !w.accs.keys().any(feeds) {
            continue;
        }
        let (start, end) = windower.window(layout.intervals[c as usize], k.1);
        let cw = coarse.entry((c, start)).or_insert_with(|| WindowAccs {
            end,
            accs: HashMap::default(),
        });
        for (dk, acc) in w.accs.iter().filter(|(dk, _)| feeds(dk)) {
            cw.accs.entry(*dk).or_default().merge(acc);
        }
    }
}

/// Emit `windows` (emptied) as deltas in key order: (interval, start, dimension,
/// key name), the order the snapshots table is keyed in.
///
/// The windows are ordered first, and then the keys of each run of windows with
/// one (interval, start) (one, or two when a dimension keeps an interval that is
/// updated per fact and another dimension derives it: `windows` and `coarse` each
/// hold one) by (dimension, key name). That gives the full order. Sorting the
/// finished deltas instead (as before) moved ~350-byte values at every swap and
/// compared the windows' fields at every step: at an hour's boundary, tens of
/// thousands of deltas (docs/performance.md, "thirty-seventh round").
fn emit_in_order(
    intervals: &[Interval],
    windows: &mut Vec<Window>,
    syms: &Interner,
    out: &mut Vec<SnapshotDelta>,
) {
    let at = |k: &(u8, Millis)| (intervals[k.0 as usize], k.1);
    windows.sort_unstable_by_key(|(k, _)| at(k));
    for group in windows.chunk_by_mut(|a, b| at(&a.0) == at(&b.0)) {
        emit(intervals, group, syms, out);
    }
    windows.clear();
}

/// Emit the non-zero accumulators of `group`, windows of one (interval, start),
/// as deltas ordered by (dimension, key name); the windows are left empty.
fn emit(
    intervals: &[Interval],
    group: &mut [Window],
    syms: &Interner,
    out: &mut Vec<SnapshotDelta>,
) {
    let Some(&((i, start), WindowAccs { end, .. })) = group.first() else {
        return;
    };
    let interval = intervals[i as usize];
    let order = key_order(group, syms);
    out.reserve(order.len());
    for (dimension, key, n) in order {
        if let Some(acc) = group[n as usize].1.accs.remove(&(dimension, key)) {
            out.push(SnapshotDelta {
                interval,
                start,
                end,
                dimension,
                key: syms.name(key).to_owned(),
                acc,
            });
        }
    }
}

/// A key of a window group and the index of its window in the group.
type KeyAt = (Dimension, Sym, u32);

/// The non-zero accumulators of `group` (windows of one (interval, start)) as
/// (dimension, key, window), ordered by (dimension, key name).
fn key_order(group: &[Window], syms: &Interner) -> Vec<KeyAt> {
    // A group holds one or two windows.
    let keys = || {
        group.iter().enumerate().flat_map(|(n, (_, w))| {
            w.accs
                .iter()
                .filter(|(_, acc)| !acc.is_zero())
                .map(move |(&(dimension, key), _)| (dimension, key, n as u32))
        })
    };
    // By the names' places in the interner's order ([`Interner::order_names`]): one
    // integer per key, (dimension, place), sorted as such. Unstable is exact: no two
    // keys of one (interval, start) share (dimension, name).
    let ranked: Option<Vec<(u64, KeyAt)>> = keys()
        .map(|k| {
            let place = syms.name_rank(k.1)?;
            Some(((k.0 as u64) << 32 | u64::from(place), k))
        })
        .collect();
    if let Some(mut ranked) = ranked {
        ranked.sort_unstable_by_key(|r| r.0);
        return ranked.into_iter().map(|r| r.1).collect();
    }
    // A name interned since the order was last brought up to date: by the names.
    let mut named: Vec<(Dimension, u128, &str, KeyAt)> = keys()
        .map(|k| {
            let name = syms.name(k.1);
            (k.0, name_prefix(name), name, k)
        })
        .collect();
    named.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| a.2.cmp(b.2)));
    named.into_iter().map(|r| r.3).collect()
}

/// [`Aggregator::lend_take`]'s job: a flush's take, owned, so that it runs on a second
/// thread while the engine's thread does the flush's other work (expiry, packing),
/// none of which reads or changes a window. The same [`take_windows`] as inline, on
/// the same windows: the same deltas in the same order.
pub(super) struct TakeJob {
    finest: Vec<Window>,
    coarse: HashMap<(u8, Millis), WindowAccs>,
    intervals: Vec<Interval>,
    plan: Plan,
    windower: Windower,
    until: Millis,
}

impl TakeJob {
    /// The deltas of the lent windows (the job keeps the coarser windows still open,
    /// for [`Aggregator::take_back`]).
    pub(super) fn run(&mut self, syms: &Interner) -> Vec<SnapshotDelta> {
        let until = self.until;
        take_windows(
            std::mem::take(&mut self.finest),
            &mut self.coarse,
            &Layout {
                intervals: &self.intervals,
                plan: &self.plan,
            },
            &mut self.windower,
            |end| end <= until,
            syms,
        )
    }
}

/// A name's first 16 bytes as a big-endian integer, zero-padded: ordering by it and
/// then by the whole name is the names' byte order. Where two prefixes differ, the
/// first differing byte decides as in the names, or the shorter name (padded with
/// zero) is a prefix of the other and comes first either way. Sorting a window's
/// keys by this compares integers instead of calling `memcmp` at almost every step
/// (most names, `agent-01234`, fit in 16 bytes).
fn name_prefix(name: &str) -> u128 {
    let mut b = [0u8; 16];
    let n = name.len().min(16);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    u128::from_be_bytes(b)
}

/// Add every accumulator of `from` to `into`'s.
fn merge_windows(
    into: &mut HashMap<(u8, Millis), WindowAccs>,
    from: HashMap<(u8, Millis), WindowAccs>,
) {
    for (k, w) in from {
        let iw = into.entry(k).or_insert_with(|| WindowAccs {
            end: w.end,
            accs: HashMap::default(),
        });
        for (dk, acc) in &w.accs {
            iw.accs.entry(*dk).or_default().merge(acc);
        }
    }
}

/// [`Aggregator::apply`]'s per-fact windows: the direct intervals' window holding
/// the fact, under each of its dimension keys `dims` ([`Aggregator::dims`]) that is
/// updated per fact at that interval.
fn apply_direct(
    windows: &mut HashMap<(u8, Millis), WindowAccs>,
    windower: &mut Windower,
    intervals: &[Interval],
    plan: &Plan,
    dims: &[DimKey],
    f: &Fact,
    sign: i64,
) {
    let wanted = dims.iter().fold(0, |m, dk| m | plan.direct[dk.0 as usize]);
    for &i in &plan.direct_any {
        let bit = 1u32 << i;
        if wanted & bit == 0 {
            continue;
        }
        let (start, end) = windower.window(intervals[i as usize], f.ts);
        let w = windows.entry((i, start)).or_insert_with(|| WindowAccs {
            end,
            accs: HashMap::default(),
        });
        for dk in dims
            .iter()
            .filter(|dk| plan.direct[dk.0 as usize] & bit != 0)
        {
            w.accs.entry(*dk).or_default().apply(&f.measure, sign);
        }
    }
}

/// See [`Aggregator::dims`].
fn dims_of(all: Sym, f: &Fact) -> ([DimKey; 5], usize) {
    let mut dims = [(Dimension::All, all); 5];
    let mut n = 0;
    if f.side != Side::Agent {
        dims[..3].copy_from_slice(&[
            (Dimension::All, all),
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

/// The accumulators of an [`Aggregator`]: what a checkpoint must carry. Interval
/// indexes refer to the configured interval list, which the checkpoint records.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(super) struct AggState {
    windows: HashMap<(u8, Millis), WindowAccs>,
    coarse: HashMap<(u8, Millis), WindowAccs>,
    minutes: BTreeMap<Millis, HashMap<DimKey, Acc>>,
    totals: HashMap<DimKey, Acc>,
}

impl AggState {
    /// What a restored checkpoint's windows must hold to, or why they do not: every
    /// window names one of the `intervals` configured intervals by its index (flushing
    /// looks the index up), and every accumulator is [`Acc::plausible`].
    pub(super) fn check(&self, intervals: usize) -> Result<(), &'static str> {
        let windows = || self.windows.iter().chain(&self.coarse);
        if !windows().all(|((i, _), _)| usize::from(*i) < intervals) {
            return Err("a window names an interval past the configured ones");
        }
        let mut accs = windows()
            .flat_map(|(_, w)| w.accs.values())
            .chain(self.minutes.values().flat_map(HashMap::values))
            .chain(self.totals.values());
        if !accs.all(Acc::plausible) {
            return Err("an accumulator holds a count or sum past 2^62");
        }
        Ok(())
    }
}

#[cfg(test)]
impl AggState {
    /// Renumbers one window's interval to `interval`: for tests of a damaged checkpoint.
    pub(super) fn renumber_a_window(&mut self, interval: u8) -> bool {
        let Some(key) = self.windows.keys().next().copied() else {
            return false;
        };
        let w = self.windows.remove(&key).unwrap_or_default();
        self.windows.insert((interval, key.1), w);
        true
    }

    /// One accumulator of a window, if any: for tests of a damaged checkpoint.
    pub(super) fn an_acc_mut(&mut self) -> Option<&mut Acc> {
        self.windows
            .values_mut()
            .find_map(|w| w.accs.values_mut().next())
    }
}

/// Which intervals each dimension keeps, and how: as bit sets over the interval
/// indexes, per dimension (`Dimension as usize`).
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    /// Updated per fact.
    direct: [u32; 5],
    /// Merged at flush from the dimension's finest interval (its only direct one).
    derived: [u32; 5],
    /// The interval indexes some dimension updates per fact / derives, ascending.
    direct_any: Vec<u8>,
    derived_any: Vec<u8>,
}

impl Plan {
    fn new(intervals: &[Interval], kept: [u32; 5]) -> Plan {
        let (mut direct, mut derived) = ([0; 5], [0; 5]);
        for d in 0..5 {
            (direct[d], derived[d]) = plan_intervals(intervals, kept[d]);
        }
        let any = |sets: &[u32; 5]| {
            let union = sets.iter().fold(0, |m, s| m | s);
            (0..intervals.len() as u8)
                .filter(|i| union & (1 << i) != 0)
                .collect()
        };
        Plan {
            direct_any: any(&direct),
            derived_any: any(&derived),
            direct,
            derived,
        }
    }
}

/// Of the intervals in `kept` (bit `i`: `intervals[i]`), which get per-fact updates
/// and which are merged from the finest at flush, as bit sets. Merging is exact only
/// when every interval is a whole number of finest intervals on the same local grid,
/// i.e. the finest size divides every other size.
fn plan_intervals(intervals: &[Interval], kept: u32) -> (u32, u32) {
    let minutes = |iv: &Interval| match iv {
        Interval::Minutes(m) => *m,
        Interval::Day => 1440,
    };
    let kept_ivs = || {
        intervals
            .iter()
            .enumerate()
            .filter(move |(i, _)| kept & (1 << i) != 0)
    };
    let Some((finest, fm)) = kept_ivs()
        .map(|(i, iv)| (i, minutes(iv)))
        .min_by_key(|x| x.1)
    else {
        return (0, 0);
    };
    if kept_ivs().all(|(_, iv)| minutes(iv) % fm == 0) {
        (1 << finest, kept & !(1 << finest))
    } else {
        (kept, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::acc::Measure;

    fn queue_fact(syms: &mut Interner, ts: Millis, wait_ms: u64) -> Fact {
        Fact {
            ts,
            side: Side::Queue,
            measure: Measure::QueueOutcome {
                answered: true,
                wait_ms,
                short: false,
                within: true,
            },
            queue: syms.intern("q"),
            channel: syms.intern("voice"),
            agent: None,
            team: syms.intern("t"),
        }
    }

    fn aggregator(syms: &mut Interner) -> Aggregator {
        let all = syms.intern("all");
        Aggregator::new(
            vec![Interval::Minutes(15), Interval::Day],
            [u32::MAX; 5],
            Windower::new(jiff::tz::TimeZone::UTC),
            all,
            false,
            &[],
            false,
        )
    }

    /// A window's deltas come out in (dimension, key name) order whether the
    /// interner's name order is up to date (keys sorted by their places) or not
    /// (sorted by their names): the same deltas in the same order.
    #[test]
    fn deltas_are_in_name_order_with_or_without_places() {
        let mut syms = Interner::default();
        let mut agg = aggregator(&mut syms);
        let mut facts = Vec::new();
        // Names sharing 16-byte and longer prefixes, and a name that is a prefix of
        // another, in an order that is not the names' order.
        let names = [
            "queue-b",
            "queue-a",
            "a-very-long-shared-prefix-2",
            "a-very-long-shared-prefix-10",
            "a-very-long-shared-prefix-1",
            "a-very-long-shared-prefix-",
            "Z",
            "é",
        ];
        for (i, q) in names.iter().enumerate() {
            let mut f = queue_fact(&mut syms, i as i64 * 60_000, 1_000);
            f.queue = syms.intern(q);
            f.channel = syms.intern(names[names.len() - 1 - i]);
            facts.push(f);
        }
        let mut ordered = syms.clone();
        ordered.order_names();
        let mut twin = aggregator(&mut ordered);
        for f in &facts {
            agg.apply(f, 1, None);
            twin.apply(f, 1, None);
        }
        let by_names = agg.take(|_| true, &syms);
        let by_places = twin.take(|_| true, &ordered);
        assert_eq!(by_names, by_places);
        let keys: Vec<_> = by_places
            .iter()
            .map(|d| (d.interval, d.start, d.dimension, d.key.clone()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 2 * (1 + 2 * names.len()));
    }

    /// The windows come back from a helper with every fact it was given, as inline
    /// application leaves them.
    #[test]
    fn lent_windows_come_back_whole() {
        let mut syms = Interner::default();
        let mut agg = aggregator(&mut syms);
        let mut inline = aggregator(&mut syms);
        let mut helper = agg.lend().expect("a thread");
        for i in 0..10_000 {
            let f = queue_fact(&mut syms, i * 1_000, 5_000 + i as u64);
            helper.apply(&f, 1);
            inline.apply(&f, 1, None);
        }
        agg.give_back(helper);
        let taken = agg.take(|_| true, &syms);
        assert_eq!(taken, inline.take(|_| true, &syms));
        let day: i64 = taken
            .iter()
            .filter(|d| d.interval == Interval::Day && d.dimension == Dimension::Queue)
            .map(|d| d.acc.answered)
            .sum();
        assert_eq!(day, 10_000);
    }

    /// A take lent to another thread gives the deltas the inline take gives, flush
    /// after flush: the coarser windows it carries come back open, so a later flush
    /// adds to them (first deltas) or corrects them (a late fact in a flushed hour).
    #[test]
    fn a_lent_take_takes_what_take_takes() {
        let mut syms = Interner::default();
        let mut lent = aggregator(&mut syms);
        let mut inline = aggregator(&mut syms);
        let mut flushes = 0;
        for i in 0..20_000i64 {
            // Mostly in order, a tenth an hour late: corrections of flushed windows.
            let ts = if i % 10 == 9 {
                i * 1_000 - 3_600_000
            } else {
                i * 1_000
            };
            let f = queue_fact(&mut syms, ts.max(0), 5_000 + i as u64);
            lent.apply(&f, 1, None);
            inline.apply(&f, 1, None);
            if i % 997 == 996 {
                let until = i * 1_000 - 600_000;
                let mut job = lent.lend_take(until);
                let syms = &syms;
                let taken = std::thread::scope(|s| {
                    s.spawn(|| job.run(syms)).join().expect("the take thread")
                });
                lent.take_back(job);
                let expected = inline.take(|end| end <= until, syms);
                assert_eq!(taken, expected, "flush at event {i}");
                flushes += usize::from(!expected.is_empty());
            }
        }
        assert!(flushes > 10, "{flushes} flushes gave deltas");
        assert_eq!(lent.take(|_| true, &syms), inline.take(|_| true, &syms));
        let left = lent.ready_accs(Millis::MAX) + inline.ready_accs(Millis::MAX);
        assert_eq!(left, 0, "every window taken");
    }

    /// What `give_back` does with windows applied to while lent (a misuse the engine
    /// avoids, and debug builds assert against): added, not lost.
    #[test]
    fn merged_windows_add_up() {
        let mut syms = Interner::default();
        let mut a = aggregator(&mut syms);
        let mut b = aggregator(&mut syms);
        let mut both = aggregator(&mut syms);
        for i in 0..100 {
            let f = queue_fact(&mut syms, i * 60_000, 1_000);
            match i % 3 {
                0 => a.apply(&f, 1, None),
                _ => b.apply(&f, 1, None),
            }
            both.apply(&f, 1, None);
        }
        merge_windows(&mut a.windows, std::mem::take(&mut b.windows));
        assert_eq!(a.take(|_| true, &syms), both.take(|_| true, &syms));
    }
}
