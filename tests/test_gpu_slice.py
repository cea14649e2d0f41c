"""scripts/gpu_slice.sh, the study's GPU slice, run on the CPU with a tiny grid (what a lent GPU runs, minus the GPU)."""
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY = textwrap.dedent("""
    [train]
    epochs = 2
    batch_size = 64
    n_val_per_class = 10
    eval_every = 0.5
    device = "cuda"

    [[grid]]
    name = "gpu_slice"
    datasets = ["digits"]
    regimes = ["balanced:10"]
    models = ["small_cnn"]
    seeds = [0, 1]
    losses = ["ce", "gence"]
    """)


def test_gpu_slice_script_runs_every_run_and_stores_each(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    db = tmp_path / "slice.sqlite"
    env = dict(os.environ, GENCE_SLICE_DEVICE="cpu", PYTHON=sys.executable)
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_slice.sh"), str(tmp_path), str(db), "2", str(config)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    con = sqlite3.connect(db)
    rows = con.execute("select label, seed, status, hardware, extras from runs").fetchall()
    assert sorted((r[0], r[1], r[2]) for r in rows) == [
        ("ce", 0, "done"), ("ce", 1, "done"), ("gence", 0, "done"), ("gence", 1, "done")]
    for _, _, _, hardware, extras in rows:
        assert "cores" in hardware  # ran on the CPU (--device from the script, not the file's cuda)
        curve = [h for h in json.loads(extras)["history"] if "val/error" in h]
        assert [h["epoch"] for h in curve] == [0, 1]  # eval_every 0.5 of 2 epochs
    printed = [line.split("\t") for line in out.stdout.splitlines() if line.count("\t") >= 6][1:]  # after the header
    assert len(printed) == 4 and all(p[4] == "done" for p in printed)
    assert "gpu_slice: done in" in out.stdout


def test_gpu_slice_script_refuses_without_cuda_unless_told(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    env.pop("GENCE_SLICE_DEVICE", None)
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_slice.sh"), str(tmp_path), str(tmp_path / "x.sqlite")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "no CUDA device" in out.stderr
    assert not (tmp_path / "x.sqlite").exists()


def test_gpu_slice_script_passes_the_rest_to_bench(tmp_path):
    # what a lent GPU runs for blocks of the study: one block of a two-block grid, by --blocks after CONFIG
    config = tmp_path / "two.toml"
    other = TINY.split("[[grid]]")[1].replace('"gpu_slice"', '"other"').replace("[0, 1]", "[5, 6]")
    config.write_text(f"{TINY}\n[[grid]]{other}")
    db = tmp_path / "slice.sqlite"
    env = dict(os.environ, GENCE_SLICE_DEVICE="cpu", PYTHON=sys.executable)
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_slice.sh"), str(tmp_path), str(db), "2", str(config),
                          "--blocks", "oth*"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = sqlite3.connect(db).execute("select grid, label, seed, status from runs").fetchall()
    assert sorted(rows) == [("other", "ce", 5, "done"), ("other", "ce", 6, "done"),
                            ("other", "gence", 5, "done"), ("other", "gence", 6, "done")]
