"""Scripts under scripts/ whose output the study states: bf16_check's rule against scipy on a database the
test writes (float32 twins with known differences from their bf16 runs); power's check of the design
against the study's own pairs; travel_size's total against the sizes of the files a test repository
holds; what study_background's autosave commits in such a repository; travel_light's round trip of
the committed results files in one; and the provenance line of benchmarks' stored outputs."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
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


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


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


def test_benchmark_provenance_marks_uncommitted_code_not_results(tmp_path):
    """benchmarks/_provenance.py names the commit, and adds '(+ uncommitted changes)' exactly when code
    under src/, benchmarks/ or pyproject.toml differs from it, whatever the directory it runs from."""
    repo = tmp_path / "repo"
    for d in ("benchmarks", "src", "results"):
        (repo / d).mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "_provenance.py", repo / "benchmarks" / "_provenance.py")
    (repo / "src" / "code.py").write_text("x = 1\n")
    (repo / "results" / "out.txt").write_text("stored\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sha = _git(repo, "rev-parse", "--short", "HEAD").strip()

    def measured_line() -> str:
        code = ("import sys; sys.path.insert(0, 'benchmarks'); from _provenance import provenance_lines; "
                "print(provenance_lines('hw')[1])")
        out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert measured_line().endswith(f"commit {sha}")
    (repo / "results" / "out.txt").write_text("rewritten\n")        # a stored result: not code
    assert measured_line().endswith(f"commit {sha}")
    (repo / "src" / "code.py").write_text("x = 2\n")
    assert measured_line().endswith(f"commit {sha} (+ uncommitted changes)")


def _grid(*blocks: tuple[str, list[str], str, list[int]]) -> str:
    """A grid file of (name, datasets, regime, seeds) blocks of CE and GenCE with the MLP, one epoch."""
    return "[train]\nepochs = 1\n" + "".join(
        f'\n[[grid]]\nname = "{name}"\ndatasets = {json.dumps(datasets)}\nregimes = ["{regime}"]\n'
        f'models = ["mlp"]\nseeds = {json.dumps(seeds)}\nlosses = ["ce", "gence"]\n' for name, datasets, regime, seeds in blocks)


MAIN_GRID = _grid(("main_b5_digits_mlp", ["digits"], "balanced:5", [0, 1, 2, 3, 4, 5]),
                  ("lr_b5_digits_mlp", ["digits"], "balanced:5", [0, 1, 2, 3, 4, 5]),
                  ("main_b9_digits_mlp", ["digits"], "balanced:9", [0, 1, 2, 3]))
GAP = [0.011, -0.004, 0.007, 0.002, 0.013, -0.001]   # GenCE - CE test error per seed in main_b5


def fake_main(config):
    err = 0.3 + 0.02 * config["seed"]
    if config["loss"] == "gence":
        err += GAP[config["seed"]] if config["regime"] == "balanced:5" else 0.05
    return {"test/error": err}, {}


def test_power_checks_the_design_against_the_studys_own_pairs(tmp_path, capsys):
    """The study section: paired sd per main block with 5+ pairs (numpy), and the paired t-test's power at
    that sd against a simulation of the test itself (scipy's ttest_1samp on normal differences)."""
    db = tmp_path / "study.sqlite"
    run_grid(parse_grid(MAIN_GRID).runs, db, run_fn=fake_main, progress=False)
    power = load_script("power")
    rows = power.study_paired_sds(str(db))
    d = 100 * np.array(GAP)
    assert [r[:2] for r in rows] == [("main_b5_digits_mlp", 6)]    # the lr_ block and the 4-seed block left out
    assert rows[0][2] == pytest.approx(d.mean()) and rows[0][3] == pytest.approx(d.std(ddof=1))

    rng = np.random.default_rng(0)
    sd, n = 0.8, 10
    sims = rng.normal(1.0, sd, size=(20000, n))
    simulated = float(np.mean(stats.ttest_1samp(sims, 0.0, axis=1).pvalue < 0.05))
    assert power.power_paired(1.0, sd, n, 0.05) == pytest.approx(simulated, abs=0.01)

    archive = tmp_path / "archive.sqlite"
    run_grid(parse_grid(ARCHIVE_GRID).runs, archive, run_fn=fake_archive, progress=False)
    assert power.main([str(archive), str(REPO / "configs" / "study.toml"), str(tmp_path / "none.sqlite"), str(db)]) == 0
    out = capsys.readouterr().out
    p = power.power_paired(1.0, d.std(ddof=1), 6, 0.05)
    assert (f"main_b5_digits_mlp: sd {d.std(ddof=1):.2f}, mean {d.mean():+.2f} (6 seeds), power {p:.2f}") in out


ARCHIVE_GRID = _grid(("balanced", ["cifar10", "fashion_mnist"], "balanced:5", [0, 1, 2]))


def fake_archive(config):
    return {"test/error": 0.3 + (0.01 * config["seed"] if config["loss"] == "gence" else 0.0)}, {}


def _make_db(path, done):
    con = sqlite3.connect(path)
    con.execute("create table if not exists runs (key text primary key, status text)")
    con.executemany("insert or replace into runs values (?, 'done')", [(f"k{i}",) for i in range(done)])
    con.commit()
    con.close()


def test_autosave_commits_results_and_pages_only(tmp_path):
    """study_background.sh's autosave commit: results/ and the pages, never the index's other staged
    changes; nothing when only the pages' date moved (they are put back); a report regenerated by newer code
    does commit with no run finished (pages and plots together), and so do checkpoints alone."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "study_background.sh", repo / "scripts" / "study_background.sh")
    (repo / "results" / "pilot").mkdir(parents=True)
    _make_db(repo / "results" / "study.sqlite", 3)
    _make_db(repo / "results" / "pilot.sqlite", 2)
    (repo / "RESULTS.md").write_text("# results\nGenerated on day 1\n")
    (repo / "results" / "pilot" / "README.md").write_text("# pilot\nGenerated on day 1\n")
    (repo / "other.txt").write_text("a\n")
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "start")

    def commit(what):
        out = subprocess.run(["bash", str(repo / "scripts" / "study_background.sh"), "_commit_results", what],
                             env={**os.environ, "GENCE_VENV": sys.prefix}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stderr

    def log():
        return subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], capture_output=True,
                              text=True, check=True).stdout.splitlines()

    def files(rev="HEAD"):
        return sorted(subprocess.run(["git", "-C", str(repo), "show", "--name-only", "--format=", rev],
                                     capture_output=True, text=True, check=True).stdout.split())

    (repo / "other.txt").write_text("b\n")
    _git(repo, "add", "other.txt")                             # a change of the session's, staged
    (repo / "RESULTS.md").write_text("# results\nGenerated on day 2\n")
    (repo / "results" / "pilot" / "README.md").write_text("# pilot\nGenerated on day 2\n")   # a page under results/
    assert "nothing committed" in commit("snapshot")
    assert log() == ["start"]
    assert (repo / "RESULTS.md").read_text() == "# results\nGenerated on day 1\n"
    assert (repo / "results" / "pilot" / "README.md").read_text() == "# pilot\nGenerated on day 1\n"

    (repo / "results" / "study" / "plots").mkdir(parents=True)   # no run finished, but the report's code
    (repo / "results" / "study" / "plots" / "lr.png").write_bytes(b"png")   # changed: a new plot, a new line
    (repo / "RESULTS.md").write_text("# results\nGenerated on day 2\ncaption\n")
    (repo / "results" / "pilot" / "README.md").write_text("# pilot\nGenerated on day 2\n")
    assert "nothing committed" not in commit("snapshot")
    assert log()[0].startswith("snapshot (autosave): no run finished; results/ changed beyond the pages' date line")
    assert files() == ["RESULTS.md", "results/pilot/README.md", "results/study/plots/lr.png"]

    _make_db(repo / "results" / "study.sqlite", 5)            # two runs finished
    (repo / "RESULTS.md").write_text("# results\n5 runs\n")
    (repo / "results" / "study" / "plots" / "new.png").write_bytes(b"png")
    commit("snapshot")
    assert log()[0].startswith("snapshot (autosave): study 5, pilot 2 runs done; ")
    assert files() == ["RESULTS.md", "results/study.sqlite", "results/study/plots/new.png"]
    staged = subprocess.run(["git", "-C", str(repo), "diff", "--cached", "--name-only"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert staged == ["other.txt"]                             # still staged, not committed

    (repo / "results" / "checkpoints" / "study").mkdir(parents=True)
    (repo / "results" / "checkpoints" / "study" / "run.pt").write_bytes(b"state")
    commit("handover")
    assert log()[0].startswith("handover (autosave): study 5, pilot 2 runs done; ")
    assert files() == ["results/checkpoints/study/run.pt"]

    (repo / "results" / "checkpoints" / "study" / "run.pt").unlink()   # that run ended, another is in flight
    (repo / "results" / "checkpoints" / "study" / "next.pt").write_bytes(b"state 2")
    commit("handover")
    assert files() == ["results/checkpoints/study/next.pt", "results/checkpoints/study/run.pt"]
    assert not (repo / "results" / "checkpoints" / "study" / "run.pt").exists()


def test_travel_light_removes_committed_results_and_puts_them_back(tmp_path):
    """'off' removes the tracked files of 1 MB or more under results/ (refusing, removing nothing, while one
    differs from HEAD or autosave runs); study_background refuses to snapshot or commit meanwhile; 'on' puts
    back the same bytes."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("travel_light.sh", "travel_size.sh", "study_background.sh"):
        shutil.copy(REPO / "scripts" / name, repo / "scripts" / name)
    (repo / "results" / "archive").mkdir(parents=True)
    (repo / "other").mkdir()
    rng = np.random.default_rng(0)
    content = {"results/study.sqlite": rng.bytes(2_000_000), "results/archive/runs.csv": rng.bytes(1_500_000),
               "results/notes.txt": b"small\n", "results/plot.png": rng.bytes(999_999),
               "other/big.bin": rng.bytes(3_000_000)}
    for name, data in content.items():
        (repo / name).write_bytes(data)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "start")
    env = {**os.environ, "GENCE_VENV": sys.prefix, "RUNS": str(tmp_path / "runs")}

    def run(script, *args):
        return subprocess.run(["bash", str(repo / "scripts" / script), *args], env=env, capture_output=True,
                              text=True)

    (repo / "results" / "study.sqlite").write_bytes(rng.bytes(2_000_000))   # not committed: refused
    out = run("travel_light.sh", "off")
    assert out.returncode == 2 and "results/study.sqlite" in out.stderr and "commit them first" in out.stderr
    assert (repo / "results" / "archive" / "runs.csv").exists()
    _git(repo, "checkout", "--", "results/study.sqlite")

    (tmp_path / "runs").mkdir()                                          # an autosave loop on these runs
    loop = subprocess.Popen(["bash", "-c", "sleep 60; true", "gence-autosave-loop", "60", "0", str(tmp_path / "runs")])
    try:
        for _ in range(50):                                              # until ps shows its arguments
            if "autosave: running" in run("study_background.sh", "status").stdout:
                break
            time.sleep(0.1)
        else:
            pytest.fail("study_background.sh status never saw the fake autosave loop")
        out = run("travel_light.sh", "off")
        assert out.returncode == 2 and "autosave loop is running" in out.stderr
        assert (repo / "results" / "study.sqlite").exists()
    finally:
        loop.kill()
        loop.wait()

    out = run("travel_light.sh", "off")
    assert out.returncode == 0, out.stderr
    again = run("travel_light.sh", "off")
    assert again.returncode == 2 and "already light" in again.stderr
    removed = ["results/archive/runs.csv", "results/study.sqlite"]
    assert sorted(n for n in content if not (repo / n).exists()) == removed
    kept = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert f"working tree (tracked + untracked not ignored): {kept / 1e6:.1f} MB" in out.stdout
    assert "removed 2 committed file(s)" in out.stderr

    refused = run("study_background.sh", "_commit_results", "snapshot")
    assert refused.returncode != 0 and "run scripts/travel_light.sh on first" in refused.stderr
    assert subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], capture_output=True, text=True,
                          check=True).stdout.split("\n")[0] == "start"

    out = run("travel_light.sh", "on")
    assert out.returncode == 0 and "put back 2 file(s)" in out.stderr
    assert all((repo / n).read_bytes() == data for n, data in content.items())
    again = run("travel_light.sh", "on")
    assert again.returncode == 0 and "nothing to put back" in again.stderr
    assert subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                          check=True).stdout == ""


