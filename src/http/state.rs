//! Shared state between the engine task (the only writer) and the HTTP handlers.
//!
//! The engine publishes a complete, immutable [`LiveSnapshot`] about once a second.
//! Publishing swaps an `Arc` inside a [`tokio::sync::watch`] channel: the lock is held
//! only for the pointer swap, never while a snapshot is built or rendered, so a slow
//! scrape cannot stall the engine and the engine cannot stall a scrape. Handlers clone
//! the `Arc` and work on a consistent view (all figures from the same instant).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use prometheus::Registry;
use tokio::sync::watch;

use crate::config::{Config, SlFormula};
use crate::engine::acc::Acc;
use crate::engine::{Dimension, Engine, FloorView, Scope, Stats};
use crate::event::Millis;

use super::exposition::{AgentBlock, BlockCache};
use super::metrics::SnapshotNames;

/// Histogram bucket bounds (seconds) offered for every latency histogram, before the
/// configured service-level threshold and short-abandon bound are merged in.
pub const DEFAULT_BUCKETS_S: [u64; 16] = [
    1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600,
];

/// One rolling window's rows: `(dimension, key, accumulator)` sorted by dimension, key.
pub type Rows = Vec<Row>;

pub use crate::engine::{Row, SplitRows};

/// Everything the HTTP surface shows, captured by the engine task at one instant.
#[derive(Clone, Debug, Default)]
pub struct LiveSnapshot {
    pub stats: Stats,
    /// Event-time watermark, UTC ms.
    pub watermark: Option<Millis>,
    /// The engine clock (latest event time), UTC ms.
    pub clock: Option<Millis>,
    pub open_contacts: usize,
    /// Contacts in the engine's spill (`engine::spill`).
    pub spilled_contacts: usize,
    /// Cumulative since process start, per dimension key ([`Engine::totals`]).
    pub totals: SplitRows,
    /// `(minutes, rows)` from [`Engine::rolling`] for each configured rolling window.
    pub rolling: Vec<(u32, SplitRows)>,
    /// Snapshot flushes to the store since start.
    pub flushes: u64,
    /// Wall-clock time of the last successful flush, UTC ms.
    pub last_flush_ms: Option<Millis>,
    /// Per consumed partition (Kafka source only): offsets, lag, ownership.
    pub partitions: Vec<PartitionStatus>,
    /// The live floor (waiting contacts, agents, today) as of `now_ms`.
    pub floor: FloorView,
    /// The "now" ages and times in state are measured against, UTC ms.
    pub now_ms: Millis,
    /// Identifies the agent part (team and agent rows): a new number for every capture
    /// of it, kept by [`LiveSnapshot::splice_agents_from`]; 0 when unknown. `/metrics`
    /// renders an agent part's text once per number (`exposition::AgentBlock`), so
    /// code that changes team or agent rows after a capture must set a new one
    /// ([`next_agent_part`]).
    pub agent_part: u64,
}

static AGENT_PARTS: AtomicU64 = AtomicU64::new(1);

/// A new [`LiveSnapshot::agent_part`] number, larger than every earlier one.
pub fn next_agent_part() -> u64 {
    AGENT_PARTS.fetch_add(1, Ordering::Relaxed)
}

/// How often the publishers capture the agent part of the view (team and agent rows,
/// the agents on the floor: tens of thousands of keys on a large floor); the centre,
/// channels and queues (what alerts read) are captured on every publication and the
/// agent part of the last full capture is spliced in. Capturing and merging 60 000
/// agents over six partitions takes a few hundred milliseconds, which on every publish
/// kept event → /metrics latency above a second.
pub const AGENTS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Input this far behind the wall clock is history (a back-fill through `serve`):
/// live ages are then measured against the engine clock instead of the wall clock.
const HISTORY_MS: Millis = 3_600_000;

/// "Now" for live ages: the wall clock while the input is live, the engine clock
/// when the input is history, so a replay through `serve` shows the floor as it was.
pub fn reference_now(clock: Option<Millis>, wall: Millis) -> Millis {
    match clock {
        Some(c) if c < wall - HISTORY_MS => c,
        Some(c) => c.max(wall),
        None => wall,
    }
}

