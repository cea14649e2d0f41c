"""Tables from stored runs: grouping, per-loss hyperparameter selection on validation, summaries.

Vocabulary: a *setting* is (dataset, regime, model); a *group* is a setting plus a loss label; a group
may hold several *variants* when the grid swept a TrainConfig field (e.g. ``lr=0.01`` and ``lr=0.1``):
the fields whose values differ between the group's runs, apart from the seed. The main tables use one
variant per group, the one with the best mean validation metric (``select_by``), chosen by code.

Groups are also split by grid block (the ``grid`` column of the database): seeds of two blocks that share a
setting and a loss are never pooled; a setting's table then has a ``block`` column. Comparisons pair seeds
within a block, or, for a loss its block lacks, with that loss's runs in another block of the setting whose
configs are the same apart from the loss and its learning rate (:data:`PAIR_FREE_FIELDS`,
:meth:`Results.partner`): a grid that runs its baselines in a block of their own still compares them.
Runs of tuning blocks (blocks named in some block's ``tune.from``, read from the grid files stored in the
database) are not in the main tables: :func:`tuning_tables` summarises them per candidate value. Rows that are
not benchmark runs (the properness study's, or any without a ``dataset``) are skipped. Labels whose runs gave
exactly the same metrics as another label's on every run both have (the same loss under two names) are shown
once (:func:`same_loss_labels`, ``Results.display``).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from gence.experiments.db import KEY_EXCLUDED_FIELDS, ResultsDB, canonical_json
from gence.experiments.grid import TuneSpec, tuning_ident, value_order
from gence.report.columns import (LONG_TAILED_COLUMNS, MAIN_COLUMNS, METRIC, PAIRED_COLUMNS, TIMING_METRICS,
                                  Column, ood_key, ood_sets)
from gence.report.stats import PairedDifference, holm, mean_std, p_text, paired_difference
from gence.selection import best_candidate

# the config fields in which two runs compared seed by seed may differ: the loss, its parameters and its
# learning rate (what a comparison of losses compares: each at its own lr), the seed (pairs share it) and
# where the runs executed; equal in everything else (data, budget, model, augmentation), seed s of both
# runs trains on the same images from the same initialisation
PAIR_FREE_FIELDS = ("loss", "loss_params", "lr", "seed", *KEY_EXCLUDED_FIELDS)
DEFAULT_SELECT_BY = METRIC["val_error"]
TIE_BREAK = METRIC["val_nll"]
BASELINE = "ce"


def compute_seconds(wall_seconds: float | None, extras: Any) -> float:
    """A run's compute time: its stored wall time or, where longer, the training seconds its history counts.
    A run resumed from a checkpoint stores the wall time of its last attempt only, while its history's
    ``seconds`` add up the training time of every attempt (evaluations left out), so the larger of the
    two is the closer lower bound."""
    history = extras.get("history") if isinstance(extras, dict) else None   # a run function's own may differ
    last = history[-1] if isinstance(history, list) and history else None
    trained = last.get("seconds") if isinstance(last, dict) else None
    return max(wall_seconds or 0.0, trained if isinstance(trained, (int, float)) else 0.0)


@dataclasses.dataclass
class Run:
    key: str
    config: dict
    label: str
    metrics: dict
    extras: Any
    wall_seconds: float
    hardware: str
    versions: dict
    block: str = ""

    @property
    def setting(self) -> tuple[str, str, str]:
        return (self.config["dataset"], self.config["regime"], self.config["model"])

    @property
    def compute_seconds(self) -> float:
        return compute_seconds(self.wall_seconds, self.extras)

    @property
    def precision(self) -> str:
        """The run's arithmetic: ``extras["precision"]`` (see :func:`gence.train.loop.precision`), or for a
        run stored before that field, what ``amp`` meant then: float16 autocast on CUDA, bf16 on a CPU."""
        stored = self.extras.get("precision") if isinstance(self.extras, dict) else None
        if stored:
            return stored
        if not self.config.get("amp"):
            return "float32"
        return "float16 autocast" if "CUDA" in self.hardware else "bfloat16 autocast"

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


@dataclasses.dataclass
class Group:
    setting: tuple[str, str, str]
    label: str
    variants: dict[str, list[Run]]            # variant string ("" when only one) -> runs
    selected: str                             # the variant used in the main tables
    selection: dict[str, float] = dataclasses.field(default_factory=dict)  # variant -> mean select metric
    block: str = ""

    @property
    def runs(self) -> list[Run]:
        return self.variants[self.selected]

    @property
    def loss(self) -> str:
        return self.runs[0].config["loss"]


@dataclasses.dataclass
class TuningRow:
    """One candidate value of a tuned field for one dataset/model/loss: its tuning runs' statistics."""

    dataset: str
    model: str
    label: str
    regimes: tuple[str, ...]    # the regimes its tuning runs pool, in regime order
    value: Any
    n: int                      # done runs
    failed: int
    metric: tuple[float, float]
    test_error: tuple[float, float]
    chosen: bool
    seeds: int                  # distinct seeds among the done runs


