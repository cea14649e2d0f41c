"""PNG plots from stored runs (matplotlib, object API: no pyplot state, no display needed)."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

from gence.calibration import plot_reliability_bins
from gence.report.columns import METRIC, RELIABILITY_SPLITS
from gence.report.stats import mean_interval, mean_std
from gence.report.tables import BASELINE, Results, regime_order, slug


def _figure(**kwargs):
    try:  # optional dependency: imported where used
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover
        raise ImportError("the report's plots need matplotlib: pip install matplotlib") from exc
    return Figure(**kwargs)


def _labels_per_class(regime: str) -> float | None:
    head, _, rest = regime.partition(":")
    if head != "balanced":
        return None
    try:
        return float(rest)
    except ValueError:
        return None


def _labels_settings(results: Results, dataset: str, model: str) -> list:
    return [s for s in results.settings() if (s[0], s[2]) == (dataset, model) and _labels_per_class(s[1]) is not None]


def _error_vs_labels_axes(ax, results: Results, settings: list, labels: list[str]) -> None:
    """Test error against labels per class in ``settings`` (one dataset and model), a line per label."""
    for k, label in enumerate(labels):
        dodge = 1 + 0.025 * (k - (len(labels) - 1) / 2)  # spread the loss' intervals apart on the log axis
        xs, ms, lo, hi = [], [], [], []
        for s in sorted(settings, key=lambda s: regime_order(s[1])):
            g = results.shown(s, label)
            if g is None:
                continue
            m, a, b = mean_interval([r.metrics.get(METRIC["error"], math.nan) * 100 for r in g.runs])
            if math.isnan(m):
                continue
            xs.append(_labels_per_class(s[1]) * dodge)
            ms.append(m)
            lo.append(m - a if not math.isnan(a) else 0.0)
            hi.append(b - m if not math.isnan(b) else 0.0)
        if xs:
            ax.errorbar(xs, ms, yerr=[lo, hi], marker="o", capsize=3, label=results.display(label),
                        linewidth=2.2 if label in (BASELINE, "gence") else 1.2)
    ax.set_xscale("log")
    ticks = sorted({_labels_per_class(s[1]) for s in settings})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    if len(ticks) == 1:   # else the limits hug the dodged points, which land on the two edges
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
    ax.minorticks_off()
    ax.set_xlabel("labelled images per class")
    ax.grid(True, which="both", alpha=0.3)


def error_vs_labels(results: Results, out_dir: Path) -> list[Path]:
    """Test error against labels per class (balanced regimes), one line per loss with 95% t-intervals of the
    mean over seeds; one PNG per (dataset, model)."""
    paths = []
    for dataset, model in sorted({(s[0], s[2]) for s in results.settings()}):
        settings = _labels_settings(results, dataset, model)
        if not settings:
            continue
        fig = _figure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        _error_vs_labels_axes(ax, results, settings, results.labels())
        ax.set_ylabel("test error % (mean, 95% CI over seeds)")
        ax.set_title(f"{dataset}, {model}")
        ax.legend(fontsize="small")
        path = out_dir / f"error_vs_labels_{slug(dataset, model)}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def error_vs_labels_panels(results: Results, path: Path, labels: Sequence[str]) -> Path | None:
    """The same plot for ``labels`` only, every (dataset, model) a panel of one PNG (None without any)."""
    pairs = [(d, m) for d, m in sorted({(s[0], s[2]) for s in results.settings()}) if _labels_settings(results, d, m)]
    if not pairs:
        return None
    cols = min(len(pairs), 3)
    rows = math.ceil(len(pairs) / cols)
    fig = _figure(figsize=(4.2 * cols, 3.2 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, (dataset, model) in enumerate(pairs):
        ax = axes[i // cols][i % cols]
        _error_vs_labels_axes(ax, results, _labels_settings(results, dataset, model), list(labels))
        ax.set_title(f"{dataset}, {model}", fontsize="medium")
        if i % cols == 0:
            ax.set_ylabel("test error % (95% CI)")
    for k in range(len(pairs), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncols=len(names), fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def forest(rows: Sequence[tuple[str, dict[str, tuple[float, float, float]]]], path: Path, title: str,
           xlabel: str) -> Path:
    """A point plot of differences with intervals, one row per setting (``rows``: (name, {series: (mean,
    low, high)})), several series dodged vertically; a row named ``pooled`` is drawn as diamonds below a
    line. NaN bounds draw the point alone."""
    fig = forest_figure(rows, title, xlabel)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _wrap_row_label(label: str, width: int = 48) -> str:
    """A setting's name on two lines where it is long: its block (``... [block]``) on the second."""
    if len(label) <= width:
        return label
    head, sep, block = label.partition(" [")
    return f"{head}\n[{block}" if sep and len(head) <= width else textwrap.fill(label, width)


