//! Whole-file throughput limits for docs/performance.md, run by `scripts/bench.sh parse`:
//!
//! - `read`: read the JSONL file into records exactly as `replay` does
//!   (`source::file::open_lines` + `read_records`, blank lines skipped) and nothing
//!   else: the I/O floor.
//! - `parse`: read + decode every line into the event structs with the project's
//!   decoder (`event::Decoder`, the one `replay` uses) and drop them: the **bare parse
//!   limit** the engine's throughput is compared with.
//! - `engine`: read + decode + `Engine::apply` + a flush of closed windows every
//!   250 000 events (the rows are dropped, no store): replay without SQLite, and the
//!   largest number of contacts the engine held (sampled at every flush).
//! - `engine-ahead`: `engine` as `replay` runs it: the file read and decoded ahead on
//!   a thread of its own (`source::ahead::Ahead`, replay's reader), the engine on the
//!   caller's thread. The design the issue names ("parse on one core while
//!   aggregating on the other"); `engine` keeps decoding inline, so that its CPU and
//!   instruction counts stay comparable with every earlier round.
//! - `floor`: read the whole file, decode every line and hash its keys, then
//!   `Engine::batch_floor`: the least a batch engine could do for these events
//!   (grouped by contact with one sort, each contact derived once, every window taken
//!   at the end; see `src/engine/floor.rs`). Prints the decoding and the batch pass
//!   apart (`decode_secs`, `batch_secs`): what the engine adds to decoding at best.
//!
//! Each prints one `key=value` line; `secs` is measured inside the process from the
//! first read to the last event (process start and the final flush excluded), so the
//! figure is the steady rate. The script also times the whole command from outside.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use ccmetrics::engine::{Engine, EngineConfig, Outcome};
use ccmetrics::event::{Decoder, Event, Keys, Reject};
use ccmetrics::source::ahead::{Ahead, Item};
use ccmetrics::source::file;
use clap::Parser;

/// Lines per batch in `engine` mode (`replay` decodes ahead in batches too).
const BATCH: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Read,
    Parse,
    Engine,
    EngineAhead,
    Floor,
}

