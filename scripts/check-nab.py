#!/usr/bin/env python3
"""Runs `seismo eval nab` on a NAB folder and checks that its Rust port of NAB's scoring
agrees with NAB's scorer (tools/nab_score.py) to within 0.01 points on every profile, and
that the detector keeps its quality floor: whole corpus (NAB's scorer) standard >= 65 and
low-FP >= 55; leaving one category out, the mean of the five held-out folds >= 70
standard and >= 63 low-FP, and the whole-corpus score within 3 points of the held-out
folds pooled (a configuration fitted to these files would fall apart there).

    scripts/check-nab.py NAB_DIR NAB_SCORE_PY [SEISMO_BINARY]
"""
import json
import subprocess
import sys
import tempfile

nab_dir, scorer = sys.argv[1], sys.argv[2]
exe = sys.argv[3] if len(sys.argv) > 3 else "target/release/seismo"
with tempfile.TemporaryDirectory() as tmp:
    ours_json = f"{tmp}/ours.json"
    subprocess.run([exe, "eval", "nab", nab_dir, "--results", tmp, "--name", "seismo", "--json", ours_json], check=True)
    theirs_json = f"{tmp}/theirs.json"
    subprocess.run([sys.executable, scorer, f"{tmp}/seismo", "--nab-root", nab_dir, "--json", theirs_json], check=True)
    report = json.load(open(ours_json))
    ours = report["whole"]
    theirs = json.load(open(theirs_json))["profiles"]
ok = True
for profile, t in theirs.items():
    diff = abs(ours[profile]["normalized"] - t["normalized_score"])
    print(f"{profile:<20} seismo {ours[profile]['normalized']:.4f}  nab_score.py {t['normalized_score']:.4f}  diff {diff:.2e}")
    ok &= diff <= 0.01
FLOOR = {"standard": 65.0, "reward_low_FP_rate": 55.0}
for profile, floor in FLOOR.items():
    got = theirs[profile]["normalized_score"]
    if got < floor:
        print(f"{profile}: {got:.2f} is below the floor of {floor}")
        ok = False
def fold_mean(profile):
    v = [f["profiles"][profile]["normalized"] for f in report["folds"]]
    return sum(v) / len(v)
def pooled(profile):
    ps = [f["profiles"][profile] for f in report["folds"]]
    raw, null, perfect = (sum(p[k] for p in ps) for k in ("raw", "null", "perfect"))
    return 100 * (raw - null) / (perfect - null)
for f in report["folds"]:
    print(f"held out {f['category']:<24} standard {f['profiles']['standard']['normalized']:6.2f}  low FP {f['profiles']['reward_low_FP_rate']['normalized']:6.2f}")
for profile, floor in {"standard": 70.0, "reward_low_FP_rate": 63.0}.items():
    got = fold_mean(profile)
    gap = ours[profile]["normalized"] - pooled(profile)
    print(f"{profile:<20} fold mean {got:.2f} (floor {floor}), whole minus pooled folds {gap:+.2f} (at most 3)")
    if got < floor or abs(gap) > 3.0:
        ok = False
sys.exit(0 if ok else 1)
