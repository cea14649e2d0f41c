"""``gence train``: one run from the command line, a metrics table on stdout, optionally a JSON file.

    gence train --dataset cifar10 --data-dir DIR --regime balanced:100 --model resnet20 --loss gence \\
        --epochs 100 --seed 0 --loss-param generative_weight=0.5 --ood mnist uniform_noise --json run.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import warnings

import torch

from gence import data as gdata
from gence.contract import (GROUPS, OOD_METRICS, OOD_SCORES, OPTIMIZERS, RUNTIME_FLAGS, SCHEDULES, SPLIT_METRICS,
                            SPLITS, TEMPERATURE, TrainConfig, field_problem, group_key, ood_key, runtime_flags,
                            split_key)
from gence.train.loop import NonFiniteLossError, fit

# TrainConfig field -> the flag of `gence train` that sets it (fields without a flag keep their name).
FLAGS = {
    "dataset": "--dataset", "dataset_params": "--dataset-param", "classes": "--classes",
    "regime": "--regime", "n_val_per_class": "--n-val-per-class", "augment": "--augment", "ood": "--ood",
    "model": "--model", "model_params": "--model-param", "loss": "--loss", "loss_params": "--loss-param",
    "optimizer": "--optimizer", "lr": "--lr", "momentum": "--momentum", "weight_decay": "--weight-decay",
    "nesterov": "--nesterov", "schedule": "--schedule", "warmup_epochs": "--warmup-epochs", "epochs": "--epochs",
    "steps": "--steps", "drop_last": "--drop-last", "batch_size": "--batch-size", "seed": "--seed",
    "amp": "--amp", "compile": "--compile", "n_bins": "--n-bins", "eval_batch_size": "--eval-batch-size",
    **{name: flag for name, (flag, _) in RUNTIME_FLAGS.items()},   # --data-dir, --device: shared with gence bench
}


def as_flags(message: str) -> str:
    """``message`` with the Python names of TrainConfig fields replaced by the flags that set them
    (``TrainConfig.epochs=-3`` -> ``--epochs -3``, ``pass data_dir=...`` -> ``pass --data-dir DIR``: the
    runtime fields as :func:`gence.contract.runtime_flags` names them for ``gence bench`` too)."""
    message = runtime_flags(message)
    message = re.sub(r"unknown (dataset|model|loss) name=(\S+?);", r"--\1 \2: unknown \1;", message)

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in FLAGS:
            return match.group(0)
        return FLAGS[name] + (f" {value}" if value is not None else "")

    return re.sub(r"(?:TrainConfig\.)?\b([a-z_]+)\b(?:=([^\s,;:]+))?",
                  lambda m: flag(m) if (m.group(0).startswith("TrainConfig.") or m.group(2) is not None)
                  else m.group(0), message)


def usage_problem(config: TrainConfig) -> str | None:
    """The first value of ``config`` that cannot work, as ``"--flag VALUE: expected ..."``, or None; checked
    before any data is loaded (rules: :func:`gence.contract.field_problem`, and the registries' names)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        problem = field_problem(f.name, value)
        if problem is not None:
            return f"{FLAGS.get(f.name, f.name)} {value!r}: {problem}"
    if config.steps is None and config.warmup_epochs > config.epochs:
        return (f"--warmup-epochs {config.warmup_epochs!r}: expected a number <= --epochs {config.epochs}")
    try:
        gdata.parse_regime(config.regime)
    except ValueError as exc:
        return f"--regime {config.regime}: {str(exc).split(': ', 1)[-1]}"
    for name in config.ood:
        if not gdata.is_ood_name(name):
            return f"--ood {name}: unknown OOD set; expected some of {', '.join(gdata.ood_names())}"
    if "heldout" in config.ood and not config.classes:
        return "--ood heldout: needs --classes (the kept classes; the rest are the OOD set)"
    return None


def parse_key_value(text: str) -> tuple[str, object]:
    """``"k=v"`` -> (k, v) with v read as JSON when it parses (numbers, true/false, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _class_name_or_index(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


class _DefaultsShown(argparse.HelpFormatter):
    """Each flag's help ends with its default, unless the help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and action.default != [] and action.default != argparse.SUPPRESS
        if "default" in text or not shown or action.nargs == 0 or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def register(subparsers) -> None:
    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train one model and print its metrics",
        description="Train one model on one regime with one loss; print validation/test metrics before and "
                    "after temperature scaling, group accuracies and OOD metrics.",
        formatter_class=_DefaultsShown)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=d.dataset, help="dataset name (gence.data.available())")
    data.add_argument("--data-dir", default=d.data_dir, help="data folder or archive (default: $GENCE_DATA)")
    data.add_argument("--dataset-param", action="append", default=[], type=parse_key_value, metavar="K=V",
                      help="dataset parameter, repeatable (default: none)")
    data.add_argument("--classes", nargs="+", type=_class_name_or_index, default=d.classes, metavar="C",
                      help="keep only these classes (indices or names); 'heldout' OOD uses the rest")
    data.add_argument("--regime", default=d.regime, help="balanced:N | long_tailed:RATIO:N_MAX[:exp|step] | full")
    data.add_argument("--n-val-per-class", type=int, default=d.n_val_per_class,
                      help="validation images per class, held out of the training images before the regime "
                           "draws its N")
    data.add_argument("--augment", nargs="?", const=True, default=d.augment, metavar="MODE",
                      type=lambda v: {"true": True, "false": False}.get(v.lower(), v),
                      help="none | crop_flip (random crop + flip; also --augment alone) | crop (no flip); "
                           "default: the dataset's default")
    data.add_argument("--no-augment", dest="augment", action="store_false", help="no augmentation")
    data.add_argument("--ood", nargs="+", default=list(d.ood), metavar="NAME",
                      help="OOD sets to evaluate on (default: none)")
    model = p.add_argument_group("model and loss")
    model.add_argument("--model", default=d.model, help="model name (gence.models.available())")
    model.add_argument("--model-param", action="append", default=[], type=parse_key_value, metavar="K=V",
                       help="model parameter, repeatable, e.g. width=32 (default: none)")
    model.add_argument("--loss", default=d.loss, help="loss name (gence.losses.available())")
    model.add_argument("--loss-param", action="append", default=[], type=parse_key_value, metavar="K=V",
                       help="loss parameter, repeatable, e.g. generative_weight=0.5 (default: none)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                     help="sgd (momentum, nesterov, weight decay) or adam (weight decay)")
    opt.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    opt.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum, in [0, 1)")
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay")
    opt.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=d.nesterov,
                     help=f"Nesterov momentum (SGD) (default: {'on' if d.nesterov else 'off'})")
    opt.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                     help="cosine, or step (x0.1 at 50%% and 75%% of training)")
    opt.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                     help="linear learning-rate warm-up, in epochs (at most the epochs)")
    opt.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    opt.add_argument("--steps", type=int, default=d.steps,
                     help="train exactly this many optimizer steps instead of --epochs epochs")
    opt.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=d.drop_last,
                     help=f"leave out each epoch's last, smaller batch (default: {'on' if d.drop_last else 'off'})")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    opt.add_argument("--seed", type=int, default=d.seed, help="seed of the data split, initialisation and batches")
    run = p.add_argument_group("execution and output")
    run.add_argument("--device", default=d.device, help="cpu | cuda | cuda:N | auto")
    run.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    run.add_argument("--n-bins", type=int, default=d.n_bins, help="bins of the calibration errors (ECE)")
    run.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="batch size of evaluation")
    run.add_argument("--threads", type=int, help="torch intra-op CPU threads (default: torch's choice); on a "
                     "shared machine 1 can be much faster than the default")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", metavar="PATH", help="write metrics, config and extras as JSON (NaN as null)")
    run.add_argument("--checkpoint", metavar="PATH", help="save the training state there (each minute, at an "
                     "epoch end, and after the last epoch); "
                     "run the same command again to resume after the last saved epoch")
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, dataset_params=dict(args.dataset_param),
        classes=args.classes, regime=args.regime, n_val_per_class=args.n_val_per_class,
        model=args.model, model_params=dict(args.model_param), loss=args.loss, loss_params=dict(args.loss_param),
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, nesterov=args.nesterov,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs, epochs=args.epochs, batch_size=args.batch_size,
        augment=args.augment, seed=args.seed, device=args.device, amp=args.amp, compile=args.compile,
        ood=list(args.ood), n_bins=args.n_bins, eval_batch_size=args.eval_batch_size,
        optimizer=args.optimizer, steps=args.steps, drop_last=args.drop_last,
    )


