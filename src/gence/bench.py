"""``gence bench``: run a grid into a results database (:mod:`gence.experiments`), then write its report
(:mod:`gence.report`). The composition lives here, above both packages, so neither imports the other; a
grid file's ``[verdict]`` table adds the verdict to the report."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from gence.experiments.cli import add_bench_arguments, run_bench
from gence.report.cli import missing_dependency, write_for
from gence.report.verdict import VerdictError, VerdictSpec, pilot_settings

DEFAULT_REPORT_DIR = "report"


def register(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench", help="run an experiment grid (default: the built-in digits demo) and write its report",
        description="Expand a TOML grid, run every run not yet in the database (resumable; safe to kill "
                    "and restart), print the summary table and write the report (with a verdict when the grid "
                    "has a [verdict] table). Without CONFIG it runs the built-in demo grid (the same as "
                    "configs/demo.toml).")
    add_bench_arguments(bench)
    bench.add_argument("-o", "--out", default=DEFAULT_REPORT_DIR,
                       help=f"report directory (default: {DEFAULT_REPORT_DIR})")
    bench.add_argument("--no-report", action="store_true", help="only run; do not write the report")
    bench.add_argument("--select-by", default=None,
                       help="validation metric that picks each loss's best setting when a grid sweeps "
                            "hyperparameters (default: the report's, val/error)")
    bench.set_defaults(func=bench_main)


def bench_main(args: argparse.Namespace) -> int:
    if not (args.no_report or args.list or args.shard) and (missing := missing_dependency()) is not None:
        print(f"gence bench: {missing}; or pass --no-report to only run", file=sys.stderr)
        return 1
    outcome = run_bench(args)
    if not outcome.complete or args.no_report:
        return outcome.code
    spec = VerdictSpec.from_table(outcome.grid.verdict) if outcome.grid.verdict is not None else None
    if spec is not None and spec.pilot is not None:
        try:
            pilot_settings(spec)
        except VerdictError as exc:   # the runs are stored; the report goes without the pilot's column
            print(f"gence bench: warning: {exc}; the report is written without it", file=sys.stderr)
            spec = dataclasses.replace(spec, pilot=None)
    report = write_for(args.db, args.out, verdict_spec=spec, select_by=args.select_by)
    print(report.summary)
    print(f"gence bench: report written to {report.markdown_path}", file=sys.stderr)
    return outcome.code
