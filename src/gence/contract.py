"""The run contract: what defines a run, how it is named, and which metric keys it produces.

Everything else reads this module instead of writing the names again: the training loop (``TrainConfig``,
the metric keys of ``fit``), the grid (the same ``validate`` rules), the runner and its database
(``run_key``), ``gence train``'s printout, the report and the tests. It imports nothing from the rest of
``gence`` (and no torch), so any part may import it.

**Identity of a run.** A run is its resolved :class:`TrainConfig` as a dict. Its key is the sha256 of the
canonical JSON (:func:`canonical_json`) of that dict without :data:`KEY_EXCLUDED_FIELDS` (where a run
executes, not what it computes) and without the fields of :data:`KEY_OMITTED_DEFAULTS` while they hold
their default value: those fields were added after runs were stored, and a run that does not use them
keeps the key it had before they existed (the keys of every stored run stay the same).

**Metric keys of a run** (``TrainResult.metrics``, one flat ``dict[str, float]``):

- :func:`split_key` ``(split, metric)`` = ``"{split}/{metric}"`` for every split of :data:`SPLITS` and metric
  of :data:`SPLIT_METRICS` (``*_ts``: after temperature scaling fitted on ``val``);
- :data:`TEMPERATURE`;
- :func:`group_key` ``(group)`` = ``"test/acc_{group}"`` for :data:`GROUPS`, and ``"test/{m}"`` for
  :data:`COVERAGE_METRICS`;
- :func:`ood_key` ``(ood_set, score, metric)`` = ``"ood/{set}/{score}/{metric}"`` for every OOD set of the run,
  score of :data:`OOD_SCORES` and metric of :data:`OOD_METRICS`;
- :data:`TRAIN_METRICS` and :data:`FIT_METRICS`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TrainConfig", "SCHEDULES", "OPTIMIZERS", "field_problem", "canonical_json", "run_key", "key_fields",
    "KEY_EXCLUDED_FIELDS", "KEY_OMITTED_DEFAULTS", "RUNTIME_FLAGS", "runtime_flags",
    "SPLITS", "SPLIT_METRICS", "TEMPERATURE", "GROUPS", "COVERAGE_METRICS", "OOD_SCORES", "OOD_METRICS",
    "TRAIN_METRICS", "FIT_METRICS", "CURVE_METRICS", "split_key", "group_key", "ood_key", "metric_keys",
]

SCHEDULES = ("cosine", "step")
# TrainConfig.augment values besides None/True/False (gence.data.augment says what each does).
AUGMENT_MODES = ("none", "crop_flip", "crop")
OPTIMIZERS = ("sgd", "adam")

# Fields of a run config that say where or on what a run executes, not what it computes; they are kept in
# the stored config but left out of the key, so shards on machines with other paths or devices merge.
KEY_EXCLUDED_FIELDS = ("data_dir", "device")

# The command-line flag that sets each of those fields, the same in `gence train` and `gence bench` (which
# applies it to every run), and the word a message's placeholder value (``data_dir=...``) becomes.
RUNTIME_FLAGS: dict[str, tuple[str, str]] = {"data_dir": ("--data-dir", "DIR"), "device": ("--device", "DEVICE")}


def runtime_flags(message: str) -> str:
    """``message`` (an error raised for the Python API) with the fields of :data:`RUNTIME_FLAGS` named by
    their flags, for a command that has them: ``pass data_dir=...`` and ``data_dir=PATH`` -> ``pass --data-dir
    DIR``, ``device='cuda:1'`` -> ``--device 'cuda:1'``."""
    for name, (flag, placeholder) in RUNTIME_FLAGS.items():
        message = re.sub(rf"(?:TrainConfig\.)?\b{name}=(?:\.\.\.|PATH|DIR)(?![\w.])", f"{flag} {placeholder}", message)
        message = re.sub(rf"(?:TrainConfig\.)?\b{name}=(\S+?)(?=[\s,;]|$)", rf"{flag} \1", message)
    return message

# Fields added after runs were stored, with the value every earlier run had: at that value a field is left
# out of the key and of ``TrainConfig.to_dict``, so earlier runs keep their keys and their stored configs
# read the same as new ones. A new TrainConfig field must be added here with its default.
KEY_OMITTED_DEFAULTS: dict[str, Any] = {"optimizer": "sgd", "steps": None, "drop_last": False,
                                        "init_output_bias": None, "eval_every": None}


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal configs give equal strings on every machine."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def _omitted(name: str, value: Any) -> bool:
    return name in KEY_OMITTED_DEFAULTS and canonical_json(value) == canonical_json(KEY_OMITTED_DEFAULTS[name])


def key_fields(config: dict) -> dict:
    """The part of a config dict that names the run: without KEY_EXCLUDED_FIELDS and without the
    KEY_OMITTED_DEFAULTS fields at their default."""
    return {k: v for k, v in config.items() if k not in KEY_EXCLUDED_FIELDS and not _omitted(k, v)}


def run_key(config: dict) -> str:
    """sha256 hex digest of the canonical JSON of :func:`key_fields` of ``config``."""
    return hashlib.sha256(canonical_json(key_fields(config)).encode()).hexdigest()


# ----------------------------------------------------------------------------------- field rules
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_INT_POSITIVE = ("epochs", "batch_size", "n_bins", "eval_batch_size")
_INT_NON_NEGATIVE = ("n_val_per_class", "seed")
_BOOL = ("nesterov", "amp", "compile", "drop_last")
_STR = ("dataset", "regime", "model", "loss")
_DICT = ("dataset_params", "model_params", "loss_params")


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the TrainConfig field ``name`` (``"expected ..."``), or None.

    The rules (the one place they are written; ``TrainConfig.validate`` and the grid both apply them):
    ``epochs``, ``batch_size``, ``n_bins``, ``eval_batch_size``: integers > 0; ``n_val_per_class``, ``seed``:
    integers >= 0; ``lr``: a finite number > 0; ``momentum``: a number in [0, 1); ``weight_decay``,
    ``warmup_epochs``: finite numbers >= 0; ``schedule`` in :data:`SCHEDULES`; ``optimizer`` in
    :data:`OPTIMIZERS`; ``steps``: None or an integer > 0; ``eval_every``: None or a number in (0, 1];
    ``nesterov``, ``amp``, ``compile``, ``drop_last``:
    true or false; ``augment``: None, true, false or one of :data:`AUGMENT_MODES`; ``dataset``, ``regime``,
    ``model``, ``loss``: strings;
    ``*_params``: dicts; ``classes``: None or a list; ``ood``: a list of strings; ``init_output_bias``: None or a
    list of finite numbers; ``data_dir``: None or a string; ``device``: a string. Rules between fields
    (``warmup_epochs <= epochs``) are in ``TrainConfig.validate``.
    """
    if name in _INT_POSITIVE:
        return None if _is_int(value) and value > 0 else "expected an integer > 0"
    if name in _INT_NON_NEGATIVE:
        return None if _is_int(value) and value >= 0 else "expected an integer >= 0"
    if name == "lr":
        return None if _is_number(value) and value > 0 else "expected a finite number > 0"
    if name == "momentum":
        return None if _is_number(value) and 0 <= value < 1 else "expected a number in [0, 1)"
    if name in ("weight_decay", "warmup_epochs"):
        return None if _is_number(value) and value >= 0 else "expected a finite number >= 0"
    if name == "schedule":
        return None if value in SCHEDULES else f"expected one of {', '.join(SCHEDULES)}"
    if name == "optimizer":
        return None if value in OPTIMIZERS else f"expected one of {', '.join(OPTIMIZERS)}"
    if name == "eval_every":
        return None if value is None or (_is_number(value) and 0 < value <= 1) else \
            "expected null (no validation curve) or a fraction of training in (0, 1], e.g. 0.1"
    if name == "steps":
        return None if value is None or (_is_int(value) and value > 0) else "expected null (epochs decide) or an integer > 0"
    if name in _BOOL:
        return None if isinstance(value, bool) else "expected true or false"
    if name == "augment":
        return None if value is None or isinstance(value, bool) or value in AUGMENT_MODES else \
            f"expected null (the dataset's default), true, false or one of {', '.join(map(repr, AUGMENT_MODES))}"
    if name in _STR or name == "device":
        return None if isinstance(value, str) and value else "expected a non-empty string"
    if name in _DICT:
        return None if isinstance(value, dict) else "expected a table of parameters"
    if name == "classes":
        return None if value is None or isinstance(value, list) else "expected null or a list of classes"
    if name == "ood":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else "expected a list of OOD set names"
    if name == "init_output_bias":
        ok = value is None or (isinstance(value, list) and value and all(_is_number(v) for v in value))
        return None if ok else "expected null or a list of finite numbers, one per class"
    if name == "data_dir":
        return None if value is None or isinstance(value, str) else "expected null or a path"
    return None


