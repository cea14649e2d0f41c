"""Input conversion and checks shared by every metric (and by :mod:`gence.calibration`).

Metrics run at evaluation time on the CPU in float64: tensors are detached and copied to the host,
arrays are converted. Checks raise ``ValueError`` naming the argument, what was received and what was
expected, so a wrong call fails loudly instead of producing a plausible number.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["SUM_TOLERANCE", "SUM_TOLERANCE_16BIT", "to_numpy", "float_dtype_of", "check_n_bins", "check_matrix",
           "check_probs", "check_labels", "check_vector"]

# Rows of ``probs`` must sum to 1 within this tolerance. It exists to catch logits passed as
# probabilities, not to normalise; 16-bit softmax outputs carry errors of a few 1e-3.
SUM_TOLERANCE = 1e-3
SUM_TOLERANCE_16BIT = 1e-2

_NUMPY_TO_TORCH_FLOAT = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__}"


def to_numpy(x, name: str) -> np.ndarray:
    """Host numpy copy of a tensor, array or nested list (bfloat16 becomes float32, exactly)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} must be a tensor or an array, got {_describe(x)}") from exc


def float_dtype_of(x) -> torch.dtype:
    """The floating precision the caller's values were stored in (float64 for integers)."""
    if isinstance(x, torch.Tensor):
        return x.dtype if x.dtype.is_floating_point else torch.float64
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return torch.float64
    return _NUMPY_TO_TORCH_FLOAT.get(np.dtype(dtype), torch.float64)


def check_n_bins(n_bins) -> int:
    """``n_bins`` as an int >= 1."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def _real_float64(arr: np.ndarray, x, name: str) -> np.ndarray:
    """``arr`` (converted from ``x``) as float64, after checking it holds real numbers and no NaN."""
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got {_describe(x)}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} must not contain NaN, got {int(np.isnan(arr).sum())} NaN values")
    return arr


def check_matrix(x, name: str, what: str = "(N, K)") -> np.ndarray:
    """A float64 (N, K) matrix with N >= 1 and K >= 1 and no NaN."""
    arr = to_numpy(x, name)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape {what} with N >= 1 and K >= 1, got {_describe(x)}")
    return _real_float64(arr, x, name)


def check_probs(probs, name: str = "probs") -> np.ndarray:
    """float64 (N, K) probabilities: finite, in [0, 1] and rows summing to 1, within a tolerance."""
    p = check_matrix(probs, name)
    dtype = float_dtype_of(probs)
    tol = SUM_TOLERANCE_16BIT if dtype in (torch.float16, torch.bfloat16) else SUM_TOLERANCE
    if not np.isfinite(p).all():
        raise ValueError(f"{name} must be finite probabilities, got infinite values")
    lo, hi = float(p.min()), float(p.max())
    if lo < -tol or hi > 1 + tol:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.6g}, {hi:.6g}] "
                         "(were logits passed instead of probabilities?)")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > tol:
        raise ValueError(f"rows of {name} must sum to 1 (within {tol:g}), got {sums[worst]:.6g} in row {worst} "
                         "(were logits passed instead of probabilities?)")
    return p


def check_labels(labels, n: int, k: int, name: str = "labels") -> np.ndarray:
    """int64 (n,) class indices in [0, k)."""
    y = to_numpy(labels, name)
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got {_describe(labels)}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match {n} rows of scores, got {_describe(labels)}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"{name} must lie in [0, {k}) for K = {k} classes, "
                         f"got values in [{int(y.min())}, {int(y.max())}]")
    return y


def check_vector(x, name: str) -> np.ndarray:
    """float64 (n,) scores with n >= 1 and no NaN."""
    arr = to_numpy(x, name)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got {_describe(x)}")
    return _real_float64(arr, x, name)
