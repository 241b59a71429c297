#!/usr/bin/env python3
"""Isolation forest speed, side by side: scikit-learn's IsolationForest against Seismo's.

Both fit 100 trees on 256-row subsamples of each ODDS file (one thread) and score every
row. scikit-learn is timed here in-process; Seismo's own timings come from
`seismo eval odds DIR --json`, which times fit and scoring the same way (mean over seeds).
Each side is run in ROUNDS rounds and keeps, per dataset, its fastest round's mean (as
timeit does), so a noisy neighbour on a shared machine does not decide a ratio.
Prints per-dataset times and the ratios sklearn/seismo (higher = Seismo faster).

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
    ours = {}
    for _ in range(ROUNDS):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([exe, "eval", "odds", d, "--seeds", str(SEEDS), "--json", out.name],
                           check=True, stdout=subprocess.DEVNULL)
            for r in json.load(open(out.name)):
                best = ours.setdefault(r["dataset"], r)
                best["fit_s"] = min(best["fit_s"], r["fit_s"])
                best["score_s"] = min(best["score_s"], r["score_s"])
    print(f"{'dataset':<12} {'skl fit s':>9} {'ours fit s':>10} {'fit x':>7}  "
          f"{'skl score s':>11} {'ours score s':>12} {'score x':>8}  {'skl AUC':>7} {'ours AUC':>8}")
    fx, sx = [], []
    for name in sorted(ours):
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
        r = ours[name]
        fit_ratio = fit / r["fit_s"]
        score_ratio = score / r["score_s"]
        fx.append(fit_ratio)
        sx.append(score_ratio)
        print(f"{name:<12} {fit:>9.4f} {r['fit_s']:>10.4f} {fit_ratio:>6.1f}x  "
              f"{score:>11.4f} {r['score_s']:>12.4f} {score_ratio:>7.1f}x  "
              f"{np.mean(auc):>7.3f} {r['mean_auc']:>8.3f}")
    gm = lambda v: float(np.exp(np.mean(np.log(v))))
    print(f"geometric mean: fit {gm(fx):.1f}x faster, scoring {gm(sx):.1f}x faster")


if __name__ == "__main__":
    main()
