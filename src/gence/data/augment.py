"""Batched augmentation and epoch batching on the training device, as airbench does.

The training subset lives on the device as one tensor; an epoch is one device-side ``randperm`` and
slices of it; random crop and flip are one ``gather`` per batch with per-image index arithmetic, no
padded copy of the data and no Python loop over images.

Crop convention: pad by ``pad`` on every side, then take the H x W window at offset (dy, dx),
dy, dx uniform in 0..2*pad. ``padding_mode="reflect"`` (default, as airbench: mirror without repeating
the edge pixel, like ``F.pad(mode="reflect")``) or ``"zeros"`` (as torchvision ``RandomCrop(padding=4)``).
The horizontal flip (probability 1/2) is applied to the crop.

Augmentation settings (``TrainConfig.augment``, resolved by :func:`resolve_augment` into a :class:`Crop`
or None):

- ``"none"`` (or ``False``): no augmentation.
- ``"crop_flip"`` (or ``True``): pad 4 and random crop, then horizontal flip with probability 1/2.
- ``"crop"``: random crop (a translation by up to ``pad`` pixels each way) WITHOUT flip, for data where a
  mirror image is another class or none (digits, letters); ``pad`` is 2 for images smaller than 32 px
  (either side), else 4.
- ``None``: the dataset's default. Built-in datasets: ``crop_flip`` for RGB images of at least 32x32
  (CIFAR), else none (digits, MNIST-like, SVHN, feature data). A user's data (``folder``, ``arrays``,
  ``csv``: datasets registered with ``augment_by_kind=True``) by kind: RGB images ``crop_flip`` when at
  least 32x32 and ``crop`` when smaller, grayscale images ``crop``, feature vectors none.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import torch

from gence.contract import AUGMENT_MODES
from gence.data.datasets import DATASETS

__all__ = ["random_crop_flip", "crop_flip", "iterate_batches", "default_augment", "resolve_augment",
           "default_augment_mode", "Crop", "AUGMENT_MODES", "CROP_FLIP"]



class Crop(NamedTuple):
    """What the training loop does to each batch: random crop with ``pad`` pixels, flip when ``flip``."""

    pad: int
    flip: bool


CROP_FLIP = Crop(4, True)  # what augment=True has always meant


def _draw_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None = None,
              pad: int = 4, padding_mode: str = "reflect") -> torch.Tensor:
    """Crop every image of a batch at its own offset in the padded image, and flip where ``flip``.

    Args:
        x: (B, C, H, W), any dtype, any device.
        dy, dx: (B,) integer offsets in 0..2*pad into the padded image.
        flip: (B,) bool; True flips that crop left-right. None: no flips.
    Returns:
        (B, C, H, W) like x: ``out[b] = padded[b, :, dy:dy+H, dx:dx+W]`` (then flipped), where
        ``padded = F.pad(x, (pad,) * 4, padding_mode)``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be a batch (B, C, H, W), got shape {tuple(x.shape)}")
    if padding_mode not in ("reflect", "zeros"):
        raise ValueError(f"padding_mode must be 'reflect' or 'zeros', got {padding_mode!r}")
    B, C, H, W = x.shape
    if padding_mode == "reflect" and pad >= min(H, W):
        raise ValueError(f"reflect padding needs pad < image size, got pad={pad} for {H}x{W}")
    dev = x.device
    rows = dy.to(dev, torch.long)[:, None] - pad + torch.arange(H, device=dev)  # (B, H) source rows
    cols = dx.to(dev, torch.long)[:, None] - pad + torch.arange(W, device=dev)  # (B, W) source columns
    if flip is not None:
        cols = torch.where(flip.to(dev, torch.bool)[:, None], cols.flip(1), cols)
    if padding_mode == "reflect":
        rows = torch.where(rows < 0, -rows, torch.where(rows > H - 1, 2 * (H - 1) - rows, rows))
        cols = torch.where(cols < 0, -cols, torch.where(cols > W - 1, 2 * (W - 1) - cols, cols))
        valid = None
    else:
        valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
        rows, cols = rows.clamp(0, H - 1), cols.clamp(0, W - 1)
    idx = (rows[:, :, None] * W + cols[:, None, :]).reshape(B, 1, H * W).expand(B, C, H * W)
    out = x.reshape(B, C, H * W).gather(2, idx).view(B, C, H, W)
    if valid is not None:
        out = torch.where(valid[:, None], out, torch.zeros((), dtype=x.dtype, device=dev))
    return out