def format_metrics(metrics: dict[str, float]) -> str:
    """A plain-text table: splits x metrics, then temperature, groups, OOD and training numbers."""
    lines = [f"{'':14}" + "".join(f"{s:>10}" for s in SPLITS)]
    for m in SPLIT_METRICS:
        lines.append(f"{m:14}" + "".join(f"{metrics.get(split_key(s, m), math.nan):10.4f}" for s in SPLITS))
    lines.append("")
    lines.append(f"{TEMPERATURE:14}{metrics[TEMPERATURE]:10.4f}")
    lines.append(f"{'test accuracy':14}" + "".join(f"  {g} {metrics[group_key(g)]:.4f}" for g in GROUPS))
    ood_sets = sorted({k.split("/")[1] for k in metrics if k.startswith("ood/")})
    if ood_sets:
        lines.append("")
        lines.append(f"{'ood set / score':28}" + "".join(f"{m:>10}" for m in OOD_METRICS))
        for name in ood_sets:
            for score in [s for s in OOD_SCORES if ood_key(name, s, OOD_METRICS[0]) in metrics]:
                row = "".join(f"{metrics[ood_key(name, score, m)]:10.4f}" for m in OOD_METRICS)
                lines.append(f"{name + ' / ' + score:28}{row}")
    lines.append("")
    lines.append(f"train: loss {metrics['train/loss']:.4f}, {metrics['train/seconds']:.1f} s, "
                 f"{metrics['train/images_per_second']:.0f} images/s")
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    problem = usage_problem(config)
    if problem is None and args.threads is not None and args.threads < 1:
        problem = f"--threads {args.threads}: expected an integer >= 1"
    if problem is not None:
        print(f"gence train: {problem}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        with warnings.catch_warnings(record=True) as caught:  # printed after the progress bar, one line each
            warnings.simplefilter("default")
            result = fit(config, progress=not args.no_progress, checkpoint=args.checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        # what fit rejects before it trains: a name no registry knows, data that is not there, a regime
        # the data cannot fill, a parameter a model or loss does not take
        message = as_flags(str(exc))
        if "n_val_per_class" in str(exc):
            message += "; lower --n-val-per-class or the regime's N"
        print(f"gence train: {message}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"gence train: the run failed: {exc}", file=sys.stderr)
        return 1
    for message in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
        print(f"gence train: warning: {message}", file=sys.stderr)
    print(f"{config.dataset} {config.regime}, {config.model}, loss {config.loss}, {config.epochs} epochs, "
          f"seed {config.seed} ({result.extras['hardware']})")
    print(format_metrics(result.metrics))
    if args.json:
        payload = {"metrics": result.metrics, "config": result.config, "extras": result.extras}
        with open(args.json, "w") as fh:
            json.dump(_json_safe(payload), fh, indent=1, allow_nan=False)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
