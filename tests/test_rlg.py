"""RLG on synthetic softmax cross-entropy updates with known labels, and its exact cone test."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attacks.rlg import (
    MAX_MASS_SPREAD,
    _counts,
    counts_from_bias,
    counts_from_bias_ratios,
    nonlabel_mass_spread,
    reveal_labels,
)
from attacks.rlg_cone import separable_fast, separable_lp
from attacks.rlg_rank import RowSpace, gap_rank, row_space, steep_gap
from fedcore import Truth

ACTS = {
    "relu": lambda z: np.maximum(z, 0),
    "silu": lambda z: z / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "gelu": lambda z: 0.5 * z * (1 + np.tanh(0.7978845608 * (z + 0.044715 * z**3))),
}


def sgd_update(rng, num_classes, dim, steps, act, lr=0.05, dtype=np.float32):
    """K plain SGD steps (mean CE) of a linear head on random features; the model changes
    between steps. Returns the weight and bias updates `after - before` in `dtype`."""
    w = rng.normal(scale=1 / np.sqrt(dim), size=(num_classes, dim))
    b = np.zeros(num_classes)
    w0, b0 = w.astype(dtype), b.astype(dtype)
    for labels in steps:
        n = len(labels)
        h = ACTS[act](rng.normal(size=(n, dim)))
        z = h @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = p.copy()
        g[np.arange(n), labels] -= 1
        w, b = w - lr * g.T @ h / n, b - lr * g.sum(0) / n
    return w.astype(dtype) - w0, b.astype(dtype) - b0


@st.composite
def cases(draw, min_classes=60):
    """RLG is exact when C is well above S (here S <= 15, C >= 60). With few classes and many
    duplicates a non-label can be an extreme ray of the cone: C = 12, S = 6, 3 distinct labels
    gave a false label in 57 of 200 draws (the brute-force LP agrees: a limit of the method)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    num_classes = draw(st.integers(min_classes, 150))
    dim = draw(st.integers(16, 96))
    k = draw(st.integers(1, 3))
    n = draw(st.integers(1, 5))
    pool = draw(st.sampled_from([num_classes, 3]))  # 3: many duplicate labels
    steps = [rng.integers(0, min(pool, num_classes), size=n) for _ in range(k)]
    act = draw(st.sampled_from(sorted(ACTS)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return rng, num_classes, dim, steps, act, dtype


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), sign=st.sampled_from([1.0, -1.0]), as_torch=st.booleans())
def test_recovers_exact_label_set_and_counts(case, sign, as_torch):
    rng, num_classes, dim, steps, act, dtype = case
    w, b = sgd_update(rng, num_classes, dim, steps, act, dtype=dtype)
    w, b = sign * w, sign * b
    if as_torch:
        w, b = torch.from_numpy(w), torch.from_numpy(b)
    flat = np.concatenate(steps)
    result = reveal_labels(w, bias_update=b)
    assert result.ok, result.message
    assert result.labels == tuple(sorted(set(flat.tolist())))
    assert result.num_labels == len(flat)  # the rank is S = N * K, duplicates included
    assert result.counts == dict(Counter(flat.tolist()))


