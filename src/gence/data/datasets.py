"""Datasets by name, as whole tensors in memory (``ArrayDataset``), and their standardisation.

Conventions:

- Images are uint8 tensors (N, C, H, W) with values 0..255 for every dataset. The 8x8 ``digits`` store
  0..16; they are mapped to ``round(v * 255 / 16)`` (a one-to-one map, no information lost) so that
  every image dataset has one scale and OOD sets can be mixed across datasets.
- Feature data (``gaussians``) is float32 (N, D); ``image_shape`` is None.
- Labels are int64 tensors in 0..K-1; ``classes[k]`` is the name of label k.
- ``mean``/``std`` (float32, one per channel, or per feature for feature data) are computed on the
  whole training split (after ``classes=`` filtering), on the [0, 1] scale for images;
  ``dataset.normalize(x)`` gives ``(x / 255 - mean) / std`` in float32 on x's device.
- ``classes=[...]`` (indices or names) keeps those classes, relabelled 0..k-1 *in the order given*.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from gence.data import readers
from gence.data.cache import cached_arrays, find_only
from gence.data.synthetic import GaussianTask
from gence.registry import Registry, check_keywords, keyword_names

__all__ = ["ArrayDataset", "load_dataset", "available", "image_datasets", "needs_data_dir", "DATASETS",
           "register_dataset", "LOADER_ARGUMENTS", "to_float", "resolve_data_dir",
           "CIFAR10_CLASSES", "FASHION_MNIST_CLASSES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))

# Bump a reader's version when what it decodes changes, so stale cache entries are not read.
_CACHE_VERSION = "v1"


@dataclass
class ArrayDataset:
    """A whole dataset as tensors: train and test splits, class names, standardisation statistics.

    ``source`` is the name the data was loaded under, ``data_dir`` and ``params`` how; ``kept_classes``
    the original label of each kept class when loaded with ``classes=`` (None: all), and
    ``source_classes`` the names of all classes of the source. ``extras`` holds dataset-specific
    objects (``gaussians``: ``extras["task"]``, the ``GaussianTask`` with the exact posterior).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    classes: list[str]
    image_shape: tuple[int, int, int] | None
    mean: torch.Tensor = None
    std: torch.Tensor = None
    max_value: float = 255.0
    source: str = ""
    data_dir: str | None = None
    params: dict = field(default_factory=dict)
    kept_classes: list[int] | None = None
    source_classes: list[str] | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mean is None or self.std is None:
            self.mean, self.std = _channel_stats(self.train_x, self.image_shape is not None, self.max_value)
        if not self.source:
            self.source = self.name
        if self.source_classes is None:
            self.source_classes = list(self.classes)

    @property
    def is_image(self) -> bool:
        return self.image_shape is not None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised float32 copy of a batch (uint8 images or float features), on x's device."""
        mean = self.mean.to(x.device)
        std = self.std.to(x.device)
        if self.is_image:
            shape = (1, -1, 1, 1)
            return (x.float() / self.max_value - mean.view(shape)) / std.view(shape)
        return (x.float() - mean) / std

    def __repr__(self) -> str:
        shape = self.image_shape if self.is_image else (self.train_x.shape[1],)
        return (f"ArrayDataset({self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
                f"num_classes={self.num_classes}, shape={shape})")


def to_float(x: torch.Tensor, dataset: ArrayDataset) -> torch.Tensor:
    """``dataset.normalize(x)``: uint8 images to standardised float32 on x's device."""
    return dataset.normalize(x)


def _channel_stats(x: torch.Tensor, is_image: bool, max_value: float):
    """Per-channel (images) or per-feature mean and population std, in float64, returned as float32."""
    if x.numel() == 0:
        raise ValueError("cannot compute mean/std of an empty training split")
    if is_image and x.dtype == torch.uint8:
        # Exact and without a float copy of the data (1.2 GB for CIFAR-10): a 256-bin histogram per channel.
        values = torch.arange(256, dtype=torch.float64) / max_value
        mean, var = [], []
        for c in range(x.shape[1]):
            h = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
            m = (h * values).sum() / h.sum()
            mean.append(m)
            var.append((h * (values - m) ** 2).sum() / h.sum())
        mean, std = torch.stack(mean), torch.stack(var).sqrt()
    else:
        xs = x.double().div(max_value if is_image else 1.0)
        xs = xs.transpose(0, 1).reshape(x.shape[1], -1) if is_image else xs.t()
        mean, std = xs.mean(dim=1), xs.std(dim=1, unbiased=False)
    # a constant channel (std 0) is only centred, not blown up
    return mean.float(), torch.where(std > 0, std, torch.ones_like(std)).float()


