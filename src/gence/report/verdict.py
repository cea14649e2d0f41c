"""The study's generated verdict (issue 8): one section per claim of the paper, decided by stated rules.

Every sentence is built from the stored runs. A claim compares GenCE with CE setting by setting
(dataset x model x regime, within one grid block) over matching seeds with
:func:`gence.report.stats.paired_comparison`:

- a setting is **clearly better** (or **clearly worse**) for GenCE when the bootstrap 95% interval of
  the mean paired difference excludes 0 on the good (bad) side, **unclear** when it contains 0, and
  **not compared** with fewer than 2 pairs. The Wilcoxon p is printed beside it but decides nothing: with
  n pairs its smallest exact two-sided value is 2/2^n (0.0625 for 5), so it can never pass 0.05 here.
- a claim **holds** when GenCE is clearly better in more than half of the compared settings and clearly
  worse in none; **does not hold** when it is clearly better in none, or clearly worse in at least as
  many settings as clearly better; **mixed** otherwise; **not enough data yet** when fewer than
  ``MIN_FRACTION`` of the grid's settings for the claim (at least one) are compared. A verdict with
  settings still missing or short of seeds is marked provisional.
- learning-rate robustness ("GenCE is as robust to the learning rate as CE") **holds** when GenCE has no
  more collapsed runs (a class never predicted on test) than CE in the learning-rate blocks and its
  worst-lr error is clearly higher than CE's in no setting; **does not hold** when it has more collapsed
  runs than CE, or a clearly higher worst-lr error in more than half of the compared settings; **mixed**
  otherwise.

The database may be partial (a study still running): the grid files stored in it are expanded exactly as
the runner expands them, to count done, failed and missing runs per block and the seeds each setting asks
for; settings short of seeds are marked with a dagger.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gence.report import tables as T
from gence.report.stats import BOOTSTRAP_RESAMPLES, PairedResult, mean_std, paired_comparison

CE, GENCE, GENCE_MIX = "ce", "gence", "gence_0.5"
MIN_FRACTION = 0.25
Section = tuple[str, str]

HOLDS, NOT_HOLDS, MIXED, NO_DATA = "holds", "does not hold", "mixed", "not enough data yet"
BETTER, WORSE, UNCLEAR, TOO_FEW = "better", "worse", "unclear", "not compared"
MARK = {BETTER: "GenCE better", WORSE: "**GenCE worse**", UNCLEAR: "unclear", TOO_FEW: "< 2 pairs"}
PARTIAL = "†"


def _metric(name: str) -> Callable[[dict], float]:
    return lambda m: float(m.get(name, math.nan))


def _ood_set(ood: str, stat: str) -> T.Column:
    return T.Column(f"{ood} AUROC %" if stat == "auroc" else f"{ood} FPR95 %", f"ood_{ood}_{stat}",
                    _metric(f"ood/{ood}/msp/{stat}"), 100, higher_is_better=stat == "auroc", digits=1)


ERROR = T.Column("test error %", "error", _metric("test/error"), 100)
ACC_FEW = T.Column("few-shot-group accuracy %", "acc_few", _metric("test/acc_few"), 100, higher_is_better=True)
ECE = T.Column("ECE %", "ece", _metric("test/ece"), 100)
ECE_TS = T.Column("ECE after TS %", "ece_ts", _metric("test_ts/ece"), 100)
ADAECE = T.Column("AdaECE %", "adaece", _metric("test/adaece"), 100)
CWECE = T.Column("classwise ECE %", "classwise_ece", _metric("test/classwise_ece"), 100)
AUROC = T.Column("MSP AUROC % (mean over OOD sets)", "ood_auroc", T._ood_mean("msp", "auroc"), 100,
                 higher_is_better=True)
FPR95 = T.Column("MSP FPR95 % (mean over OOD sets)", "ood_fpr95", T._ood_mean("msp", "fpr95"), 100)


@dataclasses.dataclass
class VerdictConfig:
    """Which grid blocks answer which claim (the names of configs/cpu_study.toml)."""

    balanced_block: str = "balanced"
    long_tailed_block: str = "long_tailed"
    lr_blocks: tuple[str, ...] = ("tune", "lr_sweep")
    imbalance_baselines: tuple[str, ...] = ("logit_adjusted", "balanced_softmax")
    field: str = "lr"


# ------------------------------------------------------------------------------------ grid progress
@dataclasses.dataclass
class BlockProgress:
    block: str
    total: int
    done: int
    failed: int

    @property
    def missing(self) -> int:
        return self.total - self.done - self.failed


@dataclasses.dataclass
class Progress:
    blocks: list[BlockProgress]
    # (block, dataset, regime, model, label) -> seeds the grid asks for
    seeds: dict[tuple, set[int]]
    unreadable: list[str]

    def expected(self, block: str, setting: tuple, label: str) -> set[int] | None:
        return self.seeds.get((block, *setting, label)) if self.blocks else None

    def settings(self, block: str, labels: Sequence[str] = (CE, GENCE)) -> set[tuple]:
        """The grid's settings of ``block`` that ask for every one of ``labels``."""
        have: dict[tuple, set[str]] = defaultdict(set)
        for (b, ds, regime, model, label) in self.seeds:
            if b == block:
                have[(ds, regime, model)].add(label)
        return {s for s, labs in have.items() if set(labels) <= labs}

    @property
    def total(self) -> BlockProgress:
        return BlockProgress("all", sum(b.total for b in self.blocks), sum(b.done for b in self.blocks),
                             sum(b.failed for b in self.blocks))