@dataclass
class TrainConfig:
    """Everything that defines a run; JSON-able (``to_dict`` / ``from_dict``).

    ``optimizer``: ``"sgd"`` (with ``momentum``, ``nesterov``, ``weight_decay``) or ``"adam"`` (torch's
    Adam with its default betas and eps, L2 ``weight_decay``; momentum and nesterov unused).
    ``steps``: a fixed budget of optimizer steps instead of ``epochs`` (the schedule spans the steps, the
    last epoch is cut short); None: ``epochs`` epochs. ``drop_last``: leave out each epoch's last,
    smaller batch (GenCE's class marginal is estimated per batch); a batch size larger than the training
    set is one full batch. ``init_output_bias``: added to the bias of the model's last linear layer at
    initialisation (moves the optimisation's starting point; one number per class). ``eval_every``: a
    fraction of training (e.g. 0.1); the validation split's error, NLL and ECE are then added to the
    history at the first epoch end at or after every multiple of it and at the last epoch (the learning
    curve that shows a plateau; evaluation does not change the training numbers); None: no curve.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    dataset_params: dict = field(default_factory=dict)
    classes: list | None = None          # keep only these classes (held-out-class OOD uses the rest)
    regime: str = "balanced:50"          # "balanced:N", "long_tailed:RATIO:N_MAX[:exp|step]", "full"
    n_val_per_class: int = 50
    model: str = "small_cnn"
    model_params: dict = field(default_factory=dict)
    loss: str = "ce"
    loss_params: dict = field(default_factory=dict)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "cosine"             # "cosine" | "step" (x0.1 at 50% and 75% of training)
    warmup_epochs: float = 1.0
    epochs: int = 30
    batch_size: int = 128
    augment: bool | str | None = None    # None: the dataset's default; "none", "crop_flip" (= True), "crop"
    seed: int = 0
    device: str = "auto"                 # "cpu", "cuda", "cuda:1", or "auto" (CUDA when available)
    amp: bool = False                    # fp16 + GradScaler on CUDA, bf16 autocast on a CPU with bf16 kernels (float32 on one without)
    compile: bool = False                # torch.compile the training forward pass
    ood: list = field(default_factory=list)  # OOD set names, see gence.data.ood_names()
    n_bins: int = 15
    eval_batch_size: int = 1024
    optimizer: str = "sgd"               # "sgd" | "adam"
    steps: int | None = None             # fixed number of optimizer steps (None: epochs decide)
    drop_last: bool = False              # leave out each epoch's ragged last batch
    init_output_bias: list | None = None      # added to the last layer's initial bias, one number per class
    eval_every: float | None = None      # fraction of training between validation points in the history

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict; the KEY_OMITTED_DEFAULTS fields only when not at their default
        (so a config stored before they existed and the same config now are equal dicts)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if not _omitted(k, v)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; expected some of {sorted(names)}")
        return cls(**d)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field name with its default value."""
        return dataclasses.asdict(cls())

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot work (rules: :func:`field_problem`)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = field_problem(f.name, value)
            if problem is not None:
                raise ValueError(f"TrainConfig.{f.name}={value!r}: {problem}")
        if self.steps is None and self.warmup_epochs > self.epochs:
            raise ValueError(f"TrainConfig.warmup_epochs={self.warmup_epochs!r}: expected 0 <= warmup_epochs "
                             f"<= epochs={self.epochs}")

    def key(self) -> str:
        """The run key (:func:`run_key` of ``to_dict()``)."""
        return run_key(self.to_dict())


