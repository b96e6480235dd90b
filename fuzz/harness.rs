//! Fuzz targets and mutators, shared by `examples/fuzz.rs` (the randomised fuzzer)
//! and `tests/fuzz_regressions.rs` (replays saved inputs). Everything here is a
//! deterministic function of the input bytes, so a saved input reproduces.

use ccmetrics::engine::limits::KeyLimits;
use ccmetrics::engine::window::Interval;
use ccmetrics::engine::{Engine, EngineConfig, Outcome};
use ccmetrics::event::Decoder;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Decode,
    Engine,
    Checkpoint,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Decode => "decode",
            Target::Engine => "engine",
            Target::Checkpoint => "checkpoint",
        }
    }
}

/// Run one input. `Ok` carries a coarse signature of what happened (for novelty);
/// `Err` a broken invariant. A panic propagates (the caller catches it).
pub fn run(target: Target, input: &[u8]) -> Result<String, String> {
    match target {
        Target::Decode => run_decode(input),
        Target::Engine => run_engine(input),
        Target::Checkpoint => run_checkpoint(input),
    }
}

/// The shape of a reject detail: quoted text and digits removed, so "`ts` 12 ms" and
/// "`ts` 13 ms" are one class.
fn shape(detail: &str) -> String {
    let mut out = String::new();
    let mut in_quote = false;
    for ch in detail.chars() {
        match ch {
            '"' => {
                in_quote = !in_quote;
                if in_quote {
                    out.push('"');
                }
            }
            _ if in_quote => {}
            c if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn run_decode(input: &[u8]) -> Result<String, String> {
    let big = Decoder {
        max_message_bytes: 16 << 20,
        csat_scale_min: 0,
        csat_scale_max: 10,
    };
    let mut sig = String::new();
    for d in [Decoder::default(), big] {
        // The flat fast path must read every message as serde_json alone does.
        let (fast, oracle) = (d.decode(input), d.decode_by_serde(input));
        if fast != oracle {
            return Err(format!(
                "flat path disagrees with serde_json: {fast:?} vs {oracle:?}"
            ));
        }
        match fast {
            Ok(ev) => {
                if !(946_684_800_000..4_102_444_800_000).contains(&ev.ts) {
                    return Err(format!("accepted ts {} outside 2000-2099", ev.ts));
                }
                if ev.kind.is_contact_scoped() && ev.contact_id.is_none() {
                    return Err("accepted a contact event without contact_id".into());
                }
                let ids = [&ev.contact_id, &ev.agent_id, &ev.queue, &ev.customer_id];
                if ids
                    .iter()
                    .filter_map(|x| x.as_deref())
                    .chain([&*ev.event_id])
                    .any(|s| s.is_empty() || s.len() > 128 || s.chars().any(char::is_control))
                {
                    return Err("accepted a bad identifier".into());
                }
                let owned = ev.into_owned();
                sig.push_str(&format!("ok:{};", owned.kind.as_str()));
            }
            Err(r) => sig.push_str(&format!("{}:{};", r.reason.as_str(), shape(&r.detail))),
        }
    }
    Ok(sig)
}

/// The engine settings for one input: derived from its hash, so small cardinality
/// limits, short horizons and other zones get exercised, reproducibly.
fn engine_config(seed: u64) -> EngineConfig {
    let pick = |shift: u32, n: u64| (seed >> shift) % n;
    let intervals = match pick(0, 3) {
        0 => vec![Interval::Minutes(15), Interval::Minutes(60), Interval::Day],
        1 => vec![Interval::Day],
        _ => vec![Interval::Minutes(5), Interval::Minutes(30)],
    };
    let tz = match pick(2, 3) {
        0 => jiff::tz::TimeZone::UTC,
        1 => jiff::tz::TimeZone::get("America/New_York").unwrap_or(jiff::tz::TimeZone::UTC),
        _ => jiff::tz::TimeZone::get("Asia/Kolkata").unwrap_or(jiff::tz::TimeZone::UTC),
    };
    let limits = if pick(4, 2) == 0 {
        KeyLimits::default()
    } else {
        let n = |s: u32| 1 + pick(s, 4) as usize;
        KeyLimits {
            agents: n(6),
            teams: n(8),
            queues: n(10),
            customers: n(12),
        }
    };
    let def = EngineConfig::default();
    EngineConfig {
        intervals,
        tz,
        allowed_lateness_ms: [0, 60_000, 300_000][pick(14, 3) as usize],
        correction_horizon_ms: [7 * 86_400_000, 3_600_000][pick(16, 2) as usize],
        limits,
        live: true,
        ..def
    }
}

fn run_engine(input: &[u8]) -> Result<String, String> {
    let seed = xxhash_rust::xxh3::xxh3_64(input);
    let cfg = engine_config(seed);
    let mut ops = SmallRng::seed_from_u64(seed);
    let decoder = Decoder::default();
    let mut e = Engine::new(cfg.clone());
    let mut lines = 0u64;
    let mut outcomes = [false; 4];
    for line in input.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines += 1;
        match decoder.decode(line) {
            Ok(ev) => {
                let o = e.apply(ev);
                outcomes[match o {
                    Outcome::Accepted => 0,
                    Outcome::Duplicate => 1,
                    Outcome::Rejected(_) => 2,
                }] = true;
            }
            Err(r) => {
                e.record_reject(r.reason);
                outcomes[3] = true;
            }
        }
        match ops.random_range(0..256u32) {
            0..16 => {
                e.flush();
            }
            16..20 => {
                let now = e.clock().unwrap_or(0) + ops.random_range(0..7_200_000);
                e.advance_to(now);
            }
            20..22 => {
                let before = e.stats().clone();
                let bytes = e.checkpoint().map_err(|x| format!("checkpoint: {x}"))?;
                e = Engine::restore(cfg.clone(), &bytes).map_err(|x| format!("restore: {x}"))?;
                if *e.stats() != before || e.stats().expired != before.expired {
                    return Err("stats changed across checkpoint + restore".into());
                }
            }
            22..26 => {
                let now = e.clock().unwrap_or(0);
                let _ = e.floor(now + ops.random_range(-3_600_000..3_600_000));
                let _ = e.rolling(ops.random_range(1..120));
                let _ = e.totals();
            }
            26..28 => {
                let _ = e.flush_open();
            }
            _ => {}
        }
    }
    // As `replay` ends: the final windows, then the contacts let go (the stats stay).
    let _ = e.finish();
    let s = e.stats();
    if s.read != lines || s.read != s.accepted + s.duplicates + s.rejected_total() {
        return Err(format!(
            "accounting: {lines} lines, read {} = accepted {} + duplicates {} + rejected {}?",
            s.read,
            s.accepted,
            s.duplicates,
            s.rejected_total()
        ));
    }
    let mut sig: String = outcomes
        .iter()
        .map(|b| if *b { '1' } else { '0' })
        .collect();
    for r in s.rejected.keys() {
        sig.push_str(r.as_str());
        sig.push(',');
    }
    for d in s.overflowed.keys() {
        sig.push_str(d.as_str());
        sig.push(',');
    }
    if s.expired > 0 {
        sig.push_str("expired");
    }
    Ok(sig)
}

/// Damaged checkpoints per input of the `checkpoint` target.
const CHECKPOINT_MUTANTS: usize = 48;

/// `checkpoint`: the input is a JSONL stream, applied (with flushes) to an engine
/// whose checkpoint is then damaged [`CHECKPOINT_MUTANTS`] times, byte by byte, each
/// damaged copy restored under the same settings. A checkpoint is read back from the
/// store after a restart or a rebalance, so a damaged one (a bad disk, a hand edit, a
/// bug of another version) must be refused with an error, or restore to an engine
/// that keeps working: apply, flush, the live views, a checkpoint of its own, finish.
/// What is checked is that nothing panics (overflow included: the fuzzer is a debug
/// build), hangs or sizes memory by a damaged number; a damaged checkpoint that
/// decodes may of course carry other figures.
fn run_checkpoint(input: &[u8]) -> Result<String, String> {
    let seed = xxhash_rust::xxh3::xxh3_64(input);
    let cfg = engine_config(seed);
    let mut ops = SmallRng::seed_from_u64(seed);
    let decoder = Decoder::default();
    let lines: Vec<&[u8]> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut e = Engine::new(cfg.clone());
    for line in &lines {
        if let Ok(ev) = decoder.decode(line) {
            e.apply(ev);
        }
        if ops.random_range(0..32u32) == 0 {
            e.flush();
        }
    }
    let pristine = e.checkpoint().map_err(|x| format!("checkpoint: {x}"))?;
    let restored =
        Engine::restore(cfg.clone(), &pristine).map_err(|x| format!("pristine restore: {x}"))?;
    if restored.stats() != e.stats() {
        return Err("stats changed across checkpoint + restore".into());
    }
    // The tail of the stream, applied again to each restored engine.
    let tail = &lines[lines.len().saturating_sub(40)..];
    let mut outcomes = std::collections::BTreeSet::new();
    for _ in 0..CHECKPOINT_MUTANTS {
        let mut damaged = mutate_bytes(&mut ops, &pristine);
        // Most damaged copies are sealed again (format 5 ends with the xxh3-64 of the
        // bytes before it), so that the damage reaches the checks behind the checksum:
        // a checkpoint consistent in its bytes but not in its meaning, as a bug of
        // another version could write.
        if ops.random_range(0..4) != 0 && damaged.len() > 8 {
            let data = damaged.len() - 8;
            let sum = xxhash_rust::xxh3::xxh3_64(&damaged[..data]);
            damaged[data..].copy_from_slice(&sum.to_le_bytes());
        }
        match Engine::restore(cfg.clone(), &damaged) {
            Err(x) => {
                // The refusal's kind and what it names, without its numbers (decimal
                // or hex: checksums, contact keys).
                let text = x.to_string();
                let words = text.split(';').next().unwrap_or("").split_whitespace();
                let class: Vec<String> = words
                    .map(|w| {
                        let bare = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
                        if bare.len() >= 8 && bare.chars().all(|c| c.is_ascii_hexdigit()) {
                            "#".to_owned()
                        } else {
                            shape(w)
                        }
                    })
                    .collect();
                outcomes.insert(class.join(" "));
            }
            Ok(mut r) => {
                outcomes.insert("restored".to_owned());
                for line in tail {
                    if let Ok(ev) = decoder.decode(line) {
                        r.apply(ev);
                    }
                }
                let now = r.clock().unwrap_or(0);
                let _ = r.floor(now);
                let _ = r.rolling(15);
                let _ = r.totals();
                let _ = r.flush();
                r.advance_to(now.saturating_add(86_400_000));
                let again = r.checkpoint().map_err(|x| format!("re-checkpoint: {x}"))?;
                let mut r = Engine::restore(cfg.clone(), &again)
                    .map_err(|x| format!("a restored engine's own checkpoint: {x}"))?;
                let _ = r.flush_open();
                let _ = r.finish();
            }
        }
    }
    Ok(outcomes.into_iter().collect::<Vec<_>>().join(","))
}

/// 1–3 byte-level damages of a binary blob: bit flips, set bytes (varint edges among
/// them), cut, repeated and inserted ranges, truncation. The version byte is spared
/// most of the time, so the damage reaches the body.
pub fn mutate_bytes(rng: &mut SmallRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        let len = v.len();
        let from = usize::from(len > 1 && rng.random_range(0..16) != 0);
        if len <= from {
            v.push(rng.random());
            continue;
        }
        let i = rng.random_range(from..len);
        match rng.random_range(0..8) {
            0 | 1 => v[i] ^= 1 << rng.random_range(0..8),
            2 => v[i] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.random_range(0..5)],
            3 => v[i] = rng.random(),
            4 => {
                let b = (i + rng.random_range(1..=16)).min(len);
                v.drain(i..b);
            }
            5 => {
                let b = (i + rng.random_range(1..=16)).min(len);
                let chunk = v[i..b].to_vec();
                v.splice(i..i, chunk);
            }
            6 => {
                // A long varint: a length or a number far past anything stored.
                let n = rng.random_range(1..=9);
                v.splice(i..i, std::iter::repeat_n(0xff, n).chain([0x0f]));
            }
            _ => v.truncate(i),
        }
    }
    v
}