def grid_progress(results: T.Results) -> Progress:
    """Expand the grid files stored in the database as the runner does (union over files, runs by key) and
    count, per block, runs done, failed and missing. A run of a block with ``tune`` counts as done (failed)
    when one of its candidate runs (one per tuned value) is stored done (failed)."""
    from gence.experiments.grid import parse_grid

    done = {r.key for r in list(results.runs) + list(results.tuning_runs)}
    failed = {f["key"] for f in results.failed}
    ordinary: dict[str, tuple[str, dict, str]] = {}      # key -> (block, config, label)
    tuned: dict[tuple, tuple[str, dict, str]] = {}       # candidate keys -> (block, config, label)
    unreadable = []
    for g in results.grids:
        try:
            grid = parse_grid(g["text"], name=g.get("name"))
        except Exception as exc:  # a grid this version cannot expand: counted as unknown, not fatal
            unreadable.append(f"{g.get('name')}: {str(exc).splitlines()[0][:200]}")
            continue
        for spec in grid.runs:
            ordinary.setdefault(spec.key, (spec.grid, spec.config, spec.label))
        for t in grid.tuned:
            tuned.setdefault(tuple(s.key for _, s in t.candidates), (t.grid, t.config, t.label))
    counts: dict[str, list[int]] = {}
    seeds: dict[tuple, set[int]] = defaultdict(set)
    items = [((k,), v) for k, v in ordinary.items()] + list(tuned.items())
    for keys, (block, config, label) in items:
        c = counts.setdefault(block, [0, 0, 0])
        c[0] += 1
        if any(k in done for k in keys):
            c[1] += 1
        elif any(k in failed for k in keys):
            c[2] += 1
        seeds[(block, config["dataset"], config["regime"], config["model"], label)].add(int(config["seed"]))
    order = {name: i for i, name in enumerate(_block_names(results))}
    blocks = [BlockProgress(b, *c) for b, c in sorted(counts.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))]
    return Progress(blocks, dict(seeds), unreadable)


def _block_names(results: T.Results) -> list[str]:
    return T.grid_tunes(results.grids)[1]


# -------------------------------------------------------------------------------------- comparisons
@dataclasses.dataclass
class Comparison:
    block: str
    setting: tuple[str, str, str]
    label: str                  # the loss compared (GenCE or GenCE(0.5))
    other: str                  # what it is compared with (CE, or another loss)
    column: T.Column
    result: PairedResult
    mean_label: float
    mean_other: float
    expected: int | None        # pairs the grid asks for (None: grid unknown)

    @property
    def outcome(self) -> str:
        r = self.result
        if r.n < 2 or math.isnan(r.ci_low) or math.isnan(r.ci_high):
            return TOO_FEW
        good_low = r.ci_low > 0 if self.column.higher_is_better else r.ci_high < 0
        bad = r.ci_high < 0 if self.column.higher_is_better else r.ci_low > 0
        return BETTER if good_low else WORSE if bad else UNCLEAR

    @property
    def partial(self) -> bool:
        return self.expected is not None and self.result.n < self.expected


def compare(results: T.Results, progress: Progress, block: str, label: str, other: str,
            column: T.Column) -> list[Comparison]:
    """``label`` against ``other`` in every setting of ``block`` where both have runs (selected variants)."""
    out = []
    for setting in results.settings():
        a, b = results.group(setting, label, block), results.group(setting, other, block)
        if a is None or b is None:
            continue
        va = {r.seed: column.value(r.metrics) for r in a.runs}
        vb = {r.seed: column.value(r.metrics) for r in b.runs}
        if all(math.isnan(v) for v in va.values()) or all(math.isnan(v) for v in vb.values()):
            continue
        ea, eb = progress.expected(block, setting, label), progress.expected(block, setting, other)
        expected = len(ea & eb) if ea is not None and eb is not None else None
        out.append(Comparison(block, setting, label, other, column, paired_comparison(va, vb),
                              mean_std(list(va.values()))[0], mean_std(list(vb.values()))[0], expected))
    return out


@dataclasses.dataclass
class Decision:
    status: str
    better: int
    worse: int
    unclear: int
    compared: int
    grid_settings: int          # settings the grid asks for (0: unknown)
    provisional: bool

    @property
    def text(self) -> str:
        return self.status + (" (provisional)" if self.provisional and self.status != NO_DATA else "")

    def evidence(self) -> str:
        of = f" of {self.grid_settings}" if self.grid_settings else ""
        return (f"{self.compared}{of} settings compared: GenCE clearly better in {self.better}, clearly worse in "
                f"{self.worse}, unclear in {self.unclear}")


