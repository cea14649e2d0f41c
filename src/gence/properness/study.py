"""The properness study: fit an MLP with each loss on data whose posterior is known, and measure how
far its q(y|x) lands from the true p(y|x).

A loss is (strictly) proper when its population risk is (uniquely) minimised at the true posterior.
Here that is tested where it matters in practice: finite training sets, mini-batches (GenCE's class
marginal is estimated per batch), a real optimiser and learning rate. Every run is one
:class:`RunConfig`; its metrics come from :func:`posterior_metrics` on fresh samples, and runs are
stored in the results database under a hash of the resolved config, so a sweep resumes where it
stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from gence.data.synthetic import GaussianTask
from gence.properness.completeness import NoiseClassTask, class_scales

__all__ = ["RunConfig", "Sweep", "make_task", "train_model", "posterior_metrics", "run_one",
           "run_study", "default_sweep", "quick_sweep", "LOSSES"]

STUDY = "properness"
STUDY_VERSION = 1  # bump when a change makes stored runs incomparable

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


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run (its hash is the run's key in the database).

    ``steps`` optimizer steps of ``optimizer`` with a cosine decay from ``lr`` to 0, batches drawn
    without replacement epoch by epoch; ``batch_size`` larger than ``n_train`` means full batch.
    ``output_bias`` is added to the initial bias of the last layer (to move the starting point of
    the optimisation, e.g. on the completeness-violating task).
    """
    task: dict
    loss: str
    loss_params: dict
    n_train: int
    batch_size: int
    lr: float
    seed: int
    steps: int = 1000
    optimizer: str = "adam"
    hidden: tuple = (64, 64)
    output_bias: tuple | None = None
    n_eval: int = 20_000
    eval_seed: int = 987_654

    def resolved(self) -> dict:
        cfg = dataclasses.asdict(self)
        cfg["task"] = make_task(self.task).config()
        cfg["hidden"] = list(self.hidden)
        cfg["output_bias"] = None if self.output_bias is None else list(self.output_bias)
        cfg["batch_size"] = min(self.batch_size, self.n_train)
        return {"study": STUDY, "study_version": STUDY_VERSION, **cfg}

    def key(self) -> str:
        from gence.properness.results import run_key

        return run_key(self.resolved())


def build_loss(name: str, num_classes: int, params: dict):
    from gence import losses

    return losses.build(name, num_classes=num_classes, **params)