# ---------------------------------------------------------------------------------- metric schema
SPLITS = ("val", "test", "val_ts", "test_ts")
SPLIT_METRICS = ("error", "nll", "brier", "ece", "adaece", "classwise_ece", "mce")  # gence.metrics.evaluate
TEMPERATURE = "temperature"
GROUPS = ("many", "medium", "few")
COVERAGE_METRICS = ("never_predicted", "worst_class_accuracy")                       # metrics.class_coverage
OOD_SCORES = ("msp", "max_logit", "energy", "entropy")
OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")                              # metrics.ood_metrics
TRAIN_METRICS = ("train/loss", "train/seconds", "train/images_per_second")
# The final model on its (un-augmented) training subset, and the training loss of a model certain and right
# on every training image over the last epoch's batches (0 for CE; sum_k n_k log n_k / n per batch for GenCE;
# below label smoothing's true floor, which is the entropy of its smoothed targets).
FIT_METRICS = ("train/error", "train/loss_floor")
# Validation metrics in the history of a run with eval_every (with "progress", the fraction of steps done).
CURVE_METRICS = ("error", "nll", "ece")


def split_key(split: str, metric: str) -> str:
    return f"{split}/{metric}"


def group_key(group: str) -> str:
    return f"test/acc_{group}"


def ood_key(ood_set: str, score: str, metric: str) -> str:
    return f"ood/{ood_set}/{score}/{metric}"