def decide(comparisons: Sequence[Comparison], grid_settings: int) -> Decision:
    """The rule of the module docstring, from the outcomes of one metric's comparisons."""
    compared = [c for c in comparisons if c.outcome != TOO_FEW]
    b = sum(c.outcome == BETTER for c in compared)
    w = sum(c.outcome == WORSE for c in compared)
    u = len(compared) - b - w
    needed = max(1, math.ceil(MIN_FRACTION * grid_settings)) if grid_settings else 1
    provisional = any(c.partial for c in compared) or (grid_settings and len(compared) < grid_settings)
    if len(compared) < needed:
        status = NO_DATA
    elif b > len(compared) / 2 and w == 0:
        status = HOLDS
    elif b == 0 or w >= b:
        status = NOT_HOLDS
    else:
        status = MIXED
    return Decision(status, b, w, u, len(compared), grid_settings, bool(provisional))


# ----------------------------------------------------------------------------------------- formatting
def fmt_p(p: float) -> str:
    return "–" if p is None or math.isnan(p) else f"{p:.3g}"


def _signed(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:+.{digits}f}".replace("-", "−")


def fmt_diff(c: Comparison, digits: int | None = None) -> str:
    d = c.column.digits if digits is None else digits
    s, r = c.column.scale, c.result
    if math.isnan(r.ci_low):
        return _signed(r.mean_diff * s, d)
    return f"{_signed(r.mean_diff * s, d)} [{_signed(r.ci_low * s, d)}, {_signed(r.ci_high * s, d)}]"


def fmt_pairs(c: Comparison) -> str:
    if c.expected is None:
        return str(c.result.n)
    return f"{c.result.n}/{c.expected}" + (f" {PARTIAL}" if c.partial else "")


def setting_name(setting: tuple) -> str:
    return f"{setting[0]} / {setting[2]} / {setting[1]}"


def _unit(column: T.Column) -> str:
    return " pp" if column.scale == 100 else ""


def comparison_table(comps: Sequence[Comparison], label_name: str, other_name: str) -> str:
    col = comps[0].column
    header = ["dataset", "model", "regime", "pairs", f"{other_name} {col.name}", f"{label_name} {col.name}",
              f"Δ {_unit(col).strip() or 'diff'} [95% CI]", "Wilcoxon p", "outcome"]
    rows = [[c.setting[0], c.setting[2], c.setting[1], fmt_pairs(c),
             T.fmt_num(c.mean_other, col.digits, col.scale), T.fmt_num(c.mean_label, col.digits, col.scale),
             fmt_diff(c), fmt_p(c.result.p_value), MARK[c.outcome]] for c in comps]
    return T.markdown_table(header, rows, ["l"] * 3 + ["r"] * 5 + ["l"])


def multi_table(columns: Sequence[T.Column], comps: dict[str, list[Comparison]]) -> str:
    """One row per (block, setting), one cell per metric: Δ [CI] p, with the outcome as a mark."""
    keys = []
    for col in columns:
        for c in comps[col.key]:
            if (c.block, c.setting) not in keys:
                keys.append((c.block, c.setting))
    sign = {BETTER: " ✓", WORSE: " ✗", UNCLEAR: "", TOO_FEW: ""}
    rows = []
    for block, setting in keys:
        cells = [block, setting[0], setting[2], setting[1]]
        pairs = ""
        for col in columns:
            c = next((x for x in comps[col.key] if (x.block, x.setting) == (block, setting)), None)
            if c is None:
                cells.append("")
                continue
            pairs = fmt_pairs(c)
            cells.append(f"{fmt_diff(c)} p={fmt_p(c.result.p_value)}{sign[c.outcome]}")
        cells.insert(4, pairs)
        rows.append(cells)
    header = ["block", "dataset", "model", "regime", "pairs"] + [f"Δ {col.name}" for col in columns]
    return T.markdown_table(header, rows, ["l"] * 4 + ["r"] * (1 + len(columns)))


def outcome_sentence(comps: Sequence[Comparison], what: str, who: str = "GenCE", other: str = "CE") -> str:
    """Counts and the mean difference over settings, and every setting where ``who`` is clearly worse."""
    compared = [c for c in comps if c.outcome != TOO_FEW]
    if not compared:
        return f"{who} vs {other}, {what}: no setting with 2 or more paired seeds yet."
    col = compared[0].column
    counts = {o: sum(c.outcome == o for c in compared) for o in (BETTER, WORSE, UNCLEAR)}
    diffs = np.array([c.result.mean_diff * col.scale for c in compared])
    direction = "higher is better" if col.higher_is_better else "lower is better"
    text = (f"{who} − {other}, {what} ({direction}): over {len(compared)} setting(s), {who} is clearly better in "
            f"{counts[BETTER]}, clearly worse in {counts[WORSE]} and unclear in {counts[UNCLEAR]}; the mean "
            f"difference averages {_signed(float(diffs.mean()))}{_unit(col)} (from {_signed(float(diffs.min()))} to "
            f"{_signed(float(diffs.max()))}).")
    worse = [c for c in compared if c.outcome == WORSE]
    if worse:
        text += f" {who} loses clearly in: " + "; ".join(
            f"{setting_name(c.setting)} ({fmt_diff(c)}{_unit(col)}, p={fmt_p(c.result.p_value)})" for c in worse) + "."
    short = [c for c in comps if c.outcome == TOO_FEW]
    if short:
        text += f" Not compared yet (fewer than 2 pairs): {len(short)} setting(s)."
    return text


