"""``gence merge``, and the running half of ``gence bench`` (:func:`add_bench_arguments`, :func:`run_bench`).

The command ``gence bench`` itself (run, then write the report) is composed above this package and the
report, in :mod:`gence.bench`: the runner does not know the report.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sqlite3
import sys
from pathlib import Path
from typing import Sequence

from gence.contract import canonical_json, runtime_flags
from gence.data import dataset_files_problem, needs_data_dir, ood_files_problem, ood_needs_data_dir
from gence.experiments.db import ResultsDB, database_problem, done_runs
from gence.experiments.grid import (ExtendGroup, Grid, GridError, RunSpec, TunedSpec, describe_group, extension_state,
                                    load_demo_grid, load_grid, parse_shard, select_blocks, shard, tune_state)
from gence.experiments.ray_backend import RayExecutor
from gence.experiments.runner import auto_workers, describe, run_grid

DEFAULT_DB = "runs/gence.sqlite"


def add_bench_arguments(bench: argparse.ArgumentParser) -> None:
    """The runner's arguments of ``gence bench``."""
    bench.add_argument("config", nargs="?", help="grid TOML file (default: built-in demo grid)")
    bench.add_argument("--db", default=DEFAULT_DB, help=f"results database (default: {DEFAULT_DB})")
    bench.add_argument("--workers", default="auto",
                       help="parallel worker processes, or 'auto': one per CPU core (at most 8) when the runs "
                            "use the CPU, 1 when they may use a GPU (default: auto)")
    bench.add_argument("--threads", type=int, help="torch threads per worker (default: cores // workers)")
    bench.add_argument("--shard", metavar="I/N",
                       help="run only the I-th of N disjoint parts (1-based); runs of blocks with 'tune' run "
                            "once this shard's database holds their tuning runs finished, and sweeps of blocks "
                            "with 'extend' (each decided by one shard) extend once it holds their runs, so merge "
                            "the shard databases into each shard's database and run the shards again, until "
                            "none waits")
    bench.add_argument("--blocks", metavar="PATTERN[,PATTERN...]",
                       help="run (or list) only the runs of the grid blocks these names or shell patterns match, "
                            "e.g. 'lr_*_fashion_mnist_*,main_*_fashion_mnist_*': a long grid in parts, the file "
                            "unchanged (the database stores the whole file, so the report counts every block)")
    bench.add_argument("--retry-failed", action="store_true", help="run again the runs stored as failed")
    bench.add_argument("--reuse", action="append", default=[], metavar="DB",
                       help="another results database (e.g. a pilot's) whose done runs are copied into --db "
                            "instead of being trained, wherever a run of this grid has the same key (the same "
                            "configuration); they are stored under this grid's block and label, with "
                            "extras.copied_from naming DB; repeatable, the first DB with a key gives it")
    bench.add_argument("--data-dir", help="dataset directory for every run (does not change run keys)")
    bench.add_argument("--device", help="device for every run, e.g. cpu or cuda (does not change run keys)")
    bench.add_argument("--list", action="store_true", help="validate the grid, list its runs and their "
                                                           "status, and exit")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.add_argument("--run-fn", metavar="MODULE:FUNCTION",
                       help="run function instead of gence.train.fit: called as f(config: dict) and "
                            "returns (metrics: dict, extras); for your own training code")
    bench.add_argument("--workers-per-gpu", type=int, default=1, metavar="K",
                       help="with runs that may use a GPU: K workers share each visible GPU (each worker sees "
                            "one GPU, round robin; --workers auto then means K per GPU) (default: 1)")
    bench.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local: worker processes on this machine (default); ray: each run is a Ray task, "
                            "on a local Ray cluster or the one --address names (needs Ray: pip install ray)")
    bench.add_argument("--address", help="ray: the cluster to join, e.g. auto (a node of a cluster started with "
                                         "`ray start`) or ray://HOST:10001 (default: start a local cluster)")
    bench.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N",
                       help="ray: CPUs each run reserves; also its torch threads (default: 1)")
    bench.add_argument("--gpus-per-run", type=float, default=0.0, metavar="F",
                       help="ray: GPUs each run reserves, fractions pack runs on one GPU, e.g. 0.25 (default: 0)")
    bench.add_argument("--max-in-flight", type=int, metavar="N",
                       help="ray: runs submitted at once (default: as many as the cluster's CPUs and GPUs hold)")
    bench.add_argument("--checkpoint-dir", metavar="DIR",
                       help="ray: a directory every node sees where runs save their state, so a run cut short "
                            "resumes (default: none, such a run restarts)")


