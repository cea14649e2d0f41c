"""The report's statistics against scipy and hand computations, and the verdict rule by simulation.

Simulations use a fixed seed; every bound is stated with its Monte Carlo standard error and holds with a
margin of several of them."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from gence.report.columns import ERROR
from gence.report.stats import (equivalence_p, fmt_p, hodges_lehmann, holm, paired_difference, pool, t_summary,
                                wilcoxon_exact_p, PairedDifference)
from gence.report.verdict import (HOLDS, INCONCLUSIVE, MIXED, NO_BETTER, NO_DATA, NOT_HOLDS, Comparison, decide)
from gence.selection import best_candidate
from gence.experiments.grid import choose_value


# ------------------------------------------------------------------------------------- per setting
def test_paired_difference_matches_scipy_t_test_and_matches_seeds():
    a = {0: 0.31, 1: 0.52, 2: float("nan"), 3: 0.18, 4: 0.93, 5: 0.44, 6: 0.12, 9: 0.5}
    b = {0: 0.22, 1: 0.11, 2: 0.50, 3: 0.25, 4: 0.30, 5: 0.41, 6: 0.02, 8: 0.1}
    d = np.array([a[s] - b[s] for s in (0, 1, 3, 4, 5, 6)])      # seed 2 has a NaN; 8 and 9 are unmatched
    r = paired_difference(a, b)
    t = stats.ttest_1samp(d, 0.0)
    ci = t.confidence_interval(0.95)
    assert r.n == 6 and r.mean == pytest.approx(d.mean(), rel=1e-12)
    assert (r.low, r.high) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10))
    assert r.p == pytest.approx(t.pvalue, rel=1e-10)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(d, method="exact").pvalue, rel=1e-12)
    r90 = paired_difference(list(d), [0.0] * 6, level=0.9)
    ci90 = t.confidence_interval(0.9)
    assert (r90.low, r90.high) == (pytest.approx(ci90.low, rel=1e-10), pytest.approx(ci90.high, rel=1e-10))


def test_paired_difference_edges_and_errors():
    r = paired_difference({0: 1.0}, {0: 0.5})
    assert r.n == 1 and r.mean == 0.5 and math.isnan(r.low) and math.isnan(r.p) and "n<2" in r.note
    r = paired_difference({0: 1.0, 1: 2.0}, {5: 1.0})
    assert r.n == 0 and math.isnan(r.mean) and "no matching" in r.note
    r = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert r.mean == 0 and r.low == r.high == 0 and r.p == 1.0 and math.isnan(r.p_wilcoxon)
    with pytest.raises(ValueError, match="a has 2 values and b has 3"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="two mappings"):
        paired_difference({0: 1.0}, [1.0])
    with pytest.raises(ValueError, match="level=1.5"):
        paired_difference([1.0, 2.0], [0.0, 0.0], level=1.5)


@pytest.mark.parametrize("n", [3, 5, 7, 10, 12])
def test_exact_wilcoxon_against_scipy_without_ties(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        d = rng.normal(0.4, 1.0, n)
        assert wilcoxon_exact_p(d) == pytest.approx(stats.wilcoxon(d, method="exact").pvalue, rel=1e-12)


def test_exact_wilcoxon_with_ties_and_zeros_against_enumeration():
    """Mid-ranks for ties, zeros dropped: every one of the 2^n sign patterns enumerated by hand."""
    d = np.array([1.0, 2.0, 2.0, -3.0, 4.0, 0.0, -2.0])
    nz = d[d != 0]
    ranks = stats.rankdata(np.abs(nz))
    observed = ranks[nz > 0].sum()
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=nz.size)]
    lo = np.mean([s <= observed + 1e-9 for s in sums])
    hi = np.mean([s >= observed - 1e-9 for s in sums])
    assert wilcoxon_exact_p(d) == pytest.approx(min(1.0, 2 * min(lo, hi)), rel=1e-12)
    assert wilcoxon_exact_p(np.ones(5)) == pytest.approx(2 / 2 ** 5)     # the smallest p with 5 pairs
    assert math.isnan(wilcoxon_exact_p([0.0, 0.0]))


def test_hodges_lehmann_by_hand():
    # Walsh averages of (1, 2, 9): 1, 1.5, 5, 2, 5.5, 9 -> median of 1, 1.5, 2, 5, 5.5, 9 = 3.5
    assert hodges_lehmann([1.0, 2.0, 9.0]) == 3.5
    # one collapsed run (an outlier of 40 points) moves the mean by 8 and HL by 0.35
    d = np.array([0.1, -0.2, 0.3, 0.0, 40.0])
    assert hodges_lehmann(d) == pytest.approx(np.median([(d[i] + d[j]) / 2 for i in range(5) for j in range(i, 5)]))
    assert abs(hodges_lehmann(d) - hodges_lehmann(d[:4])) < 1 < d.mean() - d[:4].mean()


def test_holm_against_hand_computation():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    got = holm([0.01, 0.04, 0.03, float("nan"), 0.005])
    np.testing.assert_allclose(got[[0, 1, 2, 4]], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(got[3])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])       # capped at 1
    assert holm([]).size == 0


def test_tost_against_hand_computation():
    d = np.array([0.1, -0.2, 0.15, 0.05, 0.0, -0.05])
    m, se, df, margin = d.mean(), d.std(ddof=1) / math.sqrt(6), 5, 0.3
    p_lower = 1 - stats.t.cdf((m + margin) / se, df)      # H0: mean <= -margin
    p_upper = stats.t.cdf((m - margin) / se, df)          # H0: mean >= +margin
    assert equivalence_p(m, se, df, margin) == pytest.approx(max(p_lower, p_upper), rel=1e-9)
    # duality: p < 0.05 exactly when the 90% t interval lies inside the margin
    half = stats.t.ppf(0.95, df) * se
    for mg in (0.05, 0.1, 0.2, 0.4):
        assert (equivalence_p(m, se, df, mg) < 0.05) == (m - half > -mg and m + half < mg)
    with pytest.raises(ValueError, match="margin=0"):
        equivalence_p(m, se, df, 0)


def test_pool_random_and_fixed_effects_q_and_i2_by_hand():
    rng = np.random.default_rng(3)
    sets = [rng.normal(mu, 1.0, n) for mu, n in ((0.0, 5), (1.0, 5), (3.0, 4))]
    res = [paired_difference(list(x), [0.0] * len(x)) for x in sets]
    p = pool(res)
    means = np.array([x.mean() for x in sets])
    ns = np.array([len(x) for x in sets])
    t = stats.ttest_1samp(means, 0.0)
    assert p.k == 3 and p.pairs == 14
    assert p.random.mean == pytest.approx(means.mean()) and p.random.p == pytest.approx(t.pvalue)
    assert p.random.low == pytest.approx(t.confidence_interval().low)
    # fixed effect with setting as a factor: one-way model d_ij = mu + a_i, pooled residual variance
    s2 = sum(((x - x.mean()) ** 2).sum() for x in sets) / (14 - 3)
    mf = (ns * means).sum() / 14
    assert p.fixed.mean == pytest.approx(mf) and p.fixed.se == pytest.approx(math.sqrt(s2 / 14))
    q = (ns * (means - mf) ** 2).sum() / s2
    assert p.q == pytest.approx(q) and p.i2 == pytest.approx(max(0, (q - 2) / q))
    assert p.q_p == pytest.approx(stats.chi2.sf(q, 2))
    # the one-way ANOVA F equals Q / (k - 1) with these weights
    assert stats.f_oneway(*sets).statistic == pytest.approx(q / 2)


def test_fmt_p():
    assert (fmt_p(0.04567), fmt_p(0.0004), fmt_p(float("nan")), fmt_p(None)) == ("0.0457", "<0.001", "–", "–")


def test_best_candidate_is_the_runners_choice():
    cases = [
        {0.1: [{"val/error": 0.3}, {"val/error": 0.1}], 0.01: [{"val/error": 0.25}]},
        {0.1: [{"val/error": 0.2, "val/nll": 0.5}], 0.03: [{"val/error": 0.2, "val/nll": 0.7}]},
        {0.1: [{"val/error": 0.2, "val/nll": 0.5}], 0.03: [{"val/error": 0.2, "val/nll": 0.5}]},
        {0.01: [{}], 0.1: [{"val/error": 0.9}]},
        {0.03: [{"val/error": 0.2}], 0.1: [{"val/error": 0.2, "val/nll": 0.1}]},
    ]
    by_hand = [0.1, 0.1, 0.03, 0.1, 0.1]   # lowest mean; ties: lower nll (missing loses), then smaller value
    for case, want in zip(cases, by_hand):
        assert best_candidate(case, "val/error") == want
        runner = choose_value([(v, m) for v, ms in case.items() for m in ms], "val/error")
        assert runner.value == want
    assert best_candidate({0.01: [{}]}, "val/error") is None


# ------------------------------------------------------------------------------------------ simulation
def mc_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("n", [5, 10])
def test_t_interval_covers_the_truth_93_to_97_percent(n):
    sims = 20_000
    rng = np.random.default_rng(100 + n)
    truth = 0.7
    d = rng.normal(truth, 1.3, size=(sims, n))
    t = t_summary(d)
    coverage = float(np.mean((t.low <= truth) & (truth <= t.high)))
    se = mc_se(0.95, sims)                      # 0.0015: the band 93-97% is > 13 standard errors wide
    assert 0.93 + 3 * se < coverage < 0.97 - 3 * se, coverage
    # the same code as one setting of the report
    r = paired_difference(list(d[0]), [0.0] * n)
    assert (r.low, r.high, r.p) == pytest.approx((t.low[0], t.high[0], t.p[0]), rel=1e-12)


@pytest.mark.parametrize("tau", [0.0, 0.6])
def test_pooled_interval_covers_at_the_pilots_design(tau):
    # the convergence pilot's pooled change: 5 settings of 2 seeds, seed sd 1.47 pp (CIFAR-10, 2 settings) and
    # 0.93 pp (Fashion-MNIST, 3), the settings' true changes spread by tau pp around the truth; the random-
    # effects interval (t over the settings' means) is the one TOST and the verdict use
    sims, truth = 20_000, -0.2
    sds = np.array([1.47, 1.47, 0.93, 0.93, 0.93])
    rng = np.random.default_rng(31 + int(10 * tau))
    mu = truth + rng.normal(0.0, tau, size=(sims, 5))
    d = mu[..., None] + rng.normal(0.0, 1.0, size=(sims, 5, 2)) * sds[None, :, None]
    over = t_summary(d.mean(axis=-1))
    coverage = float(np.mean((over.low <= truth) & (truth <= over.high)))
    se = mc_se(0.95, sims)
    assert 0.93 + 3 * se < coverage < 0.97 - 3 * se, coverage
    # the same code as the report's pooled estimate of one simulated pilot
    r = pool([paired_difference(list(d[0, j]), [0.0, 0.0]) for j in range(5)]).random
    assert (r.mean, r.low, r.high) == pytest.approx((over.mean[0], over.low[0], over.high[0]), rel=1e-12)


# today's few-labels claim: 3 datasets x 2 models x 3 regimes = 18 settings, 5 pairs each; paired seed sd
# 0.9 / 0.6 / 1.8 pp by dataset (CIFAR-10, FMNIST, MNIST)
SDS = np.repeat([0.009, 0.006, 0.018], 6)


def simulate(effect_sd_units: float, studies: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, 1.0, size=(studies, SDS.size, 5)) * SDS[None, :, None]
    d += (-effect_sd_units * SDS)[None, :, None]         # negative difference = lower error = GenCE better
    t = t_summary(d)
    counts: dict[str, int] = {}
    for i in range(studies):
        comps = [Comparison("b", ("ds", f"r{j}", "m"), "gence", "ce", ERROR,
                            PairedDifference(5, float(t.mean[i, j]), float(t.low[i, j]), float(t.high[i, j]),
                                             float(t.p[i, j]), math.nan, math.nan, float(t.sd[i, j])),
                            math.nan, math.nan, 5) for j in range(SDS.size)]
        status = decide(comps, SDS.size).status
        counts[status] = counts.get(status, 0) + 1
    return {k: v / studies for k, v in counts.items()}


def test_verdict_under_no_effect_rarely_takes_a_side():
    studies = 3000
    rates = simulate(0.0, studies, seed=7)
    se = mc_se(0.05, studies)                             # 0.004
    # a wrong directional verdict: "holds" (GenCE better) or "does not hold" (GenCE worse); each is one tail
    # of the pooled 95% interval, about 2.5%; "does not hold (no better)" (equivalence) is right here
    assert rates.get(HOLDS, 0) < 0.05 - 4 * se and rates.get(NOT_HOLDS, 0) < 0.05 - 4 * se, rates
    assert rates.get(HOLDS, 0) + rates.get(NOT_HOLDS, 0) < 0.05 + 3 * mc_se(0.05, studies), rates
    assert set(rates) <= {HOLDS, NOT_HOLDS, NO_BETTER, MIXED, INCONCLUSIVE}
    assert rates.get(NO_BETTER, 0) > 0.3          # with 18 settings the pooled estimate is often precise


def test_verdict_finds_a_uniform_effect_of_one_paired_sd():
    studies = 1000
    rates = simulate(1.0, studies, seed=8)
    assert rates.get(HOLDS, 0) > 0.9, rates       # "most": far above half, with SE < 0.01


def test_decide_not_enough_data_and_provisional():
    def comp(mean, low, high, p, partial=False):
        return Comparison("b", ("d", "r", "m"), "gence", "ce", ERROR,
                          PairedDifference(5, mean, low, high, p, math.nan, math.nan, 0.01), math.nan, math.nan,
                          6 if partial else 5)
    assert decide([], 4).status == NO_DATA
    assert decide([comp(-0.01, -0.02, -0.001, 0.01)], 8).status == NO_DATA      # 1 of 8 < 25%
    # pooled over settings: mean of (-1.0, -1.1, -1.2) pp, t interval over the 3 means excludes 0
    d = decide([comp(-0.010, -0.02, -0.001, 0.01, partial=True), comp(-0.011, -0.02, -0.002, 0.01),
                comp(-0.012, -0.02, -0.004, 0.01)], 4)
    assert d.status == HOLDS and d.provisional and d.text == "holds (provisional)"
    assert d.pooled.random.mean == pytest.approx(-0.011)
    # one setting significantly worse after Holm (3 x 0.001 < 0.05) with the pooled estimate favouring GenCE
    favour = [comp(m, m - 0.01, m + 0.01, 0.5) for m in (-0.010, -0.011, -0.012, -0.010, -0.011)]
    d = decide(favour + [comp(0.001, 0.0005, 0.0015, 0.0001)], 6)
    assert d.pooled.random.high < 0 and (d.status, d.worse) == (MIXED, 1)
    d = decide([comp(0.010, 0.001, 0.02, 0.5), comp(0.011, 0.002, 0.02, 0.5), comp(0.012, 0.004, 0.02, 0.5)], 3)
    assert d.status == NOT_HOLDS
