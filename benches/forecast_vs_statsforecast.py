#!/usr/bin/env python3
"""Seismo's forecasts beside statsforecast's AutoETS and MSTL on M4 Hourly: accuracy and time per series.

Usage: benches/forecast_vs_statsforecast.py DATA_DIR [--seismo target/release/seismo] [--limit N]

DATA_DIR holds Hourly-train.csv and Hourly-test.csv (../shared/data/m4-hourly). Each
statsforecast model is fitted and forecast series by series on one thread (numba compiled
once on the first series, which is not timed), with 95 % intervals; Seismo runs
`seismo eval m4 DATA_DIR --json`, which times its own choice, fit and forecast per series on
one thread. sMAPE, MASE and OWA follow the M4 organisers (OWA against Naive2, computed
here the same way and printed beside the published figures). Needs `pip install
statsforecast`.
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

H, M = 48, 24


def load(path):
    out = {}
    with open(path) as f:
        r = csv.reader(f)
        next(r)
        for row in r:
            out[row[0]] = np.array([float(x) for x in row[1:] if x not in ("", "NA")])
    return out


def smape(y, f):
    d = np.abs(y) + np.abs(f)
    return float(np.mean(np.where(d == 0, 0.0, 200.0 * np.abs(y - f) / np.where(d == 0, 1, d))))


def scale(x, m=M):
    return float(np.mean(np.abs(x[m:] - x[:-m])))


def mase(x, y, f):
    return float(np.mean(np.abs(y - f))) / scale(x)


def seasonal(x, m=M):
    """The M4 organisers' 90 % autocorrelation test (R's benchmarks)."""
    n = len(x)
    if n < 3 * m:
        return False
    d = x - x.mean()
    var = float(np.sum(d * d))
    acf = [float(np.sum(d[k:] * d[:-k])) / var for k in range(1, m + 1)]
    limit = 1.645 / math.sqrt(n) * math.sqrt(1 + 2 * sum(a * a for a in acf[: m - 1]))
    return abs(acf[m - 1]) > limit


def naive2(x, m=M):
    """Naive on the classical multiplicative decomposition's deseasonalised series."""
    n = len(x)
    if not seasonal(x, m):
        return np.full(H, x[-1])
    w = np.r_[0.5, np.ones(m - 1), 0.5] / m
    ma = np.full(n, np.nan)
    half = m // 2
    for t in range(half, n - half):
        ma[t] = float(np.dot(x[t - half : t + half + 1], w))
    ratio = x / ma
    idx = np.array([np.nanmean(ratio[k::m]) for k in range(m)])
    idx /= idx.mean()
    pos = np.arange(n, n + H) % m
    return np.full(H, x[-1] / idx[(n - 1) % m]) * idx[pos]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--seismo", default="target/release/seismo")
    ap.add_argument("--limit", type=int, default=0, help="only the first N series")
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from statsforecast.models import MSTL, AutoETS

    train = load(os.path.join(args.data, "Hourly-train.csv"))
    test = load(os.path.join(args.data, "Hourly-test.csv"))
    ids = list(train)[: args.limit or None]
    n2 = {i: naive2(train[i]) for i in ids}
    n2s = np.mean([smape(test[i], n2[i]) for i in ids])
    n2m = np.mean([mase(train[i], test[i], n2[i]) for i in ids])
    print(f"{len(ids)} series; Naive2 here sMAPE {n2s:.3f} MASE {n2m:.3f}"
          + (" (published 18.383 / 2.395)" if len(ids) == 414 else ""), flush=True)

    peers = {
        "statsforecast AutoETS(24)": lambda: AutoETS(season_length=24),
        "statsforecast MSTL([24,168]) + AutoETS": lambda: MSTL(
            season_length=[24, 168], trend_forecaster=AutoETS(model="ZZN")
        ),
    }
    rows = []
    for name, make in peers.items():
        make().forecast(y=train[ids[0]], h=H, level=[95])  # compile once, untimed
        sm, ma, inside, secs = [], [], 0, 0.0
        for k, i in enumerate(ids):
            t = time.perf_counter()
            out = make().forecast(y=train[i], h=H, level=[95])
            secs += time.perf_counter() - t
            f = np.asarray(out["mean"])
            lo, hi = np.asarray(out["lo-95"]), np.asarray(out["hi-95"])
            sm.append(smape(test[i], f))
            ma.append(mase(train[i], test[i], f))
            inside += int(np.sum((test[i] >= lo) & (test[i] <= hi)))
            if (k + 1) % 50 == 0:
                print(f"  {name}: {k + 1}/{len(ids)}", file=sys.stderr, flush=True)
        s, m = float(np.mean(sm)), float(np.mean(ma))
        rows.append((name, s, m, 0.5 * (s / n2s + m / n2m), inside / (H * len(ids)),
                     secs / len(ids) * 1000))

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "m4.json")
        cmd = [args.seismo, "eval", "m4", args.data, "--json", out]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        rep = json.load(open(out))["run"]
    rows.append(("seismo", rep["seismo"]["smape"], rep["seismo"]["mase"], rep["seismo"]["owa"],
                 rep["coverage"], rep["ms_per_series"]))

    seismo_ms = rows[-1][5]
    print(f"{'model':<40} {'sMAPE':>7} {'MASE':>6} {'OWA':>6} {'cover95':>8} {'ms/series':>10} {'seismo faster':>14}")
    for name, s, m, o, c, ms in rows:
        print(f"{name:<40} {s:7.3f} {m:6.3f} {o:6.3f} {c * 100:7.1f}% {ms:10.2f} {ms / seismo_ms:13.1f}x")


if __name__ == "__main__":
    main()
