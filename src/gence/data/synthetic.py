"""Gaussian class-conditional data with a closed-form posterior.

The one dataset in the project whose true posterior p(y|x) is known exactly, so that a loss can be
judged by how close the model's q(y|x) comes to it (the properness study, ``gence properness``), not
only by accuracy. The generative model is

    y ~ Categorical(priors),    x | y ~ N(mu_y, Sigma_y),

and the posterior follows from Bayes' rule, computed in log space so that it stays exact far from the
means where the densities themselves underflow:

    log p(y|x) = log pi_y + log N(x; mu_y, Sigma_y) - logsumexp_k [log pi_k + log N(x; mu_k, Sigma_k)].

``load_dataset("gaussians", ...)`` builds a :class:`GaussianTask` and samples from it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.linalg import solve_triangular

__all__ = ["GaussianTask", "exponential_priors", "as_rng"]

_COVARIANCES = ("identity", "random")


def exponential_priors(num_classes: int, imbalance_ratio: float) -> np.ndarray:
    """Class priors pi_k proportional to ratio^(-k/(K-1)): class 0 the head, head/tail = ratio."""
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio!r}")
    k = np.arange(num_classes, dtype=np.float64)
    w = float(imbalance_ratio) ** (-k / max(num_classes - 1, 1))
    return w / w.sum()


def as_rng(seed) -> np.random.Generator:
    """``seed`` (an int, None or a ``numpy.random.Generator``) as a Generator; a Generator is returned as is."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


