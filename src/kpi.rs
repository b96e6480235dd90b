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
///
/// Exactly `format!("{x:.6}")` trimmed (the definition, and the path for values it
/// does not take on), computed with integers for the usual cell: the exact binary
/// value's millionths, rounded half to even as `{:.6}` rounds. Float formatting with
/// a precision was a sixth of an export's reading thread (docs/performance.md,
/// "twentieth round").
pub fn fmt_num(x: f64) -> String {
    if let Some((negative, n)) = millionths(x) {
        let (int, frac) = (n / 1_000_000, n % 1_000_000);
        let mut s = String::with_capacity(24);
        if negative && n != 0 {
            s.push('-');
        }
        s.push_str(itoa::Buffer::new().format(int));
        if frac != 0 {
            let mut digits = [b'0'; 6];
            let mut f = frac;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (f % 10) as u8;
                f /= 10;
            }
            let len = 6 - digits.iter().rev().take_while(|&&d| d == b'0').count();
            s.push('.');
            s.extend(digits[..len].iter().map(|&d| char::from(d)));
        }
        return s;
    }
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// `|x|` in millionths, rounded half to even from its exact binary value, and its
/// sign; `None` for what is left to `format!` (not finite, or 2^52 and above).
fn millionths(x: f64) -> Option<(bool, u64)> {
    if !x.is_finite() {
        return None;
    }
    let bits = x.to_bits();
    let negative = bits >> 63 == 1;
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    // |x| = m * 2^e exactly.
    let (m, e) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    if e >= 0 {
        return None;
    }
    let k = e.unsigned_abs();
    if k > 120 {
        // Below 2^-67: zero millionths (no tie is possible that small).
        return Some((negative, 0));
    }
    // m * 10^6 < 2^73, so the scaled value and its remainder fit in u128.
    let scaled = u128::from(m) * 1_000_000;
    let q = scaled >> k;
    let r = scaled & ((1u128 << k) - 1);
    let half = 1u128 << (k - 1);
    let q = if r > half || (r == half && q & 1 == 1) {
        q + 1
    } else {
        q
    };
    // From 2^64 millionths (1.8e13) up, `format!` writes it.
    u64::try_from(q).ok().map(|q| (negative, q))
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition `fmt_num` must equal.
    fn by_format(x: f64) -> String {
        let s = format!("{x:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" { "0".into() } else { s.into() }
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        for x in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            0.1,
            0.7,
            1.0 / 3.0,
            2.0 / 3.0,
            12.345678901,
            -0.0000004,
            -0.0000005,
            0.0000005,
            0.0000015,
            0.0078125,
            0.0234375,
            -0.0078125,
            123456789.1234565,
            4503599627370495.5,
            4503599627370496.0,
            1e300,
            5e-324,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_eq!(fmt_num(x), by_format(x), "{x:e}");
        }
        // Ties at the seventh decimal (odd multiples of 2^-7) round to even.
        assert_eq!(fmt_num(0.0078125), "0.007812");
        assert_eq!(fmt_num(0.0234375), "0.023438");
    }

    proptest! {
        #[test]
        fn any_number_is_written_as_format_writes_it(x in any::<f64>()) {
            prop_assert_eq!(fmt_num(x), by_format(x));
        }

        /// Ratios and durations as the exports make them, and exact ties.
        #[test]
        fn cell_values_are_written_as_format_writes_them(
            n in -10_000_000i64..10_000_000,
            d in 1i64..100_000,
            shift in 0u32..40,
        ) {
            let ratio = n as f64 / d as f64;
            prop_assert_eq!(fmt_num(ratio), by_format(ratio));
            let seconds = n as f64 / 1000.0;
            prop_assert_eq!(fmt_num(seconds), by_format(seconds));
            let dyadic = n as f64 / f64::from(2u32).powi(shift as i32);
            prop_assert_eq!(fmt_num(dyadic), by_format(dyadic));
        }
    }
}