def forest_figure(rows: Sequence[tuple[str, dict[str, tuple[float, float, float]]]], title: str, xlabel: str):
    """The figure :func:`forest` saves. Long row names wrap (a block name goes to a second line) and the axis
    label wraps to the axes' width: at a fixed figure width, long names had pushed the axis label past the
    right edge of the image."""
    series = list(dict.fromkeys(k for _, d in rows for k in d))
    names = [_wrap_row_label(r) for r, _ in rows]
    lines = max((name.count("\n") + 1 for name in names), default=1)
    fig = _figure(figsize=(8.5, 1.3 + 0.32 * len(rows) * max(1, len(series) * 0.7) * (1 + 0.6 * (lines - 1))),
                  layout="constrained")
    ax = fig.add_subplot()
    n = len(rows)
    labelled: set[str] = set()
    for j, name in enumerate(series):
        off = 0.3 * (j - (len(series) - 1) / 2) / max(1, len(series) - 1) * (len(series) > 1)
        for i, (row, d) in enumerate(rows):
            if name not in d:
                continue
            m, lo, hi = d[name]
            y = n - 1 - i + off
            pooled = row == "pooled"
            err = None if math.isnan(lo) else [[m - lo], [hi - m]]
            ax.errorbar([m], [y], xerr=err, fmt="D" if pooled else "o", ms=7 if pooled else 4, capsize=2,
                        color=f"C{j}", label=None if name in labelled else name)
            labelled.add(name)
    if any(r == "pooled" for r, _ in rows):
        ax.axhline(n - 1 - [r for r, _ in rows].index("pooled") + 0.5, color="grey", linewidth=0.6)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(n), list(reversed(names)), fontsize="small")
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(textwrap.fill(xlabel, 70 if lines == 1 else 60))
    ax.set_title(title, fontsize="medium")
    ax.grid(True, axis="x", alpha=0.3)
    if len(series) > 1:
        fig.legend(loc="outside upper center", ncols=len(series), fontsize="small")
    return fig


def pool_bins(bins_list: list[dict]) -> dict:
    """Sum reliability bins over runs: counts add, accuracy and confidence are count-weighted means."""
    edges = bins_list[0]["edges"]
    m = len(bins_list[0]["count"])
    count = [0] * m
    acc = [0.0] * m
    conf = [0.0] * m
    for b in bins_list:
        if len(b["count"]) != m:
            raise ValueError("cannot pool reliability bins with different numbers of bins")
        for i, c in enumerate(b["count"]):
            if c:
                count[i] += c
                acc[i] += b["accuracy"][i] * c
                conf[i] += b["confidence"][i] * c
    return {"edges": edges, "count": count,
            "accuracy": [a / c if c else None for a, c in zip(acc, count)],
            "confidence": [f / c if c else None for f, c in zip(conf, count)]}


def _gence_label(results: Results, setting) -> str | None:
    groups = results.groups_of(setting)
    for g in groups:
        if g.label == "gence":
            return g.label
    return next((g.label for g in groups if g.loss == "gence"), None)


