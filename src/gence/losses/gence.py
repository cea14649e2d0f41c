"""Generative Cross-Entropy (GenCE), a drop-in replacement for ``torch.nn.functional.cross_entropy``.

Zhan, Zhou, Shen, "Generative Cross-Entropy: A Strictly Proper Loss for Data-Efficient
Classification", arXiv 2604.06689 (2026).

For a batch B of n samples with log-probabilities ``l[i, k] = log_softmax(z_i)[k]``::

    S[k]    = logsumexp_{j in B} l[j, k]                      (a K-vector: the batch's class evidence)
    GenCE_i = -log( q(y_i|x_i) / sum_{j in B} q(y_i|x_j) ) = S[y_i] - l[i, y_i]

and with ``generative_weight`` lam in [0, 1]::

    L_i = CE_i + lam * log sum_j q(y_i|x_j) = -l[i, y_i] + lam * S[y_i]

(lam = 1: GenCE of the paper; lam = 0: cross-entropy). Soft targets ``t`` give
``L_i = sum_k w_k t[i, k] (lam * S[k] - l[i, k])``.

Implementation notes (why the code looks the way it does):

* The cost is O(nK) like softmax; no n-by-n tensor is ever formed.
* Everything runs in float32 or wider (fp16/bf16 logits are upcast; autocast is switched off inside).
* A hand-written backward. The forward turns the log-probabilities, in place, into
  ``U[j, k] = exp(l[j, k] - M[k])`` with ``M[k] = max_j l[j, k]``; ``U`` is the n-by-K tensor kept
  for backward (cross-entropy keeps one too: its log-softmax output; the input logits are also
  saved, by reference, for the higher-order path). Since ``p = U * exp(M)`` and
  ``exp(l - S) = U * exp(M - S)``, the whole gradient is ``U * (a - s outer b)`` plus the sparse
  cross-entropy term, with K-vectors ``a, b`` and an n-vector ``s``: no exponential in backward.
* Higher-order gradients are exact: when backward runs with a graph being built (``create_graph=True``,
  ``torch.func.grad``/``jacrev``/``hessian``) the same gradient is computed from the saved logits with
  differentiable operations, and autograd differentiates it again. Plain ``loss.backward()`` builds no
  graph (grad mode is off inside backward) and takes the fast path above.
* torch.func: the ``autograd.Function`` has the ``setup_context`` form and ``generate_vmap_rule``, the
  intermediates it saves are non-differentiable outputs, and eager calls have a ``jvp`` (forward mode).
* Traced calls (``torch.compile``, ``torch.export``, torch.func transforms) make no host
  synchronisation and no Python branch on a tensor value: the target range is checked on the device
  (``torch._assert_async``; under torch.func, which has no vmap rule for it, a bad class gives NaN),
  and the column shift ``M`` is always the column maximum. Eager CPU calls keep the host check (a
  ValueError) and skip the maximum when no column underflows.
* ``distributed=True`` gathers the K-vector ``S`` of every rank (all_gather) and all-reduces the
  K-vector of target mass in backward, so the gradient is the one of the concatenated global batch.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["gen_cross_entropy", "GenCELoss"]

_REDUCTIONS = ("none", "mean", "sum")
# Devices where target values are checked on the host (raising ValueError): a synchronisation is free
# there. Elsewhere the check runs on the device without stopping the stream.
_HOST_CHECKED_DEVICES = ("cpu",)


def _world_size(distributed: bool, process_group) -> int:
    if not distributed or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(process_group)


def _logsumexp_over_ranks(S_local: Tensor, process_group, world_size: int) -> Tensor:
    gathered = [torch.empty_like(S_local) for _ in range(world_size)]
    dist.all_gather(gathered, S_local.contiguous(), group=process_group)
    return torch.logsumexp(torch.stack(gathered), dim=0)


def _under_transform_or_trace() -> bool:
    """True while torch.compile/torch.export trace the call or a torch.func transform (grad, vmap, jacrev)
    runs it: then no host synchronisation and no Python branch on tensor values may happen.

    ``torch.compiler.is_compiling()`` is checked first so that dynamo never has to trace the functorch
    query (it is a constant True while compiling)."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


