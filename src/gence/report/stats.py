"""The report's statistics, one implementation each, used by every table and by the verdict.

Per setting (paired seeds of a loss and the baseline: seed s of both shares data split and initialisation):
:func:`paired_difference` gives the mean difference with a Student-t interval, the paired-t p, the exact
two-sided Wilcoxon signed-rank p and the Hodges–Lehmann estimate (median of the Walsh averages: one
collapsed run, an outlier of tens of points, moves it little). Per claim (several settings):
:func:`pool` gives the random-effects view (mean of the settings' mean differences, t interval over
settings) and the fixed-effect estimate with setting as a factor (pooled within-setting variance), with
Cochran's Q and I². :func:`holm` adjusts the settings' p-values of a claim; :func:`equivalence_p` is the
two one-sided tests (TOST) against a margin. :func:`fmt_p` is the one p-value format.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence, Union

import numpy as np
from scipy import special
from scipy import stats as sps

Values = Union[Mapping, Sequence[float], np.ndarray]
LEVEL = 0.95


def _finite(values) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    return x


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for one value) and count of the non-NaN values."""
    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size)


def t_interval(mean: float, se: float, df: float, level: float = LEVEL) -> tuple[float, float]:
    """``mean`` ± t quantile × ``se`` (NaN bounds when df < 1 or se is NaN)."""
    if not df >= 1 or math.isnan(se):
        return math.nan, math.nan
    half = float(special.stdtrit(df, 0.5 + level / 2)) * se   # the t quantile (scipy's ufunc: fast)
    return mean - half, mean + half


def t_p(mean: float, se: float, df: float) -> float:
    """Two-sided p of H0: true mean 0, from a t statistic (0 when se is 0 and the mean is not)."""
    if not df >= 1 or math.isnan(se):
        return math.nan
    if se == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * special.stdtr(df, -abs(mean / se)))


@dataclasses.dataclass(frozen=True)
class TSummary:
    """Arrays over the leading axes: mean, sample sd, Student-t interval and two-sided p of H0 mean 0."""

    n: int
    mean: np.ndarray
    sd: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p: np.ndarray


def t_summary(diffs: np.ndarray, level: float = LEVEL) -> TSummary:
    """The one-sample t analysis of ``diffs`` along its last axis (n >= 2 values each, no NaN), vectorised so
    that a simulation of thousands of data sets runs the same code as one setting of the report."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.shape[-1]
    if n < 2:
        raise ValueError(f"t_summary: {n} value(s) along the last axis; expected at least 2")
    mean = d.mean(axis=-1)
    sd = d.std(axis=-1, ddof=1)
    se = sd / math.sqrt(n)
    half = special.stdtrit(n - 1, 0.5 + level / 2) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(mean) / np.where(se > 0, se, 1.0), np.where(mean == 0, 0.0, np.inf))
    return TSummary(n, mean, sd, mean - half, mean + half, 2 * special.stdtr(n - 1, -t))


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean (NaN bounds for fewer than 2 values)."""
    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    low, high = t_interval(m, float(x.std(ddof=1)) / math.sqrt(x.size), x.size - 1, level)
    return m, low, high


def wilcoxon_exact_p(diffs: Sequence[float]) -> float:
    """Exact two-sided Wilcoxon signed-rank p: zero differences dropped (the "wilcox" convention), ties
    get mid-ranks, and the null distribution of the positive-rank sum is enumerated over the 2^n sign
    patterns (by convolution, so n of a few dozen is cheap). NaN when no non-zero difference is left.
    With n pairs the smallest attainable value is 2/2^n (0.0625 for 5)."""
    d = _finite(diffs)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return math.nan
    ranks2 = np.rint(2 * sps.rankdata(np.abs(d))).astype(np.int64)   # doubled mid-ranks are integers
    counts = np.zeros(int(ranks2.sum()) + 1, dtype=np.float64)
    counts[0] = 1.0
    for r in ranks2:                                                   # each rank in or out of the + sum
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[:-r] if r else counts
        counts = counts + shifted
    probs = counts / counts.sum()
    t_plus = int(ranks2[d > 0].sum())
    p = 2 * min(probs[:t_plus + 1].sum(), probs[t_plus:].sum())
    return float(min(1.0, p))


def hodges_lehmann(diffs: Sequence[float]) -> float:
    """Hodges–Lehmann estimate of a paired shift: the median of the Walsh averages (d_i + d_j)/2, i <= j."""
    d = _finite(diffs)
    if d.size == 0:
        return math.nan
    i, j = np.triu_indices(d.size)
    return float(np.median((d[i] + d[j]) / 2))


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Loss − baseline over matched pairs: ``mean`` with its Student-t ``level`` interval [``low``, ``high``],
    ``p`` (paired t, two-sided), ``p_wilcoxon`` (exact signed-rank, two-sided), ``hodges_lehmann``, ``n``
    pairs, ``sd`` of the differences; ``note`` says why a number is NaN."""

    n: int
    mean: float
    low: float
    high: float
    p: float
    p_wilcoxon: float
    hodges_lehmann: float
    sd: float = math.nan
    level: float = LEVEL
    note: str = ""

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def df(self) -> int:
        return self.n - 1


def paired_values(a: Values, b: Values) -> np.ndarray:
    """The differences a − b over matched pairs: by key (seed) when both are mappings, else position by
    position (same length required); pairs with a NaN on either side are dropped."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError(f"paired_difference: a is {type(a).__name__} and b is {type(b).__name__}; expected "
                        "two mappings (seed -> value) or two sequences of the same length")
    if isinstance(a, Mapping):
        keys = sorted(set(a) & set(b), key=lambda k: (str(type(k)), k))
        pairs = [(float(a[k]), float(b[k])) for k in keys]
    else:
        a, b = list(a), list(b)
        if len(a) != len(b):
            raise ValueError(f"paired_difference: a has {len(a)} values and b has {len(b)}; expected the same "
                             "number (one per pair)")
        pairs = [(float(x), float(y)) for x, y in zip(a, b)]
    return np.asarray([x - y for x, y in pairs if not (math.isnan(x) or math.isnan(y))], dtype=np.float64)