class GaussianTask:
    """A K-class task with Gaussian class-conditionals and an exact posterior.

    Args:
        num_classes: K >= 2.
        dim: dimension d of x, >= 1.
        priors: class priors (K non-negative numbers, normalised here); None for balanced classes,
            unless ``imbalance_ratio`` is given.
        separation: scale of the class means. Means are drawn i.i.d. N(0, s^2 I) with
            s = separation / sqrt(2 d), so the expected distance between two means is about
            ``separation`` whatever the dimension (unit-scale covariances): small values give
            posteriors far from 0 and 1, large values nearly separable classes.
        covariance: ``"identity"`` (Sigma_y = I; linear Bayes boundary) or ``"random"`` (each
            Sigma_y = Q diag(e) Q^T with a random rotation Q and eigenvalues e ~ U(0.5, 2); quadratic
            boundary).
        seed: seed of the task's parameters (means, covariances), not of the samples.
        imbalance_ratio: exponential priors with head/tail ratio (class 0 the head); excludes ``priors``.
        means, covs: explicit (K, d) means and (K, d, d) covariances, overriding the random ones.
    """

    def __init__(self, num_classes: int = 3, dim: int = 2, priors: Sequence[float] | None = None,
                 separation: float = 3.0, seed: int = 0, covariance: str = "random",
                 imbalance_ratio: float | None = None, means=None, covs=None):
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}")
        self.num_classes = K = int(num_classes)
        self.dim = d = int(dim)
        self.separation = float(separation)
        self.seed = seed
        self.covariance = covariance
        self.imbalance_ratio = imbalance_ratio

        if priors is not None and imbalance_ratio is not None:
            raise ValueError("give either priors or imbalance_ratio, not both")
        if imbalance_ratio is not None:
            pri = exponential_priors(K, imbalance_ratio)
        elif priors is None:
            pri = np.full(K, 1.0 / K)
        else:
            pri = np.asarray(priors, dtype=np.float64)
            if pri.shape != (K,) or np.any(pri < 0) or not np.isfinite(pri).all() or pri.sum() <= 0:
                raise ValueError(f"priors must be {K} non-negative numbers with a positive sum, "
                                 f"got {priors!r}")
            pri = pri / pri.sum()
        self.priors = pri

        rng = np.random.default_rng(seed)
        if means is None:
            means = rng.normal(size=(K, d)) * (self.separation / math.sqrt(2 * d))
        means = np.asarray(means, dtype=np.float64)
        if means.shape != (K, d):
            raise ValueError(f"means must have shape ({K}, {d}), got {means.shape}")
        if covs is None:
            if covariance == "identity":
                covs = np.broadcast_to(np.eye(d), (K, d, d)).copy()
            else:
                covs = np.empty((K, d, d))
                for k in range(K):
                    q, r = np.linalg.qr(rng.normal(size=(d, d)))
                    q = q * np.sign(np.diag(r))  # a uniformly random rotation
                    covs[k] = (q * rng.uniform(0.5, 2.0, size=d)) @ q.T
        covs = np.asarray(covs, dtype=np.float64)
        if covs.shape != (K, d, d):
            raise ValueError(f"covs must have shape ({K}, {d}, {d}), got {covs.shape}")
        self.means = means
        self.covs = covs
        # Cholesky factors: sampling x = mu + L z, and the log-density through a triangular solve.
        self._chol = np.linalg.cholesky(covs)
        self._log_det = 2.0 * np.log(np.diagonal(self._chol, axis1=1, axis2=2)).sum(axis=1)

    def config(self) -> dict:
        """The JSON-able parameters that define the task (for run keys)."""
        return {"task": "gaussians", "num_classes": self.num_classes, "dim": self.dim,
                "priors": [round(float(p), 12) for p in self.priors], "separation": self.separation,
                "seed": self.seed, "covariance": self.covariance}

    def sample(self, n: int, seed=None, generator: np.random.Generator | None = None):
        """Draw n pairs (x, y): x float32 (n, dim), y int64 (n,).

        ``seed`` is an int or a ``numpy.random.Generator`` (``generator=`` is the same as the latter).
        """
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        rng = generator if generator is not None else as_rng(seed)
        y = rng.choice(self.num_classes, size=int(n), p=self.priors).astype(np.int64)
        z = rng.normal(size=(int(n), self.dim))
        x = self.means[y] + np.einsum("nij,nj->ni", self._chol[y], z)
        return x.astype(np.float32), y

    def log_joint(self, x) -> np.ndarray:
        """log pi_k + log N(x; mu_k, Sigma_k), shape (n, K), float64."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        out = np.empty((x.shape[0], self.num_classes))
        for k in range(self.num_classes):
            diff = (x - self.means[k]).T  # (d, n)
            sol = _solve_lower(self._chol[k], diff)
            maha = (sol * sol).sum(axis=0)
            out[:, k] = -0.5 * (maha + self._log_det[k] + self.dim * math.log(2 * math.pi))
        with np.errstate(divide="ignore"):
            return out + np.log(self.priors)

    def log_posterior(self, x) -> np.ndarray:
        """log p(y|x), shape (n, K), float64."""
        lj = self.log_joint(x)
        m = lj.max(axis=1, keepdims=True)
        return lj - (m + np.log(np.exp(lj - m).sum(axis=1, keepdims=True)))

    def posterior(self, x) -> np.ndarray:
        """p(y|x), shape (n, K), float64; rows sum to 1."""
        return np.exp(self.log_posterior(x))

    def bayes_error(self, n: int = 200_000, seed: int = 12345) -> float:
        """Monte Carlo estimate of the Bayes error E_x[1 - max_k p(k|x)].

        Averages the exact conditional error of the Bayes classifier over n samples of x, which has far
        less variance than counting its mistakes on sampled labels.
        """
        x, _ = self.sample(n, seed=seed)
        return float(1.0 - self.posterior(x).max(axis=1).mean())

    def __repr__(self) -> str:
        pri = np.array2string(self.priors, precision=3)
        return (f"GaussianTask(num_classes={self.num_classes}, dim={self.dim}, priors={pri}, "
                f"separation={self.separation}, covariance={self.covariance!r}, seed={self.seed})")


def _solve_lower(chol: np.ndarray, b: np.ndarray) -> np.ndarray:
    return solve_triangular(chol, b, lower=True)
