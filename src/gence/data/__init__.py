"""Data: datasets by name as whole tensors, seeded regimes and validation splits, OOD sets, and batched
augmentation on the training device.

    ds = load_dataset("cifar10", data_dir)            # ArrayDataset: uint8 (N, C, H, W), int64 labels
    train_idx, val_idx = split_indices(ds.train_y, parse_regime("balanced:100"), n_val_per_class=50, seed=0)
    x = ds.train_x[train_idx].to(device)              # the training subset lives on the device
    crop = resolve_augment(None, ds)                  # Crop(pad, flip) or None: the dataset's default
    for xb, yb in iterate_batches(x, y, 128, shuffle=True, generator=g):
        xb = random_crop_flip(xb, crop.pad, crop.flip, generator=g) if crop else xb
        logits = model(ds.normalize(xb))

Datasets are registered in :data:`DATASETS` (``available()``: name -> description); adding one is one
function decorated with ``@register_dataset(name, description)`` in ``datasets.py`` (plus its reader in
``readers.py`` if the format is new). Every image dataset is also an OOD set (``ood_available()``).
A user's own data: ``folder`` (an image tree), ``arrays`` (an .npz), ``csv`` (:mod:`gence.data.userdata`).
``needs_data_dir(name)`` / ``ood_needs_data_dir(name)``: whether a dataset / OOD set reads files from a
data directory (``data_dir`` or ``$GENCE_DATA``), for a check before anything runs.
"""
from gence.data.augment import (AUGMENT_MODES, CROP_FLIP, Crop, crop_flip, default_augment, default_augment_mode,
                                iterate_batches, random_crop_flip, resolve_augment)
from gence.data.datasets import (DATASETS, ArrayDataset, available, dataset_files_problem, image_datasets,
                                 load_dataset, needs_data_dir, register_dataset, to_float)
from gence.data.ood import (OOD_SETS, OOD_FILE_SOURCES, convert_images, is_ood_name, load_ood, ood_available,
                            ood_files_problem, ood_names, ood_needs_data_dir, register_ood)
from gence.data.regimes import (Balanced, Full, LongTailed, Regime, balanced, full, long_tailed,
                                parse_regime, split_indices)
from gence.data.synthetic import GaussianTask, as_rng, exponential_priors
from gence.data.userdata import USER_DATASETS, split_per_class

__all__ = [
    "ArrayDataset", "load_dataset", "available", "image_datasets", "DATASETS", "register_dataset", "to_float",
    "needs_data_dir", "ood_needs_data_dir", "dataset_files_problem", "ood_files_problem",
    "Regime", "Balanced", "LongTailed", "Full", "balanced", "long_tailed", "full", "parse_regime",
    "split_indices",
    "load_ood", "convert_images", "ood_names", "ood_available", "OOD_SETS", "register_ood", "is_ood_name",
    "OOD_FILE_SOURCES", "USER_DATASETS", "split_per_class",
    "GaussianTask", "exponential_priors", "as_rng",
    "random_crop_flip", "crop_flip", "iterate_batches", "default_augment", "default_augment_mode",
    "resolve_augment", "Crop", "CROP_FLIP", "AUGMENT_MODES",
]
