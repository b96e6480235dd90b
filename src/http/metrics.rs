//! `/metrics`: the Prometheus metric families of the published [`LiveSnapshot`], and
//! their definitions. Built at scrape time by [`super::exposition::render_chunks`] from one
//! snapshot; nothing is kept between scrapes, so the families always agree. The naming and label scheme is
//! documented in the `http` module docs.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::config::SlFormula;
use crate::engine::Dimension;
use crate::engine::acc::Acc;
use crate::engine::hist::Hist;
use crate::engine::limits::KeyDim;
use crate::event::{FIXED_SCALE, RejectReason};

#[cfg(test)]
use super::state::RollingWindow;
use super::state::{HttpSettings, LiveSnapshot, SplitRows};

/// Key of the series that sums the agents beyond `max_agent_series`.
pub const OVERFLOW_KEY: &str = "__overflow__";

/// Label names a per-dimension series can carry: `dimension` plus one named after it.
const DIM_LABELS: [&str; 5] = ["dimension", "channel", "queue", "team", "agent"];

pub(super) struct CounterDef {
    pub name: &'static str,
    pub help: &'static str,
    pub value: fn(&Acc) -> f64,
}

pub(super) struct HistDef {
    pub name: &'static str,
    pub help: &'static str,
    pub hist: fn(&Acc) -> &Hist,
    pub sum_ms: fn(&Acc) -> i64,
    /// Observations, from the counter recorded with each one: `_count` and the `+Inf`
    /// bucket come from it, so they are right where the histogram's bins are not kept
    /// (an agent's totals without `per_agent_buckets`).
    pub count: fn(&Acc) -> i64,
}

pub(super) struct GaugeDef {
    pub name: &'static str,
    pub help: &'static str,
    pub value: fn(&Acc, SlFormula) -> Option<f64>,
}

/// Per-dimension cumulative counters, from `Engine::totals`.
pub(super) static COUNTERS: [CounterDef; 13] = [
    CounterDef {
        name: "ccmetrics_contacts_offered_total",
        help: "Contacts offered (queue dimensions) or presented (team/agent), since start.",
        value: |a| a.offered as f64,
    },
    CounterDef {
        name: "ccmetrics_contacts_answered_total",
        help: "Contacts answered, since start.",
        value: |a| a.answered as f64,
    },
    CounterDef {
        name: "ccmetrics_contacts_abandoned_total",
        help: "Contacts abandoned, since start.",
        value: |a| a.abandoned as f64,
    },
    CounterDef {
        name: "ccmetrics_contacts_short_abandoned_total",
        help: "Contacts abandoned within the short-abandon bound, since start.",
        value: |a| a.short_abandoned as f64,
    },
    CounterDef {
        name: "ccmetrics_contacts_answered_within_sl_total",
        help: "Contacts answered within the service-level threshold, since start.",
        value: |a| a.answered_within as f64,
    },
    CounterDef {
        name: "ccmetrics_contacts_abandoned_within_sl_total",
        help: "Contacts abandoned within the service-level threshold, since start.",
        value: |a| a.abandoned_within as f64,
    },
    CounterDef {
        name: "ccmetrics_handled_total",
        help: "Completed handling segments (talk + hold + wrap), since start.",
        value: |a| a.handled as f64,
    },
    CounterDef {
        name: "ccmetrics_resolved_total",
        help: "Contacts resolved, since start.",
        value: |a| a.resolved as f64,
    },
    CounterDef {
        name: "ccmetrics_fcr_total",
        help: "Contacts resolved on first contact, since start.",
        value: |a| a.fcr as f64,
    },
    CounterDef {
        name: "ccmetrics_csat_responses_total",
        help: "CSAT survey responses, since start.",
        value: |a| a.csat_responses as f64,
    },
    CounterDef {
        name: "ccmetrics_csat_positive_total",
        help: "Positive CSAT responses (score >= positive_min), since start.",
        value: |a| a.csat_positive as f64,
    },
    CounterDef {
        name: "ccmetrics_converted_total",
        help: "Contacts with at least one conversion, since start.",
        value: |a| a.converted as f64,
    },
    CounterDef {
        name: "ccmetrics_revenue_total",
        help: "Revenue of conversions in currency units, since start.",
        value: |a| a.revenue as f64 / FIXED_SCALE as f64,
    },
];

