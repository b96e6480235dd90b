#!/usr/bin/env bash
# Reproducible benchmarks (docs/performance.md). Every figure is printed beside the
# machine line (cores, CPU model, memory).
#
# Usage: scripts/bench.sh [MODE]
#   engine         criterion (parse, parse+aggregate); `replay` of one generated file
#                  (N events) over RUNS runs with peak RSS; `export` 15m/queue,
#                  1d/agent and 15m/agent (wall, peak RSS)
#   gen            only generate (and cache) the comparison event sets
#   duckdb         replay + export vs the same aggregations in DuckDB SQL
#                  (benches/duckdb/), whole commands over RUNS runs, then a count check
#   parse          bare limits on the same files: read only, read + decode (the bare
#                  parse limit), read + decode + engine without a store, and `replay`
#   memory         peak RSS of replay at 10 k / 50 k / 100 k active agents (same
#                  contact rate), and at twice the events: bytes per agent / open contact
#   spill          replay of a stream longer than the correction horizon (SPILL_N events,
#                  500 agents, 6 000 contacts/h: 9.5 simulated days at 10 M) with
#                  closed contacts spilled from the first event, never spilled, and
#                  spilled from midway (the spill started past SPILL_ABOVE contacts
#                  held, as [windows] spill_above does): wall, CPU, peak RSS, and
#                  whether the exports are identical
#   scrape         /metrics response time and size with per-agent series at 10 k agents
#   publish        serve's CPU to keep the live view current at 10 k agents: fed one
#                  file on stdin, then its CPU while idle (the centre published every
#                  second, the agent part captured every 5 s), RUNS runs
#   threads        where a replay's CPU goes, thread by thread: `replay` of the first of
#                  SIZES into a fresh SQLite file under perf (cpu-clock samples; needs
#                  perf, Debian's linux-perf): CPU seconds per thread, how busy it
#                  kept the cores, and the wall time were the same work spread perfectly
#                  over every core (docs/performance.md, "thirty-fourth round"); then
#                  its timeline: per THREADS_STEP_MS [50] of wall time, how busy the
#                  cores were and each of the busiest threads' share of a core
#                  (where the write tail is: docs/performance.md, "thirty-ninth round");
#                  then a second replay under `perf sched record`: how long the cores
#                  sat idle, how much of it while the engine's thread ran (it was then
#                  the critical path), and its own running / off-CPU / waiting time
#                  (benches/sched_idle.py, "forty-fourth round"; THREADS_SCHED=0 skips)
#   grouped        what the order of the events costs the engine: `parse_bench engine`
#                  on the first of SIZES and on the same events grouped by contact
#                  (benches/group_by_contact.py), in turn over RUNS rounds: wall and CPU
#                  medians, their ratio, and the events each accepted (it fails if
#                  they differ by more than 0.1 %). PACK_AFTER_MS=-1 runs both
#                  without packing: the fair pair, since the grouped order's clock
#                  delays packing. GROUPED_FLUSH_EVERY [250000]: a flush's closed
#                  windows are corrected by the grouped order's late events; a value
#                  above the events flushes only at the end (docs/performance.md,
#                  "thirty-fifth round")
#   floor          what a batch engine could cost at best (src/engine/floor.rs):
#                  `parse_bench parse`, `engine` and `floor` on the first of SIZES, in
#                  turn over RUNS rounds: medians of the bare parse, of the engine's
#                  share of its run (engine - parse) and of the batch pass alone
#                  (`batch_secs`); then, with valgrind, the instructions per event of
#                  each (FLOOR_CALLGRIND=0 skips them, about 3 minutes at 1 M events;
#                  docs/performance.md, "forty-first round")
#   pairs          two builds side by side in alternated pairs, the method behind every
#                  round's "new / old" figures: the directories A_DIR [target/release]
#                  and B_DIR [target/pgo/release] each hold ccmetrics and
#                  examples/parse_bench. PAIRS [11] pairs of `parse_bench engine` and of
#                  `replay` + the DuckDB comparison's two exports on the first of SIZES,
#                  the side that runs first alternating: the medians of the pair-by-pair
#                  ratios B / A (wall, CPU) with their range, and each side's min /
#                  median / max (the DuckDB mode's helpers); it fails if the two sides'
#                  exports differ by a byte. A_DIR = B_DIR runs an A/A series: the host's own noise,
#                  the smallest ratio a series can tell apart (docs/performance.md,
#                  "forty-fifth round")
#   kafka          serve catching up vs a bare rdkafka consumer, then latency
#   kafka-latency  only the event -> /metrics latency
#   suite          gen + duckdb + parse + memory + scrape (the issue 6 comparison)
#   all            suite + kafka (default)
# Environment (defaults in brackets):
#   SIZES [1000000 10000000]  comparison event sets (all 10 k agents, 300 queues)
#   AGENTS [10000]  RUNS [3]  N [10000000] (engine mode)
#   MEM_N [2000000]  MEM_AGENTS [10000 50000 100000]  SPILL_N [10000000]
#   SPILL_ABOVE [300000] (spill mode's midway run)
#   MEM_SPILL_AFTER [1h]  MEM_FLUSH_EVERY [250000]  (memory mode's spilling run:
#                  [windows] spill_after and replay --flush-every; 15m and 50000 give
#                  the lowest peak, at more CPU)
#   SCRAPE_N [first of SIZES]  SCRAPES [50]  PUBLISH_FROM [20]  PUBLISH_SECONDS [20]
#   KAFKA_N [500000]  LATENCY_RATE [5000]  LATENCY_SECONDS [60]
#   KAFKA_STORE [sqlite]: postgres gives each catch-up run of serve a fresh database
#                  on the PostgreSQL server of CCMETRICS_TEST_PG (default the local
#                  test server), production's store
#   DUCKDB_PY: a python with duckdb; else scripts/duckdb-python.sh makes a venv once
#                  under ~/.cache/ccmetrics.
#   NO_HYPERFINE=1: time with /usr/bin/time loops even when hyperfine is installed.
#   PGO=1: build with scripts/pgo.sh (profile-guided) and measure target/pgo/release's
#                  binaries (docs/performance.md, "twenty-eighth round").
#   NO_BUILD=1: measure the binaries already built (with PGO=1: target/pgo/release's)
#                  instead of building first.
# Quick run: SIZES=200000 MEM_N=200000 RUNS=3 scripts/bench.sh suite
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/serve-stdin.sh
WHAT=${1:-all}
N=${N:-10000000}
AGENTS=${AGENTS:-10000}
RUNS=${RUNS:-3}
read -r -a SIZES <<< "${SIZES:-1000000 10000000}"
# About 12 contacts per agent-hour: a busy but healthy centre.
CPH=$((AGENTS * 12))
OUT=target/bench
mkdir -p "$OUT"
# PGO=1: the binaries of the profile-guided build (scripts/pgo.sh) instead of the
# plain release build.
REL=target/release
[ "${PGO:-0}" = 1 ] && REL=target/pgo/release
BIN=${BIN:-$REL/ccmetrics}
PARSE=$REL/examples/parse_bench
MACHINE="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB"
# The machine with the load average at the time of a figure: on a shared machine a
# load above the cores means the wall times are stretched (the CPU seconds are not).
machine() { echo "$MACHINE, load $(cut -d' ' -f1 /proc/loadavg)"; }

