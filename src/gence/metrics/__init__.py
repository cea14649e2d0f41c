"""Metrics: error, NLL, Brier, the calibration-error family, group accuracy, OOD scores and metrics.

Every function accepts torch tensors (any device, detached internally) or numpy arrays, computes in
float64 on the host and returns Python floats (or a dict of them). ``probs`` has shape (N, K) with rows
summing to 1, ``labels`` shape (N,) with integers in [0, K). Calibration errors use top-label confidence
and equal-width bins [0, 1/M], (1/M, 2/M], ..., ((M-1)/M, 1] (see :mod:`gence.metrics.calibration_error`).
"""
from gence.metrics.calibration_error import (
    adaptive_calibration_error,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_bins,
)
from gence.metrics.classification import (
    brier_score,
    class_coverage,
    error_rate,
    evaluate,
    group_accuracy,
    negative_log_likelihood,
)
from gence.metrics.ood import OOD_SCORES, ood_metrics, ood_scores

__all__ = [
    "class_coverage",
    "error_rate",
    "negative_log_likelihood",
    "brier_score",
    "expected_calibration_error",
    "adaptive_calibration_error",
    "classwise_calibration_error",
    "maximum_calibration_error",
    "reliability_bins",
    "group_accuracy",
    "evaluate",
    "OOD_SCORES",
    "ood_scores",
    "ood_metrics",
]
