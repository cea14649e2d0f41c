"""Baseline losses and their registry (issue 3).

Expected values are hand-computed from the formulas (batches whose softmax is a chosen
probability vector, so every term is a closed form), or come from identities and independent
implementations (F.cross_entropy), never from running the code under test.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import gence.losses as L
from gence.losses import class_balanced_weights

ALL = list(L.available())
COUNTS = [8, 4, 2]


def logits_of(*probs):
    """Logits whose softmax is exactly ``probs`` (up to float rounding): z = log p."""
    return torch.tensor(probs, dtype=torch.float64).log()


def close(actual, expected, **kw):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), **kw)


# Batch with probabilities chosen so every loss has a closed form.
P_HALF = (0.5, 0.25, 0.25)
P_SKEW = (0.1, 0.2, 0.7)
Z = logits_of(P_HALF, P_HALF, P_SKEW, P_SKEW, P_SKEW)
Y = torch.tensor([0, 1, 2, 0, 1])
LN2, LN4, LN10 = math.log(2), math.log(4), math.log(10)
CE = [LN2, LN4, -math.log(0.7), LN10, -math.log(0.2)]


def per_sample(name, z=Z, y=Y, **params):
    loss = L.build(name, num_classes=z.shape[1], class_counts=COUNTS, reduction="none", **params)
    return loss(z, y)


# ---------------------------------------------------------------- registry

def test_available_lists_every_name_with_a_description():
    expected = {"ce", "gence", "label_smoothing", "focal", "focal_adaptive", "dual_focal", "brier",
                "poly1", "mmce", "logit_adjusted", "balanced_softmax", "ldam"}
    names = L.available()
    assert set(names) == expected
    assert all(isinstance(d, str) and d and "\n" not in d for d in names.values())


@pytest.mark.parametrize("name", ALL)
def test_every_loss_is_a_module_with_the_epoch_hook_and_reductions(name):
    loss = L.build(name, num_classes=3, class_counts=COUNTS)
    assert isinstance(loss, torch.nn.Module)
    loss.on_epoch_start(0, 10)
    none = loss(Z, Y, reduction="none")
    assert none.shape == Y.shape
    close(loss(Z, Y), none.mean())
    close(loss(Z, Y, reduction="sum"), none.sum())
    close(L.build(name, num_classes=3, class_counts=COUNTS, reduction="sum")(Z, Y), none.sum())


# ---------------------------------------------------------------- hand values

def test_ce_hand_values():
    close(per_sample("ce"), CE)


def test_label_smoothing_hand_values_and_torch_parity():
    a = 0.1
    # t = 0.9 onehot + 0.1/3: L = 0.9 (-log p_y) + (0.1/3) sum_k (-log p_k)
    uniform_half = (LN2 + LN4 + LN4) / 3
    expected = [0.9 * LN2 + a * uniform_half, 0.9 * LN4 + a * uniform_half]
    close(per_sample("label_smoothing", alpha=a)[:2], expected)
    z = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    for alpha in (0.0, 0.05, 0.3):
        got = L.build("label_smoothing", num_classes=5, alpha=alpha)(z, y)
        close(got, F.cross_entropy(z, y, label_smoothing=alpha))


def test_focal_hand_values():
    g = 3
    expected = [0.5 ** g * LN2, 0.75 ** g * LN4, 0.3 ** g * -math.log(0.7), 0.9 ** g * LN10,
                0.8 ** g * -math.log(0.2)]
    close(per_sample("focal"), expected)  # default gamma is 3
    close(per_sample("focal", gamma=1.5)[:2], [0.5 ** 1.5 * LN2, 0.75 ** 1.5 * LN4])


def test_focal_adaptive_hand_values():
    # p_y = 0.5, 0.25, 0.7 >= 0.2 -> gamma 3;  p_y = 0.1 < 0.2 -> gamma 5
    expected = [0.5 ** 3 * LN2, 0.75 ** 3 * LN4, 0.3 ** 3 * -math.log(0.7), 0.9 ** 5 * LN10]
    close(per_sample("focal_adaptive")[:4], expected)
    # threshold moved above 0.5: the first two samples now use gamma_below
    got = per_sample("focal_adaptive", threshold=0.6, gamma_below=1.0, gamma_above=2.0)
    close(got[:3], [0.5 * LN2, 0.75 * LN4, 0.3 ** 2 * -math.log(0.7)])


def test_dual_focal_hand_values():
    g = 2
    # p_j = largest probability strictly below p_y (0 if none):
    #  (.5,.25,.25) y=0: p_j=.25 -> base .75 | y=1: none below .25 -> base .75
    #  (.1,.2,.7)  y=2: p_j=.2 -> base .5  | y=0: none -> base .9 | y=1: p_j=.1 -> base .9
    # (the last is not the largest non-target .7, which would give base 1.5)
    expected = [0.75 ** g * LN2, 0.75 ** g * LN4, 0.5 ** g * -math.log(0.7), 0.9 ** g * LN10,
                0.9 ** g * -math.log(0.2)]
    close(per_sample("dual_focal", gamma=g), expected)
    close(per_sample("dual_focal")[2], 0.5 ** 5 * -math.log(0.7))  # default gamma 5


def test_brier_hand_values():
    expected = [0.25 + 0.0625 + 0.0625, 0.25 + 0.5625 + 0.0625, 0.01 + 0.04 + 0.09,
                0.81 + 0.04 + 0.49, 0.01 + 0.64 + 0.49]
    close(per_sample("brier"), expected)


def test_poly1_hand_values():
    close(per_sample("poly1"), [c + (1 - p) for c, p in zip(CE, [0.5, 0.25, 0.7, 0.1, 0.2])])
    close(per_sample("poly1", epsilon=-0.5)[:1], [LN2 - 0.5 * 0.5])


def test_mmce_hand_value():
    # sample 1: p=(.5,.25,.25), y=0 -> correct, r=.5, c-r=.5; sample 2: p=(.1,.2,.7), y=2 -> r=.7, c-r=.3
    z, y = Z[[0, 2]], Y[[0, 2]]
    mmce_sq = (0.5 ** 2 + 0.3 ** 2 + 2 * 0.5 * 0.3 * math.exp(-0.2 / 0.4)) / 4
    lam = 3.0
    got = L.build("mmce", num_classes=3, lam=lam)(z, y)
    close(got, (LN2 - math.log(0.7)) / 2 + lam * math.sqrt(mmce_sq))
    # the penalty is zero for a calibrated pair: same confidence, one right, one wrong
    got = L.build("mmce", num_classes=3, lam=lam)(Z[:2], Y[:2])
    close(got, (LN2 + LN4) / 2, atol=lam * 2e-6, rtol=0)
    # lam = 0 is CE
    close(L.build("mmce", num_classes=3, lam=0.0)(Z, Y), F.cross_entropy(Z, Y))


def test_logit_adjusted_hand_values():
    # counts (2,1,1): priors (.5,.25,.25); zero logits + log prior -> softmax = prior
    z = torch.zeros(3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    loss = L.build("logit_adjusted", num_classes=3, class_counts=[2, 1, 1], reduction="none")
    close(loss(z, y), [LN2, LN4, LN4])
    loss = L.build("logit_adjusted", num_classes=3, class_counts=[2, 1, 1], tau=2.0, reduction="none")
    # z + 2 log pi = log(.25, .0625, .0625) -> softmax (2/3, 1/6, 1/6)
    close(loss(z, y), [math.log(1.5), math.log(6), math.log(6)])


def test_ldam_hand_values():
    # counts (16, 1): Delta = max_m * (1/16)^(1/4) = max_m/2 for class 0, max_m for class 1
    z = torch.zeros(2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1])
    loss = L.build("ldam", num_classes=2, class_counts=[16, 1], max_m=0.5, s=2.0, reduction="none")
    # y=0: s*(z - Delta) = (-0.5, 0) -> log(1 + e^0.5); y=1: (0, -1) -> log(1 + e^1)
    close(loss(z, y), [math.log1p(math.exp(0.5)), math.log1p(math.exp(1.0))])
    assert L.build("ldam", num_classes=2, class_counts=[16, 1]).s == 30.0


# ---------------------------------------------------------------- identities

def _random_batch(seed=0, n=9, k=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("name, params", [
    ("focal", {"gamma": 0.0}),
    ("focal_adaptive", {"gamma_below": 0.0, "gamma_above": 0.0}),
    ("dual_focal", {"gamma": 0.0}),
    ("poly1", {"epsilon": 0.0}),
    ("logit_adjusted", {"tau": 0.0}),
    ("ldam", {"max_m": 0.0, "s": 1.0}),
    ("label_smoothing", {"alpha": 0.0}),
    ("ce", {}),
])
def test_reduces_to_cross_entropy(name, params):
    z, y = _random_batch()
    loss = L.build(name, num_classes=4, class_counts=[5, 3, 2, 1], reduction="none", **params)
    close(loss(z, y), F.cross_entropy(z, y, reduction="none"))


def test_balanced_softmax_is_logit_adjusted_with_tau_one():
    z, y = _random_batch(1)
    counts = [50, 20, 5, 1]
    bs = L.build("balanced_softmax", num_classes=4, class_counts=counts, reduction="none")(z, y)
    la = L.build("logit_adjusted", num_classes=4, class_counts=counts, tau=1.0, reduction="none")(z, y)
    close(bs, la)
    # and is CE on z + log n (the paper's form), independent of the prior's normaliser
    close(bs, F.cross_entropy(z + torch.tensor(counts).log(), y, reduction="none"))


def test_multidimensional_inputs_treat_positions_as_samples():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, 4, 5, generator=g)
    y = torch.randint(0, 3, (2, 4, 5), generator=g)
    flat_z, flat_y = z.movedim(1, -1).reshape(-1, 3), y.reshape(-1)
    loss = L.build("focal", num_classes=3, reduction="none")
    got = loss(z, y)
    assert got.shape == y.shape
    close(got.reshape(-1), loss(flat_z, flat_y))


# ---------------------------------------------------------------- class-balanced weights

def test_class_balanced_weights_closed_form():
    counts, beta = [100, 10, 1], 0.99
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    expected = [3 * w / sum(raw) for w in raw]  # normalised to sum to the number of classes
    close(class_balanced_weights(counts, beta), expected)
    close(class_balanced_weights(counts, 0.0), [1.0, 1.0, 1.0])
    # beta -> 1 tends to inverse frequency: 1/100 : 1/10 : 1
    w = class_balanced_weights(counts, 1 - 1e-9)
    close(w / w[2], [0.01, 0.1, 1.0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["ce", "focal", "gence"])
def test_class_balanced_reweighting(name):
    z, y = _random_batch(3)
    counts, beta = [40, 10, 3, 1], 0.9
    w = torch.tensor([(1 - beta) / (1 - beta ** n) for n in counts])
    w = w * 4 / w.sum()
    params = {"gamma": 0.0} if name == "focal" else {}
    plain = L.build(name, num_classes=4, reduction="none", **params)(z, y)
    cb = L.build(name, num_classes=4, class_counts=counts, class_balanced_beta=beta, **params)
    close(cb(z, y, reduction="none"), plain * w[y])
    close(cb(z, y, reduction="sum"), (plain * w[y]).sum())
    # 'mean' divides by the total weight of the batch, as F.cross_entropy(weight=...) does
    close(cb(z, y), (plain * w[y]).sum() / w[y].sum())
    if name != "gence":
        close(cb(z, y), F.cross_entropy(z, y, weight=w))


# ---------------------------------------------------------------- DRW

def test_drw_switches_at_the_configured_fraction():
    z, y = _random_batch(4, k=3)
    counts = [100, 10, 1]
    loss = L.build("ldam", num_classes=3, class_counts=counts, max_m=0.0, s=1.0, reduction="none")
    ce = F.cross_entropy(z, y, reduction="none")
    close(loss(z, y), ce)  # unweighted before the first hook call
    w = torch.tensor([(1 - 0.9999) / (1 - 0.9999 ** n) for n in counts])
    w = w * 3 / w.sum()
    for epoch in range(10):  # default fraction 0.8: epochs 0..7 plain, 8 and 9 re-weighted
        loss.on_epoch_start(epoch, 10)
        close(loss(z, y), ce * w[y] if epoch >= 8 else ce, msg=f"epoch {epoch}")
    loss.on_epoch_start(159, 200)
    close(loss.class_weight, torch.ones(3))
    loss.on_epoch_start(160, 200)  # the paper: DRW from epoch 160 of 200
    close(loss.class_weight, w)


def test_drw_fraction_is_configurable_and_exact_at_float_products():
    loss = L.build("ldam", num_classes=2, class_counts=[9, 1], drw_fraction=0.55)
    loss.on_epoch_start(54, 100)
    assert not loss.drw_active
    loss.on_epoch_start(55, 100)  # 0.55 * 100 is 55.00000000000001 in floats
    assert loss.drw_active
    never = L.build("ldam", num_classes=2, class_counts=[9, 1], drw_fraction=1.0)
    never.on_epoch_start(9, 10)
    assert not never.drw_active
    always = L.build("ldam", num_classes=2, class_counts=[9, 1], drw_fraction=0.0)
    always.on_epoch_start(0, 10)
    assert always.drw_active


def test_buffers_follow_the_module():
    loss = L.build("ldam", num_classes=3, class_counts=COUNTS)
    assert {"class_weight", "margins", "drw_weight"} <= set(loss.state_dict())
    assert "log_prior" in L.build("logit_adjusted", num_classes=3, class_counts=COUNTS).state_dict()
    assert "class_weight" in L.build("focal", num_classes=3, class_counts=COUNTS,
                                     class_balanced_beta=0.9).state_dict()


# ---------------------------------------------------------------- numerics

EXTREME = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [0.0, 0.0, 0.0]])
EXTREME_Y = torch.tensor([0, 1, 1, 2])  # p_y = 1 exactly, p_y = 0, p_y = 1 exactly, uniform


@pytest.mark.parametrize("name", ALL)
def test_finite_values_and_gradients_at_extreme_logits(name):
    z = EXTREME.clone().requires_grad_(True)
    loss = L.build(name, num_classes=3, class_counts=COUNTS)
    loss.on_epoch_start(9, 10)  # DRW on, for ldam
    value = loss(z, EXTREME_Y)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name, params", [("focal", {"gamma": 0.5}), ("focal", {"gamma": 0.0}),
                                          ("dual_focal", {"gamma": 0.5}), ("poly1", {})])
def test_probability_one_exactly(name, params):
    z = torch.tensor([[1e4, 0.0, 0.0]], requires_grad=True)
    loss = L.build(name, num_classes=3, **params)(z, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_low_precision_logits_are_computed_in_float32(name):
    z = (Z.float() * 2).to(torch.bfloat16)
    loss = L.build(name, num_classes=3, class_counts=COUNTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(z, Y)
    assert got.dtype == torch.float32
    close(got, loss(z.float(), Y))


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("call, match", [
    (lambda: L.build("cross_entropy", num_classes=3), r"unknown loss name='cross_entropy'; expected one of: balanced_softmax, brier, ce, dual_focal"),
    (lambda: L.build("focal", num_classes=3, gama=2), r"unknown parameter\(s\) 'gama' for loss 'focal'; valid parameters: gamma, reduction, class_balanced_beta"),
    (lambda: L.build("mmce", num_classes=3, class_counts=COUNTS, class_balanced_beta=0.9), r"class_balanced_beta works with: ce, focal, gence"),
    (lambda: L.build("brier", num_classes=3, alpha=0.1), r"unknown parameter\(s\) 'alpha' for loss 'brier'; valid parameters: reduction"),
    (lambda: L.build("ce", num_classes=0), r"num_classes=0 is not valid; expected an int >= 1"),
    (lambda: L.build("focal", num_classes=3, gamma=-1), r"gamma=-1 is out of range; expected a number in \[0.0, inf\]"),
    (lambda: L.build("label_smoothing", num_classes=3, alpha=1.5), r"alpha=1.5 is out of range"),
    (lambda: L.build("poly1", num_classes=3, epsilon=-2), r"epsilon=-2 is out of range; expected a number in \[-1.0, inf\]"),
    (lambda: L.build("ldam", num_classes=3, class_counts=COUNTS, s=0), r"s=0 is out of range; expected a number in \(0.0, inf\]"),
    (lambda: L.build("ldam", num_classes=3, class_counts=COUNTS, drw_beta=1.0), r"drw_beta=1.0 is out of range; expected a number in \[0.0, 1.0\)"),
    (lambda: L.build("focal_adaptive", num_classes=3, threshold="0.2"), r"threshold='0.2' is not valid; expected a finite number"),
    (lambda: L.build("ce", num_classes=3, reduction="avg"), r"reduction='avg' is not valid; expected one of \('mean', 'sum', 'none'\)"),
    (lambda: L.build("logit_adjusted", num_classes=3), r"class_counts=None is not valid for loss 'logit_adjusted'; expected the number of training samples per class"),
    (lambda: L.build("ce", num_classes=3, class_balanced_beta=0.9), r"class_counts=None is not valid for class_balanced_beta"),
    (lambda: L.build("ldam", num_classes=3, class_counts=[5, 1]), r"class_counts has 2 entries; expected num_classes=3"),
    (lambda: L.build("balanced_softmax", num_classes=3, class_counts=[5, 0, 1]), r"class_counts\[1\]=0 is not valid; every class needs a positive count"),
    (lambda: L.build("ce", num_classes=3, class_counts=COUNTS, class_balanced_beta=1.0), r"class_balanced_beta=1.0 is out of range"),
    (lambda: L.build("gence", num_classes=3, class_counts=COUNTS, class_balanced_beta=0.9, weight=[1, 1, 1]), r"weight and class_balanced_beta both set class weights"),
    (lambda: L.build("gence", num_classes=3, generative_weight=2.0), r"generative_weight"),
    (lambda: L.build("gence", num_classes=3, weight=[1, 1]), r"weight has shape \(2,\); expected \(3,\)"),
    (lambda: L.build("ce", num_classes=4)(Z, Y), r"logits have 3 classes in dimension 1 but the loss was built with num_classes=4"),
    (lambda: L.build("ce", num_classes=3)(Z, Y[:2]), r"target has shape \(2,\); expected class indices of shape \(5,\)"),
    (lambda: L.build("ce", num_classes=3)(Z, Y.double()), r"target has dtype torch.float64; expected integer class indices"),
    (lambda: L.build("ce", num_classes=3)(Z, Y, reduction="avg"), r"reduction='avg' is not valid"),
    (lambda: L.build("ldam", num_classes=3, class_counts=COUNTS).on_epoch_start(10, 10), r"epoch=10 is not valid; expected a 0-based int in \[0, 9\] for total_epochs=10"),
    (lambda: L.build("ldam", num_classes=3, class_counts=COUNTS).on_epoch_start(0, 0), r"total_epochs=0 is not valid; expected an int >= 1"),
])
def test_error_messages(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_gence_accepts_every_gen_cross_entropy_keyword():
    loss = L.build("gence", num_classes=3, generative_weight=0.5, label_smoothing=0.0,
                   ignore_index=-100, weight=None, distributed=False, process_group=None)
    # mixed form: CE + lam * log sum_j q(y_i|x_j); both samples of class 0 share the same S
    z = logits_of(P_HALF, P_SKEW)
    y = torch.tensor([0, 0])
    expected = [LN2 + 0.5 * math.log(0.6), LN10 + 0.5 * math.log(0.6)]
    close(loss(z, y, reduction="none"), expected)


# ---------------------------------------------------------------- own checks, repr, float64

from gence.losses.classification import MMCE, AdaptiveFocal, DualFocal, Focal, LabelSmoothing, Poly1  # noqa: E402
from gence.losses.imbalance import LDAM, LogitAdjusted  # noqa: E402


@pytest.mark.parametrize("make, match", [
    (lambda: Focal(10, gamma=-1), r"gamma=-1 is out of range; expected a number in \[0.0, inf\]"),
    (lambda: LabelSmoothing(3, alpha=1.5), r"alpha=1.5 is out of range"),
    (lambda: AdaptiveFocal(3, threshold=1.0), r"threshold=1.0 is out of range; expected a number in \(0.0, 1.0\)"),
    (lambda: DualFocal(3, gamma=float("nan")), r"gamma=nan is not valid; expected a finite number"),
    (lambda: Poly1(3, epsilon=-2), r"epsilon=-2 is out of range"),
    (lambda: MMCE(3, width=0), r"width=0 is out of range; expected a number in \(0.0, inf\]"),
    (lambda: LogitAdjusted(3, COUNTS, tau="1"), r"tau='1' is not valid"),
    (lambda: LogitAdjusted(3, [1, 2]), r"class_counts has 2 entries; expected num_classes=3"),
    (lambda: LDAM(3, COUNTS, drw_beta=1.0), r"drw_beta=1.0 is out of range"),
    (lambda: LDAM(3, [4, 0, 1]), r"class_counts\[1\]=0 is not valid"),
    (lambda: Focal(0), r"num_classes=0 is not valid"),
])
def test_every_baseline_checks_its_parameters_when_constructed(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_repr_shows_the_parameters():
    assert repr(L.build("focal", num_classes=10, gamma=3.0)) == "Focal(num_classes=10, gamma=3.0, reduction='mean')"
    ldam = repr(L.build("ldam", num_classes=3, class_counts=COUNTS, s=1.0))
    assert "max_m=0.5, s=1.0, drw_fraction=0.8, drw_beta=0.9999" in ldam and "class_weight=set" in ldam
    assert "tau=0.5" in repr(L.build("logit_adjusted", num_classes=3, class_counts=COUNTS, tau=0.5))
    assert "generative_weight=0.5" in repr(L.build("gence", num_classes=3, generative_weight=0.5))
    assert "class_weight=set" in repr(L.build("ce", num_classes=3, class_counts=COUNTS, class_balanced_beta=0.9))


def _float64_batch(n=64, k=5, seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * 3, torch.randint(0, k, (n,), generator=g)


def _cb_weights64(counts, beta):
    w = torch.tensor([(1 - beta) / (1 - beta ** n) for n in counts], dtype=torch.float64)
    return w * len(counts) / w.sum()


COUNTS5 = [500, 120, 31, 7, 2]


@pytest.mark.parametrize("name, params, want", [
    ("ce", {"class_balanced_beta": 0.99},
     lambda z, y: F.cross_entropy(z, y, weight=_cb_weights64(COUNTS5, 0.99))),
    ("focal", {"class_balanced_beta": 0.99, "gamma": 0.0},
     lambda z, y: F.cross_entropy(z, y, weight=_cb_weights64(COUNTS5, 0.99))),
    ("logit_adjusted", {"tau": 0.7},
     lambda z, y: F.cross_entropy(z + 0.7 * torch.tensor(COUNTS5, dtype=torch.float64).div(sum(COUNTS5)).log(), y)),
    ("balanced_softmax", {},
     lambda z, y: F.cross_entropy(z + torch.tensor(COUNTS5, dtype=torch.float64).log(), y)),
    ("ldam", {"s": 2.0, "drw_fraction": 0.0, "drw_beta": 0.99},
     lambda z, y: F.cross_entropy(
         2.0 * (z - F.one_hot(y, 5) * (0.5 * (2 / torch.tensor(COUNTS5, dtype=torch.float64)) ** 0.25)[y, None]),
         y, weight=_cb_weights64(COUNTS5, 0.99))),
])
def test_weighted_baselines_keep_float64_logits_in_float64(name, params, want):
    # float32 buffers or a float32 weighted sum are ~1e-8 relative off; float64 end to end is ~1e-16
    z, y = _float64_batch()
    loss = L.build(name, num_classes=5, class_counts=COUNTS5, **params)
    loss.on_epoch_start(0, 10)
    got = loss(z, y)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want(z, y), rtol=1e-13, atol=0)