echo "== machine: $(machine)"
if [ "${NO_BUILD:-0}" = 1 ]; then
  [ -x "$BIN" ] && [ -x "$PARSE" ] || { echo "NO_BUILD=1 but $BIN or $PARSE is missing" >&2; exit 1; }
elif [ "${PGO:-0}" = 1 ]; then
  bash scripts/pgo.sh
else
  cargo build --release --locked --bins --examples
fi
# min / median / max of the numbers on stdin, one a line.
median() { sort -g | awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else printf "n/a"}'; }
# per N SECONDS: N per second, whole; "n/a" when the time is too short to have been
# measured (a small SIZES run on a fast host can take under the timer's resolution).
per() { awk -v n="$1" -v t="$2" 'BEGIN {if (t > 0) printf "%.0f", n / t; else printf "n/a"}'; }

# events FILE N AGENTS [QUEUES] [CPH] [SEED]: generate once, keep the file.
events_file() {
  local f=$1 n=$2 agents=$3 queues=${4:-300} cph=${5:-$(($3 * 12))} seed=${6:-1}
  if [ ! -s "$f" ]; then
    echo "== generating $f: $n events, $agents agents, $queues queues, $cph contacts/h, seed $seed" >&2
    $BIN generate --events "$n" --agents "$agents" --queues "$queues" \
      --contacts-per-hour "$cph" --seed "$seed" --out "$f.tmp"
    mv "$f.tmp" "$f"
  fi
}
set_file() { echo "$OUT/events-$1-$AGENTS.jsonl"; }

# time_once FILE CMD...: run CMD once (stdout discarded, stderr shown) and append its
# "wall user system" seconds to FILE, to the millisecond: bash's own timer (GNU time's
# is to the hundredth, which rounds a 100 k-event parse to 0.00 s).
time_once() {
  local file=$1
  shift
  local TIMEFORMAT='%3R %3U %3S'
  { time "$@" >/dev/null 2>&3; } 3>&2 2>>"$file"
}
# summary FILE: "min median max cpu" of a time_once file (wall seconds; mean CPU).
summary() {
  echo "$(cut -d' ' -f1 "$1" | median) $(awk '{c += $2 + $3} END {printf "%.3f", c / NR}' "$1")"
}

# timed NAME CMD...: RUNS runs of a whole command; prints "NAME min median max cpu":
# wall seconds, and the mean CPU seconds (user + system, all threads) of a run.
# hyperfine when installed (Debian package), else `time_once` in a loop.
timed() {
  local name=$1
  shift
  if [ -z "${NO_HYPERFINE:-}" ] && command -v hyperfine >/dev/null; then
    hyperfine --style none --runs "$RUNS" --warmup 0 --export-json "$OUT/$name.json" \
      -n "$name" "$(printf '%q ' "$@")" >&2
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; print(sys.argv[2], "%.3f %.3f %.3f %.2f" % (r["min"], r["median"], r["max"], r["user"] + r["system"]))' \
      "$OUT/$name.json" "$name"
  else
    : > "$OUT/$name.times"
    for _ in $(seq "$RUNS"); do
      time_once "$OUT/$name.times" "$@"
    done
    echo "$name $(summary "$OUT/$name.times")"
  fi
}

# pair_ratios A B [cpu]: "min median max" of the runs' ratios A / B, line by line: of
# the wall seconds, or with `cpu` of user + system.
pair_ratios() {
  paste -d' ' "$1" "$2" | awk -v cpu="${3:-}" '{
    a = cpu ? $2 + $3 : $1
    b = cpu ? $5 + $6 : $4
    if (b > 0) printf "%.3f\n", a / b
  }' | median
}

gen_bench() {
  for n in "${SIZES[@]}"; do events_file "$(set_file "$n")" "$n" "$AGENTS"; ls -l "$(set_file "$n")"; done
}

