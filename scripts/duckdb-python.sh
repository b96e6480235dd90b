#!/usr/bin/env bash
# Prints the path of a python that can `import duckdb`, for scripts/bench.sh and
# scripts/agree.sh: $DUCKDB_PY when set, else a venv made once under
# ~/.cache/ccmetrics (outside the checkout, so fresh clones and CI runs reuse it),
# installing duckdb from PyPI the first time. Progress goes to stderr.
set -euo pipefail
if [ -n "${DUCKDB_PY:-}" ]; then
  echo "$DUCKDB_PY"
  exit 0
fi
venv="$HOME/.cache/ccmetrics/duckdb-venv"
if ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
  echo "== installing duckdb (PyPI) into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q duckdb >&2 || { echo "error: could not install duckdb from PyPI" >&2; exit 1; }
fi
echo "$venv/bin/python"
