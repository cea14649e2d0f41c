"""Convergence: validation curves per setting, and the convergence pilot (is a budget of E epochs enough?).

:func:`convergence` (a default section) draws, for every setting whose runs stored a validation history
(``extras["history"]`` entries with ``progress`` and ``val/error``; ``TrainConfig.eval_every``), validation
error and NLL against training progress, one line per loss (mean over seeds, the seeds' range shaded), and a
table per setting: final train error, distance of the training loss from its floor, and the change of
validation error over the last 20% of training (mean over seeds with its Student-t 95% interval). It says
nothing when no run has such a history.

:func:`pilot_section` (also a default section) judges the runs that differ only in ``epochs`` (E and 2E)
and the seed, by the rule of a grid file's ``[convergence]`` table (:class:`ConvergenceSpec`)::

    [convergence]
    train_error_below = 0.01          # train error at E below this (fraction) ...
    floor_within = 0.05               # ... or train loss within this many nats of its floor
    test_error_change_below = 0.003   # and |test error(2E) - test error(E)| below this (fraction)
    losses = ["ce", "gence"]          # labels judged (default: every label of the setting)

E passes for a setting when every judged loss meets both conditions (means over the seeds run at both E
and 2E); the section gives per setting the smallest E that passes with every larger E judged. Without a ``[convergence]`` table (in the
grid files stored in the database, or given) it says nothing. Beside the rule, :func:`pooled_changes` pools
each judged loss's change from E to 2E over the settings, at each setting's largest E (the view over
settings, which resolves a smaller average move than 1-2 seeds resolve in one setting; it judges no setting).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from gence.contract import canonical_json, key_fields
from gence.losses.classification import LabelSmoothing
from gence.report import plots
from gence.report import tables as T
from gence.report.columns import HISTORY, HISTORY_PROGRESS, METRIC, SOFT_TARGET_LOSSES
from gence.report.stats import (PairedDifference, Pooled, equivalence_p, fmt_p, mean_interval, mean_std,
                                paired_difference, pool)

# label smoothing's alpha where a run's loss_params leave it out: the loss's own default
LABEL_SMOOTHING_ALPHA = inspect.signature(LabelSmoothing).parameters["alpha"].default

PLATEAU_WINDOW = 0.2          # the last fraction of training over which the plateau measure is taken
CURVE_METRICS = ("val_error", "val_nll")   # the panels of the convergence plot (METRIC names)
PILOT_FIELD = "epochs"        # the budget the pilot doubles
PILOT_FREE = ("seed", PILOT_FIELD, "loss", "loss_params")   # fields that may differ within a pilot setting
_TOL = 1e-9

if TYPE_CHECKING:   # the sections module lists these sections among its defaults, so it imports this one
    from gence.report.sections import Context


# ------------------------------------------------------------------------------------------ histories
def eval_points(run: T.Run) -> list[dict]:
    """The entries of a run's history with a validation evaluation (``progress`` and ``val/error``), in
    order of progress; empty for runs without such a history (older runs, ``eval_every`` off)."""
    history = run.extras.get(HISTORY) if isinstance(run.extras, dict) else None
    if not isinstance(history, list):
        return []
    points = [h for h in history if isinstance(h, dict) and HISTORY_PROGRESS in h and METRIC["val_error"] in h]
    return sorted(points, key=lambda h: float(h[HISTORY_PROGRESS]))


def plateau_change(run: T.Run, window: float = PLATEAU_WINDOW) -> float:
    """Validation error at the last evaluation minus that at the last evaluation at least ``window`` of
    training before it (NaN when there is none): how much the run still improved at the end."""
    points = eval_points(run)
    if not points:
        return math.nan
    last = points[-1]
    before = [h for h in points if float(h[HISTORY_PROGRESS]) <= float(last[HISTORY_PROGRESS]) - window + _TOL]
    if not before:
        return math.nan
    return float(last[METRIC["val_error"]]) - float(before[-1][METRIC["val_error"]])


def loss_floor(run: T.Run) -> float:
    """The smallest training loss the run's loss can reach: the stored ``train/loss_floor``, the loss of logits
    certain and right (the infimum for CE, focal and GenCE), except for a soft-target loss
    (:data:`~gence.report.columns.SOFT_TARGET_LOSSES`: label smoothing), whose loss at certain logits is large
    (9 nats at alpha 0.1 and 10 classes: what the loop stores) and whose infimum, at predicted probabilities
    equal to its target ``t = (1 − α) onehot(y) + α / K``, is the entropy of ``t``:
    ``−(1 − α + α/K) log(1 − α + α/K) − (K − 1) (α/K) log(α/K)``, with K the classes the run trained on
    (``extras["data"]["class_counts"]``); NaN when a number it needs is missing."""
    if not _soft(run.config):
        return float(run.metrics.get(METRIC["train_loss_floor"], math.nan))
    data = run.extras.get("data") if isinstance(run.extras, dict) else None
    counts = data.get("class_counts") if isinstance(data, dict) else None
    if not isinstance(counts, list) or len(counts) < 2:
        return math.nan
    k, alpha = len(counts), float((run.config.get("loss_params") or {}).get("alpha", LABEL_SMOOTHING_ALPHA))
    top, rest = 1 - alpha + alpha / k, alpha / k
    return -top * math.log(top) - ((k - 1) * rest * math.log(rest) if rest > 0 else 0.0)


def floor_gap(run: T.Run) -> float:
    """``train/loss`` minus the loss's attainable floor (:func:`loss_floor`); NaN when either is missing."""
    return float(run.metrics.get(METRIC["train_loss"], math.nan)) - loss_floor(run)


