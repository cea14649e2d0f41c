"""The run contract (gence.contract): stored keys recomputed from stored configs, one validation rule set
for `gence train` and grids, the metric schema against what evaluate/fit produce, the loop's options
(optimizer, steps, drop_last, init_output_bias), the code revision stored with runs, and the grid's
model check reporting the model's own error."""
from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

import gence
from gence import metrics
from gence.cli import main as gence_main
from gence.contract import (KEY_OMITTED_DEFAULTS, SPLIT_METRICS, TrainConfig, field_problem, metric_keys,
                            parse_cpu_hardware, run_key)
from gence.experiments import db as results_db
from gence.experiments.grid import GridChecks, GridError, parse_grid
from gence.losses import build as build_loss
from gence.models import build as build_model
from gence.properness.report import previous_loop_key
from gence.properness.study import study_config
from gence.train import fit
from gence.train.loop import hardware_string, train_epochs

REPO = Path(__file__).resolve().parents[1]

# (key, config) rows copied from results/cpu_study.sqlite and results/properness.sqlite: the keys were
# computed by the implementation before gence.contract existed, an independent reference.
_CPU = dict(amp=False, augment=None, batch_size=64, classes=None, compile=False, data_dir=None, dataset_params={},
            device="cpu", eval_batch_size=1024, loss="ce", loss_params={}, model="resnet8", model_params={},
            momentum=0.9, n_bins=15, n_val_per_class=50, nesterov=True, schedule="cosine", warmup_epochs=1.0,
            weight_decay=0.0005)
STORED = [
    ("00027870370e0fc4dd6ba2dfd9ee737f313eb6893b1df751463aae2a422db1b0",
     dict(_CPU, dataset="mnist", epochs=12, loss="focal_adaptive", lr=0.1, model="wrn",
          model_params={"depth": 10, "width": 2}, ood=["fashion_mnist", "gaussian_noise"], regime="balanced:100",
          seed=0)),
    ("00176c21e391fd24d0b42f58d44d39ecc55a77d9e532faaec25d034a8bce7663",
     dict(_CPU, dataset="fashion_mnist", epochs=100, lr=0.03, ood=["mnist", "gaussian_noise"],
          regime="balanced:10", seed=201)),
    ("90015b633ba051168e13f8a855118465917dac82de6e8e0ae0ae5b79703d5d04",
     dict(_CPU, dataset="fashion_mnist", epochs=15, lr=0.1, ood=["mnist", "gaussian_noise"],
          regime="long_tailed:10:200", seed=0)),
    ("546410278238e07ca02135ba950517f3633d58e1d5f0a8315b0b7010a79449d8",
     dict(_CPU, dataset="fashion_mnist", epochs=40, lr=0.01, ood=["mnist", "gaussian_noise"], regime="balanced:30",
          seed=100)),
]
NOISE_TASK = {"covariance": "identity", "dim": 2, "noise_prior": 0.6, "num_classes": 3, "seed": 0,
              "separation": 4.0, "task": "noise_class"}
PROPERNESS_ROW = ("886812493e904a83574b7718f8fe691d87910659a92f26ff95cc2f8d05675f52",
                  {"batch_size": 128, "eval_seed": 987654, "hidden": [64, 64], "loss": "ce", "loss_params": {},
                   "lr": 0.003, "n_eval": 20000, "n_train": 3000, "optimizer": "adam", "output_bias": [0.0, 0.0, -2.0],
                   "seed": 0, "steps": 800, "study": "properness", "study_version": 1, "task": NOISE_TASK})


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.mark.parametrize("key,config", STORED + [PROPERNESS_ROW], ids=lambda v: v[:8] if isinstance(v, str) else "")
def test_stored_keys_are_recomputed_from_stored_configs(key, config):
    assert run_key(config) == key


@pytest.mark.parametrize("key,config", STORED, ids=lambda v: v[:8] if isinstance(v, str) else "")
def test_a_stored_config_read_into_a_trainconfig_keeps_its_key_and_dict(key, config):
    resolved = TrainConfig.from_dict(config)
    assert resolved.to_dict() == config  # the later fields at their defaults are not written
    assert resolved.key() == key
    assert run_key({**config, **KEY_OMITTED_DEFAULTS}) == key  # written out at their defaults: same run
    assert run_key({**config, "optimizer": "adam"}) != key
    assert run_key({**config, "data_dir": "/elsewhere", "device": "cuda"}) == key


