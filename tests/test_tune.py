"""Block-level ``tune``: the tuned value is the argmin of the tuning runs' mean validation metric (checked
against numpy on the stored rows), ties, deferral until the tuning runs are finished within one invocation
(one and two workers), failed tuning runs, validation errors, shards, the report's tuning section, and
properness rows in a benchmark database.

A fake run function (written to tmp_path so spawned workers can import it) makes ``val/error`` a known
function of lr: a parabola in log10(lr) around a per-loss optimum, plus a small seed-dependent term."""
from __future__ import annotations

import csv
import json
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gence.cli import main
from gence.experiments import ResultsDB, parse_grid, run_grid
from gence.experiments.db import run_key
from gence.experiments.grid import GridError, choose_value
from gence.report import write_report

import helpers  # tests/helpers.py

REPO = Path(__file__).resolve().parents[1]

FAKE = '''
import hashlib, json, math, os, time

def run(config):
    from gence.experiments.db import run_key
    key = run_key(config)
    start = time.time()
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    log = os.environ.get("FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"key": key, "pid": os.getpid(), "start": start, "end": time.time()}) + "\\n")
    for loss, lr in json.loads(os.environ.get("FAKE_FAIL", "[]")):
        if config["loss"] == loss and config["lr"] == lr:
            raise RuntimeError(f"fake divergence {loss} lr={lr}")
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16 ** 8
    opt = json.loads(os.environ.get("FAKE_OPT", '{"ce": 0.1, "gence": 0.01, "focal": 0.03}'))[config["loss"]]
    d = (math.log10(config["lr"]) - math.log10(opt)) ** 2
    m = {}
    for split in ("val", "test", "val_ts", "test_ts"):
        for i, k in enumerate(("error", "nll", "brier", "ece", "adaece", "classwise_ece", "mce")):
            m[f"{split}/{k}"] = 0.2 + 0.3 * d + 0.02 * h + 0.01 * i
    if os.environ.get("FAKE_TIE"):  # equal val/error; val/nll equal for lr 0.01 and 0.1, higher for 0.03
        m["val/error"] = 0.25
        m["val/nll"] = 2.0 if config["lr"] == 0.03 else 1.0
    m["ood/gaussian_noise/msp/auroc"] = 0.8 + 0.1 * h
    m["ood/gaussian_noise/msp/fpr95"] = 0.5 - 0.1 * h
    bins = {"edges": [i / 5 for i in range(6)], "count": [0, 3, 5, 10, 30],
            "accuracy": [None, 0.3, 0.5, 0.7, 0.9], "confidence": [None, 0.35, 0.5, 0.75, 0.95]}
    return m, {"reliability": {"test": bins, "test_ts": bins}}
'''

GRID = """
[train]
epochs = 1
ood = ["gaussian_noise"]

[[grid]]
name = "tune"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [100, 101]
sweep = { lr = [0.01, 0.03, 0.1] }
losses = ["ce", "gence", { name = "focal", params = { gamma = 3.0 }, label = "focal", seeds = [100] }]

[[grid]]
name = "main"
tune = { from = ["tune"], field = "lr", metric = "val/error" }
datasets = ["digits"]
regimes = ["balanced:5", "balanced:10"]
models = ["small_cnn"]
seeds = [0, 1]
losses = ["ce", "gence", { name = "focal", params = { gamma = 3.0 }, label = "focal" }]
"""
N_TUNE, N_MAIN = 15, 12


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    return helpers.fake_run_module(tmp_path, monkeypatch, "fake_tune_run", FAKE,
                                   unset=("FAKE_SLEEP", "FAKE_FAIL", "FAKE_TIE", "FAKE_OPT"))


def grid_file(tmp_path, text=GRID) -> Path:
    return helpers.grid_file(tmp_path, text)


rows = helpers.stored_rows


def expected_lr(all_rows, label, metric="val/error") -> float:
    """numpy argmin of the mean metric per lr over the done tuning runs of one loss."""
    done = [r for r in all_rows if r["grid"] == "tune" and r["label"] == label and r["status"] == "done"]
    lrs = np.array(sorted({r["config"]["lr"] for r in done}))
    means = np.array([np.mean([r["metrics"][metric] for r in done if r["config"]["lr"] == lr]) for lr in lrs])
    return float(lrs[int(np.argmin(means))])