@dataclasses.dataclass
class TuningTable:
    sources: tuple[str, ...]    # the tuning blocks
    field: str
    metric: str
    tuned_blocks: tuple[str, ...]
    rows: list[TuningRow]


@dataclasses.dataclass
class Results:
    runs: list[Run]
    failed: list[dict]
    groups: list[Group]
    grids: list[dict]
    select_by: str
    blocks: list[str] = dataclasses.field(default_factory=list)           # main-table blocks, in file order
    tuning: list[TuningTable] = dataclasses.field(default_factory=list)
    tuning_runs: list[Run] = dataclasses.field(default_factory=list)      # runs of tuning blocks
    same_as: dict[str, str] = dataclasses.field(default_factory=dict)     # label -> the label it duplicates
    # values derived from the fields above, computed once by whoever needs them first (e.g.
    # gence.report.extensions.stored); not an argument, so dataclasses.replace starts a copy empty
    memo: dict[str, Any] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def canonical(self, label: str) -> str:
        """The label a duplicate label is shown as (itself when it is no duplicate)."""
        return self.same_as.get(label, label)

    def display(self, label: str) -> str:
        """``a = b = ...`` for a label that stands for several identical ones, else the label."""
        twins = [lab for lab, first in self.same_as.items() if first == label]
        return " = ".join([label, *twins])

    def settings(self) -> list[tuple[str, str, str]]:
        return sorted({g.setting for g in self.groups}, key=setting_order)

    def block_order(self, block: str) -> tuple:
        return (self.blocks.index(block), block) if block in self.blocks else (len(self.blocks), block)

    def blocks_of(self, setting) -> list[str]:
        return sorted({g.block for g in self.groups if g.setting == setting}, key=self.block_order)

    def primary_block(self, setting) -> str | None:
        """The block plots show for ``setting``: the first block (file order) of the summary row
        (:func:`summary_rows`: blocks that differ only in loss and lr) with the most losses, the first such row
        among equals; None without runs. (An lr sweep block before the main one, with CE and GenCE only, is
        not what a plot of every loss should draw from.)"""
        rows = summary_rows(self, setting)
        if not rows:
            return None
        count = {b: len(self.groups_of(setting, b)) for row in rows for b in row}
        return max(rows, key=lambda row: (sum(count[b] for b in row), -rows.index(row)))[0]

    def groups_of(self, setting, block: str | None = None) -> list[Group]:
        """The setting's groups, of one block, or of every block (block order, then loss order)."""
        return sorted((g for g in self.groups if g.setting == setting and (block is None or g.block == block)),
                      key=lambda g: (self.block_order(g.block), label_order(g.label, g.loss)))

    def group(self, setting, label, block: str | None = None) -> Group | None:
        """A loss's group in ``setting`` and ``block`` (default: the setting's primary block)."""
        block = self.primary_block(setting) if block is None else block
        return next((g for g in self.groups if g.setting == setting and g.label == label and g.block == block),
                    None)

    def baseline(self, setting, block: str | None = None) -> Group | None:
        return self.group(setting, BASELINE, block)

    def shown(self, setting, label: str) -> Group | None:
        """The group of ``label`` that plots show for ``setting``: in the setting's primary block, or in a block
        paired with it (:meth:`partner`), so baselines run in a block of their own are drawn beside CE."""
        block = self.primary_block(setting)
        return None if block is None else self.partner(setting, label, block)

    def partner(self, setting, label: str, block: str) -> Group | None:
        """The group of ``label`` that the runs of ``block`` in ``setting`` are compared with: its own group in
        ``block``; when ``block`` has none, its group in the first other block of the setting (file order) whose
        runs there have the same configs as ``block``'s apart from :data:`PAIR_FREE_FIELDS` (the same set of
        :func:`pairing_ident`: a block sweeping its budget pairs with no block at one of them); None when there
        is no such group."""
        own = self.group(setting, label, block)
        if own is not None:
            return own
        mine = self.idents(setting, block)
        for other in self.blocks_of(setting):
            g = self.group(setting, label, other) if other != block else None
            if g is not None and self.idents(setting, other) == mine:
                return g
        return None

    def idents(self, setting, block: str) -> set[str]:
        """The :func:`pairing_ident` of every run (every variant) of ``block`` in ``setting``."""
        return {pairing_ident(r.config) for g in self.groups_of(setting, block) for v in g.variants.values()
                for r in v}

    def multi_block(self) -> bool:
        return len({g.block for g in self.groups}) > 1

    def labels(self) -> list[str]:
        seen = {g.label: g.loss for g in self.groups}
        return sorted(seen, key=lambda lab: label_order(lab, seen[lab]))