# Replay + export vs DuckDB over the same JSONL; both write the two CSVs.
duckdb_bench() {
  local py n f db
  py=$(bash scripts/duckdb-python.sh)
  echo "== duckdb $("$py" -c 'import duckdb; print(duckdb.__version__)'), machine: $(machine)"
  # Self-check of the SQL against a golden case the engine's tests pin.
  mkdir -p "$OUT/duckdb-golden"
  "$py" benches/duckdb/run.py tests/golden/basic_voice/events.jsonl "$OUT/duckdb-golden"
  echo "-- SQL self-check on tests/golden/basic_voice (15m / queue):"
  python3 benches/duckdb/compare.py tests/golden/basic_voice/15m_queue.csv \
    "$OUT/duckdb-golden/duckdb-15m-queue.csv" | tail -1
  for n in "${SIZES[@]}"; do
    f=$(set_file "$n")
    events_file "$f" "$n" "$AGENTS"
    db="$OUT/cmp-$n.db"
    cat > "$OUT/cmp-$n.sh" <<SH
set -e
rm -f $db $db-wal $db-shm
CCMETRICS__STORE__URL=sqlite://$db $BIN replay --input $f > $OUT/cmp-$n-replay.txt
CCMETRICS__STORE__URL=sqlite://$db $BIN export --window 15m --dimension queue > $OUT/ccmetrics-$n-15m-queue.csv
CCMETRICS__STORE__URL=sqlite://$db $BIN export --window 1d --dimension agent > $OUT/ccmetrics-$n-1d-agent.csv
SH
    mkdir -p "$OUT/duckdb-$n"
    # The same replay keeping only the two windows read (benches/duckdb/kept.toml):
    # like for like with DuckDB, which computes those two and nothing else.
    sed -e "s|replay --input|replay --config benches/duckdb/kept.toml --input|" \
      -e "s|export --window|export --config benches/duckdb/kept.toml --window|" \
      -e "s|ccmetrics-$n-|kept-$n-|g" -e "s|cmp-$n-replay|cmp-$n-kept-replay|" \
      "$OUT/cmp-$n.sh" > "$OUT/cmp-$n-kept.sh"
    echo "== $n events: replay + 2 exports vs DuckDB (load + 2 queries to CSV), $RUNS rounds, the three commands in turn in each"
    # Interleaved rather than all runs of one command, then all of the next: a shared
    # host's speed drifts over minutes (DuckDB's own median moved by 17 % between two
    # runs of the suite, docs/performance.md "thirtieth round"), and a drift then
    # lands on one side of the ratio only. Each round's ratio compares runs seconds
    # apart; their median is the figure, the ratio of the medians is printed beside it.
    local ct=$OUT/ccmetrics-$n.times dt=$OUT/duckdb-$n.times kt=$OUT/kept-$n.times
    : > "$ct"
    : > "$dt"
    : > "$kt"
    for _ in $(seq "$RUNS"); do
      time_once "$ct" bash "$OUT/cmp-$n.sh"
      time_once "$dt" "$py" benches/duckdb/run.py "$f" "$OUT/duckdb-$n"
      time_once "$kt" bash "$OUT/cmp-$n-kept.sh"
    done
    read -r cmin cmed cmax ccpu < <(summary "$ct")
    read -r dmin dmed dmax dcpu < <(summary "$dt")
    read -r kmin kmed kmax kcpu < <(summary "$kt")
    read -r rmin rmed rmax < <(pair_ratios "$dt" "$ct")
    read -r qmin qmed qmax < <(pair_ratios "$dt" "$kt")
    echo "ccmetrics replay+export s (min/median/max): $cmin / $cmed / $cmax, CPU s per run $ccpu  [$(machine)]"
    echo "duckdb s (min/median/max): $dmin / $dmed / $dmax, CPU s per run $dcpu  [$(machine)]"
    echo "ratio duckdb / ccmetrics (> 1 means ccmetrics is faster): $rmed, median of the $RUNS rounds' ratios (min $rmin, max $rmax); ratio of the medians $(ratio "$dmed" "$cmed")"
    grep -E "events read|accepted|duplicates|rejected  " "$OUT/cmp-$n-replay.txt" | sed 's/^/  /'
    echo "ccmetrics keeping only those windows, replay+export s (min/median/max): $kmin / $kmed / $kmax, CPU s per run $kcpu  [$(machine)]"
    echo "ratio duckdb / ccmetrics keeping only those windows: $qmed, median of the rounds' ratios (min $qmin, max $qmax); ratio of the medians $(ratio "$dmed" "$kmed")"
    for e in 15m-queue 1d-agent; do
      if cmp -s "$OUT/ccmetrics-$n-$e.csv" "$OUT/kept-$n-$e.csv"; then
        echo "  $e: identical to the replay keeping every window"
      else
        echo "  $e: DIFFERS from the replay keeping every window" >&2
        exit 1
      fi
    done
    echo "-- counts, 15m / queue"
    python3 benches/duckdb/compare.py "$OUT/ccmetrics-$n-15m-queue.csv" "$OUT/duckdb-$n/duckdb-15m-queue.csv" || true
    echo "-- counts, 1d / agent"
    python3 benches/duckdb/compare.py "$OUT/ccmetrics-$n-1d-agent.csv" "$OUT/duckdb-$n/duckdb-1d-agent.csv" || true
  done
}

# rate_of MODE FILE N: RUNS runs of the parse bench (or replay); prints "min median max"
# wall seconds, measured outside the process like every other figure.
parse_bench() {
  local n f mode
  # engine: decoding and the engine on one thread (as every round before the
  # forty-third measured it); engine-ahead: decoding on replay's reader thread, the
  # engine on another, as replay runs them (the issue's "parse on one core while
  # aggregating on the other").
  echo "== bare limits (read, parse and engine on one core; engine-ahead and replay decode on a thread of their own), machine: $(machine)"
  for n in "${SIZES[@]}"; do
    f=$(set_file "$n")
    events_file "$f" "$n" "$AGENTS"
    declare -A med=() cpu=()
    for mode in read parse engine engine-ahead; do
      read -r _ lo md hi c < <(timed "parse-$mode-$n" "$PARSE" "$mode" "$f")
      med[$mode]=$md
      cpu[$mode]=$c
      "$PARSE" "$mode" "$f" | tee "$OUT/parse-$mode-$n.txt" | sed 's/^/  last run: /'
      echo "$mode $n: s $lo / $md / $hi, events/s at median $(per "$n" "$md"), per CPU second $(per "$n" "$c")  [$(machine)]"
    done
    # A fresh database for every run: into the last run's, `replay` would first delete
    # its rows (its partition is replaced), about 1 s at 10 M events, in runs 2 and on.
    read -r _ lo md hi c < <(timed "parse-replay-$n" sh -c 'rm -f "$1"*; CCMETRICS__STORE__URL="sqlite://$1" exec "$2" replay --input "$3"' \
      sh "$OUT/parse-replay.db" "$BIN" "$f")
    med[replay]=$md
    cpu[replay]=$c
    echo "replay $n: s $lo / $md / $hi, events/s at median $(per "$n" "$md"), per CPU second $(per "$n" "$c")  [$(machine)]"
    # Wall medians are stretched by other load on a shared machine; CPU seconds are not.
    for m in engine engine-ahead replay; do
      echo "$m as a fraction of the bare parse rate: $(ratio "${med[parse]}" "${med[$m]}" | awk '{print ($1 == "n/a") ? $1 : sprintf("%.0f %%", 100 * $1)}') (wall medians), $(ratio "${cpu[parse]}" "${cpu[$m]}" | awk '{print ($1 == "n/a") ? $1 : sprintf("%.0f %%", 100 * $1)}') (CPU seconds)"
    done
    unset med cpu
  done
}

