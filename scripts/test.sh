#!/usr/bin/env bash
# The one test command (README, CI): formatting, lints, then every test.
# Installs and starts what the tests need when it is missing: PostgreSQL, the Kafka
# broker (tansu), Prometheus and promtool (Debian package prometheus) for the metrics
# check, the rules tests and tests/prometheus.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

# The store tests need a real PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth).
# Start it when it is down; install it first when it is missing and we are root.
if ! pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  if [ -z "$(ls /etc/postgresql 2>/dev/null)" ] && [ "$(id -u)" = 0 ]; then
    echo "== installing PostgreSQL (Debian package postgresql)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || { echo "error: could not install PostgreSQL (needed by the store tests)" >&2; exit 1; }
    # A fresh cluster asks for passwords over TCP; the tests connect as postgres without one.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    done
  fi
  for v in $(ls /etc/postgresql 2>/dev/null); do
    echo "== starting PostgreSQL $v"
    pg_ctlcluster --skip-systemctl-redirect "$v" main start || true # "already running" is fine
  done
  for _ in $(seq 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
    echo "error: PostgreSQL is not accepting connections on 127.0.0.1:5432 (needed by the store tests)" >&2
    exit 1
  fi
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
      || echo "warning: could not install prometheus; the rules check below will fail"
    # The package starts a server we do not want running.
    (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus) >/dev/null 2>&1 || true
  fi
fi

# The wallboard test drives a real headless Chromium over WebDriver.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "== installing chromium and chromium-driver (Debian packages, for the wallboard test)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "warning: could not install chromium; the wallboard test will fail"
  fi
fi

# Recording and alerting rules (deploy/prometheus, docs/alerting.md): syntax, then the
# unit tests. Without promtool this fails: the rules are not skipped silently.
echo "== promtool check rules / test rules (deploy/prometheus)"
if ! command -v promtool >/dev/null 2>&1; then
  echo "error: promtool is missing; install the Debian package prometheus (as root this script does)" >&2
  exit 1
fi
promtool check rules deploy/prometheus/rules.yml
promtool test rules deploy/prometheus/rules.test.yml

# The Kafka end-to-end tests start a broker each (tansu 0.6.0, in memory, on a free
# loopback port): make sure it is installed (about 9 minutes once, cached after).
echo "== checking the test Kafka broker (tansu)"
bash scripts/kafka-broker.sh --install
export PATH="$HOME/.cargo/bin:$PATH" # tansu, for the tests

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, benches included)"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo clippy without the default features (the system's malloc, for heaptrack)"
cargo clippy --lib --bins --locked --no-default-features -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --lib --bins --tests --locked 2>&1 | tee "$log"
# The whole binary on a simulated centre: the figures against an independent SQL
# definition (DuckDB), and unchanged by flush cadence, spilling, split or doubled
# input, the PostgreSQL store and shuffled lines (docs/reliability.md, "Agreement at
# scale"; the full run is scripts/agree.sh without --quick).
echo "== agreement of a replay's figures (scripts/agree.sh --quick)"
# `cargo test` has just built target/debug/ccmetrics for the end-to-end tests (a build
# of its own would compile the dependencies again with other features).
BIN=target/debug/ccmetrics bash scripts/agree.sh --quick
# jemalloc's statistics are a build feature (off by default: they cost CPU): the code
# behind it is linted and its tests run in such a build (the library's memory tests,
# and the daemon's /metrics and status end to end).
echo "== with jemalloc's statistics (the alloc-stats feature)"
cargo clippy --lib --bins --tests --locked --features alloc-stats -- -D warnings
cargo test --lib --test serve --locked --features alloc-stats -- alloc:: http::memory serve_from_stdin 2>&1 | tee -a "$log"
echo "== deployment files (scripts/check-deploy.sh)"
bash scripts/check-deploy.sh
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
