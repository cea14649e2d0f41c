"""The training loop: accuracy on digits, exact metric keys, determinism, schedule, hooks, NaN errors, CLI.

Every run here is a few epochs of a small CNN or MLP on the embedded 8x8 digits, so the file takes
seconds; none reads /work/shared or any data directory.
"""
import json
import math
import os

import pytest
import torch
from torch import nn

import gence.losses
from gence.cli import main as gence_main
from gence.train import NonFiniteLossError, TrainConfig, TrainResult, fit, learning_rate
from gence.train.loop import group_thresholds

SPLIT_METRICS = ("error", "nll", "brier", "ece", "adaece", "classwise_ece", "mce")
OOD_SCORES = ("msp", "max_logit", "energy", "entropy")
OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def expected_keys(ood=()):
    """The metric keys of docs/architecture.md, written out independently of the loop."""
    keys = {f"{s}/{m}" for s in ("val", "test", "val_ts", "test_ts") for m in SPLIT_METRICS}
    keys |= {"temperature", "test/acc_many", "test/acc_medium", "test/acc_few",
             "test/never_predicted", "test/worst_class_accuracy",
             "train/loss", "train/seconds", "train/images_per_second", "train/error", "train/loss_floor"}
    keys |= {f"ood/{o}/{s}/{m}" for o in ood for s in OOD_SCORES for m in OOD_METRICS}
    return keys


def tiny(**overrides):
    """A run of a second or two: digits, small CNN, CE."""
    base = dict(dataset="digits", regime="balanced:20", n_val_per_class=10, model="small_cnn", loss="ce",
                epochs=2, batch_size=64, lr=0.05, warmup_epochs=0, device="cpu")
    base.update(overrides)
    return TrainConfig(**base)


def test_cosine_head_reaches_the_model_through_model_params():
    """LDAM with the cosine head, as its authors train it: every test logit is a cosine, |z| <= 1,
    while the same run with the linear head has logits outside [-1, 1]."""
    cosine = fit(tiny(loss="ldam", model_params={"head": "cosine"}, epochs=1), progress=False)
    linear = fit(tiny(loss="ldam", epochs=1), progress=False)
    assert cosine.test_logits.abs().max() <= 1 + 1e-5
    assert linear.test_logits.abs().max() > 1


class Killed(Exception):
    """Stands for a kill right after a checkpoint was written."""


def kill_after_epoch(monkeypatch, n_epochs):
    """Make the loop die right after it saved the state of ``n_epochs`` epochs."""
    import gence.train.loop as loop

    save = loop._save_checkpoint
    monkeypatch.setattr(loop, "CHECKPOINT_SECONDS", 0.0)  # save after every epoch

    def save_then_die(path, state):
        save(path, state)
        if len(state["history"]) == n_epochs:
            raise Killed(n_epochs)
    monkeypatch.setattr(loop, "_save_checkpoint", save_then_die)