def rank_table(results: T.Results, block: str, column: T.Column) -> tuple[str, str] | None:
    """Per loss, its mean rank by mean ``column`` among the losses present in each setting of ``block``
    (1 = best, ties share the average rank) and how often it is best."""
    from scipy.stats import rankdata

    ranks: dict[str, list[float]] = defaultdict(list)
    n_losses = []
    for setting in results.settings():
        groups = [g for g in results.groups_of(setting, block)]
        means = {g.label: mean_std([column.value(r.metrics) for r in g.runs])[0] for g in groups}
        means = {k: v for k, v in means.items() if not math.isnan(v)}
        if len(means) < 2:
            continue
        labels = list(means)
        vals = np.array([means[k] for k in labels])
        r = rankdata(-vals if column.higher_is_better else vals)
        for lab, rk in zip(labels, r):
            ranks[lab].append(float(rk))
        n_losses.append(len(labels))
    if not ranks:
        return None
    order = sorted(ranks, key=lambda lab: (np.mean(ranks[lab]), T.label_order(lab)))
    rows = [[lab, str(len(ranks[lab])), f"{np.mean(ranks[lab]):.2f}", str(sum(x == 1.0 for x in ranks[lab]))]
            for lab in order]
    table = T.markdown_table(["loss", "settings", f"mean rank ({column.name})", "best in"], rows)
    sentence = ""
    if GENCE in ranks:
        pos = order.index(GENCE) + 1
        sentence = (f"By mean {column.name}, GenCE ranks {pos} of {len(order)} losses on average over "
                    f"{len(ranks[GENCE])} setting(s) (mean rank {np.mean(ranks[GENCE]):.2f}; best in "
                    f"{sum(x == 1.0 for x in ranks[GENCE])}); the best mean rank is {order[0]}'s "
                    f"({np.mean(ranks[order[0]]):.2f}). Ranks use each setting's losses with runs "
                    f"({min(n_losses)}–{max(n_losses)} losses), 1 = best.")
    return table, sentence


# ------------------------------------------------------------------------------------------- claims
@dataclasses.dataclass
class Claim:
    name: str
    decision: Decision | None
    evidence: str
    rule: str


@dataclasses.dataclass
class Verdict:
    progress: Progress
    claims: list[Claim]
    preamble: str
    sections: list[Section]


CLEAR = ("A setting (dataset × model × regime) counts as clearly better or worse for GenCE when the bootstrap "
         f"95% interval of the mean paired difference GenCE − CE ({BOOTSTRAP_RESAMPLES} resamples) excludes 0; "
         "otherwise unclear. The two-sided Wilcoxon signed-rank p is shown but decides nothing: with n pairs its "
         "smallest exact value is 2/2^n, 0.0625 for the 5 seeds of CE and GenCE (0.25 for 3), so no setting "
         "can reach p < 0.05.")
RULE = ("holds: GenCE clearly better in more than half of the compared settings and clearly worse in none; does "
        "not hold: clearly better in none, or clearly worse in at least as many as clearly better; mixed: "
        f"otherwise; not enough data yet: fewer than {MIN_FRACTION:.0%} of the grid's settings compared")
LR_RULE = ("holds: GenCE has no more collapsed runs than CE in the learning-rate blocks and a clearly higher "
           "worst-lr error in no setting; does not hold: more collapsed runs than CE, or a clearly higher "
           "worst-lr error in more than half of the compared settings; mixed: otherwise")


def _grid_count(progress: Progress, block: str, labels=(CE, GENCE)) -> int:
    return len(progress.settings(block, labels))


def _intro(results, progress, block, comps, what) -> str:
    n_grid = _grid_count(progress, block)
    compared = [c for c in comps if c.outcome != TOO_FEW]
    of = f" of the grid's {n_grid}" if n_grid else ""
    partial = sum(c.partial for c in compared)
    text = f"Block `{block}`, {what}: {len(compared)}{of} settings have at least 2 seeds of both CE and GenCE."
    if partial:
        text += f" {partial} of them have fewer seeds than the grid asks ({PARTIAL} in the tables)."
    return text


def accuracy_few_labels(results, progress, cfg) -> tuple[Claim, str]:
    block = cfg.balanced_block
    comps = compare(results, progress, block, GENCE, CE, ERROR)
    name = "Accuracy with few labels"
    if not comps:
        return Claim(name, decide([], _grid_count(progress, block)), "no runs yet", RULE), \
            _no_runs(progress, (block,))
    mix = compare(results, progress, block, GENCE_MIX, CE, ERROR)
    d = decide(comps, _grid_count(progress, block))
    md = [_intro(results, progress, block, comps, "balanced small-data regimes"), "",
          outcome_sentence(comps, "test error"), "", comparison_table(comps, "GenCE", "CE"), ""]
    if mix:
        md += [outcome_sentence(mix, "test error", who="GenCE(0.5)"), "", comparison_table(mix, "GenCE(0.5)", "CE"), ""]
    ranked = rank_table(results, block, ERROR)
    if ranked:
        md += [ranked[1], "", ranked[0], ""]
    return Claim(name, d, d.evidence(), RULE), "\n".join(md)


