"""Run the runs of a grid into a results database: resumable, kill-safe, parallel, shardable.

- A run whose key is ``done`` in the database is skipped; a ``failed`` one only with ``retry_failed``.
- Each run is claimed in its own short transaction before it starts and stored in one commit when it
  ends, so SIGKILL at any moment loses at most the run in flight, and that run's stale claim is taken
  over by the next invocation (see :mod:`gence.experiments.db`).
- ``workers > 1`` starts that many processes (spawn), all walking the same ordered list and claiming runs
  one at a time: whoever is free takes the next unclaimed run, so no run is done twice and no worker
  idles while runs remain. Each worker gets ``cpu cores // workers`` torch threads (or ``threads``).
  :func:`auto_workers` picks one worker per core for CPU runs: small models gain little from a second
  thread, and on a shared machine oversubscribed threads can make a run ten times slower. On Ctrl-C or
  SIGTERM each worker gives its claim up and exits; one that has not within :data:`WORKER_EXIT_SECONDS`
  (all workers together) is killed, its claim left to be taken over.
- Sharding (``grid.shard``) picks a deterministic, disjoint part of the list before any of this.
- Tuned runs (blocks with ``tune``, see :mod:`gence.experiments.grid`) wait until every tuning run of
  their dataset, model and loss is stored done or failed; the runner runs everything it can, and after
  each finished tuning run checks which tuned runs are now ready and queues them, so one invocation does
  tuning then main runs and the workers take the tuned runs as soon as they are ready (runs are handed
  to workers one at a time by the parent). Tuned runs whose tuning runs are neither here nor finished
  in the database (another shard's, or running in another process) stay waiting: they are counted in
  the summary and run by a later invocation once the database has them (for shards: ``gence merge``
  the shard databases into each shard's database, then run the shards again).
- Runs start in the order of their blocks (``order``, the grid file's order from ``gence bench``), each
  block's runs in its order: a tuned run that becomes ready goes ahead of every queued run of a later
  block, so a file can put what matters most first (sweeps, then the main comparisons, then the rest).
  Runs with a checkpoint (started by an earlier invocation and stopped: a kill, Ctrl-C, a machine that went
  away) go before all of them, in the same order among themselves: their training is partly done, so they
  finish first, and their checkpoints do not wait on disk behind a grid's worth of new runs.
- Extending sweeps (blocks with ``extend``) are decided the same way: whenever a run of a sweep ends, its
  state is recomputed from the database (:func:`gence.experiments.grid.extension_state`) and the runs it
  adds are queued; a tuned run on that block waits until the sweep has settled. ``RunnerSummary.extensions``
  holds every sweep's final state (``at_edge``: the winner is still at an edge after ``max_steps``).
- ``reuse``: the done runs of other databases (a pilot's) are copied in, not trained, wherever a run of
  the grid has their key, and stored under the grid's block and label (``extras["copied_from"]`` says
  from where); a run is the same run wherever it was trained, so a budget the pilot already ran is not
  trained twice. The other databases are read as each run is queued (a tuned run when its lr is chosen),
  so runs a pilot stores while the grid runs are copied too.

The run function is injectable: ``run_fn(config: dict) -> (metrics: dict, extras)``, given as a callable
or as ``"module:function"`` (it must be importable by name when ``workers > 1``). The default,
:func:`train_run`, calls :func:`gence.train.fit`.

A run function with a ``checkpoint`` keyword (the default one has it) is given a file of its own,
``<database>.checkpoints/<run key>.pt``, to save its state in as it goes: a run killed mid-way (a session
ending, a machine going away) goes on from its last saved epoch when the grid is run again, with the
same result. The file is deleted once the run is stored, done or failed (a failed run starts afresh
with ``retry_failed``).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import heapq
import importlib
import inspect
import itertools
import multiprocessing as mp
import os
import queue as queue_module
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from gence.contract import KEY_EXCLUDED_FIELDS, TrainConfig
from gence.experiments.db import ResultsDB, done_run, hardware_string, software_versions
from gence.experiments.grid import (ExtendGroup, ExtensionState, RunSpec, TunedSpec, describe_group,
                                    extension_state, tune_state)
from gence.train import fit

RunFunction = Callable[[dict], "tuple[dict, Any]"]
DEFAULT_RUN_FN = "gence.experiments.runner:train_run"

# Fields that may be overridden at run time without changing a run's key.
RUNTIME_FIELDS = KEY_EXCLUDED_FIELDS

# How long the parent waits for its workers to exit once the grid ends or is interrupted (all of them
# together, so Ctrl-C returns within this however many workers there are). A worker still alive then is
# stuck (it got SIGTERM and did not give its claim up): it is killed, and its claim, that of a dead
# process, is taken over by the next invocation.
WORKER_EXIT_SECONDS = 30.0


def train_run(config: dict, checkpoint: str | os.PathLike | None = None) -> tuple[dict, Any]:
    """The default run function: one training run of :mod:`gence.train`, resumable from ``checkpoint``."""
    result = fit(TrainConfig.from_dict(config), progress=False, checkpoint=checkpoint)
    return dict(result.metrics), result.extras


def checkpoint_path(db_path: str | os.PathLike, key: str) -> Path:
    """Where the runner lets the run ``key`` of the database ``db_path`` save its training state."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".checkpoints") / f"{key}.pt"


