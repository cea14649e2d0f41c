"""The report: tables against numpy on the stored metrics, paired statistics against scipy, every table
and plot present, per-loss selection of swept settings, reusable writer. Runs come from a fake run
function (the real loop is covered end to end in test_experiments.py)."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import sqlite3
import textwrap

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from scipy import stats

from gence.cli import main
from gence.experiments import parse_grid, run_grid
from gence.experiments.db import run_key
from gence.report import load_results, plots, write_report
from gence.report import tables as T
from gence.report.sections import DEFAULT_SECTIONS, text
from gence.report.verdict import signed

GRID = """
[train]
epochs = 1
ood = ["gaussian_noise", "uniform_noise"]

[[grid]]
name = "main"
datasets = ["digits"]
regimes = ["balanced:5", "balanced:20", "long_tailed:10:50"]
models = ["small_cnn"]
seeds = [0, 1, 2, 3, 4, 5]
losses = ["ce", "gence", { name = "focal", params = { gamma = 3.0 }, seeds = [0, 1, 2] }]

[[grid]]
name = "lr-sweep"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0, 1, 2, 3, 4, 5]
losses = ["ce", "gence"]
sweep = { lr = [0.01, 0.2] }
"""


def fake_run(config):
    """Deterministic metrics that depend on loss, regime, lr and seed; seed 5 of focal would fail."""
    h = int(hashlib.sha256(run_key(config).encode()).hexdigest()[:8], 16) / 16 ** 8
    if config["loss"] == "gence" and config["regime"] == "balanced:20" and config["seed"] == 5:
        raise RuntimeError("fake divergence")
    n = float(config["regime"].split(":")[-1])
    lr_pen = abs(math.log10(config["lr"] / 0.03)) * (0.2 if config["loss"] == "gence" else 0.05)
    base = {"ce": 0.0, "gence": -0.01}.get(config["loss"], 0.02)
    m = {}
    for split in ("val", "test", "val_ts", "test_ts"):
        for i, k in enumerate(("error", "nll", "brier", "ece", "adaece", "classwise_ece", "mce")):
            m[f"{split}/{k}"] = 1 / n ** 0.5 + base + lr_pen + 0.04 * h + 0.01 * i
    m["test_ts/ece"] = m["test/ece"] * 0.5
    for ood in ("gaussian_noise", "uniform_noise"):
        m[f"ood/{ood}/msp/auroc"] = 0.7 + 0.2 * h + (0.05 if ood == "uniform_noise" else 0)
        m[f"ood/{ood}/msp/fpr95"] = 0.6 - 0.2 * h
    for g, v in (("many", 0.9), ("medium", 0.7), ("few", 0.4)):
        m[f"test/acc_{g}"] = v - base + 0.01 * h
    acc = [None, 0.2, 0.45, 0.7, 0.92 - 0.1 * h]
    bins = {"edges": [i / 5 for i in range(6)], "count": [0, 2 + config["seed"], 5, 11, 40],
            "accuracy": acc, "confidence": [None, 0.3, 0.5, 0.72, 0.95]}
    return m, {"reliability": {"test": bins, "test_ts": bins}, "history": {"loss": [1.0]}}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    grid = parse_grid(textwrap.dedent(GRID), name="test-grid")
    db = tmp / "runs.sqlite"
    summary = run_grid(grid.runs, db, run_fn=fake_run, progress=False, grid_text=(grid.name, None, grid.text))
    assert summary.failed == 1
    out = tmp / "out"
    rep = write_report(db, out, title="Test report",
                       sections=[*DEFAULT_SECTIONS[:3], lambda ctx: f"## Verdict\n\n{len(ctx.results.runs)} runs.",
                                 *DEFAULT_SECTIONS[3:]])
    return db, out, rep, grid


def stored(db) -> list[dict]:
    """The done runs read straight from SQLite, independently of the report code."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT config, label, metrics, wall_seconds FROM runs WHERE status='done'").fetchall()
    con.close()
    return [{"config": json.loads(c), "label": lab, "metrics": json.loads(m), "wall": w} for c, lab, m, w in rows]


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_table_and_plot_is_written(report):
    db, out, rep, _ = report
    md = (out / "README.md").read_text()
    assert md.startswith("# Test report")
    for section in ("## Setup", "## Summary", "## Verdict", "## Results per dataset, regime and model",
                    "## Paired comparison with CE", "## Hyperparameter selection", "## Plots", "## Failed runs"):
        assert section in md, section
    settings = ["digits_balanced-5_small_cnn", "digits_balanced-20_small_cnn", "digits_long_tailed-10-50_small_cnn"]
    for s in settings:
        assert (out / "tables" / f"{s}.csv").exists()
        assert (out / "plots" / f"reliability_{s}.png").stat().st_size > 10_000
    for name in ("error_vs_labels_digits_small_cnn.png", "ece_ts_digits_small_cnn.png"):
        assert (out / "plots" / name).stat().st_size > 10_000
    assert (out / "tables" / "paired_vs_ce.csv").exists() and (out / "tables" / "runs.csv").exists()
    for p in rep.files:
        assert p.exists()
        if p.suffix == ".png":
            assert f"]({p.relative_to(out).as_posix()})" in md  # linked from the Markdown
    # long-tailed table has the group accuracies, balanced ones do not
    lt = read_csv(out / "tables" / "digits_long_tailed-10-50_small_cnn.csv")
    bal = read_csv(out / "tables" / "digits_balanced-20_small_cnn.csv")
    assert "acc_few_mean" in lt[0] and "acc_few_mean" not in bal[0]
    assert "fake divergence" in md and "seeds" in md