# Peak RSS of replay vs active agents. Every file has MEM_N events at the same contact
# rate (120 000 contacts/h, so about the same simulated time and contacts held); only
# the agents differ. One more file has 10 k agents and twice the events (twice the
# time, so twice the contacts held). "Active" = agents with a row in the 1d / agent
# export; contacts held = Engine::open_contacts (examples/parse_bench.rs, the largest
# value sampled at each flush). A least-squares fit RSS = base + a * agents +
# c * contacts over the four runs gives bytes per active agent (a) and per contact
# held (c).
memory_bench() {
  local mem_n=${MEM_N:-2000000} cph=120000 ag f rss rss_kept open agents n
  read -r -a mem_agents <<< "${MEM_AGENTS:-10000 50000 100000}"
  echo "== memory: replay peak RSS, $mem_n events at $cph contacts/h (spilling: spill_after ${MEM_SPILL_AFTER:-1h}, flush every ${MEM_FLUSH_EVERY:-250000}), machine: $(machine)"
  : > "$OUT/mem-rows"
  # peak_rss: replay with [windows] spill = true (closed contacts spilled to the store
  # an hour after their last change); no_spill: spill = false (the default), every contact of
  # the correction horizon in memory (the fit below is over these: bytes per contact
  # held); contacts_held and engine_only: parse_bench engine (no store, no spill).
  printf '%-8s %-9s %-14s %-13s %-13s %-14s %s\n' agents events active_agents peak_rss_MiB no_spill_MiB contacts_held engine_only_rss_MiB
  for spec in "${mem_agents[@]/%/:$mem_n}" "${mem_agents[0]}:$((mem_n * 2))"; do
    ag=${spec%%:*}
    n=${spec##*:}
    f="$OUT/mem-$n-$ag.jsonl"
    # Every agent must count as active: the default [cardinality] max_agents (50 000)
    # would fold the rest of a 100 k-agent file into "__overflow__".
    export CCMETRICS__CARDINALITY__MAX_AGENTS=$((ag > 50000 ? ag : 50000))
    if [ "$ag" -le 60000 ]; then
      events_file "$f" "$n" "$ag" 300 "$cph"
    elif [ ! -s "$f" ]; then
      # The simulator caps agents at 60 000: two centres of ag/2 agents (seeds 1 and 2,
      # the second's agents renamed) at half the rate each, interleaved line by line.
      # Both cover the same simulated time, so the merged file is one centre of ag
      # agents at the full rate with its lines still in near time order.
      events_file "$OUT/mem-half-a-$n-$ag.jsonl" $((n / 2)) $((ag / 2)) 300 $((cph / 2)) 1
      events_file "$OUT/mem-half-b-$n-$ag.jsonl" $((n / 2)) $((ag / 2)) 300 $((cph / 2)) 2
      paste -d '\n' "$OUT/mem-half-a-$n-$ag.jsonl" \
        <(sed 's/"agent-/"agentb-/g' "$OUT/mem-half-b-$n-$ag.jsonl") | grep -v '^$' > "$f.tmp"
      mv "$f.tmp" "$f"
      rm -f "$OUT/mem-half-a-$n-$ag.jsonl" "$OUT/mem-half-b-$n-$ag.jsonl"
    fi
    rm -f "$OUT/mem.db"*
    CCMETRICS__STORE__URL="sqlite://$OUT/mem.db" CCMETRICS__WINDOWS__SPILL=true \
      CCMETRICS__WINDOWS__SPILL_AFTER="${MEM_SPILL_AFTER:-1h}" \
      /usr/bin/time -f %M -o "$OUT/mem-rss" "$BIN" replay --input "$f" \
      --flush-every "${MEM_FLUSH_EVERY:-250000}" > /dev/null
    rss=$(($(cat "$OUT/mem-rss") / 1024))
    rm -f "$OUT/mem-kept.db"*
    CCMETRICS__STORE__URL="sqlite://$OUT/mem-kept.db" CCMETRICS__WINDOWS__SPILL=false \
      /usr/bin/time -f %M -o "$OUT/mem-rss" "$BIN" replay --input "$f" > /dev/null
    rss_kept=$(($(cat "$OUT/mem-rss") / 1024))
    agents=$(CCMETRICS__STORE__URL="sqlite://$OUT/mem.db" RUST_LOG=error "$BIN" export --window 1d --dimension agent \
      | tail -n +2 | cut -d, -f5 | sort -u | wc -l)
    CONTACT_MEMORY=1 "$PARSE" engine "$f" > "$OUT/mem-engine.txt" 2> "$OUT/mem-contacts-$ag-$n.txt"
    open=$(sed -E 's/.*max_open_contacts=([0-9]+).*/\1/' "$OUT/mem-engine.txt")
    printf '%-8s %-9s %-14s %-13s %-13s %-14s %s\n' "$ag" "$n" "$agents" "$rss" "$rss_kept" "$open" \
      "$(($(sed -E 's/.*peak_rss_kb=([0-9]+).*/\1/' "$OUT/mem-engine.txt") / 1024))"
    echo "$ag $n $agents $rss_kept $open $rss" >> "$OUT/mem-rows"
  done
  unset CCMETRICS__CARDINALITY__MAX_AGENTS
  # Where the held contacts' bytes are (engine alone, at the end of each file).
  for spec in "${mem_agents[@]/%/:$mem_n}" "${mem_agents[0]}:$((mem_n * 2))"; do
    echo "contacts, ${spec%%:*} agents, ${spec##*:} events: $(cat "$OUT/mem-contacts-${spec%%:*}-${spec##*:}.txt")"
  done
  python3 - "$OUT/mem-rows" "$(machine)" <<'PY'
import sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
# Least squares for rss_bytes = base + a * agents + c * contacts (normal equations).
X = [[1.0, r[2], r[4]] for r in rows]
y = [r[3] * 2**20 for r in rows]
A = [[sum(x[i] * x[j] for x in X) for j in range(3)] for i in range(3)]
b = [sum(x[i] * v for x, v in zip(X, y)) for i in range(3)]
# One agent count (MEM_AGENTS=10000) leaves the per-agent term undetermined: no fit.
if len({r[2] for r in rows}) > 1:
    for i in range(3):  # Gauss-Jordan; A is 3x3 and well conditioned when the runs differ
        p = A[i][i]
        A[i] = [v / p for v in A[i]]; b[i] /= p
        for k in range(3):
            if k != i:
                f = A[k][i]
                A[k] = [u - f * v for u, v in zip(A[k], A[i])]; b[k] -= f * b[i]
    base, per_agent, per_contact = b
    print(f"fit over {len(rows)} runs: base {base / 2**20:.0f} MiB + {per_agent:.0f} bytes per active agent"
          f" + {per_contact:.0f} bytes per contact held  [{sys.argv[2]}]")
else:
    print(f"one agent count only: no fit (give MEM_AGENTS two or more)  [{sys.argv[2]}]")
lo, dbl = rows[0], rows[-1]
print(f"10 k agents, twice the events: {lo[3]:.0f} -> {dbl[3]:.0f} MiB without spilling, contacts held {lo[4]:.0f} -> {dbl[4]:.0f}")
print(f"10 k agents, twice the events, spilling: {lo[5]:.0f} -> {dbl[5]:.0f} MiB")
PY
}

# /metrics at 10 k agents, per-agent series on (max_agent_series above the agents) and,
# for reference, off: serve reads a generated file on stdin, then SCRAPES scrapes once
# every event is in, SCRAPE_GAP seconds apart (default 0.5). idle_timeout is raised to 1 h so the engine clock stays at the
# file's last event during the scrapes (otherwise it jumps to the wall clock after 30 s
# of no input, the rolling windows empty and the response shrinks mid-measurement).
scrape_bench() {
  local n=${SCRAPE_N:-${SIZES[0]}} f
  f=$(set_file "$n")
  events_file "$f" "$n" "$AGENTS"
  scrape_one "$f" true
  scrape_one "$f" false
}

scrape_one() {
  local f=$1 per_agent=$2 scrapes=${SCRAPES:-50} pid addr lines
  lines=$(wc -l < "$f")
  rm -f "$OUT/scrape.db"*
  CCMETRICS__STORE__URL="sqlite://$OUT/scrape.db" CCMETRICS__HTTP__LISTEN=127.0.0.1:0 \
    CCMETRICS__HTTP__PER_AGENT_SERIES=$per_agent CCMETRICS__HTTP__MAX_AGENT_SERIES=1000000 \
    CCMETRICS__WINDOWS__IDLE_TIMEOUT=1h \
    "$BIN" serve --source stdin < "$f" > "$OUT/scrape-serve.out" 2> "$OUT/scrape-serve.log" &
  pid=$!
  addr=$(serve_addr "$OUT/scrape-serve.out" "$pid") \
    || { echo "serve did not start; see $OUT/scrape-serve.log" >&2; return 1; }
  echo "== scrape, per-agent series $per_agent: serve --source stdin fed $lines lines ($AGENTS agents)"
  local read_total
  if ! read_total=$(serve_read "$addr" "$pid" "$lines"); then
    echo "serve read only $read_total of $lines lines in 600 s; see $OUT/scrape-serve.log" >&2
    kill -INT "$pid"; wait "$pid" || true
    return 1
  fi
  sleep 2 # one more publish tick after the last event, so the scrape shows everything
  curl -s "http://$addr/metrics" > "$OUT/scrape-metrics-$per_agent.txt"
  echo "samples: $(grep -vc '^#' "$OUT/scrape-metrics-$per_agent.txt" || true), agents with series: $(grep -o 'agent="[^"]*"' "$OUT/scrape-metrics-$per_agent.txt" | sort -u | wc -l)"
  : > "$OUT/scrape-times"
  for _ in $(seq "$scrapes"); do
    curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://$addr/metrics" >> "$OUT/scrape-times"
    # Spaced out so the run crosses several captures of the agent part (every 5 s):
    # scrapes right after one find its text still being rendered ahead.
    sleep "${SCRAPE_GAP:-0.5}"
  done
  read -r tmin tmed tmax < <(cut -d' ' -f1 "$OUT/scrape-times" | median)
  read -r smin smed smax < <(cut -d' ' -f2 "$OUT/scrape-times" | median)
  echo "/metrics ms (min/median/max of $scrapes): $(awk -v a="$tmin" -v b="$tmed" -v c="$tmax" 'BEGIN {printf "%.1f / %.1f / %.1f", a*1000, b*1000, c*1000}')  [$(machine)]"
  echo "/metrics bytes (min/median/max): $smin / $smed / $smax; gzip -6 of one: $(gzip -6 -c "$OUT/scrape-metrics-$per_agent.txt" | wc -c)"
  echo "serve RSS after the scrapes: $(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status") MiB, peak $(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status") MiB"
  kill -INT "$pid"
  wait "$pid" || true
}

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
    echo "== kafka: producing $n events to a 6-partition topic (broker $addr), machine: $(machine)"
    $BIN produce --config "$cfg" --input "$events"
    local store_flag="" store_name="SQLite"
    if [ "${KAFKA_STORE:-sqlite}" = postgres ]; then
      store_flag="--postgres" store_name="PostgreSQL (a fresh database per run)"
    fi
    echo "== kafka: serve ($store_name store) catching up vs a bare consumer, $RUNS runs each, alternating"
    : > "$OUT/kafka-bare"; : > "$OUT/kafka-serve"
    for _ in $(seq "$RUNS"); do
      "$REL"/examples/kafka_bench bare --config "$cfg" --expect "$n" | tee -a "$OUT/kafka-bare.log" \
        | sed -E 's/.* in ([0-9.]+) s.*/\1/' >> "$OUT/kafka-bare"
      "$REL"/examples/kafka_bench catch-up --config "$cfg" --expect "$n" --bin "$BIN" $store_flag | tee -a "$OUT/kafka-serve.log" \
        | sed -E 's/.* in ([0-9.]+) s.*/\1/' >> "$OUT/kafka-serve"
    done
    read -r bmin bmed bmax < <(median < "$OUT/kafka-bare")
    read -r smin smed smax < <(median < "$OUT/kafka-serve")
    echo "bare consumer s (min/median/max): $bmin / $bmed / $bmax"
    echo "serve catch-up s (min/median/max): $smin / $smed / $smax"
    echo "serve rate as a fraction of the bare consumer's (medians): $(awk -v b="$bmed" -v s="$smed" 'BEGIN {printf "%.0f %%", 100 * b / s}')"
  fi
  echo "== kafka: event -> /metrics latency at $rate events/s for $secs s"
  "$REL"/examples/kafka_bench latency --config "$OUT/kafka-latency.toml" --rate "$rate" --seconds "$secs" --bin "$BIN"
}

# Where a replay's CPU goes, thread by thread (docs/performance.md, "thirty-fourth
# round"): perf's cpu-clock samples at THREADS_HZ per busy CPU, counted per thread
# name, over the span from the first sample to the last.
threads_bench() {
  command -v perf > /dev/null || { echo "threads: needs perf (Debian: apt-get install linux-perf)" >&2; exit 1; }
  local n=${SIZES[0]} hz=${THREADS_HZ:-2000} step=${THREADS_STEP_MS:-50} f db data samples
  f=$(set_file "$n")
  events_file "$f" "$n" "$AGENTS"
  db="$OUT/threads.db" data="$OUT/threads.perf" samples="$OUT/threads.samples"
  rm -f "$db" "$db-wal" "$db-shm"
  echo "== threads: replay of $n events into a fresh SQLite file under perf ($hz Hz), machine: $(machine)"
  CCMETRICS__STORE__URL="sqlite://$db" RUST_LOG=error \
    perf record -q -e cpu-clock -F "$hz" -o "$data" "$BIN" replay --input "$f" > /dev/null
  # One line per sample, "thread time:", read by both summaries below.
  perf script -i "$data" -F comm,time 2> /dev/null > "$samples"
  awk -v hz="$hz" -v cores="$(nproc)" '
    { t = $NF; sub(":", "", t); n[$1]++; total++
      if (first == "" || t < first) first = t
      if (t > last) last = t }
    END {
      wall = last - first
      for (c in n) printf "  %-18s %6.2f CPU s  %5.1f %%\n", c, n[c] / hz, 100 * n[c] / total | "sort -k2 -rn"
      close("sort -k2 -rn")
      printf "all threads: %.2f CPU s over %.2f s of wall time: %.0f %% of the %d cores kept busy (other processes load the machine too: run it alone)\n", total / hz, wall, 100 * total / hz / wall / cores, cores
      printf "the same work spread perfectly over every core: %.2f s, %.2f of the wall time\n", total / hz / cores, total / hz / cores / wall
    }' "$samples"
  # The same samples by time: a step's samples per thread, as a share of one core
  # (a thread's name is cut to 15 characters by the kernel, to 10 here).
  echo "timeline: per ${step} ms of wall time, the cores' busy share, then each busiest thread's share of one core (%)"
  awk -v hz="$hz" -v cores="$(nproc)" -v step="$step" -v top=7 '
    { t = $NF; sub(":", "", t)
      if (first == "" || t < first) first = t
      at[NR] = t; who[NR] = $1; n[$1]++ }
    END {
      per = hz * step / 1000
      # The busiest threads, by their samples.
      k = 0
      for (c in n) names[++k] = c
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
        if (n[names[j]] > n[names[i]]) { x = names[i]; names[i] = names[j]; names[j] = x }
      shown = (k < top) ? k : top
      for (r = 1; r <= NR; r++) { b = int((at[r] - first) * 1000 / step); s[b, who[r]]++; all[b]++; if (b > last) last = b }
      printf "%7s %5s", "t (s)", "busy"
      for (i = 1; i <= shown; i++) printf " %10.10s", names[i]
      printf "\n"
      for (b = 0; b <= last; b++) {
        printf "%7.2f %5.0f", b * step / 1000, 100 * all[b] / per / cores
        for (i = 1; i <= shown; i++) printf " %10.0f", 100 * s[b, names[i]] / per
        printf "\n"
      }
    }' "$samples"
  # Samples count CPU time; they cannot tell an idle core from one not sampled, nor
  # why a thread was off the CPU. The scheduler's own record of a second run can
  # (docs/performance.md, "forty-fourth round"). THREADS_SCHED=0 skips it.
  if [ "${THREADS_SCHED:-1}" != 0 ]; then
    local sched="$OUT/threads.sched"
    rm -f "$db" "$db-wal" "$db-shm"
    echo "== threads: the same replay under perf sched: idle cores, and whether the engine's thread was running meanwhile"
    if CCMETRICS__STORE__URL="sqlite://$db" RUST_LOG=error \
      perf sched record -q -o "$sched" "$BIN" replay --input "$f" > /dev/null 2>&1; then
      python3 benches/sched_idle.py "$sched" \
        || echo "threads: could not read the scheduler's record ($sched); skipped" >&2
    else
      echo "threads: perf sched record failed (scheduler tracepoints need root or perf_event_paranoid <= -1); skipped" >&2
    fi
  fi
}

# The engine on the events as they come and grouped by contact (docs/performance.md,
# "thirty-fifth round"): the same work, without the interleaving of contacts that makes
# nearly every event's contact a cache miss.
grouped_bench() {
  local n=${SIZES[0]} f g at gt every=${GROUPED_FLUSH_EVERY:-250000}
  f=$(set_file "$n")
  events_file "$f" "$n" "$AGENTS"
  g="$OUT/grouped-$n-$AGENTS.jsonl"
  # Written aside and moved, as `events_file` does: an interrupted run leaves no
  # half file for the next one to take as done.
  if [ ! -s "$g" ]; then
    python3 benches/group_by_contact.py "$f" "$g.tmp"
    mv "$g.tmp" "$g"
  fi
  echo "== grouped: parse_bench engine (flush every $every), $n events as generated and grouped by contact, $RUNS rounds in turn, machine: $(machine)"
  at=$OUT/grouped-as-is.times gt=$OUT/grouped-grouped.times
  : > "$at"
  : > "$gt"
  # Each timed run keeps its own report (`time_once` discards stdout): the check
  # below reads the last round's, not the report of one more run of each.
  for _ in $(seq "$RUNS"); do
    time_once "$at" sh -c 'exec "$@" > "$0"' "$at.out" "$PARSE" engine --flush-every "$every" "$f"
    time_once "$gt" sh -c 'exec "$@" > "$0"' "$gt.out" "$PARSE" engine --flush-every "$every" "$g"
  done
  local as_is grouped
  as_is=$(cat "$at.out")
  grouped=$(cat "$gt.out")
  echo "  as generated: $as_is"
  echo "  grouped:      $grouped"
  # The comparison holds only if both runs did the same work. An event too late for
  # the correction horizon in one order can be in time in the other (a few hundred of
  # 10 M events): up to 0.1 % of the events may differ.
  local a b
  a=$(grep -o 'accepted=[0-9]*' <<< "$as_is" | cut -d= -f2)
  b=$(grep -o 'accepted=[0-9]*' <<< "$grouped" | cut -d= -f2)
  if [ "$a" != "$b" ]; then
    echo "  accepted: $a as generated, $b grouped (the correction horizon decides by order)"
    if [ $(( (a > b ? a - b : b - a) * 1000 )) -gt "$n" ]; then
      echo "grouped: the two orders accepted events that differ by more than 0.1 %; the comparison does not hold" >&2
      return 1
    fi
  fi
  read -r amin amed amax acpu < <(summary "$at")
  read -r gmin gmed gmax gcpu < <(summary "$gt")
  read -r rmin rmed rmax < <(pair_ratios "$gt" "$at")
  echo "as generated: s $amin / $amed / $amax, CPU s per run $acpu  [$(machine)]"
  echo "grouped by contact: s $gmin / $gmed / $gmax, CPU s per run $gcpu  [$(machine)]"
  echo "grouped / as generated: wall $rmed, median of the rounds' ratios (min $rmin, max $rmax); CPU $(ratio "$gcpu" "$acpu")"
}

# instructions FILE MODE: callgrind's instruction count of `parse_bench MODE FILE`,
# every thread together, and of its decoding (`Decoder::decode_with`, inclusive).
instructions() {
  local out="$OUT/floor-callgrind-$2"
  rm -f "$out"*
  valgrind --tool=callgrind --callgrind-out-file="$out" "$PARSE" "$2" "$1" > /dev/null 2>&1
  local total decode
  total=$(grep -m1 '^summary:' "$out" | awk '{print $2}')
  # awk reads to the end: `grep -m1` would close the pipe on callgrind_annotate.
  decode=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null \
    | awk '/Decoder::decode_with \[/ && !done {gsub(",", "", $1); print $1; done = 1}')
  echo "$total ${decode:-0}"
}

floor_bench() {
  local n=${SIZES[0]} f pt et ft
  f=$(set_file "$n")
  events_file "$f" "$n" "$AGENTS"
  echo "== floor: parse_bench parse / engine / floor, $n events, $RUNS rounds in turn, machine: $(machine)"
  pt=$OUT/floor-parse.times et=$OUT/floor-engine.times ft=$OUT/floor-batch.secs
  : > "$pt"
  : > "$et"
  : > "$ft"
  for _ in $(seq "$RUNS"); do
    "$PARSE" parse "$f" | grep -o ' secs=[0-9.]*' | cut -d= -f2 >> "$pt"
    "$PARSE" engine "$f" | grep -o ' secs=[0-9.]*' | cut -d= -f2 >> "$et"
    "$PARSE" floor "$f" | tee "$OUT/floor-last.txt" | grep -o 'batch_secs=[0-9.]*' | cut -d= -f2 >> "$ft"
  done
  echo "  last floor run: $(cat "$OUT/floor-last.txt")"
  read -r plo pmd phi < <(median < "$pt")
  read -r elo emd ehi < <(median < "$et")
  read -r flo fmd fhi < <(median < "$ft")
  # The engine's own share of its run: its seconds less the same round's bare parse.
  read -r slo smd shi < <(paste -d' ' "$et" "$pt" | awk '{printf "%.3f\n", $1 - $2}' | median)
  echo "bare parse: s $plo / $pmd / $phi  [$(machine)]"
  echo "engine (decode + engine): s $elo / $emd / $ehi; the engine's share (engine - parse, per round): s $slo / $smd / $shi"
  echo "batch floor (the pass alone, every event decoded beforehand): s $flo / $fmd / $fhi"
  echo "batch floor / the engine's share: $(ratio "$fmd" "$smd") (medians)"
  if [ "${FLOOR_CALLGRIND:-1}" = 0 ] || ! command -v valgrind > /dev/null; then
    return 0
  fi
  local pi ei fi_ pd ed fd
  read -r pi pd < <(instructions "$f" parse)
  read -r ei ed < <(instructions "$f" engine)
  read -r fi_ fd < <(instructions "$f" floor)
  # Per event: decoding is the same in all three; what each adds is the rest.
  awk -v n="$n" -v pi="$pi" -v pd="$pd" -v ei="$ei" -v ed="$ed" -v fi="$fi_" -v fd="$fd" 'BEGIN {
    printf "instructions per event (callgrind, every thread): bare parse %.0f (decoding %.0f)\n", pi / n, pd / n
    printf "  engine adds %.0f, the batch floor adds %.0f (floor / engine %.2f)\n", (ei - ed) / n - (pi - pd) / n, (fi - fd) / n - (pi - pd) / n, ((fi - fd) - (pi - pd)) / ((ei - ed) - (pi - pd))
    printf "  the budget for 70 %% of bare parse: %.0f added\n", (pi / n) * (1 / 0.7 - 1)
  }'
}

