"""GenCE with ``distributed=True``: two ranks with different data, batch sizes and class mixes. The
parameter gradients after DDP's averaging must equal the single-process gradients of the same loss on
the concatenated batch.

Two worlds run the same checks:

* a simulated one: two threads whose collectives (``all_gather``, ``all_reduce``) meet at a barrier,
  patched into :mod:`gence.losses.gence`, with DDP's averaging done by hand (mean of the rank
  gradients). It needs no network, so it runs everywhere;
* a real one: two processes, gloo, ``DistributedDataParallel``. gloo needs TCP on loopback; on a
  machine where the process group cannot even be set up (sandboxed network) that test is skipped with
  the reason, and any failure after the group is up fails it.
"""
from __future__ import annotations

import datetime
import os
import threading

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gence.losses.gence as gence_module
from gence import gen_cross_entropy

WORLD = 2
K = 6
DIM = 5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(DIM, 8), torch.nn.Tanh(), torch.nn.Linear(8, K)).double()


def _rank_data(rank: int):
    # rank 0: 7 samples of classes 0-2 (one ignored); rank 1: 12 samples of classes 2-5
    g = torch.Generator().manual_seed(100 + rank)
    n = 7 if rank == 0 else 12
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64) + rank
    y = torch.randint(0, 3, (n,), generator=g) if rank == 0 else torch.randint(2, K, (n,), generator=g)
    if rank == 0:
        y[4] = -100
    return x, y


WEIGHT = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.5, 0.8], dtype=torch.float64)
SETTINGS = {
    "mean": dict(reduction="mean"),
    "mean_weight_smoothing_lam": dict(reduction="mean", weight=WEIGHT, label_smoothing=0.1,
                                      generative_weight=0.6),
    "sum": dict(reduction="sum"),
}


def _rank_results(rank: int, model: torch.nn.Module, world_loss_values) -> dict:
    """Per setting: the parameter gradients of ``model`` and the loss value of every rank."""
    x, y = _rank_data(rank)
    out = {}
    for name, kw in SETTINGS.items():
        model.zero_grad()
        loss = gen_cross_entropy(model(x), y, distributed=True, **kw)
        loss.backward()
        out[name] = ([p.grad.clone() for p in model.parameters()], world_loss_values(loss.detach()))
    return out


# ---- the simulated world: threads meeting at a barrier ------------------------------------------