def test_header_lists_configs_versions_hardware_and_compute_time(report):
    db, out, _, grid = report
    md = (out / "README.md").read_text()
    runs = stored(db)
    con = sqlite3.connect(db)
    hardware, torch_v, gence_v = con.execute("SELECT hardware, torch_version, gence_version FROM runs LIMIT 1").fetchone()
    failed_wall = con.execute("SELECT SUM(wall_seconds) FROM runs WHERE status='failed'").fetchone()[0]
    con.close()
    assert hardware in md and torch_v in md and gence_v in md
    assert f"{len(runs)} done, 1 failed" in md
    total = sum(r["wall"] for r in runs) + failed_wall
    assert f"{total:.0f} s" in md
    assert 'name = "lr-sweep"' in md  # the grid's TOML


def test_compute_time_of_a_resumed_run_counts_every_attempt(report, tmp_path):
    """A run resumed from a checkpoint stores the wall time of its last attempt only; its history's seconds
    add up the training of every attempt. Made so here by hand in SQLite: one run's wall time cut to 1 s
    and its history's training time set to 3 h (the other runs keep their wall times)."""
    db, _, _, _ = report
    copy = tmp_path / "resumed.sqlite"
    sqlite3.connect(db).backup(con := sqlite3.connect(copy))
    key, extras = con.execute("SELECT key, extras FROM runs WHERE status='done' LIMIT 1").fetchone()
    extras = json.loads(extras)   # the fixture's run function keeps no per-epoch seconds: the loop's history
    extras["history"] = [{"epoch": 0, "loss": 2.0, "seconds": 1800.0}, {"epoch": 1, "loss": 1.0, "seconds": 3 * 3600.0}]
    con.execute("UPDATE runs SET wall_seconds=1.0, extras=? WHERE key=?", (json.dumps(extras), key))
    con.commit()
    others = con.execute("SELECT SUM(wall_seconds) FROM runs WHERE key != ?", (key,)).fetchone()[0]
    con.close()
    write_report(copy, tmp_path / "out", title="t", with_plots=False)
    md = (tmp_path / "out" / "README.md").read_text()
    assert f"total compute time {(3 * 3600.0 + others) / 3600:.2f} h" in md


