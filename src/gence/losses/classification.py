"""Baseline losses for balanced classification and calibration.

Notation for every docstring: logits ``z_i`` (C classes), ``l_i = log_softmax(z_i)``,
``p_i = softmax(z_i)``, target ``y_i``, ``p_t = p_i[y_i]``. Each loss returns the per-sample
value ``L_i`` below; weighting and reduction are those of :class:`ClassificationLoss`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss, check_number, check_reduction
from .gence import GenCELoss, gen_cross_entropy


def target_log_prob(log_probs: Tensor, target: Tensor) -> Tensor:
    return log_probs.gather(1, target[:, None]).squeeze(1)


def one_minus_prob(log_p: Tensor) -> Tensor:
    """``1 - p`` from ``log p`` without cancellation: ``-expm1(log p)``, exact near p = 1, never < 0."""
    return -torch.expm1(log_p)


def focal_factor(one_minus_p: Tensor, gamma) -> Tensor:
    """``(1 - p)^gamma``, finite in value and gradient for every gamma >= 0, p = 1 included.

    At p = 1 exactly the base is 0 and ``d/dx x^gamma = gamma x^(gamma-1)`` is infinite for
    gamma < 1 (and 0 * inf for gamma = 0), which is how public focal losses turn NaN. Clamping the
    base at the smallest normal float keeps the value (0 up to 1e-38**gamma) and stops the gradient
    there, where the true gradient of the loss is 0 anyway because it is multiplied by log p = 0.
    """
    return one_minus_p.clamp_min(torch.finfo(one_minus_p.dtype).tiny).pow(gamma)


class CrossEntropy(ClassificationLoss):
    """Cross-entropy: ``L_i = -log p_i[y_i] = -l_i[y_i]``."""

    def per_sample(self, logits, target):
        return -target_log_prob(F.log_softmax(logits, dim=1), target)


class LabelSmoothing(ClassificationLoss):
    """Cross-entropy with label smoothing (Szegedy et al., "Rethinking the Inception
    Architecture", CVPR 2016; Mueller, Kornblith, Hinton, "When does label smoothing help?",
    NeurIPS 2019).

    Target ``t = (1 - alpha) onehot(y) + alpha / C``:
    ``L_i = -(1 - alpha) l_i[y_i] - (alpha / C) sum_k l_i[k]``,
    which is ``F.cross_entropy(z, y, label_smoothing=alpha)``. Default alpha = 0.1 (Szegedy et al.).
    """

    param_names = ("alpha",)

    def __init__(self, num_classes, alpha: float = 0.1, reduction="mean"):
        super().__init__(num_classes, reduction)
        self.alpha = check_number("alpha", alpha, low=0.0, high=1.0)

    def per_sample(self, logits, target):
        log_probs = F.log_softmax(logits, dim=1)
        nll = -target_log_prob(log_probs, target)
        uniform = -log_probs.mean(dim=1)
        return (1.0 - self.alpha) * nll + self.alpha * uniform


class Focal(ClassificationLoss):
    """Focal loss (Lin et al., ICCV 2017) as a calibration baseline (Mukhoti et al., "Calibrating
    Deep Neural Networks using Focal Loss", NeurIPS 2020): ``L_i = -(1 - p_t)^gamma log p_t``.

    Default gamma = 3 (Mukhoti et al.'s FL-3). gamma = 0 is cross-entropy. ``1 - p_t`` is computed
    as ``-expm1(log p_t)`` and clamped (see :func:`focal_factor`), so values and gradients stay
    finite at p_t = 1 exactly and at logits of any finite magnitude. No alpha-balancing term:
    class weights come from ``class_balanced_beta`` instead.
    """

    param_names = ("gamma",)

    def __init__(self, num_classes, gamma: float = 3.0, reduction="mean", class_weight=None):
        super().__init__(num_classes, reduction, class_weight)
        self.gamma = check_number("gamma", gamma, low=0.0)

    def per_sample(self, logits, target):
        log_pt = target_log_prob(F.log_softmax(logits, dim=1), target)
        if self.gamma == 0:
            return -log_pt
        return -focal_factor(one_minus_prob(log_pt), self.gamma) * log_pt


class AdaptiveFocal(ClassificationLoss):
    """Sample-dependent focal loss FLSD-53 (Mukhoti et al., NeurIPS 2020, Sec. 5):
    ``L_i = -(1 - p_t)^gamma_i log p_t`` with ``gamma_i = gamma_below`` (5) if
    ``p_t < threshold`` (0.2), else ``gamma_above`` (3).

    gamma_i is chosen from the current p_t and treated as a constant (it is piecewise constant,
    so there is no gradient through the choice), as in the authors' code, where p_t = 0.2 gets 3.
    """

    param_names = ("gamma_below", "gamma_above", "threshold")

    def __init__(self, num_classes, gamma_below: float = 5.0, gamma_above: float = 3.0,
                 threshold: float = 0.2, reduction="mean"):
        super().__init__(num_classes, reduction)
        self.gamma_below = check_number("gamma_below", gamma_below, low=0.0)
        self.gamma_above = check_number("gamma_above", gamma_above, low=0.0)
        self.threshold = check_number("threshold", threshold, low=0.0, high=1.0, low_open=True, high_open=True)

    def per_sample(self, logits, target):
        log_pt = target_log_prob(F.log_softmax(logits, dim=1), target)
        below = log_pt.detach().exp() < self.threshold
        gamma = torch.where(below, self.gamma_below, self.gamma_above).to(log_pt.dtype)
        return -focal_factor(one_minus_prob(log_pt), gamma) * log_pt


class DualFocal(ClassificationLoss):
    """Dual focal loss (Tao, Dong, Xu, "Dual Focal Loss for Calibration", ICML 2023):
    ``L_i = -(1 - p_t + p_j)^gamma log p_t``, where ``p_j`` is the largest probability ranked
    below the ground truth, ``p_j = max{p_i[k] : p_i[k] < p_t}`` (0 if there is none).

    That is the paper's "highest logit ranked after the ground truth logit" and what its official
    code computes (a strict ``<`` mask, so classes tied with p_t are excluded); for a correctly
    classified sample it is the runner-up probability. Gradients flow through both p_t and p_j,
    as in the official code. Default gamma = 5 (the value the paper reports for CIFAR-10; the
    official class defaults to 0, which is plain CE).
    """

    param_names = ("gamma",)

    def __init__(self, num_classes, gamma: float = 5.0, reduction="mean"):
        super().__init__(num_classes, reduction)
        self.gamma = check_number("gamma", gamma, low=0.0)

    def per_sample(self, logits, target):
        log_probs = F.log_softmax(logits, dim=1)
        probs = log_probs.exp()
        log_pt = target_log_prob(log_probs, target)
        pt = log_pt.exp()
        below = probs < pt[:, None]
        p_j = torch.where(below, probs, torch.zeros_like(probs)).amax(dim=1)
        base = one_minus_prob(log_pt) + p_j
        if self.gamma == 0:
            return -log_pt
        return -focal_factor(base, self.gamma) * log_pt


class Brier(ClassificationLoss):
    """Brier score (Brier, Monthly Weather Review 1950) as a loss:
    ``L_i = sum_k (p_i[k] - onehot(y_i)[k])^2``, in [0, 2]; summed over classes, not averaged."""

    def per_sample(self, logits, target):
        probs = F.softmax(logits, dim=1)
        onehot = F.one_hot(target, self.num_classes).to(probs.dtype)
        return (probs - onehot).pow(2).sum(dim=1)


class Poly1(ClassificationLoss):
    """Poly-1 loss (Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification
    Loss Functions", ICLR 2022): ``L_i = -log p_t + epsilon (1 - p_t)``.

    epsilon = 0 is cross-entropy; the paper requires epsilon >= -1 (so the leading polynomial
    coefficient 1 + epsilon stays >= 0). Default epsilon = 1.0; the paper's best ImageNet setting
    is 2.0.
    """

    param_names = ("epsilon",)

    def __init__(self, num_classes, epsilon: float = 1.0, reduction="mean"):
        super().__init__(num_classes, reduction)
        self.epsilon = check_number("epsilon", epsilon, low=-1.0)

    def per_sample(self, logits, target):
        log_pt = target_log_prob(F.log_softmax(logits, dim=1), target)
        return -log_pt + self.epsilon * one_minus_prob(log_pt)


class MMCE(ClassificationLoss):
    """Cross-entropy plus the MMCE calibration penalty (Kumar, Sarawagi, Jain, "Trainable
    Calibration Measures for Neural Networks from Kernel Mean Embeddings", ICML 2018):

        r_i = max_k p_i[k]  (confidence),   c_i = 1[argmax_k p_i[k] = y_i]  (correct),
        MMCE_m^2 = (1 / n^2) sum_{i,j} (c_i - r_i)(c_j - r_j) k(r_i, r_j),
        k(r, r') = exp(-|r - r'| / width),  width = 0.4  (Laplacian kernel, as in the paper),
        loss = mean_i CE_i + lam * sqrt(MMCE_m^2).

    This is the unweighted estimator MMCE_m with the square root of the paper's objective
    (Mukhoti et al.'s port drops the root). The root is taken as ``sqrt(max(x, 1e-12))``: a
    perfectly calibrated batch has x = 0, where the root's derivative is infinite. Default
    lam = 2.0, the weight Mukhoti et al. (NeurIPS 2020) train their MMCE baselines with on CIFAR
    (``--lamda 2.0`` in their training scripts, there for the weighted estimator).

    MMCE is one number per batch, not per sample: ``reduction='none'`` returns
    ``CE_i + lam * sqrt(MMCE_m^2)`` for every sample, so 'mean' and 'sum' are the mean and sum of
    those values (the penalty counts once per sample in 'sum'). The batch costs O(n^2) memory.
    """

    param_names = ("lam", "width")

    def __init__(self, num_classes, lam: float = 2.0, width: float = 0.4, reduction="mean"):
        super().__init__(num_classes, reduction)
        self.lam = check_number("lam", lam, low=0.0)
        self.width = check_number("width", width, low=0.0, low_open=True)

    def per_sample(self, logits, target):
        log_probs = F.log_softmax(logits, dim=1)
        ce = -target_log_prob(log_probs, target)
        confidence, predicted = log_probs.exp().max(dim=1)
        residual = (predicted == target).to(confidence.dtype) - confidence
        kernel = torch.exp(-(confidence[:, None] - confidence[None, :]).abs() / self.width)
        n = confidence.shape[0]
        mmce_sq = (residual[:, None] * residual[None, :] * kernel).sum() / max(n, 1) ** 2
        return ce + self.lam * mmce_sq.clamp_min(1e-12).sqrt()


class GenCE(ClassificationLoss):
    """Generative Cross-Entropy (Zhan, Zhou, Shen 2026), :func:`gence.losses.gence.gen_cross_entropy`:
    ``L_i = -l_i[y_i] + generative_weight * log sum_{j in batch} p_j[y_i]``.

    A thin adapter to the registry's interface: every keyword of ``gen_cross_entropy`` (weight,
    ignore_index, label_smoothing, generative_weight, distributed, process_group) passes through;
    class-balanced weights are handed over as its ``weight``, whose 'mean' divides by the total
    weight of the counted samples, the convention of all registry losses. Shapes, soft targets
    and the float32 upcast are gen_cross_entropy's.
    """

    def __init__(self, num_classes, reduction="mean", class_weight=None, **gence_kwargs):
        super().__init__(num_classes, reduction, class_weight)
        # GenCELoss checks its arguments when built: fail at build time, not at the first batch.
        GenCELoss(weight=self.class_weight, reduction=reduction, **gence_kwargs)
        self.gence_kwargs = gence_kwargs

    def extra_repr(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.gence_kwargs.items())
        return super().extra_repr().replace(", reduction=", f"{params}, reduction=", 1)

    def forward(self, logits: Tensor, target: Tensor, reduction: str | None = None) -> Tensor:
        reduction = self.reduction if reduction is None else check_reduction(reduction)
        if logits.dim() < 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have shape {tuple(logits.shape)}; expected (N, {self.num_classes}, ...) "
                f"for num_classes={self.num_classes}"
            )
        return gen_cross_entropy(logits, target, weight=self.class_weight, reduction=reduction,
                                 **self.gence_kwargs)
