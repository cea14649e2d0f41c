"""Out-of-distribution image sets shaped like an in-distribution dataset.

- Another dataset (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``digits``): a seeded
  random subset of its TEST split, converted to the in-distribution's channels (gray -> RGB by repeating
  the channel; RGB -> gray with the ITU-R 601 luma weights 0.299, 0.587, 0.114, as PIL's "L") and
  resized to its size (``F.interpolate`` bilinear with antialias, rounded back to uint8).
- ``heldout``: test images of the classes left out when ``like`` was loaded with ``classes=[...]``.
- ``gaussian_noise``: i.i.d. pixels N(mean_c, std_c) per channel c, with ``like``'s training mean and
  std (so the first two moments match the data and only the structure differs), rounded and clipped
  to 0..255.
- ``uniform_noise``: i.i.d. pixels uniform on 0..255.
- ``folder:PATH`` and ``arrays:PATH``: a user's image tree or ``.npz`` (see :mod:`gence.data.userdata`; a
  relative PATH is relative to ``data_dir``), converted like another dataset: its test split (for a
  tree without train/test, the test part of the seeded split rule at its defaults).
All are uint8 tensors (n, C, H, W) on the CPU; at most ``n`` images (fewer when the source has fewer),
drawn with ``torch.Generator().manual_seed(seed)``.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from gence.data.datasets import ArrayDataset, dataset_files_problem, image_datasets, load_dataset, needs_data_dir
from gence.data.userdata import USER_DATASETS
from gence.registry import Registry

__all__ = ["load_ood", "convert_images", "ood_names", "ood_available", "OOD_SETS", "register_ood", "is_ood_name",
           "OOD_FILE_SOURCES", "ood_needs_data_dir"]

# "NAME:PATH" OOD sets: a user's dataset NAME read from PATH (its parameter of that name).
OOD_FILE_SOURCES = {"folder": "root", "arrays": "path"}

# OOD sets made from the in-distribution dataset itself: builder(like, data_dir, n, generator) -> uint8
# (n', C, H, W). Every registered image dataset is an OOD set too (its test split), without an entry here.
OOD_SETS = Registry("OOD set")
register_ood = OOD_SETS.register


def ood_available() -> dict[str, str]:
    """Names ``load_ood`` accepts, each with a one-line description: the sets of :data:`OOD_SETS`, then
    every image dataset."""
    return {**OOD_SETS.available(),
            **{n: f"a random subset of {n}'s test split in the in-distribution's shape" for n in image_datasets()}}


def ood_names() -> list[str]:
    """The names of :func:`ood_available`, in its order."""
    return list(ood_available())


def _file_source(name: str) -> tuple[str, str] | None:
    """``(source, path)`` for a ``folder:PATH`` / ``arrays:PATH`` name (path possibly empty), else None."""
    source, sep, path = str(name).partition(":")
    return (source, path) if sep and source in OOD_FILE_SOURCES else None


def _ood_key(name: str) -> str:
    """The spelling of ``name`` the OOD registry and the dataset names use (case and ``-`` aside)."""
    return str(name).strip().lower().replace("-", "_")


def is_ood_name(name: object) -> bool:
    """Whether :func:`load_ood` accepts ``name``: one of :func:`ood_names`, or ``folder:PATH`` /
    ``arrays:PATH`` (whose files are only read when it loads)."""
    if not isinstance(name, str):
        return False
    source = _file_source(name)
    return bool(source[1]) if source is not None else name in ood_names()


def ood_needs_data_dir(name: str) -> bool:
    """Whether OOD set ``name`` reads files from a data directory (``data_dir`` or ``$GENCE_DATA``) of its own:
    another dataset by name follows :func:`gence.data.needs_data_dir`; the sets of :data:`OOD_SETS` (the noise
    sets, ``heldout``: made from the in-distribution dataset) and ``folder:PATH`` / ``arrays:PATH`` (their
    files are PATH) need none. ValueError for a name :func:`load_ood` does not take."""
    if _file_source(name) is not None:
        return False
    key = _ood_key(name)
    if key in OOD_SETS:
        return False
    if key not in image_datasets():
        raise ValueError(f"unknown OOD set {name!r}; available: {', '.join(ood_names())}")
    return needs_data_dir(key)


def convert_images(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> uint8 (N, *shape): channel conversion, then bilinear resize."""
    C, H, W = shape
    if x.shape[1] != C:
        if x.shape[1] == 1 and C == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and C == 1:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        else:
            raise ValueError(f"cannot convert {x.shape[1]}-channel images to {C} channels")
    if tuple(x.shape[2:]) != (H, W):
        x = F.interpolate(x.float(), size=(H, W), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.contiguous()


def _subset(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    if len(x) <= n:
        return x
    idx = torch.randperm(len(x), generator=gen)[:n].sort().values
    return x[idx]


@register_ood("heldout", "test images of the classes left out when the dataset was loaded with classes=[...]")
def heldout(like: ArrayDataset, data_dir, n: int, generator: torch.Generator) -> torch.Tensor:
    if like.kept_classes is None or len(like.kept_classes) == len(like.source_classes):
        raise ValueError("load_ood('heldout'): the dataset keeps all its classes; load it with "
                         "classes=[...] to hold some out")
    source = load_dataset(like.source, like.data_dir if data_dir is None else data_dir, **like.params)
    keep = torch.as_tensor(like.kept_classes)
    x = source.test_x[~torch.isin(source.test_y, keep)]
    return convert_images(_subset(x, n, generator), like.image_shape)


@register_ood("gaussian_noise", "i.i.d. pixels N(mean_c, std_c) with the dataset's channel statistics")
def gaussian_noise(like: ArrayDataset, data_dir, n: int, generator: torch.Generator) -> torch.Tensor:
    C, H, W = like.image_shape
    mean = like.mean.view(1, C, 1, 1)
    std = like.std.view(1, C, 1, 1)
    z = torch.randn((n, C, H, W), generator=generator)
    return ((mean + std * z) * like.max_value).round_().clamp_(0, 255).to(torch.uint8)


@register_ood("uniform_noise", "i.i.d. pixels uniform on 0..255")
def uniform_noise(like: ArrayDataset, data_dir, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (n, *like.image_shape), generator=generator, dtype=torch.uint8)


def _ood_read(name: str, dataset: str, data_dir, dataset_dir) -> tuple[str, object, dict] | None:
    """What :func:`load_ood` reads for OOD set ``name`` beside a dataset ``dataset`` (its name) loaded from
    ``dataset_dir``: ``(dataset to load, data_dir, params)``. For another dataset by name, ``data_dir`` defaults
    to ``dataset_dir`` (its folder when it is an archive), but not beside a user's dataset, whose directory is
    its own files. None for what reads no files here: the sets of :data:`OOD_SETS`, a name that is no image
    dataset, the in-distribution dataset itself (load_ood refuses the last two). ValueError for a
    ``folder:``/``arrays:`` name without a path."""
    file_source = _file_source(name)
    if file_source is not None:
        source, path = file_source
        if not path:
            raise ValueError(f"load_ood: {name!r} names no path; expected '{source}:PATH'")
        return source, data_dir, {OOD_FILE_SOURCES[source]: path}
    key = _ood_key(name)
    if key in OOD_SETS or key not in image_datasets() or key == dataset:
        return None
    if data_dir is None and dataset_dir is not None and dataset not in USER_DATASETS:
        # the dataset may have been read from an archive (data_dir=".../cifar10-jpeg.tar.gz"): use its folder.
        data_dir = dataset_dir if os.path.isdir(dataset_dir) else os.path.dirname(dataset_dir)
    return key, data_dir, {}


def ood_files_problem(name: str, dataset: str, data_dir: str | os.PathLike | None = None) -> str | None:
    """Why :func:`load_ood` would not find the files of OOD set ``name`` for a dataset ``dataset`` loaded with
    ``data_dir`` (the loader's message), or None; it decodes nothing. Noise sets and ``heldout`` read no files
    of their own."""
    try:
        read = _ood_read(name, dataset, None, data_dir)
    except ValueError as exc:
        return str(exc)
    return None if read is None else dataset_files_problem(read[0], read[1], **read[2])


def load_ood(name: str, like: ArrayDataset, data_dir=None, n: int = 2000, seed: int = 0) -> torch.Tensor:
    """An OOD image set for ``like`` (see the module docstring for each name, :func:`ood_available`).

    ``data_dir`` (for another dataset) defaults to ``like.data_dir`` (not for a user's dataset, whose
    ``data_dir`` is its own files), then ``$GENCE_DATA``.
    """
    if not like.is_image:
        raise ValueError(f"load_ood: {like.name!r} is feature data; OOD sets are defined for image datasets only")
    if int(n) != n or n < 1:
        raise ValueError(f"load_ood: n must be an integer >= 1, got {n!r}")
    gen = torch.Generator().manual_seed(int(seed))
    read = _ood_read(name, like.source, data_dir, like.data_dir)
    if read is None:
        key = _ood_key(name)
        if key in OOD_SETS:
            return OOD_SETS.get(key).builder(like, data_dir, n, gen)
        if key not in image_datasets():
            raise ValueError(f"load_ood: unknown OOD set {name!r}; available: {ood_names()}")
        raise ValueError(f"load_ood: {name!r} is the in-distribution dataset itself; use 'heldout' with classes=[...]")
    other = load_dataset(read[0], read[1], **read[2])
    if not other.is_image:   # only a user's arrays can hold feature vectors; the named datasets are images
        raise ValueError(f"load_ood: {name!r} holds feature vectors; expected images")
    return convert_images(_subset(other.test_x, n, gen), like.image_shape)
