"""Helpers shared by the networks: input-size checks and weight initialisation."""
from __future__ import annotations

import math

from torch import nn


def as_hw(image_size) -> tuple[int, ...]:
    """``image_size`` as a tuple: an int ``s`` means ``(s, s)``; ``None`` or ``()`` means feature vectors."""
    if image_size is None:
        return ()
    if isinstance(image_size, int):
        return (image_size, image_size)
    return tuple(int(s) for s in image_size)


def require_image(name: str, image_size) -> tuple[int, int]:
    hw = as_hw(image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"model {name!r} needs 2-D images: image_size={image_size!r}, expected an int or (H, W); "
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
