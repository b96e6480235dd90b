#!/usr/bin/env python3
"""The soak's verdict on a soak CSV (scripts/soak.sh writes it; run this again on a kept
CSV with another warm-up): `scripts/soak-verdict.py CSV WARMUP_SECONDS`. Exit status 0
when memory is flat after the warm-up, 1 when not (criterion in docs/reliability.md)."""
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]))]
# The warm-up counts from the first event read, not from the start: the producer
# spends a minute or two warming its simulator up first, and the engine's contacts
# fill up for a correction horizon after the first event.
first_read = next((int(r["elapsed_s"]) for r in rows if int(r["read"]) > 0), 0)
warm = first_read + int(sys.argv[2])
after = [r for r in rows if int(r["elapsed_s"]) >= warm]
if len(after) < 3:
    print("too few samples after warm-up for a verdict"); sys.exit(1)
def slope(key):
    xs = [int(r["elapsed_s"]) for r in after]; ys = [float(r[key]) for r in after]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return (sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0) * 3600, statistics.median(ys)
rss_h, rss_med = slope("rss_kib")
open_h, open_med = slope("open_contacts")
first, last = rows[0], rows[-1]
print(f"samples: {len(rows)} ({len(after)} after the warm-up: first event read at {first_read}s, verdict from {warm}s)")
print(f"events read: {last['read']}; lag at the end: {last['lag']}")
print(f"RSS: start {int(first['rss_kib'])//1024} MiB, median after warm-up {rss_med/1024:.1f} MiB, "
      f"max {max(int(r['rss_kib']) for r in rows)//1024} MiB, slope {rss_h/1024:+.1f} MiB/h")
print(f"open contacts: median after warm-up {open_med:.0f}, slope {open_h:+.0f}/h")
# jemalloc's live bytes (CSVs from before 2026-12-05 have no such column): RSS growing
# while they stay flat is memory the allocator holds, not state the daemon keeps.
if all(r.get("allocated_kib") for r in after):
    alloc_h, alloc_med = slope("allocated_kib")
    print(f"allocated (live data): median after warm-up {alloc_med/1024:.1f} MiB, slope {alloc_h/1024:+.1f} MiB/h; "
          f"RSS minus allocated: median {(rss_med - alloc_med)/1024:.1f} MiB")
    # The same criterion on the live bytes: whether the state grows, whatever the
    # allocator holds around it. Printed only; the exit status stays the RSS's.
    state_flat = alloc_h < 0.05 * alloc_med and alloc_h < 16 * 1024
    print("state (live bytes): " + ("flat" if state_flat else "NOT flat") + " after warm-up, by the same criterion")
# How much of RSS the retained contacts explain: RSS = a + b * open_contacts over the
# samples after warm-up, and the time trend of what is left.
xs = [float(r["open_contacts"]) for r in after]; ys = [float(r["rss_kib"]) for r in after]
mx, my = statistics.fmean(xs), statistics.fmean(ys)
den = sum((x - mx) ** 2 for x in xs)
if den:
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den
    res = [y - (my + b * (x - mx)) for x, y in zip(xs, ys)]
    ts = [int(r["elapsed_s"]) for r in after]; mt = statistics.fmean(ts)
    rs = sum((t - mt) * r for t, r in zip(ts, res)) / sum((t - mt) ** 2 for t in ts) * 3600
    print(f"RSS per open contact {b:.1f} KiB; RSS not explained by open contacts: slope {rs/1024:+.1f} MiB/h")
flat = rss_h < 0.05 * rss_med and rss_h < 16 * 1024 and (open_med == 0 or open_h < 0.05 * open_med)
print("verdict: memory " + ("FLAT after warm-up" if flat else "NOT flat after warm-up")
      + " (criterion: RSS and open-contacts slopes below 5 % of their median per hour, RSS below 16 MiB/h)")
sys.exit(0 if flat else 1)