/// Per-dimension latency histograms, from `Engine::totals`.
pub(super) static HISTOGRAMS: [HistDef; 3] = [
    HistDef {
        name: "ccmetrics_wait_seconds",
        help: "Queue wait of answered contacts, since start (HDR bins, <=1% bucket-edge error).",
        hist: |a| &a.wait_hist,
        sum_ms: |a| a.wait_sum_ms,
        count: |a| a.wait_count,
    },
    HistDef {
        name: "ccmetrics_handle_seconds",
        help: "Handle time (talk + hold + wrap) per segment, since start (HDR bins, <=1% bucket-edge error).",
        hist: |a| &a.handle_hist,
        sum_ms: |a| a.handle_sum_ms,
        count: |a| a.handled,
    },
    HistDef {
        name: "ccmetrics_first_response_seconds",
        help: "First response time from offer, since start (HDR bins, <=1% bucket-edge error).",
        hist: |a| &a.frt_hist,
        sum_ms: |a| a.frt_sum_ms,
        count: |a| a.frt_count,
    },
];

/// Rolling-window gauges. The formulas are `kpi::kpis`' (a test holds them equal);
/// they are restated here because `kpis` also computes percentiles, which cost an
/// HDR allocation per histogram and are not exported here.
pub(super) static ROLLING: [GaugeDef; 6] = [
    GaugeDef {
        name: "ccmetrics_rolling_offered",
        help: "Contacts offered (or presented) in the rolling window.",
        value: |a, _| Some(a.offered as f64),
    },
    GaugeDef {
        name: "ccmetrics_rolling_answer_rate",
        help: "Answered / offered in the rolling window (absent when nothing was offered).",
        value: |a, _| crate::kpi::answer_rate(a),
    },
    GaugeDef {
        name: "ccmetrics_rolling_abandon_rate",
        help: "Abandoned / offered in the rolling window (absent when nothing was offered).",
        value: |a, _| crate::kpi::abandon_rate(a),
    },
    GaugeDef {
        name: "ccmetrics_rolling_service_level",
        help: "Service level by the configured formula in the rolling window (absent when its denominator is 0).",
        value: |a, f| crate::kpi::service_level(a, f),
    },
    GaugeDef {
        name: "ccmetrics_rolling_asa_seconds",
        help: "Average speed of answer in the rolling window (absent when nothing was answered).",
        value: |a, _| crate::kpi::asa_s(a),
    },
    GaugeDef {
        name: "ccmetrics_rolling_aht_seconds",
        help: "Average handle time in the rolling window (absent when nothing was handled).",
        value: |a, _| crate::kpi::aht_s(a),
    },
];

/// `(name, help, type, variable labels)` of the families not defined by the tables.
const GLOBAL: [(&str, &str, MetricType, &[&str]); 14] = [
    (
        "ccmetrics_events_read_total",
        "Input messages read.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "ccmetrics_events_accepted_total",
        "Events accepted (applied).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "ccmetrics_events_duplicate_total",
        "Events dropped as duplicates of an event_id.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "ccmetrics_events_rejected_total",
        "Input messages rejected, by reason.",
        MetricType::COUNTER,
        &["reason"],
    ),
    (
        "ccmetrics_events_late_applied_total",
        "Accepted events that corrected already-flushed windows.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "ccmetrics_watermark_timestamp_seconds",
        "Event-time watermark (max event time - allowed lateness), Unix seconds.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "ccmetrics_clock_timestamp_seconds",
        "Latest event time seen (engine clock), Unix seconds.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "ccmetrics_open_contacts",
        "Contacts held in engine memory.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "ccmetrics_spilled_contacts",
        "Closed contacts moved out of memory into the store, still within the correction horizon (approximate: counted per day).",
        MetricType::GAUGE,
        &[],
    ),
    (
        "ccmetrics_snapshot_flushes_total",
        "Snapshot flushes to the store.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "ccmetrics_last_flush_timestamp_seconds",
        "Wall-clock time of the last snapshot flush, Unix seconds.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "ccmetrics_agent_series_dropped",
        "Agents folded into agent=\"__overflow__\" by http.max_agent_series (only with per-agent series on).",
        MetricType::GAUGE,
        &[],
    ),
    (
        "ccmetrics_contacts_expired_total",
        "Contacts released at the correction horizon without ever ending or being abandoned.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "ccmetrics_keys_overflowed_total",
        "Events whose agent/team/queue was folded into __overflow__ (or whose customer was not remembered) by the [cardinality] limits, by kind of key.",
        MetricType::COUNTER,
        &["kind"],
    ),
];

