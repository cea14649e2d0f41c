"""The one training loop: data on the device, SGD (or Adam) with warm-up and cosine/step decay, evaluation.

The run's config (:class:`TrainConfig`), its key and the names of the metrics it produces are the run
contract, :mod:`gence.contract`; this module trains and evaluates one such config.

Read top to bottom, ``fit`` does this:

1. Load the dataset, draw the regime's training subset and a disjoint validation split (seeded), and put
   the training subset on the device as one standardised float tensor (airbench style).
2. Build the model and the loss by name; the loss gets the drawn subset's class counts.
3. Each epoch: ``loss.on_epoch_start(epoch, epochs)``, one device-side shuffle, batches sliced from it,
   batched random crop + flip when augmenting, one optimizer step per batch with the learning rate set per
   step (``optimizer``: SGD with momentum, the default, or Adam).
4. Evaluate: logits on validation, test and OOD sets (eval mode, batched, no grad); fit a temperature on
   validation; compute every metric before and after temperature scaling.

Conventions (where the issue left a choice):

- Batches: ``ceil(n_train / batch_size)`` steps per epoch, the last batch smaller (no drop_last), so every
  training image is seen once per epoch; in small-data regimes dropping it would discard up to a quarter.
  ``drop_last=True`` drops it (each batch then has ``batch_size`` samples, which GenCE's per-batch class
  marginal may want); ``steps=N`` trains exactly N steps instead of ``epochs`` epochs (the schedule spans
  N, the last epoch is cut short). See :func:`step_plan`.
- Learning rate, per step s of T = epochs * steps_per_epoch, with W = round(warmup_epochs * steps_per_epoch):
  warm-up ``lr * (s + 1) / W`` for s < W, then cosine ``lr * (1 + cos(pi * (s - W) / (T - W))) / 2``, or
  step: ``lr``, times 0.1 from 50% and 0.01 from 75% of T (see :func:`learning_rate`).
- Determinism: ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN deterministic and not
  benchmarking, for the duration of ``fit`` only (the previous settings are restored). On the CPU this
  costs nothing measurable; on CUDA it picks deterministic convolution algorithms.
- Memory layout: image batches and the model are channels-last (NHWC), the layout oneDNN and cuDNN
  convolutions prefer: about 1.2x faster on a CPU for ResNet-20, same math.
- Mixed precision (``amp=True``, a speed option): float16 autocast with a GradScaler on CUDA; bf16 autocast
  on a CPU whose oneDNN has bf16 kernels (x86 with AVX-512, Arm with bf16); float32 on one without (x86 with
  AVX2 only), where bf16 autocast runs 9-11x slower than float32 (results/benchmarks/amp_cpu_avx2.txt), with
  a warning; ``extras["precision"]`` says which (see :func:`amp_dtype`). Losses compute in float32 anyway.
- Non-finite loss: checked once per epoch (one device sync per epoch, not per step), reporting the first
  bad step; raises :class:`NonFiniteLossError`.
- ``n_val_per_class=0``: no validation split; ``val/*`` and ``val_ts/*`` are NaN and the temperature is 1.
- Many/medium/few groups (``test/acc_*``, always reported): a class is "many" with more than ``many``
  training images and "few" with fewer than ``few``. The standard thresholds 100 and 20 (Liu et al. 2019)
  were set for n_max = 500 (CIFAR-100-LT); for smaller n_max both scale by n_max / 500, so the groups keep
  the same proportions of the head count (see :func:`group_thresholds`).
- OOD metrics use the test split as in-distribution and the logits before temperature scaling.
- Checkpoints (``fit(config, checkpoint=PATH)``, ``gence train --checkpoint PATH``, and the experiment
  runner for every run): at the end of an epoch, when :data:`CHECKPOINT_SECONDS` (60 s) of training have
  passed since the last save, and after the last epoch, the whole training state (model, optimiser,
  GradScaler, the loop's generator and the global RNG, history, training seconds so far) is written to
  PATH, atomically (temporary file, then rename). A kill loses at most about a minute of training plus
  one epoch, and saving a WideResNet-28-10 (~0.3 GB with momentum) does not happen every few seconds. A
  run started again with the same PATH goes on after the last saved epoch, and gives the same metrics as
  a run never stopped (same machine). A checkpoint of another run (another run key; ``data_dir`` and
  ``device`` may differ) raises ValueError; one written on another device type is ignored with a
  warning (its random streams cannot carry over); one written on other hardware of the same type (another
  :func:`hardware_string`: CPU capability, GPU, thread count) is resumed with a warning that the numbers may
  match neither machine's uninterrupted run bit for bit. ``fit`` leaves the file in place.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import random
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gence import data as datasets
from gence import losses, metrics, models
from gence.calibration import fit_temperature
from gence.contract import (CURVE_METRICS, FIT_METRICS, GROUPS, KEY_EXCLUDED_FIELDS, OOD_SCORES, SCHEDULES,
                            SPLIT_METRICS, TEMPERATURE, TRAIN_METRICS, TrainConfig, cpu_hardware, group_key, ood_key,
                            run_key, split_key)

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "SCHEDULES", "fit", "train_epochs", "evaluate_model",
           "learning_rate", "step_plan", "StepPlan", "make_optimizer", "group_thresholds", "predict",
           "amp_dtype", "precision"]

@dataclass
class TrainResult:
    """What ``fit`` returns. ``metrics`` and ``extras`` are JSON-able; the logits are for callers that
    want more (plots, ensembles) and are not meant for the results database."""

    metrics: dict[str, float]
    extras: dict[str, Any]
    config: dict[str, Any]
    test_logits: torch.Tensor
    test_labels: torch.Tensor


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; ``epoch`` and ``step`` count from 0."""

    def __init__(self, value: float, epoch: int, step: int, epochs: int, steps_per_epoch: int, lr: float):
        self.value, self.epoch, self.step = value, epoch, step
        super().__init__(
            f"training loss is {value} at epoch {epoch}, step {step} (both counted from 0; {epochs} epochs of "
            f"{steps_per_epoch} steps; lr at that step {lr:.4g}); lower the learning rate, check the loss "
            f"parameters, or turn off amp"
        )


