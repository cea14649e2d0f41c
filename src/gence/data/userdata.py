"""A user's own data as registered datasets: ``folder`` (an image tree), ``arrays`` (an ``.npz``), ``csv``.

    load_dataset("folder", "/data/xray")                       # root/train/<class>/*, root/test/<class>/*
    load_dataset("folder", root="/data/xray", size=64)         # resized to 64x64
    load_dataset("arrays", "/data/mine.npz")                   # x_train, y_train, x_test, y_test
    load_dataset("csv", "/data/table.csv", label="diagnosis")  # one file, split by the seeded rule

They go through ``load_dataset`` like the built-ins, so regimes, the validation split, ``classes=``,
OOD sets and the cache work the same; the mean and std come from the training split. Their default
augmentation is by kind (``augment_by_kind``; see :mod:`gence.data.augment`): RGB images crop + flip
(when at least 32x32; crop alone when smaller), grayscale images crop, features none.

Where the files are: the ``root`` (folder) or ``path`` (arrays, csv) parameter, absolute or relative to
``data_dir``; without it, ``data_dir`` itself (default ``$GENCE_DATA``). A folder holding exactly one
``.npz`` names it for ``arrays``; a folder holding ``train.csv`` and ``test.csv`` is a split ``csv``.

The split rule, for one tree / one table without a test part (:func:`split_per_class`): per class (in
class order), the items sorted by file name (folder) or row order (csv) are permuted by one
``numpy.random.default_rng(split_seed)`` generator drawn class after class; the first
``n_test = min(n - 1, max(1, floor(test_fraction * n + 0.5)))`` of the permutation are the test split,
the rest the training split. Every class needs at least 2 items.

Class order: the sorted class folder names (folder), the sorted distinct labels (arrays without a
``classes`` array, csv; numbers sorted as numbers); class ``k`` is ``classes[k]``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gence.data import readers
from gence.data.cache import cached_arrays
from gence.data.datasets import register_dataset, resolve_data_dir

__all__ = ["split_per_class", "list_class_folders", "folder", "arrays", "csv_table", "USER_DATASETS"]

USER_DATASETS = ("folder", "arrays", "csv")
_VERSION = "v1"
FOLDER_MODES = ("auto", "rgb", "gray")


# ---------------------------------------------------------------------------------------------------
# shared rules


def split_per_class(labels: np.ndarray, test_fraction: float, seed: int, what: str,
                    classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) of ``labels`` by the seeded per-class rule of the module docstring,
    each sorted. ValueError naming the class when it has fewer than 2 items."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"{what}: test_fraction={test_fraction!r}; expected a number strictly between 0 and 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{what}: split_seed={seed!r}; expected an integer >= 0")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k, name in enumerate(classes):
        idx = np.flatnonzero(labels == k)
        n = len(idx)
        if n < 2:
            raise ValueError(f"{what}: class {name!r} has {n} item(s); splitting into train and test "
                             f"needs at least 2 per class")
        n_test = min(n - 1, max(1, math.floor(test_fraction * n + 0.5)))
        perm = rng.permutation(n)
        test.append(idx[perm[:n_test]])
        train.append(idx[perm[n_test:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _location(param: str, value, data_dir, name: str) -> Path:
    """``value`` (absolute, or relative to ``data_dir``), else ``data_dir`` / ``$GENCE_DATA``."""
    if value is not None:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ValueError(f"dataset {name!r}: {param}={value!r}; expected a path")
        p = Path(value).expanduser()
        return p if p.is_absolute() or data_dir is None else Path(data_dir).expanduser() / p
    try:
        return resolve_data_dir(data_dir, name)
    except ValueError:
        # the command line names data_dir by its flag (gence.contract.runtime_flags)
        raise ValueError(f"dataset {name!r} needs its files: pass {param}=PATH (a dataset param), "
                         f"data_dir=PATH or set GENCE_DATA") from None


def _params_tag(**params: Any) -> str:
    """A short stable hash of the params that change the decoded arrays (part of the cache kind)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _label_codes(values: Sequence, what: str) -> tuple[np.ndarray, list[str]]:
    """Labels (numbers or strings) -> (codes 0..K-1, class names): the sorted distinct values."""
    values = list(values)
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = None
    if numbers is not None and all(math.isfinite(v) for v in numbers):
        distinct = sorted(set(numbers))
        names = [str(int(v)) if float(v).is_integer() else str(v) for v in distinct]
        lut = {v: i for i, v in enumerate(distinct)}
        return np.asarray([lut[v] for v in numbers], dtype=np.int64), names
    strings = [str(v) for v in values]
    distinct = sorted(set(strings))
    lut = {v: i for i, v in enumerate(distinct)}
    return np.asarray([lut[v] for v in strings], dtype=np.int64), distinct


