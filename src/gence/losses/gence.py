"""Generative Cross-Entropy. (placeholder composition; the exact, fast version lands next)"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gen_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                      label_smoothing=0.0, generative_weight=1.0, distributed=False, process_group=None):
    logp = F.log_softmax(input.float(), dim=1)
    ce = F.nll_loss(logp, target, reduction="none", ignore_index=ignore_index)
    mask = target != ignore_index
    S = torch.logsumexp(logp[mask], dim=0)
    reg = S[target.clamp_min(0)] * mask
    per = ce + generative_weight * reg
    if weight is not None:
        per = per * weight[target.clamp_min(0)] * mask
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    den = (weight[target.clamp_min(0)] * mask).sum() if weight is not None else mask.sum()
    return per.sum() / den


class GenCELoss(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, input, target):
        return gen_cross_entropy(input, target, **self.kwargs)
