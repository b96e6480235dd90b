"""Compare a `ccmetrics export` CSV with the DuckDB CSV of the same rows.

Usage: python compare.py CCMETRICS.csv DUCKDB.csv [--tolerance 0.001]

Rows are matched on (window_start, key). The ccmetrics export holds rates and means,
so the additive columns are recovered first: answered_within = service_level *
offered (the default `offered` formula), wait_sum_ms = asa_s * answered * 1000,
handle_sum_ms = aht_s * handled * 1000 (both printed to 6 decimals, so a sum is
exact to well under a millisecond per row).

Per column it prints both totals, their relative difference and the share of rows
with equal values (sums: within 1 ms * count). A column AGREES when its totals differ
by at most --tolerance (relative, default 0.1 %). Why not exact: the SQL is a batch
over the whole file, so it does not share the engine's end-of-input behaviour (the
engine's final flush_all closes every open interval, a segment still inside its wrap
timeout is counted without wrap), nor its event-id hash tie-break for events of one
contact with equal timestamps; these touch a handful of contacts per million events.
Exit status 0 when every column agrees, 1 otherwise.
"""

import argparse
import csv
import sys


def num(s: str) -> float:
    return float(s) if s not in ("", None) else 0.0


def ccmetrics_rows(path: str) -> dict:
    rows = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            offered, answered, handled = num(r["offered"]), num(r["answered"]), num(r["handled"])
            rows[(r["window_start"], r["key"])] = {
                "offered": offered,
                "answered": answered,
                "abandoned": num(r["abandoned"]),
                "short_abandoned": num(r["short_abandoned"]),
                "answered_within": round(num(r["service_level"]) * offered),
                "wait_sum_ms": num(r["asa_s"]) * answered * 1000.0,
                "handled": handled,
                "handle_sum_ms": num(r["aht_s"]) * handled * 1000.0,
            }
    return rows


def duckdb_rows(path: str) -> tuple[dict, list]:
    rows = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c for c in reader.fieldnames or [] if c not in ("window_start", "key")]
        for r in reader:
            rows[(r["window_start"], r["key"])] = {c: num(r[c]) for c in cols}
    return rows, cols


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("ccmetrics")
    p.add_argument("duckdb")
    p.add_argument("--tolerance", type=float, default=0.001)
    a = p.parse_args()
    cm = ccmetrics_rows(a.ccmetrics)
    dk, cols = duckdb_rows(a.duckdb)
    keys = set(cm) | set(dk)
    only_cm, only_dk = len(set(cm) - set(dk)), len(set(dk) - set(cm))
    print(f"rows: ccmetrics {len(cm)}, duckdb {len(dk)}, only in ccmetrics {only_cm}, only in duckdb {only_dk}")
    zero = dict.fromkeys(cols, 0.0)
    ok = True
    for c in cols:
        tc = sum(cm.get(k, zero)[c] for k in keys)
        td = sum(dk.get(k, zero)[c] for k in keys)
        # Sums: a row is equal within 1 ms per counted item (6-decimal means).
        count_col = {"wait_sum_ms": "answered", "handle_sum_ms": "handled"}.get(c)
        equal = 0
        for k in keys:
            x, y = cm.get(k, zero), dk.get(k, zero)
            slack = 1.0 + x[count_col] if count_col else 0.0
            equal += abs(x[c] - y[c]) <= slack
        rel = abs(tc - td) / max(abs(tc), abs(td), 1.0)
        agree = rel <= a.tolerance
        ok &= agree
        print(
            f"  {c:<16} ccmetrics {tc:>16.0f}  duckdb {td:>16.0f}  diff {100 * rel:7.4f} %"
            f"  rows equal {100 * equal / max(len(keys), 1):6.2f} %  {'agree' if agree else 'DISAGREE'}"
        )
    print(f"verdict (tolerance {100 * a.tolerance:g} % on totals): {'agree' if ok else 'disagree'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