/// Registered in [`super::AppState`]'s registry to reserve the snapshot's family
/// names (the registry refuses a second collector with the same name), so no other
/// subsystem can register a clashing `ccmetrics_*` family. It collects nothing: the
/// snapshot's families are written by [`super::exposition::render_chunks`], from one
/// snapshot read once per scrape so every family agrees.
pub struct SnapshotNames {
    descs: Vec<Desc>,
}

impl SnapshotNames {
    pub fn new() -> Result<SnapshotNames, prometheus::Error> {
        let mut descs = Vec::new();
        for (name, help, _, labels) in GLOBAL {
            descs.push(desc(name, help, labels)?);
        }
        for c in &COUNTERS {
            descs.push(desc(c.name, c.help, &DIM_LABELS)?);
        }
        for h in &HISTOGRAMS {
            descs.push(desc(h.name, h.help, &DIM_LABELS)?);
        }
        let rolling_labels: Vec<&str> = std::iter::once("window").chain(DIM_LABELS).collect();
        for g in &ROLLING {
            descs.push(desc(g.name, g.help, &rolling_labels)?);
        }
        for (name, help, _, labels) in super::floor::FAMILIES {
            descs.push(desc(name, help, labels)?);
        }
        Ok(SnapshotNames { descs })
    }
}

impl Collector for SnapshotNames {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        Vec::new()
    }
}

/// A family's descriptor: its name, help and variable label names, no constant labels.
pub(super) fn desc(name: &str, help: &str, labels: &[&str]) -> Result<Desc, prometheus::Error> {
    Desc::new(
        name.into(),
        help.into(),
        labels.iter().map(|l| l.to_string()).collect(),
        HashMap::new(),
    )
}

pub(super) fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

/// `dimension="<dim>"` plus `<dim>="<key>"`, except for the centre-wide row.
#[cfg(test)]
fn dim_labels(dim: Dimension, key: &str) -> Vec<LabelPair> {
    let mut v = vec![label("dimension", dim.as_str())];
    if dim != Dimension::All {
        v.push(label(dim.as_str(), key));
    }
    v
}

fn counter(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

pub(super) fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

/// A Prometheus histogram from a signed HDR [`Hist`]. Counts are clamped to be
/// non-negative and non-decreasing: a transient retraction must not produce a
/// malformed histogram that breaks `histogram_quantile`.
#[cfg(test)]
fn histogram(
    labels: Vec<LabelPair>,
    h: &Hist,
    count: i64,
    sum_ms: i64,
    bounds_ms: &[u64],
) -> Metric {
    let mut prev = 0u64;
    let buckets = bounds_ms
        .iter()
        .map(|&ms| {
            prev = prev.max(u64::try_from(h.count_le(ms)).unwrap_or(0));
            let mut b = prometheus::proto::Bucket::default();
            b.set_upper_bound(ms as f64 / 1000.0);
            b.set_cumulative_count(prev);
            b
        })
        .collect();
    let mut ph = prometheus::proto::Histogram::default();
    ph.set_bucket(buckets);
    // `_count` doubles as the `+Inf` bucket, so it must be >= every finite bucket.
    ph.set_sample_count(prev.max(u64::try_from(count).unwrap_or(0)));
    ph.set_sample_sum(sum_ms as f64 / 1000.0);
    let mut m = Metric::from_label(labels);
    m.set_histogram(ph);
    m
}

pub(super) fn family(name: &str, help: &str, ty: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(ty);
    f.set_metric(metrics);
    f
}

/// The agents allowed series of their own: all of them (the usual case: fewer agents
/// than `max_agent_series`, no set to build or look up), or the first ones by name.
/// foldhash, not SipHash: the set is looked up for every row of every scrape, and its
/// per-process random seed still spreads adversarial agent names.
pub enum KeptAgents<'a> {
    All,
    Only(HashSet<&'a str, foldhash::fast::RandomState>),
}

impl KeptAgents<'_> {
    pub fn contains(&self, agent: &str) -> bool {
        match self {
            KeptAgents::All => true,
            KeptAgents::Only(set) => set.contains(agent),
        }
    }
}

