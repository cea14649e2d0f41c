"""The generated verdict: numbers in its sentences and tables against numpy/scipy on the stored rows, the
decisions against the stated rules (pooled t interval over settings, Holm over settings), a partial database
(grid progress, seeds short of the grid, claims without runs), the [verdict] table, and the `gence report
--verdict` command. Runs come from a fake run function in which the test decides which loss is better."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import stats

from gence.cli import main
from gence.experiments import parse_grid, run_grid
from gence.experiments.grid import GridError
from gence.experiments.db import run_key
from gence.report import load_results, plots
from gence.report.cli import write_for
from gence.report.verdict import (HOLDS, NO_DATA, NOT_HOLDS, VerdictError, VerdictSpec, build_verdict,
                                  grid_progress, progress_markdown, verdict_markdown)

import helpers  # tests/helpers.py

VERDICT = """
[verdict]
mixed = "gence_0.5"
few_labels = ["balanced"]
imbalance = ["long_tailed"]
imbalance_baselines = ["logit_adjusted", "balanced_softmax"]
lr_robustness = ["lr_sweep"]
"""
GRID = VERDICT + """
[train]
epochs = 1
ood = ["gaussian_noise", "uniform_noise"]

[[grid]]
name = "balanced"
datasets = ["digits"]
regimes = ["balanced:5", "balanced:20"]
models = ["small_cnn", "mlp"]
seeds = [0, 1, 2]
losses = [{ name = "ce", seeds = [0, 1, 2, 3, 4] }, { name = "gence", seeds = [0, 1, 2, 3, 4] },
          { name = "gence", params = { generative_weight = 0.5 }, label = "gence_0.5" }, "brier"]

