//! JSON → [`Event`] with validation. Never panics on input: every failure is a
//! [`Reject`] with a stable, metric-friendly reason.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{AgentState, Channel, Event, EventType, FIXED_SCALE, Millis};

mod flat;

/// Why an input message was not applied. `as_str` values are the `reason` label of
/// `ccmetrics_events_rejected_total` and the keys of the replay summary.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum RejectReason {
    /// Not parseable as JSON, or not valid UTF-8.
    InvalidJson,
    /// Valid JSON whose top level is not an object.
    NotObject,
    /// A field the event type requires is absent.
    MissingField,
    /// A field has the wrong JSON type or is out of range.
    InvalidField,
    /// `ts` is neither RFC 3339 with offset nor integer epoch milliseconds.
    InvalidTimestamp,
    /// `type` is not one of format v1's types.
    UnknownType,
    /// Message larger than the configured maximum.
    Oversize,
    /// Older than watermark − correction horizon: can no longer be applied.
    TooLate,
    /// The contact already holds the maximum number of events (a runaway producer
    /// reusing one `contact_id`); accepting more would make each event slower.
    ContactOverflow,
    /// Stamped more than `[windows] max_clock_skew` ahead of the wall clock: a device
    /// with a broken clock, which would otherwise push the watermark forward and close
    /// every window early. Decided by the pipeline (the engine never reads the clock).
    /// Last in the enum: checkpoints store reasons by position.
    Future,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::InvalidJson,
        RejectReason::NotObject,
        RejectReason::MissingField,
        RejectReason::InvalidField,
        RejectReason::InvalidTimestamp,
        RejectReason::UnknownType,
        RejectReason::Oversize,
        RejectReason::TooLate,
        RejectReason::ContactOverflow,
        RejectReason::Future,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotObject => "not_object",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::Oversize => "oversize",
            RejectReason::TooLate => "too_late",
            RejectReason::ContactOverflow => "contact_overflow",
            RejectReason::Future => "future",
        }
    }
}

/// A rejected message: the reason and a human-readable detail for logs / dead letters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl Reject {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Reject {
            reason,
            detail: detail.into(),
        }
    }
    fn missing(field: &str, kind: &str) -> Self {
        Reject::new(
            RejectReason::MissingField,
            format!("`{field}` is required on {kind}"),
        )
    }
    fn invalid(field: &str, why: impl fmt::Display) -> Self {
        Reject::new(RejectReason::InvalidField, format!("`{field}` {why}"))
    }
}

/// Decoding settings taken from the config.
#[derive(Clone, Debug)]
pub struct Decoder {
    pub max_message_bytes: usize,
    pub csat_scale_min: i64,
    pub csat_scale_max: i64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            max_message_bytes: 64 * 1024,
            csat_scale_min: 1,
            csat_scale_max: 5,
        }
    }
}

/// Decode with default settings (CSAT scale 1–5).
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, Reject> {
    Decoder::default().decode(bytes)
}

const MAX_ID_LEN: usize = 128;
/// Years outside this range are certainly bogus device clocks, not contact-centre history.
const MIN_TS: Millis = 946_684_800_000; // 2000-01-01T00:00:00Z
const MAX_TS: Millis = 4_102_444_800_000; // 2100-01-01T00:00:00Z
/// Upper bound for durations (`talk_ms`, …): 30 days.
const MAX_DURATION_MS: u64 = 30 * 24 * 3600 * 1000;
/// Upper bound for an order amount; above it fixed-point sums could overflow.
const MAX_AMOUNT: f64 = 1e12;

#[derive(Deserialize, Default, Debug, PartialEq)]
struct Raw<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ts: Option<RawTs<'a>>,
    #[serde(borrow, default)]
    contact_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    queue: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    agent_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    team: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    customer_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to_agent_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to_queue: Option<Cow<'a, str>>,
    #[serde(default)]
    talk_ms: Option<f64>,
    #[serde(default)]
    hold_ms: Option<f64>,
    #[serde(default)]
    wrap_ms: Option<f64>,
    #[serde(default)]
    amount: Option<f64>,
    #[serde(default)]
    score: Option<f64>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Debug, PartialEq)]
