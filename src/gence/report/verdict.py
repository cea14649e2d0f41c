"""The generated verdict: one section per claim, decided by stated rules from the stored runs.

What is compared comes from the grid file's ``[verdict]`` table (:class:`VerdictSpec`): which blocks answer
the few-labels, imbalance, calibration, OOD and learning-rate claims, which label is GenCE, the mixed GenCE
and the baseline. Nothing here knows a study's block names or labels.

Per setting (dataset x model x regime, within one block; a loss the block lacks is taken from another block
of the setting whose runs differ only in the loss and its learning rate,
:meth:`gence.report.tables.Results.partner`) GenCE − baseline over matching seeds
(:func:`gence.report.stats.paired_difference`). Per claim and metric (:func:`decide`):

- Holm's correction over the claim's settings of the paired-t p-values; a setting is **significantly
  better** (**worse**) when its adjusted p is below 0.05 and the mean difference favours (disfavours) GenCE.
- the pooled estimate is the mean of the settings' mean differences with a t interval over settings
  (random-effects view; :func:`gence.report.stats.pool`, which also gives the fixed effect, Q and I²).
- **holds**: the pooled 95% interval excludes 0 in GenCE's favour and no setting is significantly worse;
  **mixed**: it favours GenCE but some setting is significantly worse, or it is inconclusive with settings
  significant in both directions; **does not hold**: the pooled interval excludes 0 against GenCE;
  **does not hold (no better)**: equivalence shown (two one-sided tests at 5% on the pooled estimate, margin
  per metric); **inconclusive** otherwise; **not enough data yet** when fewer than ``min_fraction`` of the
  grid's settings for the claim (at least one) have 2 or more pairs. A verdict with settings still missing
  or short of seeds is marked provisional.
- learning-rate robustness: collapsed runs (a class never predicted on test) of GenCE against the
  baseline's in the learning-rate blocks (Fisher's exact test, two-sided), and the test error at each loss's
  worst learning rate among the values both losses ran (an extension of one loss's sweep is left out of it),
  pooled over settings as above: **does not hold** when GenCE collapses significantly
  more often or its pooled worst-lr error is significantly higher; **holds** when neither and the pooled
  worst-lr difference is significantly lower or equivalent within the margin; **mixed** when settings are
  significant in both directions; **inconclusive** otherwise.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import fisher_exact, rankdata

from gence.report import convergence as C
from gence.report import extensions as X
from gence.report import plots
from gence.report import tables as T
from gence.report.columns import (ACC_FEW, ADAECE, CWECE, ECE, ECE_TS, ERROR, METRIC, OOD_AUROC, OOD_FPR95, Column,
                                  ood_column, ood_sets, with_margin)
from gence.report.sections import Context, Section
from gence.report.stats import (PairedDifference, Pooled, equivalence_p, fmt_p, holm, mean_std, p_text,
                                paired_difference, pool)

ALPHA = 0.05
HOLDS, NOT_HOLDS, NO_BETTER, MIXED, INCONCLUSIVE, NO_DATA = (
    "holds", "does not hold", "does not hold (no better)", "mixed", "inconclusive", "not enough data yet")
BETTER, WORSE, UNCLEAR, TOO_FEW, OUTSIDE = "better", "worse", "unclear", "not compared", "not judged"
MARK = {BETTER: "GenCE better", WORSE: "**GenCE worse**", UNCLEAR: "unclear", TOO_FEW: "< 2 pairs",
        OUTSIDE: "not in the verdict (budget not shown converged)"}
DECIDE_ON = ("all", "converged")   # [verdict].decide_on: every compared setting, or those shown converged
PARTIAL = "†"
SHOWN_CONVERGED = "shown converged"   # with a pilot: the pooled estimate over the settings whose budget passes
EXTENSIONS_HEADING = "Sweeps that extend"   # the subsection of the study progress


class VerdictError(ValueError):
    """A ``[verdict]`` table that cannot be used."""


@dataclasses.dataclass(frozen=True)
class VerdictSpec:
    """What the verdict compares, from a grid file's ``[verdict]`` table (every key optional)::

        [verdict]
        label = "gence"                 # the loss the claims are about (default "gence")
        baseline = "ce"                 # what it is compared with (default "ce")
        mixed = "gence_0.5"             # a mixed GenCE shown beside it (default: none)
        few_labels = ["balanced"]       # blocks of the few-labels claim
        imbalance = ["long_tailed"]     # blocks of the imbalance claim
        imbalance_baselines = ["logit_adjusted", "balanced_softmax"]   # compared with GenCE on test error
        calibration_baselines = ["label_smoothing", "focal"]  # compared with GenCE on ECE and test error
        calibration = [...]             # default: few_labels + imbalance; so is ood
        lr_robustness = ["tune", "lr_sweep"]   # blocks sweeping `field` for the robustness claim
        field = "lr"
        min_fraction = 0.25             # below this share of the grid's settings: not enough data
        margins = { error = 0.005 }     # equivalence margins per column key, raw units (0.005 = 0.5 pp)
        pilot = "results/pilot.sqlite"  # a convergence pilot's database (its grid's [convergence] rule):
                                        # each setting's budget is shown as passing or failing that rule
        decide_on = "converged"         # with a pilot: the verdict rests on the settings whose budget
                                        # passes its rule only (default "all": every compared setting)

    A claim with no blocks is left out."""

    label: str = "gence"
    baseline: str = T.BASELINE
    mixed: str | None = None
    few_labels: tuple[str, ...] = ()
    imbalance: tuple[str, ...] = ()
    imbalance_baselines: tuple[str, ...] = ()
    calibration_baselines: tuple[str, ...] = ()
    calibration: tuple[str, ...] | None = None
    ood: tuple[str, ...] | None = None
    lr_robustness: tuple[str, ...] = ()
    field: str = "lr"
    min_fraction: float = 0.25
    margins: Mapping[str, float] = dataclasses.field(default_factory=dict)
    pilot: str | None = None
    decide_on: str = "all"

    @property
    def only_converged(self) -> bool:
        """The verdict is decided on the settings the pilot shows converged only (``decide_on``)."""
        return self.decide_on == "converged"

    @property
    def main_blocks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.few_labels + self.imbalance))

    def blocks_for(self, claim: str) -> tuple[str, ...]:
        given = getattr(self, claim)
        return self.main_blocks if given is None else given

    def column(self, column: Column) -> Column:
        return with_margin(column, self.margins[column.key]) if column.key in self.margins else column

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "[verdict]") -> "VerdictSpec":
        if not isinstance(table, Mapping):
            raise VerdictError(f"{where} = {table!r}: expected a table")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            if key not in fields:
                raise VerdictError(f"{where}: unknown key {key!r}; valid keys: {', '.join(fields)}")
            if key == "decide_on":
                if value not in DECIDE_ON:
                    raise VerdictError(f"{where}.decide_on = {value!r}: expected one of "
                                       + ", ".join(repr(v) for v in DECIDE_ON))
                kwargs[key] = value
            elif key in ("label", "baseline", "mixed", "field", "pilot"):
                if not isinstance(value, str) or not value:
                    raise VerdictError(f"{where}.{key} = {value!r}: expected a non-empty string")
                kwargs[key] = value
            elif key == "min_fraction":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                    raise VerdictError(f"{where}.min_fraction = {value!r}: expected a number in (0, 1]")
                kwargs[key] = float(value)
            elif key == "margins":
                if not isinstance(value, Mapping) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value.values()):
                    raise VerdictError(f"{where}.margins = {value!r}: expected a table of positive numbers per "
                                       "column key (e.g. error = 0.005)")
                kwargs[key] = dict(value)
            else:
                value = [value] if isinstance(value, str) else value
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise VerdictError(f"{where}.{key} = {value!r}: expected a list of block or label names")
                kwargs[key] = tuple(value)
        if kwargs.get("decide_on") == "converged" and "pilot" not in kwargs:
            raise VerdictError(f"{where}.decide_on = 'converged' needs {where}.pilot: the convergence pilot's "
                               "database that says which settings are shown converged")
        return cls(**kwargs)


def spec_from_grids(grids: Sequence[dict]) -> VerdictSpec | None:
    """The ``[verdict]`` table of the grid files stored in a database (the last one that has it)."""
    return T.table_from_grids(grids, "verdict", VerdictSpec.from_table)


# ------------------------------------------------------------------------------------ grid progress
@dataclasses.dataclass
class BlockProgress:
    """A block's runs: ``total`` = done + failed + missing; ``added`` of them were added by an extension."""

    block: str
    total: int
    done: int
    failed: int
    added: int = 0

    @property
    def missing(self) -> int:
        return self.total - self.done - self.failed


