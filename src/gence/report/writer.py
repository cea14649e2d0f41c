"""The report: Markdown, CSV and PNG written from a results database by code, nothing typed by hand.

:func:`write_report` loads the results once and joins a list of sections (:mod:`gence.report.sections`,
default :data:`~gence.report.sections.DEFAULT_SECTIONS`); each section is a function of a
:class:`~gence.report.sections.Context` returning Markdown, and writes its CSV and PNG files through it.
"""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Sequence

from gence.report import sections as S
from gence.report import tables as T


@dataclasses.dataclass
class Report:
    markdown_path: Path
    markdown: str
    summary: str              # the summary tables (what `gence bench` prints)
    files: list[Path]         # every file written
    results: "T.Results"


def write_report(db_path: str | Path, out_dir: str | Path, *, title: str = "gence benchmark report",
                 sections: Sequence[S.Section] | None = None, markdown_path: str | Path | None = None,
                 command: str | None = None, select_by: str = T.DEFAULT_SELECT_BY,
                 with_plots: bool = True, see_also: Sequence[tuple[str, str | Path]] = ()) -> Report:
    """Write the Markdown report (default ``out_dir/README.md``), CSV tables under ``out_dir/tables`` and PNGs
    under ``out_dir/plots`` from the done runs of ``db_path``.

    ``sections``: the sections in order (default :data:`gence.report.sections.DEFAULT_SECTIONS`; a verdict:
    :func:`gence.report.sections.with_verdict`). ``markdown_path``: write the Markdown there instead (links
    are relative to its folder, e.g. ``RESULTS.md`` at the repository root with plots and tables under
    ``results/``). ``command``: the command shown as the way to regenerate the report (default: ``gence
    report DB -o OUT_DIR``). ``select_by``: validation metric that picks each loss's swept setting.
    ``with_plots=False`` skips the PNGs. ``see_also``: (text, path) of related pages, linked under the title."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = Path(markdown_path) if markdown_path is not None else out_dir / "README.md"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    results = T.load_results(db_path, select_by=select_by)
    cmd = command or f"gence report {shlex.quote(str(db_path))} -o {shlex.quote(str(out_dir))}"
    ctx = S.Context(results=results, db_path=str(db_path), title=title, command=cmd, plots_dir=out_dir / "plots",
                    tables_dir=out_dir / "tables", link_dir=md_path.parent, with_plots=with_plots,
                    see_also=[(text, Path(path)) for text, path in see_also])
    parts = [section(ctx) for section in (S.DEFAULT_SECTIONS if sections is None else sections)]
    text = "\n\n".join(p.strip() for p in parts if p and p.strip()) + "\n"
    md_path.write_text(text)
    return Report(markdown_path=md_path, markdown=text, summary=S.summary_text(results), files=[md_path, *ctx.files],
                  results=results)
