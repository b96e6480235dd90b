#!/usr/bin/env python3
"""Write a JSONL event file with each contact's events next to each other.

Usage: group_by_contact.py IN OUT

The contacts keep the order of their first events, and each contact's events keep
their order in the input. An event without a `contact_id` (`agent.state`) stays where
it was relative to the contacts around it. The lines themselves are copied unchanged.

Used by `scripts/bench.sh grouped`: the engine applied to this file does the same
work as on the original (the same events accepted, the same contacts), but finds each
contact in cache from its second event on, and derives it about once. The difference
between the two runs bounds what grouping events by contact (a batch back-fill
engine's first step) could save on the streaming engine's memory traffic
(docs/performance.md, "thirty-fifth round").
"""

import sys


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: group_by_contact.py IN OUT")
    src, dst = sys.argv[1], sys.argv[2]
    marker = b'"contact_id":"'
    groups: dict[bytes | int, list[bytes]] = {}
    with open(src, "rb") as f:
        for i, line in enumerate(f):
            at = line.find(marker)
            if at >= 0:
                start = at + len(marker)
                key: bytes | int = line[start : line.index(b'"', start)]
            else:
                key = i
            # dicts keep insertion order: contacts in the order of their first events.
            groups.setdefault(key, []).append(line)
    with open(dst, "wb") as out:
        for lines in groups.values():
            out.writelines(lines)


if __name__ == "__main__":
    main()
