"""GenCE under DistributedDataParallel: two CPU processes (gloo), different data, batch sizes and class
mixes on each rank. The parameter gradients after DDP's averaging must equal the single-process
gradients of the same loss on the concatenated batch."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = torch.nn.parallel.DistributedDataParallel(_model())
        x, y = _rank_data(rank)
        out = {}
        for name, kw in SETTINGS.items():
            model.zero_grad()
            loss = gen_cross_entropy(model(x), y, distributed=True, **kw)
            loss.backward()
            values = [torch.zeros((), dtype=torch.float64) for _ in range(WORLD)]
            dist.all_gather(values, loss.detach())
            out[name] = ([p.grad.clone() for p in model.parameters()], torch.stack(values))
        torch.save(out, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "rendezvous"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


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