def accuracy_imbalance(results, progress, cfg) -> tuple[Claim, str]:
    block = cfg.long_tailed_block
    comps = compare(results, progress, block, GENCE, CE, ERROR)
    name = "Accuracy under class imbalance"
    if not comps:
        return Claim(name, decide([], _grid_count(progress, block)), "no runs yet", RULE), \
            _no_runs(progress, (block,))
    d = decide(comps, _grid_count(progress, block))
    md = [_intro(results, progress, block, comps, "long-tailed regimes"), "",
          outcome_sentence(comps, "test error"), "", comparison_table(comps, "GenCE", "CE"), ""]
    few = compare(results, progress, block, GENCE, CE, ACC_FEW)
    if few:
        md += [outcome_sentence(few, "accuracy on the few-shot class group (the rarest classes, as the training loop groups them)"), "",
               comparison_table(few, "GenCE", "CE"), ""]
    mix = compare(results, progress, block, GENCE_MIX, CE, ERROR)
    if mix:
        md += [outcome_sentence(mix, "test error", who="GenCE(0.5)"), "", comparison_table(mix, "GenCE(0.5)", "CE"), ""]
    for base in cfg.imbalance_baselines:
        vs = compare(results, progress, block, GENCE, base, ERROR)
        if vs:
            md += [outcome_sentence(vs, "test error", other=base), "", comparison_table(vs, "GenCE", base), ""]
        else:
            md += [f"GenCE vs {base}: no setting with runs of both yet.", ""]
    ranked = rank_table(results, block, ERROR)
    if ranked:
        md += [ranked[1], "", ranked[0], ""]
    return Claim(name, d, d.evidence(), RULE), "\n".join(md)


def _no_runs(progress: Progress, blocks: Sequence[str]) -> str:
    """No runs yet: say how far the blocks that answer the claim are."""
    known = {b.block: b for b in progress.blocks}
    parts = [f"`{b}` {known[b].done} of {known[b].total} runs done" if b in known else f"`{b}` not in the grid"
             for b in blocks]
    return "No runs yet: no setting has runs of both CE and GenCE (" + "; ".join(parts) + ")."


def _main_blocks(cfg) -> tuple[str, str]:
    return (cfg.balanced_block, cfg.long_tailed_block)


def _both_blocks(results, progress, cfg, column) -> tuple[list[Comparison], int]:
    comps, n = [], 0
    for block in _main_blocks(cfg):
        comps += compare(results, progress, block, GENCE, CE, column)
        n += _grid_count(progress, block)
    return comps, n


def calibration(results, progress, cfg) -> tuple[list[Claim], str]:
    cols = (ECE, ECE_TS, ADAECE, CWECE)
    comps = {c.key: _both_blocks(results, progress, cfg, c)[0] for c in cols}
    n_grid = _both_blocks(results, progress, cfg, ECE)[1]
    before, after = decide(comps[ECE.key], n_grid), decide(comps[ECE_TS.key], n_grid)
    claims = [Claim("Calibration before temperature scaling (ECE)", before,
                    before.evidence() if comps[ECE.key] else "no runs yet", RULE),
              Claim("Calibration after temperature scaling (ECE)", after,
                    after.evidence() if comps[ECE_TS.key] else "no runs yet", RULE)]
    if not comps[ECE.key]:
        return claims, _no_runs(progress, _main_blocks(cfg))
    bins = sorted({r.config.get("n_bins") for r in results.runs if r.config.get("n_bins")})
    md = [f"Blocks {', '.join(f'`{b}`' for b in _main_blocks(cfg))}, ECE with {'/'.join(map(str, bins))} "
          "equal-width bins on the test split, before and after temperature scaling (temperature fitted on the "
          "validation split, per run).", ""]
    for col, what in ((ECE, "ECE before temperature scaling"), (ECE_TS, "ECE after temperature scaling"),
                      (ADAECE, "AdaECE before temperature scaling"),
                      (CWECE, "classwise ECE before temperature scaling")):
        md += ["- " + outcome_sentence(comps[col.key], what)]
    md += ["", "Cells: GenCE − CE, mean over matching seeds [bootstrap 95% CI] and Wilcoxon p, in percentage "
           "points; ✓ GenCE clearly better, ✗ clearly worse.", "", multi_table(cols, comps), ""]
    return claims, "\n".join(md)


