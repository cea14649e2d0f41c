"""``gence report DB -o DIR``: the report of a results database."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write Markdown and CSV tables and PNG plots from a results database",
        description="Tables per dataset, regime and model (mean ± std over seeds), paired comparisons with "
                    "CE, plots, and a header with configs, versions, hardware and compute time.")
    p.add_argument("db", nargs="?", default="runs/gence.sqlite", help="results database (default: runs/gence.sqlite)")
    p.add_argument("-o", "--out", default="report", help="output directory (default: report)")
    p.add_argument("--title", default="gence benchmark report", help="title of the Markdown report")
    p.add_argument("--filename", default="README.md", help="name of the Markdown file (default: README.md)")
    p.add_argument("--select-by", default="val/error",
                   help="validation metric that picks each loss's best swept setting (default: val/error)")
    p.set_defaults(func=report_main)


def report_main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gence.report import write_report

    if not Path(args.db).exists():
        print(f"gence report: results database {args.db} does not exist", file=sys.stderr)
        return 2
    report = write_report(args.db, args.out, title=args.title, filename=args.filename, select_by=args.select_by)
    print(report.summary)
    print(f"gence report: {len(report.files)} files written; open {report.markdown_path}", file=sys.stderr)
    return 0