def log_entries(log) -> list[dict]:
    return [json.loads(line) for line in Path(log).read_text().splitlines()]


# ------------------------------------------------------------------------------------------ parsing
def test_grid_keeps_tuned_runs_apart_with_candidates_keyed_like_ordinary_runs():
    grid = parse_grid(textwrap.dedent(GRID))
    assert len(grid.runs) == N_TUNE and {r.grid for r in grid.runs} == {"tune"}
    assert len(grid.tuned) == N_MAIN
    # with lr fixed, the same block without tune gives exactly the candidate runs (same keys)
    for lr in (0.01, 0.03, 0.1):
        plain = parse_grid(textwrap.dedent(GRID).replace('tune = { from = ["tune"], field = "lr", metric = '
                                                         '"val/error" }', f"train = {{ lr = {lr} }}"))
        ordinary = {r.key for r in plain.runs if r.grid == "main"}
        assert ordinary == {s.key for t in grid.tuned for v, s in t.candidates if v == lr}
    t = next(t for t in grid.tuned if t.label == "gence")
    assert len(t.tuning) == 6 and sorted(v for v, _ in t.candidates) == [0.01, 0.03, 0.1]


def test_choose_value_argmin_then_tie_breaks():
    c = choose_value([(0.1, {"val/error": 0.3}), (0.1, {"val/error": 0.1}), (0.01, {"val/error": 0.25})],
                     "val/error")
    assert c.value == 0.1 and c.table[1][:3] == (0.1, 2, pytest.approx(0.2))
    # equal metric: lower val/nll wins
    c = choose_value([(0.1, {"val/error": 0.2, "val/nll": 0.5}), (0.03, {"val/error": 0.2, "val/nll": 0.7})],
                     "val/error")
    assert c.value == 0.1
    # equal metric and val/nll: the smaller value
    c = choose_value([(0.1, {"val/error": 0.2, "val/nll": 0.5}), (0.03, {"val/error": 0.2, "val/nll": 0.5})],
                     "val/error")
    assert c.value == 0.03
    # a value whose runs lack the metric never wins; none with it: no choice
    c = choose_value([(0.01, {}), (0.1, {"val/error": 0.9})], "val/error")
    assert c.value == 0.1
    assert choose_value([(0.01, {})], "val/error") is None and choose_value([], "val/error") is None


# ------------------------------------------------------------------------------------------- runner
@pytest.mark.parametrize("workers", [1, 2])
def test_tuning_then_main_runs_in_one_invocation_with_the_argmin_lr(tmp_path, fake, monkeypatch, workers):
    run_fn, log = fake
    if workers == 2:
        monkeypatch.setenv("FAKE_SLEEP", "0.3")
    grid = parse_grid(textwrap.dedent(GRID))
    db = tmp_path / "r.sqlite"
    s = run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned, workers=workers)
    assert (s.done, s.failed, s.waiting, s.untunable) == (N_TUNE + N_MAIN, 0, 0, [])
    stored = rows(db)
    assert len(stored) == N_TUNE + N_MAIN and all(r["status"] == "done" for r in stored)
    chosen = {label: expected_lr(stored, label) for label in ("ce", "gence", "focal")}
    assert chosen == {"ce": 0.1, "gence": 0.01, "focal": 0.03}  # the fake's optima, recovered
    main_rows = [r for r in stored if r["grid"] == "main"]
    assert len(main_rows) == N_MAIN
    for r in main_rows:
        assert r["config"]["lr"] == chosen[r["label"]]
        assert r["key"] == run_key(r["config"])
    # every main run started after every tuning run of its loss had ended
    entries = {e["key"]: e for e in log_entries(log)}
    for r in main_rows:
        tuning_end = max(entries[t["key"]]["end"] for t in stored if t["grid"] == "tune" and t["label"] == r["label"])
        assert entries[r["key"]]["start"] >= tuning_end
    if workers == 2:
        # both workers ran main runs, and they stayed busy across the stage boundary: the 27 runs of 0.3 s
        # took about 14 slots of 0.3 s, far from the 27 of one worker
        assert len({entries[r["key"]]["pid"] for r in main_rows}) == 2
        span = max(e["end"] for e in entries.values()) - min(e["start"] for e in entries.values())
        assert span < 0.3 * 27 * 0.75, span
    # a second invocation runs nothing
    s = run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned)
    assert (s.done, s.already_done) == (0, N_TUNE + N_MAIN)


