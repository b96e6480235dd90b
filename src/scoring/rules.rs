//! Rule evaluation: how one item's value becomes points. Pure functions; the formulas
//! are the ones documented in `docs/scoring.md`.

use super::scheme::{Direction, Item, Rule, Source};

/// Points of a non-rank rule for `value` (`None` for a rank rule, which needs the
/// whole group: see [`rank_points`]).
pub fn points(rule: &Rule, dir: Direction, value: f64) -> Option<f64> {
    Some(match *rule {
        Rule::Linear {
            weight,
            floor,
            target,
        } => {
            // One formula for both directions: for lower-is-better the floor (worst)
            // is above the target, so the fraction still runs from 0 at the floor to 1
            // at the target.
            weight * ((value - floor) / (target - floor)).clamp(0.0, 1.0)
        }
        Rule::Bands {
            ref bands,
            otherwise,
        } => bands
            .iter()
            .find(|b| b.bound.holds(value, b.threshold))
            .map_or(otherwise, |b| b.points),
        Rule::Deduction {
            max,
            target,
            unit,
            per_unit,
            min,
            whole_units,
        } => {
            let shortfall = match dir {
                Direction::Higher => target - value,
                Direction::Lower => value - target,
            }
            .max(0.0);
            let mut units = shortfall / unit;
            if whole_units {
                // 0.95 − 0.93 is 0.0200000000000000178 in binary; the epsilon keeps a
                // whole number of units whole.
                units = (units + 1e-9).floor();
            }
            (max - per_unit * units).max(min)
        }
        Rule::Manual { weight, scale } => weight * (value / scale).clamp(0.0, 1.0),
        Rule::Rank { .. } => return None,
    })
}

/// Rank points for a group of values (`None`: no value, not ranked, gets nothing here).
///
/// Ties: standard competition ranking. An agent's rank is 1 + the number of agents
/// with a strictly better value, so agents with equal values share a rank and each
/// gets that rank's points (two firsts both get the first prize; the next agent is
/// third). `last` goes to every agent with the worst value. When all ranked agents
/// have the same value there is no ranking and nobody gets rank points. An agent with
/// rank points or `last` gets no `above_average`; the others get it when their value
/// is strictly better than the group mean.
pub fn rank_points(
    values: &[Option<f64>],
    dir: Direction,
    points: &[f64],
    last: Option<f64>,
    above_average: Option<f64>,
) -> Vec<f64> {
    let ranked: Vec<f64> = values.iter().flatten().copied().collect();
    let mut out = vec![0.0; values.len()];
    let Some(&first) = ranked.first() else {
        return out;
    };
    if ranked.iter().all(|&v| v == first) {
        return out;
    }
    let worst = ranked
        .iter()
        .copied()
        .fold(first, |w, v| if dir.better(w, v) { v } else { w });
    let mean = ranked.iter().sum::<f64>() / ranked.len() as f64;
    for (o, v) in out.iter_mut().zip(values) {
        let Some(v) = *v else { continue };
        let rank = ranked.iter().filter(|&&x| dir.better(x, v)).count();
        if let Some(p) = points.get(rank) {
            *o = *p;
        } else if let (Some(l), true) = (last, v == worst) {
            *o = l;
        } else if let (Some(a), true) = (above_average, dir.better(v, mean)) {
            *o = a;
        }
    }
    out
}

/// Mean of rater means weighted by rater weight, over the raters who gave a score
/// (weights renormalised, so a missing self-review does not count as 0). `scores`
/// are (rater, score) rows; rows whose rater has no weight are ignored (the manual
/// CSV reader rejects them before this).
pub fn rater_weighted(scores: &[(String, f64)], raters: &[(String, f64)]) -> Option<f64> {
    let mut num = 0.0;
    let mut den = 0.0;
    for (rater, w) in raters {
        let given: Vec<f64> = scores
            .iter()
            .filter(|(r, _)| r == rater)
            .map(|(_, s)| *s)
            .collect();
        if given.is_empty() {
            continue;
        }
        num += w * given.iter().sum::<f64>() / given.len() as f64;
        den += w;
    }
    (den > 0.0).then(|| num / den)
}

/// A number as written in reports (`kpi::fmt_num`: up to 6 decimals, no trailing zeros).
pub fn num(x: f64) -> String {
    crate::kpi::fmt_num(x)
}

