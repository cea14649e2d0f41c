"""PreAct ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"), CIFAR variant.

A 3x3 stride-1 stem with 64 channels (no max-pool), four stages of two pre-activation basic blocks with
64, 128, 256 and 512 channels (stride 1, 2, 2, 2), BN-ReLU, global average pooling and a linear layer;
1x1 projection shortcuts where the shape changes. About 11.2M parameters with 10 classes.

Input sizes: 32x32 -> 4x4, 28x28 -> 4x4 and 8x8 -> 1x1 at the last stage (a 3x3 convolution with
padding 1 and stride 2 maps 2x2 to 1x1), then global average pooling.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from gence.models._common import GlobalAvgPool, init_weights, require_image


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, blocks=(2, 2, 2, 2), in_channels: int = 3, num_classes: int = 10, image_size=32,
                 width: int = 64):
        super().__init__()
        require_image("PreActResNet", image_size)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        layers, in_planes = [], width
        for stage, n in enumerate(blocks):
            planes = width * 2 ** stage
            for i in range(n):
                layers.append(PreActBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x):
        x = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(self.pool(x))