@dataclasses.dataclass
class Progress:
    blocks: list[BlockProgress]
    # (block, dataset, regime, model, label) -> seeds the grid asks for
    seeds: dict[tuple, set[int]]
    unreadable: list[str]
    extensions: list[X.SweepExtension] = dataclasses.field(default_factory=list)  # sweeps that may extend
    # (block, dataset, regime, model, label) -> the pairing idents (T.pairing_ident) of its runs in the grid
    idents: dict[tuple, set[str]] = dataclasses.field(default_factory=dict)
    tuning: frozenset[str] = frozenset()   # blocks other blocks tune from: never a partner (as in T.Results)

    def expected(self, block: str, setting: tuple, label: str) -> set[int] | None:
        return self.seeds.get((block, *setting, label)) if self.blocks else None

    def partner_block(self, block: str, setting: tuple, label: str) -> str | None:
        """The block whose runs of ``label`` the grid's runs of ``block`` in ``setting`` are compared with, as
        :meth:`gence.report.tables.Results.partner` picks it from stored runs: ``block`` when it asks for
        ``label`` there, else the first other block (grid order, tuning blocks left out) that asks for it there
        and whose runs there have the same set of pairing idents as ``block``'s; None when none does."""
        if (block, *setting, label) in self.seeds:
            return block
        mine = self.block_idents(block, setting)
        for other in (b.block for b in self.blocks):
            if other != block and other not in self.tuning and (other, *setting, label) in self.idents \
                    and self.block_idents(other, setting) == mine:
                return other
        return None

    def block_idents(self, block: str, setting: tuple) -> set[str]:
        """The pairing idents of every run the grid asks of ``block`` in ``setting``."""
        return set().union(*(ids for (b, *s, _), ids in self.idents.items() if b == block and tuple(s) == setting))

    def settings(self, block: str, labels: Sequence[str]) -> set[tuple]:
        """The grid's settings of ``block`` with runs of every one of ``labels`` to compare, in ``block`` or in
        a partner block (:meth:`partner_block`)."""
        mine = {tuple(key[1:4]) for key in self.seeds if key[0] == block}
        return {s for s in mine if all(self.partner_block(block, s, lab) is not None for lab in labels)}

    @property
    def undecided(self) -> int:
        """Sweeps whose extension waits for runs (more runs may be added to their blocks)."""
        return sum(s.kind == X.UNDECIDED for s in self.extensions)

    @property
    def total(self) -> BlockProgress:
        return BlockProgress("all", *(sum(getattr(b, f) for b in self.blocks)
                                      for f in ("total", "done", "failed", "added")))


def grid_progress(results: T.Results) -> Progress:
    """Expand the grid files stored in the database as the runner does (union over files, runs by key) and
    count, per block, runs done, failed and missing. A run of a block with ``tune`` counts as done (failed)
    when one of its candidate runs (one per tuned value) is stored done (failed). A block with ``extend``
    also counts the runs its sweeps have added so far (:func:`gence.report.extensions.sweep_extensions`,
    the runner's own replay of the stored runs): stored ones as done or failed, decided ones not yet run as
    missing; an undecided sweep may still add more."""
    done = {r.key for r in list(results.runs) + list(results.tuning_runs)}
    failed = {f["key"] for f in results.failed}
    ordinary: dict[str, tuple[str, dict, str]] = {}      # key -> (block, config, label)
    tuned: dict[tuple, tuple[str, dict, str]] = {}       # candidate keys -> (block, config, label)
    stored = X.stored(results)
    grids, unreadable, sweeps = stored.grids, stored.unreadable, stored.sweeps
    for grid in grids:
        for spec in grid.runs:
            ordinary.setdefault(spec.key, (spec.grid, spec.config, spec.label))
        for t in grid.tuned:
            tuned.setdefault(tuple(s.key for _, s in t.candidates), (t.grid, t.config, t.label))
    counted = set(ordinary) | {k for keys in tuned for k in keys}
    added: dict[str, tuple[str, dict, str]] = {}         # key -> (block, config, label) of extension runs
    for s in sweeps:
        for _, spec in s.added_runs:
            if spec.key not in counted:
                added.setdefault(spec.key, (spec.grid, spec.config, spec.label))
    counts: dict[str, list[int]] = {}
    seeds: dict[tuple, set[int]] = defaultdict(set)
    idents: dict[tuple, set[str]] = defaultdict(set)
    items = ([((k,), v, False) for k, v in ordinary.items()] + [(k, v, False) for k, v in tuned.items()]
             + [((k,), v, True) for k, v in added.items()])
    for keys, (block, config, label), extension in items:
        c = counts.setdefault(block, [0, 0, 0, 0])
        c[0] += 1
        c[3] += extension
        if any(k in done for k in keys):
            c[1] += 1
        elif any(k in failed for k in keys):
            c[2] += 1
        seeds[(block, config["dataset"], config["regime"], config["model"], label)].add(int(config["seed"]))
        idents[(block, config["dataset"], config["regime"], config["model"], label)].add(T.pairing_ident(config))
    order = {name: i for i, name in enumerate(T.grid_tunes(results.grids)[1])}
    blocks = [BlockProgress(b, *c) for b, c in sorted(counts.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))]
    tuning = frozenset(src for t in T.grid_tunes(results.grids)[0].values() for src in t.sources)
    return Progress(blocks, dict(seeds), unreadable, sweeps, dict(idents), tuning)


# -------------------------------------------------------------------------------------- comparisons
@dataclasses.dataclass
class Comparison:
    block: str
    setting: tuple[str, str, str]
    label: str                  # the loss compared
    other: str                  # what it is compared with
    column: Column
    result: PairedDifference
    mean_label: float           # the means over the seeds paired (all of a loss's seeds when none is)
    mean_other: float
    expected: int | None        # pairs the grid asks for (None: grid unknown)
    p_holm: float = math.nan    # set by decide(): the paired-t p after Holm over the claim's settings
    pilot: str = ""             # set by annotate_pilot(): the pilot's rule at this setting's budget
    epochs: Any = None          # the budget of this setting's runs (with a pilot)
    in_verdict: bool = True     # set by mark_verdict_family(): False when [verdict].decide_on leaves it out
    label_block: str = ""       # the blocks the two losses' runs come from (not given: ``block``)
    other_block: str = ""
    label_lr: str = ""          # their learning rates (T.lr_text)
    other_lr: str = ""

    def __post_init__(self) -> None:
        self.label_block = self.label_block or self.block
        self.other_block = self.other_block or self.block

    @property
    def across_blocks(self) -> bool:
        return self.label_block != self.other_block

    @property
    def compared(self) -> bool:
        return self.result.n >= 2 and not math.isnan(self.result.p)

    @property
    def outcome(self) -> str:
        if not self.compared:
            return TOO_FEW
        if not self.in_verdict:
            return OUTSIDE
        if math.isnan(self.p_holm) or self.p_holm >= ALPHA:
            return UNCLEAR
        good = self.result.mean > 0 if self.column.higher_is_better else self.result.mean < 0
        return BETTER if good else WORSE

    @property
    def partial(self) -> bool:
        return self.expected is not None and self.result.n < self.expected


@functools.lru_cache(maxsize=4)
def _pilot(path: str, mtime: float) -> tuple[C.ConvergenceSpec, tuple[C.PilotSetting, ...]]:
    results = T.load_results(path)
    rule = C.spec_from_grids(results.grids)
    if rule is None:
        raise VerdictError(f"[verdict].pilot = {path!r}: its database holds no grid with a [convergence] table")
    return rule, tuple(C.pilot(results, rule))


def _pilot_of(spec: VerdictSpec) -> tuple[C.ConvergenceSpec, tuple[C.PilotSetting, ...]] | None:
    if spec.pilot is None:
        return None
    path = Path(spec.pilot)
    if not path.is_file():
        raise VerdictError(f"[verdict].pilot = {spec.pilot!r}: no such database (a path from the folder the "
                           "report is run in)")
    return _pilot(str(path), path.stat().st_mtime)


def pilot_settings(spec: VerdictSpec) -> tuple[C.PilotSetting, ...] | None:
    """The pilot's settings judged by its rule (:func:`gence.report.convergence.pilot`), or None without
    ``[verdict].pilot``; read once per file version."""
    pilot = _pilot_of(spec)
    return None if pilot is None else pilot[1]


def pilot_pooled(spec: VerdictSpec) -> tuple[C.ConvergenceSpec, list[C.PooledChange]] | None:
    """The pilot's rule and each judged loss's E -> 2E change pooled over its settings
    (:func:`gence.report.convergence.pooled_changes`), or None without ``[verdict].pilot``."""
    pilot = _pilot_of(spec)
    return None if pilot is None else (pilot[0], C.pooled_changes(pilot[1], pilot[0]))


