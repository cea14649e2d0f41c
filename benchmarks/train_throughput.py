"""Training images per second: gence's loop against a conventional DataLoader pipeline, in one process.

    python benchmarks/train_throughput.py [--data-dir DIR] [--device cpu|cuda|auto] [--threads N]
                                          [--epochs 2] [--repeats 3] [--workers 0 2]

Same model (ResNet-20), same 1,000 CIFAR-10 training images (100 per class, seed 0), same batch size (128),
same optimiser, learning-rate schedule and loss (SGD + Nesterov, warm-up + cosine, cross-entropy), same
augmentation (random crop with 4 pixels of padding + horizontal flip). Without ``--data-dir``, random
uint8 images of the same shape stand in (said in the output): the speed does not depend on pixel values.

Pipelines, each timed over ``--epochs`` epochs, interleaved (A, B, C, A, B, C, ...) ``--repeats`` times so
that machine load shifts all of them alike; the median is reported:

* ``dataloader wN``: the conventional pipeline: a ``torch.utils.data.Dataset`` of HWC uint8 images whose
  ``__getitem__`` does what torchvision's ``RandomCrop(32, padding=4, padding_mode="reflect")``,
  ``RandomHorizontalFlip()``, ``ToTensor()`` and ``Normalize`` do, with numpy and PIL, one image at a time,
  a ``DataLoader`` (shuffle, ``num_workers=N``) collating batches, NCHW float32 model (PyTorch's default
  layout), batches moved to the device per step;
* ``gence loop``: ``gence.train.loop.train_epochs``, the training phase of ``fit``: the subset lives on the
  device, one shuffle per epoch, batched crop/flip (reflect padding, as above) on the device, channels-last,
  float32;
* ``steps only``: the same model, optimiser and schedule stepping through batches cropped and flipped once,
  before the timing, already on the device in channels-last layout: no data work at all. No data pipeline
  can beat it with this model, layout and precision; ``gence loop / steps only`` says how close the loop
  comes, and ``steps only / dataloader`` is the most any pipeline feeding a channels-last model could
  gain over the conventional one;
* ``dataloader w0 amp`` and ``gence loop amp``: the same with mixed precision (``amp=True``: bf16 autocast
  on CPU, fp16 + GradScaler on CUDA) on both sides, so the gain of mixed precision is not credited to the
  loop; ``vs best DL`` compares with the best float32 DataLoader run;
* ``dataloader w0 zero-pad``: the conventional pipeline with zero padding (torchvision's default fill), for
  reference: not the loop's augmentation;
* ``dataloader w0 compile`` and ``gence loop compile`` (with ``--compile``): both with ``torch.compile``
  (float32); compilation happens in the untimed warm-up run.

The first lines of the output say the command, the time, the commit and the hardware; stored outputs in
``results/benchmarks/`` are this output as printed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from _provenance import print_provenance
from gence.data import ArrayDataset, iterate_batches, load_dataset, random_crop_flip, split_indices
from gence.losses import build as build_loss
from gence.models import build as build_model
from gence.train.loop import TrainConfig, autocast, hardware, learning_rate, resolve_device, train_epochs


class CropFlipImages(torch.utils.data.Dataset):
    """Per-image augmentation, as torchvision's CIFAR transform stack does it for PIL images: reflect
    padding with numpy (what ``RandomCrop(padding_mode="reflect")`` does) or zero padding with PIL
    (``RandomCrop(padding=4)``, the default fill), then crop and flip with PIL."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean, std, pad: int = 4,
                 padding_mode: str = "reflect"):
        self.images, self.labels, self.pad, self.padding_mode = images_hwc, labels, pad, padding_mode
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        h, w = self.images[i].shape[:2]
        p = self.pad                                                # RandomCrop(32, padding=4, padding_mode=...)
        if self.padding_mode == "reflect":
            img = Image.fromarray(np.pad(self.images[i], ((p, p), (p, p), (0, 0)), mode="reflect"))
        else:
            img = ImageOps.expand(Image.fromarray(self.images[i]), border=p, fill=0)
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        img = img.crop((dx, dy, dx + w, dy + h))
        if torch.rand(()) < 0.5:                                    # RandomHorizontalFlip()
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)  # ToTensor()
        return (x - self.mean) / self.std, int(self.labels[i])     # Normalize(mean, std)


