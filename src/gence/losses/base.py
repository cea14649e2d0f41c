"""What every loss built by :func:`gence.losses.build` shares.

A loss is an ``nn.Module`` called as ``loss(logits, target)`` with

- ``logits`` of shape ``(N, C)`` or ``(N, C, d1, ..., dk)`` (class dimension 1, as in
  ``F.cross_entropy``; every position of a k-dimensional input is one more sample);
- ``target`` integer class indices of shape ``(N,)`` or ``(N, d1, ..., dk)``;
- ``reduction`` ``'mean'`` (default), ``'sum'`` or ``'none'``, set when the loss is built and
  overridable per call (``loss(logits, target, reduction='none')``).

Per-class weights ``w`` (class-balanced re-weighting, DRW) follow ``torch.nn.CrossEntropyLoss``:
``'none'`` returns ``w[y_i] * L_i``, ``'sum'`` their sum, and ``'mean'`` divides that sum by
``sum_i w[y_i]``, the total weight of the batch, not by N.

The math runs in float32 (or float64 when the logits are float64) with autocast switched off, so
fp16/bf16 logits under ``torch.autocast`` give the same numbers as their float32 copies. Buffers
derived from class counts (class weights, log-priors, margins) are kept in float64 and cast to the
logits' dtype where used: float64 logits stay in float64 end to end, and float32 logits see the same
float32 values as before.

Every loss checks its own parameters when constructed (a ValueError naming the parameter, the value
and the valid range) and lists them in its ``repr`` (``param_names``).

Losses that change during training override :meth:`ClassificationLoss.on_epoch_start`, which the
training loop calls with a 0-based ``epoch`` before each epoch; for the others it does nothing.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not valid; expected one of {REDUCTIONS}")
    return reduction


def check_number(name: str, value, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """Return ``value`` as a float, or raise ValueError naming ``name``, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not valid; expected a finite number")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name}={value!r} is out of range; expected a number in {left}{lo}, {hi}{right}")
    return float(value)


def check_class_counts(class_counts, num_classes: int) -> list[float]:
    """Training samples per class as floats: ``num_classes`` positive finite numbers, else ValueError."""
    if class_counts is None:
        raise ValueError(f"class_counts=None is not valid; expected the number of training samples per "
                         f"class, a sequence of {num_classes} positive numbers")
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


def as_float_logits(logits: Tensor) -> Tensor:
    """Logits in float32, or float64 when they already are: never compute a loss in fp16/bf16."""
    return logits if logits.dtype == torch.float64 else logits.float()


class ClassificationLoss(nn.Module):
    """Base class: shape handling, float32 upcast, optional class weights, reduction, epoch hook.

    Subclasses implement :meth:`per_sample`, which maps float logits ``(n, C)`` and targets
    ``(n,)`` to unweighted per-sample losses ``(n,)``. A subclass that needs the whole batch at
    once (MMCE) still returns one value per sample; see its docstring for how the batch term is
    shared out.
    """

    class_weight: Tensor | None
    #: names of the constructor parameters (besides num_classes, reduction, class_weight), shown by repr
    #: and accepted by :func:`gence.losses.build`
    param_names: tuple[str, ...] = ()

    def __init__(self, num_classes: int, reduction: str = "mean", class_weight: Tensor | None = None):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} is not valid; expected an int >= 1")
        self.num_classes = num_classes
        self.reduction = check_reduction(reduction)
        if class_weight is not None:
            class_weight = torch.as_tensor(class_weight, dtype=torch.float64)
            if class_weight.shape != (num_classes,):
                raise ValueError(f"class_weight has shape {tuple(class_weight.shape)}; expected ({num_classes},)")
        # A buffer, so it follows .to(device) and lands in state_dict (DRW changes it mid-run).
        self.register_buffer("class_weight", class_weight)

    def extra_repr(self) -> str:
        params = "".join(f", {name}={getattr(self, name)!r}" for name in self.param_names)
        weighted = ", class_weight=set" if self.class_weight is not None else ""
        return f"num_classes={self.num_classes}{params}, reduction={self.reduction!r}{weighted}"

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Called by the training loop before each epoch (0-based); static losses ignore it."""

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor, reduction: str | None = None) -> Tensor:
        reduction = self.reduction if reduction is None else check_reduction(reduction)
        flat_logits, flat_target = self._flatten(logits, target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            losses = self.per_sample(as_float_logits(flat_logits), flat_target)
            return weighted_reduce(losses, flat_target, self.class_weight, reduction, target.shape)

    def _flatten(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if logits.dim() < 2:
            raise ValueError(f"logits must have shape (N, C) or (N, C, d1, ...); got shape {tuple(logits.shape)}")
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} classes in dimension 1 but the loss was built with "
                f"num_classes={self.num_classes}"
            )
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(
                f"target has shape {tuple(target.shape)}; expected class indices of shape {expected} "
                f"for logits of shape {tuple(logits.shape)}"
            )
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f"target has dtype {target.dtype}; expected integer class indices")
        flat_logits = logits.movedim(1, -1).reshape(-1, self.num_classes)
        return flat_logits, target.reshape(-1).long()


def weighted_reduce(losses: Tensor, target: Tensor, class_weight: Tensor | None, reduction: str,
                    shape: torch.Size) -> Tensor:
    """Reduce per-sample ``losses`` as ``F.cross_entropy(weight=class_weight)`` would."""
    if class_weight is not None:
        sample_weight = class_weight.to(losses.dtype)[target]
        losses = losses * sample_weight
    if reduction == "none":
        return losses.reshape(shape)
    if reduction == "sum":
        return losses.sum()
    if class_weight is None:
        return losses.mean()
    return losses.sum() / sample_weight.sum()