def ood(results, progress, cfg) -> tuple[Claim, str]:
    auroc, n_grid = _both_blocks(results, progress, cfg, AUROC)
    d = decide(auroc, n_grid)
    claim = Claim("OOD detection (MSP AUROC)", d, d.evidence() if auroc else "no runs yet", RULE)
    if not auroc:
        return claim, _no_runs(progress, _main_blocks(cfg))
    fpr = _both_blocks(results, progress, cfg, FPR95)[0]
    sets = sorted({k.split("/")[1] for r in results.runs if r.block in _main_blocks(cfg) for k in r.metrics
                   if k.startswith("ood/")})
    md = ["Score: maximum softmax probability; in-distribution test images are the positive class. Each run's "
          f"AUROC and FPR at 95% TPR are averaged over its OOD sets ({', '.join(sets)}; the sets differ by "
          "dataset), then compared seed by seed.", "",
          "- " + outcome_sentence(auroc, "MSP AUROC averaged over OOD sets"),
          "- " + outcome_sentence(fpr, "MSP FPR95 averaged over OOD sets"), ""]
    per_set = {}
    for s in sets:
        for stat in ("auroc", "fpr95"):
            col = _ood_set(s, stat)
            per_set[col.key] = _both_blocks(results, progress, cfg, col)[0]
    md += ["Per OOD set (settings where the set was used):", ""]
    for s in sets:
        md += ["- " + outcome_sentence(per_set[f"ood_{s}_auroc"], f"MSP AUROC against {s}")]
    md += ["", "Cells: GenCE − CE in percentage points [bootstrap 95% CI] and Wilcoxon p; ✓ GenCE clearly better, "
           "✗ clearly worse.", "", multi_table((AUROC, FPR95), {AUROC.key: auroc, FPR95.key: fpr}), ""]
    return claim, "\n".join(md)


# ------------------------------------------------------------------------------- learning-rate robustness
def _collapsed(run: T.Run) -> bool:
    v = run.metrics.get("test/never_predicted")
    return v is not None and not math.isnan(float(v)) and float(v) > 0