# ``hardware`` of a stored run on a CPU: "MODEL (N cores, CAPABILITY, torch threads T)", where CAPABILITY is
# torch's CPU capability (DEFAULT, AVX2, AVX512...); runs stored before it was recorded lack that field.
_CPU_HARDWARE = re.compile(
    r"^(?P<model>.*) \((?P<cores>\d+) cores, (?:(?P<capability>[A-Z0-9_]+), )?torch threads (?P<threads>\d+)\)$")


def cpu_hardware(model: str, cores: int, capability: str | None, threads: int) -> str:
    """The ``hardware`` string of a run on a CPU (``capability`` None: as written before it was recorded)."""
    return f"{model} ({cores} cores, {capability + ', ' if capability else ''}torch threads {threads})"


def parse_cpu_hardware(hardware: str | None) -> dict | None:
    """``model``, ``cores``, ``capability`` (None when not recorded) and ``threads`` of a CPU ``hardware`` string
    (:func:`cpu_hardware`); None for anything else (a GPU)."""
    m = _CPU_HARDWARE.match(hardware or "")
    if m is None:
        return None
    return {"model": m["model"], "cores": int(m["cores"]), "capability": m["capability"],
            "threads": int(m["threads"])}


def metric_keys(ood_sets: tuple | list = ()) -> list[str]:
    """Every metric key of a run of ``fit`` with these OOD sets, in the order ``fit`` writes them."""
    keys = [split_key(s, m) for s in SPLITS for m in SPLIT_METRICS] + [TEMPERATURE]
    keys += [group_key(g) for g in GROUPS] + [f"test/{m}" for m in COVERAGE_METRICS]
    keys += [ood_key(o, s, m) for o in ood_sets for s in OOD_SCORES for m in OOD_METRICS]
    return keys + list(TRAIN_METRICS) + list(FIT_METRICS)
