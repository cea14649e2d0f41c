"""The known-posterior study (`gence properness`): does each loss recover the true p(y|x)?

``run_study`` trains and stores the sweep (its runs are TrainConfigs, trained by ``gence.train.fit`` and
run by ``gence.experiments.run_grid``), ``write_report`` writes docs/properness.md from the stored runs;
``completeness`` holds the task that breaks GenCE's completeness condition.
"""
from gence.properness.report import write_report
from gence.properness.study import (Sweep, default_sweep, posterior_metrics, quick_sweep, run, run_study,
                                    study_config, task_dataset)

__all__ = ["Sweep", "default_sweep", "quick_sweep", "posterior_metrics", "run", "run_study", "study_config",
           "task_dataset", "write_report"]