def _takes_checkpoint(run_fn: RunFunction) -> bool:
    try:
        return "checkpoint" in inspect.signature(run_fn).parameters
    except (TypeError, ValueError):  # builtins and the like
        return False


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
    waiting: int = 0            # tuned runs whose tuning runs are not finished (another shard/process)
    untunable: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # tuned runs: every tuning run failed
    extension_runs: int = 0     # runs added by extensions and queued by this invocation
    copied: int = 0             # done runs of a ``reuse`` database stored here instead of being trained
    extensions: list[tuple[str, ExtensionState]] = dataclasses.field(default_factory=list)  # (group, final state)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (label/config, last error line)

    def line(self) -> str:
        parts = [f"{self.done} run(s) finished", f"{self.failed} failed"]
        if self.copied:
            parts.append(f"{self.copied} copied from the reused database(s), not trained")
        if self.already_done:
            parts.append(f"{self.already_done} already done")
        if self.skipped_failed:
            parts.append(f"{self.skipped_failed} failed earlier and skipped (--retry-failed retries them)")
        if self.held_elsewhere:
            parts.append(f"{self.held_elsewhere} running in another process")
        if self.waiting:
            parts.append(f"{self.waiting} waiting for tuning runs not finished here (another shard or process; "
                         f"run again once the database has them)")
        if self.untunable:
            parts.append(f"{len(self.untunable)} could not be tuned (every tuning run failed)")
        if self.extensions:
            extended = sum(1 for _, st in self.extensions if st.added)
            parts.append(f"{extended} of {len(self.extensions)} extending sweep(s) extended"
                         + (f" ({self.extension_runs} run(s) added here)" if self.extension_runs else ""))
        if self.undecided:
            parts.append(f"{self.undecided} sweep(s) waiting to decide extension (runs not finished here: "
                         f"another shard or process; run again once the database has them)")
        if self.at_edge:
            parts.append(f"{len(self.at_edge)} sweep(s) AT AN EDGE after their last extension")
        return ", ".join(parts) + f" in {self.seconds:.1f} s"


    @property
    def undecided(self) -> int:
        """Extending sweeps still waiting for runs when this invocation ended."""
        return sum(1 for _, st in self.extensions if st.kind == "wait")

    @property
    def at_edge(self) -> list[tuple[str, str]]:
        """(sweep, message) for each extending sweep whose final winner is at an edge after max_steps."""
        return [(what, st.message) for what, st in self.extensions if st.at_edge]


def describe(spec: RunSpec) -> str:
    c = spec.config
    return f"{c.get('dataset')} {c.get('regime')} {c.get('model')} {spec.label} seed={c.get('seed')}"


