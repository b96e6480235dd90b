#!/usr/bin/env bash
# Agreement check at scale: the figures of a replay must not depend on how the events
# arrive or where they are kept, and must match an independent SQL definition.
#
#   scripts/agree.sh            # six simulated centres, 200 k to 1 M events (~1 min on 2 cores)
#   scripts/agree.sh --quick    # two small centres (what scripts/test.sh runs, ~15 s)
#
# For each simulated centre (`ccmetrics generate`: a shape of agents, queues and load)
# it replays the events once as the reference, exports five reports (15m / queue,
# 1d / agent, 1h / team, 1h / channel, 1d / all) and scores the agents. Then:
#   1. DuckDB SQL (benches/duckdb/: written from docs/metrics.md, not from the engine)
#      computes the 15m / queue and 1d / agent counts of the centres in UTC (its
#      buckets are UTC's); benches/duckdb/compare.py must say "agree" for both.
#   2. Each variant below must export the same five reports and the same period scores
#      (`score --period 2026-11` with each scheme of config/schemes/), byte for byte
#      except the reports' `revision` column (it counts the flushes that touched a row,
#      so it depends on the flush cadence by definition):
#        flush-1k     `--flush-every 1000`: many partial flushes, corrections as revisions
#        flush-none   one flush at the end of the input
#        spill        settled contacts spilled to scratch files after 15 minutes
#        split        the same events as two input files
#        doubled      every event twice (the file concatenated with itself): duplicates
#                     and events past the correction horizon must change nothing
#        postgres     the PostgreSQL store instead of SQLite
#        shuffled     lines shuffled within blocks of 50 (events seconds out of order,
#                     well inside the allowed lateness)
# Exit status 1 when any check fails; the differing files stay in $AGREE_OUT.
#
# Environment:
#   BIN               a ccmetrics binary; default target/release/ccmetrics, or with
#                     --quick target/debug/ccmetrics, built first so that it is current
#   AGREE_OUT         where the reports go (target/agree)
#   CCMETRICS_TEST_PG a database URL on the PostgreSQL server to use, as for the tests
#                     (postgres://postgres@127.0.0.1:5432/test); a database of its own
#                     is created beside it and dropped
#   DUCKDB_PY         a python with duckdb; else scripts/duckdb-python.sh makes a
#                     venv once under ~/.cache/ccmetrics, from PyPI
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
OUT=${AGREE_OUT:-target/agree}
# The tests' variable names a database on the server; ours is created beside it.
PG=${CCMETRICS_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}
PG=${PG%/*}
if [ $quick = 1 ]; then
  [ -n "${BIN:-}" ] || { cargo build --locked --bin ccmetrics; BIN=target/debug/ccmetrics; }
  # name events agents queues contacts-per-hour seed [time-zone start]: 60 k events,
  # about six hours of a small, overloaded centre (many abandons and long waits); then
  # 30 k events in New York's time zone across the end of daylight saving time.
  SHAPES=("quick 60000 80 6 1500 11" "quick-dst 30000 60 4 1200 12 America/New_York 2026-11-01T03:00:00Z")
else
  [ -n "${BIN:-}" ] || { cargo build --release --locked --bin ccmetrics; BIN=target/release/ccmetrics; }
  SHAPES=(
    "large 1000000 10000 300 120000 2"  # the benchmark's centre
    "mid 500000 2000 40 30000 4"
    "overloaded 600000 500 8 20000 5"   # more abandons than answers
    "small 200000 300 12 8000 7"
    "long 300000 20 3 100 3"            # 15 days: past the 7-day correction horizon
    # New York's time zone, 10 hours across the end of daylight saving time (06:00 UTC)
    # and local midnight: windows of 15 minutes to a 25-hour day.
    "dst 400000 300 12 8000 8 America/New_York 2026-11-01T00:00:00Z"
  )
fi

PY=$(bash scripts/duckdb-python.sh)

db_name="agree_$$"
export PGOPTIONS="-c client_min_messages=warning"
cleanup() { psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db_name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

failures=0
checks=0
fail() { echo "  FAIL $*"; failures=$((failures + 1)); }

# export_all DB PREFIX DIR: the five reports of a store and its period scores.
export_all() {
  local db=$1 p=$2 dir=$3 w d
  for wd in "15m queue" "1d agent" "1h team" "1h channel" "1d all"; do
    read -r w d <<< "$wd"
    CCMETRICS__STORE__URL=$db "$BIN" export --window "$w" --dimension "$d" > "$dir/$p-$w-$d.csv"
  done
  # The period scores HR reads (config/schemes/), from the day snapshots.
  for scheme in balanced callcenter ecommerce; do
    CCMETRICS__STORE__URL=$db "$BIN" score --scheme "config/schemes/$scheme.toml" --period 2026-11 \
      --out "$dir/$p-score-$scheme" > "$dir/$p-score-$scheme.txt" 2>&1
    mv "$dir/$p-score-$scheme/scores.csv" "$dir/$p-scores-$scheme.csv"
    rm -rf "$dir/$p-score-$scheme"
  done
}

# comparable FILE: a report without its last column, `revision` (asserted on the header
# below); a score file as it is.
comparable() {
  case "$1" in
    *-scores-*) cat "$1" ;;
    *) sed 's/,[0-9]*$//' "$1" ;;
  esac
}

# variant DIR NAME DB [env...] -- replay args: replays, exports and compares with the reference.
variant() {
  local dir=$1 name=$2 db=$3 x y lines differ=()
  shift 3
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  if ! env "${envs[@]}" CCMETRICS__STORE__URL="$db" "$BIN" replay "$@" > "$dir/$name-replay.txt" 2>&1; then
    fail "$name: replay failed (see $dir/$name-replay.txt)"
    return
  fi
  export_all "$db" "$name" "$dir"
  for x in "$dir"/ref-*.csv; do
    y=${x/\/ref-/\/$name-}
    checks=$((checks + 1))
    lines=$({ diff <(comparable "$x") <(comparable "$y") || true; } | awk '/^[<>]/ { n++ } END { print n + 0 }')
    [ "$lines" -eq 0 ] || differ+=("$(basename "$y") ($lines lines differ)")
  done
  if [ ${#differ[@]} -eq 0 ]; then
    echo "  same figures: $name"
  else
    fail "$name differs from the reference: ${differ[*]}"
  fi
}

for shape in "${SHAPES[@]}"; do
  read -r name n agents queues cph seed tz start <<< "$shape"
  tz=${tz:-UTC}
  # Every replay and export of this centre reads its windows in that zone.
  export CCMETRICS__WINDOWS__TIMEZONE=$tz
  dir="$OUT/$name"
  rm -rf "$dir"
  mkdir -p "$dir"
  f="$dir/events.jsonl"
  echo "== $name: $n events, $agents agents, $queues queues, $cph contacts an hour, seed $seed, windows in $tz"
  "$BIN" generate --events "$n" --agents "$agents" --queues "$queues" --contacts-per-hour "$cph" --seed "$seed" \
    ${start:+--start "$start"} > "$f"
  CCMETRICS__STORE__URL="sqlite://$dir/ref.db" "$BIN" replay --input "$f" > "$dir/ref-replay.txt" 2>&1
  export_all "sqlite://$dir/ref.db" ref "$dir"
  if [ "$(head -1 "$dir/ref-15m-queue.csv" | awk -F, '{print $NF}')" != revision ]; then
    echo "error: the export's last column is no longer revision; fix the comparison in $0" >&2
    exit 1
  fi
  grep -E "events read|accepted|duplicates|too late|rejected  " "$dir/ref-replay.txt" | sed 's/^/  /' || true
  # Empty reports would agree with anything: every reference report must have rows.
  for x in "$dir"/ref-*.csv; do
    checks=$((checks + 1))
    [ "$(wc -l < "$x")" -ge 2 ] || fail "$(basename "$x") has no rows"
  done

  # The SQL buckets by UTC: it is compared only where the windows are UTC's.
  [ "$tz" = UTC ] && "$PY" benches/duckdb/run.py "$f" "$dir" > /dev/null
  for e in 15m-queue 1d-agent; do
    [ "$tz" = UTC ] || continue
    checks=$((checks + 1))
    if python3 benches/duckdb/compare.py "$dir/ref-$e.csv" "$dir/duckdb-$e.csv" > "$dir/compare-$e.txt"; then
      echo "  DuckDB agrees: $e"
    else
      fail "DuckDB disagrees on $e:"
      grep -v ' agree$' "$dir/compare-$e.txt" | sed 's/^/    /'
    fi
  done

  variant "$dir" flush-1k "sqlite://$dir/flush-1k.db" -- --input "$f" --flush-every 1000
  variant "$dir" flush-none "sqlite://$dir/flush-none.db" -- --input "$f" --flush-every 1000000000
  variant "$dir" spill "sqlite://$dir/spill.db" CCMETRICS__WINDOWS__SPILL=true CCMETRICS__WINDOWS__SPILL_AFTER=15m \
    -- --input "$f" --flush-every 20000
  half=$(($(wc -l < "$f") / 2))
  head -n "$half" "$f" > "$dir/first.jsonl"
  tail -n +"$((half + 1))" "$f" > "$dir/second.jsonl"
  variant "$dir" split "sqlite://$dir/split.db" -- --input "$dir/first.jsonl" --input "$dir/second.jsonl"
  cat "$f" "$f" > "$dir/doubled.jsonl"
  variant "$dir" doubled "sqlite://$dir/doubled.db" -- --input "$dir/doubled.jsonl"
  if psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db_name" -c "CREATE DATABASE $db_name" > /dev/null; then
    variant "$dir" postgres "$PG/$db_name" -- --input "$f"
  else
    fail "postgres: no PostgreSQL server at $PG"
  fi
  python3 - "$f" "$dir/shuffled.jsonl" "$seed" <<'PY'
import random, sys
rng = random.Random(int(sys.argv[3]))
with open(sys.argv[1]) as src:
    lines = src.readlines()
out = []
for i in range(0, len(lines), 50):
    block = lines[i:i + 50]
    rng.shuffle(block)
    out += block
with open(sys.argv[2], "w") as dst:
    dst.writelines(out)
PY
  variant "$dir" shuffled "sqlite://$dir/shuffled.db" -- --input "$dir/shuffled.jsonl"
  # The variants' inputs are big; the reports stay for a look.
  rm -f "$dir"/*.jsonl "$dir"/*.db "$dir"/*.db-*
done

echo "agreement: $checks checks, $failures failed"
[ "$failures" -eq 0 ]