def budget(run: T.Run) -> float | None:
    """The run's training budget in epochs (``config["epochs"]``), None when it has none."""
    e = run.config.get(PILOT_FIELD)
    return float(e) if isinstance(e, (int, float)) and not isinstance(e, bool) and e > 0 else None


def curve(runs: Sequence[T.Run], metric: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """Epochs done (progress × the run's epochs; progress alone for a run without ``epochs``), mean, min and
    max over the runs of history metric ``metric`` at each evaluated point."""
    at: dict[float, list[float]] = defaultdict(list)
    for r in runs:
        scale = budget(r) or 1.0
        for h in eval_points(r):
            v = h.get(metric)
            if v is not None and not math.isnan(float(v)):
                at[round(float(h[HISTORY_PROGRESS]) * scale, 6)].append(float(v))
    xs = sorted(at)
    return (xs, [sum(at[x]) / len(at[x]) for x in xs], [min(at[x]) for x in xs], [max(at[x]) for x in xs])


def _mean(values) -> float:
    return mean_std(list(values))[0]


def natural_order(name: str) -> list:
    """Sort key that orders the numbers in a variant name by value (``epochs=5`` before ``epochs=10``)."""
    return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(re.split(r"(\d+(?:\.\d+)?)", name))]


def _pp_interval(low: float, high: float) -> str:
    """`` [low, high]`` in signed percentage points, or nothing when there is no interval (one seed)."""
    if math.isnan(low):
        return ""
    return f" [{T.fmt_num(low, 2, 100, signed=True)}, {T.fmt_num(high, 2, 100, signed=True)}]"


def _soft(config: dict) -> bool:
    return config.get("loss") in SOFT_TARGET_LOSSES