class _Interrupted(KeyboardInterrupt):
    pass


def _raise_interrupt(signum, frame):  # SIGTERM -> release the claim like Ctrl-C does
    raise _Interrupted(f"signal {signum}")


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM raises KeyboardInterrupt (in the main thread; elsewhere it is left alone),
    so a ``kill`` or a batch system's stop is handled as Ctrl-C: claims given up, workers stopped, queues
    closed. The previous handler is restored on leaving."""
    if not _in_main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass
class RunOutcome:
    """What one call of a run function gave: ``status`` done (``metrics``, ``extras``) or failed
    (``error``: the traceback, ``line``: its last line, short), and how long it took."""

    status: str
    seconds: float
    metrics: dict | None = None
    extras: Any = None
    error: str | None = None
    line: str | None = None


def call_run_fn(run_fn: RunFunction, config: dict, checkpoint: Path | None) -> RunOutcome:
    """Call ``run_fn`` on ``config`` (with ``checkpoint=`` when given); an exception becomes a failed
    outcome with its traceback, KeyboardInterrupt passes through. Used by local workers and Ray tasks."""
    kwargs = {} if checkpoint is None else {"checkpoint": checkpoint}
    start = time.perf_counter()
    try:
        metrics, extras = run_fn(config, **kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failed run is a result too: store why, go on with the next
        return RunOutcome("failed", time.perf_counter() - start, error=traceback.format_exc(),
                          line=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    return RunOutcome("done", time.perf_counter() - start, metrics={k: float(v) for k, v in metrics.items()},
                      extras=extras)


def store_outcome(db: ResultsDB, key: str, outcome: RunOutcome, hardware: str, versions: dict,
                  checkpoint: Path | None) -> None:
    """Store a claimed run's outcome in one commit, then delete its checkpoint."""
    if outcome.status == "done":
        db.finish(key, metrics=outcome.metrics, extras=outcome.extras, wall_seconds=outcome.seconds,
                  hardware=hardware, versions=versions)
    else:
        db.fail(key, error=outcome.error, wall_seconds=outcome.seconds, hardware=hardware, versions=versions)
    _remove(checkpoint)


def _execute(db: ResultsDB, spec: RunSpec, run_fn: RunFunction, runtime: dict, retry_failed: bool,
             hardware: dict, versions: dict) -> tuple[str, str | None, float]:
    """Claim and run one spec. Returns (outcome, error line, seconds); outcome in done/failed/held.

    An interrupt (Ctrl-C, SIGTERM) anywhere from the claim to the stored outcome gives the claim up: release
    deletes only a row this process holds as running, so it is a no-op when the claim was never taken or the
    outcome is already stored; the checkpoint stays, and the next invocation resumes from it."""
    try:
        if not db.claim(spec.key, spec.config, label=spec.label, grid=spec.grid, retry_failed=retry_failed):
            return "held", None, 0.0
        config = {**spec.config, **runtime}
        device = config.get("device")
        if device not in hardware:
            hardware[device] = hardware_string(device)
        checkpoint = checkpoint_path(db.path, spec.key) if _takes_checkpoint(run_fn) else None
        with warnings.catch_warnings(record=True) as caught:  # one line each, not mid-progress-bar with source
            warnings.simplefilter("default")
            outcome = call_run_fn(run_fn, config, checkpoint)
        for message in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
            tqdm.write(f"warning: {describe(spec)}: {message}", file=sys.stderr)
        store_outcome(db, spec.key, outcome, hardware[device], versions, checkpoint)
    except KeyboardInterrupt:
        db.release(spec.key)
        raise
    return outcome.status, outcome.line, outcome.seconds


def _remove(path: Path | None) -> None:
    """Delete a stored run's checkpoint. The directory stays: another worker may be about to write in it."""
    if path is not None:
        path.unlink(missing_ok=True)


