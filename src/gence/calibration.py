"""Temperature scaling and reliability diagrams.

Fit the temperature on a held-out validation split, never on the test split:

    T = fit_temperature(val_logits, val_labels)
    scaler = TemperatureScaler(T)
    test_probs = scaler(test_logits).softmax(dim=1)

The plotting functions need matplotlib (a dependency of gence), imported only when they run.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from gence.metrics import reliability_bins
from gence.metrics.checks import check_labels, check_matrix
from gence.metrics.calibration_error import ece_from_bins

__all__ = ["fit_temperature", "TemperatureScaler", "plot_reliability", "plot_reliability_bins"]

# Search range for log T: T in [e^-5, e^5] ~ [0.0067, 148], far beyond what trained networks need.
LOG_T_BOUNDS = (-5.0, 5.0)


def fit_temperature(logits, labels) -> float:
    """The temperature T > 0 minimising the mean NLL of softmax(logits / T) on a held-out split.

    Minimises over log T in [-5, 5] in float64 with bounded Brent search (NLL is unimodal in log T).
    Guards: returns 1.0 when no temperature beats T = 1 (e.g. all logits equal); returns the bound, with a
    RuntimeWarning, when the optimum is on it (perfectly separated data drive T towards 0, logits
    unrelated to the labels drive it towards infinity). Always a finite Python float.
    """
    z = check_matrix(logits, "logits")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite to fit a temperature, got inf values")
    y = check_labels(labels, z.shape[0], z.shape[1])
    zt = torch.from_numpy(z)
    picked = zt[torch.arange(z.shape[0]), torch.from_numpy(y)]

    def nll(log_t: float) -> float:
        scale = math.exp(-log_t)
        value = (torch.logsumexp(zt * scale, dim=1) - picked * scale).mean().item()
        return value if math.isfinite(value) else math.inf

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    log_t, best = float(result.x), float(result.fun)
    if not math.isfinite(log_t) or not math.isfinite(best) or best >= nll(0.0):
        return 1.0
    lo, hi = LOG_T_BOUNDS
    # Separated data make the NLL fall to a float plateau (exactly 0) as T -> 0, where Brent may stop
    # anywhere: a bound that does at least as well is the answer.
    for bound in LOG_T_BOUNDS:
        value = nll(bound)
        if value <= best:
            log_t, best = bound, value
    if min(log_t - lo, hi - log_t) < 1e-3:
        why = ("the split may be perfectly separated" if log_t - lo < 1e-3
               else "the logits may carry no information about the labels")
        warnings.warn(f"fit_temperature: the optimum reached the bound T = {math.exp(log_t):.4g} "
                      f"(log T in [{lo}, {hi}]); {why}", RuntimeWarning, stacklevel=2)
    return math.exp(log_t)


class TemperatureScaler(nn.Module):
    """Divides logits by a fixed temperature T > 0 (T > 1 softens, T < 1 sharpens); argmax is unchanged.

    T is stored as a float64 buffer, so it is saved in the state dict and moves with ``.to(device)``.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        t = float(temperature)
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.register_buffer("temperature", torch.tensor(t, dtype=torch.float64))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature.to(logits.dtype)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature.item():.4g}"


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("reliability diagrams need matplotlib: pip install matplotlib") from exc
    return Figure


def plot_reliability(probs, labels, n_bins: int = 15, ax=None, title=None):
    """Reliability diagram of top-label confidence (bins of :func:`gence.metrics.reliability_bins`).

    Computes the equal-width bins (right edges inclusive, 0 in the first bin, 1.0 in the last) and draws
    them with :func:`plot_reliability_bins`. Returns the matplotlib Figure.
    """
    _matplotlib_figure()  # fail before computing anything if the extra is missing
    return plot_reliability_bins(reliability_bins(probs, labels, n_bins), ax=ax, title=title)


def plot_reliability_bins(bins: dict, ax=None, title=None, ece_label: str = "ECE"):
    """Draw stored reliability bins: accuracy bars per bin, the gap to mean confidence shaded, the
    diagonal, the confidence histogram in a strip beneath, and the ECE of the bins (a percentage) in the
    title, as ``"{ece_label} = 1.23%"`` (e.g. ``ece_label="pooled ECE"`` for bins summed over runs).

    Accuracy bars carry gid ``"accuracy"`` (empty bins get height 0), gap bars gid ``"gap"``. With ``ax``
    given, the histogram strip is split off below it; otherwise a new Figure is made. Returns the Figure.
    """
    Figure = _matplotlib_figure()
    for key in ("edges", "count", "accuracy", "confidence"):
        if key not in bins:
            raise ValueError(f"bins must be a reliability_bins dict with key {key!r}, got keys {sorted(bins)}")
    edges = np.asarray(bins["edges"], dtype=np.float64)
    m = len(bins["count"])
    if edges.shape != (m + 1,):
        raise ValueError(f"bins['edges'] must have {m + 1} values for {m} bins, got {edges.shape[0]}")
    count = np.asarray(bins["count"], dtype=np.float64)
    filled = count > 0
    accuracy = np.array([a if a is not None else 0.0 for a in bins["accuracy"]], dtype=np.float64)
    confidence = np.array([c if c is not None else 0.0 for c in bins["confidence"]], dtype=np.float64)

    if ax is None:
        fig = Figure(figsize=(4.5, 5.0), layout="constrained")
        ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        from mpl_toolkits.axes_grid1 import make_axes_locatable

        fig = ax.figure
        ax_hist = make_axes_locatable(ax).append_axes("bottom", size="30%", pad=0.1, sharex=ax)
        ax.tick_params(labelbottom=False)

    left, width = edges[:-1], np.diff(edges)
    bars = ax.bar(left, accuracy, width=width, align="edge", color="tab:blue", edgecolor="black",
                  linewidth=0.5, label="accuracy")
    for patch in bars:
        patch.set_gid("accuracy")
    gap_bottom = np.where(filled, np.minimum(accuracy, confidence), 0.0)
    gap_height = np.where(filled, np.abs(accuracy - confidence), 0.0)
    gaps = ax.bar(left, gap_height, bottom=gap_bottom, width=width, align="edge", facecolor=(1.0, 0.0, 0.0, 0.12),
                  edgecolor="tab:red", hatch="//", linewidth=0.8, label="gap")
    for patch in gaps:
        patch.set_gid("gap")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")

    total = count.sum()
    ax_hist.bar(left, count / total if total else count, width=width, align="edge", color="gray",
                edgecolor="black", linewidth=0.5)
    ax_hist.set_xlabel("confidence")
    ax_hist.set_ylabel("fraction")

    ece = ece_from_bins(bins)
    heading = f"{ece_label} = {100 * ece:.2f}%"
    ax.set_title(f"{title}\n{heading}" if title else heading)
    return fig