/// The rule in words, for the scorecard.
pub fn describe(item: &Item) -> String {
    let below = |d: Direction| {
        if d == Direction::Higher {
            "below"
        } else {
            "over"
        }
    };
    match &item.rule {
        Rule::Linear {
            weight,
            floor,
            target,
        } => format!(
            "linear: {} × (value − {}) / ({} − {}), clamped to 0–1",
            num(*weight),
            num(*floor),
            num(*target),
            num(*floor)
        ),
        Rule::Bands { bands, otherwise } => {
            let mut parts: Vec<String> = bands
                .iter()
                .map(|b| {
                    format!(
                        "{} {} → {}",
                        b.bound.symbol(),
                        num(b.threshold),
                        num(b.points)
                    )
                })
                .collect();
            parts.push(format!("else {}", num(*otherwise)));
            format!("bands: {}", parts.join("; "))
        }
        Rule::Deduction {
            max,
            target,
            unit,
            per_unit,
            min,
            whole_units,
        } => format!(
            "deduction: {} − {} per {}{} {} {}, at least {}",
            num(*max),
            num(*per_unit),
            if *whole_units { "whole " } else { "" },
            num(*unit),
            below(item.direction),
            num(*target),
            num(*min)
        ),
        Rule::Rank {
            points,
            last,
            above_average,
        } => {
            let mut parts: Vec<String> = points
                .iter()
                .enumerate()
                .map(|(i, p)| format!("#{} {:+}", i + 1, p))
                .collect();
            if let Some(l) = last {
                parts.push(format!("last {l:+}"));
            }
            if let Some(a) = above_average {
                parts.push(format!("above average {a:+}"));
            }
            format!(
                "rank ({} is better): {}",
                if item.direction == Direction::Higher {
                    "higher"
                } else {
                    "lower"
                },
                parts.join(", ")
            )
        }
        Rule::Manual { weight, scale } => {
            let mut s = format!("manual: {} × score / {}", num(*weight), num(*scale));
            if let Source::Manual { raters, .. } = &item.source
                && !raters.is_empty()
            {
                let sum: f64 = raters.iter().map(|(_, w)| w).sum();
                let r: Vec<String> = raters
                    .iter()
                    .map(|(n, w)| format!("{n} {} %", num(w / sum * 100.0)))
                    .collect();
                s.push_str(&format!(" (raters: {})", r.join(", ")));
            }
            s
        }
    }
}

