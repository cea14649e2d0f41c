"""Run a grid's runs as Ray tasks: on this machine (``ray.init()`` starts a local cluster) or on a Ray
cluster (``address="auto"`` or ``ray://HOST:10001``), with per-run CPUs and (fractional) GPUs.

The driver (the process running :func:`gence.experiments.runner.run_grid` with a :class:`RayExecutor`)
stays the only writer of the results database: it claims a run (a lease, as the local runner does), submits
it as a task, and stores what the task returns, done or failed with its traceback. The scheduling is the
local runner's (:class:`gence.experiments.runner.Scheduler`): tuned runs are submitted once their tuning
runs are stored, extension runs once their sweep is decided. At most ``max_in_flight`` tasks are submitted
at a time, so a run released later (a tuned run) does not wait behind the whole grid.

Ctrl-C (or SIGTERM) cancels the tasks in flight and releases their claims; a driver killed outright leaves
claims whose owner is dead, which the next invocation takes over. Either way only runs in flight are lost:
they restart, unless ``checkpoint_dir`` (a path every node sees) is given, where each task saves its state
and from which the next attempt resumes.

Ray is an optional dependency (``pip install ray``; from a clone, the extra ``pip install -e ".[ray]"``), imported when a
:class:`RayExecutor` is made.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from gence.experiments.db import hardware_string, software_versions
from gence.experiments.grid import RunSpec
from gence.experiments.runner import (Dispatch, RunOutcome, _takes_checkpoint,
                                      call_run_fn, describe, resolve_run_fn, store_outcome)

RAY_EXTRA = "pip install ray (the extra [ray]: pip install -e '.[ray]' from a clone)"


def import_ray():
    """The ``ray`` module, or an ImportError naming the extra that installs it."""
    try:
        import ray  # optional dependency: only the Ray backend needs it
    except ImportError as exc:
        raise ImportError(f"the Ray backend needs Ray, which is not installed: {RAY_EXTRA} "
                          f"(or pip install 'ray>=2.9')") from exc
    return ray


def check_resources(cpus_per_run: float, gpus_per_run: float, max_in_flight: int | None) -> None:
    """ValueError naming the argument when a Ray resource request is not one Ray can schedule."""
    if not (isinstance(cpus_per_run, (int, float)) and cpus_per_run > 0 and math.isfinite(cpus_per_run)):
        raise ValueError(f"cpus_per_run (--cpus-per-run) = {cpus_per_run!r}: expected a number > 0 "
                         f"(fractions allowed)")
    if not (isinstance(gpus_per_run, (int, float)) and gpus_per_run >= 0 and math.isfinite(gpus_per_run)):
        raise ValueError(f"gpus_per_run (--gpus-per-run) = {gpus_per_run!r}: expected a number >= 0 "
                         f"(fractions allowed)")
    if gpus_per_run > 1 and gpus_per_run != int(gpus_per_run):
        raise ValueError(f"gpus_per_run (--gpus-per-run) = {gpus_per_run!r}: above 1 it must be a whole number of GPUs")
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise ValueError(f"max_in_flight (--max-in-flight) = {max_in_flight!r}: expected an integer >= 1")


def ray_task(run_fn, config: dict, checkpoint: str | None, threads: int) -> tuple[RunOutcome, str, dict]:
    """The body of one run's Ray task: (outcome, hardware, versions) of the node that ran it."""
    torch.set_num_threads(threads)
    fn = resolve_run_fn(run_fn)
    outcome = call_run_fn(fn, config, None if checkpoint is None else Path(checkpoint))
    return outcome, hardware_string(config.get("device")), software_versions()


