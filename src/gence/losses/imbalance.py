"""Losses for class-imbalanced (long-tailed) training, built from the training class counts n_c.

Notation as in :mod:`gence.losses.classification`; ``pi_c = n_c / sum_k n_k`` are the class priors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss, check_class_counts, check_number
from .classification import target_log_prob


def class_balanced_weights(class_counts, beta: float) -> Tensor:
    """Per-class weights by the effective number of samples (Cui et al., "Class-Balanced Loss
    Based on Effective Number of Samples", CVPR 2019, Sec. 3-4):

        w_c = (1 - beta) / (1 - beta^{n_c}),   then rescaled so that sum_c w_c = C,

    the paper's normalisation, which keeps the loss on the scale of the unweighted loss
    (beta = 0 gives all ones; beta -> 1 tends to inverse class frequency). Computed and returned in
    float64 (the losses cast it to their logits' dtype). ``class_counts`` must be positive (a class
    with no samples has no effective number).
    """
    beta = check_number("beta", beta, low=0.0, high=1.0, high_open=True)
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    # 1 - beta^n as -expm1(n log beta): no cancellation when beta is close to 1 and n is small.
    effective_num = -torch.expm1(counts * math.log(beta)) if beta > 0 else torch.ones_like(counts)
    weights = (1.0 - beta) / effective_num
    return weights * (len(weights) / weights.sum())


class LogitAdjusted(ClassificationLoss):
    """Logit-adjusted loss (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021,
    eq. 10): cross-entropy on logits shifted by the scaled log-priors,

        L_i = -log softmax(z_i + tau * log pi)[y_i].

    tau = 0 is cross-entropy; default tau = 1 (the paper's choice). Prediction uses the raw
    logits z (that is the point: the shift only acts in training).
    """

    log_prior: Tensor
    param_names = ("tau",)

    def __init__(self, num_classes, class_counts, tau: float = 1.0, reduction="mean"):
        super().__init__(num_classes, reduction)
        counts = torch.as_tensor(check_class_counts(class_counts, num_classes), dtype=torch.float64)
        self.tau = check_number("tau", tau)
        self.register_buffer("log_prior", (counts / counts.sum()).log())  # float64, cast where used

    def per_sample(self, logits, target):
        adjusted = logits + self.tau * self.log_prior.to(logits.dtype)
        return -target_log_prob(F.log_softmax(adjusted, dim=1), target)


class BalancedSoftmax(LogitAdjusted):
    """Balanced softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
    NeurIPS 2020, eq. 4): ``L_i = -log( n_{y_i} e^{z_i[y_i]} / sum_k n_k e^{z_i[k]} )``.

    Since softmax ignores a constant shift, ``log n_c`` and ``log pi_c`` give the same loss: this
    is the logit-adjusted loss with tau = 1, and is implemented as exactly that.
    """

    param_names = ()

    def __init__(self, num_classes, class_counts, reduction="mean"):
        super().__init__(num_classes, class_counts, tau=1.0, reduction=reduction)


class LDAM(ClassificationLoss):
    """Label-distribution-aware margin loss with deferred re-weighting (Cao et al., "Learning
    Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019, eq. 10-13):

        Delta_c = max_m * (min_k n_k / n_c)^{1/4}     (Delta_c proportional to n_c^{-1/4}, max = max_m)
        L_i = -log( e^{s (z_i[y] - Delta_y)} / (e^{s (z_i[y] - Delta_y)} + sum_{k != y} e^{s z_i[k]}) )

    Defaults max_m = 0.5 and s = 30 as in the authors' code, which feeds LDAM cosine logits from a
    normalised last layer (|z| <= 1): build the network with ``head="cosine"`` (``model_params =
    {head = "cosine"}`` in a grid or TrainConfig; :class:`gence.models.CosineLinear`). With an
    ordinary linear head s = 30 multiplies logits that are already large, so consider s = 1 there.

    DRW: for epochs ``epoch >= drw_fraction * total_epochs`` (0-based, as passed to
    :meth:`on_epoch_start`) each sample is weighted by the class-balanced weight of its class,
    :func:`class_balanced_weights` with ``drw_beta`` (0.9999); before that all weights are 1.
    Default drw_fraction = 0.8, the paper's switch at epoch 160 of 200; drw_fraction = 1 never
    switches. Weighted 'mean' divides by the total weight of the batch, as
    ``F.cross_entropy(weight=...)`` does in the authors' code. Until the training loop calls
    :meth:`on_epoch_start`, the loss is unweighted.
    """

    margins: Tensor
    drw_weight: Tensor
    param_names = ("max_m", "s", "drw_fraction", "drw_beta")

    def __init__(self, num_classes, class_counts, max_m: float = 0.5, s: float = 30.0,
                 drw_fraction: float = 0.8, drw_beta: float = 0.9999, reduction="mean"):
        super().__init__(num_classes, reduction, class_weight=torch.ones(num_classes, dtype=torch.float64))
        counts = torch.as_tensor(check_class_counts(class_counts, num_classes), dtype=torch.float64)
        self.max_m = check_number("max_m", max_m, low=0.0)
        self.s = check_number("s", s, low=0.0, low_open=True)
        self.drw_fraction = check_number("drw_fraction", drw_fraction, low=0.0, high=1.0)
        self.drw_beta = check_number("drw_beta", drw_beta, low=0.0, high=1.0, high_open=True)
        # float64 buffers, cast to the logits' dtype where used
        self.register_buffer("margins", self.max_m * (counts.min() / counts) ** 0.25)
        self.register_buffer("drw_weight", class_balanced_weights(counts, self.drw_beta))
        self.drw_active = False

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        if isinstance(total_epochs, bool) or not isinstance(total_epochs, int) or total_epochs < 1:
            raise ValueError(f"total_epochs={total_epochs!r} is not valid; expected an int >= 1")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < total_epochs:
            raise ValueError(
                f"epoch={epoch!r} is not valid; expected a 0-based int in [0, {total_epochs - 1}] "
                f"for total_epochs={total_epochs}"
            )
        # The tolerance keeps e.g. 0.55 * 100 = 55.00000000000001 switching at epoch 55.
        self.drw_active = epoch >= self.drw_fraction * total_epochs - 1e-9
        self.class_weight.copy_(self.drw_weight if self.drw_active else torch.ones_like(self.drw_weight))

    def per_sample(self, logits, target):
        margin = self.margins.to(logits.dtype)[target]
        shifted = logits - F.one_hot(target, self.num_classes).to(logits.dtype) * margin[:, None]
        return -target_log_prob(F.log_softmax(self.s * shifted, dim=1), target)