def register(subparsers) -> None:
    merge = subparsers.add_parser(
        "merge", help="combine results databases (e.g. from shards) without duplicates",
        description="Copy every finished or failed run of the INPUT databases into OUTPUT (created if "
                    "needed). A run present in several keeps one row: done beats failed, and the first "
                    "done row is kept.")
    merge.add_argument("output", help="database to merge into")
    merge.add_argument("inputs", nargs="+", help="databases to merge from")
    merge.set_defaults(func=merge_main)


def _load(args):
    return load_demo_grid() if args.config is None else load_grid(args.config)


def data_dir_problem(runs: Sequence[RunSpec], tuned: Sequence[TunedSpec], extensions: Sequence[ExtendGroup],
                     db_path: str, *, data_dir: str | None, retry_failed: bool, check_files: bool = True) -> str | None:
    """Without a data directory (neither ``data_dir``, i.e. ``--data-dir``, nor ``$GENCE_DATA``): the first run
    this invocation may start whose dataset or OOD set reads files from one (:func:`gence.data.needs_data_dir`,
    :func:`gence.data.ood_needs_data_dir`) and whose grid entry names none, as a one-line usage error; else
    None. Runs stored done, or failed without ``retry_failed``, are skipped by the runner and need none.
    A user's dataset (``folder``, ``arrays``, ``csv``) and ``folder:``/``arrays:`` OOD sets name their files
    in their params and are left to their own error. With a data directory and ``check_files``: the first
    dataset or OOD set of those runs whose files are not where its loader looks (:func:`files_problem`)."""
    rows: dict = {}
    if Path(db_path).is_file() and database_problem(db_path) is None:
        keys = ({s.key for s in runs} | {k for t in tuned for k in t.tuning_keys}
                | {s.key for t in tuned for _, s in t.candidates} | {k for g in extensions for k in g.keys})
        with ResultsDB(db_path) as db:
            rows = db.states(keys)
    skipped = ("done",) if retry_failed else ("done", "failed")

    def will_run(key: str) -> bool:
        return rows.get(key, ("todo", None))[0] not in skipped

    pending: list[tuple[dict, str]] = [(s.config, s.grid) for s in runs if will_run(s.key)]
    for t in tuned:
        st = tune_state(t, rows)
        if st.kind == "wait" or (st.kind == "ready" and will_run(st.spec.key)):
            pending.append((t.config, t.grid))
    for g in extensions:
        st = extension_state(g, rows)
        if st.kind == "wait" or (retry_failed and any(rows.get(s.key, ("todo",))[0] == "failed" for _, s in st.runs)):
            pending.append((g.config, g.grid))
    for config, block in pending:
        if config.get("data_dir") is not None or data_dir is not None or os.environ.get("GENCE_DATA"):
            continue
        dataset = config["dataset"]
        if needs_data_dir(dataset):
            what = f"dataset {dataset!r}"
        else:
            ood = next((o for o in config.get("ood") or () if ood_needs_data_dir(o)), None)
            if ood is None:
                continue
            what = f"OOD set {ood!r} of dataset {dataset!r}"
        return (f"--data-dir: {what} (grid block {block!r}) needs a data directory; pass --data-dir DIR or set "
                f"GENCE_DATA")
    return files_problem(pending, data_dir) if check_files else None


