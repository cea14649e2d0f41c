"""Scripts under scripts/ whose output the study states: bf16_check's rule against scipy on a database the
test writes (float32 twins with known differences from their bf16 runs); travel_size's total against the
sizes of the files a test repository holds."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
from scipy import stats

from gence.experiments import parse_grid, run_grid

REPO = Path(__file__).resolve().parents[1]

GRID = """
[train]
epochs = 1
amp = true

[[grid]]
name = "twins"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["mlp"]
seeds = [0, 1, 2]
losses = ["ce", { name = "ce", label = "ce_fp32", train = { amp = false } }]
"""
SHIFT = {0: 0.004, 1: -0.001, 2: 0.006}     # float32 - bf16 test error per seed


def fake(config):
    err = 0.2 + 0.01 * config["seed"] + (SHIFT[config["seed"]] if not config["amp"] else 0.0)
    return {"test/error": err}, {}


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_check_pairs_twins_and_applies_the_rule(tmp_path, capsys):
    grid = parse_grid(textwrap.dedent(GRID))
    db = tmp_path / "pilot.sqlite"
    run_grid(grid.runs, db, run_fn=fake, progress=False)
    bf16 = load_script("bf16_check")
    assert bf16.main([str(db)]) == 0
    out = capsys.readouterr().out
    d = 100 * np.array([SHIFT[s] for s in (0, 1, 2)])
    ci = stats.ttest_1samp(d, 0.0).confidence_interval()
    assert (f"mean float32 - bf16 {d.mean():+.2f} pp [{ci.low:+.2f}, {ci.high:+.2f}] (t 95%, 3 pairs)") in out
    assert "bf16 KEPT" in out           # the interval contains 0, |mean| 0.3 pp < 1 pp
    assert out.count("balanced:5 mlp 1 epochs seed") == 3 and "diff +0.40 pp" in out
    # a float32 twin 2 pp worse on every seed: the interval excludes 0
    SHIFT.update({0: 0.02, 1: 0.021, 2: 0.019})
    db2 = tmp_path / "pilot2.sqlite"
    run_grid(grid.runs, db2, run_fn=fake, progress=False)
    assert bf16.main([str(db2)]) == 0
    assert "bf16 REJECTED" in capsys.readouterr().out


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_travel_size_counts_what_the_device_tool_sends(tmp_path):
    """Tracked and untracked-not-ignored files count, ignored ones only when carried; over 64 MiB exits 1."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "travel_size.sh", repo / "scripts" / "travel_size.sh")
    (repo / ".gitignore").write_text(".data/\n")
    (repo / "tracked.bin").write_bytes(b"x" * 3_000_000)
    (repo / "untracked.bin").write_bytes(b"y" * 1_000_000)
    (repo / ".data").mkdir()
    (repo / ".data" / "images.bin").write_bytes(b"z" * 2_000_000)
    _git(repo, "init", "-q")
    _git(repo, "add", "scripts", ".gitignore", "tracked.bin")
    tree = sum(p.stat().st_size for p in (repo / "scripts" / "travel_size.sh", repo / ".gitignore",
                                          repo / "tracked.bin", repo / "untracked.bin"))

    def run(*carry):
        return subprocess.run(["bash", str(repo / "scripts" / "travel_size.sh"), *carry], cwd=tmp_path,
                              capture_output=True, text=True)

    alone = run()
    assert alone.returncode == 0, alone.stderr
    assert f"working tree (tracked + untracked not ignored): {tree / 1e6:.1f} MB" in alone.stdout
    assert f"total {tree / 1e6:.1f} MB: fits" in alone.stdout
    carried = run(".data")
    assert "carry .data: 2.0 MB" in carried.stdout
    assert f"total {(tree + 2_000_000) / 1e6:.1f} MB: fits" in carried.stdout

    with open(repo / ".data" / "big.bin", "wb") as f:    # sparse: 65 MB apparent, no disk
        f.truncate(65_000_000)
    over = run(".data")
    assert over.returncode == 1
    excess = tree + 67_000_000 - 64 * 1024 * 1024
    assert f"over the device tool's 64 MiB by {excess / 1e6:.1f} MB" in over.stdout
    missing = run("nothing-here")
    assert missing.returncode == 2 and "'nothing-here' does not exist" in missing.stderr
