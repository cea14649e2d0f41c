"""Helpers shared by test modules (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import gzip
import json
import os
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import numpy as np

# A block sweeping lr for CE and GenCE and a block tuned on it: the smallest grid with a `tune`.
TUNED_GRID = """
[train]
epochs = 1
[[grid]]
name = "tune"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [100, 101]
sweep = { lr = [0.01, 0.03, 0.1] }
losses = ["ce", "gence"]
[[grid]]
name = "main"
tune = { from = ["tune"], field = "lr", metric = "val/error" }
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0, 1]
losses = ["ce", "gence"]
"""


def grid_file(tmp_path: Path, text: str) -> Path:
    """``text`` (dedented) written as tmp_path/grid.toml."""
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(text))
    return path


def fake_run_module(tmp_path: Path, monkeypatch, module: str, source: str, log_name: str = "runs.log",
                    env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> tuple[str, Path]:
    """Write ``source`` as tmp_path/MODULE.py, a run function the runner imports (``--run-fn MODULE:run``)
    in this process and in the subprocesses it starts (PYTHONPATH = tmp_path and the checkout's src/).
    ``FAKE_LOG`` names the log it appends to; ``env`` is set and ``unset`` removed for the test.
    Returns the import path of its ``run`` and the log's path."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    log = tmp_path / log_name
    monkeypatch.setenv("FAKE_LOG", str(log))
    for var in unset:
        monkeypatch.delenv(var, raising=False)
    for var, value in (env or {}).items():
        monkeypatch.setenv(var, value)
    src = Path(__file__).resolve().parents[1] / "src"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(src), os.environ.get("PYTHONPATH", "")]))
    return f"{module}:run", log


def stored_rows(db) -> list[dict]:
    """Rows read straight from SQLite, independently of the library."""
    con = sqlite3.connect(db)
    out = [{"key": k, "status": s, "grid": g, "label": lab, "config": json.loads(c),
            "metrics": json.loads(m) if m else None}
           for k, s, g, lab, c, m in con.execute("SELECT key, status, grid, label, config, metrics FROM runs")]
    con.close()
    return out


def start_bench(grid: Path, db: Path, run_fn: str, workers: int) -> subprocess.Popen:
    """`gence bench GRID --db DB --run-fn RUN_FN --workers N --quiet --no-report` in a subprocess (stderr
    piped, as text)."""
    cmd = [sys.executable, "-c", "import sys; from gence.cli import main; sys.exit(main(sys.argv[1:]))",
           "bench", str(grid), "--db", str(db), "--run-fn", run_fn, "--quiet", "--no-report",
           "--workers", str(workers)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_runs(proc: subprocess.Popen | None, db: Path, enough: Callable[[int, int], bool],
                  timeout: float) -> bool:
    """Poll ``db`` until ``enough(done, running)`` (row counts by status) or ``timeout`` seconds; return
    whether it was reached. With a ``proc`` (a grid in a subprocess), stop early if it exits and assert that
    it is still running then (its stderr in the message otherwise); with ``None`` (a grid in this process, on
    another thread) just wait: the caller must not interrupt a grid that may have finished, or its signal
    lands in whatever test runs next."""
    deadline = time.time() + timeout
    reached = False
    while time.time() < deadline and (proc is None or proc.poll() is None):
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as con:
                    done, running = con.execute("SELECT COALESCE(SUM(status = 'done'), 0), "
                                                "COALESCE(SUM(status = 'running'), 0) FROM runs").fetchone()
            except sqlite3.OperationalError:  # not created yet
                done = running = 0
            if enough(done, running):
                reached = True
                break
        time.sleep(0.02)
    if proc is not None:
        assert proc.poll() is None, proc.stderr.read()
    return reached


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write_idx(path, arr, gz):
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def make_mnist_like(folder, rng, gz, n_train=30, n_test=12, size=28, k=10):
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_y": rng.integers(0, k, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_y": rng.integers(0, k, n_test).astype(np.uint8),
    }
    names = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
    for key, fname in names.items():
        write_idx(folder / fname, arrays[key], gz)
    return arrays