def reliability_diagrams(results: Results, out_dir: Path) -> list[Path]:
    """CE and GenCE side by side, before and after temperature scaling (left, right), test split bins
    pooled over the seeds of each; one PNG per setting that has both losses with stored bins. Each panel's
    ECE is that of the pooled predictions (titled so), not the mean of per-seed ECEs the tables show."""
    paths = []
    for setting in results.settings():
        base = results.shown(setting, BASELINE)
        glabel = _gence_label(results, setting)
        gence = results.shown(setting, glabel) if glabel is not None else None
        if base is None or gence is None:
            continue
        groups = [base, gence]
        panels = {}
        for g in groups:
            for split in RELIABILITY_SPLITS:
                bins = [r.extras["reliability"][split] for r in g.runs
                        if isinstance(r.extras, dict) and split in (r.extras.get("reliability") or {})]
                if bins:
                    panels[(g.label, split)] = (pool_bins(bins), len(bins))
        if len(panels) < 2:
            continue
        # no layout engine: the diagram splits a histogram strip off each axes, which constrained layout
        # does not see, so the margins are set by hand
        fig = _figure(figsize=(17, 5.4))
        fig.subplots_adjust(left=0.04, right=0.99, bottom=0.1, top=0.8, wspace=0.25)
        axes = fig.subplots(1, 4)
        for col, g in enumerate(groups):
            for row, split in enumerate(RELIABILITY_SPLITS):
                ax = axes[2 * row + col]  # CE and GenCE next to each other, before TS then after
                if (g.label, split) not in panels:
                    ax.set_axis_off()
                    continue
                bins, n = panels[(g.label, split)]
                when = "before TS" if split == "test" else "after TS"
                plot_reliability_bins(bins, ax=ax, title=f"{g.label}, {when} ({n} seeds pooled)",
                                      ece_label="pooled ECE")
        fig.suptitle(f"Reliability, {setting[0]} {setting[1]} {setting[2]}: the predictions of all seeds pooled; "
                     f"ECE of the pooled predictions (the tables: mean of per-seed ECEs)")
        path = out_dir / f"reliability_{slug(*setting)}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def _ece_axes(ax, results: Results, setting, labels: Sequence[str]) -> None:
    """Bars of ECE before and after temperature scaling (mean ± std over seeds) per loss of ``labels`` that
    :meth:`Results.shown` has for ``setting``."""
    xs, before, after, bsd, asd, names = [], [], [], [], [], []
    for i, g in enumerate(g for g in (results.shown(setting, lab) for lab in labels) if g is not None):
        b = mean_std([r.metrics.get(METRIC["ece"], math.nan) * 100 for r in g.runs])
        a = mean_std([r.metrics.get(METRIC["ece_ts"], math.nan) * 100 for r in g.runs])
        xs.append(i)
        names.append(results.display(g.label))
        before.append(b[0])
        after.append(a[0])
        bsd.append(0.0 if math.isnan(b[1]) else b[1])
        asd.append(0.0 if math.isnan(a[1]) else a[1])
    w = 0.38
    ax.bar([x - w / 2 for x in xs], before, w, yerr=bsd, capsize=2, label="before TS")
    ax.bar([x + w / 2 for x in xs], after, w, yerr=asd, capsize=2, label="after TS")
    ax.set_xticks(xs, names, rotation=40, ha="right", fontsize="small")
    ax.set_title(setting[1], fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)


