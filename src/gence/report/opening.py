"""The one-screen opening of a report with a verdict: per claim the pooled difference the verdict decides on
(with its 95% interval), the same per dataset and the verdict; one figure per claim; hardware and compute.

Everything shown is what :mod:`gence.report.verdict` already computed (its claims' comparisons and
decisions, :func:`~gence.report.verdict.pooled_by_dataset`; with a pilot, its changes from E to 2E pooled over
settings, :func:`~gence.report.verdict.pilot_pooled`) and what :mod:`gence.report.plots` draws; the rules,
methods and per-setting tables follow in the sections below it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gence.report import plots
from gence.report import tables as T
from gence.report.sections import Context, Section, compute_lines
from gence.report.convergence import pooled_sentence
from gence.report.verdict import (LR_PLOT_CAPTION, SHOWN_CONVERGED, Beside, Claim, Comparison, VerdictSpec,
                                  fmt_estimate, lr_plot, outcome_words, pilot_pooled, pooled_by_dataset, setting_name,
                                  unit, verdict_of)

HEADING = "## At a glance"


def _cell(pooled, column) -> str:
    if pooled is None or not pooled.k:
        return "–"
    r = pooled.random
    return f"{fmt_estimate(r.mean, r.low, r.high, column)}{unit(column)} ({pooled.k})"


def _column(claim: Claim):
    return claim.decision.column or (claim.comparisons[0].column if claim.comparisons else None)


def claims_table(claims: Sequence[Claim], label: str, baseline: str, only_converged: bool = False) -> str:
    """Per claim: metric, pooled Δ over all its settings, per dataset, over the settings shown converged (with
    a pilot; ``only_converged``: the verdict is decided on those), and the verdict."""
    datasets = sorted({c.setting[0] for claim in claims for c in claim.comparisons if c.compared})
    with_pilot = any(c.pilot for claim in claims for c in claim.comparisons)
    columns = datasets + ([SHOWN_CONVERGED] if with_pilot else [])
    rows = []
    for claim in claims:
        col = _column(claim)
        metric = ("worst-lr " if claim.key == "lr_robustness" else "") + (col.name if col else "–")
        per = dict(pooled_by_dataset(claim.comparisons)) if col else {}
        # over every compared setting: the verdict's own estimate unless it is decided on those shown converged
        # (and shown below min_fraction too, where the verdict says why it is not used)
        rows.append([claim.name, metric, _cell(per.get("all"), col) if col else "–",
                     *[_cell(per.get(name), col) if col else "–" for name in columns], f"**{claim.decision.text}**"])
    header = ["claim", "metric", f"{label} − {baseline}, all [95% CI] (settings)", *datasets,
              *([f"only settings shown converged (pilot){', the verdict decides on these' if only_converged else ''}"]
                if with_pilot else []), "verdict"]
    return T.markdown_table(header, rows, ["l", "l"] + ["r"] * (1 + len(columns)) + ["l"])


def beside_table(beside: Sequence[Beside]) -> str:
    """Per comparison shown beside the claims with a setting compared: metric, pooled Δ over all its settings,
    per dataset, and its outcome by the claims' rules, in words about its two losses (:func:`outcome_words`)."""
    beside = [b for b in beside if any(c.compared for c in b.comparisons)]
    datasets = sorted({c.setting[0] for b in beside for c in b.comparisons if c.compared})
    rows = []
    for b in beside:
        col = b.decision.column or b.comparisons[0].column
        per = dict(pooled_by_dataset(b.comparisons))
        rows.append([f"{b.label} − {b.other}", b.what, _cell(per.get("all"), col),
                     *[_cell(per.get(name), col) for name in datasets],
                     f"{b.decision.better} / {b.decision.worse}", outcome_words(b.decision, b.label)])
    return T.markdown_table(["comparison", "metric", "all [95% CI] (settings)", *datasets,
                             "settings where the first is significantly better / worse (Holm)",
                             "outcome (the claims' rules)"], rows, ["l", "l"] + ["r"] * (2 + len(datasets)) + ["l"])


POOLED = "pooled"


def _forest_rows(comps: Sequence[Comparison], series: str, pooled, column) -> dict[str, dict]:
    compared = [c for c in comps if c.compared]
    several = len({c.block for c in compared}) > 1
    judged = all(c.in_verdict for c in compared)
    rows: dict[str, dict] = {}
    s = column.scale
    for c in compared:
        name = (setting_name(c.setting) + (f" [{c.block}]" if several else "")
                + ("" if c.in_verdict else " (not in the verdict)"))
        rows.setdefault(name, {})[series] = (c.result.mean * s, c.result.low * s, c.result.high * s)
    if pooled is not None and pooled.k:
        r = pooled.random
        rows.setdefault(POOLED if judged else f"{POOLED} (the verdict's settings)", {})[series] = (
            r.mean * s, r.low * s, r.high * s)
    return rows


