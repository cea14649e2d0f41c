"""Block-level ``extend``: a sweep whose winner sits at an edge adds values until it is inside (or max_steps).

A fake run function (written to tmp_path so spawned workers and subprocesses can import it) makes
``val/error`` a parabola in log2(lr) with its minimum at a per-loss optimum, the same for every seed up to
a seed offset that does not move the argmin, so the values each sweep must end with are worked out by
hand below from the optima alone:

- swept lr = 0.025, 0.05, 0.1, 0.2, 0.4; factor 2, max_steps 3;
- ce, optimum 1.0: best 0.4 (top edge) -> add 0.8 (|log2 0.8| = 0.32 beats 0.4's 1.32), still the top edge
  -> add 1.6 (|log2 1.6| = 0.68 > 0.32): 0.8 is inside. Added {0.8, 1.6}, winner 0.8.
- gence, optimum 0.1: inside at once, nothing added, winner 0.1.
- focal, optimum 100: 0.8, 1.6, 3.2 each win at the top edge; after 3 steps 3.2 is still the largest:
  at an edge after max_steps. Added {0.8, 1.6, 3.2}, winner 3.2.
- brier, optimum 0.01: best 0.025 (bottom edge) -> add 0.0125 (log2(1.25) = 0.32 beats 0.025's 1.32) ->
  add 0.00625 (log2(1.6) = 0.68): 0.0125 is inside. Added {0.0125, 0.00625}, winner 0.0125.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest

from gence.cli import main
from gence.experiments import parse_grid, run_grid
from gence.experiments.db import run_key
from gence.experiments.grid import GridError, extension_state
from gence.report import load_results, write_report
from gence.report.cli import write_for
from gence.report.verdict import VerdictSpec, build_verdict, grid_progress, progress_markdown

import helpers  # tests/helpers.py

REPO = Path(__file__).resolve().parents[1]

FAKE = '''
import json, math, os, time

def run(config):
    from gence.experiments.db import run_key
    start = time.time()
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    log = os.environ.get("FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"key": run_key(config), "start": start, "end": time.time()}) + "\\n")
    for loss, lr in json.loads(os.environ.get("FAKE_FAIL", "[]")):
        if config["loss"] == loss and config["lr"] == lr:
            raise RuntimeError(f"fake divergence {loss} lr={lr}")
    opt = json.loads(os.environ["FAKE_OPT"])[config["loss"]]
    d = (math.log2(config["lr"]) - math.log2(opt)) ** 2
    m = {"val/error": 0.2 + 0.05 * d + 0.001 * config["seed"], "val/nll": 0.5 + 0.05 * d,
         "test/error": 0.25 + 0.05 * d}
    return m, {}
'''

OPT = {"ce": 1.0, "gence": 0.1, "focal": 100.0, "brier": 0.01}
SWEPT = [0.025, 0.05, 0.1, 0.2, 0.4]
EXPECTED_ADDED = {"ce": [0.8, 1.6], "gence": [], "focal": [0.8, 1.6, 3.2], "brier": [0.00625, 0.0125]}
EXPECTED_BEST = {"ce": 0.8, "gence": 0.1, "focal": 3.2, "brier": 0.0125}

GRID = """
[train]
epochs = 1

[[grid]]
name = "sweep"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0, 1]
sweep = { lr = [0.025, 0.05, 0.1, 0.2, 0.4] }
extend = { field = "lr", factor = 2.0, max_steps = 3 }
losses = ["ce", "gence", { name = "focal", params = { gamma = 3.0 }, label = "focal" }, "brier"]

[[grid]]
name = "main"
tune = { from = ["sweep"], field = "lr" }
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [7]
losses = ["ce", "gence", { name = "focal", params = { gamma = 3.0 }, label = "focal" }, "brier"]
"""
N_SWEPT = 4 * 5 * 2
N_ADDED = 2 * sum(len(v) for v in EXPECTED_ADDED.values())  # 2 seeds per added value: 14
N_MAIN = 4

# one loss far beyond the top edge: 10 swept runs, then 3 extension rounds of 2 runs
FAR = """
[train]
epochs = 1