def pairing_ident(config: Mapping[str, Any]) -> str:
    """What two runs compared seed by seed must share: their config without :data:`PAIR_FREE_FIELDS`."""
    return canonical_json({k: v for k, v in config.items() if k not in PAIR_FREE_FIELDS})


def lr_text(group: Group) -> str:
    """The learning rate(s) of a group's selected runs (``0.1``; ``0.05, 0.1`` when they differ), ``–`` without."""
    values = sorted({r.config["lr"] for r in group.runs if r.config.get("lr") is not None}, key=value_order)
    return ", ".join(_short(v) for v in values) or "–"


def label_order(label: str, loss: str = "") -> tuple:
    """CE first, then GenCE variants, then the rest alphabetically."""
    return (0 if label == BASELINE else 1 if loss == "gence" or label.startswith("gence") else 2, label)


def regime_order(regime: str) -> tuple:
    parts = regime.split(":")
    nums = []
    for p in parts[1:]:
        try:
            nums.append(float(p))
        except ValueError:
            nums.append(math.inf)
    return (parts[0], nums)


def setting_order(s: tuple[str, str, str]) -> tuple:
    return (s[0], regime_order(s[1]), s[2])


def is_benchmark_row(row: dict) -> bool:
    """A run of ``gence bench``: not the properness study's (it shares the database format)."""
    config = row.get("config")
    return isinstance(config, dict) and "dataset" in config and row.get("grid") != "properness"


def grid_tunes(grids: Sequence[dict]) -> tuple[dict[str, TuneSpec], list[str]]:
    """Blocks with ``tune`` and every block name, in file order, read from the stored grid files."""
    tunes: dict[str, TuneSpec] = {}
    names: list[str] = []
    for g in grids:
        try:
            doc = tomllib.loads(g["text"])
        except Exception:  # an unreadable stored grid only loses the tuning view, not the report
            continue
        blocks = doc.get("grid") or []
        blocks = blocks if isinstance(blocks, list) else [blocks]
        for b, block in enumerate(blocks):
            if not isinstance(block, dict):
                continue
            name = block.get("name", g.get("name") if len(blocks) == 1 else f"{g.get('name')}[{b}]")
            if name not in names:
                names.append(name)
            tune = block.get("tune")
            if isinstance(tune, dict) and "from" in tune and "field" in tune:
                sources = tune["from"] if isinstance(tune["from"], list) else [tune["from"]]
                tunes[name] = TuneSpec(tuple(sources), tune["field"], tune.get("metric", "val/error"))
    return tunes, names


def load_results(db_path: str | Path, *, select_by: str = DEFAULT_SELECT_BY) -> Results:
    """Read the done runs of a results database, group them, and pick each group's variant."""
    db_path = Path(db_path)
    if not db_path.exists():
        raise FileNotFoundError(f"results database {db_path} does not exist")
    with ResultsDB(db_path) as db:
        rows = [r for r in db.runs("done") if is_benchmark_row(r)]
        failed = [r for r in db.runs("failed") if is_benchmark_row(r)]
        grids = db.grids()
    tunes, block_names = grid_tunes(grids)
    tuning_blocks = {src for t in tunes.values() for src in t.sources}
    all_runs = [Run(key=r["key"], config=r["config"], label=r["label"], metrics=r["metrics"] or {},
                    extras=r["extras"], wall_seconds=r["wall_seconds"] or 0.0, hardware=r["hardware"] or "unknown",
                    versions={"gence": r["gence_version"], "torch": r["torch_version"],
                              "python": r["python_version"]},
                    block=r["grid"] or "")
                for r in rows]
    runs = [r for r in all_runs if r.block not in tuning_blocks]
    by_group: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        by_group[(run.setting, run.block, run.label)].append(run)
    same = same_loss_labels(all_runs)
    groups = []
    for (setting, block, label), members in by_group.items():
        if label in same:
            continue
        variants = split_variants(members)
        selection = {}
        if len(variants) > 1:
            for name, vruns in variants.items():
                selection[name] = mean_std([r.metrics.get(select_by, math.nan) for r in vruns])[0]
            selected = best_candidate({name: [r.metrics for r in vruns] for name, vruns in variants.items()},
                                      select_by, TIE_BREAK) or next(iter(variants))
        else:
            selected = next(iter(variants))
        groups.append(Group(setting, label, variants, selected, selection, block=block))
    blocks = [b for b in block_names if b not in tuning_blocks]
    blocks += sorted({g.block for g in groups} - set(blocks))
    tuning_runs = [r for r in all_runs if r.block in tuning_blocks]
    failed_tuning = [r for r in failed if r["grid"] in tuning_blocks]
    tables = tuning_tables(tunes, [r for r in tuning_runs if r.label not in same],
                           [f for f in failed_tuning if f["label"] not in same])
    return Results(runs=runs, failed=failed, groups=groups, grids=grids, select_by=select_by, blocks=blocks,
                   tuning=tables, tuning_runs=tuning_runs, same_as=same)


