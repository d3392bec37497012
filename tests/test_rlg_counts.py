"""RLG's label counts for any batch (`attacks.rlg_counts.softmax_counts` and the plugin
"rlg_counts"): synthetic last-layer gradients with known counts, and counts that are withheld,
never wrong, where the update does not pin them down."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import numpy as np
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attacks.count_attacks import RLGCountsAttack
from attacks.rlg import reveal_labels
from attacks.rlg_counts import softmax_counts
from fedcore import ModelSpec, ServerView, Truth

ROOT = Path(__file__).resolve().parents[1]


def summed_grads(h, labels, weight, bias):
    """`sum_i (p_i - y_i) h_i^T` (C, d), `sum_i (p_i - y_i)` (C,) and p (n, C)."""
    z = h @ weight.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = p.copy()
    g[np.arange(len(labels)), labels] -= 1.0
    return g.T @ h, g.sum(axis=0), p


def truth_of(labels):
    values, counts = np.unique(labels, return_counts=True)
    return {int(c): int(k) for c, k in zip(values, counts, strict=True)}


def untrained(seed, n, num_classes=200, dim=48, classes=6):
    """An untrained-like last layer (small logits), ReLU features, labels from a few classes."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(num_classes, dim)) / np.sqrt(dim)
    bias = 0.1 * rng.normal(size=num_classes)
    labels = rng.choice(num_classes, size=classes, replace=False)[rng.integers(0, classes, n)]
    h = np.maximum(rng.normal(size=(n, dim)), 0.0)
    return h, labels, weight, bias


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 16), with_labels=st.booleans())
def test_counts_exact_for_repeated_labels_at_an_untrained_model(seed, n, with_labels):
    h, labels, weight, bias = untrained(seed, n, num_classes=80)
    gw, gb, _ = summed_grads(h, labels, weight, bias)
    truth = truth_of(labels)
    est = softmax_counts(gw, gb, weight, bias, n, sorted(truth) if with_labels else None)
    assert est.counts == truth, est.reason
    assert est.estimate == truth and not est.unpinned and est.residual < 0.05
    assert all(m >= 4.0 for m in est.margins.values())


def test_near_duplicate_samples_share_their_mean_exactly():
    """Crops of one image: every sample of a class nearly the same input, a confident model."""
    rng = np.random.default_rng(3)
    num_classes, dim = 100, 32
    weight = rng.normal(size=(num_classes, dim)) / np.sqrt(dim)
    bias = np.zeros(num_classes)
    proto = {c: 1.5 * weight[c] / np.linalg.norm(weight[c]) * np.sqrt(dim) for c in (4, 17, 60)}
    labels = np.array([4] * 5 + [17] * 3 + [60] * 2)
    h = np.stack([proto[c] + 1e-4 * rng.normal(size=dim) for c in labels])
    gw, gb, p = summed_grads(h, labels, weight, bias)
    assert 0.3 < p[np.arange(10), labels].min() < 0.99  # a model that fits, not a confident one
    est = softmax_counts(gw, gb, weight, bias, 10, [4, 17, 60])
    assert est.counts == {4: 5, 17: 3, 60: 2}


