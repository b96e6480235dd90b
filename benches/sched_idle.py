#!/usr/bin/env python3
"""Where a replay leaves a core idle, from the scheduler's own record.

Reads `perf sched record` data of one `ccmetrics replay` (docs/performance.md,
"forty-fourth round") and prints, over the span in which the engine's thread (the
process's main thread, which applies every event) ran:

- how long each core was idle, and how much of that idle time fell while the
  engine's thread was running on the other core: then nothing else was runnable, so
  the engine's thread was the critical path (decoders ahead of it by every batch
  they may hold, no write pending);
- the engine's thread's own time: running, off the CPU (waiting for a batch, a
  helper or the writer), and runnable but not running (waiting for a core); its
  waits summed by the thread whose wake-up ended them, i.e. what it waited for;
- the same per 100 ms of wall time (the tail after the last event, in which the
  writer runs alone, shows as the engine's thread at 0 % beside an idle core).

Usage: sched_idle.py PERF_SCHED_DATA [PID]. Needs `perf` (Debian's linux-perf).
Sampled profiles (`bench.sh threads`) count CPU time; they cannot tell an idle core
from a busy one that was not sampled, nor why a thread was off the CPU.
"""

import collections
import subprocess
import sys


def timehist(data, idle):
    """(cpu, task, start, end, wait, delay) of every run `perf sched timehist` lists."""
    args = ["perf", "sched", "timehist", "-i", data] + (["-I"] if idle else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines()[3:]:
        p = line.split()
        if len(p) < 6:
            continue
        try:
            end, wait, delay, run = float(p[0]), float(p[-3]), float(p[-2]), float(p[-1])
        except ValueError:
            continue
        yield p[1], p[2], end - run / 1000, end, wait / 1000, delay / 1000


def intersect(a, b):
    """The intersection of two lists of intervals, each list disjoint within itself
    (one thread's runs, one core's idle stretches), as intervals."""
    a, b = sorted(a), sorted(b)
    i = j = 0
    out = []
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def wakers(data, main_task):
    """The main thread's off-CPU time summed by the thread whose wake-up ended it:
    a decoder (a batch), `settle` or `take` (a flush's helper joined), the writer
    (`tokio-rt-worker`, `sqlx-sqlite-wor`: a full write queue, or the end). A wait
    without a wake-up is a switch-out while runnable, the thread preempted by
    another: `preempted`."""
    out = subprocess.run(
        ["perf", "sched", "timehist", "-i", data, "-w"], capture_output=True, text=True, check=True
    ).stdout
    waker = None
    total = collections.Counter()
    count = collections.Counter()
    for line in out.splitlines()[3:]:
        p = line.split()
        if len(p) < 3:
            continue
        if "awakened:" in line:
            if line.rstrip().endswith("awakened: " + main_task):
                waker = p[2].split("[")[0]
            continue
        if p[2] == main_task and len(p) >= 6:
            try:
                wait = float(p[3])
            except ValueError:
                continue
            if wait > 0:
                who = waker or "preempted"
                total[who] += wait
                count[who] += 1
            waker = None
    return [(who, (ms, count[who])) for who, ms in total.most_common()]


def main():
    data = sys.argv[1]
    runs = list(timehist(data, idle=False))
    # The main thread is listed as "name[pid]", the others as "name[tid/pid]".
    mains = [t for _, t, *_ in runs if t.startswith("ccmetrics[") and "/" not in t]
    if not mains:
        sys.exit("sched_idle: no ccmetrics main thread in " + data)
    main_task = sys.argv[2] if len(sys.argv) > 2 else mains[0]
    if not main_task.startswith("ccmetrics["):
        main_task = f"ccmetrics[{main_task}]"
    engine = [(s, e) for _, t, s, e, _, _ in runs if t == main_task and e > s]
    wait = sum(w for _, t, _, _, w, _ in runs if t == main_task)
    delay = sum(d for _, t, _, _, _, d in runs if t == main_task)
    t0, t1 = min(s for s, _ in engine), max(e for _, e in engine)
    idle = collections.defaultdict(list)
    for cpu, task, s, e, _, _ in timehist(data, idle=True):
        if task == "<idle>" and e > t0 and s < t1:
            idle[cpu].append((max(s, t0), min(e, t1)))
    every = [iv for ivs in idle.values() for iv in ivs]
    # Each core's idle stretches are disjoint, the two cores' are not: intersected
    # with the engine's runs one core at a time.
    inter = [iv for ivs in idle.values() for iv in intersect(ivs, engine)]
    cores = len({cpu for cpu, *_ in runs} | set(idle))
    span = t1 - t0
    ran = sum(e - s for s, e in engine)
    idle_total = sum(e - s for s, e in every)
    while_engine = sum(e - s for s, e in inter)
    print(f"span of the engine's thread: {span:.3f} s on {cores} cores")
    print(
        f"  engine's thread: running {ran:.3f} s ({100 * ran / span:.0f} %), "
        f"off the CPU {wait:.3f} s, waiting for a core {delay:.3f} s"
    )
    print(
        f"  idle core time: {idle_total:.3f} s ({100 * idle_total / span / max(cores, 1):.0f} % of the cores); "
        f"while the engine's thread ran: {while_engine:.3f} s ({100 * while_engine / max(idle_total, 1e-9):.0f} % of it)"
    )
    for cpu, ivs in sorted(idle.items()):
        print(f"  {cpu} idle {sum(e - s for s, e in ivs):.3f} s")
    print("  the engine's thread's waits by the thread that woke it (what it waited for):")
    for who, (ms, n) in wakers(data, main_task):
        print(f"    {who:<18} {ms:7.1f} ms in {n} waits")
    step = 0.1
    buckets = int(span / step) + 1
    per = collections.Counter()
    per_engine = collections.Counter()
    per_while = collections.Counter()

    def spread(ivs, into):
        for s, e in ivs:
            b = int((s - t0) / step)
            while s < e:
                edge = min(e, t0 + (b + 1) * step)
                into[b] += edge - s
                s, b = edge, b + 1

    spread(every, per)
    spread(engine, per_engine)
    spread(inter, per_while)
    print("per 100 ms: engine's thread busy %, idle core ms, of which while the engine ran")
    for b in range(buckets):
        print(
            f"  {b * step:5.1f} s  engine {100 * per_engine[b] / step:4.0f} %  "
            f"idle {1000 * per[b]:5.1f} ms  while engine ran {1000 * per_while[b]:5.1f} ms"
        )


if __name__ == "__main__":
    main()
