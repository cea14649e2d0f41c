"""The compute a grid will take on this machine, from measured costs: the study's budget line.

    python scripts/study_budget.py configs/study.toml --pilot results/pilot.sqlite [--workers 2] \
        [--study results/study.sqlite] > results/study/budget.txt

Per run: its SGD steps (epochs x ceil(n_train / batch)) times the seconds per step of its (dataset, model,
amp). Seconds per step come from the pilot's stored runs of the same dataset and model (wall time, or the
training seconds of every attempt for a resumed run, against steps; this includes every evaluation the run
makes, at the pilot's eval_every, and the slowdown of two runs sharing the machine). A (dataset, model) the pilot did not train is scaled from the pilot's model
of that dataset by the ratio of training-step times measured here, in this process, on random batches of
the dataset's shape (interleaved repeats, one thread, the precision ``amp`` gives a run on this CPU:
bf16 autocast, or float32 where oneDNN has no bf16 kernels, as the loop does), so both are measured
under the same load. Sweeps with ``extend`` are counted as planned, plus (second total) every rung the
runner may add, one way per group (an lr can sit at one edge only). Tuned runs count once each. Blocks are
listed in the order the runner starts them in (a tuned block's runs once its sweep is done): file order, or
with ``--phases P1 P2 ...`` (the --blocks pattern lists a loop runs in turn, as scripts/study_background.sh's
STUDY_PHASES) each phase's blocks in file order, phase after phase.
With ``--override '{ match = {...}, epochs = N }'`` (repeatable; TOML inline tables): the cost of a variant of
the grid, as if each were an ``[[override]]`` entry added at the end of the file (so it wins over the file's
own), e.g. CIFAR-10 50/class at twice the budget for ResNet-20 only:
``--override '{ match = { dataset = "cifar10", regime = "balanced:50", model = "resnet20" }, epochs = 4000 }'``.
The command line, overrides included, is the output's first line.
With ``--study DB`` (the study's own database as it grows): seconds per step from the study's runs trained
so far (copied runs left out: their time is the pilot's) replace the pilot's where the study has them, and
each block's hours still to go count the runs not yet done there.
With ``--this-cpu``: only runs stored on a CPU of this machine's kind (the capability torch's kernels use,
``AVX2``, ``AVX512``..., as the runs' hardware names it) count, as one model name covers CPUs whose step
times differ severalfold (ResNet-20 ~3x on AVX2 against AVX-512 with bf16); a (dataset, model, amp) without
such runs is scaled from one that has them, of the same dataset if any, else of another, by the step-time
ratio measured here. Without it, step times pool every CPU the runs used.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sqlite3
import statistics
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path

import torch

from gence import models
from gence.contract import parse_cpu_hardware
from gence.data.regimes import parse_regime
from gence.experiments.grid import Grid, GridError, parse_grid, select_blocks
from gence.report.tables import compute_seconds
from gence.train.loop import amp_dtype, hardware_string, precision

SHAPES = {"cifar10": (3, 32), "fashion_mnist": (1, 28), "mnist": (1, 28)}   # (channels, side)


def model_ident(config: dict) -> str:
    params = config.get("model_params") or {}
    return config["model"] + "".join(f"-{k}{v}" for k, v in sorted(params.items()))


def steps_of(config: dict, num_classes: int = 10) -> int:
    n = sum(parse_regime(config["regime"]).counts(num_classes))
    per_epoch = n // config["batch_size"] if config.get("drop_last") else math.ceil(n / config["batch_size"])
    return config.get("steps") or config["epochs"] * per_epoch


def cpu_kind(hardware: str | None) -> str | None:
    """The CPU capability a run's stored hardware names (``AVX2``, ``AVX512``...), None when it names none (a
    GPU, or a CPU stored before the capability was recorded)."""
    cpu = parse_cpu_hardware(hardware)
    return cpu and cpu["capability"]


def measured_costs(db: str, kind: str | None = None) -> dict[tuple[str, str, bool], tuple[float, float, int]]:
    """(dataset, model, amp) -> (0, b, n): b the median seconds per step of a database's n finished runs
    trained there (copied runs left out), only those on a CPU of capability ``kind`` when given. (A fit
    a + b * steps over budgets is not used: how busy the machine was moves a run's time more than its fixed
    evaluation cost does.)"""
    per = defaultdict(list)
    rows = sqlite3.connect(db).execute("select config, wall_seconds, extras, hardware from runs where status='done'")
    for config, wall, extras, hardware in rows:
        config = json.loads(config)
        extras = json.loads(extras) if extras else {}
        if not isinstance(extras, dict) or "copied_from" in extras:
            continue
        if kind is not None and cpu_kind(hardware) != kind:
            continue
        seconds = compute_seconds(wall, extras)   # a resumed run: the training time of every attempt
        per[(config["dataset"], model_ident(config), bool(config.get("amp")))].append(seconds / steps_of(config))
    return {k: (0.0, statistics.median(v), len(v)) for k, v in per.items()}


def done_per_block(db: str) -> dict[str, int]:
    """Block -> number of its runs stored done in a database."""
    con = sqlite3.connect(db)
    return dict(con.execute("select grid, count(*) from runs where status='done' group by grid").fetchall())


def step_seconds(config: dict, repeats: int = 3, steps: int = 10) -> list[float]:
    """Seconds per training step (forward, backward, SGD) of ``config``'s model on random batches."""
    c, side = SHAPES[config["dataset"]]
    torch.manual_seed(0)
    model = models.build(config["model"], c, 10, image_size=side, **(config.get("model_params") or {}))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(config["batch_size"], c, side, side).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (config["batch_size"],))
    dtype = amp_dtype(torch.device("cpu")) if config.get("amp") else None   # None: float32, as the loop runs it
    out = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if r:  # the first repeat warms up
            out.append((time.perf_counter() - start) / steps)
    return out


