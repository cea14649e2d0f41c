"""The one selection rule: the candidate with the best mean metric, ties broken by a second metric.

Used by the report (which swept variant of a loss feeds the main tables, and which tuned value the
runner chose) and the runner's tuning (``experiments.grid.choose_value`` calls it), so the value a
report marks as chosen is the value the runner picked, by the same code.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Mapping, Sequence, TypeVar

K = TypeVar("K", bound=Hashable)

TIE_BREAK = "val/nll"


def mean_of(values: Sequence[Any]) -> float:
    """Mean of the values that are numbers and not NaN (``math.fsum``, so the order does not matter);
    NaN when there is none."""
    xs = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(x):
            xs.append(x)
    return math.fsum(xs) / len(xs) if xs else math.nan


def best_candidate(candidates: Mapping[K, Sequence[Mapping[str, Any]]], metric: str,
                   tie_break: str = TIE_BREAK, order: Callable[[K], Any] | None = None) -> K | None:
    """The candidate whose runs (``candidate -> [metrics dict, ...]``) have the lowest mean ``metric``;
    ties: the lowest mean ``tie_break`` (a candidate without it loses the tie), then the smallest
    ``order(candidate)`` (default: the candidate itself). None when no run of any candidate has the metric."""
    order = order or (lambda k: k)
    scored = []
    for cand, runs in candidates.items():
        primary = mean_of([(m or {}).get(metric) for m in runs])
        if math.isnan(primary):
            continue
        tie = mean_of([(m or {}).get(tie_break) for m in runs])
        scored.append(((primary, math.isnan(tie), 0.0 if math.isnan(tie) else tie, order(cand)), cand))
    if not scored:
        return None
    return min(scored, key=lambda sc: sc[0])[1]