def annotate_pilot(comps: Sequence[Comparison], results: T.Results, spec: VerdictSpec) -> None:
    """Set each comparison's budget (``epochs`` of its runs) and what the pilot's rule says of it."""
    settings = pilot_settings(spec)
    if settings is None:
        return
    runs = [*results.runs, *results.tuning_runs]
    for c in comps:
        c.epochs, c.pilot = _pilot_status(settings, runs, c.setting, ((c.label_block, c.label),
                                                                      (c.other_block, c.other)))


def _pilot_status(settings: Sequence[C.PilotSetting], runs: Sequence[T.Run], setting: tuple,
                  members: Sequence[tuple[str, str]]) -> tuple[Any, str]:
    """The budget (``epochs``) the runs of ``members`` ((block, label) pairs) in ``setting`` share (None when
    several) and what the pilot's rule says of it."""
    budgets = {r.config.get(C.PILOT_FIELD) for r in runs if r.setting == setting and (r.block, r.label) in members}
    epochs = budgets.pop() if len(budgets) == 1 else None
    return epochs, C.budget_status(settings, setting, epochs) if epochs is not None else "several budgets"


def converged(comps: Sequence[Comparison]) -> list[Comparison]:
    """The compared settings whose budget passes the pilot's rule."""
    return [c for c in comps if c.compared and c.pilot == C.PASSES]


def mark_verdict_family(comps: Sequence[Comparison], spec: VerdictSpec) -> None:
    """Mark the comparisons the verdict is not decided on (``in_verdict = False``, for :func:`decide`): none,
    or with ``decide_on = "converged"`` those whose budget does not pass the pilot's rule (after
    :func:`annotate_pilot`)."""
    if spec.only_converged:
        for c in comps:
            c.in_verdict = c.pilot == C.PASSES


def compare(results: T.Results, progress: Progress, block: str, label: str, other: str,
            column: Column) -> list[Comparison]:
    """``label`` against ``other`` in every setting of ``block`` where both have runs (selected variants), each
    from ``block`` or, where ``block`` lacks it, from a partner block (:meth:`T.Results.partner`); a setting
    where neither is in ``block`` is left to the blocks that have them."""
    out = []
    for setting in results.settings():
        a, b = results.partner(setting, label, block), results.partner(setting, other, block)
        if a is None or b is None or block not in (a.block, b.block):
            continue
        va = {r.seed: column.value(r.metrics) for r in a.runs}
        vb = {r.seed: column.value(r.metrics) for r in b.runs}
        if all(math.isnan(v) for v in va.values()) or all(math.isnan(v) for v in vb.values()):
            continue
        ea, eb = progress.expected(a.block, setting, label), progress.expected(b.block, setting, other)
        expected = len(ea & eb) if ea is not None and eb is not None else None
        shared = set(va) & set(vb) or set(va) | set(vb)   # the means beside the difference: over its pairs
        out.append(Comparison(block, setting, label, other, column, paired_difference(va, vb),
                              mean_std([v for k, v in va.items() if k in shared])[0],
                              mean_std([v for k, v in vb.items() if k in shared])[0], expected,
                              label_block=a.block, other_block=b.block, label_lr=T.lr_text(a),
                              other_lr=T.lr_text(b)))
    return out


@dataclasses.dataclass
class Decision:
    status: str
    better: int
    worse: int
    compared: int
    grid_settings: int          # settings the grid asks for (0: unknown)
    provisional: bool
    column: Column | None = None
    pooled: Pooled | None = None
    p_equivalence: float = math.nan
    shown_converged: int | None = None   # with a pilot: compared settings whose budget passes its rule
    only_converged: bool = False         # decided on the settings shown converged only (decide_on)

    @property
    def text(self) -> str:
        return self.status + (" (provisional)" if self.provisional and self.status != NO_DATA else "")

    def evidence(self) -> str:
        of = f" of {self.grid_settings}" if self.grid_settings else ""
        text = f"{self.compared}{of} settings" + (" shown converged" if self.only_converged else "")
        if self.pooled is not None and self.pooled.k and self.column is not None:
            c, r = self.column, self.pooled.random
            text += f": pooled Δ {fmt_estimate(r.mean, r.low, r.high, c)}{unit(c)}"
            if not math.isnan(self.p_equivalence):
                text += f", equivalence (±{c.margin * c.scale:g}{unit(c)}) {p_text(self.p_equivalence)}"
        text += f"; after Holm GenCE significantly better in {self.better}, worse in {self.worse}"
        if self.shown_converged is not None:
            text += f"; {self.shown_converged} of the {self.compared} at a budget the pilot's rule passes"
        return text


def decide(comparisons: Sequence[Comparison], grid_settings: int, min_fraction: float = 0.25) -> Decision:
    """The rule of the module docstring for one metric's comparisons (sets each one's ``p_holm``): Holm, the
    counts, ``min_fraction`` and the pooled estimate over the compared ones in the verdict (``in_verdict``,
    :func:`mark_verdict_family`); provisional while any compared one is short of seeds or settings are missing."""
    compared = [c for c in comparisons if c.compared]
    judged = [c for c in compared if c.in_verdict]
    for c, p in zip(judged, holm([c.result.p for c in judged])):
        c.p_holm = float(p)
    column = compared[0].column if compared else (comparisons[0].column if comparisons else None)
    b = sum(c.outcome == BETTER for c in judged)
    w = sum(c.outcome == WORSE for c in judged)
    needed = max(1, math.ceil(min_fraction * grid_settings)) if grid_settings else 1
    provisional = bool(any(c.partial for c in compared) or (grid_settings and len(compared) < grid_settings))
    if len(judged) < needed:
        return Decision(NO_DATA, b, w, len(judged), grid_settings, provisional, column)
    pooled = pool([c.result for c in judged])
    r = pooled.random
    higher = column.higher_is_better
    favours = r.low > 0 if higher else r.high < 0
    against = r.high < 0 if higher else r.low > 0
    p_eq = equivalence_p(r.mean, r.se, r.df, column.margin) if column.margin > 0 else math.nan
    if favours:
        status = HOLDS if w == 0 else MIXED
    elif against:
        status = NOT_HOLDS
    elif p_eq < ALPHA:
        status = NO_BETTER
    elif b and w:
        status = MIXED
    else:
        status = INCONCLUSIVE
    return Decision(status, b, w, len(judged), grid_settings, provisional, column, pooled, p_eq)


# ----------------------------------------------------------------------------------------- formatting
def signed(x: float, digits: int = 2) -> str:
    """A difference with its sign (``+0.12``, ``−0.40``; ``+0.00`` for one that rounds to zero), ``–`` for NaN."""
    return T.fmt_num(x, digits, signed=True)


def unit(column: Column) -> str:
    return f" {column.unit}" if column.unit else ""


def fmt_estimate(mean: float, low: float, high: float, column: Column) -> str:
    s, d = column.scale, column.digits
    if math.isnan(low):
        return signed(mean * s, d)
    return f"{signed(mean * s, d)} [{signed(low * s, d)}, {signed(high * s, d)}]"


def fmt_diff(c: Comparison) -> str:
    return fmt_estimate(c.result.mean, c.result.low, c.result.high, c.column)


def fmt_pairs(c: Comparison) -> str:
    if c.expected is None:
        return str(c.result.n)
    return f"{c.result.n}/{c.expected}" + (f" {PARTIAL}" if c.partial else "")


def setting_name(setting: tuple) -> str:
    return f"{setting[0]} / {setting[2]} / {setting[1]}"


def comparison_table(comps: Sequence[Comparison], label_name: str, other_name: str) -> str:
    col = comps[0].column
    header = ["dataset", "model", "regime", "pairs", f"{other_name} {col.name}", f"{label_name} {col.name}",
              f"Δ {col.unit or 'diff'} [95% CI]", "t p", "Holm p", "Wilcoxon p", "Hodges–Lehmann", "outcome"]
    rows = [[c.setting[0], c.setting[2], c.setting[1], fmt_pairs(c),
             T.fmt_num(c.mean_other, col.digits, col.scale), T.fmt_num(c.mean_label, col.digits, col.scale),
             fmt_diff(c), fmt_p(c.result.p), fmt_p(c.p_holm), fmt_p(c.result.p_wilcoxon),
             signed(c.result.hodges_lehmann * col.scale, col.digits), MARK[c.outcome]] for c in comps]
    align = ["l"] * 3 + ["r"] * 8 + ["l"]
    if any(c.across_blocks for c in comps):   # runs of two blocks: which, and each loss's learning rate
        header.append(f"blocks ({other_name} / {label_name}) and lr")
        rows = [row + [f"{c.other_block} / {c.label_block}; lr {c.other_lr} / {c.label_lr}"
                       if c.across_blocks else f"{c.block}; lr {c.other_lr} / {c.label_lr}"]
                for row, c in zip(rows, comps)]
        align.append("l")
    if any(c.pilot for c in comps):
        header.append("pilot's rule at this budget")
        rows = [row + [f"{c.pilot} (E = {c.epochs})" if c.epochs is not None else c.pilot]
                for row, c in zip(rows, comps)]
        align.append("l")
    return T.markdown_table(header, rows, align)


