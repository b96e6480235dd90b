#!/usr/bin/env bash
# Randomised fuzzing of the event decoder and the engine's apply step (not in CI).
#
#   scripts/fuzz.sh                 # every target for 180 s
#   scripts/fuzz.sh 600 engine      # one target for 10 minutes
#   SEED=42 scripts/fuzz.sh 60      # reproducible run
#
# Stable Rust: no cargo-fuzz (nightly). The fuzzer is examples/fuzz.rs, a dev build
# on purpose: integer overflow checks and debug assertions stay on, so arithmetic
# overflow is a crash too. Inputs with a new outcome are added to fuzz/corpus/<target>/
# (at most 20 per run: commit the useful ones); failures land in fuzz/crashes/. Copy a
# crash into fuzz/regressions/<target>/ after fixing it: tests/fuzz_regressions.rs
# replays that folder in the normal test run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-180}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(decode engine checkpoint)

cargo build --locked --example fuzz
status=0
for t in "${targets[@]}"; do
    args=("$t" --seconds "$seconds" --save-novel)
    [ -n "${SEED:-}" ] && args+=(--seed "$SEED")
    ./target/debug/examples/fuzz "${args[@]}" || status=1
done
if [ -d fuzz/crashes ] && [ -n "$(ls -A fuzz/crashes 2>/dev/null)" ]; then
    echo "failing inputs in fuzz/crashes/:" >&2
    ls -l fuzz/crashes >&2
    status=1
fi
exit "$status"
