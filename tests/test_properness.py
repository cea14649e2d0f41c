"""The properness study: metrics against hand values, a fast instance where proper and improper losses
are far apart, the completeness-violating construction, and a resumable end-to-end sweep."""
import dataclasses

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import multivariate_normal

from gence.losses import build as build_loss
from gence.properness.completeness import NoiseClassTask, null_space
from gence.data.synthetic import GaussianTask
from gence.properness.report import write_report
from gence.properness.study import LOSSES, posterior_metrics, quick_sweep, run, run_study, study_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------------------ metrics

def test_posterior_metrics_hand_values():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    q = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    m = posterior_metrics(p, np.log(q), n_bins=10)
    kl0 = 0.7 * np.log(0.7 / 0.5) + 0.2 * np.log(0.2 / 0.3) + 0.1 * np.log(0.1 / 0.2)
    kl1 = 0.1 * np.log(0.1 / 0.2) + 0.3 * np.log(0.3 / 0.2)
    assert m["kl"] == pytest.approx((kl0 + kl1) / 2, rel=1e-12)
    assert m["mae"] == pytest.approx((0.2 + 0.1 + 0.1 + 0.1 + 0.1 + 0.0) / 6, rel=1e-12)
    # confidences 0.5 (bin (0.4, 0.5]) and 0.6 (bin (0.5, 0.6]); true prob of the predicted class 0.7, 0.6
    assert m["ece_true"] == pytest.approx((abs(0.5 - 0.7) + abs(0.6 - 0.6)) / 2, rel=1e-12)
    assert m["accuracy"] == pytest.approx(0.65)
    assert m["bayes_accuracy"] == pytest.approx(0.65)
    assert m["rel_accuracy"] == pytest.approx(1.0)
    assert m["agreement"] == 1.0
    assert m["c/0"] == pytest.approx(0.7 / 0.8)


def test_posterior_metrics_zero_at_the_truth_and_zero_probabilities():
    p = np.array([[1.0, 0.0], [0.25, 0.75]])
    with np.errstate(divide="ignore"):
        m = posterior_metrics(p, np.log(p))
    assert m["kl"] == 0.0 and m["mae"] == 0.0 and m["ece_true"] == pytest.approx(0.0, abs=1e-15)
    assert m["kl_scaled"] == pytest.approx(0.0, abs=1e-15)


def test_kl_scaled_is_zero_for_a_rescaled_posterior():
    task = NoiseClassTask(3, 2, noise_prior=0.6)
    x, _ = task.sample(2000, seed=0)
    p = task.posterior(x)
    q = p * task.alternative_minimiser(b=0.5)
    m = posterior_metrics(p, np.log(q))
    assert m["kl"] > 0.05
    assert m["kl_scaled"] == pytest.approx(0.0, abs=1e-12)
    assert m["c/2"] == pytest.approx(0.5)


# -------------------------------------------------------------------- proper vs improper, fast instance

# Posteriors mostly between 0.55 and 0.95 (separation 6): CE and GenCE should recover them, while the
# focal loss's minimiser is pulled towards less confident values (for a binary p = 0.9 its population
# minimiser with gamma 3 is q = 0.65, KL 0.17).
FAST_TASK = {"task": "gaussians", "num_classes": 3, "dim": 2, "separation": 6.0, "seed": 0,
             "covariance": "identity"}
KL_BOUND = 0.02


def fast_run(loss_label, seed=0):
    name, params = LOSSES[loss_label]
    config = study_config(task=FAST_TASK, loss=name, loss_params=params, n_train=2000, batch_size=200,
                          lr=1e-2, seed=seed, steps=200, hidden=(32, 32), n_eval=5000)
    return run(config.to_dict())[0]


def test_proper_losses_recover_the_posterior_and_focal_does_not():
    kl = {loss: fast_run(loss)["kl"] for loss in ("CE", "GenCE", "focal (gamma=3)")}
    assert kl["CE"] < KL_BOUND, kl
    assert kl["GenCE"] < KL_BOUND, kl
    assert kl["focal (gamma=3)"] > 2 * KL_BOUND, kl


# ----------------------------------------------------------------------- the completeness violation

def independent_posterior(task: NoiseClassTask, x):
    base = task.base
    logs = np.stack([np.log(base.priors[k]) + multivariate_normal(base.means[k], base.covs[k]).logpdf(x)
                     for k in range(base.num_classes)], axis=1)
    p_base = softmax(logs, axis=1)
    return np.concatenate([(1 - task.noise_prior) * p_base,
                           np.full((len(x), 1), task.noise_prior)], axis=1)


