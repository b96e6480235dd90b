//! Randomised fuzzing on stable Rust (cargo-fuzz needs nightly): feeds random and
//! mutated inputs, seeded from a corpus of real events, to the event decoder and to
//! the engine's apply step for a given time, and reports every panic or slow input.
//!
//! ```text
//! cargo run --release --example fuzz -- decode --seconds 120
//! cargo run --release --example fuzz -- engine --seconds 120 --seed 7
//! cargo run --release --example fuzz -- engine --replay fuzz/crashes/engine-….jsonl
//! ```
//!
//! The targets and mutators are in `fuzz/harness.rs`, shared with
//! `tests/fuzz_regressions.rs`. Targets:
//! - `decode`: one message → `Decoder::decode` (default settings and a 16 MiB limit).
//! - `engine`: a JSONL stream → decode → `Engine::apply`, with flushes, wall-clock
//!   advances, checkpoint + restore round trips and the live views in between, under
//!   random small cardinality limits; checks the input accounting adds up.
//! - `checkpoint`: a JSONL stream applied to an engine, whose checkpoint is then
//!   damaged byte by byte many times; each damaged copy must be refused with an error
//!   or restore to an engine that keeps working (apply, flush, live views, checkpoint,
//!   finish), without a panic or a hang.
//!
//! Corpus: `fuzz/corpus/<target>/` (one message or one stream per file). Inputs that
//! produce an outcome not seen before (a new reject reason and detail shape, or for
//! the engine a new combination of counters) are added to it with `--save-novel`
//! (at most 20 per run). A panic or an input slower than one second is written to
//! `fuzz/crashes/<target>-<hash>.json[l]`; the exit code is 1 if there was any.
//! Turn a crash into a regression test by copying it to `fuzz/regressions/<target>/`:
//! `tests/fuzz_regressions.rs` replays every file there.
//!
//! No coverage feedback: this finds panics on malformed and adversarial structure,
//! not deep paths that need many exact bytes.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "../fuzz/harness.rs"]
mod fuzzing;

use fuzzing::Target;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SLOW: Duration = Duration::from_secs(1);
const MAX_SAVED: usize = 20;

struct Args {
    target: Target,
    seconds: u64,
    seed: u64,
    corpus: PathBuf,
    crashes: PathBuf,
    save_novel: bool,
    replay: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let target = match it.next().as_deref() {
        Some("decode") => Target::Decode,
        Some("engine") => Target::Engine,
        Some("checkpoint") => Target::Checkpoint,
        other => {
            return Err(format!(
                "target must be decode, engine or checkpoint, got {other:?}"
            ));
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut a = Args {
        target,
        seconds: 60,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        corpus: root.join("corpus").join(target.name()),
        crashes: root.join("crashes"),
        save_novel: false,
        replay: Vec::new(),
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--seed" => a.seed = value()?.parse().map_err(|e| format!("{e}"))?,
            "--corpus" => a.corpus = value()?.into(),
            "--crashes" => a.crashes = value()?.into(),
            "--replay" => a.replay.push(value()?.into()),
            "--save-novel" => a.save_novel = true,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn main() -> std::process::ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let failures = if a.replay.is_empty() {
        fuzz(&a)
    } else {
        a.replay
            .iter()
            .filter(|p| {
                let bytes = std::fs::read(p).unwrap_or_default();
                run_one(a.target, &bytes).is_err()
            })
            .count()
    };
    if failures > 0 {
        eprintln!("fuzz: {failures} failing input(s)");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}

/// Run one input; `Err` on panic (message) or when it took longer than [`SLOW`].
fn run_one(target: Target, input: &[u8]) -> Result<String, String> {
    let started = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| fuzzing::run(target, input)));
    let took = started.elapsed();
    match r {
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into())),
        Ok(Err(broken)) => Err(broken),
        Ok(Ok(_)) if took > SLOW => Err(format!("slow: {took:?}")),
        Ok(Ok(sig)) => Ok(sig),
    }
}

fn fuzz(a: &Args) -> usize {
    let mut dirs = vec![a.corpus.clone()];
    // The checkpoint target's inputs are streams, as the engine's are: it starts from
    // the engine's corpus too.
    if a.target == Target::Checkpoint
        && let Some(root) = a.corpus.parent()
    {
        dirs.push(root.join(Target::Engine.name()));
    }
    let mut corpus: Vec<Vec<u8>> = dirs
        .iter()
        .flat_map(|dir| {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            paths.sort();
            paths
        })
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    if corpus.is_empty() {
        corpus.push(b"{}".to_vec());
    }
    println!(
        "fuzz {}: {} corpus inputs from {}, seed {}, {} s",
        a.target.name(),
        corpus.len(),
        a.corpus.display(),
        a.seed,
        a.seconds
    );
    let mut rng = SmallRng::seed_from_u64(a.seed);
    let mut seen: HashSet<String> = HashSet::new();
    for c in &corpus {
        if let Ok(sig) = run_one(a.target, c) {
            seen.insert(sig);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let (mut runs, mut failures, mut saved) = (0u64, 0usize, 0usize);
    let mut last_report = Instant::now();
    // Silence the default hook's backtrace spam; the failing input is saved instead.
    std::panic::set_hook(Box::new(|info| eprintln!("fuzz: panic: {info}")));
    while Instant::now() < deadline {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let other = &corpus[rng.random_range(0..corpus.len())];
        let input = match a.target {
            Target::Decode => fuzzing::mutate_message(&mut rng, base, other),
            // The checkpoint target damages the checkpoint itself; its stream varies
            // as the engine's does.
            Target::Engine | Target::Checkpoint => fuzzing::mutate_stream(&mut rng, base, other),
        };
        runs += 1;
        match run_one(a.target, &input) {
            Ok(sig) => {
                if seen.insert(sig) && a.save_novel && saved < MAX_SAVED {
                    saved += 1;
                    save(&a.corpus, a.target, &input);
                    corpus.push(input);
                }
            }
            Err(why) => {
                failures += 1;
                let path = save(&a.crashes, a.target, &input);
                eprintln!("fuzz: FAILURE ({why}) saved to {}", path.display());
            }
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "fuzz {}: {runs} runs, {} outcome classes, {failures} failures",
                a.target.name(),
                seen.len()
            );
        }
    }
    println!(
        "fuzz {}: done, {runs} runs, {} outcome classes, {saved} added to the corpus, {failures} failures",
        a.target.name(),
        seen.len()
    );
    failures
}

fn save(dir: &Path, target: Target, input: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let hash = xxhash_rust::xxh3::xxh3_64(input);
    let ext = match target {
        Target::Decode => "json",
        Target::Engine | Target::Checkpoint => "jsonl",
    };
    let path = dir.join(format!("{}-{hash:016x}.{ext}", target.name()));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!("fuzz: cannot write {}: {e}", path.display());
    }
    path
}