/// Exported rows: `(dimension, key, accumulator)`, borrowed unless folded.
pub(super) type Exported<'a> = Vec<(Dimension, &'a str, Cow<'a, Acc>)>;

/// Rows to export: team/agent rows only with per-agent series on; agents outside
/// `kept` are summed into one [`OVERFLOW_KEY`] row. An agent row that is already
/// `__overflow__` (the engine's own cardinality fold) joins that row, so the key
/// never appears twice.
pub(super) fn exported<'a>(
    rows: &'a SplitRows,
    per_agent: bool,
    kept: &KeptAgents<'_>,
) -> Exported<'a> {
    let mut out = Vec::with_capacity(rows.len());
    let mut overflow: Option<Acc> = None;
    for (dim, key, acc) in rows {
        match dim {
            Dimension::Team | Dimension::Agent if !per_agent => {}
            Dimension::Agent if key == OVERFLOW_KEY || !kept.contains(key.as_str()) => {
                overflow.get_or_insert_default().merge(acc)
            }
            _ => out.push((*dim, key.as_str(), Cow::Borrowed(acc))),
        }
    }
    if let Some(acc) = overflow {
        out.push((Dimension::Agent, OVERFLOW_KEY, Cow::Owned(acc)));
    }
    out
}

/// The agents allowed series of their own, and how many were folded. Deterministic:
/// the first `max_agent_series` agents by name. Chosen from the totals (a superset of
/// every rolling window's agents) so counters and rolling gauges use the same set.
pub fn kept_agents<'a>(snap: &'a LiveSnapshot, s: &HttpSettings) -> (KeptAgents<'a>, usize) {
    let mut agents: Vec<&str> = snap
        .totals
        .iter()
        .filter(|(d, k, _)| *d == Dimension::Agent && k != OVERFLOW_KEY)
        .map(|(_, k, _)| k.as_str())
        .collect();
    if agents.len() <= s.max_agent_series {
        return (KeptAgents::All, 0);
    }
    agents.sort_unstable();
    let kept: HashSet<&str, _> = agents.iter().copied().take(s.max_agent_series).collect();
    let dropped = agents.len() - kept.len();
    (KeptAgents::Only(kept), dropped)
}

/// `totals` plus the configured queues that have no row yet, at zero: they exist from
/// start-up so Prometheus' increase() sees their first contacts (a series born with
/// its value reads as no increase).
pub(super) fn with_zero_queues<'a>(
    mut totals: Exported<'a>,
    snap: &LiveSnapshot,
    s: &'a HttpSettings,
) -> Exported<'a> {
    for q in s.targets.queues.keys() {
        if !snap
            .totals
            .iter()
            .any(|(d, k, _)| *d == Dimension::Queue && k == q)
        {
            totals.push((Dimension::Queue, q.as_str(), Cow::Owned(Acc::default())));
        }
    }
    totals
}