[grid]
name = "sweep"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0, 1]
sweep = { lr = [0.025, 0.05, 0.1, 0.2, 0.4] }
extend = { field = "lr", factor = 2.0, max_steps = 3 }
losses = [{ name = "focal", params = { gamma = 3.0 }, label = "focal" }]
"""


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    return helpers.fake_run_module(tmp_path, monkeypatch, "fake_extend_run", FAKE, env={"FAKE_OPT": json.dumps(OPT)},
                                   unset=("FAKE_SLEEP", "FAKE_FAIL"))


def grid_file(tmp_path, text=GRID) -> Path:
    return helpers.grid_file(tmp_path, text)


rows = helpers.stored_rows


def content(db) -> dict:
    return {r["key"]: (r["status"], r["grid"], r["label"], json.dumps(r["config"], sort_keys=True),
                       json.dumps(r["metrics"], sort_keys=True)) for r in rows(db)}


def lrs(stored, block, label, status=None) -> list[float]:
    return sorted({r["config"]["lr"] for r in stored if r["grid"] == block and r["label"] == label
                   and (status is None or r["status"] == status)})


def log_entries(log) -> list[dict]:
    return [json.loads(line) for line in Path(log).read_text().splitlines()]


def sweep_text(values, extend="") -> str:
    return GRID.replace("sweep = { lr = [0.025, 0.05, 0.1, 0.2, 0.4] }",
                        f"sweep = {{ lr = {json.dumps(values)} }}").replace(
        'extend = { field = "lr", factor = 2.0, max_steps = 3 }', extend)


# ------------------------------------------------------------------------------------------ parsing
def test_ladder_values_and_keys_are_those_of_values_listed_in_the_sweep():
    grid = parse_grid(textwrap.dedent(GRID))
    assert len(grid.runs) == N_SWEPT and len(grid.extensions) == 4 and len(grid.tuned) == N_MAIN
    g = next(g for g in grid.extensions if g.label == "ce")
    assert [v for v, _ in g.down] == [0.0125, 0.00625, 0.003125]
    assert [v for v, _ in g.up] == [0.8, 1.6, 3.2]
    assert g.seeds == (0, 1) and all(len(specs) == 2 for _, specs in g.down + g.up)
    # the same block with the whole ladder listed in its sweep (and no extend) has exactly those keys
    listed = parse_grid(textwrap.dedent(sweep_text([0.003125, 0.00625, 0.0125] + SWEPT + [0.8, 1.6, 3.2])))
    listed_keys = {r.key: r for r in listed.runs}
    for g in grid.extensions:
        for value, specs in g.down + g.up:
            for spec in specs:
                assert listed_keys[spec.key].config == spec.config and spec.config["lr"] == value
                assert spec.grid == "sweep" and spec.label == g.label
    # a tuned run's candidates cover the ladder: the ordinary run with lr fixed at 3.2 is one of them
    fixed = parse_grid(textwrap.dedent(GRID.replace('tune = { from = ["sweep"], field = "lr" }',
                                                    "train = { lr = 3.2 }")))
    assert ({r.key for r in fixed.runs if r.grid == "main"}
            == {s.key for t in grid.tuned for v, s in t.candidates if v == 3.2})


def test_factor_3_values_are_rounded_so_0_1_times_3_is_the_run_of_0_3():
    text = sweep_text([0.05, 0.1], 'extend = { field = "lr", factor = 3, max_steps = 2 }')
    g = parse_grid(textwrap.dedent(text)).extensions[0]
    assert 0.1 * 3 != 0.3  # what rounding is for
    assert [v for v, _ in g.up] == [0.3, 0.9]
    assert [v for v, _ in g.down] == [float(f"{0.05 / 3:.12g}"), float(f"{float(f'{0.05 / 3:.12g}') / 3:.12g}")]
    listed = parse_grid(textwrap.dedent(sweep_text([0.3, 0.9])))
    assert {s.key for _, specs in g.up for s in specs if s.label == g.label} == \
        {r.key for r in listed.runs if r.label == g.label}


def test_a_ladder_stops_at_the_first_invalid_value():
    text = sweep_text([0.5, 0.7], 'extend = { field = "momentum", max_steps = 3 }').replace(
        "sweep = { lr = [0.5, 0.7] }", "sweep = { momentum = [0.5, 0.7] }")
    g = parse_grid(textwrap.dedent(text).replace('tune = { from = ["sweep"], field = "lr" }', "")).extensions[0]
    assert [v for v, _ in g.down] == [0.25, 0.125, 0.0625] and g.up == ()
    assert "momentum=1.4" in g.up_blocked and "[0, 1)" in g.up_blocked


EXT_LINE = 'extend = { field = "lr", factor = 2.0, max_steps = 3 }'
BAD = [
    (GRID.replace(EXT_LINE, 'extend = { field = "lr", factr = 2 }'),
     ["grid[0].extend", "'factr'", "field", "factor", "max_steps", "metric"]),
    (GRID.replace(EXT_LINE, 'extend = { factor = 2 }'), ["grid[0].extend", "missing 'field'", "lr"]),
    (GRID.replace(EXT_LINE, 'extend = { field = "epochs" }'), ["grid[0].extend.field", "'epochs'", "lr"]),
    (GRID.replace(EXT_LINE, 'extend = { field = "momentum" }'),
     ["grid[0].extend.field", "'momentum'", "not swept by every run", "lr"]),
    (GRID.replace(EXT_LINE, 'extend = { field = "lr", factor = 1.0 }'), ["grid[0].extend.factor", "1.0", "> 1"]),
    (GRID.replace(EXT_LINE, 'extend = { field = "lr", factor = "2" }'), ["grid[0].extend.factor", "'2'"]),
    (GRID.replace(EXT_LINE, 'extend = { field = "lr", max_steps = -1 }'),
     ["grid[0].extend.max_steps", "-1", ">= 0"]),
    (GRID.replace(EXT_LINE, 'extend = { field = "lr", metric = "" }'), ["grid[0].extend.metric", "''"]),
    (sweep_text([0.1], EXT_LINE), ["grid[0]: runs digits balanced:5 small_cnn ce", "[0.1]", "at least 2"]),
    (GRID.replace('tune = { from = ["sweep"], field = "lr" }',
                  'tune = { from = ["sweep"], field = "lr" }\n' + EXT_LINE),
     ["grid[1].extend", "'tune' cannot 'extend'"]),
    (GRID.replace('losses = ["ce", "gence", { name = "focal", params = { gamma = 3.0 }, label = "focal" }, '
                  '"brier"]\n\n[[grid]]',
                  'losses = ["ce", { name = "gence", sweep = { momentum = [0.8, 0.9] } }]\n\n[[grid]]', 1),
     ["grid[0].extend.field", "'lr'", "not swept by every run"]),
]


@pytest.mark.parametrize("text,needles", BAD, ids=[str(i) for i in range(len(BAD))])
def test_extend_errors_name_key_value_and_choices(text, needles):
    with pytest.raises(GridError) as info:
        parse_grid(textwrap.dedent(text))
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


# ------------------------------------------------------------------------------------------- runner
def check_final(stored):
    assert len(stored) == N_SWEPT + N_ADDED + N_MAIN and all(r["status"] == "done" for r in stored)
    assert len({r["key"] for r in stored}) == len(stored)
    for label in OPT:
        assert lrs(stored, "sweep", label) == sorted(SWEPT + EXPECTED_ADDED[label]), label
        for lr in EXPECTED_ADDED[label]:  # every seed of the group at each added value
            assert sorted(r["config"]["seed"] for r in stored if r["label"] == label and r["config"]["lr"] == lr
                          and r["grid"] == "sweep") == [0, 1]
        assert lrs(stored, "main", label) == [EXPECTED_BEST[label]], label
    for r in stored:
        assert r["key"] == run_key(r["config"])


def test_extends_up_down_not_at_all_or_until_max_steps_then_tune_takes_the_final_best(tmp_path, fake):
    run_fn, log = fake
    grid = parse_grid(textwrap.dedent(GRID))
    db = tmp_path / "r.sqlite"
    s = run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned, extensions=grid.extensions)
    assert (s.done, s.failed, s.waiting, s.undecided, s.extension_runs) == (N_SWEPT + N_ADDED + N_MAIN, 0, 0, 0,
                                                                             N_ADDED)
    stored = rows(db)
    check_final(stored)
    # recorded: only focal's winner is still at an edge, named in the summary
    states = {what.split()[-1]: st for what, st in s.extensions}
    assert {k: st.best for k, st in states.items()} == EXPECTED_BEST
    assert {k: list(st.added) for k, st in states.items()} == EXPECTED_ADDED
    assert [k for k, st in states.items() if st.at_edge] == ["focal"] and states["focal"].edge == "high"
    assert len(s.at_edge) == 1 and "AT EDGE: lr=3.2 is still the largest value tried after 3 extension(s) up" \
        in s.at_edge[0][1]
    assert "1 sweep(s) AT AN EDGE" in s.line() and "3 of 4 extending sweep(s) extended" in s.line()
    # the tuned runs started after every run of their loss's sweep (extensions included) had ended
    entries = {e["key"]: e for e in log_entries(log)}
    for r in stored:
        if r["grid"] == "main":
            sweep_end = max(entries[t["key"]]["end"] for t in stored if t["grid"] == "sweep"
                            and t["label"] == r["label"])
            assert entries[r["key"]]["start"] >= sweep_end
    # again: nothing runs, nothing is added (the stored extension runs are read, not queued)
    s = run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned, extensions=grid.extensions)
    assert (s.done, s.extension_runs, s.already_done) == (0, 0, N_SWEPT + N_MAIN)
    assert [st.added for _, st in s.extensions] == [tuple(EXPECTED_ADDED[k]) for k in ("ce", "gence", "focal", "brier")]
    assert len(log_entries(log)) == N_SWEPT + N_ADDED + N_MAIN


def test_two_workers_store_the_same_runs_as_one(tmp_path, fake, monkeypatch):
    run_fn, _ = fake
    grid = parse_grid(textwrap.dedent(GRID))
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    run_grid(grid.runs, one, run_fn=run_fn, progress=False, tuned=grid.tuned, extensions=grid.extensions)
    monkeypatch.setenv("FAKE_SLEEP", "0.02")
    s = run_grid(grid.runs, two, run_fn=run_fn, progress=False, tuned=grid.tuned, extensions=grid.extensions,
                 workers=2)
    assert s.done == N_SWEPT + N_ADDED + N_MAIN and s.held_elsewhere == 0
    check_final(rows(two))
    assert content(two) == content(one)


def test_a_diverging_extension_stops_it_inside(tmp_path, fake, monkeypatch):
    """focal's 1.6 fails for every seed: 0.8 is then not the largest value tried, so it wins inside."""
    run_fn, _ = fake
    monkeypatch.setenv("FAKE_FAIL", json.dumps([["focal", 1.6]]))
    grid = parse_grid(textwrap.dedent(FAR))
    db = tmp_path / "r.sqlite"
    s = run_grid(grid.runs, db, run_fn=run_fn, progress=False, extensions=grid.extensions)
    stored = rows(db)
    assert lrs(stored, "sweep", "focal", "done") == SWEPT + [0.8] and lrs(stored, "sweep", "focal") == SWEPT + [0.8, 1.6]
    assert s.failed == 2 and not s.at_edge and s.extensions[0][1].best == 0.8


