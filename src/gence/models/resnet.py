"""CIFAR-style ResNet (He et al. 2016, "Deep Residual Learning", section 4.2).

Depth 6n+2: a 3x3 stem with 16 channels, then three stages of n basic blocks with 16, 32 and 64 channels,
the second and third stage halving the resolution, global average pooling and one linear layer.
ResNet-20 has about 0.27M parameters, ResNet-32 0.46M, ResNet-56 0.85M (the paper's Table 6).

Shortcut: option "A" (the paper's CIFAR choice and the default here): when a block changes shape, the
identity is subsampled by 2 and zero-padded in channels, so shortcuts add no parameters. Option "B" uses
a 1x1 convolution + BatchNorm projection there instead.

Input sizes: the stem has stride 1 and only the two later stages downsample, so a 32x32 input ends at
8x8, a 28x28 at 7x7 and an 8x8 at 2x2; global average pooling makes the head independent of the size.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from gence.models._common import GlobalAvgPool, init_weights, require_image


class ShortcutA(nn.Module):
    """Parameter-free shortcut: take every other pixel, zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(in_planes, planes, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, image_size=32,
                 shortcut: str = "A", width: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"ResNet depth={depth!r}: expected 6n+2 with n >= 1 (8, 20, 32, 44, 56, 110)")
        if shortcut not in ("A", "B"):
            raise ValueError(f"ResNet shortcut={shortcut!r}: expected 'A' (zero-padding) or 'B' (projection)")
        require_image("ResNet", image_size)
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.pool(x))
