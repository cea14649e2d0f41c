"""Experiment grids in TOML: expand to a list of fully resolved run configs, validated before any run.

A grid file holds one or more blocks (``[grid]``, or ``[[grid]]`` repeated); each block is the product
datasets x regimes x models x losses x seeds x sweep values, and the file's runs are the union of its
blocks without duplicates (same resolved config = same run). Example::

    [train]                      # shared TrainConfig fields for every run
    epochs = 30
    lr = 0.05
    ood = ["noise"]

    [grid]
    name = "main"
    datasets = ["digits"]        # or {name = "cifar10", params = {...}, ood = [...], data_dir = "..."}
    regimes = ["balanced:10", "balanced:30"]
    models = ["small_cnn"]       # or {name = "resnet", params = {depth = 8}}
    seeds = [0, 1, 2]
    sweep = { lr = [0.01, 0.05] }            # optional: extra axes over TrainConfig fields
    losses = ["ce", { name = "gence", params = { generative_weight = 0.5 }, seeds = [0, 1, 2, 3, 4] }]

    [[override]]                 # optional: settings for the runs that match (later entries win)
    match = { regime = "balanced:10" }
    epochs = 60

    [[override]]                 # model_params are merged into the matching runs' model params
    match = { loss = "ldam" }
    model_params = { head = "cosine" }

Precedence for a run's settings: TrainConfig defaults < ``[train]`` < block ``train`` < loss entry
``train`` < matching ``[[override]]`` entries in file order < sweep values. An override may match the runs
of some blocks only, but one whose ``match`` selects no run of any block is an error (a typo'd value).

A loss entry is a name or a table with ``name``, ``params`` (constructor arguments), ``label`` (display
name; default: the name, with its params when there are any, e.g. ``focal(gamma=3)``), ``seeds`` (replaces
the block's seeds), ``train`` (TrainConfig fields) and ``sweep`` (replaces the block's sweep).

A block may take one field from other blocks' runs instead of fixing or sweeping it::

    tune = { from = ["tune"], field = "lr", metric = "val/error" }     # metric: lower is better (default)

Each of its runs then uses the value of ``field`` with the lowest mean ``metric`` over the done runs of
the ``from`` blocks with the same dataset (params, classes), model (params) and loss (params, label),
pooled over their regimes and seeds; ties go to the lower mean ``val/nll``, then the smaller value.
Failed tuning runs are ignored; when all failed the run cannot be tuned (reported, not run). The value
lands in the resolved config like a sweep value, so a tuned run is the ordinary run with that value (same
key). Such runs are in ``Grid.tuned`` (their candidate runs precomputed), not ``Grid.runs``, and wait
until every tuning run is stored done or failed (see the runner). Checked before any run: ``from`` names
other blocks of the file without ``tune``, each sweeping ``field``; the block itself does not sweep it;
every run has tuning runs; no candidate run is one of its own tuning runs (give the blocks other seeds).

A block that sweeps a field may let the runner extend the sweep while its winner sits at an edge::

    sweep = { lr = [0.025, 0.05, 0.1, 0.2, 0.4] }
    extend = { field = "lr", factor = 2.0, max_steps = 3, metric = "val/error" }   # defaults: 2.0, 3, val/error

The block's runs that differ only in ``field`` and seed form a group (an :class:`ExtendGroup`: same
dataset and params, regime, model and params, loss, params and label, every other setting). Once every run
of a group's values is stored done or failed, the best value is chosen as ``tune`` chooses
(:func:`choose_value`: lowest mean ``metric`` over the done runs, ties by val/nll then the smaller value;
failed runs ignored). If it is the smallest value tried, the runner adds runs at smallest / ``factor``
(one per seed of the group); if the largest, at largest * ``factor``; and decides again, until the best is
inside or ``max_steps`` values were added in that direction (or the next value breaks the field's rules,
e.g. momentum >= 1): the final winner is then *at an edge*, which the runner's summary, ``gence bench``
and ``gence bench --list`` say (``AT EDGE``), and which anyone can recompute with
:func:`extension_state` (e.g. a report from the grid text stored in the database). A value whose runs
all failed (a diverging lr) is tried but never wins, so it bounds the search. Added values are rounded
to 12 significant digits (0.1 x 3 is 0.3), and an added run is the ordinary run with that value: the
block's config with it, the key it would have had listed in the sweep, stored under the block's name.
The decision is replayed from the stored runs each time (never stored itself), so a killed runner, a
second worker or a second process never loses or repeats one. Rules, checked before any run: ``field``
is a real-valued TrainConfig field swept by every run of the block, with values > 0 and at least 2 of
them per group; ``factor`` > 1; ``max_steps`` an integer >= 0; a block with ``tune`` cannot extend. A
``tune`` block taking ``from`` an extending block waits until the extension of each group it is tuned on
has settled, and its tuning runs then include the added runs (``TunedSpec.extending``). Groups are in
``Grid.extensions``; under ``--shard`` each group is decided (and its added runs run) by one shard, from
that shard's database, like tuned runs: merge the shard databases and run the shards again until none waits.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import math
import sys
from pathlib import Path
from typing import Any, Iterable

from gence import data, losses, models
from gence.contract import TrainConfig, canonical_json, field_problem, run_key
from gence.selection import TIE_BREAK, best_candidate, mean_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class GridError(ValueError):
    """A grid file that cannot run; the message names the key, the value and what was expected."""


# Fields a grid sets through its axes; [train] may not set them.
AXIS_FIELDS = ("dataset", "dataset_params", "regime", "model", "model_params", "loss", "loss_params", "seed")

TOP_KEYS = {"train": "shared TrainConfig settings", "grid": "one block or an array of blocks",
            "override": "array of conditional settings", "description": "free text",
            "verdict": "table read by the report's verdict (kept as is, not validated here)",
            "convergence": "table read by the report's convergence pilot (kept as is, not validated here)"}
BLOCK_KEYS = ("name", "datasets", "regimes", "models", "losses", "seeds", "sweep", "train", "tune", "extend")
TUNE_KEYS = ("from", "field", "metric")
EXTEND_KEYS = ("field", "factor", "max_steps", "metric")
DEFAULT_EXTEND_FACTOR = 2.0
DEFAULT_EXTEND_MAX_STEPS = 3
EXTEND_DIGITS = 12  # extension values are rounded to this many significant digits (0.1 x 3 is 0.3)
DEFAULT_TUNE_METRIC = "val/error"
TUNE_TIE_BREAK = TIE_BREAK
LOSS_KEYS = ("name", "params", "label", "seeds", "train", "sweep")
DATASET_KEYS = ("name", "params", "ood", "data_dir", "classes")
MODEL_KEYS = ("name", "params")
MATCH_KEYS = ("dataset", "regime", "model", "loss", "label", "seed", "grid")

# Input shapes a model entry is built for when the grid is checked, in this order: (in_channels, image_size).
# A (name, params) is accepted when it builds for one of them (its runs' real shapes are checked when
# they run); when it builds for none, the error of the first is reported as it is.
PROBE_SHAPES = ((3, 32), (1, 28), (1, 8), (2, None))


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run: its resolved TrainConfig as a dict, its key, and where it came from."""

    key: str
    config: dict
    label: str
    grid: str

    @classmethod
    def of(cls, config: TrainConfig | dict, label: str, grid: str) -> "RunSpec":
        """The run of ``config`` (a TrainConfig, validated, or an already resolved dict), keyed by its run key:
        how callers other than a grid file (e.g. the properness study) hand configs to the runner."""
        if isinstance(config, TrainConfig):
            config.validate()
            config = config.to_dict()
        return cls(key=run_key(config), config=config, label=label, grid=grid)


