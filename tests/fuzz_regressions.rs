//! Every saved fuzz input replays without a panic or a broken invariant: the corpus
//! (`fuzz/corpus/<target>/`) and the reproducers of fixed crashes
//! (`fuzz/regressions/<target>/`). The fuzzer itself is `examples/fuzz.rs`
//! (`scripts/fuzz.sh`), not part of the test run.

#[allow(dead_code)] // the mutators are only used by the fuzzer
#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

use harness::Target;

fn replay_dir(target: Target, dir: &str) -> usize {
    replay_inputs(target, dir, target)
}

/// Replays the inputs saved for `saved_for` through `target`.
fn replay_inputs(target: Target, dir: &str, saved_for: Target) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(saved_for.name());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let input = std::fs::read(&path).unwrap();
        let started = std::time::Instant::now();
        if let Err(why) = harness::run(target, &input) {
            panic!("{}: {why}", path.display());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{} is slow",
            path.display()
        );
        n += 1;
    }
    n
}

#[test]
fn decoder_corpus_and_regressions() {
    let n = replay_dir(Target::Decode, "corpus") + replay_dir(Target::Decode, "regressions");
    assert!(n >= 15, "only {n} decoder inputs found");
}

#[test]
fn engine_corpus_and_regressions() {
    let n = replay_dir(Target::Engine, "corpus") + replay_dir(Target::Engine, "regressions");
    assert!(n >= 5, "only {n} engine inputs found");
}

/// Damaged checkpoints: each stream of the engine's corpus is checkpointed and the
/// checkpoint damaged 48 times (most of the copies sealed again with a matching
/// checksum); every copy must be refused or restore to a working engine.
#[test]
fn checkpoint_corpus_and_regressions() {
    let n = replay_dir(Target::Checkpoint, "corpus")
        + replay_dir(Target::Checkpoint, "regressions")
        + replay_inputs(Target::Checkpoint, "corpus", Target::Engine);
    assert!(n >= 5, "only {n} checkpoint inputs found");
}