def count_epochs(monkeypatch):
    """Count the epochs the loop runs (one ``iterate_batches`` call each)."""
    import gence.data

    calls, original = [], gence.data.iterate_batches
    monkeypatch.setattr(gence.data, "iterate_batches", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_resumed_run_equals_a_run_never_stopped(tmp_path, monkeypatch):
    """Killed after epoch 2 of 4 and started again, the run trains epochs 3 and 4 only and ends with the
    same metrics, logits and history as an uninterrupted run: model, optimiser momentum, BN statistics,
    the augmentation generator and the schedule all carried over."""
    config = tiny(loss="gence", epochs=4, augment=True, lr=0.1, warmup_epochs=1)
    reference = fit(config, progress=False)
    path = tmp_path / "sub" / "run.pt"
    with monkeypatch.context() as m:
        kill_after_epoch(m, 2)
        with pytest.raises(Killed):
            fit(config, progress=False, checkpoint=path)
    assert path.exists() and not list(path.parent.glob("*.tmp*"))
    with monkeypatch.context() as m:
        epochs = count_epochs(m)
        resumed = fit(config, progress=False, checkpoint=path)
    assert len(epochs) == 2
    assert comparable(resumed.metrics) == comparable(reference.metrics)
    assert torch.equal(resumed.test_logits, reference.test_logits)
    assert [h["loss"] for h in resumed.extras["history"]] == [h["loss"] for h in reference.extras["history"]]
    # train/seconds adds the time of both parts: more than the part before the kill.
    first_part = torch.load(path, weights_only=True)["history"][1]["seconds"]
    assert resumed.metrics["train/seconds"] > first_part > 0


def test_checkpoint_from_other_hardware_resumes_with_a_warning(tmp_path, monkeypatch):
    """Kernels differ by CPU capability, GPU and thread count: a checkpoint written on other hardware of the
    same device type goes on from its epoch, saying its numbers may not be bit-identical; one from before the
    field existed, or from this hardware, resumes silently."""
    import warnings

    config = tiny(epochs=2)
    path = tmp_path / "run.pt"
    with monkeypatch.context() as m:
        kill_after_epoch(m, 1)
        with pytest.raises(Killed):
            fit(config, progress=False, checkpoint=path)
    state = torch.load(path, weights_only=True)
    assert f", {torch.backends.cpu.get_cpu_capability()}, torch threads {torch.get_num_threads()})" in state["hardware"]
    other = tmp_path / "other.pt"
    torch.save({**state, "hardware": "Another CPU (64 cores, AVX2, torch threads 8)"}, other)
    old = tmp_path / "old.pt"
    torch.save({k: v for k, v in state.items() if k != "hardware"}, old)
    with monkeypatch.context() as m:
        epochs = count_epochs(m)
        with pytest.warns(UserWarning, match=r"written on Another CPU \(64 cores, AVX2, torch threads 8\), this "
                                             r"run is on .*: it goes on from the saved epoch"):
            fit(config, progress=False, checkpoint=other)
    assert len(epochs) == 1                      # resumed after epoch 1, not started again
    for quiet in (old, path):
        with monkeypatch.context() as m, warnings.catch_warnings():
            warnings.simplefilter("error")
            epochs = count_epochs(m)
            fit(config, progress=False, checkpoint=quiet)
        assert len(epochs) == 1


def test_checkpoints_are_saved_once_a_minute_and_after_the_last_epoch(tmp_path, monkeypatch):
    import gence.train.loop as loop

    saved, save = [], loop._save_checkpoint
    monkeypatch.setattr(loop, "_save_checkpoint", lambda path, state: saved.append(len(state["history"])) or
                        save(path, state))
    fit(tiny(epochs=3), progress=False, checkpoint=tmp_path / "a.pt")   # a few seconds: the last epoch only
    assert saved == [3]
    saved.clear()
    monkeypatch.setattr(loop, "CHECKPOINT_SECONDS", 0.0)
    fit(tiny(epochs=3), progress=False, checkpoint=tmp_path / "b.pt")
    assert saved == [1, 2, 3]


def test_checkpoint_of_another_config_is_refused_and_kept(tmp_path):
    path = tmp_path / "run.pt"
    fit(tiny(epochs=1), progress=False, checkpoint=path)
    saved = path.read_bytes()
    with pytest.raises(ValueError) as info:
        fit(tiny(epochs=1, lr=0.2), progress=False, checkpoint=path)
    for needle in (str(path), "'lr'", "0.05", "0.2"):
        assert needle in str(info.value)
    assert path.read_bytes() == saved
    # Where a run happens is not which run it is: another data_dir resumes (nothing left to train).
    fit(tiny(epochs=1, data_dir=str(tmp_path)), progress=False, checkpoint=path)


def test_cli_checkpoint_resumes(tmp_path, monkeypatch, capsys):
    path = tmp_path / "ck.pt"
    args = ["train", "--dataset", "digits", "--regime", "balanced:20", "--n-val-per-class", "10", "--epochs", "3",
            "--device", "cpu", "--no-progress", "--checkpoint", str(path)]
    with monkeypatch.context() as m:
        kill_after_epoch(m, 1)
        with pytest.raises(Killed):
            gence_main(args)
    with monkeypatch.context() as m:
        epochs = count_epochs(m)
        assert gence_main(args) == 0
    assert len(epochs) == 2 and path.exists()


def comparable(metrics):
    """Metrics minus the timings, NaN replaced by a string so that == compares it too."""
    return {k: "nan" if math.isnan(v) else v for k, v in metrics.items()
            if k not in ("train/seconds", "train/images_per_second")}


def test_small_cnn_learns_digits_from_50_per_class():
    result = fit(tiny(regime="balanced:50", n_val_per_class=20, epochs=10, lr=0.1, warmup_epochs=1),
                 progress=False)
    assert isinstance(result, TrainResult)
    assert result.metrics["test/error"] < 0.10
    assert set(result.metrics) == expected_keys()
    # Balanced 50 per class: every class is "many" (50 > 100 * 50/500) and the other groups are empty.
    assert result.metrics["test/acc_many"] == pytest.approx(1 - result.metrics["test/error"])
    assert math.isnan(result.metrics["test/acc_medium"]) and math.isnan(result.metrics["test/acc_few"])
    # Temperature scaling changes neither the predictions nor the error, only the probabilities.
    assert result.metrics["test_ts/error"] == result.metrics["test/error"]
    assert result.metrics["val_ts/nll"] <= result.metrics["val/nll"] + 1e-12
    assert result.extras["data"] == {"n_train": 500, "n_val": 200, "n_test": len(result.test_labels),
                                     "class_counts": [50] * 10, "augment": False}
    assert result.test_logits.shape == (len(result.test_labels), 10)
    assert len(result.extras["history"]) == 10
    assert result.metrics["train/loss"] == result.extras["history"][-1]["loss"]
    assert sum(result.extras["reliability"]["test"]["count"]) == len(result.test_labels)
    # what ran it, in the same words the results database stores: the CPU model (from /proc/cpuinfo where
    # it exists), its cores, torch's kernel capability and threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert result.extras["hardware"].endswith(f" ({cores} cores, {torch.backends.cpu.get_cpu_capability()}, "
                                              f"torch threads {torch.get_num_threads()})")
    if os.path.exists("/proc/cpuinfo"):
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        assert result.extras["hardware"].startswith(f"{model} (")
    json.dumps(result.extras)  # JSON-able
    json.dumps(result.config)


