"""Convergence: the validation-curve section and the convergence pilot, on a database written by the runner
with a fake run function whose histories and metrics are set by hand (expected numbers from the formulas
below, not from the report's code); an old database without histories reports without the section."""
from __future__ import annotations

import csv
import math
import textwrap

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gence.cli import main
from gence.experiments import parse_grid, run_grid
from gence.report import write_report
from gence.report import convergence as C
from gence.report import plots
from gence.report.convergence import ConvergenceError, ConvergenceSpec, plateau_change
from gence.report.sections import with_pilot
from gence.report.tables import Run, load_results

CONVERGENCE = """
[convergence]
train_error_below = 0.01
floor_within = 0.05
test_error_change_below = 0.003
losses = ["ce", "gence"]
"""
GRID = CONVERGENCE + """
[[grid]]
name = "pilot"
datasets = ["digits"]
regimes = ["balanced:5", "balanced:20"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = ["ce", "gence", "label_smoothing"]
sweep = { epochs = [5, 10, 20] }

[[grid]]
name = "other_lr"
datasets = ["digits"]
regimes = ["balanced:5"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = ["ce"]
train = { epochs = 10, lr = 0.2 }
"""
# test error per (regime, loss) and epochs, + 0.001 * seed
TEST = {("balanced:5", "ce"): {5: 0.30, 10: 0.29, 20: 0.289},          # 5->10: -1 pp, 10->20: -0.1 pp
        ("balanced:5", "gence"): {5: 0.28, 10: 0.275, 20: 0.277},      # -0.5 pp, +0.2 pp
        ("balanced:20", "ce"): {5: 0.30, 10: 0.29, 20: 0.289},
        ("balanced:20", "gence"): {5: 0.20, 10: 0.19, 20: 0.195},      # 10->20: +0.5 pp: fails
        }
TRAIN_ERROR = {"ce": {5: 0.05, 10: 0.005, 20: 0.0}, "gence": {5: 0.1, 10: 0.02, 20: 0.01},
               "label_smoothing": {5: 0.2, 10: 0.2, 20: 0.2}}
GAP = {"ce": {5: 0.2, 10: 0.01, 20: 0.001}, "gence": {5: 0.5, 10: 0.03, 20: 0.02},
       "label_smoothing": {5: 0.9, 10: 0.8, 20: 0.7}}
FLOOR = {"ce": 0.0, "gence": 0.7, "label_smoothing": 9.0}   # the loop's floor: the loss at certain, right logits
# label smoothing's least loss (its default alpha 0.1, 10 classes): the entropy of its target, by scipy
LS_FLOOR = float(scipy_stats.entropy([0.9 + 0.1 / 10] + [0.1 / 10] * 9))


def val_error(p: float, seed: int) -> float:
    return 0.5 * (1 + 0.1 * seed) * (1 - p) ** 2 + 0.1 + 0.01 * seed   # each seed's own slope


def eval_epochs(epochs: int) -> list[int]:
    step = 2 if epochs <= 10 else 3
    return sorted({*range(step, epochs + 1, step), epochs})


def fake_run(config):
    e, seed, loss, regime = config["epochs"], config["seed"], config["loss"], config["regime"]
    if config["lr"] == 0.2:
        test = 0.5
    else:
        test = TEST.get((regime, loss), {5: 0.3, 10: 0.2, 20: 0.1})[e]
    m = {"test/error": test + 0.001 * seed, "val/error": 0.2, "val/nll": 0.5,
         "train/error": TRAIN_ERROR[loss][e],
         "train/loss": GAP[loss][e] + (LS_FLOOR if loss == "label_smoothing" else FLOOR[loss]),
         "train/loss_floor": FLOOR[loss]}
    history = []
    for epoch in range(1, e + 1):
        h = {"epoch": epoch, "loss": 1.0 / epoch, "lr": 0.1, "seconds": float(epoch)}
        if epoch in eval_epochs(e):
            p = epoch / e
            h.update({"progress": p, "val/error": val_error(p, seed), "val/nll": 2 * val_error(p, seed),
                      "val/ece": 0.05})
        history.append(h)
    return m, {"history": history, "data": {"class_counts": [5] * 10}}


