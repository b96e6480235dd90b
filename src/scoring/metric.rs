//! Metric names a scheme may score on, and their values for one merged accumulator.
//!
//! Every export column of `kpi::KPI_COLUMNS` is a metric, computed by `kpi::kpis`
//! itself, so a KPI has exactly one definition whether it is exported or scored. The
//! only additions are counts the scoring schemes need that no export column carries
//! (they are still derived from the same additive primitives).

use crate::config::SlFormula;
use crate::engine::acc::Acc;
use crate::kpi::{self, Cell, KPI_COLUMNS};

use super::scheme::Direction;

/// Scoring-only metrics: name, definition (for messages and docs).
pub const EXTRA_METRICS: [(&str, &str); 1] = [(
    "csat_negative",
    "dissatisfied survey responses: csat_responses − responses with score ≥ positive_min",
)];

/// A metric by name: an export column or one of [`EXTRA_METRICS`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Metric(&'static str);

impl Metric {
    pub fn parse(name: &str) -> Result<Metric, String> {
        let name = name.trim();
        KPI_COLUMNS
            .iter()
            .chain(EXTRA_METRICS.iter().map(|(n, _)| n))
            .find(|n| **n == name)
            .map(|n| Metric(n))
            .ok_or_else(|| {
                let known: Vec<&str> = KPI_COLUMNS
                    .iter()
                    .copied()
                    .chain(EXTRA_METRICS.iter().map(|(n, _)| *n))
                    .collect();
                format!("unknown metric {name:?} (known: {})", known.join(", "))
            })
    }

    pub fn name(&self) -> &'static str {
        self.0
    }

    /// Which way is better, for metrics where that is not a matter of opinion.
    /// Counts like `offered` or `revenue` have one too (more work done is better);
    /// `short_abandoned` and the wait percentiles are lower-is-better.
    pub fn default_direction(&self) -> Option<Direction> {
        use Direction::{Higher, Lower};
        Some(match self.0 {
            "offered" | "answered" | "answer_rate" | "service_level" | "handled" | "resolved"
            | "fcr" | "fcr_rate" | "csat_responses" | "csat" | "csat_avg" | "converted"
            | "conversion_rate" | "revenue" | "avg_order_value" | "qa_count" | "qa_avg"
            | "frt_count" => Higher,
            "abandoned"
            | "short_abandoned"
            | "abandon_rate"
            | "abandon_rate_excl_short"
            | "asa_s"
            | "wait_p50_s"
            | "wait_p90_s"
            | "aht_s"
            | "aht_p50_s"
            | "aht_p90_s"
            | "frt_avg_s"
            | "frt_p50_s"
            | "frt_p90_s"
            | "csat_negative" => Lower,
            _ => return None,
        })
    }

    /// Whether the metric depends on first-contact resolution (provisional until the
    /// FCR window after the period has passed).
    pub fn uses_fcr(&self) -> bool {
        matches!(self.0, "fcr" | "fcr_rate")
    }
}

/// All metric values of one accumulator, computed once.
#[derive(Clone, Debug)]
pub struct Values {
    cells: Vec<Cell>,
    csat_negative: i64,
}

impl Values {
    pub fn new(acc: &Acc, formula: SlFormula) -> Values {
        Values {
            cells: kpi::kpis(acc, formula),
            csat_negative: acc.csat_responses - acc.csat_positive,
        }
    }

    /// The value, or `None` when it is undefined (a rate with no denominator).
    pub fn get(&self, m: &Metric) -> Option<f64> {
        if m.0 == "csat_negative" {
            return Some(self.csat_negative as f64);
        }
        let i = KPI_COLUMNS.iter().position(|c| *c == m.0)?;
        match self.cells.get(i)? {
            Cell::Int(x) => Some(*x as f64),
            Cell::Num(x) => *x,
            Cell::Text(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::acc::Measure;

    #[test]
    fn names_and_values() {
        assert!(Metric::parse("csat").is_ok());
        assert!(Metric::parse("csat_negative").is_ok());
        let err = Metric::parse("csatt").unwrap_err();
        assert!(err.contains("unknown metric \"csatt\""), "{err}");
        let mut a = Acc::default();
        for (score, positive) in [(50_000, true), (20_000, false), (10_000, false)] {
            a.apply(&Measure::Csat { score, positive }, 1);
        }
        let v = Values::new(&a, SlFormula::Offered);
        let m = |n| Metric::parse(n).unwrap();
        assert_eq!(v.get(&m("csat_negative")), Some(2.0));
        assert_eq!(v.get(&m("csat_responses")), Some(3.0));
        assert!((v.get(&m("csat")).unwrap() - 1.0 / 3.0).abs() < 1e-12);
        // No answered contacts: the rate is undefined, not 0.
        assert_eq!(v.get(&m("answer_rate")), None);
        assert_eq!(m("aht_s").default_direction(), Some(Direction::Lower));
    }
}
