"""Experiment grids in TOML, a resumable parallel runner, and the SQLite results database.

    from gence.experiments import load_grid, run_grid
    grid = load_grid("configs/demo.toml")
    run_grid(grid.runs, "runs/gence.sqlite", workers=2)
"""
from gence.experiments.db import ResultsDB, run_key
from gence.experiments.grid import Grid, GridError, RunSpec, load_demo_grid, load_grid, parse_grid, shard
from gence.experiments.runner import RunnerSummary, run_grid

__all__ = ["ResultsDB", "run_key", "Grid", "GridError", "RunSpec", "load_grid", "load_demo_grid", "parse_grid",
           "shard", "run_grid", "RunnerSummary"]