def test_same_seed_same_metrics_and_another_seed_differs():
    # Augmentation on, so the device-side shuffle and crop/flip draws are covered too.
    config = tiny(augment=True, model_params={"widths": [8, 8, 8]})
    first = fit(config, progress=False)
    second = fit(TrainConfig.from_dict(config.to_dict()), progress=False)
    assert comparable(first.metrics) == comparable(second.metrics)
    assert torch.equal(first.test_logits, second.test_logits)
    other = fit(tiny(augment=True, model_params={"widths": [8, 8, 8]}, seed=1), progress=False)
    assert other.metrics["train/loss"] != first.metrics["train/loss"]


def test_learning_rate_closed_form():
    base, total, warm = 0.1, 100, 10
    assert learning_rate(0, total, base, warm) == pytest.approx(0.01)
    assert learning_rate(4, total, base, warm) == pytest.approx(0.05)
    assert learning_rate(9, total, base, warm) == pytest.approx(0.1)
    assert learning_rate(10, total, base, warm) == pytest.approx(0.1)  # cosine starts at the peak
    assert learning_rate(55, total, base, warm) == pytest.approx(0.05)  # half-way through the decay
    assert learning_rate(32, total, base, warm) == pytest.approx(0.05 * (1 + math.cos(math.pi * 22 / 90)))
    assert learning_rate(99, total, base, warm) == pytest.approx(0.05 * (1 + math.cos(math.pi * 89 / 90)))
    assert learning_rate(49, total, base, 0, "step") == pytest.approx(0.1)
    assert learning_rate(50, total, base, 0, "step") == pytest.approx(0.01)
    assert learning_rate(74, total, base, 0, "step") == pytest.approx(0.01)
    assert learning_rate(75, total, base, 0, "step") == pytest.approx(0.001)