def random_crop_flip(x: torch.Tensor, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None,
                     padding_mode: str = "reflect") -> torch.Tensor:
    """Random crop with ``pad`` pixels of padding and random horizontal flip of a batch, on its device.

    Labels are untouched (the batch order is kept). Offsets and flips are drawn with ``generator``
    (on the generator's device, then moved to x's) or the global RNG of x's device.
    """
    B = x.shape[0]
    dev = _draw_device(x, generator)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev)
    mask = torch.randint(0, 2, (B,), generator=generator, device=dev).bool() if flip else None
    return crop_flip(x, dy, dx, mask, pad=pad, padding_mode=padding_mode)


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True,
                    generator: torch.Generator | None = None, drop_last: bool = False
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (x, y) batches: one ``randperm`` on the device, then device-side index slices.

    Without ``shuffle`` the batches are views of x and y in order. ``drop_last`` drops a final batch
    smaller than ``batch_size``.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    n = len(x)
    stop = n - n % batch_size if drop_last else n
    if shuffle:
        perm = torch.randperm(n, generator=generator, device=_draw_device(x, generator)).to(x.device)
        for i in range(0, stop, batch_size):
            idx = perm[i:i + batch_size]
            yield x[idx], y[idx.to(y.device)]
    else:
        for i in range(0, stop, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]


def default_augment_mode(dataset) -> str:
    """The augmentation a dataset gets with ``augment=None``, one of :data:`AUGMENT_MODES` (see the module
    docstring): by kind for datasets registered with ``augment_by_kind=True``; else crop+flip for
    CIFAR-like data (RGB, at least 32x32), none for digits, MNIST-like, feature data and SVHN (a flipped
    digit is another digit or none)."""
    shape = getattr(dataset, "image_shape", None)
    if shape is None:
        return "none"
    C, H, W = shape
    source = getattr(dataset, "source", getattr(dataset, "name", ""))
    if source in DATASETS and DATASETS.get(source).info.get("augment_by_kind", False):
        return "crop_flip" if C == 3 and H >= 32 and W >= 32 else "crop"
    if source == "svhn":
        return "none"
    return "crop_flip" if C == 3 and H >= 32 and W >= 32 else "none"


def default_augment(dataset) -> bool:
    """Whether ``dataset`` is augmented by default (``augment=None``): see :func:`default_augment_mode`."""
    return default_augment_mode(dataset) != "none"


def resolve_augment(setting: bool | str | None, dataset) -> Crop | None:
    """The augmentation ``TrainConfig.augment = setting`` means for ``dataset`` (an ``ArrayDataset``):
    a :class:`Crop` (pad, flip) or None for none.

    ``setting``: None (the dataset's default, :func:`default_augment_mode`), True (``"crop_flip"``),
    False (``"none"``) or one of :data:`AUGMENT_MODES`. ValueError for another value, and for a crop of
    feature vectors."""
    if setting is None:
        mode = default_augment_mode(dataset)
    elif isinstance(setting, bool):
        mode = "crop_flip" if setting else "none"
    elif isinstance(setting, str) and setting in AUGMENT_MODES:
        mode = setting
    else:
        raise ValueError(f"augment={setting!r}: expected null (the dataset's default), true, false or one of "
                         f"{', '.join(map(repr, AUGMENT_MODES))}")
    if mode == "none":
        return None
    shape = getattr(dataset, "image_shape", None)
    if shape is None:
        raise ValueError(f"augment={setting!r}: dataset {getattr(dataset, 'name', '?')!r} holds feature vectors, "
                         f"not images; expected augment null, false or 'none'")
    if mode == "crop_flip":
        return CROP_FLIP
    return Crop(2 if min(shape[1:]) < 32 else 4, False)