/// The families the registry gathers from one snapshot: the process-wide ones and the
/// floor. The per-dimension counters, histograms and rolling gauges (nearly all the
/// samples) are written by [`super::exposition`]. Families without series are left
/// out by the registry (the text format cannot express an empty family). `kept` and
/// `dropped` are [`kept_agents`]' answer, computed once per scrape for every family.
pub fn families(
    snap: &LiveSnapshot,
    s: &HttpSettings,
    kept: &KeptAgents<'_>,
    dropped: usize,
) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let st = &snap.stats;
    let secs = |ms: i64| ms as f64 / 1000.0;
    let single = |v: Option<f64>| v.map(|v| gauge(vec![], v)).into_iter().collect::<Vec<_>>();
    let dropped = dropped as f64;
    // In `GLOBAL` order.
    let globals: [Vec<Metric>; 14] = [
        vec![counter(vec![], st.read as f64)],
        vec![counter(vec![], st.accepted as f64)],
        vec![counter(vec![], st.duplicates as f64)],
        // Every reason is always present, so `rate()` works from the first reject.
        RejectReason::ALL
            .iter()
            .map(|r| {
                counter(
                    vec![label("reason", r.as_str())],
                    st.rejected.get(r).copied().unwrap_or(0) as f64,
                )
            })
            .collect(),
        vec![counter(vec![], st.late_applied as f64)],
        single(snap.watermark.map(secs)),
        single(snap.clock.map(secs)),
        vec![gauge(vec![], snap.open_contacts as f64)],
        vec![gauge(vec![], snap.spilled_contacts as f64)],
        vec![counter(vec![], snap.flushes as f64)],
        single(snap.last_flush_ms.map(secs)),
        single(s.per_agent_series.then_some(dropped)),
        vec![counter(vec![], st.expired as f64)],
        // Every dimension always present, like the reject reasons.
        KeyDim::ALL
            .iter()
            .map(|d| {
                counter(
                    // `kind`, not `dimension`: on every other family `dimension`
                    // selects snapshot series, and `agent` / `team` ones are opt-in.
                    vec![label("kind", d.as_str())],
                    st.overflowed.get(d).copied().unwrap_or(0) as f64,
                )
            })
            .collect(),
    ];
    for (metrics, (name, help, ty, _)) in globals.into_iter().zip(GLOBAL) {
        out.push(family(name, help, ty, metrics));
    }

    out.extend(super::floor::families(snap, s, kept));
    out
}

/// The per-dimension families as `prometheus` structures: what
/// [`super::exposition`] writes directly. Kept as the tests' reference for it.
#[cfg(test)]
pub(super) fn dimension_families(snap: &LiveSnapshot, s: &HttpSettings) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let (kept, _) = kept_agents(snap, s);
    let totals = with_zero_queues(exported(&snap.totals, s.per_agent_series, &kept), snap, s);
    for c in &COUNTERS {
        let ms = totals
            .iter()
            .map(|(d, k, a)| counter(dim_labels(*d, k), (c.value)(a)))
            .collect();
        out.push(family(c.name, c.help, MetricType::COUNTER, ms));
    }
    for h in &HISTOGRAMS {
        let ms = totals
            .iter()
            .map(|(d, k, a)| {
                histogram(
                    dim_labels(*d, k),
                    (h.hist)(a),
                    (h.count)(a),
                    (h.sum_ms)(a),
                    super::exposition::bucket_bounds(s, *d),
                )
            })
            .collect();
        out.push(family(h.name, h.help, MetricType::HISTOGRAM, ms));
    }

    let rolling: Vec<(&RollingWindow, Exported<'_>)> = s
        .rolling
        .iter()
        .filter_map(|w| {
            snap.rolling_rows(w.minutes)
                .map(|rows| (w, exported(rows, s.per_agent_series, &kept)))
        })
        .collect();
    for g in &ROLLING {
        let mut ms = Vec::new();
        for (w, rows) in &rolling {
            for (d, k, a) in rows {
                if let Some(v) = (g.value)(a, s.sl_formula).filter(|v| v.is_finite()) {
                    let mut labels = vec![label("window", &w.label)];
                    labels.extend(dim_labels(*d, k));
                    ms.push(gauge(labels, v));
                }
            }
        }
        out.push(family(g.name, g.help, MetricType::GAUGE, ms));
    }
    out
}

#[cfg(test)]
pub(super) mod test_support {
    //! Exposes the rolling-gauge formulas to the tests in `http::tests`.
    use super::*;

    /// `(gauge name, value)` for every rolling gauge of one accumulator.
    pub fn rolling_values(a: &Acc, f: SlFormula) -> Vec<(&'static str, Option<f64>)> {
        ROLLING.iter().map(|g| (g.name, (g.value)(a, f))).collect()
    }
}
