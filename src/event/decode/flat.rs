//! The common message shape, read without serde's machinery.
//!
//! Producers send flat objects: string values without escapes and integer numbers,
//! one key each. [`scan`] reads exactly that and nothing more; on anything else (an
//! escape, a float, `null`, a nested value, a repeated key, a syntax error, …) it
//! answers `None` and serde_json reads the message as before, so rejects and their
//! details never change. serde_json stays the definition: a property test holds
//! [`scan`] to giving the same `Raw` whenever it answers at all.
//!
//! Why: decoding was two thirds of the instructions of parse + aggregate on one core
//! (docs/performance.md, "sixth round"), most of them in serde's per-field visitors
//! for values that need none of their generality.

use std::borrow::Cow;

use super::{Raw, RawTs};

/// The keys `Raw` knows, as bits of a "seen" mask (a repeated key goes to serde_json,
/// which rejects it as a duplicate field).
#[derive(Clone, Copy)]
enum Key {
    EventId,
    Type,
    Ts,
    ContactId,
    Channel,
    Queue,
    AgentId,
    Team,
    CustomerId,
    ToAgentId,
    ToQueue,
    TalkMs,
    HoldMs,
    WrapMs,
    Amount,
    Score,
    State,
    Reason,
}

impl Key {
    /// The key named `name`. Compared as one integer per name (its bytes and its
    /// length): a `match` on the byte strings made a `memcmp` call per candidate
    /// (`perf`: 2 % of `replay`'s samples, on the decoding thread).
    fn of(name: &[u8]) -> Option<Key> {
        const EVENT_ID: u128 = word_of(b"event_id");
        const TYPE: u128 = word_of(b"type");
        const TS: u128 = word_of(b"ts");
        const CONTACT_ID: u128 = word_of(b"contact_id");
        const CHANNEL: u128 = word_of(b"channel");
        const QUEUE: u128 = word_of(b"queue");
        const AGENT_ID: u128 = word_of(b"agent_id");
        const TEAM: u128 = word_of(b"team");
        const CUSTOMER_ID: u128 = word_of(b"customer_id");
        const TO_AGENT_ID: u128 = word_of(b"to_agent_id");
        const TO_QUEUE: u128 = word_of(b"to_queue");
        const TALK_MS: u128 = word_of(b"talk_ms");
        const HOLD_MS: u128 = word_of(b"hold_ms");
        const WRAP_MS: u128 = word_of(b"wrap_ms");
        const AMOUNT: u128 = word_of(b"amount");
        const SCORE: u128 = word_of(b"score");
        const STATE: u128 = word_of(b"state");
        const REASON: u128 = word_of(b"reason");
        // One fixed-size copy per length the keys have; other lengths name no key.
        let w = match name.len() {
            2 => word::<2>(name),
            4 => word::<4>(name),
            5 => word::<5>(name),
            6 => word::<6>(name),
            7 => word::<7>(name),
            8 => word::<8>(name),
            10 => word::<10>(name),
            11 => word::<11>(name),
            _ => None,
        }?;
        Some(match w {
            EVENT_ID => Key::EventId,
            TYPE => Key::Type,
            TS => Key::Ts,
            CONTACT_ID => Key::ContactId,
            CHANNEL => Key::Channel,
            QUEUE => Key::Queue,
            AGENT_ID => Key::AgentId,
            TEAM => Key::Team,
            CUSTOMER_ID => Key::CustomerId,
            TO_AGENT_ID => Key::ToAgentId,
            TO_QUEUE => Key::ToQueue,
            TALK_MS => Key::TalkMs,
            HOLD_MS => Key::HoldMs,
            WRAP_MS => Key::WrapMs,
            AMOUNT => Key::Amount,
            SCORE => Key::Score,
            STATE => Key::State,
            REASON => Key::Reason,
            _ => return None,
        })
    }

    /// The string field this key fills, if it is one.
    fn text<'r, 'a>(self, raw: &'r mut Raw<'a>) -> Option<&'r mut Option<Cow<'a, str>>> {
        Some(match self {
            Key::EventId => &mut raw.event_id,
            Key::Type => &mut raw.kind,
            Key::ContactId => &mut raw.contact_id,
            Key::Channel => &mut raw.channel,
            Key::Queue => &mut raw.queue,
            Key::AgentId => &mut raw.agent_id,
            Key::Team => &mut raw.team,
            Key::CustomerId => &mut raw.customer_id,
            Key::ToAgentId => &mut raw.to_agent_id,
            Key::ToQueue => &mut raw.to_queue,
            Key::State => &mut raw.state,
            Key::Reason => &mut raw.reason,
            Key::Ts | Key::TalkMs | Key::HoldMs | Key::WrapMs | Key::Amount | Key::Score => {
                return None;
            }
        })
    }