def _worker(db_path: str, tasks, run_fn, runtime: dict, retry_failed: bool, lease: float,
            threads: int | None, events, parent_pid: int, gpu: str | None = None) -> None:
    """Run the specs the parent hands out on ``tasks`` (one at a time) until it sends None; ``gpu``: the
    one GPU this worker sees (set before anything initialises CUDA)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which sends SIGTERM
    _die_with_parent()
    if threads:
        torch.set_num_threads(threads)
    fn = resolve_run_fn(run_fn)
    versions = software_versions()
    hardware: dict = {}
    db = ResultsDB(db_path, lease_seconds=lease)
    try:
        while True:
            spec = tasks.get()
            if spec is None or os.getppid() != parent_pid:  # done, or the parent was killed
                break
            outcome, error, seconds = _execute(db, spec, fn, runtime, retry_failed, hardware, versions)
            events.put((outcome, spec.key, error, seconds))
    except KeyboardInterrupt:
        pass
    finally:
        db.close()
        events.put(("exit", None, None, 0.0))


def _stop_feeder(tasks) -> None:
    """Close the task queue and wait for its feeder thread, which holds two of the queue's named semaphores.
    Left running (``cancel_join_thread``), it let them go only at interpreter exit, where the resource tracker
    sometimes missed one and warned of a "leaked semaphore" after an interrupt. What no worker took is read
    back first, so the feeder never waits on a full pipe."""
    try:
        while True:
            tasks.get(timeout=0.05)
    except queue_module.Empty:
        pass
    tasks.close()
    tasks.join_thread()


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies (even by SIGKILL), so no orphan keeps running runs."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The GPUs this process may give its workers: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set,
    else ``0 .. device_count-1``; empty without CUDA."""
    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()][:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _devices(specs: Sequence[RunSpec], runtime: dict) -> set[str]:
    return {str(runtime.get("device", s.config.get("device", "auto"))) for s in specs}


def uses_gpu(specs: Sequence[RunSpec], runtime: dict | None = None) -> bool:
    """Whether any run may use a GPU of :func:`visible_gpus` (device ``auto``, ``cuda`` or ``cuda:N``)."""
    devices = _devices(specs, runtime or {})
    return bool(visible_gpus()) and any(d == "auto" or d.startswith("cuda") for d in devices)


def gpu_assignment(workers: int, workers_per_gpu: int, gpus: Sequence[str]) -> list[str]:
    """The GPU each of ``workers`` workers sees: ``workers_per_gpu`` consecutive workers per GPU, then the
    next GPU, round robin once every GPU has its share (4 workers, 2 per GPU, GPUs 0 and 1: 0 0 1 1)."""
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu = {workers_per_gpu}: expected an integer >= 1")
    if not gpus:
        raise ValueError("gpu_assignment: no GPUs to assign")
    return [str(gpus[(i // workers_per_gpu) % len(gpus)]) for i in range(workers)]


def auto_workers(specs: Sequence[RunSpec], runtime: dict | None = None, *, max_workers: int = 8,
                 workers_per_gpu: int = 1) -> int:
    """One worker per usable core (at most ``max_workers``, each dataset is loaded once per worker) when
    every run is on the CPU; ``workers_per_gpu`` per visible GPU when any run may use a GPU (each worker
    then sees its own GPU, see :func:`gpu_assignment`)."""
    runtime = runtime or {}
    if any(d.startswith("cuda:") for d in _devices(specs, runtime)):
        return 1  # a GPU pinned by index: the workers would share it
    if uses_gpu(specs, runtime):
        return max(1, min(len(visible_gpus()) * workers_per_gpu, len(specs)))
    devices = _devices(specs, runtime)
    if devices - {"cpu", "auto"}:  # cuda asked for without a GPU here: the runs fail, one worker says so
        return 1
    return max(1, min(usable_cores(), max_workers, len(specs)))


class RunQueue:
    """Ready runs, taken in the order of their blocks (``order``: block names; others after them, in the
    order they first came), then in the order they were added."""

    def __init__(self, order: Sequence[str] = ()):
        self._rank = {name: i for i, name in enumerate(order)}
        self._heap: list[tuple[bool, int, int, RunSpec]] = []   # (no checkpoint, block rank, arrival, run)
        self._count = itertools.count()

    def append(self, spec: RunSpec, resumed: bool = False) -> None:
        """Queue ``spec`` after the queued runs of its block and before those of later blocks; ``resumed``
        (the run has a checkpoint) queues it before every run without one."""
        rank = self._rank.setdefault(spec.grid, len(self._rank))
        heapq.heappush(self._heap, (not resumed, rank, next(self._count), spec))

    def popleft(self) -> RunSpec:
        return heapq.heappop(self._heap)[-1]

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self):
        return (item[-1] for item in sorted(self._heap, key=lambda item: item[:3]))


class Scheduler:
    """The runs still to do in this invocation: a queue of ready specs (:class:`RunQueue`, in block order,
    runs with a checkpoint in ``checkpoints`` first), tuned runs that wait, and extending sweeps
    (``ExtendGroup``) not yet settled, whose next runs are queued as they are decided."""

    def __init__(self, db: ResultsDB, specs: list[RunSpec], tuned: list[TunedSpec], retry_failed: bool,
                 summary: RunnerSummary, extensions: Sequence[ExtendGroup] = (), order: Sequence[str] = (),
                 reuse: Sequence[str | os.PathLike] = (), checkpoints: Path | None = None):
        self.db, self.retry_failed, self.summary = db, retry_failed, summary
        self.checkpoints = checkpoints   # the folder of <run key>.pt files (None: runs keep no checkpoint)
        self.reuse = [str(p) for p in reuse]   # databases whose done runs are copied, looked up as runs are added
        status = db.statuses()
        self.queue = RunQueue(order)
        self.known: set[str] = set()
        self.unfinished: set[str] = set()      # queued or in flight here
        self.specs: dict[str, RunSpec] = {}
        for spec in specs:
            self._add(spec, status.get(spec.key))
        self.waiting = list(tuned)
        self.groups = list(extensions)
        if retry_failed:  # an extension run stored failed is run again before its sweep is decided further
            ladder = {s.key: s for g in self.groups for _, specs in g.down + g.up for s in specs}
            for key, st in db.statuses(list(ladder)).items():
                if st == "failed":
                    self._add(ladder[key], st)
        self.released: list[tuple[TunedSpec | None, str]] = []   # (tuned run, outcome) for the progress bar
        self._watch()

    def _watch(self) -> None:
        """The keys whose outcome may release a tuned run or decide an extension."""
        self.tuning_keys = ({k for t in self.waiting for k in t.tuning_keys}
                            | {k for g in self.groups for k in g.keys})

    def _add(self, spec: RunSpec, st: str | None) -> bool:
        if spec.key in self.known:
            return False
        self.known.add(spec.key)
        if st != "done":   # read now, not at start: a tuned run released hours later sees a pilot's new runs
            for source in self.reuse:
                row = done_run(source, spec.key)
                if row is not None and self.db.adopt(row, label=spec.label, grid=spec.grid, source=source):
                    self.summary.copied += 1
                    return False
        if st == "done":
            self.summary.already_done += 1
            return False
        if st == "failed" and not self.retry_failed:
            self.summary.skipped_failed += 1
            return False
        self.queue.append(spec, resumed=self.checkpoints is not None
                          and (self.checkpoints / f"{spec.key}.pt").exists())
        self.unfinished.add(spec.key)
        self.specs[spec.key] = spec
        return True

    def pop(self) -> RunSpec:
        return self.queue.popleft()

    def finished(self, key: str) -> bool:
        """Mark ``key`` as finished here; True when it is a tuning run of a waiting tuned run."""
        self.unfinished.discard(key)
        return key in self.tuning_keys

    def release(self) -> int:
        """Queue the runs extensions have decided to add, and the tuned runs whose tuning runs (and
        extensions) are all finished; returns how many were queued."""
        if not self.waiting and not self.groups:
            return 0
        rows = self.db.states(self.tuning_keys)
        queued = self._extend(rows)
        if not self.waiting:
            self._watch()
            return queued
        states = [(t, tune_state(t, rows, self.unfinished)) for t in self.waiting]
        ready_keys = [st.spec.key for _, st in states if st.kind == "ready"]
        stored = {k: v[0] for k, v in self.db.states(ready_keys).items()} if ready_keys else {}
        still = []
        for t, st in states:
            if st.kind == "wait":
                still.append(t)
            elif st.kind == "failed":
                self.summary.untunable.append((describe(t), st.message))
                self.released.append((t, "untunable"))
            else:
                added = self._add(st.spec, stored.get(st.spec.key))
                queued += added
                self.released.append((t, "queued" if added else "skipped"))
        self.waiting = still
        self._watch()
        return queued

    def _extend(self, rows: dict) -> int:
        """Queue the undecided sweeps' next runs (never their swept runs: those are in the run list, or
        another shard's); drop the settled sweeps."""
        queued = 0
        still = []
        for g in self.groups:
            st = extension_state(g, rows, self.unfinished)
            if st.kind != "wait":
                continue
            still.append(g)
            swept = {s.key for _, s in g.swept}
            for spec in st.pending:
                if spec.key not in swept and self._add(spec, rows.get(spec.key, (None,))[0]):
                    queued += 1
                    self.summary.extension_runs += 1
                    self.released.append((None, "extension"))
        self.groups = still
        return queued


@dataclasses.dataclass
class Dispatch:
    """What an :class:`Executor` gets from :func:`run_grid`: the scheduler of ready runs, the database (the
    executor claims each run before it starts and stores its outcome, the only writer), the run settings,
    and the callbacks that count an outcome (``record(outcome, key, error_line, seconds)``) and account for
    runs the scheduler released (``account_released()``, after each ``sched.release()``)."""

    sched: "Scheduler"
    db: ResultsDB
    run_fn: RunFunction | str | None
    runtime: dict
    retry_failed: bool
    record: Callable[[str, str, str | None, float], None]
    account_released: Callable[[], None]
    bar: Any = None


class Executor(Protocol):
    """Runs the runs of a :class:`Dispatch` until its scheduler has none left. One with a
    ``checkpoint_dir`` attribute (a folder of ``<run key>.pt`` files, as Ray's) has the runs with a
    checkpoint there queued first; without it (or None) runs are queued in block order alone."""

    def run(self, dispatch: Dispatch) -> None: ...


def run_grid(specs: Sequence[RunSpec], db_path: str | os.PathLike, *, workers: int = 1,
             threads: int | None = None, retry_failed: bool = False, run_fn: RunFunction | str | None = None, progress: bool = True,
             runtime: dict | None = None, lease_seconds: float = 600.0,
             grid_text: tuple[str, str | None, str] | None = None,
             tuned: Sequence[TunedSpec] = (), extensions: Sequence[ExtendGroup] = (),
             workers_per_gpu: int = 1, executor: "Executor | None" = None,
             show_error: Callable[[str], str] | None = None, order: Sequence[str] = (),
             reuse: Sequence[str | os.PathLike] = ()) -> RunnerSummary:
    """Run every spec not yet done in ``db_path``; see the module docstring for the guarantees.

    ``threads``: torch threads per run (default: unchanged with one worker, cores // workers otherwise).
    ``runtime``: settings applied at run time that do not change a run's key (``data_dir``, ``device``).
    ``grid_text``: (name, path, TOML text) stored in the database for the report header.
    ``tuned``: runs of blocks with ``tune`` (``Grid.tuned``), run once their tuning runs are finished.
    ``extensions``: sweeps of blocks with ``extend`` (``Grid.extensions``); their added runs are queued as
    soon as they are decided, and ``RunnerSummary.extensions`` holds each one's state at the end.
    ``workers_per_gpu``: with ``workers > 1`` and runs that may use a GPU (device ``auto`` or ``cuda``),
    each worker sees one GPU (``CUDA_VISIBLE_DEVICES``), this many workers per GPU (:func:`gpu_assignment`).
    ``executor``: runs the runs elsewhere instead of local processes (e.g.
    :class:`gence.experiments.ray_backend.RayExecutor`); ``workers`` and ``threads`` are then ignored.
    ``show_error``: rewrites a failed run's error line where it is shown (the ``failed:`` line printed, and
    ``RunnerSummary.failures``), e.g. :func:`gence.contract.runtime_flags` for a command line; the error
    stored in the database stays as raised.
    ``order``: block names in the order their runs start (``Grid.blocks``); by default the order in which
    the blocks' runs come (ordinary runs first, then tuned runs as they become ready).
    ``reuse``: other databases (e.g. a pilot's) whose done runs are copied into ``db_path`` instead of being
    trained, wherever a run of this grid has their key (the same configuration), with this grid's block and
    label (:meth:`ResultsDB.adopt`); the first database that has a key gives it. Counted as
    ``RunnerSummary.copied``."""
    runtime = dict(runtime or {})
    for key in runtime:
        if key not in RUNTIME_FIELDS:
            raise ValueError(f"runtime setting {key!r}: only {', '.join(RUNTIME_FIELDS)} can change without "
                             f"changing which run it is")
    if workers < 1:
        raise ValueError(f"workers = {workers}: expected >= 1")
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu = {workers_per_gpu}: expected >= 1")
    specs = list(specs)
    tuned = list(tuned)
    extensions = list(extensions)
    summary = RunnerSummary(planned=len(specs) + len(tuned))
    start = time.perf_counter()
    db = ResultsDB(db_path, lease_seconds=lease_seconds)
    try:
        if grid_text is not None:
            db.add_grid(*grid_text)
        checkpoints = checkpoint_path(db_path, "-").parent if executor is None else \
            getattr(executor, "checkpoint_dir", None)
        sched = Scheduler(db, specs, tuned, retry_failed, summary, extensions, order, reuse, checkpoints)
        bar = _progress_bar(len(sched.queue) + len(sched.waiting), progress)

        def account_released():
            for t, what in sched.released:
                if what == "extension":
                    if bar is not None:
                        bar.total += 1
                        bar.refresh()
                    continue
                if what == "untunable":
                    msg = f"not run: {describe(t)}: {[m for d, m in summary.untunable if d == describe(t)][-1]}"
                    if bar is not None:
                        bar.write(msg)
                    else:
                        print(msg, file=sys.stderr)
                if what != "queued" and bar is not None:
                    bar.total -= 1
                    bar.refresh()
            sched.released.clear()

        def record(outcome, key, error, seconds):
            spec = sched.specs[key]
            if outcome == "done":
                summary.done += 1
            elif outcome == "failed":
                summary.failed += 1
                error = show_error(error or "") if show_error is not None else error
                summary.failures.append((describe(spec), error or ""))
                if bar is not None:
                    bar.write(f"failed: {describe(spec)}: {error}")
                else:
                    print(f"failed: {describe(spec)}: {error}", file=sys.stderr)
            elif outcome == "held":
                summary.held_elsewhere += 1
            if bar is not None:
                bar.set_postfix_str(f"{spec.label} {seconds:.1f}s", refresh=False)
                bar.update(1)

        sched.release()
        account_released()
        with sigterm_interrupts():
            if executor is not None:
                executor.run(Dispatch(sched, db, run_fn, runtime, retry_failed, record, account_released, bar))
            elif workers == 1 or len(sched.queue) + len(sched.waiting) <= 1:
                fn = resolve_run_fn(run_fn)
                versions = software_versions()
                hardware: dict = {}
                if threads:
                    torch.set_num_threads(threads)
                while True:
                    if not sched.queue:
                        sched.release()  # tuning runs finished by another process in the meantime
                        account_released()
                        if not sched.queue:
                            break
                    spec = sched.pop()
                    if bar is not None:
                        bar.set_description_str(describe(spec)[:60], refresh=True)
                    outcome, error, seconds = _execute(db, spec, fn, runtime, retry_failed, hardware, versions)
                    record(outcome, spec.key, error, seconds)
                    if sched.finished(spec.key):
                        sched.release()
                        account_released()
            else:
                devices = _devices(list(specs) + list(tuned), runtime)
                gpus = (gpu_assignment(workers, workers_per_gpu, visible_gpus())
                        if uses_gpu(list(specs) + list(tuned), runtime)
                        and not any(d.startswith("cuda:") for d in devices) else [None] * workers)
                _run_workers(sched, str(db_path), run_fn, runtime, retry_failed, lease_seconds, workers, threads,
                             record, account_released, gpus)
        summary.waiting = len(sched.waiting)
        if extensions:
            rows = db.states({k for g in extensions for k in g.keys})
            summary.extensions = [(describe_group(g.config, g.label), extension_state(g, rows, sched.unfinished))
                                  for g in extensions]
        if bar is not None:
            bar.close()
    finally:
        db.close()
    try:  # the checkpoints folder, when no run left a checkpoint in it
        checkpoint_path(db_path, "-").parent.rmdir()
    except OSError:
        pass
    summary.seconds = time.perf_counter() - start
    return summary


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _progress_bar(total: int, enabled: bool):
    if not enabled or total == 0:  # nothing left to run: no "0run [00:00, ?run/s]" line
        return None
    return tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)


def _run_workers(sched: Scheduler, db_path, run_fn, runtime, retry_failed, lease, workers, threads, record,
                 account_released, gpus: Sequence[str | None]) -> None:
    """Hand runs to ``workers`` processes one at a time (never more outstanding than workers), so runs
    that become ready while others train (tuned runs after their tuning runs) are taken at once."""
    if callable(run_fn) and getattr(run_fn, "__module__", None) == "__main__":
        raise ValueError("run_fn is defined in __main__; with workers > 1 give it as 'module:function'")
    threads = threads or max(1, usable_cores() // workers)
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    events = ctx.Queue()
    tasks = ctx.Queue()
    procs = [ctx.Process(target=_worker, name=f"gence-worker-{i}",
                         args=(db_path, tasks, run_fn, runtime, retry_failed, lease, threads, events, os.getpid(),
                               gpus[i]))
             for i in range(workers)]
    for p in procs:
        p.start()
    handed: set[str] = set()      # given to a worker, no outcome yet
    reported: set[str] = set()
    exited = 0

    def feed() -> None:
        while len(handed) < workers and sched.queue:
            spec = sched.pop()
            handed.add(spec.key)
            tasks.put(spec)

    try:
        feed()
        while True:
            if not handed:
                sched.release()
                account_released()
                feed()
                if not handed:
                    break
            try:
                outcome, key, error, seconds = events.get(timeout=1.0)
            except queue_module.Empty:
                if any(not p.is_alive() for p in procs):  # a worker died without saying so: stop handing out
                    break
                continue
            if outcome == "exit":
                exited += 1
                continue
            handed.discard(key)
            reported.add(key)
            record(outcome, key, error, seconds)
            if sched.finished(key):
                sched.release()
                account_released()
            feed()
        for _ in procs:
            tasks.put(None)
        while exited < len(procs):
            try:
                outcome, key, error, seconds = events.get(timeout=1.0)
            except queue_module.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if outcome == "exit":
                exited += 1
            elif key not in reported:
                handed.discard(key)
                reported.add(key)
                record(outcome, key, error, seconds)
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker releases its claim and exits
        raise
    finally:
        deadline = time.monotonic() + WORKER_EXIT_SECONDS
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        _stop_feeder(tasks)
    for key in list(handed) + [s.key for s in sched.queue]:
        if key not in reported:
            record("held", key, None, 0.0)