def learning_rate(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
                  schedule: str = "cosine") -> float:
    """The learning rate at 0-based ``step`` (see the module docstring for the formulas)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return base_lr * 0.1 ** ((step >= 0.5 * total_steps) + (step >= 0.75 * total_steps))
    raise ValueError(f"schedule={schedule!r}: expected one of {SCHEDULES}")


def group_thresholds(n_max: int) -> tuple[float, float]:
    """(many, few) training-count thresholds for many/medium/few accuracy: (100, 20) scaled by min(1, n_max/500)."""
    scale = min(1.0, n_max / 500)
    return 100 * scale, 20 * scale


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    return dev


def hardware_string(device: str | torch.device | None = None) -> str:
    """What ran a run, for every result (``fit``'s ``extras["hardware"]``, the results database's ``hardware``):
    the GPU's name and CUDA version when ``device`` is a CUDA device (or ``"auto"`` with CUDA present), else the
    CPU model with its core count, the CPU capability torch's kernels use (``DEFAULT``, ``AVX2``,
    ``AVX512``...: one model name covers CPUs with and without AVX-512, whose bf16 kernels differ in speed ~20x
    and in rounding) and torch's thread count."""
    name = str(device) if device is not None else "cpu"
    if name.startswith(("cuda", "auto")) and torch.cuda.is_available():
        index = torch.device(name).index if name.startswith("cuda") else None
        index = torch.cuda.current_device() if index is None else index
        return f"{torch.cuda.get_device_name(index)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpu_hardware(model, cores, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())