@settings(max_examples=15, deadline=None)
@given(case=cases(min_classes=12))
def test_fast_agrees_with_brute_force_lp(case):
    rng, num_classes, dim, steps, act, dtype = case
    w, _ = sgd_update(rng, num_classes, dim, steps, act, dtype=dtype)
    fast, lp = reveal_labels(w, method="fast"), reveal_labels(w, method="lp")
    if sum(len(s) for s in steps) >= num_classes - 1:  # S >= C - 1: outside RLG's domain
        assert fast.status == lp.status == "not_applicable"
        return
    assert fast.ok and lp.ok and fast.labels == lp.labels


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num=st.integers(6, 60), dim=st.integers(1, 6))
def test_cone_decision_matches_lp_on_arbitrary_points(seed, num, dim):
    """Any point cloud (not only CE structure): fast == per-point LP on all points."""
    rng = np.random.default_rng(seed)
    dim = min(dim, num - 2)  # centred points span at most num - 1 dimensions
    points = rng.normal(size=(num, dim)) * rng.exponential(size=(num, 1))
    points[: num // 4] = -points[num // 4 : 2 * (num // 4)]  # some exactly opposite pairs
    points -= points.mean(axis=0)  # sums to zero, so the points positively span their span
    dec = separable_fast(points)
    assert dec.spans
    np.testing.assert_array_equal(dec.separable, np.flatnonzero(separable_lp(points)))


def test_screen_reports_points_that_do_not_positively_span():
    points = np.abs(np.random.default_rng(0).normal(size=(20, 3)))  # all in the positive orthant
    assert not separable_fast(points).spans


def test_known_num_labels_and_large_sketch_path():
    rng = np.random.default_rng(3)
    steps = [rng.integers(0, 2000, size=12), rng.integers(0, 2000, size=12)]
    w, b = sgd_update(rng, 2000, 512, steps, "silu", lr=0.01)
    truth = tuple(sorted(set(np.concatenate(steps).tolist())))
    for known in (None, 24):
        result = reveal_labels(torch.from_numpy(w), known, bias_update=b)
        assert result.ok and result.labels == truth and result.num_labels == 24
        assert result.diagnostics["rank_method"] == "sketch"


def test_near_duplicate_samples_keep_tiny_singular_values():
    """Two samples of one class with almost equal features: a real but tiny singular value."""
    rng = np.random.default_rng(5)
    num_classes, dim = 300, 400
    h = np.maximum(rng.normal(size=(6, dim)), 0)
    h[1] = h[0] + 1e-3 * rng.normal(size=dim)
    labels = np.array([7, 7, 19, 42, 42, 250])
    z = h @ rng.normal(scale=0.05, size=(dim, num_classes))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p.copy()
    g[np.arange(6), labels] -= 1
    space = row_space(g.T @ h)
    assert space.rank == 6
    assert space.singular_values[5] / space.singular_values[0] < 1e-2
    result = reveal_labels(g.T @ h, bias_update=g.sum(0))
    assert result.labels == (7, 19, 42, 250) and result.counts == {7: 2, 19: 1, 42: 2, 250: 1}


def peaked_update(rng, temp, num_classes=500, dim=64, n=6, lr=0.05):
    """Float32 `after - before` of one step of a head with a peaked softmax (logits * temp):
    most classes get p < 1e-8, so their rows are float32 rounding noise."""
    w = (rng.normal(size=(num_classes, dim)) / np.sqrt(dim)).astype(np.float32)
    h = np.abs(rng.normal(size=(n, dim)))
    labels = rng.choice(num_classes, n, replace=False)
    z = temp * (h @ w.astype(np.float64).T)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p.copy()
    g[np.arange(n), labels] -= 1
    w1 = (w.astype(np.float64) - lr * g.T @ h / n).astype(np.float32)
    return w1 - w, tuple(sorted(labels.tolist()))


def test_noise_tolerance_keeps_labels_of_a_peaked_softmax():
    """Rows at the float32 noise floor point anywhere; the exact (scale-free) cone test lets
    them hide every label, the noise-aware test (default) ignores them."""
    exact = exact_without = 0
    for seed in range(10):
        update, truth = peaked_update(np.random.default_rng(seed), temp=4.0)
        found = reveal_labels(update)
        exact += found.ok and found.labels == truth and found.num_labels == len(truth)
        plain = reveal_labels(update, noise_cut=0)
        exact_without += plain.ok and plain.labels == truth
    assert exact == 10
    assert exact_without <= 2
    assert found.diagnostics["quiet_points"] > 0


def test_noise_tolerant_lp_agrees_with_fast():
    update, truth = peaked_update(np.random.default_rng(3), temp=4.0)
    fast, lp = reveal_labels(update), reveal_labels(update, method="lp")
    assert fast.labels == lp.labels == truth


def test_counts_and_length_from_bias_when_softmax_ignores_the_input():
    """Zero weights: every sample has the same softmax, so samples with one label give one
    direction and rank(W) = |L| < S. The bias update's label masses give counts and S."""
    rng = np.random.default_rng(0)
    num_classes, dim = 300, 64
    distinct = rng.choice(num_classes, 12, replace=False)
    labels = np.concatenate([distinct, distinct[:5], distinct[:2]])
    p = np.exp(rng.normal(scale=0.3, size=num_classes))
    p /= p.sum()
    g = np.tile(p, (len(labels), 1))
    g[np.arange(len(labels)), labels] -= 1
    h = rng.normal(size=(len(labels), dim))
    w_up = (-0.05 * g.T @ h / len(labels)).astype(np.float32)
    b_up = (-0.05 * g.sum(0) / len(labels)).astype(np.float32)
    found = reveal_labels(w_up, bias_update=b_up)
    assert found.diagnostics["rank"] == 12
    assert found.counts == dict(Counter(labels.tolist()))
    assert found.num_labels == len(labels)
    assert reveal_labels(w_up).num_labels == 12  # without a bias: the rank, as before
    assert counts_from_bias_ratios(np.zeros(num_classes), distinct) is None


def test_bias_ratios_need_equal_softmax_mass_on_the_non_labels():
    """A model that favours some pieces (P = 0.5 on them) makes a label among them look like
    half a count; the non-labels show the unequal mass, so no counts are read from the ratios."""
    labels, num_classes = np.array([0, 1, 2, 3]), 50
    mass = np.full(num_classes, 0.02)
    uniform = mass.copy()
    uniform[labels] -= np.array([2, 1, 1, 1])  # gradient P_c - n_c, "0" twice
    assert counts_from_bias_ratios(uniform, labels) == {0: 2, 1: 1, 2: 1, 3: 1}
    mass[[0, 10, 11, 12]] = 0.5  # frequent pieces: label 0 and three non-labels
    skewed = mass.copy()
    skewed[labels] -= 1.0  # all distinct; without the check: counts 1, 2, 2, 2
    assert counts_from_bias_ratios(skewed, labels) is None


def test_s_counts_repeats_when_only_some_share_a_direction():
    """Untrained-like softmax: label 0's two samples give one direction, label 1's two differ a
    little: rank 4 between |L| = 3 and S = 5; the clean bias ratios count all five."""
    rng = np.random.default_rng(4)
    num_classes, dim = 50, 32
    labels = np.array([0, 0, 1, 1, 2])
    probs = np.full((5, num_classes), 1 / num_classes)
    probs[2:4] *= 1 + 0.05 * rng.normal(size=(2, num_classes))  # label 1: two directions
    probs /= probs.sum(1, keepdims=True)
    g = probs.copy()
    g[np.arange(5), labels] -= 1
    w = g.T @ rng.normal(size=(5, dim))
    found = reveal_labels(w, bias_update=g.sum(0))
    assert found.diagnostics["rank"] == 4 and found.labels == (0, 1, 2)
    assert found.counts == {0: 2, 1: 2, 2: 1} and found.num_labels == 5


def test_gap_rank_rule():
    sv = np.array([1.0, 0.5, 0.3, 1e-3, 9e-4, 8e-4])
    assert gap_rank(sv, 6, eps=1e-16) == 3
    assert gap_rank(np.array([1.0, 0.9, 0.8]), 3, eps=1e-16) is None
    assert (
        gap_rank(np.array([1.0, 0.5, 1e-9, 1e-30]), 4, eps=1.2e-7) == 2
    )  # floor ignores noise gaps


def test_counts_from_bias_sum_to_total():
    bias = np.array([0.1, -2.9, 0.1, -1.0, 0.1, 0.1])
    assert counts_from_bias(bias, np.array([1, 3]), 4) == {1: 3, 3: 1}
    assert counts_from_bias(-bias, np.array([1, 3]), 4) == {1: 3, 3: 1}  # sign-free


def test_counts_not_identifiable_without_bias():
    rng = np.random.default_rng(2)
    w, _ = sgd_update(rng, 60, 40, [np.array([4, 4, 9])], "tanh")
    result = reveal_labels(w)
    assert result.labels == (4, 9) and result.counts is None
    assert "not identifiable" in result.diagnostics["counts"]


@pytest.mark.parametrize(
    ("matrix", "reason"),
    [
        (np.full((20, 8), np.nan), "NaN"),
        (np.zeros((20, 8)), "all zero"),
        (np.random.default_rng(0).normal(size=(20, 8)), "not identifiable"),  # full rank
    ],
)
def test_not_applicable_inputs(matrix, reason):
    result = reveal_labels(matrix)
    assert result.status == "not_applicable" and reason in result.message
    # No labels claimed and nothing scored: a not-applicable row carries no (zero) scores.
    assert getattr(result, "labels", ()) == ()
    assert result.score(Truth(labels=np.array([[1, 2]]))) == {}


def test_not_applicable_when_batch_reaches_feature_dim():
    rng = np.random.default_rng(1)
    w, _ = sgd_update(rng, 50, 6, [rng.integers(0, 50, size=8)], "relu")
    result = reveal_labels(w)
    assert result.status == "not_applicable" and "min(C - 1, d)" in result.message
    assert reveal_labels(w, num_labels=8).status == "not_applicable"


def test_not_applicable_without_ce_structure():
    """Three separable directions in a rank-2 update: more labels than samples is impossible."""
    points = np.array([[1.0, 0.0], [-0.5, 0.8660254], [-0.5, -0.8660254]])
    w = np.zeros((6, 4))
    w[:3] = points @ np.random.default_rng(0).normal(size=(2, 4))
    result = reveal_labels(w)
    assert result.status == "not_applicable" and "separable classes" in result.message


def test_max_labels_skips_updates_that_are_not_low_rank():
    """Sign-SGD makes the update (nearly) full rank: with a bound on S the cone test is skipped."""
    rng = np.random.default_rng(3)
    w, _ = sgd_update(rng, 200, 64, [rng.integers(0, 200, size=4)], "silu")
    signed = np.sign(w)
    result = reveal_labels(signed, max_labels=16)
    assert result.status == "not_applicable" and "max_labels = 16" in result.message
    assert result.diagnostics["rank"] > 16
    bounded = reveal_labels(w, max_labels=16)  # a real update within the bound: unchanged
    assert bounded.ok and bounded.labels == reveal_labels(w).labels


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(C, d\)"):
        reveal_labels(np.zeros(5))
    with pytest.raises(ValueError, match="method"):
        reveal_labels(np.ones((4, 3)), method="perceptron")
    with pytest.raises(ValueError, match="bias_update"):
        reveal_labels(np.ones((4, 3)), bias_update=np.ones(5))
    with pytest.raises(ValueError, match="num_labels"):
        reveal_labels(np.ones((4, 3)), num_labels=0)
    with pytest.raises(ValueError, match="max_labels"):
        reveal_labels(np.ones((4, 3)), max_labels=0)


def test_gap_rank_needs_a_noise_like_tail_in_a_sketch():
    """A leading gap whose tail keeps decaying (more signal) is not the rank of a sketch."""
    signal_tail = np.concatenate([[1.0], np.geomspace(0.24, 0.01, 63)])  # rank > 64
    assert gap_rank(signal_tail, 64, eps=1.2e-7) == 1  # the plain rule takes the first gap
    assert gap_rank(signal_tail, 64, eps=1.2e-7, noise_rows=2048) is None  # grow the sketch
    noisy = np.concatenate([[1.0], np.geomspace(0.24, 0.01, 49), np.geomspace(5e-8, 4e-8, 14)])
    assert gap_rank(noisy, 64, eps=1.2e-7, noise_rows=2048) == 50  # tail under the floor
    flat = np.concatenate([np.geomspace(1.0, 0.1, 20), np.geomspace(1e-3, 7e-4, 44)])
    assert gap_rank(flat, 64, eps=1e-16, noise_rows=2048) == 20  # a flat tail above the floor


def relu_mean_update(rng, num_classes, dim, labels, offset=2.0, lr=0.1):
    """Float32 update of a head on ReLU features with a shared positive mean (as after
    ReLU + average pooling), so W ~ (sum_i g_i) mean^T dominates: s_1/s_2 ~ 4."""
    h = np.maximum(rng.normal(size=(len(labels), dim)), 0) + offset * rng.random(dim)
    w = (rng.normal(size=(num_classes, dim)) / np.sqrt(dim)).astype(np.float32)
    z = h @ w.astype(np.float64).T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p.copy()
    g[np.arange(len(labels)), labels] -= 1
    return (w - np.float32(lr) * (g.T @ h / len(labels)).astype(np.float32)) - w


def test_rank_beyond_the_first_sketch_with_a_dominant_direction():
    """S = 90 > the first sketch (64) and a dominant leading direction: the rank is S on the
    first try (no retry at a later gap), duplicates included, labels exact."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 1500, size=90)
    labels[:6] = labels[6:12]  # duplicate labels: small but real singular values
    w = relu_mean_update(rng, 1500, 512, labels)
    space = row_space(w)
    assert space.method == "sketch" and space.rank == 90
    found = reveal_labels(w)
    assert found.labels == tuple(sorted(set(labels.tolist())))
    assert found.diagnostics["gap_tries"] == 1


def test_small_relu_cnn_batch_of_100_has_rank_100():
    """A real model: conv + BatchNorm (train mode) + ReLU + average pooling, 1000 classes,
    N = 100 (the ResNet-50 Table 1 situation, in miniature)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 512, 3, padding=1),
        torch.nn.BatchNorm2d(512),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    head = torch.nn.Linear(512, 1000)
    x, y = torch.randn(100, 3, 8, 8), torch.randint(0, 1000, (100,))
    loss = torch.nn.functional.cross_entropy(head(net(x)), y)
    gw, gb = torch.autograd.grad(loss, (head.weight, head.bias))
    with torch.no_grad():
        dw, db = (head.weight - 0.1 * gw) - head.weight, (head.bias - 0.1 * gb) - head.bias
    assert row_space(dw.numpy()).rank == 100
    found = reveal_labels(dw, bias_update=db)
    assert found.labels == tuple(sorted(set(y.tolist()))) and found.diagnostics["gap_tries"] == 1


