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
    /// The key named `name`: the name as one integer ([`word_of`]), looked up in a
    /// perfect hash table ([`SLOTS`]) and compared once. A `match` on the byte
    /// strings made a `memcmp` call per candidate (`perf`: 2 % of `replay`'s
    /// samples), and a `match` on the integers a chain of comparisons, 25
    /// instructions a key (callgrind, docs/performance.md, "thirty-sixth round").
    fn of(name: &[u8]) -> Option<Key> {
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
        match SLOTS.get(slot(w)).copied().flatten() {
            Some((named, key)) if named == w => Some(key),
            _ => None,
        }
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

/// Every key and its name.
const NAMES: [(&[u8], Key); 18] = [
    (b"event_id", Key::EventId),
    (b"type", Key::Type),
    (b"ts", Key::Ts),
    (b"contact_id", Key::ContactId),
    (b"channel", Key::Channel),
    (b"queue", Key::Queue),
    (b"agent_id", Key::AgentId),
    (b"team", Key::Team),
    (b"customer_id", Key::CustomerId),
    (b"to_agent_id", Key::ToAgentId),
    (b"to_queue", Key::ToQueue),
    (b"talk_ms", Key::TalkMs),
    (b"hold_ms", Key::HoldMs),
    (b"wrap_ms", Key::WrapMs),
    (b"amount", Key::Amount),
    (b"score", Key::Score),
    (b"state", Key::State),
    (b"reason", Key::Reason),
];

/// The multiplier of [`slot`]: an odd number, found by trying random ones, that sends
/// the 18 names to 18 different slots of 32. Building [`SLOTS`] checks it: a name
/// added or changed that collides fails the build, and another multiplier is needed.
const SLOT_MUL: u64 = 0xb62b_a1d7_9d28_4935;

/// A name's slot in [`SLOTS`] (multiplicative hashing of its [`word_of`]).
const fn slot(w: u128) -> usize {
    ((((w as u64) ^ ((w >> 64) as u64)).wrapping_mul(SLOT_MUL)) >> 59) as usize
}

/// The keys by [`slot`] of their names, with the name to compare.
const SLOTS: [Option<(u128, Key)>; 32] = {
    let mut table = [None; 32];
    let mut i = 0;
    while i < NAMES.len() {
        let w = word_of(NAMES[i].0);
        let s = slot(w);
        assert!(
            table[s].is_none(),
            "two key names share a slot: change SLOT_MUL"
        );
        table[s] = Some((w, NAMES[i].1));
        i += 1;
    }
    table
};

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

/// Where a message's quotes are, and the bytes no raw string may hold (`\\` and the
/// controls below 0x20), as one bit per byte in words of 64 bytes, computed sixteen
/// bytes at a time before the message is read (the "structural index" of simdjson's
/// first stage, for the only structure the flat path reads). A string is then two
/// consecutive quotes, found with a `trailing_zeros` each, instead of a search from
/// its opening quote: that search and its bounds checks were half of decoding's
/// instructions (callgrind, docs/performance.md, "thirty-sixth round").
struct Index {
    quotes: [u64; INDEX_WORDS],
    specials: [u64; INDEX_WORDS],
    /// Whether `specials` has any bit: a compact message has none (no whitespace, no
    /// escape), and its strings need no check of their own.
    any_special: bool,
    /// Whether every byte is printable ASCII (0x20–0x7E): then no id of the message
    /// holds a control character, and validation need not look ([`scan`]'s answer).
    printable: bool,
    /// Quotes not yet read: the word `word` with the quotes before the cursor cleared.
    word: usize,
    left: u64,
}

/// Words of 64 bytes an [`Index`] holds: messages up to 1 KiB, on the stack. Events
/// are a few hundred bytes (ids are at most 128 bytes each); a longer message goes to
/// serde_json, which reads it the same way, only slower.
const INDEX_WORDS: usize = 16;

impl Index {
    /// The index of `b`, `None` when it is longer than the index holds.
    fn of(b: &[u8]) -> Option<Index> {
        if b.len() > INDEX_WORDS * 64 {
            return None;
        }
        let mut quotes = [0u64; INDEX_WORDS];
        let mut specials = [0u64; INDEX_WORDS];
        let (mut any, mut high) = (0, false);
        let mut blocks = b.chunks_exact(64);
        for (n, block) in (&mut blocks).enumerate() {
            let (q, s, h) = block_masks(block);
            *quotes.get_mut(n)? = q;
            *specials.get_mut(n)? = s;
            any |= s;
            high |= h;
        }
        let tail = blocks.remainder();
        if !tail.is_empty() {
            let (q, s, h) = if b.len() >= 64 {
                // The last 64 bytes, overlapping the last whole word: their masks'
                // high bits are the tail's (no copy into a padded block, which was a
                // `memcpy` call per message).
                let (q, s, h) = block_masks(b.get(b.len() - 64..)?);
                // The bytes before the tail were read in the last whole word: their
                // `high` counts already.
                let shift = 64 - tail.len();
                (q >> shift, s >> shift, h)
            } else {
                // Padded with spaces, which are neither quotes nor specials.
                let mut padded = [b' '; 64];
                padded.get_mut(..tail.len())?.copy_from_slice(tail);
                block_masks(&padded)
            };
            let n = b.len() / 64;
            *quotes.get_mut(n)? = q;
            *specials.get_mut(n)? = s;
            any |= s;
            high |= h;
        }
        Some(Index {
            left: quotes[0],
            quotes,
            specials,
            any_special: any != 0,
            printable: any == 0 && !high,
            word: 0,
        })
    }

    /// The next quote not yet read.
    #[inline(always)]
    fn next_quote(&mut self) -> Option<usize> {
        while self.left == 0 {
            self.word += 1;
            self.left = *self.quotes.get(self.word)?;
        }
        let at = self.word * 64 + self.left.trailing_zeros() as usize;
        self.left &= self.left - 1;
        Some(at)
    }

    /// Whether a special byte lies in `from..to`.
    #[inline(always)]
    fn special_in(&self, from: usize, to: usize) -> bool {
        self.any_special && self.special_in_words(from, to)
    }

    fn special_in_words(&self, from: usize, to: usize) -> bool {
        if from >= to {
            return false;
        }
        let (first, last) = (from / 64, (to - 1) / 64);
        (first..=last).any(|w| {
            let mut m = self.specials.get(w).copied().unwrap_or(0);
            if w == first {
                m &= u64::MAX << (from % 64);
            }
            if w == last {
                m &= u64::MAX >> (63 - (to - 1) % 64);
            }
            m != 0
        })
    }

    /// The string whose opening quote is at `i`, and the index after its closing
    /// quote; `None` for an escape or a control character (serde_json's cases).
    #[inline(always)]
    fn string<'a>(&mut self, text: &'a str, i: usize) -> Option<(&'a str, usize)> {
        // Every quote before `i` was read as one of a string's two: the bytes the flat
        // path steps over between strings (whitespace, `:`, `,`, digits) hold none.
        if self.next_quote()? != i {
            return None;
        }
        let close = self.next_quote()?;
        if self.special_in(i + 1, close) {
            return None;
        }
        // SAFETY: `i < close < text.len()` (quotes are found in `text`'s bytes only, the
        // padding is spaces), and both are quotes, ASCII, so `i + 1` and `close` are
        // character boundaries of the valid UTF-8 `text`. (`get`'s checks of the same
        // were a quarter of a string's instructions.)
        Some((unsafe { text.get_unchecked(i + 1..close) }, close + 1))
    }
}