@dataclasses.dataclass(frozen=True)
class TuneSpec:
    """A block's ``tune = { from = [...], field = "lr", metric = "val/error" }``."""

    sources: tuple[str, ...]
    field: str
    metric: str = DEFAULT_TUNE_METRIC


@dataclasses.dataclass(frozen=True)
class ExtendSpec:
    """A block's ``extend = { field = "lr", factor = 2.0, max_steps = 3, metric = "val/error" }``."""

    field: str
    factor: float = DEFAULT_EXTEND_FACTOR
    max_steps: int = DEFAULT_EXTEND_MAX_STEPS
    metric: str = DEFAULT_TUNE_METRIC


@dataclasses.dataclass(frozen=True)
class ExtendGroup:
    """The runs of a block with ``extend`` that differ only in the extended field and the seed.

    ``swept`` holds (value, run) for every run of the sweep; ``down`` and ``up`` the ladder of values the
    runner may add, nearest first (``smallest / factor**k`` and ``largest * factor**k`` for k = 1 ..
    ``max_steps``), each with one run per seed of the group (keyed like an ordinary run with that value).
    A ladder is shorter than ``max_steps`` when its next value is not a valid value of the field
    (``down_blocked`` / ``up_blocked`` say why)."""

    grid: str
    label: str
    extend: ExtendSpec
    seeds: tuple[int, ...]
    swept: tuple[tuple[Any, RunSpec], ...]
    down: tuple[tuple[Any, tuple[RunSpec, ...]], ...]
    up: tuple[tuple[Any, tuple[RunSpec, ...]], ...]
    down_blocked: str = ""
    up_blocked: str = ""

    @property
    def config(self) -> dict:
        """A config of the group (its first swept run's), for display."""
        return self.swept[0][1].config

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key the group's decision may read: swept runs and the whole ladder."""
        return tuple(s.key for _, s in self.swept) + tuple(s.key for _, specs in self.down + self.up
                                                          for s in specs)


@dataclasses.dataclass(frozen=True)
class TunedSpec:
    """A run of a block with ``tune`` whose ``field`` is not known until its tuning runs are finished.

    ``candidates`` holds, for every value of ``field`` found among the tuning runs, the fully resolved run
    with that value (so its key is the key of an ordinary run with that value); ``tuning`` holds the
    (key, value) of every swept run of the ``from`` blocks with the same dataset, model and loss;
    ``extending`` the groups of those runs in ``from`` blocks with ``extend`` (their extension runs join
    the tuning runs once the extension is settled), and ``candidates`` then covers their ladders too."""

    config: dict                              # the first candidate's config (for display)
    label: str
    grid: str
    tune: TuneSpec
    tuning: tuple[tuple[str, Any], ...]
    candidates: tuple[tuple[Any, RunSpec], ...]
    extending: tuple[ExtendGroup, ...] = ()

    @property
    def tuning_keys(self) -> tuple[str, ...]:
        """Every key the tuned value may depend on: the swept tuning runs and the extending groups' runs."""
        return tuple(k for k, _ in self.tuning) + tuple(k for g in self.extending for k in g.keys)


@dataclasses.dataclass
class Grid:
    name: str
    path: str | None
    text: str
    runs: list[RunSpec]                       # ordinary runs (their keys never depend on other runs)
    tuned: list[TunedSpec] = dataclasses.field(default_factory=list)  # runs of blocks with ``tune``
    extensions: list[ExtendGroup] = dataclasses.field(default_factory=list)  # groups of blocks with ``extend``
    verdict: dict | None = None               # the file's [verdict] table, raw (gence.report.verdict reads it)
    blocks: list[str] = dataclasses.field(default_factory=list)  # block names in file order: the runner's order