def convergence(ctx: Context) -> str:
    """The convergence section: per setting with validation histories, the plot and the table."""
    results = ctx.results
    md: list[str] = []
    csv_rows = []
    for setting in results.settings():
        lines, styles = [], {}
        colours: dict[str, int] = {}
        budgets: dict[str, set] = defaultdict(set)   # label -> the budgets (epochs) of its lines
        for g in results.groups_of(setting):
            for variant in sorted(g.variants, key=natural_order):
                runs = [r for r in g.variants[variant] if eval_points(r)]
                if not runs:
                    continue
                name = results.display(g.label) + (f" [{variant}]" if variant else "")
                if results.multi_block():
                    name += f" ({g.block})"
                longest = max((budget(r) or 0.0) for r in runs)
                lines.append((name, runs, g.label, longest))
                colours.setdefault(g.label, len(colours))
                budgets[g.label].add(longest)
        if not lines:
            continue
        # one colour per loss; its budgets told apart by line style, the longest solid
        for name, _, label, longest in lines:
            styles[name] = (colours[label], sorted(budgets[label], reverse=True).index(longest))
        lines = [(name, runs) for name, runs, _, _ in lines]
        title = f"{setting[0]}, {setting[1]}, {setting[2]}"
        rows = []
        for name, runs in lines:
            gap = _mean(floor_gap(r) for r in runs)
            change, low, high = mean_interval([plateau_change(r) for r in runs])
            final = _mean(eval_points(r)[-1][METRIC["val_error"]] for r in runs)
            train_err = _mean(r.metrics.get(METRIC["train_error"], math.nan) for r in runs)
            rows.append([name, str(len(runs)), T.fmt_num(train_err, 2, 100),
                         T.fmt_num(gap, 3),
                         T.fmt_num(final, 2, 100), T.fmt_num(change, 2, 100, signed=True) + _pp_interval(low, high)])
            csv_rows.append([*setting, name, len(runs), train_err, gap, final, change, low, high])
        md += [f"### {title}", "", T.markdown_table(
            ["loss", "seeds", "final train error %", "train loss − floor (nats)", "final val error %",
             f"Δ val error, last {PLATEAU_WINDOW:.0%} (pp) [95% CI]"], rows), ""]
        if ctx.with_plots:
            ctx.plots_dir.mkdir(parents=True, exist_ok=True)
            panels = {name: {METRIC[m]: curve(runs, METRIC[m]) for m in CURVE_METRICS} for name, runs in lines}
            path = plots.convergence_curves(panels, ctx.plots_dir / f"convergence_{T.slug(*setting)}.png", title,
                                            [METRIC[m] for m in CURVE_METRICS], styles)
            ctx.files.append(path)
            md += [f"![validation error and NLL against training progress, {title}]({ctx.link(path)})", ""]
    if not md:
        return ""
    head = ["## Convergence", "",
            "Runs that evaluated the validation split during training (`eval_every`): validation error and NLL "
            "against the epochs done, one line per loss and budget (mean over seeds, the seeds' range shaded; "
            "one colour per loss, the longest budget solid; a log axis where budgets differ, so each line ends "
            "at its own budget). Tables: means over seeds of the final model's error on the un-augmented "
            "training subset, of the last epoch's training loss minus its floor (the least loss attainable on the "
            "same batches: that of a model certain and right on every image, 0 for CE; for label smoothing the "
            "entropy of its smoothed target, where a certain model's loss is large), of the final validation "
            "error, and "
            f"of the change of validation error over the last {PLATEAU_WINDOW:.0%} of training (last evaluation "
            f"minus the last one at least {PLATEAU_WINDOW:.0%} of the steps before it; near 0: a plateau), with "
            "the Student-t 95% interval of that mean over the seeds (none for one seed).", ""]
    return "\n".join(head + md + [ctx.csv("convergence.csv", ["dataset", "regime", "model", "loss", "seeds",
                                                              "train_error", "train_loss_minus_floor",
                                                              "final_val_error", "val_error_change_last_20pct",
                                                              "ci_low", "ci_high"],
                                          csv_rows)])


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else value if isinstance(value, str) else canonical_json(value)


# ------------------------------------------------------------------------------------- the pilot rule
class ConvergenceError(ValueError):
    """A ``[convergence]`` table that cannot be used."""


@dataclasses.dataclass(frozen=True)
class ConvergenceSpec:
    """The convergence pilot's rule, from a grid file's ``[convergence]`` table (every key optional; see the
    module docstring). Thresholds in raw units: fractions for errors, nats for the loss."""

    train_error_below: float = 0.01
    floor_within: float = 0.05
    test_error_change_below: float = 0.003
    losses: tuple[str, ...] | None = None

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "[convergence]") -> "ConvergenceSpec":
        if not isinstance(table, Mapping):
            raise ConvergenceError(f"{where} = {table!r}: expected a table")
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            if key not in names:
                raise ConvergenceError(f"{where}: unknown key {key!r}; valid keys: {', '.join(names)}")
            if key == "losses":
                value = [value] if isinstance(value, str) else value
                if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                    raise ConvergenceError(f"{where}.losses = {value!r}: expected a non-empty list of loss labels")
                kwargs[key] = tuple(value)
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                    raise ConvergenceError(f"{where}.{key} = {value!r}: expected a positive number")
                if key != "floor_within" and value >= 1:
                    raise ConvergenceError(f"{where}.{key} = {value!r}: expected a fraction in (0, 1) "
                                           "(0.01 = 1% error)")
                kwargs[key] = float(value)
        return cls(**kwargs)

    def rule(self) -> str:
        """The rule in words, for the report."""
        return (f"E epochs pass for a setting when, for every judged loss, (mean train error at E < "
                f"{100 * self.train_error_below:g}% or mean train loss − floor at E < {self.floor_within:g} nats) "
                f"and |mean test error at 2E − mean test error at E| < {100 * self.test_error_change_below:g} pp, "
                f"means over the seeds run at both E and 2E; judged losses: "
                + (", ".join(f"`{lab}`" for lab in self.losses) if self.losses else "every loss of the setting")
                + f". Only runs that differ in nothing but `{PILOT_FIELD}` and the seed are compared. The budget "
                f"picked is the smallest E that passes with every larger E judged passing too: a pass followed "
                f"by a fail is taken for chance.")


