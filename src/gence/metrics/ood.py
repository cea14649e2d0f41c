"""Out-of-distribution scores and detection metrics.

Every score is an in-distribution *confidence*: higher means more in-distribution. The metrics treat
in-distribution samples as the positive class unless a name says otherwise (``aupr_out``).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from gence.contract import OOD_SCORES  # the metric schema names them once
from gence.metrics.checks import check_matrix, check_vector

__all__ = ["OOD_SCORES", "ood_scores", "ood_metrics"]


def ood_scores(logits, kind: str) -> np.ndarray:
    """In-distribution confidence per sample (float64, shape (N,)), higher = more in-distribution.

    ``msp``: max softmax probability; ``max_logit``: max logit; ``energy``: logsumexp of the logits
    (the negated energy at temperature 1); ``entropy``: the negated entropy sum_k p_k log p_k (0 log 0 = 0).
    """
    if kind not in OOD_SCORES:
        raise ValueError(f"kind must be one of {', '.join(OOD_SCORES)}, got {kind!r}")
    z = check_matrix(logits, "logits")
    if np.isposinf(z).any():
        raise ValueError("logits must not contain +inf (-inf is allowed and gives probability 0)")
    zt = torch.from_numpy(z)
    if kind == "max_logit":
        out = zt.max(dim=1).values
    elif kind == "energy":
        out = torch.logsumexp(zt, dim=1)
    else:
        log_p = torch.log_softmax(zt, dim=1)
        p = log_p.exp()
        out = p.max(dim=1).values if kind == "msp" else torch.where(p > 0, p * log_p, 0.0).sum(dim=1)
    out = out.numpy()
    if np.isnan(out).any():
        raise ValueError("logits must have at least one finite value per row, got a row of -inf")
    return out


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over the distinct thresholds, highest first (tied scores form one step)."""
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(pos)[last_of_tie]
    seen = (np.nonzero(last_of_tie)[0] + 1).astype(np.float64)
    precision = tp / seen
    # integer recall steps, one division at the end: perfect separation gives exactly 1, never 1 + 4e-16
    return min(1.0, float(np.sum(np.diff(np.r_[0, tp]) * precision) / pos.sum()))


def ood_metrics(confidence_in, confidence_out) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR@95%TPR of in-distribution confidence against OOD confidence.

    ``auroc``: P(conf_in > conf_out) + 1/2 P(tie), in-distribution positive. ``aupr_in``: average precision
    (step-wise, no interpolation, as scikit-learn's ``average_precision_score``) with in-distribution positive;
    ``aupr_out``: the same with OOD positive, ranked by negated confidence. ``fpr95``: with t the k-th largest
    in-distribution confidence, k = ceil(0.95 n_in) (so at least 95% of in-distribution samples have conf >= t),
    the fraction of OOD samples with confidence >= t (ties with t count as false positives).
    """
    s_in = check_vector(confidence_in, "confidence_in")
    s_out = check_vector(confidence_out, "confidence_out")
    n_in, n_out = s_in.shape[0], s_out.shape[0]
    scores = np.concatenate([s_in, s_out])
    is_in = np.r_[np.ones(n_in, dtype=bool), np.zeros(n_out, dtype=bool)]

    # Mann-Whitney U with average ranks: ties count one half.
    ranks = rankdata(scores, method="average")
    auroc = (ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out)

    k = (95 * n_in + 99) // 100  # ceil(0.95 n_in) in integers, free of float rounding
    threshold = np.sort(s_in)[::-1][k - 1]
    return {
        "auroc": float(auroc),
        "aupr_in": _average_precision(scores, is_in),
        "aupr_out": _average_precision(-scores, ~is_in),
        "fpr95": float(np.mean(s_out >= threshold)),
    }
