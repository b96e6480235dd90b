//! Additive KPI primitives per (window, dimension, key): counts, sums and histograms.
//!
//! Nothing here is an average or a rate. Derived KPIs are computed at read time
//! (`crate::kpi`), so accumulators from different partitions, windows or corrections
//! merge exactly by addition.

use super::hist::Hist;

/// One unit of measurement a contact contributes, produced by `engine::contact`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Measure {
    /// Queue side: the contact left the queue (answered or abandoned) after `wait_ms`.
    QueueOutcome {
        answered: bool,
        wait_ms: u64,
        short: bool,
        within: bool,
    },
    /// Agent side: the contact was presented to the agent.
    Presented,
    /// Agent side: the agent answered; `wait_ms` is the queue wait when known.
    AgentAnswered { wait_ms: Option<u64>, within: bool },
    /// Agent side: the presentation ended with the customer abandoning.
    AgentAbandoned,
    /// A completed handling segment of `handle_ms` (talk + hold + wrap).
    Handled { handle_ms: u64 },
    /// First response after `frt_ms` from the offer.
    FirstResponse { frt_ms: u64 },
    /// The contact was resolved; `fcr` whether first-contact-resolved (so far).
    Resolved { fcr: bool },
    /// A conversion: `first` counts the contact once, `amount` (fixed point) sums revenue.
    Converted { first: bool, amount: i64 },
    /// A CSAT response, score in fixed point; `positive` when score >= positive_min.
    Csat { score: i64, positive: bool },
    /// A QA score in fixed point.
    Qa { score: i64 },
}

/// Names of the integer columns, in storage order. `Acc::counters` follows it.
pub const COUNTER_NAMES: [&str; 21] = [
    "offered",
    "answered",
    "abandoned",
    "short_abandoned",
    "answered_within",
    "abandoned_within",
    "wait_sum_ms",
    "handled",
    "handle_sum_ms",
    "frt_count",
    "frt_sum_ms",
    "resolved",
    "fcr",
    "csat_responses",
    "csat_positive",
    "csat_sum",
    "converted",
    "revenue",
    "qa_count",
    "qa_sum",
    "wait_count",
];

/// Names of the histogram columns, in storage order.
pub const HIST_NAMES: [&str; 3] = ["wait_hist", "handle_hist", "frt_hist"];

/// The magnitude no restored count or sum may reach ([`Acc::plausible`],
/// `Stats::plausible`): far past any real figure, and two values below it add
/// without overflowing.
pub const PLAUSIBLE_BOUND: u64 = 1 << 62;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Acc {
    pub offered: i64,
    pub answered: i64,
    pub abandoned: i64,
    pub short_abandoned: i64,
    pub answered_within: i64,
    pub abandoned_within: i64,
    /// Sum of waits of answered contacts (ms); `wait_count` of them. For queues
    /// `wait_count == answered`; for agents an answer with unknown wait is not in it.
    pub wait_sum_ms: i64,
    pub wait_count: i64,
    pub handled: i64,
    pub handle_sum_ms: i64,
    pub frt_count: i64,
    pub frt_sum_ms: i64,
    pub resolved: i64,
    pub fcr: i64,
    pub csat_responses: i64,
    pub csat_positive: i64,
    /// Fixed point (`event::FIXED_SCALE`).
    pub csat_sum: i64,
    pub converted: i64,
    /// Fixed point (`event::FIXED_SCALE`).
    pub revenue: i64,
    pub qa_count: i64,
    /// Fixed point (`event::FIXED_SCALE`).
    pub qa_sum: i64,
    pub wait_hist: Hist,
    pub handle_hist: Hist,
    pub frt_hist: Hist,
}

fn b(x: bool) -> i64 {
    i64::from(x)
}

impl Acc {
    /// Apply a measure with `sign` +1 (add) or -1 (retract a correction).
    pub fn apply(&mut self, m: &Measure, sign: i64) {
        self.apply_with(m, sign, true);
    }

    /// [`Acc::apply`] without the latency histograms (counts and sums only), for
    /// accumulators that are never asked for a percentile.
    pub fn apply_counts(&mut self, m: &Measure, sign: i64) {
        self.apply_with(m, sign, false);
    }

    fn apply_with(&mut self, m: &Measure, sign: i64, hists: bool) {
        match *m {
            Measure::QueueOutcome {
                answered,
                wait_ms,
                short,
                within,
            } => {
                self.offered += sign;
                if answered {
                    self.answered += sign;
                    self.answered_within += sign * b(within);
                    self.wait_sum_ms += sign * wait_ms as i64;
                    self.wait_count += sign;
                    if hists {
                        self.wait_hist.record(wait_ms, sign);
                    }
                } else {
                    self.abandoned += sign;
                    self.short_abandoned += sign * b(short);
                    self.abandoned_within += sign * b(within);
                }
            }
            Measure::Presented => self.offered += sign,
            Measure::AgentAnswered { wait_ms, within } => {
                self.answered += sign;
                self.answered_within += sign * b(within);
                if let Some(w) = wait_ms {
                    self.wait_sum_ms += sign * w as i64;
                    self.wait_count += sign;
                    if hists {
                        self.wait_hist.record(w, sign);
                    }
                }
            }
            Measure::AgentAbandoned => self.abandoned += sign,
            Measure::Handled { handle_ms } => {
                self.handled += sign;
                self.handle_sum_ms += sign * handle_ms as i64;
                if hists {
                    self.handle_hist.record(handle_ms, sign);
                }
            }
            Measure::FirstResponse { frt_ms } => {
                self.frt_count += sign;
                self.frt_sum_ms += sign * frt_ms as i64;
                if hists {
                    self.frt_hist.record(frt_ms, sign);
                }
            }
            Measure::Resolved { fcr } => {
                self.resolved += sign;
                self.fcr += sign * b(fcr);
            }
            Measure::Converted { first, amount } => {
                self.converted += sign * b(first);
                self.revenue += sign * amount;
            }
            Measure::Csat { score, positive } => {
                self.csat_responses += sign;
                self.csat_positive += sign * b(positive);
                self.csat_sum += sign * score;
            }
            Measure::Qa { score } => {
                self.qa_count += sign;
                self.qa_sum += sign * score;
            }
        }
    }

