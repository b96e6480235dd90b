//! Grades on the total, with forced-distribution caps applied inside a scope.

use super::scheme::{CapRounding, Grade};

/// Final grade indexes (into `grades`, highest first) for agents already **sorted
/// best first** (total descending, then the scheme's tie-break, then agent id), with
/// `qualified[i]` the grade agent `i`'s total reaches.
///
/// Caps cascade from the top: in grade g, the agents beyond the cap (the lowest in the
/// order, which includes the tie rule, so the cut is always exactly the cap) move down
/// to g + 1, where they are counted with those who qualified there, and so on. The
/// floor grade has nowhere to send anyone: its cap is reported, not enforced.
pub fn apply_caps(qualified: &[usize], grades: &[Grade], rounding: CapRounding) -> Vec<usize> {
    let n = qualified.len();
    let mut out = qualified.to_vec();
    for (g, grade) in grades.iter().enumerate() {
        if g + 1 >= grades.len() {
            break;
        }
        let Some(share) = grade.max_share else {
            continue;
        };
        let cap = rounding.count(share, n);
        let mut seen = 0;
        for o in out.iter_mut() {
            if *o == g {
                seen += 1;
                if seen > cap {
                    *o = g + 1;
                }
            }
        }
    }
    out
}

/// Human-readable warnings about a scope's final distribution: a floor-grade cap that
/// is exceeded, or a grade under its guideline minimum share.
pub fn distribution_warnings(
    scope: &str,
    finals: &[usize],
    grades: &[Grade],
    rounding: CapRounding,
) -> Vec<String> {
    let n = finals.len();
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    for (g, grade) in grades.iter().enumerate() {
        let count = finals.iter().filter(|&&f| f == g).count();
        if let Some(share) = grade.max_share
            && g + 1 == grades.len()
            && count > rounding.count(share, n)
        {
            out.push(format!(
                "{scope}: {count} of {n} agents in the lowest grade {} exceed its {:.0} % cap (a floor grade cannot move anyone down)",
                grade.name,
                share * 100.0
            ));
        }
        if let Some(share) = grade.min_share
            && (count as f64) < share * n as f64 - 1e-9
        {
            out.push(format!(
                "{scope}: {count} of {n} agents in grade {}, below its {:.0} % guideline (not enforced)",
                grade.name,
                share * 100.0
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grade(name: &str, min: f64, cap: Option<f64>) -> Grade {
        Grade {
            name: name.into(),
            min,
            max_share: cap,
            min_share: None,
            coefficient: 1.0,
        }
    }

    fn abcd() -> Vec<Grade> {
        vec![
            grade("A", 90.0, Some(0.10)),
            grade("B", 80.0, Some(0.30)),
            grade("C", 70.0, None),
            grade("D", 0.0, None),
        ]
    }

    #[test]
    fn rounding_modes() {
        assert_eq!(CapRounding::Floor.count(0.10, 9), 0);
        assert_eq!(CapRounding::Round.count(0.10, 9), 1);
        assert_eq!(CapRounding::Round.count(0.10, 4), 0);
        assert_eq!(CapRounding::AtLeastOne.count(0.10, 4), 1);
        assert_eq!(CapRounding::AtLeastOne.count(0.0, 4), 0);
        assert_eq!(CapRounding::Floor.count(0.30, 10), 3);
        assert_eq!(CapRounding::Round.count(0.25, 10), 3);
        assert_eq!(CapRounding::AtLeastOne.count(0.5, 1), 1);
    }

    #[test]
    fn caps_cascade_down() {
        // 10 agents, best first: 4 qualify for A, 4 for B, 2 for C.
        let q = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2];
        let f = apply_caps(&q, &abcd(), CapRounding::Floor);
        // A keeps 1 (10 %); the 3 others fall to B, where 7 now compete for 3 places
        // (30 %): the 3 ex-A agents stay (they are first in order), the 4 B qualifiers
        // fall to C.
        assert_eq!(f, vec![0, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn caps_with_rounding_for_a_small_team() {
        let q = [0, 0, 1, 3];
        assert_eq!(
            apply_caps(&q, &abcd(), CapRounding::Floor),
            vec![1, 2, 2, 3]
        );
        assert_eq!(
            apply_caps(&q, &abcd(), CapRounding::AtLeastOne),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            apply_caps(&q, &abcd(), CapRounding::Round),
            vec![1, 2, 2, 3]
        );
    }

    #[test]
    fn floor_grade_cap_and_min_share_warn() {
        let grades = vec![
            grade("A", 85.0, Some(0.5)),
            Grade {
                min_share: Some(0.5),
                ..grade("B", 60.0, None)
            },
            grade("D", 0.0, Some(0.25)),
        ];
        let finals = apply_caps(&[2, 2, 2, 0], &grades, CapRounding::Floor);
        assert_eq!(finals, vec![2, 2, 2, 0]);
        let w = distribution_warnings("team east", &finals, &grades, CapRounding::Floor);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("grade B"), "{w:?}");
        assert!(w[1].contains("lowest grade D"), "{w:?}");
    }
}