def same_loss_labels(runs: Sequence[Run]) -> dict[str, str]:
    """Labels that are the same loss under another name: ``{label: first label}`` for every label whose runs
    have exactly the same metrics as an earlier label's (label order) on every run both have (same block and
    config apart from the loss), with at least one such run. Such labels are shown once, as the first."""
    by_label: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in runs:
        ident = {k: v for k, v in r.config.items() if k not in ("loss", "loss_params") and k not in KEY_EXCLUDED_FIELDS}
        by_label[r.label][canonical_json([r.block, ident])] = canonical_json(
            {k: v for k, v in r.metrics.items() if k not in TIMING_METRICS})   # NaN == NaN in JSON text
    loss_of = {r.label: r.config.get("loss", "") for r in runs}
    labels = sorted(by_label, key=lambda lab: label_order(lab, loss_of[lab]))
    same: dict[str, str] = {}
    for i, a in enumerate(labels):
        if a in same:
            continue
        for b in labels[i + 1:]:
            if b in same:
                continue
            shared = set(by_label[a]) & set(by_label[b])
            if shared and all(by_label[a][k] != "{}" and by_label[a][k] == by_label[b][k] for k in shared):
                same[b] = a
    return same


def tuning_tables(tunes: dict[str, TuneSpec], runs: Sequence[Run], failed: Sequence[dict]) -> list[TuningTable]:
    """Per distinct (from blocks, field, metric): per dataset/model/loss and candidate value, the tuning
    runs' mean ± std metric and test error, with the value the runner chooses (same function) marked."""
    specs: dict[tuple, list[str]] = {}
    for block, t in tunes.items():
        specs.setdefault((t.sources, t.field, t.metric), []).append(block)
    out = []
    for (sources, field, metric), tuned_blocks in specs.items():
        mine = [r for r in runs if r.block in sources]
        bad = [f for f in failed if f["grid"] in sources]
        by_ident: dict[str, list[Run]] = defaultdict(list)
        for r in mine:
            by_ident[tuning_ident(r.config, r.label)].append(r)
        failed_by: dict[tuple, int] = defaultdict(int)
        for f in bad:
            failed_by[(tuning_ident(f["config"], f["label"]), canonical_json(f["config"].get(field)))] += 1
        for f in bad:  # every candidate of a dataset/model/loss failed: still a row
            ident = tuning_ident(f["config"], f["label"])
            by_ident.setdefault(ident, [])
        rows = []
        for ident, members in by_ident.items():
            by_value: dict[str, list[dict]] = defaultdict(list)
            for r in members:
                by_value[canonical_json(r.config.get(field))].append(r.metrics)
            chosen_key = best_candidate(by_value, metric, TIE_BREAK, order=lambda k: value_order(json.loads(k)))
            values = {canonical_json(r.config.get(field)): r.config.get(field) for r in members}
            failed_values = {canonical_json(f["config"].get(field)): f["config"].get(field) for f in bad
                             if tuning_ident(f["config"], f["label"]) == ident}
            values = {**failed_values, **values}
            ref = members[0].config if members else next(f["config"] for f in bad
                                                       if tuning_ident(f["config"], f["label"]) == ident)
            label = members[0].label if members else next(f["label"] for f in bad
                                                         if tuning_ident(f["config"], f["label"]) == ident)
            regimes = sorted({r.config["regime"] for r in members} | {f["config"].get("regime") for f in bad
                             if tuning_ident(f["config"], f["label"]) == ident}, key=regime_order)
            for vkey, value in sorted(values.items(), key=lambda kv: value_order(kv[1])):
                vr = [r for r in members if canonical_json(r.config.get(field)) == vkey]
                m, sd, _ = mean_std([r.metrics.get(metric, math.nan) for r in vr])
                e, esd, _ = mean_std([r.metrics.get(METRIC["error"], math.nan) for r in vr])
                rows.append(TuningRow(
                    dataset=ref["dataset"], model=ref["model"], label=label, regimes=tuple(regimes),
                    value=value, n=len(vr), failed=failed_by[(ident, vkey)], metric=(m, sd), test_error=(e, esd),
                    chosen=chosen_key == vkey,
                    seeds=len({r.seed for r in vr})))
        rows.sort(key=lambda r: (r.dataset, r.model, label_order(r.label), value_order(r.value)))
        out.append(TuningTable(sources=sources, field=field, metric=metric, tuned_blocks=tuple(tuned_blocks),
                               rows=rows))
    return out


