"""Calibration errors: ECE (equal width), AdaECE (equal mass), classwise ECE, MCE, reliability bins.

Conventions, shared by every function here:

- Top-label: the confidence of a sample is max_k p_k and it is correct when argmax_k p_k equals the label;
  ties in the top probability go to the lowest class index, as ``argmax`` does.
- Equal-width bins: M bins [0, 1/M], (1/M, 2/M], ..., ((M-1)/M, 1]. The right edge is inclusive, so a
  confidence of exactly 0 goes in the first bin and exactly 1.0 in the last.
- Edges at floating point: edge k is k/M rounded to the precision the probabilities were given in
  (float64 for numpy float64 and for integers, float32 for float32 tensors, ...), and a confidence equal
  to an edge goes in the bin on its left. So 0.2 with M = 5 is in bin 0 and 0.7 with M = 10 in bin 6,
  in float32 and in float64 alike; ``ceil(conf * M) - 1`` would get the latter wrong (0.7 * 10 rounds
  up to 7.000000000000001).
- Results are fractions in [0, 1], not percentages; empty bins contribute nothing.
"""
from __future__ import annotations

import numpy as np
import torch

from gence.metrics.checks import check_labels, check_n_bins, check_probs, float_dtype_of

__all__ = [
    "expected_calibration_error",
    "adaptive_calibration_error",
    "classwise_calibration_error",
    "maximum_calibration_error",
    "reliability_bins",
]


def _edges(n_bins: int, dtype: torch.dtype) -> np.ndarray:
    """k/M for k = 0..M, each rounded to ``dtype`` and widened back (exactly) to float64."""
    nominal = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins  # correctly rounded k/M
    return nominal.to(dtype).to(torch.float64).numpy()


def _bin_index(values: np.ndarray, n_bins: int, dtype: torch.dtype) -> np.ndarray:
    """Bin of each value: the number of interior edges strictly below it (right-inclusive bins)."""
    interior = _edges(n_bins, dtype)[1:-1]
    return np.searchsorted(interior, values, side="left")


def _bin_sums(values: np.ndarray, hits: np.ndarray, n_bins: int, dtype: torch.dtype):
    """Per-bin count, sum of hits and sum of values; several series at once if ``values`` is (N, K)."""
    idx = _bin_index(values, n_bins, dtype)
    if values.ndim == 2:  # one set of M bins per column, flattened
        idx = idx + n_bins * np.arange(values.shape[1])
    size = n_bins * (values.shape[1] if values.ndim == 2 else 1)
    count = np.bincount(idx.ravel(), minlength=size)
    hit_sum = np.bincount(idx.ravel(), weights=hits.ravel().astype(np.float64), minlength=size)
    value_sum = np.bincount(idx.ravel(), weights=values.ravel(), minlength=size)
    if values.ndim == 2:
        shape = (values.shape[1], n_bins)
        return count.reshape(shape), hit_sum.reshape(shape), value_sum.reshape(shape)
    return count, hit_sum, value_sum


def _gaps(count, hit_sum, value_sum):
    """|accuracy - mean confidence| per bin; 0 for empty bins."""
    safe = np.maximum(count, 1)
    return np.where(count > 0, np.abs(hit_sum / safe - value_sum / safe), 0.0)


def _top_label(probs, labels):
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    conf = p.max(axis=1)
    hits = p.argmax(axis=1) == y
    return conf, hits, float_dtype_of(probs)


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Top-label ECE with M equal-width bins [0, 1/M], (1/M, 2/M], ..., ((M-1)/M, 1].

    ECE = sum over bins of (n_b / N) |accuracy_b - mean confidence_b|, a fraction. A confidence equal
    to an edge (k/M in the input's precision) goes in the bin on its left; 0 in the first, 1.0 in the last.
    """
    m = check_n_bins(n_bins)
    conf, hits, dtype = _top_label(probs, labels)
    count, hit_sum, conf_sum = _bin_sums(conf, hits, m, dtype)
    return float(np.sum(count / conf.shape[0] * _gaps(count, hit_sum, conf_sum)))


def maximum_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Top-label MCE: the largest |accuracy_b - mean confidence_b| over the non-empty equal-width bins.

    Same bins as :func:`expected_calibration_error` (right edges inclusive, edges in the input's precision).
    """
    m = check_n_bins(n_bins)
    conf, hits, dtype = _top_label(probs, labels)
    count, hit_sum, conf_sum = _bin_sums(conf, hits, m, dtype)
    return float(np.max(_gaps(count, hit_sum, conf_sum)))


def adaptive_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Top-label AdaECE: the ECE gap over M bins of (almost) equal count.

    Samples are sorted by confidence with a stable sort (ties keep their input order) and the sorted
    order is split into M consecutive groups as ``numpy.array_split`` does (the first N mod M groups get
    one more); groups left empty when N < M contribute nothing.
    """
    m = check_n_bins(n_bins)
    conf, hits, _ = _top_label(probs, labels)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for group in np.array_split(order, m):
        if group.size:
            total += group.size * abs(hits[group].mean() - conf[group].mean())
    return float(total / conf.shape[0])


def classwise_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Classwise ECE: for each class k, the equal-width ECE of p_k against 1[y = k]; the mean over classes.

    K is ``probs.shape[1]``, so a class absent from ``labels`` still counts (its term is the ECE of p_k
    against all zeros). Bins as in :func:`expected_calibration_error`; p_k = 0 goes in the first bin.
    """
    m = check_n_bins(n_bins)
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    onehot = y[:, None] == np.arange(p.shape[1])
    count, hit_sum, value_sum = _bin_sums(p, onehot, m, float_dtype_of(probs))
    per_class = np.sum(count / p.shape[0] * _gaps(count, hit_sum, value_sum), axis=1)
    return float(per_class.mean())


def reliability_bins(probs, labels, n_bins: int = 15) -> dict:
    """Per-bin top-label statistics for a reliability diagram, JSON-able.

    Returns ``{"edges": [M+1 floats k/M], "count": [M ints], "accuracy": [...], "confidence": [...]}``,
    accuracy and mean confidence being ``None`` for an empty bin. Bins exactly as in
    :func:`expected_calibration_error` (right edges inclusive, 0 in the first bin, 1.0 in the last).
    """
    m = check_n_bins(n_bins)
    conf, hits, dtype = _top_label(probs, labels)
    count, hit_sum, conf_sum = _bin_sums(conf, hits, m, dtype)
    return {
        "edges": [float(e) for e in _edges(m, torch.float64)],
        "count": [int(c) for c in count],
        "accuracy": [float(h / c) if c else None for h, c in zip(hit_sum, count)],
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count)],
    }


def ece_from_bins(bins: dict) -> float:
    """ECE recomputed from :func:`reliability_bins` output (for plots drawn from stored bins)."""
    total = sum(bins["count"])
    if total == 0:
        return float("nan")
    return float(sum(c / total * abs(a - s)
                     for c, a, s in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c))