[[grid]]
name = "long_tailed"
datasets = ["digits"]
regimes = ["long_tailed:10:40"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = [{ name = "ce", seeds = [0, 1, 2, 3, 4] }, { name = "gence", seeds = [0, 1, 2, 3, 4] },
          "logit_adjusted", "balanced_softmax"]

[[grid]]
name = "lr_sweep"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [200, 201, 202]
sweep = { lr = [0.01, 0.2] }
losses = ["ce", "gence"]
"""
CFG = VerdictSpec(mixed="gence_0.5", few_labels=("balanced",), imbalance=("long_tailed",),
                  imbalance_baselines=("logit_adjusted", "balanced_softmax"), lr_robustness=("lr_sweep",))


def noise(config) -> float:
    return int(hashlib.sha256(run_key(config).encode()).hexdigest()[:8], 16) / 16 ** 8 - 0.5


def fake_run(config):
    """GenCE: 5 points lower error and lower ECE than CE in block balanced, 3 points higher error in the
    long-tailed regime, collapsed (2 classes never predicted) at lr 0.2; OOD AUROC equal up to noise."""
    h = noise(config)
    n = float(config["regime"].split(":")[-1])
    loss, lr_sweep = config["loss"], config["seed"] >= 200
    long_tailed = config["regime"].startswith("long")
    shift = {"ce": 0.0, "brier": 0.01, "logit_adjusted": -0.02, "balanced_softmax": -0.02}.get(loss, 0.0)
    collapsed = loss == "gence" and config["loss_params"].get("generative_weight", 1.0) == 1.0 and lr_sweep \
        and config["lr"] == 0.2
    if loss == "gence" and config["loss_params"].get("generative_weight", 1.0) == 1.0 and not lr_sweep:
        shift = 0.03 if long_tailed else -0.05
    if collapsed:
        shift = 0.2
    err = 1 / n ** 0.5 + shift + 0.01 * h
    m = {}
    for split in ("val", "test", "val_ts", "test_ts"):
        for i, k in enumerate(("error", "nll", "brier", "ece", "adaece", "classwise_ece", "mce")):
            m[f"{split}/{k}"] = err + 0.01 * i
    gence_ece = -0.02 if loss == "gence" else 0.0
    m["test/ece"] = 0.1 + gence_ece + 0.005 * h
    m["test_ts/ece"] = 0.05 + 0.005 * h
    for ood in ("gaussian_noise", "uniform_noise"):
        m[f"ood/{ood}/msp/auroc"] = 0.8 + 0.02 * noise({**config, "ood_set": ood})
        m[f"ood/{ood}/msp/fpr95"] = 0.5 + 0.02 * noise({**config, "ood_set": ood, "x": 1})
    m["test/acc_many"], m["test/acc_medium"] = 0.9, 0.7
    m["test/acc_few"] = 0.4 - shift + 0.01 * h
    m["test/never_predicted"] = 2.0 if collapsed else 0.0
    m["test/worst_class_accuracy"] = 0.0 if collapsed else 0.5
    return m, {"history": {"loss": [1.0]}}


def rows(db) -> list[dict]:
    """Done rows read straight from SQLite, independently of the library."""
    con = sqlite3.connect(db)
    out = [{"grid": g, "label": lab, "config": json.loads(c), "metrics": json.loads(m)}
           for g, lab, c, m in con.execute("SELECT grid, label, config, metrics FROM runs WHERE status = 'done'")]
    con.close()
    return out


def expected(stored, block, setting, label, other, metric):
    """scipy: paired differences over the seeds both have, their mean, t 95% interval and paired-t p."""
    def values(lab):
        return {r["config"]["seed"]: r["metrics"][metric] for r in stored if r["grid"] == block and r["label"] == lab
                and (r["config"]["dataset"], r["config"]["regime"], r["config"]["model"]) == setting}
    a, b = values(label), values(other)
    d = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))])
    t = stats.ttest_1samp(d, 0.0)
    ci = t.confidence_interval()
    return len(d), d.mean(), ci.low, ci.high, t.pvalue


def sweep_errors(stored, label, lr) -> dict:
    """Test error per seed of ``label``'s stored runs at learning rate ``lr``."""
    return {r["config"]["seed"]: r["metrics"]["test/error"] for r in stored if r["label"] == label and r["config"]["lr"] == lr}


def worst_lr(stored, label, lrs=(0.01, 0.2)) -> float:
    """numpy: the lr of ``lrs`` with ``label``'s highest mean test error (ties: the larger lr)."""
    return max(lrs, key=lambda lr: (np.mean(list(sweep_errors(stored, label, lr).values())), lr))


def signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def stored(db: Path, text: str, name: str, run_fn=fake_run):
    """Every run of grid ``text`` stored in ``db`` by ``run_fn`` (the grid text with them); the grid."""
    grid = parse_grid(textwrap.dedent(text), name=name)
    run_grid(grid.runs, db, run_fn=run_fn, progress=False, grid_text=(grid.name, None, grid.text))
    return grid


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    db = tmp_path_factory.mktemp("verdict") / "full.sqlite"
    grid = stored(db, GRID, "verdict-grid")
    results = load_results(db)
    return db, grid, results, build_verdict(results, CFG)


def claim(verdict, start: str):
    return next(c for c in verdict.claims if c.name.startswith(start))


BALANCED = [("digits", r, m) for r in ("balanced:5", "balanced:20") for m in ("small_cnn", "mlp")]
LONG = [("digits", "long_tailed:10:40", "small_cnn")]


def test_few_label_table_numbers_match_scipy(full):
    db, _, _, verdict = full
    stored = rows(db)
    body = claim(verdict, "Accuracy with few").body
    for dataset, regime, model in BALANCED:
        n, mean, low, high, p = expected(stored, "balanced", (dataset, regime, model), "gence", "ce", "test/error")
        line = next(line for line in body.splitlines() if line.startswith(f"| {dataset} | {model} | {regime} | 5/5"))
        assert f"{signed(100 * mean)} [{signed(100 * low)}, {signed(100 * high)}]" in line
        assert (f"| {p:.3g} |" if p >= 0.001 else "| <0.001 |") in line and "GenCE better" in line
    assert "significantly better in 4, worse in 0, neither in 0" in body
    # GenCE ranks first among the 4 losses in every setting
    assert "gence ranks 1 of 4 losses on average over 4 setting(s) (mean rank 1.00; best in 4)" in body


def rule(stored, block_settings, metric, higher=False, margin=0.005):
    """The stated rule, by hand: Holm over the settings' paired-t p, t interval over the settings' means."""
    per = [expected(stored, b, s, "gence", "ce", metric) for b, ss in block_settings for s in ss]
    ps = np.array([x[4] for x in per])
    m = len(ps)
    order = np.argsort(ps)
    adj = np.empty(m)
    adj[order] = np.minimum(1, np.maximum.accumulate((m - np.arange(m)) * ps[order]))
    good = [(x[1] > 0) == higher for x in per]
    better = sum(a < 0.05 and g for a, g in zip(adj, good))
    worse = sum(a < 0.05 and not g for a, g in zip(adj, good))
    means = np.array([x[1] for x in per])
    if m > 1:
        ci = stats.ttest_1samp(means, 0.0).confidence_interval()
        low, high = ci.low, ci.high
    else:
        low, high = per[0][2], per[0][3]
    favours, against = (low > 0, high < 0) if higher else (high < 0, low > 0)
    if favours:
        return (HOLDS if worse == 0 else "mixed"), better, worse
    if against:
        return NOT_HOLDS, better, worse
    se = means.std(ddof=1) / math.sqrt(m) if m > 1 else (per[0][3] - per[0][1]) / stats.t.ppf(0.975, per[0][0] - 1)
    df = m - 1 if m > 1 else per[0][0] - 1
    p_eq = max(stats.t.sf((means.mean() + margin) / se, df), stats.t.cdf((means.mean() - margin) / se, df))
    if p_eq < 0.05:
        return "does not hold (no better)", better, worse
    return ("mixed" if better and worse else "inconclusive"), better, worse


def test_decisions_follow_the_stated_rules(full):
    db, _, _, verdict = full
    stored = rows(db)
    want = rule(stored, [("balanced", BALANCED)], "test/error")
    c = claim(verdict, "Accuracy with few")
    assert (c.decision.status, c.decision.better, c.decision.worse) == want == (HOLDS, 4, 0)
    want = rule(stored, [("long_tailed", LONG)], "test/error")
    c = claim(verdict, "Accuracy under class imbalance")
    assert (c.decision.status, c.decision.better, c.decision.worse) == want == (NOT_HOLDS, 0, 1)
    assert "gence is significantly worse in: digits / small_cnn / long_tailed:10:40" in c.body
    both = [("balanced", BALANCED), ("long_tailed", LONG)]
    want = rule(stored, both, "test/ece")
    c = claim(verdict, "Calibration before")
    assert (c.decision.status, c.decision.better, c.decision.worse) == want and want[0] == HOLDS
    assert not c.decision.provisional and "provisional" not in c.decision.text   # a complete grid
    # pooled estimate in the evidence: mean of the 5 settings' mean ECE differences
    means = [expected(stored, b, s, "gence", "ce", "test/ece")[1] for b, ss in both for s in ss]
    assert f"pooled Δ {signed(100 * np.mean(means))} [" in c.evidence
    for r in stored:
        r["metrics"]["ood_mean"] = np.mean([r["metrics"][f"ood/{o}/msp/auroc"] for o in ("gaussian_noise", "uniform_noise")])
    want = rule(stored, both, "ood_mean", higher=True)
    c = claim(verdict, "OOD")
    assert (c.decision.status, c.decision.better, c.decision.worse) == want


def test_imbalance_section_has_few_shot_group_and_imbalance_baselines(full):
    db, _, _, verdict = full
    stored = rows(db)
    body = claim(verdict, "Accuracy under").body
    s = LONG[0]
    n, mean, low, high, p = expected(stored, "long_tailed", s, "gence", "ce", "test/acc_few")
    assert "accuracy on the few-shot class group" in body and f"{signed(100 * mean)} [{signed(100 * low)}" in body
    for base in ("logit_adjusted", "balanced_softmax"):
        n, mean, low, high, p = expected(stored, "long_tailed", s, "gence", base, "test/error")
        assert n == 3 and f"gence − {base}, test error" in body
        assert f"{signed(100 * mean)} [{signed(100 * low)}, {signed(100 * high)}]" in body


def test_learning_rate_claim_counts_collapse_and_worst_lr(full):
    db, _, _, verdict = full
    stored = [r for r in rows(db) if r["grid"] == "lr_sweep"]
    c = claim(verdict, "Learning-rate")
    coll = {lab: sum(r["metrics"]["test/never_predicted"] > 0 for r in stored if r["label"] == lab) for lab in ("ce", "gence")}
    assert coll == {"ce": 0, "gence": 3}
    p_fisher = stats.fisher_exact([[3, 3], [0, 6]])[1]
    assert f"collapsed runs: gence 3/6, ce 0/6 (Fisher p={p_fisher:.3g})" in c.evidence
    assert c.decision.status == NOT_HOLDS   # the worst-lr error is significantly higher (one setting)
    assert "gence, 0.2, digits, balanced:5" in c.body
    ce_worst = worst_lr(stored, "ce")
    d = np.array([sweep_errors(stored, "gence", 0.2)[s] - sweep_errors(stored, "ce", ce_worst)[s] for s in (200, 201, 202)])
    line = next(line for line in c.body.splitlines() if f"(lr {ce_worst:g}) |" in line and "(lr 0.2)" in line)
    assert signed(100 * d.mean()) in line and "GenCE worse" in line


def test_worst_lr_is_taken_over_the_lrs_both_losses_ran_when_one_sweep_was_extended(full, tmp_path):
    """An extension that only GenCE's sweep got (lr 0.4, much worse here) neither drops the setting from the
    worst-lr comparison nor becomes GenCE's worst: both losses' worst come from the lrs both ran (numpy)."""
    db = tmp_path / "extended.sqlite"
    src, dst = sqlite3.connect(full[0]), sqlite3.connect(db)
    src.backup(dst)
    src.close()
    cols = [c[1] for c in dst.execute("PRAGMA table_info(runs)")]
    added = []
    for row in dst.execute("SELECT * FROM runs WHERE grid = 'lr_sweep' AND label = 'gence' AND status = 'done'").fetchall():
        r = dict(zip(cols, row))
        config, metrics = json.loads(r["config"]), json.loads(r["metrics"])
        if config["lr"] != 0.2:
            continue
        config["lr"] = 0.4
        metrics = {k: (0.9 if k.endswith("/error") else v) for k, v in metrics.items()}
        metrics["test/never_predicted"], metrics["test/worst_class_accuracy"] = 0.0, 0.5
        added.append({**r, "key": run_key(config), "config": json.dumps(config), "metrics": json.dumps(metrics)})
    assert len(added) == 3
    dst.executemany(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [[a[c] for c in cols] for a in added])
    dst.commit()
    dst.close()
    c = claim(build_verdict(load_results(db), CFG), "Learning-rate")
    stored = [r for r in rows(db) if r["grid"] == "lr_sweep"]
    assert sorted(sweep_errors(stored, "gence", 0.4).values()) == [0.9] * 3 and not sweep_errors(stored, "ce", 0.4)
    worst = {lab: worst_lr(stored, lab) for lab in ("ce", "gence")}   # over the lrs both ran
    assert worst["gence"] == 0.2   # 0.4, which only GenCE ran, would be its worst if it counted
    d = np.array([sweep_errors(stored, "gence", worst["gence"])[s] - sweep_errors(stored, "ce", worst["ce"])[s] for s in (200, 201, 202)])
    assert "worst-lr error over 1 setting(s)" in c.evidence
    line = next(line for line in c.body.splitlines()
                if f"(lr {worst['ce']:g}) |" in line and f"(lr {worst['gence']:g}) |" in line)
    assert signed(100 * d.mean()) in line
    assert "| 0.4 |" in c.body   # the lr 0.4 runs still stand in the per-lr table


def test_verdict_table_errors_name_the_key():
    with pytest.raises(VerdictError, match=r"unknown key 'blocks'"):
        VerdictSpec.from_table({"blocks": ["a"]})
    with pytest.raises(VerdictError, match=r"few_labels = 3: expected a list"):
        VerdictSpec.from_table({"few_labels": 3})
    with pytest.raises(VerdictError, match=r"margins = .*expected a table of positive numbers"):
        VerdictSpec.from_table({"margins": {"error": -1}})
    # a grid file keeps its [verdict] table, raw, for the report
    assert parse_grid(textwrap.dedent(GRID), name="g").verdict["lr_robustness"] == ["lr_sweep"]
    assert parse_grid(textwrap.dedent(GRID[len(VERDICT):]), name="g").verdict is None
    with pytest.raises(GridError, match=r"verdict = 3: expected a \[verdict\] table"):
        parse_grid("verdict = 3\n" + textwrap.dedent(GRID[len(VERDICT):]), name="g")
    spec = VerdictSpec.from_table({"few_labels": "b", "margins": {"error": 0.01}})
    assert spec.few_labels == ("b",) and spec.blocks_for("ood") == ("b",) and spec.calibration is None


def test_partial_database_is_counted_marked_and_says_no_runs_yet(tmp_path):
    grid = parse_grid(textwrap.dedent(GRID), name="verdict-grid")
    # only block balanced, and GenCE without seeds 3 and 4 in one setting; one CE run fails
    drop = lambda r: (r.label == "gence" and r.config["seed"] in (3, 4) and r.config["regime"] == "balanced:5"
                      and r.config["model"] == "mlp")
    ran = [r for r in grid.runs if r.grid == "balanced" and not drop(r)]

    def run_fn(config):
        if config["loss"] == "ce" and config["seed"] == 4 and config["regime"] == "balanced:20" and config["model"] == "mlp":
            raise RuntimeError("fake divergence")
        return fake_run(config)

    db = tmp_path / "partial.sqlite"
    run_grid(ran, db, run_fn=run_fn, progress=False, grid_text=(grid.name, None, grid.text))
    results = load_results(db)
    progress = grid_progress(results)
    by = {b.block: b for b in progress.blocks}
    n_block = {name: sum(r.grid == name for r in grid.runs) for name in ("balanced", "long_tailed", "lr_sweep")}
    assert {k: (v.total, v.done, v.failed) for k, v in by.items()} == {
        "balanced": (n_block["balanced"], len(ran) - 1, 1), "long_tailed": (n_block["long_tailed"], 0, 0),
        "lr_sweep": (n_block["lr_sweep"], 0, 0)}
    verdict = build_verdict(results, CFG)
    total = len(grid.runs)
    text = progress_markdown(verdict.progress)
    assert f"{len(ran) - 1} of the grid's {total} runs are stored done" in text
    assert f"| **all** | **{total}** | **{len(ran) - 1}** | **1** | **{total - len(ran)}** |" in text
    body = claim(verdict, "Accuracy with few").body
    assert "| digits | mlp | balanced:5 | 3/5 † |" in body and "| digits | mlp | balanced:20 | 4/5 † |" in body
    few = claim(verdict, "Accuracy with few")
    assert few.decision.status == HOLDS and few.decision.provisional
    table = verdict_markdown(verdict)
    assert "holds (provisional)" in table
    lt = claim(verdict, "Accuracy under class imbalance")
    assert lt.decision.status == NO_DATA and lt.evidence == "no runs yet" and lt.body.startswith("No runs yet")
    assert claim(verdict, "Learning-rate").decision.status == NO_DATA
    assert "| Accuracy under class imbalance | **not enough data yet** | no runs yet |" in table


def test_stored_grid_with_an_override_matching_no_run_is_still_counted(tmp_path):
    """A grid file is rejected when an override matches no run, but a grid text an earlier version stored
    (and ran) with one is still expanded by the report's progress count, not dropped as unreadable."""
    text = textwrap.dedent(GRID) + "[[override]]\nmatch = {regime = 'balanced:100'}\nepochs = 5\n"
    with pytest.raises(GridError, match=r"override\[0\]: match \{'regime': 'balanced:100'\} matches no run"):
        parse_grid(text, name="old")
    grid = parse_grid(textwrap.dedent(GRID), name="old")
    ran = [r for r in grid.runs if r.grid == "long_tailed"]
    db = tmp_path / "old.sqlite"
    run_grid(ran, db, run_fn=fake_run, progress=False, grid_text=("old", None, text))
    progress = grid_progress(load_results(db))
    assert progress.unreadable == []
    by = {b.block: (b.total, b.done) for b in progress.blocks}
    assert by["long_tailed"] == (len(ran), len(ran)) and by["balanced"][1] == 0


@pytest.mark.parametrize("from_file", [False, True])
def test_report_command_writes_markdown_at_root_with_working_links_and_its_own_command(full, tmp_path, monkeypatch,
                                                                                        from_file):
    db = full[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.sqlite").write_bytes(Path(db).read_bytes())
    (tmp_path / "grid.toml").write_text(VERDICT)
    argv = ["report", "study.sqlite", "-o", "results", "--markdown", "RESULTS.md", "--verdict"] + (
        ["grid.toml"] if from_file else [])
    assert main(argv) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert f"regenerate with `gence {shlex.join(argv)}`" in md.splitlines()[2]
    heads = [line for line in md.splitlines() if line.startswith("## ")]
    assert heads[:4] == ["## At a glance", "## Study progress", "## Verdict", "## Setup"]   # verdict first
    assert "## Claim: learning-rate robustness and collapse" in heads
    links = re.findall(r"\]\(([^)]+\.(?:png|csv))\)", md)
    assert "results/plots/lr_robustness.png" in links and "results/tables/runs.csv" in links
    for link in links:
        assert (tmp_path / link).is_file(), link


def test_report_verdict_without_a_table_is_a_clear_error(full, tmp_path, capsys):
    (tmp_path / "plain.toml").write_text("[train]\nepochs = 1\n")
    assert main(["report", str(full[0]), "-o", str(tmp_path / "o"), "--verdict", str(tmp_path / "plain.toml")]) == 2
    assert "has no [verdict] table" in capsys.readouterr().err


def test_bench_writes_the_verdict_of_a_grid_with_a_verdict_table(tmp_path, monkeypatch):
    """`gence bench` (composed in gence.bench, above the runner and the report) reports with the verdict."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    grid = tmp_path / "study.toml"
    grid.write_text(textwrap.dedent(GRID))
    out = tmp_path / "out"
    assert main(["bench", str(grid), "--db", str(tmp_path / "s.sqlite"), "-o", str(out), "--run-fn",
                 "test_verdict:fake_run", "--quiet", "--workers", "1"]) == 0
    md = (out / "README.md").read_text()
    assert "## Verdict" in md and "| Accuracy with few labels | **holds** |" in md


def test_the_runner_cli_does_not_import_the_report():
    code = "import sys, gence.experiments.cli; print(sorted(m for m in sys.modules if m.startswith('gence.report')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert out.stdout.strip() == "[]"


def test_opening_claims_table_pools_by_hand_and_has_one_figure_per_claim(full, tmp_path):
    db = full[0]
    stored = rows(db)
    rep = write_for(db, tmp_path / "out", verdict_spec=CFG)
    md = rep.markdown
    assert md.index("## At a glance") < md.index("## Study progress") < md.index("## Setup")
    glance = md[md.index("## At a glance"):md.index("## Study progress")]
    # few labels: mean of the 4 settings' mean paired differences, t interval over settings (scipy)
    means = np.array([expected(stored, "balanced", s, "gence", "ce", "test/error")[1] for s in BALANCED])
    ci = stats.ttest_1samp(means, 0.0).confidence_interval()
    cell = f"{signed(100 * means.mean())} [{signed(100 * ci.low)}, {signed(100 * ci.high)}] pp (4)"
    line = next(x for x in glance.splitlines() if x.startswith("| Accuracy with few labels |"))
    assert line.count(cell) == 2 and line.endswith("| **holds** |")   # all and the one dataset, digits
    # imbalance: one setting, its own paired t interval
    n, mean, low, high, _ = expected(stored, "long_tailed", LONG[0], "gence", "ce", "test/error")
    line = next(x for x in glance.splitlines() if x.startswith("| Accuracy under class imbalance |"))
    assert f"{signed(100 * mean)} [{signed(100 * low)}, {signed(100 * high)}] pp (1)" in line
    assert "**does not hold**" in line
    assert "| claim | metric | gence − ce, all [95% CI] (settings) | digits | verdict |" in glance
    figures = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", glance)
    assert [Path(f).name for f in figures] == ["glance_few_labels.png", "glance_imbalance.png",
                                               "glance_calibration.png", "glance_ood.png", "lr_robustness.png"]
    for f in figures:
        path = tmp_path / "out" / f
        assert path.read_bytes()[:4] == b"\x89PNG" and path in rep.files
    assert rep.files.count(tmp_path / "out" / "plots" / "lr_robustness.png") == 1   # drawn once, shown twice
    runs_line = next(x for x in glance.splitlines() if x.startswith("Runs: "))
    assert runs_line.startswith(f"Runs: {len(stored)} done, 0 failed") and glance.rstrip().splitlines()[-1].startswith(
        "Hardware: ")
    assert "## At a glance" not in write_for(db, tmp_path / "plain").markdown


PILOT_GRID = """
[convergence]
train_error_below = 0.01
floor_within = 0.05
test_error_change_below = 0.003
losses = ["ce", "gence"]

[train]
ood = ["gaussian_noise", "uniform_noise"]

[[grid]]
name = "pilot"
datasets = ["digits"]
regimes = ["balanced:5", "balanced:20"]
models = ["small_cnn", "mlp"]
seeds = [0, 1]
losses = ["ce", "gence"]
sweep = { epochs = [1, 2] }
"""


def pilot_run(config):
    """Every run fits (train error 0); from 1 to 2 epochs test error moves 0.1 pp at balanced:5 (E = 1
    passes) and 1 pp at balanced:20 (fails). GenCE 2 pp above CE (losses with equal metrics are shown once)."""
    move = 0.001 if config["regime"] == "balanced:5" else 0.01
    test = 0.3 - (move if config["epochs"] == 2 else 0.0) + 0.0001 * config["seed"] + 0.02 * (config["loss"] == "gence")
    return {"test/error": test, "train/error": 0.0, "train/loss": 0.01, "train/loss_floor": 0.0}, {}


def make_pilot(tmp_path: Path) -> None:
    """tmp_path/pilot.sqlite: the pilot of PILOT_GRID (E = 1 passes at balanced:5, fails at balanced:20)."""
    grid = parse_grid(textwrap.dedent(PILOT_GRID), name="pilot-grid")
    run_grid(grid.runs, tmp_path / "pilot.sqlite", run_fn=pilot_run, progress=False,
             grid_text=(grid.name, None, grid.text))


def pooled_cell(stored, settings) -> tuple[str, float, float]:
    """GenCE − CE test error over ``settings`` of block balanced, by scipy: the cell text, CI low and high."""
    means = np.array([expected(stored, "balanced", s, "gence", "ce", "test/error")[1] for s in settings])
    ci = stats.ttest_1samp(means, 0.0).confidence_interval()      # t over the settings
    return f"{signed(100 * means.mean())} [{signed(100 * ci.low)}, {signed(100 * ci.high)}]", ci.low, ci.high


def test_pilot_marks_each_setting_budget_and_pools_the_settings_shown_converged(full, tmp_path, monkeypatch):
    # The study ran 1 epoch. The pilot passes E = 1 at balanced:5 (both models) and fails it at balanced:20.
    db = full[0]
    stored = rows(db)
    make_pilot(tmp_path)
    monkeypatch.chdir(tmp_path)
    spec = VerdictSpec.from_table({**textwrap_table(VERDICT), "pilot": "pilot.sqlite"})
    verdict = build_verdict(load_results(db), spec)
    body = claim(verdict, "Accuracy with few").body
    for dataset, regime, model in BALANCED:
        line = next(x for x in body.splitlines() if x.startswith(f"| {dataset} | {model} | {regime} | 5/5"))
        assert line.endswith("| passes (E = 1) |" if regime == "balanced:5" else "| fails (E = 1) |"), line
    cell = pooled_cell(stored, [s for s in BALANCED if s[1] == "balanced:5"])[0]   # t over 2 settings, df 1
    assert next(x for x in body.splitlines() if x.startswith("| shown converged | 2 | 10 |")).count(cell) == 1
    assert "4 of 4 settings" in claim(verdict, "Accuracy with few").evidence
    assert "; 2 of the 4 at a budget the pilot's rule passes" in claim(verdict, "Accuracy with few").evidence
    # the long-tailed regime is not in the pilot
    long_line = next(x for x in claim(verdict, "Accuracy under class imbalance").body.splitlines()
                     if x.startswith("| digits | small_cnn | long_tailed:10:40 | 5/5"))
    assert long_line.endswith("| not in the pilot (E = 1) |")
    md = write_for(db, tmp_path / "out", verdict_spec=spec).markdown
    glance = md[md.index("## At a glance"):md.index("## Study progress")]
    assert "| digits | only settings shown converged (pilot) | verdict |" in glance
    line = next(x for x in glance.splitlines() if x.startswith("| Accuracy with few labels |"))
    assert line.endswith(f"| {cell} pp (2) | **holds** |")
    line = next(x for x in glance.splitlines() if x.startswith("| Accuracy under class imbalance |"))
    assert line.endswith("| – | **does not hold** |")
    assert "speak only for the budget they ran" in glance
    # the pilot's change from E = 1 to 2, pooled over its 4 settings (t over their means, by scipy): the same
    # for both losses (GenCE's errors are CE's + 2 pp), so their difference does not move; -0.1 pp at
    # balanced:5, -1 pp at balanced:20
    ci = stats.ttest_1samp([-0.1, -0.1, -1.0, -1.0], 0.0).confidence_interval()
    move = f"{signed(-0.55)} [{signed(ci.low)}, {signed(ci.high)}] pp (4 settings)"
    assert (f"Pooled over the pilot's settings, each at its largest budget E, test error moved from E to 2E by "
            f"`ce` {move}, `gence` {move}; the difference `gence − ce` +0.00 [+0.00, +0.00] pp (4 settings) (95% "
            "intervals); a move within ±0.3 pp is shown (TOST p < 0.05) for `gence − ce`.") in glance
    # without the pilot key none of it
    plain = build_verdict(load_results(db), CFG)
    assert "pilot's rule" not in claim(plain, "Accuracy with few").body + claim(plain, "Accuracy with few").evidence
    with pytest.raises(VerdictError, match=r"\[verdict\]\.pilot = 'nope.sqlite': no such database"):
        build_verdict(load_results(db), VerdictSpec(few_labels=("balanced",), pilot="nope.sqlite"))


def test_decide_on_converged_rests_the_verdict_on_the_settings_shown_converged(full, tmp_path, monkeypatch):
    db = full[0]
    stored = rows(db)
    make_pilot(tmp_path)
    monkeypatch.chdir(tmp_path)
    spec = VerdictSpec.from_table({**textwrap_table(VERDICT), "pilot": "pilot.sqlite", "decide_on": "converged"})
    verdict = build_verdict(load_results(db), spec)
    few = claim(verdict, "Accuracy with few")
    shown = [s for s in BALANCED if s[1] == "balanced:5"]
    cell, low, high = pooled_cell(stored, shown)
    assert high < 0    # GenCE lower error over the 2 converged settings, each significant: holds by the rule
    assert few.decision.status == HOLDS and few.decision.compared == 2
    assert few.evidence.startswith(f"2 of 4 settings shown converged: pooled Δ {cell} pp")
    assert "at a budget the pilot's rule passes" not in few.evidence
    for dataset, regime, model in BALANCED:
        line = next(x for x in few.body.splitlines() if x.startswith(f"| {dataset} | {model} | {regime} | 5/5"))
        assert line.endswith("| GenCE better | passes (E = 1) |" if regime == "balanced:5" else
                             "| not in the verdict (budget not shown converged) | fails (E = 1) |"), line
    # Holm over the 2 settings in the verdict: their paired-t p times 2 (the larger: max with itself)
    ps = sorted(expected(stored, "balanced", st, "gence", "ce", "test/error")[4] for st in shown)
    assert all(p * 2 < 0.05 for p in ps)
    assert "Not in the verdict (its budget not shown converged by the pilot's rule): 2 setting(s)" in few.body
    # the long-tailed regime is not in the pilot: nothing shown converged, so no verdict
    assert claim(verdict, "Accuracy under class imbalance").decision.status == NO_DATA
    md = write_for(db, tmp_path / "out", verdict_spec=spec).markdown
    glance = md[md.index("## At a glance"):md.index("## Study progress")]
    assert "| only settings shown converged (pilot), the verdict decides on these | verdict |" in glance
    every = pooled_cell(stored, BALANCED)[0]    # the all-settings column: over all 4
    line = next(x for x in glance.splitlines() if x.startswith("| Accuracy with few labels |"))
    assert line == f"| Accuracy with few labels | error % | {every} pp (4) | {every} pp (4) | {cell} pp (2) | **holds** |"
    assert "The verdict is decided on the settings shown converged only." in glance
    assert 'Decided on the settings shown converged only (`[verdict] decide_on = "converged"`)' in md
    # the default decides on every setting; converged needs a pilot; other values are refused
    assert build_verdict(load_results(db), dataclasses.replace(spec, decide_on="all")).claims[0].decision.compared == 4
    with pytest.raises(VerdictError, match=r"decide_on = 'converged' needs \[verdict\]\.pilot"):
        VerdictSpec.from_table({"few_labels": ["balanced"], "decide_on": "converged"})
    with pytest.raises(VerdictError, match=r"decide_on = 'trained': expected one of 'all', 'converged'"):
        VerdictSpec.from_table({"few_labels": ["balanced"], "decide_on": "trained"})


def textwrap_table(text: str) -> dict:
    import tomllib
    return tomllib.loads(textwrap.dedent(text))["verdict"]


def test_learning_rate_range_within_one_point_of_each_loss_best(full):
    # by hand from the stored rows: per loss, the lrs whose mean test error is within 1 pp of its best
    db, _, _, verdict = full
    stored = [r for r in rows(db) if r["grid"] == "lr_sweep"]
    cells = []
    for lab in ("ce", "gence"):
        means = {lr: np.mean([r["metrics"]["test/error"] for r in stored if r["label"] == lab and r["config"]["lr"] == lr])
                 for lr in (0.01, 0.2)}
        near = sorted(lr for lr, m in means.items() if m - min(means.values()) <= 0.01)
        cells.append(f"{near[0]:g}" + (f"–{near[-1]:g}" if len(near) > 1 else "")
                     + f" (×{near[-1] / near[0]:.3g}; {len(near)} of 2)")
    assert cells[1] == "0.01 (×1; 1 of 2)"      # GenCE collapses at 0.2: 20 pp worse
    body = claim(verdict, "Learning-rate").body
    assert f"| lr_sweep | digits | small_cnn | balanced:5 | {cells[0]} | {cells[1]} |" in body


def test_a_missing_pilot_database_is_a_clear_error_for_report_and_a_warning_for_bench(full, tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    grid = tmp_path / "study.toml"
    grid.write_text(textwrap.dedent(GRID).replace('lr_robustness = ["lr_sweep"]\n',
                                                  'lr_robustness = ["lr_sweep"]\npilot = "gone.sqlite"\n'))
    assert main(["report", str(full[0]), "-o", str(tmp_path / "o"), "--verdict", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("gence report: [verdict].pilot = 'gone.sqlite': no such database (a path from the folder "
                           "the report is run in)") and not (tmp_path / "o").exists()
    out = tmp_path / "out"
    assert main(["bench", str(grid), "--db", str(tmp_path / "s.sqlite"), "-o", str(out), "--run-fn",
                 "test_verdict:fake_run", "--quiet", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert ("gence bench: warning: [verdict].pilot = 'gone.sqlite': no such database (a path from the folder the "
            "report is run in); the report is written without it") in err
    md = (out / "README.md").read_text()
    assert "| Accuracy with few labels | **holds** |" in md and "pilot's rule" not in md


def test_see_also_links_related_pages_relative_to_the_markdown_and_keeps_them_in_its_command(full, tmp_path,
                                                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.sqlite").write_bytes(Path(full[0]).read_bytes())
    pilot = tmp_path / "results" / "pilot" / "README.md"
    pilot.parent.mkdir(parents=True)
    pilot.write_text("# the pilot\n")
    argv = ["report", "study.sqlite", "-o", "results/study", "--markdown", "docs/RESULTS.md", "--see-also",
            "its pilot=results/pilot/README.md", "--see-also", "the archive=results/archive/x.md"]
    assert main(argv) == 0
    lines = (tmp_path / "docs" / "RESULTS.md").read_text().splitlines()
    assert f"regenerate with `gence {shlex.join(argv)}`" in lines[2]
    assert lines[4] == "See also: [its pilot](../results/pilot/README.md); [the archive](../results/archive/x.md)."
    assert (tmp_path / "docs" / "../results/pilot/README.md").resolve() == pilot.resolve()
    capsys.readouterr()
    assert main(["report", "study.sqlite", "-o", "o", "--see-also", "no-path"]) == 2
    assert capsys.readouterr().err.strip() == ("gence report: --see-also 'no-path': expected TEXT=PATH, e.g. "
                                               "'the pilot=results/pilot/README.md'")


def test_opening_shows_the_estimate_of_a_claim_with_too_few_settings_beside_its_verdict(tmp_path):
    # one of the 4 few-label settings has runs; min_fraction 0.5 needs 2: "not enough data yet", and the
    # all-settings cell shows that one setting's estimate, as its dataset's cell does
    grid = parse_grid(textwrap.dedent(GRID), name="verdict-grid")
    one = [s for s in grid.runs if s.grid == "balanced" and s.config["regime"] == "balanced:5"
           and s.config["model"] == "mlp" and s.label in ("ce", "gence")]
    db = tmp_path / "one.sqlite"
    run_grid(one, db, run_fn=fake_run, progress=False, grid_text=(grid.name, None, grid.text))
    n, mean, low, high, _ = expected(rows(db), "balanced", ("digits", "balanced:5", "mlp"), "gence", "ce", "test/error")
    cell = f"{signed(100 * mean)} [{signed(100 * low)}, {signed(100 * high)}] pp (1)"
    md = write_for(db, tmp_path / "out", verdict_spec=VerdictSpec(few_labels=("balanced",), min_fraction=0.5)).markdown
    line = next(x for x in md.splitlines() if x.startswith("| Accuracy with few labels |"))
    assert line == f"| Accuracy with few labels | error % | {cell} | {cell} | **not enough data yet** |"


LR_ONLY_GRID = """
[verdict]
lr_robustness = ["lr_sweep"]

[train]
epochs = 1

[[grid]]
name = "lr_sweep"
datasets = ["digits"]
regimes = ["balanced:5", "balanced:20"]
models = ["small_cnn"]
seeds = [200, 201, 202, 203, 204, 205, 206, 207]
sweep = { lr = [0.01, 0.2] }
losses = ["ce", "gence"]
"""


def collapse_where_not_converged(config):
    """GenCE collapses (a class never predicted) at lr 0.2 only at balanced:20, the setting whose budget the
    pilot fails; its error is CE's, so only the collapse test can decide the claim."""
    m = {"test/error": 0.3 + 0.01 * noise(config), "test/never_predicted":
         1.0 if (config["loss"], config["lr"], config["regime"]) == ("gence", 0.2, "balanced:20") else 0.0}
    return m, {}


def test_decide_on_converged_counts_collapses_in_the_settings_shown_converged_only(tmp_path, monkeypatch):
    grid = parse_grid(textwrap.dedent(LR_ONLY_GRID), name="lr-grid")
    db = tmp_path / "lr.sqlite"
    run_grid(grid.runs, db, run_fn=collapse_where_not_converged, progress=False, grid_text=(grid.name, None, grid.text))
    make_pilot(tmp_path)                     # E = 1 passes at balanced:5, fails at balanced:20
    monkeypatch.chdir(tmp_path)
    stored = rows(db)
    assert len(stored) == 64

    def collapsed(lab, regimes):
        runs = [r for r in stored if r["label"] == lab and r["config"]["regime"] in regimes]
        return sum(r["metrics"]["test/never_predicted"] > 0 for r in runs), len(runs)
    every = {lab: collapsed(lab, ("balanced:5", "balanced:20")) for lab in ("gence", "ce")}
    assert every == {"gence": (8, 32), "ce": (0, 32)}
    p_every = stats.fisher_exact([[8, 24], [0, 32]])[1]
    assert p_every < 0.05
    table = textwrap_table(LR_ONLY_GRID)
    # every setting: GenCE collapses significantly more often, so the claim does not hold
    plain = claim(build_verdict(load_results(db), VerdictSpec.from_table({**table, "pilot": "pilot.sqlite"})),
                  "Learning-rate")
    assert plain.decision.status == NOT_HOLDS
    assert plain.evidence.startswith(f"collapsed runs: gence 8/32, ce 0/32 (Fisher p={p_every:.3g})")
    # decided on the settings shown converged: balanced:5 only, where nothing collapsed
    spec = VerdictSpec.from_table({**table, "pilot": "pilot.sqlite", "decide_on": "converged"})
    conv = claim(build_verdict(load_results(db), spec), "Learning-rate")
    assert collapsed("gence", ("balanced:5",)) == (0, 16) and collapsed("ce", ("balanced:5",)) == (0, 16)
    assert conv.evidence.startswith("collapsed runs in the settings shown converged: gence 0/16, ce 0/16")
    assert conv.decision.status != NOT_HOLDS and conv.decision.compared == 1
    assert ("Collapsed runs in these blocks in the settings shown converged: gence 0 of 16, ce 0 of 16" in conv.body
            and "counting every setting (the verdict is not decided on the others): gence 8 of 32, ce 0 of 32."
            in conv.body)


# ---------------------------------------------------------------- baselines in blocks of their own
# The study's layout: CE and GenCE (10 seeds, tuned lr) in main blocks, the baselines (5 seeds, lr 0.1) in
# blocks of their own. Their comparisons pair seed s of a baseline with seed s of CE or GenCE in the main block
# of the same setting, whose configs differ only in the loss and its learning rate; a block whose budget
# differs ("longer") is never paired.
SPLIT_GRID = """
[verdict]
mixed = "gence_0.5"
few_labels = ["main_b"]
imbalance = ["main_lt"]
imbalance_baselines = ["logit_adjusted"]
calibration_baselines = ["label_smoothing", "focal"]

[train]
epochs = 1
lr = 0.1
ood = ["gaussian_noise", "uniform_noise"]

[[grid]]
name = "main_b"
datasets = ["digits"]
regimes = ["balanced:5", "balanced:20"]
models = ["small_cnn"]
seeds = [0, 1, 2, 3]
losses = ["ce", "gence"]

[[grid]]
name = "main_lt"
datasets = ["digits"]
regimes = ["long_tailed:10:40"]
models = ["small_cnn"]
seeds = [0, 1, 2, 3]
losses = ["ce", "gence"]

[[grid]]
name = "base_b"
datasets = ["digits"]
regimes = ["balanced:5", "balanced:20"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = [{ name = "gence", params = { generative_weight = 0.5 }, label = "gence_0.5" },
          { name = "label_smoothing", params = { alpha = 0.1 }, label = "label_smoothing" },
          { name = "focal", params = { gamma = 3.0 }, label = "focal" }]
train = { lr = 0.05 }

[[grid]]
name = "base_lt"
datasets = ["digits"]
regimes = ["long_tailed:10:40"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = [{ name = "gence", params = { generative_weight = 0.5 }, label = "gence_0.5" }, "logit_adjusted"]
train = { lr = 0.05 }

[[grid]]
name = "longer"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = [{ name = "focal", params = { gamma = 3.0 }, label = "focal" }]
train = { epochs = 2 }
"""
SPLIT_B = [("digits", r, "small_cnn") for r in ("balanced:5", "balanced:20")]
SPLIT_LT = ("digits", "long_tailed:10:40", "small_cnn")


def split_run(config):
    """fake_run, with focal calibrated 4 points better than CE and label smoothing 3 points worse (plus noise)."""
    m, extras = fake_run(config)
    m["test/ece"] += {"focal": -0.04, "label_smoothing": 0.03}.get(config["loss"], 0.0) + 0.01 * noise({**config, "e": 1})
    return m, extras


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    db = tmp_path_factory.mktemp("split") / "split.sqlite"
    grid = stored(db, SPLIT_GRID, "split-grid", split_run)
    results = load_results(db)
    return rows(db), results, build_verdict(results, VerdictSpec.from_table(grid.verdict))


def across(stored, setting, a, b, metric):
    """scipy's paired t on (block, label) a − (block, label) b over the seeds both have, read from SQLite."""
    def values(block, lab):
        return {r["config"]["seed"]: r["metrics"][metric] for r in stored if r["grid"] == block and r["label"] == lab
                and (r["config"]["dataset"], r["config"]["regime"], r["config"]["model"]) == setting}
    va, vb = values(*a), values(*b)
    seeds = sorted(set(va) & set(vb))
    t = stats.ttest_rel([va[s] for s in seeds], [vb[s] for s in seeds])
    ci = t.confidence_interval()
    return (len(seeds), float(np.mean([va[s] for s in seeds]) - np.mean([vb[s] for s in seeds])), ci.low, ci.high,
            t.pvalue, float(np.mean([va[s] for s in seeds])), float(np.mean([vb[s] for s in seeds])))


def table_line(body: str, heading: str, setting) -> str:
    """The row of ``setting`` in the first table after the sentence that starts with ``heading``."""
    rest = body[body.index(heading):]
    return next(line for line in rest.splitlines() if line.startswith(f"| {setting[0]} | {setting[2]} | {setting[1]} |"))


def test_paired_rows_pair_a_baseline_block_with_the_ce_of_its_main_block(split):
    from gence.report.tables import paired_markdown, paired_rows
    stored, results, _ = split
    got = {(r.setting, r.block, r.label, r.column.key): r for r in paired_rows(results)}
    ps = []
    for setting in SPLIT_B:
        n, mean, low, high, p, _, _ = across(stored, setting, ("base_b", "focal"), ("main_b", "ce"), "test/ece")
        r = got[(setting, "base_b", "focal", "ece")]
        assert (r.result.n, r.other_block, r.lr, r.other_lr) == (3, "main_b", "0.05", "0.1")
        assert np.allclose([r.result.mean, r.result.low, r.result.high, r.result.p], [mean, low, high, p])
        ps.append((p, r))
    # Holm over focal's two settings, by hand
    (p1, r1), (p2, r2) = sorted(ps, key=lambda x: x[0])
    assert np.isclose(r1.p_holm, min(1, 2 * p1)) and np.isclose(r2.p_holm, min(1, max(2 * p1, p2)))
    # the block with another budget has no CE to be paired with: no row, and no partner
    assert not any(k[1] == "longer" for k in got)
    assert results.partner(SPLIT_B[0], "ce", "longer") is None
    assert results.partner(SPLIT_B[0], "ce", "base_b").block == "main_b"
    md = paired_markdown(paired_rows(results), ("digits", "small_cnn"), results.display)
    assert "| CE from (lr loss / CE) |" in md and "| main_b (lr 0.05 / 0.1) |" in md and "| same block |" in md


def test_verdict_compares_gence_with_baselines_of_another_block(split):
    stored, _, verdict = split
    cal = claim(verdict, "Calibration before").body
    assert "### gence against the calibration baselines" in cal
    for base in ("label_smoothing", "focal"):
        for metric, what in (("test/ece", "ECE before temperature scaling"), ("test_ts/ece", "ECE after temperature "
                                                                                            "scaling")):
            heading = f"gence − {base}, {what}"
            for setting in SPLIT_B:
                n, mean, low, high, p, m_ge, m_base = across(stored, setting, ("main_b", "gence"), ("base_b", base),
                                                             metric)
                line = table_line(cal, heading, setting)
                assert line.startswith(f"| digits | small_cnn | {setting[1]} | 3/3 | {100 * m_base:.2f} | "
                                       f"{100 * m_ge:.2f} | {signed(100 * mean)} [{signed(100 * low)}, "
                                       f"{signed(100 * high)}] | " + (f"{p:.3g} |" if p >= 0.001 else "<0.001 |"))
                assert "| base_b / main_b; lr 0.05 / 0.1 |" in line
    # focal is 4 points better calibrated than CE and GenCE 2 points: GenCE − focal about +2 in both settings
    focal = cal[cal.index("gence − focal, ECE before"):].splitlines()[0]
    assert "over 2 setting(s)" in focal.lower() and "is significantly worse in" in focal
    # the mixed GenCE against CE, and GenCE against logit adjustment, both from the baselines' blocks
    few = claim(verdict, "Accuracy with few").body
    for setting in SPLIT_B:
        n, mean, low, high, *_ = across(stored, setting, ("base_b", "gence_0.5"), ("main_b", "ce"), "test/error")
        assert f"{signed(100 * mean)} [{signed(100 * low)}, {signed(100 * high)}]" in table_line(
            few, "gence_0.5 − ce, test error", setting)
    lt = claim(verdict, "Accuracy under").body
    n, mean, low, high, *_ = across(stored, SPLIT_LT, ("main_lt", "gence"), ("base_lt", "logit_adjusted"), "test/error")
    assert n == 3 and f"{signed(100 * mean)} [{signed(100 * low)}, {signed(100 * high)}]" in table_line(
        lt, "gence − logit_adjusted, test error", SPLIT_LT)
    # the grid's settings for those comparisons count the partner blocks' (not 'longer': another budget)
    progress = verdict.progress
    assert progress.settings("main_b", ("ce", "focal")) == set(SPLIT_B)
    assert progress.partner_block("main_b", SPLIT_B[0], "focal") == "base_b"
    assert progress.partner_block("longer", SPLIT_B[0], "ce") is None


def test_summary_row_joins_a_baseline_block_with_its_main_block_and_bolds_the_best_of_the_row(split):
    from gence.report.tables import summary_table
    from gence.report.columns import ECE
    stored, results, _ = split
    table = summary_table(results, ECE)
    lines = [line for line in table.splitlines() if line.startswith("| digits | small_cnn | balanced:5 |")]
    assert len(lines) == 2   # main_b + base_b joined; 'longer' (another budget) a row of its own
    joined = next(line for line in lines if "main_b + base_b" in line).split(" | ")
    header = table.splitlines()[0].split(" | ")
    for lab in ("ce", "gence", "gence_0.5", "focal", "label_smoothing"):
        v = [r["metrics"]["test/ece"] for r in stored if r["label"] == lab and r["grid"] in ("main_b", "base_b")
             and r["config"]["regime"] == "balanced:5"]
        cell = joined[header.index(lab)]
        assert f"{100 * np.mean(v):.2f} ± {100 * np.std(v, ddof=1):.2f}" in cell
        assert cell.startswith("**") == (lab == "focal")   # focal is 4 points below CE, GenCE 2
    longer = next(line for line in lines if "| longer |" in line).split(" | ")
    assert longer[header.index("focal")].startswith("**") is False and longer[header.index("ce")] == ""


def test_plots_draw_baselines_of_a_block_of_their_own_beside_ce(split):
    stored, results, _ = split
    setting = SPLIT_B[0]
    labels = ["ce", "gence", "gence_0.5", "focal", "label_smoothing"]
    fig = plots._figure()
    ax = fig.subplots()
    plots._ece_axes(ax, results, setting, labels)
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    before = [p.get_height() for p in ax.patches[:len(labels)]]   # the first ax.bar call: before TS
    for lab, height in zip(labels, before):
        v = [r["metrics"]["test/ece"] for r in stored if r["label"] == lab and r["grid"] in ("main_b", "base_b")
             and r["config"]["regime"] == setting[1]]
        assert np.isclose(height, 100 * np.mean(v))
    ax = fig.subplots()
    plots._error_vs_labels_axes(ax, results, SPLIT_B, labels)
    drawn = {c.get_label(): list(c.lines[0].get_ydata()) for c in ax.containers}   # one errorbar per loss
    for lab in labels:
        want = [100 * np.mean([r["metrics"]["test/error"] for r in stored if r["label"] == lab
                               and r["grid"] in ("main_b", "base_b") and r["config"]["regime"] == regime])
                for regime in ("balanced:5", "balanced:20")]
        assert np.allclose(drawn[lab], want)


def test_opening_shows_the_baselines_beside_the_claims_pooled_by_hand(split, tmp_path):
    from gence.report.opening import beside_table
    stored, _, verdict = split
    table = beside_table(verdict.beside)
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in table.splitlines()[2:]}
    assert set(rows) == {("gence_0.5 − ce", "test error"), ("gence − logit_adjusted", "test error")} | {
        (f"gence − {b}", m) for b in ("label_smoothing", "focal") for m in ("ECE before TS", "ECE after TS", "test error")}
    per = [across(stored, s, ("main_b", "gence"), ("base_b", "focal"), "test/ece") for s in SPLIT_B]
    means = [x[1] for x in per]
    ci = stats.ttest_1samp(means, 0.0).confidence_interval()
    cells = rows[("gence − focal", "ECE before TS")]
    assert cells[0] == f"{signed(100 * np.mean(means))} [{signed(100 * ci.low)}, {signed(100 * ci.high)}] pp (2)"
    ps = sorted(x[4] for x in per)
    holm = [min(1, 2 * ps[0]), min(1, max(2 * ps[0], ps[1]))]
    worse = sum(p < 0.05 for p in holm)   # every setting's GenCE − focal is positive (focal 2 points better)
    assert all(m > 0 for m in means) and cells[2] == f"0 / {worse}"
    want = "gence worse" if ci.low > 0 else "inconclusive"   # a 2-setting t interval (df 1) is wide
    assert cells[3] == want   # the grid is complete: not provisional
    # the claim's section says the same in the same words (not "holds" / "does not hold": it claims nothing)
    body = claim(verdict, "Calibration before").body
    assert f"gence − focal, ECE before temperature scaling (lower is better): **{want}**." in body


def test_ranks_take_in_the_baselines_of_a_block_paired_with_the_claims_block(split):
    stored, _, verdict = split
    body = claim(verdict, "Accuracy with few").body
    labels = ["ce", "gence", "gence_0.5", "label_smoothing", "focal"]
    ranks = {lab: [] for lab in labels}
    for setting in SPLIT_B:   # by hand: each loss's mean test error over its own seeds, ranked (1 = lowest)
        means = [np.mean([r["metrics"]["test/error"] for r in stored if r["label"] == lab and r["grid"] in
                          ("main_b", "base_b") and r["config"]["regime"] == setting[1]]) for lab in labels]
        for lab, rk in zip(labels, stats.rankdata(means)):
            ranks[lab].append(rk)
    order = sorted(labels, key=lambda lab: np.mean(ranks[lab]))
    assert ("Ranks in block `main_b` with the losses of `base_b` (runs that differ only in the loss and its "
            "learning rate).") in body
    assert (f"gence ranks {order.index('gence') + 1} of 5 losses on average over 2 setting(s) (mean rank "
            f"{np.mean(ranks['gence']):.2f}") in body


def test_a_tuning_block_is_never_a_partner_in_the_grid_count():
    from gence.report.verdict import BlockProgress, Progress
    s = ("digits", "balanced:5", "mlp")
    seeds = {("lr", *s, "ce"): {100}, ("main", *s, "ce"): {0}, ("base", *s, "focal"): {0}}
    idents = {k: {"same data and budget"} for k in seeds}
    blocks = [BlockProgress(b, 1, 1, 0) for b in ("lr", "main", "base")]
    assert Progress(blocks, seeds, [], [], idents, frozenset({"lr"})).partner_block("base", s, "ce") == "main"
    assert Progress(blocks, seeds, [], [], idents).partner_block("base", s, "ce") == "lr"   # what it guards against


def test_the_paired_section_says_which_blocks_have_no_ce_to_pair_with_and_why(split, tmp_path):
    from gence.report.sections import Context, paired
    _, results, _ = split
    ctx = Context(results, "db", "t", "c", tmp_path / "plots", tmp_path / "tables", tmp_path, with_plots=False)
    md = paired(ctx)
    # 'longer' trains focal for 2 epochs, CE's block (main_b) for 1: by hand, epochs is what keeps them apart
    assert ("Not compared with CE: blocks of a setting with CE elsewhere whose runs differ from it in more than "
            "the loss and its learning rate") in md
    assert "`longer` at digits / small_cnn / balanced:5 (from CE's `main_b` in: epochs)." in md
    assert "`base_b`" not in md.split("Not compared with CE")[1]   # base_b is paired (lr differs only)


def test_a_block_sweeping_the_budget_is_not_joined_with_a_block_at_one_of_its_budgets(tmp_path):
    from gence.report.tables import summary_rows
    text = textwrap.dedent("""
        [train]
        ood = ["gaussian_noise"]
        [[grid]]
        name = "sweep"
        datasets = ["digits"]
        regimes = ["balanced:5"]
        models = ["small_cnn"]
        seeds = [0, 1]
        losses = ["ce"]
        sweep = { epochs = [1, 2] }
        [[grid]]
        name = "one"
        datasets = ["digits"]
        regimes = ["balanced:5"]
        models = ["small_cnn"]
        seeds = [0, 1]
        losses = [{ name = "focal", params = { gamma = 3.0 }, label = "focal" }]
        train = { epochs = 2 }
        """)
    stored(tmp_path / "b.sqlite", text, "budgets")
    results = load_results(tmp_path / "b.sqlite")
    s = ("digits", "balanced:5", "small_cnn")
    # CE's selected variant may be the 1-epoch one: a row of its own, and focal has no CE to pair with
    assert summary_rows(results, s) == [["sweep"], ["one"]]
    assert results.partner(s, "ce", "one") is None and results.partner(s, "focal", "sweep") is None
    progress = grid_progress(results)
    assert progress.partner_block("one", s, "ce") is None and progress.partner_block("sweep", s, "focal") is None


def test_plots_draw_from_the_block_with_the_most_losses_not_an_lr_sweep_before_it(tmp_path):
    text = textwrap.dedent("""
        [train]
        epochs = 1
        ood = ["gaussian_noise"]
        [[grid]]
        name = "lr_sweep"
        datasets = ["digits"]
        regimes = ["balanced:5"]
        models = ["small_cnn"]
        seeds = [200, 201]
        sweep = { lr = [0.01, 0.2] }
        losses = ["ce", "gence"]
        [[grid]]
        name = "main"
        datasets = ["digits"]
        regimes = ["balanced:5"]
        models = ["small_cnn"]
        seeds = [0, 1]
        losses = ["ce", "gence", { name = "focal", params = { gamma = 3.0 }, label = "focal" }]
        """)
    stored(tmp_path / "f.sqlite", text, "first")
    results = load_results(tmp_path / "f.sqlite")
    s = ("digits", "balanced:5", "small_cnn")
    assert results.primary_block(s) == "main"
    assert {lab: results.shown(s, lab).block for lab in ("ce", "gence", "focal")} == dict.fromkeys(
        ("ce", "gence", "focal"), "main")
    assert sorted(r.seed for r in results.shown(s, "ce").runs) == [0, 1]   # not the sweep's seeds 200, 201


def recorded_figures(monkeypatch) -> list:
    """The matplotlib figures the report's plots create from now on, kept to read what they drew."""
    figures = []
    monkeypatch.setattr(plots, "_figure", lambda **kwargs: figures.append(Figure(**kwargs)) or figures[-1])
    return figures


def test_the_lr_plot_rings_the_lr_the_tuned_runs_use_chosen_on_validation_not_on_test(tmp_path, monkeypatch):
    # validation prefers one lr per loss and test error another: the ring must sit where validation puts it
    # (the value the tuned block runs with), on the loss's mean test error there
    val_opt, test_opt = {"ce": 0.1, "gence": 0.01}, {"ce": 0.01, "gence": 0.1}

    def run(config):
        h = noise(config)
        loss, lr = config["loss"], config["lr"]
        m, _ = fake_run(config)
        m["val/error"] = 0.2 + 0.05 * abs(math.log10(lr / val_opt[loss])) + 0.001 * h
        m["test/error"] = 0.2 + 0.05 * abs(math.log10(lr / test_opt[loss])) + 0.01 * h
        m["test/never_predicted"] = 0.0
        return m, {"history": {"loss": [1.0]}}
    db = tmp_path / "t.sqlite"
    grid = parse_grid(helpers.TUNED_GRID, name="tuned")
    run_grid(grid.runs, db, run_fn=run, progress=False, tuned=grid.tuned, grid_text=(grid.name, None, grid.text))
    done = rows(db)
    sweep = [r for r in done if r["grid"] == "tune"]
    lrs = (0.01, 0.03, 0.1)
    assert {r["config"]["lr"] for r in sweep} == set(lrs)

    def mean(lab, lr, metric):
        return np.mean([r["metrics"][metric] for r in sweep if r["label"] == lab and r["config"]["lr"] == lr])
    expected = {lab: min(lrs, key=lambda lr: mean(lab, lr, "val/error")) for lab in ("ce", "gence")}
    assert expected == val_opt   # and test error is lowest elsewhere
    assert {lab: min(lrs, key=lambda lr: mean(lab, lr, "test/error")) for lab in ("ce", "gence")} == test_opt
    # the value the main block's runs were trained with, read from SQLite
    assert {r["label"]: r["config"]["lr"] for r in done if r["grid"] == "main"} == expected

    verdict = build_verdict(load_results(db), VerdictSpec(lr_robustness=("tune",)))
    ((_, _, chosen),) = verdict.lr_panels
    assert chosen == expected
    figures = recorded_figures(monkeypatch)
    plots.lr_robustness(verdict.lr_panels, tmp_path / "lr.png")
    (ax,) = [ax for ax in figures[0].axes if ax.get_visible()]
    rings = [line for line in ax.get_lines() if line.get_markerfacecolor() == "none"]
    drawn = sorted((float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in rings)
    want = sorted((lr, 100 * mean(lab, lr, "test/error")) for lab, lr in expected.items())
    assert np.allclose(drawn, want)
    assert "lr the tuned runs use (chosen on validation)" in [t.get_text() for t in figures[0].legends[0].get_texts()]


def test_the_lr_plot_legend_names_a_loss_and_collapsed_runs_that_only_a_later_panel_draws(tmp_path, monkeypatch):
    figures = recorded_figures(monkeypatch)
    fine = {"ce": {0.1: [(0.2, False)], 0.2: [(0.3, False)]}}
    collapsed = {"ce": {0.1: [(0.2, False)], 0.2: [(0.3, False)]}, "gence": {0.1: [(0.2, False)], 0.2: [(0.9, True)]}}
    plots.lr_robustness([("first", fine, {}), ("second", collapsed, {})], tmp_path / "lr.png")
    names = [t.get_text() for t in figures[0].legends[0].get_texts()]
    assert names == ["ce", "gence", "collapsed run"]   # no ring entry: nothing was chosen
