"""Power of the convergence study's paired design for a true GenCE - CE difference, per setting and pooled.

    python scripts/power.py [results/archive/short_budget/cpu_study.sqlite] > results/study/power.txt

The paired standard deviation (sd of the per-seed differences GenCE - CE in test error) is measured per
dataset as the median over the archived short-budget study's settings (5 seeds each); the study's own
runs will replace it once stored. Per setting: the two-sided paired t-test at 5% with n seeds (and at the
Holm threshold of the claim's first step, 5% / number of settings), noncentral t. Pooled: the t test over
k setting means (the verdict's random-effects estimate), assuming no heterogeneity between settings, so
each setting mean has variance sd^2 / n.
"""
from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
from collections import defaultdict

import numpy as np
from scipy import stats


def paired_sd_by_dataset(db: str) -> dict[str, float]:
    con = sqlite3.connect(db)
    errors = defaultdict(dict)
    for grid, dataset, regime, model, label, seed, metrics in con.execute(
            "select grid, dataset, regime, model, label, seed, metrics from runs where status='done' "
            "and label in ('ce', 'gence') and grid in ('balanced', 'long_tailed')"):
        errors[(grid, dataset, regime, model)].setdefault(label, {})[seed] = json.loads(metrics)["test/error"]
    sds = defaultdict(list)
    for (grid, dataset, regime, model), by_label in errors.items():
        seeds = sorted(set(by_label.get("ce", {})) & set(by_label.get("gence", {})))
        if len(seeds) >= 3:
            d = [100 * (by_label["gence"][s] - by_label["ce"][s]) for s in seeds]
            sds[dataset].append(statistics.stdev(d))
    return {k: statistics.median(v) for k, v in sorted(sds.items())}


def _two_sided_power(df: int, nc: float, alpha: float) -> float:
    crit = stats.t.ppf(1 - alpha / 2, df)
    upper, lower = stats.nct.sf(crit, df, nc), stats.nct.cdf(-crit, df, nc)
    if not np.isfinite(lower):  # scipy's series fails far in the tail, where the wrong-sign term is ~0
        lower = 0.0
    return float(upper + lower)


def power_paired(delta: float, sd: float, n: int, alpha: float) -> float:
    return _two_sided_power(n - 1, delta / (sd / np.sqrt(n)), alpha)


def power_pooled(delta: float, sd: float, n: int, k: int, alpha: float = 0.05) -> float:
    return _two_sided_power(k - 1, delta / (sd / np.sqrt(n) / np.sqrt(k)), alpha)


def main(argv: list[str]) -> int:
    db = argv[0] if argv else "results/archive/short_budget/cpu_study.sqlite"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"$ python scripts/power.py {' '.join(argv)}".rstrip() + f"   (commit {commit or 'unknown'})")
    sds = paired_sd_by_dataset(db)
    print(f"paired sd of GenCE - CE test error (pp), median over settings of {db}: "
          + ", ".join(f"{k} {v:.2f}" for k, v in sds.items()))
    delta = 1.0
    claims = {"few labels (2 datasets x 2 models x 2 budgets)": 8, "imbalance (2 x 2 x 1)": 4}
    for dataset in ("cifar10", "fashion_mnist"):
        sd = sds[dataset]
        for n in (5, 10):
            line = [f"{dataset}: n={n} seeds, per setting: power {power_paired(delta, sd, n, 0.05):.2f} at 5%"]
            line += [f"{power_paired(delta, sd, n, 0.05 / k):.2f} at Holm's first step for {k} settings"
                     for k in sorted(set(claims.values()))]
            print(", ".join(line))
    sd_mix = float(np.sqrt(np.mean([sds["cifar10"] ** 2, sds["fashion_mnist"] ** 2])))
    for claim, k in claims.items():
        print(f"pooled, {claim}: k={k} settings, 10 seeds, sd {sd_mix:.2f}: power {power_pooled(delta, sd_mix, 10, k):.3f} "
              f"for a uniform {delta:g} pp difference (no heterogeneity); for 0.5 pp: {power_pooled(0.5, sd_mix, 10, k):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