class _GenCEFunction(torch.autograd.Function):
    """Per-sample mixed GenCE terms for 2-D logits ``z`` (n, K).

    ``target`` is either class indices (n,) with ``ignored`` marking the rows not counted, or probabilities
    (n, K) (``soft=True``, every row counted). Returns ``(L, U, M, S)``: the n-vector of terms, and the
    intermediates the fast backward needs (returned as non-differentiable outputs, the form torch.func
    requires for saved intermediates). ``host_branch`` allows the CPU's free check for an underflowing
    column (a Python branch on a tensor value); traced, transformed and accelerator calls are branch-free.

    Backward has two paths. Without a graph being built (``loss.backward()``, grad mode off inside
    backward) it is the fast hand-written first-order gradient from ``U``. When a graph is being built
    (``create_graph=True``, ``torch.func`` transforms) it is the same gradient written with
    differentiable operations of the saved input ``z``, so higher-order derivatives are exact.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, target: Tensor, weight: Optional[Tensor], ignored: Optional[Tensor],
                options: tuple) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # options = (soft, eps, lam, host_branch, process_group, world_size), one argument because
        # Function.apply binds forward's signature with inspect on every call in the setup_context
        # form, at a cost that grows with the number of parameters.
        soft, eps, lam, host_branch, process_group, world_size = options
        n, K = z.shape
        l = torch.log_softmax(z, dim=1)  # the single n-by-K buffer, reused below for U
        w = weight
        if soft:
            t = target if eps == 0.0 else target * (1.0 - eps) + eps / K
            tw = t if w is None else t * w
            ce_terms = -(tw * l).sum(1)  # sum_k w_k t_ik (-l_ik)
        else:
            y = target
            l_y = l.gather(1, y.unsqueeze(1)).squeeze(1)
            w_y = None if w is None else w[y]
            ce_terms = l_y.neg() if w_y is None else -w_y * l_y
            if eps != 0.0:
                smooth = -(l.sum(1) if w is None else l @ w)  # -sum_k w_k l_ik
                ce_terms = (1.0 - eps) * ce_terms + (eps / K) * smooth

        # U = exp(l - M) over the counted rows, with M[k] a per-class shift, in place of l.
        # Since l <= 0, the shift M = 0 (U = p, the softmax) is safe unless a column's sum underflows:
        # a class with probability below ~1e-30 on every counted sample. On the CPU in eager mode that
        # is checked for free, and only then is the column maximum computed; elsewhere (a check would
        # cost a device synchronisation, or be a data-dependent branch in a traced graph) the maximum
        # is always used.
        M, U, Z = None, None, None
        if host_branch:
            U = l.exp_()
            if ignored is not None:
                U.masked_fill_(ignored.unsqueeze(1), 0.0)
            Z = U.sum(0)
            if bool((Z > 1e-30).all()):
                M = U.new_zeros(K)
            else:  # rare: recompute the log-probabilities that exp_ overwrote
                l = torch.log_softmax(z, dim=1)
        if M is None:
            if ignored is not None:
                l.masked_fill_(ignored.unsqueeze(1), -math.inf)
            # A column without counted rows has M = -inf; shifting it by 0 keeps U = 0 there.
            M = torch.nan_to_num(l.amax(dim=0), neginf=0.0) if n > 0 else l.new_zeros(K)
            U = l.sub_(M).exp_()
            Z = U.sum(0)
        S = M + Z.log_()  # -inf for a class with no counted rows
        if world_size > 1:
            S = _logsumexp_over_ranks(S, process_group, world_size)
        # Such a class carries no term of a counted sample unless smoothing puts mass on it; it then
        # contributes 0 rather than -inf (its U column is 0, so the gradient is unaffected).
        S = torch.nan_to_num(S, neginf=0.0)

        if lam != 0.0:
            if soft:
                reg = tw @ S
            else:
                S_y = S[y]
                reg = S_y if w_y is None else w_y * S_y
                if eps != 0.0:
                    S_w = S.sum() if w is None else S @ w
                    reg = (1.0 - eps) * reg + (eps / K) * S_w
            L = torch.add(ce_terms, reg, alpha=lam)
        else:
            L = ce_terms
        if ignored is not None:
            L = L.masked_fill(ignored, 0.0)
        return L, U, M, S

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z, target, weight, ignored, (soft, eps, lam, _, process_group, world_size) = inputs
        _, U, M, S = output
        ctx.mark_non_differentiable(U, M, S)
        # U, M and S never receive a gradient: do not let autograd fill an n-by-K tensor of zeros for U
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(z, target, weight, ignored, U, M, S)
        ctx.save_for_forward(z, target, weight, ignored)  # for the jvp of _GenCEFunctionWithJvp
        ctx.soft, ctx.eps, ctx.lam = soft, eps, lam
        ctx.process_group, ctx.world_size = process_group, world_size

    @staticmethod
    def backward(ctx, g: Tensor, _gU, _gM, _gS):
        if g is None:  # no gradient reached L (grads are not materialised)
            return (None,) * 5
        z, target, weight, ignored, U, M, S = ctx.saved_tensors
        builds_graph = torch.is_grad_enabled() or (
            not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active())
        if builds_graph:
            if ctx.world_size > 1:
                raise NotImplementedError(
                    "gen_cross_entropy(distributed=True) supports first-order gradients only; got a "
                    "backward that builds a graph (create_graph=True or a torch.func transform)")
            grad, grad_target = _differentiable_gradients(
                z, target, weight, ignored, ctx.soft, ctx.eps, ctx.lam, g,
                need_target=ctx.soft and ctx.needs_input_grad[1])
        else:
            grad, grad_target = _fast_gradients(ctx, z, target, weight, ignored, U, M, S, g)
        return grad, grad_target, None, None, None


class _GenCEFunctionWithJvp(_GenCEFunction):
    """:class:`_GenCEFunction` plus forward-mode AD (``torch.func.jvp``, ``jacfwd``, ``hessian``), for
    eager calls. Dynamo cannot trace an autograd.Function that defines ``jvp``, so compiled and exported
    calls use the base class."""

    @staticmethod
    def jvp(ctx, dz, dtarget, *_):
        """Forward-mode derivative (torch.func.jvp, jacfwd, hessian), written with differentiable ops."""
        z, target, weight, ignored = ctx.saved_tensors
        if ctx.world_size > 1:
            raise NotImplementedError("gen_cross_entropy(distributed=True) has no forward-mode derivative")
        terms = _batch_terms(z, target, weight, ignored, ctx.soft, ctx.eps)
        l, E, c = terms["l"], terms["E"], terms["c"]
        dL = None
        if dz is not None:
            dl = dz - (torch.exp(l) * dz).sum(1, keepdim=True)
            dS = (E * dl).sum(0)
            dL = (c * (ctx.lam * dS - dl)).sum(1)
        if ctx.soft and dtarget is not None:
            per_class = ctx.lam * terms["S"] - l
            if weight is not None:
                per_class = per_class * weight
            dL_t = (1.0 - ctx.eps) * (dtarget * per_class).sum(1)
            dL = dL_t if dL is None else dL + dL_t
        if ignored is not None and dL is not None:
            dL = torch.where(ignored, torch.zeros_like(dL), dL)
        return dL, None, None, None


class _GenCEEagerFunction(torch.autograd.Function):
    """The same Function in the ctx-first form, for eager calls outside torch.func transforms: there
    ``Function.apply`` does not bind forward's signature with ``inspect`` on every call (the
    setup_context form does), which is measurable at small sizes. torch.func needs the setup_context
    form, and dynamo cannot trace a ``jvp``: hence three entry points to one forward and backward."""

    @staticmethod
    def forward(ctx, z, target, weight, ignored, options):
        output = _GenCEFunction.forward(z, target, weight, ignored, options)
        _GenCEFunction.setup_context(ctx, (z, target, weight, ignored, options), output)
        return output

    backward = staticmethod(_GenCEFunction.backward)
    jvp = staticmethod(_GenCEFunctionWithJvp.jvp)


def _fast_gradients(ctx, z, target, weight, ignored, U, M, S, g):
    """First-order gradient from the forward's ``U``: in place, no exponential of an n-by-K tensor."""
    soft, eps, lam = ctx.soft, ctx.eps, ctx.lam
    n, K = U.shape
    if g.dtype != U.dtype:   # a no-op .to() still costs a dispatch
        g = g.to(U.dtype)
    w = weight
    if ignored is not None:
        g = g.masked_fill(ignored, 0.0)

    # c[i, k]: coefficient of (lam*S_k - l_ik) in L_i.  A_k = sum_i g_i c_ik (the batch's target
    # mass per class), gC_i = g_i sum_k c_ik (row mass of the cross-entropy part).
    if soft:
        t = target if eps == 0.0 else target * (1.0 - eps) + eps / K
        tw = t if w is None else t * w
        A = g @ tw
        gC = g * tw.sum(1)
    else:
        y = target
        gw = g if w is None else g * w[y]
        A = torch.zeros(K, dtype=U.dtype, device=U.device).index_add_(0, y, gw)
        gC = gw
        if eps != 0.0:
            ws = torch.ones(K, dtype=U.dtype, device=U.device) if w is None else w
            A = (1.0 - eps) * A + (eps / K) * g.sum() * ws
            gC = (1.0 - eps) * gw + (eps / K) * ws.sum() * g
    if ctx.world_size > 1 and lam != 0.0:
        dist.all_reduce(A, group=ctx.process_group)  # the global batch's target mass

    # dL/dl[j, k] = -g_j c_jk + lam * A_k * exp(l_jk - S_k); then through log_softmax:
    # dz_j = dl_j - p_j * sum_k dl_jk,  with p = U * exp(M) and exp(l - S) = U * exp(M - S).
    a = torch.exp(M - S).mul_(A)  # lam * A_k * exp(M_k - S_k)
    if lam != 1.0:   # x * 1.0 == x: one operation fewer for GenCE itself, the same bits
        a.mul_(lam)
    b = torch.exp(M)
    r = U @ a  # lam * sum_k A_k exp(l_jk - S_k)
    s = r - gC
    grad = torch.addr(a, s, b, alpha=-1.0).mul_(U)  # U * (a - s b)
    if soft:
        grad.sub_(g.unsqueeze(1) * tw)
    else:
        hard = gw if eps == 0.0 else (1.0 - eps) * gw
        grad.scatter_add_(1, y.unsqueeze(1), -hard.unsqueeze(1))
        if eps != 0.0:
            grad.addr_(g, ws, alpha=-eps / K)

    grad_target = None
    if soft and ctx.needs_input_grad[1]:
        per_class = (lam * S).unsqueeze(0) - torch.log_softmax(z, dim=1)
        if w is not None:
            per_class = per_class * w
        grad_target = (1.0 - eps) * g.unsqueeze(1) * per_class
    return grad, grad_target