def test_max_steps_0_adds_nothing_and_flags_the_edge(tmp_path, fake):
    run_fn, _ = fake
    grid = parse_grid(textwrap.dedent(FAR.replace("max_steps = 3", "max_steps = 0")))
    s = run_grid(grid.runs, tmp_path / "r.sqlite", run_fn=run_fn, progress=False, extensions=grid.extensions)
    assert s.done == 10 and s.extension_runs == 0
    assert len(s.at_edge) == 1 and "lr=0.4 is still the largest value tried after 0 extension(s)" in s.at_edge[0][1]


def test_state_is_a_function_of_the_stored_rows_only():
    """Hand-made rows: all swept done with ce's parabola -> 0.8 is pending; 0.8 stored -> 1.6 pending."""
    grid = parse_grid(textwrap.dedent(GRID))
    g = next(g for g in grid.extensions if g.label == "ce")

    def metrics(lr):
        return {"val/error": (math.log2(lr)) ** 2, "val/nll": 0.0}
    table = {s.key: ("done", metrics(v)) for v, s in g.swept}
    st = extension_state(g, {})
    assert (st.kind, st.finished, st.total, st.added) == ("wait", 0, 10, ())
    st = extension_state(g, table)
    assert st.kind == "wait" and st.added == (0.8,) and sorted(s.config["seed"] for s in st.pending) == [0, 1]
    assert {s.config["lr"] for s in st.pending} == {0.8}
    assert extension_state(g, table, unfinished={g.swept[0][1].key}).added == ()  # a swept run still to retry
    table.update({s.key: ("done", metrics(0.8)) for s in dict(g.up)[0.8]})
    st = extension_state(g, table)
    assert st.added == (0.8, 1.6) and {s.config["lr"] for s in st.pending} == {1.6}
    table.update({s.key: ("failed", None) for s in dict(g.up)[1.6]})
    st = extension_state(g, table)
    assert (st.kind, st.best, st.edge) == ("settled", 0.8, None)