def forest_of(claims: Sequence[Claim], path: Path, title: str, label: str, baseline: str,
              series: Sequence[str] | None = None) -> Path | None:
    """Per-setting differences with intervals of one or more claims (one series each, named by ``series``,
    default the claims' metric) and their pooled one."""
    rows: dict[str, dict] = {}
    column = None
    for i, claim in enumerate(claims):
        col = _column(claim)
        if col is None:
            continue
        column = column or col
        name_i = series[i] if series else col.name
        for name, d in _forest_rows(claim.comparisons, name_i, claim.decision.pooled, col).items():
            rows.setdefault(name, {}).update(d)
    if not rows or column is None:
        return None
    ordered = ([(n, d) for n, d in rows.items() if not n.startswith(POOLED)]
               + [(n, d) for n, d in rows.items() if n.startswith(POOLED)])
    direction = "higher is better" if column.higher_is_better else "lower is better"
    what = column.name.replace(" %", "") + (f" ({column.unit})" if column.unit else "")
    return plots.forest(ordered, path, title, f"{label} − {baseline}, {what}: mean over paired seeds, 95% CI; "
                        f"{direction}")


def opening_section(spec: VerdictSpec) -> Section:
    """The opening as a report section (pass as ``opening`` to :func:`gence.report.sections.with_verdict`)."""
    def section(ctx: Context) -> str:
        v = verdict_of(ctx, spec)
        if not v.claims:
            return ""
        label, base = spec.label, ctx.results.display(spec.baseline)
        md = [HEADING, "",
              f"`{label}` − `{base}` per claim: the pooled difference the verdict decides on (mean of the settings' "
              "mean paired differences, t 95% interval over settings; the number of settings in brackets), the "
              "same per dataset, and the verdict by the rules stated under 'Verdict' below.", "",
              claims_table(v.claims, label, base, spec.only_converged), ""]
        if any(c.compared for b in v.beside for c in b.comparisons):
            md += ["Beside the claims, not deciding them: the mixed GenCE and the baselines (pooled as above; a "
                   "baseline at a learning rate not tuned for it carries that disadvantage; the sections below "
                   "name each setting's blocks and learning rates).", "", beside_table(v.beside), ""]
        if spec.pilot is not None:
            shown = (f"A setting is *shown converged* when its budget (epochs) passes the rule of the convergence "
                     f"pilot (`{spec.pilot}`; its rule and numbers are in its own report).")
            if spec.only_converged:
                md += [f"The verdict is decided on the settings shown converged only. {shown} The all-settings "
                       "column adds the others, which speak only for the budget they ran.", ""]
            else:
                md += [f"The verdict is decided on every setting of the grid. {shown} The column of those settings "
                       "alone is what the claims say of trained models, the others speak only for the budget they "
                       "ran.", ""]
            rule, changes = pilot_pooled(spec)
            if changes:   # whether the pilot's longest runs still moved on average (the rule judges each setting)
                md += [pooled_sentence(changes, rule), ""]
        if ctx.with_plots:
            md += figures(ctx, spec, v.claims, label, base)
        md += [line + "  " for line in compute_lines(ctx.results)]
        return "\n".join(md).rstrip()
    return section


def figures(ctx: Context, spec: VerdictSpec, claims: Sequence[Claim], label: str, base: str) -> list[str]:
    """One figure per claim (the two calibration claims share one)."""
    out: list[str] = []
    ctx.plots_dir.mkdir(parents=True, exist_ok=True)

    def add(path: Path | None, what: str, new: bool = True) -> None:
        if path is None:
            return
        if new:
            ctx.files.append(path)
        out.extend([f"![{what}]({ctx.link(path)})", ""])

    by_key: dict[str, list[Claim]] = {}
    for c in claims:
        by_key.setdefault(c.key, []).append(c)
    for key, mine in by_key.items():
        name = mine[0].name
        if key == "few_labels":
            labels = [lab for lab in dict.fromkeys([spec.baseline, spec.label, spec.mixed])
                      if lab and lab in ctx.results.labels()]
            add(plots.error_vs_labels_panels(ctx.results, ctx.plots_dir / "glance_few_labels.png", labels),
                f"{name}: test error against labelled images per class")
        elif key == "lr_robustness":
            if verdict_of(ctx, spec).lr_panels:
                add(lr_plot(ctx, spec), f"{name}: {LR_PLOT_CAPTION.format(field=spec.field)}", new=False)
        else:
            calibration = key == "calibration"
            title = "Calibration: ECE before and after temperature scaling" if calibration else name
            add(forest_of(mine, ctx.plots_dir / f"glance_{key}.png", title, label, base,
                          ["before TS", "after TS"] if calibration and len(mine) == 2 else None),
                f"{title}: per-setting differences with 95% intervals")
    return out
