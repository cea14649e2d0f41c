"""File-format readers. Each returns numpy arrays exactly as stored: uint8 images (N, C, H, W), int64 labels.

Formats: IDX (MNIST, Fashion-MNIST; raw or gzipped), CIFAR python pickles (10 and 100, as a folder or
inside the ``.tar.gz`` torchvision downloads), image folder trees ``{train,test}/<class>/<file>``
(JPEG/PNG/...; as a folder or packed in a tar archive), and SVHN ``.mat`` files. Finding the files in a
data directory and caching are the callers' business (``datasets.py``, ``cache.py``).
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from scipy.io import loadmat

__all__ = [
    "read_idx",
    "read_cifar_pickle",
    "read_cifar_pickles",
    "decode_images",
    "read_image_tree",
    "read_image_tar",
    "read_svhn_mat",
    "read_image_files",
    "IMAGE_SUFFIXES",
    "GRAY_MODES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzipped, told apart by content) into a native-endian array."""
    path = Path(path)
    with _open_maybe_gzip(path) as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {data[:4]!r}, expected 00 00 <type> <ndim>)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but {len(data) - offset} bytes follow")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def read_cifar_pickle(fh_or_path) -> dict:
    """Load one CIFAR python pickle (a batch or the meta file) with str keys and str class names."""
    if isinstance(fh_or_path, (str, os.PathLike)):
        with open(fh_or_path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
    else:
        d = pickle.load(fh_or_path, encoding="bytes")
    out = {}
    for k, v in d.items():
        k = k.decode() if isinstance(k, bytes) else k
        if isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[k] = v
    return out


def _cifar_images(batch: dict) -> np.ndarray:
    data = np.asarray(batch["data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32)  # rows are 1024 R, 1024 G, 1024 B values, each row-major


def read_cifar_pickles(
    open_member, variant: str, label_type: str = "fine"
) -> dict[str, np.ndarray]:
    """Read CIFAR-10 (``variant='cifar10'``) or CIFAR-100 (``'cifar100'``) pickles.

    ``open_member(name)`` returns a binary file object for a file of the pickle folder
    (``data_batch_1``..``5``, ``test_batch``, ``batches.meta``; or ``train``, ``test``, ``meta``).
    ``label_type`` (CIFAR-100 only): ``'fine'`` (100 classes, default) or ``'coarse'`` (20 superclasses).
    Returns ``train_x, train_y, test_x, test_y, classes``.
    """
    if variant == "cifar10":
        train_files, test_files, meta_file = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"
        label_key, names_key = "labels", "label_names"
    elif variant == "cifar100":
        if label_type not in ("fine", "coarse"):
            raise ValueError(f"label_type={label_type!r}: expected 'fine' or 'coarse'")
        train_files, test_files, meta_file = ["train"], ["test"], "meta"
        label_key, names_key = f"{label_type}_labels", f"{label_type}_label_names"
    else:
        raise ValueError(f"variant={variant!r}: expected 'cifar10' or 'cifar100'")

    def load(files):
        batches = []
        for f in files:
            with open_member(f) as fh:
                batches.append(read_cifar_pickle(fh))
        x = np.concatenate([_cifar_images(b) for b in batches])
        y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        return x, y

    train_x, train_y = load(train_files)
    test_x, test_y = load(test_files)
    with open_member(meta_file) as fh:
        classes = read_cifar_pickle(fh)[names_key]
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "classes": np.asarray(classes, dtype=str)}


def _pil_image():
    try:
        from PIL import Image  # optional dependency, imported only when image files are decoded
    except ImportError as exc:
        raise ImportError("decoding image files (JPEG, PNG) needs pillow: pip install pillow") from exc
    return Image


def _decode_one(data: bytes, mode: str) -> np.ndarray:
    Image = _pil_image()
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im if im.mode == mode else im.convert(mode))


def decode_images(blobs: Sequence[bytes], mode: str = "RGB", workers: int | None = None) -> np.ndarray:
    """Decode encoded images (JPEG, PNG, ...) with PIL into a uint8 array (N, C, H, W).

    PIL releases the GIL while decoding, so a thread pool uses every core. All images must have the same
    size; ``mode`` is the PIL mode to convert to ('RGB' or 'L').
    """
    if not blobs:
        raise ValueError("decode_images: no images to decode")
    workers = workers or min(8, os.cpu_count() or 1)
    chunk = max(1, len(blobs) // (4 * workers))
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(_decode_one, blobs, [mode] * len(blobs), chunksize=chunk))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images have different sizes {sorted(shapes)[:5]}; every image must have the same size")
    x = np.stack(arrays)
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2).copy()


def _order_classes(found: Sequence[str], class_names: Sequence[str] | None, where: str) -> list[str]:
    """Class index order: ``class_names``' order when given (folders must match it), else sorted names."""
    found = sorted(set(found))
    if class_names is None:
        return found
    lower = {c.lower(): c for c in found}
    missing = [c for c in class_names if c.lower() not in lower]
    extra = sorted(set(lower) - {c.lower() for c in class_names})
    if missing or extra:
        raise ValueError(
            f"{where}: class folders {found} do not match the expected classes {list(class_names)}"
            f" (missing {missing}, unexpected {extra})"
        )
    return [lower[c.lower()] for c in class_names]


