"""Small networks for fast runs: a three-layer CNN and an MLP.

``SmallCNN``: conv(16)-BN-ReLU, conv(32)-BN-ReLU, 2x2 max-pool, conv(64)-BN-ReLU, global average pooling,
linear. About 24k parameters; trains 8x8 digits to > 90% test accuracy from 50 images per class in
seconds on a CPU. The max-pool is skipped for inputs smaller than 8 pixels so tiny inputs still run.

``MLP``: flattens its input (images or feature vectors), then Linear-ReLU per hidden size, then a linear
head. ``hidden=()`` gives multinomial logistic regression.
"""
from __future__ import annotations

from torch import nn

from gence.models._common import GlobalAvgPool, init_weights, num_inputs, require_image


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size=8, widths=(16, 32, 64)):
        super().__init__()
        hw = require_image("SmallCNN", image_size)
        if len(widths) != 3:
            raise ValueError(f"SmallCNN widths={widths!r}: expected three channel counts")
        self.num_classes = num_classes
        c1, c2, c3 = widths
        pool = nn.MaxPool2d(2) if min(hw) >= 8 else nn.Identity()
        self.features = nn.Sequential(_conv_bn_relu(in_channels, c1), _conv_bn_relu(c1, c2), pool,
                                      _conv_bn_relu(c2, c3), GlobalAvgPool())
        self.fc = nn.Linear(c3, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.features(x))


class MLP(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size=None, hidden=(256, 256)):
        super().__init__()
        if isinstance(hidden, int):
            hidden = (hidden,)
        self.num_classes = num_classes
        self.in_features = num_inputs(in_channels, image_size)
        layers, d = [nn.Flatten()], self.in_features
        for h in hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU(inplace=True)]
            d = int(h)
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