def toml_value(v) -> str:
    """``v`` (a value parsed from TOML: string, number, bool, list or table) written back as TOML."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)   # str (a TOML basic string), int, float, bool


def with_overrides(text: str, overrides: list[str]) -> str:
    """Grid TOML ``text`` with each of ``overrides`` (TOML inline tables) appended as an ``[[override]]``."""
    out = [text]
    for o in overrides:
        try:
            table = tomllib.loads(f"o = {o}")["o"]
        except tomllib.TOMLDecodeError as exc:
            raise SystemExit(f"study_budget: --override {o!r}: not a TOML inline table ({exc}); expected "
                             "something like '{ match = { dataset = \"cifar10\" }, epochs = 4000 }'") from None
        if not isinstance(table, dict) or not table:
            raise SystemExit(f"study_budget: --override {o!r}: expected a non-empty TOML inline table such as "
                             "'{ match = { dataset = \"cifar10\" }, epochs = 4000 }'")
        out.append("\n[[override]]\n" + "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items()))
    return "".join(out)


def phase_order(grid: Grid, phases: list[str]) -> list[str]:
    """The grid's blocks in the order a runner over ``phases`` (comma-separated --blocks patterns, run in turn)
    starts them: each phase's blocks in file order, leaving out those an earlier phase ran; blocks no phase
    matches (which such a runner never runs) last."""
    order: list[str] = []
    for phase in phases:
        order += [b for b in select_blocks(grid, phase.split(",")).blocks if b not in order]
    return order + [b for b in grid.blocks if b not in order]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--pilot", default="results/pilot.sqlite")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--study", default=None, help="the study's database: its measured step times, runs done")
    p.add_argument("--phases", nargs="+", metavar="PATTERNS", default=None,
                   help="the --blocks pattern lists the runner runs in turn (scripts/study_background.sh's "
                        "STUDY_PHASES): blocks listed in that order")
    p.add_argument("--this-cpu", action="store_true",
                   help="step times only from runs on CPUs of this machine's kind (its capability, e.g. AVX2); "
                        "others scaled by ratios measured here")
    p.add_argument("--override", action="append", default=[], metavar="TABLE",
                   help="a TOML inline table added as an [[override]] at the end of the grid (repeatable): "
                        "the cost of a variant, e.g. '{ match = { dataset = \"cifar10\" }, epochs = 4000 }'")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        grid = parse_grid(with_overrides(Path(args.config).read_text(), args.override), path=args.config)
    except OSError as exc:
        raise SystemExit(f"study_budget: grid file {args.config}: {exc.strerror}") from None
    except GridError as exc:
        raise SystemExit(f"study_budget: {exc}") from None
    kind = torch.backends.cpu.get_cpu_capability() if args.this_cpu else None
    costs, runs = {}, {}   # (dataset, model, amp) -> (a, b, where from), and the runs b is the median of
    for source, db in (("pilot", args.pilot), ("study", args.study)):   # the study's replace the pilot's
        for k, (a, b, n) in (measured_costs(db, kind) if db else {}).items():
            costs[k], runs[k] = (a, b, f"{source}, {n} runs"), n
    done = done_per_block(args.study) if args.study else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"$ python scripts/study_budget.py {shlex.join(argv)}   (commit {commit or 'unknown'})")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; seconds per step from {args.pilot}"
          + (f" and {args.study}" if args.study else "")
          + (f", runs on {kind} CPUs only (this machine's kind: {hardware_string('cpu')})" if kind else
             ", runs on every CPU they used"))
    if kind and not costs:
        raise SystemExit(f"study_budget: --this-cpu: no done run in {args.pilot}"
                         + (f" or {args.study}" if args.study else "") + f" was stored on a {kind} CPU; run "
                         "without --this-cpu (step times of every CPU) or once some have finished here")

    configs = [s.config for s in grid.runs] + [t.config for t in grid.tuned]
    ladder = [g for g in grid.extensions]
    # (dataset, model, amp) of every run; pilot cost, else scaled from the pilot's model of that dataset
    needed = sorted({(c["dataset"], model_ident(c), bool(c.get("amp"))) for c in configs})
    example = {(c["dataset"], model_ident(c), bool(c.get("amp"))): c for c in configs}
    per_step = {}
    for key in needed:
        if key in costs:
            per_step[key] = costs[key]
            continue
        refs = ([k for k in costs if k[0] == key[0] and k[2] == key[2]]
                or ([k for k in costs if k[2] == key[2]] if kind else []))   # --this-cpu: another dataset's
        if not refs:
            raise SystemExit(f"study_budget: no pilot run of {key[0]} (amp={key[2]}) to scale {key[1]} from")
        ref = max(refs, key=lambda k: (k[0] == key[0], runs[k]))
        ref_config = dict(example[key], dataset=ref[0], model=ref[1].split("-")[0], model_params={})
        a, b = [], []
        for _ in range(3):  # interleaved: both under the same load
            a += step_seconds(example[key])
            b += step_seconds(ref_config)
        ratio = statistics.median(a) / statistics.median(b)
        per_step[key] = (costs[ref][0] * ratio, costs[ref][1] * ratio,
                         f"{ratio:.2f} x {ref[0]} {ref[1]}'s ({costs[ref][2]}), ratio measured here in "
                         f"{precision(torch.device('cpu'), key[2])}")
    print("\nseconds a run of s steps takes (dataset, model, amp): a + b * s")
    for key, (a, b, how) in per_step.items():
        print(f"  {key[0]:14s} {key[1]:16s} amp={key[2]!s:5s} a {a:6.0f} s, b {b:.3f} s  ({how})")

    def seconds(c):
        a, b, _ = per_step[(c["dataset"], model_ident(c), bool(c.get("amp")))]
        return a + b * steps_of(c)

    by_block = defaultdict(lambda: [0, 0.0])
    for c, block in [(s.config, s.grid) for s in grid.runs] + [(t.config, t.grid) for t in grid.tuned]:
        by_block[block][0] += 1
        by_block[block][1] += seconds(c)
    extra = 0.0
    for g in ladder:
        extra += max(sum(seconds(s.config) for s in specs) for specs in
                     [[s for _, ss in g.down for s in ss], [s for _, ss in g.up for s in ss]])
    order = phase_order(grid, args.phases) if args.phases else list(grid.blocks)
    print("\nin the order the runner starts them ("
          + ("phases " + " then ".join(f"'{ph}'" for ph in args.phases) + ", each in file order" if args.phases
             else "file order") + f"), with the wall hours so far at {args.workers} workers"
          + (f"; done: runs stored done in {args.study}, left: the worker-hours of the rest" if args.study else "")
          + ":")
    print(f"{'block':36s} {'runs':>5s} {'worker-h':>9s} {'wall h so far':>14s}"
          + (f" {'done':>5s} {'left':>6s}" if args.study else ""))
    total = left = 0.0
    for name in order:
        n, sec = by_block.get(name, (0, 0.0))
        total += sec
        k = min(done.get(name, 0), n)
        left += sec * (n - k) / n if n else 0.0
        print(f"{name:36s} {n:5d} {sec / 3600:9.1f} {total / 3600 / args.workers:14.1f}"
              + (f" {k:5d} {sec * (n - k) / n / 3600 if n else 0.0:6.1f}" if args.study else ""))
    n_runs = sum(n for n, _ in by_block.values())
    print(f"\n{n_runs} runs as planned: {total / 3600:.1f} worker-hours = {total / 3600 / args.workers:.1f} h "
          f"with {args.workers} workers")
    if args.study:
        print(f"still to run: {n_runs - sum(min(done.get(b, 0), by_block[b][0]) for b in by_block)} runs, "
              f"{left / 3600:.1f} worker-hours = {left / 3600 / args.workers:.1f} h with {args.workers} workers "
              f"(the study's step times include whatever ran beside it)")
    print(f"every possible extension rung added: +{extra / 3600:.1f} worker-hours "
          f"(at most {(total + extra) / 3600 / args.workers:.1f} h with {args.workers} workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