def pooled_by_dataset(comps: Sequence[Comparison]) -> list[tuple[str, Pooled]]:
    """The pooled estimate over all compared settings ("all"), then over each dataset's."""
    groups = [("all", [c for c in comps if c.compared])]
    groups += [(ds, [c for c in comps if c.compared and c.setting[0] == ds])
               for ds in sorted({c.setting[0] for c in comps})]
    if any(c.pilot for c in comps):
        groups.append((SHOWN_CONVERGED, converged(comps)))
    return [(name, pool([c.result for c in mine])) for name, mine in groups]


def pooled_table(comps: Sequence[Comparison]) -> str:
    """The claim's pooled estimates: all settings, then per dataset (random effects and fixed effect, Q, I²)."""
    col = comps[0].column
    rows = []
    for name, p in pooled_by_dataset(comps):
        if not p.k:
            continue
        rows.append([name, str(p.k), str(p.pairs), fmt_estimate(p.random.mean, p.random.low, p.random.high, col),
                     fmt_p(p.random.p), fmt_estimate(p.fixed.mean, p.fixed.low, p.fixed.high, col),
                     "–" if math.isnan(p.q) else f"{p.q:.1f}", fmt_p(p.q_p),
                     "–" if math.isnan(p.i2) else f"{100 * p.i2:.0f}%"])
    return T.markdown_table(["datasets", "settings", "pairs", f"pooled Δ {col.unit} [95% CI] (random)", "p",
                             "fixed effect [95% CI]", "Cochran Q", "Q p", "I²"], rows)


def outcome_words(decision: Decision, label: str) -> str:
    """A decision in words about the loss compared (for a comparison beside the claims, which claims nothing):
    ``holds`` is ``label better``, ``does not hold`` is ``label worse``, ``does not hold (no better)`` is
    equivalence within the margin; the rest as they are."""
    col = decision.column
    words = {HOLDS: f"{label} better", NOT_HOLDS: f"{label} worse",
             NO_BETTER: f"equivalent within ±{col.margin * col.scale:g}{unit(col)}" if col else "equivalent",
             NO_DATA: "not enough settings yet"}.get(decision.status, decision.status)
    return words + (" (provisional)" if decision.provisional and decision.status != NO_DATA else "")


def outcome_sentence(comps: Sequence[Comparison], decision: Decision, what: str, who: str = "GenCE",
                     other: str = "CE", plain: bool = False) -> str:
    """The pooled estimate, the Holm counts and every setting where ``who`` is significantly worse; ``plain``:
    the outcome in words about ``who`` (:func:`outcome_words`), not as a claim's verdict."""
    compared = [c for c in comps if c.compared and c.in_verdict]
    outside = [c for c in comps if c.compared and not c.in_verdict]
    verdict = outcome_words(decision, who) if plain else decision.text
    if not compared:
        return (f"{who} vs {other}, {what}: **{verdict}**: no setting with 2 or more paired seeds "
                + ("at a budget shown converged yet" if outside else "yet") + ".")
    col = compared[0].column
    direction = "higher is better" if col.higher_is_better else "lower is better"
    counts = {o: sum(c.outcome == o for c in compared) for o in (BETTER, WORSE, UNCLEAR)}
    text = (f"{who} − {other}, {what} ({direction}): **{verdict}**. Over {len(compared)} setting(s) the "
            f"pooled difference is ")
    if decision.pooled is not None and decision.pooled.k:
        r, f = decision.pooled.random, decision.pooled.fixed
        text += (f"{fmt_estimate(r.mean, r.low, r.high, col)}{unit(col)} (mean of the settings' means, t interval "
                 f"over settings; fixed effect {fmt_estimate(f.mean, f.low, f.high, col)}")
        if not math.isnan(decision.pooled.i2):
            text += f", I² {100 * decision.pooled.i2:.0f}%"
        text += ")"
        if not math.isnan(decision.p_equivalence):
            text += (f"; equivalence within ±{col.margin * col.scale:g}{unit(col)}: TOST "
                     f"{p_text(decision.p_equivalence)}")
    else:
        text += "not computed (too few settings)"
    text += (f". After Holm over the settings, {who} is significantly better in {counts[BETTER]}, worse in "
             f"{counts[WORSE]}, neither in {counts[UNCLEAR]}.")
    worse = [c for c in compared if c.outcome == WORSE]
    if worse:
        text += f" {who} is significantly worse in: " + "; ".join(
            f"{setting_name(c.setting)} ({fmt_diff(c)}{unit(col)}, {p_text(c.p_holm, 'Holm p')})" for c in worse) + "."
    if outside:
        text += (f" Not in the verdict (its budget not shown converged by the pilot's rule): {len(outside)} "
                 "setting(s), in the table below.")
    short = [c for c in comps if not c.compared]
    if short:
        text += f" Not compared yet (fewer than 2 pairs): {len(short)} setting(s)."
    return text


def joined_blocks(results: T.Results, block: str) -> list[str]:
    """``block`` and the blocks that share its settings' summary rows (:func:`T.summary_rows`: runs that differ
    only in the loss and its learning rate), in file order."""
    out = {block}
    for setting in results.settings():
        for row in T.summary_rows(results, setting):
            if block in row:
                out.update(row)
    return sorted(out, key=results.block_order)


def rank_table(results: T.Results, block: str, column: Column, label: str) -> tuple[str, str] | None:
    """Per loss, its mean rank by mean ``column`` among the losses present in each setting of ``block`` and
    of the blocks paired with it there (:func:`joined_blocks`; 1 = best, ties share the average rank) and how
    often it is best."""
    ranks: dict[str, list[float]] = defaultdict(list)
    n_losses = []
    for setting in results.settings():
        row = next((r for r in T.summary_rows(results, setting) if block in r), [])
        groups = [g for b in row for g in results.groups_of(setting, b)]
        means = {g.label: mean_std([column.value(r.metrics) for r in g.runs])[0] for g in groups}
        means = {k: v for k, v in means.items() if not math.isnan(v)}
        if len(means) < 2:
            continue
        labels = list(means)
        vals = np.array([means[k] for k in labels])
        for lab, rk in zip(labels, rankdata(-vals if column.higher_is_better else vals)):
            ranks[lab].append(float(rk))
        n_losses.append(len(labels))
    if not ranks:
        return None
    order = sorted(ranks, key=lambda lab: (np.mean(ranks[lab]), T.label_order(lab)))
    rows = [[results.display(lab), str(len(ranks[lab])), f"{np.mean(ranks[lab]):.2f}",
             str(sum(x == 1.0 for x in ranks[lab]))] for lab in order]
    table = T.markdown_table(["loss", "settings", f"mean rank ({column.name})", "best in"], rows)
    sentence = ""
    if label in ranks:
        pos = order.index(label) + 1
        sentence = (f"By mean {column.name}, {label} ranks {pos} of {len(order)} losses on average over "
                    f"{len(ranks[label])} setting(s) (mean rank {np.mean(ranks[label]):.2f}; best in "
                    f"{sum(x == 1.0 for x in ranks[label])}); the best mean rank is {order[0]}'s "
                    f"({np.mean(ranks[order[0]]):.2f}). Ranks use each setting's losses with runs "
                    f"({min(n_losses)}–{max(n_losses)} losses), 1 = best.")
    return table, sentence


# ------------------------------------------------------------------------------------------- claims
@dataclasses.dataclass
class Claim:
    name: str
    heading: str
    decision: Decision
    evidence: str
    body: str
    key: str = ""               # what the claim is about: few_labels, imbalance, calibration, ood, lr_robustness
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)   # the per-setting ones it decides on


@dataclasses.dataclass
class Beside:
    """A comparison shown beside the claims, not deciding any: the mixed GenCE against the baseline, GenCE
    against an imbalance or a calibration baseline; decided by the same rules as a claim's metric."""

    label: str
    other: str
    what: str                   # the metric in a few words (the opening's table)
    decision: Decision
    comparisons: list[Comparison]
    claim: str = ""             # the claim whose section shows it ("imbalance", "calibration"; "" for the mixed GenCE)
    md: list[str] = dataclasses.field(default_factory=list)   # what that section shows (_metric_part)


