//! Tumbling intervals aligned in the configured time zone.
//!
//! Sub-day intervals are aligned on the local wall clock using the UTC offset in force
//! at the timestamp, so a fall-back night has two distinct 01:00–02:00 hours and each
//! interval is exactly its nominal length in real time. `1d` follows the zone's
//! calendar: a DST day is 23 or 25 hours long. All bounds are UTC milliseconds.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::Millis;

/// A configured interval size: `Nm` / `Nh` dividing a day evenly, or `1d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interval {
    Minutes(u32),
    Day,
}

impl Interval {
    /// Nominal length (a calendar day counts 24 h here; see [`Windower::window`]).
    pub fn nominal_ms(self) -> i64 {
        match self {
            Interval::Minutes(m) => i64::from(m) * 60_000,
            Interval::Day => 86_400_000,
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Interval::Day => f.write_str("1d"),
            Interval::Minutes(m) if m % 60 == 0 => write!(f, "{}h", m / 60),
            Interval::Minutes(m) => write!(f, "{m}m"),
        }
    }
}

impl FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let err = || format!("interval {s:?} must be like 15m, 1h or 1d and divide a day evenly");
        let (num, unit) = s.split_at(s.len().saturating_sub(1));
        let n: u32 = num.parse().map_err(|_| err())?;
        let minutes = match unit {
            "m" => n,
            "h" => n.checked_mul(60).ok_or_else(err)?,
            "d" if n == 1 => return Ok(Interval::Day),
            _ => return Err(err()),
        };
        if minutes == 1440 {
            return Ok(Interval::Day);
        }
        if minutes == 0 || 1440 % minutes != 0 {
            return Err(err());
        }
        Ok(Interval::Minutes(minutes))
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Maps timestamps to interval bounds in one zone, caching the current day because
/// calendar arithmetic is the expensive part and events mostly arrive in order.
///
/// Sub-day windows are cached too: the UTC offset in force at the last timestamp with
/// the span of time it holds for (between the zone's transitions), and the last
/// window whose whole span has that one offset. Every timestamp inside that window
/// then maps to it with two comparisons, where asking the zone for its offset was
/// most of the cost of placing a fact in its window (docs/performance.md,
/// "forty-second round"). Exact: between two transitions the offset is constant, and
/// the window's bounds are a function of the timestamp and the offset alone.
#[derive(Clone, Debug)]
pub struct Windower {
    tz: TimeZone,
    day_cache: Option<(Millis, Millis)>,
    /// `(from, until, offset_ms)`: the zone's offset is `offset_ms` at every
    /// millisecond in `[from, until)`.
    offset_cache: Option<(Millis, Millis, i64)>,
    /// `(interval, start, end)`: a sub-day window inside `offset_cache`'s span.
    minutes_cache: Option<(Interval, Millis, Millis)>,
}