class RecordingLoss(nn.Module):
    """Cross-entropy that records what the loop tells it; turns NaN from epoch ``nan_from`` on."""

    def __init__(self, nan_from=None):
        super().__init__()
        self.calls, self.nan_from, self.epoch = [], nan_from, 0

    def on_epoch_start(self, epoch, total_epochs):
        self.calls.append((epoch, total_epochs))
        self.epoch = epoch

    def forward(self, logits, target):
        loss = nn.functional.cross_entropy(logits, target)
        return loss * math.nan if self.nan_from is not None and self.epoch >= self.nan_from else loss


@pytest.fixture
def recording_loss(monkeypatch):
    made = {}

    def build(name, num_classes, class_counts=None, **params):
        made.update(name=name, num_classes=num_classes, class_counts=class_counts, params=params)
        made["loss"] = RecordingLoss(**params)
        return made["loss"]

    monkeypatch.setattr(gence.losses, "build", build)
    return made


def test_loss_hook_class_counts_and_schedule_as_applied(recording_loss):
    # long_tailed:4:40 over 10 classes: n_i = floor(40 * 4 ** (-i / 9)) drawn exactly per class.
    config = tiny(model="mlp", model_params={"hidden": [16]}, regime="long_tailed:4:40", n_val_per_class=5,
                  epochs=3, batch_size=32, lr=0.2, warmup_epochs=1, loss="recording")
    result = fit(config, progress=False)
    assert recording_loss["loss"].calls == [(0, 3), (1, 3), (2, 3)]
    counts = recording_loss["class_counts"]
    assert counts == result.extras["data"]["class_counts"]
    assert counts[0] == 40 and counts[-1] == 10 and counts == sorted(counts, reverse=True)
    assert recording_loss["num_classes"] == 10
    n_train = sum(counts)
    steps = math.ceil(n_train / 32)
    lrs = [h["lr"] for h in result.extras["history"]]
    assert lrs == [pytest.approx(learning_rate((e + 1) * steps - 1, 3 * steps, 0.2, steps)) for e in range(3)]
    # n_max = 40: groups at counts > 8 ("many") and < 1.6 ("few"): all classes are "many".
    assert group_thresholds(40) == pytest.approx((8.0, 1.6))
    assert group_thresholds(500) == group_thresholds(5000) == (100, 20)


def test_nan_loss_names_the_epoch(recording_loss):
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 1, step 0") as info:
        fit(tiny(model="mlp", loss="recording", loss_params={"nan_from": 1}, epochs=3), progress=False)
    assert info.value.epoch == 1 and info.value.step == 0


def test_huge_learning_rate_stops_with_a_clear_error():
    with pytest.raises(NonFiniteLossError, match=r"at epoch \d+, step \d+.*lower the learning rate"):
        fit(tiny(model="mlp", lr=1e30, epochs=3), progress=False)


def test_gence_loss_and_ood_sets_run_through_the_loop():
    result = fit(tiny(loss="gence", loss_params={"generative_weight": 1.0}, ood=["uniform_noise"]), progress=False)
    assert set(result.metrics) == expected_keys(["uniform_noise"])
    assert all(math.isfinite(v) for k, v in result.metrics.items() if not k.startswith("test/acc_"))
    assert 0 <= result.metrics["ood/uniform_noise/msp/auroc"] <= 1


def test_config_round_trip_and_errors():
    config = tiny(loss_params={"generative_weight": 0.5}, ood=["uniform_noise"])
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="schedule='linear'"):
        fit(tiny(schedule="linear"), progress=False)
    with pytest.raises(ValueError, match="epochs=0"):
        fit(tiny(epochs=0), progress=False)
    with pytest.raises(ValueError, match="'nosuchset'"):  # before training, not after it
        fit(tiny(ood=["nosuchset"]), progress=False)
    with pytest.raises(ValueError, match="'heldout' needs TrainConfig.classes"):
        fit(tiny(ood=["heldout"]), progress=False)


