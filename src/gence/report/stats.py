"""Statistics for the report: mean and spread over seeds, and paired comparisons against CE.

Paired comparison of a loss with CE over the seeds both have (seed s of both uses the same data split
and initialisation stream, so the pair shares everything but the loss):

- ``mean_diff``: mean over pairs of (loss - CE); negative is better for error, NLL and ECE.
- ``p_value``: two-sided Wilcoxon signed-rank test, ``scipy.stats.wilcoxon`` with its defaults (exact
  distribution for small n without ties; zero differences dropped, the ``"wilcox"`` convention). With n
  pairs the smallest attainable exact p is 2 / 2**n (0.0625 for 5 seeds), so "p < 0.05" needs >= 6 seeds.
  NaN, with the reason in ``note``, when fewer than 2 pairs or every difference is zero.
- ``ci_low``, ``ci_high``: percentile bootstrap interval of the mean difference (resampling pairs with a
  seeded generator, so the report is reproducible). NaN for fewer than 2 pairs.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclasses.dataclass(frozen=True)
class PairedResult:
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    note: str = ""


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for one value) and count of the non-NaN values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean (NaN bounds for fewer than 2 values)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - half, m + half


def bootstrap_interval(diffs: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs``."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diffs.size, size=(resamples, diffs.size))
    means = diffs[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_comparison(loss: dict[int, float], baseline: dict[int, float], *,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> PairedResult:
    """Compare per-seed values ``loss[seed]`` with ``baseline[seed]`` over the seeds both have."""
    from scipy import stats

    seeds = sorted(s for s in set(loss) & set(baseline)
                   if not (math.isnan(loss[s]) or math.isnan(baseline[s])))
    diffs = np.asarray([loss[s] - baseline[s] for s in seeds], dtype=np.float64)
    n = int(diffs.size)
    if n == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan, "no matching seeds")
    mean = float(diffs.mean())
    if n < 2:
        return PairedResult(n, mean, math.nan, math.nan, math.nan, "n<2: no test or interval")
    low, high = bootstrap_interval(diffs, resamples=resamples, seed=seed)
    if np.all(diffs == 0):
        return PairedResult(n, mean, low, high, math.nan, "all differences zero: no test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about small n and ties; the note says enough
        p = float(stats.wilcoxon(diffs).pvalue)
    note = "" if np.all(diffs != 0) else f"{int(np.sum(diffs == 0))} zero difference(s) dropped by the test"
    return PairedResult(n, mean, low, high, p, note)