def spec_from_grids(grids: Sequence[dict]) -> ConvergenceSpec | None:
    """The ``[convergence]`` table of the grid files stored in a database (the last one that has it)."""
    return T.table_from_grids(grids, "convergence", ConvergenceSpec.from_table)


@dataclasses.dataclass
class PilotRow:
    """One loss at budget ``epochs`` against its runs at twice that, over the seeds both have."""

    label: str
    epochs: int
    seeds: int
    train_error: float          # mean at E
    floor_gap: float            # mean train loss − attainable floor at E (loss_floor)
    test_error: float           # mean at E
    test_error_double: float    # mean at 2E
    change: PairedDifference    # test error 2E − E, seed by seed
    fits: bool                  # train error or floor condition
    stable: bool                # test error change condition

    @property
    def passes(self) -> bool:
        return self.fits and self.stable


@dataclasses.dataclass
class PilotSetting:
    name: str                               # dataset / regime / model [other fields]
    rows: list[PilotRow]
    budgets: list[int]                      # every E with a 2E partner
    passing: dict[int, bool]
    missing: dict[int, list[str]]           # E -> judged losses without runs at E and 2E
    setting: tuple[str, str, str] = ("", "", "")   # (dataset, regime, model)
    errors: dict[str, dict[int, dict[int, float]]] = dataclasses.field(default_factory=dict)
    # label -> epochs -> seed -> test error, every budget run (the largest too, which has no 2E partner)

    def settled(self, epochs: int) -> bool:
        """E passes and so does every larger budget judged: a pass followed by a fail is taken for chance
        (at 1-2 seeds the test error moves by chance about as much as the rule allows)."""
        return bool(self.passing.get(epochs)) and all(self.passing[e] for e in self.budgets if e > epochs)

    @property
    def smallest(self) -> int | None:
        ok = [e for e in self.budgets if self.settled(e)]
        return min(ok) if ok else None


def _context(config: dict) -> str:
    return canonical_json({k: v for k, v in key_fields(config).items() if k not in PILOT_FREE})


