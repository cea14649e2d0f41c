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
The pilot's convergence rule: the sd of a seed's test-error change from E to 2E (the pilot's judged losses,
pooled over its settings and budgets with 2 seeds), the chance that a setting whose true change is 0 meets
the rule's ``|mean change| < 0.3 pp`` for both losses at the pilot's 2 seeds, and the seeds that would show
the change within ±0.3 pp by two one-sided t tests (5%) with 80% power, in one setting and pooled over a
dataset's settings (:func:`tost_power`).
"""
from __future__ import annotations

import json
import math
import sqlite3
import statistics
import subprocess
import sys
from collections import defaultdict

from pathlib import Path

import numpy as np
from scipy import integrate, stats

from gence.experiments import load_grid
from gence.report import convergence as C
from gence.report import tables as T
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


def tost_power(margin: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of two one-sided t tests at level ``alpha`` to show the mean of ``n`` normal differences with sd
    ``sd`` within ±``margin`` when its true value is 0, exactly: both tests reject when |mean| < margin −
    t s/√n (t the 1 − alpha quantile of Student's t with n − 1 degrees of freedom, s the sample sd), so the
    power is the expectation over s (``(n − 1) s² / sd²`` is chi-square) of ``2 Φ((margin − t s/√n) √n / sd) − 1``
    where that is positive, integrated numerically."""
    if n < 2:
        return 0.0
    df, t, root = n - 1, stats.t.ppf(1 - alpha, n - 1), math.sqrt(n)
    u_max = df * (margin * root / (t * sd)) ** 2   # beyond it margin - t s / sqrt(n) < 0: no rejection

    def inner(u: float) -> float:
        s = sd * math.sqrt(u / df)
        return (2 * stats.norm.cdf((margin - t * s / root) * root / sd) - 1) * stats.chi2.pdf(u, df)
    return float(integrate.quad(inner, 0.0, u_max, limit=200)[0])


def seeds_for_tost(margin: float, sd: float, power: float = 0.8, alpha: float = 0.05, n_max: int = 100_000) -> int:
    """The fewest differences (at least 2) with which :func:`tost_power` reaches ``power``."""
    n = 2
    while tost_power(margin, sd, n, alpha) < power and n < n_max:
        n += 1
    return n


def pooled_sd(groups: list[tuple[float, int]]) -> tuple[float, int]:
    """(sd, n) of groups pooled: sqrt(sum (n-1) sd^2 / sum (n-1)) and its degrees of freedom."""
    df = sum(n - 1 for sd, n in groups if n >= 2 and not math.isnan(sd))
    if not df:
        return math.nan, 0
    return math.sqrt(sum((n - 1) * sd ** 2 for sd, n in groups if n >= 2 and not math.isnan(sd)) / df), df


def pilot_rule_lines(db: str) -> list[str]:
    """Per dataset of the pilot: the pooled sd of a seed's E -> 2E test-error change, the chance of the rule's
    stability condition at 2 seeds for both judged losses under no true change, and the seeds TOST needs."""
    results = T.load_results(db)
    rule = C.spec_from_grids(results.grids)
    if rule is None:
        return []
    margin = rule.test_error_change_below
    settings = C.pilot(results, rule)
    out = []
    for dataset in sorted({s.setting[0] for s in settings}):
        mine = [s for s in settings if s.setting[0] == dataset]
        labels = sorted({r.label for s in mine for r in s.rows})
        sd, df = pooled_sd([(r.change.sd, r.change.n) for s in mine for r in s.rows])
        if not df:
            continue
        one = 2 * stats.norm.cdf(margin / (sd / math.sqrt(2))) - 1   # |mean of 2| < margin, true change 0
        k = len(mine)
        out.append(f"{dataset}: sd of a seed's test-error change from E to 2E {100 * sd:.2f} pp (pooled over "
                   f"{', '.join(labels)} in {k} settings, {df} degrees of freedom); with no true change a loss meets "
                   f"|mean change| < {100 * margin:g} pp at 2 seeds with probability {one:.2f}, all {len(labels)} "
                   f"(independent) {one ** len(labels):.2f}; to show the change within ±{100 * margin:g} pp (TOST, 5%, 80% power) "
                   f"takes {seeds_for_tost(margin, sd)} seeds per loss in one setting, or "
                   f"{math.ceil(seeds_for_tost(margin, sd) / k)} per setting pooled over its {k} settings "
                   "(the pooled change as the mean of all seeds' changes, between-setting differences ignored)")
    return out


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
        print(f"the pilot's convergence rule, {pilot}:")
        for line in pilot_rule_lines(pilot):
            print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
