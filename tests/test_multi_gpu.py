"""The local runner on a multi-GPU machine: each worker sees its own GPU through ``CUDA_VISIBLE_DEVICES``
(round robin, ``workers_per_gpu`` per GPU), checked without a GPU by patching the GPUs the parent sees and
recording the environment each worker process sees."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch

from gence.cli import main
from gence.experiments import parse_grid, run_grid
from gence.experiments import runner
from gence.experiments.runner import auto_workers, gpu_assignment, visible_gpus

REPO = Path(__file__).resolve().parents[1]

FAKE = '''
import json, multiprocessing, os, time

def run(config):
    time.sleep(1.0)  # long enough that every spawned worker is up before the runs are gone
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"worker": multiprocessing.current_process().name,
                            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
    return {"val/error": 0.5}, {}
'''

GRID = """
[train]
epochs = 1
device = "{device}"
[grid]
name = "g"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0, 1, 2, 3, 4, 5, 6, 7]
losses = ["ce"]
"""


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    (tmp_path / "fake_gpu_run.py").write_text(FAKE)
    log = tmp_path / "runs.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO / "src"),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fake_gpu_run:run", log


def specs(device="auto"):
    return parse_grid(textwrap.dedent(GRID.format(device=device))).runs


def seen(log: Path) -> dict[str, set]:
    out: dict[str, set] = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["worker"], set()).add(row["gpu"])
    return out


def test_gpu_assignment_by_hand():
    assert gpu_assignment(4, 2, ["0", "1"]) == ["0", "0", "1", "1"]
    assert gpu_assignment(5, 1, ["3", "7"]) == ["3", "7", "3", "7", "3"]
    assert gpu_assignment(3, 2, ["5"]) == ["5", "5", "5"]
    assert gpu_assignment(6, 2, ["a", "b"]) == ["a", "a", "b", "b", "a", "a"]
    with pytest.raises(ValueError, match="workers_per_gpu = 0"):
        gpu_assignment(2, 0, ["0"])
    with pytest.raises(ValueError, match="no GPUs"):
        gpu_assignment(2, 1, [])


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    assert visible_gpus() == ["4", "6"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus() == []


def test_auto_workers_per_gpu(monkeypatch):
    monkeypatch.setattr(runner, "visible_gpus", lambda: ["0", "1", "2"])
    assert auto_workers(specs("auto")) == 3
    assert auto_workers(specs("auto"), workers_per_gpu=2) == 6
    assert auto_workers(specs("auto"), workers_per_gpu=5) == 8           # no more workers than runs
    assert auto_workers(specs("cuda:1")) == 1                            # a pinned GPU is shared
    assert auto_workers(specs("cpu")) == min(runner.usable_cores(), 8)   # CPU runs: one per core


@pytest.mark.parametrize("parent_env,expected", [
    (None, {"gence-worker-0": "0", "gence-worker-1": "0", "gence-worker-2": "1", "gence-worker-3": "1"}),
    ("3,5", {"gence-worker-0": "3", "gence-worker-1": "3", "gence-worker-2": "5", "gence-worker-3": "5"}),
])
def test_each_worker_sees_its_gpu(fake, tmp_path, monkeypatch, parent_env, expected):
    run_fn, log = fake
    if parent_env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setattr(runner, "visible_gpus", lambda: ["0", "1"])
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent_env)
        monkeypatch.setattr(runner, "visible_gpus", lambda: parent_env.split(","))
    summary = run_grid(specs("auto"), tmp_path / "r.sqlite", workers=4, workers_per_gpu=2, run_fn=run_fn,
                       progress=False)
    assert summary.done == 8
    got = seen(log)
    assert len(got) >= 2  # 8 runs of 1 s on 4 workers: more than one worker ran
    for worker, gpus in got.items():
        assert gpus == {expected[worker]}, worker


def test_cpu_runs_get_no_gpu(fake, tmp_path, monkeypatch):
    run_fn, log = fake
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "sentinel")
    monkeypatch.setattr(runner, "visible_gpus", lambda: ["0", "1"])
    run_grid(specs("cpu")[:2], tmp_path / "r.sqlite", workers=2, run_fn=run_fn, progress=False)
    assert {g for gpus in seen(log).values() for g in gpus} == {"sentinel"}  # left as the parent had it


def test_cli_workers_per_gpu_checked(tmp_path, capsys):
    assert main(["bench", "--db", str(tmp_path / "x.sqlite"), "--workers-per-gpu", "0", "--no-report"]) == 2
    assert "--workers-per-gpu 0: expected an integer >= 1" in capsys.readouterr().err