# ----------------------------------------------------------------------------------------- kill, list
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_mid_extension_then_rerun_stores_each_run_once(tmp_path, fake, monkeypatch, workers):
    run_fn, log = fake
    path = grid_file(tmp_path, FAR)
    db = tmp_path / "r.sqlite"
    monkeypatch.setenv("FAKE_SLEEP", "0.25")
    proc = helpers.start_bench(path, db, run_fn, workers)
    try:   # swept runs and the first extension round done: mid-extension
        assert helpers.wait_for_runs(proc, db, lambda done, running: done >= 12, timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    deadline = time.time() + 20  # workers get SIGTERM when the parent dies: wait until none is left
    while time.time() < deadline:
        with sqlite3.connect(db, timeout=5) as con:
            owners = [o for (o,) in con.execute("SELECT owner FROM runs WHERE status='running'")]
        if not any(_alive(int(o.split(":")[1])) for o in owners):
            break
        time.sleep(0.1)
    before = {r["key"]: r["status"] for r in rows(db)}
    assert 12 <= list(before.values()).count("done") < 16
    n_started = len(log_entries(log))
    monkeypatch.setenv("FAKE_SLEEP", "0")
    grid = parse_grid(textwrap.dedent(FAR))
    s = run_grid(grid.runs, db, run_fn=run_fn, progress=False, extensions=grid.extensions)
    assert s.failed == 0 and s.held_elsewhere == 0
    stored = rows(db)
    assert len(stored) == 16 and len({r["key"] for r in stored}) == 16 and all(r["status"] == "done" for r in stored)
    assert lrs(stored, "sweep", "focal") == SWEPT + [0.8, 1.6, 3.2]
    after = [e["key"] for e in log_entries(log)[n_started:]]
    assert sorted(after) == sorted(k for k in (r["key"] for r in stored) if before.get(k) != "done")
    fresh = tmp_path / "fresh.sqlite"
    run_grid(grid.runs, fresh, run_fn=run_fn, progress=False, extensions=grid.extensions)
    assert content(fresh) == content(db)


_alive = helpers.pid_alive


def test_list_shows_waiting_then_added_values_then_the_edge(tmp_path, fake, capsys):
    run_fn, _ = fake
    path = grid_file(tmp_path)
    db = tmp_path / "r.sqlite"
    assert main(["bench", str(path), "--db", str(db), "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("extend? ") == 4 and out.count("waiting to decide extension of lr (nothing added yet; "
                                                    "0/10 runs finished)") == 4
    assert f"{N_SWEPT + N_MAIN} run(s) ({N_MAIN} waiting for tuning, 4 sweep(s) waiting to decide extension)" in out
    assert out.count("extension of lr undecided in 1 group(s) of sweep") == N_MAIN
    grid = parse_grid(textwrap.dedent(GRID))
    run_grid(grid.runs, db, run_fn=run_fn, progress=False)  # swept runs only: no extension given
    assert main(["bench", str(path), "--db", str(db), "--list"]) == 0
    out = capsys.readouterr().out
    # ce, focal: 0.4 wins at the top -> 0.8 to run; brier: 0.025 at the bottom -> 0.0125; gence settled
    assert out.count("waiting to decide extension of lr (added lr=0.8; 10/12 runs finished)") == 2
    assert out.count("waiting to decide extension of lr (added lr=0.0125; 10/12 runs finished)") == 1
    assert "lr=0.1 wins inside the values tried (no extension needed)" in out
    assert out.count("(extension lr=0.8 of sweep)") == 4 and out.count("(extension lr=0.0125 of sweep)") == 2
    assert f"{N_SWEPT + N_MAIN + 6} run(s) ({N_MAIN - 1} waiting for tuning, 6 added by extension, " \
           f"3 sweep(s) waiting to decide extension)" in out
    assert main(["bench", str(path), "--db", str(db), "--run-fn", run_fn, "--quiet", "--workers", "1",
                 "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "gence bench: sweep digits balanced:5 small_cnn focal: AT EDGE: lr=3.2" in err
    assert "1 sweep(s) AT AN EDGE after their last extension" in err
    assert main(["bench", str(path), "--db", str(db), "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("AT EDGE ") == 1 and out.count("extended ") == 2 and out.count("settled ") == 1
    assert "lr=0.8 wins inside the values tried (added 0.8, 1.6)" in out
    assert f"{N_SWEPT + N_ADDED + N_MAIN} run(s) ({N_ADDED} added by extension, 1 sweep(s) at an edge after " \
           f"max_steps)" in out
    assert out.count("(lr=3.2 tuned on sweep)") == 1


def test_shards_extend_from_their_own_database_and_match_one_unsharded_run(tmp_path, fake, capsys):
    run_fn, _ = fake
    path = grid_file(tmp_path)
    base = ["--run-fn", run_fn, "--quiet", "--workers", "1"]
    full = tmp_path / "full.sqlite"
    assert main(["bench", str(path), "--db", str(full), "--no-report", *base]) == 0
    shards = [tmp_path / f"s{i}.sqlite" for i in (1, 2)]
    rounds = 0
    while True:
        rounds += 1
        for i, db in enumerate(shards, 1):
            assert main(["bench", str(path), "--db", str(db), "--shard", f"{i}/2", *base]) == 0
        err = capsys.readouterr().err
        if "wait for" not in err:
            break
        assert rounds < 8, err
        for db in shards:
            for other in shards:
                if other != db:
                    assert main(["merge", str(db), str(other)]) == 0
    # round 1: each shard runs its half of the swept runs; every sweep waits for the other half. Round 2,
    # after the merge: each shard decides its sweeps (shard 1: ce, focal; shard 2: gence, brier, every
    # other one), runs all their extension rounds itself, then its tuned runs (the same losses, since the
    # tuned runs are split the same way), so nothing waits any more
    assert rounds == 2
    merged = tmp_path / "merged.sqlite"
    assert main(["merge", str(merged), *map(str, shards)]) == 0
    check_final(rows(merged))
    assert content(merged) == content(full)


# ------------------------------------------------------------------------------------------- report
def block_counts(stored) -> dict[str, tuple[int, int, int, int]]:
    """Per block, from the stored rows: (runs, done, failed, runs of sweep at an lr the grid does not list)."""
    out = {}
    for block in sorted({r["grid"] for r in stored}):
        mine = [r for r in stored if r["grid"] == block]
        out[block] = (len(mine), sum(r["status"] == "done" for r in mine), sum(r["status"] == "failed" for r in mine),
                      sum(block == "sweep" and r["config"]["lr"] not in SWEPT for r in mine))
    return out


def test_progress_counts_the_extension_runs_in_their_block_and_the_undecided_sweeps(tmp_path, fake, monkeypatch):
    """First the swept runs only: ce and focal (0.4 wins) then run at 0.8 and brier (0.025 wins) at 0.0125, 2
    seeds each, decided but not run; gence is settled. Then everything, with ce's two runs at 1.6 failing
    (0.8 still wins for ce): the sweep block then holds its 40 swept runs and the 14 added ones."""
    run_fn, _ = fake
    monkeypatch.setenv("FAKE_FAIL", json.dumps([["ce", 1.6]]))
    grid = parse_grid(textwrap.dedent(GRID), name="ext")
    db = tmp_path / "r.sqlite"
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, grid_text=(grid.name, None, grid.text))
    progress = grid_progress(load_results(db))
    stored = rows(db)
    assert block_counts(stored) == {"sweep": (N_SWEPT, N_SWEPT, 0, 0)}
    by = {b.block: (b.total, b.done, b.failed, b.missing) for b in progress.blocks}
    assert by == {"sweep": (N_SWEPT + 6, N_SWEPT, 0, 6), "main": (N_MAIN, 0, 0, N_MAIN)}
    assert {b.block: b.added for b in progress.blocks} == {"sweep": 6, "main": 0}
    assert progress.undecided == 3
    text = progress_markdown(progress)
    assert f"| sweep | {N_SWEPT + 6} | {N_SWEPT} | 0 | 6 | 6 |" in text
    assert "The runs include 6 added by the runner" in text
    assert "3 of the 4 sweep(s) that may extend are still undecided (runs missing)" in text

    run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned, extensions=grid.extensions,
             grid_text=(grid.name, None, grid.text))
    stored = rows(db)
    counts = block_counts(stored)
    assert counts == {"sweep": (N_SWEPT + N_ADDED, N_SWEPT + N_ADDED - 2, 2, N_ADDED), "main": (N_MAIN, N_MAIN, 0, 0)}
    progress = grid_progress(load_results(db))
    assert {b.block: (b.total, b.done, b.failed) for b in progress.blocks} == {k: v[:3] for k, v in counts.items()}
    assert {b.block: b.added for b in progress.blocks} == {k: v[3] for k, v in counts.items()}
    assert progress.undecided == 0 and [b.missing for b in progress.blocks] == [0, 0]
    t = progress.total
    assert (t.total, t.done, t.failed, t.added) == (len(stored), sum(r["status"] == "done" for r in stored), 2, N_ADDED)
    text = progress_markdown(progress)
    runs, done, failed, added = counts["sweep"]
    assert f"| sweep | {runs} | {done} | {failed} | 0 | {added} |" in text
    assert f"{t.done} of the grid's {len(stored)} runs are stored done" in text
    assert f"The runs include {N_ADDED} added by the runner" in text
    assert "0 of the 4 sweep(s) that may extend are still undecided" in text


def sweep_row(label, added, chosen, state) -> str:
    """The report's row for one loss's sweep of GRID (values as the report prints numbers: %g)."""
    return (f"| sweep | digits | balanced:5 | small_cnn | {label} | {', '.join(f'{v:g}' for v in SWEPT)} | "
            f"{', '.join(f'{v:g}' for v in added) or 'none'} | {chosen} | {state} |")


def test_the_lr_plot_rings_no_lr_for_a_sweep_still_undecided_then_the_one_the_tuned_runs_use(tmp_path, fake):
    """After the swept runs only, ce's best so far is 0.4 but its sweep waits for 0.8 (module docstring): the
    tuned runs have no lr yet, so no ring, and the tuning table says its mark is the best so far; gence
    settled at 0.1 inside. After every run: ce's ring at 0.8 and no such remark."""
    undecided_remark = "(in a sweep still undecided, runs missing: the best so far, which may move"
    run_fn, _ = fake
    grid = parse_grid(textwrap.dedent(GRID), name="ext")
    db = tmp_path / "r.sqlite"
    spec = VerdictSpec(label="gence", lr_robustness=("sweep",))
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, grid_text=(grid.name, None, grid.text))
    ((_, losses, chosen),) = build_verdict(load_results(db), spec).lr_panels
    assert sorted(losses["ce"]) == SWEPT   # ce's panel is drawn, its best so far (0.4) is not ringed
    assert chosen == {"gence": EXPECTED_BEST["gence"]}
    assert undecided_remark in write_report(db, tmp_path / "partial", with_plots=False).markdown
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned, extensions=grid.extensions,
             grid_text=(grid.name, None, grid.text))
    ((_, losses, chosen),) = build_verdict(load_results(db), spec).lr_panels
    assert sorted(losses["ce"]) == SWEPT + EXPECTED_ADDED["ce"]
    assert chosen == {"ce": EXPECTED_BEST["ce"], "gence": EXPECTED_BEST["gence"]}
    assert {r["label"]: r["config"]["lr"] for r in rows(db) if r["grid"] == "main" and r["label"] in chosen} == chosen
    md = write_report(db, tmp_path / "done", with_plots=False).markdown
    assert "✓ and bold mark the value the tuned runs use." in md and undecided_remark not in md


def test_report_shows_each_sweep_undecided_settled_extended_or_at_edge_with_its_values(tmp_path, fake):
    """The states by hand from the optima (module docstring): after the swept runs only, ce and focal (0.4
    wins) wait for 0.8 and brier (0.025 wins) for 0.0125, 2 of 12 runs missing each; gence settles at 0.1.
    After everything: focal is AT EDGE at 3.2 after 3 steps up (max_steps), ce and brier settled inside
    after 2 steps, gence unchanged."""
    run_fn, _ = fake
    grid = parse_grid(textwrap.dedent(GRID), name="ext")
    db = tmp_path / "r.sqlite"
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, grid_text=(grid.name, None, grid.text))
    md = write_report(db, tmp_path / "partial", with_plots=False).markdown
    assert "## Sweep extensions" in md
    part = md[md.index("## Sweep extensions"):]
    assert ("4 sweep(s) may extend (blocks `sweep`; the runner adds values while the best one is the smallest or "
            "largest tried): 1 settled inside the values swept, 0 extended, then settled inside, 0 AT EDGE after "
            "their last extension, 3 undecided (runs missing).") in part
    for label, added in (("ce", [0.8]), ("focal", [0.8]), ("brier", [0.0125])):
        assert sweep_row(label, added, "", "undecided: 2 of 12 runs missing") in part, label
    assert sweep_row("gence", [], "0.1", "settled inside the values swept") in part

    run_grid(grid.runs, db, run_fn=run_fn, progress=False, tuned=grid.tuned, extensions=grid.extensions,
             grid_text=(grid.name, None, grid.text))
    stored = rows(db)
    assert lrs(stored, "sweep", "focal", "done") == SWEPT + [0.8, 1.6, 3.2]   # what the table must list
    expected = [sweep_row("ce", [0.8, 1.6], "0.8", "extended by 2 step(s) up, then settled inside"),
                sweep_row("gence", [], "0.1", "settled inside the values swept"),
                sweep_row("focal", [0.8, 1.6, 3.2], "3.2", "**AT EDGE** after 3 step(s) up: lr = 3.2 is the "
                                                           "largest value tried (max_steps = 3)"),
                sweep_row("brier", [0.00625, 0.0125], "0.0125", "extended by 2 step(s) down, then settled inside")]
    summary = ("1 settled inside the values swept, 2 extended, then settled inside, 1 AT EDGE after their last "
               "extension, 0 undecided (runs missing). At an edge the optimum was not found")
    md = write_report(db, tmp_path / "plain", with_plots=False).markdown
    part = md[md.index("## Sweep extensions"):]
    assert summary in part and all(row in part for row in expected)
    # with the verdict: under the study progress (shown once), and the lr claim about focal names its edge
    md = write_for(db, tmp_path / "verdict", verdict_spec=VerdictSpec(label="focal", lr_robustness=("sweep",))).markdown
    assert "## Sweep extensions" not in md
    part = md[md.index("### Sweeps that extend"):md.index("## Verdict")]
    assert md.index("## Study progress") < md.index("### Sweeps that extend")
    assert summary in part and all(row in part for row in expected)
    claim = md[md.index("## Claim: learning-rate"):]
    assert ("- Sweeps of ce and focal in these blocks that extend: 2; undecided (runs missing): 0; **AT EDGE** after "
            "their last extension (the best lr is still the smallest or largest tried, its optimum not found): 1 "
            "(focal, digits, balanced:5, small_cnn: lr 3.2).") in claim
    # the same sweep without `extend`: no table, no column, no sentence
    plain = parse_grid(textwrap.dedent(FAR.replace('extend = { field = "lr", factor = 2.0, max_steps = 3 }', "")),
                       name="plain")
    assert plain.extensions == []
    db = tmp_path / "plain.sqlite"
    run_grid(plain.runs, db, run_fn=run_fn, progress=False, grid_text=(plain.name, None, plain.text))
    md = write_for(db, tmp_path / "no_extend", verdict_spec=VerdictSpec(lr_robustness=("sweep",))).markdown
    for needle in ("Sweep extensions", "Sweeps that extend", "added by extension", "AT EDGE", "may extend"):
        assert needle not in md, needle


def test_a_report_with_the_verdict_expands_the_stored_grids_and_replays_their_sweeps_once(tmp_path, fake, monkeypatch):
    """The verdict's progress, the tuning table and the lr plot all read the sweeps' states: one expansion of
    the stored grid texts and one replay of the sweeps per report, shared, and the same states as a fresh
    replay of the stored runs."""
    import gence.report.extensions as X
    run_fn, _ = fake
    grid = parse_grid(textwrap.dedent(GRID), name="ext")
    db = tmp_path / "r.sqlite"
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, grid_text=(grid.name, None, grid.text))
    calls = {"expand_stored": 0, "sweep_extensions": 0}
    for name in calls:
        def counted(*args, _name=name, _f=getattr(X, name)):
            calls[_name] += 1
            return _f(*args)
        monkeypatch.setattr(X, name, counted)
    md = write_for(db, tmp_path / "verdict", verdict_spec=VerdictSpec(lr_robustness=("sweep",))).markdown
    assert "### Sweeps that extend" in md and "(in a sweep still undecided, runs missing" in md
    assert calls == {"expand_stored": 1, "sweep_extensions": 1}
    monkeypatch.undo()
    replay = X.sweep_extensions(X.expand_stored(load_results(db).grids)[0], load_results(db))
    undecided = sorted(s.group.label for s in replay if s.kind == X.UNDECIDED)
    assert undecided == ["brier", "ce", "focal"]   # the module docstring's optima: they wait for a rung
    assert f"{len(undecided)} undecided (runs missing)" in md