# pairs_run KIND DIR SIDE FILE: the command of one run of KIND with DIR's binaries:
# `parse_bench engine`, or `replay` + the two exports into a fresh SQLite file (the
# exports kept as $OUT/pairs-SIDE-*.csv, for the check that both sides agree).
pairs_run() {
  local kind=$1 dir=$2 side=$3 f=$4 db="$OUT/pairs-$3.db"
  case "$kind" in
    engine) "$dir/examples/parse_bench" engine "$f" ;;
    replay)
      rm -f "$db" "$db-wal" "$db-shm"
      CCMETRICS__STORE__URL="sqlite://$db" RUST_LOG=error "$dir/ccmetrics" replay --input "$f" &&
        CCMETRICS__STORE__URL="sqlite://$db" "$dir/ccmetrics" export --window 15m --dimension queue \
          > "$OUT/pairs-$side-15m-queue.csv" &&
        CCMETRICS__STORE__URL="sqlite://$db" "$dir/ccmetrics" export --window 1d --dimension agent \
          > "$OUT/pairs-$side-1d-agent.csv"
      ;;
  esac
}

pairs_bench() {
  local n=${SIZES[0]} f a=${A_DIR:-target/release} b=${B_DIR:-target/pgo/release}
  local count=${PAIRS:-11} i order side dir kind e
  for dir in "$a" "$b"; do
    if [ ! -x "$dir/ccmetrics" ] || [ ! -x "$dir/examples/parse_bench" ]; then
      echo "pairs: $dir/ccmetrics or $dir/examples/parse_bench is missing (build it, or set A_DIR / B_DIR)" >&2
      return 1
    fi
  done
  f=$(set_file "$n")
  events_file "$f" "$n" "$AGENTS"
  echo "== pairs: B = $b against A = $a, $count alternated pairs, $n events, machine: $(machine)"
  for kind in engine replay; do
    : > "$OUT/pairs-$kind-A.times"
    : > "$OUT/pairs-$kind-B.times"
  done
  for i in $(seq "$count"); do
    # The side that runs first alternates: a host's speed drifts, and the first of two
    # runs can be the faster (caches, turbo), so neither side gets the same place.
    order="A B"
    [ $((i % 2)) = 0 ] && order="B A"
    for kind in engine replay; do
      for side in $order; do
        dir=$a
        [ "$side" = B ] && dir=$b
        time_once "$OUT/pairs-$kind-$side.times" pairs_run "$kind" "$dir" "$side" "$f"
      done
    done
  done
  local wmin wmed wmax cmin cmed cmax lo med hi cpu
  for kind in engine replay; do
    read -r wmin wmed wmax < <(pair_ratios "$OUT/pairs-$kind-B.times" "$OUT/pairs-$kind-A.times")
    read -r cmin cmed cmax < <(pair_ratios "$OUT/pairs-$kind-B.times" "$OUT/pairs-$kind-A.times" cpu)
    echo "$kind: B / A, median of the $count pairs' ratios (min, max): wall $wmed ($wmin, $wmax), CPU $cmed ($cmin, $cmax)"
    for side in A B; do
      read -r lo med hi cpu < <(summary "$OUT/pairs-$kind-$side.times")
      echo "  $side: s $lo / $med / $hi, CPU s per run $cpu"
    done
  done
  echo "  [$(machine)]"
  # A faster build that computes other figures is not faster: the exports must match.
  for e in 15m-queue 1d-agent; do
    if cmp -s "$OUT/pairs-A-$e.csv" "$OUT/pairs-B-$e.csv"; then
      echo "  export $e: byte-identical on both sides ($(wc -l < "$OUT/pairs-A-$e.csv") lines)"
    else
      echo "pairs: export $e DIFFERS between $a and $b" >&2
      return 1
    fi
  done
}

