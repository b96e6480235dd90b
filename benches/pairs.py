#!/usr/bin/env python3
"""The figures of `bench.sh pairs`: two builds compared in alternated pairs.

Reads the runs file that `pairs_bench` writes, one run a line:

    KIND SIDE ROUND wall_s user_s system_s peak_kb

and prints, per KIND (`engine`, `replay`), the medians of the pair-by-pair ratios
B / A (wall, and CPU = user + system) with their range, then each side's medians.

Why the median of the pairs' ratios and not the ratio of the medians: on a shared
host the speed drifts over minutes, and a drift lands on both runs of a pair (seconds
apart) but on one side of a ratio of medians taken over the whole series
(docs/performance.md, "thirtieth round").
"""

import statistics
import sys


def read(path):
    """{kind: {round: {side: (wall, cpu, peak_kb)}}} of the runs file."""
    runs = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 7:
                sys.exit(f"pairs.py: {path}:{n}: expected 7 fields, got {line!r}")
            kind, side, rnd, wall, user, system, peak = fields
            runs.setdefault(kind, {}).setdefault(int(rnd), {})[side] = (
                float(wall),
                float(user) + float(system),
                int(peak),
            )
    return runs


def spread(values):
    return f"{statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: pairs.py RUNS_FILE")
    runs = read(sys.argv[1])
    if not runs:
        sys.exit("pairs.py: no runs")
    for kind in sorted(runs):
        pairs = [r for r in runs[kind].values() if "A" in r and "B" in r]
        if not pairs:
            continue
        # A run under the timer's resolution has no ratio: left out, and said so.
        timed = [p for p in pairs if p["A"][0] > 0 and p["A"][1] > 0]
        if len(timed) < len(pairs):
            print(f"  {kind}: {len(pairs) - len(timed)} pairs too short to time, left out")
        if not timed:
            continue
        wall = [p["B"][0] / p["A"][0] for p in timed]
        cpu = [p["B"][1] / p["A"][1] for p in timed]
        print(f"{kind}: {len(timed)} pairs, B / A medians of the pairs' ratios (range): "
              f"wall {spread(wall)}, CPU {spread(cpu)}")
        for side in ("A", "B"):
            w = statistics.median(p[side][0] for p in timed)
            c = statistics.median(p[side][1] for p in timed)
            m = statistics.median(p[side][2] for p in timed) / 1024
            print(f"  {side}: wall {w:.3f} s, CPU {c:.3f} s, peak RSS {m:.1f} MiB (medians)")


if __name__ == "__main__":
    main()
