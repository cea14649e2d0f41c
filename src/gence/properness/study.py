"""The properness study: fit an MLP with each loss on data whose posterior is known, and measure how
far its q(y|x) lands from the true p(y|x).

A loss is (strictly) proper when its population risk is (uniquely) minimised at the true posterior.
Here that is tested where it matters in practice: finite training sets, mini-batches (GenCE's class
marginal is estimated per batch), a real optimiser and learning rate. Every run is one
:class:`gence.contract.TrainConfig` trained by the one loop (:func:`gence.train.fit`: Adam, a fixed step
budget, the ragged batch dropped, on the study's tensors) and run by the one runner
(:func:`gence.experiments.run_grid`: resumable, parallel, stored in the results database under its run
key); :func:`run` is the run function, and its metrics come from :func:`posterior_metrics` on fresh
samples of the task.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from gence.contract import TrainConfig
from gence.data import ArrayDataset
from gence.data.synthetic import GaussianTask
from gence.experiments.grid import RunSpec
from gence.experiments.runner import run_grid
from gence.properness.completeness import NoiseClassTask, class_scales
from gence.train import fit

__all__ = ["Sweep", "make_task", "task_dataset", "study_config", "posterior_metrics", "run", "run_study",
           "default_sweep", "quick_sweep", "LOSSES", "GRID", "DATASET", "RUN_FN"]

GRID = "properness"           # the runs' ``grid`` column in the results database
DATASET = "known_posterior"   # TrainConfig.dataset of the study's runs (data built by task_dataset)
RUN_FN = "gence.properness.study:run"

# The losses of the study: label -> (registry name, parameters).
LOSSES: dict[str, tuple[str, dict]] = {
    "CE": ("ce", {}),
    "GenCE": ("gence", {"generative_weight": 1.0}),
    "GenCE (lam=0.5)": ("gence", {"generative_weight": 0.5}),
    "focal (gamma=3)": ("focal", {"gamma": 3.0}),
    "label smoothing (0.1)": ("label_smoothing", {"alpha": 0.1}),
    "Brier": ("brier", {}),
}


def make_task(spec: dict):
    """A task from its spec: ``{"task": "gaussians" | "noise_class", **constructor arguments}``."""
    spec = dict(spec)
    kind = spec.pop("task", "gaussians")
    if kind == "gaussians":
        return GaussianTask(**spec)
    if kind == "noise_class":
        return NoiseClassTask(**spec)
    raise ValueError(f"unknown task={kind!r}; expected 'gaussians' or 'noise_class'")


def study_config(task: dict, loss: str, loss_params: dict, n_train: int, batch_size: int, lr: float, seed: int,
                 steps: int = 1000, hidden: tuple = (64, 64), output_bias: tuple | None = None,
                 n_eval: int = 20_000, eval_seed: int = 987_654) -> TrainConfig:
    """One run of the study as a TrainConfig.

    ``steps`` steps of Adam (no weight decay) with a cosine decay from ``lr`` to 0 and no warm-up, batches
    drawn without replacement epoch by epoch and the ragged last batch dropped (GenCE's class marginal is
    estimated per batch); ``batch_size`` larger than ``n_train`` means full batch. ``output_bias`` is added
    to the initial bias of the last layer (to move the starting point of the optimisation, e.g. on the
    completeness-violating task). The data (``dataset_params``, see :func:`task_dataset`): ``n_train``
    samples of ``task`` drawn with the run's seed, and ``n_eval`` evaluation samples drawn with
    ``eval_seed``, shared by every run of the task.
    """
    return TrainConfig(
        dataset=DATASET, regime="full", n_val_per_class=0, augment=False,
        dataset_params={"task": make_task(task).config(), "n_train": int(n_train), "sample_seed": int(seed),
                        "n_eval": int(n_eval), "eval_seed": int(eval_seed)},
        model="mlp", model_params={"hidden": [int(h) for h in hidden]},
        init_output_bias=None if output_bias is None else [float(b) for b in output_bias],
        loss=loss, loss_params=dict(loss_params),
        optimizer="adam", lr=float(lr), weight_decay=0.0, schedule="cosine", warmup_epochs=0.0,
        steps=int(steps), epochs=1, drop_last=True, batch_size=int(min(batch_size, n_train)), seed=int(seed),
        device="cpu", eval_batch_size=int(n_eval))


_EVAL_CACHE: dict = {}


def task_dataset(params: dict) -> ArrayDataset:
    """The study's data for ``TrainConfig.dataset_params`` of :func:`study_config`: training samples
    drawn with ``default_rng([sample_seed, 1])``, the shared evaluation samples as the test split; no
    standardisation (mean 0, std 1: the network sees x as drawn); ``extras["task"]`` is the task."""
    task = make_task(params["task"])
    x, y = task.sample(params["n_train"], seed=np.random.default_rng([params["sample_seed"], 1]))
    key = (json.dumps(task.config(), sort_keys=True), params["n_eval"], params["eval_seed"])
    if key not in _EVAL_CACHE:
        _EVAL_CACHE.clear()
        _EVAL_CACHE[key] = task.sample(params["n_eval"], seed=params["eval_seed"])
    test_x, test_y = _EVAL_CACHE[key]
    return ArrayDataset(
        name=DATASET, train_x=torch.from_numpy(x), train_y=torch.from_numpy(y), test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y), num_classes=task.num_classes,
        classes=[str(k) for k in range(task.num_classes)], image_shape=None,
        mean=torch.zeros(task.dim), std=torch.ones(task.dim), params=dict(params), extras={"task": task})


def posterior_metrics(p: np.ndarray, log_q: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """How far the model's q(y|x) is from the true p(y|x), on the same samples x.

    - ``kl``: mean over x of KL(p || q) = sum_y p log(p/q) (terms with p = 0 count 0), in nats;
    - ``mae``: mean over x and classes of |q - p|;
    - ``ece_true``: ECE with 'accuracy' replaced by the true probability that the predicted class is
      right: equal-width bins (lo, hi] on the top-label confidence max_y q (the first bin includes 0),
      sum over bins of (bin fraction) * |mean confidence - mean p(argmax q | x)|;
    - ``accuracy``: expected accuracy of argmax q under the true posterior, E p(argmax q | x);
      ``bayes_accuracy``: the same for the Bayes classifier, E max_y p; ``rel_accuracy``: their
      ratio; ``agreement``: fraction of x where argmax q = argmax p;
    - ``c/k``: E q(k|x) / E p(k|x), the per-class scale (see ``completeness.class_scales``);
      ``kl_scaled``: mean KL(r || q) with r = c p renormalised — small when q = c p for some c.
    """
    p = np.asarray(p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    q = np.exp(log_q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - log_q), 0.0).sum(axis=1)
    pred = q.argmax(axis=1)
    conf = q.max(axis=1)
    right = p[np.arange(len(p)), pred]
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=conf - right, minlength=n_bins)
    ece = float(np.abs(gap).sum() / len(p))
    acc, bayes = float(right.mean()), float(p.max(axis=1).mean())
    c = class_scales(p, q)
    r = p * c
    r /= r.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_scaled = np.where(r > 0, r * (np.log(r) - log_q), 0.0).sum(axis=1)
    out = {"kl": float(kl.mean()), "mae": float(np.abs(q - p).mean()), "ece_true": ece,
           "accuracy": acc, "bayes_accuracy": bayes, "rel_accuracy": acc / bayes,
           "agreement": float((pred == p.argmax(axis=1)).mean()), "kl_scaled": float(kl_scaled.mean())}
    assert count.sum() == len(p)
    out.update({f"c/{k}": float(v) for k, v in enumerate(c)})
    return out


def run(config: dict, checkpoint=None) -> tuple[dict[str, float], dict]:
    """The study's run function for the runner: train ``config`` (a :func:`study_config` as a dict) with
    :func:`gence.train.fit` on :func:`task_dataset`, then compare its test-split posteriors with the
    task's. Metrics: :func:`posterior_metrics`, the loop's ``test/*`` and ``train/*``."""
    cfg = TrainConfig.from_dict(config)
    ds = task_dataset(cfg.dataset_params)
    result = fit(cfg, progress=False, checkpoint=checkpoint, dataset=ds)
    p = ds.extras["task"].posterior(ds.test_x.numpy())
    log_q = F.log_softmax(result.test_logits.double(), dim=1).numpy()
    loop = {k: v for k, v in result.metrics.items() if k.startswith(("test/", "train/"))}
    return {**loop, **posterior_metrics(p, log_q)}, {"history": result.extras["history"],
                                                      "hardware": result.extras["hardware"]}


# --- sweeps -------------------------------------------------------------------------------------

@dataclass
class Sweep:
    """One-factor-at-a-time sweeps around a base setting, plus task variants and the completeness case.

    Each axis varies one thing and keeps the rest at the base; the report finds each axis's runs
    by matching their configs, so a run shared by several axes (the base) is trained once.
    """
    base_task: dict
    n_train: int
    batch_size: int
    lr: float
    steps: int
    seeds: tuple
    sizes: tuple
    batch_sizes: tuple
    lrs: tuple
    tasks: dict  # label -> task spec (task variants at the base setting)
    completeness_tasks: dict  # label -> task spec
    output_biases: tuple  # initial output biases of the last class on the completeness tasks
    losses: dict = field(default_factory=lambda: dict(LOSSES))
    n_eval: int = 20_000
    hidden: tuple = (64, 64)

    def config(self, loss_label: str, seed: int, **over) -> TrainConfig:
        name, params = self.losses[loss_label]
        kw = dict(task=self.base_task, loss=name, loss_params=params, n_train=self.n_train,
                  batch_size=self.batch_size, lr=self.lr, seed=seed, steps=self.steps,
                  n_eval=self.n_eval, hidden=tuple(self.hidden))
        kw.update(over)
        return study_config(**kw)

    def axes(self) -> dict[str, list[tuple[object, str, TrainConfig]]]:
        """axis name -> [(axis value, loss label, config)] for every run of that axis."""
        out: dict[str, list] = {"size": [], "batch": [], "lr": [], "task": [], "completeness": []}
        for loss in self.losses:
            for s in self.seeds:
                out["size"] += [(n, loss, self.config(loss, s, n_train=n)) for n in self.sizes]
                out["batch"] += [(b, loss, self.config(loss, s, batch_size=b)) for b in self.batch_sizes]
                out["lr"] += [(lr, loss, self.config(loss, s, lr=lr)) for lr in self.lrs]
                out["task"] += [(lab, loss, self.config(loss, s, task=t)) for lab, t in self.tasks.items()]
                for lab, t in self.completeness_tasks.items():
                    K = make_task(t).num_classes
                    for b in self.output_biases:
                        bias = None if b == 0 else tuple([0.0] * (K - 1) + [float(b)])
                        out["completeness"].append(((lab, b), loss, self.config(
                            loss, s, task=t, output_bias=bias)))
        return out

    def specs(self) -> list[RunSpec]:
        """Every run once (a run shared by several axes, the base, is trained once), for the runner."""
        seen, out = set(), []
        for entries in self.axes().values():
            for _, label, cfg in entries:
                spec = RunSpec.of(cfg, label, GRID)
                if spec.key not in seen:
                    seen.add(spec.key)
                    out.append(spec)
        return out

    def runs(self) -> list[TrainConfig]:
        return [TrainConfig.from_dict(s.config) for s in self.specs()]


def default_sweep() -> Sweep:
    """The study as `gence properness` runs it (sized for about 10 minutes on 2 CPU cores)."""
    base = {"task": "gaussians", "num_classes": 3, "dim": 2, "separation": 4.0, "seed": 0,
            "covariance": "random"}
    return Sweep(
        base_task=base, n_train=3000, batch_size=128, lr=3e-3, steps=800, seeds=(0, 1, 2),
        sizes=(100, 300, 1000, 3000, 10_000, 30_000, 100_000),
        batch_sizes=(8, 32, 128, 512, 1024),
        lrs=(1e-3, 3e-3, 1e-2),
        tasks={
            "K=3, d=2, balanced": base,
            "K=3, d=2, imbalanced (10:1)": dict(base, imbalance_ratio=10.0),
            "K=3, d=10, balanced": dict(base, dim=10),
            "K=10, d=5, balanced": dict(base, num_classes=10, dim=5),
            "K=10, d=5, imbalanced (10:1)": dict(base, num_classes=10, dim=5, imbalance_ratio=10.0),
        },
        completeness_tasks={
            "noise class (violates completeness)": {"task": "noise_class", "num_classes": 3,
                                                    "dim": 2, "noise_prior": 0.6, "separation": 4.0,
                                                    "seed": 0},
            "control: third class Gaussian (complete)": dict(base, priors=[0.2, 0.2, 0.6]),
        },
        output_biases=(-2.0, 0.0, 2.0),
    )


def quick_sweep() -> Sweep:
    """A seconds-long version of the default sweep, for tests and trying the command."""
    s = default_sweep()
    return dataclasses.replace(
        s, steps=120, seeds=(0,), sizes=(300, 3000), batch_sizes=(32, 256), lrs=(3e-3, 1e-2),
        tasks={k: s.tasks[k] for k in list(s.tasks)[:2]}, output_biases=(0.0, 2.0), n_eval=4000)


# --- running ------------------------------------------------------------------------------------

def run_study(sweep: Sweep | None = None, db_path="runs/gence.sqlite", workers: int = 1,
              progress: bool = True, retry_failed: bool = False) -> dict:
    """Run every run of ``sweep`` that the database does not hold yet, with :func:`run` through the
    experiment runner (one torch thread per worker); returns counts and seconds.

    The runner's guarantees hold: each run is claimed before it starts and stored when it ends, so a
    sweep that is killed resumes where it stopped (a run in flight resumes from its checkpoint), and
    several invocations on one database never run a config twice."""
    sweep = sweep if sweep is not None else default_sweep()
    specs = sweep.specs()
    summary = run_grid(specs, db_path, workers=workers, threads=1, retry_failed=retry_failed, run_fn=RUN_FN,
                       progress=progress)
    return {"total": len(specs), "ran": summary.done + summary.failed, "failed": summary.failed,
            "seconds": summary.seconds}
