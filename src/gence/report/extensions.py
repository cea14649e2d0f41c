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


@dataclasses.dataclass(frozen=True)
class Stored:
    """The grid files stored with a set of results, expanded as the runner does."""

    grids: list[Grid]
    unreadable: list[str]              # one line per stored text this version cannot expand
    sweeps: list["SweepExtension"]     # their extending sweeps' states on the stored runs


def stored(results: T.Results) -> Stored:
    """:func:`expand_stored` of ``results.grids`` and :func:`sweep_extensions` on them, computed once per
    loaded results (a report's verdict and its sections read the same)."""
    if "stored" not in results.memo:
        grids, unreadable = expand_stored(results.grids)
        results.memo["stored"] = Stored(grids, unreadable, sweep_extensions(grids, results))
    return results.memo["stored"]


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
        return self.state.outcome

    @property
    def state_text(self) -> str:
        """The state in a few words, with the edge value and the steps taken."""
        st, kind, field = self.state, self.kind, self.field
        if kind == UNDECIDED:
            return f"undecided: {st.total - st.finished} of {st.total} runs missing"
        if kind == CANNOT:
            return st.message
        if kind == SETTLED:
            return "settled inside the values swept"
        directions = [d for d in ("down", "up") if self.steps(d)]
        if kind == EXTENDED:
            return f"extended by {len(st.added)} step(s) {' and '.join(directions)}, then settled inside"
        direction = "down" if st.edge == "low" else "up"
        n = self.steps(direction)
        blocked = self.group.down_blocked if st.edge == "low" else self.group.up_blocked
        why = blocked if blocked and n < self.group.extend.max_steps else f"max_steps = {self.group.extend.max_steps}"
        return (f"**AT EDGE** after {n} step(s) {direction}: {field} = {st.best:g} is the "
                f"{'smallest' if st.edge == 'low' else 'largest'} value tried ({why})")


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


def _values(values: Sequence[Any]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def extensions_summary(sweeps: Sequence[SweepExtension]) -> str:
    """One sentence counting the sweeps per state ("" when there are none)."""
    if not sweeps:
        return ""
    n = {k: sum(s.kind == k for s in sweeps) for k in (SETTLED, EXTENDED, AT_EDGE, UNDECIDED, CANNOT)}
    blocks = ", ".join(f"`{b}`" for b in dict.fromkeys(s.group.grid for s in sweeps))
    parts = [f"{n[SETTLED]} settled inside the values swept", f"{n[EXTENDED]} extended, then settled inside",
             f"{n[AT_EDGE]} AT EDGE after their last extension", f"{n[UNDECIDED]} undecided (runs missing)"]
    if n[CANNOT]:
        parts.append(f"{n[CANNOT]} cannot decide (no run has the metric)")
    text = (f"{len(sweeps)} sweep(s) may extend (blocks {blocks}; the runner adds values while the best one is the "
            f"smallest or largest tried): " + ", ".join(parts) + ".")
    if n[AT_EDGE]:
        text += (" At an edge the optimum was not found: the chosen value is the best of the values tried and "
                 "the best one may lie beyond them.")
    return text


def extensions_table(sweeps: Sequence[SweepExtension]) -> str:
    """Per sweep: block, dataset, regime, model, loss, values swept, values added, chosen value, state."""
    fields = sorted({s.field for s in sweeps})
    what = fields[0] if len(fields) == 1 else "value"
    rows = [[s.group.grid, s.group.config["dataset"], s.group.config["regime"], s.group.config["model"], s.group.label,
             _values(s.swept), _values(s.state.added) or "none",
             f"{s.state.best:g}" if s.state.kind == "settled" else "", s.state_text] for s in sweeps]
    return T.markdown_table(["block", "dataset", "regime", "model", "loss", f"{what} swept", "added", "chosen",
                             "state"], rows, ["l"] * 5 + ["r"] * 3 + ["l"])


def extensions_markdown(sweeps: Sequence[SweepExtension]) -> str:
    """The summary sentence and the table ("" when no block extends)."""
    if not sweeps:
        return ""
    return extensions_summary(sweeps) + "\n\n" + extensions_table(sweeps)