@contextlib.contextmanager
def deterministic_algorithms():
    """Deterministic kernels for the duration of a run; the caller's settings come back afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # cuBLAS needs this before its first use to be deterministic; harmless when CUDA is absent.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also every CUDA device


@functools.cache
def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN, which runs convolutions and matrix products on a CPU, has bfloat16 kernels for this
    CPU (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: x86 with AVX-512 or newer, Arm with bf16). On
    one without (x86 with AVX2 only) bf16 autocast falls back to reference kernels: a training step of
    ResNet-8 on 28x28 images takes 9.4x, ResNet-20 on CIFAR-10 11.3x, the float32 step
    (benchmarks/amp_cpu.py, results/benchmarks/amp_cpu_avx2.txt).
    True when this torch cannot tell."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except RuntimeError:
        return True


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype ``amp=True`` autocasts to on ``device``: float16 (with a GradScaler) on CUDA, bfloat16 on
    a CPU with bf16 kernels (:func:`cpu_has_bf16_kernels`), None on a CPU without them: there ``amp`` trains
    and evaluates in float32, because mixed precision is a speed option and bf16 would be the slowest
    choice (``fit`` warns and records it in ``extras["precision"]``). The run key is the config's either
    way, as it is across devices: the study's check of bf16 against float32 (results/study/bf16.txt)
    found no difference beyond seed noise."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and not cpu_has_bf16_kernels():
        return None
    return torch.bfloat16


def precision(device: torch.device, amp: bool) -> str:
    """What a run's arithmetic is, for ``fit``'s ``extras["precision"]``: ``"float32"``, ``"bfloat16
    autocast"``, ``"float16 autocast"``, or ``"float32 (amp: no bf16 kernels on this CPU)"``."""
    if not amp:
        return "float32"
    dtype = amp_dtype(device)
    return "float32 (amp: no bf16 kernels on this CPU)" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def autocast(device: torch.device, enabled: bool):
    """``torch.autocast`` to :func:`amp_dtype` when ``enabled`` (and the device has one), else a no-op."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=True)


def as_memory_format(x: torch.Tensor) -> torch.Tensor:
    """Image batches in channels-last layout, which oneDNN (CPU) and cuDNN convolutions run faster."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, normalize, device: torch.device, batch_size: int,
            amp: bool = False) -> torch.Tensor:
    """float32 CPU logits of ``model`` (in eval mode) for raw inputs ``x``, ``batch_size`` at a time."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = as_memory_format(normalize(x[i:i + batch_size].to(device, non_blocking=True)))
        with autocast(device, amp):
            out.append(model(xb).float().cpu())
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


@dataclass
class _Data:
    dataset: Any            # gence.data.ArrayDataset
    train_x: torch.Tensor   # standardised float32, on the device
    train_y: torch.Tensor   # int64, on the device
    val_x: torch.Tensor     # raw (uint8 images or float features), on the CPU
    val_y: torch.Tensor
    class_counts: list[int]
    augment: Any            # gence.data.Crop (pad, flip) or None


def _load_data(config: TrainConfig, device: torch.device, dataset: datasets.ArrayDataset | None = None) -> _Data:
    # OOD names are checked before training, not after it.
    for name in config.ood:
        if not datasets.is_ood_name(name):
            raise ValueError(f"TrainConfig.ood: unknown OOD set {name!r}; expected some of {datasets.ood_names()}")
        if name == "heldout" and not config.classes:
            raise ValueError("TrainConfig.ood: 'heldout' needs TrainConfig.classes (the kept classes; the rest are OOD)")
    if dataset is None:
        ds = datasets.load_dataset(config.dataset, config.data_dir, classes=config.classes, **config.dataset_params)
    elif dataset.name != config.dataset:
        raise ValueError(f"fit: dataset named {dataset.name!r} given for TrainConfig.dataset={config.dataset!r}; "
                         f"expected the data the config names")
    else:
        ds = dataset
    train_idx, val_idx = datasets.split_indices(ds.train_y, config.regime, config.n_val_per_class, seed=config.seed,
                                            num_classes=ds.num_classes)
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    train_y = ds.train_y[train_idx]
    augment = datasets.resolve_augment(config.augment, ds)
    counts = torch.bincount(train_y, minlength=ds.num_classes).tolist()
    return _Data(dataset=ds, train_x=ds.normalize(ds.train_x[train_idx].to(device)), train_y=train_y.to(device),
                 val_x=ds.train_x[val_idx], val_y=ds.train_y[val_idx], class_counts=counts, augment=augment)


def _build_model(config: TrainConfig, ds) -> nn.Module:
    if ds.is_image:
        in_channels, image_size = ds.image_shape[0], tuple(ds.image_shape[1:])
    else:
        in_channels, image_size = ds.train_x.shape[1], None
    model = models.build(config.model, in_channels, ds.num_classes, image_size, **config.model_params)
    if config.init_output_bias is not None:
        _shift_output_bias(model, config.init_output_bias)
    return model


def _shift_output_bias(model: nn.Module, shift: list) -> None:
    """Add ``shift`` to the bias of the model's last ``nn.Linear`` (its classifier)."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear or linear[-1].bias is None or linear[-1].bias.shape != (len(shift),):
        found = "no linear layer with a bias" if not linear or linear[-1].bias is None else \
            f"a last linear layer with {linear[-1].bias.numel()} outputs"
        raise ValueError(f"TrainConfig.init_output_bias={shift!r}: expected one number per class for a model whose "
                         f"last layer is nn.Linear with a bias; the model has {found}")
    with torch.no_grad():
        linear[-1].bias += torch.tensor(shift, dtype=linear[-1].bias.dtype)


