"""Metrics against values computed independently: loops written here from the definitions,
scikit-learn for the OOD metrics, torchmetrics as a second ECE/MCE reference where it is installed."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from gence.metrics import (
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    error_rate,
    evaluate,
    expected_calibration_error,
    group_accuracy,
    maximum_calibration_error,
    negative_log_likelihood,
    ood_metrics,
    ood_scores,
    reliability_bins,
)


# ---------------------------------------------------------------- references from the definitions

def ref_bin(c, m, precision=float):
    """Bins [0, 1/M], (1/M, 2/M], ..., right edge inclusive, edges k/M rounded to the input precision."""
    for b in range(m):
        if c <= precision((b + 1) / m):
            return b
    return m - 1


def ref_top(probs, labels):
    conf, hit = [], []
    for row, y in zip(probs, labels):
        best = 0
        for k in range(len(row)):
            if row[k] > row[best]:
                best = k
        conf.append(row[best])
        hit.append(1.0 if best == y else 0.0)
    return conf, hit


def ref_bins(values, hits, m, precision=float):
    bins = [[] for _ in range(m)]
    for c, h in zip(values, hits):
        bins[ref_bin(c, m, precision)].append((float(c), h))
    return bins


def ref_gap(members):
    return abs(sum(h for _, h in members) / len(members) - sum(c for c, _ in members) / len(members))


def ref_ece_of(values, hits, m, precision=float):
    n = len(values)
    return sum(len(b) / n * ref_gap(b) for b in ref_bins(values, hits, m, precision) if b)


def ref_ece(probs, labels, m, precision=float):
    return ref_ece_of(*ref_top(probs, labels), m, precision)


def ref_mce(probs, labels, m):
    return max(ref_gap(b) for b in ref_bins(*ref_top(probs, labels), m) if b)


def ref_adaece(probs, labels, m):
    conf, hit = ref_top(probs, labels)
    n = len(conf)
    order = sorted(range(n), key=lambda i: conf[i])  # Python's sort is stable
    sizes = [n // m + (1 if g < n % m else 0) for g in range(m)]
    total, start = 0.0, 0
    for size in sizes:
        group = [(conf[i], hit[i]) for i in order[start:start + size]]
        start += size
        if group:
            total += size / n * ref_gap(group)
    return total


def ref_classwise(probs, labels, m):
    k_classes = len(probs[0])
    return sum(ref_ece_of([row[k] for row in probs], [1.0 if y == k else 0.0 for y in labels], m)
               for k in range(k_classes)) / k_classes


def random_probs(n, k, seed, concentration=0.3):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, concentration), size=n)
    labels = rng.integers(0, k, size=n)
    # make the model somewhat informative so bins hold both hits and misses
    informative = rng.random(n) < 0.5
    labels[informative] = probs[informative].argmax(axis=1)
    return probs, labels


def row_with_top(c, k):
    """A probability row whose largest entry is exactly c (the rest share 1 - c, each below c)."""
    row = np.full(k, (1.0 - c) / (k - 1))
    row[0] = c
    return row


# ---------------------------------------------------------------- calibration errors

@pytest.mark.parametrize("m", [1, 4, 15, 37])
def test_calibration_errors_match_loops(m):
    probs, labels = random_probs(400, 6, seed=m)
    assert expected_calibration_error(probs, labels, m) == pytest.approx(ref_ece(probs, labels, m), abs=1e-12)
    assert maximum_calibration_error(probs, labels, m) == pytest.approx(ref_mce(probs, labels, m), abs=1e-12)
    assert adaptive_calibration_error(probs, labels, m) == pytest.approx(ref_adaece(probs, labels, m), abs=1e-12)
    assert classwise_calibration_error(probs, labels, m) == pytest.approx(ref_classwise(probs, labels, m), abs=1e-12)


def test_tensors_and_arrays_give_the_same_values():
    probs, labels = random_probs(200, 5, seed=1)
    for fn in (expected_calibration_error, adaptive_calibration_error, classwise_calibration_error,
               maximum_calibration_error, error_rate, negative_log_likelihood, brier_score):
        assert fn(torch.from_numpy(probs), torch.from_numpy(labels)) == fn(probs, labels)


def test_float32_tensors_bin_with_float32_edges():
    probs, labels = random_probs(300, 4, seed=2)
    p32 = torch.from_numpy(probs).float()
    p32 = p32 / p32.sum(dim=1, keepdim=True)
    ref = ref_ece(p32.numpy(), labels, 10, precision=np.float32)
    assert expected_calibration_error(p32, torch.from_numpy(labels), 10) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("norm", ["l1", "max"])
@pytest.mark.parametrize("m", [5, 15])
def test_ece_and_mce_agree_with_torchmetrics(norm, m):
    tm = pytest.importorskip("torchmetrics.classification")
    probs, labels = random_probs(1000, 10, seed=3)
    p32 = torch.from_numpy(probs).float()
    metric = tm.MulticlassCalibrationError(num_classes=10, n_bins=m, norm=norm)
    expected = float(metric(p32, torch.from_numpy(labels)))
    # torchmetrics bins [a, b) with 1.0 in a bin of its own; random confidences avoid the edges
    ours = (expected_calibration_error if norm == "l1" else maximum_calibration_error)(p32, labels, m)
    assert ours == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("m", range(1, 41))
def test_confidence_on_an_edge_goes_in_the_bin_on_its_left(m):
    for k in range(1, m + 1):
        row = row_with_top(k / m, m + 1)
        for probs in (row[None, :], torch.tensor(row[None, :], dtype=torch.float32)):
            counts = reliability_bins(probs, [0], m)["count"]
            assert counts.index(1) == k - 1, (k, m, probs.dtype)


def test_named_edge_cases_of_binning():
    # 0.2 * 5 and 0.6 * 5 are exact in float, but 0.7 * 10 rounds up to 7.000000000000001
    assert reliability_bins(np.full((1, 5), 0.2), [0], 5)["count"] == [1, 0, 0, 0, 0]
    assert reliability_bins(row_with_top(0.7, 4)[None, :], [0], 10)["count"][6] == 1
    assert reliability_bins(np.array([[1.0, 0.0]]), [1], 15)["count"][-1] == 1
    # just above an edge goes right
    above = np.nextafter(0.7, 1.0)
    assert reliability_bins(row_with_top(above, 4)[None, :], [0], 10)["count"][7] == 1


def test_confidence_exactly_one_and_exactly_zero():
    probs = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.97, 0.03], [0.0, 0.0, 1.0]])
    labels = np.array([0, 1, 1, 2])
    # top label: three confidences of 1.0 (two hits) and 0.97 (a hit) share the last bin of 10
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(abs(3 / 4 - (3 + 0.97) / 4))
    assert reliability_bins(probs, labels, 10)["count"] == [0] * 9 + [4]
    # classwise: the zeros share the first bin with p = 0.03 of class 2, which matters for its mean
    assert classwise_calibration_error(probs, labels, 10) == pytest.approx(ref_classwise(probs, labels, 10))
    class2 = (3 / 4) * abs(0 - 0.03 / 3) + (1 / 4) * abs(1 - 1)
    class1 = (3 / 4) * abs(1 / 3 - 0) + (1 / 4) * abs(1 - 0.97)
    class0 = (2 / 4) * abs(0 - 0) + (2 / 4) * abs(0.5 - 1)
    assert classwise_calibration_error(probs, labels, 10) == pytest.approx((class0 + class1 + class2) / 3)


def test_empty_bins_contribute_nothing_and_are_none():
    probs = np.array([[0.55, 0.45], [0.95, 0.05], [0.9, 0.1]])
    labels = np.array([1, 0, 0])
    bins = reliability_bins(probs, labels, 10)
    assert bins["count"] == [0, 0, 0, 0, 0, 1, 0, 0, 1, 1]
    assert bins["accuracy"][:5] == [None] * 5 and bins["confidence"][6] is None
    assert bins["accuracy"][5] == 0.0 and bins["confidence"][5] == pytest.approx(0.55)
    assert bins["edges"] == pytest.approx([k / 10 for k in range(11)])
    json.dumps(bins)
    ece = (1 / 3) * 0.55 + (1 / 3) * 0.1 + (1 / 3) * 0.05
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(ece)
    assert maximum_calibration_error(probs, labels, 10) == pytest.approx(0.55)
    # more bins than samples: AdaECE's empty groups are skipped, each sample is its own group
    assert adaptive_calibration_error(probs, labels, 15) == pytest.approx(ece)


def test_reliability_bins_match_loops():
    probs, labels = random_probs(500, 3, seed=4)
    bins = reliability_bins(probs, labels, 12)
    ref = ref_bins(*ref_top(probs, labels), 12)
    assert bins["count"] == [len(b) for b in ref]
    for got_acc, got_conf, members in zip(bins["accuracy"], bins["confidence"], ref):
        if members:
            assert got_acc == pytest.approx(sum(h for _, h in members) / len(members))
            assert got_conf == pytest.approx(sum(c for c, _ in members) / len(members))


def test_adaece_splits_ties_by_input_order():
    probs = np.array([[0.6, 0.4]] * 3)
    labels = np.array([0, 1, 1])
    # array_split of 3 into 2 gives sizes 2, 1: [hit, miss] then [miss]
    assert adaptive_calibration_error(probs, labels, 2) == pytest.approx(2 / 3 * 0.1 + 1 / 3 * 0.6)
    assert adaptive_calibration_error(probs, labels, 2) == pytest.approx(ref_adaece(probs, labels, 2))
    assert expected_calibration_error(probs, labels, 2) == pytest.approx(abs(1 / 3 - 0.6))


def test_class_missing_from_labels_still_counts_in_classwise_ece():
    probs, labels = random_probs(300, 5, seed=5)
    labels[labels == 4] = 0
    assert 4 not in labels
    value = classwise_calibration_error(probs, labels, 10)
    assert value == pytest.approx(ref_classwise(probs, labels, 10), abs=1e-12)
    present_only = sum(ref_ece_of(probs[:, k], (labels == k).astype(float), 10) for k in range(4)) / 4
    assert value != pytest.approx(present_only)


def test_ties_in_the_top_probability_go_to_the_lowest_class():
    assert error_rate(np.array([[0.5, 0.5]]), [0]) == 0.0
    assert error_rate(np.array([[0.5, 0.5]]), [1]) == 1.0
    assert error_rate(np.array([[0.25, 0.375, 0.375]]), [1]) == 0.0
    assert expected_calibration_error(np.array([[0.25, 0.375, 0.375]]), [2]) == pytest.approx(0.375)


# ---------------------------------------------------------------- error, NLL, Brier, evaluate

def test_error_nll_brier_match_loops():
    probs, labels = random_probs(100, 4, seed=6, concentration=2.0)
    conf, hit = ref_top(probs, labels)
    assert error_rate(probs, labels) == pytest.approx(1 - sum(hit) / len(hit))
    assert negative_log_likelihood(probs, labels) == pytest.approx(
        sum(-math.log(row[y]) for row, y in zip(probs, labels)) / len(labels))
    assert brier_score(probs, labels) == pytest.approx(
        sum(sum((row[k] - (k == y)) ** 2 for k in range(4)) for row, y in zip(probs, labels)) / len(labels))


def test_nll_of_a_zero_probability_is_infinite():
    assert negative_log_likelihood(np.array([[1.0, 0.0]]), [1]) == math.inf


def test_evaluate_matches_independent_computation():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(300, 8)) * 3
    labels = rng.integers(0, 8, size=300)
    labels[:150] = logits[:150].argmax(axis=1)
    result = evaluate(torch.from_numpy(logits).float(), torch.from_numpy(labels), n_bins=10)
    assert list(result) == ["error", "nll", "brier", "ece", "adaece", "classwise_ece", "mce"]
    assert all(type(v) is float for v in result.values())
    probs = softmax(logits.astype(np.float32).astype(np.float64), axis=1)
    logp = log_softmax(logits.astype(np.float32).astype(np.float64), axis=1)
    conf, hit = ref_top(probs, labels)
    expected = {
        "error": 1 - sum(hit) / 300,
        "nll": -sum(logp[i, y] for i, y in enumerate(labels)) / 300,
        "brier": sum(sum((probs[i, k] - (k == y)) ** 2 for k in range(8)) for i, y in enumerate(labels)) / 300,
        "ece": ref_ece(probs, labels, 10),
        "adaece": ref_adaece(probs, labels, 10),
        "classwise_ece": ref_classwise(probs, labels, 10),
        "mce": ref_mce(probs, labels, 10),
    }
    assert result == pytest.approx(expected, abs=1e-9)


def test_evaluate_nll_is_finite_for_extreme_logits():
    logits = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0]])
    result = evaluate(logits, torch.tensor([1, 1]))
    assert result["nll"] == pytest.approx(2000.0 / 2)
    assert result["error"] == 0.5


# ---------------------------------------------------------------- group accuracy

def test_group_accuracy_matches_loop():
    probs, labels = random_probs(400, 6, seed=8)
    counts = [500, 101, 100, 20, 19, 3]
    got = group_accuracy(probs, labels, counts)
    conf, hit = ref_top(probs, labels)
    groups = {"many": {0, 1}, "medium": {2, 3}, "few": {4, 5}}
    for name, classes in groups.items():
        members = [h for h, y in zip(hit, labels) if y in classes]
        assert got[name] == pytest.approx(sum(members) / len(members))


def test_group_accuracy_gives_nan_for_an_empty_group():
    probs, labels = random_probs(50, 3, seed=9)
    got = group_accuracy(probs, labels, np.array([10, 8, 6]), many=5, few=2)
    assert set(got) == {"many", "medium", "few"}
    assert not math.isnan(got["many"]) and math.isnan(got["medium"]) and math.isnan(got["few"])


# ---------------------------------------------------------------- OOD

def test_ood_scores_match_loops_and_rank_confident_higher():
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(20, 5)) * 2
    logits[0] = [10, 0, 0, 0, 0]
    logits[1] = [0, 0, 0, 0, 0]
    for i, row in enumerate(logits):
        exps = [math.exp(v) for v in row]
        probs = [e / sum(exps) for e in exps]
        assert ood_scores(logits, "msp")[i] == pytest.approx(max(probs))
        assert ood_scores(logits, "max_logit")[i] == pytest.approx(max(row))
        assert ood_scores(logits, "energy")[i] == pytest.approx(math.log(sum(exps)))
        assert ood_scores(logits, "entropy")[i] == pytest.approx(sum(p * math.log(p) for p in probs))
    for kind in ("msp", "max_logit", "energy", "entropy"):
        scores = ood_scores(torch.from_numpy(logits), kind)
        assert scores.shape == (20,) and scores[0] > scores[1]


def test_ood_entropy_handles_zero_probabilities():
    scores = ood_scores(torch.tensor([[0.0, -math.inf, -math.inf]]), "entropy")
    assert scores[0] == 0.0


def test_ood_scores_rejects_unknown_kind():
    with pytest.raises(ValueError, match="msp, max_logit, energy, entropy.*'odin'"):
        ood_scores(np.zeros((2, 3)), "odin")


def ref_fpr95(s_in, s_out):
    best = None
    for t in s_in:
        tpr_count = sum(1 for s in s_in if s >= t)
        if 100 * tpr_count >= 95 * len(s_in) and (best is None or t > best):
            best = t
    return sum(1 for s in s_out if s >= best) / len(s_out)


def sklearn_reference(s_in, s_out):
    metrics = pytest.importorskip("sklearn.metrics")
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out]
    return {
        "auroc": metrics.roc_auc_score(y, s),
        "aupr_in": metrics.average_precision_score(y, s),
        "aupr_out": metrics.average_precision_score(1 - y, -s),
        "fpr95": ref_fpr95(list(s_in), list(s_out)),
    }


@pytest.mark.parametrize("case", ["continuous", "tied", "separated", "reversed", "all_tied", "small"])
def test_ood_metrics_match_sklearn(case):
    rng = np.random.default_rng(11)
    if case == "continuous":
        s_in, s_out = rng.normal(1.0, 1.0, 333), rng.normal(0.0, 1.0, 250)
    elif case == "tied":
        s_in, s_out = rng.integers(0, 6, 201).astype(float), rng.integers(-2, 4, 150).astype(float)
    elif case == "separated":
        s_in, s_out = rng.uniform(2, 3, 100), rng.uniform(0, 1, 80)
    elif case == "reversed":
        s_in, s_out = rng.uniform(0, 1, 100), rng.uniform(2, 3, 80)
    elif case == "all_tied":
        s_in, s_out = np.full(40, 0.5), np.full(60, 0.5)
    else:
        s_in, s_out = np.array([0.9, 0.3]), np.array([0.3])
    got = ood_metrics(torch.from_numpy(s_in), s_out)
    assert list(got) == ["auroc", "aupr_in", "aupr_out", "fpr95"]
    assert got == pytest.approx(sklearn_reference(s_in, s_out), abs=1e-12)


def test_ood_metrics_stay_within_0_and_1_for_perfect_separation():
    rng = np.random.default_rng(13)
    got = ood_metrics(rng.uniform(5, 6, 2048), rng.uniform(0, 1, 1000))
    assert got == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}


def test_ood_metrics_named_values():
    assert ood_metrics([3.0, 4.0], [1.0, 2.0]) == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    assert ood_metrics([1.0, 1.0], [1.0, 1.0, 1.0])["auroc"] == 0.5
    assert ood_metrics([1.0, 1.0], [1.0, 1.0, 1.0])["fpr95"] == 1.0
    # 20 in-distribution scores: the threshold keeps exactly 19 of them; ties with it are false positives
    s_in = np.arange(20.0)
    assert ood_metrics(s_in, [0.5, 1.0, 1.5])["fpr95"] == pytest.approx(2 / 3)


def test_fpr95_agrees_with_sklearn_roc_curve():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(12)
    for n_in in (19, 20, 57, 100, 101):
        s_in, s_out = rng.normal(1, 1, n_in), rng.normal(0, 1, 77)
        fpr, tpr, _ = metrics.roc_curve(np.r_[np.ones(n_in), np.zeros(77)], np.r_[s_in, s_out])
        first = next(i for i, t in enumerate(tpr) if 100 * round(t * n_in) >= 95 * n_in)
        assert ood_metrics(s_in, s_out)["fpr95"] == pytest.approx(fpr[first])


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("call, match", [
    (lambda: expected_calibration_error(np.ones(3) / 3, [0]), r"probs must have shape \(N, K\).*\(3,\)"),
    (lambda: expected_calibration_error(np.full((2, 2), 0.5), [0, 2]), r"labels must lie in \[0, 2\).*\[0, 2\]"),
    (lambda: expected_calibration_error(np.full((2, 2), 0.5), [0.0, 1.0]), "labels must be integer"),
    (lambda: expected_calibration_error(np.full((2, 2), 0.5), [0, 1, 1]), r"labels must have shape \(2,\)"),
    (lambda: expected_calibration_error(np.array([[2.0, -1.0]]), [0]), r"probs must lie in \[0, 1\]"),
    (lambda: expected_calibration_error(np.array([[0.5, 0.4]]), [0]), "rows of probs must sum to 1.*0.9"),
    (lambda: expected_calibration_error(np.array([[np.nan, 0.4]]), [0]), "probs must not contain NaN"),
    (lambda: expected_calibration_error(np.full((2, 2), 0.5), [0, 1], n_bins=0), "n_bins must be a positive"),
    (lambda: expected_calibration_error(np.zeros((0, 2)), []), "N >= 1"),
    (lambda: evaluate(np.full((1, 2), np.inf), [0]), r"logits must not contain \+inf"),
    (lambda: ood_metrics([], [1.0]), "confidence_in must be a non-empty 1-D"),
    (lambda: ood_metrics([1.0], [[1.0]]), "confidence_out must be a non-empty 1-D"),
    (lambda: group_accuracy(np.full((2, 2), 0.5), [0, 1], [5]), r"class_counts must have shape \(2,\)"),
])
def test_invalid_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_probabilities_from_16bit_softmax_are_accepted():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(0)) * 4
    probs = torch.softmax(logits, dim=1).to(torch.bfloat16)
    labels = torch.randint(0, 100, (64,), generator=torch.Generator().manual_seed(1))
    assert 0.0 <= expected_calibration_error(probs, labels) <= 1.0


def test_class_coverage_counts_unpredicted_classes_and_worst_recall():
    from gence.metrics import class_coverage

    # 4 classes; predictions (argmax) 0, 0, 1, 1, 1, 3 -> class 2 never predicted.
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1],
                      [0.2, 0.5, 0.2, 0.1], [0.1, 0.4, 0.4, 0.1], [0.1, 0.1, 0.1, 0.7]])
    labels = np.array([0, 1, 1, 2, 2, 3])
    # per-class recall by hand: class 0 1/1, class 1 1/2, class 2 0/2, class 3 1/1
    out = class_coverage(probs, labels)
    assert out == {"never_predicted": 1.0, "worst_class_accuracy": 0.0}
    out = class_coverage(probs[[0, 2, 5]], labels[[0, 2, 5]])  # class 2 absent from labels: not counted
    assert out == {"never_predicted": 1.0, "worst_class_accuracy": 1.0}
