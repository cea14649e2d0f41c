"""Training regimes (how many images of each class to train on) and the seeded train/validation split.

- ``balanced(n)``: n images of every class.
- ``long_tailed(ratio, n_max, "exp")``: n_k = floor(n_max * ratio^(-k/(K-1)) + 1e-6), class 0 the head
  (the profile of Cao et al. 2019, LDAM: CIFAR-10, ratio 100, n_max 5000 gives 5000, 2997, 1796, 1077,
  645, 387, 232, 139, 83, 50). The 1e-6 keeps exact integers (n_max/ratio at the tail) from being
  floored one below by rounding error.
- ``long_tailed(ratio, n_max, "step")``: the first K//2 classes n_max, the other K - K//2 classes
  floor(n_max / ratio).
- ``full``: every training image not in the validation split.
Every count is at least 1.

``split_indices`` draws, per class and in class order, one permutation of that class's indices with a
single ``numpy.random.Generator(seed)``; the first ``n_val_per_class`` go to validation and the next
``count`` to training. So the validation split depends only on (labels, n_val_per_class, seed), not on
the regime, and a smaller regime's training subset is contained in a larger one's with the same seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Regime", "Balanced", "LongTailed", "Full", "balanced", "long_tailed", "full",
           "parse_regime", "split_indices"]


class Regime:
    """Base class: ``name`` (parseable by ``parse_regime``) and ``counts(num_classes)``."""

    name: str

    def counts(self, num_classes: int) -> list[int] | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Balanced(Regime):
    n_per_class: int

    def __post_init__(self):
        if int(self.n_per_class) != self.n_per_class or self.n_per_class < 1:
            raise ValueError(f"balanced: n_per_class must be an integer >= 1, got {self.n_per_class!r}")

    @property
    def name(self) -> str:
        return f"balanced:{self.n_per_class}"

    def counts(self, num_classes: int) -> list[int]:
        return [int(self.n_per_class)] * int(num_classes)


@dataclass(frozen=True)
class LongTailed(Regime):
    imbalance_ratio: float
    n_max: int
    profile: str = "exp"

    def __post_init__(self):
        if not self.imbalance_ratio >= 1:
            raise ValueError(f"long_tailed: imbalance_ratio must be >= 1, got {self.imbalance_ratio!r}")
        if int(self.n_max) != self.n_max or self.n_max < 1:
            raise ValueError(f"long_tailed: n_max must be an integer >= 1, got {self.n_max!r}")
        if self.profile not in ("exp", "step"):
            raise ValueError(f"long_tailed: profile must be 'exp' or 'step', got {self.profile!r}")

    @property
    def name(self) -> str:
        base = f"long_tailed:{self.imbalance_ratio:g}:{self.n_max}"
        return base if self.profile == "exp" else f"{base}:{self.profile}"

    def counts(self, num_classes: int) -> list[int]:
        K, n_max, r = int(num_classes), int(self.n_max), float(self.imbalance_ratio)
        if self.profile == "exp":
            raw = [n_max * r ** (-k / (K - 1)) if K > 1 else n_max for k in range(K)]
        else:
            raw = [n_max if k < K // 2 else n_max / r for k in range(K)]
        return [max(1, math.floor(v + 1e-6)) for v in raw]


@dataclass(frozen=True)
class Full(Regime):
    @property
    def name(self) -> str:
        return "full"

    def counts(self, num_classes: int) -> None:
        """None: every image of a class that is not in the validation split."""
        return None


def balanced(n_per_class: int) -> Balanced:
    return Balanced(int(n_per_class))


def long_tailed(imbalance_ratio: float, n_max: int, profile: str = "exp") -> LongTailed:
    return LongTailed(float(imbalance_ratio), int(n_max), profile)


def full() -> Full:
    return Full()


def parse_regime(spec: str | Regime) -> Regime:
    """``"balanced:N"``, ``"long_tailed:RATIO:N_MAX[:exp|step]"`` or ``"full"`` -> a Regime."""
    if isinstance(spec, Regime):
        return spec
    fmt = "expected 'balanced:N', 'long_tailed:RATIO:N_MAX[:exp|step]' or 'full'"
    parts = [p.strip() for p in str(spec).strip().split(":")]
    kind = parts[0].lower().replace("-", "_")
    try:
        if kind == "full" and len(parts) == 1:
            return full()
        if kind == "balanced" and len(parts) == 2:
            return balanced(_int(parts[1]))
        if kind in ("long_tailed", "lt") and len(parts) in (3, 4):
            return long_tailed(float(parts[1]), _int(parts[2]), *(parts[3:] or ["exp"]))
    except ValueError as e:
        raise ValueError(f"regime {spec!r}: {e}; {fmt}") from None
    raise ValueError(f"regime {spec!r}: {fmt}")


def _int(s: str) -> int:
    v = float(s)
    if v != int(v):
        raise ValueError(f"{s!r} is not an integer")
    return int(v)


def split_indices(labels, regime: Regime | str, n_val_per_class: int, seed: int,
                  num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class training subset and disjoint validation split of a labelled training set.

    Args:
        labels: int labels (numpy array, tensor or sequence) of the full training split.
        regime: a Regime or its string form.
        n_val_per_class: validation images drawn from every class (0 for none).
        seed: seed of the ``numpy.random.Generator`` that draws everything.
        num_classes: K (default ``max(labels) + 1``).
    Returns:
        ``(train_idx, val_idx)``: sorted int64 numpy arrays of positions in ``labels``, disjoint.
    Raises:
        ValueError naming the class, its image count and the counts asked for, when a class has too few.
    """
    regime = parse_regime(regime)
    if hasattr(labels, "cpu"):
        labels = labels.cpu().numpy()
    labels = np.asarray(labels).reshape(-1)
    if int(n_val_per_class) != n_val_per_class or n_val_per_class < 0:
        raise ValueError(f"n_val_per_class must be an integer >= 0, got {n_val_per_class!r}")
    n_val = int(n_val_per_class)
    K = int(num_classes) if num_classes is not None else (int(labels.max()) + 1 if labels.size else 0)
    counts = regime.counts(K)
    rng = np.random.Generator(np.random.PCG64(seed))
    train, val = [], []
    for k in range(K):
        idx = np.flatnonzero(labels == k)
        want = len(idx) - n_val if counts is None else counts[k]
        if len(idx) < n_val + max(want, 1):
            raise ValueError(
                f"class {k} has {len(idx)} training images; regime {regime.name} with n_val_per_class={n_val}"
                f" needs {n_val} + {max(want, 1)} = {n_val + max(want, 1)}"
            )
        perm = rng.permutation(idx)
        val.append(perm[:n_val])
        train.append(perm[n_val:n_val + want])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
    return cat(train), cat(val)