# Training seconds between checkpoint saves (each at the end of an epoch; the last epoch is always saved).
CHECKPOINT_SECONDS = 60.0


def _save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a kill never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: str | os.PathLike, config: TrainConfig, device: torch.device) -> dict | None:
    """The saved state if ``path`` holds a checkpoint of this config on this device type, else None."""
    if not os.path.exists(path):
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    if run_key(state["config"]) != run_key(config.to_dict()):  # same run = same key (where it runs aside)
        saved, wanted = state["config"], config.to_dict()
        diff = {k: (saved.get(k), wanted.get(k)) for k in sorted(set(saved) | set(wanted))
                if k not in KEY_EXCLUDED_FIELDS and saved.get(k) != wanted.get(k)}
        raise ValueError(f"checkpoint={os.fspath(path)!r} was written by another config (field: saved value, "
                         f"this run's value: {diff}); delete it or give another path")
    if state["device_type"] != device.type:
        warnings.warn(f"checkpoint {os.fspath(path)!r} was written on {state['device_type']}, this run is on "
                      f"{device.type}: its random streams cannot carry over, so training starts from epoch 0")
        return None
    here = hardware_string(device)
    if state.get("hardware", here) != here:   # checkpoints written before the field existed say nothing
        warnings.warn(f"checkpoint {os.fspath(path)!r} was written on {state['hardware']}, this run is on {here}: "
                      "it goes on from the saved epoch, but kernels differ by CPU capability, GPU and thread "
                      "count, so its numbers may match an uninterrupted run on neither machine bit for bit")
    return state


@dataclass(frozen=True)
class StepPlan:
    """How a config's training is cut into steps for ``n`` training samples (see :func:`step_plan`)."""

    batch_size: int        # the batch size used (a drop_last batch larger than the data is the whole set)
    steps_per_epoch: int
    total_steps: int
    epochs: int            # epochs started (the last one cut short under a step budget)
    images: int            # training samples seen in all
    full_epochs: bool      # every epoch sees every sample once (no drop_last, no cut)


def step_plan(n: int, config: TrainConfig) -> StepPlan:
    """Batches per epoch ``ceil(n / batch_size)`` (``floor`` with ``drop_last``, at least one full batch),
    ``epochs`` epochs of them, or ``config.steps`` steps when set (the last epoch cut short)."""
    batch = min(config.batch_size, n) if config.drop_last else config.batch_size
    per_epoch = n // batch if config.drop_last else math.ceil(n / batch)
    images_per_epoch = per_epoch * batch if config.drop_last else n
    if config.steps is None:
        total, epochs = config.epochs * per_epoch, config.epochs
        images = epochs * images_per_epoch
    else:
        total, epochs = config.steps, math.ceil(config.steps / per_epoch)
        last = total - (epochs - 1) * per_epoch
        images = (epochs - 1) * images_per_epoch + min(images_per_epoch, last * batch)
    full = not config.drop_last and (config.steps is None or config.steps % per_epoch == 0)
    return StepPlan(batch, per_epoch, total, epochs, images, full)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov when asked and momentum > 0) or Adam, with ``weight_decay``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov and config.momentum > 0)