def test_hardware_stored_before_the_cpu_capability_was_recorded_says_so(report, tmp_path):
    """Runs stored before gence recorded the CPU capability name a CPU as 'MODEL (N cores, torch threads T)';
    the report says the capability is missing there and leaves a CPU with it, and a GPU, as stored."""
    db, _, _, _ = report
    copy = tmp_path / "old.sqlite"
    sqlite3.connect(db).backup(con := sqlite3.connect(copy))
    keys = [k for (k,) in con.execute("SELECT key FROM runs WHERE status='done' ORDER BY key")]
    labels = ["Old CPU (2 cores, torch threads 1)", "New CPU (2 cores, AVX512, torch threads 1)",
              "NVIDIA H200 (CUDA 12.8)"]
    for key, label in zip(keys, labels):
        con.execute("UPDATE runs SET hardware=? WHERE key=?", (label, key))
    con.commit()
    con.close()
    write_report(copy, tmp_path / "out", title="t", with_plots=False)
    md = (tmp_path / "out" / "README.md").read_text()
    assert "Old CPU (2 cores, CPU capability not recorded, torch threads 1) (1 runs, " in md
    assert "Old CPU (2 cores, torch threads 1)" not in md
    assert "New CPU (2 cores, AVX512, torch threads 1) (1 runs, " in md
    assert "NVIDIA H200 (CUDA 12.8) (1 runs, " in md