class _ThreadWorld:
    """Just the collectives the loss uses, for ``WORLD`` threads of one process."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots: list = [None] * size
        self.local = threading.local()

    def _exchange(self, tensor: torch.Tensor) -> list:
        self.slots[self.local.rank] = tensor.detach().clone()
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before all have read it
        return values

    def all_gather(self, out: list, tensor: torch.Tensor, group=None) -> None:
        assert len(out) == self.size
        for dst, value in zip(out, self._exchange(tensor)):
            dst.copy_(value)

    def all_reduce(self, tensor: torch.Tensor, group=None) -> None:
        tensor.copy_(torch.stack(self._exchange(tensor)).sum(0))


@pytest.fixture(scope="module")
def simulated_results():
    world = _ThreadWorld(WORLD)
    patch = pytest.MonkeyPatch()
    patch.setattr(gence_module.dist, "is_initialized", lambda: True)
    patch.setattr(gence_module.dist, "get_world_size", lambda group=None: world.size)
    patch.setattr(gence_module.dist, "all_gather", world.all_gather)
    patch.setattr(gence_module.dist, "all_reduce", world.all_reduce)
    results: list = [None] * WORLD
    errors: list = []
    models = [_model() for _ in range(WORLD)]  # here: the global RNG is not to be shared by threads

    def run(rank: int) -> None:
        world.local.rank = rank
        try:
            results[rank] = _rank_results(rank, models[rank], lambda v: torch.stack(world._exchange(v)))
        except BaseException as exc:  # reported below; a dead thread would hang the other at the barrier
            errors.append(exc)
            world.barrier.abort()

    try:
        threads = [threading.Thread(target=run, args=(r,)) for r in range(WORLD)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        patch.undo()
    if errors:
        raise errors[0]
    # DistributedDataParallel all-reduces the gradients and divides by the world size
    for name in SETTINGS:
        mean_grads = [torch.stack(g).mean(0) for g in zip(*(results[r][name][0] for r in range(WORLD)))]
        for r in range(WORLD):
            results[r][name] = (mean_grads, results[r][name][1])
    return results


# ---- the real world: two processes, gloo, DistributedDataParallel ---------------------------------

def _worker(rank: int, init_file: str, result_dir: str) -> None:
    if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback, not whatever the hostname resolves to
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                                timeout=datetime.timedelta(seconds=60))
    except Exception as exc:  # the machine cannot run gloo: say why, and let the fixture skip
        with open(os.path.join(result_dir, f"rank{rank}.no_gloo"), "w") as f:
            f.write(f"{type(exc).__name__}: {exc}")
        return
    open(os.path.join(result_dir, f"rank{rank}.up"), "w").close()
    try:
        torch.set_num_threads(1)
        model = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)

        def gather(value):
            values = [torch.zeros((), dtype=torch.float64) for _ in range(WORLD)]
            dist.all_gather(values, value)
            return torch.stack(values)

        out = _rank_results(rank, ddp, gather)
        # DDP hooks write the averaged gradients into the wrapped model's parameters
        torch.save(out, os.path.join(result_dir, f"rank{rank}.pt"))
        dist.barrier()  # nobody tears the group down while a peer still talks to it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_worker, args=(str(tmp / "rendezvous"), str(tmp)), nprocs=WORLD, join=True)
    except mp.ProcessExitedException as exc:
        # killed by a signal (gloo aborts on socket errors in C++, uncatchable in Python)
        if not all((tmp / f"rank{r}.up").exists() for r in range(WORLD)):
            pytest.skip(f"gloo could not set up a process group on this machine ({exc}, in "
                        "init_process_group); the simulated world covers the same checks")
        if not all((tmp / f"rank{r}.pt").exists() for r in range(WORLD)):
            raise
        # every rank stored its results: a crash in teardown says nothing about the loss
    reasons = sorted(p.read_text() for p in tmp.glob("*.no_gloo"))
    if reasons:
        pytest.skip(f"gloo could not set up a process group on this machine: {reasons[0]}")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(params=["simulated", "gloo"])
def ddp_results(request):
    return request.getfixturevalue(f"{request.param}_results")


def _single_process(kw):
    model = _model()
    data = [_rank_data(r) for r in range(WORLD)]
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    loss = gen_cross_entropy(model(x), y, **kw)
    loss.backward()
    return [p.grad for p in model.parameters()], loss.detach()


@pytest.mark.parametrize("name", ["mean", "mean_weight_smoothing_lam"])
def test_ddp_gradient_equals_single_process_gradient_on_concatenated_batch(ddp_results, name):
    want_grads, want_loss = _single_process(SETTINGS[name])
    for rank in range(WORLD):
        grads, losses = ddp_results[rank][name]
        for got, want in zip(grads, want_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # the mean of the per-rank values is the global loss
        torch.testing.assert_close(losses.mean(), want_loss, rtol=1e-10, atol=1e-10)


def test_ddp_sum_is_the_global_sum_averaged_like_cross_entropy(ddp_results):
    # reduction="sum" returns each rank's local sum (with the global S); DDP averages gradients, so the
    # gradient is that of (global sum) / world size, exactly what F.cross_entropy(reduction="sum") gets.
    want_grads, want_loss = _single_process(SETTINGS["sum"])
    grads, losses = ddp_results[0]["sum"]
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want / WORLD, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses.sum(), want_loss, rtol=1e-10, atol=1e-10)


def test_local_loss_differs_from_global_so_the_test_can_fail():
    # Guard: if the gather were dropped, each rank would use its local S; make sure that is different.
    model = _model()
    x, y = _rank_data(1)
    local = gen_cross_entropy(model(x), y)
    _, global_loss = _single_process(SETTINGS["mean"])
    assert abs(local.item() - global_loss.item()) > 1e-3
