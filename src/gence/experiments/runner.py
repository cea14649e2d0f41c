"""Run the runs of a grid into a results database: resumable, kill-safe, parallel, shardable.

- A run whose key is ``done`` in the database is skipped; a ``failed`` one only with ``retry_failed``.
- Each run is claimed in its own short transaction before it starts and stored in one commit when it
  ends, so SIGKILL at any moment loses at most the run in flight, and that run's stale claim is taken
  over by the next invocation (see :mod:`gence.experiments.db`).
- ``workers > 1`` starts that many processes (spawn), all walking the same ordered list and claiming runs
  one at a time: whoever is free takes the next unclaimed run, so no run is done twice and no worker
  idles while runs remain. Each worker gets ``cpu cores // workers`` torch threads (or ``threads``).
  :func:`auto_workers` picks one worker per core for CPU runs: small models gain little from a second
  thread, and on a shared machine oversubscribed threads can make a run ten times slower.
- Sharding (``grid.shard``) picks a deterministic, disjoint part of the list before any of this.

The run function is injectable: ``run_fn(config: dict) -> (metrics: dict, extras)``, given as a callable
or as ``"module:function"`` (it must be importable by name when ``workers > 1``). The default,
:func:`train_run`, calls :func:`gence.train.fit`.
"""
from __future__ import annotations

import dataclasses
import importlib
import multiprocessing as mp
import os
import queue as queue_module
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from gence.experiments.db import ResultsDB, hardware_string, software_versions
from gence.experiments.grid import RunSpec

RunFunction = Callable[[dict], "tuple[dict, Any]"]
DEFAULT_RUN_FN = "gence.experiments.runner:train_run"

# Fields that may be overridden at run time without changing a run's key (see db.KEY_EXCLUDED_FIELDS).
RUNTIME_FIELDS = ("data_dir", "device")


def train_run(config: dict) -> tuple[dict, Any]:
    """The default run function: one training run of :mod:`gence.train`."""
    from gence.train import TrainConfig, fit

    result = fit(TrainConfig.from_dict(config), progress=False)
    return dict(result.metrics), result.extras


