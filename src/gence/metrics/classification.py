"""Classification metrics: error, NLL, Brier, accuracy per frequency group, and ``evaluate``.

Predictions are the argmax of the probabilities, ties going to the lowest class index. All values are
computed in float64 and returned as Python floats (fractions, not percentages).
"""
from __future__ import annotations

import numpy as np
import torch

from gence.metrics.checks import check_labels, check_matrix, check_n_bins, check_probs, to_numpy
from gence.metrics.calibration_error import (
    adaptive_calibration_error,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
)

__all__ = ["error_rate", "negative_log_likelihood", "brier_score", "group_accuracy", "class_coverage", "evaluate"]


def error_rate(probs, labels) -> float:
    """Fraction of samples whose argmax (lowest index on ties) differs from the label."""
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    return float(np.mean(p.argmax(axis=1) != y))


def _mean_nll(log_probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(log_probs[np.arange(y.shape[0]), y]))


def negative_log_likelihood(probs, labels) -> float:
    """Mean of -log p_y in nats, without clipping: a zero probability on the true class gives ``inf``.

    From logits, :func:`evaluate` computes it with log_softmax instead, which never overflows.
    """
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    with np.errstate(divide="ignore"):
        return _mean_nll(np.log(p), y)


def brier_score(probs, labels) -> float:
    """Multiclass Brier score: mean over samples of sum_k (p_k - 1[y = k])^2, in [0, 2] (not divided by K)."""
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    onehot = (y[:, None] == np.arange(p.shape[1])).astype(np.float64)
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def group_accuracy(probs, labels, class_counts, many: int = 100, few: int = 20) -> dict[str, float]:
    """Accuracy on the test samples of the many-, medium- and few-shot classes of a long-tailed run.

    A class is ``many`` if it had more than ``many`` training samples, ``few`` if fewer than ``few``, and
    ``medium`` otherwise (few <= count <= many). Accuracy pools the test samples of a group's classes;
    a group with no test samples gives NaN. ``class_counts`` has one training count per class (length K).
    """
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    counts = to_numpy(class_counts, "class_counts")
    if counts.shape != (p.shape[1],):
        raise ValueError(f"class_counts must have shape ({p.shape[1]},), one training count per class of probs, "
                         f"got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.number) or np.isnan(counts.astype(np.float64)).any() or (counts < 0).any():
        raise ValueError(f"class_counts must be non-negative numbers, got {counts.tolist()}")
    if few > many:
        raise ValueError(f"few must be at most many, got few={few}, many={many}")
    group_of_class = np.where(counts > many, 0, np.where(counts < few, 2, 1))
    hits = p.argmax(axis=1) == y
    result = {}
    for g, name in enumerate(("many", "medium", "few")):
        mask = group_of_class[y] == g
        result[name] = float(hits[mask].mean()) if mask.any() else float("nan")
    return result


def class_coverage(probs, labels) -> dict[str, float]:
    """How evenly a model spreads its predictions over the K = ``probs.shape[1]`` classes.

    ``never_predicted``: number of classes that are the argmax (lowest index on ties) of no sample;
    ``worst_class_accuracy``: the lowest per-class accuracy (recall) over classes present in ``labels``.
    A collapse that leaves whole classes unpredicted shows as never_predicted > 0 and a worst-class
    accuracy of 0, which a mean error can hide.
    """
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    K = p.shape[1]
    pred = p.argmax(axis=1)
    predicted = np.bincount(pred, minlength=K) > 0
    present = np.bincount(y, minlength=K)
    correct = np.bincount(y[pred == y], minlength=K)
    recall = correct[present > 0] / present[present > 0]
    return {"never_predicted": float(K - predicted.sum()),
            "worst_class_accuracy": float(recall.min()) if recall.size else float("nan")}


def evaluate(logits, labels, n_bins: int = 15) -> dict[str, float]:
    """All classification and calibration metrics from logits, as a flat dict of floats.

    Keys: ``error nll brier ece adaece classwise_ece mce``. Probabilities are softmax(logits) in float64;
    NLL comes from log_softmax of the logits (stable for extreme logits); bins as in
    :func:`~gence.metrics.expected_calibration_error`, with edges k/M in float64.
    """
    m = check_n_bins(n_bins)
    z = check_matrix(logits, "logits")
    if np.isposinf(z).any():
        raise ValueError("logits must not contain +inf (-inf is allowed and gives probability 0)")
    y = check_labels(labels, z.shape[0], z.shape[1])
    log_probs = torch.log_softmax(torch.from_numpy(z), dim=1).numpy()
    if np.isnan(log_probs).any():
        raise ValueError("logits must have at least one finite value per row, got a row of -inf")
    probs = np.exp(log_probs)
    return {
        "error": error_rate(probs, y),
        "nll": _mean_nll(log_probs, y),
        "brier": brier_score(probs, y),
        "ece": expected_calibration_error(probs, y, m),
        "adaece": adaptive_calibration_error(probs, y, m),
        "classwise_ece": classwise_calibration_error(probs, y, m),
        "mce": maximum_calibration_error(probs, y, m),
    }
