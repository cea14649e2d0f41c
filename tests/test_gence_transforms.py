"""GenCE under every transform F.cross_entropy supports: double backward, torch.func (grad, jacrev,
vmap), torch.compile(fullgraph=True), torch.export, and a compiled training step without graph breaks.

The reference is the plain float64 autograd composition of the formula, written here and sharing no code
with the implementation: ``l = log_softmax(z); S = logsumexp over counted rows of l;
L_i = sum_k w_k t_ik (lam S_k - l_ik)``. Autograd differentiates it to any order, so every gradient
(first, second, through a model) is compared with it.
"""
from __future__ import annotations

import io
import math

import pytest
import torch

import gence.losses.gence as gence_module
from gence import GenCELoss, gen_cross_entropy

K = 4


def composed(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
             generative_weight=1.0):
    """The formula by autograd composition, for (N, C) or (N, C, d1, ...) logits."""
    C = logits.shape[1]
    z = logits.movedim(1, -1).reshape(-1, C)
    soft = target.is_floating_point()
    if soft:
        t = target.movedim(1, -1).reshape(-1, C)
        counted = torch.ones(z.shape[0], dtype=torch.bool)
    else:
        y = target.reshape(-1)
        counted = y != ignore_index
        t = torch.nn.functional.one_hot(y.clamp_min(0), C).to(z.dtype)
    t = t * (1 - label_smoothing) + label_smoothing / C
    l = torch.log_softmax(z, 1)
    S = torch.logsumexp(l[counted], 0)
    w = torch.ones(C, dtype=z.dtype) if weight is None else weight
    per = ((generative_weight * S - l) * t * w).sum(1)
    per = torch.where(counted, per, torch.zeros_like(per))
    if reduction == "none":
        return per.reshape(target.shape[:1] + target.shape[2:] if soft else target.shape)
    if reduction == "sum":
        return per.sum()
    denominator = counted.sum() if soft else (t.new_zeros(()) + (w[y.clamp_min(0)] * counted).sum())
    return per.sum() / denominator


WEIGHT = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)

# every argument, alone and combined; "spatial" uses (N, C, 2) logits
CASES = {
    "plain": dict(),
    "weight": dict(weight=WEIGHT),
    "ignore_index": dict(ignore=True),
    "ignore_index_a_class": dict(ignore=True, ignore_index=2),  # class 2 itself is ignored
    "label_smoothing": dict(label_smoothing=0.2),
    "generative_weight": dict(generative_weight=0.6),
    "soft": dict(soft=True),
    "soft_weight_smoothing": dict(soft=True, weight=WEIGHT, label_smoothing=0.1),
    "spatial": dict(spatial=True, ignore=True),
    "all": dict(weight=WEIGHT, ignore=True, label_smoothing=0.1, generative_weight=0.8, spatial=True),
    "sum": dict(reduction="sum", weight=WEIGHT),
}


def _data(case, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, K, 2) if case.get("spatial") else (n, K)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    if case.get("soft"):
        target = torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64), 1)
    else:
        target = torch.randint(0, K, shape[:1] + shape[2:], generator=g)
        if case.get("ignore"):
            target.view(-1)[[1, 4]] = case.get("ignore_index", -100)
    kw = {k: v for k, v in case.items() if k not in ("soft", "spatial", "ignore")}
    return logits, target, kw


@pytest.mark.parametrize("name", ["plain", "all", "soft_weight_smoothing", "generative_weight"])
def test_gradgradcheck(name):
    logits, target, kw = _data(CASES[name], n=5)
    logits.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: gen_cross_entropy(z, target, **kw), (logits,))


def test_gradgradcheck_soft_target_argument():
    logits, target, kw = _data(CASES["soft_weight_smoothing"], n=4)
    logits.requires_grad_()
    target.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z, t: gen_cross_entropy(z, t, **kw), (logits, target))


def _mlp(out_features):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(),
                               torch.nn.Linear(6, out_features)).double()