def tuning_markdown(table: TuningTable) -> tuple[str, str | None]:
    """The choice table (mean ± std of the metric per value, chosen one marked) and the robustness table
    (test error per value, for losses with at least 2 seeds at every value), or None when there is none."""
    values = sorted({canonical_json(r.value): r.value for r in table.rows}.values(), key=value_order)
    keys = []
    for r in table.rows:
        k = (r.dataset, r.model, r.label)
        if k not in keys:
            keys.append(k)
    def cell_rows(fmt, only_seeded: bool):
        out = []
        for k in keys:
            mine = {canonical_json(r.value): r for r in table.rows if (r.dataset, r.model, r.label) == k}
            if only_seeded and not all(r.seeds >= 2 for r in mine.values()):
                continue
            cells = [k[0], k[1], k[2], ", ".join(next(iter(mine.values())).regimes)]
            for v in values:
                r = mine.get(canonical_json(v))
                cells.append("" if r is None else fmt(r))
            out.append(cells)
        return out

    def choice_cell(r: TuningRow) -> str:
        text = fmt_mean_std(*r.metric, 1, 4) + f" (n={r.n}" + (f", {r.failed} failed" if r.failed else "") + ")"
        return f"**{text}** ✓" if r.chosen else text

    def error_cell(r: TuningRow) -> str:
        text = fmt_mean_std(*r.test_error, 100, 2)
        return f"**{text}**" if r.chosen else text

    header = ["dataset", "model", "loss", "regimes"] + [f"{table.field}={_short(v)}" for v in values]
    align = ["l"] * 4 + ["r"] * len(values)
    choice = markdown_table(header, cell_rows(choice_cell, False), align)
    robust_rows = cell_rows(error_cell, True)
    robust = markdown_table(header, robust_rows, align) if robust_rows else None
    return choice, robust


def tuning_csv_rows(table: TuningTable) -> tuple[list[str], list[list]]:
    header = ["tuning_blocks", "tuned_blocks", "field", "metric", "dataset", "model", "loss", "regimes", "value",
              "n", "failed", "seeds", "metric_mean", "metric_std", "test_error_mean", "test_error_std", "chosen"]
    rows = [["+".join(table.sources), "+".join(table.tuned_blocks), table.field, table.metric, r.dataset, r.model,
             r.label, ", ".join(r.regimes), r.value, r.n, r.failed, r.seeds, *r.metric, *r.test_error, int(r.chosen)]
            for r in table.rows]
    return header, rows


def split_variants(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Split a group's runs by the config fields that differ between them, apart from seed and the fields
    that say where a run executed."""
    ignore = {"seed", *KEY_EXCLUDED_FIELDS}
    fields = sorted({k for r in runs for k in r.config} - ignore)
    varying = [f for f in fields if len({canonical_json(r.config.get(f)) for r in runs}) > 1]
    out: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        name = ",".join(f"{f}={_short(r.config.get(f))}" for f in varying)
        out[name].append(r)
    return dict(sorted(out.items()))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return canonical_json(value)
    return str(value)


# ------------------------------------------------------------------------------------------ formatting
def _fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals; a value that rounds to zero has no minus sign (``0.00``, not ``-0.00``)."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (times ``scale``, ``digits`` decimals; no ``-0.00``); ``–`` for a NaN mean, the mean
    alone for a NaN std."""
    if math.isnan(mean):
        return "–"
    text = _fixed(mean * scale, digits)
    if not math.isnan(std):
        text += f" ± {_fixed(std * scale, digits)}"
    return text


def fmt_num(value: float | None, digits: int = 2, scale: float = 1.0, *, signed: bool = False) -> str:
    """``value * scale`` with ``digits`` decimals, ``–`` for None or NaN: the one number format of the report.

    A value that rounds to zero prints as ``0.00`` (``+0.00`` when ``signed``), never ``-0.00``. ``signed``
    (differences): an explicit ``+``, and the minus as ``−`` (U+2212), e.g. ``+1.25``, ``−0.40``."""
    if value is None or math.isnan(value):
        return "–"
    text = _fixed(value * scale, digits)
    if not signed:
        return text
    return "−" + text[1:] if text.startswith("-") else "+" + text


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])


def slug(*parts: str) -> str:
    """A file-name part from setting names (``cifar10_balanced-10_wrn``)."""
    return "_".join(str(p).replace(":", "-").replace("/", "-").replace(" ", "") for p in parts)


def is_long_tailed(regime: str) -> bool:
    return regime.startswith(("long_tailed", "lt"))


# -------------------------------------------------------------------------------------------- tables
def setting_rows(results: Results, setting) -> list[dict]:
    """One dict per group of a setting: label, variant, n, and (mean, std) per column key."""
    cols = MAIN_COLUMNS + (LONG_TAILED_COLUMNS if is_long_tailed(setting[1]) else ())
    rows = []
    for g in results.groups_of(setting):
        row = {"dataset": setting[0], "regime": setting[1], "model": setting[2], "block": g.block,
               "loss": results.display(g.label), "variant": g.selected, "n": len(g.runs)}
        for c in cols:
            m, s, _ = mean_std([c.value(r.metrics) for r in g.runs])
            row[c.key] = (m, s)
        rows.append(row)
    return rows


