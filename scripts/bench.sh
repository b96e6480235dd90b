#!/usr/bin/env bash
# Reproducible benchmarks (docs/performance.md):
#   1. criterion: parse and parse+aggregate throughput on the simulated mix;
#   2. whole-command `replay` of a generated file (default 10 M events, 10 k agents):
#      wall time over RUNS runs (min / median / max) and peak RSS;
#   3. `export` of the 15m / queue and 1d / agent snapshots.
# Usage: scripts/bench.sh            (N=10000000 AGENTS=10000 RUNS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000000}
AGENTS=${AGENTS:-10000}
RUNS=${RUNS:-3}
# About 12 contacts per agent-hour: a busy but healthy centre.
CPH=$((AGENTS * 12))
OUT=target/bench
mkdir -p "$OUT"
BIN=target/release/ccmetrics

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB"
cargo build --release --locked
EVENTS="$OUT/events-$N-$AGENTS.jsonl"
if [ ! -s "$EVENTS" ]; then
  echo "== generating $N events ($AGENTS agents, $CPH contacts/hour)"
  $BIN generate --events "$N" --agents "$AGENTS" --queues 300 --contacts-per-hour "$CPH" --out "$EVENTS"
fi
ls -l "$EVENTS"

echo "== criterion (parse, parse+aggregate)"
cargo bench --locked --bench engine -- --noplot 2>&1 | grep -E "^events/|time:|thrpt:"

median() { sort -n | awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}'; }
echo "== replay, $RUNS runs"
: > "$OUT/replay-times"
for i in $(seq "$RUNS"); do
  rm -f "$OUT"/bench.db*
  CCMETRICS__STORE__URL="sqlite://$OUT/bench.db" /usr/bin/time -f "%e %M" -o "$OUT/time.$i" \
    $BIN replay --input "$EVENTS" > "$OUT/replay-summary.txt"
  cat "$OUT/time.$i" >> "$OUT/replay-times"
done
cat "$OUT/replay-summary.txt"
read -r wmin wmed wmax < <(cut -d' ' -f1 "$OUT/replay-times" | median)
read -r rmin rmed rmax < <(cut -d' ' -f2 "$OUT/replay-times" | median)
echo "replay wall s (min/median/max): $wmin / $wmed / $wmax"
echo "replay events/s at median: $(awk -v n="$N" -v t="$wmed" 'BEGIN {printf "%.0f", n / t}')"
echo "replay peak RSS MB (min/median/max): $((rmin / 1024)) / $((rmed / 1024)) / $((rmax / 1024))"

echo "== export"
for spec in "15m queue" "1d agent"; do
  set -- $spec
  CCMETRICS__STORE__URL="sqlite://$OUT/bench.db" /usr/bin/time -f "export $1 $2: %e s, %M KB" \
    $BIN export --window "$1" --dimension "$2" > "$OUT/export-$1-$2.csv"
  echo "  rows: $(($(wc -l < "$OUT/export-$1-$2.csv") - 1))"
done