engine_bench() {
  local events="$OUT/events-$N-$AGENTS.jsonl"
  events_file "$events" "$N" "$AGENTS" 300 "$CPH"
  ls -l "$events"

  echo "== criterion (parse, parse+aggregate)"
  cargo bench --locked --bench engine -- --noplot 2>&1 | grep -E "^events/|time:|thrpt:"

  echo "== replay, $RUNS runs"
  : > "$OUT/replay-times"
  for i in $(seq "$RUNS"); do
    rm -f "$OUT"/bench.db*
    CCMETRICS__STORE__URL="sqlite://$OUT/bench.db" /usr/bin/time -f "%e %M" -o "$OUT/time.$i" \
      $BIN replay --input "$events" > "$OUT/replay-summary.txt"
    cat "$OUT/time.$i" >> "$OUT/replay-times"
  done
  cat "$OUT/replay-summary.txt"
  read -r wmin wmed wmax < <(cut -d' ' -f1 "$OUT/replay-times" | median)
  read -r rmin rmed rmax < <(cut -d' ' -f2 "$OUT/replay-times" | median)
  echo "replay wall s (min/median/max): $wmin / $wmed / $wmax"
  echo "replay events/s at median: $(per "$N" "$wmed")"
  echo "replay peak RSS MB (min/median/max): $((rmin / 1024)) / $((rmed / 1024)) / $((rmax / 1024))"

  echo "== export"
  # 15m / agent is the largest (a row per agent and quarter-hour): its peak RSS shows
  # that an export holds one row, whatever its length.
  for spec in "15m queue" "1d agent" "15m agent"; do
    set -- $spec
    CCMETRICS__STORE__URL="sqlite://$OUT/bench.db" /usr/bin/time -f "export $1 $2: %e s, %M KB" \
      $BIN export --window "$1" --dimension "$2" > "$OUT/export-$1-$2.csv"
    echo "  rows: $(($(wc -l < "$OUT/export-$1-$2.csv") - 1))"
  done
}