def _batch_terms(z, target, weight, ignored, soft, eps) -> dict[str, Tensor]:
    """Differentiable pieces of the loss of 2-D logits ``z``: ``l = log_softmax(z)``, ``S`` (K-vector),
    ``E[j, k] = exp(l_jk - S_k)`` on counted rows (0 elsewhere) and the coefficients ``c[i, k]`` of
    ``(lam S_k - l_ik)`` in ``L_i``."""
    n, K = z.shape
    l = torch.log_softmax(z, dim=1)
    l_counted = l if ignored is None else l.masked_fill(ignored.unsqueeze(1), -math.inf)
    # S = M + log sum_j exp(l - M) is logsumexp for any constant M: a detached shift is exact at every
    # order. An empty column (no counted rows) has Z = 0; it gets S = 0 and E = 0, as in forward.
    M = torch.nan_to_num(l_counted.detach().amax(dim=0), neginf=0.0) if n > 0 else l.new_zeros(K)
    U = torch.exp(l_counted - M)
    Z = U.sum(0)
    Z_safe = torch.where(Z > 0, Z, torch.ones_like(Z))
    if soft:
        t = target if eps == 0.0 else target * (1.0 - eps) + eps / K
    else:
        onehot = (target.unsqueeze(1) == torch.arange(K, device=z.device)).to(z.dtype)
        t = onehot if eps == 0.0 else onehot * (1.0 - eps) + eps / K
    c = t if weight is None else t * weight
    return {"l": l, "S": M + torch.log(Z_safe), "E": U / Z_safe, "c": c}