    /// The number field this key fills, if it is one.
    fn number<'r>(self, raw: &'r mut Raw<'_>) -> Option<&'r mut Option<f64>> {
        Some(match self {
            Key::TalkMs => &mut raw.talk_ms,
            Key::HoldMs => &mut raw.hold_ms,
            Key::WrapMs => &mut raw.wrap_ms,
            Key::Amount => &mut raw.amount,
            Key::Score => &mut raw.score,
            _ => return None,
        })
    }
}

/// A name of at most 15 bytes as one integer: its bytes from the lowest, its length
/// in the highest byte (so `"ts"` and `"ts\0"` differ).
const fn word_of(name: &[u8]) -> u128 {
    let mut x = (name.len() as u128) << 120;
    let mut i = 0;
    while i < name.len() && i < 15 {
        x |= (name[i] as u128) << (8 * i);
        i += 1;
    }
    x
}

/// [`word_of`] for a name of exactly `N` (at most 15) bytes, `None` otherwise.
#[inline]
fn word<const N: usize>(name: &[u8]) -> Option<u128> {
    let bytes: &[u8; N] = name.try_into().ok()?;
    let mut b = [0u8; 16];
    b.get_mut(..N)?.copy_from_slice(bytes);
    *b.get_mut(15)? = N as u8;
    Some(u128::from_le_bytes(b))
}

/// JSON's insignificant whitespace, from `i`.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The string starting with the quote at `i` and the index after its closing quote;
/// `None` for an escape or a control character (serde_json's cases).
fn string(text: &str, i: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let body = b.get(i + 1..)?;
    let len = special_byte(body)?;
    if body.get(len) != Some(&b'"') {
        return None;
    }
    // Quotes are ASCII, so both ends are character boundaries of the (valid) text.
    Some((text.get(i + 1..i + 1 + len)?, i + 2 + len))
}

/// The index of the first `"`, `\` or control character in `body`. Eight bytes at a
/// time (the bit tricks of "Bit Twiddling Hacks", "determine if a word has a byte
/// less than n"): a byte-by-byte search was a fifth of decoding's instructions.
fn special_byte(body: &[u8]) -> Option<usize> {
    use super::{WORD_ONES, bytes_below};
    /// High bit set in the lowest byte that is special (and maybe in later bytes, which
    /// a borrow can reach; never in an earlier one).
    fn flags(x: u64) -> u64 {
        let quote = x ^ (WORD_ONES * u64::from(b'"'));
        let escape = x ^ (WORD_ONES * u64::from(b'\\'));
        bytes_below(quote, 1) | bytes_below(escape, 1) | bytes_below(x, 0x20)
    }
    let mut at = 0;
    // Sixteen bytes at a time where the CPU compares them at once: most strings of a
    // message (keys, ids) are shorter, so their end is found in one step.
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = body.get(at..at + 16) {
        // SAFETY: `specials_16` needs SSE2 only, and SSE2 is part of the x86_64
        // baseline: every CPU this code is compiled for has it.
        let m = unsafe { specials_16(chunk) };
        if m != 0 {
            return Some(at + m.trailing_zeros() as usize);
        }
        at += 16;
    }
    while let Some(word) = body.get(at..at + 8) {
        let x = u64::from_le_bytes(word.try_into().ok()?);
        let f = flags(x);
        if f != 0 {
            return Some(at + (f.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = body.get(at..)?;
    Some(
        at + tail
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?,
    )
}

/// A bit per byte of `chunk` (16 bytes; lowest bit first) that is `"`, `\\` or a
/// control character. SSE2, which every x86_64 CPU has; the bytes are loaded as two
/// integers, not through a pointer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn specials_16(chunk: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8,
    };
    let half = |r: std::ops::Range<usize>| {
        chunk
            .get(r)
            .and_then(|h| h.try_into().ok())
            .map_or(0, i64::from_le_bytes)
    };
    let x = _mm_set_epi64x(half(8..16), half(0..8));
    let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
    let escape = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
    // Unsigned `x <= 0x1F`: the smaller of `x` and 0x1F is `x` itself.
    let control = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1F)), x);
    _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, escape), control)) as u32
}

/// Powers of ten a decimal's digits are divided by (all exact in an `f64`).
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A number as the flat path reads it.
enum Number {
    /// At most 18 digits: always an `i64`.
    Integer(i64),
    /// A decimal fraction (`492.08`).
    Decimal(f64),
}

