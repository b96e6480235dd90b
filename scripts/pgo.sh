#!/usr/bin/env bash
# Profile-guided release build of ccmetrics (docs/performance.md, "twenty-eighth round").
#
#   1. builds instrumented binaries (ccmetrics and the examples) in target/pgo-gen;
#   2. trains them on a simulated centre that is not one of the benchmark's sets (another
#      seed, size and shape): `replay` into SQLite with the default config and again with
#      the spill on, the six report shapes exported as CSV and JSONL, the period scores of
#      every scheme, `serve --source stdin` with per-agent series scraped while it runs
#      and stopped by SIGTERM, and `parse_bench` (parse, engine);
#   3. merges the profiles with the llvm-profdata of rustc's own LLVM major version;
#   4. builds the optimised binaries in target/pgo/release (ccmetrics and the examples).
#
# Same sources, same Cargo.lock, same figures: profile-guided optimisation only changes
# how the compiler lays out and inlines code (the agreement check, scripts/agree.sh, can
# be run against the result with BIN=target/pgo/release/ccmetrics).
#
# Usage: scripts/pgo.sh [--install]
#   --install  when llvm-profdata-N (N = rustc's LLVM major) is missing, install the
#              distribution's llvm-N package with apt-get (needs root).
# Environment: PGO_EVENTS [300000]  PGO_AGENTS [2000]  PGO_QUEUES [60]  PGO_SEED [20261206]
#              LLVM_PROFDATA: a llvm-profdata to use instead of looking for one.
# Output: target/pgo/release/ccmetrics (and examples/); the merged profile in
#         target/pgo-SUM.profdata (SUM: the start of its SHA-256).
# Time: two release builds (the second one whole again at every run, since the profile
# changes) and about a minute of training: 25-35 min on 2 cores from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/serve-stdin.sh
INSTALL=false
case "${1:-}" in
  "") ;;
  --install) INSTALL=true ;;
  *) echo "usage: scripts/pgo.sh [--install]" >&2; exit 2 ;;
esac

EVENTS=${PGO_EVENTS:-300000}
AGENTS=${PGO_AGENTS:-2000}
QUEUES=${PGO_QUEUES:-60}
SEED=${PGO_SEED:-20261206}
ROOT=$PWD
DATA=$ROOT/target/pgo-data
WORK=$ROOT/target/pgo-train

# llvm-profdata must read the raw profiles of rustc's LLVM: same major version.
major=$(rustc -vV | sed -nE 's/^LLVM version: ([0-9]+).*/\1/p')
[ -n "$major" ] || { echo "pgo: cannot read rustc's LLVM version (rustc -vV)" >&2; exit 1; }
profdata=${LLVM_PROFDATA:-}
if [ -z "$profdata" ]; then
  for c in "llvm-profdata-$major" llvm-profdata; do
    if command -v "$c" > /dev/null && "$c" --version 2>/dev/null | grep -q "LLVM version $major\."; then
      profdata=$(command -v "$c")
      break
    fi
  done
fi
if [ -z "$profdata" ] && $INSTALL; then
  echo "== installing llvm-$major for llvm-profdata-$major"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "llvm-$major" > /dev/null
  profdata=$(command -v "llvm-profdata-$major" || true)
fi
if [ -z "$profdata" ]; then
  echo "pgo: no llvm-profdata of LLVM $major (rustc's); install llvm-$major (scripts/pgo.sh --install)" >&2
  echo "     or point LLVM_PROFDATA at one" >&2
  exit 1
fi
echo "== llvm-profdata: $profdata (LLVM $major)"

# 1. Instrumented build. Its own target directory: RUSTFLAGS differ, so sharing
# target/release would rebuild everything there at every switch.
rm -rf "$DATA" "$WORK"
mkdir -p "$DATA" "$WORK"
echo "== instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR="$ROOT/target/pgo-gen" \
  cargo build --release --locked --bins --examples