def test_sketch_row_space_matches_full_svd():
    """The right sketch + one pass: same rank and subspace as a full float64 SVD, the column
    sums and norm of W, a comparable noise estimate, a time per stage; NaN is reported."""
    rng = np.random.default_rng(11)
    w, _ = sgd_update(rng, 1200, 400, [rng.integers(0, 1200, size=30)], "silu")
    sketch, full = row_space(w), row_space(w, full_svd_below=1000)
    assert (sketch.method, full.method) == ("sketch", "svd") and sketch.rank == full.rank == 30
    gap = sketch.basis @ (sketch.basis.T @ full.basis) - full.basis
    assert np.linalg.norm(gap) < 1e-6
    np.testing.assert_allclose(sketch.column_sums, w.sum(axis=0, dtype=np.float64), atol=1e-6)
    assert abs(sketch.norm / np.linalg.norm(w.astype(np.float64)) - 1) < 0.1
    assert 0.5 < sketch.point_noise / full.point_noise < 2
    assert set(sketch.seconds) == {"sketch", "rank", "basis", "noise"}
    bad = w.copy()
    bad[3, 5] = np.nan
    assert row_space(bad).method.startswith("failed") and "NaN" in reveal_labels(bad).message
    equal_rows = np.ones((1200, 400), np.float32)  # centred: float32 rounding only
    assert "numerical rank 0" in reveal_labels(equal_rows).message