def test_properness_runs_know_their_key_under_the_previous_loop():
    config = study_config(task=NOISE_TASK, loss="ce", loss_params={}, n_train=3000, batch_size=128, lr=3e-3,
                          seed=0, steps=800, output_bias=(0.0, 0.0, -2.0))
    assert previous_loop_key(config) == PROPERNESS_ROW[0]


# ------------------------------------------------------------------------------------------ rules
GRID = """
[train]
epochs = 1
{extra}

[grid]
datasets = ["digits"]
regimes = ["balanced:5"]
models = [{model}]
losses = ["ce"]
seeds = [0]
"""


@pytest.mark.parametrize("field,value,needle", [("momentum", 1.5, "[0, 1)"), ("lr", -0.1, "> 0"),
                                                ("weight_decay", -1.0, ">= 0"), ("optimizer", "'rmsprop'", "adam")])
def test_train_config_grid_and_cli_apply_the_same_rule(field, value, needle, capsys):
    bad = {field: value.strip("'") if isinstance(value, str) else value}
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}=") as info:
        TrainConfig(**bad).validate()
    assert needle in str(info.value)
    with pytest.raises(GridError) as info:
        parse_grid(GRID.format(extra=f"{field} = {value}", model='"mlp"'))
    assert f"train.{field}" in str(info.value) and needle in str(info.value)
    assert field_problem(field, bad[field]) is not None
    if field != "optimizer":  # argparse refuses an unknown optimizer choice itself
        code = gence_main(["train", "--dataset", "digits", "--regime", "balanced:5", "--model", "mlp", "--epochs",
                           "1", "--device", "cpu", "--no-progress", f"--{field.replace('_', '-')}", str(value)])
        err = capsys.readouterr().err
        assert code == 2 and f"--{field.replace('_', '-')} {bad[field]!r}" in err and needle in err


def test_grid_accepts_a_verdict_table_for_the_report():
    grid = parse_grid(GRID.format(extra="", model='"mlp"') + '\n[verdict]\nblocks = ["grid"]\n')
    assert len(grid.runs) == 1


def test_grid_model_check_reports_the_models_own_error():
    with pytest.raises(GridError) as info:
        parse_grid(GRID.format(extra="", model='{name = "resnet", params = {depth = 7}}'))
    msg = str(info.value)
    assert "grid.models[0].params" in msg and "depth=7" in msg and "6n+2" in msg


def test_grid_checks_read_available_as_a_dict_or_a_list(monkeypatch):
    monkeypatch.setattr(gence.models, "available", lambda: {"mlp": "a multilayer perceptron"})
    monkeypatch.setattr(gence.losses, "available", lambda: ["ce"])
    checks = GridChecks()
    assert checks.models() == ["mlp"] and checks.losses() == ["ce"]
    assert len(parse_grid(GRID.format(extra="", model='"mlp"')).runs) == 1


# ---------------------------------------------------------------------------------- metric schema
def test_evaluate_and_fit_produce_the_schema_keys():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    assert tuple(metrics.evaluate(logits, torch.tensor([0, 2]))) == SPLIT_METRICS
    assert tuple(metrics.OOD_SCORES) == ("msp", "max_logit", "energy", "entropy")
    result = fit(TrainConfig(dataset="digits", regime="balanced:5", n_val_per_class=2, model="mlp",
                             model_params={"hidden": [8]}, epochs=1, device="cpu", ood=["uniform_noise"]),
                 progress=False)
    # written out by hand (docs/architecture.md), not from the contract's lists
    by_hand = {f"{s}/{m}" for s in ("val", "test", "val_ts", "test_ts")
               for m in ("error", "nll", "brier", "ece", "adaece", "classwise_ece", "mce")}
    by_hand |= {"temperature", "test/acc_many", "test/acc_medium", "test/acc_few", "test/never_predicted",
                "test/worst_class_accuracy", "train/loss", "train/seconds", "train/images_per_second",
                "train/error", "train/loss_floor"}
    by_hand |= {f"ood/uniform_noise/{s}/{m}" for s in ("msp", "max_logit", "energy", "entropy")
                for m in ("auroc", "aupr_in", "aupr_out", "fpr95")}
    assert set(metric_keys(["uniform_noise"])) == by_hand == set(result.metrics)


