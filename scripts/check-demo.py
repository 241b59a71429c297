#!/usr/bin/env python3
"""Quality gate on `seismo demo --summary-json`: every fault caught, few false alarms,
incidents that group each fault's anomalies together, and an explanation of every incident."""
import json
import sys

MAX_UNEXPLAINED = 2
# Pairwise grouping F1 against the simulation's truth (the bar).
MIN_GROUPING_F1 = 0.9

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
g = summary["grouping"]
print(f"grouping: pairwise F1 {g['pairwise_f1']:.2f} (at least {MIN_GROUPING_F1}), "
      f"{g['noise_reduction']:.0f} signals per incident")
ok &= g["pairwise_f1"] >= MIN_GROUPING_F1
explained = len(summary["explanations"])
print(f"explanations: {explained} of {summary['incidents']} incidents")
ok &= explained == summary["incidents"]
sys.exit(0 if ok else 1)