    /// Exact merge: every primitive is additive.
    pub fn merge(&mut self, o: &Acc) {
        let theirs = o.counters();
        let mut mine = self.counters();
        for (m, t) in mine.iter_mut().zip(theirs) {
            *m += t;
        }
        self.set_counters(mine);
        self.wait_hist.merge(&o.wait_hist);
        self.handle_hist.merge(&o.handle_hist);
        self.frt_hist.merge(&o.frt_hist);
    }

    /// Undo a [`Acc::merge`] of `o`: every primitive is additive and signed.
    pub fn unmerge(&mut self, o: &Acc) {
        let theirs = o.counters();
        let mut mine = self.counters();
        for (m, t) in mine.iter_mut().zip(theirs) {
            *m -= t;
        }
        self.set_counters(mine);
        self.wait_hist.unmerge(&o.wait_hist);
        self.handle_hist.unmerge(&o.handle_hist);
        self.frt_hist.unmerge(&o.frt_hist);
    }

    pub fn is_zero(&self) -> bool {
        self.counters().iter().all(|&c| c == 0)
            && self.wait_hist.is_empty()
            && self.handle_hist.is_empty()
            && self.frt_hist.is_empty()
    }

    /// Whether every counter and histogram count lies within ±2^62. No real figure
    /// comes near (2^62 ms are 146 million years), and values in that range add up
    /// without overflowing. A restored checkpoint's accumulators are checked: one
    /// beyond it is damage, which would otherwise wrap into other figures.
    pub fn plausible(&self) -> bool {
        self.counters()
            .iter()
            .all(|c| c.unsigned_abs() < PLAUSIBLE_BOUND)
            && self
                .hists()
                .iter()
                .all(|h| h.iter().all(|(_, c)| c.unsigned_abs() < PLAUSIBLE_BOUND))
    }

    /// Integer primitives in [`COUNTER_NAMES`] order.
    pub fn counters(&self) -> [i64; 21] {
        [
            self.offered,
            self.answered,
            self.abandoned,
            self.short_abandoned,
            self.answered_within,
            self.abandoned_within,
            self.wait_sum_ms,
            self.handled,
            self.handle_sum_ms,
            self.frt_count,
            self.frt_sum_ms,
            self.resolved,
            self.fcr,
            self.csat_responses,
            self.csat_positive,
            self.csat_sum,
            self.converted,
            self.revenue,
            self.qa_count,
            self.qa_sum,
            self.wait_count,
        ]
    }

    pub fn set_counters(&mut self, c: [i64; 21]) {
        [
            self.offered,
            self.answered,
            self.abandoned,
            self.short_abandoned,
            self.answered_within,
            self.abandoned_within,
            self.wait_sum_ms,
            self.handled,
            self.handle_sum_ms,
            self.frt_count,
            self.frt_sum_ms,
            self.resolved,
            self.fcr,
            self.csat_responses,
            self.csat_positive,
            self.csat_sum,
            self.converted,
            self.revenue,
            self.qa_count,
            self.qa_sum,
            self.wait_count,
        ] = c;
    }

    /// Histograms in [`HIST_NAMES`] order.
    pub fn hists(&self) -> [&Hist; 3] {
        [&self.wait_hist, &self.handle_hist, &self.frt_hist]
    }

    pub fn hists_mut(&mut self) -> [&mut Hist; 3] {
        [
            &mut self.wait_hist,
            &mut self.handle_hist,
            &mut self.frt_hist,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_then_retract_is_zero() {
        let ms = [
            Measure::QueueOutcome {
                answered: true,
                wait_ms: 12_000,
                short: false,
                within: true,
            },
            Measure::QueueOutcome {
                answered: false,
                wait_ms: 3_000,
                short: true,
                within: true,
            },
            Measure::Presented,
            Measure::AgentAnswered {
                wait_ms: Some(5),
                within: true,
            },
            Measure::AgentAbandoned,
            Measure::Handled { handle_ms: 300_000 },
            Measure::FirstResponse { frt_ms: 60_000 },
            Measure::Resolved { fcr: true },
            Measure::Converted {
                first: true,
                amount: 99_900,
            },
            Measure::Csat {
                score: 50_000,
                positive: true,
            },
            Measure::Qa { score: 875_000 },
        ];
        let mut a = Acc::default();
        for m in &ms {
            a.apply(m, 1);
        }
        assert!(!a.is_zero());
        let mut roundtrip = Acc::default();
        roundtrip.set_counters(a.counters());
        assert_eq!(roundtrip.counters(), a.counters());
        for m in &ms {
            a.apply(m, -1);
        }
        assert!(a.is_zero(), "{a:?}");
    }
}
