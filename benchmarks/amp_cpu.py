"""Seconds per training step on this CPU in float32 and under bf16 autocast, and what ``amp=True`` does here.

    python benchmarks/amp_cpu.py [--threads 1] [--steps 5] [--repeats 3] [--models resnet8 small_cnn resnet20]

The study's models on their datasets' shapes (``resnet8`` and ``small_cnn`` on 1x28x28 Fashion-MNIST, ``resnet20``
on 3x32x32 CIFAR-10), random inputs (the speed does not depend on pixel values), batch 128, channels-last,
SGD with momentum and cross-entropy: one training step as the loop takes it. Per model, ``float32`` and
``bf16 autocast`` (``torch.autocast("cpu", torch.bfloat16)``, forced, whatever the CPU) are timed over
``--steps`` steps after two untimed ones, interleaved ``--repeats`` times; the median is reported, and the
ratio bf16 / float32 from the same process. The last line says what gence's ``amp=True`` does on this CPU
(:func:`gence.train.loop.amp_dtype`): bf16 autocast where oneDNN has bf16 kernels, float32 where it has none.

The first lines of the output say the command, the time, the commit and the hardware; stored outputs in
``results/benchmarks/`` are this output as printed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from _provenance import print_provenance
from gence.models import build as build_model
from gence.train.loop import amp_dtype, cpu_has_bf16_kernels, hardware_string

SHAPES = {"resnet8": (1, 28, 28), "small_cnn": (1, 28, 28), "resnet20": (3, 32, 32)}


def step_seconds(model_name: str, bf16: bool, steps: int, batch_size: int) -> float:
    """Mean seconds of one training step of ``model_name`` on random inputs, after two untimed steps."""
    channels, h, w = SHAPES[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, channels, 10, (h, w)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch_size, channels, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the study's workers use 1)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per (model, precision)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print_provenance(hardware_string("cpu"))
    print(f"batch {args.batch_size}, {args.steps} timed steps per measurement, {args.repeats} interleaved repeats, "
          f"random inputs")
    times: dict[tuple[str, bool], list[float]] = {(m, b): [] for m in args.models for b in (False, True)}
    for r in range(args.repeats):
        row = []
        for (name, bf16), out in times.items():
            out.append(step_seconds(name, bf16, args.steps, args.batch_size))
            row.append(f"{name} {'bf16' if bf16 else 'fp32'} {out[-1]:.3f} s")
        print(f"  repeat {r + 1}: " + ", ".join(row), flush=True)
    print()
    print(f"{'model':<12}{'float32 s/step':>16}{'bf16 s/step':>14}{'bf16 / float32':>16}")
    for name in args.models:
        fp32, bf16 = (statistics.median(times[(name, b)]) for b in (False, True))
        print(f"{name:<12}{fp32:>16.3f}{bf16:>14.3f}{bf16 / fp32:>15.2f}x")
    dtype = amp_dtype(torch.device("cpu"))
    print(f"oneDNN bf16 kernels on this CPU: {'yes' if cpu_has_bf16_kernels() else 'no'}; gence's amp=True here: "
          + ("bf16 autocast" if dtype is not None else "float32 (bf16 autocast would be the slow choice)"))


if __name__ == "__main__":
    main()
