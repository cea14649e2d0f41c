"""The Gaussian task's posterior, samples and Bayes error against independent computations."""

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import multivariate_normal, norm

from gence.data.synthetic import GaussianTask, exponential_priors


def direct_posterior(task, x):
    """Bayes' rule with scipy's densities, independent of the task's own log-space code."""
    logs = np.stack([np.log(task.priors[k]) + multivariate_normal(task.means[k], task.covs[k]).logpdf(x)
                     for k in range(task.num_classes)], axis=1)
    return softmax(logs, axis=1)


@pytest.mark.parametrize("kw", [
    dict(num_classes=3, dim=2),
    dict(num_classes=4, dim=3, priors=[0.1, 0.2, 0.3, 0.4], covariance="random", separation=2.0),
    dict(num_classes=10, dim=5, imbalance_ratio=10.0, seed=3),
    dict(num_classes=3, dim=2, covariance="identity", separation=8.0, seed=1),
])
def test_posterior_equals_scipy(kw):
    task = GaussianTask(**kw)
    x, _ = task.sample(500, seed=7)
    x = np.concatenate([x, 4.0 * x])  # and points far from the means
    p = task.posterior(x)
    assert p.dtype == np.float64 and p.shape == (1000, task.num_classes)
    np.testing.assert_allclose(p, direct_posterior(task, x.astype(np.float64)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)


def test_posterior_stays_exact_where_densities_underflow():
    task = GaussianTask(2, 1, means=[[-1.0], [1.0]], covs=[[[1.0]], [[1.0]]])
    x = np.array([[60.0], [-60.0]])  # densities exp(-1800) underflow float64
    # equal variances, means -1 and 1, equal priors: log-odds of class 1 vs 0 is 2x
    expected1 = 1.0 / (1.0 + np.exp(-2.0 * x[:, 0]))
    np.testing.assert_allclose(task.posterior(x)[:, 1], expected1, rtol=1e-12)
    assert np.isfinite(task.log_posterior(x)).all()


def test_samples_follow_the_model():
    task = GaussianTask(3, 2, priors=[0.5, 0.3, 0.2], covariance="random", seed=2)
    x, y = task.sample(60_000, seed=0)
    assert x.dtype == np.float32 and x.shape == (60_000, 2)
    assert y.dtype == np.int64 and y.shape == (60_000,)
    np.testing.assert_allclose(np.bincount(y) / len(y), [0.5, 0.3, 0.2], atol=0.01)
    for k in range(3):
        xk = x[y == k].astype(np.float64)
        np.testing.assert_allclose(xk.mean(axis=0), task.means[k], atol=0.05)
        np.testing.assert_allclose(np.cov(xk.T), task.covs[k], atol=0.08)


def test_sampling_is_seeded_and_accepts_a_generator():
    task = GaussianTask(3, 2)
    a, b = task.sample(100, seed=5), task.sample(100, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = task.sample(100, generator=np.random.default_rng(5))
    d = task.sample(100, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], c[0])
    np.testing.assert_array_equal(c[0], d[0])
    assert not np.array_equal(task.sample(100, seed=6)[0], a[0])
    # the task's parameters depend on its seed only
    assert np.array_equal(GaussianTask(3, 2, seed=1).means, GaussianTask(3, 2, seed=1).means)
    assert not np.array_equal(GaussianTask(3, 2, seed=1).means, task.means)


def test_bayes_error_matches_closed_form():
    # two unit-variance classes at -1 and +1 with equal priors: Bayes error = Phi(-1)
    task = GaussianTask(2, 1, means=[[-1.0], [1.0]], covs=[[[1.0]], [[1.0]]])
    assert task.bayes_error(n=400_000) == pytest.approx(norm.cdf(-1.0), abs=2e-3)


def test_exponential_priors():
    p = exponential_priors(5, 100.0)
    assert p.sum() == pytest.approx(1.0)
    assert p[0] / p[-1] == pytest.approx(100.0)
    assert np.all(np.diff(p) < 0)
    t = GaussianTask(5, 2, imbalance_ratio=100.0)
    np.testing.assert_allclose(t.priors, p)


@pytest.mark.parametrize("kw, word", [
    (dict(num_classes=1), "num_classes"),
    (dict(dim=0), "dim"),
    (dict(priors=[0.5, 0.5]), "priors"),
    (dict(priors=[-1, 1, 1]), "priors"),
    (dict(covariance="full"), "covariance"),
    (dict(priors=[1, 1, 1], imbalance_ratio=2.0), "imbalance_ratio"),
    (dict(means=np.zeros((2, 2))), "means"),
])
def test_errors_name_the_argument(kw, word):
    with pytest.raises(ValueError, match=word):
        GaussianTask(**kw)
