"""Temperature scaling and reliability diagrams, checked against values computed here."""
import json
import math
import sys

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from gence.calibration import TemperatureScaler, fit_temperature, plot_reliability, plot_reliability_bins


def calibrated_logits(n, k, seed):
    """Logits of a calibrated model: labels are drawn from softmax(logits)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen, dtype=torch.float64) * 2.0
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen).squeeze(1)
    return logits, labels


def ref_nll(logits, labels, t):
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / t, axis=1)
    return -np.mean(logp[np.arange(len(labels)), np.asarray(labels)])


@pytest.mark.parametrize("factor", [2.5, 0.5])
def test_fit_temperature_recovers_a_known_temperature(factor):
    logits, labels = calibrated_logits(8000, 10, seed=0)
    t = fit_temperature((logits * factor).float(), labels)
    assert type(t) is float
    assert t == pytest.approx(factor, rel=0.05)


def test_fit_temperature_is_a_minimum_of_the_nll():
    logits, labels = calibrated_logits(3000, 5, seed=1)
    logits = logits * 1.7
    t = fit_temperature(logits.numpy(), labels.numpy())
    best = ref_nll(logits, labels, t)
    assert best < ref_nll(logits, labels, 1.0)
    assert best <= ref_nll(logits, labels, t * 1.01) and best <= ref_nll(logits, labels, t / 1.01)


def test_fit_temperature_returns_one_when_nothing_improves():
    assert fit_temperature(torch.zeros(10, 3), torch.arange(10) % 3) == 1.0


def test_fit_temperature_warns_at_the_bound_for_separated_data():
    logits = torch.tensor([[3.0, -3.0], [-2.0, 2.0], [4.0, 0.0]])
    with pytest.warns(RuntimeWarning, match="bound"):
        t = fit_temperature(logits, torch.tensor([0, 1, 0]))
    assert math.isfinite(t) and 0 < t < 0.01


def test_fit_temperature_rejects_bad_input():
    with pytest.raises(ValueError, match="logits must not contain NaN"):
        fit_temperature(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="logits must be finite"):
        fit_temperature(torch.tensor([[float("-inf"), 0.0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        fit_temperature(torch.zeros(2, 3), torch.tensor([0]))


def test_temperature_scaler_divides_and_is_saved():
    scaler = TemperatureScaler(2.0)
    logits = torch.tensor([[2.0, -4.0]], dtype=torch.float16)
    out = scaler(logits)
    assert out.dtype == torch.float16 and out.tolist() == [[1.0, -2.0]]
    state = scaler.state_dict()
    restored = TemperatureScaler()
    restored.load_state_dict(state)
    assert restored.temperature.item() == 2.0
    assert "2" in repr(restored)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_temperature_scaler_rejects_bad_temperatures(bad):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        TemperatureScaler(bad)


def test_scaling_with_the_fitted_temperature_lowers_nll():
    logits, labels = calibrated_logits(2000, 4, seed=2)
    val, test = logits[:1000] * 3, logits[1000:] * 3
    scaler = TemperatureScaler(fit_temperature(val, labels[:1000]))
    assert ref_nll(scaler(test), labels[1000:], 1.0) < ref_nll(test, labels[1000:], 1.0)


# ---------------------------------------------------------------- reliability diagrams

def loop_bins(probs, labels, m):
    acc = [[] for _ in range(m)]
    for row, y in zip(probs, labels):
        c = max(row)
        b = next(b for b in range(m) if c <= (b + 1) / m or b == m - 1)
        acc[b].append(1.0 if list(row).index(c) == y else 0.0)
    return [sum(a) / len(a) if a else 0.0 for a in acc], [len(a) for a in acc]


def patches_with_gid(ax, gid):
    return [p for p in ax.patches if p.get_gid() == gid]


def test_reliability_plot_writes_png_whose_bars_match_accuracies(tmp_path):
    pytest.importorskip("matplotlib")
    logits, labels = calibrated_logits(500, 4, seed=3)
    probs = torch.softmax(logits * 2, dim=1)
    fig = plot_reliability(probs, labels, n_bins=10, title="test split")
    path = tmp_path / "reliability.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100

    expected_acc, counts = loop_bins(probs.numpy(), labels.numpy(), 10)
    assert 0 in counts  # an empty bin is drawn as a bar of height 0
    ax = fig.axes[0]
    bars = patches_with_gid(ax, "accuracy")
    assert [b.get_height() for b in bars] == pytest.approx(expected_acc)
    assert [b.get_x() for b in bars] == pytest.approx([k / 10 for k in range(10)])
    assert len(patches_with_gid(ax, "gap")) == 10
    assert "test split" in ax.get_title() and "ECE" in ax.get_title()


def test_reliability_plot_from_stored_bins_and_into_a_given_axes(tmp_path):
    mpl_figure = pytest.importorskip("matplotlib.figure")
    from gence.metrics import expected_calibration_error, reliability_bins

    probs = np.array([[0.55, 0.45], [0.95, 0.05], [0.9, 0.1], [1.0, 0.0]])
    labels = np.array([1, 0, 0, 0])
    bins = json.loads(json.dumps(reliability_bins(probs, labels, 5)))
    fig = mpl_figure.Figure()
    left, right = fig.subplots(1, 2)
    assert plot_reliability_bins(bins, ax=right) is fig
    assert [b.get_height() for b in patches_with_gid(right, "accuracy")] == pytest.approx([0, 0, 0.0, 0, 1.0])
    gaps = patches_with_gid(right, "gap")
    assert gaps[2].get_height() == pytest.approx(0.55) and gaps[4].get_height() == pytest.approx(1 - 2.85 / 3)
    ece = expected_calibration_error(probs, labels, 5)
    assert f"{100 * ece:.2f}%" in right.get_title()
    fig.savefig(tmp_path / "two.png")


def test_plotting_without_matplotlib_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        plot_reliability(np.array([[0.5, 0.5]]), [0])


def test_plot_reliability_bins_rejects_a_dict_that_is_not_bins():
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="bins must be a reliability_bins dict"):
        plot_reliability_bins({"count": [1]})