def test_counts_withheld_when_the_non_labels_mass_varies():
    """A trained model puts unequal softmax mass P_c on the classes; the bias then cannot give
    counts under the equal-mass premise, so none are given (never a silent guess)."""
    labels = np.array([1, 3])
    even = np.array([0.5, -2.0, 0.5, -1.5, 0.5, 0.5])  # bias gradient P_c - n_c, total 4
    assert nonlabel_mass_spread(even, labels, 4) == 0.0
    skewed = np.array([0.05, -2.0, 1.6, -1.5, 0.05, 0.05])  # a confident wrong class (2)
    assert nonlabel_mass_spread(skewed, labels, 4) > MAX_MASS_SPREAD
    counts, reason = _counts(labels, 4, skewed)
    assert counts is None and "trained model" in reason
    assert _counts(labels, 4, even)[0] == {1: 2, 3: 2}


def test_rank_counts_withheld_on_a_trained_model():
    """With S estimated as the rank, "all distinct" and "single label" assume one direction per
    sample; a trained model (unequal non-label mass in the bias) can map a class's samples to
    one direction, so the counts are withheld. With S known (N * K) they are certain."""
    skewed = np.array([0.05, -0.9, 1.6, -0.8, 0.05, 0.05])  # labels 1, 3; class 2 confident
    labels = np.array([1, 3])
    counts, reason = _counts(labels, 2, skewed)
    assert counts is None and "rank" in reason and "rlg_counts" in reason
    assert _counts(labels, 2, skewed, estimated=False)[0] == {1: 1, 3: 1}
    single = np.array([0.01, -0.95, 0.92, 0.01, 0.01])
    assert _counts(np.array([1]), 1, single)[0] is None
    even = np.array([0.1, -0.9, 0.1, -0.9, 0.1, 0.1])  # untrained-like: equal non-label mass
    assert _counts(labels, 2, even) == ({1: 1, 3: 1}, "all distinct (|L| = S)")


