"""The known-posterior study (`gence properness`): does each loss recover the true p(y|x)?

``run_study`` trains and stores the sweep, ``write_report`` writes docs/properness.md from the stored
runs; ``completeness`` holds the task that breaks GenCE's completeness condition.
"""
from gence.properness.study import (RunConfig, Sweep, default_sweep, posterior_metrics, quick_sweep,
                                    run_one, run_study)

__all__ = ["RunConfig", "Sweep", "default_sweep", "quick_sweep", "posterior_metrics", "run_one",
           "run_study", "write_report"]


def write_report(*args, **kwargs):
    from gence.properness.report import write_report as _write

    return _write(*args, **kwargs)
