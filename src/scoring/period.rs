//! Scoring periods: calendar days in the configured time zone, as UTC bounds.

use jiff::ToSpan;
use jiff::civil::Date;
use jiff::tz::TimeZone;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeriodError {
    #[error("period {0:?} must be a month (2026-11), a quarter (2026-Q4) or a year (2026)")]
    Syntax(String),
    #[error("date {0:?} must be like 2026-11-01")]
    Date(String),
    #[error("--from {from} is after --to {to}")]
    Reversed { from: Date, to: Date },
    #[error("date arithmetic out of range: {0}")]
    Range(String),
}

/// `[first, last]` local dates, and the UTC bounds `[start_ms, end_ms)` of those days.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Period {
    /// `2026-11`, `2026-Q4`, `2026`, or `2026-11-01..2026-11-15`.
    pub label: String,
    pub first: Date,
    /// Inclusive.
    pub last: Date,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Period {
    /// A month `2026-11`, a quarter `2026-Q4` or a year `2026`.
    pub fn parse(spec: &str, tz: &TimeZone) -> Result<Period, PeriodError> {
        let s = spec.trim();
        let bad = || PeriodError::Syntax(spec.to_owned());
        let year = |y: &str| -> Result<i16, PeriodError> {
            if y.len() != 4 {
                return Err(bad());
            }
            y.parse::<i16>().map_err(|_| bad())
        };
        let (first, months) = match s.split_once('-') {
            None => (date(year(s)?, 1, 1).ok_or_else(bad)?, 12),
            Some((y, q)) if q.starts_with(['Q', 'q']) => {
                let n: i8 = q[1..].parse().map_err(|_| bad())?;
                if !(1..=4).contains(&n) {
                    return Err(bad());
                }
                (date(year(y)?, (n - 1) * 3 + 1, 1).ok_or_else(bad)?, 3)
            }
            Some((y, m)) => {
                if m.len() != 2 {
                    return Err(bad());
                }
                let m: i8 = m.parse().map_err(|_| bad())?;
                (date(year(y)?, m, 1).ok_or_else(bad)?, 1)
            }
        };
        let next = first
            .checked_add(months.months())
            .map_err(|e| PeriodError::Range(e.to_string()))?;
        let last = next
            .yesterday()
            .map_err(|e| PeriodError::Range(e.to_string()))?;
        Period::build(s.to_owned(), first, last, tz)
    }

    /// `--from DATE --to DATE`, both days included.
    pub fn range(from: &str, to: &str, tz: &TimeZone) -> Result<Period, PeriodError> {
        let p = |s: &str| {
            s.trim()
                .parse::<Date>()
                .map_err(|_| PeriodError::Date(s.to_owned()))
        };
        let (first, last) = (p(from)?, p(to)?);
        if first > last {
            return Err(PeriodError::Reversed {
                from: first,
                to: last,
            });
        }
        Period::build(format!("{first}..{last}"), first, last, tz)
    }

    fn build(label: String, first: Date, last: Date, tz: &TimeZone) -> Result<Period, PeriodError> {
        let after = last
            .tomorrow()
            .map_err(|e| PeriodError::Range(e.to_string()))?;
        Ok(Period {
            label,
            first,
            last,
            start_ms: day_start_ms(first, tz)?,
            end_ms: day_start_ms(after, tz)?,
        })
    }

    pub fn contains(&self, d: Date) -> bool {
        (self.first..=self.last).contains(&d)
    }
}

fn date(y: i16, m: i8, d: i8) -> Option<Date> {
    Date::new(y, m, d).ok()
}

/// UTC milliseconds at which local day `d` starts in `tz` (the first instant of the
/// day, also when midnight falls in a DST gap): the `window_start` of its `1d` rows.
pub fn day_start_ms(d: Date, tz: &TimeZone) -> Result<i64, PeriodError> {
    d.to_zoned(tz.clone())
        .and_then(|z| z.start_of_day())
        .map(|z| z.timestamp().as_millisecond())
        .map_err(|e| PeriodError::Range(e.to_string()))
}

/// `d` plus `months` calendar months (month ends clamp: Aug 31 + 3 months = Nov 30).
pub fn add_months(d: Date, months: u32) -> Option<Date> {
    d.checked_add(i64::from(months).months()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::window::fmt_utc;

    fn tz(s: &str) -> TimeZone {
        TimeZone::get(s).unwrap()
    }

    #[test]
    fn month_quarter_year_in_zone() {
        let p = Period::parse("2026-11", &tz("Asia/Shanghai")).unwrap();
        assert_eq!(fmt_utc(p.start_ms), "2026-10-31T16:00:00Z");
        assert_eq!(fmt_utc(p.end_ms), "2026-11-30T16:00:00Z");
        assert_eq!(p.last.to_string(), "2026-11-30");
        let q = Period::parse("2026-Q4", &tz("UTC")).unwrap();
        assert_eq!(q.first.to_string(), "2026-10-01");
        assert_eq!(q.last.to_string(), "2026-12-31");
        assert_eq!(fmt_utc(q.end_ms), "2027-01-01T00:00:00Z");
        let y = Period::parse("2026", &tz("America/New_York")).unwrap();
        assert_eq!(fmt_utc(y.start_ms), "2026-01-01T05:00:00Z");
        assert_eq!(y.last.to_string(), "2026-12-31");
        // November in New York has a 25-hour day (fall back on the 1st).
        let n = Period::parse("2026-11", &tz("America/New_York")).unwrap();
        assert_eq!(fmt_utc(n.start_ms), "2026-11-01T04:00:00Z");
        assert_eq!(fmt_utc(n.end_ms), "2026-12-01T05:00:00Z");
        for bad in ["2026-13", "2026-Q5", "26", "2026-1", "nov"] {
            assert!(Period::parse(bad, &tz("UTC")).is_err(), "{bad}");
        }
    }

    #[test]
    fn explicit_range_includes_both_days() {
        let p = Period::range("2026-11-02", "2026-11-03", &tz("UTC")).unwrap();
        assert_eq!(p.end_ms - p.start_ms, 2 * 86_400_000);
        assert!(Period::range("2026-11-04", "2026-11-03", &tz("UTC")).is_err());
        assert!(Period::range("yesterday", "2026-11-03", &tz("UTC")).is_err());
    }

    #[test]
    fn months_clamp_at_month_end() {
        let d: Date = "2026-08-31".parse().unwrap();
        assert_eq!(add_months(d, 3).unwrap().to_string(), "2026-11-30");
    }
}
