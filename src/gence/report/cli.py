"""``gence report DB -o DIR``: the report of a results database; ``--verdict`` adds the study's verdict."""
from __future__ import annotations

import argparse
import shlex
import sys

DEFAULT_TITLE = "gence benchmark report"
VERDICT_TITLE = "Does GenCE deliver what its paper claims? Results of the study"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write Markdown and CSV tables and PNG plots from a results database",
        description="Tables per dataset, regime and model (mean ± std over seeds), paired comparisons with "
                    "CE, plots, and a header with configs, versions, hardware and compute time. With --verdict, "
                    "also the study's progress against its grid and a generated verdict per claim.")
    p.add_argument("db", nargs="?", default="runs/gence.sqlite", help="results database (default: runs/gence.sqlite)")
    p.add_argument("-o", "--out", default="report", help="output directory for tables/ and plots/ (default: report)")
    p.add_argument("--title", default=None, help="title of the Markdown report")
    p.add_argument("--filename", default="README.md", help="name of the Markdown file in --out (default: README.md)")
    p.add_argument("--markdown", default=None, metavar="PATH",
                   help="write the Markdown to PATH instead of OUT/FILENAME; its links are relative to PATH's folder "
                        "(e.g. --markdown RESULTS.md -o results)")
    p.add_argument("--verdict", action="store_true",
                   help="add the study's progress (runs done per grid block) and one generated section per claim "
                        "with a verdict decided by stated rules (gence.report.verdict)")
    p.add_argument("--select-by", default="val/error",
                   help="validation metric that picks each loss's best swept setting (default: val/error)")
    p.set_defaults(func=report_main)


def command_line(args: argparse.Namespace) -> str:
    """The command that writes this report again: what was asked, defaults left out."""
    parts = ["gence", "report", args.db, "-o", args.out]
    if args.markdown:
        parts += ["--markdown", args.markdown]
    elif args.filename != "README.md":
        parts += ["--filename", args.filename]
    if args.verdict:
        parts.append("--verdict")
    if args.title is not None:
        parts += ["--title", args.title]
    if args.select_by != "val/error":
        parts += ["--select-by", args.select_by]
    return shlex.join(parts)


def report_main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gence.report import write_report

    if not Path(args.db).exists():
        print(f"gence report: results database {args.db} does not exist", file=sys.stderr)
        return 2
    title = args.title or (VERDICT_TITLE if args.verdict else DEFAULT_TITLE)
    preamble = sections = None
    if args.verdict:
        from gence.report.verdict import build_verdict

        cache: dict = {}

        def verdict(results):
            if "v" not in cache:
                md = Path(args.markdown) if args.markdown else Path(args.out) / args.filename
                cache["v"] = build_verdict(results, plots_dir=Path(args.out) / "plots", link_dir=md.parent)
            return cache["v"]

        preamble = lambda results: verdict(results).preamble  # noqa: E731
        sections = lambda results: verdict(results).sections  # noqa: E731
    report = write_report(args.db, args.out, title=title, filename=args.filename, select_by=args.select_by,
                          markdown_path=args.markdown, preamble=preamble, extra_sections=sections,
                          command=command_line(args))
    print(report.summary)
    print(f"gence report: {len(report.files)} files written; open {report.markdown_path}", file=sys.stderr)
    return 0