/// One assigned Kafka partition, as `/api/v1/status` shows it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PartitionStatus {
    /// Snapshot partition name, `kafka:TOPIC:N`.
    pub partition: String,
    /// Next offset to process (`null` before the first message of a new partition).
    pub next_offset: Option<i64>,
    /// Next offset as of the last store commit (what a restart resumes from).
    pub committed_offset: Option<i64>,
    /// The partition's log end, from the client's statistics (`null` until known).
    pub high_watermark: Option<i64>,
    /// `high_watermark - next_offset`.
    pub lag: Option<i64>,
    /// Ownership epoch in the store.
    pub epoch: i64,
    /// Deltas waiting for the store (non-zero while it is unavailable).
    pub unwritten: usize,
    /// Dead letters the broker has not acknowledged yet: the partition does not
    /// commit until it has (docs/reliability.md).
    pub dead_letters_pending: usize,
    /// The partition's event-time watermark, UTC ms.
    pub watermark: Option<Millis>,
}

impl LiveSnapshot {
    /// Capture the engine's live view: totals plus every configured rolling window.
    /// Flush accounting lives outside the engine, so the caller passes it in.
    pub fn capture(engine: &Engine, flushes: u64, last_flush_ms: Option<Millis>) -> LiveSnapshot {
        LiveSnapshot::capture_of(engine, flushes, last_flush_ms, Scope::All)
    }

    /// [`LiveSnapshot::capture`] of one [`Scope`]: with [`Scope::Centre`] no team or
    /// agent rows and no agents (see [`LiveSnapshot::splice_agents_from`]).
    pub fn capture_of(
        engine: &Engine,
        flushes: u64,
        last_flush_ms: Option<Millis>,
        scope: Scope,
    ) -> LiveSnapshot {
        let now_ms = reference_now(engine.clock(), jiff::Timestamp::now().as_millisecond());
        LiveSnapshot {
            floor: engine.floor_of(now_ms, scope),
            now_ms,
            stats: engine.stats().clone(),
            watermark: engine.watermark(),
            clock: engine.clock(),
            open_contacts: engine.open_contacts(),
            spilled_contacts: engine.contacts_spilled(),
            totals: engine.totals_of(scope).into(),
            rolling: engine
                .config()
                .rolling_minutes
                .iter()
                .map(|&m| (m, engine.rolling_of(m, scope).into()))
                .collect(),
            flushes,
            last_flush_ms,
            partitions: Vec::new(),
            agent_part: match scope {
                Scope::All => next_agent_part(),
                Scope::Centre => 0,
            },
        }
    }

    /// One view over several engines (one per consumed partition): counts and rows
    /// add up (rows of the same dimension key merge), the watermark is the lowest
    /// (what every partition has passed), the clock the highest.
    pub fn merge(parts: Vec<LiveSnapshot>) -> LiveSnapshot {
        let mut out = LiveSnapshot::default();
        if parts.iter().any(|p| p.agent_part != 0) {
            out.agent_part = next_agent_part();
        }
        let mut totals: BTreeMap<(Dimension, String), Acc> = BTreeMap::new();
        let mut rolling: BTreeMap<u32, BTreeMap<(Dimension, String), Acc>> = BTreeMap::new();
        let add = |into: &mut BTreeMap<(Dimension, String), Acc>, rows: SplitRows| {
            for (d, k, a) in rows.into_rows() {
                into.entry((d, k)).or_default().merge(&a);
            }
        };
        for p in parts {
            out.stats.merge(&p.stats);
            out.watermark = match (out.watermark, p.watermark) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            out.clock = out.clock.max(p.clock);
            out.open_contacts += p.open_contacts;
            out.spilled_contacts += p.spilled_contacts;
            out.flushes += p.flushes;
            out.last_flush_ms = out.last_flush_ms.max(p.last_flush_ms);
            add(&mut totals, p.totals);
            for (m, rows) in p.rolling {
                add(rolling.entry(m).or_default(), rows);
            }
            out.partitions.extend(p.partitions);
            out.now_ms = out.now_ms.max(p.now_ms);
            merge_floor(&mut out.floor, p.floor);
        }
        let flat = |m: BTreeMap<(Dimension, String), Acc>| -> SplitRows {
            m.into_iter()
                .map(|((d, k), a)| (d, k, a))
                .collect::<Rows>()
                .into()
        };
        out.totals = flat(totals);
        out.rolling = rolling.into_iter().map(|(m, r)| (m, flat(r))).collect();
        out
    }