def test_ties_broken_by_val_nll_then_smaller_value(tmp_path, fake, monkeypatch):
    run_fn, _ = fake
    monkeypatch.setenv("FAKE_TIE", "1")
    grid = parse_grid(textwrap.dedent(GRID))
    db = tmp_path / "r.sqlite"
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned)
    stored = rows(db)
    tune = [r for r in stored if r["grid"] == "tune"]
    assert len({r["metrics"]["val/error"] for r in tune}) == 1  # the metric ties everywhere
    assert {r["config"]["lr"] for r in stored if r["grid"] == "main"} == {0.01}  # nll ties 0.01 and 0.1: smaller


def test_failed_tuning_runs_are_ignored(tmp_path, fake, monkeypatch):
    run_fn, _ = fake
    monkeypatch.setenv("FAKE_FAIL", json.dumps([["ce", 0.1]]))  # CE's best lr diverges
    grid = parse_grid(textwrap.dedent(GRID))
    db = tmp_path / "r.sqlite"
    s = run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned)
    assert s.failed == 2 and s.done == N_TUNE - 2 + N_MAIN and not s.untunable
    stored = rows(db)
    best = expected_lr(stored, "ce")
    assert best == 0.03
    assert {r["config"]["lr"] for r in stored if r["grid"] == "main" and r["label"] == "ce"} == {best}