/// The quotes and the special bytes (`\\`, below 0x20) of a 64-byte block, a bit per
/// byte from the lowest, and whether it holds a byte above ASCII's printable range
/// (0x7F and up).
#[inline]
fn block_masks(block: &[u8]) -> (u64, u64, bool) {
    // SAFETY: `masks_64` needs SSE2 only, and SSE2 is part of the x86_64 baseline:
    // every CPU this code is compiled for has it.
    #[cfg(target_arch = "x86_64")]
    return unsafe { masks_64(block) };
    #[cfg(not(target_arch = "x86_64"))]
    masks_64(block)
}

/// [`block_masks`] with SSE2, sixteen bytes at a time (inside SSE2's target feature,
/// so that its intrinsics inline). The bytes are loaded as two integers, not through
/// a pointer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn masks_64(block: &[u8]) -> (u64, u64, bool) {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8, _mm_setzero_si128,
    };
    let (mut quotes, mut specials) = (0u64, 0u64);
    let mut high = _mm_setzero_si128();
    for (n, chunk) in block.chunks_exact(16).enumerate() {
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
        quotes |= u64::from(_mm_movemask_epi8(quote) as u16) << (16 * n);
        specials |= u64::from(_mm_movemask_epi8(_mm_or_si128(escape, control)) as u16) << (16 * n);
        // 0x80 and up have the sign bit, read once for the block; 0x7F is compared.
        let del = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7F));
        high = _mm_or_si128(high, _mm_or_si128(x, del));
    }
    (quotes, specials, _mm_movemask_epi8(high) != 0)
}