    /// Complete a [`Scope::Centre`] snapshot with the agent part (team and agent rows,
    /// the agents on the floor) of `full`, an earlier [`Scope::All`] one. Rows stay
    /// sorted: team and agent sort after the centre's dimensions.
    ///
    /// The team and agent rows are shared with `full` ([`SplitRows`]), not copied.
    pub fn splice_agents_from(&mut self, full: &LiveSnapshot) {
        self.totals.share_agents_of(&full.totals);
        for (m, rows) in &mut self.rolling {
            if let Some((_, f)) = full.rolling.iter().find(|(fm, _)| fm == m) {
                rows.share_agents_of(f);
            }
        }
        self.agent_part = full.agent_part;
        self.floor.agents = Arc::clone(&full.floor.agents);
        if self.floor.day_start == full.floor.day_start {
            self.floor.today.share_agents_of(&full.floor.today);
        }
    }

    /// Waiting contacts per queue name, the centre included as `all`.
    pub fn waiting(&self) -> Vec<(String, usize, Millis)> {
        let mut all: Option<(usize, Millis)> = None;
        let mut out = Vec::new();
        for w in &self.floor.waiting {
            out.push((w.queue.clone(), w.waiting, w.oldest_since));
            let a = all.get_or_insert((0, w.oldest_since));
            a.0 += w.waiting;
            a.1 = a.1.min(w.oldest_since);
        }
        if let Some((n, oldest)) = all {
            out.insert(0, (crate::engine::ALL_KEY.to_owned(), n, oldest));
        }
        out
    }

    /// Rows of the rolling window of `minutes`, if the engine published it.
    pub fn rolling_rows(&self, minutes: u32) -> Option<&SplitRows> {
        self.rolling
            .iter()
            .find(|(m, _)| *m == minutes)
            .map(|(_, r)| r)
    }
}

/// Several partitions' floors as one: waiting contacts add per queue (oldest is the
/// earliest), agents are listed once (the newest state wins: an agent's states are
/// keyed to one partition, so this only matters after a re-keying), today adds up.
fn merge_floor(into: &mut FloorView, p: FloorView) {
    use std::collections::btree_map::Entry;
    let mut waiting: BTreeMap<String, (usize, Millis)> = std::mem::take(&mut into.waiting)
        .into_iter()
        .map(|w| (w.queue, (w.waiting, w.oldest_since)))
        .collect();
    for w in p.waiting {
        let e = waiting.entry(w.queue).or_insert((0, w.oldest_since));
        e.0 += w.waiting;
        e.1 = e.1.min(w.oldest_since);
    }
    into.waiting = waiting
        .into_iter()
        .map(
            |(queue, (waiting, oldest_since))| crate::engine::QueueWaiting {
                queue,
                waiting,
                oldest_since,
            },
        )
        .collect();
    let mut agents: BTreeMap<String, crate::engine::AgentView> =
        Arc::unwrap_or_clone(std::mem::take(&mut into.agents))
            .into_iter()
            .map(|a| (a.agent.clone(), a))
            .collect();
    for a in Arc::unwrap_or_clone(p.agents) {
        match agents.entry(a.agent.clone()) {
            Entry::Vacant(v) => {
                v.insert(a);
            }
            Entry::Occupied(mut o) if o.get().since < a.since => {
                o.insert(a);
            }
            Entry::Occupied(_) => {}
        }
    }
    into.agents = Arc::new(agents.into_values().collect());
    into.interval_start = into.interval_start.max(p.interval_start);
    // Partitions may straddle midnight for a moment: keep the later day only.
    if p.day_start > into.day_start {
        into.day_start = p.day_start;
        into.today = p.today;
        into.trend = p.trend;
    } else if p.day_start == into.day_start {
        let mut today: BTreeMap<(Dimension, String), Acc> = std::mem::take(&mut into.today)
            .into_rows()
            .map(|(d, k, a)| ((d, k), a))
            .collect();
        for (d, k, a) in p.today.into_rows() {
            today.entry((d, k)).or_default().merge(&a);
        }
        into.today = today
            .into_iter()
            .map(|((d, k), a)| (d, k, a))
            .collect::<Rows>()
            .into();
        let mut trend: BTreeMap<(Millis, Dimension, String), Acc> = std::mem::take(&mut into.trend)
            .into_iter()
            .map(|(t, d, k, a)| ((t, d, k), a))
            .collect();
        for (t, d, k, a) in p.trend {
            trend.entry((t, d, k)).or_default().merge(&a);
        }
        into.trend = trend
            .into_iter()
            .map(|((t, d, k), a)| (t, d, k, a))
            .collect();
    }
}

