"""The Ray backend on a local Ray cluster with 2 CPUs: a tiny grid trained under Ray equals the local
runner's database (same keys, same metrics), a tuned block waits for its tuning runs, a task whose worker
dies resumes from its checkpoint, a failed task stores its traceback, a driver killed mid-grid loses only the
runs in flight, and a missing Ray is named.

Skipped when Ray is not installed (``pip install ray``); CI installs only ``.[test]``."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gence.cli import main
from gence.experiments import parse_grid, run_grid
from gence.experiments.ray_backend import RayExecutor, import_ray

REPO = Path(__file__).resolve().parents[1]

try:
    import ray
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install ray)")

FAKE = '''
import json, math, os, time

def run(config):
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"seed": config["seed"], "lr": config["lr"], "loss": config["loss"]}) + "\\n")
    opt = {"ce": 0.1, "gence": 0.01}[config["loss"]]
    d = (math.log10(config["lr"]) - math.log10(opt)) ** 2
    err = 0.2 + 0.3 * d + 0.001 * config["seed"]
    return {"val/error": err, "val/nll": 2 * err, "test/error": err}, {}


def run_dies_once(config, checkpoint=None):
    """Saves its "state" (the epoch it reached) and dies like a lost node; the retry resumes from it."""
    if checkpoint is None:
        raise RuntimeError("no checkpoint given")
    if not os.path.exists(checkpoint):
        with open(checkpoint, "w") as f:
            f.write("3")
        os._exit(1)
    with open(checkpoint) as f:
        epoch = int(f.read())
    return {"val/error": 0.5, "test/error": 0.5, "resumed_at_epoch": float(epoch)}, {}
'''

TINY = """
[train]
epochs = 1
device = "cpu"
ood = []
[grid]
name = "tiny"
datasets = ["digits"]
regimes = ["balanced:10"]
models = ["small_cnn"]
seeds = [0, 1]
losses = ["ce", "gence"]
"""

MANY = """
[train]
epochs = 1
[grid]
name = "many"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
losses = ["ce"]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray cluster (2 CPUs) for the module; its workers import the fake run function."""
    if ray is None:
        pytest.skip("Ray is not installed (pip install ray)")
    where = tmp_path_factory.mktemp("ray")
    (where / "fake_ray_run.py").write_text(FAKE)
    log = where / "runs.log"
    path = os.pathsep.join([str(where), str(REPO / "src")])
    runtime_env = {"env_vars": {"PYTHONPATH": path, "FAKE_LOG": str(log), "FAKE_SLEEP": "0.4"}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    sys.path.insert(0, str(where))
    yield {"log": log, "pythonpath": path, "runtime_env": runtime_env, "address": ray.get_runtime_context().gcs_address}
    sys.path.remove(str(where))
    ray.shutdown()


def rows(db) -> dict[str, dict]:
    """Rows read straight from SQLite, independently of the library."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out = {r["key"]: dict(r) for r in con.execute("SELECT * FROM runs")}
    con.close()
    for r in out.values():
        r["metrics"] = json.loads(r["metrics"]) if r["metrics"] else None
        r["config"] = json.loads(r["config"])
    return out


TIMINGS = {"train/seconds", "train/images_per_second"}


def grid_file(tmp_path, text) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(text))
    return path


@needs_ray
def test_tiny_grid_equals_local_runner(cluster, tmp_path):
    runs = parse_grid(textwrap.dedent(TINY)).runs
    local = run_grid(runs, tmp_path / "local.sqlite", threads=1, progress=False)
    remote = run_grid(runs, tmp_path / "ray.sqlite", progress=False, executor=RayExecutor(cpus_per_run=1))
    assert local.done == remote.done == 4
    a, b = rows(tmp_path / "local.sqlite"), rows(tmp_path / "ray.sqlite")
    assert set(a) == set(b) == {s.key for s in runs}
    for key in a:
        assert b[key]["status"] == "done"
        assert b[key]["config"] == a[key]["config"]
        assert set(b[key]["metrics"]) == set(a[key]["metrics"])
        for name, value in a[key]["metrics"].items():
            if name in TIMINGS:
                continue
            other = b[key]["metrics"][name]  # bit for bit: same code, same thread count
            assert other == value or (math.isnan(other) and math.isnan(value)), name
        assert b[key]["gence_version"] == a[key]["gence_version"]
        assert b[key]["owner"] is None and b[key]["lease_until"] is None


@needs_ray
def test_tuned_block_under_ray_via_cli(cluster, tmp_path, capsys):
    db = tmp_path / "t.sqlite"
    code = main(["bench", str(grid_file(tmp_path, helpers.TUNED_GRID)), "--db", str(db), "--backend", "ray",
                 "--run-fn", "fake_ray_run:run", "--no-report", "--quiet", "--max-in-flight", "2"])
    assert code == 0, capsys.readouterr().err
    stored = rows(db)
    assert len(stored) == 12 + 4 and all(r["status"] == "done" for r in stored.values())
    for loss in ("ce", "gence"):
        tuning = [r for r in stored.values() if r["grid"] == "tune" and r["config"]["loss"] == loss]
        lrs = sorted({r["config"]["lr"] for r in tuning})
        means = [np.mean([r["metrics"]["val/error"] for r in tuning if r["config"]["lr"] == lr]) for lr in lrs]
        best = lrs[int(np.argmin(means))]
        assert best == {"ce": 0.1, "gence": 0.01}[loss]  # the fake's optimum, by construction
        main_rows = [r for r in stored.values() if r["grid"] == "main" and r["config"]["loss"] == loss]
        assert len(main_rows) == 2 and {r["config"]["lr"] for r in main_rows} == {best}
        # each main run started after every tuning run of its loss was stored
        assert min(r["started_at"] for r in main_rows) >= max(r["finished_at"] for r in tuning)


