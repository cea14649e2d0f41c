"""Every metric the report reads, in one place: the stored metric names (``METRIC``), how each is shown
(``Column``: header, scale, direction, digits) and its equivalence margin for the verdict.

Point ``METRIC`` at the run contract's metric schema to rename a metric; add a column here to show one.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

# stored metric key per name the report uses
METRIC = {
    "error": "test/error", "nll": "test/nll", "ece": "test/ece", "adaece": "test/adaece",
    "classwise_ece": "test/classwise_ece", "ece_ts": "test_ts/ece",
    "acc_many": "test/acc_many", "acc_medium": "test/acc_medium", "acc_few": "test/acc_few",
    "never_predicted": "test/never_predicted", "val_error": "val/error", "val_nll": "val/nll",
    "val_ece": "val/ece", "train_error": "train/error", "train_loss": "train/loss",
    "train_loss_floor": "train/loss_floor",
}
# extras["history"]: one dict per epoch; the epochs with a validation evaluation also have HISTORY_PROGRESS
# (fraction of all training steps done, in (0, 1]) and the validation metrics METRIC["val_error"], ...
HISTORY = "history"
HISTORY_PROGRESS = "progress"
# losses whose targets are not one-hot: ``train/loss_floor`` (the loss at certain, right logits) is not their
# floor (gence.report.convergence.loss_floor computes it)
SOFT_TARGET_LOSSES = ("label_smoothing",)
# measurements of the machine, not of the model: left out when telling whether two runs gave the same numbers
TIMING_METRICS = ("train/seconds", "train/images_per_second")
OOD_PREFIX = "ood/"            # ood/<set>/<score>/<stat>
OOD_SCORE = "msp"
OOD_STATS = ("auroc", "fpr95")
RELIABILITY_SPLITS = ("test", "test_ts")   # extras["reliability"][split]: bins of the reliability diagram


def ood_key(ood_set: str, stat: str, score: str = OOD_SCORE) -> str:
    return f"{OOD_PREFIX}{ood_set}/{score}/{stat}"


def ood_sets(metrics: Mapping[str, float]) -> set[str]:
    return {k.split("/")[1] for k in metrics if k.startswith(OOD_PREFIX)}


@dataclasses.dataclass(frozen=True)
class Column:
    name: str                                  # header in Markdown
    key: str                                   # short name in CSV and in a [verdict] table's margins
    value: Callable[[dict], float]             # metric of one run (metrics dict -> float)
    scale: float = 1.0                         # 100 for percentages in Markdown
    higher_is_better: bool = False
    digits: int = 2
    margin: float = math.nan                   # equivalence margin, raw units (NaN: no equivalence test)

    @property
    def unit(self) -> str:
        return "pp" if self.scale == 100 else ""


def metric(name: str) -> Callable[[dict], float]:
    """The value of stored metric ``name`` in a run's metrics (NaN when absent)."""
    return lambda m: float(m.get(name, math.nan))


def ood_mean(stat: str, score: str = OOD_SCORE) -> Callable[[dict], float]:
    """Mean of ``ood/<set>/<score>/<stat>`` over a run's OOD sets (NaN without any)."""
    def value(m: dict) -> float:
        vals = [v for k, v in m.items() if k.startswith(OOD_PREFIX) and k.endswith(f"/{score}/{stat}")]
        return float(sum(vals) / len(vals)) if vals else math.nan
    return value


PP = 0.005   # half a percentage point
ERROR = Column("error %", "error", metric(METRIC["error"]), 100, margin=PP)
NLL = Column("NLL", "nll", metric(METRIC["nll"]), 1, digits=3, margin=0.02)
ECE = Column("ECE %", "ece", metric(METRIC["ece"]), 100, margin=PP)
ADAECE = Column("AdaECE %", "adaece", metric(METRIC["adaece"]), 100, margin=PP)
CWECE = Column("cw-ECE %", "classwise_ece", metric(METRIC["classwise_ece"]), 100, margin=PP)
ECE_TS = Column("ECE after TS %", "ece_ts", metric(METRIC["ece_ts"]), 100, margin=PP)
OOD_AUROC = Column("OOD AUROC %", "ood_auroc", ood_mean("auroc"), 100, higher_is_better=True, margin=PP)
OOD_FPR95 = Column("OOD FPR95 %", "ood_fpr95", ood_mean("fpr95"), 100, margin=0.01)
ACC_MANY = Column("many acc %", "acc_many", metric(METRIC["acc_many"]), 100, higher_is_better=True)
ACC_MEDIUM = Column("medium acc %", "acc_medium", metric(METRIC["acc_medium"]), 100, higher_is_better=True)
ACC_FEW = Column("few acc %", "acc_few", metric(METRIC["acc_few"]), 100, higher_is_better=True, margin=PP)

MAIN_COLUMNS = (ERROR, NLL, ECE, ADAECE, CWECE, ECE_TS, OOD_AUROC, OOD_FPR95)
LONG_TAILED_COLUMNS = (ACC_MANY, ACC_MEDIUM, ACC_FEW)
PAIRED_COLUMNS = (ERROR, NLL, ECE, ECE_TS, OOD_AUROC)     # compared with the baseline seed by seed
COLUMNS = {c.key: c for c in MAIN_COLUMNS + LONG_TAILED_COLUMNS}


def ood_column(ood_set: str, stat: str) -> Column:
    """One OOD set's MSP AUROC or FPR95."""
    return Column(f"{ood_set} {'AUROC' if stat == 'auroc' else 'FPR95'} %", f"ood_{ood_set}_{stat}",
                  metric(ood_key(ood_set, stat)), 100, higher_is_better=stat == "auroc", digits=1,
                  margin=PP if stat == "auroc" else 0.01)


def with_margin(column: Column, margin: float) -> Column:
    return dataclasses.replace(column, margin=margin)