def test_held_out_classes_are_the_ood_set():
    result = fit(tiny(model="mlp", classes=[0, 1, 2, 3, 4, 5], ood=["heldout"]), progress=False)
    assert result.test_logits.shape[1] == 6
    assert set(result.test_labels.tolist()) == set(range(6))
    assert 0 <= result.metrics["ood/heldout/energy/auroc"] <= 1


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = gence_main(["train", "--dataset", "digits", "--regime", "balanced:10", "--n-val-per-class", "5",
                       "--model", "mlp", "--model-param", "hidden=[8]", "--loss", "gence",
                       "--loss-param", "generative_weight=0.5", "--epochs", "1", "--device", "cpu",
                       "--no-progress", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test_ts" in printed and "temperature" in printed and "images/s" in printed
    payload = json.loads(out.read_text())
    assert set(payload["metrics"]) == expected_keys()
    assert payload["config"]["loss_params"] == {"generative_weight": 0.5}
    assert payload["config"]["model_params"] == {"hidden": [8]}
    assert payload["metrics"]["test/acc_few"] is None  # NaN is written as null


# --- the validation curve, the training error and the loss floor (what the convergence study reads) ---

def test_curve_epochs_by_hand():
    from gence.train.loop import curve_epochs

    assert curve_epochs(10, 4, 40, None) == set()
    assert curve_epochs(10, 4, 40, 0.1) == set(range(10))
    # 7 one-step epochs, every 0.25: marks at 1.75, 3.5, 5.25, 7 steps -> after epochs 2, 4, 6, 7 (0-based 1, 3, 5, 6)
    assert curve_epochs(7, 1, 7, 0.25) == {1, 3, 5, 6}
    # 3 epochs of 10 steps, every 0.5: 15 steps -> epoch 1 (20 steps), 30 steps -> epoch 2
    assert curve_epochs(3, 10, 30, 0.5) == {1, 2}
    assert curve_epochs(1, 5, 5, 1.0) == {0}


def test_validation_curve_leaves_training_unchanged_and_ends_at_the_final_metrics():
    plain = fit(tiny(epochs=5), progress=False)
    curved = fit(tiny(epochs=5, eval_every=0.2), progress=False)
    drop = lambda h: {k: v for k, v in h.items() if k in ("epoch", "loss", "lr")}  # noqa: E731
    assert [drop(h) for h in curved.extras["history"]] == [drop(h) for h in plain.extras["history"]]
    timing = ("train/seconds", "train/images_per_second")
    same = lambda a, b: a == b or (math.isnan(a) and math.isnan(b))  # noqa: E731
    assert set(curved.metrics) == set(plain.metrics)
    assert all(same(curved.metrics[k], plain.metrics[k]) for k in plain.metrics if k not in timing)
    points = [h for h in curved.extras["history"] if "val/error" in h]
    assert [h["epoch"] for h in points] == [0, 1, 2, 3, 4]  # every 0.2 of 5 epochs
    assert [h["progress"] for h in points] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    # The last point is the final model on the validation split: the same numbers as the final evaluation.
    for m in ("error", "nll", "ece"):
        assert points[-1][f"val/{m}"] == pytest.approx(curved.metrics[f"val/{m}"], rel=1e-12, abs=1e-15)
    assert all("val/error" not in h for h in plain.extras["history"])
    assert "eval_every" not in plain.config  # a run without a curve keeps the key it had before the field existed


@pytest.mark.parametrize("loss,params,floor", [
    ("ce", {}, 0.0),
    ("gence", {}, math.log(20)),                              # one batch of 20 per class: log 20 per sample
    ("gence", {"generative_weight": 0.5}, 0.5 * math.log(20)),
])
def test_loss_floor_is_the_loss_of_certain_right_logits(loss, params, floor):
    # batch_size above the 200 training images: every epoch is one batch holding 20 images of each class.
    result = fit(tiny(loss=loss, loss_params=params, batch_size=256, epochs=1), progress=False)
    assert result.metrics["train/loss_floor"] == pytest.approx(floor, abs=1e-6)


def test_train_error_is_the_final_models_error_on_its_training_subset():
    from gence import data, models
    from gence.train.loop import seed_everything

    # lr so small that no weight moves (each update is far below a float32 ulp) and an MLP without
    # batch norm: the final model is its initialisation, which a second method rebuilds here.
    config = tiny(model="mlp", lr=1e-30, weight_decay=0.0, epochs=1, seed=3)
    result = fit(config, progress=False)
    ds = data.load_dataset("digits")
    train_idx, _ = data.split_indices(ds.train_y, config.regime, config.n_val_per_class, seed=3,
                                      num_classes=ds.num_classes)
    seed_everything(3)
    seed_everything(3)  # fit seeds again after drawing the data; the model is built from that state
    net = models.build("mlp", 1, ds.num_classes, tuple(ds.image_shape[1:])).eval()
    with torch.no_grad():
        logits = net(ds.normalize(ds.train_x[torch.from_numpy(train_idx)]))
    expected = float((logits.argmax(1) != ds.train_y[torch.from_numpy(train_idx)]).double().mean())
    assert 0.5 < expected  # an untrained net: most training images wrong, so the check has teeth
    assert result.metrics["train/error"] == pytest.approx(expected, abs=1e-12)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def test_bf16_kernel_check_agrees_with_the_cpu_flags():
    """oneDNN has bf16 kernels on x86 with AVX-512 (BW, VL, DQ) and none on AVX2 alone: read from
    /proc/cpuinfo, not from torch. CPUs with neither description (other ISAs, AVX2 with AVX-NE-CONVERT)
    are not decided here."""
    import gence.train.loop as loop
    flags = _cpu_flags()
    if {"avx512bw", "avx512vl", "avx512dq"} <= flags:
        assert loop.cpu_has_bf16_kernels()
    elif "avx2" in flags and not flags & {"avx512f", "avx_ne_convert", "amx_bf16"}:
        assert not loop.cpu_has_bf16_kernels()
    else:
        pytest.skip(f"no x86 flags that decide it here ({sorted(flags)[:5]}...)")


def test_amp_dtype_per_device(monkeypatch):
    """fp16 on CUDA, bf16 on a CPU with bf16 kernels, None (float32) on one without."""
    import gence.train.loop as loop
    for has, cpu in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(loop, "cpu_has_bf16_kernels", lambda has=has: has)
        assert loop.amp_dtype(torch.device("cpu")) is cpu
        assert loop.amp_dtype(torch.device("cuda")) is torch.float16
    assert loop.precision(torch.device("cpu"), False) == "float32"
    assert loop.precision(torch.device("cpu"), True) == "float32 (amp: no bf16 kernels on this CPU)"


def test_amp_without_bf16_kernels_is_the_float32_run(monkeypatch):
    """On a CPU without bf16 kernels, amp=True gives exactly the float32 run's numbers (the second method:
    amp=False), says so in extras and warns; where the kernels exist, amp=True runs bf16: other numbers."""
    import gence.train.loop as loop
    float32 = fit(tiny(epochs=1), progress=False)
    monkeypatch.setattr(loop, "cpu_has_bf16_kernels", lambda: False)
    with pytest.warns(RuntimeWarning, match="amp=True .* no bf16 kernels .* float32"):
        fallback = fit(tiny(epochs=1, amp=True), progress=False)
    assert comparable(fallback.metrics) == comparable(float32.metrics)
    assert torch.equal(fallback.test_logits, float32.test_logits)
    assert fallback.extras["precision"] == "float32 (amp: no bf16 kernels on this CPU)"
    assert float32.extras["precision"] == "float32"
    monkeypatch.setattr(loop, "cpu_has_bf16_kernels", lambda: True)
    bf16 = fit(tiny(epochs=1, amp=True), progress=False)
    assert bf16.extras["precision"] == "bfloat16 autocast"
    assert not torch.equal(bf16.test_logits, float32.test_logits)