/// The target in words: where the item earns its full points.
pub fn describe_target(item: &Item) -> String {
    let cmp = if item.direction == Direction::Higher {
        "≥"
    } else {
        "≤"
    };
    match &item.rule {
        Rule::Linear { target, .. } | Rule::Deduction { target, .. } => {
            format!("{cmp} {}", num(*target))
        }
        Rule::Bands { bands, .. } => bands
            .first()
            .map(|b| format!("{} {}", b.bound.symbol(), num(b.threshold)))
            .unwrap_or_default(),
        Rule::Rank { .. } => "rank in scope".to_owned(),
        Rule::Manual { scale, .. } => format!("{} of {}", num(*scale), num(*scale)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::scheme::{Band, Bound};

    const H: Direction = Direction::Higher;
    const L: Direction = Direction::Lower;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn linear_both_directions() {
        let csat = Rule::Linear {
            weight: 20.0,
            floor: 0.6,
            target: 0.9,
        };
        close(points(&csat, H, 0.9).unwrap(), 20.0);
        close(points(&csat, H, 0.75).unwrap(), 10.0);
        close(points(&csat, H, 0.5).unwrap(), 0.0);
        close(points(&csat, H, 0.99).unwrap(), 20.0);
        // Lower is better: floor 120 s (0 points), target 40 s (all points).
        let frt = Rule::Linear {
            weight: 10.0,
            floor: 120.0,
            target: 40.0,
        };
        close(points(&frt, L, 40.0).unwrap(), 10.0);
        close(points(&frt, L, 30.0).unwrap(), 10.0);
        close(points(&frt, L, 80.0).unwrap(), 5.0);
        close(points(&frt, L, 200.0).unwrap(), 0.0);
    }

    #[test]
    fn bands_first_match_and_otherwise() {
        let frt = Rule::Bands {
            bands: vec![
                Band {
                    bound: Bound::AtMost,
                    threshold: 60.0,
                    points: 10.0,
                },
                Band {
                    bound: Bound::AtMost,
                    threshold: 180.0,
                    points: 6.0,
                },
            ],
            otherwise: 3.0,
        };
        close(points(&frt, L, 60.0).unwrap(), 10.0);
        close(points(&frt, L, 60.5).unwrap(), 6.0);
        close(points(&frt, L, 180.0).unwrap(), 6.0);
        close(points(&frt, L, 181.0).unwrap(), 3.0);
        let fcr = Rule::Bands {
            bands: vec![
                Band {
                    bound: Bound::AtLeast,
                    threshold: 0.9,
                    points: 10.0,
                },
                Band {
                    bound: Bound::Over,
                    threshold: 0.7,
                    points: 6.0,
                },
            ],
            otherwise: 3.0,
        };
        close(points(&fcr, H, 0.9).unwrap(), 10.0);
        close(points(&fcr, H, 0.71).unwrap(), 6.0);
        // "≤ 70 % → 3": exactly 0.7 is not over 0.7.
        close(points(&fcr, H, 0.7).unwrap(), 3.0);
    }

    #[test]
    fn deduction_higher_and_lower_with_floor() {
        // Answer rate target 95 %, −2 per percentage point below.
        let ar = Rule::Deduction {
            max: 30.0,
            target: 0.95,
            unit: 0.01,
            per_unit: 2.0,
            min: 0.0,
            whole_units: false,
        };
        close(points(&ar, H, 0.97).unwrap(), 30.0);
        close(points(&ar, H, 0.93).unwrap(), 26.0);
        close(points(&ar, H, 0.925).unwrap(), 25.0);
        close(points(&ar, H, 0.5).unwrap(), 0.0);
        let whole = Rule::Deduction {
            max: 30.0,
            target: 0.95,
            unit: 0.01,
            per_unit: 2.0,
            min: 0.0,
            whole_units: true,
        };
        close(points(&whole, H, 0.925).unwrap(), 26.0);
        close(points(&whole, H, 0.93).unwrap(), 26.0);
        // Talk time 120 s, −1 per second over, floored at a configured minimum of 5.
        let aht = Rule::Deduction {
            max: 30.0,
            target: 120.0,
            unit: 1.0,
            per_unit: 1.0,
            min: 5.0,
            whole_units: false,
        };
        close(points(&aht, L, 100.0).unwrap(), 30.0);
        close(points(&aht, L, 130.0).unwrap(), 20.0);
        close(points(&aht, L, 500.0).unwrap(), 5.0);
    }

    #[test]
    fn manual_scales_and_clamps() {
        let m = Rule::Manual {
            weight: 30.0,
            scale: 100.0,
        };
        close(points(&m, H, 80.0).unwrap(), 24.0);
        close(points(&m, H, 120.0).unwrap(), 30.0);
        assert_eq!(
            points(
                &Rule::Rank {
                    points: vec![3.0],
                    last: None,
                    above_average: None
                },
                H,
                1.0
            ),
            None
        );
    }

    #[test]
    fn rank_ties_missing_last_and_average() {
        // Volume: 1st +3, 2nd +2, above average +1.
        let v = [
            Some(50.0),
            Some(40.0),
            Some(40.0),
            Some(10.0),
            None,
            Some(36.0),
        ];
        // mean of ranked = 176 / 5 = 35.2
        assert_eq!(
            rank_points(&v, H, &[3.0, 2.0], None, Some(1.0)),
            vec![3.0, 2.0, 2.0, 0.0, 0.0, 1.0]
        );
        // Two firsts share the first prize; the next one is third (no second prize).
        let t = [Some(9.0), Some(9.0), Some(8.0), Some(1.0)];
        assert_eq!(
            rank_points(&t, H, &[3.0, 2.0], Some(-3.0), None),
            vec![3.0, 3.0, 0.0, -3.0]
        );
        // Lower is better: the smallest value ranks first.
        assert_eq!(
            rank_points(&t, L, &[3.0], Some(-3.0), None),
            vec![-3.0, -3.0, 0.0, 3.0]
        );
        // Everyone equal: no ranking.
        assert_eq!(
            rank_points(&[Some(5.0), Some(5.0)], H, &[3.0], Some(-3.0), None),
            vec![0.0, 0.0]
        );
        assert_eq!(
            rank_points(&[None, None], H, &[3.0], None, None),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn raters_weighted_and_renormalised() {
        let w = vec![
            ("peer".to_owned(), 0.2),
            ("manager".to_owned(), 0.5),
            ("self".to_owned(), 0.3),
        ];
        let s = |r: &str, x: f64| (r.to_owned(), x);
        // Two peers (70, 90 → 80), manager 90, self 100: 0.2·80 + 0.5·90 + 0.3·100 = 91.
        let all = [
            s("peer", 70.0),
            s("peer", 90.0),
            s("manager", 90.0),
            s("self", 100.0),
        ];
        close(rater_weighted(&all, &w).unwrap(), 91.0);
        // No self-review: (0.2·80 + 0.5·90) / 0.7 = 87.142857…
        close(rater_weighted(&all[..3], &w).unwrap(), 61.0 / 0.7);
        assert_eq!(rater_weighted(&[], &w), None);
    }
}