def pilot(results: T.Results, spec: ConvergenceSpec) -> list[PilotSetting]:
    """Apply the pilot rule to every group of runs that differ only in ``epochs`` and seed."""
    by: dict[str, dict[str, dict[int, dict[int, T.Run]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    configs: dict[str, dict] = {}
    for r in results.runs:
        if r.label in results.same_as or not isinstance(r.config.get(PILOT_FIELD), int):
            continue
        ctx = _context(r.config)
        configs.setdefault(ctx, {k: v for k, v in key_fields(r.config).items() if k not in PILOT_FREE})
        by[ctx][r.label][r.config[PILOT_FIELD]][r.seed] = r
    # name contexts by their setting, plus the fields in which contexts of one setting differ
    per_setting: dict[tuple, list[str]] = defaultdict(list)
    for ctx, c in configs.items():
        if not any(2 * e in lab for lab in by[ctx].values() for e in lab):
            continue   # no budget with a 2E partner: not part of the pilot (and not named)
        per_setting[(c["dataset"], c["regime"], c["model"])].append(ctx)
    out = []
    for setting in sorted(per_setting, key=T.setting_order):
        ctxs = per_setting[setting]
        fields = sorted({k for ctx in ctxs for k in configs[ctx]})
        varying = [f for f in fields if len({canonical_json(configs[ctx].get(f)) for ctx in ctxs}) > 1]
        for ctx in sorted(ctxs):
            labels = by[ctx]
            budgets = sorted({e for lab in labels.values() for e in lab if 2 * e in lab})
            if not budgets:
                continue
            name = " / ".join(setting) + "".join(f", {f}={_value(configs[ctx].get(f))}" for f in varying)
            judged = list(spec.losses) if spec.losses else sorted(labels, key=T.label_order)
            rows, passing, missing = [], {}, {}
            for e in budgets:
                ok, gone = True, []
                for lab in sorted(labels, key=T.label_order):
                    at_e, at_2e = labels[lab].get(e, {}), labels[lab].get(2 * e, {})
                    seeds = sorted(set(at_e) & set(at_2e))
                    if not seeds:
                        continue
                    row = pilot_row(lab, e, [at_e[s] for s in seeds], [at_2e[s] for s in seeds], spec)
                    rows.append(row)
                    if lab in judged:
                        ok = ok and row.passes
                for lab in judged:
                    if not set(labels.get(lab, {}).get(e, {})) & set(labels.get(lab, {}).get(2 * e, {})):
                        gone.append(lab)
                passing[e] = ok and not gone
                missing[e] = gone
            errors = {lab: {e: {seed: float(r.metrics.get(METRIC["error"], math.nan)) for seed, r in runs.items()}
                            for e, runs in sorted(labels[lab].items())} for lab in sorted(labels, key=T.label_order)}
            out.append(PilotSetting(name, rows, budgets, passing, missing, setting, errors))
    return out


PASSES, FAILS, LATER_FAILS, UNTESTED, NOT_IN_PILOT = (
    "passes", "fails", "passes, a larger budget fails", "E not tried", "not in the pilot")


def budget_status(settings: Sequence[PilotSetting], setting: tuple[str, str, str], epochs: Any) -> str:
    """What the pilot's rule says of ``setting`` (dataset, regime, model) trained for ``epochs``: PASSES (the
    pilot ran it at E = ``epochs`` and 2E, E passes and so does every larger budget judged:
    :meth:`PilotSetting.settled`; when it ran several variants of the setting, e.g. two learning rates, for
    each), LATER_FAILS (E passes, a larger budget fails), FAILS, UNTESTED (the pilot has the setting, not at E
    and 2E) or NOT_IN_PILOT; for a model the pilot did not train, NOT_IN_PILOT followed by what the rule says
    of the dataset and regime with the pilot's models (``"not in the pilot; resnet8 here: passes"``), which is
    not a pass for this one."""
    mine = [s for s in settings if s.setting == tuple(setting)]
    if not mine:
        others = sorted({s.setting[2] for s in settings if s.setting[:2] == tuple(setting[:2])})
        return NOT_IN_PILOT + "".join(
            f"; {m} here: {budget_status(settings, (*setting[:2], m), epochs)}" for m in others)
    judged = [s for s in mine if epochs in s.passing]
    if not judged:
        return UNTESTED
    if all(s.settled(epochs) for s in judged):
        return PASSES
    return LATER_FAILS if all(s.passing[epochs] for s in judged) else FAILS


def pilot_row(label: str, epochs: int, at_e: Sequence[T.Run], at_2e: Sequence[T.Run], spec: ConvergenceSpec
              ) -> PilotRow:
    """One loss's numbers at E and 2E (runs in seed order, the same seeds) and whether it meets the rule."""
    err = METRIC["error"]
    train_error = _mean(r.metrics.get(METRIC["train_error"], math.nan) for r in at_e)
    gap = _mean(floor_gap(r) for r in at_e)
    change = paired_difference({r.seed: r.metrics.get(err, math.nan) for r in at_2e},
                               {r.seed: r.metrics.get(err, math.nan) for r in at_e})
    fits = train_error < spec.train_error_below or gap < spec.floor_within
    stable = abs(change.mean) < spec.test_error_change_below
    return PilotRow(label, epochs, len(at_e), train_error, gap, _mean(r.metrics.get(err, math.nan) for r in at_e),
                    _mean(r.metrics.get(err, math.nan) for r in at_2e), change,
                    bool(fits), bool(stable))


@dataclasses.dataclass(frozen=True)
class PooledChange:
    """One judged loss's test-error change from E to 2E pooled over settings, or the change of its difference
    from the first judged loss (:func:`pooled_changes`)."""

    label: str                             # the loss, or "loss − base"
    budgets: tuple[tuple[str, int], ...]   # (setting name, E) of the settings pooled
    pooled: Pooled
    p_within: float                        # TOST p of |mean change| >= the rule's tolerance (random effects)
    base: str | None = None                # the first judged loss, for a difference's change

    @property
    def where(self) -> str:
        """The settings pooled, each with its E."""
        return "; ".join(f"{n} (E = {e})" for n, e in self.budgets)

    def estimate(self, fixed: bool = False) -> str:
        """The random-effects (or fixed-effect) mean change with its interval, in signed pp."""
        r = self.pooled.fixed if fixed else self.pooled.random
        return T.fmt_num(r.mean, 2, 100, signed=True) + _pp_interval(r.low, r.high)


def _seed_changes(s: PilotSetting, label: str, epochs: int) -> dict[int, float]:
    """``label``'s test error at 2E minus at E per seed, over the seeds run at both."""
    at = s.errors.get(label, {})
    a, b = at.get(epochs, {}), at.get(2 * epochs, {})
    return {seed: b[seed] - a[seed] for seed in sorted(set(a) & set(b))}


def judged_labels(settings: Sequence[PilotSetting], spec: ConvergenceSpec) -> list[str]:
    """The losses the rule judges: ``spec.losses``, or every loss of the settings when it names none."""
    return list(spec.losses) if spec.losses else sorted({r.label for s in settings for r in s.rows},
                                                        key=T.label_order)


@dataclasses.dataclass(frozen=True)
class DifferenceRow:
    """How the test-error difference ``label − base`` moved from E to 2E in one setting, over the seeds that
    have both losses at both budgets (not part of the rule: whether the comparison depends on the budget)."""

    label: str
    base: str
    epochs: int
    at_e: float                  # mean difference at E
    at_2e: float                 # mean difference at 2E
    change: PairedDifference     # (difference at 2E) − (difference at E), seed by seed


def _seed_differences(s: PilotSetting, label: str, base: str, epochs: int) -> dict[int, float]:
    """``label``'s test error minus ``base``'s at ``epochs`` per seed, over the seeds that ran both."""
    a, b = s.errors.get(label, {}).get(epochs, {}), s.errors.get(base, {}).get(epochs, {})
    return {seed: a[seed] - b[seed] for seed in sorted(set(a) & set(b))}


def difference_rows(s: PilotSetting, labels: Sequence[str]) -> list[DifferenceRow]:
    """For each judged loss after the first and each budget E with a 2E partner: the difference from the
    first loss at E and at 2E and its change, over the seeds with both losses at both budgets."""
    out = []
    for lab in labels[1:]:
        for e in s.budgets:
            at_e, at_2e = _seed_differences(s, lab, labels[0], e), _seed_differences(s, lab, labels[0], 2 * e)
            seeds = sorted(set(at_e) & set(at_2e))
            if not seeds:
                continue
            at_e, at_2e = {k: at_e[k] for k in seeds}, {k: at_2e[k] for k in seeds}
            out.append(DifferenceRow(lab, labels[0], e, _mean(at_e.values()), _mean(at_2e.values()),
                                     paired_difference(at_2e, at_e)))
    return out


def pooled_changes(settings: Sequence[PilotSetting], spec: ConvergenceSpec,
                   differences: Sequence[Sequence[DifferenceRow]] | None = None) -> list[PooledChange]:
    """Per judged loss, its change of test error from E to 2E at each setting's largest budget E with a 2E
    partner, pooled over the settings where that loss has 2 or more seeds at both
    (:func:`gence.report.stats.pool`: random effects, the verdict's, and fixed effect), with the TOST p of
    equivalence within the rule's ``test_error_change_below``; then, for each judged loss after the first,
    how its difference from the first (``"gence − ce"``) moved, seed by seed (:func:`difference_rows`: each
    seed's difference at 2E minus its difference at E). A setting whose largest E lacks a loss is left out,
    not judged at a smaller E; an entry with no setting left is left out. ``differences``: the settings'
    difference rows, one list per setting (computed when None)."""
    labels = judged_labels(settings, spec)
    if differences is None:
        differences = [difference_rows(s, labels) for s in settings]
    moved = [{(r.label, r.epochs): r.change for r in rows} for rows in differences]
    out = []
    for lab, base in [(lab, None) for lab in labels] + [(lab, labels[0]) for lab in labels[1:]]:
        used = []
        for s, diffs in zip(settings, moved):
            e = max(s.budgets)
            mine = _seed_changes(s, lab, e)
            change = (diffs.get((lab, e), paired_difference({}, {})) if base
                      else paired_difference(mine, dict.fromkeys(mine, 0.0)))
            if change.n >= 2 and not math.isnan(change.mean):
                used.append((s.name, e, change))
        if not used:
            continue
        p = pool([c for _, _, c in used])
        r = p.random
        out.append(PooledChange(lab if base is None else f"{lab} − {base}", tuple((name, e) for name, e, _ in used),
                                p, equivalence_p(r.mean, r.se, r.df, spec.test_error_change_below), base))
    return out


def pooled_markdown(changes: Sequence[PooledChange], spec: ConvergenceSpec, csv: str = "") -> str:
    """The pooled changes as a subsection: a table, the settings and budgets pooled, ``csv`` (a link)."""
    if not changes:
        return ""
    tol = 100 * spec.test_error_change_below
    rows = [[c.label, str(c.pooled.k), str(c.pooled.pairs), c.estimate(), c.estimate(fixed=True),
             "–" if math.isnan(c.pooled.i2) else f"{100 * c.pooled.i2:.0f}%", fmt_p(c.p_within)] for c in changes]
    lists = {c.budgets for c in changes}
    where = [line for c in (changes if len(lists) > 1 else changes[:1]) for line in (
        (f"`{c.label}`: settings" if len(lists) > 1 else "Settings") + f" pooled, each at its largest E: {c.where}.",
        "")]
    return "\n".join([
        "### Pooled over settings", "",
        "Each judged loss's change of test error from E to 2E at each setting's largest budget E with a 2E "
        "partner, pooled over the settings with 2 or more seeds at both: did the longest runs still move, on "
        "average? This judges no setting (the rule above does); it resolves a smaller average move than the "
        "1-2 seeds of one setting do. Random effects: the mean of the settings' mean changes with a t "
        "interval over settings (its 95% coverage checked by simulation for 5 settings of 2 seeds); fixed "
        "effect: the seed-weighted mean with the pooled within-setting variance, whose interval assumes no "
        "spread between settings beyond seed noise (I² is that spread's share). TOST p, on the random-effects "
        f"estimate: equivalence within the rule's ±{tol:g} pp (below 0.05: the average change is shown smaller "
        f"than ±{tol:g} pp; above, not shown either way). Negative: training longer lowered the error. A row "
        "`b − a` is how the difference between two judged losses moved (each seed's change minus the first "
        "judged loss's change of the same seed): whether their comparison depends on the budget; negative: "
        "training longer favoured `b`.",
        "", T.markdown_table(["loss (or b − a)", "settings", "seed pairs",
                              "pooled Δ test error 2E − E (pp) [95% CI] (random)", "fixed effect [95% CI]", "I²",
                              f"within ±{tol:g} pp: TOST p"], rows,
                             ["l", "r", "r", "r", "r", "r", "r"]), "", *where, *([csv, ""] if csv else [])])


def pooled_sentence(changes: Sequence[PooledChange], spec: ConvergenceSpec) -> str:
    """The pooled changes in one sentence (for a study's opening); empty without any."""
    if not changes:
        return ""
    tol = 100 * spec.test_error_change_below

    def est(c: PooledChange) -> str:
        return f"`{c.label}` {c.estimate()} pp ({c.pooled.k} settings)"

    losses = [est(c) for c in changes if c.base is None]
    diffs = [est(c) for c in changes if c.base is not None]
    within = [f"`{c.label}`" for c in changes if c.p_within < 0.05]
    return ("Pooled over the pilot's settings, each at its largest budget E, test error moved from E to 2E by "
            + ", ".join(losses) + ("; the difference " + ", ".join(diffs) if diffs else "")
            + f" (95% intervals); a move within ±{tol:g} pp is shown (TOST p < 0.05) for "
            + (", ".join(within) if within else "neither" if len(changes) == 2 else "none of them") + ".")


def pilot_markdown(settings: Sequence[PilotSetting], spec: ConvergenceSpec, pooled: str = "",
                   differences: Sequence[Sequence[DifferenceRow]] | None = None) -> str:
    """The summary (smallest passing E per setting), ``pooled`` (:func:`pooled_markdown`) and the per-setting
    tables, each with its ``differences`` (:func:`difference_rows`, one list per setting; computed when None)."""
    summary = [[s.name, ", ".join(f"{e} ({'passes' if s.passing[e] else 'fails'})" for e in s.budgets),
                f"**{s.smallest}**" if s.smallest is not None else "none of the tried budgets"] for s in settings]
    if differences is None:
        differences = [difference_rows(s, judged_labels(settings, spec)) for s in settings]
    md = ["Rule. " + spec.rule(), "", T.markdown_table(["setting", "budgets E with a 2E partner",
                                                        "smallest E passing, with every larger E"], summary,
                                                       ["l", "l", "l"]), ""]
    if pooled:
        md += [pooled]
    for s, diffs in zip(settings, differences):
        rows = []
        for r in s.rows:
            c = r.change
            rows.append([r.label, str(r.epochs), str(r.seeds), T.fmt_num(r.train_error, 2, 100),
                         T.fmt_num(r.floor_gap, 3),
                         T.fmt_num(r.test_error, 2, 100), T.fmt_num(r.test_error_double, 2, 100),
                         T.fmt_num(c.mean, 2, 100, signed=True) + _pp_interval(c.low, c.high), "yes" if r.fits else "no",
                         "yes" if r.stable else "no"])
        verdicts = []
        for e in s.budgets:
            text = f"E = {e}: **{'passes' if s.passing[e] else 'fails'}**"
            if s.missing[e]:
                text += " (no runs at both E and 2E of " + ", ".join(f"`{lab}`" for lab in s.missing[e]) + ")"
            verdicts.append(text)
        md += [f"### {s.name}", "", T.markdown_table(
            ["loss", "E", "seeds", "train error % at E", "train loss − floor at E (nats)", "test error % at E",
             "test error % at 2E", "Δ test error 2E − E (pp) [95% CI]", "fits", "stable"], rows,
            ["l"] + ["r"] * 7 + ["l", "l"]), "", "; ".join(verdicts) + ".", ""]
        if diffs:
            md += ["How the difference between the judged losses moved from E to 2E (not part of the rule; "
                   "seed by seed, over the seeds with both losses at both budgets; positive: training longer "
                   "favoured `a`):", "", T.markdown_table(
                       ["b − a", "E", "seeds", "test error b − a at E (pp)", "at 2E (pp)",
                        "change 2E − E (pp) [95% CI]"],
                       [[f"{d.label} − {d.base}", str(d.epochs), str(d.change.n),
                         T.fmt_num(d.at_e, 2, 100, signed=True), T.fmt_num(d.at_2e, 2, 100, signed=True),
                         T.fmt_num(d.change.mean, 2, 100, signed=True) + _pp_interval(d.change.low, d.change.high)]
                        for d in diffs], ["l"] + ["r"] * 5), ""]
    return "\n".join(md)


def pilot_section(spec: ConvergenceSpec | None = None) -> Callable[["Context"], str]:
    """The convergence pilot as a report section, by ``spec`` or, when None, the ``[convergence]`` table of
    the grid files stored in the database; empty without a table or without runs at E and 2E."""
    def section(ctx: Context) -> str:
        use = spec if spec is not None else spec_from_grids(ctx.results.grids)
        if use is None:
            return ""
        settings = pilot(ctx.results, use)
        if not settings:
            return (f"## Convergence pilot\n\nNo runs that differ only in `{PILOT_FIELD}` (E and 2E) and the "
                    "seed yet.\n\nRule. " + use.rule())
        csv = ctx.csv("convergence_pilot.csv", ["setting", "loss", "epochs", "seeds", "train_error",
                                                "train_loss_minus_floor", "test_error", "test_error_2x",
                                                "change_mean", "change_low", "change_high", "fits", "stable",
                                                "setting_passes"],
                      [[s.name, r.label, r.epochs, r.seeds, r.train_error, r.floor_gap, r.test_error,
                        r.test_error_double, r.change.mean, r.change.low, r.change.high, int(r.fits),
                        int(r.stable), int(s.passing[r.epochs])] for s in settings for r in s.rows])
        labels = judged_labels(settings, use)
        differences = [difference_rows(s, labels) for s in settings]
        changes = pooled_changes(settings, use, differences)
        pooled_csv = ctx.csv("convergence_pooled.csv", ["loss", "settings", "pairs", "random_mean", "random_low",
                                                  "random_high", "random_p", "fixed_mean", "fixed_low",
                                                  "fixed_high", "i2", "tost_p", "pooled"],
                       [[c.label, c.pooled.k, c.pooled.pairs, c.pooled.random.mean, c.pooled.random.low,
                         c.pooled.random.high, c.pooled.random.p, c.pooled.fixed.mean, c.pooled.fixed.low,
                         c.pooled.fixed.high, c.pooled.i2, c.p_within, c.where] for c in changes]) if changes else ""
        diffs = [(s, d) for s, ds in zip(settings, differences) for d in ds]
        diff_csv = ctx.csv("convergence_differences.csv", ["setting", "loss", "base", "epochs", "seeds",
                                                           "difference_e", "difference_2x", "change_mean",
                                                           "change_low", "change_high"],
                           [[s.name, d.label, d.base, d.epochs, d.change.n, d.at_e, d.at_2e, d.change.mean,
                             d.change.low, d.change.high] for s, d in diffs]) if diffs else ""
        md = pilot_markdown(settings, use, pooled_markdown(changes, use, pooled_csv), differences)
        if ctx.with_plots:
            ctx.plots_dir.mkdir(parents=True, exist_ok=True)
            figures = ["Test error at the end of training against the budget, per setting: a line per loss "
                       "through its mean over the seeds run at each budget, each seed a dot (the rule asks the "
                       f"mean to move less than {100 * use.test_error_change_below:g} pp from E to 2E: a flat end "
                       "is a plateau).", ""]
            seen: dict[tuple, int] = defaultdict(int)
            for s in settings:   # a setting run in several variants (say two lrs) gets a file each
                seen[s.setting] += 1
                stem = f"pilot_{T.slug(*s.setting)}" + (f"_{seen[s.setting]}" if seen[s.setting] > 1 else "")
                path = plots.pilot_budgets(s.errors, ctx.plots_dir / f"{stem}.png", s.name)
                ctx.files.append(path)
                figures += [f"![test error against the budget, {s.name}]({ctx.link(path)})", ""]
            md += "\n" + "\n".join(figures)
        return "## Convergence pilot\n\n" + md + "\n" + csv + ("\n\n" + diff_csv if diff_csv else "")
    return section