# Logit of the true class in the loss floor's "certain and right" logits (exp(-100) vanishes in float32).
CONFIDENT_LOGIT = 100.0


def curve_epochs(epochs: int, steps_per_epoch: int, total_steps: int, every: float | None) -> set[int]:
    """The epochs after which the validation curve is evaluated: the first epoch end at or after each
    multiple of ``every`` (a fraction of ``total_steps``), and the last epoch; none when ``every`` is None."""
    if every is None:
        return set()
    marks = math.floor(1 / every + 1e-9)
    out, e = {epochs - 1}, 0
    for m in range(1, marks + 1):
        target = m * every * total_steps
        while e < epochs - 1 and (e + 1) * steps_per_epoch < target - 1e-9:
            e += 1
        out.add(e)
    return out


def train_epochs(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                 device: torch.device, augment: bool, progress: bool = True,
                 checkpoint: str | os.PathLike | None = None,
                 validate: Callable[[nn.Module], dict[str, float]] | None = None) -> list[dict]:
    """The training phase alone (what the throughput benchmark times): returns the per-epoch history
    (``loss``, last ``lr`` and cumulative training ``seconds`` per epoch; the last epoch also has
    ``loss_floor``, the loss of logits certain and right, ``CONFIDENT_LOGIT * onehot(y)``, over its
    batches). With ``checkpoint``, resumes from the state saved there and saves the state every
    :data:`CHECKPOINT_SECONDS` and after the last epoch (see the module docstring). With ``validate`` and
    ``config.eval_every``, the epochs of :func:`curve_epochs` add ``progress`` and ``validate(model)``
    (called in eval mode without gradients; training mode is restored) to their history entry; the
    time it takes is not counted in ``seconds``."""
    n = len(y)
    plan = step_plan(n, config)
    total_steps, steps_per_epoch, epochs = plan.total_steps, plan.steps_per_epoch, plan.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    if x.dim() == 4:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if config.compile else model
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history, first_epoch, seconds_before = [], 0, 0.0
    curve = curve_epochs(epochs, steps_per_epoch, total_steps, config.eval_every) if validate else set()
    state = _load_checkpoint(checkpoint, config, device) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["cpu_rng"].cpu())
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        history = list(state["history"])
        first_epoch, seconds_before = len(history), history[-1]["seconds"]
    start, last_save = time.perf_counter(), seconds_before
    hardware = hardware_string(device) if checkpoint is not None else None   # once, not at every save
    model.train()
    # Advanced per step (no device sync needed), described per epoch once the epoch's loss is known.
    bar = tqdm(total=total_steps, initial=min(total_steps, first_epoch * steps_per_epoch), desc="train",
               unit="step", disable=not progress, leave=False)
    for epoch in range(first_epoch, epochs):
        if hasattr(loss_fn, "on_epoch_start"):
            loss_fn.on_epoch_start(epoch, epochs)
        # Per-step losses stay on the device: one sync per epoch, not per step.
        step_losses = torch.zeros(steps_per_epoch, device=device)
        sizes = torch.zeros(steps_per_epoch, device=device)
        lrs = []
        last = epoch == epochs - 1
        floor = torch.zeros(steps_per_epoch, device=device) if last else None
        batches = datasets.iterate_batches(x, y, plan.batch_size, shuffle=True, generator=generator,
                                           drop_last=config.drop_last)
        for step, (xb, yb) in enumerate(batches):
            if epoch * steps_per_epoch + step >= total_steps:  # a fixed step budget ends mid-epoch
                break
            lr = learning_rate(epoch * steps_per_epoch + step, total_steps, config.lr, warmup_steps, config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            lrs.append(lr)
            if augment:
                pad, flip = datasets.CROP_FLIP if augment is True else augment
                xb = datasets.random_crop_flip(xb, pad, flip, generator=generator)
            xb = as_memory_format(xb)
            with autocast(device, config.amp):
                logits = forward(xb)
            loss = loss_fn(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step_losses[step] = loss.detach()
            sizes[step] = len(yb)
            if last:
                with torch.no_grad():
                    floor[step] = loss_fn(CONFIDENT_LOGIT * F.one_hot(yb, logits.shape[1]).float(), yb)
            bar.update(1)
        finite = torch.isfinite(step_losses)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise NonFiniteLossError(float(step_losses[bad]), epoch, bad, epochs, steps_per_epoch, lrs[bad])
        # A device sync: the time below is the epoch's. Every image once (the default): divide by n.
        seen = n if plan.full_epochs else sizes.sum()
        mean_loss = float((step_losses * sizes).sum() / seen)
        history.append({"epoch": epoch, "loss": mean_loss, "lr": lrs[-1],
                        "seconds": seconds_before + time.perf_counter() - start})
        if last:
            history[-1]["loss_floor"] = float((floor * sizes).sum() / seen)
        if epoch in curve:
            paused = time.perf_counter()
            history[-1]["progress"] = min(1.0, (epoch + 1) * steps_per_epoch / total_steps)
            history[-1].update(validate(model))
            model.train()
            start += time.perf_counter() - paused
        if checkpoint is not None and (epoch == epochs - 1
                                       or history[-1]["seconds"] - last_save >= CHECKPOINT_SECONDS):
            last_save = history[-1]["seconds"]
            _save_checkpoint(checkpoint, {
                "config": config.to_dict(), "device_type": device.type, "hardware": hardware,
                "history": history,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "generator": generator.get_state(), "cpu_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})})
        bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{mean_loss:.4f}", lr=f"{lrs[-1]:.3g}")
    bar.close()
    return history


def _split_metrics(split: str, logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> dict[str, float]:
    if len(labels) == 0:  # no validation split: the same keys, NaN
        return {split_key(split, m): math.nan for m in SPLIT_METRICS}
    return {split_key(split, m): float(v) for m, v in metrics.evaluate(logits, labels, n_bins).items()}


def evaluate_model(model: nn.Module, data: _Data, config: TrainConfig, device: torch.device
                   ) -> tuple[dict[str, float], dict[str, Any], torch.Tensor]:
    """Metrics (before and after temperature scaling, groups, OOD), reliability bins, test logits."""
    ds = data.dataset
    run = lambda x: predict(model, x, ds.normalize, device, config.eval_batch_size, config.amp)
    val_logits, test_logits = run(data.val_x), run(ds.test_x)
    temperature = fit_temperature(val_logits, data.val_y) if len(data.val_y) else 1.0

    out = {}
    out.update(_split_metrics("val", val_logits, data.val_y, config.n_bins))
    out.update(_split_metrics("test", test_logits, ds.test_y, config.n_bins))
    out.update(_split_metrics("val_ts", val_logits / temperature, data.val_y, config.n_bins))
    out.update(_split_metrics("test_ts", test_logits / temperature, ds.test_y, config.n_bins))
    out[TEMPERATURE] = float(temperature)

    test_probs = F.softmax(test_logits.double(), dim=1)
    many, few = group_thresholds(max(data.class_counts))
    groups = metrics.group_accuracy(test_probs, ds.test_y, data.class_counts, many=many, few=few)
    out.update({group_key(g): float(groups[g]) for g in GROUPS})
    out.update({f"test/{k}": v for k, v in metrics.class_coverage(test_probs, ds.test_y).items()})

    for name in config.ood:
        ood_logits = run(datasets.load_ood(name, ds, seed=config.seed))
        for score in OOD_SCORES:
            result = metrics.ood_metrics(metrics.ood_scores(test_logits, score), metrics.ood_scores(ood_logits, score))
            out.update({ood_key(name, score, k): float(v) for k, v in result.items()})

    reliability = {
        "test": metrics.reliability_bins(test_probs, ds.test_y, config.n_bins),
        "test_ts": metrics.reliability_bins(F.softmax(test_logits.double() / temperature, dim=1), ds.test_y,
                                            config.n_bins),
    }
    return out, reliability, test_logits


def fit(config: TrainConfig, progress: bool = True, checkpoint: str | os.PathLike | None = None,
        dataset: datasets.ArrayDataset | None = None) -> TrainResult:
    """Train ``config.model`` with ``config.loss`` on the configured regime, then evaluate it.

    Returns metrics with exactly the keys of docs/architecture.md, extras (reliability bins, per-epoch
    history, data sizes, hardware), the config as a dict, and the test logits and labels.
    Raises :class:`NonFiniteLossError` when the training loss stops being finite.
    ``checkpoint``: a file path; the training state is saved there every minute or so (at the end of an
    epoch) and after the last epoch, and a run started again with the same path resumes after the last
    saved epoch (see the module docstring).
    ``train/seconds`` counts the training time of every part of a resumed run.
    ``dataset``: the data, already built, for data that ``gence.data`` cannot load by name (tensors made
    by the caller, e.g. the properness study's tasks); its ``name`` must be ``config.dataset``, and the
    config must describe it completely (``dataset_params``), since the run key is the config's.
    """
    config.validate()
    device = resolve_device(config.device)
    arithmetic = precision(device, config.amp)
    if config.amp and amp_dtype(device) is None:
        warnings.warn(f"amp=True on {hardware_string(device)}: oneDNN has no bf16 kernels for this CPU, where bf16 "
                      "autocast runs 9-11x slower than float32, so this run trains and evaluates in float32 "
                      "(extras['precision'] says so)", RuntimeWarning, stacklevel=2)
    with deterministic_algorithms():
        seed_everything(config.seed)
        data = _load_data(config, device, dataset)
        ds = data.dataset
        seed_everything(config.seed)  # the model's initialisation does not depend on how data was drawn
        model = _build_model(config, ds).to(device)
        loss_fn = losses.build(config.loss, ds.num_classes, class_counts=data.class_counts,
                               **config.loss_params).to(device)

        if device.type == "cuda":
            torch.cuda.synchronize(device)
        validate = None
        if config.eval_every is not None and len(data.val_y):
            def validate(net: nn.Module) -> dict[str, float]:
                logits = predict(net, data.val_x, ds.normalize, device, config.eval_batch_size, config.amp)
                scores = metrics.evaluate(logits, data.val_y, config.n_bins)
                return {split_key("val", m): float(scores[m]) for m in CURVE_METRICS}
        history = train_epochs(model, loss_fn, data.train_x, data.train_y, config, device, data.augment, progress,
                               checkpoint=checkpoint, validate=validate)
        seconds = history[-1]["seconds"]

        out, reliability, test_logits = evaluate_model(model, data, config, device)
        train_logits = predict(model, data.train_x, lambda x: x, device, config.eval_batch_size, config.amp)
        train_error = float((train_logits.argmax(1) != data.train_y.cpu()).double().mean())

    n_train = len(data.train_y)
    out.update(zip(TRAIN_METRICS, (history[-1]["loss"], seconds, step_plan(n_train, config).images / seconds)))
    out.update(zip(FIT_METRICS, (train_error, history[-1]["loss_floor"])))
    extras = {
        "reliability": reliability,
        "history": history,
        "data": {"n_train": n_train, "n_val": len(data.val_y), "n_test": len(ds.test_y),
                 "class_counts": data.class_counts, "augment": data.augment or False},
        "hardware": hardware_string(device),
        "precision": arithmetic,
    }
    return TrainResult(metrics=out, extras=extras, config=config.to_dict(),
                       test_logits=test_logits, test_labels=ds.test_y.clone())
