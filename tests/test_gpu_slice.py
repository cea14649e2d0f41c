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


def test_device_checks_runs_the_slice_into_out_and_keeps_to_its_budget(tmp_path):
    """scripts/device_checks.sh, the one device call of a GPU session, on the CPU with the tiny slice and
    the benchmarks off: OUT gets the device description, the slice's database with every run, and its log;
    with a budget too small for a step it skips the step and says so; a bad budget or data folder is refused."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out_dir = tmp_path / "out"
    env = dict(os.environ, DEVICE_CHECKS_DEVICE="cpu", PYTHON=sys.executable, BENCH="0", CONFIG=str(config))
    script = str(REPO / "scripts" / "device_checks.sh")
    out = subprocess.run(["bash", script, str(tmp_path), str(out_dir), "300"], env=env, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in out_dir.iterdir()) == ["device.txt", "gpu_slice.log", "gpu_slice.sqlite"]
    assert "torch" in (out_dir / "device.txt").read_text()
    rows = sqlite3.connect(out_dir / "gpu_slice.sqlite").execute("select label, seed, status from runs").fetchall()
    assert sorted(rows) == [("ce", 0, "done"), ("ce", 1, "done"), ("gence", 0, "done"), ("gence", 1, "done")]
    assert "gpu_slice: done in" in (out_dir / "gpu_slice.log").read_text()

    short = subprocess.run(["bash", script, str(tmp_path), str(tmp_path / "out2"), "5"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert short.returncode == 0
    assert "no time left for gpu_slice.log" in short.stdout
    assert not (tmp_path / "out2" / "gpu_slice.sqlite").exists()

    for args, message in (([str(tmp_path), str(tmp_path / "o3"), "soon"], "SECONDS must be a whole number"),
                          ([str(tmp_path / "none"), str(tmp_path / "o4")], "is not a folder")):
        bad = subprocess.run(["bash", script, *args], env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
