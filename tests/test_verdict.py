"""The generated verdict: numbers in its sentences and tables against numpy/scipy on the stored rows, the
holds / does-not-hold decisions against the stated rules, a partial database (grid progress, seeds short
of the grid, claims without runs), and the `gence report --verdict --markdown` command. Runs come from a
fake run function in which the test decides which loss is better; no training."""
from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from gence.cli import main
from gence.experiments import parse_grid, run_grid
from gence.experiments.db import run_key
from gence.report import load_results, write_report
from gence.report.verdict import (HOLDS, MIXED, NO_DATA, NOT_HOLDS, VerdictConfig, build_verdict, decide,
                                  grid_progress)

GRID = """
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
CFG = VerdictConfig(lr_blocks=("lr_sweep",))


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
    """numpy/scipy: paired differences, their mean, percentile bootstrap CI (10,000 resamples, seed 0) and
    the two-sided Wilcoxon p, over the seeds both have."""
    def values(lab):
        return {r["config"]["seed"]: r["metrics"][metric] for r in stored if r["grid"] == block and r["label"] == lab
                and (r["config"]["dataset"], r["config"]["regime"], r["config"]["model"]) == setting}
    a, b = values(label), values(other)
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds])
    rng = np.random.default_rng(0)
    boot = d[rng.integers(0, len(d), size=(10_000, len(d)))].mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    p = stats.wilcoxon(d).pvalue if len(d) > 1 else math.nan
    return len(d), d.mean(), low, high, p


def signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verdict")
    grid = parse_grid(textwrap.dedent(GRID), name="verdict-grid")
    db = tmp / "full.sqlite"
    run_grid(grid.runs, db, run_fn=fake_run, progress=False, grid_text=(grid.name, None, grid.text))
    results = load_results(db)
    return db, grid, results, build_verdict(results, CFG)


def section(verdict, start: str) -> str:
    return next(body for heading, body in verdict.sections if heading.startswith(start))


def claim(verdict, start: str):
    return next(c for c in verdict.claims if c.name.startswith(start))


def test_few_label_table_numbers_match_numpy_and_scipy(full):
    db, _, _, verdict = full
    stored = rows(db)
    body = section(verdict, "Claim: accuracy with few")
    for dataset, regime, model in [("digits", r, m) for r in ("balanced:5", "balanced:20") for m in ("small_cnn", "mlp")]:
        n, mean, low, high, p = expected(stored, "balanced", (dataset, regime, model), "gence", "ce", "test/error")
        line = next(line for line in body.splitlines() if line.startswith(f"| {dataset} | {model} | {regime} | 5/5"))
        assert f"{signed(100 * mean)} [{signed(100 * low)}, {signed(100 * high)}]" in line
        assert f"| {p:.3g} |" in line and "GenCE better" in line   # GenCE is 5 points better by construction
    assert "clearly better in 4, clearly worse in 0 and unclear in 0" in body
    # GenCE ranks first among the 4 losses in every setting
    assert "GenCE ranks 1 of 4 losses on average over 4 setting(s) (mean rank 1.00; best in 4)" in body


def test_decisions_follow_the_stated_rules(full):
    db, _, _, verdict = full
    stored = rows(db)
    settings = [("digits", r, m) for r in ("balanced:5", "balanced:20") for m in ("small_cnn", "mlp")]

    def rule(block, settings, metric, higher=False, label="gence"):
        outcomes = []
        for s in settings:
            n, mean, low, high, p = expected(stored, block, s, label, "ce", metric)
            better = low > 0 if higher else high < 0
            worse = high < 0 if higher else low > 0
            outcomes.append("b" if better else "w" if worse else "u")
        b, w = outcomes.count("b"), outcomes.count("w")
        if b > len(outcomes) / 2 and w == 0:
            return HOLDS, b, w
        if b == 0 or w >= b:
            return NOT_HOLDS, b, w
        return MIXED, b, w

    status, b, w = rule("balanced", settings, "test/error")
    c = claim(verdict, "Accuracy with few")
    assert (c.decision.status, c.decision.better, c.decision.worse) == (status, b, w) == (HOLDS, 4, 0)
    lt = [("digits", "long_tailed:10:40", "small_cnn")]
    status, b, w = rule("long_tailed", lt, "test/error")
    c = claim(verdict, "Accuracy under class imbalance")
    assert (c.decision.status, c.decision.worse) == (status, w) == (NOT_HOLDS, 1)
    assert "GenCE loses clearly in: digits / small_cnn / long_tailed:10:40" in section(verdict, "Claim: accuracy under")
    status, b, w = rule("balanced", settings, "test/ece")
    status_lt, b_lt, w_lt = rule("long_tailed", lt, "test/ece")
    c = claim(verdict, "Calibration before")
    assert (c.decision.better, c.decision.worse) == (b + b_lt, w + w_lt) == (5, 0) and c.decision.status == HOLDS
    # a complete grid is not provisional
    assert not c.decision.provisional and "provisional" not in c.decision.text
    # OOD: equal up to noise; whatever the CIs say, the status is the rule applied to them
    aurocs = []
    for block, ss in (("balanced", settings), ("long_tailed", lt)):
        for s in ss:
            for r in stored:
                if r["grid"] == block and (r["config"]["dataset"], r["config"]["regime"], r["config"]["model"]) == s:
                    r["metrics"]["ood_mean"] = np.mean([r["metrics"][f"ood/{o}/msp/auroc"]
                                                        for o in ("gaussian_noise", "uniform_noise")])
            aurocs.append(rule(block, [s], "ood_mean", higher=True))
    b, w = sum(x[1] for x in aurocs), sum(x[2] for x in aurocs)
    want = HOLDS if b > 2.5 and w == 0 else NOT_HOLDS if b == 0 or w >= b else MIXED
    assert claim(verdict, "OOD").decision.status == want


def test_imbalance_section_has_few_shot_group_and_imbalance_baselines(full):
    db, _, _, verdict = full
    stored = rows(db)
    body = section(verdict, "Claim: accuracy under")
    s = ("digits", "long_tailed:10:40", "small_cnn")
    n, mean, low, high, p = expected(stored, "long_tailed", s, "gence", "ce", "test/acc_few")
    assert "accuracy on the few-shot class group" in body and f"{signed(100 * mean)} [{signed(100 * low)}" in body
    for base in ("logit_adjusted", "balanced_softmax"):
        n, mean, low, high, p = expected(stored, "long_tailed", s, "gence", base, "test/error")
        assert n == 3 and f"GenCE − {base}, test error" in body
        assert f"{signed(100 * mean)} [{signed(100 * low)}, {signed(100 * high)}]" in body


def test_learning_rate_claim_counts_collapse_and_worst_lr(full):
    db, _, _, verdict = full
    stored = [r for r in rows(db) if r["grid"] == "lr_sweep"]
    c = claim(verdict, "Learning-rate")
    coll = {lab: sum(r["metrics"]["test/never_predicted"] > 0 for r in stored if r["label"] == lab) for lab in ("ce", "gence")}
    assert coll == {"ce": 0, "gence": 3}
    assert c.decision.status == NOT_HOLDS   # more collapsed runs than CE
    assert "collapsed runs: GenCE 3/6, CE 0/6" in c.evidence
    body = section(verdict, "Claim: learning-rate")
    assert "it reappears, for GenCE only: digits at lr 0.2" in body
    # worst lr: CE's is 0.01 or 0.2 by the noise; GenCE's is 0.2 (collapsed); paired over the 3 seeds
    def err(lab, lr):
        return {r["config"]["seed"]: r["metrics"]["test/error"] for r in stored if r["label"] == lab and r["config"]["lr"] == lr}
    ce_worst = max((0.01, 0.2), key=lambda lr: (np.mean(list(err("ce", lr).values())), lr))
    d = np.array([err("gence", 0.2)[s] - err("ce", ce_worst)[s] for s in (200, 201, 202)])
    line = next(line for line in body.splitlines() if f"(lr {ce_worst:g}) |" in line and "(lr 0.2)" in line)
    assert signed(100 * d.mean()) in line and "GenCE worse" in line


def test_decide_rule_edges():
    class C:  # the minimum a comparison needs for decide()
        def __init__(self, outcome, partial=False):
            self.outcome, self.partial = outcome, partial
    assert decide([], 4).status == NO_DATA
    assert decide([C("better")], 8).status == NO_DATA          # 1 < 25% of 8
    assert decide([C("better"), C("better"), C("unclear")], 4).status == HOLDS
    assert decide([C("better"), C("unclear")], 2).status == MIXED            # not more than half
    assert decide([C("better")] * 3 + [C("worse")], 4).status == MIXED
    assert decide([C("better"), C("worse")], 2).status == NOT_HOLDS         # worse >= better
    assert decide([C("unclear")] * 4, 4).status == NOT_HOLDS
    d = decide([C("better")] * 3, 4)
    assert d.status == HOLDS and d.provisional and d.text == "holds (provisional)"


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
    assert f"{len(ran) - 1} of the grid's {total} runs are stored done" in verdict.preamble
    assert f"| **all** | **{total}** | **{len(ran) - 1}** | **1** | **{total - len(ran)}** |" in verdict.preamble
    body = section(verdict, "Claim: accuracy with few")
    assert "| digits | mlp | balanced:5 | 3/5 † |" in body and "| digits | mlp | balanced:20 | 4/5 † |" in body
    few = claim(verdict, "Accuracy with few")
    assert few.decision.status == HOLDS and few.decision.provisional
    assert "holds (provisional)" in verdict.preamble
    lt = claim(verdict, "Accuracy under class imbalance")
    assert lt.decision.status == NO_DATA and lt.evidence == "no runs yet"
    assert section(verdict, "Claim: accuracy under").startswith("No runs yet")
    assert claim(verdict, "Learning-rate").decision.status == NO_DATA
    assert "| Accuracy under class imbalance | **not enough data yet** | no runs yet |" in verdict.preamble


def test_report_command_writes_markdown_at_root_with_working_links_and_its_own_command(full, tmp_path, monkeypatch):
    db = full[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.sqlite").write_bytes(Path(db).read_bytes())
    argv = ["report", "study.sqlite", "-o", "results", "--markdown", "RESULTS.md", "--verdict"]
    assert main(argv) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert f"regenerate with `gence {shlex.join(argv)}`" in md.splitlines()[2]
    heads = [line for line in md.splitlines() if line.startswith("## ")]
    assert heads[:3] == ["## Study progress", "## Verdict", "## Setup"]   # verdict at the top, header kept
    assert "## Claim: learning-rate robustness and collapse" in heads
    links = re.findall(r"\]\(([^)]+\.(?:png|csv))\)", md)
    assert "results/plots/lr_robustness.png" in links and "results/tables/runs.csv" in links
    for link in links:
        assert (tmp_path / link).is_file(), link