GEN=$ROOT/target/pgo-gen/release
# The build scripts and proc macros the build just ran were instrumented too: their
# profiles are not the daemon's.
rm -f "$DATA"/*.profraw

# 2. Training.
echo "== training: $EVENTS events, $AGENTS agents, $QUEUES queues, seed $SEED"
f=$WORK/events.jsonl
"$GEN/ccmetrics" generate --events "$EVENTS" --agents "$AGENTS" --queues "$QUEUES" \
  --contacts-per-hour $((AGENTS * 12)) --seed "$SEED" > "$f"
export RUST_LOG=${RUST_LOG:-warn}
train_replay() { # NAME [replay args...]: replay into WORK/NAME.db, then every report and score
  local name=$1 db="sqlite://$WORK/$1.db"
  shift
  CCMETRICS__STORE__URL=$db "$GEN/ccmetrics" replay --input "$f" "$@" > /dev/null 2>> "$WORK/replay.log"
  for e in "15m queue" "1d agent" "1h team" "1h channel" "1d all" "15m agent"; do
    set -- $e
    for fmt in csv jsonl; do
      CCMETRICS__STORE__URL=$db "$GEN/ccmetrics" export --window "$1" --dimension "$2" --format "$fmt" > /dev/null 2>> "$WORK/export.log"
    done
  done
  for scheme in config/schemes/*.toml; do
    CCMETRICS__STORE__URL=$db "$GEN/ccmetrics" score --scheme "$scheme" --period 2026-11 \
      --out "$WORK/$name-score-$(basename "$scheme" .toml)" > /dev/null 2>> "$WORK/score.log"
  done
}
train_replay default
CCMETRICS__WINDOWS__SPILL=true CCMETRICS__WINDOWS__SPILL_AFTER=15m train_replay spill --flush-every 50000

# serve on stdin: the live views, the publisher and /metrics with per-agent series.
CCMETRICS__STORE__URL="sqlite://$WORK/serve.db" CCMETRICS__HTTP__LISTEN=127.0.0.1:0 \
  CCMETRICS__HTTP__PER_AGENT_SERIES=true CCMETRICS__HTTP__MAX_AGENT_SERIES=1000000 \
  "$GEN/ccmetrics" serve --source stdin < "$f" > "$WORK/serve.out" 2> "$WORK/serve.log" &
pid=$!
addr=$(serve_addr "$WORK/serve.out" "$pid") \
  || { echo "pgo: serve did not start; see $WORK/serve.log" >&2; exit 1; }
lines=$(wc -l < "$f")
read_total=$(serve_read "$addr" "$pid" "$lines") \
  || { echo "pgo: serve read $read_total of $lines lines; see $WORK/serve.log" >&2; kill "$pid" 2> /dev/null; exit 1; }
for path in metrics healthz readyz; do curl -s "http://$addr/$path" > /dev/null || true; done
kill -TERM "$pid"
# The profile is written when the process exits normally: SIGTERM is serve's graceful stop.
wait "$pid" || { echo "pgo: serve did not stop cleanly; see $WORK/serve.log" >&2; exit 1; }

for mode in parse engine; do "$GEN/examples/parse_bench" "$mode" "$f" > /dev/null; done

# 3. Merge.
shopt -s nullglob
raw=("$DATA"/*.profraw)
[ "${#raw[@]}" -gt 0 ] || { echo "pgo: the training wrote no profile in $DATA" >&2; exit 1; }
"$profdata" merge -o "$DATA/merged.profdata" "${raw[@]}"
# The profile is named by its content: a new profile changes RUSTFLAGS, so nothing built
# with an older one is reused, whatever cargo's fingerprints track of the file.
sum=$(sha256sum "$DATA/merged.profdata" | cut -c1-16)
profile=$ROOT/target/pgo-$sum.profdata
rm -f "$ROOT"/target/pgo-*.profdata
mv "$DATA/merged.profdata" "$profile"
rm -f "$DATA"/*.profraw
echo "== merged ${#raw[@]} raw profiles into $profile"

# 4. Optimised build. A new profile means new RUSTFLAGS, so cargo rebuilds everything
# into new directories: the previous run's are dropped first, or they would pile up
# (about 1.6 GB a run).
echo "== optimised build (target/pgo)"
rm -rf "$ROOT/target/pgo"
RUSTFLAGS="-Cprofile-use=$profile" CARGO_TARGET_DIR="$ROOT/target/pgo" \
  cargo build --release --locked --bins --examples
echo "== done: target/pgo/release/ccmetrics"