impl Windower {
    pub fn new(tz: TimeZone) -> Self {
        Windower {
            tz,
            day_cache: None,
            offset_cache: None,
            minutes_cache: None,
        }
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    fn offset_ms(&self, ts: Millis) -> i64 {
        let t = Timestamp::from_millisecond(ts).unwrap_or(Timestamp::UNIX_EPOCH);
        i64::from(self.tz.to_offset(t).seconds()) * 1000
    }

    /// The offset at `ts` and the span `[from, until)` it holds for: from the zone's
    /// last transition at or before `ts` to its next one after (whole milliseconds,
    /// rounded up: at a millisecond at or past a transition the new offset is in
    /// force). A zone without transitions (UTC, a fixed offset) holds one offset for
    /// every timestamp.
    fn offset_span(&self, ts: Millis) -> (Millis, Millis, i64) {
        let off = self.offset_ms(ts);
        let Ok(t) = Timestamp::from_millisecond(ts) else {
            // Outside jiff's range: nothing cached beyond this one millisecond.
            return (ts, ts.saturating_add(1), off);
        };
        let ceil_ms = |tr: Timestamp| {
            let ms = tr.as_millisecond();
            if tr.subsec_nanosecond().rem_euclid(1_000_000) != 0 {
                ms + 1
            } else {
                ms
            }
        };
        // `preceding` yields transitions strictly before its argument: from one
        // millisecond later, a transition at `ts` itself is among them.
        let after = Timestamp::from_millisecond(ts.saturating_add(1)).unwrap_or(t);
        let from = self
            .tz
            .preceding(after)
            .next()
            .map_or(Millis::MIN, |tr| ceil_ms(tr.timestamp()));
        let until = self
            .tz
            .following(t)
            .next()
            .map_or(Millis::MAX, |tr| ceil_ms(tr.timestamp()));
        if (from..until).contains(&ts) {
            (from, until, off)
        } else {
            // A transition within this millisecond: hold nothing beyond it.
            (ts, ts.saturating_add(1), off)
        }
    }

    /// `[start, end)` of the interval holding `ts`.
    pub fn window(&mut self, iv: Interval, ts: Millis) -> (Millis, Millis) {
        match iv {
            Interval::Minutes(_) => {
                if let Some((civ, s, e)) = self.minutes_cache
                    && civ == iv
                    && (s..e).contains(&ts)
                {
                    return (s, e);
                }
                let (from, until, off) = match self.offset_cache {
                    Some(span @ (from, until, _)) if (from..until).contains(&ts) => span,
                    _ => {
                        let span = self.offset_span(ts);
                        self.offset_cache = Some(span);
                        span
                    }
                };
                let size = iv.nominal_ms();
                let start = (ts + off).div_euclid(size) * size - off;
                let end = start + size;
                // Cached only when one offset holds for the whole window: then every
                // timestamp in it maps to it.
                if from <= start && end <= until {
                    self.minutes_cache = Some((iv, start, end));
                }
                (start, end)
            }
            Interval::Day => {
                if let Some((s, e)) = self.day_cache
                    && (s..e).contains(&ts)
                {
                    return (s, e);
                }
                let day = self.day_bounds(ts);
                self.day_cache = Some(day);
                day
            }
        }
    }

    fn day_bounds(&self, ts: Millis) -> (Millis, Millis) {
        let fallback = {
            let off = self.offset_ms(ts);
            let s = (ts + off).div_euclid(86_400_000) * 86_400_000 - off;
            (s, s + 86_400_000)
        };
        let Ok(t) = Timestamp::from_millisecond(ts) else {
            return fallback;
        };
        let z = t.to_zoned(self.tz.clone());
        let (Ok(start), Ok(next)) = (
            z.start_of_day(),
            z.tomorrow().and_then(|n| n.start_of_day()),
        ) else {
            return fallback;
        };
        (
            start.timestamp().as_millisecond(),
            next.timestamp().as_millisecond(),
        )
    }
}

/// RFC 3339 UTC with `Z` and milliseconds only when non-zero, as exported.
pub fn fmt_utc(ms: Millis) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) if ms % 1000 == 0 => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode::parse_rfc3339;

    fn ts(s: &str) -> Millis {
        parse_rfc3339(s).unwrap()
    }

    fn win(tz: &str, iv: &str, at: &str) -> (String, String) {
        let mut w = Windower::new(TimeZone::get(tz).unwrap());
        let (s, e) = w.window(iv.parse().unwrap(), ts(at));
        (fmt_utc(s), fmt_utc(e))
    }

    #[test]
    fn parses_intervals() {
        assert_eq!("15m".parse::<Interval>(), Ok(Interval::Minutes(15)));
        assert_eq!("1h".parse::<Interval>(), Ok(Interval::Minutes(60)));
        assert_eq!("24h".parse::<Interval>(), Ok(Interval::Day));
        assert!("7m".parse::<Interval>().is_err());
        assert!("0m".parse::<Interval>().is_err());
        assert!("2d".parse::<Interval>().is_err());
        assert!("h".parse::<Interval>().is_err());
        assert_eq!(Interval::Minutes(60).to_string(), "1h");
    }

    #[test]
    fn aligns_in_zone() {
        assert_eq!(
            win("Asia/Shanghai", "1d", "2026-11-23T01:15:02Z"),
            ("2026-11-22T16:00:00Z".into(), "2026-11-23T16:00:00Z".into())
        );
        assert_eq!(
            win("Asia/Kolkata", "1h", "2026-11-23T01:15:02Z"),
            ("2026-11-23T00:30:00Z".into(), "2026-11-23T01:30:00Z".into())
        );
        assert_eq!(
            win("UTC", "15m", "2026-11-23T01:15:00Z"),
            ("2026-11-23T01:15:00Z".into(), "2026-11-23T01:30:00Z".into())
        );
    }

    /// The cached windower places every timestamp where the zone's offset at that
    /// timestamp places it, through DST changes of an hour and of half an hour, zones
    /// at half and three-quarter hours, and timestamps going back and forth.
    #[test]
    fn cached_windows_are_the_zones_windows() {
        let zones = [
            "UTC",
            "America/New_York",
            "Europe/London",
            "Australia/Lord_Howe",
            "America/St_Johns",
            "Asia/Kathmandu",
            "Pacific/Chatham",
        ];
        let intervals = ["15m", "30m", "1h", "2h", "12h"];
        let start = ts("2026-01-01T00:00:00Z");
        let year = 366 * 86_400_000;
        for zone in zones {
            let tz = TimeZone::get(zone).unwrap();
            // Each interval alone (its window cached from one timestamp to the
            // next), then all of them in turn.
            let runs = intervals
                .iter()
                .map(|iv| vec![iv.parse::<Interval>().unwrap()])
                .chain([intervals.iter().map(|iv| iv.parse().unwrap()).collect()]);
            for run in runs {
                let mut w = Windower::new(tz.clone());
                // Steps of about 7 minutes through a year, with a step back now and
                // then (late events).
                let mut t = start;
                let mut n = 0usize;
                while t < start + year {
                    n += 1;
                    let iv = run[n % run.len()];
                    let got = w.window(iv, t);
                    let at = Timestamp::from_millisecond(t).unwrap();
                    let off = i64::from(tz.to_offset(at).seconds()) * 1000;
                    let size = iv.nominal_ms();
                    let s = (t + off).div_euclid(size) * size - off;
                    assert_eq!(got, (s, s + size), "{zone} {iv} at {}", fmt_utc(t));
                    t += if n.is_multiple_of(11) {
                        -3_600_000
                    } else {
                        419_987
                    };
                }
            }
        }
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        // America/New_York: spring forward 2026-03-08, fall back 2026-11-01.
        let (s, e) = win("America/New_York", "1d", "2026-03-08T12:00:00Z");
        assert_eq!(
            (s.as_str(), e.as_str()),
            ("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z")
        );
        let (s, e) = win("America/New_York", "1d", "2026-11-01T12:00:00Z");
        assert_eq!(
            (s.as_str(), e.as_str()),
            ("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z")
        );
        // The repeated 01:00 local hour on fall-back night is two distinct UTC hours.
        assert_eq!(
            win("America/New_York", "1h", "2026-11-01T05:30:00Z").0,
            "2026-11-01T05:00:00Z"
        );
        assert_eq!(
            win("America/New_York", "1h", "2026-11-01T06:30:00Z").0,
            "2026-11-01T06:00:00Z"
        );
    }
}
