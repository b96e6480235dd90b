//! A settled contact's packed form: its events and facts as one byte string.
//!
//! The bytes are postcard's encoding of `(base, events, facts)`, every time made
//! relative to `base` (the first event's), so that variable-length integers keep
//! them to a byte or two. [`encode`] writes those bytes by hand instead of through
//! serde: serde's per-field calls were most of packing's cost, about 5 % of the
//! engine's time (docs/performance.md, "twelfth round"). Unpacking (rare: a late
//! event for a settled contact) stays postcard's, so the format is postcard's both
//! by construction and by test (`encode_is_postcard`): checkpoints, which hold
//! packed bytes, are unchanged.
//!
//! postcard's rules used here: unsigned integers above one byte as LEB128 varints,
//! signed ones zigzagged first; `bool` and `u8` as one byte; `Option` as a 0 / 1
//! byte before the value; an enum as its variant's index (a varint) before its
//! fields; a sequence as its length (a varint) before its elements; structs and
//! tuples as their fields in order; newtypes (`Sym`, `NonZeroU32`) as their inside.

use super::acc::Measure;
use super::contact::{CEvent, Fact};
use super::intern::Sym;
use crate::event::Millis;

/// Most bytes one event or one fact takes (see [`encode_event`], [`encode_fact`]):
/// enough room is reserved up front that no push reallocates.
const EVENT_MAX: usize = 80;
const FACT_MAX: usize = 48;

/// Append the packed form of `(base, events, facts)` to `out`, each time stored as
/// its (wrapping) difference from `base`.
pub(super) fn encode(base: Millis, events: &[CEvent], facts: &[Fact], out: &mut Vec<u8>) {
    let at = out.len();
    // Zeroed room for the most the contact can take, cut to what was written.
    out.resize(
        at + 20 + EVENT_MAX * events.len() + FACT_MAX * facts.len(),
        0,
    );
    let mut b = Buf {
        b: &mut out[at..],
        n: 0,
    };
    signed(&mut b, base);
    varint(&mut b, events.len() as u64);
    for e in events {
        encode_event(&mut b, e, base);
    }
    varint(&mut b, facts.len() as u64);
    for f in facts {
        encode_fact(&mut b, f, base);
    }
    let n = b.n;
    out.truncate(at + n);
}

/// The bytes written so far into room made beforehand. Pushed a byte at a time onto
/// the output vector instead, every byte stored reloaded the vector's length and
/// capacity (a byte store may alias them), about a third of encoding's instructions
/// (docs/performance.md, "thirty-seventh round"); here the count stays in a register.
struct Buf<'a> {
    b: &'a mut [u8],
    n: usize,
}

impl Buf<'_> {
    #[inline(always)]
    fn push(&mut self, x: u8) {
        // In bounds: `encode` makes room for the most each event (`EVENT_MAX`) and
        // fact (`FACT_MAX`) can take; were it ever short, this panics in the property
        // tests (which encode extreme values) rather than writing past the room.
        self.b[self.n] = x;
        self.n += 1;
    }
}

fn encode_event(out: &mut Buf<'_>, e: &CEvent, base: Millis) {
    signed(out, e.ts.wrapping_sub(base));
    // Field-less enums without explicit discriminants: `as` gives the declaration
    // index, which is serde's variant index.
    varint(out, e.kind as u64);
    wide_varint(out, e.id_hash);
    opt_sym(out, e.agent);
    opt_sym(out, e.team);
    opt_sym(out, e.queue);
    match e.channel {
        Some(c) => {
            out.push(1);
            varint(out, c as u64);
        }
        None => out.push(0),
    }
    opt_sym(out, e.to_agent);
    for d in [e.talk_ms, e.hold_ms, e.wrap_ms] {
        match d {
            Some(v) => {
                out.push(1);
                varint(out, u64::from(v));
            }
            None => out.push(0),
        }
    }
    signed(out, e.value);
}

fn encode_fact(out: &mut Buf<'_>, f: &Fact, base: Millis) {
    signed(out, f.ts.wrapping_sub(base));
    varint(out, f.side as u64);
    match f.measure {
        Measure::QueueOutcome {
            answered,
            wait_ms,
            short,
            within,
        } => {
            out.push(0);
            out.push(u8::from(answered));
            varint(out, wait_ms);
            out.push(u8::from(short));
            out.push(u8::from(within));
        }
        Measure::Presented => out.push(1),
        Measure::AgentAnswered { wait_ms, within } => {
            out.push(2);
            match wait_ms {
                Some(w) => {
                    out.push(1);
                    varint(out, w);
                }
                None => out.push(0),
            }
            out.push(u8::from(within));
        }
        Measure::AgentAbandoned => out.push(3),
        Measure::Handled { handle_ms } => {
            out.push(4);
            varint(out, handle_ms);
        }
        Measure::FirstResponse { frt_ms } => {
            out.push(5);
            varint(out, frt_ms);
        }
        Measure::Resolved { fcr } => {
            out.push(6);
            out.push(u8::from(fcr));
        }
        Measure::Converted { first, amount } => {
            out.push(7);
            out.push(u8::from(first));
            signed(out, amount);
        }
        Measure::Csat { score, positive } => {
            out.push(8);
            signed(out, score);
            out.push(u8::from(positive));
        }
        Measure::Qa { score } => {
            out.push(9);
            signed(out, score);
        }
    }
    varint(out, u64::from(f.queue.raw()));
    varint(out, u64::from(f.channel.raw()));
    opt_sym(out, f.agent);
    varint(out, u64::from(f.team.raw()));
}

