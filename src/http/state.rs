//! Shared state between the engine task (the only writer) and the HTTP handlers.
//!
//! The engine publishes a complete, immutable [`LiveSnapshot`] about once a second.
//! Publishing swaps an `Arc` inside a [`tokio::sync::watch`] channel: the lock is held
//! only for the pointer swap, never while a snapshot is built or rendered, so a slow
//! scrape cannot stall the engine and the engine cannot stall a scrape. Handlers clone
//! the `Arc` and work on a consistent view (all figures from the same instant).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::Registry;
use tokio::sync::watch;

use crate::config::{Config, SlFormula};
use crate::engine::acc::Acc;
use crate::engine::{Dimension, Engine, Stats};
use crate::event::Millis;

use super::metrics::SnapshotCollector;

/// Histogram bucket bounds (seconds) offered for every latency histogram, before the
/// configured service-level threshold and short-abandon bound are merged in.
pub const DEFAULT_BUCKETS_S: [u64; 16] = [
    1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600,
];

/// One rolling window's rows: `(dimension, key, accumulator)` sorted by dimension, key.
pub type Rows = Vec<(Dimension, String, Acc)>;

/// Everything the HTTP surface shows, captured by the engine task at one instant.
#[derive(Clone, Debug, Default)]
pub struct LiveSnapshot {
    pub stats: Stats,
    /// Event-time watermark, UTC ms.
    pub watermark: Option<Millis>,
    /// The engine clock (latest event time), UTC ms.
    pub clock: Option<Millis>,
    pub open_contacts: usize,
    /// Cumulative since process start, per dimension key ([`Engine::totals`]).
    pub totals: Rows,
    /// `(minutes, rows)` from [`Engine::rolling`] for each configured rolling window.
    pub rolling: Vec<(u32, Rows)>,
    /// Snapshot flushes to the store since start.
    pub flushes: u64,
    /// Wall-clock time of the last successful flush, UTC ms.
    pub last_flush_ms: Option<Millis>,
    /// Per consumed partition (Kafka source only): offsets, lag, ownership.
    pub partitions: Vec<PartitionStatus>,
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
    /// The partition's event-time watermark, UTC ms.
    pub watermark: Option<Millis>,
}

impl LiveSnapshot {
    /// Capture the engine's live view: totals plus every configured rolling window.
    /// Flush accounting lives outside the engine, so the caller passes it in.
    pub fn capture(engine: &Engine, flushes: u64, last_flush_ms: Option<Millis>) -> LiveSnapshot {
        LiveSnapshot {
            stats: engine.stats().clone(),
            watermark: engine.watermark(),
            clock: engine.clock(),
            open_contacts: engine.open_contacts(),
            totals: engine.totals(),
            rolling: engine
                .config()
                .rolling_minutes
                .iter()
                .map(|&m| (m, engine.rolling(m)))
                .collect(),
            flushes,
            last_flush_ms,
            partitions: Vec::new(),
        }
    }

    /// One view over several engines (one per consumed partition): counts and rows
    /// add up (rows of the same dimension key merge), the watermark is the lowest
    /// (what every partition has passed), the clock the highest.
    pub fn merge(parts: Vec<LiveSnapshot>) -> LiveSnapshot {
        let mut out = LiveSnapshot::default();
        let mut totals: BTreeMap<(Dimension, String), Acc> = BTreeMap::new();
        let mut rolling: BTreeMap<u32, BTreeMap<(Dimension, String), Acc>> = BTreeMap::new();
        let add = |into: &mut BTreeMap<(Dimension, String), Acc>, rows: Rows| {
            for (d, k, a) in rows {
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
            out.flushes += p.flushes;
            out.last_flush_ms = out.last_flush_ms.max(p.last_flush_ms);
            add(&mut totals, p.totals);
            for (m, rows) in p.rolling {
                add(rolling.entry(m).or_default(), rows);
            }
            out.partitions.extend(p.partitions);
        }
        let flat = |m: BTreeMap<(Dimension, String), Acc>| -> Rows {
            m.into_iter().map(|((d, k), a)| (d, k, a)).collect()
        };
        out.totals = flat(totals);
        out.rolling = rolling.into_iter().map(|(m, r)| (m, flat(r))).collect();
        out
    }

    /// Rows of the rolling window of `minutes`, if the engine published it.
    pub fn rolling_rows(&self, minutes: u32) -> Option<&Rows> {
        self.rolling
            .iter()
            .find(|(m, _)| *m == minutes)
            .map(|(_, r)| r)
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
    settings: Arc<HttpSettings>,
    registry: Registry,
}

impl AppState {
    /// New state with an empty snapshot, not ready, and the snapshot collector
    /// registered. Fails only if a metric descriptor is invalid (a programming error).
    pub fn new(cfg: &Config) -> Result<AppState, prometheus::Error> {
        AppState::with_settings(HttpSettings::from_config(cfg))
    }

    pub fn with_settings(settings: HttpSettings) -> Result<AppState, prometheus::Error> {
        let settings = Arc::new(settings);
        let (tx, rx) = watch::channel(Arc::new(LiveSnapshot::default()));
        let registry = Registry::new();
        registry.register(Box::new(SnapshotCollector::new(rx, settings.clone())?))?;
        Ok(AppState {
            snapshot: tx,
            ready: AtomicBool::new(false),
            settings,
            registry,
        })
    }

    /// Replace the published snapshot. Cheap: one allocation and a pointer swap; the
    /// previous snapshot is freed when the last handler reading it finishes.
    pub fn publish(&self, snap: LiveSnapshot) {
        self.publish_arc(Arc::new(snap));
    }

    pub fn publish_arc(&self, snap: Arc<LiveSnapshot>) {
        // `send_replace` stores the value even when nobody subscribed.
        self.snapshot.send_replace(snap);
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
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// The registry `/metrics` gathers from; other subsystems may register their own
    /// collectors (metric names must not clash with the `ccmetrics_*` ones here).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