def train_model(cfg: RunConfig, task=None) -> tuple[torch.nn.Module, dict]:
    """Train the MLP of ``cfg``; returns the model, the mean loss of the last 50 steps and the seconds."""
    from gence import models

    task = task if task is not None else make_task(cfg.task)
    K = task.num_classes
    x, y = task.sample(cfg.n_train, seed=np.random.default_rng([cfg.seed, 1]))
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(cfg.seed)
    model = models.build("mlp", in_channels=task.dim, num_classes=K, image_size=None,
                         hidden=tuple(cfg.hidden))
    if cfg.output_bias is not None:
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.bias += torch.tensor(cfg.output_bias, dtype=torch.float32)
    criterion = build_loss(cfg.loss, K, cfg.loss_params)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / cfg.steps)))
    bs = min(cfg.batch_size, cfg.n_train)
    per_epoch = cfg.n_train // bs  # drop the ragged last batch: GenCE's S depends on the batch size
    gen = torch.Generator().manual_seed(cfg.seed)
    t0, step, last_losses = time.perf_counter(), 0, []
    while step < cfg.steps:
        order = torch.randperm(cfg.n_train, generator=gen)
        for b in range(per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            loss = criterion(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step >= cfg.steps - 50:
                last_losses.append(loss.item())
            step += 1
            if step >= cfg.steps:
                break
    model.eval()
    return model, {"train/loss": float(np.mean(last_losses)), "train/seconds": time.perf_counter() - t0}


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


_EVAL_CACHE: dict = {}


def _eval_set(cfg: RunConfig, task):
    key = (json.dumps(task.config(), sort_keys=True), cfg.n_eval, cfg.eval_seed)
    if key not in _EVAL_CACHE:
        x, _ = task.sample(cfg.n_eval, seed=cfg.eval_seed)
        _EVAL_CACHE.clear()
        _EVAL_CACHE[key] = (torch.from_numpy(x), task.posterior(x))
    return _EVAL_CACHE[key]


def run_one(cfg: RunConfig) -> dict[str, float]:
    """Train and evaluate one run; returns its metrics."""
    task = make_task(cfg.task)
    model, facts = train_model(cfg, task)
    x, p = _eval_set(cfg, task)
    with torch.no_grad():
        log_q = F.log_softmax(model(x).double(), dim=1).numpy()
    return {**posterior_metrics(p, log_q), **facts}


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

    def config(self, loss_label: str, seed: int, **over) -> RunConfig:
        name, params = self.losses[loss_label]
        kw = dict(task=self.base_task, loss=name, loss_params=params, n_train=self.n_train,
                  batch_size=self.batch_size, lr=self.lr, seed=seed, steps=self.steps,
                  n_eval=self.n_eval, hidden=tuple(self.hidden))
        kw.update(over)
        return RunConfig(**kw)

    def axes(self) -> dict[str, list[tuple[object, str, RunConfig]]]:
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

    def runs(self) -> list[RunConfig]:
        seen, out = set(), []
        for entries in self.axes().values():
            for _, _, cfg in entries:
                if cfg.key() not in seen:
                    seen.add(cfg.key())
                    out.append(cfg)
        return out


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

def _worker(cfg: RunConfig):
    from gence.properness.results import hardware_string

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        return cfg, run_one(cfg), None, time.perf_counter() - t0, hardware_string()
    except Exception:  # stored with the run; the sweep goes on
        import traceback

        return cfg, None, traceback.format_exc(), time.perf_counter() - t0, hardware_string()


def run_study(sweep: Sweep | None = None, db_path="runs/gence.sqlite", workers: int = 1,
              progress: bool = True, retry_failed: bool = False) -> dict:
    """Run every run of ``sweep`` that the database does not hold yet; returns counts and seconds.

    Each run is claimed in the database before it starts and stored when it ends, so a sweep that is
    killed resumes where it stopped, and several invocations on one database never run a config twice.
    """
    from gence.properness.results import GRID, open_db

    sweep = sweep if sweep is not None else default_sweep()
    runs = sweep.runs()
    labels = {c.key(): lab for entries in sweep.axes().values() for _, lab, c in entries}
    db = open_db(db_path)
    t0 = time.perf_counter()
    todo = [c for c in runs
            if db.claim(c.key(), c.resolved(), label=labels[c.key()], grid=GRID, retry_failed=retry_failed)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"properness ({len(runs) - len(todo)} of {len(runs)} stored)",
                   unit="run")
    pending = {c.key() for c in todo}
    failed = 0
    threads = torch.get_num_threads()
    pool = None
    try:
        if workers <= 1:
            results = map(_worker, todo)
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers)
            results = pool.imap_unordered(_worker, todo)
        for cfg, metrics, error, seconds, hardware in results:
            hardware += f", {max(workers, 1)} parallel run(s)"
            if error is None:
                db.finish(cfg.key(), metrics=metrics, extras={}, wall_seconds=seconds, hardware=hardware)
            else:
                failed += 1
                db.fail(cfg.key(), error=error, wall_seconds=seconds, hardware=hardware)
            pending.discard(cfg.key())
            if bar is not None:
                bar.update(1)
        if pool is not None:
            pool.close()
    finally:
        for key in pending:  # interrupted: these count as never started
            db.release(key)
        if pool is not None:
            pool.terminate()
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
        db.close()
    return {"total": len(runs), "ran": len(todo), "failed": failed, "seconds": time.perf_counter() - t0}
