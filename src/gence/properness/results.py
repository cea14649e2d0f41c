"""The properness study's runs in the benchmark's results database (``gence.experiments.db``).

Each run is one row of the same ``runs`` table the benchmark uses, keyed by ``run_key`` of its resolved
config; the rows are told apart by ``grid = 'properness'`` and ``config["study"] = "properness"``, and
their configs have no ``dataset`` / ``regime`` / ``model`` fields, so queries on those columns for the
benchmark do not pick them up.
"""
from __future__ import annotations

from gence.experiments.db import ResultsDB, hardware_string, run_key

GRID = "properness"

__all__ = ["GRID", "open_db", "study_rows", "run_key", "hardware_string"]


def open_db(path) -> ResultsDB:
    return ResultsDB(path)


def study_rows(db: ResultsDB) -> list[dict]:
    """Finished properness runs: dicts with ``config``, ``metrics``, ``wall_seconds``, ``hardware``..."""
    return [r for r in db.runs("done") if r["grid"] == GRID
            and isinstance(r["config"], dict) and r["config"].get("study") == GRID]