def confident(seed, n, num_classes=40, dim=24, spread=1.0):
    """A trained-like model: each class's inputs spread around a prototype its row favours."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(num_classes, dim))
    bias = 0.1 * rng.normal(size=num_classes)
    labels = rng.integers(0, 5, n)
    unit = weight[labels] / np.linalg.norm(weight[labels], axis=1, keepdims=True)
    h = 3.0 * unit + spread * rng.normal(size=(n, dim))
    return h, labels, weight, bias


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 16), spread=st.floats(0.0, 1.5))
def test_counts_are_exact_or_withheld_with_a_reason(seed, n, spread):
    """Where the evidence does not pin a count down the estimate says so; a given count is
    never wrong."""
    h, labels, weight, bias = confident(seed, n, spread=spread)
    gw, gb, _ = summed_grads(h, labels, weight, bias)
    truth = truth_of(labels)
    for labels_given in (sorted(truth), None):
        est = softmax_counts(gw, gb, weight, bias, n, labels_given)
        if est.counts is None:
            assert est.reason and est.unpinned
        else:
            assert est.counts == truth


def test_a_very_confident_model_withholds_the_counts():
    h, labels, weight, bias = confident(0, 12, spread=0.0)
    h *= 5.0  # p(label) ~ 1: a sample barely moves the bias
    gw, gb, p = summed_grads(h, labels, weight, bias)
    assert p[np.arange(12), labels].min() > 0.999
    est = softmax_counts(gw, gb, weight, bias, 12, sorted(truth_of(labels)))
    assert est.counts is None
    assert "not pinned" in est.reason or "unexplained" in est.reason


def test_every_class_present_is_not_identifiable():
    h, labels, weight, bias = untrained(0, 30, num_classes=4, classes=4)
    gw, gb, _ = summed_grads(h, labels, weight, bias)
    est = softmax_counts(gw, gb, weight, bias, 30, None)
    assert est.counts is None and "S >= C" in est.reason


def test_bad_input():
    h, labels, weight, bias = untrained(0, 4)
    gw, gb, _ = summed_grads(h, labels, weight, bias)
    for bad, match in (
        (dict(total=0), "total"),
        (dict(labels=[500]), "class ids"),
        (dict(weight=weight[:, :3]), "shape"),
        (dict(total=1, labels=[1, 2]), "share"),
    ):
        args = dict(weight=weight, total=4, labels=None) | bad
        try:
            softmax_counts(gw, gb, args["weight"], bias, args["total"], args["labels"])
        except ValueError as err:
            assert match in str(err)
        else:
            raise AssertionError(f"no error for {bad}")
    assert softmax_counts(gw, 0 * gb, weight, bias, 4).reason == "the bias update is zero"


# ------------------------------------------------------------------------------ the plugin
def spec() -> ModelSpec:
    return ModelSpec(
        task="image",
        name="mlp100",
        num_classes=100,
        last_weight="2.weight",
        last_bias="2.bias",
        build=lambda: nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 100)),
        input_shape=(20,),
    )


def test_plugin_counts_a_real_batch_with_repeated_labels():
    """One SGD step of a random-init MLP (100 classes) on 12 samples of 4 classes."""
    torch.manual_seed(0)
    model = spec().build()
    x = torch.randn(12, 20)
    y = torch.tensor([5, 5, 5, 9, 9, 9, 9, 9, 40, 40, 77, 5])
    loss = lambda m: nn.functional.cross_entropy(m(x), y)  # noqa: E731
    view = ServerView.from_local_steps(model, [loss], spec(), lr=0.1, batch_size=12)
    w, b = view.last_layer_update()
    rlg = reveal_labels(w, bias_update=b)
    found = RLGCountsAttack()(view, {"rlg": rlg})
    assert found.ok and dict(found.counts) == {5: 4, 9: 5, 40: 2, 77: 1}
    scores = found.score(Truth(labels=y.numpy()[None]))
    assert scores["exact"] == 1.0 and scores["count_l1"] == 0.0
    assert found.diagnostics["label_source"] == "rlg"


def test_plugin_applicability_and_config():
    no_bias = ModelSpec(**{**spec().__dict__, "last_bias": None})
    config = {"lr": 0.1, "batch_size": 4, "local_steps": 1}
    assert "bias" in RLGCountsAttack().check(no_bias, config)
    assert "smoothing" in RLGCountsAttack().check(spec(), {**config, "label_smoothing": 0.1})
    node = yaml.safe_load((ROOT / "fedsim" / "conf" / "attack" / "rlg_counts.yaml").read_text())
    module, cls = node.pop("_target_").rsplit(".", 1)
    attack = getattr(import_module(module), cls)(**node)
    assert attack.name == "rlg_counts" and attack.requires == ("rlg",)
