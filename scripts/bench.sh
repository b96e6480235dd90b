#!/usr/bin/env bash
# Reproducible benchmarks (docs/performance.md):
#   1. criterion: parse and parse+aggregate throughput on the simulated mix;
#   2. whole-command `replay` of a generated file (default 10 M events, 10 k agents):
#      wall time over RUNS runs (min / median / max) and peak RSS;
#   3. `export` of the 15m / queue and 1d / agent snapshots;
#   4. Kafka (a local tansu broker): `serve` catching up on a 6-partition topic vs a bare
#      rdkafka consumer with the same settings, and event -> /metrics latency at a
#      steady 5 000 events/s (examples/kafka_bench.rs).
# Usage: scripts/bench.sh [all|engine|kafka|kafka-latency]
#   (N=10000000 AGENTS=10000 RUNS=3; KAFKA_N=500000 LATENCY_RATE=5000 LATENCY_SECONDS=60)
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
N=${N:-10000000}
AGENTS=${AGENTS:-10000}
RUNS=${RUNS:-3}
# About 12 contacts per agent-hour: a busy but healthy centre.
CPH=$((AGENTS * 12))
OUT=target/bench
mkdir -p "$OUT"
BIN=target/release/ccmetrics

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB"
cargo build --release --locked --bins --examples
median() { sort -n | awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}'; }

kafka_bench() {
  local n=${KAFKA_N:-500000} rate=${LATENCY_RATE:-5000} secs=${LATENCY_SECONDS:-60}
  local addr cfg events="$OUT/kafka-events-$n.jsonl"
  TANSU_PID="$OUT/tansu.pid"
  addr=$(TANSU_PID_FILE="$TANSU_PID" TANSU_LOG="$OUT/tansu.log" bash scripts/kafka-broker.sh)
  trap 'kill "$(cat "$TANSU_PID")" 2>/dev/null || true' EXIT
  export PATH="$HOME/.cargo/bin:$PATH"
  tansu topic create --broker "tcp://$addr" --partitions 6 bench >/dev/null
  tansu topic create --broker "tcp://$addr" --partitions 6 latency >/dev/null
  for topic in bench latency; do
    cat > "$OUT/kafka-$topic.toml" <<TOML
[store]
url = "sqlite://$OUT/kafka-unused.db"
[kafka]
brokers = "$addr"
topics = ["$topic"]
group_id = "bench"
dead_letter_topic = ""
TOML
  done
  cfg="$OUT/kafka-bench.toml"
  if [ "$WHAT" != kafka-latency ]; then
    [ -s "$events" ] || $BIN generate --events "$n" --agents 500 --queues 12 --out "$events"
    echo "== kafka: producing $n events to a 6-partition topic (broker $addr)"
    $BIN produce --config "$cfg" --input "$events"
    echo "== kafka: serve catching up vs a bare consumer, $RUNS runs each, alternating"
    : > "$OUT/kafka-bare"; : > "$OUT/kafka-serve"
    for _ in $(seq "$RUNS"); do
      target/release/examples/kafka_bench bare --config "$cfg" --expect "$n" | tee -a "$OUT/kafka-bare.log" \
        | sed -E 's/.* in ([0-9.]+) s.*/\1/' >> "$OUT/kafka-bare"
      target/release/examples/kafka_bench catch-up --config "$cfg" --expect "$n" --bin "$BIN" | tee -a "$OUT/kafka-serve.log" \
        | sed -E 's/.* in ([0-9.]+) s.*/\1/' >> "$OUT/kafka-serve"
    done
    read -r bmin bmed bmax < <(median < "$OUT/kafka-bare")
    read -r smin smed smax < <(median < "$OUT/kafka-serve")
    echo "bare consumer s (min/median/max): $bmin / $bmed / $bmax"
    echo "serve catch-up s (min/median/max): $smin / $smed / $smax"
    echo "serve rate as a fraction of the bare consumer's (medians): $(awk -v b="$bmed" -v s="$smed" 'BEGIN {printf "%.0f %%", 100 * b / s}')"
  fi
  echo "== kafka: event -> /metrics latency at $rate events/s for $secs s"
  target/release/examples/kafka_bench latency --config "$OUT/kafka-latency.toml" --rate "$rate" --seconds "$secs" --bin "$BIN"
}

if [ "$WHAT" = kafka ] || [ "$WHAT" = kafka-latency ]; then
  kafka_bench
  exit 0
fi

EVENTS="$OUT/events-$N-$AGENTS.jsonl"
if [ ! -s "$EVENTS" ]; then
  echo "== generating $N events ($AGENTS agents, $CPH contacts/hour)"
  $BIN generate --events "$N" --agents "$AGENTS" --queues 300 --contacts-per-hour "$CPH" --out "$EVENTS"
fi
ls -l "$EVENTS"

echo "== criterion (parse, parse+aggregate)"
cargo bench --locked --bench engine -- --noplot 2>&1 | grep -E "^events/|time:|thrpt:"

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

[ "$WHAT" = all ] && kafka_bench
exit 0