def test_study_phases_put_fashion_mnist_first_where_bf16_is_slow():
    """study_background.sh's order of the study's blocks (configs/study.toml), followed here by fnmatch: on a
    CPU without bf16 kernels (float32 ResNet-20 ~3x slower there) every Fashion-MNIST block before any CIFAR-10
    one, the CIFAR-10 blocks in their usual order; with them, the long-tailed CIFAR-10 blocks before the
    Fashion-MNIST baselines and the 50/class CIFAR-10 ones last; every block exactly once in both."""
    def order(kernels):
        phases = subprocess.run(["bash", str(REPO / "scripts" / "study_background.sh"), "_study_phases", kernels],
                                capture_output=True, text=True, check=True).stdout.splitlines()
        out = []
        for phase in phases:
            out += [b for b in names if b not in out and any(fnmatch(b, p) for p in phase.split(","))]
        return out

    with open(REPO / "configs" / "study.toml", "rb") as f:
        blocks = tomllib.load(f)["grid"]
    names = [b["name"] for b in blocks]
    dataset = {b["name"]: b["datasets"][0]["name"] for b in blocks}
    slow, fast = order("0"), order("1")
    assert sorted(slow) == sorted(fast) == sorted(names) and len(set(names)) == len(names)
    assert {dataset[b] for b in slow[:12 + 3]} == {"fashion_mnist"}        # 6 lr, 6 main, 3 base blocks
    assert [dataset[b] for b in slow].index("cifar10") == 15 and {dataset[b] for b in slow[15:]} == {"cifar10"}
    assert slow[15:] == [b for b in fast if dataset[b] == "cifar10"]
    assert fast.index("main_lt_cifar10_resnet20") < fast.index("base_b50_fashion_mnist_resnet8")
    assert fast[-5:] == ["lr_b50_cifar10_resnet20", "main_b50_cifar10_resnet20", "lr_b50_cifar10_resnet8",
                         "main_b50_cifar10_resnet8", "base_b50_cifar10_resnet20"]


