"""Losses: Generative Cross-Entropy and the baselines it is compared with, under one registry.

``build(name, num_classes, class_counts=None, **params)`` returns an ``nn.Module`` called as
``loss(logits, target)``; ``available()`` lists the names. See :mod:`gence.losses.registry`.
"""
from .gence import GenCELoss, gen_cross_entropy
from .imbalance import class_balanced_weights
from .registry import available, build

__all__ = ["GenCELoss", "available", "build", "class_balanced_weights", "gen_cross_entropy"]
