"""On-disk cache of decoded arrays, so that slow decodes (60,000 JPEGs) happen once.

Arrays are stored as one uncompressed ``.npz`` per source under ``$GENCE_CACHE`` (default
``~/.cache/gence``). The key is a hash of the reader's name and version and of every source path with
its size and modification time: replacing, touching or moving a source file makes a new entry, and the
old one is simply never read again. Entries are written to a temporary file and renamed, so a killed
process leaves no half-written entry behind.
"""
from __future__ import annotations

import contextvars
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

__all__ = ["cache_dir", "source_key", "cached_arrays", "find_only"]

_FIND_ONLY = contextvars.ContextVar("gence_find_only", default=False)


class _FilesFound(Exception):
    """Raised by :func:`cached_arrays` under :func:`find_only`: the loader has found every file it reads."""


def find_only(load: Callable[[], object]) -> None:
    """Call ``load`` (a dataset loader) only as far as finding its files: it stops where it would read or
    decode them (:func:`cached_arrays`, which every file-reading loader calls with the files it found). Its
    own errors, e.g. ``FileNotFoundError`` naming where it searched, propagate; a loader that reads no files
    runs to its end."""
    token = _FIND_ONLY.set(True)
    try:
        load()
    except _FilesFound:
        pass
    finally:
        _FIND_ONLY.reset(token)


def cache_dir() -> Path:
    """The cache folder: ``$GENCE_CACHE`` if set, else ``~/.cache/gence``."""
    env = os.environ.get("GENCE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gence"


def source_key(kind: str, paths: Iterable[str | os.PathLike]) -> str:
    """A hash of ``kind`` and of each path's resolved name, size and mtime (nanoseconds)."""
    h = hashlib.sha256(kind.encode())
    for p in sorted(str(Path(p).resolve()) for p in paths):
        st = os.stat(p)
        h.update(f"\0{p}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def cached_arrays(
    kind: str,
    paths: Iterable[str | os.PathLike],
    decode: Callable[[], dict[str, np.ndarray]],
    enabled: bool = True,
) -> dict[str, np.ndarray]:
    """Return ``decode()``'s arrays, from the cache when an entry for these sources exists.

    ``kind`` names the reader (and its version: bump it when the decoded result changes).
    Any failure to write the cache (read-only home, full disk) is ignored: caching is an optimisation.
    """
    paths = list(paths)
    if _FIND_ONLY.get():
        raise _FilesFound
    if not enabled:
        return decode()
    path = cache_dir() / f"{kind.replace('/', '_')}-{source_key(kind, paths)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError):
            pass  # a corrupt entry: decode again and overwrite it
    arrays = decode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass
    return arrays
