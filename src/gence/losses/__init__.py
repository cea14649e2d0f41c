"""Losses: Generative Cross-Entropy and the baselines it is compared with, under one registry.

``build(name, num_classes, class_counts=None, **params)`` returns an ``nn.Module`` called as
``loss(logits, target)``; ``available()`` lists the names with their descriptions; ``LOSSES`` is the
:class:`gence.registry.Registry` behind them and ``register`` its decorator. See
:mod:`gence.losses.registry`.
"""
from .gence import GenCELoss, gen_cross_entropy
from .imbalance import class_balanced_weights
from .registry import LOSSES, available, build, register

__all__ = ["LOSSES", "GenCELoss", "available", "build", "class_balanced_weights", "gen_cross_entropy",
           "register"]