def learning_rate(results, progress, cfg, plots_dir=None, link_dir=None) -> tuple[Claim, str]:
    field = cfg.field
    every = list(results.runs) + list(results.tuning_runs)
    mine = [r for r in every if r.block in cfg.lr_blocks and r.label in (CE, GENCE)]
    name = "Learning-rate robustness"
    if not mine:
        return Claim(name, Decision(NO_DATA, 0, 0, 0, 0, 0, False), "no runs yet", LR_RULE), \
            f"No runs yet of CE or GenCE in {', '.join(f'`{b}`' for b in cfg.lr_blocks)}."
    by: dict[tuple, dict[str, dict[float, dict[int, T.Run]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in mine:
        by[(r.block, r.setting)][r.label][r.config.get(field)][r.seed] = r
    rows, worst_rows, worst_comps = [], [], []
    for (block, setting), losses in sorted(by.items(), key=lambda kv: (cfg.lr_blocks.index(kv[0][0]),
                                                                        T._setting_order(kv[0][1]))):
        lrs = sorted({lr for lab in losses for lr in losses[lab]})
        for lr in lrs:
            ce, ge = losses[CE].get(lr, {}), losses[GENCE].get(lr, {})
            comp = Comparison(block, setting, GENCE, CE, ERROR,
                              paired_comparison({s: ERROR.value(r.metrics) for s, r in ge.items()},
                                                {s: ERROR.value(r.metrics) for s, r in ce.items()}),
                              mean_std([ERROR.value(r.metrics) for r in ge.values()])[0],
                              mean_std([ERROR.value(r.metrics) for r in ce.values()])[0], None)
            rows.append([block, setting[0], setting[2], setting[1], f"{lr:g}",
                         f"{T.fmt_num(comp.mean_other, 2, 100)} ({len(ce)})",
                         f"{T.fmt_num(comp.mean_label, 2, 100)} ({len(ge)})",
                         fmt_diff(comp) if ce and ge else "", fmt_p(comp.result.p_value), MARK[comp.outcome] if ce and ge else "",
                         f"{sum(map(_collapsed, ce.values()))}/{len(ce)}", f"{sum(map(_collapsed, ge.values()))}/{len(ge)}"])
        # worst lr per loss (highest mean test error), paired over seeds present at both worst lrs
        worst = {}
        for lab in (CE, GENCE):
            means = {lr: mean_std([ERROR.value(r.metrics) for r in seeds.values()])[0]
                     for lr, seeds in losses[lab].items()}
            means = {lr: m for lr, m in means.items() if not math.isnan(m)}
            if means:
                worst[lab] = max(means, key=lambda lr: (means[lr], lr))
        if len(worst) == 2 and len(losses[CE]) == len(losses[GENCE]) == len(lrs) and len(lrs) > 1:
            ce, ge = losses[CE][worst[CE]], losses[GENCE][worst[GENCE]]
            comp = Comparison(block, setting, GENCE, CE, ERROR,
                              paired_comparison({s: ERROR.value(r.metrics) for s, r in ge.items()},
                                                {s: ERROR.value(r.metrics) for s, r in ce.items()}),
                              mean_std([ERROR.value(r.metrics) for r in ge.values()])[0],
                              mean_std([ERROR.value(r.metrics) for r in ce.values()])[0], None)
            worst_comps.append(comp)
            worst_rows.append([block, setting[0], setting[2], setting[1],
                               f"{T.fmt_num(comp.mean_other, 2, 100)} (lr {worst[CE]:g})",
                               f"{T.fmt_num(comp.mean_label, 2, 100)} (lr {worst[GENCE]:g})",
                               fmt_diff(comp), fmt_p(comp.result.p_value), MARK[comp.outcome]])
    n_coll = {lab: sum(_collapsed(r) for r in mine if r.label == lab) for lab in (CE, GENCE)}
    n_runs = {lab: sum(r.label == lab for r in mine) for lab in (CE, GENCE)}
    compared = [c for c in worst_comps if c.outcome != TOO_FEW]
    w = sum(c.outcome == WORSE for c in compared)
    b = sum(c.outcome == BETTER for c in compared)
    if not compared:
        status = NO_DATA
    elif n_coll[GENCE] > n_coll[CE] or w > len(compared) / 2:
        status = NOT_HOLDS
    elif w == 0:
        status = HOLDS
    else:
        status = MIXED
    provisional = any(m < p for m, p in ((b_.done, b_.total) for b_ in progress.blocks if b_.block in cfg.lr_blocks))
    d = Decision(status, b, w, len(compared) - b - w, len(compared), 0, provisional)
    evidence = (f"collapsed runs: GenCE {n_coll[GENCE]}/{n_runs[GENCE]}, CE {n_coll[CE]}/{n_runs[CE]}; worst-lr "
                f"error over {len(compared)} setting(s): GenCE clearly higher in {w}, clearly lower in {b}")
    md = [f"Blocks {', '.join(f'`{b}`' for b in cfg.lr_blocks)}: CE and GenCE trained at each {field} of the sweep on "
          "the same seeds. A run has *collapsed* when at least one class is never predicted on the test split "
          "(`test/never_predicted` > 0).", "",
          f"- Collapsed runs in these blocks: GenCE {n_coll[GENCE]} of {n_runs[GENCE]}, CE {n_coll[CE]} of "
          f"{n_runs[CE]}."]
    md += ["- " + _trial_sentence(mine, cfg)]
    empty = [b for b in cfg.lr_blocks if not any(r.block == b for r in mine)]
    if empty:
        def regimes(b):
            found = sorted({k[2] for k in progress.seeds if k[0] == b}, key=T.regime_order)
            return f" ({', '.join(found)})" if found else ""
        md[-1] += " Still without runs: " + ", ".join(f"block `{b}`{regimes(b)}" for b in empty) + "."
    if compared:
        md += ["- " + outcome_sentence(worst_comps, "test error at each loss's worst lr")]
    md += ["", f"Test error % per {field} (mean over seeds, runs in brackets); Δ = GenCE − CE in percentage points "
           "[bootstrap 95% CI]; collapsed = runs with a class never predicted.", "",
           T.markdown_table(["block", "dataset", "model", "regime", field, "CE error %", "GenCE error %", "Δ [95% CI]",
                             "p", "outcome", "collapsed CE", "collapsed GenCE"], rows,
                            ["l"] * 4 + ["r"] * 5 + ["l", "r", "r"]), ""]
    if worst_rows:
        md += ["Worst learning rate per loss (highest mean test error of the sweep; settings with every lr of both):",
               "", T.markdown_table(["block", "dataset", "model", "regime", "CE worst error %", "GenCE worst error %",
                                     "Δ [95% CI]", "p", "outcome"], worst_rows, ["l"] * 4 + ["r"] * 4 + ["l"]), ""]
    if plots_dir is not None:
        from gence.report import plots

        panels = [(f"{block}: {setting_name(setting)}",
                   {lab: {lr: [(ERROR.value(r.metrics), _collapsed(r)) for r in seeds.values()]
                          for lr, seeds in losses[lab].items()} for lab in (CE, GENCE) if losses.get(lab)})
                  for (block, setting), losses in sorted(by.items(), key=lambda kv: (
                      cfg.lr_blocks.index(kv[0][0]), T._setting_order(kv[0][1])))]
        path = plots.lr_robustness(panels, Path(plots_dir) / "lr_robustness.png", field)
        rel = Path(os.path.relpath(path.resolve(), Path(link_dir or ".").resolve())).as_posix()
        md += [f"![test error against {field}, CE and GenCE, collapsed runs marked]({rel})", ""]
    md += [collapse_table(every, field), ""]
    return Claim(name, d, evidence, LR_RULE), "\n".join(md)


def _trial_sentence(runs: Sequence[T.Run], cfg) -> str:
    """Does the trial's collapse (8x8 digits, 5-10 per class, SGD lr 0.05: GenCE never predicts whole
    classes) reappear in the smallest balanced regime of the learning-rate blocks?"""
    small = [r for r in runs if r.config["regime"].startswith("balanced:")]
    if not small:
        return "The trial's collapse (8x8 digits, 5–10 images per class, lr 0.05) cannot be looked for yet: no balanced runs."
    n_min = min(float(r.config["regime"].split(":")[1]) for r in small)
    small = [r for r in small if float(r.config["regime"].split(":")[1]) == n_min]
    coll = [r for r in small if _collapsed(r)]
    where = sorted({(r.label, r.config.get(cfg.field), r.config["dataset"]) for r in coll}, key=str)
    lrs = ", ".join(f"{v:g}" for v in sorted({r.config.get(cfg.field) for r in small}))
    text = (f"The trial's collapse (8x8 digits, 5–10 images per class, lr 0.05: GenCE left whole classes "
            f"unpredicted) was looked for at {n_min:g} per class with lr {lrs} ({len(small)} runs): ")
    ge = [x for x in where if x[0] == GENCE]
    if ge and not any(x[0] == CE for x in where):
        return text + "it reappears, for GenCE only: " + "; ".join(f"{d} at lr {lr:g}" for _, lr, d in ge) + "."
    if where:
        return text + "collapsed runs: " + "; ".join(f"{lab} on {d} at lr {lr:g}" for lab, lr, d in where) + \
            " (CE collapses too, so it is not specific to GenCE)."
    return text + "no run collapsed; it does not reappear here."


def collapse_table(runs: Sequence[T.Run], field: str) -> str:
    """Per loss and lr over every stored run: runs, collapsed runs, most classes never predicted."""
    stats: dict[tuple, list] = {}
    for r in runs:
        s = stats.setdefault((r.label, r.config.get(field)), [0, 0, 0.0])
        s[0] += 1
        if _collapsed(r):
            s[1] += 1
            s[2] = max(s[2], float(r.metrics["test/never_predicted"]))
    rows = [[lab, f"{lr:g}", str(n), str(c), f"{m:g}" if c else "0"]
            for (lab, lr), (n, c, m) in sorted(stats.items(), key=lambda kv: (T.label_order(kv[0][0]), kv[0][1]))]
    return ("Collapse per loss and learning rate, every stored run of every block (tuning and main):\n\n"
            + T.markdown_table(["loss", field, "runs", "collapsed", "most classes never predicted"], rows))


# -------------------------------------------------------------------------------------------- assembly
def progress_markdown(progress: Progress) -> str:
    if not progress.blocks:
        return "The grid files stored in the database could not be expanded; progress unknown."
    t = progress.total
    rows = [[b.block, str(b.total), str(b.done), str(b.failed), str(b.missing)] for b in progress.blocks]
    rows.append(["**all**", f"**{t.total}**", f"**{t.done}**", f"**{t.failed}**", f"**{t.missing}**"])
    text = (f"{t.done} of the grid's {t.total} runs are stored done ({t.done / t.total:.0%}), {t.failed} failed, "
            f"{t.missing} not run yet (grid files stored in the database, expanded as the runner does; a run of a "
            "tuned block counts once, whichever learning rate it gets). Until every block is complete the "
            "numbers below are provisional; settings with fewer seeds than the grid asks are marked "
            f"{PARTIAL}.\n\n" + T.markdown_table(["block", "runs in grid", "done", "failed", "missing"], rows))
    if progress.unreadable:
        text += "\n\nGrid files that could not be expanded: " + "; ".join(progress.unreadable)
    return text


def verdict_markdown(claims: Sequence[Claim]) -> str:
    rows = [[c.name, f"**{c.decision.text}**" if c.decision else f"**{NO_DATA}**", c.evidence] for c in claims]
    return ("Each claim compared with cross-entropy (CE), decided by code from the rules below. " + CLEAR + "\n\n"
            + T.markdown_table(["claim", "verdict", "evidence"], rows, ["l", "l", "l"])
            + "\n\nRules. Accuracy, calibration and OOD claims — " + RULE + ". Learning-rate robustness (\"GenCE is "
            "as robust to the learning rate as CE\") — " + LR_RULE + ". \"Provisional\": settings or seeds the "
            "grid asks for are still missing.")


def build_verdict(results: T.Results, cfg: VerdictConfig | None = None, *, plots_dir: str | Path | None = None,
                  link_dir: str | Path | None = None) -> Verdict:
    """The claims, their sections and the preamble (progress and verdict table). ``plots_dir``: where to
    write the verdict's PNG (none without it); ``link_dir``: the Markdown file's folder, for its link."""
    cfg = cfg or VerdictConfig()
    progress = grid_progress(results)
    few_claim, few_md = accuracy_few_labels(results, progress, cfg)
    lt_claim, lt_md = accuracy_imbalance(results, progress, cfg)
    cal_claims, cal_md = calibration(results, progress, cfg)
    ood_claim, ood_md = ood(results, progress, cfg)
    lr_claim, lr_md = learning_rate(results, progress, cfg, plots_dir, link_dir)
    claims = [few_claim, lt_claim, *cal_claims, ood_claim, lr_claim]
    preamble = "\n".join(["## Study progress", "", progress_markdown(progress), "", "## Verdict", "",
                          verdict_markdown(claims)])
    sections = [("Claim: accuracy with few labels", few_md), ("Claim: accuracy under class imbalance", lt_md),
                ("Claim: calibration before and after temperature scaling", cal_md),
                ("Claim: OOD detection", ood_md), ("Claim: learning-rate robustness and collapse", lr_md)]
    return Verdict(progress, claims, preamble, sections)