/// A non-negative number starting at `i`, and the index after it: an integer of at
/// most 18 digits, or a decimal fraction of at most 15 digits in all; no sign, no
/// exponent, no leading zero. serde_json computes a decimal as its digits (exact
/// below 2^53) divided by a power of ten (exact up to 10^22), and so does this: the
/// same correctly rounded `f64`.
fn number(b: &[u8], i: usize) -> Option<(Number, usize)> {
    fn digits(b: &[u8], from: usize) -> usize {
        b.get(from..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    }
    let value = |from: usize, to: usize| b.get(from..to).and_then(super::ascii_decimal);
    let whole = digits(b, i);
    if whole == 0 || (whole > 1 && b.get(i) == Some(&b'0')) {
        return None;
    }
    let mut end = i + whole;
    let n = if b.get(end) == Some(&b'.') {
        let frac = digits(b, end + 1);
        if frac == 0 || whole + frac > 15 {
            return None;
        }
        let significand = value(i, end)? * 10i64.pow(frac as u32) + value(end + 1, end + 1 + frac)?;
        end += 1 + frac;
        let scale = *POW10.get(frac)?;
        Number::Decimal(significand as f64 / scale)
    } else {
        if whole > 18 {
            return None;
        }
        Number::Integer(value(i, end)?)
    };
    if let Some(b'e' | b'E') = b.get(end) {
        return None;
    }
    Some((n, end))
}

/// Reads a flat message into `raw` (which must be `Raw::default()`) and says whether
/// it could: when not, serde_json decides (see the module docs) and `raw` holds
/// whatever was read before the flat path stepped aside. Filled in place, not
/// returned: a `Raw` (~430 bytes) handed back through an `Option` was a `memcpy`
/// call per message (docs/performance.md, "twenty-first round").
pub(super) fn scan<'a>(text: &'a str, raw: &mut Raw<'a>) -> bool {
    scan_into(text, raw).is_some()
}

