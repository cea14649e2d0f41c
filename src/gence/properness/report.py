"""docs/properness.md and its plots, written from the runs stored in the results database.

Every number and every sentence with a number in the report comes from stored runs (or, for the
completeness check, from sampling the tasks); nothing is typed by hand. Regenerate with the command
written at the top of the report.
"""
from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gence.contract import TrainConfig, run_key
from gence.experiments.db import ResultsDB
from gence.properness.completeness import null_space
from gence.report.tables import compute_seconds
from gence.properness.study import DATASET, GRID, Sweep, default_sweep, make_task

__all__ = ["write_report", "collect", "study_rows", "previous_loop_key"]

# The study's rows from before it ran on gence.train.fit (its own loop: same Adam, cosine decay, ragged
# batch dropped, but raw torch ops and a one-shot evaluation): their configs were the study's own dicts.
PREVIOUS_STUDY_VERSION = 1


def study_rows(db: ResultsDB) -> list[dict]:
    """Finished runs of the study: the current ones (``dataset`` = DATASET) and those of its previous loop."""
    return [r for r in db.runs("done") if r["grid"] == GRID and isinstance(r["config"], dict)
            and (r["config"].get("dataset") == DATASET or r["config"].get("study") == GRID)]


def previous_loop_key(config: TrainConfig) -> str:
    """The key the same run had when the study trained with its own loop (``study_version`` 1)."""
    dp = config.dataset_params
    old = {"study": GRID, "study_version": PREVIOUS_STUDY_VERSION, "task": dp["task"], "loss": config.loss,
           "loss_params": config.loss_params, "n_train": dp["n_train"], "batch_size": config.batch_size,
           "lr": config.lr, "seed": config.seed, "steps": config.steps, "optimizer": config.optimizer,
           "hidden": list(config.model_params["hidden"]), "output_bias": config.init_output_bias,
           "n_eval": dp["n_eval"], "eval_seed": dp["eval_seed"]}
    return run_key(old)

_COLORS = {"CE": "C0", "GenCE": "C3", "GenCE (lam=0.5)": "C1", "focal (gamma=3)": "C2",
           "label smoothing (0.1)": "C4", "Brier": "C5"}


def collect(sweep: Sweep, rows: list[dict]) -> dict:
    """axis -> {(value, loss label): {metric: [values over seeds]}} for the runs of ``sweep`` found."""
    by_key = {r["key"]: r for r in rows}
    out: dict = {}
    for axis, entries in sweep.axes().items():
        cells: dict = defaultdict(lambda: defaultdict(list))
        for value, loss, cfg in entries:
            row = by_key.get(cfg.key())
            if row is None:
                continue
            for m, v in row["metrics"].items():
                cells[(value, loss)][m].append(v)
        out[axis] = cells
    return out


def _stat(values):
    if not values:
        return math.nan, math.nan, 0
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def _fmt(values, digits=4):
    m, s, n = _stat(values)
    if n == 0:
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def _mean(cells, value, loss, metric="kl"):
    return _stat(cells.get((value, loss), {}).get(metric, []))[0]


def _table(cells, values, losses, metric, value_name, digits=4, value_fmt=str):
    head = "| loss | " + " | ".join(f"{value_name} {value_fmt(v)}" for v in values) + " |"
    lines = [head, "|---|" + "---|" * len(values)]
    for loss in losses:
        lines.append(f"| {loss} | " + " | ".join(
            _fmt(cells.get((v, loss), {}).get(metric, []), digits) for v in values) + " |")
    return "\n".join(lines)


