"""Tables, paired statistics and plots from a results database; ``gence report``.

    from gence.report import write_report
    write_report("runs/gence.sqlite", "report")            # report/README.md, tables/*.csv, plots/*.png

The pieces are reusable: :func:`gence.report.tables.load_results` groups the stored runs and picks each
loss's swept setting on validation; ``extra_sections`` adds generated sections (e.g. a verdict).
"""
from gence.report.stats import PairedResult, paired_comparison
from gence.report.tables import Results, load_results
from gence.report.writer import Report, write_report

__all__ = ["write_report", "Report", "load_results", "Results", "paired_comparison", "PairedResult"]
