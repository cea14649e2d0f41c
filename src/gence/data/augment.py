"""Batched augmentation and epoch batching on the training device, as airbench does.

The training subset lives on the device as one tensor; an epoch is one device-side ``randperm`` and
slices of it; random crop and flip are one ``gather`` per batch with per-image index arithmetic, no
padded copy of the data and no Python loop over images.

Crop convention: pad by ``pad`` on every side, then take the H x W window at offset (dy, dx),
dy, dx uniform in 0..2*pad. ``padding_mode="reflect"`` (default, as airbench: mirror without repeating
the edge pixel, like ``F.pad(mode="reflect")``) or ``"zeros"`` (as torchvision ``RandomCrop(padding=4)``).
The horizontal flip (probability 1/2) is applied to the crop.
"""
from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["random_crop_flip", "crop_flip", "iterate_batches", "default_augment"]


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


def default_augment(dataset) -> bool:
    """Crop+flip by default for CIFAR-like data (RGB, at least 32x32), not for digits, MNIST-like,
    feature data, or SVHN (a flipped digit is another digit or none)."""
    shape = getattr(dataset, "image_shape", None)
    if shape is None or getattr(dataset, "source", getattr(dataset, "name", "")) == "svhn":
        return False
    C, H, W = shape
    return C == 3 and H >= 32 and W >= 32