def _penalty_grads(loss_fn, x, target, kw, spatial):
    """Parameter gradients of a gradient penalty |d loss / d x|^2 through a 2-layer MLP."""
    model = _mlp(K)
    x = x.clone().requires_grad_()
    logits = model(x)
    if spatial:  # (N, 2, K) -> (N, K, 2): two positions per sample
        logits = logits.movedim(-1, 1)
    loss = loss_fn(logits, target, **kw)
    g, = torch.autograd.grad(loss, x, create_graph=True)
    g.pow(2).sum().backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("name", CASES)
def test_gradient_penalty_through_a_model_equals_the_composition(name):
    case = CASES[name]
    logits, target, kw = _data(case)
    x = torch.randn(7, 2, 3, dtype=torch.float64) if case.get("spatial") else \
        torch.randn(7, 3, dtype=torch.float64)
    got = _penalty_grads(gen_cross_entropy, x, target, kw, case.get("spatial", False))
    want = _penalty_grads(composed, x, target, kw, case.get("spatial", False))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the first layer only gets a gradient through the second-order term of the loss
    assert got[0].abs().max() > 1e-6


def test_hessian_vector_product_equals_the_composition():
    logits, target, kw = _data(CASES["all"])
    v = torch.randn_like(logits)
    hvp = torch.autograd.functional.hvp(lambda z: gen_cross_entropy(z, target, **kw), logits, v)[1]
    want = torch.autograd.functional.hvp(lambda z: composed(z, target, **kw), logits, v)[1]
    torch.testing.assert_close(hvp, want, rtol=1e-9, atol=1e-12)


def test_first_order_backward_takes_the_fast_path(monkeypatch):
    # loss.backward() builds no graph: the hand-written gradient from the saved U is used, and the
    # differentiable one (for create_graph and torch.func) is not.
    def fail(*args, **kwargs):
        raise AssertionError("the differentiable backward ran for a first-order gradient")

    logits, target, kw = _data(CASES["all"])
    logits.requires_grad_()
    monkeypatch.setattr(gence_module, "_differentiable_gradients", fail)
    gen_cross_entropy(logits, target, **kw).backward()
    want, = torch.autograd.grad(composed(logits, target, **kw), logits)
    torch.testing.assert_close(logits.grad, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(AssertionError, match="differentiable backward ran"):
        torch.autograd.grad(gen_cross_entropy(logits, target, **kw), logits, create_graph=True)


@pytest.mark.parametrize("name", ["plain", "all", "soft_weight_smoothing"])
def test_func_grad_and_jacrev_equal_autograd(name):
    logits, target, kw = _data(CASES[name])
    grad = torch.func.grad(lambda z: gen_cross_entropy(z, target, **kw))(logits)
    want, = torch.autograd.grad(composed(logits.requires_grad_(), target, **kw), logits)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)

    kw_none = {**kw, "reduction": "none"}
    jac = torch.func.jacrev(lambda z: gen_cross_entropy(z, target, **kw_none))(logits.detach())
    want_jac = torch.autograd.functional.jacobian(lambda z: composed(z, target, **kw_none), logits.detach())
    torch.testing.assert_close(jac, want_jac, rtol=1e-10, atol=1e-12)


def test_func_hessian_equals_autograd():
    logits, target, kw = _data(CASES["plain"], n=4)
    hess = torch.func.hessian(lambda z: gen_cross_entropy(z, target, **kw))(logits)
    want = torch.autograd.functional.hessian(lambda z: composed(z, target, **kw), logits)
    torch.testing.assert_close(hess, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["plain", "all", "soft"])