def paired_difference(a: Values, b: Values, level: float = LEVEL) -> PairedDifference:
    """Compare ``a`` with ``b`` pair by pair (``{seed: value}`` mappings, matched on their common seeds, or
    two equal-length sequences): see :class:`PairedDifference`. Fewer than 2 pairs: NaN interval and p."""
    if not 0 < level < 1:
        raise ValueError(f"paired_difference: level={level!r}; expected a confidence level in (0, 1)")
    d = paired_values(a, b)
    n = int(d.size)
    nan = math.nan
    if n == 0:
        return PairedDifference(0, nan, nan, nan, nan, nan, nan, nan, level, "no matching pairs")
    mean = float(d.mean())
    hl = hodges_lehmann(d)
    if n < 2:
        return PairedDifference(n, mean, nan, nan, nan, nan, hl, nan, level, "n<2: no test or interval")
    t = t_summary(d, level)
    p_w = wilcoxon_exact_p(d)
    note = ""
    if np.all(d == 0):
        note = "all differences zero"
    elif np.any(d == 0):
        note = f"{int(np.sum(d == 0))} zero difference(s) dropped by the Wilcoxon test"
    return PairedDifference(n, mean, float(t.low), float(t.high), float(t.p), p_w, hl, float(t.sd), level, note)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; NaN entries stay NaN and
    do not count towards the number of tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def equivalence_p(mean: float, se: float, df: float, margin: float) -> float:
    """Two one-sided t tests (TOST) of H0: |true mean| >= ``margin``: the larger of the p of H0 mean <= −margin
    and of H0 mean >= +margin. Below alpha: equivalence shown at level alpha (the 1 − 2·alpha interval
    lies inside ±margin). NaN without a standard error."""
    if not margin > 0:
        raise ValueError(f"equivalence_p: margin={margin!r}; expected a positive number")
    if not df >= 1 or math.isnan(se):
        return math.nan
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    p_low = float(special.stdtr(df, -(mean + margin) / se))     # H0: mean <= -margin
    p_high = float(special.stdtr(df, (mean - margin) / se))     # H0: mean >= +margin
    return max(p_low, p_high)


@dataclasses.dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    p: float
    se: float
    df: float


@dataclasses.dataclass(frozen=True)
class Pooled:
    """A claim's estimate over its ``k`` settings. ``random``: mean of the settings' mean differences, t
    interval over settings (df k − 1), what the verdict uses; ``fixed``: setting as a factor (the n-weighted
    mean of the setting means, standard error from the pooled within-setting variance, df N − k).
    ``q``, ``q_p``: Cochran's Q with the fixed-effect weights n_i / s²_pooled and its chi² (k − 1) p;
    ``i2``: I² = max(0, (Q − (k − 1)) / Q), the share of the spread between settings beyond seed noise."""

    k: int
    pairs: int
    random: Estimate
    fixed: Estimate
    q: float
    q_p: float
    i2: float


def pool(settings: Sequence[PairedDifference], level: float = LEVEL) -> Pooled:
    """Pool per-setting paired differences (those with at least 2 pairs) into a claim's estimates."""
    used = [s for s in settings if s.n >= 2 and not math.isnan(s.mean)]
    k = len(used)
    nan = math.nan
    empty = Estimate(nan, nan, nan, nan, nan, nan)
    if k == 0:
        return Pooled(0, 0, empty, empty, nan, nan, nan)
    means = np.array([s.mean for s in used])
    ns = np.array([s.n for s in used], dtype=np.float64)
    sds = np.array([s.sd for s in used])
    total = int(ns.sum())
    if k >= 2:
        m = float(means.mean())
        se = float(means.std(ddof=1)) / math.sqrt(k)
        random = Estimate(m, *t_interval(m, se, k - 1, level), t_p(m, se, k - 1), se, k - 1)
    else:  # one setting: its own interval
        s = used[0]
        random = Estimate(s.mean, s.low, s.high, s.p, s.se, s.df)
    df_w = total - k
    s2 = float(np.sum((ns - 1) * sds ** 2) / df_w) if df_w > 0 else nan
    mf = float(np.sum(ns * means) / total)
    se_f = math.sqrt(s2 / total) if not math.isnan(s2) else nan
    fixed = Estimate(mf, *t_interval(mf, se_f, df_w, level), t_p(mf, se_f, df_w), se_f, df_w)
    if k >= 2 and s2 > 0:
        q = float(np.sum(ns * (means - mf) ** 2) / s2)
        q_p = float(sps.chi2.sf(q, k - 1))
        i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    else:
        q = q_p = i2 = nan
    return Pooled(k, total, random, fixed, q, q_p, i2)


def fmt_p(p: float | None) -> str:
    """The one p-value format: three significant digits, '–' for none, '<0.001' below 0.001."""
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def p_text(p: float | None, name: str = "p") -> str:
    """``p=0.031``, ``p<0.001`` or ``p=–``: :func:`fmt_p` after a name."""
    text = fmt_p(p)
    return f"{name}{text}" if text.startswith("<") else f"{name}={text}"
