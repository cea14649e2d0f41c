"""Wide Residual Network (Zagoruyko & Komodakis 2016), WRN-d-k for CIFAR.

Depth d = 6n+4: a 3x3 stem with 16 channels, three stages of n pre-activation basic blocks with 16k, 32k
and 64k channels (stride 1, 2, 2), BN-ReLU, global average pooling and a linear layer; a 1x1 projection
shortcut wherever the shape changes, optional dropout between the two convolutions of a block.
Published sizes with 10 classes: WRN-16-4 2.7M, WRN-28-10 36.5M parameters (WRN-16-2 0.69M).

Input sizes: as the CIFAR ResNet, stride 1 in the stem and the first stage, so 32x32 -> 8x8, 28x28 -> 7x7
and 8x8 -> 2x2 at the last stage, then global average pooling.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from gence.models._common import GlobalAvgPool, init_weights, require_image


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        # The projection takes the pre-activated input, as in the reference implementation.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, width: int = 10, in_channels: int = 3, num_classes: int = 10,
                 image_size=32, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth={depth!r}: expected 6n+4 with n >= 1 (10, 16, 22, 28, 40)")
        if width < 1:
            raise ValueError(f"WideResNet width={width!r}: expected a positive integer")
        require_image("WideResNet", image_size)
        n = (depth - 4) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        layers, in_planes = [], 16
        for stage, planes in enumerate((16 * width, 32 * width, 64 * width)):
            for i in range(n):
                layers.append(WideBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1, dropout))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.layers(self.conv1(x))
        x = F.relu(self.bn(x))
        return self.fc(self.pool(x))
