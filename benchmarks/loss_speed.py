"""Speed of GenCE against F.cross_entropy, as ratios measured in one process.

    python benchmarks/loss_speed.py [--repeats 30] [--device cpu|cuda|all] [--threads N]
    python benchmarks/loss_speed.py --host-cost [--repeats 300] [--threads 1]

For each setting the candidates run interleaved (A, B, C, A, B, C, ...) and the median time of each is
divided by the median time of F.cross_entropy measured in the same rounds, so machine load shifts all of
them alike. Reported:

* loss only, forward + backward, at (batch, classes) = (4096, 1000) and (1024, 100): GenCE (the hand-
  written backward), and for reference the plain autograd composition of log_softmax and logsumexp;
* the same loss-only settings under ``torch.compile`` (default inductor backend, ``fullgraph=True``):
  compiled GenCE against compiled ``F.cross_entropy``, the ratio being to the compiled cross-entropy;
* one training step (forward, backward, SGD step) of the small CNN at batch 128 on 3x32x32 inputs;
* ``--host-cost`` (alone): the host-side cost of one forward + backward at a training step's size
  (n=128, K=10) on the CPU, for the path a GPU takes (every call masked, the class range checked on the
  device; forced here by emptying ``_HOST_CHECKED_DEVICES``) beside the CPU's own path. At that size the
  arithmetic is a few microseconds, so the time is what the host spends issuing the operations (on a
  GPU, one launch each), which bounds the loss on a GPU at training batch sizes. A proxy, measurable
  without a GPU; ``results/benchmarks/loss_speed_cuda_h200.txt`` is the one GPU measurement.

``--threads`` sets ``torch.set_num_threads`` (default: torch's choice). On a loaded shared CPU, two
threads measure thread contention more than the loss: a loss of many small operations (GenCE at
(1024, 100)) waits for a descheduled worker thread at each of them; one thread avoids that.

The first lines of the output say the command, the time, the commit and the hardware; stored outputs in
``results/benchmarks/`` are this output as printed.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from _provenance import print_provenance
import gence.losses.gence as gence_module
from gence import gen_cross_entropy
from gence.models import build as build_model


def composed_gence(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GenCE by autograd composition, the obvious way: the reference the custom backward must beat."""
    logp = F.log_softmax(logits.float(), dim=1)
    S = torch.logsumexp(logp, dim=0)
    return (S[target] - logp.gather(1, target[:, None]).squeeze(1)).mean()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device,
                        warmup: int = 3) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def time_losses(n: int, k: int, device: torch.device, losses: dict[str, Callable], repeats: int,
                warmup: int = 3) -> dict[str, float]:
    """Median forward + backward time of each loss on the same (n, k) logits and targets, interleaved."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(n, k, generator=gen).mul_(3).to(device).requires_grad_()
    target = torch.randint(0, k, (n,), generator=gen).to(device)

    def step(loss_fn):
        def run():
            logits.grad = None
            loss_fn(logits, target).backward()
        return run

    return interleaved_medians({name: step(fn) for name, fn in losses.items()}, repeats, device, warmup)


def loss_only(n: int, k: int, device: torch.device, repeats: int, compiled: bool = False) -> dict[str, float]:
    if compiled:
        return time_losses(n, k, device, {
            "cross_entropy": torch.compile(F.cross_entropy, fullgraph=True),
            "gence": torch.compile(gen_cross_entropy, fullgraph=True),
        }, repeats)
    return time_losses(n, k, device, {
        "cross_entropy": F.cross_entropy,
        "gence": gen_cross_entropy,
        "gence_composed": composed_gence,
    }, repeats)


def accelerator_path(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GenCE on the CPU by the path an accelerator takes (no host-side target check, always masked)."""
    saved = gence_module._HOST_CHECKED_DEVICES
    gence_module._HOST_CHECKED_DEVICES = ()
    try:
        return gen_cross_entropy(logits, target)
    finally:
        gence_module._HOST_CHECKED_DEVICES = saved


def host_cost(n: int, k: int, repeats: int) -> dict[str, float]:
    """Loss forward + backward on the CPU at a size where the arithmetic is negligible (see the docstring)."""
    return time_losses(n, k, torch.device("cpu"), {
        "cross_entropy": F.cross_entropy,
        "gence (accelerator path)": accelerator_path,
        "gence (cpu path)": gen_cross_entropy,
        "gence_composed": composed_gence,
    }, repeats, warmup=20)


def train_step(device: torch.device, repeats: int, batch: int = 128) -> dict[str, float]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=3, num_classes=10, image_size=32).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(loss_fn):
        def run():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        return run

    return interleaved_medians({"cross_entropy": step(F.cross_entropy),
                                "gence": step(gen_cross_entropy)}, repeats, device)


def report(title: str, medians: dict[str, float]) -> None:
    base = medians["cross_entropy"]
    parts = ", ".join(f"{name} {medians[name] / base:.2f}x" for name in medians if name != "cross_entropy")
    print(f"{title:<44} cross_entropy {base * 1e3:8.3f} ms | {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--host-cost", action="store_true",
                        help="only the host-cost rows (CPU; what bounds the loss on a GPU at training sizes)")
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads={args.threads} is not valid; expected an int >= 1")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} is not valid; expected an int >= 1")
    devices = []
    if args.device in ("cpu", "all") and not args.host_cost:
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available() and not args.host_cost:
        devices.append(torch.device("cuda"))
    print_provenance(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
                     f"CUDA {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
    print("ratios are median time / median time of F.cross_entropy in the same interleaved rounds "
          "(compiled rows: of the compiled F.cross_entropy)")
    if args.host_cost:
        for n, k in [(128, 10), (8, 4)]:
            report(f"[cpu] host cost fwd+bwd n={n} K={k}", host_cost(n, k, args.repeats))
    for device in devices:
        for n, k in [(4096, 1000), (1024, 100)]:
            report(f"[{device.type}] loss fwd+bwd n={n} K={k}", loss_only(n, k, device, args.repeats))
        for n, k in [(4096, 1000), (1024, 100)]:
            report(f"[{device.type}] compiled loss fwd+bwd n={n} K={k}",
                   loss_only(n, k, device, args.repeats, compiled=True))
        report(f"[{device.type}] small_cnn train step, batch 128", train_step(device, args.repeats))


if __name__ == "__main__":
    main()