def conventional_epochs(model, loader, config: TrainConfig, device: torch.device) -> None:
    """The textbook loop over a DataLoader, with the same optimiser, per-step schedule and (with
    ``config.amp`` / ``config.compile``) the same mixed precision / ``torch.compile`` as gence's."""
    steps_per_epoch = len(loader)
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    forward = torch.compile(model) if config.compile else model
    model.train()
    for epoch in range(config.epochs):
        for step, (xb, yb) in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch * steps_per_epoch + step, total, config.lr, warmup, config.schedule)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with autocast(device, config.amp):
                loss = F.cross_entropy(forward(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"conventional pipeline: loss {float(loss)} in epoch {epoch}")


def load_subset(data_dir: str | None, n_per_class: int) -> tuple[ArrayDataset, torch.Tensor, torch.Tensor, str]:
    if data_dir:
        ds = load_dataset("cifar10", data_dir)
        idx, _ = split_indices(ds.train_y, f"balanced:{n_per_class}", n_val_per_class=0, seed=0,
                               num_classes=ds.num_classes)
        idx = torch.from_numpy(idx)
        return ds, ds.train_x[idx], ds.train_y[idx], f"CIFAR-10 from {data_dir}"
    g = torch.Generator().manual_seed(0)
    n = 10 * n_per_class
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    ds = ArrayDataset(name="random", train_x=x, train_y=y, test_x=x[:0], test_y=y[:0], num_classes=10,
                      classes=[str(k) for k in range(10)], image_shape=(3, 32, 32))
    return ds, x, y, "RANDOM uint8 images of CIFAR-10's shape (no --data-dir given)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="CIFAR-10 folder or archive; random images of the same shape if absent")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--n-per-class", type=int, default=100, help="training images per class (10 classes)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-amp", action="store_true", help="skip the mixed-precision runs (DataLoader and loop)")
    parser.add_argument("--compile", action="store_true", help="also time the loop with torch.compile (float32)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ds, x_u8, y, what = load_subset(args.data_dir, args.n_per_class)
    n = len(y)
    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=0.1,
                         warmup_epochs=0.5, device=str(device), augment=True)
    loss_fn = build_loss("ce", 10)

    # Inputs of each pipeline, prepared once, outside the timings.
    x_device = ds.normalize(x_u8.to(device))
    y_device = y.to(device)
    images_hwc = x_u8.permute(0, 2, 3, 1).contiguous().numpy()
    mean, std = ds.mean.tolist(), ds.std.tolist()

    def fresh_model():
        torch.manual_seed(0)
        return build_model(args.model, 3, 10, 32).to(device)

    def run_loop(amp: bool, compile: bool = False):
        def run(epochs: int):
            cfg = TrainConfig(**{**config.to_dict(), "amp": amp, "compile": compile, "epochs": epochs})
            train_epochs(fresh_model(), loss_fn, x_device, y_device, cfg, device, augment=True, progress=False)
        return run

    def run_dataloader(workers: int, amp: bool = False, compile: bool = False, padding_mode: str = "reflect"):
        def run(epochs: int):
            dataset = CropFlipImages(images_hwc, y.numpy(), mean, std, padding_mode=padding_mode)
            loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                                 num_workers=workers, pin_memory=device.type == "cuda")
            cfg = TrainConfig(**{**config.to_dict(), "amp": amp, "compile": compile, "epochs": epochs})
            conventional_epochs(fresh_model(), loader, cfg, device)
        return run

    # The ceiling: one epoch's batches, shuffled, cropped and flipped once, resident in the loop's layout.
    g = torch.Generator(device=device).manual_seed(0)
    resident = [(random_crop_flip(xb, generator=g).contiguous(memory_format=torch.channels_last), yb)
                for xb, yb in iterate_batches(x_device, y_device, args.batch_size, generator=g)]

    def run_steps_only(epochs: int):
        cfg = TrainConfig(**{**config.to_dict(), "epochs": epochs})
        conventional_epochs(fresh_model().to(memory_format=torch.channels_last), resident, cfg, device)

    first = args.workers[0]
    w0 = f"dataloader w{first}"
    pipelines = {f"dataloader w{w}": run_dataloader(w) for w in args.workers}
    pipelines[f"{w0} zero-pad"] = run_dataloader(first, padding_mode="zeros")
    pipelines["gence loop"] = run_loop(False)
    pipelines["steps only"] = run_steps_only
    if args.compile:  # on both sides too
        pipelines[f"{w0} compile"] = run_dataloader(first, compile=True)
        pipelines["gence loop compile"] = run_loop(False, compile=True)
    if not args.no_amp:  # mixed precision on both sides, so that its gain is not credited to the loop
        pipelines[f"{w0} amp"] = run_dataloader(first, amp=True)
        pipelines["gence loop amp"] = run_loop(True)

    print_provenance(hardware(device))
    print(f"data: {what}; {n} training images, batch {args.batch_size}, {args.model}, {args.epochs} epochs per run, "
          f"{args.repeats} interleaved repeats")
    # Warm-up: one short run of each (allocator, oneDNN/cuDNN kernel choice), not timed.
    for run in pipelines.values():
        run(1)
    seconds = {name: [] for name in pipelines}
    for r in range(args.repeats):
        for name, run in pipelines.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            run(args.epochs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append(time.perf_counter() - start)
        print(f"  repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()), flush=True)

    rate = {name: args.epochs * n / statistics.median(s) for name, s in seconds.items()}
    baseline = rate[w0]
    best_conventional = max(rate[f"dataloader w{w}"] for w in args.workers)
    print(f"\n{'pipeline':24}{'images/s':>10}{'vs ' + w0[-2:]:>10}{'vs best DL':>12}")
    for name, v in rate.items():
        print(f"{name:24}{v:10.0f}{v / baseline:9.2f}x{v / best_conventional:11.2f}x")
    print("\ngence loop / conventional DataLoader pipeline, the same settings on both sides:")
    print(f"  float32:               {rate['gence loop'] / baseline:.2f}x   (against the zero-padding DataLoader, "
          f"which is not the loop's augmentation: {rate['gence loop'] / rate[w0 + ' zero-pad']:.2f}x)")
    if "gence loop compile" in rate:
        print(f"  float32, compiled:     {rate['gence loop compile'] / rate[w0 + ' compile']:.2f}x")
    if "gence loop amp" in rate:
        print(f"  mixed precision:       {rate['gence loop amp'] / rate[w0 + ' amp']:.2f}x")
    print(f"ceiling: steps only / {w0} = {rate['steps only'] / baseline:.2f}x (the most any data pipeline feeding "
          f"a channels-last float32 model could gain); gence loop / steps only = "
          f"{rate['gence loop'] / rate['steps only']:.2f}x")
    faster = [f"{k.removeprefix('gence loop ')} {rate[k] / baseline:.2f}x" for k in rate if k.startswith("gence loop ")]
    if faster:
        print(f"the loop with its speed options against the textbook float32 {w0}: " + ", ".join(faster))


if __name__ == "__main__":
    main()