# ---------------------------------------------------------------------------------------------------
# Finding files


def resolve_data_dir(data_dir: str | os.PathLike | None, name: str) -> Path:
    """``data_dir``, else ``$GENCE_DATA``; an error naming both when neither is set."""
    if data_dir is None:
        data_dir = os.environ.get("GENCE_DATA")
        if not data_dir:
            raise ValueError(f"dataset {name!r} needs a data directory: pass data_dir=... or set GENCE_DATA")
    return Path(data_dir).expanduser()


def _candidate_dirs(root: Path, subdirs: Sequence[str]) -> list[Path]:
    """Name-specific folders first (``root/<sub>``, ``root/<sub>/raw``), then ``root`` itself."""
    out = []
    for s in subdirs:
        out += [root / s, root / s / "raw"]
    out.append(root)
    return out


def _find_with(root: Path, subdirs: Sequence[str], expected: Sequence[Sequence[str]]):
    """First candidate folder holding one name of every group in ``expected`` -> (folder, paths)."""
    dirs = _candidate_dirs(root, subdirs)
    for d in dirs:
        if not d.is_dir():
            continue
        found = []
        for alternatives in expected:
            hit = next((d / a for a in alternatives if (d / a).is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return d, found
    return None, [str(d) for d in dirs]


def _not_found(name: str, searched: Sequence[str], expected: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"dataset {name!r}: no files found. Searched {', '.join(map(str, searched))}; expected {expected}"
    )


# ---------------------------------------------------------------------------------------------------
# The registry: one loader per dataset, (data_dir, cache, **params) -> dict of numpy arrays
# train_x, train_y, test_x, test_y, classes (and optionally "extras", dataset-specific objects).
# Its keyword parameters are what load_dataset accepts for it. Info: ``images`` (default True; False
# for feature data, which is also no OOD set; a loader may return "is_image" to decide per file),
# ``aliases`` (other spellings of the name), ``user`` (a user's data, needing its files named: no OOD
# set by name), ``embedded`` (True: no files to read, the data ships with the package or is generated; see
# needs_data_dir) and ``augment_by_kind`` (default augmentation by kind, see gence.data.augment).

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

LOADER_ARGUMENTS = ("data_dir", "cache")


@register_dataset("digits", "8x8 handwritten digits (UCI optdigits test set), 1,200 train / 597 test, embedded",
                  embedded=True)
def digits(data_dir, cache):
    with np.load(Path(__file__).with_name("digits.npz")) as f:
        images, labels = f["images"], f["labels"]
    # 0..16 -> 0..255, one-to-one (see module docstring).
    x = np.round(images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = labels.astype(np.int64)
    # Fixed split: the array is ordered by writer (it is the UCI optdigits test set), so the last 597
    # images come from other writers than the first 1,200; 117..123 training images per class.
    n_train = 1200
    return {"train_x": x[:n_train], "train_y": y[:n_train], "test_x": x[n_train:], "test_y": y[n_train:],
            "classes": np.asarray(DIGIT_CLASSES)}


_IDX_FILES = [
    ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
]


def _load_idx(name: str, subdirs: Sequence[str], class_names: Sequence[str], data_dir, cache) -> dict:
    """A dataset of four IDX files (MNIST's format), gzipped or not."""
    root = resolve_data_dir(data_dir, name)
    expected = [[a + s for a in alts for s in ("", ".gz")] for alts in _IDX_FILES]
    folder, found = _find_with(root, subdirs, expected)
    if folder is None:
        raise _not_found(name, found, "the IDX files " + ", ".join(f"{a[0]}[.gz]" for a in _IDX_FILES))

    def decode():
        tx, ty, sx, sy = (readers.read_idx(p) for p in found)
        for what, xs, ys in (("train", tx, ty), ("test", sx, sy)):
            if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
                raise ValueError(f"{folder}: {what} images {xs.shape} and labels {ys.shape} do not match")
        return {"train_x": tx.astype(np.uint8)[:, None], "train_y": ty.astype(np.int64),
                "test_x": sx.astype(np.uint8)[:, None], "test_y": sy.astype(np.int64),
                "classes": np.asarray(class_names)}

    return cached_arrays(f"{name}-idx-{_CACHE_VERSION}", found, decode, cache)


@register_dataset("mnist", "MNIST handwritten digits, 28x28 gray, 60,000 train / 10,000 test (IDX files)")
def mnist(data_dir, cache):
    return _load_idx("mnist", ["mnist", "MNIST"], DIGIT_CLASSES, data_dir, cache)


@register_dataset("fashion_mnist", "Fashion-MNIST clothing, 28x28 gray, 60,000 train / 10,000 test (IDX files)",
                  aliases=("fashionmnist",))
def fashion_mnist(data_dir, cache):
    return _load_idx("fashion_mnist", ["fashion_mnist", "fashion-mnist", "FashionMNIST", "fashion"],
                     FASHION_MNIST_CLASSES, data_dir, cache)


def _load_cifar(variant: str, data_dir, cache, label_type: str = "fine") -> dict:
    """CIFAR-10/100 from the python pickles, their archive, an image tree or a tar of one."""
    folder_name = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[variant]
    tar_name = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[variant]
    pickle_files = {"cifar10": [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"],
                    "cifar100": ["train", "test", "meta"]}[variant]
    tree_dirs = [variant, f"{variant}-jpeg", f"{variant}-png", f"{variant}_jpeg", f"{variant}_png"]
    tar_names = [f"{b}{ext}" for b in tree_dirs for ext in (".tar.gz", ".tgz", ".tar")]
    root = resolve_data_dir(data_dir, variant)
    kind = f"{variant}-{label_type}"
    class_names = CIFAR10_CLASSES if variant == "cifar10" else None
    searched = []

    # 1. The pickle batches (exact pixels): a folder, or the archive torchvision downloads.
    if root.is_dir():
        for d in (root / folder_name, root / variant / folder_name, root):
            files = [d / f for f in pickle_files]
            searched.append(str(d))
            if all(f.is_file() for f in files):
                def decode(d=d):
                    return readers.read_cifar_pickles(lambda m: open(d / m, "rb"), variant, label_type)
                return cached_arrays(f"{kind}-pickle-{_CACHE_VERSION}", files, decode, cache)
        for t in (root / tar_name, root / variant / tar_name):
            searched.append(str(t))
            if t.is_file():
                return cached_arrays(f"{kind}-pickletar-{_CACHE_VERSION}", [t],
                                     lambda t=t: _read_pickle_tar(t, folder_name, variant, label_type), cache)
    # 2. An image folder tree {train,test}/<class>/*, 3. or such a tree in a tar archive.
    if variant == "cifar100" and label_type != "fine":
        raise ValueError(f"label_type={label_type!r} needs the cifar-100 pickles; image trees only have fine labels")
    tree_candidates = [root / d for d in tree_dirs] + [root] if root.is_dir() else []
    for d in tree_candidates:
        searched.append(str(d))
        if (d / "train").is_dir() and (d / "test").is_dir():
            # every image file in the key: an image edited in place changes no folder's mtime
            files = [path for _, _, path in readers.list_image_tree(d)]
            return cached_arrays(f"{kind}-tree-{_CACHE_VERSION}", [d / "train", d / "test", *files],
                                 lambda d=d: readers.read_image_tree(d, class_names), cache)
    tars = [root] if root.is_file() else [root / t for t in tar_names]
    for t in tars:
        searched.append(str(t))
        if t.is_file():
            return cached_arrays(f"{kind}-tar-{_CACHE_VERSION}", [t],
                                 lambda t=t: readers.read_image_tar(t, class_names), cache)
    raise _not_found(
        variant, searched,
        f"the python pickles {folder_name}/{{{','.join(pickle_files)}}} (or {tar_name}), an image tree "
        f"train/<class>/*, test/<class>/* in one of {tree_dirs}, or such a tree packed as one of {tar_names}",
    )


def _read_pickle_tar(path: Path, folder_name: str, variant: str, label_type: str):
    with tarfile.open(path, "r:*") as tar:
        members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers()
                   if m.isfile() and f"{folder_name}/" in m.name}
        return readers.read_cifar_pickles(lambda m: io.BytesIO(tar.extractfile(members[m]).read()),
                                          variant, label_type)


@register_dataset("cifar10", "CIFAR-10, 32x32 RGB, 10 classes, 50,000 train / 10,000 test", aliases=("cifar_10",))
def cifar10(data_dir, cache):
    return _load_cifar("cifar10", data_dir, cache)


@register_dataset("cifar100", "CIFAR-100, 32x32 RGB, label_type='fine' (100 classes) or 'coarse' (20 superclasses)",
                  aliases=("cifar_100",))
def cifar100(data_dir, cache, label_type: str = "fine"):
    return _load_cifar("cifar100", data_dir, cache, label_type)


@register_dataset("svhn", "SVHN cropped house-number digits, 32x32 RGB (train_32x32.mat, test_32x32.mat)")
def svhn(data_dir, cache):
    root = resolve_data_dir(data_dir, "svhn")
    folder, found = _find_with(root, ["svhn", "SVHN"], [["train_32x32.mat"], ["test_32x32.mat"]])
    if folder is None:
        raise _not_found("svhn", found, "train_32x32.mat and test_32x32.mat")

    def decode():
        (tx, ty), (sx, sy) = (readers.read_svhn_mat(p) for p in found)
        return {"train_x": tx, "train_y": ty, "test_x": sx, "test_y": sy, "classes": np.asarray(DIGIT_CLASSES)}

    return cached_arrays(f"svhn-mat-{_CACHE_VERSION}", found, decode, cache)


@register_dataset("gaussians", "synthetic Gaussian classes with the exact posterior p(y|x) (GaussianTask)",
                  images=False, embedded=True, forwards_to=(GaussianTask,))
def gaussians(data_dir, cache, n_train: int = 1000, n_test: int = 10000, sample_seed=None, **task_params):
    """``task_params`` make the :class:`GaussianTask` (``num_classes``, ``dim``, ``seed`` fixing its means
    and covariances, ``priors``, ...); ``sample_seed`` (default the task's ``seed``) fixes the samples."""
    task = GaussianTask(**task_params)
    # One generator for both splits: train and test are independent draws, fixed by sample_seed.
    rng = np.random.default_rng(task.seed if sample_seed is None else sample_seed)
    train_x, train_y = task.sample(int(n_train), generator=rng)
    test_x, test_y = task.sample(int(n_test), generator=rng)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "classes": np.asarray([str(k) for k in range(task.num_classes)]), "extras": {"task": task}}


def available() -> dict[str, str]:
    """Names ``load_dataset`` accepts, each with a one-line description."""
    return DATASETS.available()


def image_datasets() -> list[str]:
    """Registered datasets of images (not feature vectors) that load by name alone (not a user's
    ``folder``/``arrays``, which need their files named), sorted: the OOD sets by dataset name."""
    return [n for n in DATASETS.names()
            if DATASETS.get(n).info.get("images", True) and not DATASETS.get(n).info.get("user", False)]


def needs_data_dir(name: str) -> bool:
    """Whether loading dataset ``name`` (any spelling :func:`load_dataset` takes) reads files from its
    ``data_dir`` or ``$GENCE_DATA``, whatever its params. False for data without files (registry info
    ``embedded``: ``digits`` ships with the package, ``gaussians`` is generated) and for a user's data (info
    ``user``: ``folder``, ``arrays``, ``csv``), whose params may name its files, absolute paths included, so
    only loading it can tell. ValueError for an unknown name."""
    info = DATASETS.get(_canonical(name)).info
    return not (info.get("embedded", False) or info.get("user", False))


def _canonical(name: str) -> str:
    """The registered name ``name`` spells (case, ``-`` for ``_`` and aliases aside); ValueError if none."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        key = next((n for n in DATASETS.names() if key in DATASETS.get(n).info.get("aliases", ())), key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset name={name!r}; expected one of: {', '.join(DATASETS.names())}")
    return key


def _class_indices(classes: Sequence[Any], names: Sequence[str]) -> list[int]:
    out = []
    for c in classes:
        if isinstance(c, str) and c in names:
            idx = list(names).index(c)
        elif isinstance(c, str) and not c.isdigit():
            raise ValueError(f"classes: unknown class {c!r}; the classes are {list(names)}")
        else:
            idx = int(c)
            if not 0 <= idx < len(names):
                raise ValueError(f"classes: index {c!r} out of range 0..{len(names) - 1}")
        out.append(idx)
    if len(set(out)) != len(out):
        raise ValueError(f"classes: {list(classes)} names a class twice")
    if not out:
        raise ValueError("classes: empty list; give at least one class")
    return out


def _keep(x: torch.Tensor, y: torch.Tensor, kept: Sequence[int], num_source: int):
    lut = torch.full((num_source,), -1, dtype=torch.int64)
    lut[torch.as_tensor(kept)] = torch.arange(len(kept))
    new = lut[y]
    mask = new >= 0
    return x[mask], new[mask]


def dataset_files_problem(name: str, data_dir: str | os.PathLike | None = None, **params) -> str | None:
    """Why :func:`load_dataset` would fail to find or accept the files of ``name`` (its error message), or
    None; it searches the folders as the loader does and decodes nothing (:func:`gence.data.cache.find_only`)."""
    try:
        find_only(lambda: load_dataset(name, data_dir, **params))
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        return str(exc)
    return None


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, classes: Sequence | None = None,
                 *, cache: bool = True, **params) -> ArrayDataset:
    """Load a dataset by name (see ``available()``) as an ``ArrayDataset`` of CPU tensors.

    Args:
        name: ``digits`` (embedded, needs no directory), ``mnist``, ``fashion_mnist``, ``cifar10``,
            ``cifar100``, ``svhn``, ``gaussians`` (synthetic with a known posterior).
        data_dir: folder holding the files (searched in ``data_dir/<name>/``, ``data_dir/<name>/raw``
            and ``data_dir``); for cifar10 also the path of a ``.tar.gz`` image tree. Default
            ``$GENCE_DATA``.
        classes: keep only these classes (indices or names), relabelled 0..k-1 in the order given.
        cache: read/write decoded arrays in ``$GENCE_CACHE`` (default ``~/.cache/gence``).
        **params: ``folder``, ``arrays``, ``csv`` (a user's data): see :mod:`gence.data.userdata`;
            ``cifar100``: ``label_type='fine'|'coarse'``; ``gaussians``: ``num_classes`` (3),
            ``dim`` (2), ``n_train`` (1000), ``n_test`` (10000), ``seed`` (0; the task), ``sample_seed``
            (default ``seed``; the samples), and any other ``GaussianTask`` argument (``priors``,
            ``separation``, ``covariance``, ``imbalance_ratio``, ...).
    """
    key = _canonical(name)
    entry = DATASETS.get(key)
    check_keywords(f"dataset {key!r}", params,
                   keyword_names(entry.builder, LOADER_ARGUMENTS, entry.info.get("forwards_to", ())))
    given_params = dict(params)
    arrays = dict(entry.builder(data_dir, cache, **params))
    extras = arrays.pop("extras", {})
    is_image = arrays.pop("is_image", entry.info.get("images", True))  # a loader may tell per file (arrays)
    image_shape = tuple(int(s) for s in arrays["train_x"].shape[1:]) if is_image else None
    train_x = torch.from_numpy(np.ascontiguousarray(arrays["train_x"]))
    test_x = torch.from_numpy(np.ascontiguousarray(arrays["test_x"]))
    train_y = torch.from_numpy(np.asarray(arrays["train_y"], dtype=np.int64))
    test_y = torch.from_numpy(np.asarray(arrays["test_y"], dtype=np.int64))
    source_classes = [str(c) for c in arrays["classes"]]
    kept = None
    class_names = source_classes
    if classes is not None:
        kept = _class_indices(classes, source_classes)
        train_x, train_y = _keep(train_x, train_y, kept, len(source_classes))
        test_x, test_y = _keep(test_x, test_y, kept, len(source_classes))
        class_names = [source_classes[i] for i in kept]
    return ArrayDataset(
        name=key, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        num_classes=len(class_names), classes=class_names, image_shape=image_shape,
        source=key, data_dir=None if data_dir is None else str(data_dir), params=given_params,
        kept_classes=kept, source_classes=source_classes, extras=extras,
    )


