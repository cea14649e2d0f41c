"""Results database: one SQLite file, one row per run, keyed by the hash of the run's resolved config.

Why SQLite: one file that can be committed, copied from a cluster and merged, written safely by several
processes (WAL mode plus short ``BEGIN IMMEDIATE`` transactions), and readable by any tool.

Row life cycle::

    (absent) --claim--> running --finish--> done
                           |  \\--fail----> failed --claim (only with retry_failed)--> running
                           \\--release (interrupted)--> (absent)

A ``running`` row names its owner (``host:pid:nonce``) and a lease end time that a heartbeat thread keeps
pushing forward.  A claim is stale, and may be taken over, when its owner is a dead process on this host
or its lease has run out (another host, or a reused pid).  So a run killed with SIGKILL is run again
next time, and a finished run is never stored twice: the key is the primary key.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch

import gence
from gence.contract import KEY_EXCLUDED_FIELDS, canonical_json, run_key
from gence.train.loop import hardware_string   # re-exported: the runner stores it

__all__ = ["ResultsDB", "database_problem", "SCHEMA_VERSION", "canonical_json", "run_key", "KEY_EXCLUDED_FIELDS", "hardware_string",
           "software_versions", "code_revision", "utcnow"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key            TEXT PRIMARY KEY,            -- gence.contract.run_key(config)
    status         TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    config         TEXT NOT NULL,               -- canonical JSON of the resolved TrainConfig
    label          TEXT NOT NULL,               -- display name of the loss entry (e.g. 'gence', 'focal(gamma=3)')
    grid           TEXT,                        -- name of the grid block that first asked for this run
    dataset        TEXT, regime TEXT, model TEXT, loss TEXT, seed INTEGER,   -- copies for queries
    metrics        TEXT,                        -- JSON object of TrainResult.metrics (NaN allowed)
    extras         TEXT,                        -- JSON of TrainResult.extras
    error          TEXT,                        -- traceback of a failed run
    wall_seconds   REAL,                        -- wall time of the run as the runner measured it
    attempts       INTEGER NOT NULL DEFAULT 0,  -- how many times the run was claimed
    gence_version  TEXT, torch_version TEXT, python_version TEXT,
    hardware       TEXT,                        -- GPU name, or CPU model with cores, kernel capability, torch threads
    host           TEXT,
    owner          TEXT,                        -- host:pid:nonce of the process holding a 'running' claim
    lease_until    REAL,                        -- unix time after which a 'running' claim is stale
    created_at     TEXT NOT NULL,               -- first claim, ISO 8601 UTC
    started_at     TEXT,                        -- latest claim
    finished_at    TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS grids (              -- the grid files that were run, for the report header
    sha256   TEXT PRIMARY KEY,
    name     TEXT,
    path     TEXT,
    text     TEXT NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

_RUN_COLUMNS = ("key", "status", "config", "label", "grid", "dataset", "regime", "model", "loss", "seed",
                "metrics", "extras", "error", "wall_seconds", "attempts", "gence_version", "torch_version",
                "python_version", "hardware", "host", "owner", "lease_until", "created_at", "started_at",
                "finished_at")
_STORE_ROW = (f"INSERT OR REPLACE INTO runs ({', '.join(_RUN_COLUMNS)}) "
              f"VALUES ({', '.join('?' for _ in _RUN_COLUMNS)})")   # a whole row, columns in _RUN_COLUMNS order


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def code_revision() -> str:
    """The git commit of the checkout gence runs from, as a version suffix: ``"+g62c5bb4"``, with
    ``".dirty"`` appended when ``src/`` (the package's folder and its parent) has uncommitted changes;
    ``""`` when gence is not imported from a git checkout (an installed wheel) or git is absent.
    Computed once per process."""
    package = Path(gence.__file__).resolve().parent
    git = ["git", "-C", str(package)]
    try:
        inside = subprocess.run(git + ["ls-files", "--error-unmatch", "__init__.py"], capture_output=True,
                                text=True, timeout=30)
        if inside.returncode != 0:  # not a git work tree, or the package is not tracked in it
            return ""
        commit = subprocess.run(git + ["rev-parse", "--short=7", "HEAD"], capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        changes = subprocess.run(git + ["status", "--porcelain", "--", str(package.parent)], capture_output=True,
                                 text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"+g{commit}" + (".dirty" if changes else "")


def software_versions() -> dict[str, str]:
    """gence (with :func:`code_revision`), torch and Python versions, stored with every run."""
    return {"gence_version": gence.__version__ + code_revision(), "torch_version": torch.__version__,
            "python_version": platform.python_version()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def database_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a results database (``"does not exist"``, ``"not a results database
    (...)"``), or None; opens it read-only, so it changes nothing and creates nothing."""
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a folder, not a results database"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"not a results database (SQLite: {exc})"
    if "runs" not in tables:
        return "not a results database (an SQLite file without a runs table)"
    return None


def read_database(path: str | os.PathLike, what: str = "read") -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
    """The run rows and grid rows of a database file, opened read only (``what`` names the caller in the
    error for a missing file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: database {path} does not exist")
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    src.row_factory = sqlite3.Row
    try:
        rows = src.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs").fetchall()
        grids = src.execute("SELECT sha256, name, path, text, added_at FROM grids").fetchall()
    finally:
        src.close()
    return rows, grids


def done_run(path: str | os.PathLike, key: str) -> dict | None:
    """The done run ``key`` of a database file (read only, as it is now), or None, for
    :meth:`ResultsDB.adopt`."""
    src = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    src.row_factory = sqlite3.Row
    try:
        row = src.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE key=? AND status='done'",
                          (key,)).fetchone()
    finally:
        src.close()
    return None if row is None else dict(row)


def done_runs(path: str | os.PathLike) -> dict[str, dict]:
    """``{key: row}`` of the done runs of a database file (read only), for :meth:`ResultsDB.adopt`."""
    rows, _ = read_database(path, "reuse")
    return {r["key"]: dict(r) for r in rows if r["status"] == "done"}


class ResultsDB:
    """A results database file; open one per process (SQLite connections must not cross processes).

    ``lease_seconds``: how long a claim stays valid without a heartbeat; the heartbeat renews it every
    ``lease_seconds / 4``.
    """

    def __init__(self, path: str | os.PathLike, *, lease_seconds: float = 600.0, timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_seconds = float(lease_seconds)
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._timeout = timeout
        self.conn = self._connect()
        self.conn.executescript(_SCHEMA)  # IF NOT EXISTS: safe when several workers open the file at once
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._claimed: set[str] = set()
        self._claimed_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every transaction is explicit and short.
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":  # e.g. a network file system without shared memory
            raise RuntimeError(f"results database {self.path}: could not switch to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a crash keeps the DB consistent
        conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """``BEGIN IMMEDIATE`` takes the write lock up front, so read-then-write cannot interleave.

        Safe against an interrupt (Ctrl-C, SIGTERM) at any bytecode: one that lands after BEGIN or before
        COMMIT rolls back here; one that lands where no handler of this function sees it (inside contextlib)
        leaves a transaction this connection abandons on its next entry. Transactions never nest, so an
        open one on entry can only be such a leftover; without this it would keep the write lock, every
        other process would wait for it, and the next BEGIN here would fail."""
        cur = self.conn.cursor()
        if self.conn.in_transaction:
            cur.execute("ROLLBACK")
        try:
            cur.execute("BEGIN IMMEDIATE")
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                cur.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.stop_heartbeat()
        self.conn.close()

    def __enter__(self) -> "ResultsDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- claims
    def _stale(self, row: sqlite3.Row, now: float) -> bool:
        if row["lease_until"] is None or row["lease_until"] < now:
            return True
        host, pid, _ = (row["owner"] or "::").split(":", 2)
        return host == self.host and pid.isdigit() and not _pid_alive(int(pid))

    def claim(self, key: str, config: dict, *, label: str, grid: str | None = None,
              retry_failed: bool = False) -> bool:
        """Mark ``key`` as running by this process; False when it is done, failed (unless
        ``retry_failed``), or held by a live claim of another process."""
        now = time.time()
        stamp = utcnow()
        with self.transaction() as cur:
            row = cur.execute("SELECT status, owner, lease_until FROM runs WHERE key=?", (key,)).fetchone()
            if row is None:
                cur.execute(
                    "INSERT INTO runs (key, status, config, label, grid, dataset, regime, model, loss, seed,"
                    " attempts, host, owner, lease_until, created_at, started_at)"
                    " VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
                    (key, canonical_json(config), label, grid, config.get("dataset"), config.get("regime"),
                     config.get("model"), config.get("loss"), config.get("seed"), self.host, self.owner,
                     now + self.lease_seconds, stamp, stamp))
            elif row["status"] == "done":
                return False
            elif row["status"] == "failed" and not retry_failed:
                return False
            elif row["status"] == "running" and row["owner"] != self.owner and not self._stale(row, now):
                return False
            else:  # failed and retried, or a stale claim (its process died): take it over
                cur.execute(
                    "UPDATE runs SET status='running', attempts=attempts+1, owner=?, host=?, lease_until=?,"
                    " started_at=?, error=NULL WHERE key=?",
                    (self.owner, self.host, now + self.lease_seconds, stamp, key))
        with self._claimed_lock:
            self._claimed.add(key)
        self.start_heartbeat()
        return True

    def finish(self, key: str, *, metrics: dict, extras: Any, wall_seconds: float,
               hardware: str, versions: dict[str, str] | None = None) -> None:
        """Store a finished run; one commit, so a kill after this line loses nothing."""
        self._complete(key, "done", metrics=canonical_json(metrics), extras=canonical_json(extras),
                       error=None, wall_seconds=wall_seconds, hardware=hardware, versions=versions)

    def fail(self, key: str, *, error: str, wall_seconds: float, hardware: str,
             versions: dict[str, str] | None = None) -> None:
        self._complete(key, "failed", metrics=None, extras=None, error=error, wall_seconds=wall_seconds,
                       hardware=hardware, versions=versions)

    def _complete(self, key, status, *, metrics, extras, error, wall_seconds, hardware, versions) -> None:
        versions = versions or software_versions()
        with self.transaction() as cur:
            cur.execute(
                "UPDATE runs SET status=?, metrics=?, extras=?, error=?, wall_seconds=?, hardware=?,"
                " gence_version=?, torch_version=?, python_version=?, owner=NULL, lease_until=NULL,"
                " finished_at=? WHERE key=? AND status='running' AND owner=?",
                (status, metrics, extras, error, wall_seconds, hardware, versions["gence_version"],
                 versions["torch_version"], versions["python_version"], utcnow(), key, self.owner))
            if cur.rowcount != 1:
                # Our claim was taken over (lease ran out while we were stalled). The other claimant will
                # store its own result; storing ours too would count the run twice.
                pass
        with self._claimed_lock:
            self._claimed.discard(key)

    def release(self, key: str) -> None:
        """Give up a claim without a result (interrupted): the run counts as never started."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM runs WHERE key=? AND status='running' AND owner=?", (key, self.owner))
        with self._claimed_lock:
            self._claimed.discard(key)

    # -------------------------------------------------------------------------------------- heartbeat
    def start_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._heartbeat_stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="gence-db-heartbeat", daemon=True)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        self._heartbeat = None

    def _beat(self) -> None:
        conn = self._connect()  # its own connection: the main thread may be inside a transaction
        try:
            while not self._heartbeat_stop.wait(self.lease_seconds / 4):
                with self._claimed_lock:
                    keys = list(self._claimed)
                for key in keys:
                    try:
                        conn.execute("UPDATE runs SET lease_until=? WHERE key=? AND owner=? AND status='running'",
                                     (time.time() + self.lease_seconds, key, self.owner))
                    except sqlite3.OperationalError:  # busy for a whole timeout: try again next beat
                        pass
        finally:
            conn.close()

    # ------------------------------------------------------------------------------------------ reads
    def statuses(self, keys: list[str] | None = None) -> dict[str, str]:
        rows = self.conn.execute("SELECT key, status FROM runs").fetchall()
        out = {r["key"]: r["status"] for r in rows}
        if keys is not None:
            wanted = set(keys)
            out = {k: v for k, v in out.items() if k in wanted}
        return out

    def states(self, keys: list[str] | set[str]) -> dict[str, tuple[str, dict | None]]:
        """key -> (status, metrics) for the stored ones of ``keys`` (what tuning needs)."""
        keys = sorted(set(keys))
        out = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self.conn.execute(f"SELECT key, status, metrics FROM runs WHERE key IN "
                                     f"({', '.join('?' for _ in chunk)})", chunk).fetchall()
            for r in rows:
                out[r["key"]] = (r["status"], _loads(r["metrics"]))
        return out

    def runs(self, status: str | None = "done") -> list[dict]:
        """Rows as dicts with ``config``, ``metrics`` and ``extras`` decoded from JSON."""
        query = "SELECT * FROM runs" + (" WHERE status=?" if status else "") + " ORDER BY key"
        rows = self.conn.execute(query, (status,) if status else ()).fetchall()
        out = []
        for row in rows:
            d = dict(row)
            for col in ("config", "metrics", "extras"):
                d[col] = _loads(d[col])
            out.append(d)
        return out

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status")}

    def add_grid(self, name: str, path: str | None, text: str) -> None:
        sha = hashlib.sha256(text.encode()).hexdigest()
        with self.transaction() as cur:
            cur.execute("INSERT OR IGNORE INTO grids VALUES (?, ?, ?, ?, ?)", (sha, name, path, text, utcnow()))

    def grids(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM grids ORDER BY added_at, rowid")]  # ties: stored order

    def integrity_check(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    # ------------------------------------------------------------------------------------------ merge
    def adopt(self, row: dict, *, label: str, grid: str | None, source: str) -> bool:
        """Store ``row``, a done run of another database (:func:`done_runs`), as this database's run of
        the same key, under this grid's ``label`` and block ``grid``: its result is kept as it was (metrics,
        history, hardware, versions, times), and ``extras["copied_from"]`` says where it came from
        (``source``, the block and label it had there). Only where this database has no result for the key
        (absent, failed, or a stale claim); returns whether it stored it."""
        now = time.time()
        extras = _loads(row["extras"])
        if isinstance(extras, dict):
            extras = {**extras, "copied_from": {"db": source, "grid": row["grid"], "label": row["label"]}}
        values = {**row, "label": label, "grid": grid, "extras": canonical_json(extras), "owner": None,
                  "lease_until": None}
        with self.transaction() as cur:
            mine = cur.execute("SELECT status, owner, lease_until FROM runs WHERE key=?", (row["key"],)).fetchone()
            if mine is not None and (mine["status"] == "done"
                                     or (mine["status"] == "running" and not self._stale(mine, now))):
                return False
            cur.execute(_STORE_ROW, tuple(values[c] for c in _RUN_COLUMNS))
        return True

    def merge_from(self, other: str | os.PathLike) -> dict[str, int]:
        """Copy runs and grids from another database file.

        Per key: a done run wins over failed/running/absent; between two done runs the one already here
        is kept (counted as ``conflicts`` when their metrics differ); a failed run replaces only absence
        or a stale running claim. Returns counts of what happened."""
        if Path(other).exists() and Path(other).resolve() == self.path.resolve():
            raise ValueError(f"merge: cannot merge {other} into itself")
        rows, grids = read_database(other, "merge")
        stats = {"added": 0, "replaced": 0, "kept": 0, "conflicts": 0, "skipped_running": 0}
        with self.transaction() as cur:
            for row in rows:
                if row["status"] == "running":
                    stats["skipped_running"] += 1  # an unfinished run is nothing to merge
                    continue
                mine = cur.execute("SELECT status, metrics FROM runs WHERE key=?", (row["key"],)).fetchone()
                if mine is None:
                    action = "added"
                elif mine["status"] == "done":
                    if row["status"] == "done" and not _same_metrics(mine["metrics"], row["metrics"]):
                        stats["conflicts"] += 1
                    action = "kept"
                elif row["status"] == "done" or mine["status"] == "running":
                    action = "replaced"
                else:
                    action = "kept"
                stats[action] += 1
                if action != "kept":
                    cur.execute(_STORE_ROW, tuple(row))
            for g in grids:
                cur.execute("INSERT OR IGNORE INTO grids VALUES (?, ?, ?, ?, ?)", tuple(g))
        return stats


def _same_metrics(a: str | None, b: str | None) -> bool:
    da, db = _loads(a) or {}, _loads(b) or {}
    if da.keys() != db.keys():
        return False
    for k in da:
        x, y = da[k], db[k]
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True
