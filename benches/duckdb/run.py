"""The DuckDB side of `scripts/bench.sh duckdb` (docs/performance.md).

Loads a ccmetrics JSONL file once (load.sql) and writes the two comparable exports
(queue_15m.sql, agent_1d.sql) as CSV, the way an analyst would use DuckDB instead of
ccmetrics: one process, the file read once, all cores (DuckDB's default threads).

Usage: python run.py EVENTS.jsonl OUT_DIR
Writes OUT_DIR/duckdb-15m-queue.csv and OUT_DIR/duckdb-1d-agent.csv.
"""

import pathlib
import sys

import duckdb

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    events, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    con = duckdb.connect()  # in memory
    # The path goes into SQL text: refuse a quote rather than escape it.
    if "'" in str(events):
        sys.exit(f"input path must not contain a quote: {events}")
    con.execute((HERE / "load.sql").read_text().replace("$INPUT", str(events)))
    for name, sql in (("15m-queue", "queue_15m.sql"), ("1d-agent", "agent_1d.sql")):
        query = (HERE / sql).read_text().strip().rstrip(";")
        con.execute(f"COPY ({query}) TO '{out / f'duckdb-{name}.csv'}' (HEADER)")


if __name__ == "__main__":
    main()
