"""Helpers shared by the networks: input-size checks and weight initialisation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def as_hw(image_size) -> tuple[int, ...]:
    """``image_size`` as a tuple: an int ``s`` means ``(s, s)``; ``None`` or ``()`` means feature vectors."""
    if image_size is None:
        return ()
    if isinstance(image_size, int):
        return (image_size, image_size)
    return tuple(int(s) for s in image_size)


def require_image(network: str, image_size) -> tuple[int, int]:
    """``image_size`` as (H, W); ValueError naming the ``network`` class when it is not 2-D."""
    hw = as_hw(image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"{network} needs 2-D images: image_size={image_size!r}, expected an int or (H, W); "
                         f"use 'mlp' for feature vectors")
    return hw


def num_inputs(in_channels: int, image_size) -> int:
    return in_channels * math.prod(as_hw(image_size))


class GlobalAvgPool(nn.Module):
    """Mean over all spatial positions, (N, C, H, W) -> (N, C), for any H and W.

    The same as ``AdaptiveAvgPool2d(1)`` + flatten, but its CUDA backward is deterministic (a broadcast),
    while adaptive pooling's is not, and the training loop asks for deterministic algorithms.
    """

    def forward(self, x):
        return x.mean(dim=(2, 3))


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions (fan-out, as in He et al. 2016), unit BatchNorm, zero biases.

    Linear layers keep PyTorch's default (uniform, fan-in), which is what the reference CIFAR code uses.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CosineLinear(nn.Module):
    """Cosine-similarity classifier: ``logits[i, k] = <x_i, w_k> / (|x_i| |w_k|)``, each in [-1, 1].

    The normalised last layer LDAM's authors train with (Cao et al. 2019, ``NormedLinear``): the logits
    are cosines, so a loss that scales them (LDAM's ``s = 30``) sets their range. A zero feature vector
    or weight row gives 0 (norms are clamped at 1e-12, as ``F.normalize`` does). Weight rows start at
    unit norm. ``weight`` has ``nn.Linear``'s shape (out_features, in_features); there is no bias.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        with torch.no_grad():
            self.weight.uniform_(-1, 1)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


HEADS = ("linear", "cosine")


def set_head(model: nn.Module, head: str) -> nn.Module:
    """Make ``model``'s classifier (its last ``nn.Linear``) the ``head`` kind (one of :data:`HEADS`, checked
    by the caller): ``"linear"`` leaves it, ``"cosine"`` replaces it by a :class:`CosineLinear` of the same
    shape. Returns ``model``."""
    if head == "linear":
        return model
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attr = name.rpartition(".")
    old = model.get_submodule(name)
    setattr(model.get_submodule(parent) if parent else model, attr, CosineLinear(old.in_features, old.out_features))
    return model


def set_reference_head(model: nn.Module, head: str, num_classes: int, name: str) -> nn.Module:
    """:func:`set_head` for a model built from a reference (a user's callable or timm), whose classifier
    is not known by construction: ``model.get_classifier()`` when the model has it (timm's convention),
    else the last ``nn.Linear`` with ``num_classes`` outputs. ValueError naming the model when
    ``head="cosine"`` finds no such ``nn.Linear``. Returns ``model``."""
    if head == "linear":
        return model
    if callable(getattr(model, "get_classifier", None)):
        classifier = model.get_classifier()
        where = "model.get_classifier()"
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
        classifier = linears[-1] if linears else None
        where = f"the model's last nn.Linear with out_features={num_classes}"
    path = next((n for n, m in model.named_modules() if m is classifier and n), None)
    if not isinstance(classifier, nn.Linear) or path is None:
        raise ValueError(
            f"model {name!r}: head={head!r} needs the classifier as an nn.Linear submodule; {where} is "
            f"{type(classifier).__name__ if classifier is not None else 'missing'}. Expose it with "
            f"get_classifier() returning an nn.Linear, or end the model in an nn.Linear(..., num_classes)")
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr,
            CosineLinear(classifier.in_features, classifier.out_features))
    return model