def test_study_budget_lists_blocks_in_the_order_of_the_runners_phases():
    blocks = [("lr_x", "balanced:5", "ce"), ("lr_y", "balanced:5", "gence"), ("main_x", "balanced:20", "ce"),
              ("main_y", "balanced:20", "gence")]
    grid = parse_grid("".join(f'[[grid]]\nname = "{n}"\ndatasets = ["digits"]\nregimes = ["{r}"]\n'
                              f'models = ["mlp"]\nseeds = [0]\nlosses = ["{loss}"]\n\n' for n, r, loss in blocks),
                      name="phases")
    order = load_script("study_budget").phase_order
    assert order(grid, ["*_y", "*"]) == ["lr_y", "main_y", "lr_x", "main_x"]           # by hand
    assert order(grid, ["main_x,lr_y", "*"]) == ["lr_y", "main_x", "lr_x", "main_y"]   # file order within a phase
    assert order(grid, ["*_x"]) == ["lr_x", "main_x", "lr_y", "main_y"]                # unmatched blocks last


def test_study_budget_costs_a_variant_with_overrides_added_at_the_end(tmp_path):
    budget = load_script("study_budget")
    text = ('[train]\nepochs = 3\n\n[[grid]]\nname = "b"\ndatasets = ["digits"]\nregimes = ["balanced:5", '
            '"balanced:20"]\nmodels = ["mlp"]\nseeds = [0]\nlosses = ["ce"]\n\n[[override]]\n'
            'match = { regime = "balanced:20" }\nepochs = 4\n')
    variant = parse_grid(budget.with_overrides(text, ['{ match = { regime = ["balanced:20"], model = "mlp" }, '
                                                      'epochs = 8, lr = 0.05 }']))
    got = {s.config["regime"]: (s.config["epochs"], s.config["lr"]) for s in variant.runs}
    plain = {s.config["regime"]: s.config["lr"] for s in parse_grid(text).runs}
    # by hand: the added entry wins over the file's own for balanced:20 only; balanced:5 keeps [train]'s
    assert got == {"balanced:5": (3, plain["balanced:5"]), "balanced:20": (8, 0.05)}
    # a user's mistake: the flag, the value and what was expected, no traceback; a match that selects no run
    for bad, words in (("epochs = 8", "not a TOML inline table"), ("5", "expected a non-empty TOML inline table")):
        with pytest.raises(SystemExit) as exc:
            budget.with_overrides(text, [bad])
        assert str(exc.value).startswith(f"study_budget: --override {bad!r}: {words}")
    (tmp_path / "g.toml").write_text(text)
    with pytest.raises(SystemExit) as exc:
        budget.main([str(tmp_path / "g.toml"), "--override", '{ match = { regime = "balanced:7" }, epochs = 8 }'])
    assert "study_budget: " in str(exc.value) and "balanced:7" in str(exc.value)