#[derive(Parser)]
struct Args {
    /// What to do with each line.
    #[arg(value_enum)]
    mode: Mode,
    /// JSONL input (plain or .gz).
    input: PathBuf,
    /// In `engine` mode: flush closed windows every N events, as `replay --flush-every`.
    #[arg(long, default_value_t = 250_000)]
    flush_every: u64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let decoder = Decoder::default();
    // Same engine settings as `replay`: the defaults with the `CCMETRICS__*`
    // environment over them (no config file), live views off.
    let cfg = ccmetrics::config::Config::load(None).context("loading the configuration")?;
    if a.mode == Mode::Floor {
        return floor(&a.input, &decoder, &cfg);
    }
    let mut engine = matches!(a.mode, Mode::Engine | Mode::EngineAhead).then(|| {
        let base = EngineConfig::from_config(&cfg);
        Engine::new(EngineConfig {
            live: false,
            // A/B switch for the contact packing: PACK_AFTER_MS=-1 never packs.
            pack_after_ms: match std::env::var("PACK_AFTER_MS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                Some(v) if v < 0 => i64::MAX,
                Some(v) => v,
                None => base.pack_after_ms,
            },
            ..base
        })
    });
    let (mut lines, mut ok, mut max_open) = (0u64, 0u64, 0usize);
    // `engine` mode: events the engine accepted (not duplicates, not rejected), so
    // that two inputs' runs can be checked to have done the same work.
    let mut accepted = 0u64;
    if let (Mode::EngineAhead, Some(e)) = (a.mode, engine.as_mut()) {
        let started = Instant::now();
        let mut ahead = Ahead::spawn(vec![a.input.clone()], decoder)
            .with_context(|| format!("reading {}", a.input.display()))?;
        while let Some(item) = ahead.next() {
            let batch = match item.with_context(|| format!("reading {}", a.input.display()))? {
                Item::File(_) => continue,
                Item::Batch(b) => b,
            };
            batch.with_dependent(|_, decoded| {
                lines += decoded.len() as u64;
                let counts = (&mut ok, &mut accepted, &mut max_open);
                apply_batch(e, decoded, &decoded.keys, a.flush_every, counts);
            });
            ahead.recycle(batch);
        }
        let secs = started.elapsed().as_secs_f64();
        max_open = max_open.max(e.open_contacts());
        black_box(e.flush_all().len());
        report("engine-ahead", lines, ok, Some(accepted), secs, max_open);
        return Ok(());
    }
    let mut reader =
        file::open_lines(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    // Records are read in batches straight into one buffer, as `replay`'s reader
    // thread does (`read_records`); `engine` also applies them in batches, as `replay`
    // does, so that it can announce the next events' contacts (`Engine::look_ahead`).
    let (mut arena, mut ranges) = (Vec::<u8>::new(), Vec::new());
    let started = Instant::now();
    let mut more = true;
    while more {
        arena.clear();
        ranges.clear();
        more = file::read_records(&mut reader, &mut arena, &mut ranges, BATCH)
            .with_context(|| format!("reading {}", a.input.display()))?;
        lines += ranges.len() as u64;
        match a.mode {
            Mode::Read => {
                for r in &ranges {
                    black_box(&arena[r.clone()]);
                }
            }
            Mode::Parse => {
                for r in &ranges {
                    if let Ok(ev) = decoder.decode(&arena[r.clone()]) {
                        black_box(&ev);
                        ok += 1;
                    }
                }
            }
            Mode::Floor | Mode::EngineAhead => break,
            Mode::Engine => {
                let Some(e) = engine.as_mut() else { break };
                // Decoded into a vector of results and hashed once per event, as
                // `replay`'s reader thread does (`source::ahead`).
                let decoded: Vec<_> = ranges
                    .iter()
                    .map(|r| decoder.decode(&arena[r.clone()]))
                    .collect();
                let keys: Vec<Keys> = decoded.iter().map(Keys::of_decoded).collect();
                let counts = (&mut ok, &mut accepted, &mut max_open);
                apply_batch(e, &decoded, &keys, a.flush_every, counts);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(e) = engine.as_ref()
        && std::env::var_os("CONTACT_MEMORY").is_some()
    {
        // Where the held contacts' memory is, before the final flush releases them.
        eprintln!("{:?}", e.contact_memory());
    }
    if let Some(e) = engine.as_mut() {
        max_open = max_open.max(e.open_contacts());
        black_box(e.flush_all().len());
    }
    let mode = format!("{:?}", a.mode).to_lowercase();
    let accepted = (a.mode == Mode::Engine).then_some(accepted);
    report(&mode, lines, ok, accepted, secs, max_open);
    Ok(())
}

/// Apply a decoded batch as `replay` does: each event's contact announced ahead
/// (`Engine::look_ahead`), closed windows flushed every `flush_every` events and their
/// rows dropped. Counts (events applied, accepted, most contacts held at a flush).
fn apply_batch(
    e: &mut Engine,
    decoded: &[Result<Event<'_>, Reject>],
    keys: &[Keys],
    flush_every: u64,
    (ok, accepted, max_open): (&mut u64, &mut u64, &mut usize),
) {
    for (i, (ev, k)) in decoded.iter().zip(keys).enumerate() {
        e.look_ahead(|d| keys.get(i + d));
        let Ok(ev) = ev else { continue };
        if e.apply_keyed(ev, k) == Outcome::Accepted {
            *accepted += 1;
        }
        *ok += 1;
        if ok.is_multiple_of(flush_every) {
            *max_open = (*max_open).max(e.open_contacts());
            black_box(e.flush().len());
        }
    }
}

/// The one `key=value` line of `read`, `parse`, `engine` and `engine-ahead`.
fn report(mode: &str, lines: u64, ok: u64, accepted: Option<u64>, secs: f64, max_open: usize) {
    let accepted = accepted.map_or(String::new(), |n| format!(" accepted={n}"));
    println!(
        "mode={mode} lines={lines} decoded={ok}{accepted} secs={secs:.3} events_per_s={:.0} max_open_contacts={max_open} peak_rss_kb={}",
        lines as f64 / secs.max(1e-9),
        peak_rss_kb().unwrap_or(0),
    );
}

/// `floor` mode: the whole file in memory, decoded, then one batch pass.
fn floor(
    input: &std::path::Path,
    decoder: &Decoder,
    cfg: &ccmetrics::config::Config,
) -> anyhow::Result<()> {
    let mut reader =
        file::open_lines(input).with_context(|| format!("opening {}", input.display()))?;
    let (mut arena, mut ranges) = (Vec::<u8>::new(), Vec::new());
    // Every record at once (the limit counts the records in `ranges`).
    file::read_records(&mut reader, &mut arena, &mut ranges, usize::MAX)
        .with_context(|| format!("reading {}", input.display()))?;
    let started = Instant::now();
    let mut events = Vec::with_capacity(ranges.len());
    events.extend(
        ranges
            .iter()
            .filter_map(|r| decoder.decode(&arena[r.clone()]).ok()),
    );
    let keys: Vec<Keys> = events.iter().map(Keys::of).collect();
    let decoded = started.elapsed().as_secs_f64();
    let mut engine = Engine::new(EngineConfig {
        live: false,
        ..EngineConfig::from_config(cfg)
    });
    let batch_started = Instant::now();
    let rows = engine.batch_floor(&events, &keys).len();
    let batch = batch_started.elapsed().as_secs_f64();
    let lines = ranges.len();
    let secs = decoded + batch;
    println!(
        "mode=floor lines={lines} decoded={} accepted={} rows={rows} decode_secs={decoded:.3} batch_secs={batch:.3} secs={secs:.3} events_per_s={:.0} peak_rss_kb={}",
        events.len(),
        engine.stats().accepted,
        lines as f64 / secs.max(1e-9),
        peak_rss_kb().unwrap_or(0),
    );
    Ok(())
}

/// VmHWM (peak resident set) of this process from /proc, in KiB; None off Linux.
fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