@dataclasses.dataclass
class Verdict:
    spec: VerdictSpec
    progress: Progress
    claims: list[Claim]
    lr_panels: list = dataclasses.field(default_factory=list)   # for the learning-rate plot
    beside: list[Beside] = dataclasses.field(default_factory=list)


RULE = ("holds: the pooled 95% interval (mean of the settings' mean differences, t over settings) excludes 0 in "
        "GenCE's favour and no setting is significantly worse after Holm; mixed: it favours GenCE but some "
        "setting is significantly worse, or it contains 0 with settings significant in both directions; does "
        "not hold: it excludes 0 against GenCE; does not hold (no better): equivalence shown (two one-sided t "
        "tests at 5% on the pooled estimate, margin ±0.5 pp for error, ECE and AUROC); inconclusive: otherwise; "
        "not enough data yet: fewer than {min_fraction:.0%} of the grid's settings compared")
LR_RULE = ("does not hold: GenCE collapses (a class never predicted on test) significantly more often than CE in "
           "the learning-rate blocks (Fisher's exact test, two-sided, p < 0.05), or its pooled worst-lr test error "
           "is significantly higher; holds: neither, and the pooled worst-lr difference is significantly lower or "
           "equivalent within the margin; mixed: settings significant in both directions after Holm; "
           "inconclusive: otherwise")
CONVERGED_RULE = (" Decided on the settings shown converged only (`[verdict] decide_on = \"converged\"`): a "
                  "setting counts when its budget passes the rule of the convergence pilot (`{pilot}`); Holm's "
                  "correction, the pooled estimate and the share of the grid's settings (`min_fraction`) run over "
                  "those, and the other settings are listed in the tables as not in the verdict (a model that has "
                  "not been shown to stop improving says nothing about a trained one). Collapse counts in the "
                  "learning-rate claim use every run of its blocks.")
SETTING_RULE = ("A setting (dataset × model × regime) is significantly better or worse for GenCE when its paired-t p, "
                "after Holm's correction over the claim's settings, is below 0.05. The exact Wilcoxon p (smallest "
                "possible 2/2^n: 0.0625 for 5 seeds) and the Hodges–Lehmann estimate are shown as a sensitivity "
                "check; they decide nothing.")


def _grid_count(progress: Progress, spec: VerdictSpec, blocks: Sequence[str], labels=None) -> int:
    labels = labels or (spec.baseline, spec.label)
    return sum(len(progress.settings(b, labels)) for b in blocks)


def _blocks_text(blocks: Sequence[str]) -> str:
    return ", ".join(f"`{b}`" for b in blocks)


def _no_runs(progress: Progress, blocks: Sequence[str]) -> str:
    known = {b.block: b for b in progress.blocks}
    parts = [f"`{b}` {known[b].done} of {known[b].total} runs done" if b in known else f"`{b}` not in the grid"
             for b in blocks]
    return "No runs yet: no setting has runs of both losses (" + "; ".join(parts) + ")."


def _compare_blocks(results, progress, blocks, label, other, column) -> list[Comparison]:
    """:func:`compare` over ``blocks``, each pair of runs once (two of the blocks may share a partner)."""
    out, seen = [], set()
    for c in (c for b in blocks for c in compare(results, progress, b, label, other, column)):
        key = (c.setting, c.label_block, c.other_block)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _metric_part(results, progress, spec, blocks, column, what, label=None, other=None,
                 grid_labels=None, plain=False) -> tuple[Decision, list[str], list[Comparison]]:
    """One metric of a claim: decision, Markdown (sentence, pooled table, per-setting table) and comparisons;
    ``plain``: a comparison beside the claims, its outcome said in words (:func:`outcome_words`)."""
    label, other = label or spec.label, other or spec.baseline
    comps = _compare_blocks(results, progress, blocks, label, other, column)
    annotate_pilot(comps, results, spec)
    mark_verdict_family(comps, spec)
    d = with_pilot_counts(decide(comps, _grid_count(progress, spec, blocks, grid_labels or (other, label)),
                                 spec.min_fraction), comps, spec)
    if not comps:
        return d, [f"{label} vs {results.display(other)}, {what}: no setting with runs of both yet.", ""], comps
    md = [outcome_sentence(comps, d, what, who=label, other=results.display(other), plain=plain), ""]
    if d.pooled is not None and d.pooled.k:
        md += [pooled_table(comps), ""]
    md += [comparison_table(comps, label, results.display(other)), ""]
    return d, md, comps


def with_pilot_counts(d: Decision, comps: Sequence[Comparison], spec: VerdictSpec) -> Decision:
    """``d`` with what its evidence says of the pilot: how many settings are shown converged, or that it was
    decided on those only."""
    if spec.pilot is None:
        return d
    if spec.only_converged:
        return dataclasses.replace(d, only_converged=True)
    return dataclasses.replace(d, shown_converged=len(converged(comps)))


def _intro(progress, spec, blocks, comps, what) -> str:
    n_grid = _grid_count(progress, spec, blocks)
    compared = [c for c in comps if c.compared]
    of = f" of the grid's {n_grid}" if n_grid else ""
    text = (f"Blocks {_blocks_text(blocks)}, {what}: {len(compared)}{of} settings have at least 2 seeds of both "
            f"{spec.baseline} and {spec.label}.")
    partial = sum(c.partial for c in compared)
    if partial:
        text += f" {partial} of them have fewer seeds than the grid asks ({PARTIAL} in the tables)."
    return text


def accuracy_claim(results, progress, spec: VerdictSpec, blocks, name, heading, what, extra) -> Claim:
    err = spec.column(ERROR)
    d, md, comps = _metric_part(results, progress, spec, blocks, err, "test error")
    if not comps:
        return Claim(name, heading, d, "no runs yet", _no_runs(progress, blocks))
    body = [_intro(progress, spec, blocks, comps, what), "", *md]
    for part in extra:
        body += part(results, progress, spec, blocks)
    for b in blocks:
        ranked = rank_table(results, b, err, spec.label)
        if ranked:
            others = [o for o in joined_blocks(results, b) if o != b]
            where = f"block `{b}`" + (f" with the losses of {', '.join(f'`{o}`' for o in others)} (runs that differ "
                                      "only in the loss and its learning rate)" if others else "")
            body += [f"Ranks in {where}. " + ranked[1], "", ranked[0], ""]
    return Claim(name, heading, d, d.evidence(), "\n".join(body), comparisons=comps)


def _mixed_part(results, progress, spec, blocks) -> list[str]:
    if not spec.mixed:
        return []
    return _metric_part(results, progress, spec, blocks, spec.column(ERROR), "test error", label=spec.mixed,
                        plain=True)[1]


def _few_group_part(results, progress, spec, blocks) -> list[str]:
    return _metric_part(results, progress, spec, blocks, spec.column(ACC_FEW),
                        "accuracy on the few-shot class group (the rarest classes, as the training loop groups them)")[1]


def _beside_lines(beside: Sequence[Beside], claim: str) -> list[str]:
    """The Markdown of the comparisons beside ``claim`` (:func:`beside_comparisons`), in their order."""
    return [line for b in beside if b.claim == claim for line in b.md]


def _calibration_baselines_part(results, spec, beside: Sequence[Beside]) -> list[str]:
    """GenCE against each of ``spec.calibration_baselines`` on ECE before and after temperature scaling and
    on test error, the same statistics as the claim's; shown, not part of the claim's verdict."""
    bases = list(dict.fromkeys(results.canonical(b) for b in spec.calibration_baselines))
    if not bases:
        return []
    return [f"### {spec.label} against the calibration baselines", "",
            f"{spec.label} − each of {', '.join(f'`{results.display(b)}`' for b in bases)} over matching seeds, "
            "with the same statistics (Holm over the settings of each baseline and metric). Shown beside the claim, "
            f"not part of its verdict, which compares {spec.label} with {spec.baseline}. Where a baseline's runs "
            "are in another block than GenCE's, the table names both blocks and each loss's learning rate: a "
            "baseline trained at a learning rate that was not tuned for it is at a disadvantage the difference "
            "includes.", "", *_beside_lines(beside, "calibration")]


