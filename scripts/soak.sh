#!/usr/bin/env bash
# Soak test (not in CI): the simulator publishes at a steady rate into a real broker
# (a throwaway tansu) while `ccmetrics serve` consumes it into PostgreSQL. Every
# SOAK_SAMPLE seconds it records the daemon's RSS, open contacts, consumer lag and
# events read into a CSV, and at the end says whether memory was flat after warm-up.
#
#   scripts/soak.sh                         # 40-minute warm-up, then 30 minutes, at 250 events/s
#   SOAK_SECONDS=300 SOAK_RATE=800 scripts/soak.sh
#
# The engine holds every contact for the correction horizon (late corrections, FCR
# memory), so its state grows for that long before it can be flat: the soak runs with
# a short horizon (SOAK_HORIZON, default 5m; [fcr] window the same, allowed lateness
# 30s) and a warm-up longer than it. With the default 7 d horizon memory grows for a
# week, in proportion to rate x horizon, and then levels off the same way. The rolling
# windows of the live views keep a bucket per minute and key (every agent, in every
# partition) for the longest of them, an hour by default, so memory grows for that
# hour too: the soak keeps them at 5 minutes (SOAK_ROLLING, default "5m"; "5m", "15m"
# also levels off). The open snapshot windows hold a row per key and window until the window is
# flushed (the default intervals 15m, 1h and 1d: a saw-tooth an hour or a day long),
# so the soak writes 5-minute snapshots only (SOAK_INTERVALS, default "5m"); a day of
# the default intervals is what `examples/soak_model.rs` shows (docs/reliability.md).
#
# The simulator is warmed up first (SOAK_SIM_WARMUP of simulated time, default 6h,
# generated and not published: `produce --sim-warmup`): a cold simulator's event rate
# and its mix climb for about a day (email and ticket waits, resolutions, QA scores,
# reopens and callbacks come hours to days after their contact's offer), which made
# earlier soaks ramp instead of run steady. Warming up takes the producer a minute or
# two (a 6 h warm-up leaves the rate within a few % of a day's, docs/reliability.md);
# it drops what fell due meanwhile and publishes in real time from then on.
#
# Environment: SOAK_SECONDS (default: the warm-up plus 30 minutes and a minute), SOAK_RATE
# events/s (250: the in-memory broker slows down after about a million messages, and
# at 400/s it did so within the run, docs/reliability.md), SOAK_SAMPLE seconds between samples (10), SOAK_WARMUP seconds after the
# first event read that are excluded from the verdict (default: twice the longest
# retention period kept, plus 90 s, and at least 2,400 s: the RSS levels off only once
# the state of the first period has been freed and its memory reused by the second,
# and once every agent has been seen in every partition, docs/reliability.md), SOAK_PG base URL of a PostgreSQL server
# (postgres://postgres@127.0.0.1:5432/test; a database of its own is created and
# dropped), SOAK_SIM_WARMUP (6h), SOAK_ROLLING (the TOML list of rolling windows), SOAK_INTERVALS (the TOML list of
# snapshot intervals, default "5m"), SOAK_SPILL_AFTER ([windows] spill_after, default 2m), SOAK_OUT output directory (target/soak), SOAK_BIN the binary
# (target/release/ccmetrics; build it with `cargo build --release --locked --features alloc-stats --bin ccmetrics`
# for the allocated_kib column),
# SOAK_HEAPTRACK=1 to run the daemon under heaptrack's preload library (Debian package
# heaptrack; attaching to a running daemon fails here; it needs a binary built with
# malloc, `--no-default-features`, since heaptrack does not see jemalloc's allocations): every allocation is recorded
# into $OUT/heap.zst, and `heaptrack_print -M massif.out $OUT/heap.zst` gives the heap
# by call site over time. It slows the daemon down; RSS includes heaptrack's own.
#
# Verdict ("memory flat"): after warm-up, the least-squares slope of RSS over time,
# extrapolated to one hour, is below 5 % of the post-warm-up median RSS and below
# 16 MiB/h. Open contacts must stay bounded too (their slope likewise below 5 %/h of
# their median), since RSS can only stay flat if the state does. Exit status 0 when
# flat, 1 when not, 2 on setup errors.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${SOAK_RATE:-250}
SAMPLE=${SOAK_SAMPLE:-10}
HORIZON=${SOAK_HORIZON:-5m}
SIM_WARMUP=${SOAK_SIM_WARMUP:-6h}
ROLLING=${SOAK_ROLLING:-'"5m"'}
INTERVALS=${SOAK_INTERVALS:-'"5m"'}
# Closed contacts go to PostgreSQL this long after their last change, well inside the
# horizon, so every closed contact passes through the spill (and back when a late
# event reaches it) while the soak runs.
SPILL_AFTER=${SOAK_SPILL_AFTER:-2m}
# The verdict's warm-up: twice the longest period the soak's state fills for
# (correction horizon, rolling windows, snapshot intervals) plus the allowed lateness
# and a minute, so every bounded part of the state has filled once and been replaced
# once before the slope is taken; and no less than the agents' arrival (below).
WARMUP=${SOAK_WARMUP:-$(python3 - "$HORIZON" "$ROLLING" "$INTERVALS" <<'PY'
import re, sys
def secs(t):
    return int(t[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[t[-1]]
periods = [sys.argv[1]] + re.findall(r'"([^"]+)"', sys.argv[2] + " " + sys.argv[3])
# At least 40 minutes: the per-agent state (live floor, team map, key admission, in
# each of the six partitions' engines) grows until the simulator's ~24,000 agents have
# all shown up in every partition, which took about 36 minutes (heaptrack soak,
# docs/reliability.md); judging before that reads their arrival as a trend.
print(max(2 * max(secs(p) for p in periods) + 30 + 60, 2400))
PY
)}
# 30 minutes judged after the warm-up (counted from the first event read, a minute or
# two after the start while the producer warms its simulator up).
SECONDS_TOTAL=${SOAK_SECONDS:-$((WARMUP + 1800 + 60))}
PG=${SOAK_PG:-postgres://postgres@127.0.0.1:5432/test}
OUT=${SOAK_OUT:-target/soak}
BIN=${SOAK_BIN:-target/release/ccmetrics}
export PATH="$HOME/.cargo/bin:$PATH"

[ -x "$BIN" ] || { echo "error: $BIN missing: cargo build --release --locked --bin ccmetrics" >&2; exit 2; }
command -v tansu >/dev/null || { echo "error: tansu missing: scripts/kafka-broker.sh --install" >&2; exit 2; }
command -v psql >/dev/null || { echo "error: psql missing (creates the soak database)" >&2; exit 2; }
mkdir -p "$OUT"

db="ccmetrics_soak_$$"
store_url="${PG%/*}/$db"
pids=()
cleanup() {
  # Newest first (producer, then serve, then the broker): serve's shutdown commits
  # every partition, which needs the broker still up (otherwise it waits out its
  # deadline and exits 1).
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    [ "${pids[i]}" = "${serve_pid:-}" ] && { timeout 40 tail --pid="${pids[i]}" -f /dev/null 2>/dev/null || true; }
  done
  wait 2>/dev/null || true
  psql -q "$PG" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql -q "$PG" -c "CREATE DATABASE $db" >/dev/null || { echo "error: cannot create $db on $PG" >&2; exit 2; }

addr=$(TANSU_PID_FILE="$OUT/tansu.pid" TANSU_LOG="$OUT/tansu.log" bash scripts/kafka-broker.sh)
pids+=("$(cat "$OUT/tansu.pid")")
tansu topic create --broker "tcp://$addr" --partitions 6 soak >/dev/null
tansu topic create --broker "tcp://$addr" --partitions 1 soak-dlq >/dev/null

cfg="$OUT/soak.toml"
cat >"$cfg" <<EOF
[store]
url = "$store_url"
[windows]
allowed_lateness = "30s"
correction_horizon = "$HORIZON"
spill = true
spill_after = "$SPILL_AFTER"
rolling = [$ROLLING]
intervals = [$INTERVALS]
[fcr]
window = "$HORIZON"
[http]
listen = "127.0.0.1:0"
[kafka]
brokers = "$addr"
topics = ["soak"]
group_id = "soak"
dead_letter_topic = "soak-dlq"
EOF

preload=()
if [ "${SOAK_HEAPTRACK:-}" = 1 ]; then
  # What /usr/bin/heaptrack does, without its wrapper process, so $serve_pid is the
  # daemon itself (its RSS is sampled, its SIGTERM is the daemon's).
  interp=/usr/lib/heaptrack/libexec/heaptrack_interpret
  lib=/usr/lib/heaptrack/libheaptrack_preload.so
  [ -x "$interp" ] && [ -f "$lib" ] || { echo "error: heaptrack missing (Debian package heaptrack)" >&2; exit 2; }
  # heaptrack hooks malloc; jemalloc's allocations (the default build) would go unseen.
  if grep -q -a 'background_thread:true' "$BIN"; then
    echo "error: $BIN allocates with jemalloc, which heaptrack does not see; build one with malloc:" >&2
    echo "  cargo build --release --locked --no-default-features --bin ccmetrics" >&2
    exit 2
  fi
  rm -f "$OUT/heap.pipe" && mkfifo "$OUT/heap.pipe"
  "$interp" <"$OUT/heap.pipe" | zstd -q -c >"$OUT/heap.zst" &
  preload=(env LD_PRELOAD="$lib" DUMP_HEAPTRACK_OUTPUT="$OUT/heap.pipe")
fi
"${preload[@]}" "$BIN" serve --config "$cfg" >"$OUT/serve.out" 2>"$OUT/serve.log" &
serve_pid=$!
pids+=("$serve_pid")
for _ in $(seq 100); do grep -q 'metrics at' "$OUT/serve.out" 2>/dev/null && break; sleep 0.1; done
base=$(grep -o 'http://[^ ]*/metrics' "$OUT/serve.out" | head -1 | sed 's|/metrics||')
[ -n "$base" ] || { echo "error: serve did not start; see $OUT/serve.log" >&2; exit 2; }

"$BIN" produce --config "$cfg" --sim --rate "$RATE" --sim-warmup "$SIM_WARMUP" >"$OUT/produce.out" 2>"$OUT/produce.log" &
pids+=("$!")

csv="$OUT/soak.csv"
# allocated_kib: jemalloc's live bytes (`/api/v1/status` memory.allocator.allocated):
# RSS that grows while it stays flat is memory the allocator holds, not state. Empty
# unless the binary is built with `--features alloc-stats`.
echo "elapsed_s,rss_kib,open_contacts,lag,read,allocated_kib" >"$csv"
echo "== soak: ${SECONDS_TOTAL}s at ${RATE} events/s (simulator warmed up $SIM_WARMUP), correction horizon $HORIZON, rolling [$ROLLING], intervals [$INTERVALS], sampling every ${SAMPLE}s, warm-up ${WARMUP}s; $csv"
start=$(date +%s)
while :; do
  now=$(date +%s); elapsed=$(( now - start ))
  [ "$elapsed" -le "$SECONDS_TOTAL" ] || break
  kill -0 "$serve_pid" 2>/dev/null || { echo "error: serve died; see $OUT/serve.log" >&2; exit 1; }
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$serve_pid/status")
  status=$(curl -sf "$base/api/v1/status" || echo '{}')
  read -r open lag read_n allocated < <(python3 -c '
import json, sys
s = json.loads(sys.argv[1] or "{}")
lag = sum((p.get("lag") or 0) for p in s.get("partitions", []))
a = ((s.get("memory") or {}).get("allocator") or {}).get("allocated")
print(s.get("open_contacts", 0), lag, s.get("stats", {}).get("read", 0), "" if a is None else a // 1024)' "$status")
  echo "$elapsed,$rss,$open,$lag,$read_n,$allocated" | tee -a "$csv"
  sleep "$SAMPLE"
done

# Where the memory is at the end (heap, thread arenas, mappings), for diagnosis.
cat "/proc/$serve_pid/smaps" >"$OUT/smaps.end" 2>/dev/null || true
curl -sf "$base/api/v1/status" >"$OUT/status.end.json" || true

python3 scripts/soak-verdict.py "$csv" "$WARMUP"