def ece_before_after(results: Results, out_dir: Path) -> list[Path]:
    """ECE before and after temperature scaling per loss, one panel per regime (mean ± std over seeds);
    one PNG per (dataset, model)."""
    paths = []
    pairs = sorted({(s[0], s[2]) for s in results.settings()})
    labels = results.labels()
    for dataset, model in pairs:
        settings = [s for s in results.settings() if (s[0], s[2]) == (dataset, model)]
        fig = _figure(figsize=(max(5.0, 3.2 * len(settings)), 3.8), layout="constrained")
        axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
        for ax, setting in zip(axes, settings):
            _ece_axes(ax, results, setting, labels)
        axes[0].set_ylabel("test ECE % (mean ± std)")
        axes[0].legend(fontsize="small")
        fig.suptitle(f"ECE before and after temperature scaling, {dataset}, {model}")
        path = out_dir / f"ece_ts_{slug(dataset, model)}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def lr_robustness(panels: list[tuple[str, dict[str, dict[float, list[tuple[float, bool]]]], dict[str, float]]],
                  path: Path, field: str = "lr") -> Path:
    """Test error against the learning rate, one panel per setting: per loss the mean over seeds with every
    run as a dot, runs that collapsed (a class never predicted) as red crosses, and a ring around the mean
    at the lr chosen on validation for the tuned runs (test error need not be lowest there). ``panels``:
    (title, {label: {lr: [(test error, collapsed), ...]}}, {label: chosen lr}); a label missing from the
    last dict gets no ring."""
    n = len(panels)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = _figure(figsize=(3.6 * cols, 3.1 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    colors, ringed = {}, False
    for i, (title, losses, chosen) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for j, (label, by_lr) in enumerate(losses.items()):
            color = colors.setdefault(label, f"C{len(colors)}")
            lrs = sorted(by_lr)
            offset = 1 + 0.04 * (j - (len(losses) - 1) / 2)   # dodge the losses' dots
            means = {lr: 100 * sum(e for e, _ in by_lr[lr]) / len(by_lr[lr]) for lr in lrs}
            ax.plot(lrs, [means[lr] for lr in lrs], "-", color=color, label=label)
            if chosen.get(label) in means:
                ax.plot([chosen[label]], [means[chosen[label]]], "o", mfc="none", mec=color, ms=11, mew=1.6)
                ringed = True
            for lr in lrs:
                ok = [100 * e for e, c in by_lr[lr] if not c]
                bad = [100 * e for e, c in by_lr[lr] if c]
                ax.plot([lr * offset] * len(ok), ok, "o", color=color, ms=3.5, alpha=0.7)
                ax.plot([lr * offset] * len(bad), bad, "x", color="red", ms=6, mew=1.6,
                        label="collapsed run" if bad else None)   # one legend entry: names are deduplicated below
        ax.set_xscale("log")
        ax.set_xticks(sorted({lr for by_lr in losses.values() for lr in by_lr}))
        ax.get_xaxis().set_major_formatter(_log_formatter())
        ax.minorticks_off()   # the log axis' minor labels (6e-2, ...) overprint the values swept
        ax.set_title(textwrap.fill(title, 40), fontsize="small")
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(field, fontsize="small")
        if i % cols == 0:
            ax.set_ylabel("test error %")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles, names = [], []
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in names:
                    handles.append(h)
                    names.append(lab)
    if ringed:   # one neutral entry for the rings, drawn in each loss's colour
        from matplotlib.lines import Line2D  # optional dependency, as in _figure

        handles.append(Line2D([], [], ls="none", marker="o", mfc="none", mec="0.4", ms=11, mew=1.6))
        names.append(f"{field} the tuned runs use (chosen on validation)")
    fig.legend(handles, names, loc="outside upper center", ncols=len(names), fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _log_formatter():
    from matplotlib.ticker import FuncFormatter  # optional dependency, as in _figure

    return FuncFormatter(lambda v, _: f"{v:g}")


def log_budget_ticks(ends: Sequence[float], min_ratio: float = 1.4) -> list[float]:
    """Ticks for a log axis of epochs done: each budget in ``ends`` and a tenth of it (where evaluation
    every 10% starts), the budgets placed first; a tick closer than a factor ``min_ratio`` to one already
    placed is left out, so that labels like 400 and 500 do not print over each other."""
    budgets = sorted({round(e, 6) for e in ends})
    placed: list[float] = []
    for t in budgets + sorted({round(e / 10, 6) for e in budgets}):
        if all(max(t, p) / min(t, p) >= min_ratio for p in placed):
            placed.append(t)
    return sorted(placed)


CURVE_NAMES = {"val/error": ("validation error %", 100.0), "val/nll": ("validation NLL", 1.0),
               "val/ece": ("validation ECE %", 100.0)}


def convergence_curves(lines: dict[str, dict[str, tuple[list, list, list, list]]], path: Path, title: str,
                       metrics: Sequence[str], styles: dict[str, tuple[int, int]] | None = None) -> Path:
    """One panel per history metric against epochs done: per line (a loss at a budget) the mean over seeds,
    the seeds' range shaded. ``lines``: {name: {metric: (epochs done, mean, min, max)}}; ``styles``: {name:
    (colour index, line-style index)}, e.g. one colour per loss and one style per budget (default: a colour
    each). The x axis is logarithmic when the lines end at budgets a factor 2 or more apart."""
    dashes = ["-", "--", ":", "-."]
    ends = [max(c[metrics[0]][0]) for c in lines.values() if c[metrics[0]][0]]
    log_x = bool(ends) and min(ends) > 0 and max(ends) / min(ends) >= 2
    fig = _figure(figsize=(5.0 * len(metrics) + 2.6, 3.9), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        ylabel, scale = CURVE_NAMES.get(metric, (metric, 1.0))
        for k, (name, curves) in enumerate(lines.items()):
            xs, mean, lo, hi = curves[metric]
            if not xs:
                continue
            c, d = (styles or {}).get(name, (k, 0))
            color = f"C{c % 10}"
            ax.plot(xs, [m * scale for m in mean], dashes[d % len(dashes)], marker="o", ms=3, color=color,
                    label=name, linewidth=1.6)
            ax.fill_between(xs, [v * scale for v in lo], [v * scale for v in hi], color=color, alpha=0.1,
                            linewidth=0)
        if log_x:
            ax.set_xscale("log")
            ticks = log_budget_ticks(ends)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        else:
            ax.set_xlim(left=0)
        ax.set_xlabel("epochs done")
        ax.set_ylabel(ylabel + " (mean; range over seeds)")
        ax.grid(True, alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize="small")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def pilot_budgets(errors: dict[str, dict[int, dict[int, float]]], path: Path, title: str) -> Path:
    """Test error at the end of training against the budget (epochs, log axis): per loss a line through the
    mean over its seeds at each budget, each seed a dot. ``errors``: {loss: {epochs: {seed: error}}} (fractions)."""
    fig = _figure(figsize=(6.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ticks: set[int] = set()
    for k, (label, by_e) in enumerate(errors.items()):
        color = f"C{k % 10}"
        xs, means = [], []
        for e, seeds in sorted(by_e.items()):
            values = [100 * v for v in seeds.values() if not math.isnan(v)]
            if not values:
                continue
            ticks.add(e)
            ax.plot([e] * len(values), values, "o", ms=3.5, color=color, alpha=0.45, linewidth=0)
            xs.append(e)
            means.append(sum(values) / len(values))
        if xs:
            ax.plot(xs, means, "-", marker="D", ms=5, color=color, linewidth=1.8, label=label)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("budget (epochs)")
    ax.set_ylabel("test error % (line: mean; dots: seeds)")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