def test_study_budget_this_cpu_takes_step_times_from_runs_on_this_kind_of_cpu_only(tmp_path):
    from gence.experiments import ResultsDB
    budget = load_script("study_budget")
    assert budget.cpu_kind("AMD EPYC (2 cores, AVX2, torch threads 1)") == "AVX2"
    assert budget.cpu_kind("AMD EPYC (2 cores, torch threads 1)") is None          # stored before it was recorded
    assert budget.cpu_kind("NVIDIA H100 80GB HBM3 (CUDA 12.8)") is None
    config = {"dataset": "digits", "regime": "balanced:20", "model": "mlp", "batch_size": 50, "epochs": 2, "amp": True}
    steps = 2 * 4   # 200 images, batches of 50, 2 epochs
    db = ResultsDB(tmp_path / "s.sqlite")
    # seconds per run by CPU kind; a resumed run counts its history's training seconds when longer
    stored = {"AVX2": [16.0, 24.0, 40.0], "AVX512": [4.0, 8.0], None: [80.0]}
    for kind, walls in stored.items():
        for i, wall in enumerate(walls):
            c = dict(config, seed=i)
            key = f"{kind}-{i}"
            db.claim(key, c, label="ce")
            hw = f"AMD EPYC (2 cores, {kind}, torch threads 1)" if kind else "AMD EPYC (2 cores, torch threads 1)"
            db.finish(key, metrics={"test/error": 0.5}, extras={"history": [{"seconds": wall / 2}]}, wall_seconds=wall,
                      hardware=hw)
    db.close()
    key = ("digits", "mlp", True)
    by_hand = {"AVX2": np.median([16, 24, 40]) / steps, "AVX512": np.median([4, 8]) / steps,
               None: np.median([16, 24, 40, 4, 8, 80]) / steps}
    for kind, want in by_hand.items():
        a, b, n = budget.measured_costs(str(tmp_path / "s.sqlite"), kind)[key]
        assert np.isclose(b, want) and n == (len(stored[kind]) if kind else 6)
    assert budget.measured_costs(str(tmp_path / "s.sqlite"), "AVX512_BF16") == {}


def test_power_of_showing_the_pilots_change_within_its_margin_by_simulation():
    power = load_script("power")
    rng = np.random.default_rng(0)
    for n, sd in ((10, 0.01), (30, 0.0095), (90, 0.0095)):
        d = rng.normal(0.0, sd, size=(20000, n))   # true change 0: TOST at 5% against ±0.3 pp, by simulation
        m, se = d.mean(1), d.std(1, ddof=1) / np.sqrt(n)
        t = stats.t.ppf(0.95, n - 1)
        simulated = np.mean((m - t * se > -0.003) & (m + t * se < 0.003))
        assert power.tost_power(0.003, sd, n) == pytest.approx(simulated, abs=0.02)
    n = power.seeds_for_tost(0.003, 0.0095)
    assert power.tost_power(0.003, 0.0095, n) >= 0.8 > power.tost_power(0.003, 0.0095, n - 1)
    # pooled sd by hand: groups (sd 1, 2 values) and (sd 3, 4 values): sqrt((1*1 + 3*9) / 4)
    assert power.pooled_sd([(1.0, 2), (3.0, 4), (float("nan"), 1)]) == (pytest.approx(math.sqrt(28 / 4)), 4)
