"""Sweeps that extend (a grid block's ``extend``), as the runs stored in the database leave them.

Each group's state is :func:`gence.experiments.grid.extension_state` replayed on the stored runs (done or
failed; a run still running counts as missing), the function the runner decides with, so the report says
what the runner decided without any decision being stored: *settled* inside the values swept, *extended*
by k steps then settled inside, **AT EDGE** (the best value is still the smallest or largest value tried
after the last extension: the optimum was not found, the chosen value only bounds it), *undecided* (runs
missing; the runner may still add values) or *cannot decide* (no run has the metric).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from gence.experiments.grid import ExtendGroup, ExtensionState, Grid, RunSpec, extension_state, parse_grid, value_order
from gence.report import tables as T

SETTLED, EXTENDED, AT_EDGE, UNDECIDED, CANNOT = "settled", "extended", "at edge", "undecided", "cannot decide"


def expand_stored(grids: Sequence[dict]) -> tuple[list[Grid], list[str]]:
    """The grid texts stored in a database expanded as the runner does, and one line per text this version
    cannot expand (its runs are then unknown to the report, which goes on without them)."""
    out, unreadable = [], []
    for g in grids:
        try:
            # stored texts ran as they are: an override that matches no run (accepted before) changes nothing
            out.append(parse_grid(g["text"], name=g.get("name"), check_overrides=False))
        except Exception as exc:  # a grid this version cannot expand: counted as unknown, not fatal
            unreadable.append(f"{g.get('name')}: {str(exc).splitlines()[0][:200]}")
    return out, unreadable


def stored_states(results: T.Results) -> dict[str, tuple[str, dict | None]]:
    """key -> (status, metrics) of every stored done or failed benchmark run: the rows
    :func:`~gence.experiments.grid.extension_state` reads (as the runner's ``ResultsDB.states``)."""
    rows: dict[str, tuple[str, dict | None]] = {f["key"]: ("failed", f.get("metrics")) for f in results.failed}
    rows.update({r.key: ("done", r.metrics) for r in list(results.runs) + list(results.tuning_runs)})
    return rows


@dataclasses.dataclass(frozen=True)
class SweepExtension:
    """One :class:`~gence.experiments.grid.ExtendGroup` and its state on the stored runs."""

    group: ExtendGroup
    state: ExtensionState

    @property
    def field(self) -> str:
        return self.group.extend.field

    @property
    def swept(self) -> list[Any]:
        """The values the grid file lists, in value order."""
        return sorted({v for v, _ in self.group.swept}, key=value_order)

    @property
    def added_runs(self) -> list[tuple[Any, RunSpec]]:
        """(value, run) of every run the extension has added so far (stored or still to run)."""
        swept = {s.key for _, s in self.group.swept}
        return [(v, s) for v, s in self.state.runs if s.key not in swept]

    def steps(self, direction: str) -> int:
        """Values added below the sweep (``"down"``) or above it (``"up"``)."""
        lo, hi = self.swept[0], self.swept[-1]
        return sum(v < lo if direction == "down" else v > hi for v in self.state.added)

    @property
    def kind(self) -> str:
        """:data:`SETTLED`, :data:`EXTENDED`, :data:`AT_EDGE`, :data:`UNDECIDED` or :data:`CANNOT`."""
        st = self.state
        if st.kind == "wait":
            return UNDECIDED
        if st.kind == "failed":
            return CANNOT
        return AT_EDGE if st.at_edge else EXTENDED if st.added else SETTLED


def sweep_extensions(grids: Sequence[Grid], results: T.Results) -> list[SweepExtension]:
    """Every extending group of ``grids`` (expanded from ``results.grids``) with its state on the stored runs,
    in block order (the stored grid files' order), then setting and loss. A group that several stored texts
    define (the same swept runs) is taken from the last text stored (the newest)."""
    groups: dict[tuple, ExtendGroup] = {}
    for grid in grids:
        for g in grid.extensions:
            groups[(g.grid, tuple(s.key for _, s in g.swept))] = g
    if not groups:
        return []
    rows = stored_states(results)
    order = {name: i for i, name in enumerate(T.grid_tunes(results.grids)[1])}

    def sort_key(g: ExtendGroup) -> tuple:
        c = g.config
        return (order.get(g.grid, len(order)), g.grid, T.setting_order((c["dataset"], c["regime"], c["model"])),
                T.label_order(g.label, c.get("loss", "")))
    return [SweepExtension(g, extension_state(g, rows)) for g in sorted(groups.values(), key=sort_key)]