# serve --source stdin fed the first comparison file; once it has read it (PUBLISH_FROM
# seconds after start, default 20), the CPU seconds (user + system, /proc/PID/stat) the
# idle process uses over PUBLISH_SECONDS (20): the publisher keeping the live view (and
# /metrics) current with nothing arriving, the centre every second and the agent part
# every 5 s. The engine clock stays at the file's last event (idle_timeout 1 h), so the
# rolling windows keep every agent's rows. RUNS runs.
publish_bench() {
  local n=${SCRAPE_N:-${SIZES[0]}} f from=${PUBLISH_FROM:-20} secs=${PUBLISH_SECONDS:-20} i pid a b tk
  f=$(set_file "$n")
  events_file "$f" "$n" "$AGENTS"
  tk=$(getconf CLK_TCK)
  echo "== publish: serve --source stdin fed $(wc -l < "$f") lines ($AGENTS agents); CPU while idle from ${from}s for ${secs}s; $(machine)"
  for i in $(seq "$RUNS"); do
    rm -f "$OUT/publish.db"*
    CCMETRICS__STORE__URL="sqlite://$OUT/publish.db" CCMETRICS__HTTP__LISTEN=127.0.0.1:0 \
      CCMETRICS__WINDOWS__IDLE_TIMEOUT=1h \
      "$BIN" serve --source stdin < "$f" > /dev/null 2> "$OUT/publish.log" &
    pid=$!
    sleep "$from"
    a=$(awk -v t="$tk" '{print ($14 + $15) / t}' "/proc/$pid/stat")
    sleep "$secs"
    b=$(awk -v t="$tk" '{print ($14 + $15) / t}' "/proc/$pid/stat")
    kill -TERM "$pid"
    wait "$pid" || true
    echo "run $i: $(awk -v a="$a" -v b="$b" -v s="$secs" 'BEGIN {printf "%.2f CPU s in %d s idle (%.1f %% of a core)", b - a, s, 100 * (b - a) / s}'); CPU at ${from}s: $a s"
  done
}

