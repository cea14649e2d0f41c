"""Power of the convergence study's paired design for a true GenCE - CE difference, per setting and pooled.

    python scripts/power.py [ARCHIVE_DB [STUDY_GRID [PILOT_DB [STUDY_DB]]]] > results/study/power.txt
        (defaults: results/archive/short_budget/cpu_study.sqlite, configs/study.toml, results/pilot.sqlite,
        results/study.sqlite)

The paired standard deviation (sd of the per-seed differences GenCE - CE in test error) is measured per
dataset as the median over the archived short-budget study's settings (5 seeds each): the assumption the
design was sized with. The study's own main blocks check it as they complete: their paired sd and the power
each gives at its seeds, in a section of their own. Per setting: the two-sided paired t-test at 5% with n seeds (and at the
Holm threshold of the claim's first step, 5% / number of settings), noncentral t. Pooled: the t test over
k setting means (the verdict's random-effects estimate), k counted from the study grid's [verdict] blocks;
each setting mean has variance sd^2 / n + tau^2, tau the sd of the true difference between settings
(heterogeneity; 0, 0.5 and 1 pp shown: with few settings it, not the seeds, limits the pooled power).
"""
from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
from collections import defaultdict

from pathlib import Path

import numpy as np
from scipy import stats

from gence.experiments import load_grid
from gence.report.verdict import VerdictSpec


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


def power_pooled(delta: float, sd: float, n: int, k: int, tau: float = 0.0, alpha: float = 0.05) -> float:
    """The t test over k setting means, each with variance sd^2 / n + tau^2 (tau: heterogeneity)."""
    return _two_sided_power(k - 1, delta / (np.sqrt(sd ** 2 / n + tau ** 2) / np.sqrt(k)), alpha)


def claim_settings(config: str) -> dict[str, int]:
    """Settings (dataset x regime x model) per claim of the study grid, from its [verdict] table's blocks."""
    grid = load_grid(config)
    spec = VerdictSpec.from_table(grid.verdict or {})
    specs = list(grid.runs) + list(grid.tuned)   # both have .grid (the block) and .config

    def count(blocks) -> int:
        return len({(c["dataset"], c["regime"], c["model"]) for s in specs if s.grid in blocks
                    for c in [s.config]})
    return {"few labels": count(spec.few_labels), "imbalance": count(spec.imbalance)}


def pilot_paired_sds(db: str) -> list[str]:
    """GenCE - CE per seed in the pilot, where two seeds share a budget: the paired sd of each (2 seeds: rough)."""
    con = sqlite3.connect(db)
    errors = defaultdict(dict)
    for dataset, regime, model, label, seed, config, metrics in con.execute(
            "select dataset, regime, model, label, seed, config, metrics from runs where status='done' "
            "and label in ('ce', 'gence')"):
        epochs = json.loads(config).get("epochs")
        errors[(dataset, regime, model, epochs)].setdefault(label, {})[seed] = json.loads(metrics)["test/error"]
    out = []
    for (dataset, regime, model, epochs), by_label in sorted(errors.items(), key=str):
        seeds = sorted(set(by_label.get("ce", {})) & set(by_label.get("gence", {})))
        if len(seeds) >= 2:
            d = [100 * (by_label["gence"][s] - by_label["ce"][s]) for s in seeds]
            out.append(f"{dataset} {regime} {model} {epochs} epochs: {statistics.stdev(d):.2f} ({len(seeds)} seeds)")
    return out


def study_paired_sds(db: str, min_pairs: int = 5) -> list[tuple[str, int, float, float]]:
    """(block, seeds, mean, sd) of GenCE - CE test error (pp) per main block of the study with at least
    ``min_pairs`` seeds run by both losses."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    errors = defaultdict(dict)
    for grid, label, seed, metrics in con.execute(
            "select grid, label, seed, metrics from runs where status='done' and grid like 'main\\_%' escape '\\' "
            "and label in ('ce', 'gence')"):
        errors[grid].setdefault(label, {})[seed] = json.loads(metrics)["test/error"]
    out = []
    for grid, by_label in sorted(errors.items()):
        seeds = sorted(set(by_label.get("ce", {})) & set(by_label.get("gence", {})))
        if len(seeds) >= min_pairs:
            d = [100 * (by_label["gence"][s] - by_label["ce"][s]) for s in seeds]
            out.append((grid, len(seeds), statistics.mean(d), statistics.stdev(d)))
    return out


def main(argv: list[str]) -> int:
    db = argv[0] if argv else "results/archive/short_budget/cpu_study.sqlite"
    config = argv[1] if len(argv) > 1 else "configs/study.toml"
    pilot = argv[2] if len(argv) > 2 else "results/pilot.sqlite"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"$ python scripts/power.py {' '.join(argv)}".rstrip() + f"   (commit {commit or 'unknown'})")
    sds = paired_sd_by_dataset(db)
    print(f"paired sd of GenCE - CE test error (pp), median over settings of {db}: "
          + ", ".join(f"{k} {v:.2f}" for k, v in sds.items()))
    delta = 1.0
    claims = claim_settings(config)
    print(f"settings per claim in {config} ([verdict] blocks): "
          + ", ".join(f"{claim} {k}" for claim, k in claims.items()))
    for dataset in ("cifar10", "fashion_mnist"):
        sd = sds[dataset]
        for n in (5, 10):
            line = [f"{dataset}: n={n} seeds, per setting: power {power_paired(delta, sd, n, 0.05):.2f} at 5%"]
            line += [f"{power_paired(delta, sd, n, 0.05 / k):.2f} at Holm's first step for {k} settings"
                     for k in sorted(set(claims.values()))]
            print(", ".join(line))
    sd_mix = float(np.sqrt(np.mean([sds["cifar10"] ** 2, sds["fashion_mnist"] ** 2])))
    for claim, k in claims.items():
        parts = [f"pooled, {claim}: k={k} settings, 10 seeds, sd {sd_mix:.2f}"]
        for tau in (0.0, 0.5, 1.0):   # sd of the true difference between settings (heterogeneity), pp
            p1, p05 = power_pooled(delta, sd_mix, 10, k, tau), power_pooled(0.5, sd_mix, 10, k, tau)
            parts.append(f"heterogeneity sd {tau:g} pp: power {p1:.3f} for a mean 1 pp difference, {p05:.3f} for 0.5 pp")
        print("; ".join(parts))
    print("pooled power for a mean 1 pp difference by the number of settings k compared (a claim decided before "
          "all its settings are in, or a design with fewer): " + "; ".join(
              f"k={k}: " + ", ".join(
                  f"{power_pooled(delta, sd_mix, 10, k, tau):.2f} (heterogeneity {tau:g} pp)" for tau in (0.0, 0.5, 1.0))
              for k in range(2, max(claims.values()) + 1)))
    study = argv[3] if len(argv) > 3 else "results/study.sqlite"
    if Path(study).exists():
        rows = study_paired_sds(study)
        print(f"paired sd (pp) in the study's own main blocks, {study} (blocks with 5 or more paired seeds; "
              f"power per setting for a 1 pp difference at its seeds, 5%): "
              + ("; ".join(f"{grid}: sd {sd:.2f}, mean {mean:+.2f} ({n} seeds), power {power_paired(delta, sd, n, 0.05):.2f}"
                           for grid, n, mean, sd in rows) if rows else "none yet"))
    if Path(pilot).exists():
        print(f"paired sd (pp) at the pilot's budgets, {pilot} (2 seeds each: a rough check of the archived values):")
        for line in pilot_paired_sds(pilot):
            print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