def calibration_claims(results, progress, spec, beside: Sequence[Beside] = ()) -> list[Claim]:
    blocks = spec.blocks_for("calibration")
    heading = "Claim: calibration before and after temperature scaling"
    parts = {}
    for col, what in ((ECE, "ECE before temperature scaling"), (ECE_TS, "ECE after temperature scaling"),
                      (ADAECE, "AdaECE before temperature scaling"), (CWECE, "classwise ECE before temperature scaling")):
        parts[col.key] = _metric_part(results, progress, spec, blocks, spec.column(col), what)
    before, after = parts[ECE.key][0], parts[ECE_TS.key][0]
    if not parts[ECE.key][2]:
        body = _no_runs(progress, blocks)
    else:
        bins = sorted({r.config.get("n_bins") for r in results.runs if r.config.get("n_bins")})
        body = "\n".join([f"Blocks {_blocks_text(blocks)}, ECE with {'/'.join(map(str, bins))} equal-width bins on the "
                          "test split, before and after temperature scaling (temperature fitted on the validation "
                          "split, per run).", ""] + [line for p in parts.values() for line in p[1]]
                         + _calibration_baselines_part(results, spec, beside))
    return [Claim("Calibration before temperature scaling (ECE)", heading, before,
                  before.evidence() if parts[ECE.key][2] else "no runs yet", body, "calibration", parts[ECE.key][2]),
            Claim("Calibration after temperature scaling (ECE)", heading, after,
                  after.evidence() if parts[ECE_TS.key][2] else "no runs yet", "", "calibration",
                  parts[ECE_TS.key][2])]


def ood_claim(results, progress, spec) -> Claim:
    blocks = spec.blocks_for("ood")
    heading, name = "Claim: OOD detection", "OOD detection (MSP AUROC)"
    d, md, comps = _metric_part(results, progress, spec, blocks, spec.column(OOD_AUROC), "MSP AUROC averaged over OOD sets")
    if not comps:
        return Claim(name, heading, d, "no runs yet", _no_runs(progress, blocks))
    sets = sorted({s for r in results.runs if r.block in blocks for s in ood_sets(r.metrics)})
    body = ["Score: maximum softmax probability; in-distribution test images are the positive class. Each run's "
            f"AUROC and FPR at 95% TPR are averaged over its OOD sets ({', '.join(sets)}; the sets differ by "
            "dataset), then compared seed by seed.", "", *md]
    body += _metric_part(results, progress, spec, blocks, spec.column(OOD_FPR95), "MSP FPR95 averaged over OOD sets")[1]
    body += ["Per OOD set (settings where the set was used):", ""]
    for s in sets:
        col = spec.column(ood_column(s, "auroc"))
        comps_s = _compare_blocks(results, progress, blocks, spec.label, spec.baseline, col)
        annotate_pilot(comps_s, results, spec)
        mark_verdict_family(comps_s, spec)
        ds = decide(comps_s, 0, spec.min_fraction)
        body += ["- " + outcome_sentence(comps_s, ds, f"MSP AUROC against {s}", spec.label, spec.baseline)]
    return Claim(name, heading, d, d.evidence(), "\n".join(body), "ood", comps)


def _collapsed(run: T.Run) -> bool:
    v = run.metrics.get(METRIC["never_predicted"])
    return v is not None and not math.isnan(float(v)) and float(v) > 0


LR_PLOT_CAPTION = ("test error against {field}, collapsed runs marked, the {field} the tuned runs use ringed "
                   "(none while the sweep is undecided)")
NEAR_BEST = 0.01   # the learning-rate range within 1 pp of a loss's best test error


def near_best_range(means: Mapping[float, float], near: float = NEAR_BEST) -> str:
    """The values whose mean is within ``near`` of the smallest mean: ``"0.05–0.2 (×4; 3 of 4)"``; ``–`` without
    means. A value inside the range that is not near the best is not in it, so the count can be below the span."""
    if not means:
        return "–"
    best = min(means.values())
    within = sorted(v for v, m in means.items() if m <= best + near + 1e-12)
    lo, hi = within[0], within[-1]
    span = f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"
    return f"{span} (×{hi / lo:.3g}; {len(within)} of {len(means)})"


def chosen_values(tuning: Sequence[T.TuningTable], block: str, setting: tuple[str, str, str],
                  labels: Sequence[str], field: str) -> dict[str, Any]:
    """``{label: value}``: the ``field`` value the tuned blocks use, chosen on validation from the tuning runs
    of ``block`` (a tuning source) at ``setting`` (dataset, regime, model); labels with no choice yet (no
    done run) and a block no tuned block tunes from are left out."""
    dataset, regime, model = setting
    return {row.label: row.value for t in tuning if block in t.sources and t.field == field for row in t.rows
            if row.chosen and row.label in labels and (row.dataset, row.model) == (dataset, model)
            and regime in row.regimes}