def test_vmap_over_stacked_batches_equals_a_loop(name):
    batches = [_data(CASES[name], seed=s) for s in range(3)]
    kw = batches[0][2]
    logits = torch.stack([b[0] for b in batches])
    target = torch.stack([b[1] for b in batches])
    got = torch.vmap(lambda z, t: gen_cross_entropy(z, t, **kw))(logits, target)
    want = torch.stack([composed(z, t, **kw) for z, t in zip(logits, target)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    grads = torch.vmap(torch.func.grad(lambda z, t: gen_cross_entropy(z, t, **kw)))(logits, target)
    for g, z, t in zip(grads, logits, target):
        z = z.clone().requires_grad_()
        want_g, = torch.autograd.grad(composed(z, t, **kw), z)
        torch.testing.assert_close(g, want_g, rtol=1e-10, atol=1e-12)


def test_vmap_with_a_bad_class_gives_nan_for_that_batch():
    # vmap has no rule for a device-side assert: the bad class makes its batch's loss NaN instead.
    logits = torch.randn(2, 5, K, dtype=torch.float64)
    target = torch.tensor([[0, 1, 2, 3, 0], [0, 1, K, 3, 0]])
    got = torch.vmap(gen_cross_entropy)(logits, target)
    assert math.isfinite(got[0].item()) and math.isnan(got[1].item())


def _float_batch(n=16):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, K, generator=g), torch.randint(0, K, (n,), generator=g)


def test_compile_fullgraph_equals_eager():
    logits, target = _float_batch()
    target[5] = -100
    fn = lambda z, y: gen_cross_entropy(z, y, label_smoothing=0.1, generative_weight=0.9)  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    z1 = logits.clone().requires_grad_()
    loss = compiled(z1, target)
    loss.backward()
    z2 = logits.double().requires_grad_()
    want = composed(z2, target, label_smoothing=0.1, generative_weight=0.9)
    want.backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(z1.grad.double(), z2.grad, rtol=1e-5, atol=1e-7)
    # a bad class is caught on the device by the traced assert, not by a host check
    bad = target.clone()
    bad[0] = K
    with pytest.raises(RuntimeError, match=r"class outside \[0, 4\)"):
        compiled(logits, bad)


def test_compiled_training_step_has_no_graph_break():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, K))
    criterion = GenCELoss(label_smoothing=0.1)
    x = torch.randn(16, 3)
    _, y = _float_batch()

    def step(x, y):
        loss = criterion(model(x), y)
        loss.backward()
        return loss

    explanation = torch._dynamo.explain(step)(x, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_export_round_trip():
    class Criterion(torch.nn.Module):
        def forward(self, logits, target):
            return gen_cross_entropy(logits, target, weight=WEIGHT.float(), generative_weight=0.7)

    logits, target = _float_batch()
    exported = torch.export.export(Criterion(), (logits, target))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    other_logits, other_target = torch.randn(16, K), torch.randint(0, K, (16,))
    for z, y in ((logits, target), (other_logits, other_target)):
        want = composed(z.double(), y, weight=WEIGHT, generative_weight=0.7)
        torch.testing.assert_close(loaded.module()(z, y).double(), want, rtol=1e-6, atol=1e-6)


def test_distributed_refuses_higher_order_gradients(monkeypatch):
    # a world of two identical ranks; first order works, create_graph says it is unsupported
    monkeypatch.setattr(gence_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(gence_module.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(gence_module.dist, "all_gather", lambda out, t, group=None: [o.copy_(t) for o in out])
    monkeypatch.setattr(gence_module.dist, "all_reduce", lambda t, group=None: t.mul_(2))
    logits, target, _ = _data(CASES["plain"])
    logits.requires_grad_()
    torch.autograd.grad(gen_cross_entropy(logits, target, distributed=True), logits)
    with pytest.raises(NotImplementedError, match="first-order gradients only"):
        torch.autograd.grad(gen_cross_entropy(logits, target, distributed=True), logits, create_graph=True)


@pytest.mark.parametrize("name", ["all", "soft_weight_smoothing"])
def test_forward_mode_jvp_equals_the_composition(name):
    logits, target, kw = _data(CASES[name])
    v = torch.randn_like(logits)
    _, got = torch.func.jvp(lambda z: gen_cross_entropy(z, target, **kw), (logits,), (v,))
    _, want = torch.func.jvp(lambda z: composed(z, target, **kw), (logits,), (v,))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if target.is_floating_point():
        vt = torch.randn_like(target)
        _, got = torch.func.jvp(lambda t: gen_cross_entropy(logits, t, **kw), (target,), (vt,))
        _, want = torch.func.jvp(lambda t: composed(logits, t, **kw), (target,), (vt,))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