class RayExecutor:
    """Runs each run as a Ray task with ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (fractional GPUs
    pack several runs on one), at most ``max_in_flight`` at a time (default: as many as the cluster's CPUs
    and GPUs hold at once). ``address``: None starts (or joins) a local cluster, ``"auto"`` joins the
    cluster of this node (``ray start --head``), or a ``ray://`` address. ``checkpoint_dir``: a directory
    every node sees, where runs save their training state and resume from (default: none, a run cut
    short restarts). ``threads``: torch threads per task (default: ``cpus_per_run``, at least 1).

    Usage: ``run_grid(specs, db_path, executor=RayExecutor(cpus_per_run=1))``."""

    def __init__(self, *, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0,
                 max_in_flight: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
                 threads: int | None = None, init_kwargs: dict | None = None):
        check_resources(cpus_per_run, gpus_per_run, max_in_flight)
        if threads is not None and threads < 1:
            raise ValueError(f"threads (--threads) = {threads!r}: expected an integer >= 1")
        self.ray = import_ray()
        self.address = address
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.max_in_flight = max_in_flight
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.threads = threads or max(1, int(cpus_per_run))
        self.init_kwargs = dict(init_kwargs or {})
        self.in_flight_limit: int | None = None  # the limit of the last run

    def _limit(self) -> int:
        if self.max_in_flight is not None:
            return self.max_in_flight
        total = self.ray.cluster_resources()
        fits = [int(total.get("CPU", 0) // self.cpus_per_run)]
        if self.gpus_per_run:
            fits.append(int(total.get("GPU", 0) // self.gpus_per_run))
        return max(1, min(fits))

    def _checkpoint(self, takes_checkpoint: bool, key: str) -> Path | None:
        if self.checkpoint_dir is None or not takes_checkpoint:
            return None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self.checkpoint_dir / f"{key}.pt"

    def run(self, d: Dispatch) -> None:
        """Submit the scheduler's runs, store their outcomes, until none is left (see the module docstring)."""
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, **self.init_kwargs)
        fn = resolve_run_fn(d.run_fn)  # checked here: a bad name fails before anything is claimed
        takes_checkpoint = _takes_checkpoint(fn)
        remote = ray.remote(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=1)(ray_task)
        limit = self.in_flight_limit = self._limit()
        shipped = d.run_fn if isinstance(d.run_fn, str) or d.run_fn is None else fn
        in_flight: dict[Any, tuple[RunSpec, Path | None]] = {}

        def submit() -> None:
            while len(in_flight) < limit and d.sched.queue:
                spec = d.sched.pop()
                if not d.db.claim(spec.key, spec.config, label=spec.label, grid=spec.grid,
                                  retry_failed=d.retry_failed):
                    d.record("held", spec.key, None, 0.0)
                    continue
                checkpoint = self._checkpoint(takes_checkpoint, spec.key)
                ref = remote.remote(shipped, {**spec.config, **d.runtime},
                                    None if checkpoint is None else str(checkpoint), self.threads)
                in_flight[ref] = (spec, checkpoint)
                if d.bar is not None:
                    d.bar.set_description_str(describe(spec)[:60], refresh=True)

        try:   # SIGTERM arrives as KeyboardInterrupt: run_grid's sigterm_interrupts() around this call
            submit()
            while True:
                if not in_flight:
                    d.sched.release()  # tuning runs finished by another process in the meantime
                    d.account_released()
                    submit()
                    if not in_flight:
                        break
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in ready:
                    spec, checkpoint = in_flight.pop(ref)
                    try:
                        outcome, hardware, versions = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the task's worker or node died
                        outcome = RunOutcome("failed", 0.0, error=f"Ray task failed: {exc}",
                                             line=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
                        hardware, versions = "unknown (Ray task lost)", software_versions()
                    store_outcome(d.db, spec.key, outcome, hardware, versions, checkpoint)
                    d.record(outcome.status, spec.key, outcome.line, outcome.seconds)
                    if d.sched.finished(spec.key):
                        d.sched.release()
                        d.account_released()
                submit()
        except KeyboardInterrupt:
            for ref, (spec, _) in in_flight.items():
                ray.cancel(ref, force=True)
                d.db.release(spec.key)  # a checkpoint stays: the next invocation resumes from it
            raise
        finally:
            if started:
                ray.shutdown()