def files_problem(pending: Sequence[tuple[dict, str]], data_dir: str | None) -> str | None:
    """The first (config, block) of ``pending`` whose dataset or OOD set would not find its files (searched as
    its loader searches, nothing decoded: :func:`gence.data.dataset_files_problem`,
    :func:`gence.data.ood_files_problem`), as a one-line usage error naming where the directory came from
    (a run's own ``data_dir``, then ``data_dir``, i.e. ``--data-dir``, then ``$GENCE_DATA``); else None."""
    seen: set[str] = set()
    for config, block in pending:
        own, env = config.get("data_dir"), os.environ.get("GENCE_DATA")
        head = (f"grid block {block!r} (data_dir {own})" if own is not None else
                f"--data-dir {data_dir}: grid block {block!r}" if data_dir is not None else
                f"GENCE_DATA={env}: grid block {block!r}" if env else f"grid block {block!r}")
        directory = own if own is not None else data_dir
        dataset, params = config["dataset"], config.get("dataset_params") or {}
        checks = [((dataset, canonical_json(params), directory), "",
                   lambda: dataset_files_problem(dataset, directory, **params))]
        checks += [((o, dataset, directory), f", OOD set {o!r} of dataset {dataset!r}",
                    lambda o=o: ood_files_problem(o, dataset, directory)) for o in config.get("ood") or ()]
        for ident, what, check in checks:
            tag = canonical_json(ident)
            if tag in seen:
                continue
            seen.add(tag)
            problem = check()
            if problem is not None:
                return runtime_flags(f"{head}{what}: {problem}")
    return None


@dataclasses.dataclass
class BenchOutcome:
    """What :func:`run_bench` did: the exit code, the grid it ran (None when it could not load it), and
    whether every run of the whole grid was attempted here (not a listing, not a shard): then a report is due."""

    code: int
    grid: Grid | None = None
    complete: bool = False