# ---------------------------------------------------------------------------------- loop options
def tiny(**over):
    base = dict(dataset="digits", regime="balanced:10", n_val_per_class=0, model="mlp", model_params={"hidden": [16]},
                epochs=2, batch_size=32, lr=0.05, warmup_epochs=0.0, device="cpu")
    return TrainConfig(**{**base, **over})


def test_step_budget_and_drop_last_count_steps_and_schedule():
    # 100 training images, batch 32: 4 steps an epoch (the last of 4 images), 3 with drop_last.
    steps = fit(tiny(steps=7), progress=False).extras["history"]
    assert len(steps) == 2  # 4 + 3 steps
    assert steps[-1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 6 / 7)), rel=1e-12)
    dropped = fit(tiny(steps=7, drop_last=True), progress=False).extras["history"]
    assert len(dropped) == 3  # 3 + 3 + 1 steps
    assert dropped[-1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 6 / 7)), rel=1e-12)
    epochs = fit(tiny(epochs=2, drop_last=True), progress=False).extras["history"]
    assert epochs[-1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 5 / 6)), rel=1e-12)


def test_adam_first_step_moves_each_parameter_by_the_learning_rate():
    """Adam's first step is lr * g / (|g| + eps) (bias-corrected moments m = g, v = g^2): each parameter
    with a gradient well above eps moves by lr; SGD would move it by lr * |g|."""
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=4, num_classes=3, image_size=None, hidden=(5,))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    config = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, steps=1, batch_size=16, warmup_epochs=0.0,
                         seed=0)
    grads = torch.autograd.grad(build_loss("ce", 3)(model(x), y), list(model.parameters()))
    train_epochs(model, build_loss("ce", 3), x, y, config, torch.device("cpu"), augment=False, progress=False)
    for p0, p1, g in zip(before, model.parameters(), grads):
        big = g.abs() > 1e-5
        assert big.any()
        torch.testing.assert_close((p0 - p1)[big], 1e-3 * g[big].sign(), rtol=1e-2, atol=1e-9)


def test_init_output_bias_shifts_the_initial_logits():
    shift = [3.0, -1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    plain = fit(tiny(optimizer="adam", steps=1, lr=1e-9), progress=False).test_logits
    moved = fit(tiny(optimizer="adam", steps=1, lr=1e-9, init_output_bias=shift), progress=False).test_logits
    torch.testing.assert_close(moved - plain, torch.tensor(shift).expand_as(plain), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="init_output_bias"):
        fit(tiny(init_output_bias=[1.0, 2.0]), progress=False)


# ------------------------------------------------------------------------------- code revision
def test_stored_version_names_the_git_commit_and_nothing_outside_git(tmp_path, monkeypatch):
    results_db.code_revision.cache_clear()
    src = Path(gence.__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", str(src.parent)],
                           capture_output=True, text=True).stdout.strip()
    if head:
        expected = f"{gence.__version__}+g{head}" + (".dirty" if dirty else "")
        assert results_db.software_versions()["gence_version"] == expected
    copy = tmp_path / "gence"
    copy.mkdir()
    (copy / "__init__.py").write_text("")
    monkeypatch.setattr(gence, "__file__", str(copy / "__init__.py"))
    results_db.code_revision.cache_clear()
    try:
        assert results_db.software_versions()["gence_version"] == gence.__version__
    finally:
        monkeypatch.undo()
        results_db.code_revision.cache_clear()


def test_cpu_hardware_is_read_back_from_what_a_run_stores():
    """The hardware string a run on this CPU stores parses back to the values asked of the OS and torch; one
    stored before the capability was recorded has none; a GPU's is not a CPU's."""
    cpu = parse_cpu_hardware(hardware_string("cpu"))
    assert cpu["cores"] == len(os.sched_getaffinity(0))
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["threads"] == torch.get_num_threads()
    assert parse_cpu_hardware("Intel(R) Xeon(R) 6 (2 cores, torch threads 1)") == {
        "model": "Intel(R) Xeon(R) 6", "cores": 2, "capability": None, "threads": 1}
    assert parse_cpu_hardware("NVIDIA H100 80GB HBM3 (CUDA 12.8)") is None
