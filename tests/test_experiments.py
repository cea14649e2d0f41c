"""Grids, the results database and the runner: resume, SIGKILL, workers, shards, merge, config errors.

Runner mechanics use a cheap fake run function (written to tmp_path so spawned workers and subprocesses
can import it); one end-to-end test trains real tiny runs."""
from __future__ import annotations

import gc
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from gence.cli import main
from gence.experiments import ResultsDB, load_grid, parse_grid, run_grid, shard
from gence.experiments import runner
from gence.experiments.db import run_key
from gence.experiments.grid import GridError, load_demo_grid

import helpers  # tests/helpers.py

REPO = Path(__file__).resolve().parents[1]

FAKE_RUN = '''
import hashlib, json, os, time

def run(config):
    from gence.experiments.db import run_key
    if os.environ.get("FAKE_IGNORE_TERM"):   # a run stuck where SIGTERM cannot reach it (before it is logged)
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log = os.environ.get("FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(run_key(config) + "\\n")
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if config["seed"] in json.loads(os.environ.get("FAKE_FAIL_SEEDS", "[]")):
        raise RuntimeError(f"fake failure for seed {config['seed']}")
    h = int(hashlib.sha256(run_key(config).encode()).hexdigest()[:8], 16) / 16 ** 8
    n = int(config["regime"].split(":")[1])
    base = {"ce": 0.0, "gence": -0.02}.get(config["loss"], 0.01)
    metrics = {"pid": float(os.getpid())}
    for split in ("val", "test", "val_ts", "test_ts"):
        for i, m in enumerate(("error", "nll", "brier", "ece", "adaece", "classwise_ece", "mce")):
            metrics[f"{split}/{m}"] = 0.5 / n ** 0.5 + base + 0.05 * h + 0.01 * i
    metrics["test_ts/ece"] = metrics["test/ece"] / 2
    for ood in ("gaussian_noise", "uniform_noise"):
        for score in ("msp", "energy"):
            metrics[f"ood/{ood}/{score}/auroc"] = 0.8 + 0.1 * h
            metrics[f"ood/{ood}/{score}/fpr95"] = 0.5 - 0.1 * h
    bins = {"edges": [i / 5 for i in range(6)], "count": [0, 3, 5, 10, 30],
            "accuracy": [None, 0.3, 0.5, 0.7, 0.9 - h / 10], "confidence": [None, 0.35, 0.5, 0.75, 0.95]}
    return metrics, {"reliability": {"test": bins, "test_ts": bins}, "history": {"loss": [1.0, 0.5]}}
'''

GRID = """
[train]
epochs = 1
ood = ["gaussian_noise"]

[grid]
datasets = ["digits"]
regimes = ["balanced:5", "balanced:10"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = ["ce", "gence"]
"""


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    """Import path of the fake run function; its start log; env for subprocesses."""
    return helpers.fake_run_module(tmp_path, monkeypatch, "fake_run", FAKE_RUN, "starts.log", env={"FAKE_SLEEP": "0"})


