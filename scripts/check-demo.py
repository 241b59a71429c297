#!/usr/bin/env python3
"""Quality gate on `seismo demo --summary-json`: every fault caught, few false alarms."""
import json
import sys

MAX_UNEXPLAINED = 2

summary = json.load(open(sys.argv[1]))
ok = True
for f in summary["faults"]:
    status = "caught" if f["caught"] else "MISSED"
    delay = f["detection_delay_s"]
    print(f"{f['name']:32} {status:7} delay {delay if delay is not None else '-'} s")
    ok &= f["caught"]
unexplained = summary["unexplained_incidents"]
print(f"unexplained incidents: {unexplained} (at most {MAX_UNEXPLAINED})")
print(f"points: {summary['points']} at {summary['points_per_s']:.0f} points/s")
ok &= unexplained <= MAX_UNEXPLAINED
sys.exit(0 if ok else 1)