/// [`block_masks`] a byte at a time, where SSE2 is not the baseline.
#[cfg(not(target_arch = "x86_64"))]
fn masks_64(block: &[u8]) -> (u64, u64, bool) {
    let (mut quotes, mut specials, mut high) = (0u64, 0u64, false);
    for (n, &c) in block.iter().enumerate() {
        quotes |= u64::from(c == b'"') << n;
        specials |= u64::from(c == b'\\' || c < 0x20) << n;
        high |= c >= 0x7F;
    }
    (quotes, specials, high)
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

/// What [`scan`] learnt of a message it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Read {
    /// Every byte of the message is printable ASCII (0x20–0x7E), so none of its ids
    /// holds a control character: validation need not look for one.
    pub printable: bool,
}

/// Reads a flat message into `raw` (which must be `Raw::default()`), or `None` when
/// it cannot: then serde_json decides (see the module docs) and `raw` holds
/// whatever was read before the flat path stepped aside. Filled in place, not
/// returned: a `Raw` (~430 bytes) handed back through an `Option` was a `memcpy`
/// call per message (docs/performance.md, "twenty-first round").
pub(super) fn scan<'a>(text: &'a str, raw: &mut Raw<'a>) -> Option<Read> {
    let b = text.as_bytes();
    let mut index = Index::of(b)?;
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
            let (name, next) = index.string(text, i)?;
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
                let (value, next) = index.string(text, i)?;
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
    (skip_ws(b, i) == b.len()).then_some(Read {
        printable: index.printable,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Raw;

    /// The flat path's reading of `text`, or `None` where it steps aside.
    fn scan(text: &str) -> Option<Raw<'_>> {
        let mut raw = Raw::default();
        super::scan(text, &mut raw).map(|_| raw)
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

    /// A message longer than the index holds (1 KiB) is left to serde_json, which
    /// reads it; one just inside is read by the flat path, as serde_json reads it.
    #[test]
    fn long_messages_go_to_serde() {
        let with_note = |n: usize| {
            format!(
                r#"{{"event_id":"e1","type":"contact.ended","note":"{}","ts":1}}"#,
                "x".repeat(n)
            )
        };
        let inside = with_note(1024 - with_note(0).len());
        assert_eq!(inside.len(), 1024);
        assert!(scan(&inside).is_some());
        assert_eq!(scan(&inside), by_serde(&inside));
        let over = with_note(1025 - with_note(0).len());
        assert_eq!(scan(&over), None);
        assert!(by_serde(&over).is_some());
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
        /// The index marks exactly the quotes and the special bytes, at any length
        /// (whole 64-byte words and a padded tail), and finds a special byte in any
        /// range of them.
        #[test]
        fn the_index_marks_every_quote_and_special_byte(
            body in proptest::collection::vec(proptest::sample::select(b"az09 -_.:\x20\x21\x7f\x80\xff\"\\\x00\x1f".to_vec()), 0..1025),
            from in 0usize..300,
            len in 0usize..300,
        ) {
            let mut index = super::Index::of(&body).unwrap();
            let quotes: Vec<usize> = std::iter::from_fn(|| index.next_quote()).collect();
            let expect: Vec<usize> = (0..body.len()).filter(|&i| body[i] == b'"').collect();
            proptest::prop_assert_eq!(quotes, expect);
            let special = |c: u8| c == b'\\' || c < 0x20;
            let (from, to) = (from.min(body.len()), (from + len).min(body.len()));
            proptest::prop_assert_eq!(
                index.special_in(from, to),
                body[from..to].iter().any(|&c| special(c)),
                "{}..{}", from, to
            );
        }

        /// Whatever a mangled message is, `scan` either leaves it to serde_json or
        /// reads exactly what serde_json reads.
        #[test]
        fn never_disagrees_with_serde(
            which in 0usize..3,
            edits in proptest::collection::vec((0usize..200, proptest::sample::select(b"\"\\{}[],:0123456789.-e aZ\t\x01\x7f".to_vec())), 0..4),
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
            let mut raw = super::Raw::default();
            if let Some(read) = super::scan(&text, &mut raw) {
                proptest::prop_assert_eq!(Some(raw), by_serde(&text), "{}", text);
                proptest::prop_assert_eq!(
                    read.printable,
                    text.bytes().all(|c| (0x20..0x7F).contains(&c)),
                    "{}", text
                );
            }
        }
    }
}