#[inline(always)]
fn opt_sym(out: &mut Buf<'_>, s: Option<Sym>) {
    match s {
        Some(s) => {
            out.push(1);
            varint(out, u64::from(s.raw()));
        }
        None => out.push(0),
    }
}

/// LEB128: seven bits per byte, lowest first, the high bit set on all but the last.
#[inline(always)]
fn varint(out: &mut Buf<'_>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// [`varint`] of a value that is usually 57 bits or more (an id hash: uniform over
/// `u64`, so nine or ten bytes): its low 56 bits' eight bytes made in a word and
/// stored at once, the rest by [`varint`]'s loop. The hashes are about a third of a
/// packed contact's bytes; written byte by byte, each byte cost a compare, a branch and
/// a bounds check (docs/performance.md, "thirty-seventh round").
#[inline(always)]
fn wide_varint(out: &mut Buf<'_>, v: u64) {
    if v >> 56 == 0 {
        varint(out, v);
        return;
    }
    // Seven-bit groups of the low 56 bits, one per byte, each with its high bit set:
    // halves, quarters, then eighths moved apart in three masked shifts.
    let x = v & ((1 << 56) - 1);
    let x = (x & 0x0000_0000_0FFF_FFFF) | ((x & 0x00FF_FFFF_F000_0000) << 4);
    let x = (x & 0x0000_3FFF_0000_3FFF) | ((x & 0x0FFF_C000_0FFF_C000) << 2);
    let x = (x & 0x007F_007F_007F_007F) | ((x & 0x3F80_3F80_3F80_3F80) << 1);
    out.b[out.n..out.n + 8].copy_from_slice(&(x | 0x8080_8080_8080_8080).to_le_bytes());
    out.n += 8;
    varint(out, v >> 56);
}

/// Zigzag (0, −1, 1, −2, … as 0, 1, 2, 3, …), then [`varint`].
#[inline(always)]
fn signed(out: &mut Buf<'_>, v: i64) {
    varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use proptest::prelude::*;

    use super::super::contact::Side;
    use super::*;
    use crate::engine::contact::Ms;
    use crate::event::{Channel, EventType};

    /// Symbols small and large (one to five varint bytes).
    fn sym() -> impl Strategy<Value = Sym> {
        prop_oneof![1u32..200, 1u32..=u32::MAX]
            .prop_map(|n| Sym::from_raw(NonZeroU32::new(n).unwrap()))
    }

    /// Times near a base (the usual case) and anywhere (wrapping differences).
    fn time() -> impl Strategy<Value = Millis> {
        prop_oneof![1_700_000_000_000i64..1_700_100_000_000, any::<i64>()]
    }

    fn event() -> impl Strategy<Value = CEvent> {
        (
            (time(), 0..EventType::ALL.len(), any::<u64>()),
            (
                proptest::option::of(sym()),
                proptest::option::of(sym()),
                proptest::option::of(sym()),
            ),
            (proptest::option::of(0..5usize), proptest::option::of(sym())),
            (
                proptest::option::of(any::<u32>()),
                proptest::option::of(0u32..1000),
                proptest::option::of(any::<u32>()),
            ),
            any::<i64>(),
        )
            .prop_map(
                |((ts, kind, id_hash), (agent, team, queue), (channel, to_agent), (t, h, w), v)| {
                    CEvent {
                        ts,
                        kind: EventType::ALL[kind],
                        id_hash,
                        agent,
                        team,
                        queue,
                        channel: channel.map(|c| Channel::ALL[c]),
                        to_agent,
                        talk_ms: t.map(Ms::new),
                        hold_ms: h.map(Ms::new),
                        wrap_ms: w.map(Ms::new),
                        value: v,
                    }
                },
            )
    }

    fn measure() -> impl Strategy<Value = Measure> {
        prop_oneof![
            (any::<bool>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
                |(answered, wait_ms, short, within)| Measure::QueueOutcome {
                    answered,
                    wait_ms,
                    short,
                    within,
                }
            ),
            Just(Measure::Presented),
            (proptest::option::of(any::<u64>()), any::<bool>())
                .prop_map(|(wait_ms, within)| Measure::AgentAnswered { wait_ms, within }),
            Just(Measure::AgentAbandoned),
            any::<u64>().prop_map(|handle_ms| Measure::Handled { handle_ms }),
            (0u64..100_000).prop_map(|frt_ms| Measure::FirstResponse { frt_ms }),
            any::<bool>().prop_map(|fcr| Measure::Resolved { fcr }),
            (any::<bool>(), any::<i64>())
                .prop_map(|(first, amount)| Measure::Converted { first, amount }),
            (any::<i64>(), any::<bool>())
                .prop_map(|(score, positive)| Measure::Csat { score, positive }),
            any::<i64>().prop_map(|score| Measure::Qa { score }),
        ]
    }

    fn fact() -> impl Strategy<Value = Fact> {
        (
            time(),
            prop_oneof![Just(Side::Queue), Just(Side::Agent), Just(Side::Both)],
            measure(),
            (sym(), sym(), proptest::option::of(sym()), sym()),
        )
            .prop_map(|(ts, side, measure, (queue, channel, agent, team))| Fact {
                ts,
                side,
                measure,
                queue,
                channel,
                agent,
                team,
            })
    }

    proptest! {
        /// The hand-written bytes are postcard's for the same (shifted) values, and
        /// postcard reads them back as those values: what `Contact::unpack` and the
        /// checkpoints rely on.
        #[test]
        fn encode_is_postcard(
            base in time(),
            events in proptest::collection::vec(event(), 0..12),
            facts in proptest::collection::vec(fact(), 0..12),
            junk in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut shifted_events = events.clone();
            for e in &mut shifted_events {
                e.ts = e.ts.wrapping_sub(base);
            }
            let mut shifted_facts = facts.clone();
            for f in &mut shifted_facts {
                f.ts = f.ts.wrapping_sub(base);
            }
            let want = postcard::to_allocvec(&(base, &shifted_events, &shifted_facts)).unwrap();
            // Appends: whatever the buffer held stays in front.
            let mut got = junk.clone();
            encode(base, &events, &facts, &mut got);
            prop_assert_eq!(&got[..junk.len()], &junk[..]);
            prop_assert_eq!(&got[junk.len()..], &want[..]);
            let back: (Millis, Vec<CEvent>, Vec<Fact>) =
                postcard::from_bytes(&got[junk.len()..]).unwrap();
            prop_assert_eq!(back, (base, shifted_events, shifted_facts));
        }
    }

    /// `wide_varint` writes `varint`'s bytes (postcard's `u64`) on both sides of its
    /// 56-bit split and at every length.
    #[test]
    fn wide_varints_are_varints() {
        let mut values = vec![
            0,
            1,
            u64::MAX,
            1 << 63,
            (1 << 56) - 1,
            1 << 56,
            (0xff << 56) | 0x7f,
        ];
        for k in 1..64 {
            values.extend([(1u64 << k) - 1, 1 << k, (1 << k) + 1]);
        }
        for v in values {
            let (mut wide, mut plain) = ([0u8; 16], [0u8; 16]);
            let mut w = Buf { b: &mut wide, n: 0 };
            wide_varint(&mut w, v);
            let n = w.n;
            let mut p = Buf {
                b: &mut plain,
                n: 0,
            };
            varint(&mut p, v);
            let m = p.n;
            assert_eq!(&wide[..n], &plain[..m], "{v:#x}");
            assert_eq!(
                &wide[..n],
                &postcard::to_allocvec(&v).unwrap()[..],
                "{v:#x}"
            );
        }
    }

    /// The room `encode` makes is an upper bound: a worst-case event and fact fit in it.
    #[test]
    fn worst_cases_fit_the_reserve() {
        let big = Sym::from_raw(NonZeroU32::MAX);
        let e = CEvent {
            ts: i64::MIN,
            kind: EventType::AgentState,
            id_hash: u64::MAX,
            agent: Some(big),
            team: Some(big),
            queue: Some(big),
            channel: Some(Channel::Social),
            to_agent: Some(big),
            talk_ms: Some(Ms::new(u32::MAX)),
            hold_ms: Some(Ms::new(u32::MAX)),
            wrap_ms: Some(Ms::new(u32::MAX)),
            value: i64::MIN,
        };
        let mut room = [0u8; 4 * EVENT_MAX];
        let mut out = Buf { b: &mut room, n: 0 };
        encode_event(&mut out, &e, i64::MAX);
        assert!(out.n <= EVENT_MAX, "{}", out.n);
        for measure in [
            Measure::QueueOutcome {
                answered: true,
                wait_ms: u64::MAX,
                short: true,
                within: true,
            },
            Measure::AgentAnswered {
                wait_ms: Some(u64::MAX),
                within: true,
            },
            Measure::Converted {
                first: true,
                amount: i64::MIN,
            },
        ] {
            let f = Fact {
                ts: i64::MIN,
                side: Side::Both,
                measure,
                queue: big,
                channel: big,
                agent: Some(big),
                team: big,
            };
            let mut room = [0u8; 4 * FACT_MAX];
            let mut out = Buf { b: &mut room, n: 0 };
            encode_fact(&mut out, &f, i64::MAX);
            assert!(out.n <= FACT_MAX, "{}", out.n);
        }
    }
}
