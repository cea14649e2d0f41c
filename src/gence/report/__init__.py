"""The report: Markdown, CSV and PNG written from a results database by code; ``gence report``.

    from gence.report import write_report
    write_report("runs/gence.sqlite", "report")            # report/README.md, tables/*.csv, plots/*.png

The report is a list of sections (:mod:`gence.report.sections`), each a function of the results loaded
once (:func:`gence.report.tables.load_results`); the verdict (:mod:`gence.report.verdict`) is more
sections, configured by a grid file's ``[verdict]`` table. Users analysing their own database call
:func:`gence.report.stats.paired_difference` and :func:`gence.report.stats.pool`.
"""
from gence.report.stats import PairedDifference, Pooled, paired_difference, pool
from gence.report.tables import Results, load_results
from gence.report.writer import Report, write_report

__all__ = ["write_report", "Report", "load_results", "Results", "paired_difference", "PairedDifference",
           "pool", "Pooled"]