def test_every_tuning_run_failed_is_reported_not_skipped(tmp_path, fake, monkeypatch, capsys):
    run_fn, _ = fake
    monkeypatch.setenv("FAKE_FAIL", json.dumps([["gence", lr] for lr in (0.01, 0.03, 0.1)]))
    path = grid_file(tmp_path)
    db = tmp_path / "r.sqlite"
    args = ["bench", str(path), "--db", str(db), "--run-fn", run_fn, "--quiet", "--workers", "1", "--no-report"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "4 could not be tuned" in err
    assert err.count("not run (failed to tune)") == 4
    assert "cannot tune 'lr': all 6 tuning run(s) failed in block(s) tune" in err
    stored = rows(db)
    assert not [r for r in stored if r["grid"] == "main" and r["label"] == "gence"]
    assert len([r for r in stored if r["grid"] == "main"]) == 8  # ce and focal ran
    assert main(["bench", str(path), "--db", str(db), "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("untuned ") == 4 and "4 failed to tune" in out


def test_list_shows_waiting_runs_then_their_tuned_lr(tmp_path, fake, capsys):
    run_fn, _ = fake
    path = grid_file(tmp_path)
    db = tmp_path / "r.sqlite"
    assert main(["bench", str(path), "--db", str(db), "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("todo ") == N_TUNE and out.count("waiting for tuning of lr on tune: 0/") == N_MAIN
    assert f"{N_TUNE + N_MAIN} run(s) ({N_MAIN} waiting for tuning)" in out
    grid = parse_grid(textwrap.dedent(GRID))
    run_grid(grid.runs, db, run_fn=run_fn, progress=False)  # tuning runs only (no tuned given)
    assert main(["bench", str(path), "--db", str(db), "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("done ") == N_TUNE and "waiting" not in out
    assert out.count("(lr=0.1 tuned on tune)") == 4 and out.count("(lr=0.01 tuned on tune)") == 4


def test_shards_wait_for_merged_tuning_runs_then_match_one_unsharded_run(tmp_path, fake, capsys):
    run_fn, _ = fake
    path = grid_file(tmp_path)
    full = tmp_path / "full.sqlite"
    base = ["--run-fn", run_fn, "--quiet", "--workers", "1"]
    assert main(["bench", str(path), "--db", str(full), "--no-report", *base]) == 0
    shards = [tmp_path / f"s{i}.sqlite" for i in (1, 2)]
    for i, db in enumerate(shards, 1):
        assert main(["bench", str(path), "--db", str(db), "--shard", f"{i}/2", *base]) == 0
    assert "wait for tuning runs of other shards" in capsys.readouterr().err
    for db in shards:  # every shard's database gets every tuning run, then the shards run again
        for other in shards:
            if other != db:
                assert main(["merge", str(db), str(other)]) == 0
    for i, db in enumerate(shards, 1):
        assert main(["bench", str(path), "--db", str(db), "--shard", f"{i}/2", *base]) == 0
    merged = tmp_path / "merged.sqlite"
    assert main(["merge", str(merged), *map(str, shards)]) == 0

    def content(db):
        return {r["key"]: (r["status"], r["config"]["lr"], r["label"]) for r in rows(db)}
    assert content(merged) == content(full) and len(content(full)) == N_TUNE + N_MAIN


# ------------------------------------------------------------------------------------------ validation
TUNE_LINE = 'tune = { from = ["tune"], field = "lr", metric = "val/error" }'
BAD = [
    (GRID.replace(TUNE_LINE, 'tune = { from = ["tuning"], field = "lr" }'),
     ["grid[1].tune.from[0]", "'tuning'", "unknown block", "tune"]),
    (GRID.replace(TUNE_LINE, 'tune = { from = ["main"], field = "lr" }'), ["grid[1].tune.from[0]", "'main'", "own runs"]),
    (GRID.replace(TUNE_LINE, 'tune = { from = ["tune"], field = "lrate" }'),
     ["grid[1].tune.field", "'lrate'", "lr", "momentum", "weight_decay"]),
    (GRID.replace(TUNE_LINE, 'tune = { from = ["tune"], field = "momentum" }'),
     ["grid[1].tune.field", "'momentum'", "'tune' does not sweep it", "lr"]),
    (GRID.replace(TUNE_LINE, 'tune = { from = ["tune"], field = "lr", metric = 3 }'), ["grid[1].tune.metric", "3"]),
    (GRID.replace(TUNE_LINE, 'tune = { from = ["tune"], field = "lr", metrc = "val/nll" }'),
     ["grid[1].tune", "'metrc'", "from", "field", "metric"]),
    (GRID.replace(TUNE_LINE, 'tune = { field = "lr" }'), ["grid[1].tune", "missing 'from'", "tune"]),
    (GRID.replace(TUNE_LINE, TUNE_LINE + "\nsweep = { lr = [0.1, 0.2] }"), ["grid[1].tune.field", "'lr'", "sweeps"]),
    (GRID.replace('losses = ["ce", "gence", { name = "focal", params = { gamma = 3.0 }, label = "focal" }]',
                  'losses = ["ce", "brier"]'),
     ["grid[1]: run", "loss=brier", "no run with this dataset, model and loss", "ce, focal, gence"]),
    (GRID.replace("seeds = [0, 1]", "seeds = [100]"), ["grid[1]: run", "seed=100", "same run as one of its tuning"]),
]


@pytest.mark.parametrize("text,needles", BAD, ids=[str(i) for i in range(len(BAD))])
def test_tune_errors_name_key_value_and_choices(text, needles):
    with pytest.raises(GridError) as info:
        parse_grid(textwrap.dedent(text))
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


@pytest.mark.skipif(not (REPO / "configs" / "cpu_study.toml").exists(), reason="study config not in this checkout")
def test_study_config_validates():
    from gence.experiments import load_grid

    grid = load_grid(REPO / "configs" / "cpu_study.toml")
    assert 1000 <= len(grid.runs) + len(grid.tuned) <= 1200
    assert {t.grid for t in grid.tuned} == {"balanced", "long_tailed"}


# ------------------------------------------------------------------------------------------- report
def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_tuning_section_against_numpy_and_tuning_blocks_out_of_main_tables(tmp_path, fake, monkeypatch):
    run_fn, _ = fake
    monkeypatch.setenv("FAKE_FAIL", json.dumps([["ce", 0.01]]))
    grid = parse_grid(textwrap.dedent(GRID), name="g")
    db = tmp_path / "r.sqlite"
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned, grid_text=(grid.name, None, grid.text))
    out = tmp_path / "out"
    rep = write_report(db, out, with_plots=False)
    md = rep.markdown
    assert "## Learning-rate tuning" in md and "Test error % per `lr`" in md
    stored = rows(db)
    table = read_csv(out / "tables" / "tuning_lr_tune.csv")
    assert len(table) == 9  # 3 losses x 3 lrs
    for row in table:
        lr = float(row["value"])
        mine = [r for r in stored if r["grid"] == "tune" and r["label"] == row["loss"] and r["config"]["lr"] == lr]
        done = [r for r in mine if r["status"] == "done"]
        assert int(row["n"]) == len(done) and int(row["failed"]) == len(mine) - len(done)
        if done:
            x = np.array([r["metrics"]["val/error"] for r in done])
            e = np.array([r["metrics"]["test/error"] for r in done])
            assert float(row["metric_mean"]) == pytest.approx(x.mean(), rel=1e-12)
            assert float(row["test_error_mean"]) == pytest.approx(e.mean(), rel=1e-12)
            if len(done) > 1:
                assert float(row["metric_std"]) == pytest.approx(x.std(ddof=1), rel=1e-12)
        # the marked value is the one the tuned runs use
        used = {r["config"]["lr"] for r in stored if r["grid"] == "main" and r["label"] == row["loss"]}
        assert (row["chosen"] == "1") == (used == {lr})
        assert row["chosen"] == "1" or lr != expected_lr(stored, row["loss"])
    # robustness table: CE and GenCE (2 seeds per lr) but not focal (1 seed)
    robust = md[md.index("Test error % per `lr`"):]
    robust = robust[:robust.index("CSV:")]
    assert "| gence |" in robust and "| focal |" not in robust
    # tuning runs are not in the main tables: the balanced:5 table has the main block's 2 seeds per loss
    main_rows = read_csv(out / "tables" / "digits_balanced-5_small_cnn.csv")
    assert {r["block"] for r in main_rows} == {"main"} and {r["n"] for r in main_rows} == {"2"}
    assert {r["variant"] for r in main_rows} == {""}


def test_setup_says_a_tuning_rule_once_with_every_block_it_tunes(tmp_path, fake):
    """Two sweeps tuning two blocks by the same rule: one 'Tuned' line naming both pairs (the study has ten)."""
    run_fn, _ = fake
    blocks = GRID[GRID.index("[[grid]]"):]
    text = GRID + blocks.replace('"tune"', '"tune2"').replace('"main"', '"main2"').replace("balanced:", "long_tailed:2:")
    grid = parse_grid(textwrap.dedent(text), name="g")
    db = tmp_path / "r.sqlite"
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned, grid_text=(grid.name, None, grid.text))
    lines = [ln for ln in write_report(db, tmp_path / "out", with_plots=False).markdown.splitlines()
             if ln.startswith("- Tuned `lr`")]
    assert len(lines) == 1
    assert "`main` from `tune`" in lines[0] and "`main2` from `tune2`" in lines[0] and "`val/error`" in lines[0]


def test_report_skips_properness_rows(tmp_path, fake):
    run_fn, _ = fake
    grid = parse_grid(textwrap.dedent(GRID))
    db = tmp_path / "gence.sqlite"
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned)
    with ResultsDB(db) as rdb:  # what gence properness stores: grid "properness", no dataset in the config
        config = {"task": "gaussian", "loss": "ce", "seed": 0, "n_train": 100}
        assert rdb.claim(run_key(config), config, label="ce", grid="properness")
        rdb.finish(run_key(config), metrics={"excess_risk": 0.1}, extras={}, wall_seconds=1.0, hardware="x")
        config = {**config, "seed": 1}
        assert rdb.claim(run_key(config), config, label="ce", grid="properness")
        rdb.fail(run_key(config), error="boom", wall_seconds=1.0, hardware="x")
    rep = write_report(db, tmp_path / "out", with_plots=False)
    assert f"Runs: {N_TUNE + N_MAIN} done, 0 failed" in rep.markdown
    assert main(["report", str(db), "-o", str(tmp_path / "cli")]) == 0
    runs_csv = read_csv(tmp_path / "out" / "tables" / "runs.csv")
    assert len(runs_csv) == N_TUNE + N_MAIN and all(r["dataset"] == "digits" for r in runs_csv)


def test_runs_start_in_block_order_so_a_tuned_block_goes_before_a_later_ordinary_one(tmp_path, fake, capsys):
    # tune (ordinary), main (tuned on tune), then base (ordinary): base's runs are ready from the start, but
    # the file puts main before them, so every main run starts before any base run (one worker: the order of
    # the log is the order of the runs)
    run_fn, log = fake
    text = GRID + textwrap.dedent("""
        [[grid]]
        name = "base"
        datasets = ["digits"]
        regimes = ["balanced:5"]
        models = ["small_cnn"]
        seeds = [0, 1]
        losses = [{ name = "focal", params = { gamma = 2.0 }, label = "focal2" }]
        """)
    path = grid_file(tmp_path, text)
    db = tmp_path / "r.sqlite"
    code = main(["bench", str(path), "--db", str(db), "--run-fn", run_fn, "--workers", "1", "--quiet",
                 "--no-report"])
    assert code == 0, capsys.readouterr().err
    block_of = {r["key"]: r["grid"] for r in rows(db)}
    started = [block_of[e["key"]] for e in log_entries(log)]
    assert started == ["tune"] * N_TUNE + ["main"] * N_MAIN + ["base"] * 2


PILOT = """
[train]
epochs = 1
ood = ["gaussian_noise"]

[[grid]]
name = "pilot"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0, 1]
losses = [{ name = "ce", label = "ce_pilot" }]
train = { lr = 0.1 }
"""   # a pilot that ran CE at lr 0.1 (the fake's CE optimum), seeds 0 and 1


def test_reuse_copies_a_pilots_done_runs_into_the_tuned_block_instead_of_training_them(tmp_path, fake, capsys):
    # A pilot ran CE at lr 0.1, seeds 0 and 1, on balanced:5. The study tunes lr (the fake's CE optimum is
    # 0.1), so two of its main runs have the pilot's keys: with --reuse they are copied, not trained, and
    # stored under the study's block and label; every other run is trained as before.
    run_fn, log = fake
    pilot_dir = tmp_path / "pilot"
    pilot_dir.mkdir()
    pilot_grid = helpers.grid_file(pilot_dir, PILOT)
    pilot = tmp_path / "pilot.sqlite"
    base = ["--run-fn", run_fn, "--workers", "1", "--quiet", "--no-report"]
    assert main(["bench", str(pilot_grid), "--db", str(pilot), *base]) == 0
    pilot_rows = {r["key"]: r for r in rows(pilot)}
    assert len(pilot_rows) == 2 and len(log_entries(log)) == 2
    capsys.readouterr()

    path = grid_file(tmp_path)
    db = tmp_path / "study.sqlite"
    code = main(["bench", str(path), "--db", str(db), "--list", "--reuse", str(pilot), *base])
    listed = capsys.readouterr().out
    assert code == 0 and not db.exists()      # --list creates nothing
    assert sum(line.startswith("reuse ") for line in listed.splitlines()) == 0  # tuned: lr not known yet
    assert main(["bench", str(path), "--db", str(db), "--reuse", str(pilot), *base]) == 0
    assert "2 copied from the reused database(s), not trained" in capsys.readouterr().err
    stored = {r["key"]: r for r in rows(db)}
    assert len(stored) == N_TUNE + N_MAIN
    trained = [e["key"] for e in log_entries(log)[2:]]
    assert len(trained) == N_TUNE + N_MAIN - 2 and not set(trained) & set(pilot_rows)
    for key, prow in pilot_rows.items():
        r = stored[key]
        assert (r["grid"], r["label"], r["status"]) == ("main", "ce", "done")
        assert r["config"] == prow["config"] and r["config"]["lr"] == 0.1 and r["config"]["seed"] in (0, 1)
        assert r["metrics"] == prow["metrics"]
    con = sqlite3.connect(db)
    extras = [json.loads(e) for (e,) in con.execute("SELECT extras FROM runs WHERE key IN (?, ?)", tuple(pilot_rows))]
    con.close()
    assert all(e["copied_from"] == {"db": str(pilot), "grid": "pilot", "label": "ce_pilot"} for e in extras)
    assert all("reliability" in e for e in extras)     # the run's own extras are kept
    # --list marks the runs a database would copy: the pilot's own grid against a fresh database
    fresh = tmp_path / "fresh.sqlite"
    code = main(["bench", str(pilot_grid), "--db", str(fresh), "--list", "--reuse", str(pilot), *base])
    listed = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("reuse ")]
    assert code == 0 and sorted(k for _, k in listed) == sorted(k[:12] for k in pilot_rows) and not fresh.exists()


def test_reuse_sees_runs_the_pilot_stores_while_the_grid_runs(tmp_path, fake, monkeypatch):
    # The pilot DB starts without the runs; the pilot stores them while the study's sweep runs (here: the
    # study's first tuning run triggers it). The tuned main runs are queued after that, when CE's lr is
    # chosen (0.1, the fake's optimum), so the two with the pilot's keys are copied, not trained.
    run_fn, log = fake
    from fake_tune_run import run as fake_run
    pilot_grid = parse_grid(PILOT)
    pilot = tmp_path / "pilot.sqlite"
    assert run_grid(pilot_grid.runs[:0], pilot, run_fn=fake_run, progress=False).done == 0   # empty, valid
    calls = []

    def study_run(config):
        if not calls:
            assert run_grid(pilot_grid.runs, pilot, run_fn=fake_run, progress=False).done == 2
        calls.append(config)
        return fake_run(config)

    grid = parse_grid(textwrap.dedent(GRID))
    db = tmp_path / "study.sqlite"
    s = run_grid(grid.runs, db, run_fn=study_run, progress=False, tuned=grid.tuned, reuse=[pilot])
    assert s.copied == 2 and len(calls) == N_TUNE + N_MAIN - 2
    pilot_keys = {r["key"] for r in rows(pilot)}
    stored = {r["key"]: r for r in rows(db)}
    assert all((stored[k]["grid"], stored[k]["label"]) == ("main", "ce") for k in pilot_keys)


def test_reuse_needs_another_results_database(tmp_path, fake, capsys):
    run_fn, _ = fake
    path = grid_file(tmp_path)
    db = tmp_path / "study.sqlite"
    base = ["--run-fn", run_fn, "--workers", "1", "--quiet", "--no-report"]
    assert main(["bench", str(path), "--db", str(db), "--reuse", str(tmp_path / "missing.sqlite"), *base]) == 2
    assert capsys.readouterr().err.strip() == (f"gence bench: --reuse {tmp_path / 'missing.sqlite'}: does not exist; "
                                               f"expected another results database")
    assert not db.exists()
    assert main(["bench", str(path), "--db", str(db), *base]) == 0
    capsys.readouterr()
    assert main(["bench", str(path), "--db", str(db), "--reuse", str(db), *base]) == 2
    assert capsys.readouterr().err.strip() == (f"gence bench: --reuse {db}: is the --db database itself; "
                                               f"expected another results database")


def test_blocks_runs_part_of_a_grid_and_the_rest_later(tmp_path, fake, capsys):
    # --blocks 'tune' runs the 15 tuning runs only; the main block is then run by itself (its runs wait on
    # the tune block, which the database now holds) and picks the lr it would have picked in one go
    run_fn, log = fake
    path = grid_file(tmp_path)
    db = tmp_path / "r.sqlite"
    base = ["--db", str(db), "--run-fn", run_fn, "--workers", "1", "--quiet", "--no-report"]
    assert main(["bench", str(path), "--blocks", "tun*", *base]) == 0
    assert {r["grid"] for r in rows(db)} == {"tune"} and len(rows(db)) == N_TUNE
    assert main(["bench", str(path), "--blocks", "main", *base]) == 0
    stored = rows(db)
    assert len(stored) == N_TUNE + N_MAIN and all(r["status"] == "done" for r in stored)
    for r in stored:
        if r["grid"] == "main":
            assert r["config"]["lr"] == expected_lr(stored, r["label"])
    capsys.readouterr()
    assert main(["bench", str(path), "--blocks", "tune,mian", *base]) == 2
    assert capsys.readouterr().err.strip() == f"gence bench: --blocks 'mian': matches no block of {path}; its blocks: tune, main"