fn scan_into<'a>(text: &'a str, raw: &mut Raw<'a>) -> Option<()> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        let mut seen = 0u32;
        loop {
            let (name, next) = string(text, i)?;
            i = skip_ws(b, next);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            let key = Key::of(name.as_bytes());
            if let Some(k) = key {
                let bit = 1u32 << k as u32;
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
            }
            if b.get(i) == Some(&b'"') {
                let (value, next) = string(text, i)?;
                i = next;
                match key {
                    Some(Key::Ts) => raw.ts = Some(RawTs::Text(Cow::Borrowed(value))),
                    Some(k) => *k.text(raw)? = Some(Cow::Borrowed(value)),
                    // Unknown keys are ignored, as serde's derive ignores them.
                    None => {}
                }
            } else {
                let (n, next) = number(b, i)?;
                i = next;
                match (key, n) {
                    (Some(Key::Ts), Number::Integer(n)) => raw.ts = Some(RawTs::Millis(n)),
                    (Some(Key::Ts), Number::Decimal(_)) => return None,
                    // serde_json hands a (non-negative) integer to an `f64` field as
                    // `n as f64`.
                    (Some(k), Number::Integer(n)) => *k.number(raw)? = Some(n as f64),
                    (Some(k), Number::Decimal(x)) => *k.number(raw)? = Some(x),
                    (None, _) => {}
                }
            }
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::super::Raw;

    /// The flat path's reading of `text`, or `None` where it steps aside.
    fn scan(text: &str) -> Option<Raw<'_>> {
        let mut raw = Raw::default();
        super::scan(text, &mut raw).then_some(raw)
    }

    /// serde_json's reading of `text`, the definition `scan` must agree with.
    fn by_serde(text: &str) -> Option<Raw<'_>> {
        serde_json::from_str::<Raw<'_>>(text).ok()
    }

    #[test]
    fn generated_events_take_the_flat_path_and_read_as_serde_reads_them() {
        use crate::source::sim::{SimConfig, Simulator};
        let mut sim = Simulator::new(SimConfig::default());
        for _ in 0..20_000 {
            let (_, line) = sim.next_line();
            let fast = scan(&line);
            assert!(fast.is_some(), "not read by the flat path: {line}");
            assert_eq!(fast, by_serde(&line), "{line}");
        }
    }

    /// Every key is found by its name, and nothing else names a key: the name with
    /// a byte changed, added or cut.
    #[test]
    fn keys_are_found_by_their_exact_names() {
        let names = [
            "event_id",
            "type",
            "ts",
            "contact_id",
            "channel",
            "queue",
            "agent_id",
            "team",
            "customer_id",
            "to_agent_id",
            "to_queue",
            "talk_ms",
            "hold_ms",
            "wrap_ms",
            "amount",
            "score",
            "state",
            "reason",
        ];
        let mut found = std::collections::HashSet::new();
        for n in names {
            let k = super::Key::of(n.as_bytes()).unwrap_or_else(|| panic!("{n} not found"));
            assert!(found.insert(k as u32), "{n} shares a key");
            let mut longer = n.as_bytes().to_vec();
            longer.push(0);
            assert!(super::Key::of(&longer).is_none(), "{n} with a NUL");
            longer.pop();
            longer.pop();
            assert!(super::Key::of(&longer).is_none(), "{n} cut");
            for i in 0..n.len() {
                let mut v = n.as_bytes().to_vec();
                v[i] ^= 0x20;
                assert!(super::Key::of(&v).is_none(), "{n} changed at {i}");
            }
        }
        for other in ["", "x", "tss", "Type", "event_idx", "customer_id_", "ts\0"] {
            assert!(super::Key::of(other.as_bytes()).is_none(), "{other}");
        }
    }

    #[test]
    fn anything_unusual_goes_to_serde() {
        for text in [
            r#"{"event_id":"e\u0031","type":"contact.ended"}"#,
            r#"{"event_id":"e1","event_id":"e2"}"#,
            r#"{"event_id":"e1",}"#,
            r#"{"talk_ms":1500.}"#,
            r#"{"talk_ms":.5}"#,
            r#"{"amount":1234567890.123456}"#,
            r#"{"hold_ms":0.30000000000000004}"#,
            r#"{"ts":1795396502123.5}"#,
            r#"{"talk_ms":1e3}"#,
            r#"{"talk_ms":-1}"#,
            r#"{"talk_ms":01}"#,
            r#"{"talk_ms":null}"#,
            r#"{"ts":1795396502123456789012}"#,
            r#"{"x":[1,2],"type":"contact.ended"}"#,
            r#"{"x":true}"#,
            r#"{"queue":7}"#,
            r#"{"talk_ms":"7"}"#,
            "{\"queue\":\"a\tb\"}",
            r#"{"queue":"a"} x"#,
            r#"{"queue":"a""#,
            r#"{"queue" "a"}"#,
            r#"["queue","a"]"#,
        ] {
            assert_eq!(scan(text), None, "{text}");
        }
    }

    #[test]
    fn reads_whitespace_unknown_keys_and_empty_objects_as_serde_does() {
        for text in [
            "{}",
            " { } \n",
            "{ \"event_id\" : \"e1\" ,\r\n\t\"ts\" : 1795396502123 , \"x\" : \"y\", \"n\": 0 }",
            r#"{"talk_ms":1500.4,"amount":492.08,"score":0.1,"hold_ms":0.30000000000004}"#,
            r#"{"reason":"lunch","score":0,"amount":12,"ts":"2026-11-23T09:15:02.123+08:00","queue":"é"}"#,
        ] {
            let fast = scan(text);
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, by_serde(text), "{text}");
        }
    }

    proptest::proptest! {
        /// The sixteen- and eight-bytes-at-a-time search finds what a byte-by-byte one
        /// finds.
        #[test]
        fn special_byte_is_the_first_special_byte(
            // Ordinary bytes first (several words with nothing to find), then bytes of
            // which a third are special.
            plain in proptest::collection::vec(proptest::sample::select(b"az09 -_.:\x20\x21\x7f\x80\x9f\xa0\xff".to_vec()), 0..70),
            rest in proptest::collection::vec(proptest::sample::select(b"ab\"\\\x00\x1f\x20\x7f\x80\x9f\xa0\xff!#[]".to_vec()), 0..40),
        ) {
            let body = [plain, rest].concat();
            let expect = body.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            proptest::prop_assert_eq!(super::special_byte(&body), expect);
        }

        /// Whatever a mangled message is, `scan` either leaves it to serde_json or
        /// reads exactly what serde_json reads.
        #[test]
        fn never_disagrees_with_serde(
            which in 0usize..3,
            edits in proptest::collection::vec((0usize..200, proptest::sample::select(b"\"\\{}[],:0123456789.-e aZ\t\x01".to_vec())), 0..4),
            cut in 0usize..200,
        ) {
            let good: [&[u8]; 3] = [
                br#"{"event_id":"sim-1-9","type":"contact.ended","ts":"2026-11-23T09:15:02.123Z","contact_id":"c1","agent_id":"agent-1","team":"alpha","talk_ms":1500,"hold_ms":20}"#,
                br#"{"event_id":"sim-1-2","type":"agent.state","ts":1793577600000,"agent_id":"agent-9773","team":"charlie","state":"available","reason":"x"}"#,
                br#"{"event_id":"e","type":"contact.converted","ts":1,"contact_id":"c","amount":492.08,"score":3,"extra":"q"}"#,
            ];
            let mut v = good[which].to_vec();
            for (pos, byte) in edits {
                let p = pos % v.len();
                v[p] = byte;
            }
            v.truncate(cut.max(1).min(v.len()));
            let text = String::from_utf8(v).unwrap();
            if let Some(fast) = scan(&text) {
                proptest::prop_assert_eq!(Some(fast), by_serde(&text), "{}", text);
            }
        }
    }
}