def _differentiable_gradients(z, target, weight, ignored, soft, eps, lam, g, need_target):
    """The gradient of ``sum_i g_i L_i`` with respect to ``z`` (and soft ``target``), written with
    out-of-place differentiable operations of ``z``, so autograd can differentiate it again and
    torch.func can transform it.

    With ``gc[i, k] = g_i c_ik`` (see :func:`_batch_terms`): ``dL/dl = lam * A * E - gc`` with
    ``A = sum_i gc_i``, and ``dz_j = dl_j - p_j sum_k dl_jk``.
    """
    g = g.to(z.dtype)
    if ignored is not None:
        g = torch.where(ignored, torch.zeros_like(g), g)
    terms = _batch_terms(z, target, weight, ignored, soft, eps)
    l = terms["l"]
    gc = g.unsqueeze(1) * terms["c"]
    dl = lam * gc.sum(0) * terms["E"] - gc
    grad = dl - torch.exp(l) * dl.sum(1, keepdim=True)
    grad_target = None
    if need_target:
        per_class = lam * terms["S"] - l
        if weight is not None:
            per_class = per_class * weight
        grad_target = (1.0 - eps) * g.unsqueeze(1) * per_class
    return grad, grad_target


def _check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")
    return float(value)


def gen_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    generative_weight: float = 1.0,
    distributed: bool = False,
    process_group: Optional["dist.ProcessGroup"] = None,
) -> Tensor:
    r"""Generative cross-entropy, with the arguments and shapes of ``F.cross_entropy`` (those after
    ``weight`` keyword-only: ``F.cross_entropy``'s positional order has the deprecated ``size_average`` there).

    For the batch's log-probabilities ``l = log_softmax(input)`` and ``S[k] = logsumexp_j l[j, k]``
    over the counted samples j of the batch::

        L_i = w[y_i] * (lam * S[y_i] - l[i, y_i])                 (class-index targets)
        L_i = sum_k w[k] * t[i, k] * (lam * S[k] - l[i, k])      (probability targets t)

    where lam = ``generative_weight``. lam = 1 is GenCE, ``-log(q(y_i|x_i) / sum_j q(y_i|x_j))``, which
    is >= 0 and 0 for a batch of one; lam = 0 is exactly cross-entropy; in between it is
    ``(1 - lam) * CE + lam * GenCE`` up to a constant, strictly proper without any condition.

    The class marginal is estimated from the batch, so the loss depends on the whole batch: tiny batches
    give noisy estimates, gradient-accumulation micro-batches are separate batches, and under
    DistributedDataParallel ``distributed=True`` makes the batch the global one.

    Args:
        input: logits of shape (N, C), (C,) or (N, C, d1, ..., dk); every position of a k-dimensional
            input is a sample of one big batch. Computed in float32 (or float64) whatever its dtype.
        target: class indices of shape (N,), () or (N, d1, ..., dk), dtype int64, in [0, C) or equal
            to ``ignore_index``; or class probabilities of the input's shape (floating dtype).
        weight: optional (C,) class weights; weight the per-sample terms exactly as cross-entropy does
            (not the batch sums S).
        ignore_index: class-index targets equal to it take no part anywhere: neither as terms nor
            inside S. Probability targets accept only the default, as in PyTorch.
        reduction: ``'none'`` (the target's shape), ``'sum'``, or ``'mean'``: the sum divided by the sum
            of the weights of the counted samples (class-index targets) or by the number of samples
            (probability targets), as cross-entropy. A batch whose targets are all ignored gives NaN
            for ``'mean'`` and 0 for ``'sum'``, as cross-entropy does.
        label_smoothing: eps in [0, 1]: targets become ``(1 - eps) * onehot + eps / C``, applied to
            both terms.
        generative_weight: lam in [0, 1]; 1.0 = GenCE (default), 0.0 = cross-entropy.
        distributed: take S over the global batch of ``process_group`` (only K-vectors cross
            processes). With ``'mean'`` each rank returns ``world_size * local_sum / global_denominator``
            so that DistributedDataParallel's gradient averaging gives exactly the gradient of the
            global mean; the average of the returned values over ranks is the global mean loss. Without
            an initialised process group, or with world size 1, it is the local loss.
        process_group: the group for ``distributed`` (default: the world).

    Returns:
        The loss: a scalar, or per-sample values of the target's shape for ``reduction='none'``,
        in float32 (float64 for float64 input).

    Raises:
        ValueError: naming the argument, the value and what was expected, for a bad shape, dtype,
            ``weight``, ``label_smoothing``, ``generative_weight`` or ``reduction``, and for a target
            class outside [0, C) in an eager call on the CPU. On accelerators, and when compiled or
            exported, the class range is checked on the device without a host synchronisation: a bad
            class fails (asynchronously on accelerators) with a RuntimeError, as ``F.cross_entropy``'s
            device-side assert does. Under a torch.func transform (vmap, grad) a bad class makes the
            loss NaN.
        NotImplementedError: for higher-order or forward-mode derivatives with ``distributed=True``
            in a multi-process group.

    Gradients: exact to any order (double backward, gradient penalties, Hessian-vector products),
    torch.func ``grad``/``jacrev``/``jacfwd``/``hessian``/``vmap``, ``torch.compile(fullgraph=True)`` and
    ``torch.export``. Gradients flow to ``input`` and, for probability targets that require grad, to
    ``target``.
    """
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor of logits; got "
                         f"{type(input).__name__ if not isinstance(input, Tensor) else input.dtype}")
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a tensor; got {type(target).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")
    eps = _check_probability("label_smoothing", label_smoothing)
    lam = _check_probability("generative_weight", generative_weight)
    if input.dim() == 0:
        raise ValueError("input must have shape (C,), (N, C) or (N, C, d1, ...); got a 0-d tensor")

    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    C = x.shape[1]
    soft = target.is_floating_point()
    if soft:
        t = target.unsqueeze(0) if unbatched else target
        if t.shape != x.shape:
            raise ValueError(f"probability target must have the input's shape {tuple(input.shape)}; "
                             f"got {tuple(target.shape)}")
        if ignore_index != -100:
            raise ValueError(f"ignore_index={ignore_index} is not supported with probability targets "
                             f"(as in F.cross_entropy); expected the default -100")
    else:
        if target.dtype != torch.int64:
            raise ValueError(f"class-index target must have dtype torch.int64 (long); got {target.dtype}")
        t = target.unsqueeze(0) if unbatched else target
        expected = (x.shape[0],) + tuple(x.shape[2:])
        if tuple(t.shape) != expected:
            raise ValueError(f"target shape {tuple(target.shape)} does not match input shape "
                             f"{tuple(input.shape)}: expected {expected if not unbatched else ()}")
    if weight is not None:
        if not isinstance(weight, Tensor) or weight.dim() != 1 or weight.shape[0] != C \
                or not weight.is_floating_point():
            got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(f"weight must be a floating-point tensor of shape ({C},) (one per class); "
                             f"got {got}")

    dtype = torch.promote_types(x.dtype, torch.float32)
    # (N, C, d1, ...) -> (N * d1 * ..., C): every position is a sample of one big batch.
    z = x.movedim(1, -1).reshape(-1, C) if x.dim() > 2 else x
    with torch.autocast(device_type=z.device.type, enabled=False):
        if z.dtype != dtype:
            z = z.to(dtype)
        w = None if weight is None else weight.to(device=z.device, dtype=dtype)
        ignored = None   # class-index targets: True where a sample is not counted (ignore_index)
        poisoned = None
        traced = _under_transform_or_trace()
        host_checked = z.device.type in _HOST_CHECKED_DEVICES and not traced
        if soft:
            tt = (t.movedim(1, -1).reshape(-1, C) if t.dim() > 2 else t).to(dtype)
        else:
            tt = t.reshape(-1)
            if not host_checked:
                # No host synchronisation and no branch on values (accelerators, compile, export,
                # torch.func): mask every call and check the class range on the device. A bad class
                # fails asynchronously, as F.cross_entropy's device assert does; under a torch.func
                # transform (vmap has no rule for the assert) it makes its sample's loss NaN instead.
                # Few operations: on an accelerator each is a launch, and at training batch sizes the
                # loss's time is their host-side cost (`benchmarks/loss_speed.py --host-cost`).
                ignored = tt == ignore_index
                if traced and not torch.compiler.is_compiling():
                    poisoned = ~ignored & ((tt < 0) | (tt >= C))
                    tt = torch.where(ignored | poisoned, torch.zeros_like(tt), tt)
                else:
                    tt = tt.masked_fill(ignored, 0)
                    torch._assert_async((tt.clamp(0, C - 1) == tt).all(),
                                        f"gen_cross_entropy: target contains a class outside [0, {C}) "
                                        f"and not ignore_index={ignore_index}")
            else:
                # One cheap synchronisation: the common case (all targets in range, ignore_index outside
                # the classes) is settled by the extremes alone.
                lo, hi = torch.stack(torch.aminmax(tt)).tolist() if tt.numel() else (0, 0)
                if not (0 <= lo and hi < C) or 0 <= ignore_index < C:
                    valid = tt != ignore_index
                    bad = valid & ((tt < 0) | (tt >= C))
                    if bool(bad.any()):
                        value = tt[bad][0].item()
                        raise ValueError(f"target contains class {value}, outside [0, {C}) and not "
                                         f"ignore_index={ignore_index}")
                    if not bool(valid.all()):
                        ignored = ~valid
                        tt = tt.masked_fill(ignored, 0)
        world_size = _world_size(distributed, process_group)
        if torch.compiler.is_compiling():
            function = _GenCEFunction
        else:
            function = _GenCEFunctionWithJvp if traced else _GenCEEagerFunction
        options = (soft, eps, lam, host_checked, process_group, world_size)
        L = function.apply(z, tt, w, ignored, options)[0]
        if poisoned is not None:
            L = torch.where(poisoned, torch.full_like(L, math.nan), L)

        if reduction == "none":
            L = L.reshape((x.shape[0],) + tuple(x.shape[2:]))
            return L.squeeze(0) if unbatched else L
        total = L.sum()
        if reduction == "sum":
            return total
        if soft or (w is None and ignored is None):
            denominator = torch.tensor(float(L.numel()), dtype=dtype, device=z.device) \
                if world_size > 1 else float(L.numel())
        elif w is None:
            denominator = (L.numel() - ignored.sum()).to(dtype)
        else:
            w_y = w[tt]
            denominator = (w_y if ignored is None else w_y.masked_fill(ignored, 0.0)).sum()
        if world_size > 1:
            denominator = denominator.detach().clone()
            dist.all_reduce(denominator, group=process_group)
            return total * (world_size / denominator)
        return total / denominator


class GenCELoss(nn.Module):
    r"""Module form of :func:`gen_cross_entropy`; a drop-in for ``nn.CrossEntropyLoss``.

    ``L_i = w[y_i] * (lam * logsumexp_j log q(y_i|x_j) - log q(y_i|x_i))`` over the batch, lam =
    ``generative_weight`` (1 = GenCE, 0 = cross-entropy). See :func:`gen_cross_entropy` for every
    argument; ``weight`` is registered as a buffer so it follows ``.to(device)``. Every argument after
    ``weight`` is keyword-only: ``nn.CrossEntropyLoss``'s positional order puts the deprecated
    ``size_average`` second, so a positional call written for it would bind its values to other arguments.
    """

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        generative_weight: float = 1.0,
        distributed: bool = False,
        process_group: Optional["dist.ProcessGroup"] = None,
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = _check_probability("label_smoothing", label_smoothing)
        self.generative_weight = _check_probability("generative_weight", generative_weight)
        self.distributed = distributed
        self.process_group = process_group

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return gen_cross_entropy(
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing,
            generative_weight=self.generative_weight, distributed=self.distributed,
            process_group=self.process_group,
        )

    def extra_repr(self) -> str:
        return (f"generative_weight={self.generative_weight}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, "
                f"distributed={self.distributed}")