def test_noise_class_task_posterior_and_samples():
    task = NoiseClassTask(3, 2, noise_prior=0.6, seed=0)
    x, y = task.sample(40_000, seed=1)
    np.testing.assert_allclose(task.posterior(x), independent_posterior(task, x.astype(float)),
                               rtol=1e-9)
    np.testing.assert_allclose(np.bincount(y) / len(y), task.priors, atol=0.01)
    # the noise class's inputs follow the mixture of the others: same mean as all the inputs
    np.testing.assert_allclose(x[y == 2].mean(0), x[y != 2].mean(0), atol=0.08)


def test_completeness_fails_for_the_noise_task_and_holds_for_the_control():
    task = NoiseClassTask(3, 2, noise_prior=0.6, seed=0)
    x, _ = task.sample(3000, seed=2)
    P = independent_posterior(task, x.astype(float))
    # least squares P c = 1 has a family of exact solutions: P is rank-deficient
    s = np.linalg.svd(P, compute_uv=False)
    assert s[-1] / s[0] < 1e-12
    _, _, vt = np.linalg.svd(P)
    c = np.ones(3) + 0.5 * vt[-1] / np.abs(vt[-1]).max()
    assert np.abs(c - 1).max() == pytest.approx(0.5)
    np.testing.assert_allclose(P @ c, 1.0, atol=1e-12)
    q = P * c
    assert (q >= 0).all()  # a proper distribution, different from p
    # the closed form of the module agrees
    np.testing.assert_allclose(P @ task.alternative_minimiser(0.2), 1.0, atol=1e-12)
    _, null = null_space(P)
    assert len(null) == 1
    # control: a third class with its own Gaussian; only c = 1 solves P c = 1
    control = GaussianTask(3, 2, priors=[0.2, 0.2, 0.6], separation=4.0, seed=0)
    xc, _ = control.sample(3000, seed=2)
    sc = np.linalg.svd(control.posterior(xc), compute_uv=False)
    assert sc[-1] / sc[0] > 1e-2
    c_ls = np.linalg.lstsq(control.posterior(xc), np.ones(len(xc)), rcond=None)[0]
    np.testing.assert_allclose(c_ls, 1.0, atol=1e-8)


def test_gence_cannot_tell_p_from_c_p_on_the_noise_task_but_ce_can():
    task = NoiseClassTask(3, 2, noise_prior=0.6, seed=0)
    x, y = task.sample(512, seed=3)
    P = independent_posterior(task, x.astype(float))
    Q = P * task.alternative_minimiser(0.3)
    y = torch.from_numpy(y)
    logp, logq = torch.from_numpy(np.log(P)), torch.from_numpy(np.log(Q))
    gence, ce = build_loss("gence", num_classes=3), build_loss("ce", num_classes=3)
    half = build_loss("gence", num_classes=3, generative_weight=0.5)
    assert gence(logq, y).item() == pytest.approx(gence(logp, y).item(), rel=1e-9)
    assert ce(logq, y).item() > ce(logp, y).item() + 0.05
    assert half(logq, y).item() > half(logp, y).item() + 0.02


# ------------------------------------------------------------------------------ sweep end to end

def tiny_sweep():
    s = quick_sweep()
    keep = ("CE", "GenCE")
    return dataclasses.replace(
        s, steps=20, n_train=300, sizes=(100, 300), batch_sizes=(64,), lrs=(3e-3,), n_eval=500,
        tasks={k: s.tasks[k] for k in list(s.tasks)[:1]}, output_biases=(0.0,),
        losses={k: LOSSES[k] for k in keep}, hidden=(16,))


def test_sweep_stores_runs_resumes_and_writes_the_report(tmp_path):
    sweep, db = tiny_sweep(), tmp_path / "r.sqlite"
    first = run_study(sweep, db_path=db, progress=False)
    assert first["ran"] == first["total"] == len(sweep.runs()) and first["failed"] == 0
    again = run_study(sweep, db_path=db, progress=False)
    assert again["ran"] == 0
    out = write_report(db, tmp_path / "properness.md", sweep=sweep, command="gence properness --test")
    text = out.read_text()
    assert "gence properness --test" in text.splitlines()[5]
    assert f"runs: {first['total']} of {first['total']}" in text
    for name in ("kl_vs_size", "kl_vs_batch", "kl_vs_lr", "completeness"):
        png = tmp_path / "properness" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"properness/{name}.png" in text
    assert "| GenCE |" in text and "—" not in text.split("## Base setting")[1].split("##")[0]


def test_cli_registers_properness():
    from gence.cli import build_parser

    args = build_parser().parse_args(["properness", "--quick", "--db", "x.sqlite", "--workers", "1"])
    assert args.command == "properness" and args.quick and args.workers == 1 and callable(args.func)