/// A configured rolling window and its canonical label (`5m`, `15m`, `1h`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollingWindow {
    pub minutes: u32,
    pub label: String,
}

impl RollingWindow {
    pub fn new(minutes: u32) -> RollingWindow {
        // Whole hours read better as `1h` (the config's own spelling) than `60m`.
        let label = if minutes.is_multiple_of(60) {
            format!("{}h", minutes / 60)
        } else {
            format!("{minutes}m")
        };
        RollingWindow { minutes, label }
    }
}

/// The parts of [`Config`] the HTTP surface needs, resolved once at startup.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub sl_formula: SlFormula,
    pub rolling: Vec<RollingWindow>,
    /// Histogram upper bounds in ms, sorted and deduplicated (`+Inf` is implicit).
    pub bucket_bounds_ms: Vec<u64>,
    pub per_agent_series: bool,
    pub max_agent_series: usize,
    /// Histogram buckets on agent rows (else only `+Inf`, `_sum` and `_count`).
    pub per_agent_buckets: bool,
    pub targets: crate::config::TargetsConfig,
    /// Bearer token for the JSON API and the wallboard; empty = open.
    pub token: String,
    /// Length of the finest configured interval (the wallboard's "current" window).
    pub finest_interval_ms: i64,
}

impl HttpSettings {
    pub fn from_config(c: &Config) -> HttpSettings {
        let mut bounds: Vec<u64> = DEFAULT_BUCKETS_S.iter().map(|s| s * 1000).collect();
        // The SLA and short-abandon bounds must be bucket edges, or
        // `histogram_quantile`/bucket ratios could not answer "within threshold?".
        for d in [c.metrics.service_level_threshold, c.metrics.short_abandon] {
            bounds.push(u64::try_from(d.ms()).unwrap_or(u64::MAX));
        }
        bounds.sort_unstable();
        bounds.dedup();
        HttpSettings {
            sl_formula: c.metrics.service_level_formula,
            // Same conversion as `EngineConfig::from_config`, so windows line up with
            // what the engine publishes.
            rolling: c
                .windows
                .rolling
                .iter()
                .map(|d| RollingWindow::new((d.0.as_secs() / 60) as u32))
                .collect(),
            bucket_bounds_ms: bounds,
            per_agent_series: c.http.per_agent_series,
            max_agent_series: c.http.max_agent_series,
            per_agent_buckets: c.http.per_agent_buckets,
            targets: c.targets.clone(),
            token: c.http.token.clone(),
            finest_interval_ms: c
                .windows
                .intervals
                .iter()
                .map(|i| i.nominal_ms())
                .min()
                .unwrap_or(900_000),
        }
    }

    /// Resolve a `window` query value (`15m`, `900s`, `1h`, …) to a configured window.
    pub fn find_window(&self, s: &str) -> Result<&RollingWindow, String> {
        let known = || {
            self.rolling
                .iter()
                .map(|w| w.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            format!(
                "bad window {s:?} ({e}); configured rolling windows: {}",
                known()
            )
        })?;
        let secs = d.as_secs();
        self.rolling
            .iter()
            .find(|w| d.subsec_nanos() == 0 && secs == u64::from(w.minutes) * 60)
            .ok_or_else(|| {
                format!(
                    "window {s:?} is not configured; configured rolling windows: {}",
                    known()
                )
            })
    }
}

/// State shared by the engine task and the HTTP handlers.
pub struct AppState {
    snapshot: watch::Sender<Arc<LiveSnapshot>>,
    ready: AtomicBool,
    ready_gauge: prometheus::IntGauge,
    /// Replaced as a whole on a config reload (SIGHUP); readers take the current one.
    settings: watch::Sender<Arc<HttpSettings>>,
    registry: Registry,
    /// The rendered agent part of `/metrics`.
    blocks: Arc<BlockCache>,
    /// Since when (UTC ms) the source has reached no input (the Kafka source: no
    /// broker connection); 0 while it does. Set by the source, shown by the floor.
    input_down_since: AtomicI64,
}