enum RawTs<'a> {
    Millis(i64),
    Text(Cow<'a, str>),
    Bad,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("RFC 3339 string or epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map(RawTs::Millis).unwrap_or(RawTs::Bad))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Bad)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RawTs::Bad)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawTs::Bad)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(RawTs::Bad)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(RawTs::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse `ts` text: RFC 3339 with an explicit offset (`Z` or `±hh:mm`).
///
/// The shape producers send (`2026-11-23T09:15:02.123Z`, `…+08:00`) is read by
/// [`rfc3339_common`]; anything else goes to jiff, which decides. Half the generated
/// events carry text timestamps; read directly they cost half of what jiff's general
/// parser did (2 % of decoding's instructions saved: docs/performance.md, "sixth round").
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    if let Some(ms) = rfc3339_common(s.as_bytes()) {
        return Some(ms);
    }
    let ts: jiff::Timestamp = s.parse().ok()?;
    Some(ts.as_millisecond())
}

/// The value of `b` read as decimal digits; `None` if a byte is not one. At most 18
/// digits, so that it cannot overflow (callers check the length).
fn ascii_decimal(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        let d = c.wrapping_sub(b'0');
        (d < 10).then(|| acc * 10 + i64::from(d))
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]` then `Z` or `±HH:MM`, every field in range, years
/// 1970–9998: the timestamp in ms (the fraction truncated, as jiff's `as_millisecond`
/// does). `None` for anything else, which is not an error: lowercase `t`/`z`, a leap
/// second, `-00:00`, far years and every malformed text are left to jiff, so this can
/// only agree with it (a property test holds it to that).
fn rfc3339_common(b: &[u8]) -> Option<Millis> {
    let digits = ascii_decimal;
    let field = |from: usize, to: usize| b.get(from..to).and_then(digits);
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (field(0, 4)?, field(5, 7)?, field(8, 10)?);
    let (hour, minute, second) = (field(11, 13)?, field(14, 16)?, field(17, 19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1970..=9998).contains(&year)
        || !(1..=month_days).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if sep(at, b'.') {
        let rest = b.get(at + 1..).unwrap_or_default();
        let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return None;
        }
        // The first three digits, padded: `.5` is 500 ms, `.1239` is 123 ms.
        let ms_digits = field(at + 1, at + 1 + n.min(3))?;
        millis = ms_digits * [100, 10, 1][n.min(3) - 1];
        at += 1 + n;
    }
    let offset_s = match b.get(at..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 || (*sign == b'-' && h == 0 && m == 0) {
                return None;
            }
            let s = h * 3600 + m * 60;
            if *sign == b'-' { -s } else { s }
        }
        _ => return None,
    };
    // Days since the epoch of a proleptic Gregorian date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs * 1000 + millis)
}

/// Inlined into its eight call sites: as a call, its prologue and epilogue were a
/// third of its instructions (callgrind: inlining saves 1 % of bare parsing's).
#[inline(always)]
fn id<'a>(
    field: &str,
    v: Option<Cow<'a, str>>,
    printable: bool,
) -> Result<Option<Cow<'a, str>>, Reject> {
    match v {
        None => Ok(None),
        Some(s) if s.is_empty() => Err(Reject::invalid(field, "is empty")),
        Some(s) if s.len() > MAX_ID_LEN => Err(Reject::invalid(
            field,
            format!("is longer than {MAX_ID_LEN} bytes"),
        )),
        Some(s) if !printable && has_control(&s) => {
            Err(Reject::invalid(field, "contains control characters"))
        }
        Some(s) => Ok(Some(s)),
    }
}

/// 0x01 in every byte of a word, and the high bit of every byte: for the
/// word-at-a-time search of `has_control`.
const WORD_ONES: u64 = 0x0101_0101_0101_0101;
const WORD_HIGH: u64 = 0x8080_8080_8080_8080;

/// High bit set in the lowest byte of `x` below `n` (at most 0x80), and maybe in later
/// bytes a borrow reaches; never in an earlier one, and none when no byte is below
/// `n` ("Bit Twiddling Hacks", "determine if a word has a byte less than n").
fn bytes_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(WORD_ONES * u64::from(n)) & !x & WORD_HIGH
}

/// Whether `s` holds a control character (Unicode `Cc`: U+0000–U+001F, U+007F–U+009F).
/// Eight bytes at a time ([`bytes_below`]): a word with no byte below
/// 0x20 and none at 0x7F or above holds no control character. Only an id with such a
/// byte (a control, or any non-ASCII character, where the C1 controls live) is then
/// checked character by character. Against the byte-by-byte pass before: 14
/// instructions fewer per id, 1.7 % of bare parsing's (callgrind, 2026-12-03).
fn has_control(s: &str) -> bool {
    // A byte is 0x80 or above (`x`), is 0x7F (`x + 1`), or is below 0x20. Carries
    // between bytes only add flags next to a byte that is flagged anyway.
    let flags = |x: u64| (x | x.wrapping_add(WORD_ONES) | bytes_below(x, 0x20)) & WORD_HIGH;
    let word = |w: &[u8]| w.try_into().map_or(0, u64::from_le_bytes);
    let half = |w: &[u8]| w.try_into().map_or(0, u32::from_le_bytes);
    let bytes = s.as_bytes();
    let suspect = if bytes.len() >= 8 {
        let mut words = bytes.chunks_exact(8);
        let mut suspect = 0u64;
        for w in &mut words {
            suspect |= flags(word(w));
        }
        // The last bytes: the final eight again (overlapping).
        if !words.remainder().is_empty() {
            suspect |= flags(word(&bytes[bytes.len() - 8..]));
        }
        suspect
    } else if bytes.len() >= 4 {
        // The first four and the last four (overlapping) as one word: no copy into a
        // padded buffer, which was a `memcpy` call per short id.
        let (lo, hi) = (half(&bytes[..4]), half(&bytes[bytes.len() - 4..]));
        flags(u64::from(lo) | u64::from(hi) << 32)
    } else {
        u64::from(bytes.iter().any(|&b| !(0x20..0x7F).contains(&b)))
    };
    suspect != 0 && s.chars().any(char::is_control)
}

fn duration(field: &str, v: Option<f64>) -> Result<Option<u64>, Reject> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x >= 0.0 && x <= MAX_DURATION_MS as f64 => {
            Ok(Some(x.round() as u64))
        }
        Some(x) => Err(Reject::invalid(
            field,
            format!("must be 0..={MAX_DURATION_MS} ms, got {x}"),
        )),
    }
}

impl Decoder {
    /// Decode and validate one message.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Event<'a>, Reject> {
        self.decode_with(bytes, true)
    }

    /// [`Decoder::decode`] with serde_json reading every message, the flat path off:
    /// the oracle the fuzzer (`fuzz/harness.rs`) holds the flat path to.
    #[doc(hidden)]
    pub fn decode_by_serde<'a>(&self, bytes: &'a [u8]) -> Result<Event<'a>, Reject> {
        self.decode_with(bytes, false)
    }

    fn decode_with<'a>(&self, bytes: &'a [u8], flat: bool) -> Result<Event<'a>, Reject> {
        if bytes.len() > self.max_message_bytes {
            return Err(Reject::new(
                RejectReason::Oversize,
                format!("{} bytes > max {}", bytes.len(), self.max_message_bytes),
            ));
        }
        // Only an object may reach `Raw`: serde's derived struct also accepts a JSON
        // array, field by field in declaration order, so `["e1","contact.ended",…]`
        // would otherwise decode as an event.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(match serde_json::from_slice::<de::IgnoredAny>(bytes) {
                Ok(_) => Reject::new(
                    RejectReason::NotObject,
                    "top-level JSON value is not an object",
                ),
                Err(e) => classify_json_error(bytes, &e),
            });
        }
        // UTF-8 is checked once for the whole message, so that the parser can take
        // each string as it is: from bytes, serde_json validates every string and key
        // on its own, which was a tenth of decoding's instructions. A message that is
        // not UTF-8 goes the byte way, which names the error's position as before.
        // The usual flat message is read by `flat::scan`; anything it does not take
        // on goes to serde_json, which stays the definition (and names the errors).
        // simdutf8's check (AVX2 or SSE 4.2, chosen at run time) takes half of std's
        // time on the usual ~170-byte message (docs/performance.md, "twenty-second
        // round").
        let text = simdutf8::basic::from_utf8(bytes);
        // The flat path fills one `Raw` (~430 bytes) in place and validation reads it
        // there: handed on by value through an `Option` and a `Result` it was copied
        // twice per message (docs/performance.md, "seventeenth round"), and returned
        // by `scan` and passed by value, twice more ("twenty-first round").
        if flat && let Ok(text) = text {
            let mut raw = Raw::default();
            if let Some(read) = flat::scan(text, &mut raw) {
                return self.validate(&mut raw, read.printable);
            }
        }
        let parsed = match text {
            Ok(text) => serde_json::from_str::<Raw<'_>>(text),
            Err(_) => serde_json::from_slice::<Raw<'_>>(bytes),
        };
        let mut raw = match parsed {
            Ok(r) => r,
            Err(e) => return Err(classify_json_error(bytes, &e)),
        };
        self.validate(&mut raw, false)
    }

    /// The event `raw` holds, or why it is rejected. Takes the fields it uses out of
    /// `raw` (by reference: see `decode_with`).
    /// `printable`: the message is known to hold only printable ASCII, so its ids need
    /// no search for control characters.
    fn validate<'a>(&self, raw: &mut Raw<'a>, printable: bool) -> Result<Event<'a>, Reject> {
        let kind_s = raw
            .kind
            .take()
            .ok_or_else(|| Reject::missing("type", "every event"))?;
        let kind = EventType::parse(&kind_s).ok_or_else(|| {
            Reject::new(
                RejectReason::UnknownType,
                format!("unknown type {:?}", truncate(&kind_s)),
            )
        })?;
        let k = kind.as_str();
        let event_id = id("event_id", raw.event_id.take(), printable)?
            .ok_or_else(|| Reject::missing("event_id", k))?;
        let ts = match raw.ts.take() {
            None => return Err(Reject::missing("ts", k)),
            Some(RawTs::Millis(ms)) => ms,
            Some(RawTs::Text(s)) => parse_rfc3339(&s).ok_or_else(|| {
                Reject::new(
                    RejectReason::InvalidTimestamp,
                    format!("`ts` {:?} is not RFC 3339 with offset", truncate(&s)),
                )
            })?,
            Some(RawTs::Bad) => {
                return Err(Reject::new(
                    RejectReason::InvalidTimestamp,
                    "`ts` must be an RFC 3339 string or integer epoch milliseconds",
                ));
            }
        };
        if !(MIN_TS..MAX_TS).contains(&ts) {
            return Err(Reject::new(
                RejectReason::InvalidTimestamp,
                format!("`ts` {ts} ms is outside years 2000–2099"),
            ));
        }
        let channel = match raw.channel.take() {
            None => None,
            Some(c) => Some(Channel::parse(&c).ok_or_else(|| {
                Reject::invalid(
                    "channel",
                    format!("{:?} is not voice|chat|email|ticket|social", truncate(&c)),
                )
            })?),
        };
        let state = match raw.state.take() {
            None => None,
            Some(s) => Some(AgentState::parse(&s).ok_or_else(|| {
                Reject::invalid(
                    "state",
                    format!("{:?} is not available|busy|wrap|away|offline", truncate(&s)),
                )
            })?),
        };
        let amount = match raw.amount.take() {
            None => None,
            Some(a) if a.is_finite() && (0.0..=MAX_AMOUNT).contains(&a) => {
                Some((a * FIXED_SCALE as f64).round() as i64)
            }
            Some(a) => {
                return Err(Reject::invalid(
                    "amount",
                    format!("must be 0..={MAX_AMOUNT}, got {a}"),
                ));
            }
        };
        // Every field is read and checked before the event is built, and the event is
        // built as the value returned: built first and checked by reference (as
        // before), it was copied into the returned `Result` (312 bytes, a `memcpy`
        // call per message). The errors come in the same order as before.
        let contact_id = id("contact_id", raw.contact_id.take(), printable)?;
        let queue = id("queue", raw.queue.take(), printable)?;
        let agent_id = id("agent_id", raw.agent_id.take(), printable)?;
        let team = id("team", raw.team.take(), printable)?;
        let customer_id = id("customer_id", raw.customer_id.take(), printable)?;
        let to_agent_id = id("to_agent_id", raw.to_agent_id.take(), printable)?;
        let to_queue = id("to_queue", raw.to_queue.take(), printable)?;
        let talk_ms = duration("talk_ms", raw.talk_ms.take())?;
        let hold_ms = duration("hold_ms", raw.hold_ms.take())?;
        let wrap_ms = duration("wrap_ms", raw.wrap_ms.take())?;
        let reason = raw
            .reason
            .take()
            .map(|r| Cow::Owned(truncate(&r).to_owned()));
        let present = Present {
            contact: contact_id.is_some(),
            agent: agent_id.is_some(),
            channel: channel.is_some(),
            queue: queue.is_some(),
            amount: amount.is_some(),
            state: state.is_some(),
        };
        let score = self.check_required(kind, &present, raw.score.take())?;
        Ok(Event {
            event_id,
            kind,
            ts,
            contact_id,
            channel,
            queue,
            agent_id,
            team,
            customer_id,
            to_agent_id,
            to_queue,
            talk_ms,
            hold_ms,
            wrap_ms,
            amount,
            score,
            state,
            reason,
        })
    }

    /// Whether an event of `kind` with the fields `present` has what its type needs,
    /// and its score in fixed point (`score`, as the message gave it, checked on the
    /// scale of its type).
    fn check_required(
        &self,
        kind: EventType,
        present: &Present,
        score: Option<f64>,
    ) -> Result<Option<i64>, Reject> {
        let k = kind.as_str();
        if kind.is_contact_scoped() && !present.contact {
            return Err(Reject::missing("contact_id", k));
        }
        let need_agent = matches!(
            kind,
            EventType::ContactRouted
                | EventType::ContactAnswered
                | EventType::ContactFirstResponse
                | EventType::ContactTransferred
                | EventType::QaScored
                | EventType::AgentState
        );
        if need_agent && !present.agent {
            return Err(Reject::missing("agent_id", k));
        }
        match kind {
            EventType::ContactOffered => {
                if !present.channel {
                    return Err(Reject::missing("channel", k));
                }
                if !present.queue {
                    return Err(Reject::missing("queue", k));
                }
            }
            EventType::ContactConverted if !present.amount => {
                return Err(Reject::missing("amount", k));
            }
            EventType::SurveyResponded => {
                let s = score.ok_or_else(|| Reject::missing("score", k))?;
                let (lo, hi) = (self.csat_scale_min, self.csat_scale_max);
                if s.fract() != 0.0 || !(lo as f64..=hi as f64).contains(&s) {
                    return Err(Reject::invalid(
                        "score",
                        format!("must be an integer {lo}..={hi}, got {s}"),
                    ));
                }
                return Ok(Some(s as i64 * FIXED_SCALE));
            }
            EventType::QaScored => {
                let s = score.ok_or_else(|| Reject::missing("score", k))?;
                if !s.is_finite() || !(0.0..=100.0).contains(&s) {
                    return Err(Reject::invalid(
                        "score",
                        format!("must be 0..=100, got {s}"),
                    ));
                }
                return Ok(Some((s * FIXED_SCALE as f64).round() as i64));
            }
            EventType::AgentState if !present.state => {
                return Err(Reject::missing("state", k));
            }
            _ => {}
        }
        Ok(None)
    }
}

/// Which of the fields [`Decoder::check_required`] asks for an event has.
struct Present {
    contact: bool,
    agent: bool,
    channel: bool,
    queue: bool,
    amount: bool,
    state: bool,
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn classify_json_error(bytes: &[u8], e: &serde_json::Error) -> Reject {
    use serde_json::error::Category;
    match e.classify() {
        // A data error on a message that starts like an object is a field of the wrong type;
        // anything else valid-but-not-an-object (array, string, number) is `not_object`.
        Category::Data => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            if first == Some(&b'{') {
                Reject::new(RejectReason::InvalidField, e.to_string())
            } else {
                Reject::new(
                    RejectReason::NotObject,
                    "top-level JSON value is not an object",
                )
            }
        }
        // A number beyond f64 (`1e400`) is a value out of range, not broken syntax (the
        // parser does not say which field: `invalid_field` even for `ts`).
        Category::Syntax if e.to_string().starts_with("number out of range") => {
            Reject::new(RejectReason::InvalidField, e.to_string())
        }
        Category::Io | Category::Syntax | Category::Eof => {
            Reject::new(RejectReason::InvalidJson, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> RejectReason {
        decode(s.as_bytes()).expect_err("must reject").reason
    }

    #[test]
    fn decodes_offered_with_rfc3339_offset() {
        let e = decode(br#"{"event_id":"e1","type":"contact.offered","ts":"2026-11-23T09:15:02.123+08:00","contact_id":"c1","channel":"voice","queue":"sales","extra":{"x":1}}"#).unwrap();
        assert_eq!(e.kind, EventType::ContactOffered);
        assert_eq!(e.ts, parse_rfc3339("2026-11-23T01:15:02.123Z").unwrap());
        assert_eq!(e.channel, Some(Channel::Voice));
        assert_eq!(e.queue.as_deref(), Some("sales"));
    }

    #[test]
    fn decodes_epoch_millis_and_escaped_strings() {
        let e = decode(br#"{"event_id":"e\u0031","type":"contact.ended","ts":1795396502123,"contact_id":"c1","talk_ms":1500.4}"#).unwrap();
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.ts, 1_795_396_502_123);
        assert_eq!(e.talk_ms, Some(1500));
    }

    #[test]
    fn rejects_with_reasons() {
        assert_eq!(reason("{not json"), RejectReason::InvalidJson);
        assert_eq!(reason("[1,2]"), RejectReason::NotObject);
        assert_eq!(
            reason(r#"{"event_id":"e","type":"nope","ts":1795396502123}"#),
            RejectReason::UnknownType
        );
        assert_eq!(
            reason(r#"{"type":"contact.ended","ts":1795396502123,"contact_id":"c"}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(r#"{"event_id":"e","type":"contact.ended","ts":"yesterday","contact_id":"c"}"#),
            RejectReason::InvalidTimestamp
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","type":"contact.ended","ts":"2026-11-23T09:15:02","contact_id":"c"}"#
            ),
            RejectReason::InvalidTimestamp
        );
        assert_eq!(
            reason(r#"{"event_id":"e","type":"contact.ended","ts":0,"contact_id":"c"}"#),
            RejectReason::InvalidTimestamp
        );
        assert_eq!(
            reason(r#"{"event_id":"e","type":"contact.ended","ts":1795396502123}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","type":"contact.offered","ts":1795396502123,"contact_id":"c","queue":"q"}"#
            ),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","type":"contact.offered","ts":1795396502123,"contact_id":"c","queue":"q","channel":"fax"}"#
            ),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","type":"contact.converted","ts":1795396502123,"contact_id":"c","amount":-1}"#
            ),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","type":"survey.responded","ts":1795396502123,"contact_id":"c","score":6}"#
            ),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","type":"survey.responded","ts":1795396502123,"contact_id":"c","score":4.5}"#
            ),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","type":"qa.scored","ts":1795396502123,"contact_id":"c","agent_id":"a","score":101}"#
            ),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(r#"{"event_id":"e","type":"contact.ended","ts":1795396502123,"contact_id":7}"#),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(r#"{"event_id":"","type":"contact.ended","ts":1795396502123,"contact_id":"c"}"#),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(r#"{"event_id":"e","type":"agent.state","ts":1795396502123,"agent_id":"a"}"#),
            RejectReason::MissingField
        );
        let long = "x".repeat(129);
        assert_eq!(
            reason(&format!(
                r#"{{"event_id":"{long}","type":"contact.ended","ts":1795396502123,"contact_id":"c"}}"#
            )),
            RejectReason::InvalidField
        );
        let d = Decoder {
            max_message_bytes: 10,
            ..Decoder::default()
        };
        assert_eq!(
            d.decode(b"{\"a\":\"0123456789\"}").unwrap_err().reason,
            RejectReason::Oversize
        );
        assert_eq!(
            decode(b"\xff\xfe").unwrap_err().reason,
            RejectReason::InvalidJson
        );
    }

    #[test]
    fn rfc3339_common_leaves_the_rare_shapes_to_jiff() {
        for (text, fast) in [
            ("2024-02-29T23:59:59.999Z", Some(1_709_251_199_999)),
            ("2026-11-23T09:15:02.123+08:00", Some(1_795_396_502_123)),
            ("2026-11-23T01:15:02.1239Z", Some(1_795_396_502_123)),
            ("2026-11-23T01:15:02Z", Some(1_795_396_502_000)),
            ("2023-02-29T00:00:00Z", None),
            ("2026-11-23T01:15:60Z", None),
            ("2026-11-23t01:15:02Z", None),
            ("2026-11-23T01:15:02z", None),
            ("2026-11-23T01:15:02-00:00", None),
            ("2026-11-23T01:15:02.Z", None),
            ("1969-12-31T23:59:59Z", None),
        ] {
            assert_eq!(rfc3339_common(text.as_bytes()), fast, "{text}");
            let by_jiff = text
                .parse::<jiff::Timestamp>()
                .ok()
                .map(|t| t.as_millisecond());
            if fast.is_some() {
                assert_eq!(by_jiff, fast, "{text}");
            }
            assert_eq!(parse_rfc3339(text), by_jiff, "{text}");
        }
    }

    #[test]
    fn survey_score_respects_configured_scale() {
        let d = Decoder {
            csat_scale_min: 0,
            csat_scale_max: 10,
            ..Decoder::default()
        };
        let e = d.decode(br#"{"event_id":"e","type":"survey.responded","ts":1795396502123,"contact_id":"c","score":9}"#).unwrap();
        assert_eq!(e.score, Some(9 * FIXED_SCALE));
    }

    proptest::proptest! {
        /// The word-at-a-time check answers what a character-by-character one does.
        #[test]
        fn has_control_is_any_control_character(
            chars in proptest::collection::vec(proptest::sample::select(vec!['a', 'Z', '0', ' ', '~', '\u{0}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}', '\u{a0}', 'é', '\u{ff}', '\u{2028}', '😀']), 0..40),
        ) {
            let s: String = chars.into_iter().collect();
            proptest::prop_assert_eq!(has_control(&s), s.chars().any(char::is_control), "{:?}", s);
        }

        /// Hostile input never panics: arbitrary bytes, and valid events with bytes
        /// flipped, truncated or spliced, always come back as an event or a reject.
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn never_panics_on_mangled_events(cut in 0usize..200, pos in 0usize..200, byte in proptest::num::u8::ANY) {
            let good = br#"{"event_id":"e1","type":"contact.ended","ts":"2026-11-23T09:15:02.123+08:00","contact_id":"c1","talk_ms":1500,"hold_ms":20,"amount":1.5,"score":3}"#;
            let mut v = good.to_vec();
            let p = pos % v.len();
            v[p] = byte;
            v.truncate(cut.max(1).min(v.len()));
            let _ = decode(&v);
        }

        #[test]
        fn rfc3339_common_shape_agrees_with_jiff(
            secs in 86_400i64..253_000_000_000,
            offset_min in -1439i64..1440,
            frac_ns in 0u32..1_000_000_000,
            frac_digits in 0usize..10,
        ) {
            let local = jiff::Timestamp::from_second(secs + offset_min * 60).unwrap();
            let mut text = local.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            if frac_digits > 0 {
                text.push('.');
                text.push_str(&format!("{frac_ns:09}")[..frac_digits]);
            }
            if offset_min == 0 {
                text.push('Z');
            } else {
                let a = offset_min.abs();
                let sign = if offset_min < 0 { '-' } else { '+' };
                text.push_str(&format!("{sign}{:02}:{:02}", a / 60, a % 60));
            }
            let by_jiff = text.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond());
            proptest::prop_assert!(rfc3339_common(text.as_bytes()).is_some(), "{text}");
            proptest::prop_assert_eq!(rfc3339_common(text.as_bytes()), by_jiff, "{}", text);
        }

        #[test]
        fn rfc3339_common_never_disagrees_with_jiff(
            secs in 0i64..253_000_000_000,
            cut in 0usize..40,
            edits in proptest::collection::vec((0usize..40, proptest::sample::select(b"0123456789-+:.TZtz 9".to_vec())), 0..3),
        ) {
            let mut text = jiff::Timestamp::from_second(secs).unwrap().strftime("%Y-%m-%dT%H:%M:%S.%3f+05:30").to_string().into_bytes();
            for (pos, byte) in edits {
                if let Some(b) = text.get_mut(pos) {
                    *b = byte;
                }
            }
            text.truncate(cut.max(1));
            let Ok(text) = String::from_utf8(text) else { return Ok(()) };
            if let Some(fast) = rfc3339_common(text.as_bytes()) {
                let by_jiff = text.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond());
                proptest::prop_assert_eq!(Some(fast), by_jiff, "{}", text);
            }
        }

        /// Parsing checked text (the fast way) decodes exactly what parsing the bytes
        /// did: same event or same reject, detail included, for mangled events.
        #[test]
        fn text_and_bytes_parse_alike(cut in 0usize..220, pos in 0usize..220, byte in proptest::num::u8::ANY) {
            let good = br#"{"event_id":"e\u0031","type":"contact.ended","ts":"2026-11-23T09:15:02.123+08:00","contact_id":"c1","agent_id":"a\u00e9","talk_ms":1500,"hold_ms":20,"amount":1.5,"score":3,"x":[1,{"y":"\n"}]}"#;
            let mut v = good.to_vec();
            let p = pos % v.len();
            v[p] = byte;
            v.truncate(cut.max(1).min(v.len()));
            let d = Decoder::default();
            let by_bytes = match serde_json::from_slice::<Raw<'_>>(&v) {
                Ok(mut raw) => d.validate(&mut raw, false),
                Err(e) => Err(classify_json_error(&v, &e)),
            };
            let fast = d.decode(&v);
            // The object check in front of the parse answers non-objects either way.
            if v.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                proptest::prop_assert_eq!(format!("{fast:?}"), format!("{by_bytes:?}"));
            }
        }
    }
}