def setting_table(results: Results, setting) -> tuple[str, list[str], list[list]]:
    """Markdown table of a setting, and its CSV header and rows (raw scale)."""
    cols = MAIN_COLUMNS + (LONG_TAILED_COLUMNS if is_long_tailed(setting[1]) else ())
    rows = setting_rows(results, setting)
    cols = [c for c in cols if any(not math.isnan(r[c.key][0]) for r in rows)]
    best = {}
    for c in cols:
        means = [r[c.key][0] for r in rows if not math.isnan(r[c.key][0])]
        if len(means) > 1:
            best[c.key] = max(means) if c.higher_is_better else min(means)
    show_variant = any(r["variant"] for r in rows)
    show_block = len({r["block"] for r in rows}) > 1
    header = (["block"] if show_block else []) + ["loss"] + (["selected"] if show_variant else []) + ["seeds"] \
        + [c.name for c in cols]
    md_rows = []
    for r in rows:
        cells = ([r["block"]] if show_block else []) + [r["loss"]] + ([r["variant"] or "–"] if show_variant else []) \
            + [str(r["n"])]
        for c in cols:
            text = fmt_mean_std(*r[c.key], scale=c.scale, digits=c.digits)
            if c.key in best and r[c.key][0] == best[c.key]:
                text = f"**{text}**"
            cells.append(text)
        md_rows.append(cells)
    csv_header = ["dataset", "regime", "model", "block", "loss", "variant", "n"]
    for c in cols:
        csv_header += [f"{c.key}_mean", f"{c.key}_std"]
    csv_rows = [[r["dataset"], r["regime"], r["model"], r["block"], r["loss"], r["variant"], r["n"]]
                + [v for c in cols for v in r[c.key]] for r in rows]
    return markdown_table(header, md_rows), csv_header, csv_rows


def summary_rows(results: Results, setting) -> list[list[str]]:
    """The setting's blocks as the summary table's rows: a block joins the row of an earlier one (file order)
    when their runs have the same configs apart from the loss and its learning rate (the same set of
    :func:`pairing_ident`: one budget, data and model, as :meth:`Results.partner` pairs them) and no loss is in
    both, so a grid's baselines in a block of their own sit beside its CE and GenCE; any other block (another
    budget, or a sweep of one) is a row of its own."""
    rows: list[tuple[list[str], set[str], set[str]]] = []   # (blocks, idents, labels)
    for block in results.blocks_of(setting):
        idents = results.idents(setting, block)
        labels = {g.label for g in results.groups_of(setting, block)}
        row = next((r for r in rows if idents == r[1] and not labels & r[2]), None)
        if row is None:
            rows.append(([block], idents, set(labels)))
        else:
            row[0].append(block)
            row[2].update(labels)
    return [r[0] for r in rows]


def summary_table(results: Results, column: Column = MAIN_COLUMNS[0]) -> str:
    """Rows (dataset, model, regime[, blocks]), one column per loss: mean ± std of one metric over its seeds,
    the best in bold. Seeds of different blocks are never pooled: each cell is one block's; a row joins blocks
    whose runs differ only in the loss and its learning rate (:func:`summary_rows`)."""
    labels = results.labels()
    multi = results.multi_block()
    rows = []
    for setting, blocks in [(s, b) for s in results.settings() for b in summary_rows(results, s)]:
        cells = [setting[0], setting[2], setting[1]] + ([" + ".join(blocks)] if multi else [])
        first = len(cells)
        means = {}
        for lab in labels:
            g = next((g for g in (results.group(setting, lab, b) for b in blocks) if g is not None), None)
            if g is None:
                cells.append("")
                continue
            m, s, _ = mean_std([column.value(r.metrics) for r in g.runs])
            means[lab] = m
            cells.append(fmt_mean_std(m, s, column.scale, column.digits))
        valid = {k: v for k, v in means.items() if not math.isnan(v)}
        if len(valid) > 1:
            best = (max if column.higher_is_better else min)(valid.values())
            for i, lab in enumerate(labels):
                if valid.get(lab) == best:
                    cells[first + i] = f"**{cells[first + i]}**"
        rows.append(cells)
    head = ["dataset", "model", "regime"] + (["blocks"] if multi else [])
    return markdown_table(head + [results.display(lab) for lab in labels], rows,
                          ["l"] * len(head) + ["r"] * len(labels))


