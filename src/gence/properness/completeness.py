"""A task built to violate GenCE's completeness condition, and the checks that it does.

GUIDE section 2: the population GenCE risk is minimised by every q(y|x) = c_y p(y|x) with
sum_y c_y p(y|x) = 1 for all x. Completeness means c = 1 is the only such vector, which holds exactly
when the K functions x -> p(y|x) are linearly independent (then the linear system sum_y c_y p(y|x) = 1,
one equation per x, has the single solution c = 1). To break it, the posterior must stay on a
lower-dimensional part of the simplex.

:class:`NoiseClassTask` does that with a "noise" class: classes 0..K-2 are Gaussian class-conditionals,
and the last class is a random relabelling — its inputs come from the mixture of the other classes.
Then p(x | noise) = p(x), so p(noise | x) = pi_noise for every x: the posterior lives on the face of the
simplex where its last coordinate is the constant pi_noise, and for any b in [0, 1/pi_noise]

    c = (a, ..., a, b),  a = (1 - b pi_noise) / (1 - pi_noise)

gives sum_y c_y p(y|x) = a (1 - pi_noise) + b pi_noise = 1 for all x. Each such c p is a proper
distribution with the same within-class ratios q(y|x) / E q(y|x') as p, so GenCE with
generative_weight 1 cannot tell them apart: it may predict the noise class anywhere from never
(b = 0) to always (b = 1 / pi_noise). Cross-entropy, and the mixture CE + lam (GenCE - CE) with lam < 1,
pin b = 1.
"""
from __future__ import annotations

import numpy as np

from gence.data.synthetic import GaussianTask

__all__ = ["NoiseClassTask", "alternative_scales", "class_scales", "null_space"]


class NoiseClassTask:
    """K-1 Gaussian classes plus a last class whose inputs follow the mixture of the others.

    Same interface as :class:`gence.data.synthetic.GaussianTask` (``sample``, ``posterior``,
    ``log_posterior``, ``bayes_error``, ``config``).

    Args:
        num_classes: K >= 3 (K-1 >= 2 Gaussian classes and the noise class).
        dim, separation, seed, covariance: of the K-1 Gaussian classes, as in ``GaussianTask``.
        noise_prior: pi_noise in (0, 1), the prior of the noise class (= its posterior everywhere).
            Away from 1/K so that the uniform prediction of an untrained network is not already right.
    """

    def __init__(self, num_classes: int = 3, dim: int = 2, noise_prior: float = 0.6,
                 separation: float = 4.0, seed: int = 0, covariance: str = "identity"):
        if int(num_classes) != num_classes or num_classes < 3:
            raise ValueError(f"num_classes must be an integer >= 3, got {num_classes!r}")
        if not 0.0 < noise_prior < 1.0:
            raise ValueError(f"noise_prior must be in (0, 1), got {noise_prior!r}")
        self.num_classes = int(num_classes)
        self.noise_prior = float(noise_prior)
        self.base = GaussianTask(self.num_classes - 1, dim, separation=separation, seed=seed,
                                 covariance=covariance)
        self.dim = self.base.dim
        self.priors = np.append((1.0 - self.noise_prior) * self.base.priors, self.noise_prior)

    def config(self) -> dict:
        cfg = dict(self.base.config(), task="noise_class", num_classes=self.num_classes,
                   noise_prior=self.noise_prior)
        cfg.pop("priors")
        return cfg

    def sample(self, n: int, seed=None, generator: np.random.Generator | None = None):
        """(x float32 (n, dim), y int64 (n,)): base samples, each relabelled as noise w.p. pi_noise."""
        rng = generator if generator is not None else np.random.default_rng(seed)  # a Generator passes unchanged
        x, y = self.base.sample(n, generator=rng)
        y[rng.random(len(y)) < self.noise_prior] = self.num_classes - 1
        return x, y

    def log_posterior(self, x) -> np.ndarray:
        lp = self.base.log_posterior(x) + np.log1p(-self.noise_prior)
        return np.concatenate([lp, np.full((lp.shape[0], 1), np.log(self.noise_prior))], axis=1)

    def posterior(self, x) -> np.ndarray:
        return np.exp(self.log_posterior(x))

    def bayes_error(self, n: int = 200_000, seed: int = 12345) -> float:
        x, _ = self.sample(n, seed=seed)
        return float(1.0 - self.posterior(x).max(axis=1).mean())

    def alternative_minimiser(self, b: float) -> np.ndarray:
        """The c = (a, ..., a, b) with sum_y c_y p(y|x) = 1 for all x (see the module docstring)."""
        if not 0.0 <= b <= 1.0 / self.noise_prior:
            raise ValueError(f"b must be in [0, 1/noise_prior] = [0, {1 / self.noise_prior:.4g}], "
                             f"got {b!r}")
        a = (1.0 - b * self.noise_prior) / (1.0 - self.noise_prior)
        return np.append(np.full(self.num_classes - 1, a), b)

    def __repr__(self) -> str:
        return (f"NoiseClassTask(num_classes={self.num_classes}, dim={self.dim}, "
                f"noise_prior={self.noise_prior}, separation={self.base.separation}, "
                f"seed={self.base.seed})")


def null_space(posteriors: np.ndarray, rtol: float = 1e-8):
    """Singular values of the (n, K) matrix P of posteriors, and a basis of its numerical null space.

    sum_y c_y p(y|x_i) = 1 for all i is P c = 1. P 1 = 1 always, so the solutions are 1 + v for v in
    the null space of P: completeness fails on these samples exactly when that space is non-trivial
    (singular values below ``rtol`` times the largest).
    """
    P = np.asarray(posteriors, dtype=np.float64)
    _, s, vt = np.linalg.svd(P, full_matrices=True)
    null = vt[s.size:] if s.size < P.shape[1] else vt[s < rtol * s[0]]
    return s, null


def alternative_scales(posteriors: np.ndarray, rtol: float = 1e-8, step: float = 0.5) -> list:
    """Non-trivial c != 1 with P c = 1 (one per null-space direction), scaled by ``step``."""
    _, null = null_space(posteriors, rtol)
    return [1.0 + step * v / np.abs(v).max() for v in null]


def class_scales(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The scale c_y = E_x q(y|x) / E_x p(y|x) per class: 1 for a model with the right class
    frequencies, and the c of q = c p when the model converged to another member of the family."""
    return np.asarray(q, dtype=np.float64).mean(axis=0) / np.asarray(p, dtype=np.float64).mean(axis=0)
