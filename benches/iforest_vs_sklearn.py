#!/usr/bin/env python3
"""Isolation forest speed, side by side: scikit-learn's IsolationForest against Seismo's.

Both fit 100 trees on 256-row subsamples of each ODDS file (one thread) and score every
row. scikit-learn is timed here in-process; Seismo's own timings come from
`seismo eval odds DIR --json`, which times fit and scoring the same way (mean over seeds).
Each side is run in ROUNDS rounds and keeps, per dataset, its fastest round's mean (as
timeit does), so a noisy neighbour on a shared machine does not decide a ratio.
Prints per-dataset times and the ratios sklearn/seismo (higher = Seismo faster).

Seismo's scoring is timed once per walk in WALKS (default "cpu,avx2"), the rounds taken
in turn: `cpu` is the widest walk the CPU has (AVX-512 where present), `avx2` caps it
with SEISMO_SIMD=avx2, so an AVX-512 machine also measures the walk an AVX2-only CPU
takes, side by side in one run (`none` would time the portable walk).

    pip install scikit-learn pandas
    cargo build --release
    python3 benches/iforest_vs_sklearn.py ../shared/data/odds
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

SEEDS = 5
ROUNDS = 3


def main():
    d = sys.argv[1]
    exe = os.environ.get("SEISMO", "target/release/seismo")
    walks = os.environ.get("WALKS", "cpu,avx2").split(",")
    # Any other SEISMO_SIMD value leaves the CPU's walk, which would be timed under a
    # wrong label.
    for w in walks:
        if w not in ("cpu", "avx2", "none"):
            sys.exit(f"unknown walk {w!r} in WALKS: use cpu, avx2 or none")
    ours = {w: {} for w in walks}
    for _ in range(ROUNDS):
        for w in walks:
            env = dict(os.environ)
            env.pop("SEISMO_SIMD", None)
            if w != "cpu":
                env["SEISMO_SIMD"] = w
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run([exe, "eval", "odds", d, "--seeds", str(SEEDS), "--json", out.name],
                               check=True, stdout=subprocess.DEVNULL, env=env)
                for r in json.load(open(out.name)):
                    best = ours[w].setdefault(r["dataset"], r)
                    best["fit_s"] = min(best["fit_s"], r["fit_s"])
                    best["score_s"] = min(best["score_s"], r["score_s"])
    print(f"{'dataset':<12} {'skl fit s':>9} {'ours fit s':>10} {'fit x':>7}  {'skl score s':>11}"
          + "".join(f" {w + ' score s':>13} {'x':>6}" for w in walks)
          + f"  {'skl AUC':>7} {'ours AUC':>8}")
    fx, sx = [], {w: [] for w in walks}
    for name in sorted(ours[walks[0]]):
        df = pd.read_csv(os.path.join(d, name + ".csv"))
        X = df.drop(columns="label").values
        y = df["label"].values
        fit_rounds, score_rounds, auc = [], [], []
        for _ in range(ROUNDS):
            fit, score, auc = [], [], []
            for seed in range(SEEDS):
                t = time.perf_counter()
                f = IsolationForest(n_estimators=100, max_samples=256, random_state=seed,
                                    n_jobs=1).fit(X)
                fit.append(time.perf_counter() - t)
                t = time.perf_counter()
                s = -f.score_samples(X)
                score.append(time.perf_counter() - t)
                auc.append(roc_auc_score(y, s))
            fit_rounds.append(np.mean(fit))
            score_rounds.append(np.mean(score))
        fit, score = min(fit_rounds), min(score_rounds)
        r = ours[walks[0]][name]
        fit_ratio = fit / r["fit_s"]
        fx.append(fit_ratio)
        line = f"{name:<12} {fit:>9.4f} {r['fit_s']:>10.4f} {fit_ratio:>6.1f}x  {score:>11.4f}"
        for w in walks:
            ratio = score / ours[w][name]["score_s"]
            sx[w].append(ratio)
            line += f" {ours[w][name]['score_s']:>13.4f} {ratio:>5.1f}x"
        print(line + f"  {np.mean(auc):>7.3f} {r['mean_auc']:>8.3f}")
    gm = lambda v: float(np.exp(np.mean(np.log(v))))
    print(f"geometric mean: fit {gm(fx):.1f}x faster; scoring "
          + ", ".join(f"{gm(sx[w]):.1f}x faster ({w} walk)" for w in walks))


if __name__ == "__main__":
    main()
