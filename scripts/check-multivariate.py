#!/usr/bin/env python3
"""Quality gate on `seismo eval multivariate --json`: SMD hosts as the pipeline runs them."""
import json
import sys

# Floors a regression must not cross, on the held-out folds (measured 2026-12-02 on
# ../shared/data/multivariate: SMD event recall 0.89, 3.1 false-alarm minutes a day, HitRate@150 % 0.82). They sit
# below the targets where those are not met yet; see the README's table.
SMD_EVENT_RECALL = 0.85
SMD_FALSE_MINUTES = 5.0
SMD_HOST_FALSE_MINUTES = 8.0
SMD_HIT150 = 0.70


def main(path: str) -> int:
    r = json.load(open(path))
    failed = []
    smd = r["folds_pooled"].get("smd")
    if smd is None:
        print("no smd group in the report", file=sys.stderr)
        return 1
    if smd["event_recall"] < SMD_EVENT_RECALL:
        failed.append(f"SMD event recall {smd['event_recall']:.2f} < {SMD_EVENT_RECALL}")
    if smd["false_alarm_minutes_per_day"] > SMD_FALSE_MINUTES:
        failed.append(f"SMD false-alarm minutes/day {smd['false_alarm_minutes_per_day']:.1f} > {SMD_FALSE_MINUTES}")
    if smd["hit150"] < SMD_HIT150:
        failed.append(f"SMD HitRate@150% {smd['hit150']:.2f} < {SMD_HIT150}")
    for e in r["folds"]:
        if e["group"] == "smd" and e["scores"]["false_alarm_minutes_per_day"] > SMD_HOST_FALSE_MINUTES:
            failed.append(f"{e['entity']}: {e['scores']['false_alarm_minutes_per_day']:.1f} false-alarm minutes/day > {SMD_HOST_FALSE_MINUTES}")
    for g, s in r["folds_pooled"].items():
        print(f"{g}: event recall {s['event_recall']:.2f}, {s['false_alarm_minutes_per_day']:.1f} false-alarm min/day, "
              f"PA-F1 {s['f1']:.3f}, HitRate@100/150 {s['hit100']:.2f}/{s['hit150']:.2f}, median delay {s['median_delay_min']:.0f} min")
    for f in failed:
        print("FAIL:", f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