def _plot_axis(cells, values, losses, path, xlabel, title, metric="kl", logx=True):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for loss in losses:
        stats = [_stat(cells.get((v, loss), {}).get(metric, [])) for v in values]
        xs = [v for v, st in zip(values, stats) if st[2]]
        if not xs:
            continue
        ms = [st[0] for st in stats if st[2]]
        ss = [st[1] for st in stats if st[2]]
        ax.errorbar(xs, ms, yerr=ss, marker="o", ms=4, capsize=3, label=loss,
                    color=_COLORS.get(loss), ls="--" if "lam" in loss else "-")
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(list(values), [f"{v:g}" for v in values])
        ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("KL(p || q), nats; mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_completeness(cells, sweep, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(sweep.completeness_tasks)
    losses = list(sweep.losses)
    fig, axes = plt.subplots(1, len(labels), figsize=(5.2 * len(labels), 4.0), dpi=110, sharey=True,
                             squeeze=False)
    width = 0.8 / max(len(sweep.output_biases), 1)
    for ax, lab in zip(axes[0], labels):
        last = make_task(sweep.completeness_tasks[lab]).num_classes - 1
        for j, b in enumerate(sweep.output_biases):
            stats = [_stat(cells.get(((lab, b), loss), {}).get(f"c/{last}", [])) for loss in losses]
            ax.bar(np.arange(len(losses)) + (j - (len(sweep.output_biases) - 1) / 2) * width,
                   [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=2,
                   label=f"initial output bias {b:+g}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(losses)), losses, rotation=30, ha="right", fontsize=8)
        ax.set_title(lab, fontsize=9)
        ax.set_ylabel("c of the last class = E q / E p")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _completeness_check(sweep, n=5000, seed=1) -> list[str]:
    lines = ["| task | singular values of the (n x K) matrix of p(y|x) (n = %d samples) | "
             "smallest / largest | non-trivial c (P c = 1, c != 1) |" % n, "|---|---|---|---|"]
    for lab, spec in sweep.completeness_tasks.items():
        task = make_task(spec)
        x, _ = task.sample(n, seed=seed)
        p = task.posterior(x)
        s, null = null_space(p)
        if len(null):
            v = null[0] / np.abs(null[0]).max()
            c = 1.0 + 0.5 * v
            resid = float(np.abs(p @ c - 1.0).max())
            cs = f"c = ({', '.join(f'{t:.3f}' for t in c)}), max abs(P c - 1) = {resid:.1e}"
        else:
            cs = "none: c = 1 is the only solution"
        lines.append(f"| {lab} | {', '.join(f'{t:.3g}' for t in s)} | {s[-1] / s[0]:.1e} | {cs} |")
    return lines


def write_report(db_path="runs/gence.sqlite", out="docs/properness.md", sweep: Sweep | None = None,
                 command: str = "gence properness") -> Path:
    """Write the Markdown report ``out`` and its PNG plots in ``<out without .md>/``."""
    sweep = sweep if sweep is not None else default_sweep()
    with ResultsDB(db_path) as db:
        rows = study_rows(db)
    out = Path(out)
    img_dir = out.with_suffix("")
    img_dir.mkdir(parents=True, exist_ok=True)
    rel = img_dir.name
    data = collect(sweep, rows)
    wanted = {c.key() for c in sweep.runs()}
    used = [r for r in rows if r["key"] in wanted]
    losses = list(sweep.losses)
    hw = sorted({r["hardware"] or "?" for r in used})
    versions = sorted({f"gence {r['gence_version']}, torch {r['torch_version']}, "
                       f"Python {r['python_version']}" for r in used})
    compute = sum(compute_seconds(r["wall_seconds"], r["extras"]) for r in used)

    bt = sweep.base_task
    base_desc = (f"{bt['num_classes']} classes, {bt['dim']} dimensions, balanced, separation "
                 f"{bt['separation']}, covariance '{bt['covariance']}' (task seed {bt['seed']})")
    L: list[str] = []
    L += ["# Properness study: does each loss recover the true posterior?", "",
          "Generated by code from the stored runs; do not edit. Regenerate with", "",
          "```", command, "```", "",
          f"(it runs only the runs missing from the database, then rewrites this file and "
          f"`{rel}/*.png`).", "",
          f"- runs: {len(used)} of {len(wanted)} in the sweep found in `{db_path}`; "
          f"compute {compute / 60:.1f} min (sum of run wall times)",
          f"- hardware: {'; '.join(hw) or '—'}",
          f"- software: {'; '.join(versions) or '—'}",
          f"- written: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", ""]

    L += ["## Setup", "",
          "Data: Gaussian class-conditionals x | y ~ N(mu_y, Sigma_y) "
          "(`gence.data.synthetic.GaussianTask`), whose posterior p(y|x) is computed exactly in log "
          "space. Model: an MLP "
          f"{' x '.join(str(h) for h in sweep.hidden)} (ReLU), trained for a fixed {sweep.steps} "
          "optimizer steps of Adam with a cosine decay to 0, batches drawn without replacement epoch by "
          "epoch (a batch larger than the training set means full batch). Each setting is run with "
          f"seeds {', '.join(map(str, sweep.seeds))} (training sample, initialisation and batch order).",
          "",
          f"Base setting: {base_desc}; n = {sweep.n_train} training samples, batch size "
          f"{sweep.batch_size}, learning rate {sweep.lr:g}. Each sweep changes one of these.", "",
          f"Metrics, on {sweep.n_eval} fresh samples x shared by all runs of a task, against the exact "
          "posterior p (`gence.properness.study.posterior_metrics`):", "",
          "- **KL** = mean over x of KL(p(.|x) || q(.|x)) in nats: 0 only at the true posterior;",
          "- **MAE** = mean over x and classes of |q - p|;",
          "- **ECE (true)** = expected calibration error with 15 equal-width bins on the top-label "
          "confidence, where each bin's accuracy is replaced by the mean true probability "
          "p(argmax q | x) (no label noise in the estimate);",
          "- **acc / Bayes** = E p(argmax q | x) / E max_y p(y|x): 1 for the Bayes classifier;",
          "- **c_y** = E q(y|x) / E p(y|x), and **KL to c·p** = KL(r || q) with r = c p renormalised "
          "(small when the model learned c p instead of p).", "",
          "Losses (from `gence.losses.build`): " + ", ".join(
              f"{lab} = `{n}`{'(' + ', '.join(f'{k}={v:g}' for k, v in p.items()) + ')' if p else ''}"
              for lab, (n, p) in sweep.losses.items()) + ".", ""]

    # base setting
    base_cells = data["size"]
    L += ["## Base setting", "",
          "| loss | KL | MAE | ECE (true) | acc / Bayes |", "|---|---|---|---|---|"]
    for loss in losses:
        c = base_cells.get((sweep.n_train, loss), {})
        L.append(f"| {loss} | {_fmt(c.get('kl', []))} | {_fmt(c.get('mae', []))} | "
                 f"{_fmt(c.get('ece_true', []))} | {_fmt(c.get('rel_accuracy', []))} |")
    L.append("")

    # size
    _plot_axis(data["size"], sweep.sizes, losses, img_dir / "kl_vs_size.png",
               "training-set size n", f"KL vs training-set size (batch {sweep.batch_size}, "
               f"lr {sweep.lr:g}, {sweep.steps} steps)")
    L += ["## Training-set size", "", f"![KL vs training-set size]({rel}/kl_vs_size.png)", "",
          "KL(true || model):", "", _table(data["size"], sweep.sizes, losses, "kl", "n"), "",
          "ECE against the true posterior:", "",
          _table(data["size"], sweep.sizes, losses, "ece_true", "n"), "",
          "Accuracy relative to the Bayes classifier:", "",
          _table(data["size"], sweep.sizes, losses, "rel_accuracy", "n"), ""]

    # batch
    _plot_axis(data["batch"], sweep.batch_sizes, losses, img_dir / "kl_vs_batch.png", "batch size",
               f"KL vs batch size (n = {sweep.n_train}, lr {sweep.lr:g}, {sweep.steps} steps)")
    L += ["## Batch size", "",
          "GenCE estimates the class marginal inside each batch, so this is where a small-batch bias "
          "would show. All runs take the same number of steps, so larger batches also see more "
          "epochs.", "", f"![KL vs batch size]({rel}/kl_vs_batch.png)", "",
          _table(data["batch"], sweep.batch_sizes, losses, "kl", "batch"), ""]

    # lr
    _plot_axis(data["lr"], sweep.lrs, losses, img_dir / "kl_vs_lr.png", "learning rate (Adam)",
               f"KL vs learning rate (n = {sweep.n_train}, batch {sweep.batch_size})")
    L += ["## Learning rate", "", f"![KL vs learning rate]({rel}/kl_vs_lr.png)", "",
          _table(data["lr"], sweep.lrs, losses, "kl", "lr", value_fmt=lambda v: f"{v:g}"), ""]

    # tasks
    labels = list(sweep.tasks)
    L += ["## Task variants", "",
          "Classes, dimensions and priors (exponential profile, head/tail ratio as given) at the base "
          "setting. KL(true || model):", "",
          "| loss | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for loss in losses:
        L.append(f"| {loss} | " + " | ".join(_fmt(data["task"].get((t, loss), {}).get("kl", []))
                                            for t in labels) + " |")
    L += ["", "Accuracy relative to the Bayes classifier:", "",
          "| loss | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for loss in losses:
        L.append(f"| {loss} | " + " | ".join(_fmt(data["task"].get((t, loss), {}).get("rel_accuracy", []))
                                            for t in labels) + " |")
    L.append("")

    # completeness
    L += _completeness_section(sweep, data["completeness"], img_dir, rel)
    L += _findings(sweep, data)
    L += _previous_loop(sweep, rows)
    out.write_text("\n".join(L) + "\n")
    return out


def _completeness_section(sweep, cells, img_dir, rel) -> list[str]:
    losses = list(sweep.losses)
    L = ["## When completeness fails", "",
         "GUIDE section 2: the population GenCE risk is minimised by every q(y|x) = c_y p(y|x) with "
         "sum_y c_y p(y|x) = 1 for all x, because GenCE only sees the within-class ratios "
         "q(y|x) / E_x' q(y|x'). Completeness — c = 1 is the only such vector — holds when the K "
         "functions x -> p(y|x) are linearly independent. The construction that breaks it "
         "(`gence.properness.completeness.NoiseClassTask`): two Gaussian classes plus a third, "
         "'noise' class that is a random relabelling — its inputs follow the mixture of the other two, "
         "so p(noise | x) = pi_noise for every x. The posterior then stays on the face "
         "{p_3 = pi_noise} of the simplex, and every c = (a, a, b) with a (1 - pi_noise) + b pi_noise "
         "= 1, b in [0, 1/pi_noise], gives sum_y c_y p(y|x) = 1: GenCE with generative_weight 1 is "
         "equally happy predicting the noise class never (b = 0), always (b = 1/pi_noise) or "
         "correctly (b = 1), and only the optimisation decides. The mixed loss with lam < 1 adds "
         "(1 - lam) CE, which pins b = 1. The control task has the same priors but a third class "
         "of its own Gaussian, so its posteriors are linearly independent.", "",
         "Numerical check on samples of the true posterior (the solutions of P c = 1 are 1 + the "
         "null space of P, since P 1 = 1):", ""]
    L += _completeness_check(sweep)
    L += ["", "To see whether training lands on c p, the initial bias of the last class's logit is "
          "shifted by " + ", ".join(f"{b:+g}" for b in sweep.output_biases) + " (the network's "
          "starting point; the data are the same). The table gives KL(true || model), KL to the "
          "best c·p, and c of the last class (1 = right), mean ± std over seeds.", ""]
    for lab in sweep.completeness_tasks:
        last = make_task(sweep.completeness_tasks[lab]).num_classes - 1
        L += [f"**{lab}**", "",
              "| loss | " + " | ".join(f"bias {b:+g}: KL / KL to c·p / c_{last}" for b in sweep.output_biases)
              + " |", "|---|" + "---|" * len(sweep.output_biases)]
        for loss in losses:
            parts = []
            for b in sweep.output_biases:
                c = cells.get(((lab, b), loss), {})
                parts.append(f"{_fmt(c.get('kl', []))} / {_fmt(c.get('kl_scaled', []))} / "
                             f"{_fmt(c.get(f'c/{last}', []), 3)}")
            L.append(f"| {loss} | " + " | ".join(parts) + " |")
        L.append("")
    _plot_completeness(cells, sweep, img_dir / "completeness.png")
    L += [f"![c of the noise class per loss and starting point]({rel}/completeness.png)", ""]
    return L


def _findings(sweep, data) -> list[str]:
    """Sentences with the study's numbers, generated from the stored runs."""
    L = ["## What the numbers say", ""]
    size = data["size"]
    f = lambda cells, v, loss, m="kl": _mean(cells, v, loss, m)
    losses = list(sweep.losses)
    lo, hi = sweep.sizes[0], sweep.sizes[-1]
    L.append("- KL(true || model) from n = {} to n = {}: ".format(lo, hi) + "; ".join(
        f"{loss} {f(size, lo, loss):.4f} -> {f(size, hi, loss):.4f}" for loss in losses) + ".")
    batch = data["batch"]
    b0, b1 = sweep.batch_sizes[0], sweep.batch_sizes[-1]
    L.append(f"- KL at batch size {b0} vs {b1}: " + "; ".join(
        f"{loss} {f(batch, b0, loss):.4f} vs {f(batch, b1, loss):.4f}" for loss in losses) + ".")
    comp = data["completeness"]
    labs = list(sweep.completeness_tasks)
    if labs:
        lab = labs[0]
        last = make_task(sweep.completeness_tasks[lab]).num_classes - 1
        for loss in [l for l in losses if l.startswith("GenCE")] + ["CE"]:
            if loss not in losses:
                continue
            L.append(f"- {lab}, {loss}: " + "; ".join(
                f"bias {b:+g}: KL {f(comp, (lab, b), loss):.4f}, KL to c·p "
                f"{f(comp, (lab, b), loss, 'kl_scaled'):.4f}, c_{last} "
                f"{f(comp, (lab, b), loss, f'c/{last}'):.3f}" for b in sweep.output_biases) + ".")
    L.append("")
    return L


def _previous_loop(sweep: Sweep, rows: list[dict]) -> list[str]:
    """How far each run moved from the same run of the study's previous, own training loop (when the
    database still holds those rows)."""
    by_key = {r["key"]: r for r in rows}
    pairs = []  # (axis, value, loss, old kl, new kl)
    for axis, entries in sweep.axes().items():
        for value, loss, cfg in entries:
            new, old = by_key.get(cfg.key()), by_key.get(previous_loop_key(cfg))
            if new is not None and old is not None:
                pairs.append((axis, value, loss, old["metrics"]["kl"], new["metrics"]["kl"]))
    if not pairs:
        return []
    diff = np.array([abs(n - o) for *_, o, n in pairs])
    rel = np.array([abs(n - o) / o for *_, o, n in pairs if o > 0])
    L = ["## Change from the study's previous training loop", "",
         "Until this version the study trained with a loop of its own (the same Adam, cosine decay to 0, "
         "ragged batch dropped and seeds, written with raw torch ops); it now runs as TrainConfigs through "
         "`gence.train.fit` and the experiment runner. The database still holds the previous loop's runs "
         f"(`study_version` {PREVIOUS_STUDY_VERSION}), so each run is compared with its previous self "
         f"({len(pairs)} run-axis pairs with both):", "",
         f"- |KL new - KL previous| per run: median {np.median(diff):.2e}, max {diff.max():.2e} nats; "
         f"relative to the previous KL: median {np.median(rel):.2%}, max {rel.max():.2%};"]
    base = [(p[2], p[3], p[4]) for p in pairs if p[0] == "size" and p[1] == sweep.n_train]
    if base:
        parts = []
        for loss in sweep.losses:
            olds = [o for lab, o, _ in base if lab == loss]
            news = [n for lab, _, n in base if lab == loss]
            if olds:
                parts.append(f"{loss} {np.mean(olds):.4f} -> {np.mean(news):.4f}")
        L.append("- mean KL at the base setting, previous -> now: " + "; ".join(parts) + ".")
    L.append("")
    return L
