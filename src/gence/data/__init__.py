"""Data: datasets by name as whole tensors, seeded regimes and validation splits, OOD sets, and batched
augmentation on the training device.

    ds = load_dataset("cifar10", data_dir)            # ArrayDataset: uint8 (N, C, H, W), int64 labels
    train_idx, val_idx = split_indices(ds.train_y, parse_regime("balanced:100"), n_val_per_class=50, seed=0)
    x = ds.train_x[train_idx].to(device)              # the training subset lives on the device
    for xb, yb in iterate_batches(x, y, 128, shuffle=True, generator=g):
        xb = random_crop_flip(xb, generator=g) if default_augment(ds) else xb
        logits = model(ds.normalize(xb))
"""
from gence.data.augment import crop_flip, default_augment, iterate_batches, random_crop_flip
from gence.data.datasets import ArrayDataset, available, load_dataset, to_float
from gence.data.ood import convert_images, load_ood, ood_names
from gence.data.regimes import (Balanced, Full, LongTailed, Regime, balanced, full, long_tailed,
                                parse_regime, split_indices)

__all__ = [
    "ArrayDataset", "load_dataset", "available", "to_float",
    "Regime", "Balanced", "LongTailed", "Full", "balanced", "long_tailed", "full", "parse_regime",
    "split_indices",
    "load_ood", "convert_images", "ood_names",
    "random_crop_flip", "crop_flip", "iterate_batches", "default_augment",
]