spill_bench() {
  local n=${SPILL_N:-10000000} above=${SPILL_ABOVE:-300000} f v
  f="$OUT/long-$n-500.jsonl"
  events_file "$f" "$n" 500 12 6000
  echo "== spill: replay of $f ($n events, 500 agents, 6 000 contacts/h), machine: $(machine)"
  # on: spilled from the first event; never: every contact of the horizon kept in
  # memory; midway: the spill off, started past SPILL_ABOVE contacts held
  # (docs/performance.md, "fortieth round").
  for v in on never midway; do
    local env=(CCMETRICS__STORE__URL="sqlite://$OUT/spill-$v.db")
    case $v in
      on) env+=(CCMETRICS__WINDOWS__SPILL=true) ;;
      never) env+=(CCMETRICS__WINDOWS__SPILL=false CCMETRICS__WINDOWS__SPILL_ABOVE=never) ;;
      midway) env+=(CCMETRICS__WINDOWS__SPILL=false CCMETRICS__WINDOWS__SPILL_ABOVE="$above") ;;
    esac
    rm -f "$OUT/spill-$v.db"*
    env "${env[@]}" /usr/bin/time -f "%e %U %S %M" -o "$OUT/spill-$v.time" "$BIN" replay --input "$f" \
      > "$OUT/spill-$v.out" 2> "$OUT/spill-$v.log"
    read -r wall user sys rss < "$OUT/spill-$v.time"
    echo "spill $v: wall $wall s, CPU $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') s, peak RSS $((rss / 1024)) MiB; $(grep -o 'contacts spilled.*' "$OUT/spill-$v.out" || echo 'no contact spilled')"
    for e in "15m queue" "1d agent" "1h team" "1d all"; do
      set -- $e
      CCMETRICS__STORE__URL="sqlite://$OUT/spill-$v.db" RUST_LOG=error "$BIN" export \
        --window "$1" --dimension "$2" --format jsonl
    done > "$OUT/spill-$v.export"
  done
  for v in on midway; do
    if cmp -s "$OUT/spill-never.export" "$OUT/spill-$v.export"; then
      echo "exports identical, $v and never ($(wc -l < "$OUT/spill-never.export") rows)"
    else
      echo "EXPORTS DIFFER: diff $OUT/spill-never.export $OUT/spill-$v.export"
      return 1
    fi
  done
}

case "$WHAT" in
  engine) engine_bench ;;
  spill) spill_bench ;;
  gen) gen_bench ;;
  duckdb) duckdb_bench ;;
  parse) parse_bench ;;
  memory) memory_bench ;;
  scrape) scrape_bench ;;
  publish) publish_bench ;;
  threads) threads_bench ;;
  grouped) grouped_bench ;;
  floor) floor_bench ;;
  pairs) pairs_bench ;;
  kafka | kafka-latency) kafka_bench ;;
  suite) gen_bench; duckdb_bench; parse_bench; memory_bench; scrape_bench ;;
  all) gen_bench; duckdb_bench; parse_bench; memory_bench; scrape_bench; kafka_bench ;;
  *) echo "unknown mode $WHAT (engine|gen|duckdb|parse|memory|spill|scrape|publish|threads|grouped|floor|kafka|kafka-latency|suite|all)" >&2; exit 2 ;;
esac