def run_bench(args: argparse.Namespace) -> BenchOutcome:
    """Run (or, with ``--list``, list) the grid of ``args`` (the arguments of :func:`add_bench_arguments`)."""
    try:
        grid = _load(args)
        if args.blocks is not None:
            grid = select_blocks(grid, args.blocks.split(","))
        shard_spec = parse_shard(args.shard) if args.shard else None
    except (GridError, ValueError) as exc:
        print(f"gence bench: {exc}", file=sys.stderr)
        return BenchOutcome(2)
    runs = shard(grid.runs, *shard_spec) if shard_spec else grid.runs
    # Tuned runs are sharded among themselves; a shard runs its tuned runs once its own database holds
    # every tuning run finished (merge the shards' databases into each shard's, then run it again).
    tuned = shard(grid.tuned, *shard_spec) if shard_spec else grid.tuned
    # Extending sweeps likewise: each is decided (and its added runs run) by one shard, from its database.
    extensions = shard(grid.extensions, *shard_spec) if shard_spec else grid.extensions
    runtime = {k: v for k, v in (("data_dir", args.data_dir), ("device", args.device)) if v is not None}
    if args.workers == "auto":
        workers = auto_workers(list(runs) + list(tuned), runtime, workers_per_gpu=max(1, args.workers_per_gpu))
    else:
        try:
            workers = int(args.workers)
            if workers < 1:
                raise ValueError
        except ValueError:
            print(f"gence bench: --workers {args.workers!r}: expected an integer >= 1 or 'auto'", file=sys.stderr)
            return BenchOutcome(2, grid)
    if args.threads is not None and args.threads < 1:
        print(f"gence bench: --threads {args.threads}: expected an integer >= 1", file=sys.stderr)
        return BenchOutcome(2, grid)
    if args.workers_per_gpu < 1:
        print(f"gence bench: --workers-per-gpu {args.workers_per_gpu}: expected an integer >= 1", file=sys.stderr)
        return BenchOutcome(2, grid)
    # Before anything is claimed or stored: a run that would fail for want of its files would be stored
    # failed, and the next call (with --data-dir) would skip it unless --retry-failed. With Ray the
    # directory is the workers' (it may not exist here), so only a local run checks that it exists.
    for path in args.reuse:
        problem = database_problem(path)
        if problem is None and Path(path).resolve() == Path(args.db).resolve():
            problem = "is the --db database itself"
        if problem is not None:
            print(f"gence bench: --reuse {path}: {problem}; expected another results database", file=sys.stderr)
            return BenchOutcome(2, grid)
    if args.data_dir is not None and args.backend == "local" and not Path(args.data_dir).expanduser().exists():
        print(f"gence bench: --data-dir {args.data_dir}: no such file or directory; expected the folder "
              f"that holds the datasets (or one dataset's archive)", file=sys.stderr)
        return BenchOutcome(2, grid)
    problem = data_dir_problem(runs, tuned, extensions, args.db, data_dir=args.data_dir,
                               retry_failed=args.retry_failed, check_files=args.backend == "local")
    if problem is not None and not args.list:
        print(f"gence bench: {problem}", file=sys.stderr)
        return BenchOutcome(2, grid)
    if problem is not None:
        print(f"gence bench: warning: {problem}", file=sys.stderr)
    executor = None
    if args.backend == "ray" and not args.list:
        if args.workers != "auto" or args.workers_per_gpu != 1:
            print("gence bench: --workers and --workers-per-gpu are for --backend local; with --backend ray "
                  "use --cpus-per-run, --gpus-per-run and --max-in-flight", file=sys.stderr)
            return BenchOutcome(2, grid)
        try:
            executor = RayExecutor(address=args.address, cpus_per_run=args.cpus_per_run,
                                   gpus_per_run=args.gpus_per_run, max_in_flight=args.max_in_flight,
                                   checkpoint_dir=args.checkpoint_dir, threads=args.threads)
        except ValueError as exc:
            print(f"gence bench: {exc}", file=sys.stderr)
            return BenchOutcome(2, grid)
        except ImportError as exc:
            print(f"gence bench: --backend ray: {exc}", file=sys.stderr)
            return BenchOutcome(2, grid)
    elif args.backend == "local":
        given = [f"--{n.replace('_', '-')}" for n, default in (("address", None), ("cpus_per_run", 1.0),
                                                              ("gpus_per_run", 0.0), ("max_in_flight", None),
                                                              ("checkpoint_dir", None))
                 if getattr(args, n) != default]
        if given:
            print(f"gence bench: {', '.join(given)}: only with --backend ray", file=sys.stderr)
            return BenchOutcome(2, grid)
    if args.list:
        status, rows = {}, {}
        if Path(args.db).exists():
            with ResultsDB(args.db) as db:
                status = db.statuses()
                rows = db.states({k for t in tuned for k in t.tuning_keys} | {k for g in extensions for k in g.keys})
        reusable = {key for path in args.reuse for key in done_runs(path)}
        for key in reusable:
            if status.get(key) != "done":
                status[key] = "reuse"     # copied from a --reuse database when the grid runs
        for spec in runs:
            print(f"{status.get(spec.key, 'todo'):8s} {spec.key[:12]} {describe(spec)}")
        counts = {"wait": 0, "failed": 0, "added": 0, "undecided": 0, "edge": 0}
        for g in extensions:
            st = extension_state(g, rows)
            field = g.extend.field
            swept = {s.key for _, s in g.swept}
            for value, spec in st.runs:
                if spec.key not in swept:
                    counts["added"] += 1
                    print(f"{status.get(spec.key, 'todo'):8s} {spec.key[:12]} {describe(spec)} "
                          f"(extension {field}={value!r} of {g.grid})")
            tag = {"undecided": "extend?", "cannot decide": "extend!", "at edge": "AT EDGE"}.get(st.outcome, st.outcome)
            counts["undecided"] += st.kind == "wait"
            counts["edge"] += st.at_edge
            print(f"{tag:8s} {'-' * 12} {describe_group(g.config, g.label)} [{g.grid}]: {st.message}")
        for t in tuned:
            st = tune_state(t, rows)
            field = t.tune.field
            if st.kind == "ready":
                print(f"{status.get(st.spec.key, 'todo'):8s} {st.spec.key[:12]} {describe(t)} "
                      f"({field}={st.value!r} tuned on {', '.join(t.tune.sources)})")
            elif st.kind == "wait":
                counts["wait"] += 1
                print(f"{'waiting':8s} {'-' * 12} {describe(t)} (waiting for tuning of {field} on "
                      f"{', '.join(t.tune.sources)}: {st.finished}/{st.total} tuning runs finished"
                      + (f"; {st.message}" if st.message else "") + ")")
            else:
                counts["failed"] += 1
                print(f"{'untuned':8s} {'-' * 12} {describe(t)} ({st.message})")
        total = len(grid.runs) + len(grid.tuned)
        extra = []
        if counts["wait"]:
            extra.append(f"{counts['wait']} waiting for tuning")
        if counts["failed"]:
            extra.append(f"{counts['failed']} failed to tune")
        if counts["added"]:
            extra.append(f"{counts['added']} added by extension")
        if counts["undecided"]:
            extra.append(f"{counts['undecided']} sweep(s) waiting to decide extension")
        if counts["edge"]:
            extra.append(f"{counts['edge']} sweep(s) at an edge after max_steps")
        print(f"{len(runs) + len(tuned) + counts['added']} run(s)" + (f" ({', '.join(extra)})" if extra else "")
              + (f" (shard {args.shard} of {total})" if shard_spec else ""))
        return BenchOutcome(0, grid)
    where = grid.path or "built-in demo grid"
    print(f"gence bench: {len(runs) + len(tuned)} run(s)"
          + (f" ({len(tuned)} with a tuned {', '.join(sorted({t.tune.field for t in tuned}))})" if tuned else "")
          + (f", {len(extensions)} sweep(s) that may extend" if extensions else "")
          + f" from {where}"
          + (f", shard {args.shard}" if shard_spec else "")
          + (f", Ray tasks ({args.address or 'local cluster'}, {args.cpus_per_run:g} CPU / {args.gpus_per_run:g} GPU "
             f"each)" if executor else f", {workers} worker(s)") + f" -> {args.db}", file=sys.stderr)
    try:
        summary = run_grid(runs, args.db, workers=workers, threads=args.threads, retry_failed=args.retry_failed,
                           progress=not args.quiet, runtime=runtime, run_fn=args.run_fn,
                           grid_text=(grid.name, grid.path, grid.text), tuned=tuned, extensions=extensions,
                           workers_per_gpu=args.workers_per_gpu, executor=executor, show_error=runtime_flags,
                           order=grid.blocks, reuse=args.reuse)
    except KeyboardInterrupt:
        print("gence bench: interrupted; finished runs are stored, run the same command to resume",
              file=sys.stderr)
        return BenchOutcome(130, grid)
    print(f"gence bench: {summary.line()}", file=sys.stderr)
    for what, message in summary.untunable:
        print(f"gence bench: not run (failed to tune): {what}: {message}", file=sys.stderr)
    for what, st in summary.extensions:
        if st.added or st.at_edge or st.kind == "failed":
            print(f"gence bench: sweep {what}: {st.message}", file=sys.stderr)
    failed = bool(summary.failed or summary.untunable)
    if shard_spec:
        print("gence bench: shard done; `gence merge` the shard databases, then `gence report`", file=sys.stderr)
        if summary.waiting:
            print(f"gence bench: {summary.waiting} tuned run(s) of this shard wait for tuning runs of other "
                  f"shards: `gence merge` every shard database into this one ({args.db}) and run this "
                  f"shard again", file=sys.stderr)
        if summary.undecided:
            print(f"gence bench: {summary.undecided} extending sweep(s) of this shard wait for runs of other "
                  f"shards: `gence merge` every shard database into this one ({args.db}) and run this "
                  f"shard again", file=sys.stderr)
    return BenchOutcome(1 if failed else 0, grid, complete=not shard_spec)