# ---------------------------------------------------------------------------------------------------
# folder


def list_class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class folder name: sorted image files}`` for ``root/<class>/*`` (hidden folders and files
    without an image suffix are skipped). ValueError naming the folder when it has no class folder,
    or when a class folder holds no image file."""
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; expected class folders {root}/<class>/*.png|jpg|...")
    out = {}
    for cdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in cdir.iterdir() if f.is_file() and readers._is_image(f.name))
        if not files:
            others = sum(1 for f in cdir.iterdir())
            raise ValueError(f"{cdir}: empty class folder (no image file: {', '.join(readers.IMAGE_SUFFIXES)}; "
                             f"{others} other entries); put its images there or remove the folder")
        out[cdir.name] = files
    if not out:
        raise ValueError(f"{root}: no class folders; expected {root}/<class>/*.png|jpg|... "
                         f"(or {root}/train/<class>/* and {root}/test/<class>/*)")
    return out


def _size(value, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{what}: size={value!r}; expected null (keep the images' own size), an integer > 0 "
                     f"(square) or [H, W]")


@register_dataset("folder", "your image tree: root/train/<class>/*, root/test/<class>/* (or root/<class>/*, "
                  "split by a seeded rule); size, mode, test_fraction, split_seed", augment_by_kind=True,
                  user=True)
def folder(data_dir, cache, root=None, size=None, mode: str = "auto", test_fraction: float = 0.2,
           split_seed: int = 0):
    """An image tree. ``root`` (default ``data_dir``) holds ``train/<class>/*`` and ``test/<class>/*``
    (the same class folders), or ``<class>/*`` split by :func:`split_per_class` (``test_fraction``,
    ``split_seed``). ``size``: an int or [H, W] to resize to; None keeps the images' size (they must all
    have one). ``mode``: ``"auto"`` (gray when every image is single-channel, else RGB), ``"rgb"`` or
    ``"gray"``."""
    where = "dataset 'folder'"
    root = _location("root", root, data_dir, "folder")
    hw = _size(size, where)
    if mode not in FOLDER_MODES:
        raise ValueError(f"{where}: mode={mode!r}; expected one of {', '.join(map(repr, FOLDER_MODES))}")
    split_layout = (root / "train").is_dir() or (root / "test").is_dir()
    if split_layout:
        for part in ("train", "test"):
            if not (root / part).is_dir():
                raise ValueError(f"{root}: has {'train' if part == 'test' else 'test'}/ but no {part}/; "
                                 f"expected both {root}/train/<class>/* and {root}/test/<class>/*")
        trees = {part: list_class_folders(root / part) for part in ("train", "test")}
        if set(trees["train"]) != set(trees["test"]):
            only_train = sorted(set(trees["train"]) - set(trees["test"]))
            only_test = sorted(set(trees["test"]) - set(trees["train"]))
            raise ValueError(f"{root}: train/ and test/ have different class folders (only in train/: "
                             f"{only_train}, only in test/: {only_test}); expected the same classes in both")
        classes = sorted(trees["train"])
        files = [f for part in ("train", "test") for c in classes for f in trees[part][c]]
        split = None
    else:
        tree = list_class_folders(root)
        classes = sorted(tree)
        files = [f for c in classes for f in tree[c]]
        split = (test_fraction, split_seed)
        # checked before decoding anything: a bad value should not cost a decode
        split_per_class(np.zeros(2, dtype=np.int64), test_fraction, split_seed, where, ["-"])

    def decode():
        x = readers.read_image_files(files, mode=mode, size=hw)
        if split is None:
            counts = {part: [len(trees[part][c]) for c in classes] for part in ("train", "test")}
            n_train = sum(counts["train"])
            y = lambda part: np.repeat(np.arange(len(classes)), counts[part]).astype(np.int64)  # noqa: E731
            return {"train_x": x[:n_train], "train_y": y("train"), "test_x": x[n_train:], "test_y": y("test"),
                    "classes": np.asarray(classes, dtype=str)}
        labels = np.repeat(np.arange(len(classes)), [len(tree[c]) for c in classes]).astype(np.int64)
        tr, te = split_per_class(labels, test_fraction, split_seed, where, classes)
        return {"train_x": x[tr], "train_y": labels[tr], "test_x": x[te], "test_y": labels[te],
                "classes": np.asarray(classes, dtype=str)}

    kind = f"folder-{_VERSION}-{_params_tag(size=hw, mode=mode, split=split)}"
    return cached_arrays(kind, [*files, *{f.parent for f in files}], decode, cache)


# ---------------------------------------------------------------------------------------------------
# arrays

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
LAYOUTS = ("auto", "nchw", "nhwc")


def _single_file(path: Path, suffix: str, name: str, param: str) -> Path:
    if path.is_dir():
        found = sorted(path.glob(f"*{suffix}"))
        if len(found) != 1:
            raise ValueError(f"dataset {name!r}: {path} holds {len(found)} {suffix} files "
                             f"({', '.join(f.name for f in found[:5])}); expected exactly one, or pass "
                             f"{param}=FILE")
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name!r}: {path} does not exist; expected a {suffix} file")
    return path


def _image_array(x: np.ndarray, layout: str, what: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise ValueError(f"{what}: images must be uint8 (0..255), got {x.dtype} of shape {x.shape}; convert "
                         f"with (x * 255).round().astype(np.uint8), or give features as a 2-D array (N, D)")
    if x.ndim == 3:
        return x[:, None]
    if layout == "auto":
        layout = "nchw" if x.shape[1] in (1, 3) else "nhwc" if x.shape[3] in (1, 3) else None
        if layout is None:
            raise ValueError(f"{what}: shape {x.shape} has 1 or 3 channels on neither axis 1 (N, C, H, W) nor "
                             f"axis 3 (N, H, W, C); expected gray or RGB images")
    return np.ascontiguousarray(x if layout == "nchw" else x.transpose(0, 3, 1, 2))


@register_dataset("arrays", "your arrays: an .npz with x_train, y_train, x_test, y_test (optional classes); "
                  "images uint8 (N, H, W), (N, C, H, W) or (N, H, W, C), or features (N, D)",
                  augment_by_kind=True, user=True)
def arrays(data_dir, cache, path=None, layout: str = "auto"):
    """An ``.npz`` (``path``, default ``data_dir``: the file, or a folder with exactly one). ``x_*``:
    uint8 images (N, H, W) gray, (N, C, H, W) or (N, H, W, C) with C in 1, 3 (``layout``: ``"auto"``
    (channels on axis 1 when it is 1 or 3, else on axis 3), ``"nchw"``, ``"nhwc"``), or numeric
    features (N, D). ``y_*``: labels (integers or strings); with a ``classes`` array, integers
    0..len(classes)-1. Not cached: an .npz is already decoded."""
    file = _single_file(_location("path", path, data_dir, "arrays"), ".npz", "arrays", "path")
    if layout not in LAYOUTS:
        raise ValueError(f"dataset 'arrays': layout={layout!r}; expected one of {', '.join(map(repr, LAYOUTS))}")
    try:
        npz = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: cannot read this .npz ({exc})") from None
    with npz:
        missing = [k for k in NPZ_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{file}: no {', '.join(missing)}; expected arrays {', '.join(NPZ_KEYS)} "
                             f"(optionally classes), found {sorted(npz.files)}")
        d = {k: npz[k] for k in (*NPZ_KEYS, *(["classes"] if "classes" in npz.files else []))}
    for part in ("train", "test"):
        x, y = d[f"x_{part}"], d[f"y_{part}"]
        if y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{file}: x_{part} {x.shape} and y_{part} {y.shape} do not match; expected "
                             f"y_{part} of shape ({len(x)},)")
        if x.ndim not in (2, 3, 4) or len(x) == 0:
            raise ValueError(f"{file}: x_{part} has shape {x.shape}; expected (N, D) features or (N, H, W), "
                             f"(N, C, H, W), (N, H, W, C) images, N >= 1")
    is_image = d["x_train"].ndim > 2
    if is_image:
        tx, sx = (_image_array(d[f"x_{p}"], layout, f"{file}: x_{p}") for p in ("train", "test"))
    else:
        tx, sx = (_features(d[f"x_{p}"], f"{file}: x_{p}") for p in ("train", "test"))
    if tx.shape[1:] != sx.shape[1:]:
        raise ValueError(f"{file}: x_train items are {tx.shape[1:]} but x_test items {sx.shape[1:]}; "
                         f"expected the same shape")
    n_train = len(tx)
    if "classes" in d:
        classes = [str(c) for c in d["classes"]]
        y = np.concatenate([d["y_train"], d["y_test"]])
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(classes):
            raise ValueError(f"{file}: with a classes array ({len(classes)} names), y_train and y_test must be "
                             f"integers in 0..{len(classes) - 1}; got {y.dtype} in {y.min()}..{y.max()}")
        codes = y.astype(np.int64)
    else:
        codes, classes = _label_codes(np.concatenate([d["y_train"], d["y_test"]]).tolist(), str(file))
    _every_class_trains(codes[:n_train], classes, str(file))
    return {"train_x": tx, "train_y": codes[:n_train], "test_x": sx, "test_y": codes[n_train:],
            "classes": np.asarray(classes, dtype=str), "is_image": is_image}


def _features(x: np.ndarray, what: str) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{what}: features must be numbers, got {x.dtype}")
    out = x.astype(np.float32)
    if not np.isfinite(out).all():
        row = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise ValueError(f"{what}: row {row} holds a NaN or infinite value; expected finite features")
    return out


def _every_class_trains(train_y: np.ndarray, classes: Sequence[str], what: str) -> None:
    counts = np.bincount(train_y, minlength=len(classes))
    absent = [c for c, n in zip(classes, counts) if n == 0]
    if absent:
        raise ValueError(f"{what}: classes {absent} have no training item; expected every class in the "
                         f"training split")


# ---------------------------------------------------------------------------------------------------
# csv


def _read_table(path: Path, label: str, delimiter: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(feature column names, float32 features, label strings) of a CSV file with a header row."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset 'csv': {path} does not exist; expected a .csv file")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter=delimiter))
    if not rows:
        raise ValueError(f"{path}: empty file; expected a header row, then one row per item")
    header = [h.strip() for h in rows[0]]
    if label not in header:
        raise ValueError(f"{path}: no label column {label!r}; the columns are {header} (pass label=NAME)")
    li = header.index(label)
    names = [h for i, h in enumerate(header) if i != li]
    if not names:
        raise ValueError(f"{path}: only the label column {label!r}; expected feature columns beside it")
    feats, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} fields, expected {len(header)} (the header's)")
        values = []
        for i, cell in enumerate(row):
            if i == li:
                continue
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise ValueError(f"{path}, line {line}, column {header[i]!r}: {cell!r} is not a finite number; "
                                 f"expected numeric features (encode categories as numbers)")
            values.append(v)
        if not row[li].strip():
            raise ValueError(f"{path}, line {line}: empty label in column {label!r}")
        feats.append(values)
        labels.append(row[li].strip())
    if not labels:
        raise ValueError(f"{path}: a header but no rows")
    return names, np.asarray(feats, dtype=np.float32), labels


@register_dataset("csv", "your table: a CSV with a header, numeric feature columns and a label column "
                  "(label='label'); one file split by a seeded rule, or path + test_path", images=False,
                  augment_by_kind=True, user=True)
def csv_table(data_dir, cache, path=None, test_path=None, label: str = "label", test_fraction: float = 0.2,
              split_seed: int = 0, delimiter: str = ","):
    """Tabular data for the MLP. ``path`` (default ``data_dir``): a CSV file, split by
    :func:`split_per_class` unless ``test_path`` names the test file; or a folder with ``train.csv``
    and ``test.csv``. Every column but ``label`` is a feature (a finite number); labels are any text,
    classes their sorted distinct values (numbers sorted as numbers)."""
    where = "dataset 'csv'"
    loc = _location("path", path, data_dir, "csv")
    if loc.is_dir():
        if test_path is not None:
            raise ValueError(f"{where}: test_path={test_path!r} with a folder {loc}; expected path=TRAIN.csv")
        train_file, test_file = loc / "train.csv", loc / "test.csv"
        if not (train_file.is_file() and test_file.is_file()):
            raise FileNotFoundError(f"{where}: {loc} is a folder without train.csv and test.csv; expected "
                                    f"them, or path=FILE.csv")
    else:
        train_file = loc
        test_file = None if test_path is None else _location("test_path", test_path, data_dir, "csv")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"{where}: delimiter={delimiter!r}; expected one character")
    split = None if test_file is not None else (test_fraction, split_seed)
    if split is not None:
        split_per_class(np.zeros(2, dtype=np.int64), test_fraction, split_seed, where, ["-"])

    def decode():
        names, tx, ty = _read_table(train_file, label, delimiter)
        if test_file is None:
            codes, classes = _label_codes(ty, str(train_file))
            tr, te = split_per_class(codes, test_fraction, split_seed, where, classes)
            return {"train_x": tx[tr], "train_y": codes[tr], "test_x": tx[te], "test_y": codes[te],
                    "classes": np.asarray(classes, dtype=str)}
        test_names, sx, sy = _read_table(test_file, label, delimiter)
        if test_names != names:
            raise ValueError(f"{test_file}: feature columns {test_names} differ from {train_file}'s {names}; "
                             f"expected the same columns in the same order")
        codes, classes = _label_codes(ty + sy, str(train_file))
        _every_class_trains(codes[:len(ty)], classes, str(train_file))
        return {"train_x": tx, "train_y": codes[:len(ty)], "test_x": sx, "test_y": codes[len(ty):],
                "classes": np.asarray(classes, dtype=str)}

    files = [train_file] + ([test_file] if test_file is not None else [])
    kind = f"csv-{_VERSION}-{_params_tag(label=label, split=split, delimiter=delimiter)}"
    return cached_arrays(kind, files, decode, cache)
