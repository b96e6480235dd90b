//! Derived KPIs: the read-time formulas of `docs/metrics.md` over additive primitives.
//! Nothing derived here is ever stored.

use crate::config::SlFormula;
use crate::engine::acc::Acc;
use crate::event::FIXED_SCALE;

/// One output cell: integers stay integers, rates and durations are floats, and a
/// ratio with a zero denominator is empty (CSV) / null (JSON).
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Int(i64),
    Num(Option<f64>),
    Text(String),
}

impl Cell {
    pub fn to_csv(&self) -> String {
        match self {
            Cell::Int(i) => i.to_string(),
            Cell::Num(None) => String::new(),
            Cell::Num(Some(x)) => fmt_num(*x),
            Cell::Text(s) if s.contains([',', '"', '\n', '\r']) => {
                format!("\"{}\"", s.replace('"', "\"\""))
            }
            Cell::Text(s) => s.clone(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Cell::Int(i) => (*i).into(),
            Cell::Num(None) => serde_json::Value::Null,
            Cell::Num(Some(x)) => serde_json::Number::from_f64(*x)
                .map(serde_json::Value::Number)
                .unwrap_or_default(),
            Cell::Text(s) => s.clone().into(),
        }
    }
}

/// Six decimals, trailing zeros trimmed: stable text for golden files and diffs.
pub fn fmt_num(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn ratio(n: i64, d: i64) -> Option<f64> {
    (d != 0).then(|| n as f64 / d as f64)
}

fn secs(ms: Option<f64>) -> Option<f64> {
    ms.map(|m| m / 1000.0)
}

fn pct_s(h: &crate::engine::hist::Hist, q: f64) -> Option<f64> {
    h.quantile_ms(q).map(|ms| ms as f64 / 1000.0)
}

/// The KPI columns of an export row after the identifying columns, in order.
pub const KPI_COLUMNS: [&str; 31] = [
    "offered",
    "answered",
    "abandoned",
    "short_abandoned",
    "answer_rate",
    "abandon_rate",
    "abandon_rate_excl_short",
    "service_level",
    "asa_s",
    "wait_p50_s",
    "wait_p90_s",
    "handled",
    "aht_s",
    "aht_p50_s",
    "aht_p90_s",
    "frt_count",
    "frt_avg_s",
    "frt_p50_s",
    "frt_p90_s",
    "resolved",
    "fcr",
    "fcr_rate",
    "csat_responses",
    "csat",
    "csat_avg",
    "converted",
    "conversion_rate",
    "revenue",
    "avg_order_value",
    "qa_count",
    "qa_avg",
];

/// answered / offered.
pub fn answer_rate(a: &Acc) -> Option<f64> {
    ratio(a.answered, a.offered)
}

/// abandoned / offered.
pub fn abandon_rate(a: &Acc) -> Option<f64> {
    ratio(a.abandoned, a.offered)
}

/// Mean wait of answered contacts, seconds.
pub fn asa_s(a: &Acc) -> Option<f64> {
    secs(ratio(a.wait_sum_ms, a.wait_count))
}

/// Mean handle time of completed segments, seconds.
pub fn aht_s(a: &Acc) -> Option<f64> {
    secs(ratio(a.handle_sum_ms, a.handled))
}

/// Service level by the configured formula.
pub fn service_level(a: &Acc, f: SlFormula) -> Option<f64> {
    match f {
        SlFormula::Offered => ratio(a.answered_within, a.offered),
        SlFormula::Answered => ratio(a.answered_within, a.answered),
        SlFormula::RemovedWithin => ratio(a.answered_within + a.abandoned_within, a.offered),
        SlFormula::ExclShortAbandons => ratio(a.answered_within, a.offered - a.short_abandoned),
    }
}

/// The KPI cells of [`KPI_COLUMNS`] for one accumulator.
pub fn kpis(a: &Acc, f: SlFormula) -> Vec<Cell> {
    let fx = FIXED_SCALE as f64;
    let n = |x: Option<f64>| Cell::Num(x);
    vec![
        Cell::Int(a.offered),
        Cell::Int(a.answered),
        Cell::Int(a.abandoned),
        Cell::Int(a.short_abandoned),
        n(answer_rate(a)),
        n(abandon_rate(a)),
        n(ratio(
            a.abandoned - a.short_abandoned,
            a.offered - a.short_abandoned,
        )),
        n(service_level(a, f)),
        n(asa_s(a)),
        n(pct_s(&a.wait_hist, 0.5)),
        n(pct_s(&a.wait_hist, 0.9)),
        Cell::Int(a.handled),
        n(aht_s(a)),
        n(pct_s(&a.handle_hist, 0.5)),
        n(pct_s(&a.handle_hist, 0.9)),
        Cell::Int(a.frt_count),
        n(secs(ratio(a.frt_sum_ms, a.frt_count))),
        n(pct_s(&a.frt_hist, 0.5)),
        n(pct_s(&a.frt_hist, 0.9)),
        Cell::Int(a.resolved),
        Cell::Int(a.fcr),
        n(ratio(a.fcr, a.resolved)),
        Cell::Int(a.csat_responses),
        n(ratio(a.csat_positive, a.csat_responses)),
        n(ratio(a.csat_sum, a.csat_responses).map(|x| x / fx)),
        Cell::Int(a.converted),
        n(ratio(a.converted, a.answered)),
        n(Some(a.revenue as f64 / fx)),
        n(ratio(a.revenue, a.converted).map(|x| x / fx)),
        Cell::Int(a.qa_count),
        n(ratio(a.qa_sum, a.qa_count).map(|x| x / fx)),
    ]
}