def old_run(config):
    """A run stored before histories had validation points."""
    m, _ = fake_run(config)
    return {k: v for k, v in m.items() if not k.startswith("train/")}, {"history": {"loss": [1.0]}}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("convergence")
    grid = parse_grid(textwrap.dedent(GRID), name="conv-grid")   # the grid loader accepts [convergence]
    path = tmp / "runs.sqlite"
    s = run_grid(grid.runs, path, run_fn=fake_run, progress=False, grid_text=(grid.name, None, grid.text))
    assert s.failed == 0
    return path


@pytest.fixture(scope="module")
def report(db, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv-out")
    return write_report(db, out), out


def section(md: str, heading: str) -> str:
    start = md.index(heading + "\n")
    rest = md[start + len(heading) + 1:]
    nxt = rest.find("\n## ")
    return rest if nxt < 0 else rest[:nxt]


def sub(md: str, heading: str) -> str:
    start = md.index(heading + "\n")
    rest = md[start + len(heading) + 1:]
    nxt = rest.find("\n### ")
    return rest if nxt < 0 else rest[:nxt]


def fmt_signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def expected_plateau(epochs: int, seed: int) -> float:
    pts = [ep / epochs for ep in eval_epochs(epochs)]
    before = [p for p in pts if p <= 0.8 + 1e-9]
    return val_error(1.0, seed) - val_error(before[-1], seed)


def test_plateau_change_by_hand():
    # eval at progress 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0 (20 epochs, every 3rd and the last)
    run = Run("k", {"seed": 0}, "ce", {}, fake_run({"epochs": 20, "seed": 0, "loss": "ce", "regime": "balanced:5",
                                                     "lr": 0.1})[1], 0.0, "cpu", {})
    assert plateau_change(run) == pytest.approx(val_error(1.0, 0) - val_error(0.75, 0))
    assert plateau_change(run) == pytest.approx(0.1 - (0.5 * 0.0625 + 0.1))
    no_history = Run("k", {}, "ce", {}, {"history": {"loss": [1.0]}}, 0.0, "cpu", {})
    assert math.isnan(plateau_change(no_history))


def test_convergence_tables_and_plots(report):
    rep, out = report
    md = section(rep.markdown, "## Convergence")
    table = sub(md, "### digits, balanced:5, small_cnn")
    for loss in ("ce", "gence", "label_smoothing"):
        for e in (5, 10, 20):
            line = next(x for x in table.splitlines() if x.startswith(f"| {loss} [epochs={e}] (pilot) |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[1] == "3"
            assert cells[2] == f"{100 * TRAIN_ERROR[loss][e]:.2f}"
            assert cells[3].split()[0] == f"{GAP[loss][e]:.3f}"
            assert "‡" not in cells[3]   # label smoothing's gap is to its own floor, not the stored one
            assert cells[4] == f"{100 * sum(val_error(1.0, s) for s in range(3)) / 3:.2f}"
            changes = [expected_plateau(e, s) for s in range(3)]
            mean, sd = sum(changes) / 3, float(np.std(changes, ddof=1))
            half = scipy_stats.t.ppf(0.975, 2) * sd / math.sqrt(3)   # Student-t, 2 degrees of freedom
            assert cells[5] == (f"{fmt_signed(100 * mean)} [{fmt_signed(100 * (mean - half))}, "
                                f"{fmt_signed(100 * (mean + half))}]")
    assert "for label smoothing the entropy of its smoothed target" in md
    pngs = sorted(p.name for p in (out / "plots").glob("convergence_*.png"))
    assert pngs == ["convergence_digits_balanced-20_small_cnn.png", "convergence_digits_balanced-5_small_cnn.png"]
    for p in (out / "plots").glob("convergence_*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p in rep.files
    assert "convergence_digits_balanced-5_small_cnn.png" in md


def test_convergence_curves_run_in_epochs_done():
    # 20 epochs, evaluated at epochs 3, 6, ..., 18 and 20: x is progress x epochs, not progress
    runs = [Run("k", {"seed": s, "epochs": 20}, "ce", {}, fake_run({"epochs": 20, "seed": s, "loss": "ce",
                                                                     "regime": "balanced:5", "lr": 0.1})[1],
                0.0, "cpu", {}) for s in (0, 2)]
    xs, mean, lo, hi = C.curve(runs, "val/error")
    assert xs == pytest.approx([3, 6, 9, 12, 15, 18, 20])
    assert mean[1] == pytest.approx((val_error(0.3, 0) + val_error(0.3, 2)) / 2)
    assert (lo[1], hi[1]) == pytest.approx((val_error(0.3, 0), val_error(0.3, 2)))


def test_log_budget_ticks_leave_out_labels_that_would_overlap():
    # the CIFAR-10 pilot's budgets (epochs): each and a tenth of it, by hand; 400 (a tenth of 4000) lies a
    # factor 1.25 from the budget 500 and is left out, 200 (a budget and a tenth of 2000) is placed once
    assert plots.log_budget_ticks([500, 1000, 2000, 4000, 500]) == [50, 100, 200, 500, 1000, 2000, 4000]
    assert plots.log_budget_ticks([10, 20]) == [1, 2, 10, 20]
    # budgets come first: a tenth never displaces a budget, and of two close budgets the smaller stays
    assert plots.log_budget_ticks([400, 500]) == [40, 400]


def test_pilot_plots_the_error_at_every_budget(db, report):
    rep, out = report
    settings = {s.setting[1]: s for s in C.pilot(load_results(db), ConvergenceSpec())}
    five = settings["balanced:5"].errors
    # every budget, the largest (20, no 2E partner) too; test error + 0.001 * seed
    assert sorted(five) == ["ce", "gence", "label_smoothing"]
    assert five["gence"][20] == pytest.approx({s: 0.277 + 0.001 * s for s in range(3)})
    assert five["ce"][5] == pytest.approx({s: 0.30 + 0.001 * s for s in range(3)})
    pngs = sorted(p.name for p in (out / "plots").glob("pilot_*.png"))
    assert pngs == ["pilot_digits_balanced-20_small_cnn.png", "pilot_digits_balanced-5_small_cnn.png"]
    md = section(rep.markdown, "## Convergence pilot")
    assert "(plots/pilot_digits_balanced-5_small_cnn.png)" in md and (out / "plots" / pngs[0]) in rep.files


def test_pilot_picks_the_smallest_passing_budget(report):
    md = section(report[0].markdown, "## Convergence pilot")
    assert "train error at E < 1%" in md and "< 0.05 nats" in md and "< 0.3 pp" in md
    assert "| digits / balanced:5 / small_cnn | 5 (fails), 10 (passes) | **10** |" in md
    assert "| digits / balanced:20 / small_cnn | 5 (fails), 10 (fails) | none of the tried budgets |" in md
    # the lr=0.2 block differs in more than epochs: no setting of its own, never paired
    assert "lr=" not in md
    five = sub(md, "### digits / balanced:5 / small_cnn")
    assert "E = 5: **fails**; E = 10: **passes**." in five
    twenty = sub(md, "### digits / balanced:20 / small_cnn")
    assert "E = 5: **fails**; E = 10: **fails**." in twenty
    # gence at E=10 in balanced:5: train error 2% fails, but the loss is 0.03 nats from its floor
    line = next(x for x in five.splitlines() if x.startswith("| gence | 10 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "3" and cells[3] == "2.00" and cells[4] == "0.030"
    assert cells[5] == f"{100 * (0.275 + 0.001):.2f}" and cells[6] == f"{100 * (0.277 + 0.001):.2f}"
    assert cells[7].startswith("+0.20") and cells[8:] == ["yes", "yes"]
    line = next(x for x in five.splitlines() if x.startswith("| ce | 5 |"))
    assert line.endswith("| no | no |")   # 5% train error, 0.2 nats from the floor; -1 pp at 2E
    # label_smoothing fails everywhere but is not judged; shown with the floor note
    assert next(x for x in five.splitlines() if x.startswith("| label_smoothing | 10 |")).endswith("| no | no |")


def test_judging_every_loss_and_other_thresholds(db, tmp_path):
    every = ConvergenceSpec()   # defaults: every loss of the setting judged -> label_smoothing fails all
    md = section(write_report(db, tmp_path / "a", sections=with_pilot(every), with_plots=False).markdown,
                 "## Convergence pilot")
    assert "| digits / balanced:5 / small_cnn | 5 (fails), 10 (fails) | none of the tried budgets |" in md
    loose = ConvergenceSpec(train_error_below=0.2, test_error_change_below=0.011, losses=("ce", "gence"))
    md = section(write_report(db, tmp_path / "b", sections=with_pilot(loose), with_plots=False).markdown,
                 "## Convergence pilot")
    assert "| digits / balanced:5 / small_cnn | 5 (passes), 10 (passes) | **5** |" in md
    assert "| digits / balanced:20 / small_cnn | 5 (passes), 10 (passes) | **5** |" in md


def test_old_database_reports_without_convergence_sections(tmp_path):
    grid = parse_grid(textwrap.dedent(GRID.replace(CONVERGENCE, "")), name="old")
    path = tmp_path / "old.sqlite"
    run_grid(grid.runs, path, run_fn=old_run, progress=False, grid_text=(grid.name, None, grid.text))
    rep = write_report(path, tmp_path / "out")
    assert "## Convergence" not in rep.markdown and "## Per" not in rep.markdown
    assert "## Summary" in rep.markdown
    assert not list((tmp_path / "out" / "plots").glob("convergence_*"))
    # with a [convergence] table but runs without train metrics: nothing fits, and says so
    md = write_report(path, tmp_path / "out2", sections=with_pilot(ConvergenceSpec()), with_plots=False).markdown
    assert "| digits / balanced:5 / small_cnn | 5 (fails), 10 (fails) | none of the tried budgets |" in md


def test_convergence_table_errors_name_the_key():
    with pytest.raises(ConvergenceError, match=r"unknown key 'floor'.*valid keys: train_error_below"):
        ConvergenceSpec.from_table({"floor": 0.1})
    with pytest.raises(ConvergenceError, match=r"\[convergence\]\.train_error_below = 2: expected a fraction"):
        ConvergenceSpec.from_table({"train_error_below": 2})
    with pytest.raises(ConvergenceError, match=r"floor_within = -1: expected a positive number"):
        ConvergenceSpec.from_table({"floor_within": -1})
    with pytest.raises(ConvergenceError, match=r"losses = \[\]: expected a non-empty list"):
        ConvergenceSpec.from_table({"losses": []})
    assert ConvergenceSpec.from_table({"losses": "ce", "floor_within": 1}) == ConvergenceSpec(floor_within=1.0,
                                                                                             losses=("ce",))


def test_report_command_takes_the_table_of_a_given_grid(db, tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text("[convergence]\ntrain_error_below = 0.2\ntest_error_change_below = 0.011\n"
                    'losses = ["ce", "gence"]\n')
    out = tmp_path / "rep"
    assert main(["report", str(db), "-o", str(out), "--convergence", str(grid)]) == 0
    md = (out / "README.md").read_text()
    assert "| digits / balanced:20 / small_cnn | 5 (passes), 10 (passes) | **5** |" in md
    assert f"--convergence {grid}" in md
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = 1\n")
    assert main(["report", str(db), "-o", str(out), "--convergence", str(bad)]) == 2
    assert "has no [convergence] table" in capsys.readouterr().err


def test_a_pass_followed_by_a_fail_is_not_the_budget_picked():
    # passes at 1, fails at 2, passes at 4: the budget picked is 4; what the verdict says of each budget
    s = C.PilotSetting("d / r / m", [], [1, 2, 4], {1: True, 2: False, 4: True}, {1: [], 2: [], 4: []},
                       ("d", "r", "m"))
    assert s.smallest == 4 and [s.settled(e) for e in (1, 2, 4, 8)] == [False, False, True, False]
    status = [C.budget_status([s], ("d", "r", "m"), e) for e in (1, 2, 4, 8)]
    assert status == [C.LATER_FAILS, C.FAILS, C.PASSES, C.UNTESTED]
    assert C.budget_status([s], ("d", "r2", "m"), 4) == C.NOT_IN_PILOT
    # another model of a regime the pilot ran: not a pass for it, with what the rule says of the pilot's model
    assert C.budget_status([s], ("d", "r", "other"), 4) == "not in the pilot; m here: passes"
    assert C.budget_status([s], ("d", "r", "other"), 2) == "not in the pilot; m here: fails"


# the change of test error from E = 10 to 2E = 20 per (regime, loss) and seed; balanced:10 has no gence run
# at 20 epochs, so gence pools 2 settings there (its largest E, 10, lacks gence: not judged at E = 5)
POOL_CHANGE = {("balanced:5", "ce"): [-0.004, 0.001, -0.002], ("balanced:20", "ce"): [0.003, 0.006, 0.001],
               ("balanced:10", "ce"): [-0.010, -0.003, -0.007],
               ("balanced:5", "gence"): [-0.012, -0.005, -0.009], ("balanced:20", "gence"): [0.002, -0.001, -0.004]}
POOL_GRID = CONVERGENCE + """
[[grid]]
name = "both"
datasets = ["digits"]
regimes = ["balanced:5", "balanced:20"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = ["ce", "gence"]
sweep = { epochs = [5, 10, 20] }

[[grid]]
name = "ce_only_at_20"
datasets = ["digits"]
regimes = ["balanced:10"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = ["ce"]
sweep = { epochs = [5, 10, 20] }

[[grid]]
name = "gence_short"
datasets = ["digits"]
regimes = ["balanced:10"]
models = ["small_cnn"]
seeds = [0, 1, 2]
losses = ["gence"]
sweep = { epochs = [5, 10] }
"""


def pool_run(config):
    e, seed, loss, regime = config["epochs"], config["seed"], config["loss"], config["regime"]
    test = 0.3 + 0.001 * seed + {5: 0.02, 10: 0.0, 20: POOL_CHANGE.get((regime, loss), [0.0] * 3)[seed]}[e]
    return {"test/error": test, "train/error": 0.0, "train/loss": 0.01, "train/loss_floor": 0.0}, {}


def by_hand(changes: list[list[float]], tol: float = 0.003) -> dict:
    """Random effects (t over setting means), fixed effect (pooled within-setting variance) and TOST, with
    numpy and scipy."""
    d = [np.asarray(c) for c in changes]
    k, ns = len(d), np.array([x.size for x in d])
    means = np.array([x.mean() for x in d])
    m, se = means.mean(), means.std(ddof=1) / np.sqrt(k)
    half = scipy_stats.t.ppf(0.975, k - 1) * se
    s2 = sum(((x - x.mean()) ** 2).sum() for x in d) / (ns.sum() - k)
    mf, se_f = (ns * means).sum() / ns.sum(), np.sqrt(s2 / ns.sum())
    half_f = scipy_stats.t.ppf(0.975, ns.sum() - k) * se_f
    tost = max(scipy_stats.t.sf((m + tol) / se, k - 1), scipy_stats.t.cdf((m - tol) / se, k - 1))
    return {"random": (m, m - half, m + half), "fixed": (mf, mf - half_f, mf + half_f), "tost": tost}


@pytest.fixture(scope="module")
def pool_report(tmp_path_factory):
    """The report (no plots) of POOL_GRID's runs, and its output folder."""
    tmp = tmp_path_factory.mktemp("pool")
    grid = parse_grid(textwrap.dedent(POOL_GRID), name="pool-grid")
    path = tmp / "runs.sqlite"
    assert run_grid(grid.runs, path, run_fn=pool_run, progress=False,
                    grid_text=(grid.name, None, grid.text)).failed == 0
    return write_report(path, tmp / "out", with_plots=False), tmp / "out"


def test_pilot_pools_the_change_over_settings_at_their_largest_budget(pool_report):
    rep, out = pool_report
    md = sub(section(rep.markdown, "## Convergence pilot"), "### Pooled over settings")
    pct = lambda x: fmt_signed(100 * x)   # noqa: E731
    for loss, regimes in (("ce", ["balanced:5", "balanced:10", "balanced:20"]),
                          ("gence", ["balanced:5", "balanced:20"])):
        want = by_hand([POOL_CHANGE[(r, loss)] for r in regimes])
        line = next(x for x in md.splitlines() if x.startswith(f"| {loss} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:3] == [str(len(regimes)), str(3 * len(regimes))]
        assert cells[3] == "{} [{}, {}]".format(*map(pct, want["random"]))
        assert cells[4] == "{} [{}, {}]".format(*map(pct, want["fixed"]))
        assert cells[6] == f"{want['tost']:.3g}"
    # how gence's difference from ce moved: seed by seed, over the settings both have at E = 10 and 20
    want = by_hand([np.subtract(POOL_CHANGE[(r, "gence")], POOL_CHANGE[(r, "ce")]) for r in ("balanced:5",
                                                                                            "balanced:20")])
    line = next(x for x in md.splitlines() if x.startswith("| gence − ce |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == ["2", "6", "{} [{}, {}]".format(*map(pct, want["random"]))]
    assert cells[4] == "{} [{}, {}]".format(*map(pct, want["fixed"])) and cells[6] == f"{want['tost']:.3g}"
    # the settings differ between the losses: each loss says which it pooled, at E = 10
    assert ("`gence`: settings pooled, each at its largest E: digits / balanced:5 / small_cnn (E = 10); "
            "digits / balanced:20 / small_cnn (E = 10).") in md
    assert "`ce`: settings pooled" in md and "digits / balanced:10 / small_cnn (E = 10)" in md
    # the CSV has the unrounded numbers
    rows = {r["loss"]: r for r in csv.DictReader(open(out / "tables" / "convergence_pooled.csv"))}
    want = by_hand([POOL_CHANGE[(r, "gence")] for r in ("balanced:5", "balanced:20")])
    assert [float(rows["gence"][k]) for k in ("random_mean", "random_low", "random_high")] == \
        pytest.approx(want["random"])
    assert float(rows["gence"]["tost_p"]) == pytest.approx(want["tost"])


def test_pilot_shows_how_the_difference_between_judged_losses_moved_per_setting(pool_report):
    rep, out = pool_report
    md = section(rep.markdown, "## Convergence pilot")
    pct = lambda x: fmt_signed(100 * x)   # noqa: E731
    for regime in ("balanced:5", "balanced:20"):
        text = sub(md, f"### digits / {regime} / small_cnn")
        # E = 10: both losses at 0.3 + 0.001 * seed, so gence − ce is 0 there and, at 2E, the difference of
        # the two losses' changes; its change's t interval over the 3 seeds by scipy
        d = np.subtract(POOL_CHANGE[(regime, "gence")], POOL_CHANGE[(regime, "ce")])
        half = scipy_stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
        line = next(x for x in text.splitlines() if x.startswith("| gence − ce | 10 |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2:] == ["3", "+0.00", pct(d.mean()),
                             "{} [{}, {}]".format(pct(d.mean()), pct(d.mean() - half), pct(d.mean() + half))]
        # E = 5: both losses 2 pp higher than at 10, seed by seed: the difference did not move
        line = next(x for x in text.splitlines() if x.startswith("| gence − ce | 5 |"))
        assert [c.strip() for c in line.strip("|").split("|")][2:5] == ["3", "+0.00", "+0.00"]
    # balanced:10: gence has no run at 20 epochs, so only E = 5 has both losses at E and 2E
    ten = sub(md, "### digits / balanced:10 / small_cnn")
    assert "| gence − ce | 5 |" in ten and "| gence − ce | 10 |" not in ten
    # the CSV has the unrounded numbers
    rows = [r for r in csv.DictReader(open(out / "tables" / "convergence_differences.csv"))
            if r["setting"] == "digits / balanced:5 / small_cnn" and r["epochs"] == "10"]
    d = np.subtract(POOL_CHANGE[("balanced:5", "gence")], POOL_CHANGE[("balanced:5", "ce")])
    assert (rows[0]["loss"], rows[0]["base"], rows[0]["seeds"]) == ("gence", "ce", "3")
    assert float(rows[0]["difference_2x"]) == pytest.approx(d.mean())
    assert float(rows[0]["change_mean"]) == pytest.approx(d.mean())
    assert float(rows[0]["change_high"]) - float(rows[0]["change_mean"]) == pytest.approx(
        scipy_stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3))
