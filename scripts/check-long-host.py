#!/usr/bin/env python3
"""Compares `seismo eval host` runs with and without correlation (JSON from --json) and
gates what must hold over a long run: resident memory stops growing once the detectors'
histories are full, and correlation does not bring growth of its own.

Usage: check-long-host.py OFF.json ON.json
"""
import json
import sys

# The detectors' seasonal histories and the store's caches fill during the first week or
# so; from day 10 on, memory may grow only a little (SQLite's page cache, the allocator).
SETTLED_DAY = 10
MAX_GROWTH = 1.4

off, on = (json.load(open(p)) for p in sys.argv[1:3])
ok = True
for name, r in (("without correlation", off), ("with correlation", on)):
    days = r["rss_mib_by_day"]
    if len(days) <= SETTLED_DAY:
        print(f"{name}: only {len(days)} days, fewer than {SETTLED_DAY + 1}: memory not judged")
        continue
    settled, last = days[SETTLED_DAY - 1], days[-1]
    growth = last / settled
    verdict = "ok" if growth <= MAX_GROWTH else "FAILED"
    ok &= growth <= MAX_GROWTH
    print(f"{name}: resident memory day {SETTLED_DAY} {settled:.0f} MiB, last day {last:.0f} MiB"
          f" (x{growth:.2f}, at most x{MAX_GROWTH}) {verdict}; drained in {r['wall_secs']:.1f} s")
ratio = on["wall_secs"] / off["wall_secs"]
print(f"drain time with correlation / without: {ratio:.2f} (a timing, reported, not gated)")
print(f"incidents {on['incidents']}, the largest {on['largest_incident_signals']} signals"
      f" and {on['largest_get_bytes']} bytes by GET; {on['quiet_incidents_per_day']:.2f} a day"
      f" in quiet time; labelled segments with an incident {on['segments_with_incident']}"
      f" of {on['segments']}")
sys.exit(0 if ok else 1)
