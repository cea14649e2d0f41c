"""One registry of losses by name: :func:`build` and :func:`available`.

Every name accepts ``reduction`` ('mean', 'sum' or 'none'; default 'mean'). Parameters and their
defaults (see each class for the formula and the paper):

=================  ==========================================================  ==============
name               parameters (default)                                        class_counts
=================  ==========================================================  ==============
ce                 class_balanced_beta (None)                                   if CB is used
gence              generative_weight (1.0), weight, ignore_index, label_smoothing,
                   distributed, process_group (those of gen_cross_entropy),
                   class_balanced_beta (None)                                   if CB is used
label_smoothing    alpha (0.1)                                                  no
focal              gamma (3.0), class_balanced_beta (None)                      if CB is used
focal_adaptive     gamma_below (5.0), gamma_above (3.0), threshold (0.2)        no
dual_focal         gamma (5.0)                                                  no
brier              (none)                                                       no
poly1              epsilon (1.0)                                                no
mmce               lam (2.0), width (0.4)                                       no
logit_adjusted     tau (1.0)                                                    required
balanced_softmax   (none)                                                       required
ldam               max_m (0.5), s (30.0), drw_fraction (0.8), drw_beta (0.9999) required
=================  ==========================================================  ==============

``class_balanced_beta`` in [0, 1) switches on class-balanced re-weighting by the effective number
of samples (Cui et al. 2019; :func:`~gence.losses.imbalance.class_balanced_weights`). Losses that
do not use ``class_counts`` accept and ignore it, so a training loop can always pass it.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .base import check_number, check_reduction
from .classification import (MMCE, AdaptiveFocal, Brier, CrossEntropy, DualFocal, Focal, GenCE,
                             LabelSmoothing, Poly1)
from .gence import gen_cross_entropy
from .imbalance import LDAM, BalancedSoftmax, LogitAdjusted, class_balanced_weights

CLASS_BALANCED = "class_balanced_beta"


def _nonnegative(name, value):
    return check_number(name, value, low=0.0)


def _positive(name, value):
    return check_number(name, value, low=0.0, low_open=True)


def _real(name, value):
    return check_number(name, value)


def _fraction(name, value):
    return check_number(name, value, low=0.0, high=1.0)


def _open_fraction(name, value):
    return check_number(name, value, low=0.0, high=1.0, low_open=True, high_open=True)


def _beta(name, value):
    return check_number(name, value, low=0.0, high=1.0, high_open=True)


def _poly_epsilon(name, value):
    return check_number(name, value, low=-1.0)


def _passthrough(name, value):
    return value


@dataclass(frozen=True)
class _Entry:
    description: str
    make: Callable[..., nn.Module]  # make(num_classes, counts, class_weight, reduction, **params)
    params: dict[str, Callable] = field(default_factory=dict)  # name -> validator(name, value)
    needs_counts: bool = False
    class_balanced: bool = False


def _gence_params() -> dict[str, Callable]:
    # Read from the signature so the registry follows gen_cross_entropy as it evolves.
    names = [p for p in inspect.signature(gen_cross_entropy).parameters
             if p not in ("input", "target", "reduction")]
    return {name: _passthrough for name in names}


def _make_gence(num_classes, counts, class_weight, reduction, **params):
    weight = params.pop("weight", None)
    if weight is not None:
        if class_weight is not None:
            raise ValueError(f"weight and {CLASS_BALANCED} both set class weights for loss 'gence'; give one")
        class_weight = torch.as_tensor(weight, dtype=torch.float32)
        if class_weight.shape != (num_classes,):
            raise ValueError(f"weight has shape {tuple(class_weight.shape)}; expected ({num_classes},)")
    return GenCE(num_classes, reduction=reduction, class_weight=class_weight, **params)


_REGISTRY: dict[str, _Entry] = {
    "ce": _Entry(
        "cross-entropy",
        lambda k, counts, cw, red: CrossEntropy(k, red, cw),
        class_balanced=True,
    ),
    "gence": _Entry(
        "Generative Cross-Entropy, CE + generative_weight * log sum_batch q(y|x_j) (Zhan et al. 2026)",
        _make_gence,
        _gence_params(),
        class_balanced=True,
    ),
    "label_smoothing": _Entry(
        "cross-entropy with label smoothing alpha (Szegedy et al. 2016)",
        lambda k, counts, cw, red, **p: LabelSmoothing(k, reduction=red, **p),
        {"alpha": _fraction},
    ),
    "focal": _Entry(
        "focal loss -(1-p)^gamma log p, gamma 3 (Lin et al. 2017; Mukhoti et al. 2020)",
        lambda k, counts, cw, red, **p: Focal(k, reduction=red, class_weight=cw, **p),
        {"gamma": _nonnegative},
        class_balanced=True,
    ),
    "focal_adaptive": _Entry(
        "FLSD-53 focal loss, gamma 5 if p < 0.2 else 3 (Mukhoti et al. 2020)",
        lambda k, counts, cw, red, **p: AdaptiveFocal(k, reduction=red, **p),
        {"gamma_below": _nonnegative, "gamma_above": _nonnegative, "threshold": _open_fraction},
    ),
    "dual_focal": _Entry(
        "dual focal loss -(1-p_y+p_j)^gamma log p_y, gamma 5 (Tao et al. 2023)",
        lambda k, counts, cw, red, **p: DualFocal(k, reduction=red, **p),
        {"gamma": _nonnegative},
    ),
    "brier": _Entry(
        "Brier score sum_k (p_k - onehot_k)^2 (Brier 1950)",
        lambda k, counts, cw, red: Brier(k, red),
    ),
    "poly1": _Entry(
        "Poly-1 loss CE + epsilon (1 - p) (Leng et al. 2022)",
        lambda k, counts, cw, red, **p: Poly1(k, reduction=red, **p),
        {"epsilon": _poly_epsilon},
    ),
    "mmce": _Entry(
        "CE + lam * MMCE kernel calibration penalty (Kumar et al. 2018)",
        lambda k, counts, cw, red, **p: MMCE(k, reduction=red, **p),
        {"lam": _nonnegative, "width": _positive},
    ),
    "logit_adjusted": _Entry(
        "logit-adjusted CE on z + tau log prior, needs class_counts (Menon et al. 2021)",
        lambda k, counts, cw, red, **p: LogitAdjusted(k, counts, reduction=red, **p),
        {"tau": _real},
        needs_counts=True,
    ),
    "balanced_softmax": _Entry(
        "balanced softmax CE on z + log n_c, needs class_counts (Ren et al. 2020)",
        lambda k, counts, cw, red: BalancedSoftmax(k, counts, reduction=red),
        needs_counts=True,
    ),
    "ldam": _Entry(
        "LDAM margin loss with deferred re-weighting (DRW), needs class_counts (Cao et al. 2019)",
        lambda k, counts, cw, red, **p: LDAM(k, counts, reduction=red, **p),
        {"max_m": _nonnegative, "s": _positive, "drw_fraction": _fraction, "drw_beta": _beta},
        needs_counts=True,
    ),
}


def available() -> dict[str, str]:
    """Loss names accepted by :func:`build`, each with a one-line description."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def build(name: str, num_classes: int, class_counts=None, **params) -> nn.Module:
    """Build the loss ``name`` for ``num_classes`` classes.

    ``class_counts``: training samples per class (length ``num_classes``, all positive), needed by
    logit_adjusted, balanced_softmax, ldam, and by ``class_balanced_beta``; ignored otherwise.
    ``params``: the loss's parameters (see the module docstring) and ``reduction``.
    The result is called as ``loss(logits, target)`` and has ``on_epoch_start(epoch, total_epochs)``.
    Raises ValueError for an unknown name or parameter, a value out of range, or missing counts.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss name={name!r}; expected one of: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not valid; expected an int >= 1")

    valid = [*entry.params, "reduction"] + ([CLASS_BALANCED] if entry.class_balanced else [])
    unknown = [p for p in params if p not in valid]
    if unknown:
        hint = ""
        if CLASS_BALANCED in unknown:
            users = [n for n, e in _REGISTRY.items() if e.class_balanced]
            hint = f" ({CLASS_BALANCED} works with: {', '.join(users)})"
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; "
            f"valid parameters: {', '.join(valid)}{hint}"
        )

    reduction = check_reduction(params.pop("reduction", "mean"))
    beta = params.pop(CLASS_BALANCED, None)
    needs_counts = entry.needs_counts or beta is not None
    counts = _check_counts(class_counts, num_classes, name, needs_counts) if needs_counts else None
    class_weight = None
    if beta is not None:
        class_weight = class_balanced_weights(counts, _beta(CLASS_BALANCED, beta))
    checked = {p: entry.params[p](p, v) for p, v in params.items()}
    return entry.make(num_classes, counts, class_weight, reduction, **checked)


def _check_counts(class_counts, num_classes: int, name: str, required: bool) -> list[float] | None:
    if class_counts is None:
        why = f"loss {name!r}" if required and _REGISTRY[name].needs_counts else CLASS_BALANCED
        raise ValueError(
            f"class_counts=None is not valid for {why}; expected the number of training samples "
            f"per class, a sequence of {num_classes} positive numbers"
        )
    counts = torch.as_tensor(class_counts).detach().cpu().reshape(-1).tolist() \
        if isinstance(class_counts, torch.Tensor) else list(class_counts)
    if len(counts) != num_classes:
        raise ValueError(f"class_counts has {len(counts)} entries; expected num_classes={num_classes}")
    for c, n in enumerate(counts):
        if isinstance(n, bool) or not isinstance(n, (int, float)) and not hasattr(n, "__float__"):
            raise ValueError(f"class_counts[{c}]={n!r} is not valid; expected a positive number")
        if not math.isfinite(float(n)) or float(n) <= 0:
            raise ValueError(f"class_counts[{c}]={n!r} is not valid; every class needs a positive count")
    return [float(n) for n in counts]