def _choices(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _names(available) -> list[str]:
    """Names from an ``available()`` that returns a dict (name -> description) or a list."""
    return list(available)


class GridChecks:
    """What a grid is checked against: the names ``gence.losses``, ``gence.models`` and ``gence.data``
    know, whether a loss or model accepts its parameters, and the run contract (``TrainConfig``).

    Not a registry (that is :class:`gence.registry.Registry`): this only asks the packages. Tests or
    users with their own run function can pass a subclass to :func:`load_grid`."""

    def datasets(self) -> list[str]:
        return _names(data.available())

    def models(self) -> list[str]:
        return _names(models.available())

    def losses(self) -> list[str]:
        return _names(losses.available())

    def ood_sets(self) -> list[str]:
        return list(data.ood_names())

    def is_file_reference(self, name: Any) -> bool:
        """A model or OOD name naming code or files ("pkg.module:function", "timm:NAME", "folder:PATH"),
        checked by check_model / when loaded, not against a list of names."""
        return isinstance(name, str) and ":" in name

    def check_regime(self, regime: str) -> None:
        data.parse_regime(regime)

    def check_loss(self, name: str, params: dict) -> None:
        """Build the loss for 10 classes with long-tailed counts (what the class-count losses need)."""
        losses.build(name, num_classes=10, class_counts=[100 - 9 * i for i in range(10)], **params)

    def check_model(self, name: str, params: dict) -> None:
        """Build the model for the shapes of :data:`PROBE_SHAPES`; raise the first shape's error when it
        builds for none of them (an unknown parameter, a bad value: the model's own message)."""
        models.check_params(name, **params)  # unknown names, heads, pinned arguments: no build needed
        first = None
        for in_channels, image_size in PROBE_SHAPES:
            try:
                models.build(name, in_channels=in_channels, num_classes=10, image_size=image_size, **params)
                return
            except (TypeError, ValueError) as exc:
                first = first or exc
        raise first

    def train_fields(self) -> dict[str, Any]:
        """TrainConfig field names with their defaults."""
        return TrainConfig.defaults()

    def resolve(self, config: dict) -> dict:
        """The fully resolved config (defaults filled in, ``TrainConfig.validate`` run)."""
        resolved = TrainConfig.from_dict(config)
        resolved.validate()
        return resolved.to_dict()


def _as_list(value: Any, where: str, *, allow_scalar: bool = True) -> list:
    if isinstance(value, list):
        if not value:
            raise GridError(f"{where}: empty list; give at least one value")
        return value
    if allow_scalar:
        return [value]
    raise GridError(f"{where} = {value!r}: expected a list")


def _check_keys(table: Any, allowed: Iterable[str], where: str) -> None:
    if not isinstance(table, dict):
        raise GridError(f"{where} = {table!r}: expected a table")
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            raise GridError(f"{where}: unknown key {key!r}; valid keys: {', '.join(allowed)}")


def _check_name(value: Any, valid: list[str], where: str) -> str:
    if not isinstance(value, str) or value not in valid:
        raise GridError(f"{where} = {value!r}: unknown name; valid choices: {_choices(valid)}")
    return value


def _format_param(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def default_label(name: str, params: dict) -> str:
    if not params:
        return name
    return f"{name}(" + ",".join(f"{k}={_format_param(v)}" for k, v in sorted(params.items())) + ")"


class _Loader:
    def __init__(self, checks: GridChecks, base_dir: Path | None):
        self.checks = checks
        self.base_dir = base_dir
        self.fields = checks.train_fields()
        self._checked_losses: set[str] = set()
        self._checked_models: set[str] = set()
        self._regimes: set[str] = set()

    # ---------------------------------------------------------------------------------- train settings
    def check_train(self, table: Any, where: str, *, allow_axis: bool = False) -> dict:
        if not isinstance(table, dict):
            raise GridError(f"{where} = {table!r}: expected a table of TrainConfig fields")
        out = {}
        for key, value in table.items():
            if key not in self.fields:
                raise GridError(f"{where}: unknown key {key!r}; valid TrainConfig fields: {_choices(self.fields)}")
            if key in AXIS_FIELDS and not allow_axis:
                raise GridError(f"{where}: {key!r} is set by the grid's axes (datasets, regimes, models, "
                                f"losses, seeds), not in a train table")
            out[key] = self.check_value(key, value, f"{where}.{key}")
        return out

    def check_value(self, key: str, value: Any, where: str) -> Any:
        """One TrainConfig field's value, normalised (``lr = 1`` is ``1.0``, one key; ``data_dir`` relative to
        the grid file; ``ood`` a list) and checked by the contract's rules (:func:`gence.contract.field_problem`)
        and, for ``ood``, against the OOD sets the data package knows."""
        default = self.fields.get(key, dataclasses.MISSING)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # lr = 1 and lr = 1.0 are one run, so one key
        if key == "ood":
            value = _as_list(value, where) if value != [] else []
            valid = self.checks.ood_sets()
            for i, name in enumerate(value):
                if not isinstance(name, str):
                    raise GridError(f"{where}[{i}] = {name!r}: expected a string")
                if name not in valid and not self.checks.is_file_reference(name):
                    raise GridError(f"{where}[{i}] = {name!r}: unknown OOD set; valid choices: {_choices(valid)}")
        if key == "data_dir" and value is not None:
            path = Path(value).expanduser()
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path  # relative to the grid file, like any config that names files
            value = str(path)
        problem = field_problem(key, value)
        if problem is not None:
            raise GridError(f"{where} = {value!r}: {problem}")
        return value

    # ---------------------------------------------------------------------------------------- axes
    def datasets(self, value: Any, where: str) -> list[dict]:
        valid = self.checks.datasets()
        out = []
        for i, entry in enumerate(_as_list(value, where)):
            w = f"{where}[{i}]"
            if isinstance(entry, str):
                entry = {"name": entry}
            _check_keys(entry, DATASET_KEYS, w)
            if "name" not in entry:
                raise GridError(f"{w}: missing 'name'; valid choices: {_choices(valid)}")
            _check_name(entry["name"], valid, f"{w}.name")
            settings = {"dataset": entry["name"], "dataset_params": entry.get("params", {})}
            if not isinstance(settings["dataset_params"], dict):
                raise GridError(f"{w}.params = {settings['dataset_params']!r}: expected a table")
            for key in ("ood", "data_dir", "classes"):
                if key in entry:
                    settings[key] = self.check_value(key, entry[key], f"{w}.{key}")
            out.append(settings)
        return out

    def _named_entry(self, entry: Any, keys: tuple, valid: list[str], kind: str, check, checked: set,
                     errors: tuple, w: str) -> tuple[dict, str, dict]:
        """A model or loss entry (a name, or a table with ``name`` and ``params``), its constructor
        arguments checked once per distinct (name, params)."""
        if isinstance(entry, str):
            entry = {"name": entry}
        _check_keys(entry, keys, w)
        if "name" not in entry:
            raise GridError(f"{w}: missing 'name'; valid choices: {_choices(valid)}")
        name = entry["name"] if self.checks.is_file_reference(entry["name"]) else \
            _check_name(entry["name"], valid, f"{w}.name")
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise GridError(f"{w}.params = {params!r}: expected a table")
        _check_once(kind, name, params, check, checked, errors, f"{w}.params")
        return entry, name, params

    def models(self, value: Any, where: str) -> list[dict]:
        valid = self.checks.models()
        out = []
        for i, entry in enumerate(_as_list(value, where)):
            w = f"{where}[{i}]"
            entry, name, params = self._named_entry(entry, MODEL_KEYS, valid, "model", self.checks.check_model,
                                                    self._checked_models, (TypeError, ValueError), w)
            out.append({"model": name, "model_params": params})
        return out

    def regimes(self, value: Any, where: str) -> list[str]:
        out = []
        for i, regime in enumerate(_as_list(value, where)):
            w = f"{where}[{i}]"
            if not isinstance(regime, str):
                raise GridError(f"{w} = {regime!r}: expected a string such as 'balanced:30' or "
                                f"'long_tailed:100:500'")
            if regime not in self._regimes:
                try:
                    self.checks.check_regime(regime)
                except Exception as exc:
                    raise GridError(f"{w} = {regime!r}: invalid regime ({exc}); expected e.g. 'balanced:30' "
                                    f"or 'long_tailed:100:500'") from None
                self._regimes.add(regime)
            out.append(regime)
        return out

    def seeds(self, value: Any, where: str) -> list[int]:
        seeds = _as_list(value, where)
        for i, seed in enumerate(seeds):
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise GridError(f"{where}[{i}] = {seed!r}: expected an integer >= 0")
        if len(set(seeds)) != len(seeds):
            raise GridError(f"{where} = {seeds!r}: repeated seeds")
        return seeds

    def sweep(self, value: Any, where: str) -> list[dict]:
        """The product of the sweep's value lists, as a list of settings."""
        if value is None:
            return [{}]
        if not isinstance(value, dict):
            raise GridError(f"{where} = {value!r}: expected a table of TrainConfig field = [values]")
        axes = []
        for key, values in value.items():
            w = f"{where}.{key}"
            if key not in self.fields:
                raise GridError(f"{where}: unknown key {key!r}; valid TrainConfig fields: {_choices(self.fields)}")
            if key in AXIS_FIELDS:
                raise GridError(f"{where}: {key!r} is a grid axis already; list its values in the block")
            values = [self.check_value(key, v, f"{w}[{i}]") for i, v in enumerate(_as_list(value[key], w,
                                                                                        allow_scalar=False))]
            axes.append([(key, v) for v in values])
        return [dict(combo) for combo in itertools.product(*axes)]

    def losses(self, value: Any, where: str) -> list[dict]:
        valid = self.checks.losses()
        out = []
        for i, entry in enumerate(_as_list(value, where)):
            w = f"{where}[{i}]"
            entry, name, params = self._named_entry(entry, LOSS_KEYS, valid, "loss", self.checks.check_loss,
                                                    self._checked_losses, (TypeError, ValueError), w)
            label = entry.get("label", default_label(name, params))
            if not isinstance(label, str) or not label:
                raise GridError(f"{w}.label = {label!r}: expected a non-empty string")
            out.append({
                "name": name, "params": params, "label": label,
                "seeds": self.seeds(entry["seeds"], f"{w}.seeds") if "seeds" in entry else None,
                "train": self.check_train(entry.get("train", {}), f"{w}.train"),
                "sweep": self.sweep(entry["sweep"], f"{w}.sweep") if "sweep" in entry else None,
            })
        labels = [e["label"] for e in out]
        for label in labels:
            if labels.count(label) > 1:
                raise GridError(f"{where}: two entries have the label {label!r}; give them distinct 'label's")
        return out

    def tune(self, value: Any, where: str, block: dict, blocks: list[dict]) -> TuneSpec:
        """Check a block's ``tune`` table against the other blocks of the file."""
        _check_keys(value, TUNE_KEYS, where)
        others = [b["name"] for b in blocks if b["name"] != block["name"]]
        if "from" not in value:
            raise GridError(f"{where}: missing 'from' (the blocks whose runs choose the value); blocks in this "
                            f"file: {_choices(others) or 'none'}")
        sources = _as_list(value["from"], f"{where}.from")
        for i, src in enumerate(sources):
            w = f"{where}.from[{i}]"
            if src == block["name"]:
                raise GridError(f"{w} = {src!r}: a block cannot be tuned on its own runs; name other blocks: "
                                f"{_choices(others) or 'none'}")
            if not isinstance(src, str) or src not in others:
                raise GridError(f"{w} = {src!r}: unknown block; blocks in this file: {_choices(others) or 'none'}")
            if any(b["name"] == src and b["tune"] is not None for b in blocks):
                raise GridError(f"{w} = {src!r}: that block is tuned itself; tune only on blocks without 'tune'")
        if len(set(sources)) != len(sources):
            raise GridError(f"{where}.from = {sources!r}: repeated block names")
        if "field" not in value:
            raise GridError(f"{where}: missing 'field' (the TrainConfig field to tune, e.g. 'lr')")
        field = value["field"]
        if not isinstance(field, str) or field not in self.fields or field in AXIS_FIELDS:
            choices = [f for f in self.fields if f not in AXIS_FIELDS]
            raise GridError(f"{where}.field = {field!r}: not a TrainConfig field that can be tuned; valid "
                            f"fields: {_choices(choices)}")
        for src in sources:
            swept = next(b["swept"] for b in blocks if b["name"] == src)
            if field not in swept:
                raise GridError(f"{where}.field = {field!r}: block {src!r} does not sweep it (its sweep: "
                                f"{_choices(swept) or 'none'}); a block named in 'from' must sweep the field")
        if field in block["swept"]:
            raise GridError(f"{where}.field = {field!r}: this block sweeps {field!r} too; a tuned field takes "
                            f"one value, remove it from the block's sweep")
        metric = _check_metric(value.get("metric", DEFAULT_TUNE_METRIC), where)
        return TuneSpec(sources=tuple(sources), field=field, metric=metric)

    def extend(self, value: Any, where: str, block: dict) -> ExtendSpec:
        """Check a block's ``extend`` table (the values themselves are checked per group, see parse_grid)."""
        _check_keys(value, EXTEND_KEYS, where)
        if block["tune"] is not None:
            raise GridError(f"{where}: a block with 'tune' cannot 'extend' (its field takes one tuned value); "
                            f"extend the block it is tuned on")
        floats = sorted(f for f, d in self.fields.items() if isinstance(d, float) and f not in AXIS_FIELDS)
        if "field" not in value:
            raise GridError(f"{where}: missing 'field' (the swept TrainConfig field to extend, e.g. 'lr'); "
                            f"fields with numeric values: {', '.join(floats)}")
        field = value["field"]
        if not isinstance(field, str) or field not in floats:
            raise GridError(f"{where}.field = {field!r}: not a TrainConfig field with real-number values that "
                            f"can be extended; valid fields: {', '.join(floats)}")
        if field not in block["swept_all"]:
            raise GridError(f"{where}.field = {field!r}: not swept by every run of this block (swept by all "
                            f"its losses: {_choices(block['swept_all']) or 'none'}); sweep it, e.g. "
                            f"sweep = {{ {field} = [0.025, 0.05, 0.1, 0.2, 0.4] }}")
        factor = value.get("factor", DEFAULT_EXTEND_FACTOR)
        if (not isinstance(factor, (int, float)) or isinstance(factor, bool) or not math.isfinite(factor)
                or factor <= 1):
            raise GridError(f"{where}.factor = {factor!r}: expected a finite number > 1 (the next value is the "
                            f"smallest / factor or the largest * factor)")
        steps = value.get("max_steps", DEFAULT_EXTEND_MAX_STEPS)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise GridError(f"{where}.max_steps = {steps!r}: expected an integer >= 0 (extensions in each "
                            f"direction at most)")
        metric = _check_metric(value.get("metric", DEFAULT_TUNE_METRIC), where)
        return ExtendSpec(field=field, factor=float(factor), max_steps=steps, metric=metric)

    def overrides(self, value: Any) -> list[tuple[dict, dict]]:
        """The ``[[override]]`` entries as (match, settings); the values of ``match`` as lists (whether an
        entry matches any run is checked once the runs are expanded, see :func:`_unmatched_override`)."""
        if value is None:
            return []
        out = []
        for i, entry in enumerate(_as_list(value, "override", allow_scalar=False)):
            w = f"override[{i}]"
            if not isinstance(entry, dict):
                raise GridError(f"{w} = {entry!r}: expected a table")
            match = entry.get("match")
            if not isinstance(match, dict) or not match:
                raise GridError(f"{w}.match = {match!r}: expected a table such as "
                                f"{{ regime = 'balanced:10' }}; keys: {', '.join(MATCH_KEYS)}")
            _check_keys(match, MATCH_KEYS, f"{w}.match")
            match = {k: _as_list(v, f"{w}.match.{k}") for k, v in match.items()}
            settings = self.check_train({k: v for k, v in entry.items() if k not in ("match", "model_params")}, w)
            if "model_params" in entry:  # merged into each matching run's model params, checked per model there
                if not isinstance(entry["model_params"], dict):
                    raise GridError(f"{w}.model_params = {entry['model_params']!r}: expected a table")
                settings["model_params"] = dict(entry["model_params"])
            out.append((match, settings))
        return out

    def apply_override(self, config: dict, settings: dict, where: str) -> None:
        """An override's settings into a run's config; its ``model_params`` are merged into the run's
        (and the merged params checked against the run's model once)."""
        settings = dict(settings)
        if "model_params" in settings:
            merged = {**config["model_params"], **settings.pop("model_params")}
            _check_once("model", config["model"], merged, self.checks.check_model, self._checked_models,
                        (TypeError, ValueError), f"{where}.model_params")
            config["model_params"] = merged
        config.update(settings)


def _check_metric(metric: Any, where: str) -> str:
    """The metric a ``tune`` or ``extend`` decision minimises: a non-empty metric key."""
    if not isinstance(metric, str) or not metric:
        raise GridError(f"{where}.metric = {metric!r}: expected a metric key such as 'val/error' (lower is better)")
    return metric


def _check_once(kind: str, name: str, params: dict, check, checked: set, errors: tuple, where: str) -> None:
    """``check(name, params)`` once per distinct (name, params); its ``errors`` become a GridError."""
    tag = canonical_json([name, params])
    if tag not in checked:
        try:
            check(name, dict(params))
        except errors as exc:
            raise GridError(f"{where} = {params!r}: not accepted by {kind} {name!r}: {exc}") from None
        checked.add(tag)


def _matches(match: dict, run: dict) -> bool:
    return all(run.get(k) in values for k, values in match.items())


def _unmatched_override(where: str, i: int, entry: Any, match: dict, seen: dict[str, set]) -> GridError:
    """The error of ``override[i]`` whose ``match`` selects no run of any block: the values of its keys that
    no run has, with the values the runs do have (``seen``: key -> the values over every block's runs)."""
    def shown(values) -> str:
        return ", ".join(repr(v) for v in sorted(values, key=lambda v: (not isinstance(v, str), str(v))))

    shown_match = entry.get("match") if isinstance(entry, dict) else match
    absent = [(k, v) for k, values in match.items() for v in values if v not in seen.get(k, set())]
    head = f"{where}: override[{i}]: match {shown_match!r} matches no run"
    if absent:
        return GridError(head + "; " + "; ".join(
            f"{k} {v!r} is in no run ({k} values in the grid: {shown(seen.get(k, ()))})" for k, v in absent))
    return GridError(head + "; each of these values is in some run, no run has them all (values in the grid: "
                     + "; ".join(f"{k}: {shown(seen.get(k, ()))}" for k in match) + ")")


def parse_grid(text: str, *, path: str | None = None, checks: GridChecks | None = None,
               name: str | None = None, check_overrides: bool = True) -> Grid:
    """Expand and validate grid TOML text; raises :class:`GridError` before anything runs.

    ``check_overrides=False`` accepts an ``[[override]]`` whose ``match`` selects no run (else an error):
    for re-expanding grid texts stored by runs of an earlier version, which accepted them."""
    where = path or "<grid>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{where}: invalid TOML: {exc}") from None
    checks = checks or GridChecks()
    loader = _Loader(checks, Path(path).resolve().parent if path else None)
    for key in doc:
        if key not in TOP_KEYS:
            raise GridError(f"{where}: unknown top-level key {key!r}; valid keys: {', '.join(TOP_KEYS)}")
    base = loader.check_train(doc.get("train", {}), "train")
    blocks = doc.get("grid")
    if blocks is None:
        raise GridError(f"{where}: no [grid] block; a grid needs at least datasets, regimes, models, losses "
                        f"and seeds")
    blocks = blocks if isinstance(blocks, list) else [blocks]
    override_entries = doc.get("override")
    overrides = loader.overrides(override_entries)
    grid_name = name or (Path(path).stem if path else "grid")

    parsed = []
    hits = [0] * len(overrides)                       # runs each override matched, over every block
    seen: dict[str, set] = {k: set() for k in MATCH_KEYS}   # the values each match key takes in the runs
    for b, block in enumerate(blocks):
        w = "grid" if len(blocks) == 1 else f"grid[{b}]"
        _check_keys(block, BLOCK_KEYS, w)
        for required in ("datasets", "regimes", "models", "losses", "seeds"):
            if required not in block:
                raise GridError(f"{w}: missing {required!r}")
        block_name = block.get("name", grid_name if len(blocks) == 1 else f"{grid_name}[{b}]")
        if not isinstance(block_name, str) or not block_name:
            raise GridError(f"{w}.name = {block_name!r}: expected a non-empty string")
        datasets = loader.datasets(block["datasets"], f"{w}.datasets")
        regimes = loader.regimes(block["regimes"], f"{w}.regimes")
        models = loader.models(block["models"], f"{w}.models")
        losses = loader.losses(block["losses"], f"{w}.losses")
        seeds = loader.seeds(block["seeds"], f"{w}.seeds")
        block_train = loader.check_train(block.get("train", {}), f"{w}.train")
        block_sweep = loader.sweep(block.get("sweep"), f"{w}.sweep")
        swept = set(block_sweep[0]) | {k for loss in losses if loss["sweep"] for k in loss["sweep"][0]}
        swept_all = set.intersection(*(set((loss["sweep"] or block_sweep)[0]) for loss in losses))
        items = []
        for ds, regime, model, loss in itertools.product(datasets, regimes, models, losses):
            for seed in loss["seeds"] or seeds:
                for sweep in loss["sweep"] or block_sweep:
                    config = {**base, **block_train, **loss["train"]}
                    config.update(ds)
                    config.update(model)
                    config.update({"regime": regime, "loss": loss["name"], "loss_params": loss["params"],
                                   "seed": seed})
                    ident = {"dataset": ds["dataset"], "regime": regime, "model": model["model"],
                             "loss": loss["name"], "label": loss["label"], "seed": seed, "grid": block_name}
                    for k, v in ident.items():
                        seen[k].add(v)
                    for i, (match, settings) in enumerate(overrides):
                        if _matches(match, ident):
                            hits[i] += 1
                            loader.apply_override(config, settings, f"override[{i}]")
                    config.update(sweep)
                    run_where = (f"{w}: run dataset={ds['dataset']} regime={regime} model={model['model']} "
                                 f"loss={loss['label']} seed={seed}")
                    items.append((config, loss["label"], run_where))
        parsed.append({"name": block_name, "where": w, "tune": block.get("tune"), "items": items,
                       "swept": swept, "swept_all": swept_all, "extend": block.get("extend")})
    # An override may target some blocks only, but one that matches no run of any block is a mistake
    # (a typo'd value, a seed or block that is not there) that would otherwise change nothing silently.
    for i, ((match, _), n) in enumerate(zip(overrides, hits)):
        if not n and check_overrides:
            entries = override_entries if isinstance(override_entries, list) else [override_entries]
            raise _unmatched_override(where, i, entries[i], match, seen)

    def resolve(config: dict, run_where: str) -> dict:
        try:
            return checks.resolve(config)
        except (TypeError, ValueError, KeyError) as exc:
            raise GridError(f"{run_where}: invalid training config: {exc}") from None

    # Ordinary blocks first, in file order: their runs, keys and order do not depend on any tuning.
    tunes = {p["name"]: loader.tune(p["tune"], f"{p['where']}.tune", p, parsed)
             for p in parsed if p["tune"] is not None}
    extends = {p["name"]: loader.extend(p["extend"], f"{p['where']}.extend", p)
               for p in parsed if p["extend"] is not None}
    runs: dict[str, RunSpec] = {}
    block_runs: dict[str, list[RunSpec]] = {}
    for p in parsed:
        if p["tune"] is not None:
            continue
        mine = block_runs.setdefault(p["name"], [])
        for config, label, run_where in p["items"]:
            config = resolve(config, run_where)
            spec = RunSpec(key=run_key(config), config=config, label=label, grid=p["name"])
            mine.append(spec)
            if spec.key not in runs:
                runs[spec.key] = spec
    groups: dict[str, list[ExtendGroup]] = {}
    for p in parsed:
        if p["extend"] is not None:
            groups[p["name"]] = _extend_groups(p["name"], p["where"], extends[p["name"]], block_runs[p["name"]],
                                               resolve)
    extensions = [g for gs in groups.values() for g in gs]
    tuned: dict[tuple, TunedSpec] = {}
    for p in parsed:
        if p["tune"] is None:
            continue
        tune = tunes[p["name"]]
        index: dict[str, list[tuple[str, Any]]] = {}
        ext_index: dict[str, list[ExtendGroup]] = {}
        for src in tune.sources:
            for spec in block_runs[src]:
                index.setdefault(tuning_ident(spec.config, spec.label), []).append(
                    (spec.key, spec.config.get(tune.field)))
            for g in groups.get(src, []):
                if g.extend.field == tune.field:  # another field's extension does not change this choice
                    ext_index.setdefault(tuning_ident(g.config, g.label), []).append(g)
        for config, label, run_where in p["items"]:
            probe = resolve(config, run_where)
            tuning = index.get(tuning_ident(probe, label))
            if not tuning:
                near = sorted({lab for src in tune.sources for s in block_runs[src]
                               if (s.config.get("dataset"), s.config.get("model")) ==
                               (probe.get("dataset"), probe.get("model")) for lab in [s.label]})
                raise GridError(f"{run_where}: tune.from = {list(tune.sources)!r} has no run with this dataset, "
                                f"model and loss to tune {tune.field!r} on (same dataset/params/classes, model/"
                                f"params, loss/params and label); labels there for this dataset and model: "
                                f"{', '.join(near) or 'none'}")
            extending = tuple(ext_index.get(tuning_ident(probe, label), ()))
            ladder = [(s.key, v) for g in extending for v, specs in g.down + g.up for s in specs]
            tuning_keys = {k for k, _ in tuning + ladder}
            values = sorted({canonical_json(v): v for _, v in tuning + ladder}.values(), key=value_order)
            candidates = []
            for value in values:
                cfg = resolve({**config, tune.field: value}, f"{run_where} {tune.field}={value!r}")
                spec = RunSpec(key=run_key(cfg), config=cfg, label=label, grid=p["name"])
                if spec.key in tuning_keys:
                    raise GridError(f"{run_where}: with {tune.field}={value!r} it is the same run as one of its "
                                    f"tuning runs in {list(tune.sources)!r}; give block {p['name']!r} other seeds "
                                    f"(or regimes) than the blocks it is tuned on")
                candidates.append((value, spec))
            t = TunedSpec(config=candidates[0][1].config, label=label, grid=p["name"], tune=tune,
                          tuning=tuple(tuning), candidates=tuple(candidates), extending=extending)
            tuned.setdefault(tuple(s.key for _, s in candidates), t)
    verdict = doc.get("verdict")
    if verdict is not None and not isinstance(verdict, dict):
        raise GridError(f"{where}: verdict = {verdict!r}: expected a [verdict] table")
    return Grid(name=grid_name, path=path, text=text, runs=list(runs.values()), tuned=list(tuned.values()),
                extensions=extensions, verdict=verdict, blocks=[p["name"] for p in parsed])


def _extend_groups(block: str, where: str, ext: ExtendSpec, specs: list[RunSpec], resolve) -> list[ExtendGroup]:
    """A block's runs grouped by everything but ``ext.field`` and the seed, each with its ladder of values."""
    field = ext.field
    members: dict[str, list[RunSpec]] = {}
    for spec in specs:
        ident = canonical_json([{k: v for k, v in spec.config.items() if k not in (field, "seed")}, spec.label])
        members.setdefault(ident, []).append(spec)
    out = []
    for runs in members.values():
        first = runs[0]
        run_where = f"{where}: runs {describe_group(first.config, first.label)}"
        values = sorted({canonical_json(s.config[field]): s.config[field] for s in runs}.values(), key=value_order)
        bad = [v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0]
        if bad:
            raise GridError(f"{run_where}: sweep {field} = {values!r}: extend needs numbers > 0 (it multiplies "
                            f"and divides by the factor); got {bad[0]!r}")
        if len(values) < 2:
            raise GridError(f"{run_where}: sweep {field} = {values!r}: extend needs at least 2 swept values (a "
                            f"winner at an edge means something only next to another value)")
        base: dict[int, dict] = {}
        for s in runs:
            base.setdefault(s.config["seed"], s.config)
        seeds = tuple(base)
        ladders, blocked = [], []
        for start, step in ((values[0], 1.0 / ext.factor), (values[-1], ext.factor)):
            ladder, why, value = [], "", start
            for _ in range(ext.max_steps):
                value = float(f"{value * step:.{EXTEND_DIGITS}g}")
                problem = field_problem(field, value)
                if problem is not None:
                    why = f"the next value {field}={value!r} is not valid: {problem}"
                    break
                try:
                    row = tuple(RunSpec(key=run_key(cfg), config=cfg, label=first.label, grid=block)
                                for cfg in (resolve({**base[seed], field: value}, f"{run_where} {field}={value!r}")
                                            for seed in seeds))
                except GridError as exc:
                    why = f"the next value {field}={value!r} is not valid: {exc}"
                    break
                ladder.append((value, row))
            ladders.append(tuple(ladder))
            blocked.append(why)
        out.append(ExtendGroup(grid=block, label=first.label, extend=ext, seeds=seeds,
                               swept=tuple((s.config[field], s) for s in runs), down=ladders[0], up=ladders[1],
                               down_blocked=blocked[0], up_blocked=blocked[1]))
    return out


def describe_group(config: dict, label: str) -> str:
    """dataset regime model label of a group of runs (the runner's ``describe`` without the seed)."""
    return f"{config.get('dataset')} {config.get('regime')} {config.get('model')} {label}"


# ------------------------------------------------------------------------------------------- tuning
TUNING_IDENT_FIELDS = ("dataset", "dataset_params", "classes", "model", "model_params", "loss", "loss_params")


def tuning_ident(config: dict, label: str) -> str:
    """What a tuned run and its tuning runs share: dataset (with params and classes), model (with params)
    and loss (with params and label); regime, seed and every other field may differ."""
    return canonical_json([config.get(k) for k in TUNING_IDENT_FIELDS] + [label])


def value_order(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, canonical_json(value))


@dataclasses.dataclass
class Choice:
    """The tuned value and, per candidate value (in value order), (value, n done, mean metric, mean tie)."""

    value: Any
    table: list[tuple[Any, int, float, float]]


def choose_value(done: Iterable[tuple[Any, dict]], metric: str, tie_break: str = TUNE_TIE_BREAK) -> Choice | None:
    """The value with the lowest mean ``metric`` over the done runs ``(value, metrics)``; ties: lowest mean
    ``tie_break``, then the smaller value (:func:`gence.selection.best_candidate`, the rule the report
    uses too). None when no run has the metric (every candidate failed)."""
    by_value: dict[str, list] = {}
    for value, metrics in done:
        by_value.setdefault(canonical_json(value), [value, []])[1].append(metrics or {})
    table = [(value, len(ms), mean_of([m.get(metric) for m in ms]), mean_of([m.get(tie_break) for m in ms]))
             for value, ms in sorted(by_value.values(), key=lambda vm: value_order(vm[0]))]
    best = best_candidate({k: ms for k, (_, ms) in by_value.items()}, metric, tie_break,
                          order=lambda k: value_order(by_value[k][0]))
    return None if best is None else Choice(value=by_value[best][0], table=table)


@dataclasses.dataclass
class TuneState:
    """Where a tuned run stands: ``wait`` (tuning runs unfinished), ``ready`` (``spec`` is the run with the
    chosen ``value``) or ``failed`` (no tuning run finished with the metric; ``message`` says why)."""

    kind: str
    finished: int
    total: int
    spec: RunSpec | None = None
    value: Any = None
    message: str = ""


@dataclasses.dataclass
class ExtensionState:
    """Where an :class:`ExtendGroup` stands, a pure function of the stored runs (:func:`extension_state`).

    ``kind``: ``wait`` (runs of the current values unfinished: ``pending``; the runner runs them), ``settled``
    (``best`` is the winner; ``edge`` is ``"low"``/``"high"`` when it is still the smallest/largest value
    because the ladder in that direction is used up, else None) or ``failed`` (no run has the metric).
    ``runs``: (value, run) of every value so far, the sweep's and the ``added`` ones (value order);
    ``finished``/``total`` count those runs; ``message`` says it in words."""

    kind: str
    runs: list[tuple[Any, RunSpec]]
    added: tuple
    finished: int
    total: int
    pending: list[RunSpec] = dataclasses.field(default_factory=list)
    best: Any = None
    edge: str | None = None
    message: str = ""

    @property
    def at_edge(self) -> bool:
        """True when the final winner is the smallest or largest value tried (extensions used up)."""
        return self.kind == "settled" and self.edge is not None

    @property
    def outcome(self) -> str:
        """``undecided`` (runs missing), ``cannot decide`` (no run has the metric), ``at edge``, ``extended``
        (values were added, then the winner settled inside) or ``settled`` (inside the values swept)."""
        if self.kind == "wait":
            return "undecided"
        if self.kind == "failed":
            return "cannot decide"
        return "at edge" if self.at_edge else "extended" if self.added else "settled"


def _finished(key: str, rows: dict, unfinished) -> bool:
    return key not in unfinished and rows.get(key, ("todo",))[0] in ("done", "failed")


def extension_state(g: ExtendGroup, rows: dict[str, tuple[str, dict | None]],
                    unfinished: set[str] = frozenset()) -> ExtensionState:
    """Replay the extension of ``g`` on the stored runs (``rows``/``unfinished`` as for :func:`tune_state`).

    Start with the swept values. While every run of the current values is finished: choose the best value
    as tuning does (:func:`choose_value`: lowest mean metric over the done runs, ties by val/nll then the
    smaller value; failed runs ignored, so a value whose runs all failed is tried but never wins); when it
    is the smallest value and the down ladder has a next value, add it (all seeds); likewise the largest
    and the up ladder; otherwise settle. The same rows always give the same state, so a killed or
    parallel runner recomputes it from the database and never loses or repeats a decision."""
    field, ext = g.extend.field, g.extend
    n_down = n_up = 0
    while True:
        runs = list(g.swept) + [(v, s) for v, specs in g.down[:n_down] + g.up[:n_up] for s in specs]
        runs.sort(key=lambda vs: value_order(vs[0]))
        added = tuple(sorted([v for v, _ in g.down[:n_down]] + [v for v, _ in g.up[:n_up]], key=value_order))
        pending = [s for _, s in runs if not _finished(s.key, rows, unfinished)]
        finished, total = len(runs) - len(pending), len(runs)
        done_note = f"added {field}=" + ", ".join(repr(v) for v in added) if added else "nothing added yet"
        if pending:
            return ExtensionState("wait", runs, added, finished, total, pending=pending,
                                  message=f"waiting to decide extension of {field} ({done_note}; "
                                          f"{finished}/{total} runs finished)")
        choice = choose_value([(v, rows[s.key][1]) for v, s in runs if rows[s.key][0] == "done"], ext.metric)
        if choice is None:
            return ExtensionState("failed", runs, added, finished, total,
                                  message=f"cannot decide extension of {field}: no run has metric "
                                          f"{ext.metric!r} (every run failed?)")
        values = [v for v, _ in runs]
        best = choice.value
        if best == values[0] and n_down < len(g.down):
            n_down += 1
            continue
        if best == values[-1] and n_up < len(g.up):
            n_up += 1
            continue
        edge = "low" if best == values[0] else "high" if best == values[-1] else None
        added_note = ("added " + ", ".join(repr(v) for v in added)) if added else "no extension needed"
        if edge is None:
            message = f"{field}={best!r} wins inside the values tried ({added_note})"
        else:
            n = n_down if edge == "low" else n_up
            blocked = g.down_blocked if edge == "low" else g.up_blocked
            word = "smallest" if edge == "low" else "largest"
            message = (f"AT EDGE: {field}={best!r} is still the {word} value tried after {n} extension(s) "
                       f"{'down' if edge == 'low' else 'up'}" + (f" ({blocked})" if blocked and n < ext.max_steps
                                                                 else f" (max_steps = {ext.max_steps})")
                       + f"; {added_note}")
        return ExtensionState("settled", runs, added, finished, total, best=best, edge=edge, message=message)


def tune_state(t: TunedSpec, rows: dict[str, tuple[str, dict | None]], unfinished: set[str] = frozenset()
               ) -> TuneState:
    """``rows``: key -> (status, metrics) from the database; ``unfinished``: keys this process still has to
    run (queued, in flight, or failed runs to retry). A tuning run counts as finished when it is stored
    done or failed and not in ``unfinished``; failed ones are ignored when choosing. With ``extending``
    groups, the run waits until each has settled (:func:`extension_state`); their added runs then count
    as tuning runs."""
    tuning = list(t.tuning)
    waiting = []
    for g in t.extending:
        st = extension_state(g, rows, unfinished)
        if st.kind == "wait":
            waiting.append(g)
        swept = {s.key for _, s in g.swept}
        tuning += [(s.key, v) for v, s in st.runs if s.key not in swept]
    total = len(tuning)
    finished = [(k, v) for k, v in tuning if _finished(k, rows, unfinished)]
    if waiting or len(finished) < total:
        message = (f"extension of {t.tune.field} undecided in {len(waiting)} group(s) of "
                   f"{', '.join(sorted({g.grid for g in waiting}))}" if waiting else "")
        return TuneState("wait", len(finished), total, message=message)
    done = [(v, rows[k][1]) for k, v in finished if rows[k][0] == "done"]
    choice = choose_value(done, t.tune.metric)
    if choice is None:
        n_failed = total - len(done)
        why = (f"all {total} tuning run(s) failed" if not done else
               f"none of the {len(done)} done tuning run(s) has metric {t.tune.metric!r}"
               + (f" ({n_failed} failed)" if n_failed else ""))
        return TuneState("failed", total, total,
                         message=f"cannot tune {t.tune.field!r}: {why} in block(s) "
                                 f"{', '.join(t.tune.sources)}; fix them (gence bench --retry-failed) and run again")
    spec = next(s for v, s in t.candidates if canonical_json(v) == canonical_json(choice.value))
    return TuneState("ready", total, total, spec=spec, value=choice.value)


def load_grid(path: str | Path, *, checks: GridChecks | None = None) -> Grid:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GridError(f"grid file {path}: {exc.strerror}") from None
    return parse_grid(text, path=str(path), checks=checks)


DEMO_GRID = Path(__file__).with_name("demo.toml")


def load_demo_grid(*, checks: GridChecks | None = None) -> Grid:
    """The built-in default benchmark (shipped inside the package)."""
    grid = parse_grid(DEMO_GRID.read_text(), path=None, checks=checks, name="demo")
    grid.path = "gence/experiments/demo.toml"
    return grid


def select_blocks(grid: Grid, patterns: Iterable[str]) -> Grid:
    """``grid`` with only the runs of the blocks whose names match one of ``patterns`` (shell patterns, e.g.
    ``main_*_fashion_mnist_*``): a long grid run part by part, its file unchanged. A tuned block's runs
    still wait for their tuning runs, whether selected or already in the database. A pattern that matches
    no block is an error (a typo would otherwise run nothing)."""
    patterns = [p.strip() for p in patterns if p.strip()]
    if not patterns:
        raise GridError("--blocks: expected one or more block names or patterns, comma-separated")
    for p in patterns:
        if not fnmatch.filter(grid.blocks, p):
            raise GridError(f"--blocks {p!r}: matches no block of {grid.path or grid.name}; its blocks: "
                            f"{', '.join(grid.blocks)}")
    keep = {b for b in grid.blocks if any(fnmatch.fnmatchcase(b, p) for p in patterns)}
    return dataclasses.replace(grid, runs=[r for r in grid.runs if r.grid in keep],
                               tuned=[t for t in grid.tuned if t.grid in keep],
                               extensions=[g for g in grid.extensions if g.grid in keep],
                               blocks=[b for b in grid.blocks if b in keep])


def shard(runs: list[RunSpec], index: int, count: int) -> list[RunSpec]:
    """The ``index``-th (1-based) of ``count`` disjoint parts: every ``count``-th run of the grid's order,
    so each part gets a similar mix of cheap and expensive settings."""
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: expected I/N with 1 <= I <= N (shard indices are 1-based)")
    return [r for i, r in enumerate(runs) if i % count == index - 1]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N such as 1/4 (1-based)") from None
    shard([], i, n)  # range check
    return i, n