@dataclasses.dataclass
class PairedRow:
    setting: tuple[str, str, str]
    label: str
    column: Column
    result: PairedDifference
    block: str = ""
    p_holm: float = math.nan     # paired-t p after Holm over the settings of this loss and metric
    other_block: str = ""        # the block of the CE runs (not given: ``block``)
    lr: str = ""                 # the loss's learning rate(s) (:func:`lr_text`)
    other_lr: str = ""           # CE's

    def __post_init__(self) -> None:
        self.other_block = self.other_block or self.block

    @property
    def across_blocks(self) -> bool:
        return self.other_block != self.block


def paired_rows(results: Results, columns: Sequence[Column] = PAIRED_COLUMNS) -> list[PairedRow]:
    """Every non-CE group against CE over matching seeds (selected variants): CE of its setting and block, or
    where the block has no CE, the CE of another block of the setting that differs from it only in the loss and
    its learning rate (:meth:`Results.partner`). Holm adjusts each (loss, metric)'s paired-t p-values over its
    settings."""
    out = []
    for setting, block in [(s, b) for s in results.settings() for b in results.blocks_of(s)]:
        base = results.partner(setting, BASELINE, block)
        if base is None:
            continue
        for g in results.groups_of(setting, block):
            if g.label == BASELINE:
                continue
            for c in columns:
                a = {r.seed: c.value(r.metrics) for r in g.runs}
                b = {r.seed: c.value(r.metrics) for r in base.runs}
                if all(math.isnan(v) for v in a.values()) and all(math.isnan(v) for v in b.values()):
                    continue
                out.append(PairedRow(setting, g.label, c, paired_difference(a, b), block, other_block=base.block,
                                     lr=lr_text(g), other_lr=lr_text(base)))
    families: dict[tuple, list[PairedRow]] = defaultdict(list)
    for r in out:
        families[(r.label, r.column.key)].append(r)
    for fam in families.values():
        for r, p in zip(fam, holm([r.result.p for r in fam])):
            r.p_holm = float(p)
    return out