def lr_claim(results, progress, spec) -> tuple[Claim, list]:
    field, blocks, err = spec.field, spec.lr_robustness, spec.column(ERROR)
    ce_l, ge_l = spec.baseline, spec.label
    name, heading = "Learning-rate robustness", "Claim: learning-rate robustness and collapse"
    every = list(results.runs) + list(results.tuning_runs)
    mine = [r for r in every if r.block in blocks and r.label in (ce_l, ge_l)]
    if not mine:
        return Claim(name, heading, Decision(NO_DATA, 0, 0, 0, 0, False), "no runs yet",
                     f"No runs yet of {ce_l} or {ge_l} in {_blocks_text(blocks)}.", "lr_robustness"), []
    by: dict[tuple, dict] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in mine:
        by[(r.block, r.setting)][r.label][r.config.get(field)][r.seed] = r
    keys = sorted(by, key=lambda k: (blocks.index(k[0]), T.setting_order(k[1])))
    rows, worst_comps, worst_what, width_rows = [], [], {}, []

    def comp(block, setting, ge, ce):
        return Comparison(block, setting, ge_l, ce_l, err,
                          paired_difference({s: err.value(r.metrics) for s, r in ge.items()},
                                            {s: err.value(r.metrics) for s, r in ce.items()}),
                          mean_std([err.value(r.metrics) for r in ge.values()])[0],
                          mean_std([err.value(r.metrics) for r in ce.values()])[0], None)

    for key in keys:
        block, setting = key
        losses = by[key]
        lrs = sorted({lr for lab in losses for lr in losses[lab]})
        for lr in lrs:
            ce, ge = losses[ce_l].get(lr, {}), losses[ge_l].get(lr, {})
            c = comp(block, setting, ge, ce)
            rows.append([block, setting[0], setting[2], setting[1], f"{lr:g}",
                         f"{T.fmt_num(c.mean_other, 2, 100)} ({len(ce)})", f"{T.fmt_num(c.mean_label, 2, 100)} ({len(ge)})",
                         fmt_diff(c) if ce and ge else "", fmt_p(c.result.p),
                         f"{sum(map(_collapsed, ce.values()))}/{len(ce)}", f"{sum(map(_collapsed, ge.values()))}/{len(ge)}"])
        # each loss's worst over the values both ran: a sweep extended for one loss only (its best at an edge)
        # would otherwise give that loss more chances to be worst, or drop the setting, the one whose optima differ
        both = set(losses[ce_l]) & set(losses[ge_l])
        worst = {}
        width_row = [block, setting[0], setting[2], setting[1]]
        for lab in (ce_l, ge_l):
            means = {lr: mean_std([err.value(r.metrics) for r in seeds.values()])[0] for lr, seeds in losses[lab].items()}
            means = {lr: m for lr, m in means.items() if not math.isnan(m)}
            shared = {lr: m for lr, m in means.items() if lr in both}
            if shared:
                worst[lab] = max(shared, key=lambda lr: (shared[lr], lr))
            width_row.append(near_best_range(means))
        if len(lrs) > 1:
            width_rows.append(width_row)
        if len(worst) == 2 and len(both) > 1:
            worst_comps.append(comp(block, setting, losses[ge_l][worst[ge_l]], losses[ce_l][worst[ce_l]]))
            worst_what[(block, setting)] = worst
    # the collapse test counts the runs of the settings the verdict is decided on: with decide_on =
    # "converged", those whose budget passes the pilot's rule (as for the worst-lr comparisons)
    counted = mine
    if spec.only_converged:
        pilot, status = pilot_settings(spec), {}
        for r in mine:
            if (r.block, r.setting) not in status:
                status[(r.block, r.setting)] = _pilot_status(pilot, every, r.setting,
                                                             ((r.block, ce_l), (r.block, ge_l)))[1]
        counted = [r for r in mine if status[(r.block, r.setting)] == C.PASSES]
    def collapse_counts(runs):   # per loss: runs collapsed, runs
        return ({lab: sum(_collapsed(r) for r in runs if r.label == lab) for lab in (ce_l, ge_l)},
                {lab: sum(r.label == lab for r in runs) for lab in (ce_l, ge_l)})
    n_coll, n_runs = collapse_counts(counted)
    p_fisher = float(fisher_exact([[n_coll[ge_l], n_runs[ge_l] - n_coll[ge_l]],
                                   [n_coll[ce_l], n_runs[ce_l] - n_coll[ce_l]]])[1]) if all(n_runs.values()) else math.nan
    more_collapse = bool(p_fisher < ALPHA) and n_coll[ge_l] / n_runs[ge_l] > n_coll[ce_l] / n_runs[ce_l]
    annotate_pilot(worst_comps, results, spec)
    mark_verdict_family(worst_comps, spec)
    d = with_pilot_counts(decide(worst_comps, 0, spec.min_fraction), worst_comps, spec)
    if not d.compared:
        status = NOT_HOLDS if more_collapse else NO_DATA
    elif more_collapse or d.status == NOT_HOLDS:
        status = NOT_HOLDS
    elif d.status in (HOLDS, NO_BETTER):
        status = HOLDS
    elif d.status == MIXED:
        status = MIXED
    else:
        status = INCONCLUSIVE
    provisional = any(b.done < b.total for b in progress.blocks if b.block in blocks)
    decision = dataclasses.replace(d, status=status, provisional=provisional)
    shown = " in the settings shown converged" if spec.only_converged else ""
    all_coll, all_runs = collapse_counts(mine)
    evidence = (f"collapsed runs{shown}: {ge_l} {n_coll[ge_l]}/{n_runs[ge_l]}, {ce_l} {n_coll[ce_l]}/{n_runs[ce_l]} "
                f"({p_text(p_fisher, 'Fisher p')}); worst-lr error over {d.compared} setting(s)")
    if d.pooled is not None and d.pooled.k:
        r = d.pooled.random
        evidence += f": pooled Δ {fmt_estimate(r.mean, r.low, r.high, err)}{unit(err)}"
    evidence += f", significantly higher for {ge_l} in {d.worse} after Holm"
    coll_where = sorted({(r.label, r.config.get(field), r.config["dataset"], r.config["regime"]) for r in mine
                         if _collapsed(r)}, key=str)
    md = [f"Blocks {_blocks_text(blocks)}: {ce_l} and {ge_l} trained at each {field} of the sweep on the same seeds. "
          f"A run has *collapsed* when at least one class is never predicted on the test split "
          f"(`{METRIC['never_predicted']}` > 0).", "",
          f"- Collapsed runs in these blocks{shown}: {ge_l} {n_coll[ge_l]} of {n_runs[ge_l]}, {ce_l} "
          f"{n_coll[ce_l]} of {n_runs[ce_l]} (Fisher's exact test, two-sided: {p_text(p_fisher)})"
          + ("." if not spec.only_converged else
             "; counting every setting (the verdict is not decided on the others): "
             + ", ".join(f"{lab} {all_coll[lab]} of {all_runs[lab]}" for lab in (ge_l, ce_l)) + ".")]
    if coll_where:
        md.append("- Where runs collapsed (loss, " + field + ", dataset, regime): "
                  + "; ".join(f"{lab}, {lr:g}, {ds}, {reg}" for lab, lr, ds, reg in coll_where) + ".")
    sweeps = [s for s in progress.extensions if s.group.grid in blocks and s.field == field
              and s.group.label in (ce_l, ge_l)]
    if sweeps:
        edge = [s for s in sweeps if s.kind == X.AT_EDGE]
        where = "; ".join(f"{s.group.label}, {s.group.config['dataset']}, {s.group.config['regime']}, "
                          f"{s.group.config['model']}: {field} {s.state.best:g}" for s in edge)
        md.append(f"- Sweeps of {ce_l} and {ge_l} in these blocks that extend: {len(sweeps)}; undecided (runs "
                  f"missing): {sum(s.kind == X.UNDECIDED for s in sweeps)}; **AT EDGE** after their last extension (the best "
                  f"{field} is still the smallest or largest tried, its optimum not found): {len(edge)}"
                  + (f" ({where})" if edge else "") + f". See '{EXTENSIONS_HEADING}' under 'Study progress'.")
    empty = [b for b in blocks if not any(r.block == b for r in mine)]
    if empty:
        md.append("- Still without runs: " + ", ".join(f"block `{b}`" for b in empty) + ".")
    if d.compared:
        md += ["- " + outcome_sentence(worst_comps, decision, "test error at each loss's worst " + field, ge_l, ce_l)]
    md += ["", f"Test error % per {field} (mean over seeds, runs in brackets); Δ = {ge_l} − {ce_l} in percentage "
           "points [t 95% CI]; collapsed = runs with a class never predicted.", "",
           T.markdown_table(["block", "dataset", "model", "regime", field, f"{ce_l} error %", f"{ge_l} error %",
                             "Δ [95% CI]", "t p", f"collapsed {ce_l}", f"collapsed {ge_l}"], rows,
                            ["l"] * 4 + ["r"] * 7), ""]
    if width_rows:
        md += [f"The {field}s within {NEAR_BEST * 100:g} pp of each loss's best mean test error: the smallest to "
               f"the largest of them, the factor between those two (×1: only the best) and how many of the "
               f"{field}s tried are within:", "",
               T.markdown_table(["block", "dataset", "model", "regime", f"{ce_l}: {field} within {NEAR_BEST * 100:g} pp",
                                 f"{ge_l}: {field} within {NEAR_BEST * 100:g} pp"], width_rows, ["l"] * 6), ""]
    if worst_comps:
        wrows = [[c.block, c.setting[0], c.setting[2], c.setting[1],
                  f"{T.fmt_num(c.mean_other, 2, 100)} ({field} {worst_what[(c.block, c.setting)][ce_l]:g})",
                  f"{T.fmt_num(c.mean_label, 2, 100)} ({field} {worst_what[(c.block, c.setting)][ge_l]:g})",
                  fmt_diff(c), fmt_p(c.result.p), fmt_p(c.p_holm), MARK[c.outcome]] for c in worst_comps]
        md += [f"Worst {field} per loss (highest mean test error over the {field}s both losses ran; a value "
                f"that an extension added for one loss only is left out here):",
               "", T.markdown_table(["block", "dataset", "model", "regime", f"{ce_l} worst error %",
                                     f"{ge_l} worst error %", "Δ [95% CI]", "t p", "Holm p", "outcome"], wrows,
                                    ["l"] * 4 + ["r"] * 5 + ["l"]), ""]
    md += [collapse_table(every, field, results), ""]
    # a sweep still undecided (runs missing, the runner may add values) has no lr the tuned runs use yet:
    # its validation-best so far gets no ring
    undecided = {(s.group.grid, (s.group.config["dataset"], s.group.config["regime"], s.group.config["model"]),
                  s.group.label) for s in sweeps if s.kind == X.UNDECIDED}
    panels = [(f"{block}: {setting_name(setting)}",
               {lab: {lr: [(err.value(r.metrics), _collapsed(r)) for r in seeds.values()]
                      for lr, seeds in by[(block, setting)][lab].items()}
                for lab in (ce_l, ge_l) if by[(block, setting)].get(lab)},
               {lab: v for lab, v in chosen_values(results.tuning, block, setting, (ce_l, ge_l), field).items()
                if (block, setting, lab) not in undecided})
              for block, setting in keys]
    return Claim(name, heading, decision, evidence, "\n".join(md), "lr_robustness", worst_comps), panels


def collapse_table(runs: Sequence[T.Run], field: str, results: T.Results) -> str:
    """Per loss and lr over every stored run: runs, collapsed runs, most classes never predicted."""
    counts: dict[tuple, list] = {}
    for r in runs:
        if r.label in results.same_as:
            continue
        s = counts.setdefault((r.label, r.config.get(field)), [0, 0, 0.0])
        s[0] += 1
        if _collapsed(r):
            s[1] += 1
            s[2] = max(s[2], float(r.metrics[METRIC["never_predicted"]]))
    rows = [[results.display(lab), f"{lr:g}", str(n), str(c), f"{m:g}" if c else "0"]
            for (lab, lr), (n, c, m) in sorted(counts.items(), key=lambda kv: (T.label_order(kv[0][0]), kv[0][1]))]
    return ("Collapse per loss and learning rate, every stored run of every block (tuning and main):\n\n"
            + T.markdown_table(["loss", field, "runs", "collapsed", "most classes never predicted"], rows))