def _graddropped_update(seed: int, classes: int = 1000, dim: int = 512, tokens: int = 4):
    """One step of an untrained output projection (near-uniform softmax over `classes`) on
    `tokens` distinct labels, then GradDrop 50 % (the smaller half of the entries zeroed) on the
    weight and bias updates, as `bench/asr_bow.py` Table 4 makes them on LAS."""
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((tokens, dim))
    probs = np.exp(0.1 * rng.standard_normal((tokens, classes)))
    probs /= probs.sum(1, keepdims=True)
    labels = rng.choice(classes, tokens, replace=False)
    coeff = probs.copy()
    coeff[np.arange(tokens), labels] -= 1.0

    def drop_half(x: np.ndarray) -> np.ndarray:
        cut = np.partition(np.abs(x).ravel(), x.size // 2)[x.size // 2]
        return np.where(np.abs(x) >= cut, x, 0.0).astype(np.float32)

    weight, bias = drop_half(-0.05 * coeff.T @ states / tokens), drop_half(-0.05 * coeff.sum(0))
    return weight, bias, sorted(labels.tolist())


def test_graddrop_half_keeps_the_gap_at_s():
    """The rule's estimate lies in GradDrop's residue (S ~ 180-200, above the plugin's bound of
    90 labels for one LAS utterance); the steep gap at S below it is the fallback, and exact."""
    for seed in range(3):
        weight, bias, labels = _graddropped_update(seed)
        found = reveal_labels(weight, bias_update=bias, max_labels=90)
        assert found.ok and sorted(found.labels) == labels
        assert found.diagnostics["rank"] == 4 and "steep gap" in found.diagnostics["rank_from"]
        assert found.diagnostics["gap_tries"] == 2


def test_steep_gap_is_the_last_steep_step_below_the_rank():
    sv = np.array([1.0, 0.95, 0.9, 0.85, 0.85 / 20, 0.03, 0.02, 0.01, 0.001, 1e-4])
    space = RowSpace(np.zeros((12, 9)), sv, 9, 11, "svd", 0)
    assert steep_gap(space, eps=1e-16) == 8  # 0.01 / 0.001 = 10 > 8, the last below rank 9
    assert steep_gap(replace(space, rank=8), eps=1e-16) == 4  # ratio 20 at 4
    shallow = np.concatenate([[1.0], np.geomspace(0.17, 0.01, 9)])  # s_1 / s_2 ~ 6
    assert steep_gap(replace(space, singular_values=shallow), eps=1e-16) is None
    # a step at the Gram's noise level of a sketch is not a gap
    tiny = np.array([1.0, 0.9, 1e-8, 1e-10, 1e-11])
    assert steep_gap(RowSpace(np.zeros((9, 4)), tiny, 4, 8, "svd", 0), eps=1e-16) == 3
    assert steep_gap(RowSpace(np.zeros((9, 4)), tiny, 4, 8, "sketch", 8), eps=1e-16) == 2
