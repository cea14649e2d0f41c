"""``gence report DB -o DIR``: the report of a results database; ``--verdict`` adds the verdict, configured
by a grid file's ``[verdict]`` table (the file given, or the grid files stored in the database)."""
from __future__ import annotations

import argparse
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any, Mapping, Sequence

from gence.experiments.db import database_problem
from gence.report.convergence import ConvergenceError, ConvergenceSpec
from gence.report.opening import opening_section
from gence.report.sections import DEFAULT_SECTIONS, with_pilot, with_verdict
from gence.report.tables import DEFAULT_SELECT_BY, load_results
from gence.report.verdict import VerdictError, VerdictSpec, pilot_settings, spec_from_grids, verdict_sections
from gence.report.writer import Report, write_report

DEFAULT_TITLE = "gence benchmark report"
VERDICT_TITLE = "Does GenCE deliver what its paper claims? Results of the study"
FROM_DB = ""   # --verdict without a file: the [verdict] table of the grid files stored in the database


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
    p.add_argument("--verdict", nargs="?", const=FROM_DB, default=None, metavar="GRID",
                   help="add the study's progress (runs done per grid block) and one generated section per claim "
                        "with a verdict decided by stated rules, configured by the [verdict] table of GRID (a grid "
                        "TOML file) or, without GRID, of the grid files stored in the database")
    p.add_argument("--convergence", default=None, metavar="GRID",
                   help="judge the convergence pilot (runs that differ only in epochs, E and 2E) by the "
                        "[convergence] table of GRID instead of that of the grid files stored in the database")
    p.add_argument("--see-also", action="append", default=[], metavar="TEXT=PATH",
                   help="link a related page under the title, e.g. 'its pilot=results/pilot/README.md' (repeatable; "
                        "the link is made relative to the Markdown file)")
    p.add_argument("--select-by", default=DEFAULT_SELECT_BY,
                   help=f"validation metric that picks each loss's best swept setting (default: {DEFAULT_SELECT_BY})")
    p.set_defaults(func=report_main)


def missing_dependency() -> str | None:
    """What the report needs that is not installed (its plots need matplotlib), as a line to print, or None;
    checked before anything runs, so a benchmark never trains for a report it cannot write."""
    try:
        import matplotlib.figure  # noqa: F401  (imported here only to check; the plots import it where used)
    except ImportError:
        return ("the report's plots need matplotlib, which is not installed here: pip install matplotlib "
                "(it is a dependency of gence; a partial install lacks it)")
    return None


def command_line(args: argparse.Namespace) -> str:
    """The command that writes this report again: what was asked, defaults left out."""
    parts = ["gence", "report", args.db, "-o", args.out]
    if args.markdown:
        parts += ["--markdown", args.markdown]
    elif args.filename != "README.md":
        parts += ["--filename", args.filename]
    if args.verdict is not None:
        parts += ["--verdict"] + ([args.verdict] if args.verdict else [])
    if args.convergence is not None:
        parts += ["--convergence", args.convergence]
    if args.title is not None:
        parts += ["--title", args.title]
    if args.select_by != DEFAULT_SELECT_BY:
        parts += ["--select-by", args.select_by]
    for item in args.see_also:
        parts += ["--see-also", item]
    return shlex.join(parts)


def table_of(path: str | Path, name: str, error: type[ValueError] = VerdictError) -> Mapping[str, Any]:
    """The ``[name]`` table of a grid TOML file (``error`` raised, naming ``--name PATH``, when it has none)."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise error(f"--{name} {path}: cannot read a grid TOML file: {exc}") from None
    if name not in doc:
        raise error(f"--{name} {path}: the file has no [{name}] table")
    return doc[name]


def verdict_table_of(path: str | Path) -> Mapping[str, Any]:
    """The ``[verdict]`` table of a grid TOML file."""
    return table_of(path, "verdict")


def write_for(db: str | Path, out: str | Path, *, verdict_table: Mapping[str, Any] | None = None,
              verdict_spec: VerdictSpec | None = None, title: str | None = None, markdown_path: str | Path | None = None,
              select_by: str | None = None, command: str | None = None,
              convergence_spec: ConvergenceSpec | None = None,
              see_also: Sequence[tuple[str, str | Path]] = ()) -> Report:
    """The report of ``db``, with the verdict when a ``[verdict]`` table or spec is given (what ``gence report``
    and ``gence bench`` write); ``convergence_spec`` judges the convergence pilot instead of the stored grid
    files' ``[convergence]`` table."""
    spec = verdict_spec or (VerdictSpec.from_table(verdict_table) if verdict_table is not None else None)
    base = with_pilot(convergence_spec) if convergence_spec is not None else list(DEFAULT_SECTIONS)
    sections = (with_verdict(verdict_sections(spec), base, opening=[opening_section(spec)]) if spec is not None
                else base)
    return write_report(db, out, title=title or (VERDICT_TITLE if spec is not None else DEFAULT_TITLE),
                        sections=sections, markdown_path=markdown_path, command=command,
                        select_by=select_by or DEFAULT_SELECT_BY, see_also=see_also)


def report_main(args: argparse.Namespace) -> int:
    problem = database_problem(args.db)
    if problem is None and (missing := missing_dependency()) is not None:
        print(f"gence report: {missing}", file=sys.stderr)
        return 1
    if problem is not None:
        print(f"gence report: {args.db}: {problem}; expected a results database written by `gence bench`",
              file=sys.stderr)
        return 2
    spec = None
    try:
        if args.verdict == FROM_DB:
            spec = spec_from_grids(load_results(args.db).grids)
            if spec is None:
                raise VerdictError(f"--verdict: no grid file stored in {args.db} has a [verdict] table; pass the "
                                   "grid file: --verdict GRID.toml")
        elif args.verdict is not None:
            spec = VerdictSpec.from_table(verdict_table_of(args.verdict), f"{args.verdict}: [verdict]")
        if spec is not None:
            pilot_settings(spec)   # a [verdict].pilot database that is missing or has no rule: said here
        pilot = (ConvergenceSpec.from_table(table_of(args.convergence, "convergence", ConvergenceError),
                                            f"{args.convergence}: [convergence]")
                 if args.convergence is not None else None)
    except (VerdictError, ConvergenceError) as exc:
        print(f"gence report: {exc}", file=sys.stderr)
        return 2
    see_also = []
    for item in args.see_also:
        text, sep, path = item.partition("=")
        if not sep or not text or not path:
            print(f"gence report: --see-also {item!r}: expected TEXT=PATH, e.g. 'the pilot=results/pilot/README.md'",
                  file=sys.stderr)
            return 2
        see_also.append((text, path))
    markdown = Path(args.markdown) if args.markdown else Path(args.out) / args.filename
    report = write_for(args.db, args.out, verdict_spec=spec, title=args.title, markdown_path=markdown,
                       select_by=args.select_by, command=command_line(args), convergence_spec=pilot,
                       see_also=see_also)
    print(report.summary)
    print(f"gence report: {len(report.files)} files written; open {report.markdown_path}", file=sys.stderr)
    return 0