def resolve_run_fn(run_fn: RunFunction | str | None) -> RunFunction:
    if run_fn is None:
        run_fn = DEFAULT_RUN_FN
    if callable(run_fn):
        return run_fn
    module, _, name = str(run_fn).partition(":")
    if not name:
        raise ValueError(f"run_fn {run_fn!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass
class RunnerSummary:
    planned: int = 0            # runs in the (sharded) list
    already_done: int = 0       # skipped: done before this invocation
    skipped_failed: int = 0     # skipped: failed before, retry_failed not set
    done: int = 0               # finished by this invocation
    failed: int = 0             # failed in this invocation
    held_elsewhere: int = 0     # claimed by another live process
    seconds: float = 0.0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (label/config, last error line)

    def line(self) -> str:
        parts = [f"{self.done} run(s) finished", f"{self.failed} failed"]
        if self.already_done:
            parts.append(f"{self.already_done} already done")
        if self.skipped_failed:
            parts.append(f"{self.skipped_failed} failed earlier and skipped (--retry-failed retries them)")
        if self.held_elsewhere:
            parts.append(f"{self.held_elsewhere} running in another process")
        return ", ".join(parts) + f" in {self.seconds:.1f} s"


def describe(spec: RunSpec) -> str:
    c = spec.config
    return f"{c.get('dataset')} {c.get('regime')} {c.get('model')} {spec.label} seed={c.get('seed')}"


class _Interrupted(KeyboardInterrupt):
    pass


def _raise_interrupt(signum, frame):  # SIGTERM -> release the claim like Ctrl-C does
    raise _Interrupted(f"signal {signum}")


def _execute(db: ResultsDB, spec: RunSpec, run_fn: RunFunction, runtime: dict, retry_failed: bool,
             hardware: dict, versions: dict) -> tuple[str, str | None, float]:
    """Claim and run one spec. Returns (outcome, error line, seconds); outcome in done/failed/held."""
    if not db.claim(spec.key, spec.config, label=spec.label, grid=spec.grid, retry_failed=retry_failed):
        return "held", None, 0.0
    config = {**spec.config, **runtime}
    device = config.get("device")
    if device not in hardware:
        hardware[device] = hardware_string(device)
    start = time.perf_counter()
    try:
        metrics, extras = run_fn(config)
    except KeyboardInterrupt:
        db.release(spec.key)
        raise
    except Exception as exc:  # a failed run is a result too: store why, go on with the next
        seconds = time.perf_counter() - start
        db.fail(spec.key, error=traceback.format_exc(), wall_seconds=seconds, hardware=hardware[device],
                versions=versions)
        return "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300], seconds
    seconds = time.perf_counter() - start
    db.finish(spec.key, metrics={k: float(v) for k, v in metrics.items()}, extras=extras,
              wall_seconds=seconds, hardware=hardware[device], versions=versions)
    return "done", None, seconds


def _worker(db_path: str, specs: list[RunSpec], run_fn, runtime: dict, retry_failed: bool, lease: float,
            threads: int | None, events, parent_pid: int) -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which sends SIGTERM
    _die_with_parent()
    if threads:
        import torch

        torch.set_num_threads(threads)
    fn = resolve_run_fn(run_fn)
    versions = software_versions()
    hardware: dict = {}
    db = ResultsDB(db_path, lease_seconds=lease)
    try:
        for spec in specs:
            if os.getppid() != parent_pid:  # the parent was killed: stop rather than run on as an orphan
                break
            outcome, error, seconds = _execute(db, spec, fn, runtime, retry_failed, hardware, versions)
            events.put((outcome, spec.key, error, seconds))
    except KeyboardInterrupt:
        pass
    finally:
        db.close()
        events.put(("exit", None, None, 0.0))


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies (even by SIGKILL), so no orphan keeps running runs."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(specs: Sequence[RunSpec], runtime: dict | None = None, *, max_workers: int = 8) -> int:
    """One worker per usable core (at most ``max_workers``, each dataset is loaded once per worker) when
    every run is on the CPU; one worker when any run may use a GPU, which the workers would share."""
    runtime = runtime or {}
    devices = {str(runtime.get("device", s.config.get("device", "auto"))) for s in specs}
    if devices - {"cpu"}:
        import torch

        if not (devices <= {"cpu", "auto"} and not torch.cuda.is_available()):
            return 1
    return max(1, min(usable_cores(), max_workers, len(specs)))


def run_grid(specs: Sequence[RunSpec], db_path: str | os.PathLike, *, workers: int = 1,
             threads: int | None = None, retry_failed: bool = False, run_fn: RunFunction | str | None = None, progress: bool = True,
             runtime: dict | None = None, lease_seconds: float = 600.0,
             grid_text: tuple[str, str | None, str] | None = None) -> RunnerSummary:
    """Run every spec not yet done in ``db_path``; see the module docstring for the guarantees.

    ``threads``: torch threads per run (default: unchanged with one worker, cores // workers otherwise).
    ``runtime``: settings applied at run time that do not change a run's key (``data_dir``, ``device``).
    ``grid_text``: (name, path, TOML text) stored in the database for the report header."""
    runtime = dict(runtime or {})
    for key in runtime:
        if key not in RUNTIME_FIELDS:
            raise ValueError(f"runtime setting {key!r}: only {', '.join(RUNTIME_FIELDS)} can change without "
                             f"changing which run it is")
    if workers < 1:
        raise ValueError(f"workers = {workers}: expected >= 1")
    specs = list(specs)
    summary = RunnerSummary(planned=len(specs))
    start = time.perf_counter()
    db = ResultsDB(db_path, lease_seconds=lease_seconds)
    try:
        if grid_text is not None:
            db.add_grid(*grid_text)
        status = db.statuses([s.key for s in specs])
        pending = []
        for spec in specs:
            st = status.get(spec.key)
            if st == "done":
                summary.already_done += 1
            elif st == "failed" and not retry_failed:
                summary.skipped_failed += 1
            else:
                pending.append(spec)
        by_key = {s.key: s for s in pending}
        bar = _progress_bar(len(pending), progress)

        def record(outcome, key, error, seconds):
            if outcome == "done":
                summary.done += 1
            elif outcome == "failed":
                summary.failed += 1
                summary.failures.append((describe(by_key[key]), error or ""))
                if bar is not None:
                    bar.write(f"failed: {describe(by_key[key])}: {error}")
                else:
                    print(f"failed: {describe(by_key[key])}: {error}", file=sys.stderr)
            elif outcome == "held":
                summary.held_elsewhere += 1
            if bar is not None:
                bar.set_postfix_str(f"{by_key[key].label} {seconds:.1f}s", refresh=False)
                bar.update(1)

        if workers == 1 or len(pending) <= 1:
            fn = resolve_run_fn(run_fn)
            versions = software_versions()
            hardware: dict = {}
            previous = signal.getsignal(signal.SIGTERM)
            in_main = _in_main_thread()
            if threads:
                import torch

                torch.set_num_threads(threads)
            if in_main:
                signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                for spec in pending:
                    if bar is not None:
                        bar.set_description_str(describe(spec)[:60], refresh=True)
                    outcome, error, seconds = _execute(db, spec, fn, runtime, retry_failed, hardware, versions)
                    record(outcome, spec.key, error, seconds)
            finally:
                if in_main:
                    signal.signal(signal.SIGTERM, previous)
        else:
            _run_workers(pending, str(db_path), run_fn, runtime, retry_failed, lease_seconds, workers, threads,
                         record)
        if bar is not None:
            bar.close()
    finally:
        db.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)


def _run_workers(pending, db_path, run_fn, runtime, retry_failed, lease, workers, threads, record) -> None:
    if callable(run_fn) and getattr(run_fn, "__module__", None) == "__main__":
        raise ValueError("run_fn is defined in __main__; with workers > 1 give it as 'module:function'")
    threads = threads or max(1, usable_cores() // workers)
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    events = ctx.Queue()
    procs = [ctx.Process(target=_worker, name=f"gence-worker-{i}",
                         args=(db_path, pending, run_fn, runtime, retry_failed, lease, threads, events,
                               os.getpid()))
             for i in range(workers)]
    for p in procs:
        p.start()
    exited = 0
    finished: set[str] = set()
    try:
        while exited < len(procs):
            try:
                outcome, key, error, seconds = events.get(timeout=1.0)
            except queue_module.Empty:
                if not any(p.is_alive() for p in procs):  # a worker died without saying so
                    break
                continue
            if outcome == "exit":
                exited += 1
            elif outcome != "held":  # a sibling holding a run is normal; counted at the end if nobody ran it
                finished.add(key)
                record(outcome, key, error, seconds)
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker releases its claim and exits
        raise
    finally:
        for p in procs:
            p.join(timeout=30)
    for spec in pending:
        if spec.key not in finished:
            record("held", spec.key, None, 0.0)