# -------------------------------------------------------------------------------------------- assembly
def progress_markdown(progress: Progress) -> str:
    """The progress sentence and the per-block table; with sweeps that extend, their runs added so far are
    counted in their blocks (and in a column of their own), the sentence says how many are undecided, and
    a table follows with each sweep's values, chosen value and state (AT EDGE: the optimum was not found)."""
    if not progress.blocks:
        return "The grid files stored in the database could not be expanded; progress unknown."
    t = progress.total
    sweeps = progress.extensions
    header = ["block", "runs in grid", "done", "failed", "missing"] + (["added by extension"] if sweeps else [])
    rows = [[b.block, str(b.total), str(b.done), str(b.failed), str(b.missing)] + ([str(b.added)] if sweeps else [])
            for b in progress.blocks]
    rows.append([f"**{x}**" for x in ("all", t.total, t.done, t.failed, t.missing) + ((t.added,) if sweeps else ())])
    extension = ""
    if sweeps:
        extension = (f"The runs include {t.added} added by the runner to sweeps whose best value sat at an edge "
                     f"(stored, or decided and not run yet); {progress.undecided} of the {len(sweeps)} sweep(s) that "
                     "may extend are still undecided (runs missing)" + (", and each may add more runs. "
                                                                         if progress.undecided else ". "))
    text = (f"{t.done} of the grid's {t.total} runs are stored done ({t.done / t.total:.0%}), {t.failed} failed, "
            f"{t.missing} not run yet (grid files stored in the database, expanded as the runner does; a run of a "
            "tuned block counts once, whichever learning rate it gets). " + extension
            + "Until every block is complete the numbers below are provisional; settings with fewer seeds than the "
            f"grid asks are marked {PARTIAL}.\n\n" + T.markdown_table(header, rows))
    if progress.unreadable:
        text += "\n\nGrid files that could not be expanded: " + "; ".join(progress.unreadable)
    if sweeps:
        text += f"\n\n### {EXTENSIONS_HEADING}\n\n" + X.extensions_markdown(sweeps)
    return text


def verdict_markdown(verdict: Verdict) -> str:
    spec = verdict.spec
    rows = [[c.name, f"**{c.decision.text}**", c.evidence] for c in verdict.claims]
    return (f"Each claim compares `{spec.label}` with `{spec.baseline}`, decided by code from the rules below. "
            + SETTING_RULE + "\n\n" + T.markdown_table(["claim", "verdict", "evidence"], rows, ["l", "l", "l"])
            + "\n\nRules. Accuracy, calibration and OOD claims — " + RULE.format(min_fraction=spec.min_fraction)
            + ". Learning-rate robustness — " + LR_RULE + ". \"Provisional\": settings or seeds the grid asks for "
            "are still missing." + (CONVERGED_RULE.format(pilot=spec.pilot) if spec.only_converged else "")
            + "\n\n### Method\n\n"
            "- Per setting: the paired differences GenCE − baseline (one per seed; seed s of both losses shares data "
            "split and initialisation) give a mean with a Student-t 95% interval and the paired-t p "
            "(`gence.report.stats.paired_difference`); their coverage is checked by simulation in "
            "`tests/test_stats.py` (between 93% and 97% at 5 and 10 normal pairs). The exact Wilcoxon signed-rank p "
            "and the Hodges–Lehmann estimate are printed as a check against one collapsed run. The two losses' "
            "means in a setting's row are over the seeds paired. A loss that a block lacks (a grid that runs its "
            "baselines in a block of their own) is paired with its runs in another block of the setting whose "
            "configs differ only in the loss and its learning rate (`gence.report.tables.PAIR_FREE_FIELDS`); "
            "such a row names both blocks and both learning rates.\n"
            "- Per claim: the settings' mean differences are pooled (`gence.report.stats.pool`): their mean with a t "
            "interval over settings (random-effects view, what decides), and the fixed effect with setting as a "
            "factor, Cochran's Q and I² beside it; the same per dataset. Holm's correction runs over the settings "
            "of a claim. Equivalence: two one-sided t tests on the pooled estimate against the stated margin.\n"
            "- Under no true effect each directional verdict (\"holds\", \"does not hold\") is one tail of the "
            "pooled two-sided 95% interval, so together they are wrong about as often as its 5% level; "
            "`tests/test_stats.py` simulates this design (18 settings x 5 pairs) and asserts each below 5%.\n"
            "- A loss that gave exactly the same numbers as another in every run both have is shown once, as "
            "`a = b`.")


def build_verdict(results: T.Results, spec: VerdictSpec) -> Verdict:
    """The claims the spec names, each with its decision and Markdown body (no files written)."""
    progress = grid_progress(results)
    beside = beside_comparisons(results, progress, spec)
    claims = []
    if spec.few_labels:
        claims.append(dataclasses.replace(accuracy_claim(
            results, progress, spec, spec.few_labels, "Accuracy with few labels", "Claim: accuracy with few labels",
            "balanced small-data regimes", [_mixed_part]), key="few_labels"))
    if spec.imbalance:
        claims.append(dataclasses.replace(accuracy_claim(
            results, progress, spec, spec.imbalance, "Accuracy under class imbalance",
            "Claim: accuracy under class imbalance", "long-tailed regimes",
            # the imbalance baselines: computed once, with the comparisons beside the claims
            [_few_group_part, _mixed_part, lambda *_: _beside_lines(beside, "imbalance")]), key="imbalance"))
    if spec.blocks_for("calibration"):
        claims += calibration_claims(results, progress, spec, beside)
    if spec.blocks_for("ood"):
        claims.append(ood_claim(results, progress, spec))
    panels = []
    if spec.lr_robustness:
        lr, panels = lr_claim(results, progress, spec)
        claims.append(lr)
    return Verdict(spec, progress, claims, panels, beside)


# per claim whose section shows baselines beside it: the metrics compared, as (column, its words in the
# section, its few words in the opening's table)
BASELINE_METRICS = {
    "imbalance": ((ERROR, "test error", "test error"),),
    "calibration": ((ECE, "ECE before temperature scaling", "ECE before TS"),
                    (ECE_TS, "ECE after temperature scaling", "ECE after TS"), (ERROR, "test error", "test error")),
}


def beside_comparisons(results: T.Results, progress: Progress, spec: VerdictSpec) -> list[Beside]:
    """The comparisons shown beside the claims (:class:`Beside`), each computed once, in this order: the mixed
    GenCE against the baseline on test error (few-label and imbalance blocks pooled: the opening's; each
    claim's section shows its own blocks'), GenCE against each imbalance baseline (:data:`BASELINE_METRICS`),
    then against each calibration baseline. Those of a claim whose blocks are empty are left out."""
    wanted = []
    if spec.mixed:
        wanted.append(("", spec.mixed, spec.baseline, spec.main_blocks, ERROR, "test error", "test error"))
    for claim, bases, blocks in (("imbalance", spec.imbalance_baselines, spec.imbalance),
                                 ("calibration", spec.calibration_baselines, spec.blocks_for("calibration"))):
        if blocks:
            wanted += [(claim, spec.label, base, blocks, *metric)
                       for base in dict.fromkeys(results.canonical(b) for b in bases) for metric in BASELINE_METRICS[claim]]
    out = []
    for claim, label, other, blocks, col, words, short in wanted:
        d, md, comps = _metric_part(results, progress, spec, blocks, spec.column(col), words, label=label, other=other,
                                    plain=True)
        out.append(Beside(label, results.display(other), short, d, comps, claim, md))
    return out


def verdict_of(ctx: Context, spec: VerdictSpec) -> Verdict:
    """The verdict of ``spec`` on the report's results, built once per report (several sections show it)."""
    return ctx.derived("verdict", lambda: build_verdict(ctx.results, spec))


def lr_plot(ctx: Context, spec: VerdictSpec) -> Path:
    """The learning-rate robustness plot (written once per report; the verdict must have lr panels)."""
    def draw() -> Path:
        path = plots.lr_robustness(verdict_of(ctx, spec).lr_panels, ctx.plots_dir / "lr_robustness.png", spec.field)
        ctx.files.append(path)
        return path
    return ctx.derived("plot:lr_robustness", draw)


def verdict_sections(spec: VerdictSpec) -> list[Section]:
    """The verdict as report sections: study progress, the verdict table, then one section per claim (the
    learning-rate one with its plot). Pass to :func:`gence.report.sections.with_verdict`."""
    def get(ctx: Context) -> Verdict:
        return verdict_of(ctx, spec)

    def progress_section(ctx: Context) -> str:
        return "## Study progress\n\n" + progress_markdown(get(ctx).progress)

    def verdict_section(ctx: Context) -> str:
        return "## Verdict\n\n" + verdict_markdown(get(ctx))

    def claim_section(heading: str):
        def section(ctx: Context) -> str:
            v = get(ctx)
            bodies = [c.body for c in v.claims if c.heading == heading and c.body]
            if not bodies:
                return ""
            md = [f"## {heading}", "", *bodies]
            if heading.startswith("Claim: learning-rate") and v.lr_panels and ctx.with_plots:
                path = lr_plot(ctx, spec)
                md += ["", f"![{LR_PLOT_CAPTION.format(field=spec.field)}]({ctx.link(path)})"]
            return "\n".join(md)
        return section

    headings = ["Claim: accuracy with few labels", "Claim: accuracy under class imbalance",
                "Claim: calibration before and after temperature scaling", "Claim: OOD detection",
                "Claim: learning-rate robustness and collapse"]
    return [progress_section, verdict_section, *[claim_section(h) for h in headings]]