def merge_main(args: argparse.Namespace) -> int:
    """Check every database first (inputs readable, output a results database or absent), so a mistake
    creates nothing and changes nothing; an output created here is removed again when a merge fails."""
    problems = [f"{p}: {problem}" for p in args.inputs if (problem := database_problem(p)) is not None]
    output = Path(args.output)
    if output.exists() and output.stat().st_size and (problem := database_problem(output)) is not None:
        problems.insert(0, f"{output} (OUTPUT): {problem}")
    if any(Path(p).resolve() == output.resolve() for p in args.inputs if Path(p).exists()):
        problems.append(f"{output}: given as OUTPUT and as an INPUT; cannot merge a database into itself")
    if problems:
        print("gence merge: " + "; ".join(problems), file=sys.stderr)
        return 2
    created = not output.exists()
    try:
        with ResultsDB(output) as db:
            for path in args.inputs:
                stats = db.merge_from(path)
                print(f"{path}: " + ", ".join(f"{v} {k}" for k, v in stats.items()))
                if stats["conflicts"]:
                    print(f"gence merge: warning: {stats['conflicts']} run(s) in {path} were already stored "
                          f"with different metrics; the first stored row was kept", file=sys.stderr)
            counts = db.counts()
    except (ValueError, sqlite3.DatabaseError) as exc:
        if created:
            for leftover in (output, Path(f"{output}-wal"), Path(f"{output}-shm")):
                leftover.unlink(missing_ok=True)
        print(f"gence merge: {exc}" + ("" if created else f"; runs merged before it stay in {output}"),
              file=sys.stderr)
        return 1
    print(f"{args.output}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0