def unpaired(results: Results) -> list[tuple[tuple[str, str, str], str, str, list[str]]]:
    """(setting, block, CE's block, fields) for every block whose losses have no CE to be paired with
    (:meth:`Results.partner`) while another block of the setting has CE: the config fields, outside
    :data:`PAIR_FREE_FIELDS`, in which its runs differ from those of the CE they differ least from (what
    keeps them apart)."""
    def differ(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
        return sorted(k for k in set(a) | set(b)
                      if k not in PAIR_FREE_FIELDS and canonical_json(a.get(k)) != canonical_json(b.get(k)))
    out = []
    for setting in results.settings():
        bases = [g for g in (results.group(setting, BASELINE, b) for b in results.blocks_of(setting)) if g is not None]
        for block in results.blocks_of(setting):
            groups = results.groups_of(setting, block)
            if not bases or results.partner(setting, BASELINE, block) is not None \
                    or not any(g.label != BASELINE for g in groups):
                continue
            mine = groups[0].runs[0].config
            nearest = min(bases, key=lambda g: len(differ(mine, g.runs[0].config)))
            out.append((setting, block, nearest.block, differ(mine, nearest.runs[0].config)))
    return out


def paired_markdown(rows: list[PairedRow], setting_prefix: tuple[str, str], display=lambda lab: lab) -> str:
    """One table for (dataset, model): rows (regime, loss), a cell per metric: Δ [95% t interval], paired-t p,
    and * when that p stays below 0.05 after Holm over the loss's settings. A loss paired with the CE of
    another block has a ``CE from`` cell naming it, with both learning rates (loss / CE)."""
    mine = [r for r in rows if (r.setting[0], r.setting[2]) == setting_prefix]
    columns = []
    for r in mine:
        if r.column.key not in [c.key for c in columns]:
            columns.append(r.column)
    keys = []
    for r in mine:
        k = (r.setting[1], r.block, r.label)
        if k not in keys:
            keys.append(k)
    show_block = len({r.block for r in mine}) > 1
    show_other = any(r.across_blocks for r in mine)
    table = []
    for regime, block, label in keys:
        cells = [regime] + ([block] if show_block else []) + [display(label)]
        n, other = "", ""
        for c in columns:
            hit = next((r for r in mine if r.setting[1] == regime and r.block == block and r.label == label
                        and r.column.key == c.key), None)
            if hit is None:
                cells.append("")
                continue
            res = hit.result
            n = str(res.n)
            if hit.across_blocks:
                other = f"{hit.other_block} (lr {hit.lr} / {hit.other_lr})"
            text = f"{fmt_num(res.mean, c.digits, c.scale)} [{fmt_num(res.low, c.digits, c.scale)}, " \
                   f"{fmt_num(res.high, c.digits, c.scale)}] {p_text(res.p)}" + ("*" if hit.p_holm < 0.05 else "")
            if res.note and math.isnan(res.p):
                text += f" ({res.note})"
            cells.append(text)
        at = 3 if show_block else 2
        cells[at:at] = [n] + ([other or "same block"] if show_other else [])
        table.append(cells)
    head = ["regime"] + (["block"] if show_block else []) + ["loss"]
    header = head + ["pairs"] + (["CE from (lr loss / CE)"] if show_other else []) + [f"Δ {c.name}" for c in columns]
    return markdown_table(header, table, ["l"] * len(head) + ["r"] + (["l"] if show_other else [])
                          + ["r"] * len(columns))


def paired_csv_rows(rows: list[PairedRow]) -> tuple[list[str], list[list]]:
    header = ["dataset", "regime", "model", "block", "loss", "metric", "n_pairs", "mean_diff_vs_ce", "ci95_low",
              "ci95_high", "t_p", "t_p_holm", "wilcoxon_exact_p", "hodges_lehmann", "note", "ce_block", "lr", "ce_lr"]
    return header, [[r.setting[0], r.setting[1], r.setting[2], r.block, r.label, r.column.key, r.result.n,
                     r.result.mean, r.result.low, r.result.high, r.result.p, r.p_holm, r.result.p_wilcoxon,
                     r.result.hodges_lehmann, r.result.note, r.other_block, r.lr, r.other_lr] for r in rows]


def ood_table(results: Results, setting) -> str | None:
    """Per OOD set, MSP AUROC and FPR95 (mean ± std over seeds, %)."""
    groups = results.groups_of(setting)
    sets = sorted({s for g in groups for r in g.runs for s in ood_sets(r.metrics)})
    if not sets:
        return None
    show_block = len({g.block for g in groups}) > 1
    header = (["block"] if show_block else []) + ["loss"] + [f"{s} {stat}" for s in sets for stat in ("AUROC %", "FPR95 %")]
    rows = []
    for g in groups:
        cells = ([g.block] if show_block else []) + [results.display(g.label)]
        for s in sets:
            for stat in ("auroc", "fpr95"):
                m, sd, _ = mean_std([r.metrics.get(ood_key(s, stat), math.nan) for r in g.runs])
                cells.append(fmt_mean_std(m, sd, 100, 1))
        rows.append(cells)
    return markdown_table(header, rows)


def selection_table(results: Results) -> str | None:
    """Groups with several variants: each variant's mean validation metric and test error, chosen one marked."""
    rows = []
    for setting in results.settings():
        for g in results.groups_of(setting):
            if len(g.variants) < 2:
                continue
            for name, vruns in g.variants.items():
                val = g.selection[name]
                err, err_sd, _ = mean_std([r.metrics.get(METRIC["error"], math.nan) for r in vruns])
                rows.append([setting[0], setting[1], setting[2], g.block, g.label, name, str(len(vruns)),
                             fmt_num(val, 4), fmt_mean_std(err, err_sd, 100), "yes" if name == g.selected else ""])
    if not rows:
        return None
    header = ["dataset", "regime", "model", "block", "loss", "variant", "seeds", f"mean {results.select_by}",
              "test error %", "selected"]
    return markdown_table(header, rows, ["l"] * 6 + ["r"] * 3 + ["l"])


def runs_csv(results: Results, path: Path) -> None:
    """Every done run with its config axes and every metric: the raw data behind every table."""
    every = list(results.runs) + list(results.tuning_runs)
    metric_keys = sorted({k for r in every for k in r.metrics})
    header = ["key", "dataset", "regime", "model", "block", "loss", "label", "seed", "selected", "wall_seconds",
              "hardware", "config"] + metric_keys
    selected = {r.key for g in results.groups for r in g.runs}
    rows = [[r.key, r.config["dataset"], r.config["regime"], r.config["model"], r.block, r.config["loss"], r.label,
             r.seed, int(r.key in selected), r.wall_seconds, r.hardware, canonical_json(r.config)]
            + [r.metrics.get(k, math.nan) for k in metric_keys]
            for r in sorted(every, key=lambda r: (setting_order(r.setting), r.block, r.label, r.seed))]
    write_csv(path, header, rows)


def to_csv_text(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def last_grid_table(grids: Sequence[dict], key: str) -> tuple[Mapping, str] | None:
    """The top-level ``[key]`` table of the grid files stored in a database (the last one that has it,
    unreadable files skipped), with where it came from (``"grid NAME: [key]"``) for error messages."""
    found = None
    for g in grids:
        try:
            table = tomllib.loads(g["text"]).get(key)
        except tomllib.TOMLDecodeError:
            continue
        if table is not None:
            found = (table, f"grid {g.get('name')}: [{key}]")
    return found


def table_from_grids(grids: Sequence[dict], key: str, parse: Any) -> Any:
    """``parse(table, where)`` of :func:`last_grid_table`, or None when no stored grid has ``[key]``."""
    found = last_grid_table(grids, key)
    return None if found is None else parse(*found)