/// Values that break parsers and range checks.
const INTERESTING: &[&str] = &[
    "null",
    "true",
    "-1",
    "0",
    "-0",
    "0.5",
    "1e400",
    "-1e400",
    "1e20",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "946684800000",
    "946684799999",
    "4102444799999",
    "4102444800000",
    "1795396502123",
    "\"NaN\"",
    "NaN",
    "\"9999-12-31T23:59:59Z\"",
    "\"1970-01-01T00:00:00Z\"",
    "\"2099-12-31T23:59:59.999999999Z\"",
    "\"2026-11-23T09:15:02.123+14:00\"",
    "\"2026-11-23T09:15:02-25:00\"",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[",
    "\"contact.offered\"",
    "\"contact.answered\"",
    "\"contact.ended\"",
    "\"contact.abandoned\"",
    "\"contact.transferred\"",
    "\"contact.wrapped\"",
    "\"survey.responded\"",
    "\"qa.scored\"",
    "\"agent.state\"",
    "\"voice\"",
    "\"busy\"",
    "\"__overflow__\"",
    "\"unknown\"",
    "\"all\"",
];

const FIELDS: &[&str] = &[
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

const BYTES: &[u8] = b"\0\x01\x7f\x80\xbf\xc0\xff\"\\{}[],:-.0eE \t\r\n";

fn pos(rng: &mut SmallRng, len: usize) -> usize {
    rng.random_range(0..=len)
}

/// 1–4 byte- and token-level mutations of one message (`other` feeds splices).
pub fn mutate_message(rng: &mut SmallRng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..10) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = if rng.random_bool(0.5) {
                    BYTES[rng.random_range(0..BYTES.len())]
                } else {
                    rng.random()
                };
            }
            2 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16)).min(len);
                v.drain(a..b);
            }
            3 if !other.is_empty() => {
                let a = rng.random_range(0..other.len());
                let b = (a + rng.random_range(1..=64)).min(other.len());
                let at = pos(rng, len);
                v.splice(at..at, other[a..b].iter().copied());
            }
            4 => v.truncate(pos(rng, len)),
            5 => {
                let tok = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let at = pos(rng, len);
                v.splice(at..at, tok.bytes());
            }
            6 => replace_value(rng, &mut v),
            7 if len > 0 => {
                // Repeat a slice: nesting bombs, long strings, repeated fields.
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=8)).min(len);
                let chunk = v[a..b].to_vec();
                let times = [2, 10, 200, 5000][rng.random_range(0..4)];
                let rep: Vec<u8> = chunk
                    .iter()
                    .copied()
                    .cycle()
                    .take(chunk.len() * times)
                    .collect();
                v.splice(a..a, rep);
            }
            8 => {
                // Add a known field (possibly a second copy) with an interesting value.
                let f = FIELDS[rng.random_range(0..FIELDS.len())];
                let val = INTERESTING[rng.random_range(0..INTERESTING.len())];
                if let Some(i) = v.iter().rposition(|b| *b == b'}') {
                    let add = format!(",\"{f}\":{val}");
                    v.splice(i..i, add.bytes());
                }
            }
            _ => {
                if len > 0 {
                    let i = rng.random_range(0..len);
                    v.insert(i, rng.random());
                }
            }
        }
    }
    v
}