@needs_ray
def test_failed_task_stores_traceback(cluster, tmp_path):
    runs = parse_grid(textwrap.dedent(TINY)).runs[:2]
    summary = run_grid(runs, tmp_path / "f.sqlite", progress=False, run_fn="math:sqrt",
                       executor=RayExecutor(cpus_per_run=1))
    assert summary.failed == 2 and summary.done == 0
    assert all(line.startswith("TypeError") for _, line in summary.failures)
    for r in rows(tmp_path / "f.sqlite").values():
        assert r["status"] == "failed" and "Traceback" in r["error"] and "TypeError" in r["error"]


DRIVER = """
import json, sys, textwrap
from gence.experiments import parse_grid, run_grid
from gence.experiments.ray_backend import RayExecutor
runs = parse_grid(textwrap.dedent(sys.argv[1])).runs
run_grid(runs, sys.argv[2], progress=False, run_fn="fake_ray_run:run",
         executor=RayExecutor(address=sys.argv[3], max_in_flight=2,
                              init_kwargs={"runtime_env": json.loads(sys.argv[4]), "log_to_driver": False}))
"""


@needs_ray
def test_killed_driver_loses_only_runs_in_flight(cluster, tmp_path):
    db = tmp_path / "k.sqlite"
    env = {**os.environ, "PYTHONPATH": cluster["pythonpath"]}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, MANY, str(db), cluster["address"],
                             json.dumps(cluster["runtime_env"])], env=env)
    try:
        deadline = time.time() + 240  # a loaded 2-core machine starts Ray workers slowly
        done_before: dict = {}
        while time.time() < deadline and proc.poll() is None:
            try:
                done_before = {k: r for k, r in rows(db).items() if r["status"] == "done"}
            except sqlite3.OperationalError:  # not created yet
                done_before = {}
            if len(done_before) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the driver ended before it could be killed mid-grid"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {k: r for k, r in rows(db).items() if r["status"] == "done"}
    assert 2 <= len(before) < 10
    runs = parse_grid(textwrap.dedent(MANY)).runs
    summary = run_grid(runs, db, progress=False, run_fn="fake_ray_run:run",
                       executor=RayExecutor(max_in_flight=2))
    assert summary.already_done == len(before) and summary.done == 10 - len(before)
    after = rows(db)
    assert set(after) == {s.key for s in runs} and all(r["status"] == "done" for r in after.values())
    for key, r in before.items():  # stored once: not run again
        assert after[key]["finished_at"] == r["finished_at"] and after[key]["attempts"] == 1


@needs_ray
def test_a_task_whose_worker_dies_resumes_from_its_checkpoint(cluster, tmp_path):
    runs = parse_grid(textwrap.dedent(TINY)).runs[:1]
    db, ckpts = tmp_path / "c.sqlite", tmp_path / "shared_checkpoints"
    summary = run_grid(runs, db, progress=False, run_fn="fake_ray_run:run_dies_once",
                       executor=RayExecutor(max_in_flight=1, checkpoint_dir=ckpts))
    assert summary.done == 1 and summary.failed == 0
    (r,) = rows(db).values()
    assert r["status"] == "done" and r["metrics"]["resumed_at_epoch"] == 3.0   # the first attempt's state
    assert list(ckpts.iterdir()) == []   # stored: its checkpoint deleted
    # without a checkpoint directory a task is given no checkpoint file (this fake then refuses to run)
    summary = run_grid(runs, tmp_path / "n.sqlite", progress=False, run_fn="fake_ray_run:run_dies_once",
                       executor=RayExecutor(max_in_flight=1))
    assert summary.failed == 1
    (r,) = rows(tmp_path / "n.sqlite").values()
    assert r["status"] == "failed" and "no checkpoint given" in r["error"]


def test_missing_ray_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install ray"):
        import_ray()
    assert main(["bench", "--db", str(tmp_path / "x.sqlite"), "--backend", "ray", "--no-report"]) == 2
    assert "pip install ray" in capsys.readouterr().err
    assert not (tmp_path / "x.sqlite").exists()


@pytest.mark.parametrize("argv,message", [
    (["--cpus-per-run", "0"], "--cpus-per-run) = 0.0: expected a number > 0"),
    (["--gpus-per-run", "1.5"], "--gpus-per-run) = 1.5: above 1 it must be a whole number"),
    (["--max-in-flight", "0"], "--max-in-flight) = 0: expected an integer >= 1"),
    (["--workers", "2"], "--workers and --workers-per-gpu are for --backend local"),
])
@needs_ray
def test_bad_ray_flags(tmp_path, capsys, argv, message):
    assert main(["bench", "--db", str(tmp_path / "x.sqlite"), "--backend", "ray", "--no-report"] + argv) == 2
    assert message in capsys.readouterr().err


def test_ray_flags_need_the_ray_backend(tmp_path, capsys):
    assert main(["bench", "--db", str(tmp_path / "x.sqlite"), "--address", "auto", "--no-report"]) == 2
    assert "--address: only with --backend ray" in capsys.readouterr().err