def write_grid(tmp_path, text=GRID, name="grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def db_rows(path) -> list[dict]:
    with ResultsDB(path) as db:
        return db.runs(status=None)


# --------------------------------------------------------------------------------------------- grid
def test_grid_expands_product_with_overrides_sweeps_and_seed_overrides(tmp_path):
    grid = parse_grid(textwrap.dedent("""
        [train]
        epochs = 2
        lr = 0.05
        [grid]
        datasets = ["digits"]
        regimes = ["balanced:5", "balanced:10"]
        models = ["small_cnn", {name = "mlp", params = {hidden = [32]}}]
        seeds = [0, 1]
        losses = [
            "ce",
            {name = "gence", params = {generative_weight = 0.5}, seeds = [0, 1, 2], sweep = {lr = [0.01, 0.1]}},
        ]
        [[override]]
        match = {regime = "balanced:5", model = "small_cnn"}
        epochs = 7
    """))
    # ce: 2 regimes x 2 models x 2 seeds; gence: 2 x 2 x 3 seeds x 2 lrs
    assert len(grid.runs) == 8 + 24
    assert len({r.key for r in grid.runs}) == len(grid.runs)
    by = {(r.label, r.config["regime"], r.config["model"], r.config["seed"], r.config["lr"]): r for r in grid.runs}
    assert by[("ce", "balanced:5", "small_cnn", 0, 0.05)].config["epochs"] == 7
    assert by[("ce", "balanced:5", "mlp", 0, 0.05)].config["epochs"] == 2
    assert by[("ce", "balanced:5", "mlp", 0, 0.05)].config["model_params"] == {"hidden": [32]}
    g = by[("gence(generative_weight=0.5)", "balanced:10", "small_cnn", 2, 0.1)]
    assert g.config["loss_params"] == {"generative_weight": 0.5}
    # the key is the sha256 of the config: recomputing it gives the same, changing a field changes it
    assert g.key == run_key(g.config)
    assert run_key({**g.config, "lr": 0.2}) != g.key
    assert run_key({**g.config, "data_dir": "/elsewhere", "device": "cuda"}) == g.key


def test_override_model_params_merge_into_the_matching_runs_only():
    grid = parse_grid(GRID.replace('models = ["small_cnn"]', 'models = ["small_cnn", {name = "mlp", params = {hidden = [32]}}]')
                      + '[[override]]\nmatch = {loss = "gence"}\nmodel_params = {head = "cosine"}\n')
    params = {(r.config["loss"], r.config["model"]): r.config["model_params"] for r in grid.runs}
    assert params == {("ce", "small_cnn"): {}, ("ce", "mlp"): {"hidden": [32]},
                      ("gence", "small_cnn"): {"head": "cosine"}, ("gence", "mlp"): {"hidden": [32], "head": "cosine"}}


def test_int_and_float_values_give_one_key(tmp_path):
    a = parse_grid(GRID.replace("epochs = 1", "epochs = 1\nlr = 1"))
    b = parse_grid(GRID.replace("epochs = 1", "epochs = 1\nlr = 1.0"))
    assert [r.key for r in a.runs] == [r.key for r in b.runs]


def test_demo_grid_shipped_in_package_equals_configs_copy():
    shipped = Path(load_demo_grid.__globals__["DEMO_GRID"])
    assert shipped.read_text() == (REPO / "configs" / "demo.toml").read_text()
    grid = load_demo_grid()
    assert len(grid.runs) == 60
    assert {r.label for r in grid.runs} == {"ce", "gence", "focal", "label_smoothing"}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.toml")))
def test_shipped_configs_validate(name):
    grid = load_grid(REPO / "configs" / name)
    assert grid.runs


BAD = [
    ("[grid\n", ["invalid TOML"]),
    ("[trian]\n", ["'trian'", "train", "grid", "override"]),
    (GRID.replace('"digits"', '"digitz"'), ["grid.datasets[0].name", "'digitz'", "cifar10", "digits", "mnist"]),
    (GRID.replace('"small_cnn"', '"resnet7"'), ["grid.models[0].name", "'resnet7'", "resnet20", "small_cnn"]),
    (GRID.replace('"gence"]', '"gence", "cee"]'), ["grid.losses[2].name", "'cee'", "ce", "focal", "gence"]),
    (GRID.replace('"balanced:5"', '"balance:5"'), ["grid.regimes[0]", "'balance:5'", "balanced:30"]),
    (GRID.replace('"balanced:5"', '"balanced:-5"'), ["grid.regimes[0]", "'balanced:-5'"]),
    (GRID.replace("epochs = 1", "epochs = 0"), ["train.epochs", "0", "> 0"]),
    (GRID.replace("epochs = 1", "epochs = 1.5"), ["train.epochs", "1.5", "integer"]),
    (GRID.replace("epochs = 1", "epochs = 1\nlr = -0.1"), ["train.lr", "-0.1", "> 0"]),
    (GRID.replace("epochs = 1", "epochs = 1\nmomentum = 1.5"), ["train.momentum", "1.5", "[0, 1)"]),
    (GRID.replace("epochs = 1", "epochs = 1\nepoch = 3"), ["train", "'epoch'", "epochs", "lr"]),
    (GRID.replace("epochs = 1", "epochs = 1\nloss = 'ce'"), ["train", "'loss'", "axes"]),
    (GRID.replace('["gaussian_noise"]', '["gaussian"]'), ["train.ood[0]", "'gaussian'", "gaussian_noise", "mnist"]),
    (GRID.replace("seeds = [0, 1, 2]", "seeds = []"), ["grid.seeds", "empty"]),
    (GRID.replace("seeds = [0, 1, 2]", "seeds = [0, -1]"), ["grid.seeds[1]", "-1", ">= 0"]),
    (GRID.replace("seeds = [0, 1, 2]", "seeds = [0, 0]"), ["grid.seeds", "repeated"]),
    (GRID.replace("seeds = [0, 1, 2]\n", ""), ["grid", "missing 'seeds'"]),
    (GRID.replace('"gence"]', '{name = "gence", params = {gamma = 2}}]'),
     ["grid.losses[1].params", "gamma", "'gence'", "generative_weight"]),
    (GRID.replace('"gence"]', '{name = "gence", parms = {}}]'), ["grid.losses[1]", "'parms'", "params", "label"]),
    (GRID.replace('"gence"]', '{name = "ce"}]'), ["grid.losses", "'ce'", "distinct 'label'"]),
    (GRID.replace('"small_cnn"', '{name = "mlp", params = {depth = 3}}'), ["grid.models[0].params", "depth", "'mlp'"]),
    (GRID + "sweep = {seed = [1, 2]}\n", ["grid.sweep", "'seed'", "axis"]),
    (GRID + "sweep = {lr = [0.1, -1]}\n", ["grid.sweep.lr[1]", "-1", "> 0"]),
    (GRID + "[[override]]\nmatch = {regimen = 'balanced:5'}\nepochs = 3\n",
     ["override[0].match", "'regimen'", "regime", "dataset"]),
    (GRID + "[[override]]\nmatch = {loss = 'ce'}\nmodel_params = {head = 'cos'}\n",
     ["override[0].model_params", "'cos'", "'small_cnn'", "cosine"]),
    (GRID + "[[override]]\nmatch = {loss = 'ce'}\nmodel_params = 3\n", ["override[0].model_params", "3", "table"]),
    (GRID.replace('"small_cnn"', '{name = "small_cnn", params = {head = "cos"}}'),
     ["grid.models[0].params", "head='cos'", "cosine"]),
]


@pytest.mark.parametrize("text,needles", BAD, ids=[str(i) for i in range(len(BAD))])
def test_config_errors_name_key_value_and_choices(tmp_path, text, needles):
    path = write_grid(tmp_path, text)
    with pytest.raises(GridError) as info:
        load_grid(path)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_bench_cli_reports_config_error_before_running(tmp_path, capsys):
    path = write_grid(tmp_path, GRID.replace('"ce"', '"cee"'))
    db = tmp_path / "r.sqlite"
    assert main(["bench", str(path), "--db", str(db), "--quiet"]) == 2
    assert "'cee'" in capsys.readouterr().err
    assert not db.exists()


TWO_BLOCKS = """
[train]
epochs = 1

[[grid]]
name = "few"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0]
losses = ["ce", "gence"]

[[grid]]
name = "more"
datasets = ["digits"]
regimes = ["balanced:10"]
models = ["mlp"]
seeds = [0, 1]
losses = ["ce"]
"""


@pytest.mark.parametrize("match, needles", [
    # a typo'd value: named with the values that exist for its key (over every block)
    ("{regime = 'balanced:50'}", ["override[1]: match {'regime': 'balanced:50'} matches no run",
                                  "regime 'balanced:50' is in no run", "'balanced:10', 'balanced:5'"]),
    ("{seed = 7}", ["override[1]: match {'seed': 7} matches no run", "seed 7 is in no run", "0, 1"]),
    ("{grid = 'Few'}", ["override[1]: match {'grid': 'Few'}", "grid 'Few' is in no run", "'few', 'more'"]),
    # each value exists, but in different blocks: no run has both
    ("{regime = 'balanced:5', model = 'mlp'}", ["override[1]: match {'regime': 'balanced:5', 'model': 'mlp'} "
                                                "matches no run", "each of these values is in some run, "
                                                "no run has them all"]),
])
def test_override_matching_no_run_is_an_error_naming_its_index_match_and_the_values(tmp_path, match, needles):
    # override[0] targets one block only, which is fine: it matches a run somewhere
    path = write_grid(tmp_path, TWO_BLOCKS + "[[override]]\nmatch = {model = 'mlp'}\nepochs = 4\n"
                      + f"[[override]]\nmatch = {match}\nepochs = 3\n")
    with pytest.raises(GridError) as info:
        load_grid(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: override[1]: match ")
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_override_of_one_block_only_applies_there_and_a_list_needs_one_matching_value(tmp_path):
    grid = load_grid(write_grid(tmp_path, TWO_BLOCKS + "[[override]]\nmatch = {model = 'mlp'}\nepochs = 4\n"
                                + "[[override]]\nmatch = {seed = [1, 9]}\nlr = 0.2\n"))
    got = sorted((r.grid, r.label, r.config["seed"], r.config["epochs"], r.config["lr"]) for r in grid.runs)
    assert got == [("few", "ce", 0, 1, 0.05), ("few", "gence", 0, 1, 0.05),
                   ("more", "ce", 0, 4, 0.05), ("more", "ce", 1, 4, 0.2)]


def test_bench_cli_rejects_an_override_matching_no_run_before_running(tmp_path, capsys):
    path = write_grid(tmp_path, GRID + "[[override]]\nmatch = {loss = 'gence', regime = 'balanced:50'}\nepochs = 3\n")
    db = tmp_path / "r.sqlite"
    assert main(["bench", str(path), "--db", str(db), "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"gence bench: {path}: override[0]: match {{'loss': 'gence', 'regime': "
                               f"'balanced:50'}} matches no run; regime 'balanced:50' is in no run")
    assert "'balanced:10', 'balanced:5'" in lines[0]
    assert not db.exists()


def test_shard_parts_are_disjoint_and_cover_the_grid():
    runs = parse_grid(GRID).runs
    parts = [shard(runs, i, 3) for i in (1, 2, 3)]
    keys = [r.key for p in parts for r in p]
    assert sorted(keys) == sorted(r.key for r in runs) and len(set(keys)) == len(keys)
    with pytest.raises(ValueError, match="1-based"):
        shard(runs, 0, 3)


# ------------------------------------------------------------------------------------------- runner
def test_runner_skips_done_and_stores_failures_retried_only_when_asked(tmp_path, fake, monkeypatch):
    run_fn, log = fake
    runs = parse_grid(GRID).runs
    db = tmp_path / "r.sqlite"
    monkeypatch.setenv("FAKE_FAIL_SEEDS", "[2]")
    s = run_grid(runs, db, run_fn=run_fn, progress=False)
    assert (s.done, s.failed) == (8, 4)
    rows = db_rows(db)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 4 and all("fake failure for seed 2" in r["error"] for r in failed)
    done = [r for r in rows if r["status"] == "done"]
    assert all(r["metrics"]["test/error"] > 0 and r["wall_seconds"] >= 0 for r in done)
    assert all(r["hardware"] and r["torch_version"] and r["gence_version"] for r in rows)
    # one CPU model name covers machines with and without AVX-512 (bf16 ~20x slower without): the stored
    # hardware names the capability torch's kernels run at
    assert all(f", {torch.backends.cpu.get_cpu_capability()}, " in r["hardware"] for r in rows)
    # again: nothing runs
    s = run_grid(runs, db, run_fn=run_fn, progress=False)
    assert (s.done, s.failed, s.already_done, s.skipped_failed) == (0, 0, 8, 4)
    # retry failed, now succeeding
    monkeypatch.setenv("FAKE_FAIL_SEEDS", "[]")
    s = run_grid(runs, db, run_fn=run_fn, progress=False, retry_failed=True)
    assert (s.done, s.failed) == (4, 0)
    rows = db_rows(db)
    assert len(rows) == 12 and all(r["status"] == "done" and r["error"] is None for r in rows)
    assert sorted(log.read_text().split()) == sorted([r.key for r in runs] + [r.key for r in runs
                                                                                if r.config["seed"] == 2])


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_mid_grid_then_resume_runs_each_exactly_once(tmp_path, fake, monkeypatch, workers):
    run_fn, log = fake
    grid = write_grid(tmp_path)
    db = tmp_path / "r.sqlite"
    monkeypatch.setenv("FAKE_SLEEP", "0.4")
    proc = helpers.start_bench(grid, db, run_fn, workers)
    try:
        assert helpers.wait_for_runs(proc, db, lambda done, running: done >= 4, timeout=40)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    # workers get SIGTERM when their parent dies (PR_SET_PDEATHSIG): wait until none is left
    deadline = time.time() + 20
    while time.time() < deadline:
        with sqlite3.connect(db, timeout=5) as con:
            owners = [o for (o,) in con.execute("SELECT owner FROM runs WHERE status='running'")]
        if not any(_alive(int(o.split(":")[1])) for o in owners):
            break
        time.sleep(0.1)
    before = {r["key"]: r["status"] for r in db_rows(db)}
    assert 4 <= list(before.values()).count("done") < 12
    started_before = log.read_text().split()
    monkeypatch.setenv("FAKE_SLEEP", "0")
    s = run_grid(parse_grid(GRID).runs, db, run_fn=run_fn, progress=False)
    assert s.failed == 0 and s.held_elsewhere == 0
    rows = db_rows(db)
    keys = [r["key"] for r in rows]
    assert len(rows) == 12 and len(set(keys)) == 12 and all(r["status"] == "done" for r in rows)
    starts = log.read_text().split()
    # runs done before the kill were not started again; each other run started exactly once after it
    for key, status in before.items():
        if status == "done":
            assert starts.count(key) == 1
    assert sorted(starts[len(started_before):]) == sorted(k for k in keys if before.get(k) != "done")
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


_alive = helpers.pid_alive


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_mid_grid_stops_cleanly_and_releases_claims(tmp_path, fake, monkeypatch, workers):
    """SIGTERM (what a batch system or `kill` sends) to `gence bench` is Ctrl-C: the runs in flight give up
    their claims, the runner says how to resume and exits 130, and no worker or semaphore is left behind."""
    run_fn, log = fake
    grid = write_grid(tmp_path)
    db = tmp_path / "r.sqlite"
    monkeypatch.setenv("FAKE_SLEEP", "0.6")
    proc = helpers.start_bench(grid, db, run_fn, workers)
    try:
        assert helpers.wait_for_runs(proc, db, lambda done, running: done >= 2 and running >= workers, timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted; finished runs are stored, run the same command to resume" in err
    assert "leaked" not in err and "Traceback" not in err, err
    statuses = [r["status"] for r in db_rows(db)]
    assert "running" not in statuses and 2 <= statuses.count("done") < 12   # claims given up at once
    s = run_grid(parse_grid(GRID).runs, db, run_fn=run_fn, progress=False)
    assert s.already_done == statuses.count("done") and s.done == 12 - statuses.count("done")


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="where Linux keeps named semaphores")
def test_an_interrupted_grid_with_workers_unlinks_its_semaphores_before_the_interrupt_leaves(tmp_path, fake,
                                                                                        monkeypatch, sigint_raises):
    """Ctrl-C on a grid with workers: when the interrupt leaves run_grid, the named semaphores of its queues
    are already unlinked (and unregistered), with no garbage collection needed. The task queue's feeder thread
    used to keep two of them until interpreter exit, where the resource tracker sometimes missed one and warned
    of a "leaked semaphore" (the flaky SIGTERM mid-grid test)."""
    from multiprocessing import synchronize
    names = []
    init = synchronize.SemLock.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        names.append(self._semlock.name)
    monkeypatch.setattr(synchronize.SemLock, "__init__", recording_init)
    run_fn, log = fake
    monkeypatch.setenv("FAKE_SLEEP", "0.6")
    db = tmp_path / "r.sqlite"
    reached = []

    def interrupt_when_both_workers_run():   # never after the grid ended: the signal would hit a later test
        if helpers.wait_for_runs(None, db, lambda done, running: running >= 2, timeout=60):
            reached.append(True)
            os.kill(os.getpid(), signal.SIGINT)
    interrupter = threading.Thread(target=interrupt_when_both_workers_run, daemon=True)
    interrupter.start()
    gc.disable()   # as at interpreter exit: nothing may rely on a collection to free the queues
    try:
        try:
            run_grid(parse_grid(GRID).runs, db, run_fn=run_fn, progress=False, workers=2)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        interrupter.join()
        named = [n for n in names if n]
        left = [n for n in named if os.path.exists("/dev/shm/sem." + n.lstrip("/"))]
    finally:
        gc.enable()
    assert reached, "the two workers never ran at once within 60 s: nothing was interrupted"
    assert interrupted
    assert named   # the queues' semaphores were seen (the spawn context names them)
    assert left == []
    assert "running" not in [r["status"] for r in db_rows(db)]


def test_an_interrupt_kills_workers_that_do_not_exit_in_time_and_the_next_run_takes_their_claims_over(
        tmp_path, fake, monkeypatch, sigint_raises):
    """Ctrl-C with two workers stuck in runs that ignore SIGTERM: run_grid leaves within the workers' exit
    time (both together, not one after the other) with both killed; the next invocation takes their claims
    over as those of dead processes and runs every run once."""
    run_fn, log = fake
    monkeypatch.setattr(runner, "WORKER_EXIT_SECONDS", 2.0)
    monkeypatch.setenv("FAKE_SLEEP", "120")
    monkeypatch.setenv("FAKE_IGNORE_TERM", "1")
    db = tmp_path / "r.sqlite"
    sent, reached = [], []

    def both_logged() -> bool:   # both runs logged: both workers ignore SIGTERM
        return len(log.read_text().split() if log.exists() else []) >= 2

    def interrupt_when_both_workers_ignore_sigterm():
        deadline = time.time() + 60
        while time.time() < deadline and not both_logged():
            time.sleep(0.02)
        reached.append(both_logged())
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)   # in any case: the grid's 120 s runs are still going
    interrupter = threading.Thread(target=interrupt_when_both_workers_ignore_sigterm, daemon=True)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        run_grid(parse_grid(GRID).runs, db, run_fn=run_fn, progress=False, workers=2)
    left = time.monotonic()
    interrupter.join()
    stuck = [r for r in db_rows(db) if r["status"] == "running"]
    pids = [int(r["owner"].split(":")[1]) for r in stuck]
    alive = [pid for pid in pids if _alive(pid)]
    for pid in alive:   # without the kill: end them here, or the interpreter's exit waits for them
        os.kill(pid, signal.SIGKILL)
    assert reached == [True], "the two workers did not both start a run within 60 s"
    assert left - sent[0] < 2.0 + 2 * 5 + 3   # the shared wait, then at most 5 s for each kill to land
    assert len(stuck) == 2 and alive == []
    monkeypatch.setenv("FAKE_SLEEP", "0")
    monkeypatch.delenv("FAKE_IGNORE_TERM")
    s = run_grid(parse_grid(GRID).runs, db, run_fn=run_fn, progress=False)
    assert (s.done, s.failed, s.held_elsewhere) == (12, 0, 0)
    starts = log.read_text().split()
    assert sorted(set(starts)) == sorted(r.key for r in parse_grid(GRID).runs)
    assert all(starts.count(r["key"]) == 2 for r in stuck) and len(starts) == 14


@pytest.mark.parametrize("where", ["after the claim", "while storing"])
def test_an_interrupt_between_claim_and_stored_outcome_gives_the_claim_up(tmp_path, monkeypatch, where):
    """An interrupt that lands just after the claim (here: while the hardware is described, slow on a busy
    machine) or while the outcome is stored leaves no run marked running; the run is simply not stored."""
    from gence.experiments import runner
    spec = parse_grid(GRID).runs[0]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "hardware_string" if where == "after the claim" else "store_outcome", interrupt)
    db = ResultsDB(tmp_path / "r.sqlite")
    try:
        with pytest.raises(KeyboardInterrupt):
            runner._execute(db, spec, lambda config: ({"test/error": 0.5}, {}), {}, False, {}, {})
    finally:
        db.close()
    assert db_rows(tmp_path / "r.sqlite") == []


class _InterruptingConnection:
    """A sqlite3 connection whose ``n``-th ``BEGIN IMMEDIATE`` is interrupted: the statement runs (the write
    lock is taken), then KeyboardInterrupt arrives, as a SIGTERM does when it lands on the next bytecode."""

    def __init__(self, conn: sqlite3.Connection, n: int):
        self._conn, self._left = conn, n

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def cursor(self):
        return self

    def execute(self, sql, *args):
        out = self._conn.execute(sql, *args)
        if sql == "BEGIN IMMEDIATE":
            self._left -= 1
            if self._left == 0:
                raise KeyboardInterrupt
        return out


@pytest.mark.parametrize("begin", [1, 2], ids=["claim", "store"])
def test_an_interrupt_just_after_begin_leaves_no_lock_and_no_claim(tmp_path, begin):
    """The window a SIGTERM hit under load (the flaky mid-grid test): an interrupt just after ``BEGIN
    IMMEDIATE`` of the claim or of the stored outcome. The claim is still given up with KeyboardInterrupt (no
    sqlite error from the release), and the write lock is free at once for another process."""
    from gence.experiments import runner
    spec = parse_grid(GRID).runs[0]
    db = ResultsDB(tmp_path / "r.sqlite")
    db.conn = _InterruptingConnection(db.conn, begin)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner._execute(db, spec, lambda config: ({"test/error": 0.5}, {}), {}, False, {}, {})
        other = ResultsDB(tmp_path / "r.sqlite", timeout=0.5)   # would wait, then fail, on a held lock
        try:
            assert other.claim(spec.key, spec.config, label=spec.label)
        finally:
            other.close()
    finally:
        db.close()
    assert [(r["key"], r["status"]) for r in db_rows(tmp_path / "r.sqlite")] == [(spec.key, "running")]


def test_two_workers_share_one_db_without_duplicates(tmp_path, fake, monkeypatch):
    run_fn, log = fake
    monkeypatch.setenv("FAKE_SLEEP", "0.15")
    runs = parse_grid(GRID).runs
    db = tmp_path / "r.sqlite"
    s = run_grid(runs, db, run_fn=run_fn, progress=False, workers=2)
    assert (s.done, s.failed, s.held_elsewhere) == (12, 0, 0)
    rows = db_rows(db)
    assert len(rows) == 12 and all(r["status"] == "done" for r in rows)
    assert len({r["metrics"]["pid"] for r in rows}) == 2  # both workers ran runs
    assert sorted(log.read_text().split()) == sorted(r.key for r in runs)  # each started once


def test_stale_claim_of_dead_process_is_taken_over_live_one_is_not(tmp_path):
    runs = parse_grid(GRID).runs
    path = tmp_path / "r.sqlite"
    a = ResultsDB(path)
    assert a.claim(runs[0].key, runs[0].config, label="ce")
    b = ResultsDB(path)
    assert not b.claim(runs[0].key, runs[0].config, label="ce")  # live owner (this process), valid lease
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with a.transaction() as cur:  # pretend a process that no longer exists holds it
        cur.execute("UPDATE runs SET owner=? WHERE key=?", (f"{a.host}:{dead.pid}:x", runs[0].key))
    assert b.claim(runs[0].key, runs[0].config, label="ce")
    b.finish(runs[0].key, metrics={"test/error": 0.1}, extras={}, wall_seconds=1.0, hardware="x")
    a.fail(runs[0].key, error="late", wall_seconds=1.0, hardware="x")  # the old owner cannot overwrite it
    assert db_rows(path)[0]["status"] == "done" and db_rows(path)[0]["attempts"] == 2
    a.close(), b.close()


def test_shards_merged_equal_one_unsharded_run(tmp_path, fake, capsys):
    run_fn, _ = fake
    grid = write_grid(tmp_path)
    full = tmp_path / "full.sqlite"
    assert main(["bench", str(grid), "--db", str(full), "--run-fn", run_fn, "--quiet", "--no-report",
                 "--workers", "1"]) == 0
    shards = []
    for i in (1, 2, 3):
        shards.append(tmp_path / f"shard{i}.sqlite")
        assert main(["bench", str(grid), "--db", str(shards[-1]), "--shard", f"{i}/3", "--run-fn", run_fn,
                     "--quiet", "--workers", "1"]) == 0
    merged = tmp_path / "merged.sqlite"
    assert main(["merge", str(merged), *map(str, shards)]) == 0
    assert main(["merge", str(merged), *map(str, shards)]) == 0  # merging again adds nothing
    out = capsys.readouterr().out
    assert "12 done" in out.splitlines()[-1]

    def content(path):
        return {r["key"]: (r["status"], r["config"], {k: v for k, v in r["metrics"].items() if k != "pid"},
                           r["label"]) for r in db_rows(path)}
    assert content(merged) == content(full)
    assert len(content(merged)) == 12
    with ResultsDB(merged) as db:
        assert db.integrity_check() == "ok"
        assert len(db.grids()) == 1


def test_bench_list_shows_status(tmp_path, fake, capsys):
    run_fn, _ = fake
    grid = write_grid(tmp_path)
    db = tmp_path / "r.sqlite"
    assert main(["bench", str(grid), "--db", str(db), "--shard", "1/2", "--run-fn", run_fn, "--quiet",
                 "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["bench", str(grid), "--db", str(db), "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("done ") == 6 and out.count("todo ") == 6 and "12 run(s)" in out


# ----------------------------------------------------------------------------------- end to end
def _have_training() -> bool:
    try:
        from gence.train import TrainConfig, fit  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_training(), reason="gence.train not built yet")
def test_real_tiny_grid_end_to_end_with_report(tmp_path, capsys):
    grid = write_grid(tmp_path, """
        [train]
        epochs = 1
        n_val_per_class = 5
        batch_size = 32
        ood = ["gaussian_noise"]
        device = "cpu"
        [grid]
        datasets = ["digits"]
        regimes = ["balanced:5", "balanced:10"]
        models = ["small_cnn"]
        seeds = [0]
        losses = ["ce", "gence"]
    """)
    db, out = tmp_path / "r.sqlite", tmp_path / "report"
    args = ["bench", str(grid), "--db", str(db), "-o", str(out), "--quiet", "--workers", "1", "--threads", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Test error %" in printed and "gence" in printed
    rows = db_rows(db)
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    for r in rows:
        assert 0 <= r["metrics"]["test/error"] <= 1
        assert "reliability" in r["extras"]
    md = (out / "README.md").read_text()
    for section in ("## Setup", "## Summary", "## Paired comparison with CE", "## Plots"):
        assert section in md
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
        "ece_ts_digits_small_cnn.png", "error_vs_labels_digits_small_cnn.png",
        "reliability_digits_balanced-10_small_cnn.png", "reliability_digits_balanced-5_small_cnn.png"]
    # a second bench run skips everything
    assert main(args) == 0
    assert len(db_rows(db)) == 4


@pytest.mark.skipif(not _have_training(), reason="gence.train not built yet")
def test_run_killed_mid_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A run killed after epoch 1 of 3 leaves its checkpoint at <db>.checkpoints/<key>.pt and its claim
    released; the next invocation trains epochs 2 and 3 only, stores the same metrics as a run never
    stopped, and deletes the checkpoint."""
    import gence.data
    import gence.train.loop as loop
    from gence.train import TrainConfig, fit

    grid = parse_grid("""
        [train]
        epochs = 3
        n_val_per_class = 5
        batch_size = 32
        device = "cpu"
        augment = true
        [grid]
        datasets = ["digits"]
        regimes = ["balanced:10"]
        models = ["small_cnn"]
        seeds = [0]
        losses = ["gence"]
    """)
    (spec,) = grid.runs
    db = tmp_path / "r.sqlite"
    checkpoint = tmp_path / "r.sqlite.checkpoints" / f"{spec.key}.pt"
    save = loop._save_checkpoint
    monkeypatch.setattr(loop, "CHECKPOINT_SECONDS", 0.0)  # save after every epoch

    def save_then_die(path, state):
        save(path, state)
        raise KeyboardInterrupt  # what the runner gets on Ctrl-C or SIGTERM

    with monkeypatch.context() as m:
        m.setattr(loop, "_save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid.runs, db, progress=False)
    assert checkpoint.exists()
    assert db_rows(db) == []  # the claim was given up: the run counts as never started

    calls, original = [], gence.data.iterate_batches
    with monkeypatch.context() as m:
        m.setattr(gence.data, "iterate_batches", lambda *a, **k: calls.append(1) or original(*a, **k))
        summary = run_grid(grid.runs, db, progress=False)
    assert summary.done == 1 and len(calls) == 2
    assert not checkpoint.exists()
    (row,) = db_rows(db)
    reference = fit(TrainConfig.from_dict(spec.config), progress=False).metrics
    timing = ("train/seconds", "train/images_per_second")
    assert {k: v for k, v in row["metrics"].items() if k not in timing} == \
        pytest.approx({k: v for k, v in reference.items() if k not in timing}, nan_ok=True, rel=0, abs=0)


def test_runs_with_a_checkpoint_start_first_then_the_rest_in_block_order(tmp_path):
    """Two runs of the later block were stopped mid-way (their checkpoints are on disk): they run before
    every other run, in their own order, then the rest in block order; each is given its checkpoint."""
    grid = parse_grid(TWO_BLOCKS)
    few = [r for r in grid.runs if r.grid == "few"]
    more = [r for r in grid.runs if r.grid == "more"]
    assert len(few) == 2 and len(more) == 2
    folder = tmp_path / "r.sqlite.checkpoints"
    folder.mkdir()
    for spec in more:
        (folder / f"{spec.key}.pt").write_text("state")
    started, given = [], {}

    def record(config, checkpoint):
        started.append(run_key(config))
        given[run_key(config)] = Path(checkpoint).read_text() if Path(checkpoint).exists() else None
        return {"test/error": 0.5}, {}

    summary = run_grid(grid.runs, tmp_path / "r.sqlite", run_fn=record, progress=False, order=["few", "more"])
    assert summary.done == 4
    assert started == [more[0].key, more[1].key, few[0].key, few[1].key]
    assert given == {more[0].key: "state", more[1].key: "state", few[0].key: None, few[1].key: None}


def test_an_executor_with_a_checkpoint_dir_gets_the_runs_with_a_checkpoint_there_first(tmp_path):
    """Executors (Ray's) keep checkpoints in their own folder: the scheduler reads that one, not the
    database's; an executor without the attribute gets block order."""
    grid = parse_grid(TWO_BLOCKS)
    keys = [r.key for r in grid.runs]
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / f"{keys[-1]}.pt").write_text("state")
    (tmp_path / "r.sqlite.checkpoints").mkdir()
    (tmp_path / "r.sqlite.checkpoints" / f"{keys[-2]}.pt").write_text("not this executor's")

    class InOrder:
        def __init__(self, checkpoint_dir=None):
            if checkpoint_dir is not None:
                self.checkpoint_dir = checkpoint_dir
            self.order = []

        def run(self, d):
            while d.sched.queue:
                self.order.append(d.sched.pop().key)

    with_dir, without = InOrder(folder), InOrder()
    run_grid(grid.runs, tmp_path / "r.sqlite", executor=with_dir, progress=False)
    run_grid(grid.runs, tmp_path / "r.sqlite", executor=without, progress=False)
    assert with_dir.order == [keys[-1]] + keys[:-1]
    assert without.order == keys


def test_checkpoint_given_only_to_run_functions_that_take_one_and_deleted_after_a_failure(tmp_path):
    grid = parse_grid(GRID)
    db = tmp_path / "r.sqlite"
    seen = {}

    def failing(config, checkpoint):
        seen[run_key(config)] = checkpoint
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        Path(checkpoint).write_text("state")
        raise RuntimeError("diverged")

    summary = run_grid(grid.runs[:2], db, run_fn=failing, progress=False)
    assert summary.failed == 2
    assert seen == {r.key: tmp_path / "r.sqlite.checkpoints" / f"{r.key}.pt" for r in grid.runs[:2]}
    assert not any(Path(p).exists() for p in seen.values())
    assert [r["status"] for r in db_rows(db)] == ["failed", "failed"]