def _assemble(entries: dict[str, dict[str, list]], class_names, mode, where) -> dict[str, np.ndarray]:
    """entries[split][class] -> list of (file name, bytes). Sorted by class index, then file name."""
    for split in ("train", "test"):
        if not entries.get(split):
            raise FileNotFoundError(f"{where}: no images under {split}/<class>/ (expected {split}/<class>/*.jpg|png)")
    order = _order_classes(list(entries["train"]) + list(entries["test"]), class_names, where)
    out = {}
    for split in ("train", "test"):
        blobs, labels = [], []
        for idx, cls in enumerate(order):
            files = sorted(entries[split].get(cls, []))
            blobs += [b for _, b in files]
            labels += [idx] * len(files)
        out[f"{split}_x"] = decode_images(blobs, mode)
        out[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
    names = list(class_names) if class_names is not None else order
    out["classes"] = np.asarray(names, dtype=str)
    return out


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not PurePosixPath(name).name.startswith(".")


def list_image_tree(root: str | os.PathLike) -> list[tuple[str, str, Path]]:
    """``(split, class folder, path)`` of every image under ``root/{train,test}/<class>/``, sorted."""
    root = Path(root)
    paths = []
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for cdir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            paths += [(split, cdir.name, cdir / f) for f in sorted(os.listdir(cdir)) if _is_image(f)]
    return paths


def read_image_tree(root: str | os.PathLike, class_names: Sequence[str] | None = None, mode: str = "RGB"):
    """Read ``root/{train,test}/<class>/<image>``; see ``read_image_tar`` for the class order."""
    root = Path(root)
    paths = list_image_tree(root)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        blobs = list(pool.map(lambda t: t[2].read_bytes(), paths, chunksize=256))
    grouped: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for (split, cls, p), b in zip(paths, blobs):
        grouped[split].setdefault(cls, []).append((p.name, b))
    return _assemble(grouped, class_names, mode, str(root))


def read_image_tar(path: str | os.PathLike, class_names: Sequence[str] | None = None, mode: str = "RGB"):
    """Read an image folder tree packed in a tar archive (any compression tarfile knows: gz, bz2, xz).

    Members ``[prefix/]{train,test}/<class>/<image>`` are used; anything else is ignored. Class index
    order is ``class_names`` when given (the folder names must be exactly those, compared
    case-insensitively), else the sorted folder names. Within a class, images are sorted by file name,
    so the result does not depend on the order of members in the archive.
    """
    grouped: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    with tarfile.open(path, "r|*") as tar:  # streaming: one pass over the compressed file
        for member in tar:
            if not member.isfile() or not _is_image(member.name):
                continue
            parts = PurePosixPath(member.name).parts
            if len(parts) < 3 or parts[-3] not in grouped:
                continue
            fh = tar.extractfile(member)
            grouped[parts[-3]].setdefault(parts[-2], []).append((parts[-1], fh.read()))
    return _assemble(grouped, class_names, mode, str(path))


# PIL modes of single-channel images: read as gray ("L"); every other mode is read as RGB.
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _read_file(path: Path, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    """One image file as (H, W) gray or (H, W, 3) RGB uint8; ValueError naming the file if PIL cannot."""
    Image = _pil_image()
    try:
        with Image.open(path) as im:
            im.load()
            gray = im.mode in GRAY_MODES if mode == "auto" else mode == "gray"
            im = im.convert("L" if gray else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: cannot read this image file ({type(exc).__name__}: {exc})") from None


def read_image_files(paths: Sequence[str | os.PathLike], mode: str = "auto",
                     size: tuple[int, int] | None = None, workers: int | None = None) -> np.ndarray:
    """Read image files (anything PIL opens) into one uint8 array (N, C, H, W).

    ``mode``: ``"gray"`` (C = 1), ``"rgb"`` (C = 3; gray images get their channel repeated, alpha is
    dropped), or ``"auto"``: gray when every image is single-channel (:data:`GRAY_MODES`), else RGB.
    ``size``: (H, W) to resize every image to (PIL bilinear, which averages over the source pixels when
    shrinking; the aspect ratio is not kept), or None: every image must already have the same size.
    ValueError naming the file for an unreadable file, and naming two files of different sizes.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_image_files: no image files to read")
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        arrays = list(pool.map(lambda p: _read_file(p, size, mode), paths, chunksize=64))
    sizes: dict[tuple[int, int], Path] = {}
    for p, a in zip(paths, arrays):
        sizes.setdefault(a.shape[:2], p)
    if len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise ValueError(f"images differ in size: {p1} is {s1[0]}x{s1[1]} (HxW) but {p2} is {s2[0]}x{s2[1]}; "
                         f"pass size=[H, W] (or size=N) to resize every image")
    if mode == "auto" and any(a.ndim == 3 for a in arrays):
        arrays = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    x = np.stack(arrays)
    return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits ``*_32x32.mat``: X (32, 32, 3, N) -> (N, 3, 32, 32); label 10 -> 0."""
    m = loadmat(str(path))
    if "X" not in m or "y" not in m:
        raise ValueError(f"{path}: expected variables 'X' and 'y' in an SVHN .mat file, found {sorted(k for k in m if not k.startswith('__'))}")
    x = np.ascontiguousarray(np.asarray(m["X"], dtype=np.uint8).transpose(3, 2, 0, 1))
    y = np.asarray(m["y"], dtype=np.int64).reshape(-1)
    y = np.where(y == 10, 0, y)
    return x, y