impl AppState {
    /// New state with an empty snapshot, not ready, and the snapshot collector
    /// registered. Fails only if a metric descriptor is invalid (a programming error).
    pub fn new(cfg: &Config) -> Result<AppState, prometheus::Error> {
        AppState::with_settings(HttpSettings::from_config(cfg))
    }

    pub fn with_settings(settings: HttpSettings) -> Result<AppState, prometheus::Error> {
        let (settings, _) = watch::channel(Arc::new(settings));
        let (tx, _) = watch::channel(Arc::new(LiveSnapshot::default()));
        let registry = Registry::new();
        registry.register(Box::new(SnapshotNames::new()?))?;
        let ready_gauge = prometheus::IntGauge::new(
            "ccmetrics_ready",
            "1 when /readyz answers 200 (store open; Kafka: partitions assigned and restored), else 0.",
        )?;
        registry.register(Box::new(ready_gauge.clone()))?;
        Ok(AppState {
            snapshot: tx,
            ready: AtomicBool::new(false),
            ready_gauge,
            settings,
            registry,
            blocks: Arc::default(),
            input_down_since: AtomicI64::new(0),
        })
    }

    /// Replace the published snapshot. Cheap: one allocation and a pointer swap; the
    /// previous snapshot is freed when the last handler reading it finishes.
    pub fn publish(&self, snap: LiveSnapshot) {
        self.publish_arc(Arc::new(snap));
    }

    pub fn publish_arc(&self, snap: Arc<LiveSnapshot>) {
        self.blocks.published(&snap, self.settings());
        // `send_replace` stores the value even when nobody subscribed.
        self.snapshot.send_replace(snap);
    }

    /// The rendered agent part of `/metrics` for `snap` under `settings` (kept
    /// between scrapes of the same agent part).
    pub fn agent_block(
        &self,
        snap: &LiveSnapshot,
        settings: &Arc<HttpSettings>,
    ) -> Arc<AgentBlock> {
        self.blocks.get(snap, settings)
    }

    /// Whether the rendered agent part of `snap` (under the current settings) is kept.
    #[cfg(test)]
    pub(super) fn agent_block_kept(&self, snap: &LiveSnapshot) -> bool {
        self.blocks.cached(snap, &self.settings()).is_some()
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<LiveSnapshot> {
        // Clone the Arc and release the read lock at once.
        self.snapshot.borrow().clone()
    }

    /// A receiver that is notified on every publish (e.g. for a streaming endpoint).
    pub fn subscribe(&self) -> watch::Receiver<Arc<LiveSnapshot>> {
        self.snapshot.subscribe()
    }

    /// Mark the daemon ready (store open, first snapshot published) or draining.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.ready_gauge.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Say that the source reaches no input since `since_ms` (`None`: it does again).
    /// A change wakes the floor's streams, so a wallboard shows it at once even though
    /// no figure changed (nothing arrives to change one).
    pub fn set_input_down(&self, since_ms: Option<i64>) {
        let v = since_ms.unwrap_or(0);
        if self.input_down_since.swap(v, Ordering::AcqRel) != v {
            self.snapshot.send_modify(|_| {});
        }
    }

    /// Since when the source has reached no input, if it does not.
    pub fn input_down_since(&self) -> Option<i64> {
        match self.input_down_since.load(Ordering::Acquire) {
            0 => None,
            v => Some(v),
        }
    }

    /// The current settings (a reload replaces them; a request keeps the ones it
    /// started with).
    pub fn settings(&self) -> Arc<HttpSettings> {
        self.settings.borrow().clone()
    }

    /// Replace the settings (config reload). The histogram bucket bounds must not
    /// change: Prometheus cannot compare buckets across a change of `le` bounds, so
    /// the caller keeps the thresholds that define them (they need a restart).
    pub fn set_settings(&self, settings: HttpSettings) {
        self.settings.send_replace(Arc::new(settings));
    }

    /// The registry `/metrics` gathers from; other subsystems may register their own
    /// collectors (metric names must not clash with the `ccmetrics_*` ones here).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
