"""`gence properness`: run the known-posterior study (resumable) and write its report next to the database
(``--out`` elsewhere; the committed page is ``--db results/properness.sqlite --out docs/properness.md``)."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from gence.experiments.db import ResultsDB, database_problem
from gence.properness.report import study_rows, write_report
from gence.properness.study import default_sweep, quick_sweep, run_study


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "properness",
        help="does each loss recover the true posterior? (Gaussian data, known p(y|x))",
        description="Train an MLP per loss on Gaussian class-conditional data with a known posterior, "
                    "sweeping training-set size, batch size and learning rate, plus a task that "
                    "violates GenCE's completeness condition; store the runs in the results database "
                    "(runs already there are skipped) and write the report with its plots.")
    p.add_argument("--db", default="runs/gence.sqlite",
                   help="results database (default: %(default)s, shared with `gence bench`)")
    p.add_argument("--out", default=None,
                   help="report file; plots go to the folder of the same name without .md (default: "
                        "properness.md, or properness-quick.md with --quick, in the folder of --db)")
    p.add_argument("--quick", action="store_true",
                   help="a seconds-long version of the sweep (1 seed, few settings, few steps)")
    p.add_argument("--workers", type=int, default=2,
                   help="parallel processes, 1 torch thread each (default: %(default)s)")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from the database")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print(f"gence properness: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.report_only:
        problem = database_problem(args.db)
        if problem is None:
            with ResultsDB(args.db) as db:
                if not study_rows(db):
                    problem = "holds no run of the properness study; run `gence properness` without --report-only"
        if problem is not None:
            print(f"gence properness: --report-only --db {args.db}: {problem}", file=sys.stderr)
            return 2
    sweep = quick_sweep() if args.quick else default_sweep()
    out = args.out or str(Path(args.db).parent / ("properness-quick.md" if args.quick else "properness.md"))
    command = "gence properness" + (" --quick" if args.quick else "")
    if args.db != "runs/gence.sqlite":
        command += f" --db {shlex.quote(args.db)}"
    if args.out is not None:
        command += f" --out {shlex.quote(args.out)}"
    t0 = time.perf_counter()
    if not args.report_only:
        stats = run_study(sweep, db_path=args.db, workers=args.workers, progress=not args.no_progress,
                          retry_failed=args.retry_failed)
        print(f"properness: {stats['ran']} runs trained ({stats['failed']} failed), "
              f"{stats['total'] - stats['ran']} already stored, {stats['seconds']:.0f} s")
    path = write_report(args.db, out, sweep=sweep, command=command)
    print(f"properness: report written to {path} ({time.perf_counter() - t0:.0f} s in all)")
    return 0
