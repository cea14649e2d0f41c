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

Each name is registered in one :class:`gence.registry.Registry` (``LOSSES``) with its description and,
in ``info``, the parameter names it accepts (the loss class's ``param_names``), whether it needs
``class_counts`` and whether it takes ``class_balanced_beta``. The values are checked by the loss
classes themselves when constructed; the registry only rejects names it does not know.

``class_balanced_beta`` in [0, 1) switches on class-balanced re-weighting by the effective number
of samples (Cui et al. 2019; :func:`~gence.losses.imbalance.class_balanced_weights`). Losses that
do not use ``class_counts`` accept and ignore it, so a training loop can always pass it.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from gence.registry import Registry

from .base import check_class_counts, check_number, check_reduction
from .classification import (MMCE, AdaptiveFocal, Brier, CrossEntropy, DualFocal, Focal, GenCE,
                             LabelSmoothing, Poly1)
from .gence import gen_cross_entropy
from .imbalance import LDAM, BalancedSoftmax, LogitAdjusted, class_balanced_weights

__all__ = ["LOSSES", "available", "build", "register"]

CLASS_BALANCED = "class_balanced_beta"

#: every loss by name; a builder is called as ``builder(num_classes, counts, class_weight, reduction,
#: **params)`` and ``info`` holds ``params`` (accepted names), ``needs_counts`` and ``class_balanced``
LOSSES = Registry("loss")
register = LOSSES.register

# gen_cross_entropy's keywords (read from its signature, so the registry follows it as it evolves);
# GenCELoss checks them
_GENCE_PARAMS = tuple(p for p in inspect.signature(gen_cross_entropy).parameters
                      if p not in ("input", "target", "reduction"))


@register("ce", "cross-entropy", params=CrossEntropy.param_names, class_balanced=True)
def _ce(k, counts, class_weight, reduction):
    return CrossEntropy(k, reduction, class_weight)


@register("gence", "Generative Cross-Entropy, CE + generative_weight * log sum_batch q(y|x_j) (Zhan et al. 2026)",
          params=_GENCE_PARAMS, class_balanced=True)
def _gence(k, counts, class_weight, reduction, **params):
    weight = params.pop("weight", None)
    if weight is not None:
        if class_weight is not None:
            raise ValueError(f"weight and {CLASS_BALANCED} both set class weights for loss 'gence'; give one")
        class_weight = torch.as_tensor(weight, dtype=torch.float64)
        if class_weight.shape != (k,):
            raise ValueError(f"weight has shape {tuple(class_weight.shape)}; expected ({k},)")
    return GenCE(k, reduction=reduction, class_weight=class_weight, **params)


@register("label_smoothing", "cross-entropy with label smoothing alpha (Szegedy et al. 2016)",
          params=LabelSmoothing.param_names)
def _label_smoothing(k, counts, class_weight, reduction, **params):
    return LabelSmoothing(k, reduction=reduction, **params)


@register("focal", "focal loss -(1-p)^gamma log p, gamma 3 (Lin et al. 2017; Mukhoti et al. 2020)",
          params=Focal.param_names, class_balanced=True)
def _focal(k, counts, class_weight, reduction, **params):
    return Focal(k, reduction=reduction, class_weight=class_weight, **params)


@register("focal_adaptive", "FLSD-53 focal loss, gamma 5 if p < 0.2 else 3 (Mukhoti et al. 2020)",
          params=AdaptiveFocal.param_names)
def _focal_adaptive(k, counts, class_weight, reduction, **params):
    return AdaptiveFocal(k, reduction=reduction, **params)


@register("dual_focal", "dual focal loss -(1-p_y+p_j)^gamma log p_y, gamma 5 (Tao et al. 2023)",
          params=DualFocal.param_names)
def _dual_focal(k, counts, class_weight, reduction, **params):
    return DualFocal(k, reduction=reduction, **params)


@register("brier", "Brier score sum_k (p_k - onehot_k)^2 (Brier 1950)", params=Brier.param_names)
def _brier(k, counts, class_weight, reduction):
    return Brier(k, reduction)


@register("poly1", "Poly-1 loss CE + epsilon (1 - p) (Leng et al. 2022)", params=Poly1.param_names)
def _poly1(k, counts, class_weight, reduction, **params):
    return Poly1(k, reduction=reduction, **params)


@register("mmce", "CE + lam * MMCE kernel calibration penalty (Kumar et al. 2018)", params=MMCE.param_names)
def _mmce(k, counts, class_weight, reduction, **params):
    return MMCE(k, reduction=reduction, **params)


@register("logit_adjusted", "logit-adjusted CE on z + tau log prior, needs class_counts (Menon et al. 2021)",
          params=LogitAdjusted.param_names, needs_counts=True)
def _logit_adjusted(k, counts, class_weight, reduction, **params):
    return LogitAdjusted(k, counts, reduction=reduction, **params)


@register("balanced_softmax", "balanced softmax CE on z + log n_c, needs class_counts (Ren et al. 2020)",
          params=BalancedSoftmax.param_names, needs_counts=True)
def _balanced_softmax(k, counts, class_weight, reduction):
    return BalancedSoftmax(k, counts, reduction=reduction)


@register("ldam", "LDAM margin loss with deferred re-weighting (DRW), needs class_counts (Cao et al. 2019)",
          params=LDAM.param_names, needs_counts=True)
def _ldam(k, counts, class_weight, reduction, **params):
    return LDAM(k, counts, reduction=reduction, **params)


def available() -> dict[str, str]:
    """Loss names accepted by :func:`build` (sorted), each with a one-line description."""
    return LOSSES.available()


def build(name: str, num_classes: int, class_counts=None, **params) -> nn.Module:
    """Build the loss ``name`` for ``num_classes`` classes.

    ``class_counts``: training samples per class (length ``num_classes``, all positive), needed by
    logit_adjusted, balanced_softmax, ldam, and by ``class_balanced_beta``; ignored otherwise.
    ``params``: the loss's parameters (see the module docstring) and ``reduction``.
    The result is called as ``loss(logits, target)`` and has ``on_epoch_start(epoch, total_epochs)``.
    Raises ValueError for an unknown name or parameter, a value out of range (from the loss class),
    or missing counts.
    """
    entry = LOSSES.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not valid; expected an int >= 1")
    info = entry.info
    valid = [*info["params"], "reduction"] + ([CLASS_BALANCED] if info.get("class_balanced") else [])
    unknown = [p for p in params if p not in valid]
    if unknown:
        hint = ""
        if CLASS_BALANCED in unknown:
            users = [n for n in LOSSES if LOSSES.get(n).info.get("class_balanced")]
            hint = f" ({CLASS_BALANCED} works with: {', '.join(users)})"
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; "
            f"valid parameters: {', '.join(valid)}{hint}"
        )

    reduction = check_reduction(params.pop("reduction", "mean"))
    beta = params.pop(CLASS_BALANCED, None)
    counts = None
    if info.get("needs_counts") or beta is not None:
        if class_counts is None:
            why = f"loss {name!r}" if info.get("needs_counts") else CLASS_BALANCED
            raise ValueError(
                f"class_counts=None is not valid for {why}; expected the number of training samples "
                f"per class, a sequence of {num_classes} positive numbers"
            )
        counts = check_class_counts(class_counts, num_classes)
    class_weight = None
    if beta is not None:
        beta = check_number(CLASS_BALANCED, beta, low=0.0, high=1.0, high_open=True)
        class_weight = class_balanced_weights(counts, beta)
    return entry.builder(num_classes, counts, class_weight, reduction, **params)