/// Replace the JSON value after a random `:` with an interesting one.
fn replace_value(rng: &mut SmallRng, v: &mut Vec<u8>) {
    let colons: Vec<usize> = v
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b':')
        .map(|(i, _)| i)
        .collect();
    if colons.is_empty() {
        return;
    }
    let start = colons[rng.random_range(0..colons.len())] + 1;
    let end = v[start..]
        .iter()
        .position(|b| *b == b',' || *b == b'}')
        .map_or(v.len(), |p| start + p);
    let tok = INTERESTING[rng.random_range(0..INTERESTING.len())];
    v.splice(start..end, tok.bytes());
}

const MAX_LINES: usize = 4000;

/// Line-level and structured mutations of a JSONL stream: reorder, duplicate, drop,
/// shift timestamps, rewrite ids and types, splice, runaway contacts, and byte-level
/// damage of single lines.
pub fn mutate_stream(rng: &mut SmallRng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = base
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let others: Vec<&[u8]> = other
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        lines.push(b"{}".to_vec());
    }
    for _ in 0..rng.random_range(1..=8) {
        let n = lines.len();
        let i = rng.random_range(0..n);
        match rng.random_range(0..10) {
            0 => {
                let o = others
                    .get(rng.random_range(0..others.len().max(1)))
                    .copied();
                lines[i] = mutate_message(rng, &lines[i], o.unwrap_or(b""));
            }
            1 => {
                let l = lines[i].clone();
                let at = rng.random_range(0..=n);
                lines.insert(at, l);
            }
            2 => {
                let j = rng.random_range(0..n);
                lines.swap(i, j);
            }
            3 if n > 1 => {
                lines.remove(i);
            }
            4 => {
                let shift = match rng.random_range(0..4) {
                    0 => rng.random_range(-600_000..600_000),
                    1 => rng.random_range(-10 * 86_400_000i64..10 * 86_400_000),
                    2 => rng.random_range(-400 * 86_400_000i64..400 * 86_400_000),
                    _ => rng.random_range(-1000..1000),
                };
                edit_json(&mut lines[i], |o| {
                    if let Some(ts) = o.get("ts").and_then(serde_json::Value::as_i64) {
                        o.insert("ts".into(), (ts.saturating_add(shift)).into());
                    } else if let Some(ts) = o
                        .get("ts")
                        .and_then(|t| t.as_str())
                        .and_then(ccmetrics::event::decode::parse_rfc3339)
                    {
                        o.insert("ts".into(), (ts.saturating_add(shift)).into());
                    }
                });
            }
            5 => {
                // Rewrite an id field to a fresh or a colliding value.
                let field = [
                    "contact_id",
                    "agent_id",
                    "queue",
                    "customer_id",
                    "team",
                    "event_id",
                ][rng.random_range(0..6)];
                let value = if rng.random_bool(0.5) {
                    format!("x{}", rng.random_range(0..4))
                } else {
                    format!("fresh-{}", rng.random::<u32>())
                };
                edit_json(&mut lines[i], |o| {
                    o.insert(field.into(), value.into());
                });
            }
            6 => {
                let kind = INTERESTING[rng.random_range(31..40)]
                    .trim_matches('"')
                    .to_owned();
                edit_json(&mut lines[i], |o| {
                    o.insert("type".into(), kind.into());
                });
            }
            7 if !others.is_empty() => {
                let a = rng.random_range(0..others.len());
                let b = (a + rng.random_range(1..=50)).min(others.len());
                let at = rng.random_range(0..=n);
                lines.splice(at..at, others[a..b].iter().map(|l| l.to_vec()));
            }
            8 => {
                // A runaway producer: one contact's event repeated with fresh ids.
                let times = [10, 1100][rng.random_range(0..2)];
                let template = lines[i].clone();
                for k in 0..times {
                    let mut l = template.clone();
                    edit_json(&mut l, |o| {
                        o.insert("event_id".into(), format!("run-{k}").into());
                    });
                    lines.push(l);
                }
            }
            _ => {
                let at = rng.random_range(0..=n);
                let fresh = fresh_event(rng);
                lines.insert(at, fresh);
            }
        }
        lines.truncate(MAX_LINES);
    }
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(&l);
        out.push(b'\n');
    }
    out
}

