"""Networks by name, adapting to the input's channels and size (1x8x8, 1x28x28, 3x32x32, feature vectors).

    from gence import models
    net = models.build("resnet20", in_channels=3, num_classes=10, image_size=32)

Every convolutional network ends in global average pooling, so the classifier does not depend on the
input size; strides are chosen so that 8x8 inputs still run (see each module's docstring). Every network
takes ``head="linear"`` (default) or ``head="cosine"``: a classifier whose logits are cosines between the
features and the class weights (:class:`CosineLinear`, the layer LDAM's authors pair with ``s = 30``).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from gence.models._common import HEADS, CosineLinear, set_head
from gence.models.preact_resnet import PreActResNet
from gence.models.resnet import ResNet
from gence.models.small import MLP, SmallCNN
from gence.models.wide_resnet import WideResNet

__all__ = ["build", "available", "ResNet", "WideResNet", "PreActResNet", "SmallCNN", "MLP", "CosineLinear", "HEADS"]


def _resnet(depth: int | None = None):
    def make(in_channels, num_classes, image_size, **params):
        if depth is not None:
            params["depth"] = depth
        return ResNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **params)
    return make


def _wrn(depth: int | None = None, width: int | None = None):
    def make(in_channels, num_classes, image_size, **params):
        if depth is not None:
            params["depth"] = depth
        if width is not None:
            params["width"] = width
        return WideResNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **params)
    return make


def _plain(cls):
    def make(in_channels, num_classes, image_size, **params):
        return cls(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **params)
    return make


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet": _resnet(),            # depth=6n+2 (default 20), shortcut="A"|"B"
    "resnet8": _resnet(8),
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
    "wrn": _wrn(),                  # depth=6n+4, width=k, dropout
    "wrn16_2": _wrn(16, 2),
    "wrn16_4": _wrn(16, 4),
    "wrn28_10": _wrn(28, 10),
    "preact_resnet18": _plain(PreActResNet),
    "small_cnn": _plain(SmallCNN),
    "mlp": _plain(MLP),             # hidden=(256, 256)
}


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(_REGISTRY)


def build(name: str, in_channels: int, num_classes: int, image_size=32, head: str = "linear", **params) -> nn.Module:
    """Build the network ``name`` for inputs of shape (in_channels, *image_size) and ``num_classes`` outputs.

    ``image_size`` is an int (square), an (H, W) pair, or None / () for feature vectors (``mlp`` only).
    ``head``: ``"linear"`` (an ``nn.Linear`` classifier) or ``"cosine"`` (:class:`CosineLinear`).
    ``params`` go to the network's constructor (e.g. ``depth``, ``width``, ``shortcut``, ``hidden``).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name={name!r}; expected one of {available()}")
    if head not in HEADS:
        raise ValueError(f"model {name!r}: head={head!r}; expected one of {HEADS}")
    return set_head(_REGISTRY[name](in_channels, num_classes, image_size, **params), head)