def test_table_means_and_stds_match_numpy_on_stored_metrics(report):
    db, out, _, _ = report
    runs = stored(db)
    rows = read_csv(out / "tables" / "digits_balanced-20_small_cnn.csv")
    assert [r["loss"] for r in rows] == ["ce", "gence", "focal(gamma=3)"]
    for row in rows:
        mine = [r for r in runs if r["label"] == row["loss"] and r["config"]["regime"] == "balanced:20"]
        assert int(row["n"]) == len(mine) == {"ce": 6, "gence": 5, "focal(gamma=3)": 3}[row["loss"]]
        for key, metric in (("error", "test/error"), ("nll", "test/nll"), ("ece_ts", "test_ts/ece")):
            x = np.array([r["metrics"][metric] for r in mine])
            assert float(row[f"{key}_mean"]) == pytest.approx(x.mean(), rel=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(x.std(ddof=1), rel=1e-12)
        auroc = np.array([np.mean([r["metrics"][f"ood/{o}/msp/auroc"] for o in ("gaussian_noise", "uniform_noise")])
                          for r in mine])
        assert float(row["ood_auroc_mean"]) == pytest.approx(auroc.mean(), rel=1e-12)


def test_swept_lr_is_selected_per_loss_on_validation_within_each_block(report):
    db, out, rep, _ = report
    con = sqlite3.connect(db)
    block_of = dict(con.execute("SELECT key, grid FROM runs WHERE status='done'").fetchall())
    con.close()
    runs = [r for r in stored(db) if r["config"]["regime"] == "balanced:5"]
    for r in runs:
        r["block"] = block_of[run_key(r["config"])]
    rows = {(r["block"], r["loss"]): r for r in read_csv(out / "tables" / "digits_balanced-5_small_cnn.csv")}
    assert set(rows) == {("main", "ce"), ("main", "gence"), ("main", "focal(gamma=3)"), ("lr-sweep", "ce"),
                         ("lr-sweep", "gence")}
    for label in ("ce", "gence"):
        # the main block has one lr (0.05): its seeds are not pooled with the sweep block's
        main_runs = [r for r in runs if r["label"] == label and r["block"] == "main"]
        assert {r["config"]["lr"] for r in main_runs} == {0.05}
        assert rows[("main", label)]["variant"] == "" and int(rows[("main", label)]["n"]) == len(main_runs) == 6
        assert float(rows[("main", label)]["error_mean"]) == pytest.approx(
            np.mean([r["metrics"]["test/error"] for r in main_runs]), rel=1e-12)
        mine = [r for r in runs if r["label"] == label and r["block"] == "lr-sweep"]
        lrs = sorted({r["config"]["lr"] for r in mine})
        assert lrs == [0.01, 0.2]
        val = {lr: np.mean([r["metrics"]["val/error"] for r in mine if r["config"]["lr"] == lr]) for lr in lrs}
        best = min(val, key=val.get)
        assert rows[("lr-sweep", label)]["variant"] == f"lr={best:g}"
        test = [r["metrics"]["test/error"] for r in mine if r["config"]["lr"] == best]
        assert float(rows[("lr-sweep", label)]["error_mean"]) == pytest.approx(np.mean(test), rel=1e-12)
    assert rows[("main", "focal(gamma=3)")]["variant"] == ""
    assert "mean `val/error`" in rep.markdown
    # paired comparisons stay within a block
    paired = read_csv(out / "tables" / "paired_vs_ce.csv")
    assert {r["block"] for r in paired if r["regime"] == "balanced:5"} == {"main", "lr-sweep"}


def test_paired_comparison_against_scipy_and_numpy(report):
    db, out, _, _ = report
    runs = stored(db)
    rows = read_csv(out / "tables" / "paired_vs_ce.csv")

    def diffs(regime, metric, block_runs):
        ce = {r["config"]["seed"]: r["metrics"][metric] for r in block_runs if r["label"] == "ce" and r["config"]["regime"] == regime}
        ge = {r["config"]["seed"]: r["metrics"][metric] for r in block_runs if r["label"] == "gence" and r["config"]["regime"] == regime}
        seeds = sorted(set(ce) & set(ge))
        return seeds, np.array([ge[s] - ce[s] for s in seeds])

    main = [r for r in runs if r["config"]["lr"] == 0.05]
    seeds, d = diffs("balanced:20", "test/nll", main)
    assert seeds == [0, 1, 2, 3, 4]  # seed 5 of gence failed: only matching seeds are paired
    row = next(r for r in rows if r["regime"] == "balanced:20" and r["loss"] == "gence" and r["metric"] == "nll")
    t = stats.ttest_1samp(d, 0.0)
    assert int(row["n_pairs"]) == 5
    assert float(row["mean_diff_vs_ce"]) == pytest.approx(d.mean(), rel=1e-12)
    assert float(row["ci95_low"]) == pytest.approx(t.confidence_interval().low, rel=1e-10)
    assert float(row["ci95_high"]) == pytest.approx(t.confidence_interval().high, rel=1e-10)
    assert float(row["t_p"]) == pytest.approx(t.pvalue, rel=1e-10)
    assert float(row["wilcoxon_exact_p"]) == pytest.approx(stats.wilcoxon(d, method="exact").pvalue, rel=1e-12)
    walsh = [(d[i] + d[j]) / 2 for i in range(5) for j in range(i, 5)]
    assert float(row["hodges_lehmann"]) == pytest.approx(np.median(walsh), rel=1e-12)
    # Holm over the settings of (gence, nll) in block main: the 3 regimes, adjusted by hand
    fam = [r for r in rows if r["block"] == "main" and r["loss"] == "gence" and r["metric"] == "nll"]
    ps = [stats.ttest_1samp(diffs(r["regime"], "test/nll", main)[1], 0.0).pvalue for r in fam]
    order = np.argsort(ps)
    want = np.minimum(1, np.maximum.accumulate([(len(ps) - i) * ps[k] for i, k in enumerate(order)]))
    got = [float(fam[k]["t_p_holm"]) for k in order]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_same_loss_under_two_names_is_shown_once(tmp_path):
    grid = parse_grid(textwrap.dedent('''
        [train]
        epochs = 1
        [[grid]]
        name = "main"
        datasets = ["digits"]
        regimes = ["balanced:5"]
        models = ["small_cnn"]
        seeds = [0, 1, 2]
        losses = ["ce", "gence", "logit_adjusted", "balanced_softmax"]
        '''), name="twins")

    def run(config):
        m, extras = fake_run(config)
        if config["loss"] in ("logit_adjusted", "balanced_softmax"):   # the same numbers, as tau=1 gives
            m = {k: v + 0.003 for k, v in fake_run({**config, "loss": "ce"})[0].items()}
        m["train/seconds"] = hash(config["loss"]) % 100                 # timing differs and does not count
        return m, extras

    db = tmp_path / "twins.sqlite"
    run_grid(grid.runs, db, run_fn=run, progress=False, grid_text=(grid.name, None, grid.text))
    results = load_results(db)
    assert results.same_as == {"logit_adjusted": "balanced_softmax"}
    assert {g.label for g in results.groups} == {"ce", "gence", "balanced_softmax"}
    rep = write_report(db, tmp_path / "out", with_plots=False)
    assert "| balanced_softmax = logit_adjusted |" in rep.summary
    assert "`logit_adjusted` gave exactly the same metrics as `balanced_softmax`" in rep.markdown


def test_reusable_writer_and_report_cli(report, tmp_path, capsys):
    db, _, _, _ = report
    rep = write_report(db, tmp_path, title="Results", markdown_path=tmp_path / "RESULTS.md",
                       sections=[DEFAULT_SECTIONS[0], text("Regenerate: `make`"), *DEFAULT_SECTIONS[1:3],
                                 text("## Verdict\n\nGenCE: mixed."), *DEFAULT_SECTIONS[3:]],
                       command="gence report runs.sqlite -o .", with_plots=False)
    md = (tmp_path / "RESULTS.md").read_text()
    assert md.index("Regenerate: `make`") < md.index("## Setup") < md.index("## Verdict")
    assert "`gence report runs.sqlite -o .`" in md and "](tables/" in md
    assert not (tmp_path / "plots").exists()
    assert rep.summary in md
    assert main(["report", str(db), "-o", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "Test error %" in printed and "| digits | small_cnn | balanced:5 |" in printed
    assert main(["report", str(tmp_path / "missing.sqlite"), "-o", str(tmp_path / "x")]) == 2


# ----------------------------------------------------------------------------------- number formatting
def test_a_value_that_rounds_to_zero_has_no_minus_sign():
    assert T.fmt_num(-0.001, 2) == "0.00"
    assert T.fmt_num(-0.001, 2, signed=True) == "+0.00"
    assert T.fmt_num(-0.00004, 2, 100) == "0.00"           # -0.004 after the scale
    assert T.fmt_num(-0.0004, 3) == "0.000" and T.fmt_num(-0.04, 1) == "0.0"
    assert T.fmt_mean_std(-0.001, 0.002, 1, 2) == "0.00 ± 0.00"
    assert signed(-0.001) == "+0.00" and signed(-0.0049, 2) == "+0.00"
    # what does not round to zero keeps its sign: '-' plain, '−' (U+2212) in a signed difference
    assert T.fmt_num(-0.006, 2) == "-0.01" and T.fmt_num(-0.006, 2, signed=True) == "−0.01"
    assert T.fmt_num(0.004, 2, signed=True) == "+0.00" and T.fmt_num(1.255, 1, signed=True) == "+1.3"
    assert T.fmt_num(float("nan"), 2, signed=True) == "–" and T.fmt_num(None) == "–"


NEAR_ZERO_GRID = """
[verdict]
few_labels = ["main"]

[train]
epochs = 1
ood = ["gaussian_noise"]

[[grid]]
name = "main"
datasets = ["digits"]
regimes = ["balanced:5", "balanced:20"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = ["ce", "gence"]
"""


def near_zero_run(config):
    """CE and GenCE with the same metrics but for GenCE's -1e-5 * (seed + 1) on each: every paired difference
    is negative and rounds to 0 at the report's digits (-0.001 pp at most in the tables' scale of 100)."""
    h = int(hashlib.sha256(f"{config['regime']}/{config['seed']}".encode()).hexdigest()[:8], 16) / 16 ** 8
    shift = -1e-5 * (config["seed"] + 1) if config["loss"] == "gence" else 0.0
    n = float(config["regime"].split(":")[-1])
    m = {}
    for split in ("val", "test", "val_ts", "test_ts"):
        for i, k in enumerate(("error", "nll", "brier", "ece", "adaece", "classwise_ece", "mce")):
            m[f"{split}/{k}"] = 1 / n ** 0.5 + 0.04 * h + 0.01 * i + shift
    m["ood/gaussian_noise/msp/auroc"] = 0.8 + 0.1 * h + shift
    m["ood/gaussian_noise/msp/fpr95"] = 0.5 - 0.1 * h + shift
    bins = {"edges": [i / 5 for i in range(6)], "count": [0, 2 + config["seed"], 5, 11, 40],
            "accuracy": [None, 0.2, 0.45, 0.7, 0.92 - 0.1 * h], "confidence": [None, 0.3, 0.5, 0.72, 0.95]}
    return m, {"reliability": {"test": bins, "test_ts": bins}, "history": {"loss": [1.0]}}


def test_report_prints_no_negative_zero_and_says_the_reliability_ece_is_pooled(tmp_path, monkeypatch):
    grid = parse_grid(textwrap.dedent(NEAR_ZERO_GRID), name="near-zero")
    db = tmp_path / "near.sqlite"
    run_grid(grid.runs, db, run_fn=near_zero_run, progress=False, grid_text=(grid.name, None, grid.text))
    titles = []
    original = plots.plot_reliability_bins

    def recording(bins, **kwargs):
        fig = original(bins, **kwargs)
        titles.append(kwargs["ax"].get_title())
        return fig

    monkeypatch.setattr(plots, "plot_reliability_bins", recording)
    out = tmp_path / "out"
    assert main(["report", str(db), "-o", str(out), "--verdict"]) == 0
    md = (out / "README.md").read_text()
    # the differences are there (the paired table and the verdict's), and all print as zero without a minus
    assert "## Paired comparison with CE" in md and "## Claim: accuracy with few labels" in md
    p = stats.ttest_1samp([-1e-5, -2e-5, -3e-5], 0.0).pvalue      # GenCE - CE over seeds 0, 1, 2
    assert f"| balanced:5 | gence | 3 | 0.00 [0.00, 0.00] p={p:.3g} | 0.000 [0.000, 0.000] p={p:.3g} |" in md
    assert "| digits | small_cnn | balanced:5 | 3/3 |" in md and "pooled Δ +0.00 [+0.00, +0.00] pp" in md
    assert re.findall(r"[-−]0\.0+(?![0-9])", md) == []
    # 2 settings x (CE, GenCE) x (before, after TS): each panel's ECE is named as the pooled one
    assert len(titles) == 8 and all("seeds pooled" in t and "\npooled ECE = " in t for t in titles)
    section = md.split("### Reliability diagrams, CE and GenCE")[1].split("###")[0]
    assert "![reliability_digits_balanced-5_small_cnn]" in section
    assert "ECE (\"pooled ECE\") is computed on these pooled predictions" in section
    assert "the ECE in the tables is the mean of the per-seed ECEs" in section


def test_setup_shows_the_latest_text_of_a_grid_file_edited_between_runs(tmp_path):
    old = "[[grid]]\nname = 'a'\ndatasets = ['digits']\nregimes = ['balanced:5']\nmodels = ['mlp']\nlosses = ['ce']\nseeds = [0]\n"
    new = old.replace("seeds = [0]", "seeds = [0, 1]  # one more seed")
    db = tmp_path / "r.sqlite"
    for grid_text in (old, new):
        grid = parse_grid(grid_text, name="g")
        run_grid(grid.runs, db, run_fn=lambda c: ({"test/error": 0.5}, {}), progress=False,
                 grid_text=("g", "configs/g.toml", grid_text))
    md = write_report(db, tmp_path / "out", with_plots=False).markdown
    assert md.count("<details>") == 1 and "seeds = [0, 1]  # one more seed" in md and "seeds = [0]\n" not in md
    sha_old = hashlib.sha256(old.encode()).hexdigest()[:12]
    assert f"the latest of 2 versions stored, the earlier ones {sha_old} (" in md


def test_error_vs_labels_with_one_budget_keeps_the_points_near_the_middle(tmp_path):
    # one labels-per-class value: the losses' dodged points sit near the middle of the (log) x-axis,
    # not on its two edges
    grid = parse_grid(textwrap.dedent(GRID).replace('"balanced:5", "balanced:20", "long_tailed:10:50"',
                                                    '"balanced:20"'))
    db = tmp_path / "one.sqlite"
    run_grid([r for r in grid.runs if r.grid == "main"], db, run_fn=fake_run, progress=False)
    results = load_results(db)
    fig = plots._figure()
    ax = fig.subplots()
    plots._error_vs_labels_axes(ax, results, results.settings(), ["ce", "gence"])
    lo, hi = (math.log(v) for v in ax.get_xlim())
    xs = [x for line in ax.get_lines() for x in line.get_xdata()]
    assert len(xs) >= 2 and all(abs((math.log(x) - lo) / (hi - lo) - 0.5) < 0.1 for x in xs)


def test_forest_keeps_long_setting_names_and_its_axis_label_inside_the_image():
    # the study's glance plots name each setting with its block: at the figure's fixed width such names
    # had pushed the axis label past the image's right edge (RESULTS.md's calibration figure, 2026-12-06)
    long = "fashion_mnist / resnet8 / long_tailed:100:500 [main_lt_fashion_mnist_resnet8]"
    rows = [(long, {"before TS": (-0.2, -12.5, 12.0), "after TS": (0.3, -3.0, 3.4)}),
            (long.replace("long_tailed:100:500", "balanced:50"), {"before TS": (-0.4, -0.8, 0.1)}),
            ("pooled", {"before TS": (-0.2, -0.6, 0.1), "after TS": (0.0, -0.7, 0.6)})]
    fig = plots.forest_figure(rows, "Calibration: ECE before and after temperature scaling",
                              "gence − ce, ECE (pp): mean over paired seeds, 95% CI; lower is better")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    inside = fig.bbox
    for artist in [fig.axes[0].xaxis.label, fig.axes[0].title, *fig.axes[0].get_yticklabels()]:
        box = artist.get_window_extent(renderer)
        assert inside.x0 - 1 <= box.x0 and box.x1 <= inside.x1 + 1, (artist.get_text(), box, inside)
    assert fig.axes[0].get_yticklabels()[-1].get_text() == "fashion_mnist / resnet8 / long_tailed:100:500\n" \
                                                          "[main_lt_fashion_mnist_resnet8]"


def test_setup_counts_runs_per_precision(report, tmp_path):
    """The setup line says how many runs trained in which arithmetic: from extras["precision"] where a run
    stored it, else from amp (float32 when off). Set so here by hand in SQLite: one run's extras say it ran
    float32 for amp, two runs have amp on and no such field (bf16 on this CPU, as amp meant before)."""
    db, _, _, _ = report
    copy = tmp_path / "precision.sqlite"
    sqlite3.connect(db).backup(con := sqlite3.connect(copy))
    rows = con.execute("SELECT key, extras, config, grid FROM runs WHERE status='done' ORDER BY key").fetchall()
    fallback = "float32 (amp: no bf16 kernels on this CPU)"
    for i, (key, extras, config, _) in enumerate(rows[:3]):
        extras, config = json.loads(extras), json.loads(config)
        config["amp"] = True
        if i == 0:
            extras["precision"] = fallback
        con.execute("UPDATE runs SET extras=?, config=? WHERE key=?", (json.dumps(extras), json.dumps(config), key))
    con.commit()
    con.close()
    write_report(copy, tmp_path / "out", title="t", with_plots=False)
    md = (tmp_path / "out" / "README.md").read_text()
    # the most common precision (float32) names no blocks; each other one names the blocks of its runs
    b1, b2 = sorted([rows[1][3], rows[2][3]])
    bf16_blocks = f"2 in {b1}" if b1 == b2 else f"1 in {b1}, 1 in {b2}"
    line = next(x for x in md.splitlines() if x.startswith("- Precision: "))
    assert line.startswith(f"- Precision: bfloat16 autocast (2 runs: {bf16_blocks}); float32 ({len(rows) - 3} runs); "
                           f"{fallback} (1 runs: 1 in {rows[0][3]})"), line
    # a seed of a setting whose runs (any loss) differ in precision: each of the 3 edited runs makes its
    # seed mixed when another run of that seed was left float32; counted here from the rows themselves
    kinds: dict[tuple, set] = {}
    for i, (_, _, config, grid) in enumerate(rows):
        c = json.loads(config)
        kinds.setdefault((grid, c["dataset"], c["regime"], c["model"], c["seed"]), set()).add(
            "bf16" if i in (1, 2) else fallback if i == 0 else "float32")
    mixed: dict[str, int] = {}
    for (grid, *_), k in kinds.items():
        if len(k) > 1:
            mixed[grid] = mixed.get(grid, 0) + 1
    assert mixed, "the edited runs should share a seed with float32 runs"
    assert line.endswith(f"; {sum(mixed.values())} seed(s) of a setting have runs in more than one (paired "
                         "comparisons pair them): " + ", ".join(f"{n} in {g}" for g, n in sorted(mixed.items()))), line