fn edit_json(line: &mut Vec<u8>, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    if let Ok(serde_json::Value::Object(mut o)) = serde_json::from_slice(line) {
        f(&mut o);
        if let Ok(v) = serde_json::to_vec(&serde_json::Value::Object(o)) {
            *line = v;
        }
    }
}

/// A random valid-looking event around 2026-11-23 on a handful of contacts and agents.
fn fresh_event(rng: &mut SmallRng) -> Vec<u8> {
    let ts = 1_795_392_000_000i64 + rng.random_range(0..86_400_000);
    let kinds = [
        "contact.offered",
        "contact.routed",
        "contact.answered",
        "contact.abandoned",
        "contact.first_response",
        "contact.transferred",
        "contact.ended",
        "contact.wrapped",
        "contact.resolved",
        "contact.reopened",
        "contact.converted",
        "survey.responded",
        "qa.scored",
        "agent.state",
    ];
    let kind = kinds[rng.random_range(0..kinds.len())];
    let c = rng.random_range(0..6);
    let a = rng.random_range(0..4);
    format!(
        r#"{{"event_id":"f{}","type":"{kind}","ts":{ts},"contact_id":"c{c}","channel":"chat","queue":"q{}","agent_id":"a{a}","team":"t{}","customer_id":"k{}","to_agent_id":"a{}","to_queue":"q1","talk_ms":{},"hold_ms":5,"wrap_ms":{},"amount":12.5,"score":{},"state":"busy"}}"#,
        rng.random::<u32>(),
        rng.random_range(0..3),
        a % 2,
        c % 3,
        (a + 1) % 4,
        rng.random_range(0..600_000),
        rng.random_range(0..60_000),
        rng.random_range(1..=5),
    )
    .into_bytes()
}
